"""Calibration and thresholds: fitted on validation data, stored with the model.

Contract:
- `choose_policy(probabilities, labels, operating_fpr, hits, signals=None, config=None)`
  fits, on validation data, the class temperature, the per-category thresholds
  (detector categories on hit scores, the model on its calibrated attack
  probability), the served score's calibration (isotonic or temperature) and the
  signals' weights, and returns the `DecisionPolicy` stored with the model. In
  "recall" mode (the default) the thresholds are the cheapest on safe mail that
  flag at least `target_recall` of every attack category's validation attacks, within
  `max_fpr`; in "fpr" mode at most `operating_fpr` of the safe mail is flagged. The
  policy's `validation` records each category's threshold, recall and FPR cost, and
  the served score's reliability bins and expected calibration error on validation.
- `calibrated_scores`, `deciding_hit_scores`, `combined_scores`, `decision_scores` and
  `verdict_indices` apply a policy to arrays of messages the way
  `detection.decision.decide` applies it to one.
- `reliability_bins` and `plot_reliability` show how well a score is calibrated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detection.decision import (
    ATTACK_CATEGORIES,
    DEFAULT_DETECTOR_THRESHOLD,
    SUSPICIOUS_SIGNALS,
    DecisionPolicy,
    calibrate,
    signal_category,
)
from detection.detectors import CATEGORIES
from detection.signals import SIGNAL_NAMES
from detection.tensors import CLASS_NAMES

logger = logging.getLogger(__name__)

SAFE, SPAM, ATTACK = (CLASS_NAMES.index(c) for c in ("safe", "spam", "attack"))
DETECTOR_GRID = np.round(np.arange(0.6, 1.0001, 0.05), 2)
MODES = ("recall", "fpr")
SCORE_CALIBRATIONS = ("isotonic", "temperature")
MAX_THRESHOLD_CANDIDATES = 400  # model thresholds tried in recall mode (attack quantiles)
# per message, its detector hits as (category, score) pairs
MessageHits = Sequence[Sequence[tuple[str, float]]]


@dataclass(frozen=True)
class CalibrationConfig:
    """How the policy is chosen on validation data.

    `mode` "recall": every attack category reaches `target_recall` at the least cost
    in safe mail flagged, never above `max_fpr` (past it the target is given up and
    the `max_fpr` budget used as in "fpr" mode, with a warning). `mode` "fpr": at most
    the `operating_fpr` passed to `choose_policy` of the safe mail is flagged.
    `score_calibration` "isotonic" needs `min_isotonic_examples` attacks and as many
    other messages; with fewer it falls back to "temperature". `signal_prior`
    pseudo-messages at the base rate smooth each signal's weight.
    """

    mode: str = "recall"
    target_recall: float = 0.99
    max_fpr: float = 0.001  # the brief: very high recall, but precise enough to keep on
    score_calibration: str = "isotonic"
    min_isotonic_examples: int = 50
    signal_prior: float = 10.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.score_calibration not in SCORE_CALIBRATIONS:
            raise ValueError(
                f"score_calibration must be one of {SCORE_CALIBRATIONS}, "
                f"got {self.score_calibration!r}"
            )
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {self.target_recall}")
        if not 0.0 <= self.max_fpr <= 1.0:
            raise ValueError(f"max_fpr must be in [0, 1], got {self.max_fpr}")
        if self.min_isotonic_examples < 2:
            raise ValueError(
                f"min_isotonic_examples must be at least 2, got {self.min_isotonic_examples}"
            )
        if self.signal_prior < 0:
            raise ValueError(f"signal_prior must be non-negative, got {self.signal_prior}")


# applying a policy to arrays
def calibrated_scores(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    return np.array([calibrate(list(map(float, p)), temperature) for p in probabilities])


def deciding_hit_scores(hits: MessageHits, thresholds: Mapping[str, float]) -> np.ndarray:
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
    """The decision layer's evidence before calibration: 1 - (1 - p)(1 - deciding hit)."""
    return 1.0 - (1.0 - attack) * (1.0 - deciding)


def score_map(evidence: np.ndarray, policy: DecisionPolicy) -> np.ndarray:
    """The policy's score calibration applied to an array of evidence."""
    evidence = np.asarray(evidence, dtype=float)
    if policy.score_calibration == "isotonic":
        return np.interp(evidence, policy.isotonic_x, policy.isotonic_y)
    if policy.score_calibration == "temperature":
        return _sigmoid(_logit(evidence) / policy.score_temperature)
    return evidence


def decision_scores(
    probabilities: np.ndarray, hits: MessageHits, policy: DecisionPolicy
) -> np.ndarray:
    """The calibrated score `decide` serves, for each message."""
    attack = calibrated_scores(probabilities, policy.temperature)[:, ATTACK]
    deciding = deciding_hit_scores(hits, policy.detector_thresholds)
    return score_map(combined_scores(attack, deciding), policy)


def flagged_as_attack(attack: np.ndarray, deciding: np.ndarray, policy: DecisionPolicy):
    return (attack >= policy.attack_threshold) | (deciding > 0)


def verdict_indices(calibrated: np.ndarray, deciding: np.ndarray, policy: DecisionPolicy):
    attack = flagged_as_attack(calibrated[:, ATTACK], deciding, policy)
    spam = calibrated[:, SPAM] > calibrated[:, SAFE]
    return np.where(attack, ATTACK, np.where(spam, SPAM, SAFE))


def message_categories(hits: MessageHits, signals: np.ndarray | None = None) -> np.ndarray:
    """Each message's attack category as `decide` names it: the strongest hit's, else
    the one its fired signals show (normalised `signals`, REGISTRY order), else the
    generic one."""
    names = []
    for i, message_hits in enumerate(hits):
        if message_hits:
            names.append(max(message_hits, key=lambda pair: pair[1])[0])
        else:
            names.append(signal_category(_fired(signals[i]) if signals is not None else ()))
    return np.asarray(names, dtype=object)


# fitting
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


def fit_score_temperature(evidence: np.ndarray, outcomes: np.ndarray) -> float:
    """The temperature on the evidence's logit minimising the binary log-loss."""
    logits = _logit(np.asarray(evidence, dtype=float))
    outcomes = np.asarray(outcomes, dtype=float)
    best, best_loss = 1.0, math.inf
    for temperature in np.exp(np.linspace(math.log(0.1), math.log(10.0), 61)):
        p = np.clip(_sigmoid(logits / temperature), 1e-12, 1 - 1e-12)
        loss = -float(np.mean(outcomes * np.log(p) + (1 - outcomes) * np.log(1 - p)))
        if loss < best_loss:
            best, best_loss = float(temperature), loss
    return best


def fit_isotonic(evidence: np.ndarray, outcomes: np.ndarray) -> tuple[tuple, tuple]:
    """Isotonic regression of the outcomes on the evidence, as its breakpoints (x, y):
    serving interpolates between them, so no fitted object needs storing. Scores stay
    1/(n + 2) inside 0 and 1: n validation messages cannot show certainty."""
    from sklearn.isotonic import IsotonicRegression

    margin = 1.0 / (len(outcomes) + 2)
    regression = IsotonicRegression(y_min=margin, y_max=1.0 - margin, out_of_bounds="clip")
    regression.fit(np.asarray(evidence, dtype=float), np.asarray(outcomes, dtype=float))
    xs = tuple(round(float(v), 8) for v in regression.X_thresholds_)
    ys = tuple(round(float(v), 8) for v in regression.y_thresholds_)
    return xs, ys


def fit_signal_weights(
    signals: np.ndarray, labels: np.ndarray, prior: float = 10.0
) -> dict[str, float]:
    """Per suspicious signal, how often validation mail where it fired was an attack,
    smoothed toward the attack base rate by `prior` pseudo-messages (a signal that never
    fired gets the base rate: no evidence either way)."""
    signals, is_attack = np.asarray(signals), np.asarray(labels) == ATTACK
    base = float(is_attack.mean()) if len(is_attack) else 0.0
    weights = {}
    for name in SUSPICIOUS_SIGNALS:
        fired = signals[:, SIGNAL_NAMES.index(name)] > 0
        attacks, seen = float(np.sum(fired & is_attack)), float(fired.sum()) + prior
        weights[name] = round((attacks + prior * base) / seen, 4) if seen else round(base, 4)
    return weights


def _threshold_allowing(safe_scores: np.ndarray, allowed: int) -> float:
    """The lowest threshold (flag at or above it) that flags at most `allowed` of these."""
    ranked = np.sort(np.asarray(safe_scores))[::-1]
    if allowed >= len(ranked):
        return 0.0
    return min(1.0, float(np.nextafter(ranked[allowed], 2.0)))


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


def _fpr_thresholds(
    attack: np.ndarray, hits: MessageHits, labels: np.ndarray, fpr: float
) -> tuple[float, dict[str, float]]:
    """At most `fpr` of the safe mail flagged in all: half of that budget is shared by
    the detector categories, the model gets what they leave."""
    safe = labels == SAFE
    budget = int(math.floor(fpr * int(safe.sum())))
    thresholds = choose_detector_thresholds(hits, labels, budget // 2 // len(CATEGORIES))
    by_detectors = deciding_hit_scores(hits, thresholds) > 0
    left = max(0, budget - int(np.sum(by_detectors & safe)))
    return _threshold_allowing(attack[safe & ~by_detectors], left), thresholds


def _hit_flags(hits: MessageHits, category: str) -> dict[float, np.ndarray]:
    """Per grid threshold, which messages have a hit of `category` at or above it."""
    best = np.array([max((s for c, s in h if c == category), default=0.0) for h in hits])
    return {float(g): best >= g for g in DETECTOR_GRID}


def _recall_thresholds(
    attack: np.ndarray,
    hits: MessageHits,
    labels: np.ndarray,
    categories: np.ndarray,
    config: CalibrationConfig,
) -> tuple[float, dict[str, float]] | None:
    """The cheapest model and detector thresholds (safe messages flagged) that reach the
    target recall in every attack category, or None when none fits within `max_fpr`.

    Each model threshold candidate (an attack's probability) is tried; per detector
    category the threshold is the one flagging fewest extra safe messages among those
    reaching the target (ties: the lowest, which catches most). A detector category
    without validation attacks keeps the default threshold, raised until no safe
    message is flagged (left out when that is not reached at 1.0).
    """
    safe, is_attack = labels == SAFE, labels == ATTACK
    ceiling = int(math.floor(config.max_fpr * int(safe.sum())))
    flags = {category: _hit_flags(hits, category) for category in CATEGORIES}
    present = [c for c in ATTACK_CATEGORIES if np.any(is_attack & (categories == c))]

    fixed: dict[str, float] = {}
    for category in CATEGORIES:
        if category not in present:
            quiet = [
                g for g, flag in flags[category].items()
                if g >= DEFAULT_DETECTOR_THRESHOLD and not np.any(flag & safe)
            ]  # fmt: skip
            if quiet:
                fixed[category] = min(quiet)
    fixed_flags = np.zeros(len(labels), dtype=bool)
    for category, threshold in fixed.items():
        fixed_flags |= flags[category][threshold]

    candidates = np.unique(attack[is_attack])[::-1]
    if len(candidates) > MAX_THRESHOLD_CANDIDATES:
        quantiles = np.linspace(0.0, 1.0, MAX_THRESHOLD_CANDIDATES)
        candidates = np.unique(np.quantile(attack[is_attack], quantiles, method="lower"))[::-1]
    best: tuple[int, float, dict[str, float]] | None = None
    for t in candidates:
        chosen = _detectors_for(attack >= t, flags, categories, present, safe, is_attack, config)
        if chosen is None:
            continue
        flagged = (attack >= t) | fixed_flags
        for category, threshold in chosen.items():
            flagged |= flags[category][threshold]
        cost = int(np.sum(flagged & safe))
        if cost <= ceiling and (best is None or cost < best[0]):
            best = (cost, float(t), chosen)
    if best is None:
        return None
    return best[1], {**fixed, **best[2]}


def _detectors_for(model_flags, flags, categories, present, safe, is_attack, config):
    """Per present detector category, its cheapest threshold reaching the target with
    the model's flags; None when some category cannot reach it."""
    chosen = {}
    for category in present:
        members = is_attack & (categories == category)
        if category not in flags:  # no detector: the model alone must reach it
            if np.mean(model_flags[members]) < config.target_recall:
                return None
            continue
        options = []
        for g, flag in flags[category].items():
            if np.mean((model_flags | flag)[members]) >= config.target_recall:
                options.append((int(np.sum(flag & ~model_flags & safe)), g))
        if not options:
            return None
        chosen[category] = min(options)[1]
    return chosen


def threshold_costs(
    attack: np.ndarray,
    hits: MessageHits,
    labels: np.ndarray,
    categories: np.ndarray,
    attack_threshold: float,
    detector_thresholds: Mapping[str, float],
) -> dict:
    """Per attack category: its detector threshold, validation attacks, recall, and the
    safe messages its detector flags beyond the model (count and FPR cost); the model's
    own cost; and the total."""
    safe, is_attack = labels == SAFE, labels == ATTACK
    n_safe = max(1, int(safe.sum()))
    model_flags = attack >= attack_threshold
    flagged = model_flags.copy()
    detector_flags = {}
    for category, threshold in detector_thresholds.items():
        best = np.array([max((s for c, s in h if c == category), default=0.0) for h in hits])
        detector_flags[category] = best >= threshold
        flagged |= detector_flags[category]

    report: dict = {"categories": {}}
    for category in ATTACK_CATEGORIES:
        members = is_attack & (categories == category)
        extra = detector_flags.get(category, np.zeros(len(labels), dtype=bool)) & ~model_flags
        report["categories"][category] = {
            "detector_threshold": detector_thresholds.get(category),
            "attacks": int(members.sum()),
            "recall": float(np.mean(flagged[members])) if members.any() else None,
            "safe_flagged": int(np.sum(extra & safe)),
            "fpr_cost": float(np.sum(extra & safe) / n_safe),
        }
    report["model"] = {
        "attack_threshold": float(attack_threshold),
        "safe_flagged": int(np.sum(model_flags & safe)),
        "fpr_cost": float(np.sum(model_flags & safe) / n_safe),
    }
    report["total"] = {
        "attacks": int(is_attack.sum()),
        "safe": int(safe.sum()),
        "recall": float(np.mean(flagged[is_attack])) if is_attack.any() else None,
        "safe_flagged": int(np.sum(flagged & safe)),
        "safe_fpr": float(np.sum(flagged & safe) / n_safe),
    }
    return report


def _score_calibration(evidence: np.ndarray, labels: np.ndarray, config: CalibrationConfig) -> dict:
    """The DecisionPolicy fields of the served score's calibration."""
    outcomes = (labels == ATTACK).astype(float)
    attacks = int(outcomes.sum())
    if config.score_calibration == "isotonic":
        if min(attacks, len(outcomes) - attacks) >= config.min_isotonic_examples:
            xs, ys = fit_isotonic(evidence, outcomes)
            if len(xs) >= 2:
                return {"score_calibration": "isotonic", "isotonic_x": xs, "isotonic_y": ys}
        logger.warning(
            "isotonic calibration needs %d attacks and %d other messages, got %d and %d "
            "(or one level): fitting a temperature instead",
            config.min_isotonic_examples,
            config.min_isotonic_examples,
            attacks,
            len(outcomes) - attacks,
        )
    return {
        "score_calibration": "temperature",
        "score_temperature": fit_score_temperature(evidence, outcomes),
    }


def choose_policy(
    probabilities: np.ndarray,
    labels: np.ndarray,
    operating_fpr: float,
    hits: MessageHits | None = None,
    signals: np.ndarray | None = None,
    config: CalibrationConfig | None = None,
) -> DecisionPolicy:
    """The decision policy fitted on validation data (see the module docstring).

    `signals` (normalised, REGISTRY order) give the attack categories of messages no
    detector hit and the signals' weights; without them those messages count as the
    generic category and reasons show signals by their normalised value.
    """
    config = config or CalibrationConfig()
    labels = np.asarray(labels)
    hits = hits if hits is not None else [()] * len(labels)
    signals = np.asarray(signals, dtype=float) if signals is not None else None
    temperature = fit_temperature(probabilities, labels)
    attack = calibrated_scores(probabilities, temperature)[:, ATTACK]
    categories = message_categories(hits, signals)

    mode, budget, chosen = config.mode, operating_fpr, None
    if mode == "recall":
        chosen = _recall_thresholds(attack, hits, labels, categories, config)
        budget = config.max_fpr
        if chosen is None:
            logger.warning(
                "target recall %.4f is not reachable within %.4f FPR on validation: "
                "thresholds chosen for that FPR instead",
                config.target_recall,
                config.max_fpr,
            )
    attack_threshold, thresholds = chosen or _fpr_thresholds(attack, hits, labels, budget)

    validation = threshold_costs(attack, hits, labels, categories, attack_threshold, thresholds)
    validation["target_met"] = mode == "fpr" or chosen is not None
    deciding = deciding_hit_scores(hits, thresholds)
    calibration = _score_calibration(combined_scores(attack, deciding), labels, config)
    weights = (
        fit_signal_weights(signals, labels, config.signal_prior) if signals is not None else {}
    )
    fitted = DecisionPolicy(**calibration)
    served = score_map(combined_scores(attack, deciding), fitted)
    validation["reliability"] = reliability_bins(served, labels == ATTACK)
    validation["expected_calibration_error"] = expected_calibration_error(served, labels == ATTACK)
    policy = DecisionPolicy(
        attack_threshold,
        temperature,
        thresholds,
        signal_weights=weights,
        mode=mode,
        target_recall=config.target_recall if mode == "recall" else None,
        fpr_budget=budget,
        validation=validation,
        **calibration,
    )
    total = validation["total"]
    logger.info(
        "policy (%s): attack threshold %.6f, %d detector categories; validation recall "
        "%.4f at safe FPR %.4f; score calibration %s",
        mode,
        attack_threshold,
        len(thresholds),
        total["recall"] if total["recall"] is not None else float("nan"),
        total["safe_fpr"],
        policy.score_calibration,
    )
    return policy


# reliability
def reliability_bins(scores: np.ndarray, outcomes: np.ndarray, bins: int = 10) -> list[dict]:
    """Equal-width bins of the score: each bin's range, count, mean score and the share
    of its messages that were attacks (empty bins left out)."""
    scores, outcomes = np.asarray(scores, dtype=float), np.asarray(outcomes, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(scores, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        mine = index == b
        if mine.any():
            rows.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "count": int(mine.sum()),
                    "mean_score": float(scores[mine].mean()),
                    "attack_rate": float(outcomes[mine].mean()),
                }
            )
    return rows


def expected_calibration_error(scores: np.ndarray, outcomes: np.ndarray, bins: int = 10) -> float:
    """Count-weighted mean gap between a bin's mean score and its attack rate."""
    rows = reliability_bins(scores, outcomes, bins)
    total = sum(row["count"] for row in rows)
    gaps = sum(row["count"] * abs(row["mean_score"] - row["attack_rate"]) for row in rows)
    return gaps / total if total else float("nan")


def plot_reliability(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, bins: int = 10
) -> Path:
    """A reliability diagram (PNG): per named (scores, outcomes) pair, attack rate
    against mean score per bin, with the diagonal a calibrated score lies on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curve_axes, count_axes) = plt.subplots(
        2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    curve_axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    for name, (scores, outcomes) in curves.items():
        rows = reliability_bins(scores, outcomes, bins)
        ece = expected_calibration_error(scores, outcomes, bins)
        means = [row["mean_score"] for row in rows]
        curve_axes.plot(
            means, [row["attack_rate"] for row in rows], marker="o", label=f"{name} (ECE {ece:.3f})"
        )
        count_axes.plot(means, [row["count"] for row in rows], marker=".", label=name)
    curve_axes.set_ylabel("share of attacks")
    curve_axes.set_title("Reliability of the decision layer's score")
    curve_axes.legend(loc="upper left", fontsize="small")
    count_axes.set_yscale("log")
    count_axes.set_xlabel("score (bin mean)")
    count_axes.set_ylabel("messages")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _fired(row: np.ndarray) -> list[str]:
    return [name for name in SUSPICIOUS_SIGNALS if row[SIGNAL_NAMES.index(name)] > 0]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1.0 - 1e-6)
    return np.log(p / (1.0 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
