"""The demo: Bulwark's main job end to end on real mail.

Builds the dataset from the public corpora, fine-tunes the fused MiniLM, distils a
2-layer student from it, exports and evaluates the full model, its int8 form and the
student's int8 form, publishes the fastest within 0.5 points of the full model's
recall to ONNX in the Triton model repository, starts a real Triton
server, scores a slice of held-out test messages through the thin client, checks
those scores against in-process scoring, prints a summary and stops the server. It
exits 1 when a served message got an error or a score that in-process scoring did
not give.

Run (after scripts/setup.sh; scripts/demo.sh does both):
    .venv/bin/python scripts/demo.py --corpora ../shared/corpora
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detection.decision import SCORE_DECIMALS  # noqa: E402
from detection.sources import RawMessage  # noqa: E402
from serving.client import BulwarkClient  # noqa: E402
from serving.scorer import HISTORY_ENV, Scorer  # noqa: E402
from serving.server import TritonServer  # noqa: E402
from training.config import DISTILL_PRESETS, PRESETS, TrainConfig  # noqa: E402
from training.dataset import DatasetConfig, build_dataset, load_dataset_dict  # noqa: E402
from training.pipeline import PipelineConfig, StageTimer, train_and_publish  # noqa: E402
from training.variants import FIGURES_FILE  # noqa: E402

logger = logging.getLogger("demo")


def held_out_slice(test, per_source: int, seed: int = 0) -> list[tuple[RawMessage, str]]:
    """Up to `per_source` test-split messages from each source, with their org."""
    rng = np.random.default_rng(seed)
    sources = np.asarray(test["source"])
    picked: list[int] = []
    for source in np.unique(sources):
        rows = np.flatnonzero(sources == source)
        picked.extend(rng.choice(rows, size=min(per_source, len(rows)), replace=False).tolist())
    rows = test.select(sorted(picked))
    return [
        (RawMessage(r["id"], r["source"], i, r["raw"], r["kind"]), r["org"])
        for i, r in enumerate(rows)
    ]


# served and in-process scores are both rounded to SCORE_DECIMALS
SCORE_TOLERANCE = 10.0**-SCORE_DECIMALS


def score_slice(scorer: Scorer, slice_, protocol_urls) -> dict:
    figures: dict = {}
    local = {m.id: v for m, org in slice_ for v in scorer.score([m], org=org)}
    for protocol, url in protocol_urls:
        client = BulwarkClient(url)
        latencies, worst, errors, verdicts = [], 0.0, 0, {}
        for message, org in slice_:
            started = time.perf_counter()
            verdict = client.score_message(message, org=org)
            latencies.append(1000 * (time.perf_counter() - started))
            if verdict.error:
                errors += 1
                continue
            verdicts[verdict.verdict] = verdicts.get(verdict.verdict, 0) + 1
            worst = max(worst, abs(verdict.score - local[message.id].score))
        figures[protocol] = {
            "calls": len(latencies),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2),
            "errors": errors,
            "verdicts": verdicts,
            "max_abs_score_difference_vs_in_process": worst,
        }
    return figures


def serving_problems(serving: dict) -> list[str]:
    """What went wrong with the served slice, per protocol: messages that got an error,
    or a served score that differs from in-process scoring by more than rounding."""
    problems = []
    for protocol, figures in serving.items():
        if figures["errors"]:
            problems.append(
                f"{protocol}: {figures['errors']} of {figures['calls']} messages got an error"
            )
        difference = figures["max_abs_score_difference_vs_in_process"]
        if difference > SCORE_TOLERANCE:
            problems.append(
                f"{protocol}: a served score differs from in-process scoring by {difference:.3g}, "
                f"more than the {SCORE_TOLERANCE:g} rounding allows"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpora",
        type=Path,
        default=Path(os.environ.get("BULWARK_CORPORA", ROOT.parent / "shared" / "corpora")),
        help="folder of corpus archives (default: $BULWARK_CORPORA or ../shared/corpora)",
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--config", type=Path, help="JSON file of TrainConfig fields")
    parser.add_argument("--slice-per-source", type=int, default=40)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args.corpora.is_dir():
        logger.error(
            "corpora folder %s not found: see the README's 'Getting the corpora'", args.corpora
        )
        return 2

    config = TrainConfig.from_file(args.config) if args.config else PRESETS[args.preset]
    started = time.monotonic()
    seconds: dict[str, float] = {}

    dataset_dir = args.workdir / "dataset"
    with StageTimer(seconds, "dataset"):
        build_dataset(args.corpora, dataset_dir, DatasetConfig())
        data, fingerprint = load_dataset_dict(dataset_dir)

    pipeline = PipelineConfig(distill=DISTILL_PRESETS[args.preset])
    result = train_and_publish(data, fingerprint, args.workdir, args.repository, config, pipeline)
    seconds.update(result.stage_seconds)

    with StageTimer(seconds, "serve_and_score"):
        slice_ = held_out_slice(data["test"], args.slice_per_source)
        history = (dataset_dir / "history.sqlite").resolve()  # the server runs elsewhere
        scorer = Scorer.load(result.version_dir, history_path=history)
        with TritonServer(args.repository, env={HISTORY_ENV: str(history)}) as server:
            urls = [("http", server.http_url), ("grpc", server.grpc_url)]
            serving = score_slice(scorer, slice_, urls)
    seconds["total"] = round(time.monotonic() - started, 1)

    summary = {
        "model_version": str(result.version_dir),
        "variants": _variants_summary(result.version_dir),
        "validation": _detection_summary(result.reports[0]),
        "test": _detection_summary(result.reports[1]) if len(result.reports) > 1 else None,
        "served_slice": {"messages": len(slice_), **serving},
        "stage_seconds": seconds,
        "reports": str(args.workdir / "reports"),
    }
    (args.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    problems = serving_problems(serving)
    for problem in problems:
        logger.error("served slice: %s", problem)
    return 1 if problems else 0


def _variants_summary(version_dir: Path) -> dict:
    """Which variant was published, and each variant's recall and speed beside it."""
    figures = json.loads((version_dir / FIGURES_FILE).read_text())
    return {
        "published": figures["default"],
        "rule": figures["rule"],
        "compared": {
            row["variant"]: {
                "validation_recall_at_0.1pct_fpr": round(row["validation"]["model_recall"], 4),
                "batch1_p50_ms": row["speed"]["batch1_p50_ms"],
            }
            for row in figures["variants"]
        },
    }


def _detection_summary(report: dict) -> dict:
    out = {}
    for name, key in (("fused", "model"), ("tfidf_baseline", "tfidf_logreg_baseline")):
        if key not in report:
            continue
        figures = report[key]
        out[name] = {
            fpr: {
                "recall": round(figures[fpr]["recall"], 4),
                "per_source": {
                    s: {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}
                    for s, d in figures[fpr]["per_source"].items()
                },
            }
            for fpr in ("fpr_0.01", "fpr_0.001")
        }
    out["operating_point"] = report["operating_point"]
    return out


if __name__ == "__main__":
    sys.exit(main())
