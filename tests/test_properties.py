"""Property-based tests (hypothesis): random mutations of a valid row, recipe or SET string are
accepted or refused with a message naming the location, never a traceback."""

import json

import yaml
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_data import ROW as VALID_ROW

from safealign.config import recipe
from safealign.config.recipe import RecipeError
from safealign.data import rows as data
from safealign.data.rows import DataError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ROW = {**VALID_ROW, "subset": "in_template"}  # a valid canonical row, every field set
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
keys = st.sampled_from(list(ROW) + ["extra", "", "ID"])


@st.composite
def mutated_rows(draw):
    row = dict(ROW)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "set", "add"]))
        k = draw(keys)
        if op == "drop":
            row.pop(k, None)
        else:
            row[k] = draw(json_values)
    return row


@SETTINGS
@given(row=mutated_rows())
def test_mutated_rows_are_valid_or_named(tmp_path, row):
    p = tmp_path / "train.jsonl"
    p.write_text(json.dumps(ROW | {"id": "first"}) + "\n" + json.dumps(row) + "\n")
    try:
        data.read_jsonl(p)
    except DataError as e:
        assert str(e).startswith(f"{p}:2: "), e


@SETTINGS
@given(raw=st.binary(max_size=60))
def test_random_bytes_in_a_line_are_valid_or_named(tmp_path, raw):
    p = tmp_path / "train.jsonl"
    p.write_bytes((json.dumps(ROW) + "\n").encode() + raw + b"\n")
    try:
        data.read_jsonl(p)
    except DataError as e:
        assert str(e).startswith(f"{p}:"), e


BASE = yaml.safe_load((REPO / "recipes" / "sft_kto.yaml").read_text())


def paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from paths(v, prefix + (k,))


PATHS = sorted(paths(BASE))
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=2),
    max_leaves=5,
)


@st.composite
def mutated_recipes(draw):
    r = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        node = r
        for k in path[:-1]:
            if not isinstance(node.get(k), dict):
                break
            node = node[k]
        else:
            if draw(st.booleans()):
                node[path[-1]] = draw(yaml_values)
            else:
                node.pop(path[-1], None)
    return r


def located(msg: str, source: str) -> bool:
    return msg.startswith(source) or msg.startswith("SET ")


@SETTINGS
@given(r=mutated_recipes())
def test_mutated_recipes_are_valid_or_located(r):
    text = yaml.safe_dump(r, sort_keys=False)
    try:
        recipe.parse(text, "r.yaml", recipes_dir=REPO / "recipes")
    except RecipeError as e:
        assert e.problems and all(located(m, "r.yaml") for m in e.problems), e.problems


@SETTINGS
@given(text=st.text(max_size=80))
def test_random_text_is_a_recipe_or_a_located_error(text):
    try:
        recipe.parse(text, "r.yaml", recipes_dir=REPO / "recipes")
    except RecipeError as e:
        assert all(located(m, "r.yaml") for m in e.problems), e.problems


set_keys = st.sampled_from(
    [
        "kto.beta",
        "sft.learning_rate",
        "stages",
        "eval.safety.judge",
        "kto",
        "seed",
        "x.y",
        "kto.bta",
        "",
        "kto..beta",
        ".",
        "eval.leaderboard.tasks.bbh.limit",
        "health.window",
    ]
)
set_items = st.tuples(set_keys, st.sampled_from(["=", "", "=="]), st.text(max_size=12)).map("".join)


@SETTINGS
@given(items=st.lists(set_items | st.text(max_size=15), max_size=4))
def test_set_strings_are_applied_or_refused_by_name(items):
    try:
        recipe.parse("seed: 1\n", "r.yaml", recipes_dir=REPO / "recipes", overrides=items)
    except RecipeError as e:
        assert all(located(m, "r.yaml") for m in e.problems), e.problems
