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
- `model_metrics(scores, labels, threshold, config, groups)` gives what production
  asks of one model on one set: recall of attacks at each FPR point (with bootstrap
  intervals), and at the operating threshold the recall, the safe FPR, false
  positives per million safe messages and precision (with intervals), overall and per
  group (source, category, month).
- `bootstrap_recall_at_fpr` resamples safe and attack scores together, vectorised.
- `message_categories` names each message's category from its strongest detector hit
  (the public corpora label no attack category).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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

FPR_POINTS = (0.01, 0.001, 0.0001)
NO_CATEGORY = "none"  # no detector hit


@dataclass(frozen=True)
class MetricsConfig:
    fpr_points: tuple[float, ...] = FPR_POINTS
    bootstrap: int = 1000  # resamples for the intervals; 0: no intervals
    confidence: float = 0.95
    seed: int = 0
    chunk: int = 100  # resamples drawn at once (memory: chunk x messages floats)

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.bootstrap < 0 or self.chunk < 1:
            raise ValueError(
                f"bootstrap must be >= 0 and chunk >= 1, got {self.bootstrap} and {self.chunk}"
            )
        if not all(0 <= f < 1 for f in self.fpr_points):
            raise ValueError(f"fpr_points must be in [0, 1), got {self.fpr_points}")


def recall_at_fpr(
    safe_scores: np.ndarray, attack_scores: np.ndarray, fpr: float
) -> tuple[float, float]:
    if len(safe_scores) == 0 or len(attack_scores) == 0:
        return float("nan"), float("nan")
    ranked = np.sort(np.asarray(safe_scores))[::-1]
    allowed = int(math.floor(fpr * len(ranked)))
    threshold = float(ranked[allowed]) if allowed < len(ranked) else -math.inf
    return float(np.mean(np.asarray(attack_scores) > threshold)), threshold


def bootstrap_recall_at_fpr(
    safe_scores: np.ndarray,
    attack_scores: np.ndarray,
    fprs: Sequence[float],
    config: MetricsConfig = MetricsConfig(),
) -> np.ndarray:
    """(len(fprs), 2) lower and upper bounds of recall at each FPR point.

    Each resample draws the safe and the attack messages with replacement, sets the
    threshold on the resampled safe scores and measures the resampled attacks
    against it, so the interval holds the threshold's own uncertainty too.
    """
    safe, attack = np.asarray(safe_scores, float), np.asarray(attack_scores, float)
    if config.bootstrap == 0 or len(safe) == 0 or len(attack) == 0:
        return np.full((len(fprs), 2), np.nan)
    rng = np.random.default_rng(config.seed)
    recalls = np.empty((len(fprs), config.bootstrap))
    for start in range(0, config.bootstrap, config.chunk):
        size = min(config.chunk, config.bootstrap - start)
        resampled_safe = -np.sort(-safe[rng.integers(0, len(safe), (size, len(safe)))], axis=1)
        resampled_attack = attack[rng.integers(0, len(attack), (size, len(attack)))]
        for i, fpr in enumerate(fprs):
            allowed = int(math.floor(fpr * len(safe)))
            if allowed >= len(safe):
                recalls[i, start : start + size] = 1.0
                continue
            thresholds = resampled_safe[:, allowed]  # (size,)
            recalls[i, start : start + size] = np.mean(
                resampled_attack > thresholds[:, None], axis=1
            )
    tail = 100 * (1 - config.confidence) / 2
    return np.percentile(recalls, [tail, 100 - tail], axis=1).T


def proportion_interval(
    successes: int, trials: int, config: MetricsConfig, stream: int = 0
) -> list[float] | None:
    """Bootstrap interval of a proportion (resampling n trials is a binomial draw)."""
    if trials == 0 or config.bootstrap == 0:
        return None
    rng = np.random.default_rng([config.seed, stream])
    draws = rng.binomial(trials, successes / trials, config.bootstrap) / trials
    tail = 100 * (1 - config.confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return [float(low), float(high)]


def _operating(scores, labels, threshold: float, config: MetricsConfig) -> dict:
    """Recall, safe FPR, false positives per million safe and precision at a threshold
    (flagged: score at or above it). Precision counts spam flagged as attack against."""
    flagged = scores >= threshold
    attack, safe = labels == ATTACK, labels == SAFE
    caught, false_alarms = int(np.sum(flagged & attack)), int(np.sum(flagged & safe))
    n_attack, n_safe, n_flagged = int(attack.sum()), int(safe.sum()), int(flagged.sum())
    fpr_interval = proportion_interval(false_alarms, n_safe, config, stream=2)
    return {
        "threshold": float(threshold),
        "attacks": n_attack,
        "safe": n_safe,
        "attacks_flagged": caught,
        "safe_flagged": false_alarms,
        "recall": caught / n_attack if n_attack else None,
        "recall_ci": proportion_interval(caught, n_attack, config, stream=1),
        "safe_fpr": false_alarms / n_safe if n_safe else None,
        "false_positives_per_million_safe": 1e6 * false_alarms / n_safe if n_safe else None,
        "false_positives_per_million_safe_ci": (
            [1e6 * v for v in fpr_interval] if fpr_interval else None
        ),
        "precision": caught / n_flagged if n_flagged else None,
        "precision_ci": proportion_interval(caught, n_flagged, config, stream=3),
    }


def _fpr_key(fpr: float) -> str:
    return f"fpr_{fpr:g}"


def model_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    config: MetricsConfig = MetricsConfig(),
    groups: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """One model's figures on one set of messages.

    `scores`: attack score per message (higher: more likely an attack); `labels`:
    indices into CLASS_NAMES; `threshold`: the operating threshold (flag at or above);
    `groups`: named per-message group keys (e.g. {"source": ..., "month": ...}).
    Recall at an FPR point sets its threshold on this set's safe scores (the best a
    threshold could do here); the operating figures use the threshold given, chosen
    elsewhere. Per group, the overall thresholds are applied to the group's messages
    and the intervals hold the threshold fixed.
    """
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    safe, attack = scores[labels == SAFE], scores[labels == ATTACK]
    intervals = bootstrap_recall_at_fpr(safe, attack, config.fpr_points, config)
    at_fpr = {}
    for fpr, interval in zip(config.fpr_points, intervals, strict=True):
        recall, fpr_threshold = recall_at_fpr(safe, attack, fpr)
        at_fpr[_fpr_key(fpr)] = {
            "recall": recall,
            "recall_ci": None if np.isnan(interval).any() else interval.tolist(),
            "threshold": fpr_threshold,
            # the smallest FPR this many safe messages can show: below it the point is
            # "no false positive at all" on this set
            "resolution": 1 / len(safe) if len(safe) else None,
        }
    figures = {
        "counts": {"safe": int(len(safe)), "attack": int(len(attack)), "all": int(len(labels))},
        "at_fpr": at_fpr,
        "operating": _operating(scores, labels, threshold, config),
    }
    if len(safe) and len(attack):
        figures["roc_auc_safe_vs_attack"] = _auc(safe, attack)
    for name, keys in (groups or {}).items():
        figures[f"per_{name}"] = _group_figures(
            scores, labels, np.asarray(keys), at_fpr, threshold, config
        )
    return figures


def _auc(safe: np.ndarray, attack: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(safe)), np.ones(len(attack))]
    return float(roc_auc_score(y, np.r_[safe, attack]))


def _group_figures(scores, labels, keys, at_fpr: dict, threshold: float, config) -> dict:
    out = {}
    for key in sorted(set(keys.tolist())):
        mine = keys == key
        attack_scores = scores[mine & (labels == ATTACK)]
        group = {"operating": _operating(scores[mine], labels[mine], threshold, config)}
        group["attack_recall_at_fpr"] = {
            name: (
                {
                    "recall": float(np.mean(attack_scores > point["threshold"])),
                    "recall_ci": proportion_interval(
                        int(np.sum(attack_scores > point["threshold"])),
                        len(attack_scores),
                        config,
                        stream=4,
                    ),
                }
                if len(attack_scores)
                else None
            )
            for name, point in at_fpr.items()
        }
        out[str(key)] = group
    return out


def message_categories(hit_categories: Sequence[Sequence[str]], hit_scores) -> np.ndarray:
    """Each message's category: its strongest detector hit's, or NO_CATEGORY."""
    names = []
    for categories, scores in zip(hit_categories, hit_scores, strict=True):
        best = max(zip(scores, categories, strict=True), default=None)
        names.append(best[1] if best else NO_CATEGORY)
    return np.asarray(names, dtype=object)


def months(dates: Sequence[str]) -> np.ndarray:
    """ "YYYY-MM" of each ISO 8601 date."""
    return np.asarray([d[:7] for d in dates], dtype=object)


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
