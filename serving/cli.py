"""The `bulwark` command.

    bulwark score SOURCE [--model DIR] [--output FILE] [--org ORG] [--history DB]
    bulwark score --server http://127.0.0.1:8000 SOURCE      (through Triton)
    bulwark score --server grpc://127.0.0.1:8001 SOURCE

SOURCE is a .eml file, a directory tree, a maildir, an mbox, a .tar/.tar.gz/.tar.xz
archive of these, text-only records (--text-records), or "-" for standard input.
Each message gives one JSON line of the scoring contract, in input order; a message
that could not be scored still gets its line, with `error` saying why (so does a
file of a directory tree that could not be read). The summary (read, scored, failed)
goes to standard error, also when the run stops early.

Exit status: 0 when the whole source was read; 1 when every message failed; 2 when
the source, the model or the output file cannot be opened (an output file that could
be mail of the source is refused: it would destroy or join the mail it scores), or
the source breaks midway (one error line says which).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TextIO

from detection.decision import Verdict
from detection.sources import RawMessage, SourceError, iter_messages

logger = logging.getLogger("bulwark")

DEFAULT_REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"

# Modules that add a subcommand: each has `add_command(commands)`, which adds its
# parser to the subparsers `commands` and sets `run` to a function(args) -> exit status.
COMMAND_MODULES: tuple[str, ...] = (
    "training.evaluate_cli",
    "training.simulate",
    "serving.rescore",
    "training.retrain_command",
    "training.feedback",
    "serving.promotion",
    "serving.shadow",
)


class SetupError(Exception):
    """Something the run needs before its first message (the model, the output file)
    could not be opened; the message says what and why."""


Scoring = Callable[[Iterable[RawMessage]], Iterator[Verdict]]


def in_process_scoring(
    model: Path | None,
    org: str,
    history: str | None,
    directory: str | None,
    learn: bool = False,
) -> Scoring:
    """Load the model version `model` (default: the newest exported one) once.

    Raises SetupError naming the model directory when it is missing or will not load.
    """
    _check_options(model, history, directory, learn)  # before the seconds of imports
    from serving.scorer import Scorer
    from training.export import latest_version_dir

    try:
        model_dir = Path(model) if model else latest_version_dir(DEFAULT_REPOSITORY)
    except FileNotFoundError as error:
        raise SetupError(str(error)) from error
    _check_readable(history, directory)
    try:
        scorer = Scorer.load(model_dir, history_path=history, directory_path=directory, learn=learn)
    except Exception as error:  # noqa: BLE001 - any load failure ends the run with one line
        raise SetupError(
            f"model {str(model_dir)!r} could not be loaded ({type(error).__name__}: {error})"
        ) from error

    def score(messages: Iterable[RawMessage]) -> Iterator[Verdict]:
        yield from scorer.score_stream(messages, org=org)

    return score


def _check_options(
    model: Path | None, history: str | None, directory: str | None, learn: bool
) -> None:
    """SetupError naming the option whose path cannot serve: missing, of the wrong
    kind, empty, or a history that only `--learn` may start (so a mistyped path never
    scores against an empty history)."""
    if learn and history is None:
        raise SetupError("--learn records safe verdicts into --history; give a history file")
    for option, value in (("--history", history), ("--directory", directory)):
        if value == "":  # an unset shell variable, say
            raise SetupError(f"{option} must name a file, got an empty string")
    if model:
        _check_path("--model", Path(model), "directory")
    if history and learn and not Path(history).exists():  # --learn starts a new one
        _check_path("--history", Path(history).absolute().parent, "directory")
    elif history:
        _check_path("--history", Path(history), "file")
        if Path(history).stat().st_size == 0:  # SQLite would take it as a new history
            raise SetupError(f"--history file {history!r} is empty, not a sender history")
    if directory:
        _check_path("--directory", Path(directory), "file")


def _check_path(option: str, path: Path, kind: str) -> None:
    """SetupError unless `path` exists and is a `kind` ("file" or "directory")."""
    if not path.exists():
        raise SetupError(f"{option} {kind} {str(path)!r} does not exist")
    if (kind == "directory") != path.is_dir():
        found = "a directory" if path.is_dir() else "not a directory"
        raise SetupError(f"{option} must be a {kind}, got {str(path)!r}, which is {found}")


def _check_readable(history: str | None, directory: str | None) -> None:
    """Open the history and directory files once, so that a bad one is named as such
    rather than as a model that will not load."""
    from detection.directory import load_directory
    from detection.history import SenderHistory

    checks = (("--history", history, SenderHistory), ("--directory", directory, load_directory))
    for option, path, opener in checks:
        if not path or not Path(path).exists():  # a history --learn starts is made later
            continue
        try:
            opened = opener(str(path))
        except Exception as error:  # noqa: BLE001 - any failure to read it ends the run here
            reason = f"{type(error).__name__}: {error}"
            raise SetupError(f"{option} file {str(path)!r} cannot be read ({reason})") from error
        if hasattr(opened, "close"):
            opened.close()


def server_scoring(url: str, org: str, concurrency: int) -> Scoring:
    """Score through the Triton server at `url`; SetupError if the client cannot be made."""
    from serving.client import BulwarkClient

    try:
        client = BulwarkClient(url)
    except Exception as error:  # noqa: BLE001 - a bad URL ends the run with one line
        reason = f"{type(error).__name__}: {error}"
        raise SetupError(f"server {url!r} cannot be used ({reason})") from error

    def score(messages: Iterable[RawMessage]) -> Iterator[Verdict]:
        yield from client.score_messages(messages, org=org, concurrency=concurrency)

    return score


def verdicts_in_order(messages: Iterable[RawMessage], score: Scoring) -> Iterator[Verdict]:
    """One verdict per message, in input order. A message the source could not read
    (`RawMessage.error`) gets an error line and is not sent to `score`. When the source
    breaks midway, the messages read before the break are scored first, then the
    `SourceError` is raised."""
    pending: deque[RawMessage] = deque()  # read, not yet answered, in input order
    stopped: list[SourceError] = []

    def readable() -> Iterator[RawMessage]:
        try:
            for message in messages:
                pending.append(message)
                if message.error is None:
                    yield message
        except SourceError as error:
            stopped.append(error)

    for verdict in score(readable()):
        while pending[0].error is not None:
            yield _unreadable(pending.popleft())
        pending.popleft()
        yield verdict
    yield from (_unreadable(message) for message in pending)
    if stopped:
        raise stopped[0]


def _unreadable(message: RawMessage) -> Verdict:
    return Verdict(message.id, message.source, message.index, error=message.error)


def run_score(args: argparse.Namespace) -> int:
    counts = {"read": 0, "scored": 0, "failed": 0}
    try:
        messages = iter_messages(args.source, text_records=args.text_records or None)
        _check_output(args.output, args.source)  # before the model's seconds of loading
        if args.server:
            _warn_server_side_options(args)
            score = server_scoring(args.server, args.org, args.concurrency)
        else:
            score = in_process_scoring(
                args.model, args.org, args.history, args.directory, args.learn
            )
        out_context = _output(args.output)
    except (SourceError, SetupError) as error:
        logger.error("cannot score: %s", error)
        return _summary(counts, 2)

    status = 0
    with out_context as out:
        try:
            for verdict in verdicts_in_order(messages, score):
                counts["read"] += 1
                counts["failed" if verdict.error else "scored"] += 1
                out.write(verdict.to_json() + "\n")
        except SourceError as error:
            logger.error("source stopped early: %s", error)
            status = 2
    if status == 0 and counts["failed"] and not counts["scored"]:
        status = 1  # every message failed: the run as a whole did not work
    if status == 0 and not counts["read"]:
        logger.warning("no message found in %s", args.source)
    return _summary(counts, status)


def _warn_server_side_options(args: argparse.Namespace) -> None:
    """History and directory are read by the server, not sent with each request."""
    from serving.scorer import DIRECTORY_ENV, HISTORY_ENV, LEARN_ENV

    for option, value, variable in (
        ("--history", args.history, HISTORY_ENV),
        ("--directory", args.directory, DIRECTORY_ENV),
        ("--learn", args.learn, LEARN_ENV),
    ):
        if value:
            logger.warning(
                "%s is ignored with --server: the server reads it from %s", option, variable
            )


def _check_output(path: Path | None, source: str) -> None:
    """SetupError when the output file cannot be one (a directory, or in a folder that
    does not exist), or could be mail of the source: the source itself by any name, a
    file with other names (hard links), or a file in any folder that reading a source
    directory enters, links followed. Opening it would empty mail before it is read,
    or add the verdicts to the mail being scored. Nothing is opened here."""
    if path is None:
        return
    if path.is_dir() or not path.parent.is_dir():
        problem = "is a directory" if path.is_dir() else "is in a folder that does not exist"
        raise SetupError(f"output file {str(path)!r} cannot be written ({problem})")
    if source == "-":
        return

    target, read = path.resolve(), Path(source).resolve()
    names = target.stat().st_nlink if target.exists() else 0
    if target == read or (names and read.exists() and target.samefile(read)):
        problem = f"is the source {source!r}"
    elif names > 1:
        problem = f"has {names} names (hard links): it may be mail of {source!r}"
    elif read.is_dir() and _tree_enters(read, target.parent):
        problem = f"lies in a folder that reading the source {source!r} enters"
    else:
        return
    raise SetupError(f"output file {str(path)!r} {problem}; write the verdicts elsewhere")


def _tree_enters(root: Path, folder: Path) -> bool:
    """Whether a walk of the directory tree `root` that follows symbolic links, as the
    sources do, enters `folder`; each real directory is visited once."""
    wanted = folder.stat()
    seen: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        here = pending.pop()
        try:
            info = here.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            if os.path.samestat(info, wanted):
                return True
            with os.scandir(here) as entries:
                pending.extend(Path(entry.path) for entry in entries if entry.is_dir())
        except OSError:  # unreadable: the sources cannot read mail there either
            continue
    return False


def _output(path: Path | None) -> AbstractContextManager[TextIO]:
    """The verdicts' destination, opened for writing; SetupError when it cannot be."""
    if path is None:
        return nullcontext(sys.stdout)
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as error:
        reason = error.strerror
        raise SetupError(f"output file {str(path)!r} cannot be written ({reason})") from error


def _summary(counts: dict[str, int], status: int) -> int:
    logger.info("summary: %s", json.dumps(counts))
    return status


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


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
    score.add_argument(
        "--learn",
        action="store_true",
        help="record each message judged safe into the history (never flagged mail)",
    )
    from detection.history import KEY_FILE_ENV, HistoryKeyFile

    score.add_argument(
        "--history-key-file",
        action=HistoryKeyFile,
        help=f"file holding the history's hashing key (default: ${KEY_FILE_ENV})",
    )
    score.add_argument("--directory", help="the organisation's directory file (JSON or TOML)")
    score.add_argument(
        "--concurrency", type=positive_int, default=8, help="requests in flight (--server)"
    )
    score.add_argument("--text-records", action="store_true", help="files are Subject+body records")
    score.set_defaults(run=run_score)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as error:  # noqa: BLE001 - the command line's boundary: one line, no trace
        # what a command could not do before or beside its messages (a bad option value,
        # a file it cannot read, a server that is down): say which command and why
        logger.error("bulwark %s: %s: %s", args.command, type(error).__name__, error)
        logger.debug("traceback", exc_info=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
