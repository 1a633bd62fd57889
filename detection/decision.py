"""Model probabilities and detector hits to the verdict of the scoring contract.

Contract: `decide(probabilities, raw_signals, hits, policy) -> Decision`.

- The model's probabilities are calibrated by the policy's temperature.
- The verdict is "attack" when the calibrated attack probability reaches the policy's
  attack threshold, or when a detector hit reaches its category's threshold (a
  category missing from `detector_thresholds` never decides alone); else "spam" when
  spam is more likely than safe; else "safe".
- The category is the strongest deciding detector's; for a verdict the model alone
  decided, the strongest hit's, else one read from the signals that fired.
- The score is the calibrated attack probability; when detectors decide the verdict
  it is combined with the strongest deciding hit as 1 - (1 - p)(1 - hit score).
- Reasons: the model and every detector hit ordered by their score, then the
  suspicious signals that fired, strongest first.

`Verdict` is one line of the scoring contract; every path (in-process, Triton
client, batch rescoring) returns it.
"""

from __future__ import annotations

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

# signals whose firing counts as evidence of an attack, mapped to a category
_CATEGORY_EVIDENCE = (
    ("malware", ("risky_attachment",)),
    ("payment_fraud", ("payment_wording",)),
    ("credential_phishing", ("credential_wording", "link_text_mismatch", "ip_link")),
)
_SUSPICIOUS = tuple(
    s.name
    for s in MESSAGE_SIGNALS
    if s.name
    not in ("link_count", "link_domain_count", "text_length", "attachment_count", "image_count")
)
_BY_NAME = {s.name: s for s in REGISTRY}


DEFAULT_DETECTOR_THRESHOLD = 0.8


def _default_detector_thresholds() -> dict[str, float]:
    return dict.fromkeys(CATEGORIES, DEFAULT_DETECTOR_THRESHOLD)


@dataclass(frozen=True)
class DecisionPolicy:
    """Operating thresholds, chosen on validation data and stored with the model."""

    attack_threshold: float = 0.5
    temperature: float = 1.0
    detector_thresholds: dict[str, float] = field(default_factory=_default_detector_thresholds)

    def __post_init__(self) -> None:
        if not 0.0 <= self.attack_threshold <= 1.0:
            raise ValueError(f"attack_threshold must be in [0, 1], got {self.attack_threshold}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
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

    def decides(self, hit: Hit) -> bool:
        threshold = self.detector_thresholds.get(hit.category)
        return threshold is not None and hit.score >= threshold


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


def calibrate(probabilities: list[float], temperature: float) -> list[float]:
    """Temperature scaling applied to probabilities (via their logs)."""
    logits = [math.log(max(p, 1e-12)) / temperature for p in probabilities]
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [v / total for v in exps]


def decide(
    probabilities: list[float],
    raw: dict[str, float],
    hits: Sequence[Hit] = (),
    policy: DecisionPolicy | None = None,
) -> Decision:
    policy = policy or DecisionPolicy()
    calibrated = calibrate(list(probabilities), policy.temperature)
    p_safe, p_spam, p_attack = calibrated
    fired = _fired_signals(raw)
    hits = sorted(hits, key=lambda hit: -hit.score)
    deciding = [hit for hit in hits if policy.decides(hit)]

    score = p_attack
    if deciding:
        verdict, category = "attack", deciding[0].category
        score = 1.0 - (1.0 - p_attack) * (1.0 - deciding[0].score)
    elif p_attack >= policy.attack_threshold:
        verdict = "attack"
        category = hits[0].category if hits else _attack_category(fired)
    elif p_spam > p_safe:
        verdict, category = "spam", "spam"
    else:
        verdict, category = "safe", None

    return Decision(verdict, category, score, _reasons(p_attack, hits, fired), calibrated)


def _reasons(p_attack: float, hits: list[Hit], fired: list[str]) -> list[str]:
    """The model and the detector hits by their score, then the signals that fired."""
    weighted = [(p_attack, f"model: attack probability {p_attack:.3f}")]
    weighted += [
        (hit.score, f"detector {hit.detector} ({hit.category}, {hit.score:.2f}): {hit.reason}")
        for hit in hits
    ]
    weighted.sort(key=lambda item: -item[0])
    reasons = [text for _, text in weighted]
    return reasons + [f"signal {name}: {_BY_NAME[name].description}" for name in fired]


def _fired_signals(raw: dict[str, float]) -> list[str]:
    """Suspicious signals that fired, strongest (normalised) first."""
    fired = [(name, _BY_NAME[name].normalise(raw[name])) for name in _SUSPICIOUS if raw.get(name)]
    fired.sort(key=lambda item: -item[1])
    return [name for name, _ in fired]


def _attack_category(fired: list[str]) -> str:
    for category, evidence in _CATEGORY_EVIDENCE:
        if any(name in fired for name in evidence):
            return category
    return "phishing"
