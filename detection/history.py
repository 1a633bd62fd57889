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

The hashing key: a store opened without `key=` reads the file that
`$BULWARK_HISTORY_KEY_FILE` names (the dataset build, the Triton model, batch
rescoring and `bulwark score` all do), and `HistoryKeyFile` is the command-line
option (`bulwark score --history-key-file tenant.key`) that sets it for one run.
"""

from __future__ import annotations

import argparse
import os

from detection.baselines import (
    DEFAULT_KEY,
    KEY_FILE_ENV,
    BaselineConfig,
    BaselineStore,
    PostgresBaselineStore,
    SQLiteBaselineStore,
    observe,
    read_key_file,
)
from detection.parsing import ParsedMessage

SenderHistory = SQLiteBaselineStore

__all__ = [
    "DEFAULT_KEY",
    "KEY_FILE_ENV",
    "BaselineConfig",
    "HistoryKeyFile",
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


class HistoryKeyFile(argparse.Action):
    """`--history-key-file PATH`: check the key file now, then point
    `$BULWARK_HISTORY_KEY_FILE` at it for this process, so every store the run opens
    hashes with that key (a bad file ends parsing with exit status 2, naming it)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        try:
            read_key_file(values)
        except ValueError as error:
            parser.error(f"{option_string}: {error}")
        os.environ[KEY_FILE_ENV] = str(values)
        setattr(namespace, self.dest, values)
