"""Calibration and thresholds: fitted on validation data, stored with the model.

Contract:
- `choose_policy(probabilities, labels, operating_fpr, hits)` fits the temperature,
  the per-category detector thresholds and the attack threshold on validation data,
  so that the served verdict flags at most `operating_fpr` of the safe mail.
- `calibrated_scores`, `deciding_hit_scores`, `combined_scores` and `verdict_indices`
  apply a policy to arrays of validation or test messages the way `detection.decision`
  applies it to one message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from detection.decision import DecisionPolicy, calibrate
from detection.detectors import CATEGORIES
from detection.tensors import CLASS_NAMES

SAFE, SPAM, ATTACK = (CLASS_NAMES.index(c) for c in ("safe", "spam", "attack"))
DETECTOR_GRID = np.round(np.arange(0.6, 1.0001, 0.05), 2)
# per message, its detector hits as (category, score) pairs
MessageHits = Sequence[Sequence[tuple[str, float]]]


def calibrated_scores(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    return np.array([calibrate(list(map(float, p)), temperature) for p in probabilities])


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising negative log-likelihood, on a log-spaced grid."""
    logs = np.log(np.clip(probabilities, 1e-12, 1.0))
    best, best_nll = 1.0, math.inf
    for temperature in np.exp(np.linspace(math.log(0.25), math.log(8.0), 41)):
        scaled = logs / temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scaled).sum(axis=1))
        nll = float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))
        if nll < best_nll:
            best, best_nll = float(temperature), nll
    return best


def _threshold_allowing(safe_scores: np.ndarray, allowed: int) -> float:
    """The lowest threshold (flag at or above it) that flags at most `allowed` of these."""
    ranked = np.sort(np.asarray(safe_scores))[::-1]
    if allowed >= len(ranked):
        return 0.0
    return min(1.0, float(np.nextafter(ranked[allowed], 2.0)))


def deciding_hit_scores(hits: MessageHits, thresholds: dict[str, float]) -> np.ndarray:
    """Per message, the strongest hit that reaches its category's threshold (0 if none)."""
    best = np.zeros(len(hits))
    for i, message_hits in enumerate(hits):
        scores = [s for c, s in message_hits if c in thresholds and s >= thresholds[c]]
        best[i] = max(scores, default=0.0)
    return best


def detector_scores(hits: MessageHits) -> np.ndarray:
    """Per message, the strongest hit of any detector (0 if none): the detectors alone."""
    return np.array([max((s for _, s in message_hits), default=0.0) for message_hits in hits])


def combined_scores(attack: np.ndarray, deciding: np.ndarray) -> np.ndarray:
    """The decision layer's score: 1 - (1 - p)(1 - deciding hit score)."""
    return 1.0 - (1.0 - attack) * (1.0 - deciding)


def choose_detector_thresholds(
    hits: MessageHits, labels: np.ndarray, allowed_per_category: int
) -> dict[str, float]:
    """Per category, the lowest grid threshold at which at most `allowed_per_category`
    safe messages have a hit; a category noisier than that at 1.0 is left out."""
    safe_hits = [h for h, label in zip(hits, labels, strict=True) if label == SAFE]
    thresholds = {}
    for category in CATEGORIES:
        for threshold in DETECTOR_GRID:
            flagged = sum(any(c == category and s >= threshold for c, s in h) for h in safe_hits)
            if flagged <= allowed_per_category:
                thresholds[category] = float(threshold)
                break
    return thresholds


def choose_policy(
    probabilities: np.ndarray,
    labels: np.ndarray,
    operating_fpr: float,
    hits: MessageHits | None = None,
) -> DecisionPolicy:
    """Temperature, detector thresholds and attack threshold from validation data.

    At most `operating_fpr` of the safe messages may be flagged in all: half of that
    budget is shared by the detector categories, the model gets what they leave.
    """
    hits = hits if hits is not None else [()] * len(labels)
    temperature = fit_temperature(probabilities, labels)
    attack = calibrated_scores(probabilities, temperature)[:, ATTACK]
    safe = labels == SAFE
    budget = int(math.floor(operating_fpr * int(safe.sum())))

    thresholds = choose_detector_thresholds(hits, labels, budget // 2 // len(CATEGORIES))
    by_detectors = deciding_hit_scores(hits, thresholds) > 0
    left = max(0, budget - int(np.sum(by_detectors & safe)))
    attack_threshold = _threshold_allowing(attack[safe & ~by_detectors], left)
    return DecisionPolicy(attack_threshold, temperature, thresholds)


def flagged_as_attack(attack: np.ndarray, deciding: np.ndarray, policy: DecisionPolicy):
    return (attack >= policy.attack_threshold) | (deciding > 0)


def verdict_indices(calibrated: np.ndarray, deciding: np.ndarray, policy: DecisionPolicy):
    attack = flagged_as_attack(calibrated[:, ATTACK], deciding, policy)
    spam = calibrated[:, SPAM] > calibrated[:, SAFE]
    return np.where(attack, ATTACK, np.where(spam, SPAM, SAFE))
