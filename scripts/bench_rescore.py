"""Rescoring throughput: one worker, every core, and in-process one message at a time.

Takes the same sample of real mail from each corpus archive, writes it into one
Parquet table of raw messages (so every mode reads the same bytes the same way), and
scores it:

1. in process, one `Scorer.score_batch` call per message, one ONNX Runtime thread:
   the simplest way to score an archive;
2. `serving.rescore` with one worker process (one ONNX Runtime thread);
3. `serving.rescore` with one worker per core.

Each rescoring run's wall time runs from its start to the last part written, worker
start-up and model loading included; its steady rate and CPU time per message leave
that fixed cost out (the difference from a run over one chunk per worker). CPU time
counts this process and its workers; "cores busy" is the steady rate times the CPU
time per message, the share of the machine the run actually got. Prints one table and
the ratios, with the load average: on a shared machine the ratio of workers is bounded
by the CPU the other work leaves over.

Run:
    .venv/bin/python scripts/bench_rescore.py --corpora ../shared/corpora \\
        --model model_repository/bulwark/1 --per-archive 120
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection.sources import iter_messages, iter_table, write_table  # noqa: E402
from serving.rescore import ModelSpec, RescoreConfig, rescore  # noqa: E402
from serving.scorer import ScoreItem, Scorer  # noqa: E402
from training.dataset import CORPORA  # noqa: E402

ORG = "bench"


def sample_table(corpora: Path, per_archive: int, path: Path) -> int:
    """The first `per_archive` messages of every known archive, as one table."""
    rows = []
    for archive in sorted(corpora.glob("*.tar*")):
        spec = next((s for s in CORPORA if archive.name.startswith(s.archive_prefix)), None)
        if spec is None:
            continue
        messages = iter_messages(archive, text_records=spec.text_records)
        rows += [(m, {"org": ORG}) for m in islice(messages, per_archive) if m.error is None]
    if not rows:
        raise SystemExit(f"no known corpus archive in {corpora}")
    return write_table(rows, path)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def single_message_run(model: Path, table: Path) -> tuple[int, float, float]:
    """(messages, wall seconds, CPU seconds) scoring one message per call."""
    scorer = Scorer.load(model, threads=1)
    scorer.warm_up()
    messages = [message for message, _ in iter_table(table)]
    started, cpu = time.perf_counter(), _cpu_seconds()
    for message in messages:
        scorer.score_batch([ScoreItem(message.data, ORG, message.kind)])
    return len(messages), time.perf_counter() - started, _cpu_seconds() - cpu


def rescore_run(
    model: Path, table: Path, workers: int, chunk_size: int
) -> tuple[int, float, float]:
    """(messages, wall seconds, CPU seconds of this process and the workers)."""
    with tempfile.TemporaryDirectory(prefix="bench-rescore-") as output:
        config = RescoreConfig(workers=workers, chunk_size=chunk_size, org=ORG, count_first=False)
        started, cpu = time.perf_counter(), _cpu_seconds()
        summary = rescore(table, {"a": ModelSpec(str(model.resolve()))}, output, config)
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    if summary.status != 0:
        raise SystemExit(f"rescoring with {workers} workers did not finish: {summary}")
    return summary.read, seconds, cpu


def steady(full: tuple[int, float, float], small: tuple[int, float, float]) -> tuple[float, float]:
    """(messages per wall second, CPU seconds per message) without the fixed cost of
    starting workers and loading the model: the difference of two runs' totals."""
    messages = full[0] - small[0]
    return messages / max(full[1] - small[1], 1e-9), (full[2] - small[2]) / messages


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=root.parent / "shared" / "corpora")
    parser.add_argument("--model", type=Path, required=True, help="an exported version directory")
    parser.add_argument("--per-archive", type=int, default=120, help="messages from each archive")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="all cores")
    parser.add_argument("--chunk-size", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-table-") as folder:
        table, small = Path(folder) / "sample.parquet", Path(folder) / "small.parquet"
        count = sample_table(args.corpora, args.per_archive, table)
        n, seconds, cpu = single_message_run(args.model, table)
        results = [("in-process, one message per call", 1, n, seconds, n / seconds, cpu / n)]
        for workers in sorted({1, args.workers}):
            # one chunk per worker: the run whose time is start-up and loading alone
            rows = islice(iter_table(table), args.chunk_size * workers)
            write_table(((m, extra) for m, extra in rows), small)
            full = rescore_run(args.model, table, workers, args.chunk_size)
            rate, cpu_each = steady(full, rescore_run(args.model, small, workers, args.chunk_size))
            results.append(("rescore", workers, full[0], full[1], rate, cpu_each))

    base = results[0][4]
    print(
        f"{count} messages from {args.corpora}, model {args.model}; {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}, scheduler autogroup {_autogroup()}"
    )
    print(
        "| mode | workers | messages | wall s | steady msg/s | CPU ms/msg | cores busy "
        "| x one-per-call |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode, workers, n, seconds, rate, cpu_each in results:
        print(
            f"| {mode} | {workers} | {n} | {seconds:.1f} | {rate:.1f} | {cpu_each * 1000:.0f} "
            f"| {rate * cpu_each:.2f} | {rate / base:.2f} |"
        )
    if len(results) == 3:
        one, many = results[1], results[2]
        print(f"{args.workers} workers / 1 worker: {many[4] / one[4]:.2f}x (steady msg/s)")
    return 0


def _autogroup() -> str:
    """Whether the kernel shares CPU between sessions rather than processes: then more
    workers in one session get no more CPU while other sessions keep the cores busy."""
    try:
        return (
            "on"
            if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
            else "off"
        )
    except OSError:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
