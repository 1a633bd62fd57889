"""Print the figures of a hot swap: promote a candidate and roll it back while serving.

Copies the given production version and candidate into a scratch repository, serves
it with tritonserver in explicit model-control mode, keeps `--senders` client threads
sending a synthetic message, promotes the candidate (version 2), waits, rolls back to
version 1, and prints requests sent, failed, and each swap's seconds.

Run:
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/hot_swap.py \\
        --production model_repository/bulwark/1 --candidate runs/retrain/.../bulwark/1
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection.sources import RawMessage  # noqa: E402
from serving.client import BulwarkClient  # noqa: E402
from serving.pbtxt import write_config  # noqa: E402
from serving.promotion import promote, rollback, served_versions  # noqa: E402
from serving.server import TritonServer  # noqa: E402

MESSAGE = (
    b"From: Build Bot <builds@example.com>\r\nTo: team@example.org\r\n"
    b"Subject: Build notes\r\n\r\nThe nightly build passed; notes are in the folder.\r\n"
)


def sender(url: str, stop: threading.Event, counts: dict, lock: threading.Lock) -> None:
    with BulwarkClient(url, timeout_s=60) as client:
        while not stop.is_set():
            verdict = client.score_message(RawMessage("swap", "hot-swap", 0, MESSAGE))
            with lock:
                counts["sent"] += 1
                counts["failed"] += bool(verdict.error)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--production", type=Path, required=True)
    parser.add_argument("--candidate", type=Path, required=True)
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    repository = Path(tempfile.mkdtemp(prefix="bulwark-hot-swap-"))
    write_config(repository)
    shutil.copytree(args.production, repository / "bulwark" / "1")
    counts, lock, stop = {"sent": 0, "failed": 0}, threading.Lock(), threading.Event()
    try:
        with TritonServer(
            repository,
            model_control_mode="explicit",
            load_models=["bulwark"],
            startup_timeout_s=300,
        ) as server:
            threads = [
                threading.Thread(target=sender, args=(server.grpc_url, stop, counts, lock))
                for _ in range(args.senders)
            ]
            for thread in threads:
                thread.start()
            time.sleep(args.settle)

            started, before = time.monotonic(), counts["sent"]
            promote(args.candidate, repository, {"candidate_key": "hot-swap"}, server.http_url)
            promote_s, during_promote = time.monotonic() - started, counts["sent"] - before
            served_after_promote = served_versions(server.http_url)
            time.sleep(args.settle)

            started, before = time.monotonic(), counts["sent"]
            rollback(repository, server.http_url, reason="hot-swap figures")
            rollback_s, during_rollback = time.monotonic() - started, counts["sent"] - before
            served_after_rollback = served_versions(server.http_url)
            time.sleep(args.settle)
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    finally:
        shutil.rmtree(repository, ignore_errors=True)

    print("| step | seconds | requests answered meanwhile | serving after |")
    print("|---|---|---|---|")
    print(f"| promote v2 | {promote_s:.2f} | {during_promote} | {served_after_promote} |")
    print(f"| rollback to v1 | {rollback_s:.2f} | {during_rollback} | {served_after_rollback} |")
    print(f"\nrequests sent {counts['sent']}, failed {counts['failed']} ({args.senders} senders)")
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
