"""Seeded bootstrap intervals for benchmark accuracies and paired differences between models.

An accuracy is a ratio over resampled units (questions, or 3DSRBench's circular groups): the sum of the units'
numerators (hits) over the sum of their denominators (rows). Every model of a benchmark is resampled with the same
draws, so the difference of two models on the same units gets a paired interval. At 0% or 100% every resample
gives the same value, so there an accuracy gets the exact (Clopper-Pearson) binomial interval over its units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Coverage of every interval the tables report.
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate in % with its percentile bootstrap interval (NaN where no unit is counted)."""

    value: float
    low: float
    high: float

    def as_text(self, signed: bool = False) -> str:
        if np.isnan(self.value):
            return "–"
        fmt = "{:+.1f}" if signed else "{:.1f}"
        return f"{fmt.format(self.value)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


def resample_counts(n_units: int, resamples: int, seed: int) -> np.ndarray:
    """How often each of ``n_units`` units is drawn in each of ``resamples`` resamples (shape resamples x units)."""
    if n_units < 1:
        raise ValueError("cannot resample zero units")
    if resamples < 1:
        raise ValueError(f"expected at least one resample, got {resamples}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(resamples, n_units))
    counts = np.zeros((resamples, n_units), dtype=np.int32)
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1)
    return counts


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def ratio_samples(
    numerator: np.ndarray, denominator: np.ndarray, counts: np.ndarray, mask: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """100 x sum(numerator) / sum(denominator) over the units in ``mask``, and the same ratio in every resample
    (NaN where a resample draws no unit of the mask, or the mask holds none)."""
    num = np.asarray(numerator, dtype=float)
    den = np.asarray(denominator, dtype=float)
    if mask is not None:
        num, den, counts = num[mask], den[mask], counts[:, mask]
    if den.sum() == 0:
        return float("nan"), np.full(counts.shape[0], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = 100.0 * (counts @ num) / (counts @ den)
    return float(100.0 * num.sum() / den.sum()), samples


def exact_edge_interval(value: float, units: int, level: float = LEVEL) -> tuple[float, float] | None:
    """The exact (Clopper-Pearson) interval in % of an accuracy of 0% or 100% over ``units`` units, where a
    bootstrap collapses to the point: 0 of n gives [0, 100 (1 - (alpha/2)^(1/n))] (0 of 10: [0, 30.8]). None for
    any other value."""
    if units < 1 or np.isnan(value):
        return None
    bound = 100.0 * ((1.0 - level) / 2.0) ** (1.0 / units)
    if abs(value) < 1e-9:
        return 0.0, 100.0 - bound
    if abs(value - 100.0) < 1e-9:
        return bound, 100.0
    return None


def estimate(value: float, samples: np.ndarray, level: float = LEVEL, *, units: int | None = None) -> Estimate:
    """The point estimate with the percentile interval of its resampled values; for an accuracy over ``units``
    units that is 0% or 100%, the exact binomial interval instead (pass ``units`` for accuracies only, not for
    differences)."""
    if np.isnan(value):
        return Estimate(float("nan"), float("nan"), float("nan"))
    edge = exact_edge_interval(float(value), units, level) if units else None
    if edge is not None:
        return Estimate(float(value), *edge)
    return Estimate(float(value), *_percentiles(np.asarray(samples, dtype=float), level))


def unit_count(denominator: np.ndarray, mask: np.ndarray | None = None) -> int:
    """How many units (with a non-zero denominator) an accuracy averages over."""
    den = np.asarray(denominator, dtype=float)
    return int(np.count_nonzero(den if mask is None else den[mask]))


def ratio(
    numerator: np.ndarray, denominator: np.ndarray, counts: np.ndarray, mask: np.ndarray | None = None,
    level: float = LEVEL,
) -> Estimate:  # fmt: skip
    """100 x sum(numerator) / sum(denominator) over the units in ``mask``, with its bootstrap interval (the exact
    binomial one at 0% or 100%)."""
    return estimate(*ratio_samples(numerator, denominator, counts, mask), level, units=unit_count(denominator, mask))


def paired_difference(
    numerator_a: np.ndarray, numerator_b: np.ndarray, denominator: np.ndarray, counts: np.ndarray,
    mask: np.ndarray | None = None, level: float = LEVEL,
) -> Estimate:  # fmt: skip
    """Accuracy of A minus accuracy of B on the same units, each resample drawing the same units for both."""
    diff = np.asarray(numerator_a, dtype=float) - np.asarray(numerator_b, dtype=float)
    return estimate(*ratio_samples(diff, denominator, counts, mask), level)  # a difference: no binomial edge
