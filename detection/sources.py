"""Message sources: every way raw messages reach Bulwark, as one iterator.

Contract: `iter_messages(source)` yields `RawMessage`s in input order, each with an id
that is the same on every read of the same source:

- a single file holding one message (``.eml`` or any name): id ``name``;
- a directory tree of such files, walked in sorted order: ``dir:rel/path``;
- a maildir (``cur/``, ``new/``; ``tmp/`` holds half-delivered mail and is skipped):
  ``dir:cur/unique-name:2,flags``, the whole file name (two files may differ only in
  their flags, so the flags are part of the id; a client that changes a message's flags
  renames the file, and so changes its id);
- an mbox file (it starts with a ``From `` separator line): ``name#position``, or just
  ``name`` when the file holds one message (as each SpamAssassin corpus file does);
- a ``.tar``/``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz`` archive of any of these,
  streamed member by member: ``archive:member`` or ``archive:member#position``; an
  archive inside an archive is read too (``outer.tar:inner.tar.gz:member``), down to
  `MAX_ARCHIVE_DEPTH` archives deep (a deeper one is not opened, and a damaged one
  stops after its readable messages: either is yielded once more, under its own id,
  with `error` saying why, and the archive around it is read on);
- text-only records (first line ``Subject: ...``, then the body, no other headers,
  as in Enron-Spam), ``kind="text"``: auto-detected, or forced with
  ``text_records=True`` (``False`` turns the detection off);
- standard input when the source is ``"-"`` (one message, an mbox or an archive):
  ``stdin`` or ``stdin#position``;
- a Parquet table of raw messages (a ``.parquet`` file, or a directory of them read
  in sorted order, as Spark writes one): one message per row, from the binary column
  ``raw``; the id is the row's ``id`` column (``name#row`` when there is none or it
  is null), the kind its ``kind`` column ("rfc822" when absent). `iter_table` also
  gives each row's other columns (``org``, ``date``, ``label``, ...), which batch
  rescoring reads; `write_table` writes such a table. A row without bytes or with an
  unknown kind is yielded with `error` set, and reading goes on.

`RawMessage.index` is the running 0-based position of the message in the whole
source. Hidden files (names starting with ``.``) are not read. In a directory tree,
symbolic links are followed, each real directory is read once (a link that loops back
is skipped with a warning), and a FIFO, socket or device is skipped with a warning and
counted in `SourceStats.skipped`: reading one could block forever.

mbox reading is made for real-world damage: a ``From `` line splits only when it
starts the file or follows a blank line *and* looks like a separator (``From
<address> <weekday or month> ... hh:mm``), so a body line "From the desk of ..." stays
in its message. ``>From `` quoting is undone one level (mboxrd). CRLF line endings are
turned into LF, so LF, CRLF and mixed files give identical messages; a file whose lines
end in CR alone (classic Mac OS) is read as LF too. A UTF-8 byte order mark and blank
lines before the first separator are passed over. The folder
placeholder message ("DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA") is skipped
and counted in `SourceStats.skipped`; positions still count it, so ids stay those of
the file.

Errors: a source that does not exist, cannot be opened or is not a readable archive
raises `SourceError` at once, from `iter_messages` itself.
A source that breaks while being read (a corrupt or truncated archive, also one whose
damage makes `tarfile` stop early without an error, a file that vanishes) yields every
message read before the damage, then raises `SourceError` naming the source and the
position reached. Inside a directory tree, one file that cannot be read (a dangling
link, no permission, a corrupt archive, a folder that cannot be listed) does not stop
the tree: it is yielded as a `RawMessage` with empty `data` and `error` saying what was
wrong (counted in `SourceStats.failed`, not in `read`), and reading goes on. A message
that is itself broken (truncated, bad MIME) is not an error here: it is yielded as it
is and the parser records its defects.
"""

from __future__ import annotations

import io
import logging
import lzma
import os
import re
import stat
import sys
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

logger = logging.getLogger(__name__)

KINDS = ("rfc822", "text")
MAX_ARCHIVE_DEPTH = 3  # archives inside archives read, the outermost counted
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
# a UTF-8 byte order mark and blank lines, before an mbox's first separator
_LEADING_BLANKS = re.compile(rb"(?:\xef\xbb\xbf)?(?:[ \t]*(?:\r\n|\n|\r))*")

# (id, data, kind, error): one message, or one that could not be read (error set)
_Item = tuple[str, bytes, str, str | None]


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
    """One message as read: `data` is the bytes to parse, `kind` how to parse them.

    `error` is set (and `data` empty) when the message's file could not be read: it
    names the source, the path and what was wrong. Such a message is reported, not
    scored.
    """

    id: str
    source: str
    index: int
    data: bytes
    kind: str = "rfc822"
    error: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"RawMessage.kind must be one of {KINDS}, got {self.kind!r}")


@dataclass
class SourceStats:
    """Counts kept while reading one source (pass one to `iter_messages` to get them)."""

    read: int = 0
    skipped: int = 0  # placeholders, FIFOs and devices
    failed: int = 0  # files of a directory tree that could not be read


def iter_messages(
    source: str | Path,
    *,
    text_records: bool | None = None,
    stats: SourceStats | None = None,
) -> Iterator[RawMessage]:
    """Yield every message of `source` in input order (see the module docstring).

    Raises `SourceError` at once when the source is missing, not a file or directory,
    or cannot be opened; a source that breaks midway raises `SourceError` after the
    messages before it.
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
    if is_table(path):
        return _numbered(name, _table_items(name, path), stats)
    if path.is_dir():
        try:
            os.scandir(path).close()
        except OSError as exc:
            reason = f"directory could not be listed ({exc.strerror})"
            raise SourceError(str(source), None, reason) from exc
        items = _from_directory(name, path, text_records, stats)
    elif path.is_file():
        if not os.access(path, os.R_OK):
            raise SourceError(str(source), None, "permission denied")
        if _is_archive_name(path.name):
            items = _from_archive(name, _open_archive(name, path), text_records, stats, depth=1)
        else:
            items = _from_file(name, path, text_records, stats)
    else:
        raise SourceError(str(source), None, "not a regular file or directory")
    return _numbered(name, items, stats)


def _numbered(name: str, items: Iterator[_Item], stats: SourceStats) -> Iterator[RawMessage]:
    for index, (message_id, data, kind, error) in enumerate(items):
        if error is None:
            stats.read += 1
        else:
            stats.failed += 1
        yield RawMessage(message_id, name, index, data, kind, error)


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
) -> Iterator[_Item]:
    """One regular file: an archive or a table (by its name), or the messages its bytes hold."""
    if _is_table_name(path.name):
        yield from _table_items(label, path)
        return
    if _is_archive_name(path.name):
        yield from _from_archive(label, _open_archive(label, path), text_records, stats, 1)
        return
    yield from _from_bytes(label, _read_path(label, path), text_records, stats)


def _open_archive(label: str, source: Path | bytes) -> tarfile.TarFile:
    """A tar archive (any compression) opened as a stream, from a path or from bytes."""
    try:
        if isinstance(source, bytes):
            return tarfile.open(fileobj=io.BytesIO(source), mode="r|*", tarinfo=_header_keeper())
        return tarfile.open(source, mode="r|*", tarinfo=_header_keeper())
    except _ERRORS_WHILE_READING as exc:
        raise SourceError(label, None, f"not a readable tar archive ({exc})") from exc


def _header_keeper() -> type[tarfile.TarInfo]:
    """A TarInfo class (one per archive) that keeps the last header block read.

    `tarfile` stops without an error at a damaged or truncated header after the first
    one; the kept block tells that stop from the end-of-archive marker.
    """

    class KeptHeader(tarfile.TarInfo):
        last_block = b""

        @classmethod
        def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
            cls.last_block = buf
            return super().frombuf(buf, encoding, errors)

    return KeptHeader


def _check_archive_end(label: str, archive: tarfile.TarFile, position: str) -> None:
    """Raise SourceError unless reading stopped at the end-of-archive marker (or at the
    very end of the data) with nothing but zero padding after it."""
    where = f"offset {archive.offset}, {position}"
    block = archive.tarinfo.last_block
    if block and (len(block) < tarfile.BLOCKSIZE or block.count(0) != len(block)):
        damage = "truncated" if len(block) < tarfile.BLOCKSIZE else "damaged"
        raise SourceError(label, where, f"archive is corrupt or truncated ({damage} header)")
    while chunk := archive.fileobj.read(1 << 16):
        if chunk.count(0) != len(chunk):
            reason = "archive is corrupt or truncated (data after the end-of-archive marker)"
            raise SourceError(label, where, reason)


def _from_directory(
    label: str, root: Path, text_records: bool | None, stats: SourceStats
) -> Iterator[_Item]:
    """Every file of the tree in sorted order, depth first, as `os.walk` would give it,
    but following symbolic links once per real directory and never stopping at one
    unreadable file (see the module docstring)."""
    visited: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        here = pending.pop()
        rel_dir = here.relative_to(root).as_posix()
        try:
            info = here.stat()
            if (info.st_dev, info.st_ino) in visited:
                logger.warning("%s: %s is a directory already read; skipped", label, rel_dir)
                continue
            visited.add((info.st_dev, info.st_ino))
            names = sorted(os.listdir(here))
        except OSError as exc:
            reason = f"directory could not be listed ({exc.strerror})"
            yield _failed(f"{label}:{rel_dir}", label, rel_dir, reason)
            continue

        # (name, None) for a regular file, (name, reason) for one that cannot be read
        files: list[tuple[str, str | None]] = []
        dirs: list[str] = []
        for name in names:
            try:
                mode = (here / name).stat().st_mode
            except OSError as exc:
                dangling = (here / name).is_symlink()
                files.append((name, "dangling symbolic link" if dangling else exc.strerror))
                continue
            if stat.S_ISDIR(mode):
                dirs.append(name)
            elif stat.S_ISREG(mode):
                files.append((name, None))
            elif not name.startswith("."):
                rel = f"{rel_dir}/{name}".removeprefix("./")
                logger.warning(
                    "%s: %s is not a regular file (FIFO, socket, device); skipped", label, rel
                )
                stats.skipped += 1

        is_maildir = {"cur", "new"} <= set(dirs)
        # tmp/ of a maildir holds mail still being delivered; maildir++ folders are hidden
        dirs = [
            d
            for d in dirs
            if not (is_maildir and d == "tmp") and (is_maildir or not d.startswith("."))
        ]
        pending.extend(here / d for d in reversed(dirs))
        for name, problem in files:
            if not name.startswith("."):
                yield from _from_tree_file(label, root, here / name, problem, text_records, stats)


def _from_tree_file(
    label: str,
    root: Path,
    path: Path,
    problem: str | None,
    text_records: bool | None,
    stats: SourceStats,
) -> Iterator[_Item]:
    """One file of a directory tree; one that cannot be read is an item with its error."""
    rel = path.relative_to(root).as_posix()
    prefix = f"{label}:{rel}"
    if problem is not None:
        yield _failed(prefix, label, rel, problem)
        return
    try:
        yield from _from_file(prefix, path, text_records, stats)
    except SourceError as error:
        yield _failed(prefix, error.source, error.position, error.reason)


def _failed(message_id: str, source: str, position: str | None, reason: str) -> _Item:
    """The item of a message that could not be read: no data, the error's text."""
    error = SourceError(source, position, reason)
    logger.warning("%s", error)
    return message_id, b"", "rfc822", str(error)


def _from_archive(
    label: str,
    archive: tarfile.TarFile,
    text_records: bool | None,
    stats: SourceStats,
    depth: int,
) -> Iterator[_Item]:
    """The members of one archive in order; `depth` counts this archive (1 = outermost)."""
    position = "the first member"
    with archive:
        try:
            for member in archive:
                position = f"member {member.name!r}"
                if not member.isfile() or Path(member.name).name.startswith("."):
                    continue
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                inner = f"{label}:{member.name}"
                if _is_archive_name(member.name):
                    yield from _from_inner_archive(inner, data, text_records, stats, depth + 1)
                else:
                    yield from _from_bytes(inner, data, text_records, stats)
                position = f"after member {member.name!r}"
            _check_archive_end(label, archive, position)
        except _ERRORS_WHILE_READING as exc:
            raise SourceError(label, position, f"archive is corrupt or truncated ({exc})") from exc


def _from_inner_archive(
    label: str, data: bytes, text_records: bool | None, stats: SourceStats, depth: int
) -> Iterator[_Item]:
    """An archive held in a member of another: too deep, or damaged, it gets one error
    item of its own (after the messages read before the damage) and the outer archive,
    which is intact, is read on."""
    if depth > MAX_ARCHIVE_DEPTH:
        error = f"archive nested more than {MAX_ARCHIVE_DEPTH} deep; its messages were not read"
        logger.warning("%s: %s", label, error)
        yield label, b"", "rfc822", error
        return
    try:
        yield from _from_archive(label, _open_archive(label, data), text_records, stats, depth)
    except SourceError as error:
        logger.warning("%s", error)
        yield label, b"", "rfc822", str(error)


def _looks_like_archive(data: bytes) -> bool:
    compressed = data.startswith((b"\xfd7zXZ\x00", b"\x1f\x8b", b"BZh"))
    return compressed or data[257:262] == b"ustar"


def _from_bytes(
    label: str, data: bytes, text_records: bool | None, stats: SourceStats
) -> Iterator[_Item]:
    """One file's (or stdin's) content: an archive, an mbox, a text record or a message."""
    if label == "stdin" and _looks_like_archive(data):
        yield from _from_archive(label, _open_archive(label, data), text_records, stats, 1)
    elif is_mbox(data):
        kind = "text" if text_records else "rfc822"
        for position, count, message in split_mbox(data, label, stats):
            yield (f"{label}#{position}" if count > 1 else label), message, kind, None
    elif text_records or (text_records is None and is_text_record(data)):
        yield label, data, "text", None
    else:
        yield label, data, "rfc822", None


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
    """True when the data starts with an mbox ``From `` separator line (after a UTF-8
    byte order mark or blank lines, if any)."""
    start = _LEADING_BLANKS.match(data).end()
    return data.startswith(b"From ", start) and _SEPARATOR.match(data, start) is not None


def _lf_line_endings(data: bytes) -> bytes:
    data = data.replace(b"\r\n", b"\n")
    if data.count(b"\r") > data.count(b"\n"):  # classic Mac OS: CR alone ends each line
        data = data.replace(b"\r", b"\n")
    return data


def _is_placeholder(message: bytes) -> bool:
    head = message.split(b"\n\n", 1)[0]
    return any(
        line.startswith(b"Subject:") and PLACEHOLDER_SUBJECT in line for line in head.split(b"\n")
    )


def split_mbox(
    data: bytes, label: str = "mbox", stats: SourceStats | None = None
) -> list[tuple[int, int, bytes]]:
    """(position, separators in the file, message bytes) per message, placeholders skipped.

    Line endings are normalised to LF (CRLF, or CR alone where most lines end so), a
    leading byte order mark and blank lines are passed over, the separator line and the
    trailing blank lines (the one before the next separator is framing) are dropped,
    each message ends with one LF, and ``>From `` quoting is undone one level.
    """
    data = _lf_line_endings(data[_LEADING_BLANKS.match(data).end() :])
    lines = data.split(b"\n")
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


# Parquet tables of raw messages
TABLE_SUFFIXES = (".parquet", ".pq")
TABLE_BATCH_ROWS = 256  # rows read at a time: a table is streamed, never loaded whole
# the columns a table's rows are read from; every other column is passed on as it is
TABLE_MESSAGE_COLUMNS = ("id", "raw", "kind")


def _is_table_name(name: str) -> bool:
    return name.lower().endswith(TABLE_SUFFIXES)


def _is_metadata_name(name: str) -> bool:
    """Hidden files and the ones Spark writes beside its parts (_SUCCESS, _temporary)."""
    return name.startswith((".", "_"))


def is_table(path: str | Path) -> bool:
    """True for a Parquet file, or a directory whose files (metadata aside, in any
    subfolder) are all Parquet, at least one."""
    path = Path(path)
    if path.is_file():
        return _is_table_name(path.name)
    if not path.is_dir():
        return False
    found = False
    for _, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not _is_metadata_name(d)]
        for name in (f for f in files if not _is_metadata_name(f)):
            if not _is_table_name(name):
                return False
            found = True
    return found


def _table_files(root: Path, here: Path) -> Iterator[Path]:
    """The table files under `here`: its own files in sorted order, then each subfolder's."""
    entries = sorted(p for p in here.iterdir() if not _is_metadata_name(p.name))
    yield from (p for p in entries if p.is_file() and _is_table_name(p.name))
    for folder in (p for p in entries if p.is_dir()):
        yield from _table_files(root, folder)


def _table_rows(label: str, path: Path) -> Iterator[tuple[str, dict]]:
    """(``file#row``, the row's columns) per row of a table file or table folder."""
    if path.is_file():
        yield from _file_rows(label, path)
        return
    for file in _table_files(path, path):
        yield from _file_rows(f"{label}:{file.relative_to(path).as_posix()}", file)


def _file_rows(label: str, path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(label, None, f"not a readable Parquet table ({exc})") from exc
    columns = table.schema_arrow.names
    if "raw" not in columns:
        raise SourceError(
            label, None, f"a table of messages needs a binary column 'raw'; it has {columns}"
        )
    row = 0
    try:
        for batch in table.iter_batches(batch_size=TABLE_BATCH_ROWS):
            for values in batch.to_pylist():
                yield f"{label}#{row}", values
                row += 1
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(label, f"row {row}", f"table is corrupt or truncated ({exc})") from exc


def table_message(values: dict, source: str, index: int, where: str) -> tuple[RawMessage, dict]:
    """One table row's message and its other columns. `where` (``file#row``) is the id
    of a row without one and names the row in errors: a row without bytes or with an
    unknown kind gives a message with `error` set."""
    message_id = str(values.get("id") or where)
    data, kind = values.get("raw"), values.get("kind") or "rfc822"
    extra = {k: v for k, v in values.items() if k not in TABLE_MESSAGE_COLUMNS}
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    problem = None
    if data is None:
        problem = "the row's 'raw' column is null"
    elif kind not in KINDS:
        problem = f"the row's kind must be one of {KINDS}, got {kind!r}"
    if problem is None:
        return RawMessage(message_id, source, index, data, kind), extra
    error = SourceError(source, f"{where} (id {message_id})", problem)
    logger.warning("%s", error)
    return RawMessage(message_id, source, index, b"", "rfc822", str(error)), extra


def _table_items(label: str, path: Path) -> Iterator[_Item]:
    for where, values in _table_rows(label, path):
        message, _ = table_message(values, label, 0, where)
        yield message.id, message.data, message.kind, message.error


def iter_table(
    source: str | Path, *, stats: SourceStats | None = None
) -> Iterator[tuple[RawMessage, dict]]:
    """Each row of a Parquet table of messages (a file or a folder of them) as a
    `RawMessage` (the same as `iter_messages` gives) with the row's other columns.

    Raises `SourceError` at once when `source` is not such a table, or its first file
    cannot be opened or has no ``raw`` column; a table that breaks midway raises it
    after the rows before the damage.
    """
    path = Path(source)
    name = path.name or str(path)
    if not is_table(path):
        raise SourceError(str(source), None, "not a Parquet table (a .parquet file or folder)")
    stats = stats if stats is not None else SourceStats()
    rows = _table_rows(name, path)
    first = next(rows, None)  # opens the first file now, so a bad table fails at once

    def numbered() -> Iterator[tuple[RawMessage, dict]]:
        if first is None:
            return
        for index, (where, values) in enumerate(chain([first], rows)):
            message, extra = table_message(values, name, index, where)
            if message.error is None:
                stats.read += 1
            else:
                stats.failed += 1
            yield message, extra

    return numbered()


def write_table(
    rows: Iterable[tuple[RawMessage, dict]], path: str | Path, rows_per_group: int = 1024
) -> int:
    """Write messages (with any other columns, such as org, date or label) as a Parquet
    table `iter_table` reads back with the same ids; returns the rows written.

    Messages that could not be read (`error` set) are not written. Every row should
    carry the same other columns; their types are those of the first group of rows
    (text for a column null throughout it).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    written, writer, batch = 0, None, []
    target = Path(path)

    def flush() -> None:
        nonlocal writer
        if writer is None:
            inferred = pa.Table.from_pylist(batch).schema
            # a column null throughout the first group is taken as text
            schema = pa.schema(
                [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in inferred]
            )
            writer = pq.ParquetWriter(target, schema)
        writer.write_table(pa.Table.from_pylist(batch, schema=writer.schema))
        batch.clear()

    try:
        for message, extra in rows:
            if message.error is not None:
                continue
            batch.append({"id": message.id, "raw": message.data, "kind": message.kind, **extra})
            written += 1
            if len(batch) == rows_per_group:
                flush()
        if batch or writer is None:
            if not batch:
                raise ValueError(f"no readable message to write into {target}")
            flush()
    finally:
        if writer is not None:
            writer.close()
    return written
