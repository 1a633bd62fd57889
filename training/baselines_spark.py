"""The behavioural baselines in bulk: the same tables and per-message signals on Spark.

Contract: `compute(spark, messages, key, config) -> SparkBaselines` reads a DataFrame
of historical messages (the `MESSAGE_COLUMNS` below) and returns the store's tables
(series, correspondents, variants: exactly the rows `detection.baselines` keeps, with
every identity a keyed hash) and one row of sender and recipient signals per inbound
message, each computed from the history strictly before that message. The signals
equal those of streaming the same messages in time order through a baseline store
(`facts_before` for each inbound message, then `record` if it is labelled safe;
`record_outbound` for each outbound one); `tests/training/test_baselines_spark.py`
holds the two to the same values.

Input columns (Parquet):

| column | type | meaning |
|---|---|---|
| id | string | unique, stable id of the message |
| org | string | the organisation (tenant) |
| time | timestamp | when the organisation received or sent it (UTC) |
| direction | string | "inbound" or "outbound" |
| sender | string | the From address |
| display_name | string | the From display name (may be null) |
| recipients | array<string> | To and Cc addresses |
| message_id | string | Message-ID (may be null) |
| in_reply_to | string | In-Reply-To (may be null) |
| references | array<string> | References, oldest first (may be null) |
| label | string | "safe", "spam" or "attack"; null when unknown (counts as not safe) |

Run (the key is read from a file so it never appears in a process list):

    .venv/bin/python -m training.baselines_spark --input history.parquet --output out/ \\
        --key-file tenant.key [--master local[*]]
    PATH=.venv/bin:$PATH spark-submit training/baselines_spark.py --input ... --output ... \
        --key-file ...

Writes Parquet folders `series/`, `correspondents/`, `variants/` and `signals/` under
the output folder; `load_into(store, output)` loads the tables into an empty store.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detection.baselines import (  # noqa: E402
    DEFAULT_CONFIG,
    DEFAULT_KEY,
    KEY_FILE_ENV,
    BaselineConfig,
    Keyer,
    MailRecord,
    Totals,
    assemble_facts,
    label_variants,
    make_record,
    nearest_distance,
    probe_plan,
    query_index,
    read_key_file,
    record_plan,
    resolve_key,
)
from detection.signals import BASELINE_SIGNALS, baseline_signals  # noqa: E402

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MESSAGE_COLUMNS = {
    "id": "string",
    "org": "string",
    "time": "timestamp",
    "direction": "string",
    "sender": "string",
    "display_name": "string",
    "recipients": "array<string>",
    "message_id": "string",
    "in_reply_to": "string",
    "references": "array<string>",
    "label": "string",
}
SIGNAL_COLUMNS = tuple(s.name for s in BASELINE_SIGNALS)


@dataclass(frozen=True)
class SparkBaselines:
    series: object  # DataFrame (k binary, ts long, n long, w long)
    correspondents: object  # DataFrame (dom binary, ts long)
    variants: object  # DataFrame (v binary, dom binary, pos string, len int, ts long)
    signals: object  # DataFrame (id, org, ts, one double column per signal)


def record_from_row(row, config: BaselineConfig = DEFAULT_CONFIG) -> MailRecord:
    """A `MailRecord` from one input row whose `time` is given as `ts` (microseconds)."""
    return make_record(
        row["org"],
        row["ts"],
        row["direction"],
        row["sender"] or "",
        row["display_name"] or "",
        row["recipients"] or (),
        row["message_id"] or "",
        row["in_reply_to"] or "",
        row["references"] or (),
        config,
    )


def check_columns(messages) -> None:
    """Raises ValueError naming every required column that is missing or mistyped."""
    types = dict(messages.dtypes)
    wrong = [
        f"{name} ({expected}, got {types.get(name, 'missing')})"
        for name, expected in MESSAGE_COLUMNS.items()
        if not types.get(name, "").startswith(expected)
    ]
    if wrong:
        raise ValueError(f"message table must have the columns {MESSAGE_COLUMNS}; wrong: {wrong}")


def ship_code(spark) -> None:
    """Send the `detection` package to the executors (a zip, as Spark expects)."""
    folder = Path(tempfile.mkdtemp(prefix="bulwark-spark-"))
    archive = folder / "bulwark_detection.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((PROJECT_ROOT / "detection").rglob("*.py")):
            zf.write(path, path.relative_to(PROJECT_ROOT))
    spark.sparkContext.addPyFile(str(archive))


def compute(
    spark, messages, key: bytes = DEFAULT_KEY, config: BaselineConfig = DEFAULT_CONFIG
) -> SparkBaselines:
    """The baseline tables and the per-message signals (see the module contract)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    check_columns(messages)
    rows = messages.withColumn("ts", F.unix_micros(F.col("time"))).drop("time")
    records = rows.rdd.map(lambda row: (row["id"], row["label"], record_from_row(row, config)))
    records.cache()
    recorded = records.filter(lambda r: r[2].direction == "outbound" or r[1] == "safe")
    inbound = records.filter(lambda r: r[2].direction == "inbound")

    # what recording each message adds (the same plan the stores apply)
    def plans(partition):
        keyer = Keyer(key)
        for _, _, rec in partition:
            yield rec, record_plan(rec, keyer)

    planned = recorded.mapPartitions(plans)
    planned.cache()
    events = spark.createDataFrame(
        planned.flatMap(lambda p: [(e.key, e.ts, e.dn, e.dw, e.flag_key) for e in p[1].events]),
        "k binary, ts long, dn long, dw long, flag binary",
    )
    links = spark.createDataFrame(
        planned.flatMap(lambda p: [(d, m, p[1].ts) for d, m in p[1].links]),
        "d binary, m binary, ts long",
    )
    corr_rows = planned.flatMap(
        lambda p: [(dom, (p[1].ts, p[0].org, domain)) for dom, domain in p[1].correspondents]
    ).reduceByKey(min)

    # a flagged weight counts when its flag key's first event is at this very time
    first = events.groupBy("k").agg(F.min("ts").alias("first"))
    flagged = events.join(first.withColumnRenamed("k", "flag"), "flag", "left").select(
        "k", "ts", "dn",
        F.when(F.col("flag").isNull(), F.col("dw"))
        .otherwise((F.col("first") == F.col("ts")).cast("long"))
        .alias("dw"),
    )  # fmt: skip
    # distinct members: one event at each member's first time
    distinct = links.groupBy("d", "m").agg(F.min("ts").alias("ts")).select(
        F.col("d").alias("k"), "ts", F.lit(1).cast("long").alias("dn"),
        F.lit(0).cast("long").alias("dw"),
    )  # fmt: skip
    running = Window.partitionBy("k").orderBy("ts").rowsBetween(Window.unboundedPreceding, 0)
    series = (
        flagged.unionByName(distinct)
        .groupBy("k", "ts")
        .agg(F.sum("dn").alias("dn"), F.sum("dw").alias("dw"))
        .select(
            "k", "ts", F.sum("dn").over(running).alias("n"), F.sum("dw").over(running).alias("w")
        )
    )
    series.cache()

    correspondents = spark.createDataFrame(
        corr_rows.map(lambda c: (c[0], c[1][0])), "dom binary, ts long"
    )

    def variant_rows(partition):
        keyer = Keyer(key)
        for dom, (ts, org, domain) in partition:
            length, variants = label_variants(org, domain, keyer, config)
            for v, pos in variants:
                yield v, dom, pos, length, ts

    variants_rdd = corr_rows.mapPartitions(variant_rows)
    variants = spark.createDataFrame(
        variants_rdd, "v binary, dom binary, pos string, len int, ts long"
    )

    # every lookup, answered as of its time: probes sort before series rows of equal ts
    def probes(partition):
        keyer = Keyer(key)
        for message_id, _, rec in partition:
            for name, k, t in probe_plan(rec, keyer, config):
                yield message_id, name, k, t

    probe_df = spark.createDataFrame(
        inbound.mapPartitions(probes), "id string, name string, k binary, ts long"
    )
    as_of = Window.partitionBy("k").orderBy("ts", "kind").rowsBetween(Window.unboundedPreceding, 0)
    answers = (
        probe_df.select("id", "name", "k", "ts", F.lit(0).alias("kind"),
                        F.lit(None).cast("long").alias("n"), F.lit(None).cast("long").alias("w"),
                        F.lit(None).cast("long").alias("row_ts"))
        .unionByName(series.select(F.lit(None).cast("string").alias("id"),
                                   F.lit(None).cast("string").alias("name"), "k", "ts",
                                   F.lit(1).alias("kind"), "n", "w", F.col("ts").alias("row_ts")))
        .select("id", "name", "k", "kind",
                F.last("n", ignorenulls=True).over(as_of).alias("n"),
                F.last("w", ignorenulls=True).over(as_of).alias("w"),
                F.last("row_ts", ignorenulls=True).over(as_of).alias("last"))
        .where((F.col("kind") == 0) & F.col("n").isNotNull())
        .join(series.groupBy("k").agg(F.min("ts").alias("first")), "k")
        .select("id", "name", "n", "w", "first", "last")
    )  # fmt: skip

    # lookalikes: the sender's label variants against the correspondents' known before
    def queries(partition):
        keyer = Keyer(key)
        for message_id, _, rec in partition:
            if not rec.sender:
                continue
            length, query = label_variants(rec.org, rec.domain, keyer, config)
            own = keyer(rec.org, "corr", rec.domain)
            for v, pos in query:
                yield v, (message_id, pos, length, own, rec.ts)

    stored = variants_rdd.map(lambda r: (r[0], (r[1], r[2], r[3], r[4])))
    lookalikes = (
        inbound.mapPartitions(queries)
        .join(stored)
        .filter(lambda kv: kv[1][1][3] < kv[1][0][4] and kv[1][1][0] != kv[1][0][3])
        .map(lambda kv: (kv[1][0][0], (kv[0], kv[1][0][1], kv[1][0][2], kv[1][1][1], kv[1][1][2])))
        .groupByKey()
        .mapValues(lambda hits: _distance(hits, config))
    )

    # facts, then signals, with the same code the stores run
    grouped = answers.rdd.map(
        lambda r: (r["id"], (r["name"], Totals(r["n"], r["w"], r["first"], r["last"])))
    ).groupByKey()
    joined = (
        inbound.map(lambda r: (r[0], r[2]))
        .leftOuterJoin(grouped)
        .leftOuterJoin(lookalikes)
        .map(lambda kv: _signal_row(kv[0], kv[1][0][0], kv[1][0][1], kv[1][1], config))
    )
    schema = "id string, org string, ts long, " + ", ".join(f"{n} double" for n in SIGNAL_COLUMNS)
    signals = spark.createDataFrame(joined, schema)
    return SparkBaselines(series, correspondents, variants, signals)


def _distance(hits, config: BaselineConfig) -> int:
    hits = list(hits)
    length = hits[0][2]
    index = query_index(dict.fromkeys((v, qpos) for v, qpos, _, _, _ in hits))
    matches = dict.fromkeys((v, pos, n) for v, _, _, pos, n in hits)
    return nearest_distance(length, index, matches, config.lookalike_max_distance)


def _signal_row(message_id, rec: MailRecord, answers, lookalike, config: BaselineConfig):
    facts = assemble_facts(rec, dict(answers or ()), -1 if lookalike is None else lookalike, config)
    values = baseline_signals(facts)
    return (message_id, rec.org, rec.ts, *(values[name] for name in SIGNAL_COLUMNS))


def write(result: SparkBaselines, output: str | Path) -> None:
    for name in ("series", "correspondents", "variants", "signals"):
        getattr(result, name).write.mode("overwrite").parquet(str(Path(output) / name))


def load_into(store, output: str | Path) -> None:
    """Load the tables `write` produced into an empty store (`load` of either store)."""
    import pyarrow.parquet as pq

    def rows(name: str):
        table = pq.read_table(Path(output) / name)
        return zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)

    store.load(rows("series"), rows("correspondents"), rows("variants"))


def session(master: str | None = None, app: str = "bulwark-baselines", partitions: int = 8):
    """A SparkSession that runs this project's Python on the executors.

    `master` None keeps spark-submit's (local[*] under plain `python -m`).
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder if master is None else SparkSession.builder.master(master)
    spark = (
        builder.appName(app)
        .config("spark.sql.shuffle.partitions", str(partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    ship_code(spark)
    return spark


def read_key(path: str | None) -> bytes:
    """The key in `path`; without one, the file `$BULWARK_HISTORY_KEY_FILE` names; else
    the public default key (with a warning). Raises ValueError for a bad key file."""
    key = read_key_file(path) if path else resolve_key()
    if key == DEFAULT_KEY:
        logger.warning(
            "no --key-file nor %s: identities are hashed with the public default key",
            KEY_FILE_ENV,
        )
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="Parquet table of historical messages")
    parser.add_argument("--output", required=True, help="folder for the tables and signals")
    parser.add_argument(
        "--key-file",
        help=f"file holding the tenant's hashing key, 16-64 bytes (default: ${KEY_FILE_ENV})",
    )
    parser.add_argument("--master", default=None, help="Spark master (default: spark-submit's)")
    parser.add_argument("--window-days", type=int, default=DEFAULT_CONFIG.window_days)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    config = BaselineConfig(window_days=args.window_days)
    spark = session(args.master)
    messages = spark.read.parquet(args.input)
    logger.info("computing baselines for %d messages", messages.count())
    result = compute(spark, messages, read_key(args.key_file), config)
    write(result, args.output)
    logger.info("wrote series, correspondents, variants and signals to %s", args.output)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
