"""What the detectors and the decision layer add: recall per attack category.

Scores a built dataset's validation and test splits with an exported model (ONNX
Runtime: the numbers the server produces), fits the decision policy on validation
(`training.calibration.choose_policy`, by default for 99% recall in every attack
category, isotonic score calibration) and prints, per split:

1. recall of attacks at 0.1% FPR on safe mail, per attack category, for the model
   alone, the detectors alone and both combined (the decision layer's evidence);
2. the served verdict under the fitted policy: per category its threshold, recall and
   the FPR it costs (fitted on validation, applied unchanged to test);
3. the served score's expected calibration error.

Attack categories come from the decision layer (the strongest detector hit, else the
signals that fired): the public corpora label none. With `--streams DIR` (the output of
`bulwark simulate`) the same figures follow for each simulated organisation's inbound
and internal mail, by its labelled category, with the policy fitted on validation: the
sender history is built from the stream as it goes (only earlier mail, safe inbound
and internal mail recorded, outbound mail as the organisation's own), and the
detectors read the organisation's directory. Writes policy.json, figures.json and
reliability.png under --output; probabilities are cached there per split.

Run from the repository root (scoring takes a few minutes per split on two cores):

    .venv/bin/python scripts/decision_table.py --dataset runs/demo/dataset \\
        --model model_repository/bulwark/1 --output runs/decision \\
        [--streams runs/decision/sim]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detection.decision import ATTACK_CATEGORIES  # noqa: E402
from training.calibration import (  # noqa: E402
    ATTACK,
    SAFE,
    CalibrationConfig,
    calibrated_scores,
    choose_policy,
    combined_scores,
    deciding_hit_scores,
    detector_scores,
    expected_calibration_error,
    message_categories,
    plot_reliability,
    score_map,
    threshold_costs,
)

logger = logging.getLogger(__name__)
SPLITS = ("validation", "test")


def split_rows(dataset: Path, split: str):
    from datasets import load_from_disk

    rows = load_from_disk(str(dataset))[split]
    hits = [
        list(zip(c, s, strict=True))
        for c, s in zip(rows["hit_categories"], rows["hit_scores"], strict=True)
    ]
    return rows, np.asarray(rows["label"]), hits, np.asarray(rows["signals"], dtype=float)


def probabilities_for(rows, split: str, model: Path, output: Path, threads: int) -> np.ndarray:
    """The model's probabilities for `rows`, cached under `output` per model and split."""
    cache, stamp = output / f"probabilities-{split}.npy", output / f"probabilities-{split}.json"
    key = {"model": str(model.resolve()), "rows": len(rows), "first": rows[0]["id"]}
    if cache.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key:
        return np.load(cache)
    from serving.scorer import OnnxFusion

    probabilities = OnnxFusion(model, threads).probabilities(
        rows["text"], rows["signals"], progress=f"score {split}"
    )
    np.save(cache, probabilities)
    stamp.write_text(json.dumps(key))
    return probabilities


def stream_rows(folder: Path):
    """One simulated organisation's scored mail: (texts, signals, labels, hits, categories),
    features computed in time order against the history of the stream so far."""
    from datetime import datetime

    from detection.directory import load_directory
    from detection.features import features_of, parse_with_recipients
    from detection.history import SenderHistory
    from detection.sources import iter_messages

    with open(folder / "labels.csv", newline="") as handle:
        labels = {row["id"]: row for row in csv.DictReader(handle)}
    directory = load_directory(folder / "directory.json")
    history = SenderHistory(":memory:", autocommit=False)
    texts, signals, classes, hits, categories = [], [], [], [], []
    messages = sorted(iter_messages(folder / "mail.tar.gz"), key=lambda m: labels[m.id]["date"])
    for message in messages:
        row = labels[message.id]
        when = datetime.fromisoformat(row["date"])
        parsed, recipients = parse_with_recipients(message.data)
        if row["direction"] == "outbound":
            history.record_outbound(row["org"], parsed, when, recipients)
            continue
        facts = history.facts_before(row["org"], parsed, when, recipients)
        found = features_of(parsed, facts, when, directory, recipients)
        if row["label"] == "safe":
            history.record(row["org"], parsed, when, recipients)
        texts.append(found.text)
        signals.append(found.signals)
        classes.append(ATTACK if row["label"] == "attack" else SAFE)
        hits.append([(hit.category, hit.score) for hit in found.hits])
        categories.append(row["category"] if row["label"] == "attack" else "")
    history.close()
    return texts, signals, np.asarray(classes), hits, np.asarray(categories, dtype=object)


def recall_by_category(
    scores, labels, categories, fpr: float, names=ATTACK_CATEGORIES
) -> dict[str, float | None]:
    """Recall per category at the threshold letting `fpr` of all safe mail through."""
    safe = np.sort(scores[labels == SAFE])[::-1]
    allowed = int(np.floor(fpr * len(safe)))
    threshold = safe[allowed] if allowed < len(safe) else -np.inf
    flagged = scores > threshold
    figures: dict[str, float | None] = {}
    for category in ("all", *names):
        members = labels == ATTACK
        if category != "all":
            members = members & (categories == category)
        figures[category] = float(np.mean(flagged[members])) if members.any() else None
    return figures


def _cell(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def recall_table(split: str, figures: dict, counts: dict[str, int], fpr: float) -> str:
    rows = [c for c in counts if c != "safe" and counts[c]]
    lines = [
        f"Recall at {100 * fpr:g}% FPR on {split} ({counts['safe']} safe messages)",
        "",
        "| category | attacks | model alone | detectors alone | both combined |",
        "|---|---:|---:|---:|---:|",
    ]
    for category in rows:
        cells = [figures[name][category] for name in ("model", "detectors", "combined")]
        lines.append(f"| {category} | {counts[category]} | " + " | ".join(map(_cell, cells)) + " |")
    return "\n".join(lines)


def cost_table(split: str, costs: dict) -> str:
    total, model = costs["total"], costs["model"]
    lines = [
        f"Served verdict on {split}: recall {_cell(total['recall'])}, safe FPR "
        f"{100 * total['safe_fpr']:.3f}% ({total['safe_flagged']} of {total['safe']} safe)",
        "",
        "| threshold for | threshold | attacks | recall | safe flagged beyond the model "
        "| FPR cost |",
        "|---|---:|---:|---:|---:|---:|",
        f"| model (calibrated attack probability) | {model['attack_threshold']:.4f} | "
        f"{total['attacks']} | | {model['safe_flagged']} | {100 * model['fpr_cost']:.3f}% |",
    ]
    for category, row in costs["categories"].items():
        threshold = row["detector_threshold"]
        shown = "model only" if threshold is None else f"{threshold:.2f}"
        lines.append(
            f"| {category} | {shown} | {row['attacks']} | {_cell(row['recall'])} | "
            f"{row['safe_flagged']} | {100 * row['fpr_cost']:.3f}% |"
        )
    return "\n".join(lines)


def verdict_table(name: str, flagged, labels, categories, names) -> str:
    """The served verdict's recall per labelled category and its safe FPR."""
    safe = labels == SAFE
    lines = [
        f"Served verdict on {name}: safe FPR {100 * np.mean(flagged[safe]):.3f}% "
        f"({int(np.sum(flagged & safe))} of {int(safe.sum())} safe)",
        "",
        "| category | attacks | recall |",
        "|---|---:|---:|",
    ]
    for category in ("all", *names):
        members = labels == ATTACK
        if category != "all":
            members = members & (categories == category)
        if members.any():
            lines.append(
                f"| {category} | {int(members.sum())} | {_cell(np.mean(flagged[members]))} |"
            )
    return "\n".join(lines)


def figures_for(name, probabilities, labels, hits, categories, policy, fpr, names, curves):
    """Print and return one set's figures; add its reliability curves to `curves`."""
    attack = calibrated_scores(probabilities, policy.temperature)[:, ATTACK]
    deciding = deciding_hit_scores(hits, policy.detector_thresholds)
    evidence = combined_scores(attack, deciding)
    scores = {"model": attack, "detectors": detector_scores(hits), "combined": evidence}
    recall = {
        key: recall_by_category(s, labels, categories, fpr, names) for key, s in scores.items()
    }
    counts = {"safe": int(np.sum(labels == SAFE)), "all": int(np.sum(labels == ATTACK))}
    counts |= {c: int(np.sum((labels == ATTACK) & (categories == c))) for c in names}
    served, outcomes = score_map(evidence, policy), labels == ATTACK
    ece = {
        "served": expected_calibration_error(served, outcomes),
        "model_alone": expected_calibration_error(attack, outcomes),
    }
    figures = {"recall_at_fpr": recall, "counts": counts, "ece": ece}
    curves[f"{name}: served score"] = (served, outcomes)
    if np.any(deciding > 0):
        curves[f"{name}: detector decided ({int(np.sum(deciding > 0))})"] = (
            served[deciding > 0],
            outcomes[deciding > 0],
        )

    print(recall_table(name, recall, counts, fpr), end="\n\n")
    if names == ATTACK_CATEGORIES:
        thresholds = (policy.attack_threshold, policy.detector_thresholds)
        figures["costs"] = threshold_costs(attack, hits, labels, categories, *thresholds)
        print(cost_table(name, figures["costs"]), end="\n\n")
    else:
        flagged = (attack >= policy.attack_threshold) | (deciding > 0)
        print(verdict_table(name, flagged, labels, categories, names), end="\n\n")
    print(
        f"Expected calibration error on {name}: served score {ece['served']:.4f}, "
        f"model's attack probability alone {ece['model_alone']:.4f}",
        end="\n\n",
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="a built DatasetDict")
    parser.add_argument("--model", type=Path, required=True, help="an exported version dir")
    parser.add_argument("--output", type=Path, required=True, help="where to write figures")
    parser.add_argument("--streams", type=Path, help="`bulwark simulate` output to score too")
    parser.add_argument("--fpr", type=float, default=0.001, help="FPR of the recall table")
    parser.add_argument("--mode", choices=("recall", "fpr"), default="recall")
    parser.add_argument("--target-recall", type=float, default=0.99)
    parser.add_argument("--calibration", choices=("isotonic", "temperature"), default="isotonic")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    parser.add_argument("--no-test", action="store_true", help="validation only: faster")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.output.mkdir(parents=True, exist_ok=True)

    data = {}
    for split in SPLITS[:1] if args.no_test else SPLITS:
        rows, labels, hits, signals = split_rows(args.dataset, split)
        probabilities = probabilities_for(rows, split, args.model, args.output, args.threads)
        data[split] = (probabilities, labels, hits, message_categories(hits, signals))

    # the policy, fitted on validation only
    config = CalibrationConfig(
        mode=args.mode, target_recall=args.target_recall, score_calibration=args.calibration
    )
    rows, labels, hits, signals = split_rows(args.dataset, "validation")
    policy = choose_policy(data["validation"][0], labels, args.fpr, hits, signals, config)
    (args.output / "policy.json").write_text(json.dumps(dataclasses.asdict(policy), indent=2))

    figures, curves = {}, {}
    for split, arrays in data.items():
        figures[split] = figures_for(split, *arrays, policy, args.fpr, ATTACK_CATEGORIES, curves)
    if args.streams:
        figures["simulated"] = simulated_figures(args, policy, curves)

    print(
        f"Policy: mode {policy.mode}, target recall {policy.target_recall}, "
        f"score calibration {policy.score_calibration} ({len(policy.isotonic_x)} breakpoints), "
        f"target met on validation: {policy.validation['target_met']}"
    )
    (args.output / "figures.json").write_text(json.dumps(figures, indent=2))
    plot_reliability(curves, args.output / "reliability.png")
    logger.info("wrote policy.json, figures.json and reliability.png to %s", args.output)
    return 0


def simulated_figures(args, policy, curves) -> dict:
    """All simulated organisations' inbound and internal mail, as one set."""
    from serving.scorer import OnnxFusion
    from training.simulate import ATTACK_CATEGORIES as SIMULATED

    model = OnnxFusion(args.model, args.threads)
    parts = [stream_rows(folder) for folder in sorted(args.streams.iterdir()) if folder.is_dir()]
    texts = [t for part in parts for t in part[0]]
    signals = [s for part in parts for s in part[1]]
    probabilities = model.probabilities(texts, signals, progress="score simulated")
    labels = np.concatenate([part[2] for part in parts])
    hits = [h for part in parts for h in part[3]]
    categories = np.concatenate([part[4] for part in parts])
    name = f"simulated streams ({len(parts)} organisations)"
    return figures_for(
        name, probabilities, labels, hits, categories, policy, args.fpr, SIMULATED, curves
    )


if __name__ == "__main__":
    raise SystemExit(main())
