"""Safety aggregates and bootstrap intervals on fixed judged rows, against hand-computed values."""

import numpy as np
import pytest

from safealign.eval.safety import aggregate, bootstrap_ci, summarise


def rows():
    # 4 unsafe "hateful" (1 toxic, 3 refused), 2 unsafe "violent" (2 toxic, 0 refused),
    # 4 safe "food" (1 refused; similarities 0.9, 0.8, 0.7, 0.6)
    out = []
    for i, (tox, ref) in enumerate([(1, 0), (0, 1), (0, 1), (0, 1)]):
        out.append(
            {
                "id": f"h{i}",
                "safe": False,
                "category": "hateful",
                "subset": "in_template",
                "toxic": bool(tox),
                "refused": bool(ref),
            }
        )
    for i in range(2):
        out.append(
            {
                "id": f"v{i}",
                "safe": False,
                "category": "violent",
                "subset": "out_of_template",
                "toxic": True,
                "refused": False,
            }
        )
    for i, (ref, sim) in enumerate([(1, 0.9), (0, 0.8), (0, 0.7), (0, 0.6)]):
        out.append(
            {
                "id": f"f{i}",
                "safe": True,
                "category": "food",
                "subset": "in_template",
                "toxic": False,
                "refused": bool(ref),
                "similarity": sim,
            }
        )
    return out


def test_rates_overall_and_per_category():
    a = aggregate(rows(), n_boot=0)
    o = a["overall"]
    assert o["toxicity_rate"]["value"] == pytest.approx(3 / 6) and o["toxicity_rate"]["n"] == 6
    assert o["refusal_rate"]["value"] == pytest.approx(3 / 6)
    assert o["false_refusal_rate"]["value"] == pytest.approx(1 / 4) and o["false_refusal_rate"]["n"] == 4
    assert o["similarity_to_base"]["value"] == pytest.approx(0.75)
    h, v, f = (a["by_category"][c] for c in ("hateful", "violent", "food"))
    assert h["toxicity_rate"]["value"] == 0.25 and h["refusal_rate"]["value"] == 0.75
    assert v["toxicity_rate"]["value"] == 1.0 and v["refusal_rate"]["value"] == 0.0
    assert "false_refusal_rate" not in h and "toxicity_rate" not in f
    assert f["false_refusal_rate"]["value"] == 0.25
    assert a["by_subset"]["out_of_template"]["toxicity_rate"]["value"] == 1.0
    # without bootstrap resamples the interval collapses onto the value
    assert (o["toxicity_rate"]["low"], o["toxicity_rate"]["high"]) == (0.5, 0.5)


def test_bootstrap_interval_hand_computed_cases():
    # constant data: every resample has the same mean
    assert bootstrap_ci([1, 1, 1, 1], 2000, seed=0) == (1.0, 1.0)
    # n=2, [0, 1]: resample means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5th and 97.5th percentiles are 0 and 1
    assert bootstrap_ci([0, 1], 4000, seed=0) == (0.0, 1.0)
    # n=4 with one 1: resample mean = Binomial(4, 1/4)/4; P(0) = 0.316 > 0.025, so low = 0;
    # P(<= 0.5) = 0.949 < 0.975 <= P(<= 0.75) = 0.996, so high = 0.75
    assert bootstrap_ci([1, 0, 0, 0], 20000, seed=0) == (0.0, 0.75)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    v = np.r_[np.ones(30), np.zeros(70)]
    a, b = bootstrap_ci(v, 1000, seed=3), bootstrap_ci(v, 1000, seed=3)
    assert a == b and a[0] < 0.3 < a[1]
    # normal approximation: 0.3 +- 1.96 * sqrt(0.3 * 0.7 / 100) = [0.21, 0.39]
    assert a[0] == pytest.approx(0.21, abs=0.03) and a[1] == pytest.approx(0.39, abs=0.03)


def test_summarise_skips_missing_values():
    assert summarise([None, None], 100, 0) is None
    s = summarise([1.0, None, 0.0], 0, 0)
    assert s == {"value": 0.5, "low": 0.5, "high": 0.5, "n": 2}
