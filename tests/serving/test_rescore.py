"""Local batch rescoring: the serving verdicts, partitioned output, failures, resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detection.features import parse_for_model
from detection.history import SenderHistory
from detection.sources import RawMessage, write_table
from serving.rescore import ModelSpec, RescoreConfig, RunFolder, rescore
from tests.model_fixtures import tiny_model_version
from tests.synthetic_mail import make_message, synthetic_corpus

ROOT = Path(__file__).resolve().parents[2]
ORG = "acme"


@pytest.fixture(scope="module")
def version_dir() -> Path:
    return tiny_model_version()[1]


def write_mail(folder: Path, n: int, seed: int = 4) -> list[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    mail = [m.data for m in synthetic_corpus(n, seed)]
    for i, data in enumerate(mail):
        (folder / f"{i:03d}.eml").write_bytes(data)
    return mail


def slot_rows(output: Path, slot: str = "a") -> list[dict]:
    return sorted(RunFolder(output).read_slot(slot).to_pylist(), key=lambda r: r["index"])


def contract(row: dict) -> tuple:
    return (
        row["id"],
        row["source"],
        row["index"],
        row["verdict"],
        row["category"],
        row["reasons"],
        row["error"],
    )


def test_rescoring_gives_the_verdicts_of_in_process_scoring(version_dir, tmp_path):
    from detection.sources import iter_messages
    from serving.scorer import Scorer

    write_mail(tmp_path / "mail", 12)
    expected = Scorer.load(version_dir).score(iter_messages(tmp_path / "mail"), ORG)

    config = RescoreConfig(workers=2, chunk_size=5, org=ORG)
    summary = rescore(
        tmp_path / "mail", {"a": ModelSpec(str(version_dir))}, tmp_path / "out", config
    )

    rows = slot_rows(tmp_path / "out")
    assert (summary.read, summary.scored, summary.failed, summary.status) == (12, 12, 0, 0)
    assert [contract(r) for r in rows] == [
        (v.id, v.source, v.index, v.verdict, v.category, v.reasons, v.error) for v in expected
    ]
    for row, verdict in zip(rows, expected, strict=True):
        assert row["score"] == pytest.approx(verdict.score, abs=2e-6)


def test_output_is_one_part_file_per_chunk_with_the_model_version(version_dir, tmp_path):
    write_mail(tmp_path / "mail", 7)
    rescore(
        tmp_path / "mail",
        {"a": ModelSpec(str(version_dir))},
        tmp_path / "out",
        RescoreConfig(workers=0, chunk_size=3),
    )

    parts = sorted(p.name for p in (tmp_path / "out" / "scores" / "slot=a").iterdir())
    assert parts == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    assert [len(pq.read_table(tmp_path / "out/scores/slot=a" / p)) for p in parts] == [3, 3, 1]
    models = {r["model"] for r in slot_rows(tmp_path / "out")}
    assert len(models) == 1 and models.pop().startswith("bulwark/1@")


def test_unreadable_messages_are_listed_as_failures_and_the_run_finishes(version_dir, tmp_path):
    write_mail(tmp_path / "mail", 4)
    (tmp_path / "mail" / "002b.eml").symlink_to(tmp_path / "nowhere.eml")

    summary = rescore(
        tmp_path / "mail",
        {"a": ModelSpec(str(version_dir))},
        tmp_path / "out",
        RescoreConfig(workers=0, chunk_size=2),
    )

    failures = [json.loads(line) for line in (tmp_path / "out/failures.jsonl").open()]
    assert (summary.read, summary.scored, summary.failed, summary.status) == (5, 4, 1, 0)
    assert [f["id"] for f in failures] == ["mail:002b.eml"]
    assert "dangling symbolic link" in failures[0]["error"]


def test_a_truncated_archive_keeps_the_messages_before_the_damage(version_dir, tmp_path):
    mail = write_mail(tmp_path / "mail", 6)
    archive = tmp_path / "mail.tar"
    with tarfile.open(archive, "w") as tar:
        for i in range(len(mail)):
            tar.add(tmp_path / "mail" / f"{i:03d}.eml", arcname=f"{i:03d}.eml")
    with tarfile.open(archive) as tar:
        cut = tar.getmembers()[3].offset_data + 10  # inside the fourth message
    archive.write_bytes(archive.read_bytes()[:cut])

    summary = rescore(
        archive,
        {"a": ModelSpec(str(version_dir))},
        tmp_path / "out",
        RescoreConfig(workers=0, chunk_size=2),
    )

    assert summary.status == 2 and "corrupt or truncated" in summary.source_error
    assert summary.read == 3
    assert len(slot_rows(tmp_path / "out")) == summary.read
    assert json.loads((tmp_path / "out/summary.json").read_text())["source_error"]


def test_history_is_read_as_of_each_messages_date(version_dir, tmp_path):
    """A table row's date, not the time of the rescoring, sets which history counts."""
    start = datetime(2024, 1, 10, tzinfo=timezone.utc)
    history = SenderHistory(str(tmp_path / "history.sqlite"))
    for day in range(5):
        when = start + timedelta(days=day)
        earlier = make_message(
            "Build notes", f"Build {day} passed.", "Carol <carol@example.com>", when
        )
        history.record(ORG, parse_for_model(earlier), when)
    history.commit()
    history.close()
    later = make_message(
        "Verify your account",
        "Your password expires today.",
        "Carol <carol@example.com>",
        datetime(2024, 3, 1, tzinfo=timezone.utc),
    )
    dates = [
        datetime(2023, 12, 1, tzinfo=timezone.utc),
        datetime(2024, 1, 12, 12, tzinfo=timezone.utc),
        datetime(2024, 2, 1, tzinfo=timezone.utc),
    ]
    table = tmp_path / "mail.parquet"
    write_table(
        [
            (RawMessage(f"m{i}", "t", i, later), {"org": ORG, "date": d})
            for i, d in enumerate(dates)
        ],
        table,
    )

    spec = ModelSpec(str(version_dir), history=str(tmp_path / "history.sqlite"))
    rescore(table, {"a": spec}, tmp_path / "with", RescoreConfig(workers=0))
    rescore(
        table, {"a": ModelSpec(str(version_dir))}, tmp_path / "without", RescoreConfig(workers=0)
    )

    scored = [r["score"] for r in slot_rows(tmp_path / "with")]
    unknown = [r["score"] for r in slot_rows(tmp_path / "without")]
    assert [r["date"] for r in slot_rows(tmp_path / "with")] == dates
    assert scored[0] == unknown[0]  # before the sender's first message: no history yet
    assert len({scored[0], scored[1], scored[2]}) == 3  # two, then five messages known


def test_table_columns_give_the_org_and_the_label(version_dir, tmp_path):
    mail = [m.data for m in synthetic_corpus(3, 5)]
    rows = [
        (RawMessage(f"m{i}", "t", i, d), {"org": f"org-{i}", "label": i})
        for i, d in enumerate(mail)
    ]
    write_table(rows, tmp_path / "mail.parquet")

    rescore(
        tmp_path / "mail.parquet",
        {"a": ModelSpec(str(version_dir))},
        tmp_path / "out",
        RescoreConfig(workers=0),
    )

    got = [(r["id"], r["org"], r["label"]) for r in slot_rows(tmp_path / "out")]
    assert got == [("m0", "org-0", "safe"), ("m1", "org-1", "spam"), ("m2", "org-2", "attack")]


def test_a_folder_holding_other_work_is_refused(version_dir, tmp_path):
    write_mail(tmp_path / "one", 2)
    write_mail(tmp_path / "two", 2)
    spec = {"a": ModelSpec(str(version_dir))}
    rescore(tmp_path / "one", spec, tmp_path / "out", RescoreConfig(workers=0))

    with pytest.raises(ValueError, match="holds a run of other work"):
        rescore(tmp_path / "two", spec, tmp_path / "out", RescoreConfig(workers=0))


def _command(version_dir: Path, source: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "serving.cli",
        "rescore",
        str(source),
        "--model",
        str(version_dir),
        "--output",
        str(output),
        "--workers",
        "2",
        "--chunk-size",
        "3",
    ]


def test_killed_mid_run_a_rerun_resumes_and_holds_every_message_once(version_dir, tmp_path):
    write_mail(tmp_path / "mail", 90)
    output = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.Popen(
        _command(version_dir, tmp_path / "mail", output),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    parts = output / "scores" / "slot=a"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 3:
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)  # the run and its workers, mid-write or not
    run.wait()
    written_before = len(list(parts.glob("part-*.parquet")))
    assert 3 <= written_before < 30, "the kill must land mid-run"
    assert not (output / "summary.json").exists()

    rerun = subprocess.run(
        _command(version_dir, tmp_path / "mail", output),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["read"] == 90 and summary["resumed"] == 3 * written_before
    ids = RunFolder(output).read_slot("a", ["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(f"mail:{i:03d}.eml" for i in range(90))
    assert not list(parts.glob(".*"))  # no half-written part left behind


def test_a_part_with_other_messages_than_its_chunk_is_scored_again(version_dir, tmp_path):
    write_mail(tmp_path / "mail", 4)
    spec = {"a": ModelSpec(str(version_dir))}
    config = RescoreConfig(workers=0, chunk_size=2)
    rescore(tmp_path / "mail", spec, tmp_path / "out", config)
    part = RunFolder(tmp_path / "out").part("a", 1)
    stale = pq.read_table(part).to_pylist()
    stale[0]["id"] = "someone-else"
    pq.write_table(pa.Table.from_pylist(stale, schema=pq.read_schema(part)), part)

    summary = rescore(tmp_path / "mail", spec, tmp_path / "out", config)

    assert summary.resumed == 2
    assert [r["id"] for r in slot_rows(tmp_path / "out")] == [f"mail:{i:03d}.eml" for i in range(4)]


def test_the_command_compares_two_models_with_labels_from_a_file(version_dir, tmp_path):
    from serving.cli import main

    write_mail(tmp_path / "mail", 6)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"mail:{i:03d}.eml,attack\n" for i in range(6)))
    output = tmp_path / "out"

    status = main(
        [
            "rescore",
            str(tmp_path / "mail"),
            "--model",
            str(version_dir),
            "--compare",
            str(version_dir),
            "--output",
            str(output),
            "--workers",
            "0",
            "--labels",
            str(labels),
        ]
    )

    report = json.loads((output / "comparison.json").read_text())
    assert status == 0
    assert (report["compared"], report["changed"]) == (6, 0)
    assert report["labels"]["attack"]["messages"] == 6
    assert {r["label"] for r in slot_rows(output, "b")} == {"attack"}
    assert "# Comparison of two models" in (output / "comparison.md").read_text()


def test_the_command_refuses_a_model_that_is_neither_a_version_nor_a_url(tmp_path):
    from serving.cli import main

    write_mail(tmp_path / "mail", 1)

    status = main(
        [
            "rescore",
            str(tmp_path / "mail"),
            "--model",
            str(tmp_path),
            "--output",
            str(tmp_path / "out"),
        ]
    )

    assert status == 2
    assert not (tmp_path / "out").exists()
