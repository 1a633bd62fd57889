"""Per-organisation behavioural baselines: who sends to whom, and since when.

Contract:

- `facts_before(org, parsed, when) -> SenderFacts` reads only history recorded with a
  time strictly before `when` (microsecond resolution), so a message never informs
  its own signals and re-scoring old mail sees the history as it stood then.
- `record(org, parsed, when)` is called only for inbound mail judged safe (`observe`
  does that check for you); flagged mail never counts, so an attacker's own messages
  never make the attacker look known. `record_outbound(org, parsed, when)` records
  mail the organisation sent: its recipients become correspondents, its Message-ID
  lets replies to it be recognised, its senders' domains become internal.
- Every identity (address, domain, display name, Message-ID, pair of addresses) is
  stored as a keyed BLAKE2b hash of (organisation, kind, value): nothing in a store,
  its keys or its tables is in clear. Without the key, the store cannot be read.
  A store given no key reads it from the file `$BULWARK_HISTORY_KEY_FILE` names
  (`resolve_key`), and only without one falls back to the public `DEFAULT_KEY`.
- Recipients: the model's text has its recipient addresses replaced by a placeholder
  (`detection.sanitize`); the addresses sanitize found are passed here as
  `recipients=` (`detection.features.parse_with_recipients`) and stored only hashed.
  Without `recipients=`, the parsed To and Cc are used.

The model. All history is a set of *series*, one per hashed key, each a list of rows
(ts, n, w) where n and w are running totals of the events at or before ts (n counts
events, w sums a per-event weight). "How many before t" is then one index probe (the
last row with ts < t) whatever the series' length, and a window count is two probes.
Distinct counts ("from how many senders") are series that gain one event at the first
time each member was seen. Lookalike domains are found without the domains in clear:
every correspondent domain's label is stored as the keyed hashes of its deletion
neighbourhood (the label with up to two characters deleted, with their positions), so
an edit distance of at most two is recovered exactly from the positions alone.

The same tables are built three ways, which the tests hold to one result: message by
message (`SQLiteBaselineStore`, `PostgresBaselineStore`), in bulk in memory
(`TableBuilder`, for loading a large history fast) and in bulk on Spark
(`training/baselines_spark.py`). All three share `record_plan`, `probe_plan` and
`assemble_facts`; only the arithmetic over rows differs.

Ordering: `record` must be called in non-decreasing time for the recipient's
first-time-sender rate to be exact (each safe message's "sender was new" flag is fixed
when it is recorded); every other total is exact in any order.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Protocol

import numpy as np

from detection.parsing import ParsedMessage
from detection.signals import SenderFacts
from detection.urls import registered_domain

logger = logging.getLogger(__name__)

DEFAULT_KEY = b"bulwark-default-history-key"
KEY_FILE_ENV = "BULWARK_HISTORY_KEY_FILE"  # a file holding the deployment's key
DIRECTIONS = ("inbound", "outbound")
SCHEMA_VERSION = "baselines-1"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROS = timedelta(microseconds=1)
# addresses the sanitizer or the public corpora put in place of a recipient: no one
IGNORED_RECIPIENTS = frozenset(("recipient@example.invalid", "phishing@pot", "username@domain.com"))


@dataclass(frozen=True)
class BaselineConfig:
    """What the baselines keep and compare. Defaults suit a laptop and a large tenant alike."""

    window_days: int = 30  # the recent-activity window of the sender's message count
    max_recipients: int = 50  # recipients of one message that are looked up and recorded
    max_recipient_profiles: int = 10  # of those, whose own history is read (keeps p99 low)
    max_references: int = 20  # In-Reply-To plus the newest References looked up
    lookalike_max_distance: int = 2  # edits on the registered domain's label
    lookalike_min_length: int = 5  # shorter labels are an edit or two from too many others
    lookalike_max_length: int = 20  # longer labels are not compared (cost grows as length^2)

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"BaselineConfig.{spec.name} must be an integer, got {value!r}")
            if value < 1:
                raise ValueError(f"BaselineConfig.{spec.name} must be at least 1, got {value!r}")
        if self.lookalike_min_length > self.lookalike_max_length:
            raise ValueError(
                "BaselineConfig.lookalike_min_length must not exceed lookalike_max_length, "
                f"got {self.lookalike_min_length} > {self.lookalike_max_length}"
            )

    @property
    def window_us(self) -> int:
        return self.window_days * 86_400_000_000


DEFAULT_CONFIG = BaselineConfig()


# time


def to_micros(when: datetime | None) -> int:
    """Microseconds since the epoch, UTC (naive times are taken as UTC; None is now)."""
    if when is None:
        when = datetime.now(timezone.utc)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - _EPOCH) // _MICROS


def from_micros(ts: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ts)


# one message, as the baselines see it


@dataclass(frozen=True)
class MailRecord:
    """The header facts of one message the baselines read, normalised.

    Build it with `make_record` (or `record_from_parsed`), which lower-cases
    addresses, drops recipient placeholders and caps the lists.
    """

    org: str
    ts: int  # microseconds since the epoch, UTC
    direction: str  # "inbound" or "outbound"
    sender: str = ""
    display_name: str = ""  # case-folded, whitespace collapsed; "" when none
    recipients: tuple[str, ...] = ()
    message_id: str = ""
    thread_ids: tuple[str, ...] = ()  # In-Reply-To, then References newest first
    is_reply: bool = False

    @property
    def domain(self) -> str:
        return address_domain(self.sender)


def address_domain(address: str) -> str:
    """The registered domain of an address (its full domain when it has none)."""
    host = address.rpartition("@")[2] if "@" in address else ""
    return registered_domain(host) or host


def _message_id(value: str) -> str:
    return value.strip().strip("<>").strip()


def normalise_display_name(name: str) -> str:
    """Case-folded, whitespace collapsed, quotes trimmed; "" for none or an address."""
    name = " ".join(name.casefold().split()).strip("'\" ")
    return "" if not name or "@" in name else name[:200]


def make_record(
    org: str,
    ts: int,
    direction: str,
    sender: str = "",
    display_name: str = "",
    recipients: Iterable[str] = (),
    message_id: str = "",
    in_reply_to: str = "",
    references: Iterable[str] = (),
    config: BaselineConfig = DEFAULT_CONFIG,
) -> MailRecord:
    """Normalise one message's header facts into a `MailRecord`.

    Raises ValueError for a direction other than "inbound" or "outbound".
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    sender = sender.strip().lower() if sender and "@" in sender else ""

    kept: list[str] = []
    for address in recipients:
        address = (address or "").strip().lower()
        if "@" in address and address not in IGNORED_RECIPIENTS and address not in kept:
            kept.append(address)
        if len(kept) == config.max_recipients:
            break

    threads: list[str] = []
    for value in (in_reply_to, *reversed(tuple(references))):
        value = _message_id(value or "")
        if value and value not in threads:
            threads.append(value)
    return MailRecord(
        org=org,
        ts=int(ts),
        direction=direction,
        sender=sender,
        display_name=normalise_display_name(display_name or ""),
        recipients=tuple(kept),
        message_id=_message_id(message_id or ""),
        thread_ids=tuple(threads[: config.max_references]),
        is_reply=bool(threads),
    )


def record_from_parsed(
    org: str,
    parsed: ParsedMessage,
    when: datetime | None,
    direction: str = "inbound",
    config: BaselineConfig = DEFAULT_CONFIG,
    recipients: Iterable[str] | None = None,
) -> MailRecord:
    """The record of a parsed message; `recipients` (the addresses sanitize replaced)
    stand for the parsed To and Cc when given, which hold only placeholders after
    sanitising."""
    sender = parsed.from_.address if parsed.from_ is not None else ""
    name = parsed.from_.display_name if parsed.from_ is not None else ""
    if recipients is None:
        recipients = (r.address for r in parsed.recipients)
    return make_record(
        org,
        to_micros(when),
        direction,
        sender,
        name,
        recipients,
        parsed.message_id,
        parsed.in_reply_to,
        parsed.references,
        config,
    )


# keyed hashing


def read_key_file(path: str | Path) -> bytes:
    """The key a file holds (its bytes, surrounding white space stripped).

    Raises ValueError naming the file when it cannot be read or the key is not 16 to
    64 bytes (`head -c 32 /dev/urandom | base64 > tenant.key` makes a good one).
    """
    try:
        key = Path(path).read_bytes().strip()
    except OSError as error:
        raise ValueError(
            f"history key file {str(path)!r} cannot be read ({error.strerror})"
        ) from error
    if not 16 <= len(key) <= 64:
        raise ValueError(
            f"history key file {str(path)!r} must hold a key of 16 to 64 bytes, got {len(key)}"
        )
    return key


def resolve_key(key: bytes | None = None) -> bytes:
    """`key` itself; else the key in the file `$BULWARK_HISTORY_KEY_FILE` names; else
    the public `DEFAULT_KEY`. Raises ValueError when the variable names a bad file."""
    if key is not None:
        return key
    path = os.environ.get(KEY_FILE_ENV)
    return read_key_file(path) if path else DEFAULT_KEY


class Keyer:
    """Keyed BLAKE2b-128 of (organisation, kind, values): the only form identities take."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or not 16 <= len(key) <= 64:
            size = len(key) if isinstance(key, bytes) else type(key).__name__
            raise ValueError(f"baseline key must be 16 to 64 bytes, got {size}")
        self._key = key
        self.fingerprint = hashlib.blake2b(b"bulwark-key-check", key=key, digest_size=8).hexdigest()
        self._cached = lru_cache(maxsize=262_144)(self._hash)

    def _hash(self, org: str, kind: str, *values: str) -> bytes:
        text = "\x1f".join((org, kind, *values))
        return hashlib.blake2b(
            text.encode("utf-8", "replace"), key=self._key, digest_size=16
        ).digest()

    def __call__(self, org: str, kind: str, *values: str) -> bytes:
        return self._cached(org, kind, *values)


# lookalike domains: deletion neighbourhoods


def domain_label(domain: str) -> str:
    """The registered domain's label: "example" for example.co.uk."""
    return registered_domain(domain).partition(".")[0] if domain else ""


def deletion_variants(label: str, max_deletions: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every string made by deleting up to `max_deletions` characters, with the positions."""
    for count in range(max_deletions + 1):
        for positions in combinations(range(len(label)), count):
            pieces, start = [], 0
            for position in positions:
                pieces.append(label[start:position])
                start = position + 1
            pieces.append(label[start:])
            yield "".join(pieces), positions


def alignment_cost(len_a: int, del_a: Sequence[int], len_b: int, del_b: Sequence[int]) -> int:
    """Edits of the alignment that keeps every character not deleted, matched in order.

    Between two kept characters, a gap of g_a characters of a and g_b of b costs
    max(g_a, g_b) (substitutions, then insertions or deletions). The minimum over all
    pairs of deletion sets sharing a variant is the Levenshtein distance whenever that
    distance is at most the number of deletions allowed.
    """
    dropped_a, dropped_b = set(del_a), set(del_b)
    kept_a = [i for i in range(len_a) if i not in dropped_a] + [len_a]
    kept_b = [i for i in range(len_b) if i not in dropped_b] + [len_b]
    assert len(kept_a) == len(kept_b), "variants of different lengths cannot match"
    cost, prev_a, prev_b = 0, -1, -1
    for ia, ib in zip(kept_a, kept_b, strict=True):
        cost += max(ia - prev_a - 1, ib - prev_b - 1)
        prev_a, prev_b = ia, ib
    return cost


def _positions_text(positions: Sequence[int]) -> str:
    return ",".join(map(str, positions))


def _positions(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(",")) if text else ()


def label_variants(
    org: str, domain: str, keyer: Keyer, config: BaselineConfig = DEFAULT_CONFIG
) -> tuple[int, list[tuple[bytes, str]]]:
    """(label length, [(hashed variant, deleted positions)]) for a domain's label.

    Empty for labels outside [lookalike_min_length, lookalike_max_length].
    """
    label = domain_label(domain)
    if not config.lookalike_min_length <= len(label) <= config.lookalike_max_length:
        return len(label), []
    rows = [
        (keyer(org, "variant", variant), _positions_text(positions))
        for variant, positions in deletion_variants(label, config.lookalike_max_distance)
    ]
    return len(label), rows


def query_index(query: Iterable[tuple[bytes, str]]) -> dict[bytes, list[tuple[int, ...]]]:
    """Deleted positions by hashed variant, for `nearest_distance`."""
    index: dict[bytes, list[tuple[int, ...]]] = {}
    for variant, positions in query:
        index.setdefault(variant, []).append(_positions(positions))
    return index


def nearest_distance(
    query_len: int,
    index: dict[bytes, list[tuple[int, ...]]],
    matches: Iterable[tuple[bytes, str, int]],
    max_distance: int,
) -> int:
    """Smallest edit distance from the query label to a matched label, or -1 if > max.

    `index` is the query label's `query_index`; `matches` are stored (variant,
    positions, label length) rows sharing a variant with it.
    """
    best = max_distance + 1
    for variant, positions, length in matches:
        stored = _positions(positions)
        for mine in index.get(variant, ()):
            best = min(best, alignment_cost(query_len, mine, length, stored))
    return best if best <= max_distance else -1


# what one message adds, and what one message asks


@dataclass(frozen=True)
class Event:
    """n += dn and w += dw on series `key` at `ts`.

    With `flag_key`, dw is replaced by 1 when `flag_key`'s series has no event before
    `ts` (the sender is new at that moment) and by 0 otherwise.
    """

    key: bytes
    ts: int
    dn: int = 1
    dw: int = 0
    flag_key: bytes | None = None


@dataclass(frozen=True)
class RecordPlan:
    """What recording one message changes: plain events, distinct links, correspondents.

    A link (distinct_key, member_key) adds one event to `distinct_key` at the first
    time `member_key`'s series has an event (so it counts distinct members).
    A correspondent (domain key, domain) becomes comparable for lookalikes from `ts` on.
    """

    ts: int
    events: tuple[Event, ...] = ()
    links: tuple[tuple[bytes, bytes], ...] = ()
    correspondents: tuple[tuple[bytes, str], ...] = ()


def record_plan(rec: MailRecord, keyer: Keyer) -> RecordPlan:
    """The events that recording `rec` (safe inbound, or outbound) adds to the baselines."""
    org, ts, k = rec.org, rec.ts, keyer
    events: list[Event] = []
    links: list[tuple[bytes, bytes]] = []
    correspondents: list[tuple[bytes, str]] = []
    if rec.message_id:
        kind = "mid" if rec.direction == "inbound" else "out_mid"
        events.append(Event(k(org, kind, rec.message_id), ts))
    if not rec.sender:
        return RecordPlan(ts, tuple(events))

    sender, domain, count = rec.sender, rec.domain, len(rec.recipients)
    correspondents.append((k(org, "corr", domain), domain))
    if rec.display_name:
        pair = k(org, "name_pair", rec.display_name, sender)
        events.append(Event(pair, ts))
        links.append((k(org, "name", rec.display_name), pair))
    for recipient in rec.recipients:
        pair = k(org, "pair", sender, recipient)
        events.append(Event(pair, ts))
        links.append((k(org, "rcpt_senders", recipient), pair))

    if rec.direction == "inbound":
        from_key = k(org, "from", sender)
        events.append(Event(from_key, ts, 1, count))
        events.append(Event(k(org, "dom", domain), ts))
        events.extend(Event(k(org, "rcpt", r), ts, 1, 0, from_key) for r in rec.recipients)
    else:
        events.append(Event(k(org, "sent", sender), ts, 1, count))
        events.append(Event(k(org, "internal", domain), ts))
        events.extend(Event(k(org, "out_to", r), ts, 1, int(rec.is_reply)) for r in rec.recipients)
        for other in dict.fromkeys(address_domain(r) for r in rec.recipients):
            events.append(Event(k(org, "out_to_dom", other), ts))
            correspondents.append((k(org, "corr", other), other))
    return RecordPlan(ts, tuple(events), tuple(links), tuple(dict.fromkeys(correspondents)))


def probe_plan(
    rec: MailRecord, keyer: Keyer, config: BaselineConfig = DEFAULT_CONFIG
) -> list[tuple[str, bytes, int]]:
    """(name, series key, time) lookups whose answers `assemble_facts` needs for `rec`.

    Each answer is the series' totals strictly before the time; only the first probe
    (the sender's "from" series) needs its first event time. Empty without a sender.
    """
    if not rec.sender:
        return []
    org, t, k, sender, domain = rec.org, rec.ts, keyer, rec.sender, rec.domain
    probes = [
        ("from", k(org, "from", sender), t),
        ("from_window", k(org, "from", sender), t - config.window_us),
        ("sent", k(org, "sent", sender), t),
        ("dom", k(org, "dom", domain), t),
        ("internal", k(org, "internal", domain), t),
        ("out_to", k(org, "out_to", sender), t),
        ("out_to_dom", k(org, "out_to_dom", domain), t),
    ]
    if rec.display_name:
        probes.append(("name", k(org, "name", rec.display_name), t))
        probes.append(("name_pair", k(org, "name_pair", rec.display_name, sender), t))
    for i, thread_id in enumerate(rec.thread_ids):
        probes.append((f"ref_out:{i}", k(org, "out_mid", thread_id), t))
        probes.append((f"ref_in:{i}", k(org, "mid", thread_id), t))
    for j, recipient in enumerate(rec.recipients):
        probes.append((f"pair_in:{j}", k(org, "pair", sender, recipient), t))
        if j < config.max_recipient_profiles:
            probes.append((f"pair_out:{j}", k(org, "pair", recipient, sender), t))
            probes.append((f"rcpt:{j}", k(org, "rcpt", recipient), t))
            probes.append((f"rcpt_senders:{j}", k(org, "rcpt_senders", recipient), t))
    return probes


@dataclass(frozen=True)
class Totals:
    """A series strictly before a time: event count, weight sum, first and last event time."""

    n: int = 0
    w: int = 0
    first: int | None = None
    last: int | None = None


NONE = Totals()


def assemble_facts(
    rec: MailRecord, answers: dict[str, Totals], lookalike: int, config: BaselineConfig
) -> SenderFacts:
    """Facts for `rec` from the answers to its `probe_plan` and its lookalike distance.

    `lookalike` is the edit distance to the nearest correspondent domain known before
    the message (-1 for none); it is ignored when the sender's domain is itself one.
    """
    when = from_micros(rec.ts)
    if not rec.sender:
        return SenderFacts(message_date=when)

    def get(name: str) -> Totals:
        return answers.get(name, NONE)

    sender, sent = get("from"), get("sent")
    dom, internal, out_to_dom = get("dom"), get("internal"), get("out_to_dom")
    known_domain = dom.n > 0 or out_to_dom.n > 0 or internal.n > 0
    own_messages = sender.n + sent.n

    refs = range(len(rec.thread_ids))
    replies_to_org = sum(get(f"ref_out:{i}").n > 0 for i in refs)
    known_refs = sum(get(f"ref_out:{i}").n > 0 or get(f"ref_in:{i}").n > 0 for i in refs)

    count = len(rec.recipients)
    profiled = range(min(count, config.max_recipient_profiles))
    rcpt = [get(f"rcpt:{j}") for j in profiled]
    safe_total = sum(r.n for r in rcpt)
    name_pair_known = get("name_pair").n > 0
    return SenderFacts(
        messages_before=sender.n,
        domain_messages_before=dom.n,
        first_seen=from_micros(sender.first) if sender.first is not None else None,
        message_date=when,
        last_seen=from_micros(sender.last) if sender.last is not None else None,
        messages_in_window=sender.n - get("from_window").n,
        domain_is_correspondent=known_domain,
        org_messages_to_sender=get("out_to").n,
        org_replies_to_sender=get("out_to").w,
        org_messages_to_domain=out_to_dom.n,
        display_name_other_addresses=get("name").n - int(name_pair_known),
        display_name_known_with_address=name_pair_known,
        thread_references=len(rec.thread_ids),
        thread_replies_to_org=replies_to_org,
        thread_known_references=known_refs,
        lookalike_distance=-1 if known_domain else lookalike,
        sender_internal=internal.n > 0,
        sender_mean_recipients=(sender.w + sent.w) / own_messages if own_messages else 0.0,
        recipient_count=count,
        recipients_with_sender_history=sum(get(f"pair_in:{j}").n > 0 for j in range(count)),
        recipients_profiled=len(profiled),
        recipients_who_wrote_to_sender=sum(get(f"pair_out:{j}").n > 0 for j in profiled),
        recipient_safe_messages=safe_total / len(profiled) if profiled else 0.0,
        recipient_distinct_senders=(
            sum(get(f"rcpt_senders:{j}").n for j in profiled) / len(profiled) if profiled else 0.0
        ),
        recipient_first_time_rate=sum(r.w for r in rcpt) / safe_total if safe_total else 0.0,
    )


# the stores


class BaselineStore(Protocol):
    """What scoring and training need from a baseline store (see the module contract)."""

    def facts_before(
        self,
        org: str,
        parsed: ParsedMessage,
        when: datetime | None,
        recipients: Sequence[str] | None = None,
    ) -> SenderFacts: ...

    def record(
        self,
        org: str,
        parsed: ParsedMessage,
        when: datetime | None,
        recipients: Sequence[str] | None = None,
    ) -> None: ...

    def record_outbound(
        self,
        org: str,
        parsed: ParsedMessage,
        when: datetime | None,
        recipients: Sequence[str] | None = None,
    ) -> None: ...

    def commit(self) -> None: ...

    def close(self) -> None: ...


def observe(
    store: BaselineStore,
    org: str,
    parsed: ParsedMessage,
    when: datetime | None,
    verdict: str,
    recipients: Sequence[str] | None = None,
) -> bool:
    """After a verdict: record the message if, and only if, it was judged "safe".

    Returns whether it was recorded. Spam and attacks never count toward "known".
    """
    if verdict != "safe":
        return False
    store.record(org, parsed, when, recipients)
    return True


class _SQLStore:
    """The SQL both stores share; subclasses supply the connection and the lookups."""

    _param = "?"

    def __init__(self, key: bytes, config: BaselineConfig, autocommit: bool) -> None:
        if not isinstance(config, BaselineConfig):
            raise ValueError(f"config must be a BaselineConfig, got {type(config).__name__}")
        self.config = config
        self._keyer = Keyer(key)
        self.default_key = key == DEFAULT_KEY
        self._autocommit = autocommit
        self._lock = threading.Lock()
        # a sender domain's query variants are the same for every message from it
        self._query_variants = lru_cache(maxsize=8192)(self._label_variants)

    # subclass hooks
    def _run(self, sql: str, params: Sequence = ()) -> list[tuple]:
        raise NotImplementedError

    def _lookup(self, probes: Sequence[tuple[str, bytes, int]]) -> dict[str, Totals]:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _sql(self, text: str) -> str:
        return text if self._param == "?" else text.replace("?", self._param)

    # reading
    def facts_for(self, rec: MailRecord) -> SenderFacts:
        """Facts for one normalised record (the Spark parity test drives this directly)."""
        with self._lock:
            answers = self._lookup(probe_plan(rec, self._keyer, self.config))
            known = any(answers.get(name, NONE).n > 0 for name in ("dom", "internal", "out_to_dom"))
            distance = -1 if known or not rec.sender else self._lookalike(rec)
            self._end_read()
        return assemble_facts(rec, answers, distance, self.config)

    def facts_before(
        self,
        org: str,
        parsed: ParsedMessage,
        when: datetime | None,
        recipients: Sequence[str] | None = None,
    ) -> SenderFacts:
        """What the history knew strictly before `when` (see the module contract)."""
        rec = record_from_parsed(org, parsed, when, "inbound", self.config, recipients)
        return self.facts_for(rec)

    def _label_variants(self, org: str, domain: str) -> tuple[int, dict, str]:
        length, query = label_variants(org, domain, self._keyer, self.config)
        index = query_index(query)
        marks = ",".join([self._param] * len(index))
        sql = self._sql(f"SELECT v, pos, len, dom FROM variants WHERE v IN ({marks}) AND ts < ?")
        return length, index, sql

    def _lookalike(self, rec: MailRecord) -> int:
        length, index, sql = self._query_variants(rec.org, rec.domain)
        if not index:
            return -1
        own = self._keyer(rec.org, "corr", rec.domain)
        rows = self._run(sql, [*index, rec.ts])
        matches = ((bytes(v), pos, n) for v, pos, n, dom in rows if bytes(dom) != own)
        return nearest_distance(length, index, matches, self.config.lookalike_max_distance)

    # writing
    def record(
        self,
        org: str,
        parsed: ParsedMessage,
        when: datetime | None,
        recipients: Sequence[str] | None = None,
    ) -> None:
        """Count an inbound message judged safe (never call it for flagged mail)."""
        rec = record_from_parsed(org, parsed, when, "inbound", self.config, recipients)
        self.record_mail(rec)

    def record_outbound(
        self,
        org: str,
        parsed: ParsedMessage,
        when: datetime | None,
        recipients: Sequence[str] | None = None,
    ) -> None:
        """Count a message the organisation sent (its recipients become correspondents)."""
        rec = record_from_parsed(org, parsed, when, "outbound", self.config, recipients)
        self.record_mail(rec)

    def record_mail(self, rec: MailRecord) -> None:
        plan = record_plan(rec, self._keyer)
        with self._lock:
            self._begin(rec.org)
            self._apply(plan, rec.org)
            if self._autocommit:
                self._commit()

    def _begin(self, org: str) -> None:
        """Serialise writers of one organisation (the shared store overrides it)."""

    def _end_read(self) -> None:
        """End a read that no write follows (the shared store releases its snapshot)."""

    def _apply(self, plan: RecordPlan, org: str) -> None:
        ts = plan.ts
        for distinct_key, member_key in plan.links:
            first = self._first(member_key)
            if first is None or ts < first:
                self._add(distinct_key, ts, 1, 0)
                if first is not None:
                    self._add(distinct_key, first, -1, 0)
        flags: dict[bytes, int] = {}
        for event in plan.events:
            dw = event.dw
            if event.flag_key is not None:
                if event.flag_key not in flags:
                    flags[event.flag_key] = int(self._count_before(event.flag_key, ts) == 0)
                dw = flags[event.flag_key]
            self._add(event.key, ts, event.dn, dw)
        for corr_key, domain in plan.correspondents:
            self._add_correspondent(org, corr_key, domain, ts)

    def _first(self, key: bytes) -> int | None:
        rows = self._run(self._sql("SELECT MIN(ts) FROM series WHERE k = ?"), (key,))
        return rows[0][0] if rows else None

    def _count_before(self, key: bytes, ts: int) -> int:
        rows = self._run(
            self._sql("SELECT n FROM series WHERE k = ? AND ts < ? ORDER BY ts DESC LIMIT 1"),
            (key, ts),
        )
        return rows[0][0] if rows else 0

    def _add(self, key: bytes, ts: int, dn: int, dw: int) -> None:
        # the row at ts starts from the totals just before it; then it and every later
        # row gain the event (later rows exist only when history arrives out of order)
        self._run(
            self._sql(
                "INSERT INTO series (k, ts, n, w) SELECT ?, ?, "
                "COALESCE((SELECT n FROM series WHERE k = ? AND ts < ? "
                "ORDER BY ts DESC LIMIT 1), 0), "
                "COALESCE((SELECT w FROM series WHERE k = ? AND ts < ? "
                "ORDER BY ts DESC LIMIT 1), 0) "
                "WHERE true ON CONFLICT (k, ts) DO NOTHING"
            ),
            (key, ts, key, ts, key, ts),
        )
        self._run(
            self._sql("UPDATE series SET n = n + ?, w = w + ? WHERE k = ? AND ts >= ?"),
            (dn, dw, key, ts),
        )

    def _add_correspondent(self, org: str, corr_key: bytes, domain: str, ts: int) -> None:
        rows = self._run(self._sql("SELECT ts FROM correspondents WHERE dom = ?"), (corr_key,))
        if rows and rows[0][0] <= ts:
            return
        self._run(
            self._sql(
                "INSERT INTO correspondents (dom, ts) VALUES (?, ?) "
                "ON CONFLICT (dom) DO UPDATE SET ts = excluded.ts"
            ),
            (corr_key, ts),
        )
        length, variants = label_variants(org, domain, self._keyer, self.config)
        self._run_many(
            self._sql(
                "INSERT INTO variants (v, dom, pos, len, ts) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (v, dom, pos) DO UPDATE SET ts = excluded.ts"
            ),
            [(v, corr_key, pos, length, ts) for v, pos in variants],
        )

    def _run_many(self, sql: str, rows: list[tuple]) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        """Make every recorded message durable (needed only with autocommit=False)."""
        with self._lock:
            self._commit()


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    k BLOB NOT NULL,      -- keyed hash of (organisation, kind, identity)
    ts INTEGER NOT NULL,  -- microseconds since the epoch, UTC
    n INTEGER NOT NULL,   -- events at or before ts
    w INTEGER NOT NULL,   -- their summed weight
    PRIMARY KEY (k, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS correspondents (
    dom BLOB PRIMARY KEY, -- keyed hash of a domain the organisation corresponds with
    ts INTEGER NOT NULL   -- when it first did
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS variants (
    v BLOB NOT NULL,      -- keyed hash of the label with up to two characters deleted
    dom BLOB NOT NULL,
    pos TEXT NOT NULL,    -- the deleted positions, "3,7"
    len INTEGER NOT NULL, -- the label's length
    ts INTEGER NOT NULL,
    PRIMARY KEY (v, dom, pos)
) WITHOUT ROWID;
"""


def _check_meta(stored: dict[str, str], keyer: Keyer) -> None:
    version = stored.get("schema")
    if version != SCHEMA_VERSION:
        raise ValueError(f"baseline store schema must be {SCHEMA_VERSION!r}, got {version!r}")
    if stored.get("key") != keyer.fingerprint:
        raise ValueError(
            "baseline store was written with another key: its hashes cannot be read with "
            f"this one (fingerprint {stored.get('key')!r}, key gives {keyer.fingerprint!r})"
        )


class SQLiteBaselineStore(_SQLStore):
    """The default store: embedded SQLite, a file or ":memory:".

    `autocommit=False` leaves each `record` uncommitted until `commit()` (bulk builds).
    A file is memory-mapped up to `mmap_mb` and cached up to `cache_mb` (address space
    and page cache, not private memory). `key` None: `resolve_key()`. Raises
    ValueError when an existing file was written with another key.
    """

    def __init__(
        self,
        path: str = ":memory:",
        key: bytes | None = None,
        autocommit: bool = True,
        config: BaselineConfig = DEFAULT_CONFIG,
        cache_mb: int = 64,
        mmap_mb: int = 4096,
    ) -> None:
        super().__init__(resolve_key(key), config, autocommit)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        if str(path) != ":memory:":
            if self.default_key:
                logger.warning(
                    "baseline file hashed with the public default key: set %s to a key file "
                    "(or pass key=)",
                    KEY_FILE_ENV,
                )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # lookups touch a few hundred pages: map the file rather than read it page by page
            self._db.execute(f"PRAGMA mmap_size={int(mmap_mb) * 2**20}")
            self._db.execute(f"PRAGMA cache_size=-{int(cache_mb) * 1024}")
        self._db.executescript(_SQLITE_SCHEMA)
        self._db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('key', ?)",
            (SCHEMA_VERSION, self._keyer.fingerprint),
        )
        _check_meta(dict(self._db.execute("SELECT name, value FROM meta")), self._keyer)
        self._in_transaction = False
        self._lookup_sql: dict[int, str] = {}

    def _run(self, sql: str, params: Sequence = ()) -> list[tuple]:
        self._ensure_transaction()
        return self._db.execute(sql, params).fetchall()

    def _run_many(self, sql: str, rows: list[tuple]) -> None:
        self._ensure_transaction()
        self._db.executemany(sql, rows)

    def _ensure_transaction(self) -> None:
        if not self._in_transaction and not self._autocommit:
            self._db.execute("BEGIN")
            self._in_transaction = True

    def _begin(self, org: str) -> None:
        if self._autocommit:
            self._db.execute("BEGIN")
            self._in_transaction = True

    def _commit(self) -> None:
        if self._in_transaction:
            self._db.execute("COMMIT")
            self._in_transaction = False

    def _lookup(self, probes: Sequence[tuple[str, bytes, int]]) -> dict[str, Totals]:
        if not probes:
            return {}
        sql = self._lookup_sql.get(len(probes))
        if sql is None:
            values = ",".join(["(?, ?, ?)"] * len(probes))
            # only the first probe's first event time is read (the sender's first_seen)
            sql = (
                f"WITH q(i, k, t) AS (VALUES {values}) "
                "SELECT q.i, e.n, e.w, e.ts, CASE WHEN q.i = 0 THEN "
                "(SELECT f.ts FROM series f WHERE f.k = q.k ORDER BY f.ts LIMIT 1) END "
                "FROM q JOIN series e ON e.k = q.k AND e.ts = ("
                "SELECT g.ts FROM series g WHERE g.k = q.k AND g.ts < q.t "
                "ORDER BY g.ts DESC LIMIT 1)"
            )
            self._lookup_sql[len(probes)] = sql
        params = [value for i, (_, key, t) in enumerate(probes) for value in (i, key, t)]
        rows = self._db.execute(sql, params).fetchall()
        return {probes[i][0]: Totals(n, w, first, last) for i, n, w, last, first in rows}

    def load(
        self, series: Iterable[tuple], correspondents: Iterable[tuple], variants: Iterable[tuple]
    ) -> None:
        """Bulk-load tables from `TableBuilder` (or the Spark job) into an empty store.

        Raises ValueError when the store already holds history (merging is not supported).
        """
        with self._lock:
            self._commit()
            if self._db.execute("SELECT 1 FROM series LIMIT 1").fetchone():
                raise ValueError("load needs an empty store, got one that already holds history")
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO series VALUES (?, ?, ?, ?)", series)
            self._db.executemany("INSERT INTO correspondents VALUES (?, ?)", correspondents)
            self._db.executemany("INSERT INTO variants VALUES (?, ?, ?, ?, ?)", variants)
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._commit()
            self._db.close()


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    k BYTEA NOT NULL, ts BIGINT NOT NULL, n BIGINT NOT NULL, w BIGINT NOT NULL,
    PRIMARY KEY (k, ts)
);
CREATE TABLE IF NOT EXISTS correspondents (dom BYTEA PRIMARY KEY, ts BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS variants (
    v BYTEA NOT NULL, dom BYTEA NOT NULL, pos TEXT NOT NULL, len INTEGER NOT NULL,
    ts BIGINT NOT NULL, PRIMARY KEY (v, dom, pos)
);
"""
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresBaselineStore(_SQLStore):
    """The shared store: the same tables in one PostgreSQL schema, for several servers.

    `dsn` is a libpq connection string; `schema` names the schema the tables live in
    (created if missing); `key` None: `resolve_key()`. Writers of one organisation
    are serialised by a transaction advisory lock, so running totals stay exact when
    several servers record at once.
    Raises ValueError for a schema name that is not a lower-case SQL identifier.
    """

    _param = "%s"

    def __init__(
        self,
        dsn: str,
        schema: str = "bulwark_baselines",
        key: bytes | None = None,
        autocommit: bool = True,
        config: BaselineConfig = DEFAULT_CONFIG,
        connect_timeout: float = 5.0,
    ) -> None:
        import psycopg  # the shared store's dependency; SQLite needs none

        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(
                f"schema must match {_SCHEMA_NAME.pattern} (a lower-case identifier), "
                f"got {schema!r}"
            )
        super().__init__(resolve_key(key), config, autocommit)
        self.schema = schema
        self._db = psycopg.connect(dsn, connect_timeout=int(connect_timeout), autocommit=False)
        with self._db.transaction():
            self._db.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            self._db.execute(f"SET search_path TO {schema}")
            self._db.execute(_PG_SCHEMA)
            self._db.execute(
                "INSERT INTO meta VALUES ('schema', %s), ('key', %s) ON CONFLICT DO NOTHING",
                (SCHEMA_VERSION, self._keyer.fingerprint),
            )
            stored = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
        _check_meta(stored, self._keyer)
        self._db.execute(f"SET search_path TO {schema}")
        self._db.commit()

    def _run(self, sql: str, params: Sequence = ()) -> list[tuple]:
        cursor = self._db.execute(sql, params)
        return cursor.fetchall() if cursor.description else []

    def _run_many(self, sql: str, rows: list[tuple]) -> None:
        with self._db.cursor() as cursor:
            cursor.executemany(sql, rows)

    def _begin(self, org: str) -> None:
        lock = int.from_bytes(self._keyer(org, "lock")[:8], "big", signed=True)
        self._db.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))

    def _commit(self) -> None:
        self._db.commit()

    def _end_read(self) -> None:
        if self._autocommit:
            self._db.commit()  # hold no snapshot (nor locks) between messages

    def _lookup(self, probes: Sequence[tuple[str, bytes, int]]) -> dict[str, Totals]:
        if not probes:
            return {}
        rows = self._db.execute(
            "SELECT q.i, e.n, e.w, e.ts, f.ts "
            "FROM unnest(%s::bytea[], %s::bigint[]) WITH ORDINALITY AS q(k, t, i) "
            "JOIN LATERAL (SELECT n, w, ts FROM series "
            "  WHERE k = q.k AND ts < q.t ORDER BY ts DESC LIMIT 1) e ON true "
            "LEFT JOIN LATERAL (SELECT ts FROM series "
            "  WHERE q.i = 1 AND k = q.k ORDER BY ts LIMIT 1) f ON true",
            ([key for _, key, _ in probes], [t for _, _, t in probes]),
        ).fetchall()
        return {probes[i - 1][0]: Totals(n, w, first, last) for i, n, w, last, first in rows}

    def load(
        self, series: Iterable[tuple], correspondents: Iterable[tuple], variants: Iterable[tuple]
    ) -> None:
        """Bulk-load tables (COPY) into an empty schema; raises ValueError otherwise."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM series LIMIT 1").fetchone():
                raise ValueError("load needs an empty store, got one that already holds history")
            with self._db.cursor() as cursor:
                for table, rows in (
                    ("series (k, ts, n, w)", series),
                    ("correspondents (dom, ts)", correspondents),
                    ("variants (v, dom, pos, len, ts)", variants),
                ):
                    with cursor.copy(f"COPY {table} FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
            self._db.execute("ANALYZE")  # plan the lookups on the loaded sizes
            self._db.commit()

    def drop(self) -> None:
        """Delete the schema and everything in it (tests and benchmarks clean up with it)."""
        with self._lock:
            self._db.rollback()
            self._db.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            if not self._db.closed:
                self._db.commit()
                self._db.close()


# bulk, in memory


class TableBuilder:
    """Builds the store's tables for a whole history at once, in memory.

    Feed it every recorded message (safe inbound and outbound) with `add`, in any
    order; `tables()` returns (series, correspondents, variants) row iterables for
    `load`. The result equals recording the same messages one by one in time order.
    """

    def __init__(self, key: bytes | None = None, config: BaselineConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self._keyer = Keyer(resolve_key(key))
        self._ids: dict[bytes, int] = {}
        self._key_of: list[bytes] = []
        self._key = array("q")
        self._ts = array("q")
        self._dn = array("q")
        self._dw = array("q")
        self._flag = array("q")
        self._first_of_link: dict[tuple[int, int], int] = {}
        self._correspondents: dict[bytes, list] = {}

    def _id(self, key: bytes) -> int:
        found = self._ids.get(key)
        if found is None:
            found = self._ids[key] = len(self._key_of)
            self._key_of.append(key)
        return found

    def add(self, rec: MailRecord) -> None:
        plan = record_plan(rec, self._keyer)
        ts = plan.ts
        for event in plan.events:
            self._key.append(self._id(event.key))
            self._ts.append(ts)
            self._dn.append(event.dn)
            self._dw.append(event.dw)
            self._flag.append(-1 if event.flag_key is None else self._id(event.flag_key))
        for distinct_key, member_key in plan.links:
            link = (self._id(distinct_key), self._id(member_key))
            first = self._first_of_link.get(link)
            if first is None or ts < first:
                self._first_of_link[link] = ts
        for corr_key, domain in plan.correspondents:
            known = self._correspondents.get(corr_key)
            if known is None or ts < known[0]:
                self._correspondents[corr_key] = [ts, rec.org, domain]

    def tables(self) -> tuple[Iterator[tuple], list[tuple], Iterator[tuple]]:
        key = np.frombuffer(self._key, dtype=np.int64)
        ts = np.frombuffer(self._ts, dtype=np.int64)
        dn = np.frombuffer(self._dn, dtype=np.int64)
        dw = np.frombuffer(self._dw, dtype=np.int64).copy()
        flag = np.frombuffer(self._flag, dtype=np.int64)

        # a flagged weight counts when its key's first event is at this very time
        first_ts = np.full(len(self._key_of), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first_ts, key, ts)
        flagged = flag >= 0
        dw[flagged] = (first_ts[flag[flagged]] == ts[flagged]).astype(np.int64)

        # distinct members: one event at each member's first time
        if self._first_of_link:
            links = np.array([(d, t) for (d, _), t in self._first_of_link.items()], dtype=np.int64)
            key = np.concatenate([key, links[:, 0]])
            ts = np.concatenate([ts, links[:, 1]])
            dn = np.concatenate([dn, np.ones(len(links), dtype=np.int64)])
            dw = np.concatenate([dw, np.zeros(len(links), dtype=np.int64)])

        # one row per (key, ts), running totals per key
        order = np.lexsort((ts, key))
        key, ts, dn, dw = key[order], ts[order], dn[order], dw[order]
        n_cum, w_cum = np.cumsum(dn), np.cumsum(dw)
        starts_key = np.ones(len(key), dtype=bool)
        starts_key[1:] = key[1:] != key[:-1]
        key_start = np.maximum.accumulate(np.where(starts_key, np.arange(len(key)), 0))
        # totals of the keys sorted before this one, to subtract from the global sums
        n_other = np.where(key_start > 0, n_cum[key_start - 1], 0)
        w_other = np.where(key_start > 0, w_cum[key_start - 1], 0)
        ends_group = np.ones(len(key), dtype=bool)
        ends_group[:-1] = (key[1:] != key[:-1]) | (ts[1:] != ts[:-1])
        n_total = (n_cum - n_other)[ends_group]
        w_total = (w_cum - w_other)[ends_group]
        key, ts = key[ends_group], ts[ends_group]

        key_of = self._key_of
        series = (
            (key_of[k], t, n, w)
            for k, t, n, w in zip(
                key.tolist(), ts.tolist(), n_total.tolist(), w_total.tolist(), strict=True
            )
        )
        correspondents = [(dom, ts_) for dom, (ts_, _, _) in self._correspondents.items()]
        return series, correspondents, self._variant_rows()

    def _variant_rows(self) -> Iterator[tuple]:
        for dom, (ts, org, domain) in self._correspondents.items():
            length, variants = label_variants(org, domain, self._keyer, self.config)
            for v, pos in variants:
                yield v, dom, pos, length, ts
