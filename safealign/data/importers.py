"""Public safety datasets, each in its own schema, converted to the canonical rows (docs/data.md).

    data:
      source: PKU-Alignment/PKU-SafeRLHF   # a hub id, or a local folder of that dataset's train/test .jsonl
      format: pku_saferlhf                 # canonical (default), pku_saferlhf, beavertails, hh_rlhf,
                                           # trl_preference, trl_unpaired
      categories:                          # the dataset's category names -> the project's
        Violence: violent
        Cybercrime: public_harm
        "*": toxic                         # any other name; without "*", such rows are skipped and counted

Each format is one function from that dataset's rows (one split) to canonical rows; a row that does
not fit is not dropped silently: it is counted under its reason (`Report`), and the data stage
writes the counts into counts.json (`import`). Pure functions: the tests feed them a few rows
written in each dataset's real field layout (tests/fixtures/importers/).

What each format means for the canonical pair (an unsafe prompt: the safe answer is `chosen`, the
harmful one `rejected`; a safe prompt: one helpful `chosen`):
- pku_saferlhf: two responses with per-response safety flags and harm categories, `safer_response_id`
  and `better_response_id`. One safe and one unsafe response: an unsafe prompt (chosen the safe
  one, category from the unsafe one's harm flags). Both safe: a safe prompt, chosen the better one.
  Both unsafe: nothing safe to learn from (skipped: "no safe response").
- beavertails: one (prompt, response) per row with `is_safe` and harm-category flags; rows are
  grouped by prompt: a safe and an unsafe response make an unsafe pair; safe responses only, a safe
  prompt; unsafe only: skipped ("no safe response").
- hh_rlhf: Anthropic HH-RLHF transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...") `chosen`/`rejected`
  that share everything but the last answer; single-turn ones become unsafe pairs (import the
  harmless-base subset: its chosen answer is the more harmless one); category from "*".
- trl_preference: trl's preference rows (`prompt`, `chosen`, `rejected`; strings or conversational
  message lists), as unsafe pairs; category from the row's `category` or "*".
- trl_unpaired: trl's unpaired rows (`prompt`, `completion`, `label`), grouped by prompt like
  beavertails.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field


@dataclass
class Report:
    """What one split's conversion read, wrote and skipped (by reason)."""

    read: int = 0
    rows: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"read": self.read, "rows": self.rows, "skipped": dict(sorted(self.skipped.items()))}


class Categories:
    """The recipe's table: a dataset category name -> the project's; "*" for any other name."""

    def __init__(self, table: dict):
        self.table = dict(table or {})

    def map(self, names: list[str]) -> str | None:
        for n in names:
            if n in self.table:
                return self.table[n]
        return self.table.get("*")

    def safe_topic(self) -> str:
        """The category of a safe prompt (these datasets have no topics): the table's "safe", or general."""
        return self.table.get("safe", "general")


def _text(value) -> str:
    """A string, or trl's conversational form: the last message's content."""
    if isinstance(value, list):
        return str(value[-1].get("content", "")) if value and isinstance(value[-1], dict) else ""
    return value if isinstance(value, str) else ""


def _flags(flags) -> list[str]:
    """A harm-category dict ({name: bool}) -> the names flagged, in the dataset's order."""
    return [k for k, v in flags.items() if v] if isinstance(flags, dict) else []


def _row(prefix: str, n: int, prompt: str, safe: bool, category: str, chosen: str, rejected=None) -> dict:
    return {
        "id": f"{prefix}-{n:06d}",
        "prompt": prompt.strip(),
        "safe": safe,
        "category": category,
        "chosen": chosen.strip(),
        "rejected": rejected.strip() if rejected else None,
    }


def _add_pair(
    out: list, rep: Report, cats: Categories, names: list[str], prefix: str, prompt, chosen, rejected
) -> None:
    """An unsafe prompt's pair, unless a text is empty or its category is not in the table (counted)."""
    if not prompt.strip() or not chosen.strip() or not rejected.strip():
        rep.skipped["empty prompt or response"] += 1
    elif (category := cats.map(names)) is None:
        rep.skipped["category not in data.categories"] += 1
    else:
        out.append(_row(prefix, len(out), prompt, False, category, chosen, rejected))


def _paired_or_safe(prefix, grouped, cats: Categories, rep: Report) -> list[dict]:
    """Rows grouped by prompt: [(response, is_safe, harm names)] -> canonical rows."""
    out = []
    for prompt, answers in grouped.items():
        good = [a for a in answers if a[1] and a[0].strip()]
        bad = [a for a in answers if not a[1] and a[0].strip()]
        if not good:
            rep.skipped["no safe response"] += len(answers)
            continue
        if bad:
            category = cats.map(bad[0][2])
            if category is None:
                rep.skipped["category not in data.categories"] += len(answers)
                continue
            out.append(_row(prefix, len(out), prompt, False, category, good[0][0], bad[0][0]))
        else:
            out.append(_row(prefix, len(out), prompt, True, cats.safe_topic(), good[0][0]))
    return out


def pku_saferlhf(rows: list[dict], cats: Categories, rep: Report, prefix: str) -> list[dict]:
    out = []
    for r in rows:
        prompt = r.get("prompt") or ""
        resp = [r.get("response_0") or "", r.get("response_1") or ""]
        safe = [bool(r.get("is_response_0_safe")), bool(r.get("is_response_1_safe"))]
        if not prompt.strip() or not all(x.strip() for x in resp):
            rep.skipped["empty prompt or response"] += 1
            continue
        if not any(safe):
            rep.skipped["no safe response"] += 1
            continue
        if all(safe):
            better = r.get("better_response_id", 0)
            out.append(_row(prefix, len(out), prompt, True, cats.safe_topic(), resp[better if better in (0, 1) else 0]))
            continue
        good = safe.index(True)
        harms = _flags(r.get(f"response_{1 - good}_harm_category"))
        category = cats.map(harms)
        if category is None:
            rep.skipped["category not in data.categories"] += 1
            continue
        out.append(_row(prefix, len(out), prompt, False, category, resp[good], resp[1 - good]))
    return out


def beavertails(rows: list[dict], cats: Categories, rep: Report, prefix: str) -> list[dict]:
    grouped = defaultdict(list)
    for r in rows:
        grouped[(r.get("prompt") or "").strip()].append(
            (r.get("response") or "", bool(r.get("is_safe")), _flags(r.get("category")))
        )
    if "" in grouped:
        rep.skipped["empty prompt or response"] += len(grouped.pop(""))
    return _paired_or_safe(prefix, grouped, cats, rep)


HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def hh_rlhf(rows: list[dict], cats: Categories, rep: Report, prefix: str) -> list[dict]:
    out = []
    for r in rows:
        chosen, rejected = r.get("chosen") or "", r.get("rejected") or ""
        cut_c, cut_r = chosen.rfind(ASSISTANT), rejected.rfind(ASSISTANT)
        if cut_c < 0 or cut_r < 0 or chosen[:cut_c] != rejected[:cut_r]:
            rep.skipped["chosen and rejected do not share the conversation"] += 1
            continue
        dialogue = chosen[:cut_c]
        if dialogue.count(HUMAN) != 1 or ASSISTANT in dialogue:
            rep.skipped["multi-turn (the canonical rows are single-turn)"] += 1
            continue
        prompt = dialogue.split(HUMAN, 1)[1]
        answer_c, answer_r = chosen[cut_c + len(ASSISTANT) :], rejected[cut_r + len(ASSISTANT) :]
        _add_pair(out, rep, cats, [], prefix, prompt, answer_c, answer_r)
    return out


def trl_preference(rows: list[dict], cats: Categories, rep: Report, prefix: str) -> list[dict]:
    out = []
    for r in rows:
        names = [r["category"]] if isinstance(r.get("category"), str) else []
        _add_pair(
            out, rep, cats, names, prefix, _text(r.get("prompt")), _text(r.get("chosen")), _text(r.get("rejected"))
        )
    return out


def trl_unpaired(rows: list[dict], cats: Categories, rep: Report, prefix: str) -> list[dict]:
    grouped = defaultdict(list)
    for r in rows:
        if not isinstance(r.get("label"), bool):
            rep.skipped["label is not true/false"] += 1
            continue
        grouped[_text(r.get("prompt")).strip()].append((_text(r.get("completion")), r["label"], []))
    if "" in grouped:
        rep.skipped["empty prompt or response"] += len(grouped.pop(""))
    return _paired_or_safe(prefix, grouped, cats, rep)


CONVERTERS = {
    "pku_saferlhf": pku_saferlhf,
    "beavertails": beavertails,
    "hh_rlhf": hh_rlhf,
    "trl_preference": trl_preference,
    "trl_unpaired": trl_unpaired,
}


def convert(fmt: str, rows: list[dict], categories: dict, split: str) -> tuple[list[dict], Report]:
    """One split of a dataset in format `fmt` -> canonical rows (ids `<fmt>-<split>-<n>`) and the report."""
    rep = Report(read=len(rows))
    out = CONVERTERS[fmt](rows, Categories(categories), rep, f"{fmt}-{split}")
    rep.rows = len(out)
    return out, rep
