"""Build the faster model variants, measure them beside the full model, choose one.

Contract: `build_variants(teacher, data, workdir, config, student=None)` exports each
of `config.variants` (see `training.export.VARIANTS`; the distilled ones need a
student checkpoint, which `training.distill` trains from `teacher` when `student` is
None), scores the evaluation splits with each in ONNX Runtime, fits each its own
decision policy on validation (`training.calibration.choose_policy`, as the
pipeline does), reports it with `training.evaluate.evaluation_report`, and times
each on the same validation messages, interleaved so that a change of load on the
host hits every variant alike. The default is `choose_default`'s pick: the fastest
variant (median batch-1 latency) whose recall at `recall_fpr` on validation is
within `recall_tolerance` of the full model's. Every variant is published as a
normal version folder at `workdir/variants/<variant>/bulwark/1`, with the figures
of all (`variants.json`) beside its `bulwark.json`; the chosen one is also published
into `repository` when one is given.

Run (after the demo; distillation is most of the time, see docs/performance.md):
    python -m training.variants --checkpoint runs/demo/checkpoint \
        --dataset runs/demo/dataset --workdir runs/variants --repository model_repository
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from datasets import DatasetDict

from detection.decision import DecisionPolicy
from serving.scorer import OnnxFusion
from training.calibration import choose_policy
from training.config import DistillConfig
from training.evaluate import evaluation_report
from training.export import (
    VARIANTS,
    export_variant,
    is_distilled,
    parity_rows_of,
    publish_version,
)

logger = logging.getLogger(__name__)

FIGURES_FILE = "variants.json"


@dataclass(frozen=True)
class VariantsConfig:
    variants: tuple[str, ...] = VARIANTS
    recall_fpr: float = 0.001  # the recall compared is the model's at this FPR on validation
    recall_tolerance: float = 0.005  # 0.5 points below the full model's is still "no loss"
    operating_fpr: float = 0.001  # each variant's own policy, as the pipeline fits it
    eval_splits: tuple[str, ...] = ("validation", "test")
    speed_messages: int = 200  # validation messages timed one at a time, per variant
    parity_messages: int = 64

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown or not self.variants:
            raise ValueError(f"variants must be among {VARIANTS}, got {list(self.variants)}")
        if "validation" not in self.eval_splits:
            raise ValueError(f"eval_splits must include 'validation', got {self.eval_splits}")


def recall_key(fpr: float) -> str:
    return f"fpr_{fpr:g}"


def build_variants(
    teacher: Path,
    data: DatasetDict,
    workdir: Path,
    config: VariantsConfig | None = None,
    student: Path | None = None,
    distill_config: DistillConfig | None = None,
    fingerprint: str = "",
    repository: Path | None = None,
    reuse: bool = False,
    measure: bool = True,
) -> dict:
    """Export, evaluate, time and publish every variant; return the figures written.

    `reuse` takes a variant's export and evaluation from `workdir/evaluated/` where an
    earlier run finished it (so several processes can build variants side by side, and
    a last one times, chooses and publishes them all); without `measure`, only the
    exports and evaluations are done.
    """
    config = config or VariantsConfig()
    workdir = Path(workdir)
    validation = data["validation"]
    parity_rows = parity_rows_of(validation, config.parity_messages)

    if student is None and any(map(is_distilled, config.variants)):
        from training.distill import distill

        student = distill(teacher, data, workdir / "student", distill_config, fingerprint)

    staged, rows = {}, []
    for variant in config.variants:
        checkpoint = student if is_distilled(variant) else teacher
        staging = workdir / "staging" / variant
        done = workdir / "evaluated" / f"{variant}.json"
        if reuse and done.is_file():
            logger.info("variant %s: reusing the export and evaluation in %s", variant, staging)
            saved = json.loads(done.read_text())
            entry, policy, reports = (
                saved["entry"],
                DecisionPolicy(**saved["policy"]),
                saved["reports"],
            )
        else:
            shutil.rmtree(staging, ignore_errors=True)
            entry = export_variant(Path(checkpoint), staging, parity_rows, variant)
            _, policy, reports = evaluate_variant(staging, data, config)
            saved = {"entry": entry, "policy": asdict(policy), "reports": reports}
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(saved, indent=2))
        staged[variant] = (staging, policy, reports)
        rows.append(figures_row(variant, entry, reports, config))
    if not measure:
        return {"variants": rows}

    version_dirs = {variant: staged[variant][0] for variant in config.variants}
    figures = timed_figures(rows, version_dirs, validation, config)
    default = figures["default"]

    for variant, (staging, policy, reports) in staged.items():
        (staging / FIGURES_FILE).write_text(json.dumps(figures, indent=2))
        extra = {
            "evaluation": reports,
            "operating_fpr": config.operating_fpr,
            "variant_default": variant == default,
        }
        target = workdir / "variants" / variant
        shutil.rmtree(target, ignore_errors=True)
        publish_version(staging, target, policy, extra, version=1)
        if variant == default and repository is not None:
            figures["published"] = str(publish_version(staging, Path(repository), policy, extra))
    (workdir / FIGURES_FILE).write_text(json.dumps(figures, indent=2))
    logger.info("variants built; default %s", default)
    return figures


def evaluate_variant(
    version_dir: Path,
    data: DatasetDict,
    config: VariantsConfig,
    baseline: dict[str, np.ndarray] | None = None,
):
    """(probabilities per split, the policy fitted on validation, the evaluation
    reports per split) of one staged variant, scored in ONNX Runtime as the server
    scores; `baseline` holds a comparison model's attack scores per split."""
    model = OnnxFusion(version_dir)
    splits = scored_splits(data, config.eval_splits)
    probabilities = {
        split: model.probabilities(
            data[split]["text"], data[split]["signals"], progress=f"score {split}"
        )
        for split in splits
    }
    hits = {split: message_hits(data[split]) for split in splits}
    policy = choose_policy(
        probabilities["validation"],
        np.asarray(data["validation"]["label"]),
        config.operating_fpr,
        hits["validation"],
        signals=np.asarray(data["validation"]["signals"]),
    )
    reports = [
        evaluation_report(
            split,
            probabilities[split],
            data[split]["label"],
            data[split]["source"],
            policy,
            (baseline or {}).get(split),
            hits[split],
        )
        for split in splits
    ]
    return probabilities, policy, reports


def scored_splits(data: DatasetDict, splits: tuple[str, ...]) -> list[str]:
    """Those of `splits` the table has, and with rows."""
    return [split for split in splits if split in data and len(data[split])]


def message_hits(rows) -> list[list[tuple[str, float]]]:
    """Each row's detector hits as (category, score) pairs, as the dataset stores them."""
    return [
        list(zip(categories, scores, strict=True))
        for categories, scores in zip(rows["hit_categories"], rows["hit_scores"], strict=True)
    ]


def figures_row(variant: str, entry: dict, reports: list[dict], config: VariantsConfig) -> dict:
    """One variant's row of the figures: its layers, recall per split, int8 parity."""
    key = recall_key(config.recall_fpr)
    row = {"variant": variant, "encoder_layers": entry["encoder_layers"]}
    for report in reports:
        row[report["split"]] = {
            "model_recall": report["model"][key]["recall"],
            "served_recall": report["combined"][key]["recall"],
            "operating_point": report["operating_point"],
        }
    quantization = entry.get("quantization") or {}
    row["int8_parity"] = quantization.get("parity", {}).get("max_abs_difference")
    return row


def measure_speed(version_dirs: dict[str, Path], rows, batch_size: int = 64) -> dict[str, dict]:
    """Per variant: model-only latency one message at a time (tokenise and ONNX
    Runtime; p50 and p99 in ms) and batched throughput (messages per second) on
    `rows`, every variant run on each message in turn."""
    models = {name: OnnxFusion(path) for name, path in version_dirs.items()}
    texts, signals = list(rows["text"]), list(rows["signals"])
    for model in models.values():  # first calls pay ONNX Runtime's set-up
        model.probabilities(texts[:4], signals[:4])

    single = {name: [] for name in models}
    for text, signal in zip(texts, signals, strict=True):
        for name, model in models.items():
            started = time.perf_counter()
            model.probabilities([text], [signal])
            single[name].append(1000 * (time.perf_counter() - started))

    batched = dict.fromkeys(models, 0.0)
    for start in range(0, len(texts), batch_size):
        part = slice(start, start + batch_size)
        for name, model in models.items():
            started = time.perf_counter()
            model.probabilities(texts[part], signals[part])
            batched[name] += time.perf_counter() - started

    return {
        name: {
            "messages": len(texts),
            "batch1_p50_ms": round(float(np.percentile(single[name], 50)), 2),
            "batch1_p99_ms": round(float(np.percentile(single[name], 99)), 2),
            "batched_msg_per_s": round(len(texts) / batched[name], 1),
        }
        for name in models
    }


def timed_figures(
    rows: list[dict], version_dirs: dict[str, Path], validation, config: VariantsConfig
) -> dict:
    """`variant_figures` once each row has its `speed`, timed on the first
    `config.speed_messages` validation messages."""
    speeds = measure_speed(
        version_dirs, validation.select(range(min(config.speed_messages, len(validation))))
    )
    for row in rows:
        row["speed"] = speeds[row["variant"]]
    return variant_figures(rows, config)


def variant_figures(rows: list[dict], config: VariantsConfig) -> dict:
    """The figures file's content: the rule, the default it picks from `rows` (each
    with its evaluation and `speed`), the config and the rows."""
    return {
        "rule": (
            f"fastest (median batch-1 latency) of the variants whose model recall at "
            f"{config.recall_fpr:g} FPR on validation is at most {100 * config.recall_tolerance:g}"
            " points below the full model's"
        ),
        "default": choose_default(rows, config.recall_tolerance),
        "config": asdict(config),
        "variants": rows,
    }


def choose_default(rows: list[dict], tolerance: float) -> str:
    """The fastest variant (median batch-1 latency) whose validation model recall is
    at least the full model's minus `tolerance`; "full" itself always qualifies."""
    by_name = {row["variant"]: row for row in rows}
    if "full" not in by_name:
        raise ValueError(f"the full model's figures are needed to compare, got {list(by_name)}")
    floor = by_name["full"]["validation"]["model_recall"] - tolerance
    eligible = [row for row in rows if row["validation"]["model_recall"] >= floor - 1e-12]
    return min(eligible, key=lambda row: row["speed"]["batch1_p50_ms"])["variant"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the trained model")
    parser.add_argument("--dataset", type=Path, required=True, help="a saved DatasetDict")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--student", type=Path, help="a distilled checkpoint to reuse")
    parser.add_argument("--repository", type=Path, help="publish the chosen variant here")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--splits", nargs="+", default=list(VariantsConfig().eval_splits))
    parser.add_argument("--distill-config", type=Path, help="JSON file of DistillConfig fields")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse variants already evaluated in --workdir"
    )
    parser.add_argument(
        "--no-measure", action="store_true", help="export and evaluate only; time nothing"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from training.dataset import load_dataset_dict

    data, fingerprint = load_dataset_dict(args.dataset)
    figures = build_variants(
        args.checkpoint,
        data,
        args.workdir,
        VariantsConfig(variants=tuple(args.variants), eval_splits=tuple(args.splits)),
        student=args.student,
        distill_config=(
            DistillConfig.from_dict(json.loads(args.distill_config.read_text()))
            if args.distill_config
            else None
        ),
        fingerprint=fingerprint,
        repository=args.repository,
        reuse=args.reuse,
        measure=not args.no_measure,
    )
    if "default" in figures:
        print(format_table(figures))


def format_table(figures: dict) -> str:
    """The variants' figures as a Markdown table."""
    lines = [
        "| variant | layers | val recall @0.1% FPR | test recall @0.1% FPR | batch-1 p50 ms | "
        "batch-1 p99 ms | batched msg/s | default |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in figures["variants"]:
        test = row.get("test", {}).get("model_recall")
        lines.append(
            f"| {row['variant']} | {row['encoder_layers']} | "
            f"{100 * row['validation']['model_recall']:.2f}% | "
            f"{'n/a' if test is None else f'{100 * test:.2f}%'} | "
            f"{row['speed']['batch1_p50_ms']} | {row['speed']['batch1_p99_ms']} | "
            f"{row['speed']['batched_msg_per_s']} | "
            f"{'yes' if row['variant'] == figures['default'] else ''} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
