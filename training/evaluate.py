"""Evaluation: recall of attacks at a false-positive budget on safe mail.

Contract:
- `recall_at_fpr(safe_scores, attack_scores, fpr)` gives the recall and the
  threshold (a message is flagged when its score is above it) that lets at most
  `fpr` of the safe messages through as false positives.
- Calibration and the operating policy are fitted in `training.calibration`.
- `evaluation_report(...)` returns a JSON-ready dict: overall and per-source
  recall at 1% and 0.1% FPR for the model alone, the detectors alone and the served
  verdict (both combined), the confusion matrix at the operating point, and the same
  figures for a TF-IDF + logistic-regression baseline when given; `write_report`
  writes it as JSON and Markdown.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detection.decision import DecisionPolicy
from detection.tensors import CLASS_NAMES
from training.calibration import (
    ATTACK,
    SAFE,
    MessageHits,
    calibrated_scores,
    combined_scores,
    deciding_hit_scores,
    detector_scores,
    verdict_indices,
)

FPR_POINTS = (0.01, 0.001)


def recall_at_fpr(
    safe_scores: np.ndarray, attack_scores: np.ndarray, fpr: float
) -> tuple[float, float]:
    if len(safe_scores) == 0 or len(attack_scores) == 0:
        return float("nan"), float("nan")
    ranked = np.sort(np.asarray(safe_scores))[::-1]
    allowed = int(math.floor(fpr * len(ranked)))
    threshold = float(ranked[allowed]) if allowed < len(ranked) else -math.inf
    return float(np.mean(np.asarray(attack_scores) > threshold)), threshold


def detection_figures(scores: np.ndarray, labels: np.ndarray, sources: np.ndarray) -> dict:
    """Recall at each FPR point overall, then per attack source and FPR per safe source."""
    safe, attack = scores[labels == SAFE], scores[labels == ATTACK]
    figures: dict = {"counts": {"safe": int(len(safe)), "attack": int(len(attack))}}
    for fpr in FPR_POINTS:
        recall, threshold = recall_at_fpr(safe, attack, fpr)
        key = f"fpr_{fpr:g}"
        figures[key] = {"recall": recall, "threshold": threshold, "per_source": {}}
        for source in np.unique(sources):
            mine = sources == source
            if np.any(mine & (labels == ATTACK)):
                figures[key]["per_source"][str(source)] = {
                    "attack_recall": float(np.mean(scores[mine & (labels == ATTACK)] > threshold)),
                    "attacks": int(np.sum(mine & (labels == ATTACK))),
                }
            if np.any(mine & (labels == SAFE)):
                figures[key]["per_source"].setdefault(str(source), {}).update(
                    safe_fpr=float(np.mean(scores[mine & (labels == SAFE)] > threshold)),
                    safe=int(np.sum(mine & (labels == SAFE))),
                )
    return figures


def evaluation_report(
    split: str,
    probabilities: np.ndarray,
    labels: Sequence[int],
    sources: Sequence[str],
    policy: DecisionPolicy,
    baseline_scores: np.ndarray | None = None,
    hits: MessageHits | None = None,
) -> dict:
    """Model alone, detectors alone, both combined (the served verdict) and the baseline."""
    labels, sources = np.asarray(labels), np.asarray(sources)
    hits = hits if hits is not None else [()] * len(labels)
    calibrated = calibrated_scores(probabilities, policy.temperature)
    deciding = deciding_hit_scores(hits, policy.detector_thresholds)
    predicted = verdict_indices(calibrated, deciding, policy)
    confusion = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)

    safe_mask, attack_mask = labels == SAFE, labels == ATTACK
    flagged = predicted == ATTACK
    report = {
        "split": split,
        "messages": int(len(labels)),
        "policy": dataclasses.asdict(policy),
        "model": detection_figures(calibrated[:, ATTACK], labels, sources),
        "detectors": detection_figures(detector_scores(hits), labels, sources),
        "combined": detection_figures(
            combined_scores(calibrated[:, ATTACK], deciding), labels, sources
        ),
        "operating_point": {
            "attack_recall": float(np.mean(flagged[attack_mask])) if attack_mask.any() else None,
            "safe_fpr": float(np.mean(flagged[safe_mask])) if safe_mask.any() else None,
            "false_positives_per_million_safe": (
                float(1e6 * np.mean(flagged[safe_mask])) if safe_mask.any() else None
            ),
            "attacks_flagged_by_detectors": int(np.sum((deciding > 0) & attack_mask)),
            "safe_flagged_by_detectors": int(np.sum((deciding > 0) & safe_mask)),
        },
        "confusion_matrix": {
            "labels": list(CLASS_NAMES),
            "rows_true_columns_predicted": confusion.tolist(),
        },
    }
    if baseline_scores is not None:
        report["tfidf_logreg_baseline"] = detection_figures(baseline_scores, labels, sources)
    return report


def tfidf_baseline_scores(train_texts, train_labels, eval_sets) -> list[np.ndarray]:
    """Attack probabilities, one array per text list of `eval_sets`, from TF-IDF +
    logistic regression fitted on the train texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(
        max_features=100_000, ngram_range=(1, 2), sublinear_tf=True, min_df=2
    )
    features = vectorizer.fit_transform(train_texts)
    classifier = LogisticRegression(max_iter=2000, C=10.0, class_weight="balanced")
    classifier.fit(features, np.asarray(train_labels))
    column = list(classifier.classes_).index(ATTACK)
    return [classifier.predict_proba(vectorizer.transform(t))[:, column] for t in eval_sets]


def write_report(reports: list[dict], output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "evaluation.json").write_text(json.dumps(reports, indent=2))
    (output_dir / "evaluation.md").write_text("\n\n".join(markdown(r) for r in reports) + "\n")


def _pct(value) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{100 * value:.2f}%"
    )


def markdown(report: dict) -> str:
    lines = [f"## Evaluation on the {report['split']} split ({report['messages']} messages)", ""]
    header = ("model", "source", "attacks", "recall @1% FPR", "recall @0.1% FPR", "safe")
    header += ("FPR @1%", "FPR @0.1%")
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    models = [("fused MiniLM alone", report["model"])]
    models += [("detectors alone", report["detectors"]), ("served verdict", report["combined"])]
    if "tfidf_logreg_baseline" in report:
        models.append(("TF-IDF + LR", report["tfidf_logreg_baseline"]))
    for name, figures in models:
        one, tenth = figures["fpr_0.01"], figures["fpr_0.001"]
        lines.append(
            f"| {name} | all | {figures['counts']['attack']} | {_pct(one['recall'])} | "
            f"{_pct(tenth['recall'])} | {figures['counts']['safe']} | | |"
        )
        for source in sorted(one["per_source"]):
            a, b = one["per_source"][source], tenth["per_source"][source]
            cells = [
                name,
                source,
                a.get("attacks", ""),
                _pct(a.get("attack_recall")),
                _pct(b.get("attack_recall")),
                a.get("safe", ""),
                _pct(a.get("safe_fpr")),
                _pct(b.get("safe_fpr")),
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    op, policy = report["operating_point"], report["policy"]
    lines += [
        "",
        f"Operating threshold (calibrated attack score): {policy['attack_threshold']:.6f}, "
        f"temperature {policy['temperature']:.3f}: attack recall {_pct(op['attack_recall'])}, "
        f"safe FPR {_pct(op['safe_fpr'])}. Detector thresholds: {policy['detector_thresholds']}; "
        f"attacks flagged by detectors {op['attacks_flagged_by_detectors']}, safe messages "
        f"{op['safe_flagged_by_detectors']}.",
        "",
        "Confusion matrix (rows true, columns predicted: " + ", ".join(CLASS_NAMES) + "):",
        "",
    ]
    lines += [
        "    " + " ".join(f"{v:7d}" for v in row)
        for row in report["confusion_matrix"]["rows_true_columns_predicted"]
    ]
    return "\n".join(lines)
