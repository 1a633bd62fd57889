"""Message sources: every kind, stable ids, and mbox reading on damaged input."""

from __future__ import annotations

import io
import sys
import tarfile
import types
from pathlib import Path

import pytest

from detection.parsing import parse_message
from detection.sources import (
    RawMessage,
    SourceError,
    SourceStats,
    is_text_record,
    iter_messages,
    split_mbox,
)
from tests.synthetic_mail import make_message

SEPARATOR = b"From sender@example.com  Mon Jan  1 09:30:00 2024\n"


def _mail(n: int) -> bytes:
    return make_message(f"Subject {n}", f"Body of message {n}.").replace(b"\r\n", b"\n")


def _mbox(*messages: bytes) -> bytes:
    return b"".join(SEPARATOR + m + b"\n" for m in messages)


def _tar(path: Path, members: dict[str, bytes], mode: str = "w:xz") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _subjects(messages: list[RawMessage]) -> list[str]:
    return [parse_message(m.data).subject for m in messages]


def test_single_eml_file_is_one_message(tmp_path):
    path = tmp_path / "one.eml"
    path.write_bytes(_mail(1))

    messages = list(iter_messages(path))

    assert [(m.id, m.source, m.index, m.kind) for m in messages] == [
        ("one.eml", "one.eml", 0, "rfc822")
    ]
    assert messages[0].data == _mail(1)


def test_directory_tree_is_read_in_sorted_order_without_hidden_files(tmp_path):
    root = tmp_path / "tree"
    (root / "b").mkdir(parents=True)
    (root / "a").mkdir()
    (root / "b" / "2.eml").write_bytes(_mail(3))
    (root / "a" / "9.eml").write_bytes(_mail(2))
    (root / "0.eml").write_bytes(_mail(1))
    (root / ".hidden").write_bytes(b"not mail")

    messages = list(iter_messages(root))

    assert [m.id for m in messages] == ["tree:0.eml", "tree:a/9.eml", "tree:b/2.eml"]
    assert [m.index for m in messages] == [0, 1, 2]
    assert _subjects(messages) == ["Subject 1", "Subject 2", "Subject 3"]


def test_maildir_reads_cur_and_new_and_skips_tmp(tmp_path):
    box = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    (box / "cur" / "1700000000.1.host:2,S").write_bytes(_mail(1))
    (box / "new" / "1700000001.2.host").write_bytes(_mail(2))
    (box / "tmp" / "1700000002.3.host").write_bytes(_mail(3))

    messages = list(iter_messages(box))

    assert [m.id for m in messages] == [
        "Maildir:cur/1700000000.1.host:2,S",
        "Maildir:new/1700000001.2.host",
    ]


def test_mbox_file_is_split_with_positions_in_ids(tmp_path):
    path = tmp_path / "box.mbox"
    path.write_bytes(_mbox(_mail(1), _mail(2), _mail(3)))

    messages = list(iter_messages(path))

    assert [m.id for m in messages] == ["box.mbox#0", "box.mbox#1", "box.mbox#2"]
    assert _subjects(messages) == ["Subject 1", "Subject 2", "Subject 3"]


def test_single_message_file_with_separator_line_keeps_plain_id(tmp_path):
    path = tmp_path / "00001.abc"
    path.write_bytes(SEPARATOR + _mail(1))

    (message,) = iter_messages(path)

    assert message.id == "00001.abc"
    assert not message.data.startswith(b"From ")


def test_archive_members_and_mbox_inside_are_read(tmp_path):
    archive = _tar(
        tmp_path / "corpus.tar.xz",
        {
            "corpus/ham/00001.abc": _mail(1),
            "corpus/lists/box.mbox": _mbox(_mail(2), _mail(3)),
            "corpus/enron/0001.2001-01-02.x.ham.txt": b"Subject: hello\nplain body text\n",
        },
    )

    messages = list(iter_messages(archive))

    assert [m.id for m in messages] == [
        "corpus.tar.xz:corpus/ham/00001.abc",
        "corpus.tar.xz:corpus/lists/box.mbox#0",
        "corpus.tar.xz:corpus/lists/box.mbox#1",
        "corpus.tar.xz:corpus/enron/0001.2001-01-02.x.ham.txt",
    ]
    assert [m.kind for m in messages] == ["rfc822", "rfc822", "rfc822", "text"]
    assert [m.index for m in messages] == [0, 1, 2, 3]


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_every_archive_compression_is_read(tmp_path, suffix, mode):
    archive = _tar(tmp_path / f"c{suffix}", {"a.eml": _mail(1), "b.eml": _mail(2)}, mode)

    assert len(list(iter_messages(archive))) == 2


def test_ids_are_stable_across_two_reads(tmp_path):
    archive = _tar(
        tmp_path / "c.tar.xz", {"x/box.mbox": _mbox(_mail(1), _mail(2)), "x/y.eml": _mail(3)}
    )

    first = [(m.id, m.index, m.data) for m in iter_messages(archive)]
    second = [(m.id, m.index, m.data) for m in iter_messages(archive)]

    assert first == second
    assert len({i for i, _, _ in first}) == 3


def test_text_records_are_detected_and_can_be_forced(tmp_path):
    record = tmp_path / "0001.1999-12-10.farmer.ham.txt"
    record.write_bytes(b"Subject: christmas plans\nthe tree is up : see you soon\n")
    subject_only_mail = tmp_path / "mail.eml"
    subject_only_mail.write_bytes(b"Subject: hi\nFrom: a@example.com\n\nbody\n")

    assert next(iter_messages(record)).kind == "text"
    assert next(iter_messages(subject_only_mail)).kind == "rfc822"
    assert next(iter_messages(subject_only_mail, text_records=True)).kind == "text"
    assert next(iter_messages(record, text_records=False)).kind == "rfc822"


def test_text_record_with_folded_looking_second_line_is_text():
    assert is_text_record(b"Subject: a long subject\n continued words\nbody words\n")
    assert not is_text_record(b"Subject: folded\n continued\nFrom: a@example.com\n\nbody\n")


def test_stdin_single_message_and_mbox(monkeypatch):
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(_mail(1))))
    assert [m.id for m in iter_messages("-")] == ["stdin"]

    monkeypatch.setattr(
        sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(_mbox(_mail(1), _mail(2))))
    )
    messages = list(iter_messages("-"))
    assert [(m.id, m.source) for m in messages] == [("stdin#0", "stdin"), ("stdin#1", "stdin")]


def test_mbox_body_line_from_the_desk_does_not_split():
    body = (
        b"Dear team,\n\nFrom the desk of Alice: please read this.\n\nFrom now on, we meet at 9.\n"
    )
    message = make_message("Memo", "x").replace(b"\r\n", b"\n").replace(b"x\n", body)

    messages = split_mbox(_mbox(message, _mail(2)))

    assert len(messages) == 2
    assert b"From the desk of Alice" in messages[0][2]
    assert b"From now on" in messages[0][2]


def test_mbox_from_quoting_is_undone_one_level():
    message = _mail(1).replace(b"Body of message 1.", b"text\n>From here on\n>>From there\n")

    ((_, _, data),) = split_mbox(_mbox(message))

    assert b"\nFrom here on\n" in data
    assert b"\n>From there\n" in data


def test_lf_crlf_and_mixed_line_endings_give_equal_messages():
    lf = _mbox(_mail(1), _mail(2), _mail(3))
    crlf = lf.replace(b"\n", b"\r\n")
    lines = lf.split(b"\n")
    mixed = b"".join(line + (b"\r\n" if i % 2 else b"\n") for i, line in enumerate(lines[:-1]))

    results = [[m for _, _, m in split_mbox(data)] for data in (lf, crlf, mixed)]

    assert len(results[0]) == 3
    assert results[0] == results[1] == results[2]


def test_damaged_mbox_gives_exactly_four_messages(tmp_path):
    # message 2: a 6 KB one-line base64 part with no blank line after its part headers;
    # message 4: stops in the middle of a link inside an unclosed multipart
    one_line = b"QUJD" * 1500
    broken_part = (
        b"From: a@example.com\nSubject: two\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="b1"\n\n--b1\n'
        b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
        + one_line
        + b"\n--b1--\n"
    )
    truncated = (
        b"From: a@example.com\nSubject: four\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/alternative; boundary="b2"\n\n--b2\n'
        b'Content-Type: text/html\n\n<p>Click <a href="http://example.com/lo'
    )
    path = tmp_path / "damaged.mbox"
    path.write_bytes(_mbox(_mail(1), broken_part, _mail(3)) + SEPARATOR + truncated)

    messages = list(iter_messages(path))

    assert len(messages) == 4
    assert _subjects(messages) == ["Subject 1", "two", "Subject 3", "four"]
    assert one_line in messages[1].data


def test_folder_placeholder_is_skipped_and_counted(tmp_path):
    placeholder = (
        b"From: Mail System Internal Data <daemon@example.com>\n"
        b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n\ninternal\n"
    )
    path = tmp_path / "folder.mbox"
    path.write_bytes(_mbox(placeholder, _mail(1), _mail(2)))
    stats = SourceStats()

    messages = list(iter_messages(path, stats=stats))

    assert [m.id for m in messages] == ["folder.mbox#1", "folder.mbox#2"]
    assert [m.index for m in messages] == [0, 1]
    assert (stats.read, stats.skipped) == (2, 1)


def test_truncated_message_inside_archive_is_still_yielded(tmp_path):
    cut = _mail(1)[:-10]
    archive = _tar(tmp_path / "c.tar.gz", {"a.eml": cut, "b.eml": _mail(2)}, "w:gz")

    messages = list(iter_messages(archive))

    assert [m.data for m in messages] == [cut, _mail(2)]


def test_missing_source_raises_naming_it(tmp_path):
    missing = tmp_path / "nowhere.mbox"

    with pytest.raises(SourceError, match="nowhere.mbox.*no such file or directory"):
        iter_messages(missing)


def test_corrupt_archive_yields_what_came_before_then_raises(tmp_path):
    members = {f"m/{i:03d}.eml": _mail(i) + b"padding " * 2000 for i in range(30)}
    good = _tar(tmp_path / "good.tar.gz", members, "w:gz").read_bytes()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(good[: len(good) // 2])

    seen: list[str] = []
    with pytest.raises(
        SourceError, match=r"broken\.tar\.gz.*(member|after).*corrupt or truncated"
    ) as info:
        for message in iter_messages(broken):
            seen.append(message.id)

    assert 0 < len(seen) < 30
    assert seen == [f"broken.tar.gz:m/{i:03d}.eml" for i in range(len(seen))]
    assert info.value.source == "broken.tar.gz"
    assert info.value.position is not None


def test_not_an_archive_raises_at_once(tmp_path):
    fake = tmp_path / "fake.tar.xz"
    fake.write_bytes(b"this is not an archive at all")

    with pytest.raises(SourceError, match="fake.tar.xz.*not a readable tar archive"):
        iter_messages(fake)


def test_text_records_flag_rejects_wrong_type(tmp_path):
    with pytest.raises(TypeError, match="text_records must be None, True or False, got 'yes'"):
        iter_messages(tmp_path, text_records="yes")


# tar archives that tarfile stops reading without an error
def _three_member_tar(tmp_path: Path) -> tuple[bytes, int]:
    """An uncompressed 3-member tar and the offset of member 2's header."""
    path = _tar(tmp_path / "three.tar", {f"{i}.eml": _mail(i) for i in (1, 2, 3)}, "w")
    with tarfile.open(path) as archive:
        offset = archive.getmembers()[1].offset
    return path.read_bytes(), offset


@pytest.mark.parametrize(
    "damage",
    [
        lambda data, at: data[:at] + b"\xff" * 100 + data[at + 100 :],  # a bad checksum
        lambda data, at: data[: at + 200],  # truncated inside the header
        lambda data, at: data[:at] + b"\x00" * 512 + data[at + 512 :],  # a zeroed header
    ],
    ids=["damaged", "truncated", "zeroed"],
)
def test_tar_that_stops_at_a_damaged_member_header_raises_after_member_one(tmp_path, damage):
    data, at = _three_member_tar(tmp_path)
    broken = tmp_path / "broken.tar"
    broken.write_bytes(damage(data, at))

    seen = []
    with pytest.raises(SourceError, match=r"broken\.tar.*offset \d+.*corrupt or truncated"):
        for message in iter_messages(broken):
            seen.append(message.id)

    assert seen == ["broken.tar:1.eml"]


def test_tar_with_zero_padding_after_the_end_marker_reads_cleanly(tmp_path):
    data, _ = _three_member_tar(tmp_path)
    padded = tmp_path / "padded.tar"
    padded.write_bytes(data + b"\x00" * 20480)

    assert len(list(iter_messages(padded))) == 3


# archives inside archives
def test_archive_inside_an_archive_is_read_with_both_names_in_the_ids(tmp_path):
    inner = _tar(tmp_path / "inner.tar.gz", {"x/a.eml": _mail(1)}, "w:gz").read_bytes()
    outer = _tar(tmp_path / "outer.tar", {"in/inner.tar.gz": inner, "b.eml": _mail(2)}, "w")

    messages = list(iter_messages(outer))

    assert [m.id for m in messages] == ["outer.tar:in/inner.tar.gz:x/a.eml", "outer.tar:b.eml"]
    assert _subjects(messages) == ["Subject 1", "Subject 2"]


def test_an_archive_nested_deeper_than_the_limit_gets_an_error_line_of_its_own(tmp_path):
    data = _tar(tmp_path / "l4.tar", {"deep.eml": _mail(4)}, "w").read_bytes()
    for level in (3, 2):
        data = _tar(tmp_path / f"l{level}.tar", {f"l{level + 1}.tar": data}, "w").read_bytes()
    outer = _tar(tmp_path / "l1.tar", {"l2.tar": data, "top.eml": _mail(1)}, "w")
    stats = SourceStats()

    messages = list(iter_messages(outer, stats=stats))

    assert [m.id for m in messages] == ["l1.tar:l2.tar:l3.tar:l4.tar", "l1.tar:top.eml"]
    assert "nested more than 3 deep" in messages[0].error and not messages[0].data
    assert messages[1].error is None
    assert (stats.read, stats.failed) == (1, 1)


# mbox line endings and leading bytes
def test_mbox_with_cr_only_line_endings_is_split(tmp_path):
    path = tmp_path / "mac.mbox"
    path.write_bytes(_mbox(_mail(1), _mail(2)).replace(b"\n", b"\r"))

    messages = list(iter_messages(path))

    assert _subjects(messages) == ["Subject 1", "Subject 2"]
    assert messages[0].data == split_mbox(_mbox(_mail(1), _mail(2)))[0][2]


@pytest.mark.parametrize("lead", [b"\xef\xbb\xbf", b"\n\n", b"\xef\xbb\xbf\r\n \n"])
def test_mbox_with_a_byte_order_mark_or_blank_lines_first_is_split(tmp_path, lead):
    path = tmp_path / "lead.mbox"
    path.write_bytes(lead + _mbox(_mail(1), _mail(2)))

    messages = list(iter_messages(path))

    assert [m.id for m in messages] == ["lead.mbox#0", "lead.mbox#1"]
    assert _subjects(messages) == ["Subject 1", "Subject 2"]


# directory trees
def test_fifo_in_a_directory_is_skipped_and_counted_without_blocking(tmp_path):
    import os

    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.eml").write_bytes(_mail(1))
    os.mkfifo(root / "b.pipe")
    (root / "c.eml").write_bytes(_mail(2))
    stats = SourceStats()

    messages = list(iter_messages(root, stats=stats))

    assert [m.id for m in messages] == ["tree:a.eml", "tree:c.eml"]
    assert stats.skipped == 1


def test_maildir_ids_keep_the_flags_so_two_flag_variants_stay_distinct(tmp_path):
    box = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    (box / "cur" / "1700000000.x:2,S").write_bytes(_mail(1))
    (box / "cur" / "1700000000.x:2,RS").write_bytes(_mail(2))

    ids = [m.id for m in iter_messages(box)]

    assert ids == ["Maildir:cur/1700000000.x:2,RS", "Maildir:cur/1700000000.x:2,S"]


def test_unreadable_files_in_a_tree_become_error_messages_and_reading_goes_on(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.eml").write_bytes(_mail(1))
    (root / "b.eml").symlink_to(tmp_path / "gone.eml")
    (root / "c.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    good = _tar(tmp_path / "d.tar.gz", {f"{i}.eml": _mail(i) for i in range(20)}, "w:gz")
    (root / "d.tar.gz").write_bytes(good.read_bytes()[:600])
    (root / "e.eml").write_bytes(_mail(2))
    stats = SourceStats()

    messages = list(iter_messages(root, stats=stats))

    failed = {m.id: m.error for m in messages if m.error}
    assert [m.id for m in messages if not m.error][0] == "tree:a.eml"
    assert [m.id for m in messages][-1] == "tree:e.eml"
    assert set(failed) == {"tree:b.eml", "tree:c.tar.gz", "tree:d.tar.gz"}
    assert "b.eml" in failed["tree:b.eml"] and "dangling symbolic link" in failed["tree:b.eml"]
    assert "not a readable tar archive" in failed["tree:c.tar.gz"]
    assert "corrupt or truncated" in failed["tree:d.tar.gz"]
    assert all(m.data == b"" for m in messages if m.error)
    assert [m.index for m in messages] == list(range(len(messages)))
    assert (stats.read, stats.failed) == (len(messages) - 3, 3)


def test_symlinked_directories_are_followed_once_each(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "x.eml").write_bytes(_mail(1))
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a").symlink_to(real, target_is_directory=True)
    (root / "b").symlink_to(real, target_is_directory=True)
    (real / "loop").symlink_to(root, target_is_directory=True)

    ids = [m.id for m in iter_messages(root)]

    assert ids == ["tree:a/x.eml"]


# Parquet tables of raw messages
def _table(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_table_rows_become_messages_with_the_tables_ids_and_kinds(tmp_path):
    table = _table(
        tmp_path / "mail.parquet",
        [
            {"id": "first", "raw": _mail(1), "kind": "rfc822", "org": "acme"},
            {"id": "second", "raw": b"Subject: hello\nbody", "kind": "text", "org": "acme"},
            {"id": None, "raw": _mail(3), "kind": None, "org": "other"},
        ],
    )

    messages = list(iter_messages(table))

    assert [(m.id, m.source, m.index, m.kind) for m in messages] == [
        ("first", "mail.parquet", 0, "rfc822"),
        ("second", "mail.parquet", 1, "text"),
        ("mail.parquet#2", "mail.parquet", 2, "rfc822"),
    ]
    assert messages[0].data == _mail(1)


def test_iter_table_gives_each_rows_other_columns(tmp_path):
    from detection.sources import iter_table

    table = _table(
        tmp_path / "t.parquet", [{"id": "m", "raw": _mail(1), "org": "acme", "label": 2}]
    )

    ((message, extra),) = list(iter_table(table))

    assert message.id == "m"
    assert extra == {"org": "acme", "label": 2}


def test_table_row_without_bytes_or_with_an_unknown_kind_fails_alone(tmp_path):
    stats = SourceStats()
    table = _table(
        tmp_path / "t.parquet",
        [
            {"id": "empty", "raw": None, "kind": "rfc822"},
            {"id": "odd", "raw": _mail(2), "kind": "fax"},
            {"id": "good", "raw": _mail(3), "kind": "rfc822"},
        ],
    )

    messages = list(iter_messages(table, stats=stats))

    assert [m.id for m in messages] == ["empty", "odd", "good"]
    assert "'raw' column is null" in messages[0].error and "id empty" in messages[0].error
    assert "kind must be one of" in messages[1].error and "'fax'" in messages[1].error
    assert messages[2].error is None
    assert (stats.read, stats.failed) == (1, 2)


def test_table_without_a_raw_column_is_refused_at_once(tmp_path):
    from detection.sources import iter_table

    table = _table(tmp_path / "t.parquet", [{"id": "m", "body": "text"}])

    with pytest.raises(SourceError, match=r"needs a binary column 'raw'; it has \['id', 'body'\]"):
        iter_table(table)


def test_folder_of_table_parts_is_read_in_order_and_spark_metadata_is_passed_over(tmp_path):
    folder = tmp_path / "table"
    (folder / "slot=x").mkdir(parents=True)
    _table(folder / "part-1.parquet", [{"raw": _mail(2)}])
    _table(folder / "part-0.parquet", [{"raw": _mail(1)}])
    _table(folder / "slot=x" / "part-0.parquet", [{"raw": _mail(3)}])
    (folder / "_SUCCESS").write_bytes(b"")

    ids = [m.id for m in iter_messages(folder)]

    assert ids == [
        "table:part-0.parquet#0",
        "table:part-1.parquet#0",
        "table:slot=x/part-0.parquet#0",
    ]


def test_write_table_round_trips_messages_and_columns(tmp_path):
    from detection.sources import iter_table, write_table

    rows = [
        (RawMessage(f"m{i}", "s", i, _mail(i)), {"org": "acme", "label": None if i < 3 else "safe"})
        for i in range(5)
    ]
    rows.append((RawMessage("unreadable", "s", 5, b"", error="could not be read"), {}))

    written = write_table(rows, tmp_path / "t.parquet", rows_per_group=2)
    back = list(iter_table(tmp_path / "t.parquet"))

    assert written == 5
    assert [(m.id, m.data, e["label"]) for m, e in back] == [
        (f"m{i}", _mail(i), None if i < 3 else "safe") for i in range(5)
    ]


def test_a_damaged_archive_inside_an_intact_one_gets_an_error_line_and_reading_goes_on(
    tmp_path,
):
    inner = _tar(tmp_path / "inner.tar", {"x.eml": _mail(2), "y.eml": _mail(3)}, "w")
    damaged = inner.read_bytes()[:1536]  # x.eml whole, y.eml's header cut short
    outer = _tar(
        tmp_path / "outer.tar", {"a.eml": _mail(1), "bad.tar": damaged, "z.eml": _mail(4)}, "w"
    )
    stats = SourceStats()

    messages = list(iter_messages(outer, stats=stats))

    assert [m.id for m in messages] == [
        "outer.tar:a.eml",
        "outer.tar:bad.tar:x.eml",
        "outer.tar:bad.tar",
        "outer.tar:z.eml",
    ]
    assert "corrupt or truncated" in messages[2].error
    assert _subjects([messages[0], messages[1], messages[3]]) == [
        "Subject 1",
        "Subject 2",
        "Subject 4",
    ]
    assert (stats.read, stats.failed) == (3, 1)
