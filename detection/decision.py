"""Model probabilities to the verdict of the scoring contract.

Contract: `decide(probabilities, raw_signals, policy) -> Decision`. The verdict is
"attack" when the calibrated attack score reaches the policy's attack threshold,
else "spam" when spam is more likely than safe, else "safe". Reasons name the
signals that fired, strongest first.

`Verdict` is one line of the scoring contract; every path (in-process, Triton
client, batch rescoring) returns it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from detection.signals import MESSAGE_SIGNALS, REGISTRY
from detection.tensors import CLASS_NAMES

VERDICTS = CLASS_NAMES

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


@dataclass(frozen=True)
class DecisionPolicy:
    """Operating thresholds, chosen on validation data and stored with the model."""

    attack_threshold: float = 0.5
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.attack_threshold <= 1.0:
            raise ValueError(f"attack_threshold must be in [0, 1], got {self.attack_threshold}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


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


def decide(probabilities: list[float], raw: dict[str, float], policy: DecisionPolicy) -> Decision:
    calibrated = calibrate(list(probabilities), policy.temperature)
    p_safe, p_spam, p_attack = calibrated
    fired = _fired_signals(raw)

    if p_attack >= policy.attack_threshold:
        verdict, category = "attack", _attack_category(fired)
    elif p_spam > p_safe:
        verdict, category = "spam", "spam"
    else:
        verdict, category = "safe", None

    reasons = [f"model: attack probability {p_attack:.3f}"]
    reasons += [f"signal {name}: {_BY_NAME[name].description}" for name in fired]
    return Decision(verdict, category, p_attack, reasons, calibrated)


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
