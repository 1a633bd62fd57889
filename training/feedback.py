"""Labelled feedback from analysts and user reports, and how much of it to trust.

Contract:
- The ledger is a JSON Lines file, one `FeedbackEntry` per line (docs/retraining.md):
  `message_id` (a row of the dataset) or `raw_base64` (a new message's bytes), `label`
  ("safe", "spam", "attack"), `category` (an attack category or null), `source` (who
  gave the label: a key of the trust policy, e.g. "analyst", "user_report"), `time`
  (ISO 8601 with a zone), and optionally `reviewed_by` and `note`.
  `parse_entry(values, where)` validates one line and raises `FeedbackError` naming the
  rule broken, the value received and `where`; `read_ledger(path)` returns the valid
  entries and one error string per bad line (the other lines still count);
  `append_entries(path, entries)` adds entries, skipping exact duplicates.
- `FeedbackPolicy` gives each source a `trust` level and limits: at most
  `max_relabel_share` of the dataset's existing labels may be changed by one source,
  and at most `max_new_messages` new messages added, without review (an entry with
  `reviewed_by` is exempt). Past the limit, the source's later entries (in time
  order) are held for review, so that a flood of reports cannot rewrite the data.
- `resolve_feedback(entries, labels_by_id, frozen_ids, policy)` returns a
  `FeedbackResolution`: the relabels and new messages to apply, and every entry's
  outcome with its reason. When several entries name one message, the most trusted
  source wins, then the latest. Entries naming a frozen (golden) message are refused.

Run (through the CLI):
    bulwark feedback add --ledger feedback.jsonl --message-id ID --label attack \\
        --category credential_phishing --source analyst
    bulwark feedback add --ledger feedback.jsonl --raw reported.eml --label attack \\
        --source user_report
    bulwark feedback import reports.jsonl --ledger feedback.jsonl
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from detection.detectors import CATEGORIES
from detection.tensors import CLASS_NAMES

logger = logging.getLogger(__name__)

ENTRY_FIELDS = ("message_id", "raw_base64", "label", "category", "source", "time")
OPTIONAL_FIELDS = ("reviewed_by", "note")


class FeedbackError(ValueError):
    """A feedback entry broke the format; the message names the rule and the entry."""


@dataclass(frozen=True)
class FeedbackEntry:
    label: str
    source: str
    time: str  # ISO 8601 with a zone, normalised to UTC
    message_id: str | None = None
    raw_base64: str | None = None
    category: str | None = None
    reviewed_by: str | None = None
    note: str | None = None

    @property
    def raw(self) -> bytes | None:
        return base64.b64decode(self.raw_base64) if self.raw_base64 else None

    @property
    def target(self) -> str:
        """The dataset id this entry labels: the given id, or one derived from the bytes."""
        if self.message_id:
            return self.message_id
        return "feedback:" + hashlib.sha256(self.raw or b"").hexdigest()[:24]

    def to_json(self) -> str:
        values = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(values, sort_keys=True, ensure_ascii=False)


def parse_entry(values: Mapping, where: str) -> FeedbackEntry:
    """One validated entry from a JSON object; FeedbackError says what is wrong and where."""
    if not isinstance(values, Mapping):
        raise FeedbackError(f"{where}: an entry must be a JSON object, got {type(values).__name__}")
    unknown = sorted(set(values) - set(ENTRY_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        allowed = sorted(ENTRY_FIELDS + OPTIONAL_FIELDS)
        raise FeedbackError(f"{where}: unknown fields {unknown}; allowed: {allowed}")
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            raise FeedbackError(f"{where}: {name} must be a string, got {value!r}")

    has_id, has_raw = bool(values.get("message_id")), bool(values.get("raw_base64"))
    if has_id == has_raw:
        raise FeedbackError(f"{where}: give exactly one of message_id and raw_base64")
    if has_raw:
        try:
            base64.b64decode(values["raw_base64"], validate=True)
        except binascii.Error as error:
            raise FeedbackError(f"{where}: raw_base64 is not base64 ({error})") from None

    label = values.get("label")
    if label not in CLASS_NAMES:
        raise FeedbackError(f"{where}: label must be one of {CLASS_NAMES}, got {label!r}")
    category = values.get("category")
    if category is not None and category not in CATEGORIES:
        raise FeedbackError(
            f"{where}: category must be one of {CATEGORIES} or null, got {category!r}"
        )
    if category is not None and label != "attack":
        raise FeedbackError(f"{where}: a category needs label 'attack', got label {label!r}")
    if not values.get("source"):
        raise FeedbackError(f"{where}: source is required (who gave the label)")
    return FeedbackEntry(
        label=label,
        source=values["source"],
        time=_utc_time(values.get("time"), where),
        message_id=values.get("message_id") or None,
        raw_base64=values.get("raw_base64") or None,
        category=category,
        reviewed_by=values.get("reviewed_by") or None,
        note=values.get("note") or None,
    )


def _utc_time(value, where: str) -> str:
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise FeedbackError(f"{where}: time must be ISO 8601, got {value!r}") from None
    if when.tzinfo is None:
        raise FeedbackError(f"{where}: time must carry a zone (e.g. 'Z'), got {value!r}")
    return when.astimezone(timezone.utc).isoformat(timespec="seconds")


def read_ledger(path: str | Path) -> tuple[list[FeedbackEntry], list[str]]:
    """The valid entries of a ledger, and one error per line that is not (absent: empty)."""
    path = Path(path)
    if not path.exists():
        return [], []
    entries, errors = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            entries.append(parse_entry(json.loads(line), where))
        except json.JSONDecodeError as error:
            errors.append(f"{where}: not JSON ({error.msg})")
        except FeedbackError as error:
            errors.append(str(error))
    for error in errors:
        logger.warning("feedback entry skipped: %s", error)
    return entries, errors


def append_entries(path: str | Path, entries: Iterable[FeedbackEntry]) -> int:
    """Append entries not already in the ledger; returns how many were added."""
    path = Path(path)
    existing = {e.to_json() for e in read_ledger(path)[0]}
    added = [e.to_json() for e in entries if e.to_json() not in existing]
    added = list(dict.fromkeys(added))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as out:
        out.writelines(line + "\n" for line in added)
    return len(added)


def ledger_fingerprint(entries: Iterable[FeedbackEntry]) -> str:
    """sha256 over the entries' canonical lines, independent of their order."""
    digest = hashlib.sha256()
    for line in sorted(e.to_json() for e in entries):
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


# the trust policy
@dataclass(frozen=True)
class SourceTrust:
    trust: float = 0.5  # in [0, 1]: conflicting labels go to the more trusted source
    max_relabel_share: float = 0.001  # of the dataset's rows, changed without review
    max_new_messages: int = 100  # new messages added without review

    def __post_init__(self) -> None:
        for name in ("trust", "max_relabel_share"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value <= 1
            ):
                raise ValueError(f"SourceTrust.{name} must be a number in [0, 1], got {value!r}")
        new = self.max_new_messages
        if isinstance(new, bool) or not isinstance(new, int) or new < 0:
            raise ValueError(f"SourceTrust.max_new_messages must be an int >= 0, got {new!r}")


@dataclass(frozen=True)
class FeedbackPolicy:
    sources: Mapping[str, SourceTrust] = field(
        default_factory=lambda: {
            "analyst": SourceTrust(trust=1.0, max_relabel_share=0.05, max_new_messages=5000),
            "user_report": SourceTrust(trust=0.3, max_relabel_share=0.001, max_new_messages=200),
        }
    )

    @classmethod
    def from_dict(cls, values: Mapping) -> FeedbackPolicy:
        """From {"sources": {name: {trust, max_relabel_share, max_new_messages}}}."""
        unknown = sorted(set(values) - {"sources"})
        if unknown:
            raise ValueError(f"FeedbackPolicy got unknown keys {unknown}; allowed: ['sources']")
        sources = {}
        allowed = {"trust", "max_relabel_share", "max_new_messages"}
        for name, settings in values.get("sources", {}).items():
            unknown = sorted(set(settings) - allowed)
            if unknown:
                raise ValueError(
                    f"feedback source {name!r} got unknown keys {unknown}; "
                    f"allowed: {sorted(allowed)}"
                )
            sources[name] = SourceTrust(**settings)
        return cls(sources) if sources else cls()

    def to_dict(self) -> dict:
        return {"sources": {name: asdict(t) for name, t in sorted(self.sources.items())}}


@dataclass
class FeedbackResolution:
    relabels: dict[str, int] = field(default_factory=dict)  # dataset id -> label index
    new_messages: list[FeedbackEntry] = field(default_factory=list)
    outcomes: list[dict] = field(default_factory=list)  # one per entry: target, outcome, reason

    def summary(self) -> dict:
        counts: dict = defaultdict(Counter)
        for outcome in self.outcomes:
            counts[outcome["source"]][outcome["outcome"]] += 1
        return {
            "relabelled": len(self.relabels),
            "new_messages": len(self.new_messages),
            "by_source": {source: dict(c) for source, c in sorted(counts.items())},
        }


def resolve_feedback(
    entries: Iterable[FeedbackEntry],
    labels_by_id: Mapping[str, int],
    frozen_ids: Iterable[str],
    policy: FeedbackPolicy,
) -> FeedbackResolution:
    """What of the feedback to apply to a dataset whose labels are `labels_by_id`."""
    result = FeedbackResolution()
    frozen = set(frozen_ids)
    candidates: dict[str, list[FeedbackEntry]] = defaultdict(list)

    for entry in entries:
        refusal = _refusal(entry, labels_by_id, frozen, policy)
        if refusal:
            result.outcomes.append(_outcome(entry, "rejected", refusal))
        else:
            candidates[entry.target].append(entry)

    # one winner per message: the most trusted source, then the latest label
    winners = []
    for group in candidates.values():
        group.sort(key=lambda e: (policy.sources[e.source].trust, e.time), reverse=True)
        winners.append(group[0])
        for loser in group[1:]:
            reason = f"superseded by a {group[0].source} label of {group[0].time}"
            result.outcomes.append(_outcome(loser, "superseded", reason))

    # per-source limits, in time order, so the earliest labels of a flood are the ones kept
    relabel_cap = {
        name: int(trust.max_relabel_share * len(labels_by_id))
        for name, trust in policy.sources.items()
    }
    used: Counter = Counter()
    for entry in sorted(winners, key=lambda e: (e.time, e.target)):
        label = CLASS_NAMES.index(entry.label)
        trust = policy.sources[entry.source]
        if entry.message_id and labels_by_id[entry.message_id] == label:
            result.outcomes.append(_outcome(entry, "confirmed", "the dataset has this label"))
            continue
        kind = "relabel" if entry.message_id else "new"
        cap = relabel_cap[entry.source] if kind == "relabel" else trust.max_new_messages
        if entry.reviewed_by is None and used[entry.source, kind] >= cap:
            what = "label changes" if kind == "relabel" else "new messages"
            reason = f"{entry.source} reached its limit of {cap} {what} without review"
            result.outcomes.append(_outcome(entry, "held_for_review", reason))
            continue
        if entry.reviewed_by is None:
            used[entry.source, kind] += 1
        if kind == "relabel":
            result.relabels[entry.message_id] = label
            reason = f"label {CLASS_NAMES[labels_by_id[entry.message_id]]} -> {entry.label}"
        else:
            result.new_messages.append(entry)
            reason = f"new {entry.label} message"
        result.outcomes.append(_outcome(entry, "applied", reason))
    return result


def _refusal(entry, labels_by_id, frozen, policy) -> str | None:
    if entry.source not in policy.sources:
        return f"source {entry.source!r} has no trust level; known: {sorted(policy.sources)}"
    if entry.target in frozen:
        return f"message {entry.target} is in the frozen golden set; change it by review only"
    if entry.message_id and entry.message_id not in labels_by_id:
        return f"no message with id {entry.message_id!r} in the dataset"
    return None


def _outcome(entry: FeedbackEntry, outcome: str, reason: str) -> dict:
    return {
        "target": entry.target,
        "source": entry.source,
        "time": entry.time,
        "label": entry.label,
        "category": entry.category,
        "outcome": outcome,
        "reason": reason,
    }


# the `bulwark feedback` command
def add_command(commands) -> None:
    parser = commands.add_parser("feedback", help="add labelled feedback to a ledger")
    actions = parser.add_subparsers(dest="feedback_action", required=True)

    add = actions.add_parser("add", help="add one label")
    add.add_argument("--ledger", type=Path, required=True, help="the feedback JSON Lines file")
    target = add.add_mutually_exclusive_group(required=True)
    target.add_argument("--message-id", help="the dataset id of the message")
    target.add_argument("--raw", type=Path, help="a raw message file (.eml) to add")
    add.add_argument("--label", required=True, choices=CLASS_NAMES)
    add.add_argument("--category", choices=CATEGORIES)
    add.add_argument("--source", required=True, help='who gave the label, e.g. "analyst"')
    add.add_argument("--time", help="ISO 8601 (default: now)")
    add.add_argument("--reviewed-by", help="the reviewer, for a label past its source's limit")
    add.add_argument("--note")
    add.set_defaults(run=run_add)

    imported = actions.add_parser("import", help="append the valid entries of a JSON Lines file")
    imported.add_argument("file", type=Path)
    imported.add_argument("--ledger", type=Path, required=True)
    imported.set_defaults(run=run_import)


def run_add(args: argparse.Namespace) -> int:
    values = {
        "message_id": args.message_id,
        "label": args.label,
        "category": args.category,
        "source": args.source,
        "time": args.time or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reviewed_by": args.reviewed_by,
        "note": args.note,
    }
    try:
        if args.raw is not None:
            values["raw_base64"] = base64.b64encode(args.raw.read_bytes()).decode("ascii")
        entry = parse_entry(values, "the command line")
    except OSError as error:
        logger.error("cannot read --raw %s: %s", args.raw, error.strerror)
        return 2
    except FeedbackError as error:
        logger.error("%s", error)
        return 2
    added = append_entries(args.ledger, [entry])
    logger.info("feedback for %s: %s", entry.target, "added" if added else "already in the ledger")
    return 0


def run_import(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        logger.error("feedback file %s does not exist", args.file)
        return 2
    entries, errors = read_ledger(args.file)
    added = append_entries(args.ledger, entries)
    logger.info(
        "imported %d entries into %s (%d already there, %d invalid lines skipped)",
        added,
        args.ledger,
        len(entries) - added,
        len(errors),
    )
    return 1 if errors and not entries else 0
