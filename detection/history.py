"""Per-organisation sender history, the source of the sender and recipient signals.

Contract: `facts_before(org, parsed, when)` uses only mail recorded with a time
strictly before `when`; `record(org, parsed, when)` is called only for mail judged
safe, so an attacker's own messages never make the attacker look known;
`record_outbound(org, parsed, when)` records mail the organisation sent. Identities
are stored as keyed hashes (BLAKE2b with the store's key), never in clear.

`SenderHistory` is the default store, embedded SQLite (":memory:" keeps it in
memory): `SenderHistory(path=":memory:", key=DEFAULT_KEY, autocommit=True)`, then
`commit()` (with autocommit=False) and `close()`. The stores and the tables they
share live in `detection.baselines`; this module keeps the original names.
"""

from __future__ import annotations

from detection.baselines import (
    DEFAULT_KEY,
    BaselineConfig,
    BaselineStore,
    PostgresBaselineStore,
    SQLiteBaselineStore,
    observe,
)
from detection.parsing import ParsedMessage

SenderHistory = SQLiteBaselineStore

__all__ = [
    "DEFAULT_KEY",
    "BaselineConfig",
    "BaselineStore",
    "PostgresBaselineStore",
    "SQLiteBaselineStore",
    "SenderHistory",
    "observe",
    "sender_identity",
]


def sender_identity(message: ParsedMessage) -> tuple[str, str]:
    """The sender's address and domain as the history keys them ("" if none)."""
    if message.from_ is None or "@" not in message.from_.address:
        return "", ""
    return message.from_.address, message.from_.domain
