"""Rescoring on Spark (local mode) writes the rows the local path writes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from detection.sources import RawMessage, write_table
from serving.rescore import SCHEMA, ModelSpec, RescoreConfig, RunFolder, rescore
from tests.model_fixtures import tiny_model_version
from tests.synthetic_mail import synthetic_corpus

pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed")
from serving.rescore_spark import rescore_on_spark, session  # noqa: E402

pytestmark = pytest.mark.spark
START = datetime(2024, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def spark():
    spark = session("local[1]", app="bulwark-rescore-test", batch_rows=4)
    yield spark
    spark.stop()


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Ten messages with org, date and label columns, and one row without bytes."""
    rows = [
        (
            RawMessage(f"m{i}", "t", i, m.data),
            {"org": f"org-{i % 2}", "label": m.label, "date": START + timedelta(days=i)},
        )
        for i, m in enumerate(synthetic_corpus(10, seed=21))
    ]
    path = tmp_path_factory.mktemp("table") / "mail.parquet"
    write_table(rows, path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    broken = pq.read_table(path).to_pylist()
    broken.append({**broken[0], "id": "no-bytes", "raw": None})
    pq.write_table(pa.Table.from_pylist(broken, schema=pq.read_schema(path)), path)
    return path


def by_id(output, slot) -> dict[str, dict]:
    return {r["id"]: r for r in RunFolder(output).read_slot(slot).to_pylist()}


def test_spark_writes_the_rows_of_the_local_path(spark, table, tmp_path):
    version_dir = str(tiny_model_version()[1])
    models = {"a": ModelSpec(version_dir), "b": ModelSpec(version_dir)}
    rescore(table, models, tmp_path / "local", RescoreConfig(workers=0, chunk_size=4))

    summary = rescore_on_spark(spark, table, models, tmp_path / "spark")

    assert (summary.read, summary.scored, summary.failed) == (11, 10, 1)
    for slot in ("a", "b"):
        local, distributed = by_id(tmp_path / "local", slot), by_id(tmp_path / "spark", slot)
        assert distributed.keys() == local.keys()
        for message_id, expected in local.items():
            got = distributed[message_id]
            for column in SCHEMA.names:
                if column == "score" and expected["error"] is None:
                    assert got[column] == pytest.approx(expected[column], abs=2e-6), message_id
                elif column != "chunk":
                    assert got[column] == expected[column], (message_id, column)
    assert "'raw' column is null" in by_id(tmp_path / "spark", "a")["no-bytes"]["error"]


def test_spark_stages_any_other_source_and_keeps_its_unreadable_messages(spark, tmp_path):
    version_dir = str(tiny_model_version()[1])
    folder = tmp_path / "mail"
    folder.mkdir()
    for i, message in enumerate(synthetic_corpus(3, seed=22)):
        (folder / f"{i}.eml").write_bytes(message.data)
    (folder / "1b.eml").symlink_to(tmp_path / "nowhere.eml")
    models = {"a": ModelSpec(version_dir)}
    rescore(folder, models, tmp_path / "local", RescoreConfig(workers=0))

    summary = rescore_on_spark(spark, folder, models, tmp_path / "spark")

    local, distributed = by_id(tmp_path / "local", "a"), by_id(tmp_path / "spark", "a")
    assert (summary.read, summary.failed) == (4, 1)
    assert distributed.keys() == local.keys()
    for message_id, row in local.items():
        got = distributed[message_id]
        assert (got["index"], got["verdict"], got["error"]) == (
            row["index"],
            row["verdict"],
            row["error"],
        )
    assert "dangling symbolic link" in distributed["mail:1b.eml"]["error"]
