"""Evaluation: recall of attacks at a false-positive budget on safe mail.

Contract:
- `recall_at_fpr(safe_scores, attack_scores, fpr)` gives the recall and the
  threshold (a message is flagged when its score is above it) that lets at most
  `fpr` of the safe messages through as false positives.
- `choose_policy(probabilities, labels, operating_fpr, hits)` fits the temperature,
  the per-category detector thresholds and the attack threshold on validation data,
  so that the served verdict flags at most `operating_fpr` of the safe mail.
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

from detection.decision import DecisionPolicy, calibrate
from detection.detectors import CATEGORIES
from detection.tensors import CLASS_NAMES

SAFE, SPAM, ATTACK = (CLASS_NAMES.index(c) for c in ("safe", "spam", "attack"))
FPR_POINTS = (0.01, 0.001)
DETECTOR_GRID = np.round(np.arange(0.6, 1.0001, 0.05), 2)
# per message, its detector hits as (category, score) pairs
MessageHits = Sequence[Sequence[tuple[str, float]]]


def recall_at_fpr(
    safe_scores: np.ndarray, attack_scores: np.ndarray, fpr: float
) -> tuple[float, float]:
    if len(safe_scores) == 0 or len(attack_scores) == 0:
        return float("nan"), float("nan")
    ranked = np.sort(np.asarray(safe_scores))[::-1]
    allowed = int(math.floor(fpr * len(ranked)))
    threshold = float(ranked[allowed]) if allowed < len(ranked) else -math.inf
    return float(np.mean(np.asarray(attack_scores) > threshold)), threshold


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
