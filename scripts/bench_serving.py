"""Serving benchmark: Triton with dynamic batching against simpler ways, in one run.

On the same real messages from the public corpora it measures, and prints as one
table:

1. in-process scoring (parse, signals, ONNX Runtime, decision) with `Scorer`:
   one message at a time (p50, p99) and in batches (throughput);
2. the Triton path through the thin client (gRPC, or HTTP with `--protocol http`)
   at each `--concurrency` (closed loop: that many callers, each sending its next
   message when the last answered):
   p50, p99 and throughput, with the server's own statistics over the same
   requests (executions against inferences, mean queue and compute time) and the
   CPU time of tritonserver, of its model instances' processes and of the clients
   (this process), all per request the server served;
3. `perf_analyzer` against the served model, which reports the server's queue and
   compute split itself (skipped, saying why, when the binary is not found);
4. the naive way to serve the same fine-tuned weights: a `transformers` tokenizer
   padding every message to 512 tokens and the PyTorch fp32 model, one message at a
   time, after the same parse and signals;
5. the ratios: Triton against in-process, concurrency 16 against 1, Bulwark
   against the naive way, and the CPU ceiling: the throughput this host's cores
   would give at the lowest CPU cost per request any concurrency reached, which
   bounds what more callers can add.

The messages are those whose model text (subject and visible text) fits the
model's token limit whole, 256 tokens for the default model, as the serving targets
are stated for; `--max-tokens 0` takes messages of every length (longer ones are
read head and tail, and their parsing is the slowest).

The server is started by the script (serving/server.py) on a repository it builds in
a temporary folder from `--model` and a `config.pbtxt` rendered by serving/pbtxt.py.

Run (about five minutes on two CPU cores):
    .venv/bin/python scripts/bench_serving.py --model model_repository/bulwark/1 \
        --checkpoint runs/demo/checkpoint --history runs/demo/dataset/history.sqlite \
        --output runs/bench_serving.json

perf_analyzer ships in the `tritonclient` 2.50 wheel (`data/bin/perf_analyzer`; the
PyPI `perf-analyzer` name is a placeholder); it needs `libb64` and the CUDA runtime
library (PyPI `nvidia-cuda-runtime-cu12`) at load time, even on CPU. Pass the binary
with `--perf-analyzer` and the runtime's folder with `--perf-analyzer-libs`
(docs/performance.md).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detection.decision import decide  # noqa: E402
from detection.features import extract_features, model_text, parse_for_model  # noqa: E402
from detection.sources import RawMessage, iter_messages  # noqa: E402
from serving.cli import non_negative_int, positive_int  # noqa: E402
from serving.client import PROTOCOLS, BulwarkClient  # noqa: E402
from serving.onnx_settings import SPIN_MODES  # noqa: E402
from serving.pbtxt import ServingSettings, write_config  # noqa: E402
from serving.scorer import HISTORY_ENV, ScoreItem, Scorer  # noqa: E402
from serving.server import TritonServer  # noqa: E402
from training.dataset import CORPORA  # noqa: E402

logger = logging.getLogger("bench_serving")

MODEL_NAME = "bulwark"
ORG = "bench"
PROTOCOL_NAMES = {"grpc": "gRPC", "http": "HTTP"}


@dataclass(frozen=True)
class Level:
    """One measured row of the table."""

    name: str
    concurrency: int | None
    requests: int
    p50_ms: float | None
    p99_ms: float | None
    per_s: float
    errors: int = 0
    note: str = ""
    cpu_ms_per_request: dict[str, float] | None = None  # Triton rows: by process, per served


def sample_messages(
    corpora: Path, total: int, stride: int, fits: Callable[[RawMessage], bool] | None = None
) -> list[RawMessage]:
    """Up to `total` readable messages, an equal share from each known archive, taking
    every `stride`-th message so that a share is not one folder's first files; with
    `fits`, only the messages it accepts."""
    archives = [
        (path, spec)
        for path in sorted(corpora.glob("*.tar*"))
        for spec in CORPORA
        if path.name.startswith(spec.archive_prefix)
    ]
    if not archives:
        raise FileNotFoundError(f"no known corpus archive in {corpora}")
    share = max(1, total // len(archives))
    messages: list[RawMessage] = []
    for path, spec in archives:
        taken = 0
        for i, message in enumerate(iter_messages(path, text_records=spec.text_records)):
            if taken == share:
                break
            if i % stride or message.error or not message.data.strip():
                continue
            if fits is None or fits(message):
                messages.append(message)
                taken += 1
    logger.info("sampled %d messages from %d archives", len(messages), len(archives))
    return messages


def fits_tokens(tokenizer, max_tokens: int) -> Callable[[RawMessage], bool]:
    """Whether a message's model text encodes, with the version's tokenizer, to at most
    `max_tokens` tokens whole ([CLS] and [SEP] included), so that the model reads all
    of it."""

    def fits(message: RawMessage) -> bool:
        text = model_text(parse_for_model(message.data, message.kind))
        return len(tokenizer.encode(text).ids) <= max_tokens

    return fits


def percentiles(latencies_ms: Sequence[float]) -> tuple[float, float]:
    return float(np.percentile(latencies_ms, 50)), float(np.percentile(latencies_ms, 99))


# in-process


def bench_in_process(scorer: Scorer, messages: list[RawMessage], batch: int) -> list[Level]:
    items = [ScoreItem(m.data, ORG, m.kind) for m in messages]
    scorer.score_batch(items[:8])

    one, features_ms, model_ms = [], [], []
    for item in items:
        started = time.perf_counter()
        found = extract_features(
            item.data, item.kind, ORG, scorer.history, directory=scorer.directory
        )
        parsed = time.perf_counter()
        probs = scorer.model.probabilities([found.text], [found.signals])[0]
        decide([float(v) for v in probs], found.raw, found.hits, scorer.policy)
        finished = time.perf_counter()
        one.append(1000 * (finished - started))
        features_ms.append(1000 * (parsed - started))
        model_ms.append(1000 * (finished - parsed))

    started = time.perf_counter()
    for start in range(0, len(items), batch):
        scorer.score_batch(items[start : start + batch])
    batched_s = time.perf_counter() - started

    p50, p99 = percentiles(one)
    f50, f99 = percentiles(features_ms)
    m50, m99 = percentiles(model_ms)
    return [
        Level(
            "in-process, one at a time",
            None,
            len(items),
            p50,
            p99,
            1000 * len(items) / sum(one),
            note=f"parse+signals p50 {f50:.1f} / p99 {f99:.1f} ms; "
            f"tokenise+ORT+decide p50 {m50:.1f} / p99 {m99:.1f} ms",
        ),
        Level(
            f"in-process, batches of {batch}", None, len(items), None, None, len(items) / batched_s
        ),
    ]


# Triton through the thin client


def build_repository(version_dir: Path, target: Path, settings: ServingSettings) -> Path:
    """A repository serving `version_dir` as version 1, with `settings`' config.pbtxt."""
    write_config(target, settings)
    shutil.copytree(version_dir, target / MODEL_NAME / "1", symlinks=False)
    return target


def server_stats(http_url: str) -> dict:
    """The model's cumulative counts and times (ns) from Triton's statistics API."""
    import tritonclient.http as http

    client = http.InferenceServerClient(http_url.removeprefix("http://"))
    try:
        stats = client.get_inference_statistics(MODEL_NAME)["model_stats"][0]
    finally:
        client.close()
    inference = stats["inference_stats"]
    return {
        "inferences": int(stats["inference_count"]),
        "executions": int(stats["execution_count"]),
        "queue_ns": int(inference["queue"]["ns"]),
        "compute_ns": sum(
            int(inference[k]["ns"]) for k in ("compute_input", "compute_infer", "compute_output")
        ),
        "requests": int(inference["success"]["count"]),
        "batches": {
            int(b["batch_size"]): int(b["compute_infer"]["count"])
            for b in stats.get("batch_stats", [])
        },
    }


def closed_loop(url: str, messages: list[RawMessage], concurrency: int, requests: int):
    """`concurrency` callers share `requests` requests; returns (latencies ms, errors, seconds)."""
    latencies: list[float] = []
    errors = [0]
    counter = iter(range(requests))
    lock = threading.Lock()

    def caller() -> None:
        with BulwarkClient(url, timeout_s=60) as client:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                message = messages[index % len(messages)]
                started = time.perf_counter()
                verdict = client.score_message(message, org=ORG)
                elapsed = 1000 * (time.perf_counter() - started)
                with lock:
                    latencies.append(elapsed)
                    errors[0] += verdict.error is not None

    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors[0], time.perf_counter() - started


def cpu_seconds(server_pid: int) -> dict[str, float] | None:
    """CPU seconds (user + system) used so far by the server process, by its model
    instances' processes (those alive, and those it has reaped), and by this
    benchmark's process, whose threads are the clients; None when the server is gone.

    A model instance that exits and is reaped between two readings moves its time
    into the server's children's times, so the sum does not go back.
    """

    def used(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    def alive_children(server: psutil.Process) -> float:
        total = 0.0
        for child in server.children(recursive=True):
            try:
                total += used(child)
            except psutil.NoSuchProcess:  # exited since listed: counted once reaped
                pass
        return total

    try:
        server = psutil.Process(server_pid)
        times = server.cpu_times()
        return {
            "tritonserver": times.user + times.system,
            "model instances": times.children_user + times.children_system + alive_children(server),
            "benchmark process (clients)": used(psutil.Process()),
        }
    except psutil.NoSuchProcess:
        return None


def cpu_per_request(
    before: dict[str, float] | None, after: dict[str, float] | None, served: int
) -> dict[str, float] | None:
    """CPU ms per request served, by process, between two `cpu_seconds` readings.

    `served` is the requests the server's statistics count as succeeded between the
    readings, the denominator of the row's queue and compute figures too, so a row's
    figures share it. A row in which the server served none is divided by 1, as those
    figures are: each is then the row's total. None when either reading is None.
    """
    if before is None or after is None:
        return None
    served = max(1, served)
    return {name: 1000 * (after[name] - before[name]) / served for name in before}


def cpu_note(spent: dict[str, float] | None) -> str:
    if spent is None:
        return "CPU not read: the server exited during the row"
    figures = ", ".join(f"{name} {ms:.2f}" for name, ms in spent.items())
    return "CPU ms per served request: " + figures


def server_url(server: TritonServer, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def bench_triton(
    server: TritonServer, messages, levels: Sequence[int], requests: int, protocol: str = "grpc"
) -> list[Level]:
    url = server_url(server, protocol)
    closed_loop(url, messages, 4, 16)  # warm-up: connections, first batches
    rows = []
    for concurrency in levels:
        count = max(requests, 8 * concurrency)
        before = server_stats(server.http_url)
        cpu_before = cpu_seconds(server.pid)
        latencies, errors, seconds = closed_loop(url, messages, concurrency, count)
        cpu_after = cpu_seconds(server.pid)
        after = server_stats(server.http_url)
        inferences = after["inferences"] - before["inferences"]
        executions = after["executions"] - before["executions"]
        # the server's figures, CPU included, are per request it served, not sent
        served = max(1, after["requests"] - before["requests"])
        cpu_spent = cpu_per_request(cpu_before, cpu_after, served)
        p50, p99 = percentiles(latencies)
        rows.append(
            Level(
                f"Triton + {PROTOCOL_NAMES[protocol]} client",
                concurrency,
                count,
                p50,
                p99,
                count / seconds,
                errors,
                f"server: {inferences} inferences in {executions} executions "
                f"(mean batch {inferences / max(1, executions):.1f}); per served request queue "
                f"{(after['queue_ns'] - before['queue_ns']) / served / 1e6:.2f} ms, compute "
                f"{(after['compute_ns'] - before['compute_ns']) / served / 1e6:.2f} ms; "
                + cpu_note(cpu_spent),
                cpu_ms_per_request=cpu_spent,
            )
        )
        logger.info("concurrency %d: %s", concurrency, rows[-1])
    return rows


# perf_analyzer


def perf_analyzer_data(messages: list[RawMessage], path: Path) -> Path:
    """perf_analyzer's --input-data file: one entry per message. A BYTES input given as
    "b64" is the serialised tensor, so each element carries its 4-byte length first."""

    def tensor(value: bytes) -> dict:
        element = struct.pack("<I", len(value)) + value
        return {"b64": base64.b64encode(element).decode(), "shape": [1]}

    entries = [
        {
            "RAW_MESSAGE": tensor(m.data),
            "ORG_ID": tensor(ORG.encode()),
            "MESSAGE_KIND": tensor(m.kind.encode()),
        }
        for m in messages
    ]
    path.write_text(json.dumps({"data": entries}))
    return path


def bench_perf_analyzer(
    binary: str | None,
    libs: str | None,
    server: TritonServer,
    messages,
    levels,
    workdir: Path,
    protocol: str = "grpc",
) -> tuple[list[Level], str]:
    found = shutil.which(binary or "perf_analyzer")
    if found is None:
        return (
            [],
            f"perf_analyzer not run: {binary or 'perf_analyzer'} not found (see the docstring)",
        )
    data = perf_analyzer_data(messages, workdir / "perf_analyzer_data.json")
    env = dict(os.environ)
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libs, env.get("LD_LIBRARY_PATH", "")])
    rows = []
    for concurrency in levels:
        report = workdir / f"perf_analyzer_c{concurrency}.csv"
        command = [
            found,
            "-m",
            MODEL_NAME,
            "-i",
            protocol,
            "-u",
            server_url(server, protocol).split("://", 1)[1],
            "--input-data",
            str(data),
            "--concurrency-range",
            f"{concurrency}:{concurrency}",
            # windows of a fixed request count: on a small shared host the load moves,
            # so stability is judged loosely and the last windows are reported
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            str(max(50, 10 * concurrency)),
            "--stability-percentage",
            "500",
            "--max-trials",
            "6",
            "--percentile",
            "99",
            "-f",
            str(report),
        ]
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
        if run.returncode != 0 or not report.exists():
            tail = (run.stderr or run.stdout).strip().splitlines()[-3:]
            return rows, f"perf_analyzer failed (exit {run.returncode}): {' | '.join(tail)}"
        header, values = report.read_text().strip().splitlines()[:2]
        row = dict(zip(header.split(","), values.split(","), strict=True))
        us = {
            k: float(v) / 1000
            for k, v in row.items()
            if k not in ("Concurrency", "Inferences/Second")
        }
        rows.append(
            Level(
                f"perf_analyzer ({PROTOCOL_NAMES[protocol]})",
                concurrency,
                0,
                us.get("p50 latency"),
                us.get("p99 latency"),
                float(row["Inferences/Second"]),
                note=f"server queue {us['Server Queue']:.2f} ms, compute input "
                f"{us['Server Compute Input']:.2f} / infer {us['Server Compute Infer']:.2f} / "
                f"output {us['Server Compute Output']:.2f} ms",
            )
        )
    return rows, ""


# the naive way


def bench_naive(checkpoint: Path, version_dir: Path, scorer: Scorer, messages, count: int) -> Level:
    """The same fine-tuned weights served the simple way: PyTorch fp32, every message
    padded to 512 tokens by a transformers tokenizer, one message at a time."""
    import torch
    from transformers import PreTrainedTokenizerFast

    from training.train import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    model.encoder.config._attn_implementation = "sdpa"  # transformers' default attention
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(version_dir / "tokenizer.json"))
    tokenizer.pad_token = "[PAD]"
    latencies = []
    for message in messages[:count]:
        started = time.perf_counter()
        found = extract_features(message.data, message.kind, ORG, scorer.history)
        encoded = tokenizer(
            found.text, padding="max_length", truncation=True, max_length=512, return_tensors="pt"
        )
        with torch.no_grad():
            logits = model(
                encoded["input_ids"],
                encoded["attention_mask"],
                torch.tensor([found.signals], dtype=torch.float32),
            )
        probs = torch.softmax(logits, dim=-1)[0].tolist()
        decide(probs, found.raw, found.hits, scorer.policy)
        latencies.append(1000 * (time.perf_counter() - started))
    p50, p99 = percentiles(latencies)
    return Level(
        "naive: PyTorch fp32, padded to 512, one at a time",
        1,
        len(latencies),
        p50,
        p99,
        1000 * len(latencies) / sum(latencies),
    )


# report


def table(rows: list[Level]) -> str:
    lines = [
        "| path | concurrency | requests | p50 ms | p99 ms | msg/s | errors | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r.name,
            "" if r.concurrency is None else str(r.concurrency),
            str(r.requests or ""),
            "" if r.p50_ms is None else f"{r.p50_ms:.1f}",
            "" if r.p99_ms is None else f"{r.p99_ms:.1f}",
            f"{r.per_s:.1f}",
            str(r.errors),
            r.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_ceiling(rows: Sequence[Level], one: Level, cores: int) -> list[str]:
    """The line bounding what more callers can add on this host: `cores` kept busy at
    the lowest CPU cost per request of any row (server, model instances and clients
    together), against the throughput of `one`; no line when no row has CPU figures.
    Throughput goes beyond it only if requests get cheaper than any row made them.
    """
    costs = {
        row.concurrency: sum(row.cpu_ms_per_request.values())
        for row in rows
        if row.cpu_ms_per_request
    }
    if not costs:
        return []
    cheapest = min(costs, key=costs.__getitem__)
    ceiling = 1000.0 * cores / costs[cheapest]
    return [
        f"CPU ceiling: {cores} cores / {costs[cheapest]:.2f} ms of CPU per request (the "
        f"cheapest, at concurrency {cheapest}) = {ceiling:.1f} msg/s, "
        f"{ceiling / one.per_s:.2f}x concurrency {one.concurrency}"
    ]


def ratios(in_process: list[Level], triton: list[Level], naive: Level | None) -> list[str]:
    by_concurrency = {r.concurrency: r for r in triton}
    best_triton = max(triton, key=lambda r: r.per_s)
    batched = in_process[1]
    lines = [
        f"Triton at concurrency {best_triton.concurrency} / in-process batched throughput: "
        f"{best_triton.per_s / batched.per_s:.2f}x",
    ]
    if 1 in by_concurrency and 16 in by_concurrency:
        gain = by_concurrency[16].per_s / by_concurrency[1].per_s
        lines.append(
            f"Triton throughput, concurrency 16 / concurrency 1: {gain:.2f}x (target >= 4)"
        )
        lines.extend(cpu_ceiling(triton, by_concurrency[1], os.cpu_count() or 1))
    if 1 in by_concurrency:
        one = by_concurrency[1]
        lines.append(
            f"Triton concurrency 1: p50 {one.p50_ms:.1f} ms (target <= 8), "
            f"p99 {one.p99_ms:.1f} ms (target <= 20)"
        )
    if naive is not None:
        lines.append(
            f"Bulwark (Triton, best concurrency) / naive throughput: "
            f"{best_triton.per_s / naive.per_s:.2f}x (target >= 5); "
            f"in-process batched / naive: {batched.per_s / naive.per_s:.2f}x"
        )
        if 1 in by_concurrency:
            lines.append(
                f"naive p50 / Triton concurrency-1 p50: "
                f"{naive.p50_ms / by_concurrency[1].p50_ms:.2f}x"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an exported version folder")
    parser.add_argument("--checkpoint", type=Path, help="its PyTorch checkpoint (naive baseline)")
    parser.add_argument(
        "--corpora",
        type=Path,
        default=Path(os.environ.get("BULWARK_CORPORA", ROOT.parent / "shared" / "corpora")),
    )
    parser.add_argument("--history", type=Path, help="sender history (sqlite) for the signals")
    parser.add_argument("--messages", type=positive_int, default=400)
    parser.add_argument("--stride", type=positive_int, default=7)
    parser.add_argument(
        "--max-tokens",
        type=non_negative_int,
        help="only messages whose text fits this many tokens whole (default: the model's "
        "limit; 0: every length)",
    )
    parser.add_argument("--concurrency", type=positive_int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="grpc", help="the client's and perf_analyzer's"
    )
    parser.add_argument(
        "--requests", type=positive_int, default=400, help="requests per level, at least"
    )
    parser.add_argument("--batch", type=positive_int, default=32, help="in-process batch size")
    parser.add_argument("--naive-messages", type=positive_int, default=100)
    parser.add_argument(
        "--queue-delay-us", type=non_negative_int, default=ServingSettings().max_queue_delay_us
    )
    parser.add_argument("--preferred-batch", type=positive_int, nargs="+", default=None)
    parser.add_argument("--instances", type=positive_int, default=ServingSettings().instance_count)
    parser.add_argument(
        "--onnx-threads",
        type=non_negative_int,
        default=ServingSettings().onnx_threads,
        help="0: one per core",
    )
    parser.add_argument(
        "--onnx-spinning",
        choices=SPIN_MODES,
        default=ServingSettings().onnx_spinning,
        help="when ONNX Runtime's threads busy-wait (serving.scorer.RuntimeSettings)",
    )
    parser.add_argument(
        "--onnx-batch-threads",
        type=non_negative_int,
        default=ServingSettings().onnx_batch_threads,
        help="threads for a batch of more than one message (0: one per core)",
    )
    parser.add_argument("--perf-analyzer", help="the perf_analyzer binary")
    parser.add_argument("--perf-analyzer-libs", help="folder of libcudart.so.12 for it")
    parser.add_argument(
        "--perf-analyzer-concurrency", type=positive_int, nargs="+", default=[1, 16]
    )
    parser.add_argument("--output", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args.corpora.is_dir():
        logger.error(
            "corpora folder %s not found: see the README's 'Getting the corpora'", args.corpora
        )
        return 2

    try:
        settings = ServingSettings(
            max_queue_delay_us=args.queue_delay_us,
            instance_count=args.instances,
            onnx_threads=args.onnx_threads,
            onnx_spinning=args.onnx_spinning,
            onnx_batch_threads=args.onnx_batch_threads,
            **(
                {"preferred_batch_sizes": tuple(args.preferred_batch)}
                if args.preferred_batch
                else {}
            ),
        )
    except ValueError as error:
        parser.error(f"serving settings: {error}")

    history = args.history.resolve() if args.history else None
    scorer = Scorer.load(args.model, history_path=history)
    variant = scorer.model.variant
    max_tokens = scorer.model.max_length if args.max_tokens is None else args.max_tokens
    fits = fits_tokens(scorer.model.tokenizer, max_tokens) if max_tokens else None
    messages = sample_messages(args.corpora, args.messages, args.stride, fits)
    workload = f"up to {max_tokens} tokens" if max_tokens else "of every length"
    if not messages:
        logger.error("no message of %s in %s: nothing to measure", workload, args.corpora)
        return 2
    if len(messages) < args.messages:
        logger.warning(
            "measuring %d messages, not the %d asked for: the archives hold no more %s "
            "at every %d-th message",
            len(messages),
            args.messages,
            workload,
            args.stride,
        )
    logger.info("model %s (variant %s), %d messages", args.model, variant, len(messages))
    in_process = bench_in_process(scorer, messages, args.batch)
    notes = []
    with tempfile.TemporaryDirectory(prefix="bulwark-bench-") as work:
        work = Path(work)
        repository = build_repository(args.model.resolve(), work / "repository", settings)
        env = {HISTORY_ENV: str(history)} if history else {}
        with TritonServer(repository, env=env, startup_timeout_s=180) as server:
            triton = bench_triton(server, messages, args.concurrency, args.requests, args.protocol)
            analyzer, note = bench_perf_analyzer(
                args.perf_analyzer,
                args.perf_analyzer_libs,
                server,
                messages,
                args.perf_analyzer_concurrency,
                work,
                args.protocol,
            )
            if note:
                notes.append(note)
    naive = None
    if args.checkpoint:
        naive = bench_naive(args.checkpoint, args.model, scorer, messages, args.naive_messages)
    else:
        notes.append("naive baseline not run: pass --checkpoint")

    rows = in_process + triton + analyzer + ([naive] if naive else [])
    print(
        f"\nmodel {args.model} (variant {variant}); {len(messages)} messages {workload} from "
        f"{args.corpora}; "
        f"{os.cpu_count()} CPUs; queue delay {settings.max_queue_delay_us} us, preferred "
        f"batches {list(settings.preferred_batch_sizes)}, {settings.instance_count} instance(s), "
        f"ONNX Runtime threads {settings.onnx_threads or 'one per core'}, spinning "
        f"{settings.onnx_spinning}, for batches {settings.onnx_batch_threads or 'one per core'}\n"
    )
    print(table(rows))
    print()
    for line in ratios(in_process, triton, naive) + notes:
        print(f"- {line}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            json.dumps(
                {
                    "model": str(args.model),
                    "variant": variant,
                    "messages": len(messages),
                    "max_tokens": max_tokens or None,
                    "settings": asdict(settings),
                    "rows": [asdict(r) for r in rows],
                    "ratios": ratios(in_process, triton, naive),
                    "notes": notes,
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
