"""The Spark job and the streaming store give the same baselines on the same stream."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detection.baselines import SQLiteBaselineStore
from detection.signals import baseline_signals

pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed")
from training.baselines_spark import (  # noqa: E402
    SIGNAL_COLUMNS,
    compute,
    load_into,
    record_from_row,
    session,
    write,
)

pytestmark = pytest.mark.spark
KEY = b"spark-parity-test-key-0123456789"
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
STAFF = [f"staff{i}@example.com" for i in range(5)]
OUTSIDE = [f"vendor{i}@example.net" for i in range(4)] + [
    f"client{i}@example.org" for i in range(3)
]
LOOKALIKES = ["billing@examp1e.com", "ceo@exarnple.com", "pay@example-net.org"]
NAMES = ["Dana Staff", "Vendor Accounts", "The CEO", ""]


def synthetic_history(n: int, seed: int) -> list[dict]:
    """Inbound and outbound mail of two organisations, with replies, ties and lookalikes."""
    rng = random.Random(seed)
    rows, when = [], T0
    for i in range(n):
        when += rng.choice([timedelta(0), timedelta(microseconds=1), timedelta(hours=3)])
        org = rng.choice(["org-a", "org-a", "org-b"])
        outbound = rng.random() < 0.3
        if outbound:
            sender, recipients = rng.choice(STAFF), rng.sample(OUTSIDE + STAFF, rng.randint(1, 3))
        else:
            sender = rng.choice(OUTSIDE + STAFF + LOOKALIKES)
            recipients = rng.sample(STAFF, rng.randint(1, 4))
        earlier = [r["message_id"] for r in rows[-30:] if r["org"] == org]
        refs = rng.sample(earlier, min(len(earlier), rng.randint(0, 2)))
        if rng.random() < 0.1:
            refs.append(f"forged{i}@example.net")
        label = None if outbound else rng.choice(["safe"] * 6 + ["spam", "attack", None])
        rows.append(
            {
                "id": f"m{i:04d}", "org": org, "time": when,
                "direction": "outbound" if outbound else "inbound", "sender": sender,
                "display_name": rng.choice(NAMES), "recipients": recipients,
                "message_id": f"<m{i}@example.com>", "in_reply_to": refs[-1] if refs else None,
                "references": refs or None, "label": label,
            }
        )  # fmt: skip
    return rows


def write_parquet(rows: list[dict], path) -> None:
    schema = pa.schema(
        [("id", pa.string()), ("org", pa.string()), ("time", pa.timestamp("us", tz="UTC")),
         ("direction", pa.string()), ("sender", pa.string()), ("display_name", pa.string()),
         ("recipients", pa.list_(pa.string())), ("message_id", pa.string()),
         ("in_reply_to", pa.string()), ("references", pa.list_(pa.string())),
         ("label", pa.string())]
    )  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def stream_signals(table: pa.Table) -> tuple[dict[str, dict[str, float]], SQLiteBaselineStore]:
    """The streaming path: facts_before each inbound message, then record it if safe."""
    ts = table.column("time").cast(pa.int64()).to_pylist()
    rows = [dict(row, ts=t) for row, t in zip(table.to_pylist(), ts, strict=True)]
    store, out = SQLiteBaselineStore(key=KEY), {}
    for row in sorted(rows, key=lambda r: r["ts"]):
        rec = record_from_row(row)
        if rec.direction == "inbound":
            out[row["id"]] = baseline_signals(store.facts_for(rec))
            if row["label"] == "safe":
                store.record_mail(rec)
        else:
            store.record_mail(rec)
    return out, store


@pytest.fixture(scope="module")
def spark():
    spark = session("local[1]", app="bulwark-baselines-test", partitions=1)
    yield spark
    spark.stop()


def test_spark_and_streaming_paths_give_identical_signals(spark, tmp_path):
    path = tmp_path / "history.parquet"
    write_parquet(synthetic_history(300, seed=7), path)
    expected, streamed = stream_signals(pq.read_table(path))

    write(compute(spark, spark.read.parquet(str(path)), KEY), tmp_path / "out")
    got = {row["id"]: row for row in pq.read_table(tmp_path / "out" / "signals").to_pylist()}
    assert got.keys() == expected.keys()
    mismatched = [(i, n) for i in expected for n in SIGNAL_COLUMNS if got[i][n] != expected[i][n]]
    assert not mismatched, mismatched[:10]
    # the stream exercises the signals it is meant to (none is constant)
    for name in (
        "lookalike_correspondent_domain",
        "reply_to_org_thread",
        "display_name_new_address",
        "reply_to_unknown_thread",
        "internal_sender",
        "recipient_first_time_rate",
    ):
        assert len({v[name] for v in expected.values()}) > 1, name

    # the tables themselves: loaded into a store, they answer as the streamed store does
    loaded = SQLiteBaselineStore(key=KEY)
    load_into(loaded, tmp_path / "out")
    table = pq.read_table(path)
    ts = table.column("time").cast(pa.int64()).to_pylist()
    for row, t in zip(table.to_pylist(), ts, strict=True):
        rec = record_from_row(dict(row, ts=t))
        if rec.direction == "inbound":
            assert loaded.facts_for(rec) == streamed.facts_for(rec)


def test_spark_job_rejects_a_table_without_the_required_columns(spark):
    frame = spark.createDataFrame([("m1", "org")], "id string, org string")
    with pytest.raises(ValueError, match=r"wrong: \['time \(timestamp, got missing\)'"):
        compute(spark, frame, KEY)
