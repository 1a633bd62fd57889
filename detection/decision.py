"""Model probabilities and detector hits to the verdict of the scoring contract.

Contract: `decide(probabilities, raw_signals, hits, policy) -> Decision`.

- The model's class probabilities are calibrated by the policy's temperature.
- The verdict is "attack" when the calibrated attack probability reaches the policy's
  attack threshold, or when a detector hit reaches its category's threshold (a
  category missing from `detector_thresholds` never decides alone); else "spam" when
  spam is more likely than safe; else "safe".
- The category is the strongest deciding detector's; for a verdict the model alone
  decided, the strongest hit's, else one read from the signals that fired.
- The score is the calibrated probability that the message is an attack, whoever
  decided: the evidence `1 - (1 - p)(1 - h)` (p the calibrated attack probability, h
  the strongest deciding hit's score, 0 when none) mapped through the policy's score
  calibration, fitted on validation data (isotonic breakpoints or a temperature).
- Reasons are ordered by contribution, each showing its figure: the model (its
  attack probability), each detector hit (its score) and each suspicious signal that
  fired (its weight: how often mail where it fired was an attack on validation data,
  or its normalised value where the policy holds no weights). `Decision.contributions`
  holds the same figures, in the same order.

`Verdict` is one line of the scoring contract; every path (in-process, Triton
client, batch rescoring) returns it.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from detection.detectors import CATEGORIES, Hit
from detection.signals import MESSAGE_SIGNALS, REGISTRY
from detection.tensors import CLASS_NAMES

VERDICTS = CLASS_NAMES
# scores in Verdict lines are rounded to this many decimals on every path: the server
# sends them as 32-bit floats, which hold about seven significant digits
SCORE_DECIMALS = 6
SCORE_CALIBRATIONS = ("none", "temperature", "isotonic")
POLICY_MODES = ("manual", "recall", "fpr")
GENERIC_CATEGORY = "phishing"  # an attack no detector and no category signal explains
ATTACK_CATEGORIES = (*CATEGORIES, GENERIC_CATEGORY)

# signals whose firing counts as evidence of an attack, mapped to a category
_CATEGORY_EVIDENCE = (
    ("malware", ("risky_attachment",)),
    ("payment_fraud", ("payment_wording",)),
    ("credential_phishing", ("credential_wording", "link_text_mismatch", "ip_link")),
)
SUSPICIOUS_SIGNALS = tuple(
    s.name
    for s in MESSAGE_SIGNALS
    if s.name
    not in ("link_count", "link_domain_count", "text_length", "attachment_count", "image_count")
)
_BY_NAME = {s.name: s for s in REGISTRY}
_EPSILON = 1e-6  # scores are kept this far from 0 and 1 before taking a logit

DEFAULT_DETECTOR_THRESHOLD = 0.8


def _default_detector_thresholds() -> dict[str, float]:
    return dict.fromkeys(CATEGORIES, DEFAULT_DETECTOR_THRESHOLD)


@dataclass(frozen=True)
class DecisionPolicy:
    """Operating thresholds and calibration, chosen on validation data, stored with the
    model (`bulwark.json`'s "policy", read back with `DecisionPolicy(**stored)`).

    `attack_threshold` applies to the temperature-calibrated attack probability,
    `detector_thresholds` to hit scores per category. `score_calibration` maps the
    evidence to the served score: "none" (the evidence itself), "temperature"
    (`score_temperature` on its logit) or "isotonic" (piecewise-linear through the
    breakpoints `isotonic_x` -> `isotonic_y`). `signal_weights` are the signals'
    contributions to reasons. `mode`, `target_recall`, `fpr_budget` and `validation`
    record how the thresholds were chosen and what each cost on validation data.
    """

    attack_threshold: float = 0.5
    temperature: float = 1.0
    detector_thresholds: dict[str, float] = field(default_factory=_default_detector_thresholds)
    score_calibration: str = "none"
    score_temperature: float = 1.0
    isotonic_x: tuple[float, ...] = ()
    isotonic_y: tuple[float, ...] = ()
    signal_weights: dict[str, float] = field(default_factory=dict)
    mode: str = "manual"
    target_recall: float | None = None
    fpr_budget: float | None = None
    validation: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # stored policies come back from JSON with lists where tuples were
        object.__setattr__(self, "isotonic_x", tuple(float(v) for v in self.isotonic_x))
        object.__setattr__(self, "isotonic_y", tuple(float(v) for v in self.isotonic_y))
        if not 0.0 <= self.attack_threshold <= 1.0:
            raise ValueError(f"attack_threshold must be in [0, 1], got {self.attack_threshold}")
        for name in ("temperature", "score_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        unknown = sorted(set(self.detector_thresholds) - set(CATEGORIES))
        if unknown:
            raise ValueError(
                f"detector_thresholds may name the categories {CATEGORIES}, got {unknown}"
            )
        for category, threshold in self.detector_thresholds.items():
            if not 0.0 < threshold <= 1.0:
                raise ValueError(
                    f"detector_thresholds[{category!r}] must be in (0, 1], got {threshold}"
                )
        if self.score_calibration not in SCORE_CALIBRATIONS:
            raise ValueError(
                f"score_calibration must be one of {SCORE_CALIBRATIONS}, "
                f"got {self.score_calibration!r}"
            )
        if self.mode not in POLICY_MODES:
            raise ValueError(f"mode must be one of {POLICY_MODES}, got {self.mode!r}")
        self._check_isotonic()
        unknown = sorted(set(self.signal_weights) - set(SUSPICIOUS_SIGNALS))
        if unknown:
            raise ValueError(f"signal_weights may name suspicious signals only, got {unknown}")

    def _check_isotonic(self) -> None:
        xs, ys = self.isotonic_x, self.isotonic_y
        if len(xs) != len(ys):
            raise ValueError(
                f"isotonic_x and isotonic_y must have the same length, got {len(xs)} and {len(ys)}"
            )
        if self.score_calibration == "isotonic" and len(xs) < 2:
            raise ValueError(f"isotonic calibration needs at least 2 breakpoints, got {len(xs)}")
        if _decreases(xs) or _decreases(ys):
            raise ValueError("isotonic breakpoints must be non-decreasing in x and in y")
        if ys and not (0.0 <= ys[0] and ys[-1] <= 1.0):
            raise ValueError(f"isotonic_y must lie in [0, 1], got {ys[0]} to {ys[-1]}")

    def decides(self, hit: Hit) -> bool:
        threshold = self.detector_thresholds.get(hit.category)
        return threshold is not None and hit.score >= threshold

    def calibrated_score(self, evidence: float) -> float:
        """The served score for the evidence `1 - (1 - p)(1 - h)`."""
        if self.score_calibration == "temperature":
            clipped = min(max(evidence, _EPSILON), 1.0 - _EPSILON)
            logit = math.log(clipped / (1.0 - clipped)) / self.score_temperature
            return 1.0 / (1.0 + math.exp(-logit))
        if self.score_calibration == "isotonic":
            return _interpolate(evidence, self.isotonic_x, self.isotonic_y)
        return evidence


@dataclass(frozen=True)
class Verdict:
    """One line of the scoring contract."""

    id: str
    source: str
    index: int
    verdict: str | None = None
    category: str | None = None
    score: float | None = None
    reasons: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


@dataclass(frozen=True)
class Decision:
    verdict: str
    category: str | None
    score: float
    reasons: list[str]
    probabilities: list[float]  # calibrated, in CLASS_NAMES order
    contributions: list[float] = field(default_factory=list)  # one per reason, same order


def calibrate(probabilities: list[float], temperature: float) -> list[float]:
    """Temperature scaling applied to probabilities (via their logs)."""
    logits = [math.log(max(p, 1e-12)) / temperature for p in probabilities]
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [v / total for v in exps]


def evidence(p_attack: float, hit_score: float) -> float:
    """Model and deciding detector combined: 1 - (1 - p)(1 - h), before calibration."""
    return 1.0 - (1.0 - p_attack) * (1.0 - hit_score)


def attack_category(hits: Sequence[Hit], fired: Sequence[str]) -> str:
    """The category of an attack: the strongest hit's, else one the signals show."""
    if hits:
        return max(hits, key=lambda hit: hit.score).category
    return signal_category(fired)


def signal_category(fired: Sequence[str]) -> str:
    """The category the fired signals show, or the generic one."""
    for category, names in _CATEGORY_EVIDENCE:
        if any(name in fired for name in names):
            return category
    return GENERIC_CATEGORY


def decide(
    probabilities: list[float],
    raw: dict[str, float],
    hits: Sequence[Hit] = (),
    policy: DecisionPolicy | None = None,
) -> Decision:
    policy = policy or DecisionPolicy()
    calibrated = calibrate(list(probabilities), policy.temperature)
    p_safe, p_spam, p_attack = calibrated
    fired = fired_signals(raw)
    hits = sorted(hits, key=lambda hit: -hit.score)
    deciding = [hit for hit in hits if policy.decides(hit)]

    if deciding:
        verdict, category = "attack", deciding[0].category
    elif p_attack >= policy.attack_threshold:
        verdict, category = "attack", attack_category(hits, fired)
    elif p_spam > p_safe:
        verdict, category = "spam", "spam"
    else:
        verdict, category = "safe", None

    score = policy.calibrated_score(evidence(p_attack, deciding[0].score if deciding else 0.0))
    weighted = _reasons(p_attack, hits, fired, raw, policy)
    return Decision(
        verdict,
        category,
        score,
        [text for _, text in weighted],
        calibrated,
        [round(figure, 4) for figure, _ in weighted],
    )


def signal_contribution(name: str, raw_value: float, policy: DecisionPolicy) -> float:
    """A fired signal's figure in the reasons: its fitted weight, else its normalised value."""
    if name in policy.signal_weights:
        return policy.signal_weights[name]
    return _BY_NAME[name].normalise(raw_value)


def _reasons(
    p_attack: float,
    hits: list[Hit],
    fired: list[str],
    raw: dict[str, float],
    policy: DecisionPolicy,
) -> list[tuple[float, str]]:
    """(contribution, text) for the model, each hit and each fired signal, largest first;
    equal figures keep that order (model, detectors, signals)."""
    weighted = [(p_attack, f"model: attack probability {p_attack:.3f}")]
    weighted += [
        (hit.score, f"detector {hit.detector} ({hit.category}, {hit.score:.2f}): {hit.reason}")
        for hit in hits
    ]
    for name in fired:
        figure = signal_contribution(name, raw[name], policy)
        weighted.append((figure, f"signal {name} ({figure:.2f}): {_BY_NAME[name].description}"))
    weighted.sort(key=lambda item: -item[0])
    return weighted


def fired_signals(raw: dict[str, float]) -> list[str]:
    """Suspicious signals that fired, strongest (normalised) first."""
    fired = [
        (name, _BY_NAME[name].normalise(raw[name])) for name in SUSPICIOUS_SIGNALS if raw.get(name)
    ]
    fired.sort(key=lambda item: -item[1])
    return [name for name, _ in fired]


def _decreases(values: tuple[float, ...]) -> bool:
    return any(b < a for a, b in zip(values, values[1:], strict=False))


def _interpolate(x: float, xs: tuple[float, ...], ys: tuple[float, ...]) -> float:
    """Piecewise-linear through (xs, ys), constant beyond the ends (as np.interp)."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x) - 1
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
