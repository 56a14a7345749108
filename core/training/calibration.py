"""How honest a model's probabilities are, and temperature scaling to make them so.

A fine-tuned CNN is usually overconfident: of the test images it calls "95% sure", fewer than 95%
are right. The expected calibration error (ECE) measures the gap: the top-class confidences are put
into 15 equal-width bins, and the gaps between each bin's accuracy and its mean confidence are
averaged, weighted by the bin's share of images (Guo et al., "On Calibration of Modern Neural
Networks", 2017). Temperature scaling divides the logits by one number T > 0 fitted to minimise the
negative log-likelihood; it never changes which class wins, so accuracy stays the same.

The temperature must not be judged on the images it was fitted on: ``calibrate`` cross-fits it on two
halves of the given images (fitted on one half, applied to the other, and the other way round), and
reports the ECE of those held-apart probabilities. The temperature a run keeps for prediction is then
fitted on all of them. numpy and scipy only: training, the report and the pages share it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

ECE_BINS = 15
T_RANGE = (0.01, 100.0)  # beyond this a fit is chasing a degenerate test set (every image right), not calibrating


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``, computed stably."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin of a reliability diagram: [low, high), its images, their accuracy and mean
    confidence (None when the bin is empty)."""
    low: float
    high: float
    count: int
    accuracy: float | None
    confidence: float | None


def _bin_of(confidence: np.ndarray, bins: int) -> np.ndarray:
    # (low, high] bins; a confidence of exactly 0 joins the first
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """The reliability diagram's bins of the top-class confidence."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels)
    which = _bin_of(confidence, bins)
    out = []
    for b in range(bins):
        members = which == b
        n = int(members.sum())
        out.append(ReliabilityBin(b / bins, (b + 1) / bins, n, float(correct[members].mean()) if n else None,
                                  float(confidence[members].mean()) if n else None))
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ over bins of (bin's share of images) × |bin's accuracy − bin's mean confidence|."""
    total = len(labels)
    if total == 0:
        raise ValueError("the calibration error needs at least one image")
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in reliability(probs, labels, bins)
                     if b.accuracy is not None and b.confidence is not None))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:

    z = np.asarray(logits, dtype=np.float64) / temperature
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in ``T_RANGE`` that minimises the negative log-likelihood of ``softmax(logits / T)``."""

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("a temperature needs at least one image to be fitted on")
    found = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
                            bounds=tuple(np.log(T_RANGE)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


@dataclass
class Calibration:
    """ECE before and after temperature scaling, with the reliability diagram's bins for both."""
    images: int
    ece: float
    temperature: float  # fitted on all the images: the one prediction uses
    ece_calibrated: float | None  # of cross-fitted probabilities (None: too few images to hold any apart)
    bins: list[ReliabilityBin] = field(default_factory=list)
    bins_calibrated: list[ReliabilityBin] = field(default_factory=list)
    method: str = ""

    @property
    def at_bound(self) -> bool:
        """The fit ran into T_RANGE: the images cannot pin the temperature down (all right, or all wrong)."""
        return not T_RANGE[0] * 1.01 < self.temperature < T_RANGE[1] / 1.01


def cross_fitted_probabilities(logits: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """Each image's probabilities under a temperature fitted on the other half of the images only."""
    n = len(labels)
    if n < 2:
        return None
    order = np.random.default_rng(seed).permutation(n)
    halves = (order[: n // 2], order[n // 2:])
    probs = np.empty(np.shape(logits), dtype=np.float64)
    for fit_on, judged in (halves, halves[::-1]):
        probs[judged] = softmax(logits[judged], fit_temperature(logits[fit_on], labels[fit_on]))
    return probs


def calibrate(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS, seed: int = 0,
              temperature: float | None = None, fitted_on: str = "") -> Calibration:
    """The calibration of ``logits`` against ``labels`` (test images), before and after temperature scaling.

    ``temperature``: the one prediction uses, fitted on other images (``fitted_on``, the validation split): the
    scaled figures are then simply measured here. Without one (runs from before the validation split, whose
    temperature was fitted on these very test images), a temperature is cross-fitted on halves of them."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    raw = softmax(logits)
    if temperature is not None:
        scaled = softmax(logits, temperature)
        return Calibration(
            images=len(labels), ece=expected_calibration_error(raw, labels, bins), temperature=temperature,
            ece_calibrated=expected_calibration_error(scaled, labels, bins), bins=reliability(raw, labels, bins),
            bins_calibrated=reliability(scaled, labels, bins),
            method=f"the temperature was fitted on {fitted_on or 'the validation images'}; every figure here is "
                   "measured on test images it never saw")
    held_apart = cross_fitted_probabilities(logits, labels, seed)
    return Calibration(
        images=len(labels), ece=expected_calibration_error(raw, labels, bins),
        temperature=fit_temperature(logits, labels),
        ece_calibrated=None if held_apart is None else expected_calibration_error(held_apart, labels, bins),
        bins=reliability(raw, labels, bins),
        bins_calibrated=[] if held_apart is None else reliability(held_apart, labels, bins),
        method=("an older run, whose temperature was fitted on its test images: the calibrated figures are "
                "cross-fitted (a temperature fitted on one half of the test images scales the other half, and the "
                "other way round), so no image is judged by a temperature fitted on it"))


def bound_note(temperature: float) -> str:
    """What it means that a temperature fit ran to the end of its range, in the direction it went."""
    if temperature <= T_RANGE[0] * 1.01:
        return (f"the temperature fit ran to its lower end ({temperature:g}): the model got every validation image "
                "right, so sharper probabilities kept fitting better and the validation split cannot tell how sure "
                "it should be; treat its probabilities with care")
    return (f"the temperature fit ran to its upper end ({temperature:g}): the model's confidence told nothing about "
            "being right on the validation images (as when it calls every image one class), so the calibrated "
            "probabilities are flattened towards equal; treat them with care")
