"""Per-organisation sender history, the source of the sender signals.

Contract: `facts_before(org, sender, when)` uses only mail recorded with a time
strictly before `when`; `record(...)` is called only for mail judged safe, so an
attacker's own messages never make the attacker look known. Identities are stored
as keyed hashes (BLAKE2b with the store's key), never in clear.

Embedded SQLite (standard library) is the store; ":memory:" keeps it in memory.
"""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import datetime, timezone

from detection.parsing import ParsedMessage
from detection.signals import SenderFacts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sender_events (
    org TEXT NOT NULL,
    kind TEXT NOT NULL,        -- 'address' or 'domain'
    identity BLOB NOT NULL,    -- keyed hash of the address or domain
    ts REAL NOT NULL           -- seconds since the epoch, UTC
);
CREATE INDEX IF NOT EXISTS sender_events_lookup ON sender_events (org, kind, identity, ts);
"""

DEFAULT_KEY = b"bulwark-default-history-key"


def _timestamp(when: datetime | None) -> float:
    if when is None:
        return datetime.now(timezone.utc).timestamp()
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def sender_identity(message: ParsedMessage) -> tuple[str, str]:
    """The sender's address and domain as the history keys them ("" if none)."""
    if message.from_ is None or "@" not in message.from_.address:
        return "", ""
    return message.from_.address, message.from_.domain


class SenderHistory:
    def __init__(self, path: str = ":memory:", key: bytes = DEFAULT_KEY) -> None:
        self._key = key
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.executescript(_SCHEMA)

    def _hash(self, org: str, value: str) -> bytes:
        return hashlib.blake2b(f"{org}\x00{value}".encode(), key=self._key[:64], digest_size=16).digest()

    def facts_before(self, org: str, message: ParsedMessage, when: datetime | None) -> SenderFacts:
        address, domain = sender_identity(message)
        if not address:
            return SenderFacts(message_date=when)
        ts = _timestamp(when)
        count, first = self._db.execute(
            "SELECT COUNT(*), MIN(ts) FROM sender_events WHERE org=? AND kind='address' "
            "AND identity=? AND ts<?",
            (org, self._hash(org, address), ts),
        ).fetchone()
        (domain_count,) = self._db.execute(
            "SELECT COUNT(*) FROM sender_events WHERE org=? AND kind='domain' AND identity=? AND ts<?",
            (org, self._hash(org, domain), ts),
        ).fetchone()
        first_seen = datetime.fromtimestamp(first, timezone.utc) if first is not None else None
        return SenderFacts(
            messages_before=count,
            domain_messages_before=domain_count,
            first_seen=first_seen,
            message_date=datetime.fromtimestamp(ts, timezone.utc),
        )

    def record(self, org: str, message: ParsedMessage, when: datetime | None) -> None:
        """Count a message judged safe towards its sender's history."""
        address, domain = sender_identity(message)
        if not address:
            return
        ts = _timestamp(when)
        self._db.executemany(
            "INSERT INTO sender_events (org, kind, identity, ts) VALUES (?, ?, ?, ?)",
            [
                (org, "address", self._hash(org, address), ts),
                (org, "domain", self._hash(org, domain), ts),
            ],
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()
