"""Batch rescoring on Spark: the same scoring as `serving.rescore`, spread over a cluster.

Contract: `rescore_on_spark(spark, source, models, output, config)` scores every
message of `source` with each slot's model ("a", and "b" to compare) and writes the
same rows as the local path (`serving.rescore.SCHEMA`) to
``output/scores/slot=a/`` and ``slot=b/``, then ``failures.jsonl``, ``summary.json``
and, with two models, ``comparison.json`` / ``.md``. A message scores the same here
as locally: each executor runs `serving.rescore`'s own models (`InProcessModel`,
`ServerModel`) on the rows `mapInPandas` hands it, built by the same `table_row`.

- Input: a Parquet table of raw messages (file or folder; columns ``id`` and ``raw``,
  optional ``kind``, ``org``, ``date``, ``label``) is read by Spark directly; any other
  source (archive, mbox, directory...) is first written into such a table on the
  driver (``output/staged.parquet``). A message's ``index`` is its position in the
  table as Spark reads it (for a folder of several files, Spark's file order).
- Models: an exported version directory is shipped to the executors in one zip with
  `SparkContext.addArchive` (with the history and directory files), and each executor's
  Python worker loads it once, on its first batch, and keeps it for every later task
  (Spark reuses its Python workers). A Triton URL instead sends the work to that
  server: each task keeps at most ``--concurrency`` requests in flight.
- Failure: Spark retries a failed task; a job that dies leaves no committed output and
  a rerun scores everything again (the local path is the resumable one).

Run (locally, or on a cluster whose executors have this project's environment):

    .venv/bin/python -m serving.rescore_spark SOURCE --model A [--compare B] --output DIR
    PATH=.venv/bin:$PATH spark-submit serving/rescore_spark.py SOURCE --model A --output DIR
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detection.sources import is_table, table_message, write_table  # noqa: E402
from serving.rescore import (  # noqa: E402
    SCHEMA,
    ModelSpec,
    RescoreConfig,
    RescoreSummary,
    RunFolder,
    ServerSpec,
    check_exactly_once,
    open_spec,
    read_labels,
    read_rows,
    table_row,
    verdict_table,
    write_failures_and_summary,
)

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_PACKAGES = ("detection", "serving")
_SPARK_TYPES = {
    "string": "string",
    "int64": "bigint",
    "double": "double",
    "list<item: string>": "array<string>",
    "timestamp[us, tz=UTC]": "timestamp",
}


@dataclass(frozen=True)
class ShippedModel:
    """A model version sent with `SparkContext.addArchive`: opened from the executor's copy."""

    name: str  # the shipped zip's name: model/, and history.sqlite, directory.* if any
    threads: int = 1

    def open(self):
        from pyspark import SparkFiles

        base = Path(SparkFiles.get(self.name))
        history = base / "history.sqlite"
        directory = next(base.glob("directory.*"), None)
        spec = ModelSpec(
            str(base / "model"),
            str(history) if history.exists() else None,
            str(directory) if directory else None,
            self.threads,
        )
        return spec.open()


def output_ddl() -> str:
    """Spark's schema of the output rows: the local path's columns plus the slot."""
    columns = [f"`{f.name}` {_SPARK_TYPES[str(f.type)]}" for f in SCHEMA]
    return ", ".join([*columns, "`slot` string"])


def ship_code(spark) -> None:
    """Send the project's packages to the executors (a zip, as Spark expects)."""
    folder = Path(tempfile.mkdtemp(prefix="bulwark-rescore-code-"))
    archive = folder / "bulwark_rescore.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for package in SHIPPED_PACKAGES:
            for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
                zf.write(path, path.relative_to(PROJECT_ROOT))
    spark.sparkContext.addPyFile(str(archive))


def ship_model(spark, spec: ModelSpec, slot: str, staging: Path) -> ShippedModel:
    """Pack the version with its history and directory files into one zip under a name
    unique to this job, and send it with `SparkContext.addArchive`: every executor
    fetches it from the driver and unpacks it (no shared filesystem is needed)."""
    name = f"bulwark-rescore-{slot}-{os.getpid()}.zip"
    members = [(path, f"model/{path.name}") for path in sorted(Path(spec.version_dir).iterdir())]
    if spec.history:
        members.append((Path(spec.history), "history.sqlite"))
    if spec.directory:
        members.append((Path(spec.directory), f"directory{Path(spec.directory).suffix}"))
    with zipfile.ZipFile(staging / name, "w", zipfile.ZIP_STORED) as archive:
        for path, member in members:
            if path.is_file():
                archive.write(path, member)
    spark.sparkContext.addArchive(str(staging / name))
    return ShippedModel(name, spec.threads)


def session(master: str | None = None, app: str = "bulwark-rescore", batch_rows: int = 256):
    """A SparkSession running this project's Python, with Arrow batches of `batch_rows`
    messages; `master` None keeps spark-submit's."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder if master is None else SparkSession.builder.master(master)
    spark = (
        builder.appName(app)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
        # timestamps as UTC instants, read back as the local path writes them
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .getOrCreate()
    )
    ship_code(spark)
    return spark


def input_frame(spark, source: str | Path, output: Path, config: RescoreConfig, labels: dict):
    """The messages as a DataFrame with id, raw, kind, org, date (text), label, index."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType, StructField, StructType

    path = Path(source)
    if not is_table(path):
        path = output / "staged.parquet"
        rows = read_rows(source, config, labels)
        staged = (_staged(row) for row in rows)
        logger.info("staged %d messages of %s into %s", write_table(staged, path), source, path)
    frame = spark.read.parquet(str(path))
    missing = sorted({"id", "raw"} - set(frame.columns))
    if missing:
        raise ValueError(f"table {str(path)!r} lacks the columns {missing}; it has {frame.columns}")
    defaults = {"kind": "rfc822", "org": None, "date": None, "label": None, "read_error": None}
    for column, value in defaults.items():
        if column not in frame.columns:
            frame = frame.withColumn(column, F.lit(value).cast("string"))
    if dict(frame.dtypes)["date"].startswith("timestamp"):
        frame = frame.withColumn("date", F.date_format("date", "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"))
    frame = frame.select(
        "id", "raw", "kind", "org", "date", F.col("label").cast("string"), "read_error"
    )
    schema = StructType([*frame.schema.fields, StructField("index", LongType(), False)])
    indexed = frame.rdd.zipWithIndex().map(lambda pair: (*pair[0], pair[1]))
    return spark.createDataFrame(indexed, schema)


def _staged(row) -> tuple:
    """A row for the staged table; one the driver could not read keeps its error."""
    message, error = row.message, row.message.error
    if error is not None:
        message = replace(message, error=None)
    return message, {"org": row.org, "label": row.label, "read_error": error}


_EXECUTOR_MODELS: dict = {}


def _models_here(specs: dict) -> dict:
    """Each slot's model in this Python worker, opened on first use and kept."""
    for slot, spec in specs.items():
        if (slot, spec) not in _EXECUTOR_MODELS:
            _EXECUTOR_MODELS[(slot, spec)] = spec.open()
    return {slot: _EXECUTOR_MODELS[(slot, spec)] for slot, spec in specs.items()}


def _plain(value):
    """A pandas cell as plain Python: None for missing, int for a whole number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def partition_scorer(specs: dict, source_name: str, org: str, labels: dict):
    """The function `mapInPandas` runs: batches of messages in, the output rows out."""

    def score(batches: Iterator) -> Iterator:
        from pyspark import TaskContext

        models = _models_here(specs)
        part = TaskContext.get().partitionId()
        for batch in batches:
            rows = []
            for values in batch.to_dict("records"):
                values = {k: _plain(v) for k, v in values.items()}
                label = values.get("label")
                values["label"] = (
                    int(label) if isinstance(label, str) and label.isdigit() else label
                )
                index = values.pop("index")
                where = f"{source_name}#{index}"  # a single table file's row, as read locally
                message, extra = table_message(values, source_name, index, where)
                rows.append(table_row(message, extra, org, labels))
            for slot, model in models.items():
                table = verdict_table(rows, model.score(rows), model.version, part)
                frame = table.to_pandas()
                frame["slot"] = slot
                yield frame

    return score


def rescore_on_spark(
    spark,
    source: str | Path,
    models: dict[str, ModelSpec | ServerSpec],
    output: str | Path,
    config: RescoreConfig | None = None,
    labels_path: str | Path | None = None,
) -> RescoreSummary:
    """Score `source` on Spark into `output` (see the module contract)."""
    config = config or RescoreConfig()
    started = time.monotonic()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    labels = read_labels(labels_path) if labels_path else {}
    frame = input_frame(spark, source, output, config, labels)
    staging = Path(tempfile.mkdtemp(prefix="bulwark-rescore-models-"))
    try:
        specs = {
            slot: ship_model(spark, spec, slot, staging) if isinstance(spec, ModelSpec) else spec
            for slot, spec in sorted(models.items())
        }
        scorer = partition_scorer(specs, Path(source).name, config.org, labels)
        scored = frame.mapInPandas(scorer, output_ddl())
        scored.write.mode("overwrite").partitionBy("slot").parquet(str(output / "scores"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    folder = RunFolder(output)
    for slot in models:
        check_exactly_once(folder, slot)
    read = folder.read_slot("a", ["id"]).num_rows
    summary = RescoreSummary(read=read, chunks=frame.rdd.getNumPartitions())
    summary.models = {slot: _first_model(folder, slot) for slot in sorted(models)}
    summary.seconds = round(time.monotonic() - started, 2)
    summary.messages_per_second = round(read / summary.seconds, 2) if summary.seconds else 0.0
    write_failures_and_summary(folder, sorted(models), summary)
    return summary


def _first_model(folder: RunFolder, slot: str) -> str | None:
    models = folder.read_slot(slot, ["model"]).column("model").unique().to_pylist()
    return models[0] if models else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a Parquet table of raw messages, or any message source")
    parser.add_argument("--model", required=True, help="exported version directory or Triton URL")
    parser.add_argument("--compare", help="a second model (directory or URL) to compare with")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--master", help="Spark master (default: spark-submit's, or local[*])")
    parser.add_argument("--org", default="default", help="org of messages a table gives none")
    parser.add_argument("--history", help="SQLite sender-history file (read as of each message)")
    parser.add_argument("--directory", help="the organisation's directory file (JSON or TOML)")
    parser.add_argument("--labels", help="Parquet or CSV file of id,label for the comparison")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per task")
    parser.add_argument("--batch-rows", type=int, default=256, help="messages per Arrow batch")
    parser.add_argument("--text-records", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    from serving.compare import write_comparison

    config = RescoreConfig(org=args.org, text_records=args.text_records or None)
    try:
        models = {
            "a": open_spec(args.model, config, args.history, args.directory, args.concurrency)
        }
        if args.compare:
            models["b"] = open_spec(
                args.compare, config, args.history, args.directory, args.concurrency
            )
    except ValueError as error:
        logger.error("cannot rescore: %s", error)
        return 2
    spark = session(args.master, batch_rows=args.batch_rows)
    try:
        summary = rescore_on_spark(spark, args.source, models, args.output, config, args.labels)
    finally:
        spark.stop()
    logger.info("summary: %s", asdict(summary))
    if "b" in models:
        write_comparison(args.output)
    return summary.status


if __name__ == "__main__":
    sys.exit(main())
