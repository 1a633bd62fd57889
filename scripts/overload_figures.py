"""Flood a real exported model behind a deliberately small Triton queue; print what happened.

Copies one exported model version into a temporary repository whose config.pbtxt has
a small queue (serving/pbtxt.py settings below), serves it with the real tritonserver,
scores the same messages twice at the given concurrency (once with the client's
adaptive in-flight bound, once with a fixed one) and prints, per run: how each
message ended (scored, or failed and why), the client's retries, the wall time, and
the server-side figures of docs/monitoring.md (serving.metrics.summarize).

    .venv/bin/python scripts/overload_figures.py --version-dir model_repository/bulwark/1 \\
        --source ../shared/corpora/spamassassin-2002.tar.xz --messages 400 --concurrency 128

Without --source the messages are synthetic (tests/synthetic_mail.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection.sources import RawMessage, iter_messages  # noqa: E402
from serving.client import BulwarkClient, RetryPolicy  # noqa: E402
from serving.metrics import scrape, summarize  # noqa: E402
from serving.pbtxt import MODEL_NAME, ServingSettings, write_config  # noqa: E402
from serving.server import TritonServer  # noqa: E402
from tests.synthetic_mail import synthetic_corpus  # noqa: E402

logger = logging.getLogger("overload_figures")


def small_queue_repository(version_dir: Path, settings: ServingSettings) -> Path:
    """A temporary repository serving a copy of `version_dir` under `settings`."""
    root = Path(tempfile.mkdtemp(prefix="bulwark-overload-"))
    shutil.copytree(version_dir, root / MODEL_NAME / "1")
    write_config(root, settings)
    return root


def read_messages(source: str | None, count: int, seed: int) -> list[RawMessage]:
    """The first `count` readable messages of `source`, or `count` synthetic ones."""
    if source is None:
        corpus = synthetic_corpus(count, seed)
        return [RawMessage(f"flood-{i}", "synthetic", i, m.data) for i, m in enumerate(corpus)]
    messages = []
    for message in iter_messages(source):
        if not message.error:
            messages.append(message)
        if len(messages) == count:
            break
    return messages


def flood(url: str, messages: list[RawMessage], concurrency: int, adaptive: bool) -> dict:
    """Score `messages` once; how they ended, what was retried, and how long it took."""
    retry = RetryPolicy(max_in_flight=concurrency, adaptive=adaptive)
    with BulwarkClient(url, retry=retry) as client:
        started = time.perf_counter()
        verdicts = list(client.score_messages(messages, "synthetic", concurrency=concurrency))
        seconds = time.perf_counter() - started
        counts = client.counts()
    ended = Counter(v.error.split(":")[0] if v.error else "scored" for v in verdicts)
    assert [v.id for v in verdicts] == [m.id for m in messages], "a message was lost or doubled"
    return {
        "seconds": round(seconds, 2),
        "messages_per_s": round(len(messages) / seconds, 1),
        "ended": dict(ended),
        "attempts": counts.get("attempts", 0),
        "retries": {k.removeprefix("retried "): v for k, v in counts.items() if "retried" in k},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version-dir", type=Path, required=True)
    parser.add_argument("--source", help="any message source; synthetic mail when absent")
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--queue", type=int, default=16, help="max_queue_size")
    parser.add_argument("--batch", type=int, default=16, help="max_batch_size")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    settings = ServingSettings(
        max_batch_size=args.batch, preferred_batch_sizes=(args.batch,), max_queue_size=args.queue
    )
    messages = read_messages(args.source, args.messages, args.seed)
    repository = small_queue_repository(args.version_dir, settings)
    rows = []
    try:
        with TritonServer(repository, startup_timeout_s=180) as server:
            for adaptive in (True, False):
                before = scrape(server.metrics_url)
                run = flood(server.grpc_url, messages, args.concurrency, adaptive)
                time.sleep(0.5)  # Triton counts a moment after it answers
                rows.append((adaptive, run, summarize(before, scrape(server.metrics_url))))
    finally:
        shutil.rmtree(repository, ignore_errors=True)

    print(
        f"{len(messages)} messages at concurrency {args.concurrency}; queue {args.queue}, "
        f"batch {args.batch}; {args.source or 'synthetic mail'}\n"
    )
    print(
        "| in-flight bound | s | msg/s | scored | failed | attempts | retries "
        "| mean batch | queue ms | compute ms | queue p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for adaptive, run, server_side in rows:
        ended = dict(run["ended"])
        scored = ended.pop("scored", 0)
        print(
            f"| {'adaptive' if adaptive else 'fixed'} | {run['seconds']} "
            f"| {run['messages_per_s']} | {scored} | {_kinds(ended)} | {run['attempts']} "
            f"| {_kinds(run['retries'])} | {server_side['mean_batch']} "
            f"| {server_side['queue_ms']} | {server_side['compute_ms']} "
            f"| {server_side['queue_p99_ms']} |"
        )
    for adaptive, _, server_side in rows:
        shares = json.dumps(server_side["verdict_share"])
        bands = {k: v for k, v in server_side["score_buckets"].items() if v}
        print(f"\n{'adaptive' if adaptive else 'fixed'}: verdict share {shares}; scores {bands}")


def _kinds(counts: dict) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())) or "0"


if __name__ == "__main__":
    main()
