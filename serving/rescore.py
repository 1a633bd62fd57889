"""Batch rescoring: every message of a source through one or two models, resumable.

    bulwark rescore SOURCE --model A --output DIR [--compare B] [--workers N]
        [--org ORG] [--history DB] [--directory FILE] [--labels FILE] [--chunk-size N]
    bulwark rescore SOURCE --model grpc://127.0.0.1:8001 --output DIR   (through Triton)

SOURCE is anything `detection.sources` reads (a .eml file, a directory tree, a maildir,
an mbox, a tar archive, text records) or a Parquet table of raw messages, whose
``org``, ``date`` and ``label`` columns, when present, give each message its
organisation, the time its history is read as of, and its label. A model is an
exported version directory (scored in worker processes that each load it once) or a
Triton server's URL (the workers send the messages there, with at most
``--concurrency`` requests in flight each).

Contract:

- Each message is scored by the same code as `bulwark score` and the Triton model,
  `Scorer.score_batch_timed` (sanitize, parse, signals, detectors, the ONNX fusion
  model, `decide`), with its row's time; the output rows carry the scoring contract's
  fields (id, source, index, verdict, category, score, reasons, error) plus ``model``
  (the version scored), ``org``, ``date`` (the time the history was read as of),
  ``label`` and ``chunk``.
- History as of each message's time: the sender history file is read with the
  store's own time-aware lookups (`facts_before` uses only history recorded strictly
  before the time given), at the row's ``date`` when the table has one, else at the
  message's Date header, as serving does. A history built in time order over the
  whole archive (as `training.dataset` builds `history.sqlite`) therefore gives every
  message the baselines that stood when it arrived, with nothing from its future.
- Output: ``DIR/scores/slot=a/part-NNNNNN.parquet`` (model A) and ``slot=b`` (model
  B), one file per chunk of ``--chunk-size`` consecutive messages, so a large run is
  many files; ``DIR/failures.jsonl`` lists every message that could not be scored
  (id, error); ``DIR/summary.json`` the counts; with ``--compare``,
  ``DIR/comparison.json`` and ``.md`` (`serving.compare`).
- Crash-safe: a part file is written whole under a hidden name and renamed into
  place, so it exists entirely or not at all; it is the checkpoint. A rerun with the
  same source, models and chunk size (``DIR/manifest.json`` must match) reads the
  source again, skips every chunk whose part holds exactly that chunk's ids, and
  scores the rest: after any crash, the output holds every message exactly once.
- A message that cannot be read or scored gets its row with ``error`` set; a source
  that breaks midway keeps what was read before the damage and the run ends with
  exit status 2; a chunk whose scoring failed as a whole is left for the rerun
  (status 3). Status 0: every chunk scored; 1: every message failed.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from detection.decision import Verdict
from detection.sources import (
    RawMessage,
    SourceError,
    is_table,
    iter_messages,
    iter_table,
)
from detection.tensors import CLASS_NAMES

logger = logging.getLogger(__name__)

FORMAT = "bulwark-rescore-1"
SLOTS = ("a", "b")  # --model scores into slot a, --compare into slot b
URL_SCHEMES = ("http://", "grpc://")
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("index", pa.int64()),
        ("verdict", pa.string()),
        ("category", pa.string()),
        ("score", pa.float64()),
        ("reasons", pa.list_(pa.string())),
        ("error", pa.string()),
        ("model", pa.string()),
        ("org", pa.string()),
        ("date", pa.timestamp("us", tz="UTC")),
        ("label", pa.string()),
        ("chunk", pa.int64()),
    ]
)


@dataclass(frozen=True)
class RescoreConfig:
    """How a run is cut up and spread; the defaults suit a two-core machine."""

    workers: int = 2  # scoring processes; 0 scores in this process
    chunk_size: int = 256  # consecutive messages per task and per part file
    threads: int = 1  # ONNX Runtime threads per worker
    org: str = "default"  # for messages whose table row names none
    text_records: bool | None = None
    count_first: bool = True  # read the source once to give the progress bar its total

    def __post_init__(self) -> None:
        for name in ("chunk_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"RescoreConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        if self.workers < 0:
            raise ValueError(f"RescoreConfig.workers must be 0 or more, got {self.workers}")


@dataclass(frozen=True)
class RescoreRow:
    """One message to rescore, with the context its table row (or the run) gives it."""

    message: RawMessage
    org: str
    when: datetime | None = None  # read the history as of this time (None: the Date header)
    label: str | None = None  # "safe", "spam" or "attack" where known


# models: an exported version in the worker, or a Triton server


class Model(Protocol):
    version: str

    def score(self, rows: Sequence[RescoreRow]) -> list[tuple[Verdict, datetime | None]]:
        """One (verdict, time the history was read as of) per row, in order."""
        ...


@dataclass(frozen=True)
class ModelSpec:
    """An exported model version, loaded in each worker (picklable, opened there)."""

    version_dir: str
    history: str | None = None
    directory: str | None = None
    threads: int = 1

    def open(self) -> InProcessModel:
        from serving.scorer import Scorer

        scorer = Scorer.load(self.version_dir, self.history, self.threads, self.directory)
        return InProcessModel(scorer, model_version(Path(self.version_dir)))

    def identity(self) -> dict:
        return {
            "model": model_version(Path(self.version_dir)),
            "history": self.history,
            "directory": self.directory,
        }


@dataclass(frozen=True)
class ServerSpec:
    """A Triton server serving the Bulwark model; each worker opens its own client."""

    url: str
    concurrency: int = 8
    timeout_s: float = 60.0

    def open(self) -> ServerModel:
        from serving.client import BulwarkClient

        client = BulwarkClient(self.url, timeout_s=self.timeout_s, concurrency=self.concurrency)
        return ServerModel(client, served_version(self.url), self.concurrency)

    def identity(self) -> dict:
        return {"model": served_version(self.url), "server": self.url}


def model_version(version_dir: Path) -> str:
    """The exported version as name/version@hash, the hash over its ONNX file and its
    metadata (two repositories may both hold a version 1)."""
    meta = json.loads((version_dir / "bulwark.json").read_text())
    digest = hashlib.sha256()
    for name in ("model.onnx", "bulwark.json"):
        with open(version_dir / name, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    name = meta.get("model_name", "bulwark")
    return f"{name}/{meta.get('version', version_dir.name)}@{digest.hexdigest()[:12]}"


def served_version(url: str, model_name: str = "bulwark") -> str:
    """The newest version the server at `url` serves, as triton:name/version."""
    from serving.client import parse_url

    protocol, address = parse_url(url)
    if protocol == "http":
        import tritonclient.http as triton

        with triton.InferenceServerClient(address) as client:
            versions = client.get_model_metadata(model_name)["versions"]
    else:
        import tritonclient.grpc as triton

        with triton.InferenceServerClient(address) as client:
            versions = list(client.get_model_metadata(model_name).versions)
    newest = max(versions, key=int) if versions else "?"
    return f"triton:{model_name}/{newest}"


class InProcessModel:
    """Scores rows with `serving.scorer`'s model, policy, history and directory."""

    def __init__(self, scorer, version: str) -> None:
        self.scorer = scorer
        self.version = version

    def score(self, rows: Sequence[RescoreRow]) -> list[tuple[Verdict, datetime | None]]:
        """The scorer's own batch path, each row's history read as of its time."""
        from serving.scorer import ScoreItem, to_verdict

        results: list[tuple[Verdict, datetime | None] | None] = [None] * len(rows)
        readable = []
        for i, row in enumerate(rows):
            message = row.message
            if message.error is None:
                readable.append(i)
            else:
                error = Verdict(message.id, message.source, message.index, error=message.error)
                results[i] = (error, row.when)
        items = [
            ScoreItem(rows[i].message.data, rows[i].org, rows[i].message.kind, rows[i].when)
            for i in readable
        ]
        for i, (result, when) in zip(readable, self.scorer.score_batch_timed(items), strict=True):
            results[i] = (to_verdict(rows[i].message, result), when)
        return results  # type: ignore[return-value]


class ServerModel:
    """Scores rows through a Triton server, at most `concurrency` requests in flight.

    The server reads its own history file (BULWARK_HISTORY_DB) as of each message's
    Date header: a table's ``date`` column cannot be sent with the request.
    """

    def __init__(self, client, version: str, concurrency: int) -> None:
        self.client = client
        self.version = version
        self.concurrency = concurrency

    def score(self, rows: Sequence[RescoreRow]) -> list[tuple[Verdict, datetime | None]]:
        results: list[tuple[Verdict, datetime | None] | None] = [None] * len(rows)
        by_org: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_org.setdefault(row.org, []).append(i)
        for org, positions in by_org.items():
            messages = [rows[i].message for i in positions]
            verdicts = self.client.score_messages(messages, org, self.concurrency)
            for i, verdict in zip(positions, verdicts, strict=True):
                results[i] = (verdict, header_date(rows[i].message))
        return results  # type: ignore[return-value]


_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def header_date(message: RawMessage) -> datetime | None:
    """The Date header's time (UTC), read without parsing the body; None when absent."""
    if message.kind != "rfc822" or not message.data:
        return None
    try:
        when = parsedate_to_datetime(str(_HEADERS.parsebytes(message.data)["Date"]))
    except (TypeError, ValueError, IndexError):
        return None
    return when.astimezone(timezone.utc) if when.tzinfo else when.replace(tzinfo=timezone.utc)


def open_spec(model: str, config: RescoreConfig, history, directory, concurrency: int):
    """The spec of `model`: a Triton URL, or an exported version directory."""
    if model.startswith(URL_SCHEMES):
        return ServerSpec(model, concurrency)
    if not (Path(model) / "bulwark.json").is_file():
        raise ValueError(
            f"model must be an exported version directory or a Triton URL "
            f"({' or '.join(URL_SCHEMES)}...), got {model!r}"
        )
    history = str(Path(history).resolve()) if history else None
    directory = str(Path(directory).resolve()) if directory else None
    return ModelSpec(str(Path(model).resolve()), history, directory, config.threads)


# reading the source


def read_rows(
    source: str | Path,
    config: RescoreConfig | None = None,
    labels: dict[str, str] | None = None,
) -> Iterator[RescoreRow]:
    """The source's messages as rows, in input order. Raises SourceError at once when
    the source cannot be opened, later when it breaks midway (as `iter_messages`).
    `labels` (id to label) fills in labels a table does not give."""
    config = config or RescoreConfig()
    labels = labels or {}
    if is_table(source):
        table = iter_table(source)
        return (table_row(message, extra, config.org, labels) for message, extra in table)
    messages = iter_messages(source, text_records=config.text_records)
    return (RescoreRow(m, config.org, None, labels.get(m.id)) for m in messages)


def table_row(message: RawMessage, extra: dict, org: str, labels: dict[str, str]) -> RescoreRow:
    """A table row's message with its org, date and label columns; a date or label
    that breaks the table's rules makes the message an error row naming it, and so
    does a ``read_error`` column (set where a staged message could not be read)."""
    org = extra.get("org") or org
    if extra.get("read_error"):
        return RescoreRow(replace(message, data=b"", error=extra["read_error"]), org)
    try:
        when = _as_time(extra.get("date"))
        label = _as_label(extra.get("label")) or labels.get(message.id)
    except ValueError as error:
        problem = f"message {message.id}: {error}"
        logger.warning("%s", problem)
        return RescoreRow(replace(message, data=b"", error=problem), org)
    return RescoreRow(message, org, when, label)


def _as_time(value) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"column 'date' must be ISO 8601, got {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"column 'date' must be a timestamp or text, got {type(value).__name__}")
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _as_label(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(CLASS_NAMES):
        return CLASS_NAMES[value]
    if value in CLASS_NAMES:
        return value
    raise ValueError(f"column 'label' must be one of {CLASS_NAMES} or their index, got {value!r}")


def read_labels(path: str | Path) -> dict[str, str]:
    """id to label from a Parquet or CSV file with columns id and label."""
    import pandas as pd

    path = Path(path)
    frame = pd.read_parquet(path) if is_table(path) else pd.read_csv(path, dtype=str)
    missing = sorted({"id", "label"} - set(frame.columns))
    if missing:
        raise ValueError(f"labels file {str(path)!r} needs columns id and label; missing {missing}")
    labels = {}
    for message_id, value in zip(frame["id"], frame["label"], strict=True):
        value = int(value) if str(value).isdigit() else value
        labels[str(message_id)] = _as_label(value)
    return labels


def count_messages(source: str | Path, config: RescoreConfig) -> int:
    """How many messages the source holds (Parquet metadata, else one reading pass)."""
    if is_table(source):
        path = Path(source)
        files = [path] if path.is_file() else sorted(path.rglob("*"))
        return sum(
            pq.ParquetFile(f).metadata.num_rows
            for f in files
            if f.is_file() and is_table(f) and not f.name.startswith((".", "_"))
        )
    total = 0
    try:
        for _ in iter_messages(source, text_records=config.text_records):
            total += 1
    except SourceError:
        pass  # the scoring pass meets it again and reports it
    return total


def chunks(rows: Iterable[RescoreRow], size: int) -> Iterator[tuple[int, list[RescoreRow]]]:
    """(number, rows) of consecutive messages; the last chunk may be shorter. When the
    source breaks, the chunk read so far is yielded before the SourceError is raised."""
    number, chunk = 0, []
    try:
        for row in rows:
            chunk.append(row)
            if len(chunk) == size:
                yield number, chunk
                number, chunk = number + 1, []
    except SourceError:
        if chunk:
            yield number, chunk
        raise
    if chunk:
        yield number, chunk


# the output folder


def verdict_table(
    rows: Sequence[RescoreRow],
    results: Sequence[tuple[Verdict, datetime | None]],
    model: str,
    chunk: int,
) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for row, (verdict, when) in zip(rows, results, strict=True):
        for name, value in asdict(verdict).items():
            columns[name].append(value)
        columns["model"].append(model)
        columns["org"].append(row.org)
        columns["date"].append(when)
        columns["label"].append(row.label)
        columns["chunk"].append(chunk)
    return pa.Table.from_pydict(columns, schema=SCHEMA)


class RunFolder:
    """DIR of one rescoring run: manifest, part files per slot, failures, summary."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def part(self, slot: str, chunk: int) -> Path:
        return self.root / "scores" / f"slot={slot}" / f"part-{chunk:06d}.parquet"

    def slot_dir(self, slot: str) -> Path:
        return self.root / "scores" / f"slot={slot}"

    def prepare(self, identity: dict) -> dict:
        """Create the folder or check that it holds a run of the same work; remove the
        half-written parts a crash left. Returns the manifest."""
        manifest_path = self.root / "manifest.json"
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format") != FORMAT or manifest.get("identity") != identity:
                raise ValueError(
                    f"output {str(self.root)!r} holds a run of other work "
                    f"({manifest.get('identity')}); this run is {identity}: "
                    "use another --output to start afresh"
                )
            for leftover in self.root.glob("scores/slot=*/.part-*.tmp"):
                leftover.unlink()
            return manifest
        if self.root.exists() and any(self.root.iterdir()):
            raise ValueError(
                f"output {str(self.root)!r} exists and holds no rescoring run; "
                "give an empty or new folder"
            )
        manifest = {"format": FORMAT, "identity": identity, "total": None}
        self.write_json("manifest.json", manifest)
        return manifest

    def write_json(self, name: str, value: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".{name}.tmp"
        temporary.write_text(json.dumps(value, indent=2, default=str) + "\n")
        os.replace(temporary, self.root / name)

    def done(self, slot: str, chunk: int, ids: list[str]) -> bool:
        """Whether the chunk's part exists and holds exactly these ids, in order."""
        path = self.part(slot, chunk)
        if not path.exists():
            return False
        try:
            stored = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        except (OSError, pa.ArrowException) as error:
            logger.warning("part %s cannot be read (%s); scoring its chunk again", path, error)
            return False
        if stored != ids:
            logger.warning(
                "part %s holds other messages than chunk %d now; scoring it again", path, chunk
            )
            return False
        return True

    def write_part(self, slot: str, chunk: int, table: pa.Table) -> None:
        """Write whole or not at all: a hidden file, synced, then renamed into place."""
        target = self.part(slot, chunk)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        pq.write_table(table, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def read_slot(self, slot: str, columns: list[str] | None = None) -> pa.Table:
        parts = sorted(self.slot_dir(slot).glob("part-*.parquet"))
        if not parts:
            return SCHEMA.empty_table().select(columns or SCHEMA.names)
        return pa.concat_tables(pq.read_table(p, columns=columns) for p in parts)


# workers


_WORKER_MODELS: dict[str, Model] = {}


def _start_worker(specs: dict, parent_pid: int | None = None) -> None:
    """Runs once in each worker process: load every model there, once, and end the
    worker when the run's main process is gone (killed with SIGKILL, say), so that no
    orphan keeps a model in memory."""
    logging.getLogger().setLevel(logging.WARNING)  # the main process reports progress
    if parent_pid is not None:
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    _open_models(specs)


def _exit_when_orphaned(parent_pid: int, every_s: float = 1.0) -> None:
    while os.getppid() == parent_pid:
        time.sleep(every_s)
    os._exit(1)  # a partial part is never renamed into place, so the rerun redoes it


def _open_models(specs: dict) -> None:
    for slot, spec in specs.items():
        _WORKER_MODELS[slot] = spec.open()


def _score_chunk(root: str, number: int, rows: list[RescoreRow], slots: list[str]) -> int:
    """Score one chunk with each slot's model and write its parts; returns its size."""
    folder = RunFolder(root)
    for slot in slots:
        model = _WORKER_MODELS[slot]
        results = model.score(rows)
        folder.write_part(slot, number, verdict_table(rows, results, model.version, number))
    return len(rows)


class _InProcessPool:
    """The pool interface for workers=0: each chunk is scored at once, here."""

    def __init__(self, specs: dict) -> None:
        _open_models(specs)

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as error:  # noqa: BLE001 - reported like a worker's failure
            future.set_exception(error)
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        _WORKER_MODELS.clear()


# the run


@dataclass
class RescoreSummary:
    """What one run did; `status` is the command's exit status (module docstring)."""

    read: int = 0
    scored: int = 0  # with model A, counted over every part (earlier runs' too)
    failed: int = 0  # messages with an error row (model A)
    resumed: int = 0  # messages whose chunk an earlier run had finished
    chunks: int = 0
    unfinished_chunks: list[int] = field(default_factory=list)
    source_error: str | None = None
    seconds: float = 0.0
    messages_per_second: float = 0.0
    models: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> int:
        if self.source_error:
            return 2
        if self.unfinished_chunks:
            return 3
        return 1 if self.read and self.failed == self.read else 0


def rescore(
    source: str | Path,
    models: dict[str, ModelSpec | ServerSpec],
    output: str | Path,
    config: RescoreConfig | None = None,
    labels_path: str | Path | None = None,
) -> RescoreSummary:
    """Rescore `source` into `output` with each slot's model (see the module contract).

    Raises SourceError when the source cannot be opened, ValueError when `output`
    holds a run of other work or a slot is not one of SLOTS.
    """
    config = config or RescoreConfig()
    unknown = sorted(set(models) - set(SLOTS))
    if unknown or "a" not in models:
        raise ValueError(f"models must name slot 'a' and optionally 'b', got {sorted(models)}")
    labels = read_labels(labels_path) if labels_path else {}
    rows = read_rows(source, config, labels)  # opens the source: fails here if it cannot
    folder = RunFolder(output)
    identity = {
        "source": str(Path(source).resolve()),
        "chunk_size": config.chunk_size,
        "org": config.org,
        "text_records": config.text_records,
        "labels": str(Path(labels_path).resolve()) if labels_path else None,
        "slots": {slot: spec.identity() for slot, spec in sorted(models.items())},
    }
    manifest = folder.prepare(identity)
    if manifest.get("total") is None and config.count_first:
        manifest["total"] = count_messages(source, config)
        folder.write_json("manifest.json", manifest)

    summary = RescoreSummary(models={s: i["model"] for s, i in identity["slots"].items()})
    logger.info(
        "rescoring %s with %s into %s (%s workers, chunks of %d)",
        source,
        summary.models,
        folder.root,
        config.workers or "no",
        config.chunk_size,
    )
    started = time.monotonic()
    progress = tqdm(total=manifest.get("total"), unit="msg", desc="rescore", smoothing=0.1)
    with progress, _pool(config, models) as pool:
        _run_chunks(pool, rows, folder, sorted(models), config, summary, progress)
    summary.seconds = round(time.monotonic() - started, 2)
    done_now = summary.read - summary.resumed
    summary.messages_per_second = round(done_now / summary.seconds, 2) if summary.seconds else 0.0
    _finish(folder, sorted(models), summary)
    return summary


def _pool(config: RescoreConfig, models: dict):
    if config.workers == 0:
        return _InProcessPool(models)
    return ProcessPoolExecutor(
        config.workers,
        mp_context=get_context("spawn"),
        initializer=_start_worker,
        initargs=(models, os.getpid()),
    )


def _run_chunks(pool, rows, folder: RunFolder, slots, config, summary, progress) -> None:
    """Send every chunk not yet done to the pool, at most two per worker in flight."""
    limit = max(1, 2 * config.workers)
    pending: dict[Future, tuple[int, list[str]]] = {}

    def settle(block: bool) -> None:
        if block:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        else:
            finished = [future for future in pending if future.done()]
        for future in finished:
            number, ids = pending.pop(future)
            try:
                done = future.result()
            except BrokenProcessPool as error:
                raise RuntimeError(f"a worker process died ({error}); rerun to resume") from error
            except Exception as error:  # noqa: BLE001 - this chunk is left for the rerun
                logger.error(
                    "chunk %d (messages %s to %s) could not be scored: %s: %s; a rerun scores it",
                    number,
                    ids[0],
                    ids[-1],
                    type(error).__name__,
                    error,
                )
                summary.unfinished_chunks.append(number)
                continue
            progress.update(done)

    try:
        for number, chunk in chunks(rows, config.chunk_size):
            summary.read += len(chunk)
            summary.chunks += 1
            ids = [row.message.id for row in chunk]
            todo = [slot for slot in slots if not folder.done(slot, number, ids)]
            if not todo:
                summary.resumed += len(chunk)
                progress.update(len(chunk))
                continue
            while len(pending) >= limit:
                settle(block=True)
            pending[pool.submit(_score_chunk, str(folder.root), number, chunk, todo)] = (
                number,
                ids,
            )
            settle(block=False)
    except SourceError as error:
        logger.error("source stopped early: %s", error)
        summary.source_error = str(error)
    while pending:
        settle(block=True)


def _finish(folder: RunFolder, slots: list[str], summary: RescoreSummary) -> None:
    """Check that every message read is in each slot exactly once, then count what the
    parts hold (this run's and the earlier runs') and list the failures."""
    if not summary.unfinished_chunks:
        for slot in slots:
            check_exactly_once(folder, slot, summary.read)
    write_failures_and_summary(folder, slots, summary)


def check_exactly_once(folder: RunFolder, slot: str, expected: int | None = None) -> None:
    """Raise RuntimeError unless the slot holds each id once (and `expected` rows)."""
    ids = folder.read_slot(slot, ["id"]).column("id").to_pylist()
    distinct = len(set(ids))
    if distinct != len(ids) or (expected is not None and len(ids) != expected):
        raise RuntimeError(
            f"slot {slot} holds {len(ids)} rows ({distinct} distinct) for {expected} messages "
            f"read: the source changed since an earlier run into {folder.root}, or the "
            "folder was changed during the run"
        )


def write_failures_and_summary(folder: RunFolder, slots: list[str], summary: RescoreSummary):
    """failures.jsonl (model A's error rows: id, error) and summary.json, whole or not at all."""
    table = folder.read_slot("a", ["id", "error"]).to_pydict()
    failures = [
        {"id": i, "error": e} for i, e in zip(table["id"], table["error"], strict=True) if e
    ]
    summary.failed = len(failures)
    summary.scored = len(table["id"]) - len(failures)

    temporary = folder.root / ".failures.jsonl.tmp"
    with open(temporary, "w", encoding="utf-8") as out:
        for failure in failures:
            out.write(json.dumps(failure, ensure_ascii=False) + "\n")
    os.replace(temporary, folder.root / "failures.jsonl")
    folder.write_json("summary.json", asdict(summary))
    if failures:
        logger.warning(
            "%d messages could not be scored; listed in %s (first: %s)",
            len(failures),
            folder.root / "failures.jsonl",
            failures[0]["id"],
        )


# the command


def add_command(commands) -> None:
    parser = commands.add_parser("rescore", help="rescore a source with one or two models")
    parser.add_argument("source", help="a file, directory, mbox, archive or Parquet table")
    parser.add_argument("--model", required=True, help="exported version directory or Triton URL")
    parser.add_argument("--compare", help="a second model (directory or URL) to compare with")
    parser.add_argument("--output", required=True, type=Path, help="the run's folder")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="scoring processes (default: one per core; 0: this process)",
    )
    parser.add_argument("--chunk-size", type=int, default=RescoreConfig.chunk_size)
    parser.add_argument("--org", default="default", help="org of messages a table gives none")
    parser.add_argument("--history", help="SQLite sender-history file (read as of each message)")
    parser.add_argument("--directory", help="the organisation's directory file (JSON or TOML)")
    parser.add_argument("--labels", help="Parquet or CSV file of id,label for the comparison")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="requests in flight per worker to a Triton server",
    )
    parser.add_argument(
        "--text-records", action="store_true", help="files are Subject+body records"
    )
    parser.add_argument(
        "--no-count", action="store_true", help="do not read the source first to count it (no ETA)"
    )
    parser.set_defaults(run=run_rescore)


def run_rescore(args: argparse.Namespace) -> int:
    from serving.compare import write_comparison

    try:
        config = RescoreConfig(
            workers=args.workers,
            chunk_size=args.chunk_size,
            org=args.org,
            text_records=args.text_records or None,
            count_first=not args.no_count,
        )
        for option, path in (
            ("--history", args.history),
            ("--directory", args.directory),
            ("--labels", args.labels),
        ):
            if path and not Path(path).exists():
                raise ValueError(f"{option} file {str(path)!r} does not exist")
        models = {
            "a": open_spec(args.model, config, args.history, args.directory, args.concurrency)
        }
        if args.compare:
            models["b"] = open_spec(
                args.compare, config, args.history, args.directory, args.concurrency
            )
        summary = rescore(args.source, models, args.output, config, args.labels)
    except (SourceError, ValueError, OSError) as error:
        logger.error("cannot rescore: %s", error)
        return 2
    except RuntimeError as error:  # a worker died, or the output was changed under the run
        logger.error("rescoring stopped: %s", error)
        return 3
    logger.info("summary: %s", json.dumps(asdict(summary)))
    if "b" in models and summary.status in (0, 1):
        report = write_comparison(args.output)
        logger.info(
            "comparison: %d of %d messages changed verdict; %s",
            report["changed"],
            report["compared"],
            args.output / "comparison.md",
        )
    return summary.status
