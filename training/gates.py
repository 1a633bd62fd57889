"""Promotion gates: the candidate against production on the same frozen golden set.

Contract:
- `golden_figures(version_dir, golden, operating_fpr)` scores the golden rows with one
  exported model version (ONNX Runtime, its own decision policy, the detectors' hits)
  and returns, per attack category, the recall at the threshold that lets
  `operating_fpr` of the golden safe mail through, and the false-positive rate of the
  served verdict at the model's own operating point.
- `judge(candidate, production, config)` applies the rules and returns a `GateReport`:
  in no category may the candidate's recall at the operating FPR fall more than
  `max_recall_drop` below production's, and its operating false-positive rate may
  not exceed production's by more than `max_fpr_rise` (0: it may not rise). Each rule
  is listed with its figures and whether it passed; `passed` is all of them.
  Without a production model the comparisons are skipped and the gate passes only
  when `allow_first_version`.
- `write_gate_report(report, folder)` writes `gate.json` and `gate.md`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from detection.decision import DecisionPolicy
from serving.scorer import OnnxFusion
from training.calibration import (
    ATTACK,
    SAFE,
    calibrated_scores,
    deciding_hit_scores,
    decision_scores,
    verdict_indices,
)
from training.evaluate import recall_at_fpr
from training.golden import GOLDEN_CATEGORIES


@dataclass(frozen=True)
class GateConfig:
    operating_fpr: float = 0.01  # recall is compared where this share of safe mail is flagged
    max_recall_drop: float = 0.02  # per category, absolute
    max_fpr_rise: float = 0.0  # of the served verdict's false-positive rate, absolute
    allow_first_version: bool = True  # promote without comparison when nothing is in production

    def __post_init__(self) -> None:
        for name in ("operating_fpr", "max_recall_drop", "max_fpr_rise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"GateConfig.{name} must be a number in [0, 1), got {value!r}")


def golden_figures(version_dir: Path, golden, operating_fpr: float) -> dict:
    """Per-category recall at `operating_fpr` and the operating-point FPR of one model."""
    model = OnnxFusion(Path(version_dir))
    policy = DecisionPolicy(**model.meta.get("policy", {}))
    signals = golden["signals"]
    if model.meta.get("text_only"):  # a text-only model was trained and evaluated without them
        signals = [[0.0] * len(row) for row in signals]
    probabilities = model.probabilities(golden["text"], signals, progress="golden")
    hits = [
        list(zip(c, s, strict=True))
        for c, s in zip(golden["hit_categories"], golden["hit_scores"], strict=True)
    ]
    calibrated = calibrated_scores(probabilities, policy.temperature)
    deciding = deciding_hit_scores(hits, policy.detector_thresholds)
    scores = decision_scores(probabilities, hits, policy)  # the score the server returns
    flagged = verdict_indices(calibrated, deciding, policy) == ATTACK
    return category_figures(
        scores, flagged, np.asarray(golden["label"]), np.asarray(golden["category"]), operating_fpr
    ) | {"version_dir": str(version_dir), "model_version": model.meta.get("version")}


def category_figures(
    scores: np.ndarray,
    flagged: np.ndarray,
    labels: np.ndarray,
    categories: np.ndarray,
    operating_fpr: float,
) -> dict:
    """The figures `judge` compares, from served scores and operating-point verdicts."""
    safe = labels == SAFE
    threshold = recall_at_fpr(scores[safe], scores[labels == ATTACK], operating_fpr)[1]
    per_category = {}
    for category in GOLDEN_CATEGORIES:
        mine = (labels == ATTACK) & (categories == category)
        if mine.any():
            per_category[category] = {
                "attacks": int(mine.sum()),
                "recall_at_fpr": float(np.mean(scores[mine] > threshold)),
                "recall_at_operating_point": float(np.mean(flagged[mine])),
            }
    return {
        "operating_fpr": operating_fpr,
        "threshold_at_fpr": threshold,
        "safe": int(safe.sum()),
        "operating_point_fpr": float(np.mean(flagged[safe])) if safe.any() else math.nan,
        "categories": per_category,
    }


@dataclass
class GateReport:
    passed: bool
    rules: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    candidate: dict = field(default_factory=dict)
    production: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def judge(candidate: dict, production: dict | None, config: GateConfig) -> GateReport:
    """Apply the gate rules (module docstring) to two models' `golden_figures`."""
    if production is None:
        rule = {
            "rule": "first version: nothing in production to compare with",
            "passed": config.allow_first_version,
            "detail": f"allow_first_version = {config.allow_first_version}",
        }
        return GateReport(rule["passed"], [rule], asdict(config), candidate, None)

    rules = []
    for category, mine in candidate["categories"].items():
        theirs = production["categories"].get(category)
        if theirs is None:
            rules.append(
                {
                    "rule": f"recall[{category}] at {config.operating_fpr:g} FPR",
                    "passed": True,
                    "detail": "production was not measured on this category",
                    "candidate": mine["recall_at_fpr"],
                    "production": None,
                }
            )
            continue
        floor = theirs["recall_at_fpr"] - config.max_recall_drop
        rules.append(
            {
                "rule": f"recall[{category}] at {config.operating_fpr:g} FPR "
                f"drops at most {config.max_recall_drop:g}",
                "passed": mine["recall_at_fpr"] >= floor - 1e-12,
                "candidate": mine["recall_at_fpr"],
                "production": theirs["recall_at_fpr"],
                "limit": floor,
                "attacks": mine["attacks"],
            }
        )
    ceiling = production["operating_point_fpr"] + config.max_fpr_rise
    rules.append(
        {
            "rule": f"operating-point FPR on golden safe mail rises at most "
            f"{config.max_fpr_rise:g}",
            "passed": candidate["operating_point_fpr"] <= ceiling + 1e-12,
            "candidate": candidate["operating_point_fpr"],
            "production": production["operating_point_fpr"],
            "limit": ceiling,
            "safe": candidate["safe"],
        }
    )
    passed = all(rule["passed"] for rule in rules)
    return GateReport(passed, rules, asdict(config), candidate, production)


def write_gate_report(report: GateReport, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gate.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (folder / "gate.md").write_text(gate_markdown(report) + "\n")


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.2f}%"


def gate_markdown(report: GateReport) -> str:
    verdict = "PASSED: the candidate may be promoted" if report.passed else "FAILED: not promoted"
    lines = [f"## Promotion gate: {verdict}", ""]
    lines += ["| rule | candidate | production | limit | result |", "|---|---|---|---|---|"]
    for rule in report.rules:
        cells = [
            rule["rule"],
            _pct(rule.get("candidate")),
            _pct(rule.get("production")),
            _pct(rule.get("limit")),
            "pass" if rule["passed"] else "FAIL",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    candidate, production = report.candidate, report.production or {}
    lines += [
        "",
        f"Golden set: {candidate.get('safe', 0)} safe messages; attacks per category: "
        + ", ".join(f"{c} {f['attacks']}" for c, f in candidate.get("categories", {}).items())
        + ".",
        f"Candidate {candidate.get('version_dir')}; production "
        f"{production.get('version_dir', 'none')}.",
    ]
    return "\n".join(lines)
