"""The model card written with every trained model version.

Contract:
- `model_card(data, fingerprint, train_config, policy, metrics, ...)` returns a JSON-ready
  dict: the data (per source and split: counts per class and the period covered; the
  dataset's fingerprint), the training configuration and code version, the operating
  thresholds, the metrics (`training.evaluate.model_metrics` per evaluated split) and
  known limitations, some read from the data itself (single-class sources, eras that
  do not overlap, too few safe messages to resolve an FPR point). With `variant` (the
  entry `training.export` writes in bulwark.json) the card names the variant served
  and, for a distilled student, what the student itself trained on.
- `card_markdown(card)` renders it; `write_model_card(card, directory)` writes
  MODEL_CARD.md and model_card.json there and returns their paths.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from datasets import DatasetDict

from detection.tensors import CLASS_NAMES

# true of every model trained on the public corpora, whatever the figures say
STANDING_LIMITATIONS = (
    "The public corpora separate by era and language as much as by intent (the attack "
    "corpora are recent and multilingual, the safe ones older and English): figures on "
    "them overstate what the model does on other mail.",
    "Attack categories come from the detectors that fired, not from labels: no public "
    "corpus labels them, so per-category figures describe detector coverage.",
    "There is no real business-email-compromise or invoice-fraud mail with headers in any "
    "public corpus; payment-fraud recall is untested on real attacks.",
)


def data_summary(data: DatasetDict) -> dict:
    """Per source: per split, the count of each class and the first and last date."""
    sources: dict = defaultdict(dict)
    for split, rows in data.items():
        columns = rows.select_columns(["source", "label", "date"])
        grouped: dict = defaultdict(lambda: {"counts": defaultdict(int), "dates": []})
        for source, label, date in zip(
            columns["source"], columns["label"], columns["date"], strict=True
        ):
            grouped[source]["counts"][CLASS_NAMES[label]] += 1
            grouped[source]["dates"].append(date)
        for source, found in grouped.items():
            sources[source][split] = {
                "counts": dict(found["counts"]),
                "period": [min(found["dates"])[:10], max(found["dates"])[:10]],
            }
    return {source: dict(splits) for source, splits in sorted(sources.items())}


def derived_limitations(summary: dict, metrics: dict) -> list[str]:
    """Limitations read from the data and the figures."""
    notes = []
    for source, splits in summary.items():
        classes = sorted({c for s in splits.values() for c in s["counts"]})
        if len(classes) == 1:
            measured = "recall only" if classes[0] == "attack" else "false positives only"
            notes.append(f"Source {source} holds only {classes[0]} mail: it measures {measured}.")
    periods = {}
    for source, splits in summary.items():
        starts = [s["period"][0] for s in splits.values()]
        ends = [s["period"][1] for s in splits.values()]
        classes = {c for s in splits.values() for c in s["counts"]}
        periods[source] = (min(starts), max(ends), "attack" in classes, "safe" in classes)
    attack_years = [(a, b) for a, b, has_attack, _ in periods.values() if has_attack]
    safe_years = [(a, b) for a, b, _, has_safe in periods.values() if has_safe]
    if attack_years and safe_years:
        overlap = any(a1 <= b2 and a2 <= b1 for a1, b1 in attack_years for a2, b2 in safe_years)
        if not overlap:
            notes.append(
                "No attack source covers the same period as any safe source: the date alone "
                "separates the classes here."
            )
    for split, figures in metrics.items():
        safe = figures["counts"]["safe"]
        for key in figures["at_fpr"]:
            fpr = float(key.removeprefix("fpr_"))
            if safe and fpr * safe < 1:
                notes.append(
                    f"{split}: {safe} safe messages cannot resolve {100 * fpr:g}% FPR; that "
                    f"figure is recall with no false positive at all."
                )
    return notes


def sample_limitations(train_config: dict, variant: dict | None) -> list[str]:
    """What the model learnt from: the trained model's sample and, for a distilled
    student (the `variant` entry `training.export` writes), the student's own."""
    notes = []
    sample = train_config.get("max_train_messages")
    if sample is not None:
        notes.append(f"Trained on a stratified sample of at most {sample} training messages.")
    distillation = (variant or {}).get("distillation")
    if distillation:
        layers = distillation["config"]["layers"]
        trained_on = distillation.get("train_messages")
        notes.append(
            f"The served model is a {len(layers)}-layer student (teacher layers "
            f"{', '.join(map(str, layers))} of {distillation['teacher_layers']}) distilled from "
            "that model"
            + (f" on {trained_on} training messages." if trained_on is not None else ".")
        )
    return notes


def model_card(
    data: DatasetDict,
    fingerprint: str,
    train_config: dict,
    policy: dict,
    metrics: dict,
    code_version: str = "unknown",
    operating_fpr: float | None = None,
    text_only: bool = False,
    variant: dict | None = None,
) -> dict:
    summary = data_summary(data)
    limitations = list(STANDING_LIMITATIONS) + derived_limitations(summary, metrics)
    if text_only:
        limitations.append("Text-only ablation: trained and evaluated with every signal zeroed.")
    limitations += sample_limitations(train_config, variant)
    return {
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version,
        "data": {"fingerprint": fingerprint, "sources": summary},
        "training": {"config": train_config, "text_only": text_only},
        "model": variant,
        "operating": {"target_safe_fpr": operating_fpr, "policy": policy},
        "metrics": metrics,
        "limitations": limitations,
    }


def _pct(value, interval=None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{100 * value:.2f}%"
    return text + (f" [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]" if interval else "")


def _model_lines(variant: dict | None) -> list[str]:
    if not variant:
        return []
    quantized = "int8 matrix products" if variant.get("quantization") else "fp32"
    return [
        "",
        "## Model",
        "",
        f"Variant {variant['name']!r}: {variant['encoder_layers']} encoder layers, {quantized}.",
    ]


def card_markdown(card: dict) -> str:
    lines = [
        "# Model card",
        "",
        f"Written {card['written']}, code version {card['code_version']}, dataset fingerprint "
        f"`{card['data']['fingerprint']}`.",
        "",
        "## Data",
        "",
        "| source | split | counts | period |",
        "|---|---|---|---|",
    ]
    for source, splits in card["data"]["sources"].items():
        for split, found in splits.items():
            counts = ", ".join(f"{k} {v}" for k, v in sorted(found["counts"].items()))
            lines.append(
                f"| {source} | {split} | {counts} | {found['period'][0]} to {found['period'][1]} |"
            )
    lines += _model_lines(card.get("model"))
    policy = card["operating"]["policy"]
    lines += [
        "",
        "## Operating thresholds",
        "",
        f"Pipeline FPR budget: {card['operating']['target_safe_fpr']}; the policy chose its "
        f"thresholds in mode {policy.get('mode', 'fpr')!r} (target recall "
        f"{policy.get('target_recall')}, FPR budget {policy.get('fpr_budget')}): calibrated "
        f"attack threshold {policy.get('attack_threshold')}, temperature "
        f"{policy.get('temperature')}; detector thresholds {policy.get('detector_thresholds')}.",
        "",
        "## Metrics (model alone; 95% bootstrap intervals)",
        "",
        "| split | attacks | safe | recall @1% | recall @0.1% | recall @0.01% | recall @threshold "
        "| FP per million safe @threshold | precision @threshold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split, f in card["metrics"].items():
        at, op = f["at_fpr"], f["operating"]
        cells = [
            _pct(at[k]["recall"], at[k]["recall_ci"]) if k in at else "n/a"
            for k in ("fpr_0.01", "fpr_0.001", "fpr_0.0001")
        ]
        per_million = op["false_positives_per_million_safe"]
        lines.append(
            f"| {split} | {f['counts']['attack']} | {f['counts']['safe']} | "
            + " | ".join(cells)
            + f" | {_pct(op['recall'], op['recall_ci'])} | "
            + (f"{per_million:.0f}" if per_million is not None else "n/a")
            + f" | {_pct(op['precision'], op['precision_ci'])} |"
        )
    lines += ["", "## Known limitations", ""] + [f"- {note}" for note in card["limitations"]]
    return "\n".join(lines) + "\n"


def write_model_card(card: dict, directory: Path) -> tuple[Path, Path]:
    from training.report import finite_values

    directory.mkdir(parents=True, exist_ok=True)
    markdown, data = directory / "MODEL_CARD.md", directory / "model_card.json"
    markdown.write_text(card_markdown(card))
    data.write_text(json.dumps(finite_values(card), indent=2) + "\n")
    return markdown, data


def main(argv: list[str] | None = None) -> int:
    """Write the card of an already exported version from its metadata, its dataset and
    the figures `bulwark evaluate` gave it (for versions trained before cards existed).

        python -m training.model_card --version model_repository/bulwark/1 \\
            --dataset runs/demo/dataset --evaluation runs/eval/evaluation.json \\
            --name fused --output runs/eval/fused-card
    """
    import argparse

    from training.dataset import load_dataset_dict

    parser = argparse.ArgumentParser(description="Write a model card for an exported version.")
    parser.add_argument("--version", type=Path, required=True, help="exported version dir")
    parser.add_argument("--dataset", type=Path, required=True, help="the table it was trained on")
    parser.add_argument("--evaluation", type=Path, required=True, help="bulwark evaluate's JSON")
    parser.add_argument("--name", required=True, help="the model's name in that evaluation")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)

    meta = json.loads((args.version / "bulwark.json").read_text())
    evaluation = json.loads(args.evaluation.read_text())
    figures = evaluation["splits"]["time"]["figures"]
    if args.name not in figures:
        raise SystemExit(f"--name {args.name!r} is not in {args.evaluation} ({list(figures)})")
    data, fingerprint = load_dataset_dict(args.dataset)
    card = model_card(
        data,
        meta.get("dataset_fingerprint", fingerprint),
        meta.get("train_config", {}),
        meta.get("policy", {}),
        {evaluation["evaluated_split"]: figures[args.name]},
        meta.get("code_version", "unknown"),
        meta.get("operating_fpr"),
        bool(meta.get("text_only", False)),
    )
    for path in write_model_card(card, args.output):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
