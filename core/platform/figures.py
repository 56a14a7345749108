"""How sure a figure is, and how every figure is written: the one place for intervals and number formatting.

An accuracy is a proportion of ``n`` images: its 95% interval is Wilson's (scipy's ``binomtest``), the one
statsmodels' ``proportion_confint(method="wilson")`` gives. Two models on the same test images are compared
pairwise: the difference of their accuracies with a paired bootstrap interval (scipy's ``bootstrap``) and the
exact McNemar test (a binomial test on the images they disagree on). Pages, the CLI, the report and the export
sidecar all write percentages and counts through ``pct`` and ``count``, so one quantity reads the same
everywhere: one decimal, thousands separators.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


def pct(value: float | None, decimals: int = 1) -> str:
    """A share as a percentage, ``0.9412`` → ``"94.1%"``; ``None`` → ``"–"``."""
    return "–" if value is None else f"{100 * value:,.{decimals}f}%"


def epoch_span(first, last) -> str:
    """"epochs 6–8", or "epoch 1" for a stage of one epoch."""
    return f"epoch {first}" if first == last else f"epochs {first}–{last}"


def count(n: int, noun: str = "") -> str:
    """A count with thousands separators and its noun pluralised: ``count(1530, "image")`` → ``"1,530 images"``."""
    text = f"{n:,}"
    return f"{text} {noun}{'' if n == 1 else 's'}" if noun else text


@dataclass(frozen=True)
class Accuracy:
    """An accuracy measured on ``n`` images, with its 95% Wilson interval."""
    correct: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.correct / self.n

    def text(self, what: str = "images") -> str:
        """``"94.1% (95% CI 89.2–96.9%, 153 images)"``."""
        return f"{pct(self.value)} ({self.interval_text()}, {count(self.n)} {what})"

    def interval_text(self) -> str:
        return f"95% CI {100 * self.low:.1f}–{pct(self.high)}"

    def to_json(self) -> dict:
        return {"accuracy": self.value, "correct": self.correct, "n": self.n, "ci_low": self.low, "ci_high": self.high,
                "confidence": CONFIDENCE, "interval": "Wilson"}


def accuracy(correct: int, n: int) -> Accuracy | None:
    """The accuracy of ``correct`` right out of ``n`` with its Wilson interval; None when nothing was measured."""
    # deferred: scipy's submodules take a while to import; only this computation needs them
    from scipy.stats import binomtest

    if n <= 0:
        return None
    correct = max(0, min(int(correct), int(n)))
    interval = binomtest(correct, int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return Accuracy(correct, int(n), float(interval.low), float(interval.high))


def accuracy_of(value: float | None, n: int | None) -> Accuracy | None:
    """The interval for an accuracy stored as a share of ``n`` images (records keep the share and the count)."""
    if value is None or not n:
        return None
    return accuracy(round(value * n), n)


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same ``n`` images, with a paired 95% bootstrap interval and the
    exact McNemar p-value; ``a_only``/``b_only``: images only A (only B) got right."""
    difference: float
    low: float
    high: float
    n: int
    a_only: int
    b_only: int
    p_value: float

    @property
    def within_noise(self) -> bool:
        """The interval covers zero: these images cannot tell the two apart."""
        return self.low <= 0 <= self.high

    def text(self) -> str:
        sign = "+" if self.difference > 0 else ""
        verdict = "within noise" if self.within_noise else "beyond noise"
        return (f"{sign}{100 * self.difference:.1f} points (95% CI {100 * self.low:+.1f} to {100 * self.high:+.1f}, "
                f"{count(self.n)} paired images, McNemar p = {self.p_value:.3g}): {verdict}")

    def to_json(self) -> dict:
        return {"difference": self.difference, "ci_low": self.low, "ci_high": self.high, "n": self.n,
                "a_only_right": self.a_only, "b_only_right": self.b_only, "mcnemar_p": self.p_value,
                "within_noise": self.within_noise}


def paired_difference(a_right, b_right, seed: int = 0) -> PairedDifference | None:
    """Compare two models image by image (``a_right[i]``, ``b_right[i]``: whether each got image i right)."""
    # deferred: scipy's submodules take a while to import; only this computation needs them
    from scipy.stats import binomtest, bootstrap

    a, b = np.asarray(a_right, dtype=bool), np.asarray(b_right, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        return None
    diff = a.astype(np.float64) - b.astype(np.float64)
    a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
    p = binomtest(a_only, a_only + b_only).pvalue if a_only + b_only else 1.0
    if a_only + b_only == 0:  # identical answers: no resample can differ
        low = high = 0.0
    else:
        res = bootstrap((diff,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                        method="percentile", random_state=np.random.default_rng(seed), vectorized=True)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return PairedDifference(float(diff.mean()), low, high, len(a), a_only, b_only, float(p))
