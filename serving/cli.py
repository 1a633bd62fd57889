"""The `bulwark` command.

    bulwark score SOURCE [--model DIR] [--output FILE] [--org ORG] [--history DB]
    bulwark score --server http://127.0.0.1:8000 SOURCE      (through Triton)
    bulwark score --server grpc://127.0.0.1:8001 SOURCE

SOURCE is a .eml file, a directory tree, a maildir, an mbox, a .tar/.tar.gz/.tar.xz
archive of these, text-only records (--text-records), or "-" for standard input.
Each message gives one JSON line of the scoring contract, in input order; a message
that could not be scored still gets its line, with `error` saying why. The summary
(read, scored, failed) goes to standard error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path

from detection.decision import Verdict
from detection.sources import RawMessage, SourceError, iter_messages

logger = logging.getLogger("bulwark")

DEFAULT_REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"


def _chunks(messages: Iterable[RawMessage], size: int) -> Iterator[list[RawMessage]]:
    chunk: list[RawMessage] = []
    for message in messages:
        chunk.append(message)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def score_in_process(
    messages, model_dir: Path, org: str, history: str | None, directory: str | None
) -> Iterator[Verdict]:
    from serving.scorer import Scorer

    scorer = Scorer.load(model_dir, history_path=history, directory_path=directory)
    for chunk in _chunks(messages, 32):
        yield from scorer.score(chunk, org=org)


def score_through_server(messages, url: str, org: str, concurrency: int) -> Iterator[Verdict]:
    from serving.client import BulwarkClient

    client = BulwarkClient(url)
    yield from client.score_messages(messages, org=org, concurrency=concurrency)


def run_score(args: argparse.Namespace) -> int:
    messages = iter_messages(args.source, text_records=args.text_records or None)
    if args.server:
        verdicts = score_through_server(messages, args.server, args.org, args.concurrency)
    else:
        from training.export import latest_version_dir

        model_dir = args.model or latest_version_dir(DEFAULT_REPOSITORY)
        verdicts = score_in_process(
            messages, Path(model_dir), args.org, args.history, args.directory
        )

    counts = {"read": 0, "scored": 0, "failed": 0}
    status = 0
    out_context = (
        open(args.output, "w", encoding="utf-8") if args.output else nullcontext(sys.stdout)
    )
    with out_context as out:
        try:
            for verdict in verdicts:
                counts["read"] += 1
                counts["failed" if verdict.error else "scored"] += 1
                out.write(verdict.to_json() + "\n")
        except SourceError as error:
            logger.error("source stopped early: %s", error)
            status = 2
    logger.info("summary: %s", json.dumps(counts))
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bulwark", description="Detect email attacks.")
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="score every message of a source")
    score.add_argument("source", help='a file, directory, mbox, maildir, archive, or "-"')
    score.add_argument("--model", type=Path, help="an exported model version directory")
    score.add_argument("--server", help="score through Triton at this URL instead")
    score.add_argument("--output", type=Path, help="JSON lines file (default: stdout)")
    score.add_argument("--org", default="default", help="the receiving organisation's id")
    score.add_argument("--history", help="SQLite sender-history file to read")
    score.add_argument("--directory", help="the organisation's directory file (JSON or TOML)")
    score.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    score.add_argument("--text-records", action="store_true", help="files are Subject+body records")
    score.set_defaults(run=run_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
