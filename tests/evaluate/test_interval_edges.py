"""At 0 or all hits every bootstrap resample agrees, so the interval there is the exact binomial one over the units
(Clopper-Pearson): 0 of 10 circular groups is [0, 30.8], not [0, 0]; differences between models stay paired."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spatialreasoner.evaluate import intervals
from spatialreasoner.evaluate.tables import write_tables

from .test_tables import write_case


def clopper_pearson_upper_at_zero(n: int, level: float = 0.95) -> float:
    """The upper bound x of 0 hits in n: P(0 hits | p = x) = (1 - x)^n = alpha / 2."""
    return 100 * (1 - ((1 - level) / 2) ** (1 / n))


@pytest.mark.parametrize("n", [1, 10, 57])
def test_no_hit_and_every_hit_get_the_exact_interval(n):
    counts = intervals.resample_counts(n, 500, seed=0)
    none = intervals.ratio(np.zeros(n), np.ones(n), counts)
    assert (none.value, none.low) == (0.0, 0.0) and none.high == pytest.approx(clopper_pearson_upper_at_zero(n))
    every = intervals.ratio(np.ones(n), np.ones(n), counts)
    assert (every.value, every.high) == (100.0, 100.0)
    assert every.low == pytest.approx(100 - clopper_pearson_upper_at_zero(n))
    # (1 - x)^n at the bound is alpha / 2: the definition, checked independently of the formula above
    assert (1 - none.high / 100) ** n == pytest.approx(0.025)


def test_zero_of_ten_groups_reads_about_0_to_31():
    counts = intervals.resample_counts(10, 2000, seed=42)
    assert intervals.ratio(np.zeros(10), np.ones(10), counts).as_text() == "0.0 [0.0, 30.8]"


def test_a_model_compared_with_itself_still_differs_by_exactly_zero():
    counts = intervals.resample_counts(10, 500, seed=0)
    hits = np.zeros(10)
    same = intervals.paired_difference(hits, hits, np.ones(10), counts)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)


def test_tables_of_a_model_without_a_hit_show_the_exact_interval(tmp_path):
    wrong = {"D": "A", "A": "B", "B": "A", "C": "A"}  # never the answer

    def never(frame):
        return [wrong[a] for a in frame["answer"]]

    scores, benchmarks = write_case(tmp_path, {"never": never, "always": lambda f: list(f["answer"])})
    written = write_tables(scores, benchmarks, tmp_path / "tables", compare=[("always", "never")], seed=0)
    srb = pd.read_csv(written["3DSRBench"]).set_index("model")
    groups = int(srb.loc["never", "groups"])
    assert srb.loc["never", ["overall", "overall ci_low"]].tolist() == [0.0, 0.0]
    assert srb.loc["never", "overall ci_high"] == round(clopper_pearson_upper_at_zero(groups), 1)
    assert srb.loc["always", "overall ci_low"] == round(100 - clopper_pearson_upper_at_zero(groups), 1)
    # a subtype of one group: 0 of 1
    assert srb.loc["never", "location_above ci_high"] == round(clopper_pearson_upper_at_zero(1), 1)
    cvb = pd.read_csv(written["CV-Bench-3D"]).set_index("model")
    assert cvb.loc["never", "overall (pooled) ci_high"] == round(clopper_pearson_upper_at_zero(4), 1)
    assert "| always - never | +100.0 [" in written["summary"].read_text()
