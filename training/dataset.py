"""Build the training table from the public mail corpora.

Contract: `build_dataset(corpora_dir, output_dir, config)` reads every known archive in
`corpora_dir` (`CORPORA`), labels each message from where its corpus filed it, and
returns a `datasets.DatasetDict`, also saved to `output_dir` with `save_to_disk`
beside `manifest.json` (counts, duplicates removed, dates interpolated, the config and
the data's fingerprint) and `history.sqlite` (the sender history built on the way).
`load_dataset_dict(output_dir)` returns `(DatasetDict, fingerprint)`.
`dataset_from_messages(items, org)` builds the same table from labelled messages in
memory (tests, small experiments).

Steps, in order:

1. read: `iter_messages` over each archive (Enron-Spam as text records); a message
   whose folder names no label is skipped and counted;
2. parse: sanitize (rfc822 only) and parse, as every scoring path does
   (`detection.features.parse_for_model`), in worker processes;
3. de-duplicate before any split: the same Message-ID, or the same normalised subject
   and visible text, keeps only the first copy read;
4. date: the Date header (Enron-Spam: the date in the file name); a missing date or one
   outside [earliest_year, latest_year] is interpolated from its neighbours in file
   order and counted;
5. sender signals: each organisation's mail in time order through a `SenderHistory`:
   `facts_before` first, then `record` only for safe mail, so nothing leaks from a
   message's own future and no attacker becomes "known" by attacking; the recipients
   sanitize replaced in the text are keyed by hash in the history, so the recipient
   signals are computed; the history's key is the file `$BULWARK_HISTORY_KEY_FILE`
   names (the public default key without it);
6. split by time within each source and label: the earliest `train_fraction` of a
   source's safe mail (and of its spam, and of its attacks) is "train", the next
   `validation_fraction` "validation", the rest "test", so that each split holds every
   label a source has even where a corpus collected its ham and spam in different
   years (`split_within="source"` cuts one timeline per source instead);
   a source in `holdout_sources` goes entirely to "holdout". Never a random split.

Columns: id, source, org, label (index into `CLASS_NAMES`), text (`model_text`),
signals (float32, `SIGNAL_NAMES` order), date (ISO 8601, UTC), split, raw (the
original bytes, before sanitizing, so a row can be re-scored end to end), kind.

Run:
    python -m training.dataset --corpora ../shared/corpora --output runs/dataset
    python -m training.dataset --max-per-source 500 --holdout nazario --output runs/small
    python -m training.dataset --history-key-file tenant.key --output runs/dataset

Known shortcomings: messages of one sender on the same Enron day share a date, so the
history does not count them towards each other; parsing has a per-message time
budget, so under heavy load a pathological message may read differently between runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import random
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from detection.detectors import Hit
from detection.features import features_of, model_text, parse_with_recipients
from detection.history import KEY_FILE_ENV, HistoryKeyFile, SenderHistory
from detection.parsing import ParsedMessage
from detection.signals import SIGNAL_NAMES
from detection.sources import RawMessage, SourceStats, iter_messages
from detection.tensors import CLASS_NAMES

__all__ = [
    "CORPORA",
    "DatasetConfig",
    "build_dataset",
    "dataset_from_messages",
    "load_dataset_dict",
    "model_text",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test", "holdout")
SPLIT_WITHIN = ("source", "source_label")
LABEL_IDS = {name: index for index, name in enumerate(CLASS_NAMES)}
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "org": datasets.Value("string"),
        "label": datasets.Value("int64"),
        "text": datasets.Value("string"),
        "signals": datasets.Sequence(datasets.Value("float32")),
        "hit_categories": datasets.Sequence(datasets.Value("string")),
        "hit_scores": datasets.Sequence(datasets.Value("float32")),
        "date": datasets.Value("string"),
        "split": datasets.Value("string"),
        "raw": datasets.Value("binary"),
        "kind": datasets.Value("string"),
    }
)
UNDATED = datetime(2000, 1, 1, tzinfo=timezone.utc)  # a source with no usable date at all
PARALLEL_FROM = 256  # fewer messages than this are parsed in this process


@dataclass(frozen=True)
class DatasetConfig:
    """How the table is built. Defaults build the full table on a laptop in minutes."""

    train_fraction: float = 0.70
    validation_fraction: float = 0.15  # the test split gets the rest
    max_messages_per_source: int | None = None  # a seeded sample, kept in file order
    holdout_sources: tuple[str, ...] = ()
    # "source": cut each source's timeline; "source_label": cut each label's timeline
    # within a source, so every split keeps the source's classes when their eras differ
    split_within: str = "source_label"
    seed: int = 0
    workers: int = 0  # parse processes; 0: one per CPU
    earliest_year: int = 1990  # dates outside [earliest, latest] are interpolated
    latest_year: int = 2030

    def __post_init__(self) -> None:
        for name in ("train_fraction", "validation_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"DatasetConfig.{name} must be a number in (0, 1), got {value!r}")
        if self.train_fraction + self.validation_fraction > 1:
            raise ValueError(
                "DatasetConfig.train_fraction + validation_fraction must be at most 1, got "
                f"{self.train_fraction} + {self.validation_fraction}"
            )
        for name in ("seed", "workers", "earliest_year", "latest_year"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"DatasetConfig.{name} must be a non-negative int, got {value!r}")
        cap = self.max_messages_per_source
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(
                f"DatasetConfig.max_messages_per_source must be None or a positive int, got {cap!r}"
            )
        if not isinstance(self.holdout_sources, tuple) or not all(
            isinstance(s, str) for s in self.holdout_sources
        ):
            raise ValueError(
                "DatasetConfig.holdout_sources must be a tuple of source names, got "
                f"{self.holdout_sources!r}"
            )
        if self.split_within not in SPLIT_WITHIN:
            raise ValueError(
                f"DatasetConfig.split_within must be one of {SPLIT_WITHIN}, "
                f"got {self.split_within!r}"
            )
        if self.earliest_year >= self.latest_year:
            raise ValueError(
                f"DatasetConfig.earliest_year must be before latest_year, got "
                f"{self.earliest_year} and {self.latest_year}"
            )

    @classmethod
    def from_dict(cls, values: dict) -> DatasetConfig:
        """A config from plain values (JSON); unknown keys are rejected, lists become tuples."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"DatasetConfig got unknown keys {unknown}; allowed: {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("holdout_sources"), list):
            values["holdout_sources"] = tuple(values["holdout_sources"])
        return cls(**values)


# corpora
@dataclass(frozen=True)
class CorpusSpec:
    """One public corpus: how its archive is named, read and labelled."""

    archive_prefix: str  # the archive's file name starts with this
    source: str
    text_records: bool | None = None

    def label(self, member: str) -> str | None:
        """The class of a message from its path inside the archive; None: not labelled."""
        folders = member.split("/")[:-1]
        if self.source == "spamassassin":
            if {"easy_ham", "easy_ham_2", "hard_ham"} & set(folders):
                return "safe"
            return "spam" if {"spam", "spam_2"} & set(folders) else None
        if self.source == "enron-spam":
            if "ham" in folders:
                return "safe"
            return "spam" if "spam" in folders else None
        return {"usrp-users": "safe", "nazario": "attack", "phishing_pot": "attack"}[self.source]

    def org(self, member: str) -> str:
        """The mailbox the message was collected in (Enron-Spam: one per employee)."""
        if self.source == "enron-spam":
            mailbox = next((p for p in member.split("/") if re.fullmatch(r"enron\d+", p)), "")
            return f"enron-spam/{mailbox}" if mailbox else self.source
        return self.source


CORPORA = (
    CorpusSpec("spamassassin", "spamassassin", text_records=False),
    CorpusSpec("usrp-users", "usrp-users", text_records=False),
    CorpusSpec("enron-spam", "enron-spam", text_records=True),
    CorpusSpec("nazario", "nazario"),
    CorpusSpec("phishing_pot", "phishing_pot", text_records=False),
)
_ENRON_DATE = re.compile(r"\.(\d{4})-(\d{2})-(\d{2})\.")
_SPACES = re.compile(r"\s+")


@dataclass
class _Record:
    """One message on its way to a row (internal, filled step by step)."""

    message: RawMessage
    source: str
    org: str
    label: str
    seq: int  # position in reading order, the tie-breaker everywhere
    parsed: ParsedMessage | None = None
    text: str = ""
    body_key: str = ""
    date: datetime | None = None
    signals: list[float] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    split: str = ""
    recipients: tuple[str, ...] = ()  # the addresses sanitize replaced, for the history


@dataclass
class _Report:
    read: Counter = field(default_factory=Counter)
    unlabelled: Counter = field(default_factory=Counter)
    unreadable: Counter = field(default_factory=Counter)
    placeholders: Counter = field(default_factory=Counter)
    sampled_out: Counter = field(default_factory=Counter)
    duplicates: dict = field(default_factory=lambda: defaultdict(Counter))
    interpolated: Counter = field(default_factory=Counter)


def _member(message: RawMessage) -> str:
    """The path of a message inside its archive, without any mbox position."""
    inside = message.id.split(":", 1)[1] if ":" in message.id else message.id
    return inside.rsplit("#", 1)[0]


def _spec_for(archive: Path) -> CorpusSpec | None:
    return next((s for s in CORPORA if archive.name.startswith(s.archive_prefix)), None)


def _read_corpus(
    archive: Path, spec: CorpusSpec, config: DatasetConfig, report: _Report, first_seq: int
) -> list[_Record]:
    stats = SourceStats()
    records = []
    for message in iter_messages(archive, text_records=spec.text_records, stats=stats):
        if message.error:
            report.unreadable[spec.source] += 1
            logger.warning("unreadable message in %s: %s", spec.source, message.error)
            continue
        member = _member(message)
        label = spec.label(member)
        if label is None:
            report.unlabelled[spec.source] += 1
            continue
        records.append(_Record(message, spec.source, spec.org(member), label, 0))
    report.read[spec.source] += stats.read
    report.placeholders[spec.source] += stats.skipped

    cap = config.max_messages_per_source
    if cap is not None and len(records) > cap:
        keep = sorted(
            random.Random(f"{config.seed}:{spec.source}").sample(range(len(records)), cap)
        )
        report.sampled_out[spec.source] += len(records) - cap
        records = [records[i] for i in keep]
    for offset, record in enumerate(records):
        record.seq = first_seq + offset
    logger.info("read %d messages from %s (%s)", len(records), archive.name, spec.source)
    return records


# parse
def _parse_one(item: tuple[bytes, str]) -> tuple[ParsedMessage, str, str, tuple[str, ...]]:
    data, kind = item
    parsed, recipients = parse_with_recipients(data, kind)
    return parsed, model_text(parsed), body_key(parsed), recipients


def body_key(parsed: ParsedMessage) -> str:
    """A hash of the normalised subject and visible text ("" when there is no text)."""
    body = _SPACES.sub(" ", parsed.visible_text).strip().lower()
    if not body:
        return ""
    subject = _SPACES.sub(" ", parsed.subject).strip().lower()
    return hashlib.sha256(f"{subject}\x00{body}".encode("utf-8", "replace")).hexdigest()


def _parse_all(records: list[_Record], workers: int) -> None:
    items = [(r.message.data, r.message.kind) for r in records]
    workers = workers or os.cpu_count() or 1
    progress = dict(total=len(items), desc="parse", unit="msg", disable=None)
    if workers == 1 or len(items) < PARALLEL_FROM:
        results: Iterable = map(_parse_one, items)
        for record, result in zip(records, tqdm(results, **progress), strict=True):
            record.parsed, record.text, record.body_key, record.recipients = result
        return
    # fork: the workers inherit the loaded modules instead of importing them again
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.imap(_parse_one, items, chunksize=32)
        for record, result in zip(records, tqdm(results, **progress), strict=True):
            record.parsed, record.text, record.body_key, record.recipients = result


# de-duplicate, date
def _deduplicate(records: list[_Record], report: _Report) -> list[_Record]:
    seen_ids: set[str] = set()
    seen_bodies: set[str] = set()
    kept = []
    for record in records:
        message_id = record.parsed.message_id.strip().strip("<>").lower()
        if message_id and message_id in seen_ids:
            report.duplicates["message_id"][record.source] += 1
            continue
        if record.body_key and record.body_key in seen_bodies:
            report.duplicates["body"][record.source] += 1
            continue
        if message_id:
            seen_ids.add(message_id)
        if record.body_key:
            seen_bodies.add(record.body_key)
        kept.append(record)
    return kept


def _message_date(record: _Record) -> datetime | None:
    if record.message.kind == "text":
        match = _ENRON_DATE.search(_member(record.message).rsplit("/", 1)[-1])
        if match is None:
            return None
        try:
            return datetime(*map(int, match.groups()), tzinfo=timezone.utc)
        except ValueError:
            return None
    when = record.parsed.date
    return when.astimezone(timezone.utc) if when is not None else None


def _assign_dates(records: list[_Record], config: DatasetConfig, report: _Report) -> None:
    """Each record's date; missing or absurd ones interpolated in file order per source."""
    by_source: dict[str, list[_Record]] = defaultdict(list)
    for record in records:
        when = _message_date(record)
        if when is not None and not config.earliest_year <= when.year <= config.latest_year:
            when = None
        record.date = when
        by_source[record.source].append(record)
    for source, group in by_source.items():
        report.interpolated[source] += _interpolate(group)


def _interpolate(group: list[_Record]) -> int:
    """Fill missing dates linearly between the nearest dated neighbours; returns how many."""
    known = [i for i, r in enumerate(group) if r.date is not None]
    missing = [i for i, r in enumerate(group) if r.date is None]
    for i in missing:
        before = max((k for k in known if k < i), default=None)
        after = min((k for k in known if k > i), default=None)
        if before is None and after is None:
            group[i].date = UNDATED
        elif before is None or after is None:
            group[i].date = group[before if after is None else after].date
        else:
            start, end = group[before].date, group[after].date
            group[i].date = start + (end - start) * ((i - before) / (after - before))
    return len(missing)


# sender signals, splits
def _add_sender_signals(records: list[_Record], history: SenderHistory) -> None:
    ordered = sorted(records, key=lambda r: (r.org, r.date, r.seq))
    for record in tqdm(ordered, desc="history", unit="msg", disable=None):
        facts = history.facts_before(record.org, record.parsed, record.date, record.recipients)
        found = features_of(record.parsed, facts, record.date)
        record.signals, record.hits = found.signals, found.hits
        if record.label == "safe":
            history.record(record.org, record.parsed, record.date, record.recipients)
    history.commit()


def _assign_splits(records: list[_Record], config: DatasetConfig) -> None:
    groups: dict[tuple[str, ...], list[_Record]] = defaultdict(list)
    for record in records:
        key = (record.source, record.label if config.split_within == "source_label" else "")
        groups[key].append(record)
    for (source, _), group in sorted(groups.items()):
        if source in config.holdout_sources:
            for record in group:
                record.split = "holdout"
            continue
        group.sort(key=lambda r: (r.date, r.seq))
        train_end = int(len(group) * config.train_fraction)
        validation_end = int(len(group) * (config.train_fraction + config.validation_fraction))
        for position, record in enumerate(group):
            if position < train_end:
                record.split = "train"
            else:
                record.split = "validation" if position < validation_end else "test"


def _to_dataset_dict(records: list[_Record]) -> datasets.DatasetDict:
    columns: dict[str, dict[str, list]] = {
        split: {name: [] for name in FEATURES} for split in SPLITS
    }
    for record in sorted(records, key=lambda r: (r.source, r.date, r.seq)):
        row = columns[record.split]
        row["id"].append(record.message.id)
        row["source"].append(record.source)
        row["org"].append(record.org)
        row["label"].append(LABEL_IDS[record.label])
        row["text"].append(record.text)
        row["signals"].append(record.signals)
        row["hit_categories"].append([hit.category for hit in record.hits])
        row["hit_scores"].append([hit.score for hit in record.hits])
        row["date"].append(record.date.isoformat())
        row["split"].append(record.split)
        row["raw"].append(record.message.data)
        row["kind"].append(record.message.kind)
    present = [s for s in SPLITS if columns[s]["id"] or s != "holdout"]
    return datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(columns[s], features=FEATURES) for s in present}
    )


def fingerprint(data: datasets.DatasetDict) -> str:
    """sha256 over every row's id, label and text, in id order (independent of the splits)."""
    rows = sorted(
        (row_id, label, text)
        for split in data.values()
        for row_id, label, text in zip(split["id"], split["label"], split["text"], strict=True)
    )
    digest = hashlib.sha256()
    for row_id, label, text in rows:
        digest.update(f"{row_id}\x1f{label}\x1f{text}\x1e".encode("utf-8", "replace"))
    return digest.hexdigest()


# the whole build
def _build(records: list[_Record], config: DatasetConfig, report: _Report, history_path: str):
    _parse_all(records, config.workers)
    records = _deduplicate(records, report)
    _assign_dates(records, config, report)
    history = SenderHistory(history_path, autocommit=False)
    try:
        _add_sender_signals(records, history)
    finally:
        history.close()
    _assign_splits(records, config)
    return _to_dataset_dict(records)


def dataset_from_messages(
    items: Sequence[tuple[RawMessage, str]], org: str, config: DatasetConfig | None = None
) -> datasets.DatasetDict:
    """The table for labelled messages in memory: (message, "safe"|"spam"|"attack") pairs.

    The source of each row is `message.source`; every message belongs to `org`.
    Raises ValueError for an unknown label.
    """
    config = config or DatasetConfig()
    records = []
    for seq, (message, label) in enumerate(items):
        if label not in LABEL_IDS:
            raise ValueError(f"label must be one of {CLASS_NAMES}, got {label!r} for {message.id}")
        records.append(_Record(message, message.source, org, label, seq))
    return _build(records, config, _Report(), ":memory:")


def build_dataset(
    corpora_dir: Path, output_dir: Path, config: DatasetConfig
) -> datasets.DatasetDict:
    """Build, save and return the table for every known corpus in `corpora_dir`.

    Raises FileNotFoundError when `corpora_dir` holds no known archive, ValueError when
    a holdout source names no corpus, and `SourceError` for an unreadable archive.
    """
    started = time.monotonic()
    corpora_dir, output_dir = Path(corpora_dir), Path(output_dir)
    known_sources = sorted(s.source for s in CORPORA)
    unknown = sorted(set(config.holdout_sources) - set(known_sources))
    if unknown:
        raise ValueError(f"holdout_sources {unknown} name no corpus; known: {known_sources}")
    archives = [(p, _spec_for(p)) for p in sorted(corpora_dir.glob("*.tar*"))]
    archives = [(p, s) for p, s in archives if s is not None]
    if not archives:
        raise FileNotFoundError(
            f"no known corpus archive in {corpora_dir}; expected names starting with "
            f"{[s.archive_prefix for s in CORPORA]}"
        )
    logger.info("building dataset from %d archives in %s: %s", len(archives), corpora_dir, config)

    report = _Report()
    records: list[_Record] = []
    for archive, spec in archives:
        records += _read_corpus(archive, spec, config, report, first_seq=len(records))

    output_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous(output_dir)
    data = _build(records, config, report, str(output_dir / "history.sqlite"))
    data.save_to_disk(str(output_dir))
    manifest = _manifest(data, config, report, time.monotonic() - started)
    (output_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info(
        "dataset saved to %s: %s rows, %d duplicates removed, %d dates interpolated, %.0f s",
        output_dir,
        {split: len(rows) for split, rows in data.items()},
        sum(sum(c.values()) for c in report.duplicates.values()),
        sum(report.interpolated.values()),
        manifest["wall_seconds"],
    )
    return data


def _clear_previous(output_dir: Path) -> None:
    """Remove what an earlier build wrote there (and nothing else)."""
    for name in (*SPLITS, "dataset_dict.json", "manifest.json", "history.sqlite"):
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _manifest(data: datasets.DatasetDict, config: DatasetConfig, report: _Report, seconds: float):
    per_source: dict = defaultdict(lambda: defaultdict(Counter))
    for split, rows in data.items():
        for source, label in zip(rows["source"], rows["label"], strict=True):
            per_source[source][split][CLASS_NAMES[label]] += 1
    return {
        "config": asdict(config),
        "fingerprint": fingerprint(data),
        "wall_seconds": round(seconds, 1),
        "rows": sum(len(rows) for rows in data.values()),
        "per_split": {split: _label_counts(rows["label"]) for split, rows in data.items()},
        "per_source": {
            s: {k: dict(v) for k, v in splits.items()} for s, splits in per_source.items()
        },
        "read": dict(report.read),
        "unlabelled_skipped": dict(report.unlabelled),
        "unreadable_skipped": dict(report.unreadable),
        "placeholders_skipped": dict(report.placeholders),
        "sampled_out": dict(report.sampled_out),
        "duplicates_removed": {k: dict(v) for k, v in report.duplicates.items()},
        "dates_interpolated": dict(report.interpolated),
        "class_names": list(CLASS_NAMES),
        "signal_names": list(SIGNAL_NAMES),
    }


def _label_counts(labels: Sequence[int]) -> dict[str, int]:
    counts = Counter(labels)
    return {name: counts.get(index, 0) for index, name in enumerate(CLASS_NAMES)}


def load_dataset_dict(output_dir: Path) -> tuple[datasets.DatasetDict, str]:
    """The saved table and its fingerprint (from manifest.json, or computed when absent)."""
    output_dir = Path(output_dir)
    data = datasets.load_from_disk(str(output_dir))
    manifest = output_dir / "manifest.json"
    if manifest.exists():
        return data, json.loads(manifest.read_text())["fingerprint"]
    return data, fingerprint(data)


def main(argv: Sequence[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description="Build the training table from the corpora.")
    parser.add_argument("--corpora", type=Path, default=root.parent / "shared" / "corpora")
    parser.add_argument("--output", type=Path, default=root / "runs" / "dataset")
    parser.add_argument("--max-per-source", type=int, default=None)
    parser.add_argument("--holdout", nargs="*", default=[], help="sources held out entirely")
    parser.add_argument("--workers", type=int, default=0, help="parse processes (0: one per CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-within", choices=SPLIT_WITHIN, default="source_label")
    parser.add_argument(
        "--history-key-file",
        action=HistoryKeyFile,
        help=f"file holding the sender history's hashing key (default: ${KEY_FILE_ENV})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    config = DatasetConfig(
        max_messages_per_source=args.max_per_source,
        holdout_sources=tuple(args.holdout),
        workers=args.workers,
        seed=args.seed,
        split_within=args.split_within,
    )
    build_dataset(args.corpora, args.output, config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
