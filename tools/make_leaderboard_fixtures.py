#!/usr/bin/env python3
"""Write the offline copies of the Open LLM Leaderboard v2 datasets: data/leaderboard_fixtures/.

Each dataset becomes a local folder laid out like its hub repository: a README.md whose
`configs:` block names the same configs and splits, and JSONL files with the same columns.
`datasets.load_dataset(<folder>, <config>)` then reads it exactly as lm-eval reads the hub
copy, so lm-eval's own task code (process_docs, doc_to_text, metrics) runs unchanged.

The rows are written here, by the project: one per BBH subtask, a few per subtask elsewhere
(each family's prompt, answer extraction and metric run; BBH_ROWS says why one); answers are
correct where the question has one. They exist to run the whole evaluation path offline on the tiny model,
not to measure anything. Deterministic: `python tools/make_leaderboard_fixtures.py --check`
exits non-zero when the committed files differ from what this script writes.

    python tools/make_leaderboard_fixtures.py [--out data/leaderboard_fixtures] [--check]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import string
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "data" / "leaderboard_fixtures"
LETTERS = string.ascii_uppercase
NAMES = ["Alice", "Bob", "Claire", "Dave", "Eve", "Fred", "Gwen"]
ITEMS = ["apple", "banana", "plum", "car", "violin", "trumpet", "cat", "dog", "goat", "chair", "table", "bed"]


def opts(options: list[str]) -> str:
    return "Options:\n" + "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))


def mc(rng: random.Random, question: str, right: str, wrong: list[str], k: int) -> dict:
    """A BBH multiple-choice row with k options, the right one at a random position."""
    options = wrong[: k - 1]
    pos = rng.randrange(k)
    options.insert(pos, right)
    return {"input": f"{question}\n{opts(options)}", "target": f"({LETTERS[pos]})"}


# ----------------------------------------------------------------------------- BBH (SaylorTwift/bbh)
def bbh_boolean(rng):
    def expr(d):
        if d == 0:
            v = rng.choice([True, False])
            return str(v), v
        a, va = expr(d - 1)
        op = rng.choice(["and", "or", "not"])
        if op == "not":
            return f"not {a}", not va
        b, vb = expr(0)
        return f"( {a} {op} {b} )", (va and vb) if op == "and" else (va or vb)

    e, v = expr(2)
    return {"input": f"{e} is", "target": str(v)}


def bbh_web_of_lies(rng):
    names = rng.sample(NAMES, 4)
    truth = rng.choice([True, False])
    parts = [f"{names[0]} {'tells the truth' if truth else 'lies'}."]
    for prev, cur in zip(names, names[1:]):
        says_truth = rng.choice([True, False])
        parts.append(f"{cur} says {prev} {'tells the truth' if says_truth else 'lies'}.")
        truth = truth == says_truth
    return {
        "input": "Question: " + " ".join(parts) + f" Does {names[-1]} tell the truth?",
        "target": "Yes" if truth else "No",
    }


def bbh_object_counting(rng):
    chosen = rng.sample(ITEMS, 4)
    counts = [rng.randint(1, 3) for _ in chosen]
    have = ", ".join(
        f"{'a' if c == 1 else ['two', 'three'][c - 2]} {o}{'' if c == 1 else 's'}" for o, c in zip(chosen, counts)
    )
    return {"input": f"I have {have}. How many things do I have?", "target": str(sum(counts))}


def bbh_navigate(rng):
    steps, pos = [], [0, 0]
    for _ in range(rng.randint(2, 4)):
        n, d = rng.randint(1, 5), rng.choice(["forward", "backward", "left", "right"])
        steps.append(f"Take {n} step{'s' if n > 1 else ''} {d}.")
        axis, sign = {"forward": (1, 1), "backward": (1, -1), "left": (0, -1), "right": (0, 1)}[d]
        pos[axis] += sign * n
    if rng.random() < 0.5:  # make some walks return home
        if pos[1]:
            steps.append(
                f"Take {abs(pos[1])} step{'s' if abs(pos[1]) > 1 else ''} {'backward' if pos[1] > 0 else 'forward'}."
            )
        if pos[0]:
            steps.append(
                f"Take {abs(pos[0])} step{'s' if abs(pos[0]) > 1 else ''} {'left' if pos[0] > 0 else 'right'}."
            )
        pos = [0, 0]
    return {
        "input": "If you follow these instructions, do you return to the starting point? Always face forward. "
        + " ".join(steps)
        + "\nOptions:\n- Yes\n- No",
        "target": "Yes" if pos == [0, 0] else "No",
    }


def bbh_logical_deduction(n):
    def row(rng):
        birds = rng.sample(["robin", "owl", "crow", "hawk", "finch", "hummingbird", "blue jay"], n)
        facts = [f"The {birds[i]} is to the left of the {birds[i + 1]}." for i in range(n - 1)]
        rng.shuffle(facts)
        ask = rng.randrange(n)
        question = (
            f"The following paragraphs each describe a set of {n} objects arranged in a fixed order. "
            f"On a branch, there are {n} birds: {', '.join(birds[j] for j in rng.sample(range(n), n))}. "
            + " ".join(facts)
        )
        ordinal = [
            "leftmost",
            "second from the left",
            "third from the left",
            "fourth from the left",
            "fifth from the left",
            "sixth from the left",
            "seventh from the left",
        ][ask]
        options = [f"The {b} is the {ordinal}" for b in birds]
        pos = options.index(options[ask])
        return {"input": f"{question}\n{opts(options)}", "target": f"({LETTERS[pos]})"}

    return row


def bbh_tracking(n):
    def row(rng):
        people = NAMES[:n]
        balls = rng.sample(["red", "blue", "green", "yellow", "white", "black", "pink"], n)
        held = dict(zip(people, balls))
        swaps = []
        for _ in range(n):
            a, b = rng.sample(people, 2)
            held[a], held[b] = held[b], held[a]
            swaps.append(f"{a} and {b} swap balls.")
        who = rng.choice(people)
        start = ", ".join(f"{p} has a {b} ball" for p, b in zip(people, balls))
        q = (
            f"{', '.join(people[:-1])}, and {people[-1]} are playing a game. At the start, {start}. "
            f"As the game progresses: {' '.join(swaps)} At the end of the game, {who} has the"
        )
        options = [f"{b} ball" for b in balls]
        return {"input": f"{q}\n{opts(options)}", "target": f"({LETTERS[options.index(held[who] + ' ball')]})"}

    return row


def bbh_date(rng):
    d = dt.date(2019, 1, 1) + dt.timedelta(days=rng.randrange(700))
    delta = rng.choice([1, 7, 10, 30])
    right = d + dt.timedelta(days=delta)
    wrong = [right + dt.timedelta(days=x) for x in (-1, 1, 365, -31, 2)]
    row = mc(
        rng,
        f"Today is {d:%m/%d/%Y}. What is the date {delta} days from today in MM/DD/YYYY?",
        f"{right:%m/%d/%Y}",
        [f"{w:%m/%d/%Y}" for w in wrong],
        6,
    )
    return row


def bbh_hyperbaton(rng):
    order = [
        ["lovely", "ugly", "nice"],
        ["big", "little", "tiny"],
        ["old", "new", "ancient"],
        ["square", "circular"],
        ["red", "green", "brown"],
        ["Thai", "German", "Malaysian"],
        ["wooden", "steel", "paper"],
        ["hiking", "drinking"],
    ]
    cats = sorted(rng.sample(range(len(order)), 3))
    words = [rng.choice(order[c]) for c in cats]
    noun = rng.choice(["box", "shoe", "car", "sweater"])
    good, bad = " ".join(words + [noun]), " ".join(list(reversed(words)) + [noun])
    return mc(rng, "Which sentence has the correct adjective order:", f"{good}", [bad], 2)


def bbh_penguins(rng):
    table = [("Louis", 7, 50, 11), ("Bernard", 5, 80, 13), ("Vincent", 9, 60, 11), ("Gwen", 8, 70, 15)]
    name, age = max(((n, a) for n, a, _, _ in table), key=lambda x: x[1])
    text = (
        "Here is a table where the first line is a header and each subsequent line is a penguin: "
        "name, age, height (cm), weight (kg) "
        + " ".join(f"{n}, {a}, {h}, {w}" for n, a, h, w in table)
        + " What is the name of the oldest penguin?"
    )
    return mc(rng, text, name, [n for n, *_ in table if n != name] + ["James"], 5)


def bbh_colored(rng):
    colours = [
        "red",
        "orange",
        "yellow",
        "green",
        "blue",
        "brown",
        "magenta",
        "fuchsia",
        "mauve",
        "teal",
        "turquoise",
        "burgundy",
        "silver",
        "gold",
        "black",
        "grey",
        "purple",
        "pink",
    ]
    things = rng.sample(["pencil", "notebook", "mug", "keychain", "stress ball", "sunglasses"], 3)
    cs = rng.sample(colours, 3)
    ask = rng.randrange(3)
    q = (
        f"On the desk, you see a {cs[0]} {things[0]}, a {cs[1]} {things[1]}, and a {cs[2]} {things[2]}. "
        f"What is the colour of the {things[ask]}?"
    )
    return {"input": f"{q}\n{opts(colours)}", "target": f"({LETTERS[colours.index(cs[ask])]})"}


# Subtasks whose questions need judgement rather than computation: short hand-written rows.
HAND = {
    "causal_judgement": [
        (
            "How would a typical person answer each of the following questions about causation?\nA machine "
            "breaks only if two switches are on at once. Ann turns on the first switch while Ben has the second "
            "one on, and the machine breaks. Did Ann cause the machine to break?\nOptions:\n- Yes\n- No",
            "Yes",
        ),
        (
            "How would a typical person answer each of the following questions about causation?\nJo left her "
            "umbrella at home. Later it rained heavily and the roof of the town hall leaked. Did Jo leaving her "
            "umbrella at home cause the roof to leak?\nOptions:\n- Yes\n- No",
            "No",
        ),
    ],
    "disambiguation_qa": [
        (
            "In the following sentences, explain the antecedent of the pronoun (or state that it is ambiguous).\n"
            "Sentence: The nurse thanked the chef because she cooked a fine meal.\n"
            + opts(["The nurse cooked the meal", "The chef cooked the meal", "Ambiguous"]),
            "(B)",
        ),
        (
            "In the following sentences, explain the antecedent of the pronoun (or state that it is ambiguous).\n"
            "Sentence: Alex told Sam that he would be late.\n"
            + opts(["Alex would be late", "Sam would be late", "Ambiguous"]),
            "(C)",
        ),
    ],
    "formal_fallacies": [
        (
            '"Every cousin of Ann is a friend of Bea. Cara is a cousin of Ann. It follows that Cara is a friend '
            'of Bea."\nIs the argument, given the explicitly stated premises, deductively valid or invalid?\n'
            "Options:\n- valid\n- invalid",
            "valid",
        ),
        (
            '"Every fan of Arsenal is a fan of football. Dan is a fan of football. It follows that Dan is a fan '
            'of Arsenal."\nIs the argument, given the explicitly stated premises, deductively valid or invalid?\n'
            "Options:\n- valid\n- invalid",
            "invalid",
        ),
    ],
    "geometric_shapes": [
        (
            'This SVG path element <path d="M 10,10 L 40,10 L 40,40 L 10,40 L 10,10"/> draws a\n'
            + opts(
                [
                    "circle",
                    "heptagon",
                    "hexagon",
                    "kite",
                    "line",
                    "octagon",
                    "pentagon",
                    "rectangle",
                    "sector",
                    "triangle",
                    "trapezoid",
                ]
            ),
            "(H)",
        ),
        (
            'This SVG path element <path d="M 5,5 L 30,5 L 17,25 L 5,5"/> draws a\n'
            + opts(
                [
                    "circle",
                    "heptagon",
                    "hexagon",
                    "kite",
                    "line",
                    "octagon",
                    "pentagon",
                    "rectangle",
                    "sector",
                    "triangle",
                    "trapezoid",
                ]
            ),
            "(J)",
        ),
    ],
    "movie_recommendation": [
        (
            "Find a movie similar to Toy Story, Finding Nemo, Monsters Inc, The Incredibles:\n"
            + opts(["Ratatouille", "Saw", "Heat", "Se7en", "Alien", "Psycho"]),
            "(A)",
        ),
        (
            "Find a movie similar to The Matrix, Terminator 2, Aliens, Total Recall:\n"
            + opts(["Notting Hill", "Predator", "Amelie", "Mamma Mia", "Annie Hall", "Babe"]),
            "(B)",
        ),
    ],
    "ruin_names": [
        (
            "Which of the following is a humorous edit of this artist or movie name: 'star wars'?\n"
            + opts(["stare wars", "stay wars", "star warts", "sdtar wars", "star wafs", "stag wars"]),
            "(C)",
        ),
        (
            "Which of the following is a humorous edit of this artist or movie name: 'the beatles'?\n"
            + opts(["the beagles", "the beatnes", "thhe beatles", "the beatls", "tge beatles", "the bestles"]),
            "(A)",
        ),
    ],
    "salient_translation_error_detection": [
        (
            "The following translations from German to English contain a particular error.\nSource: Der Hund "
            "hat drei Beine.\nTranslation: The dog has four legs.\nThe translation contains an error pertaining to\n"
            + opts(
                [
                    "Modifiers or Adjectives",
                    "Numerical Values",
                    "Negation or Antonyms",
                    "Named Entities",
                    "Dropped Content",
                    "Facts",
                ]
            ),
            "(B)",
        ),
        (
            "The following translations from German to English contain a particular error.\nSource: Berlin ist "
            "gross.\nTranslation: Munich is big.\nThe translation contains an error pertaining to\n"
            + opts(
                [
                    "Modifiers or Adjectives",
                    "Numerical Values",
                    "Negation or Antonyms",
                    "Named Entities",
                    "Dropped Content",
                    "Facts",
                ]
            ),
            "(D)",
        ),
    ],
    "snarks": [
        (
            "Which statement is sarcastic?\n"
            + opts(["Oh great, another Monday, just what I needed", "Mondays are the first working day of the week"]),
            "(A)",
        ),
        (
            "Which statement is sarcastic?\n"
            + opts(["The train was on time today", "Wow, the train was only two hours late, what a treat"]),
            "(B)",
        ),
    ],
    "sports_understanding": [
        ('Is the following sentence plausible? "The goalkeeper caught the ball in the penalty box."', "yes"),
        ('Is the following sentence plausible? "The tennis player scored a touchdown in the third set."', "no"),
    ],
    "temporal_sequences": [
        (
            "Today, Mei went to the market. Between what times could they have gone?\nWe know that: Mei woke up "
            "at 6am. Mei was at work from 8am to 5pm. Mei was at the gym from 5pm to 7pm. The market was closed "
            "after 8pm.\n" + opts(["6am to 8am", "8am to 5pm", "5pm to 7pm", "9pm to 10pm"]),
            "(A)",
        ),
        (
            "Today, Raj went to the library. Between what times could they have gone?\nWe know that: Raj woke up "
            "at 7am. Raj was at school from 7am to 1pm. Raj was free from 1pm to 3pm. Raj was at football from "
            "3pm to 6pm.\n" + opts(["7am to 1pm", "1pm to 3pm", "3pm to 6pm", "6am to 7am"]),
            "(B)",
        ),
    ],
}

GENERATED = {
    "boolean_expressions": bbh_boolean,
    "web_of_lies": bbh_web_of_lies,
    "object_counting": bbh_object_counting,
    "navigate": bbh_navigate,
    "date_understanding": bbh_date,
    "hyperbaton": bbh_hyperbaton,
    "penguins_in_a_table": bbh_penguins,
    "reasoning_about_colored_objects": bbh_colored,
    "logical_deduction_three_objects": bbh_logical_deduction(3),
    "logical_deduction_five_objects": bbh_logical_deduction(5),
    "logical_deduction_seven_objects": bbh_logical_deduction(7),
    "tracking_shuffled_objects_three_objects": bbh_tracking(3),
    "tracking_shuffled_objects_five_objects": bbh_tracking(5),
    "tracking_shuffled_objects_seven_objects": bbh_tracking(7),
}


# Rows per BBH subtask. One runs each subtask's own prompt, answer extraction and metric (a path
# check, not a measurement); BBH's 3-shot CoT contexts make each request ~1,900 characters, so
# three a subtask were two thirds of the fixture leaderboard's compute (issue #25). HAND keeps
# its further rows for a longer check.
BBH_ROWS = 1


def bbh(rng) -> dict[str, dict[str, list[dict]]]:
    out = {}
    for name in sorted(set(GENERATED) | set(HAND)):
        rows = (
            [GENERATED[name](rng) for _ in range(BBH_ROWS)]
            if name in GENERATED
            else [{"input": i, "target": t} for i, t in HAND[name][:BBH_ROWS]]
        )
        out[name] = {"test": rows}
    return out


# ----------------------------------------------------------------------------- the others
def gpqa(rng) -> dict[str, dict[str, list[dict]]]:
    qs = [
        ("Which particle mediates the electromagnetic force?", "Photon", ["Gluon", "W boson", "Graviton"], "Physics"),
        ("What is the oxidation state of manganese in KMnO4?", "+7", ["+2", "+4", "+6"], "Chemistry"),
        (
            "Which organelle carries out oxidative phosphorylation?",
            "Mitochondrion",
            ["Golgi apparatus", "Lysosome", "Ribosome"],
            "Biology",
        ),
        ("What is the ground-state degeneracy of a spin-1 particle in zero field?", "3", ["1", "2", "4"], "Physics"),
        ("Which base pairs with adenine in RNA?", "Uracil", ["Thymine", "Cytosine", "Guanine"], "Biology"),
    ]
    out = {}
    for i, config in enumerate(["gpqa_diamond", "gpqa_extended", "gpqa_main"]):
        rows = []
        for j in range(3):
            q, right, wrong, domain = qs[(i + j) % len(qs)]
            rows.append(
                {
                    "Record ID": f"fx{i}{j}",
                    "Question": q,
                    "Correct Answer": right,
                    "Incorrect Answer 1": wrong[0],
                    "Incorrect Answer 2": wrong[1],
                    "Incorrect Answer 3": wrong[2],
                    "Explanation": f"The answer is {right}.",
                    "Subdomain": domain,
                    "High-level domain": domain,
                }
            )
        out[config] = {"train": rows}
    return out


MATH_CONFIGS = [
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
]


def math(rng) -> dict[str, dict[str, list[dict]]]:
    out = {}
    for config in MATH_CONFIGS:
        rows = []
        for j in range(3):
            a, b = rng.randint(2, 30), rng.randint(2, 30)
            level = "Level 5" if j < 2 else "Level 3"  # lm-eval keeps Level 5 only
            rows.append(
                {
                    "problem": f"Compute ${a} \\times {b} + {a}$.",
                    "solution": f"We have ${a} \\times {b} + {a} = {a * b} + {a} = \\boxed{{{a * b + a}}}$.",
                    "level": level,
                    "type": config.replace("_", " ").title(),
                }
            )
        out[config] = {"test": rows, "train": rows[:1]}
    return out


def ifeval(rng) -> dict[str, dict[str, list[dict]]]:
    spec = [
        ("Write a short note to a neighbour about a parcel. Do not use any commas.", ["punctuation:no_comma"], [{}]),
        ("Describe the MRT in all lowercase letters, no capitals at all.", ["change_case:english_lowercase"], [{}]),
        (
            "Explain how to cook rice in fewer than 40 words.",
            ["length_constraints:number_words"],
            [{"relation": "less than", "num_words": 40}],
        ),
        (
            "Give tips for revision in at least 3 sentences.",
            ["length_constraints:number_sentences"],
            [{"relation": "at least", "num_sentences": 3}],
        ),
        (
            "Write a haiku about rain. End your response with 'Is there anything else I can help with?'",
            ["startend:end_checker"],
            [{"end_phrase": "Is there anything else I can help with?"}],
        ),
        (
            "Write about hawker food and mention the keywords laksa and satay.",
            ["keywords:existence"],
            [{"keywords": ["laksa", "satay"]}],
        ),
        (
            "Plan a day out. Highlight at least 2 sections with markdown, i.e. *highlighted section*.",
            ["detectable_format:number_highlighted_sections", "punctuation:no_comma"],
            [{"num_highlights": 2}, {}],
        ),
        (
            "Write a thank-you message. At the end add a postscript starting with P.S.",
            ["detectable_content:postscript"],
            [{"postscript_marker": "P.S."}],
        ),
    ]
    rows = [
        {"key": 1000 + i, "prompt": p, "instruction_id_list": ids, "kwargs": kw} for i, (p, ids, kw) in enumerate(spec)
    ]
    return {"default": {"train": rows}}


def musr(rng) -> dict[str, dict[str, list[dict]]]:
    def row(narrative, question, choices, answer):
        return {
            "narrative": narrative,
            "question": question,
            "choices": repr(choices),
            "answer_index": choices.index(answer),
            "answer_choice": answer,
        }

    mm = [
        row(
            "In a quiet hawker centre, the stall owner was found dead. Ravi had a motive and was seen with the "
            "knife; Mei had an alibi at the cinema all evening.",
            "Who is the most likely murderer?",
            ["Ravi", "Mei"],
            "Ravi",
        ),
        row(
            "At the office party, the manager was poisoned. Tan poured every drink that night; Lim arrived "
            "after the manager collapsed.",
            "Who is the most likely murderer?",
            ["Lim", "Tan"],
            "Tan",
        ),
        row(
            "On the ferry, a tourist was pushed overboard. Siti was on the top deck near the railing; Wei was "
            "asleep in the cabin below with witnesses.",
            "Who is the most likely murderer?",
            ["Siti", "Wei"],
            "Siti",
        ),
    ]
    places = ["kitchen drawer", "living room shelf", "car boot", "office desk", "garden shed"]
    op = [
        row(
            f"Aisha put the keys in the {places[i]}. While she was out, Ben moved them to the "
            f"{places[(i + 2) % 5]} and told nobody.",
            "Where will Aisha look for the keys first?",
            places,
            places[i],
        )
        for i in range(3)
    ]
    tasks = ["cooking", "cleaning", "shopping"]
    ta = [
        row(
            "Three flatmates split chores. Kumar loves cooking and is good at it; Jia hates shopping but "
            "cleans well; Omar enjoys shopping.",
            "Who should do which chore?",
            [
                "Cooking: Kumar, Cleaning: Jia, Shopping: Omar",
                "Cooking: Jia, Cleaning: Omar, Shopping: Kumar",
                "Cooking: Omar, Cleaning: Kumar, Shopping: Jia",
            ],
            "Cooking: Kumar, Cleaning: Jia, Shopping: Omar",
        )
        for _ in range(1)
    ]
    ta += [
        row(
            f"A team needs a {tasks[i]} lead. Nora has done {tasks[i]} for years; Ivan is new to it; "
            "Pei prefers other work.",
            f"Who should lead {tasks[i]}?",
            ["Nora", "Ivan", "Pei"],
            "Nora",
        )
        for i in range(2)
    ]
    return {"default": {"murder_mysteries": mm, "object_placements": op, "team_allocation": ta}}


def mmlu_pro(rng) -> dict[str, dict[str, list[dict]]]:
    def row(i, q, right, wrong, category):
        options = list(wrong[:9])
        pos = rng.randrange(10)
        options.insert(pos, right)
        return {
            "question_id": i,
            "question": q,
            "options": options,
            "answer": LETTERS[pos],
            "answer_index": pos,
            "cot_content": "",
            "category": category,
            "src": "safealign-fixture",
        }

    rows = []
    for i in range(5 + 5):  # 5 validation rows (the 5-shot examples) + 5 test rows of 10 options each
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        wrong = [str(a * b + d) for d in (-3, -2, -1, 1, 2, 3, 4, 5, 6)]
        rows.append(row(i, f"What is {a} multiplied by {b}?", str(a * b), wrong, "math"))
    return {"default": {"validation": rows[:5], "test": rows[5:]}}


# ----------------------------------------------------------------------------- writing
DATASETS = {  # hub id -> builder; the folder name is the hub id
    "SaylorTwift/bbh": bbh,
    "Idavidrein/gpqa": gpqa,
    "DigitalLearningGmbH/MATH-lighteval": math,
    "wis-k/instruction-following-eval": ifeval,
    "TAUR-Lab/MuSR": musr,
    "TIGER-Lab/MMLU-Pro": mmlu_pro,
}


def render(seed: int = 1234) -> dict[str, str]:
    """Relative path -> file content for every fixture file."""
    files = {}
    for hub_id, build in DATASETS.items():
        rng = random.Random(f"{seed}:{hub_id}")
        configs = build(rng)
        meta = ["---", "configs:"]
        for config, splits in configs.items():
            meta += [f"- config_name: {config}", "  data_files:"]
            for split, rows in splits.items():
                path = f"{config}/{split}.jsonl"
                meta += [f"  - split: {split}", f"    path: {path}"]
                files[f"{hub_id}/{path}"] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        meta += [
            "---",
            "",
            f"# {hub_id} (offline fixture)",
            "",
            f"A few rows in the schema of the hub dataset `{hub_id}`, written by",
            "tools/make_leaderboard_fixtures.py for safealign's offline evaluation. Not the real data.",
            "",
        ]
        files[f"{hub_id}/README.md"] = "\n".join(meta)
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="exit 1 if the files on disk differ")
    a = ap.parse_args()
    files = render()
    if a.check:
        bad = [p for p, text in files.items() if not (a.out / p).exists() or (a.out / p).read_text() != text]
        for p in bad:
            print(f"{a.out / p}: differs from tools/make_leaderboard_fixtures.py", file=sys.stderr)
        return 1 if bad else 0
    for p, text in files.items():
        (a.out / p).parent.mkdir(parents=True, exist_ok=True)
        (a.out / p).write_text(text)
    print(f"wrote {len(files)} files under {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
