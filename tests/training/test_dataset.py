"""build_dataset on small synthetic corpora in the real corpora's layouts."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from detection.signals import SIGNAL_NAMES
from detection.sources import RawMessage
from detection.tensors import CLASS_NAMES
from tests.synthetic_mail import make_message
from training.dataset import (
    DatasetConfig,
    build_dataset,
    dataset_from_messages,
    fingerprint,
    load_dataset_dict,
)

T0 = datetime(2002, 3, 1, 9, 0, tzinfo=timezone.utc)
SEEN = SIGNAL_NAMES.index("sender_seen_before")
# the public corpora: ../shared/corpora beside the repository, or $BULWARK_CORPORA
REAL_CORPORA = Path(
    os.environ.get("BULWARK_CORPORA", Path(__file__).parents[2].parent / "shared" / "corpora")
)
RECEIVER = "Received: from mx.example.net by mail.example.org\n\tfor <bob@example.org>; Fri\n"


def _mail(subject: str, body: str, sender: str, when: datetime, headers: str = "") -> bytes:
    extra = (RECEIVER + "Delivered-To: bob@example.org\nX-Spam-Status: No\n" + headers).replace(
        "\n", "\r\n"
    )
    return make_message(subject, body, sender, when, extra_headers=extra)


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:xz") as archive:
        for name, data in sorted(members.items()):  # sorted, as the real archives are
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _spamassassin() -> dict[str, bytes]:
    members = {}
    for i in range(10):
        when = T0 + timedelta(days=i)
        ham = _mail(
            f"Build {i}",
            f"Build {i} passed, notes for bob@example.org.",
            "Carol <carol@example.com>",
            when,
        )
        members[f"spamassassin/easy_ham/{i:05d}.aa{i}"] = (
            b"From carol@example.com  Fri Mar  1 09:00:00 2002\n" + ham
        )
        spam = _mail(f"Deal {i}", f"Cheap watches number {i}", "Deals <offers@example.net>", when)
        members[f"spamassassin/spam/{i:05d}.bb{i}"] = spam
    # a resend of ham 3 (same Message-ID), and a copy of spam 4's text under a new Message-ID
    members["spamassassin/hard_ham/00100.cc"] = members["spamassassin/easy_ham/00003.aa3"]
    copy = _mail(
        "Deal 4", "Cheap   watches NUMBER 4", "Other <x@example.net>", T0 + timedelta(days=20)
    )
    members["spamassassin/spam_2/00101.dd"] = copy
    # no Date header: interpolated between its neighbours
    undated = _mail("Build x", "An undated build note.", "Carol <carol@example.com>", T0)
    members["spamassassin/easy_ham/00005.ab"] = b"\r\n".join(
        line for line in undated.split(b"\r\n") if not line.startswith(b"Date:")
    )
    members["spamassassin/cmds"] = b"not a message folder of the corpus"
    return members


def _mbox_member() -> bytes:
    parts = [
        b"From: Mail System <daemon@example.com>\nSubject: DON'T DELETE THIS MESSAGE -- FOLDER "
        b"INTERNAL DATA\n\nplaceholder\n"
    ]
    for i in range(6):
        when = T0 + timedelta(days=700 + i)
        body = f"Verify your account {i} now at http://login.example.net/{i}"
        parts.append(
            _mail("Verify", body, "IT <helpdesk@example.org>", when).replace(b"\r\n", b"\n")
        )
    return b"".join(
        b"From helpdesk@example.org  Mon Jan  5 09:00:00 2004\n" + p + b"\n" for p in parts
    )


def _enron() -> dict[str, bytes]:
    members = {}
    for i in range(8):
        day = f"2000-01-{i + 1:02d}"
        members[f"enron-spam/enron1/ham/{i:04d}.{day}.farmer.ham.txt"] = (
            f"Subject: meeting {i}\nthe meeting {i} moved to room {i} .\n".encode()
        )
        members[f"enron-spam/enron2/spam/{i:04d}.{day}.GP.spam.txt"] = (
            f"Subject: offer {i}\nbuy now offer {i} !\n".encode()
        )
    return members


def _usrp() -> dict[str, bytes]:
    footer = (
        "\n_______________________________________________\nTeam-talk mailing list\n"
        "team-talk@lists.example.com\nhttp://lists.example.com/mailman/listinfo/team-talk\n"
    )
    list_headers = (
        "Reply-To: Dana Example <dana@example.com>\nList-Id: <team-talk.lists.example.com>\n"
    )
    munged = "Dana Example via Team-talk <team-talk@lists.example.com>"
    members = {}
    for i in range(6):
        when = T0 + timedelta(days=6000 + i)
        body = f"How do I tune radio {i}?" + footer
        members[f"usrp-users/{i:06d}.eml"] = _mail(f"Radio {i}", body, munged, when, list_headers)
    return members


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpora")
    _tar(root / "spamassassin-test.tar.xz", _spamassassin())
    _tar(root / "nazario-test.tar.xz", {"nazario/phishing0.mbox": _mbox_member()})
    _tar(root / "enron-spam-test.tar.xz", _enron())
    _tar(root / "usrp-users-test.tar.xz", _usrp())
    (root / "README.md").write_text("not an archive")
    return root


@pytest.fixture(scope="module")
def built(corpora, tmp_path_factory):
    output = tmp_path_factory.mktemp("dataset")
    data = build_dataset(corpora, output, DatasetConfig(workers=1))
    return data, output, json.loads((output / "manifest.json").read_text())


def _rows(data) -> list[dict]:
    return [row for split in data.values() for row in split]


def test_labels_come_from_each_corpus_folder(built):
    data, _, _ = built
    labels = {row["id"]: CLASS_NAMES[row["label"]] for row in _rows(data)}

    def label_of(part: str) -> set[str]:
        return {label for row_id, label in labels.items() if part in row_id}

    assert label_of("/easy_ham/") == {"safe"}
    assert label_of("/spam/") == {"spam"}
    assert label_of("nazario") == {"attack"}
    assert label_of("/ham/0") == {"safe"}
    assert label_of("enron2/spam") == {"spam"}
    assert label_of("usrp-users") == {"safe"}
    assert not any("cmds" in row_id for row_id in labels)


def test_sources_orgs_and_kinds(built):
    data, _, manifest = built
    rows = _rows(data)

    assert {r["source"] for r in rows} == {"spamassassin", "nazario", "enron-spam", "usrp-users"}
    assert {r["org"] for r in rows if r["source"] == "enron-spam"} == {
        "enron-spam/enron1",
        "enron-spam/enron2",
    }
    assert {r["kind"] for r in rows if r["source"] == "enron-spam"} == {"text"}
    assert {r["kind"] for r in rows if r["source"] != "enron-spam"} == {"rfc822"}
    assert manifest["placeholders_skipped"] == {
        "enron-spam": 0,
        "nazario": 1,
        "spamassassin": 0,
        "usrp-users": 0,
    }
    assert manifest["unlabelled_skipped"] == {"spamassassin": 1}


def test_duplicates_are_removed_before_splitting(built):
    data, _, manifest = built
    ids = [r["id"] for r in _rows(data)]

    assert not any("00100.cc" in i for i in ids)  # same Message-ID as an earlier ham
    assert not any("00101.dd" in i for i in ids)  # same normalised text as an earlier spam
    assert manifest["duplicates_removed"] == {
        "message_id": {"spamassassin": 1},
        "body": {"spamassassin": 1},
    }
    assert len(ids) == len(set(ids))


def test_time_split_order_within_each_source(built):
    data, _, _ = built
    for source in {r["source"] for r in _rows(data)}:
        dates = {
            split: [r["date"] for r in data[split] if r["source"] == source]
            for split in ("train", "validation", "test")
        }
        assert dates["train"] and dates["test"], source
        assert max(dates["train"]) <= min(dates["validation"] or dates["test"]), source
        if dates["validation"]:
            assert max(dates["validation"]) <= min(dates["test"]), source


def test_dates_are_iso_utc_and_enron_dates_come_from_file_names(built):
    data, _, manifest = built
    rows = _rows(data)
    enron = {r["id"].rsplit("/", 1)[1]: r["date"] for r in rows if r["source"] == "enron-spam"}

    assert enron["0002.2000-01-03.farmer.ham.txt"] == "2000-01-03T00:00:00+00:00"
    assert all(datetime.fromisoformat(r["date"]).utcoffset() == timedelta(0) for r in rows)
    assert manifest["dates_interpolated"]["spamassassin"] == 1


def test_interpolated_date_lies_between_its_neighbours(built):
    data, _, _ = built
    dates = {r["id"].rsplit("/", 1)[1]: r["date"] for r in _rows(data)}

    assert dates["00005.aa5"] < dates["00005.ab"] < dates["00006.aa6"]


def test_sender_history_never_leaks_the_future_or_learns_from_attacks(built):
    data, _, _ = built
    rows = sorted(_rows(data), key=lambda r: r["date"])
    carol = [r for r in rows if r["source"] == "spamassassin" and "easy_ham" in r["id"]]
    attacks = [r for r in rows if r["source"] == "nazario"]

    assert carol[0]["signals"][SEEN] == 0.0
    assert all(r["signals"][SEEN] == 1.0 for r in carol[1:])
    assert all(r["signals"][SEEN] == 0.0 for r in attacks)  # attack mail is never recorded


def test_receiver_marks_are_gone_from_the_model_inputs_but_raw_is_original(built):
    data, _, _ = built
    rows = _rows(data)
    usrp = [r for r in rows if r["source"] == "usrp-users"]

    assert all("bob@example.org" not in r["text"] for r in rows)
    assert any("recipient@example.invalid" in r["text"] for r in rows)
    assert all("mailing list" not in r["text"] for r in usrp)
    assert all(b"Received: from mx.example.net" in r["raw"] for r in rows if r["kind"] == "rfc822")
    # un-munged From: the poster is one sender, seen before from the second post on
    assert [r["signals"][SEEN] for r in usrp] == [0.0] + [1.0] * (len(usrp) - 1)


def test_columns_types_and_manifest_counts(built):
    data, output, manifest = built
    row = data["train"][0]

    assert set(row) == {
        "id",
        "source",
        "org",
        "label",
        "text",
        "signals",
        "hit_categories",
        "hit_scores",
        "date",
        "split",
        "raw",
        "kind",
    }
    assert len(row["signals"]) == len(SIGNAL_NAMES)
    assert len(row["hit_categories"]) == len(row["hit_scores"])
    assert isinstance(row["raw"], bytes)
    assert {split: len(rows) for split, rows in data.items()} == {
        split: sum(counts.values()) for split, counts in manifest["per_split"].items()
    }
    assert manifest["rows"] == sum(len(rows) for rows in data.values())
    assert (output / "history.sqlite").exists()
    assert all(r["split"] == split for split, rows in data.items() for r in rows)


def test_saved_dataset_loads_with_its_fingerprint(built):
    data, output, manifest = built

    loaded, loaded_fingerprint = load_dataset_dict(output)

    assert loaded_fingerprint == manifest["fingerprint"] == fingerprint(data)
    assert loaded["train"]["id"] == data["train"]["id"]


def test_two_builds_give_the_same_fingerprint(corpora, built, tmp_path):
    _, _, manifest = built

    build_dataset(corpora, tmp_path / "again", DatasetConfig(workers=2))

    again = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert again["fingerprint"] == manifest["fingerprint"]


def test_holdout_source_goes_entirely_to_holdout(corpora, tmp_path):
    data = build_dataset(corpora, tmp_path / "held", DatasetConfig(holdout_sources=("nazario",)))

    assert set(data["holdout"]["source"]) == {"nazario"}
    assert "nazario" not in set(data["train"]["source"]) | set(data["test"]["source"])


def test_split_within_source_label_keeps_every_class_in_every_split(corpora, tmp_path):
    config = DatasetConfig(split_within="source_label")

    data = build_dataset(corpora, tmp_path / "by-label", config)

    for split in ("train", "test"):
        labels = {r["label"] for r in data[split] if r["source"] == "spamassassin"}
        assert labels == {CLASS_NAMES.index("safe"), CLASS_NAMES.index("spam")}, split


def test_cap_per_source_samples_each_source(corpora, tmp_path):
    data = build_dataset(corpora, tmp_path / "cap", DatasetConfig(max_messages_per_source=4))

    counts: dict[str, int] = {}
    for row in _rows(data):
        counts[row["source"]] = counts.get(row["source"], 0) + 1
    assert max(counts.values()) <= 4


def test_dataset_from_messages_splits_by_time():
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    items = [
        (
            RawMessage(
                f"mem#{i}",
                "mem",
                i,
                make_message(f"S{i}", f"Body {i}", when=start + timedelta(days=i)),
            ),
            "safe",
        )
        for i in range(20)
    ]

    data = dataset_from_messages(items, org="example")

    assert [len(data[s]) for s in ("train", "validation", "test")] == [14, 3, 3]
    assert max(data["train"]["date"]) < min(data["validation"]["date"])


def test_dataset_from_messages_rejects_unknown_label():
    item = (RawMessage("m", "mem", 0, make_message("S", "B")), "phish")

    with pytest.raises(ValueError, match="label must be one of .*got 'phish'"):
        dataset_from_messages([item], org="example")


@pytest.mark.parametrize(
    "values,message",
    [
        ({"train_fraction": 1.5}, r"train_fraction must be a number in \(0, 1\), got 1.5"),
        ({"train_fraction": 0.9, "validation_fraction": 0.2}, "must be at most 1"),
        ({"max_messages_per_source": 0}, "max_messages_per_source must be None or a positive int"),
        ({"holdout_sources": "nazario"}, "holdout_sources must be a tuple"),
        ({"workers": -1}, "workers must be a non-negative int, got -1"),
        ({"seed": "0"}, "seed must be a non-negative int, got '0'"),
        ({"split_within": "label"}, "split_within must be one of .*got 'label'"),
    ],
)
def test_config_rejects_wrong_values(values, message):
    with pytest.raises(ValueError, match=message):
        DatasetConfig(**values)


def test_config_from_dict_rejects_unknown_keys_and_accepts_lists():
    assert DatasetConfig.from_dict({"holdout_sources": ["nazario"]}).holdout_sources == ("nazario",)
    with pytest.raises(ValueError, match=r"unknown keys \['shuffle'\]"):
        DatasetConfig.from_dict({"shuffle": True})


def test_unknown_holdout_and_empty_folder_are_errors(corpora, tmp_path):
    with pytest.raises(ValueError, match=r"holdout_sources \['nope'\] name no corpus"):
        build_dataset(corpora, tmp_path / "x", DatasetConfig(holdout_sources=("nope",)))
    with pytest.raises(FileNotFoundError, match="no known corpus archive"):
        build_dataset(tmp_path, tmp_path / "y", DatasetConfig())


@pytest.mark.corpora
@pytest.mark.skipif(not REAL_CORPORA.is_dir(), reason=f"real corpora not found at {REAL_CORPORA}")
def test_builds_from_one_real_archive_quickly(tmp_path):
    folder = tmp_path / "corpora"
    folder.mkdir()
    (folder / "nazario-phishing-2004-2005.tar.xz").symlink_to(
        REAL_CORPORA / "nazario-phishing-2004-2005.tar.xz"
    )
    started = time.monotonic()

    data = build_dataset(folder, tmp_path / "out", DatasetConfig(max_messages_per_source=150))

    assert time.monotonic() - started < 60
    rows = _rows(data)
    assert 100 <= len(rows) <= 150
    assert {r["label"] for r in rows} == {CLASS_NAMES.index("attack")}
    assert all("username@domain.com" not in r["text"] for r in rows)


def test_detector_hits_are_stored_beside_the_signals(tmp_path):
    wire = make_message(
        "Urgent wire transfer",
        "Please send the wire transfer today to our new bank account details. Keep this "
        "confidential.",
        sender="Finance <finance@example.net>",
    )
    items = [(RawMessage("m#0", "synthetic", 0, wire), "attack")]
    rows = _rows(dataset_from_messages(items, org="example"))

    (row,) = rows
    assert "payment_fraud" in row["hit_categories"]
    assert all(0.0 < score <= 1.0 for score in row["hit_scores"])
