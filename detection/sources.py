"""Message sources: every way raw messages reach Bulwark, as one iterator.

Contract: `iter_messages(source)` yields `RawMessage`s in input order, each with an id
that is the same on every read of the same source:

- a single file holding one message (``.eml`` or any name): id ``name``;
- a directory tree of such files, walked in sorted order: ``dir:rel/path``;
- a maildir (``cur/``, ``new/``; ``tmp/`` holds half-delivered mail and is skipped):
  ``dir:cur/unique-name`` (the ``:2,flags`` suffix is left out, so reading the mail
  does not change its id);
- an mbox file (it starts with a ``From `` separator line): ``name#position``, or just
  ``name`` when the file holds one message (as each SpamAssassin corpus file does);
- a ``.tar``/``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz`` archive of any of these,
  streamed member by member: ``archive:member`` or ``archive:member#position``;
- text-only records (first line ``Subject: ...``, then the body, no other headers,
  as in Enron-Spam), ``kind="text"``: auto-detected, or forced with
  ``text_records=True`` (``False`` turns the detection off);
- standard input when the source is ``"-"`` (one message, an mbox or an archive):
  ``stdin`` or ``stdin#position``.

`RawMessage.index` is the running 0-based position of the message in the whole
source. Hidden files (names starting with ``.``) are not read.

mbox reading is made for real-world damage: a ``From `` line splits only when it
starts the file or follows a blank line *and* looks like a separator (``From
<address> <weekday or month> ... hh:mm``), so a body line "From the desk of ..." stays
in its message. ``>From `` quoting is undone one level (mboxrd). CRLF line endings are
turned into LF, so LF, CRLF and mixed files give identical messages. The folder
placeholder message ("DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA") is skipped
and counted in `SourceStats.skipped`; positions still count it, so ids stay those of
the file.

Errors: a source that does not exist, cannot be opened or is not a readable archive
raises `SourceError` at once, from `iter_messages` itself.
A source that breaks while being read (a corrupt archive, a file that vanishes) yields
every message read before the damage, then raises `SourceError` naming the source and
the position reached. A message that is itself broken (truncated, bad MIME) is not an
error here: it is yielded as it is and the parser records its defects.
"""

from __future__ import annotations

import io
import logging
import lzma
import os
import re
import sys
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

KINDS = ("rfc822", "text")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
PLACEHOLDER_SUBJECT = b"DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA"

_DAY = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
# "From sender@example.com  Sat Nov 27 15:33:27 2004" (asctime, the usual form),
# "From - Sat, 27 Nov 2004 15:33:27 +0000" and "From sender 27 Nov 2004 15:33:27"
_SEPARATOR = re.compile(
    rb"From \S+ +(?:"
    + _DAY
    + rb",? +)?(?:"
    + _MONTH
    + rb"[a-z]* +\d{1,2}|\d{1,2} +"
    + _MONTH
    + rb"[a-z]*)\b.*?\d{1,2}:\d{2}"
)
_QUOTED_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:[ \t]?")  # a field name, a colon
_ERRORS_WHILE_READING = (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error)


class SourceError(Exception):
    """A message source could not be read.

    `source` names the source, `position` says how far reading got (the member or
    message being read, or None when the source could not be opened at all) and
    `reason` says what was wrong.
    """

    def __init__(self, source: str, position: str | None, reason: str) -> None:
        self.source = source
        self.position = position
        self.reason = reason
        where = f" at {position}" if position is not None else ""
        super().__init__(f"cannot read message source {source!r}{where}: {reason}")


@dataclass(frozen=True)
class RawMessage:
    """One message as read: `data` is the bytes to parse, `kind` how to parse them."""

    id: str
    source: str
    index: int
    data: bytes
    kind: str = "rfc822"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"RawMessage.kind must be one of {KINDS}, got {self.kind!r}")


@dataclass
class SourceStats:
    """Counts kept while reading one source (pass one to `iter_messages` to get them)."""

    read: int = 0
    skipped: int = 0


def iter_messages(
    source: str | Path,
    *,
    text_records: bool | None = None,
    stats: SourceStats | None = None,
) -> Iterator[RawMessage]:
    """Yield every message of `source` in input order (see the module docstring).

    Raises `SourceError` at once when the source is missing or not a file or directory;
    a source that breaks midway raises `SourceError` after the messages before it.
    """
    if text_records not in (None, True, False):
        raise TypeError(f"text_records must be None, True or False, got {text_records!r}")
    stats = stats if stats is not None else SourceStats()

    if str(source) == "-":
        name = "stdin"
        try:
            data = sys.stdin.buffer.read()
        except OSError as exc:
            raise SourceError(name, None, f"standard input could not be read ({exc})") from exc
        items = _from_bytes(name, data, text_records, stats)
        return _numbered(name, items, stats)

    path = Path(source)
    name = path.name or str(path)
    if not path.exists():
        raise SourceError(str(source), None, "no such file or directory")
    if path.is_dir():
        items = _from_directory(name, path, text_records, stats)
    elif path.is_file():
        if not os.access(path, os.R_OK):
            raise SourceError(str(source), None, "permission denied")
        if _is_archive_name(path.name):
            items = _from_archive(name, _open_archive(name, path), text_records, stats)
        else:
            items = _from_file(name, path, text_records, stats)
    else:
        raise SourceError(str(source), None, "not a regular file or directory")
    return _numbered(name, items, stats)


def _numbered(
    name: str, items: Iterator[tuple[str, bytes, str]], stats: SourceStats
) -> Iterator[RawMessage]:
    for index, (message_id, data, kind) in enumerate(items):
        stats.read += 1
        yield RawMessage(id=message_id, source=name, index=index, data=data, kind=kind)


# files, directories, archives
def _is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _read_path(label: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(
            label, str(path), f"file could not be read ({exc.strerror or exc})"
        ) from exc


def _from_file(
    label: str, path: Path, text_records: bool | None, stats: SourceStats
) -> Iterator[tuple[str, bytes, str]]:
    if _is_archive_name(path.name):
        yield from _from_archive(label, _open_archive(label, path), text_records, stats)
        return
    yield from _from_bytes(label, _read_path(label, path), text_records, stats)


def _open_archive(label: str, path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r|*")
    except _ERRORS_WHILE_READING as exc:
        raise SourceError(label, None, f"not a readable tar archive ({exc})") from exc


def _from_directory(
    label: str, root: Path, text_records: bool | None, stats: SourceStats
) -> Iterator[tuple[str, bytes, str]]:
    def fail(exc: OSError) -> None:
        raise SourceError(label, exc.filename, f"directory could not be listed ({exc.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        here = Path(dirpath)
        is_maildir = {"cur", "new"} <= set(dirnames)
        # tmp/ of a maildir holds mail still being delivered; maildir++ folders are hidden
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not (is_maildir and d == "tmp") and (is_maildir or not d.startswith("."))
        )
        in_maildir = here.name in ("cur", "new") and (here.parent / "new").is_dir()
        for filename in sorted(f for f in filenames if not f.startswith(".")):
            rel = (here / filename).relative_to(root).as_posix()
            if in_maildir:
                rel = rel.split(":2,", 1)[0]
            prefix = f"{label}:{rel}"
            if _is_archive_name(filename):
                yield from _from_file(prefix, here / filename, text_records, stats)
            else:
                data = _read_path(label, here / filename)
                yield from _from_bytes(prefix, data, text_records, stats)


def _from_archive(
    label: str, archive: tarfile.TarFile, text_records: bool | None, stats: SourceStats
) -> Iterator[tuple[str, bytes, str]]:
    position = "the first member"
    with archive:
        try:
            for member in archive:
                position = f"member {member.name!r}"
                if not member.isfile() or Path(member.name).name.startswith("."):
                    continue
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                yield from _from_bytes(f"{label}:{member.name}", data, text_records, stats)
                position = f"after member {member.name!r}"
        except _ERRORS_WHILE_READING as exc:
            raise SourceError(label, position, f"archive is corrupt or truncated ({exc})") from exc


def _looks_like_archive(data: bytes) -> bool:
    compressed = data.startswith((b"\xfd7zXZ\x00", b"\x1f\x8b", b"BZh"))
    return compressed or data[257:262] == b"ustar"


def _from_bytes(
    label: str, data: bytes, text_records: bool | None, stats: SourceStats
) -> Iterator[tuple[str, bytes, str]]:
    """One file's (or stdin's) content: an archive, an mbox, a text record or a message."""
    if label == "stdin" and _looks_like_archive(data):
        try:
            archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        except _ERRORS_WHILE_READING as exc:
            raise SourceError(label, None, f"not a readable tar archive ({exc})") from exc
        yield from _from_archive(label, archive, text_records, stats)
    elif is_mbox(data):
        kind = "text" if text_records else "rfc822"
        for position, count, message in split_mbox(data, label, stats):
            yield (f"{label}#{position}" if count > 1 else label), message, kind
    elif text_records or (text_records is None and is_text_record(data)):
        yield label, data, "text"
    else:
        yield label, data, "rfc822"


# text records
def is_text_record(data: bytes) -> bool:
    """True when the first line is ``Subject:`` and no other header line follows it.

    Lines that start with white space after the Subject line (a folded Subject, or body
    text tokenised with leading spaces) are passed over; the first other line decides.
    """
    first, _, rest = data.partition(b"\n")
    if not first.lower().startswith(b"subject:"):
        return False
    for line in rest.split(b"\n", 50):
        if line[:1] in (b" ", b"\t"):  # a folded Subject (or a body line that looks like one)
            continue
        return not _HEADER_LINE.match(line)
    return True


# mbox
def is_mbox(data: bytes) -> bool:
    """True when the data starts with an mbox ``From `` separator line."""
    return data.startswith(b"From ") and _SEPARATOR.match(data, 0) is not None


def _is_placeholder(message: bytes) -> bool:
    head = message.split(b"\n\n", 1)[0]
    return any(
        line.startswith(b"Subject:") and PLACEHOLDER_SUBJECT in line for line in head.split(b"\n")
    )


def split_mbox(
    data: bytes, label: str = "mbox", stats: SourceStats | None = None
) -> list[tuple[int, int, bytes]]:
    """(position, separators in the file, message bytes) per message, placeholders skipped.

    Line endings are normalised to LF, the separator line and the trailing blank lines
    (the one before the next separator is framing) are dropped, each message ends with
    one LF, and ``>From `` quoting is undone one level.
    """
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    starts = [
        i
        for i, line in enumerate(lines)
        if line.startswith(b"From ") and (i == 0 or lines[i - 1] == b"") and _SEPARATOR.match(line)
    ]
    messages = []
    for position, start in enumerate(starts):
        end = starts[position + 1] if position + 1 < len(starts) else len(lines)
        body = lines[start + 1 : end]
        while body and body[-1] == b"":
            body.pop()
        message = _QUOTED_FROM.sub(rb"\1", b"\n".join(body) + b"\n")
        if _is_placeholder(message):
            logger.debug("skipped a mail-folder placeholder message in %s#%d", label, position)
            if stats is not None:
                stats.skipped += 1
            continue
        messages.append((position, len(starts), message))
    return messages
