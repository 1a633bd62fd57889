"""Export a checkpoint to ONNX and publish it as a Triton model version.

Contract:
- `export_onnx(checkpoint_dir, staging_dir, parity_rows)` writes `model.onnx`
  (dynamic batch and sequence axes), `tokenizer.json` and `bulwark.json`, and
  checks ONNX Runtime against PyTorch on `parity_rows` (text, signals): the largest
  absolute difference of probabilities must be at most `PARITY_TOLERANCE`, or
  `ParityError` is raised and nothing is published.
- `publish_version(staging_dir, repository, policy, extra)` moves a staged export
  into `repository/bulwark/<version>/` beside `model.py` (the Triton model) and
  writes the decision policy and any reports into `bulwark.json`.
- `export_variant(checkpoint_dir, staging_dir, parity_rows, variant)` writes one of
  `VARIANTS`: "full" (the checkpoint as trained, fp32), "int8" (the same, its matrix
  products quantised to int8 by `training.quantize`), "distilled" and
  "distilled-int8" (a student checkpoint from `training.distill`, fp32 or int8). Each
  is a normal version folder; `bulwark.json` says which under `variant`. An int8
  variant keeps the fp32 parity check and also records how far its probabilities are
  from PyTorch's (at most `INT8_TOLERANCE`, or `ParityError`).
- `export_model(checkpoint_dir, repository, variant=...)` does both with the default
  policy. Which variant a repository serves by default is chosen, and the figures
  behind the choice written beside it, by `training.variants`.

Run (the dataset's validation split fits the published version's decision policy;
`--uncalibrated` publishes the default policy instead):
    python -m training.export --checkpoint runs/demo/checkpoint --dataset runs/demo/dataset
    python -m training.export --checkpoint runs/demo/checkpoint --dataset runs/demo/dataset \
        --variant int8
    python -m training.export --checkpoint runs/student --dataset runs/demo/dataset \
        --variant distilled-int8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from detection.decision import DecisionPolicy
from detection.encoding import encode_batch, load_tokenizer
from detection.fusion import ProbabilityModel
from detection.tensors import ATTENTION_MASK, INPUT_IDS, PROBABILITIES, SIGNALS
from training.train import load_checkpoint

logger = logging.getLogger(__name__)

MODEL_NAME = "bulwark"
PARITY_TOLERANCE = 1e-4
# int8 weights move the demo model's probabilities by 0.005 on average and up to about
# 0.15 on a few messages (mostly between safe and spam); per-tensor scales already
# reach 0.3, and a broken quantisation far more. Recall decides whether a variant is
# good enough (training.variants); this bound only catches a broken one.
INT8_TOLERANCE = 0.25
VARIANTS = ("full", "int8", "distilled", "distilled-int8")
OPSET = 17
TRITON_MODEL_FILE = Path(__file__).resolve().parents[1] / "serving" / "triton_model.py"


def is_distilled(variant: str) -> bool:
    """Whether `variant` is exported from a distilled student, not the trained model."""
    return variant.startswith("distilled")


class ParityError(RuntimeError):
    pass


def export_onnx(
    checkpoint_dir: Path, staging_dir: Path, parity_rows: list[tuple[str, list[float]]]
) -> float:
    """Write the ONNX model and its metadata; return the parity difference measured."""
    model, meta = load_checkpoint(checkpoint_dir)
    config = meta["train_config"]
    staging_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint_dir / "tokenizer.json", staging_dir / "tokenizer.json")
    tokenizer = load_tokenizer(str(staging_dir / "tokenizer.json"))

    texts = [t for t, _ in parity_rows] or ["example subject\nexample body"]
    signals = [s for _, s in parity_rows] or [[0.0] * len(meta["signal_names"])]
    ids, mask = encode_batch(tokenizer, texts, config["max_length"], config["head_tokens"])
    sig = np.asarray(signals, dtype=np.float32)
    wrapped = ProbabilityModel(model).eval()
    _write_onnx(wrapped, ids[:2], mask[:2], sig[:2], staging_dir / "model.raw.onnx")
    fuse_transformer_ops(staging_dir / "model.raw.onnx", staging_dir / "model.onnx", model)
    (staging_dir / "model.raw.onnx").unlink()

    difference = parity_difference(wrapped, staging_dir / "model.onnx", ids, mask, sig)
    if difference > PARITY_TOLERANCE:
        raise ParityError(
            f"ONNX and PyTorch probabilities differ by {difference:.2e} on {len(texts)} "
            f"messages; allowed at most {PARITY_TOLERANCE:.0e}"
        )
    meta_out = {
        "model_name": MODEL_NAME,
        "max_length": config["max_length"],
        "head_tokens": config["head_tokens"],
        "signal_names": meta["signal_names"],
        "class_names": meta["class_names"],
        "train_config": config,
        "dataset_fingerprint": meta["dataset_fingerprint"],
        "code_version": meta["code_version"],
        "parity": {"messages": len(texts), "max_abs_difference": difference},
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (staging_dir / "bulwark.json").write_text(json.dumps(meta_out, indent=2))
    logger.info("exported ONNX; parity on %d messages: %.2e", len(texts), difference)
    return difference


def parity_rows_of(rows, limit: int) -> list[tuple[str, list[float]]]:
    """The first `limit` (text, signals) pairs of a dataset split: the messages an
    export is parity-checked on."""
    chosen = rows.select(range(min(limit, len(rows))))
    return list(zip(chosen["text"], chosen["signals"], strict=True))


def export_variant(
    checkpoint_dir: Path,
    staging_dir: Path,
    parity_rows: list[tuple[str, list[float]]],
    variant: str = "full",
) -> dict:
    """Export `checkpoint_dir` as `variant` into `staging_dir`; return bulwark.json's
    `variant` entry (name, encoder layers, quantisation, parity).

    Raises ValueError for an unknown variant, a "distilled" variant of a checkpoint
    that `training.distill` did not write, or a plain one of a checkpoint it did.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    checkpoint_dir, staging_dir = Path(checkpoint_dir), Path(staging_dir)
    checkpoint = json.loads((checkpoint_dir / "checkpoint.json").read_text())
    distilled = "distillation" in checkpoint
    if is_distilled(variant) and not distilled:
        raise ValueError(
            f"variant {variant!r} needs a student checkpoint from training.distill; "
            f"{checkpoint_dir} was not distilled"
        )
    if not is_distilled(variant) and distilled:
        raise ValueError(
            f"variant {variant!r} needs a checkpoint from training.train; {checkpoint_dir} is "
            "a distilled student (export it as 'distilled' or 'distilled-int8')"
        )

    export_onnx(checkpoint_dir, staging_dir, parity_rows)
    meta = json.loads((staging_dir / "bulwark.json").read_text())
    entry = {
        "name": variant,
        "encoder_layers": json.loads((checkpoint_dir / "encoder_config.json").read_text())[
            "num_hidden_layers"
        ],
        "distillation": checkpoint.get("distillation"),
        "quantization": None,
    }
    if variant.endswith("int8"):
        entry["quantization"] = _quantize_staged(checkpoint_dir, staging_dir, parity_rows, meta)
    meta["variant"] = entry
    (staging_dir / "bulwark.json").write_text(json.dumps(meta, indent=2))
    return entry


def _quantize_staged(checkpoint_dir: Path, staging_dir: Path, parity_rows, meta: dict) -> dict:
    """Replace the staged model.onnx by its int8 form; return what was done and the
    largest probability difference from PyTorch on the parity messages."""
    from training.quantize import quantize_model

    fp32 = staging_dir / "model.fp32.onnx"
    (staging_dir / "model.onnx").rename(fp32)
    summary = quantize_model(fp32, staging_dir / "model.onnx")
    fp32.unlink()

    model, _ = load_checkpoint(checkpoint_dir)
    texts = [t for t, _ in parity_rows] or ["example subject\nexample body"]
    signals = [s for _, s in parity_rows] or [[0.0] * len(meta["signal_names"])]
    tokenizer = load_tokenizer(str(staging_dir / "tokenizer.json"))
    ids, mask = encode_batch(tokenizer, texts, meta["max_length"], meta["head_tokens"])
    sig = np.asarray(signals, dtype=np.float32)
    # one row per call, as serving.scorer runs an int8 version (runs_rows_alone)
    difference = parity_difference(
        ProbabilityModel(model).eval(), staging_dir / "model.onnx", ids, mask, sig, rows_per_call=1
    )
    if difference > INT8_TOLERANCE:
        raise ParityError(
            f"int8 and PyTorch probabilities differ by {difference:.3f} on {len(texts)} "
            f"messages; allowed at most {INT8_TOLERANCE}"
        )
    logger.info("int8 parity on %d messages: %.4f", len(texts), difference)
    return {**summary, "parity": {"messages": len(texts), "max_abs_difference": difference}}


def _write_onnx(model, ids, mask, signals, path: Path) -> None:
    inputs = (torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(signals))
    torch.onnx.export(
        model,
        inputs,
        str(path),
        input_names=[INPUT_IDS.name, ATTENTION_MASK.name, SIGNALS.name],
        output_names=[PROBABILITIES.name],
        dynamic_axes={
            INPUT_IDS.name: {0: "batch", 1: "sequence"},
            ATTENTION_MASK.name: {0: "batch", 1: "sequence"},
            SIGNALS.name: {0: "batch"},
            PROBABILITIES.name: {0: "batch"},
        },
        opset_version=OPSET,
        dynamo=False,
    )


def fuse_transformer_ops(source: Path, target: Path, model) -> None:
    """Fuse attention, layer norm and GELU with ONNX Runtime's BERT optimizer.

    On two CPU cores this makes one 256-token message about three times faster;
    the parity check below runs on the fused graph as the scorer loads it, so what is
    verified is what is served.
    Residual additions stay apart from their layer norms: ONNX Runtime's CPU
    SkipLayerNormalization is slower than the two operators it would replace
    (serving.cpu_fusions.UNFUSED_ON_CPU).
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    encoder = model.encoder.config
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    fused = optimizer.optimize_model(
        str(source),
        model_type="bert",
        num_heads=encoder.num_attention_heads,
        hidden_size=encoder.hidden_size,
        opt_level=1,
        optimization_options=options,
    )
    logger.info(
        "fused operators: %s", {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    )
    fused.save_model_to_file(str(target))


def parity_difference(model, onnx_path: Path, ids, mask, signals, rows_per_call: int = 16) -> float:
    """The largest probability difference between ONNX Runtime and PyTorch, running
    `rows_per_call` rows per call (1 for an int8 model, as it is served), in a
    session built as the scorer builds its own, so the graph checked is the one served."""
    from serving.scorer import SPIN_NEVER, onnx_session

    session = onnx_session(onnx_path, 0, SPIN_NEVER)
    worst = 0.0
    for start in range(0, len(ids), rows_per_call):
        part = slice(start, start + rows_per_call)
        width = int(mask[part].sum(axis=1).max())
        feeds = {
            INPUT_IDS.name: ids[part, :width],
            ATTENTION_MASK.name: mask[part, :width],
            SIGNALS.name: signals[part],
        }
        (onnx_probs,) = session.run([PROBABILITIES.name], feeds)
        with torch.no_grad():
            torch_probs = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        worst = max(worst, float(np.abs(onnx_probs - torch_probs).max()))
    return worst


def next_version(repository: Path) -> int:
    model_dir = repository / MODEL_NAME
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def latest_version_dir(repository: Path) -> Path:
    """The newest exported version, or a clear error when there is none."""
    version = next_version(repository) - 1
    if version == 0:
        raise FileNotFoundError(
            f"no exported model in {repository / MODEL_NAME}: run the demo or "
            "`python -m training.export` first, or pass --model"
        )
    return repository / MODEL_NAME / str(version)


def publish_version(
    staging_dir: Path,
    repository: Path,
    policy: DecisionPolicy,
    extra: dict | None = None,
    version: int | None = None,
) -> Path:
    from serving.pbtxt import write_config

    write_config(repository)
    version = version or next_version(repository)
    meta = json.loads((staging_dir / "bulwark.json").read_text())
    meta.update(extra or {})
    meta["policy"] = dataclasses.asdict(policy)
    meta["version"] = version
    (staging_dir / "bulwark.json").write_text(json.dumps(meta, indent=2))
    shutil.copyfile(TRITON_MODEL_FILE, staging_dir / "model.py")

    target = repository / MODEL_NAME / str(version)
    if target.exists():
        raise FileExistsError(f"model version {target} exists already; versions are never replaced")
    shutil.copytree(staging_dir, target)
    logger.info("published model version %s", target)
    return target


def export_model(
    checkpoint_dir: Path,
    repository: Path,
    *,
    parity_rows: list[tuple[str, list[float]]] | None = None,
    policy: DecisionPolicy | None = None,
    version: int | None = None,
    variant: str = "full",
) -> Path:
    with tempfile.TemporaryDirectory() as staging:
        export_variant(Path(checkpoint_dir), Path(staging), parity_rows or [], variant)
        return publish_version(
            Path(staging), Path(repository), policy or DecisionPolicy(), None, version
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default="full",
        help="full: as trained (fp32); int8: quantised; distilled[-int8]: a student "
        "checkpoint from training.distill (see docs/performance.md)",
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        help="a saved DatasetDict: parity is checked on its validation messages and the "
        "decision policy fitted on them, as the pipeline does",
    )
    parser.add_argument(
        "--uncalibrated",
        action="store_true",
        help="publish without --dataset, with the default policy (threshold 0.5, no "
        "calibration): for trying the export, not for serving mail",
    )
    args = parser.parse_args(argv)
    if args.dataset is None and not args.uncalibrated:
        parser.error(
            "without --dataset the version would carry the default, uncalibrated policy "
            "(attack threshold 0.5) and become the repository's newest version, the one "
            "`bulwark score` uses; pass --dataset DATASET to fit the policy on its "
            "validation split, or --uncalibrated to publish it anyway"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.dataset is None:
        print(export_model(args.checkpoint, args.repository, variant=args.variant))
    else:
        print(export_calibrated(args.checkpoint, args.dataset, args.repository, args.variant))


def export_calibrated(checkpoint: Path, dataset: Path, repository: Path, variant: str) -> Path:
    """Export `variant`, fit its decision policy on the dataset's validation split and
    publish it with its evaluation reports, as `training.variants` does for each."""
    from training.dataset import load_dataset_dict
    from training.variants import VariantsConfig, evaluate_variant

    data, _ = load_dataset_dict(dataset)
    config = VariantsConfig(variants=(variant,))
    parity_rows = parity_rows_of(data["validation"], config.parity_messages)
    with tempfile.TemporaryDirectory() as staging:
        export_variant(Path(checkpoint), Path(staging), parity_rows, variant)
        _, policy, reports = evaluate_variant(Path(staging), data, config)
        extra = {"evaluation": reports, "operating_fpr": config.operating_fpr}
        return publish_version(Path(staging), Path(repository), policy, extra)


if __name__ == "__main__":
    main()
