"""What the behavioural baselines add: recall at a fixed false-positive rate, per category.

Contract: `simulated_report(sim_dir, config)` scores every simulated organisation
(`training.simulate` output) in time order through the real feature path
(`detection.features`: sanitise, parse, history strictly before the message, signals),
records only safe mail into that organisation's history (outbound and safe internal
mail with `record_outbound`, safe inbound with `record`), splits each organisation's
scored mail by time (the earliest `train_fraction` trains, the rest tests), fits the
models below on the training part of all organisations together and measures them on
the later part. `corpora_report(dataset_dir, config)` does the same on a dataset
built by `training.dataset` from the real corpora (its own time split; `validation`
joins `train`). Both return a `Report`; `render_markdown(report)` gives its tables.

The columns (every model is fitted on the training part only):

- text only: TF-IDF (words and word pairs) + logistic regression on the model text;
- signals only: gradient-boosted trees (`HistGradientBoostingClassifier`) on the
  whole signal vector (message, sender and recipient signals), no text;
- text + message signals: the same trees on the text model's out-of-fold score plus
  the message signals, that is everything except the behavioural baselines;
- fused: the same trees on the text score plus every signal (text, message signals
  and the baselines);
- exported model (only with `--model DIR`): an exported fusion model version (MiniLM
  and signals, ONNX) scored on the test part as it is, not refitted; its attack
  probability before the decision layer's calibration.

Recall is measured at the score threshold that flags at most 0.1% (and 1%) of the
test split's safe mail, one threshold per column over all categories; spam is
neither counted as an attack nor as safe mail here.

Run (prints the tables; writes report.json and report.md to --output):

    bulwark simulate --orgs 4 --seed 0 --output runs/simulated
    python -m training.baseline_report --simulated runs/simulated \\
        --dataset runs/corpora-dataset --output runs/baseline-report
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from detection.directory import load_directory
from detection.features import features_of, parse_with_recipients
from detection.history import SenderHistory
from detection.signals import MESSAGE_SIGNALS, REGISTRY, SIGNAL_NAMES
from detection.sources import iter_messages
from training.simulate import ARCHIVE_NAME

logger = logging.getLogger(__name__)

COLUMNS = ("text only", "signals only", "text + message signals", "fused")
MODEL_COLUMN = "exported model"  # --model: an exported fusion model, scored as it is
FPRS = (0.001, 0.01)
MESSAGE_COLUMNS = len(MESSAGE_SIGNALS)
ALL = "all attacks"


@dataclass(frozen=True)
class ReportConfig:
    """How the comparison is fitted. Defaults finish in minutes on two CPU cores."""

    train_fraction: float = 0.5  # per organisation, by time
    seed: int = 0
    text_max_features: int = 30_000
    text_c: float = 4.0  # inverse regularisation of the logistic regression
    tree_iterations: int = 300
    tree_learning_rate: float = 0.05
    folds: int = 3  # for the text score the stacked models train on

    def __post_init__(self) -> None:
        if not 0 < self.train_fraction < 1:
            raise ValueError(
                f"ReportConfig.train_fraction must be in (0, 1), got {self.train_fraction!r}"
            )
        for name in ("text_max_features", "tree_iterations", "folds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"ReportConfig.{name} must be an int >= 2, got {value!r}")


@dataclass
class Table:
    """Scored rows of one study: text, signals, label, category, split."""

    text: list[str] = field(default_factory=list)
    signals: list[list[float]] = field(default_factory=list)
    attack: list[bool] = field(default_factory=list)
    safe: list[bool] = field(default_factory=list)  # not attack and not spam
    category: list[str] = field(default_factory=list)
    train: list[bool] = field(default_factory=list)

    def add(self, text, signals, attack, safe, category, train) -> None:
        self.text.append(text)
        self.signals.append(signals)
        self.attack.append(attack)
        self.safe.append(safe)
        self.category.append(category)
        self.train.append(train)

    def __len__(self) -> int:
        return len(self.text)


@dataclass(frozen=True)
class Report:
    title: str
    recall: dict  # fpr -> category -> column -> recall
    counts: dict  # category -> attacks in the test split; "safe" -> safe test messages
    train_counts: dict
    details: dict  # parameters, seeds, timings, signal checks


# simulated streams


def _labels(folder: Path) -> dict[str, dict]:
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def score_stream(folder: Path) -> list[dict]:
    """One organisation's scored messages in time order: features as of each message.

    Returns dicts with text, signals, label, category, variant, direction and date;
    outbound mail is recorded, not returned. Raises ValueError naming the message id
    when the archive holds a message the labels file does not list.
    """
    labels = _labels(folder)
    directory = load_directory(folder / "directory.json")
    history = SenderHistory(":memory:", autocommit=False)
    rows = []
    for message in iter_messages(folder / ARCHIVE_NAME):
        row = labels.get(message.id)
        if row is None:
            raise ValueError(f"{folder}: message {message.id} is not in labels.csv")
        org, when = row["org"], datetime.fromisoformat(row["date"])
        parsed, recipients = parse_with_recipients(message.data)
        if row["direction"] == "outbound":
            history.record_outbound(org, parsed, when, recipients)
            continue
        facts = history.facts_before(org, parsed, when, recipients)
        found = features_of(parsed, facts, when, directory, recipients)
        rows.append({**row, "text": found.text, "signals": found.signals})
        if row["label"] == "safe":
            if row["direction"] == "internal":
                history.record_outbound(org, parsed, when, recipients)
            else:
                history.record(org, parsed, when, recipients)
    history.close()
    return rows


def _category(row: dict) -> str:
    if row["label"] != "attack":
        return row["label"]
    return f"{row['category']} / {row['variant']}" if row["variant"] else row["category"]


def simulated_table(sim_dir: Path, config: ReportConfig) -> tuple[Table, dict]:
    """Every organisation's scored rows, split by time within each organisation."""
    table, signal_use = Table(), Counter()
    folders = sorted(p for p in Path(sim_dir).iterdir() if (p / "labels.csv").exists())
    if not folders:
        raise FileNotFoundError(f"no simulated organisation (labels.csv) under {sim_dir}")
    for folder in tqdm(folders, desc="organisations", unit="org", disable=None):
        rows = score_stream(folder)
        cut = int(len(rows) * config.train_fraction)
        for position, row in enumerate(rows):
            attack = row["label"] == "attack"
            table.add(
                row["text"], row["signals"], attack, not attack, _category(row), position < cut
            )
            signal_use.update(
                name for name, v in zip(SIGNAL_NAMES, row["signals"], strict=True) if v
            )
        logger.info("%s: %d scored messages", folder.name, len(rows))
    return table, _signal_check(signal_use, len(table))


def _signal_check(use: Counter, total: int) -> dict:
    """Share of scored messages on which each recipient signal is non-zero."""
    names = [s.name for s in REGISTRY if s.group == "recipient"]
    return {name: round(use[name] / total, 4) if total else 0.0 for name in names}


# real corpora


def corpora_table(dataset_dir: Path) -> tuple[Table, dict]:
    """Rows of a dataset built by `training.dataset` (train + validation train)."""
    import datasets

    from detection.tensors import CLASS_NAMES

    data = datasets.load_from_disk(str(dataset_dir))
    attack_id, safe_id = CLASS_NAMES.index("attack"), CLASS_NAMES.index("safe")
    table, checks = Table(), defaultdict(Counter)
    recipient = [i for i, s in enumerate(REGISTRY) if s.group == "recipient"]
    for split in ("train", "validation", "test"):
        if split not in data:
            continue
        rows = data[split]
        for text, signals, label, source in zip(
            rows["text"], rows["signals"], rows["label"], rows["source"], strict=True
        ):
            attack = label == attack_id
            category = f"{source} (phishing)" if attack else CLASS_NAMES[label]
            table.add(text, list(signals), attack, label == safe_id, category, split != "test")
            checks[source]["messages"] += 1
            checks[source]["recipient signals non-zero"] += any(signals[i] for i in recipient)
    return table, {s: dict(c) for s, c in sorted(checks.items())}


# the models


def fit_and_score(table: Table, config: ReportConfig) -> dict[str, np.ndarray]:
    """Test-split attack scores for each column, from models fitted on the train split."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    train = np.array(table.train)
    y = np.array(table.attack, dtype=int)
    signals = np.array(table.signals, dtype=np.float32)
    texts = np.array(table.text, dtype=object)

    # text: TF-IDF + logistic regression; the stacked models see its out-of-fold score
    def text_model():
        return make_pipeline(
            TfidfVectorizer(
                ngram_range=(1, 2),
                min_df=2,
                max_features=config.text_max_features,
                sublinear_tf=True,
                dtype=np.float32,
            ),
            LogisticRegression(C=config.text_c, class_weight="balanced", max_iter=2000),
        )

    folds = StratifiedKFold(config.folds, shuffle=True, random_state=config.seed)
    text_train = cross_val_predict(
        text_model(), texts[train], y[train], cv=folds, method="predict_proba"
    )[:, 1]
    text_test = text_model().fit(texts[train], y[train]).predict_proba(texts[~train])[:, 1]

    def trees(x_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
        model = HistGradientBoostingClassifier(
            max_iter=config.tree_iterations,
            learning_rate=config.tree_learning_rate,
            class_weight="balanced",
            random_state=config.seed,
        )
        return model.fit(x_train, y[train]).predict_proba(x_test)[:, 1]

    message = signals[:, :MESSAGE_COLUMNS]
    return {
        "text only": text_test,
        "signals only": trees(signals[train], signals[~train]),
        "text + message signals": trees(
            np.column_stack([text_train, message[train]]),
            np.column_stack([text_test, message[~train]]),
        ),
        "fused": trees(
            np.column_stack([text_train, signals[train]]),
            np.column_stack([text_test, signals[~train]]),
        ),
    }


def recall_at_fpr(safe_scores: np.ndarray, attack_scores: np.ndarray, fpr: float) -> float:
    """Share of attacks scored above the threshold that flags at most `fpr` of safe mail."""
    if len(attack_scores) == 0:
        return math.nan
    ordered = np.sort(safe_scores)[::-1]
    allowed = int(math.floor(fpr * len(ordered) + 1e-9))
    threshold = ordered[allowed] if allowed < len(ordered) else -np.inf
    return float(np.mean(attack_scores > threshold))


def evaluate(table: Table, scores: dict[str, np.ndarray]) -> tuple[dict, dict, dict]:
    test = ~np.array(table.train)
    attack = np.array(table.attack)[test]
    safe = np.array(table.safe)[test]
    category = np.array(table.category, dtype=object)[test]
    categories = sorted({c for c, a in zip(category, attack, strict=True) if a})
    recall: dict = {}
    for fpr in FPRS:
        recall[fpr] = {}
        for name in [*categories, ALL]:
            chosen = attack if name == ALL else attack & (category == name)
            recall[fpr][name] = {
                column: recall_at_fpr(values[safe], values[chosen], fpr)
                for column, values in scores.items()
            }
    counts = {name: int(np.sum(attack & (category == name))) for name in categories}
    counts[ALL], counts["safe"] = int(attack.sum()), int(safe.sum())
    train = np.array(table.train)
    train_counts = Counter(np.array(table.category, dtype=object)[train].tolist())
    return recall, counts, dict(train_counts)


def model_scores(table: Table, version_dir: Path) -> np.ndarray:
    """Test-split attack probabilities of an exported fusion model (ONNX), as is.

    The model is not refitted: it is whatever the export was trained on. Raises
    ValueError when the model expects other signals than this code computes.
    """
    from detection.tensors import CLASS_NAMES
    from serving.scorer import OnnxFusion

    test = [i for i, train in enumerate(table.train) if not train]
    fusion = OnnxFusion(Path(version_dir))
    probabilities = fusion.probabilities(
        [table.text[i] for i in test], [table.signals[i] for i in test], progress="model"
    )
    return probabilities[:, CLASS_NAMES.index("attack")]


def build_report(
    title: str,
    table: Table,
    config: ReportConfig,
    details: dict,
    model_dir: Path | None = None,
) -> Report:
    """Fit the columns (plus, with `model_dir`, an exported model's column) and measure."""
    started = time.monotonic()
    scores = fit_and_score(table, config)
    if model_dir is not None:
        scores[MODEL_COLUMN] = model_scores(table, model_dir)
        details = {**details, "model": str(model_dir)}
    recall, counts, train_counts = evaluate(table, scores)
    details = {
        **details,
        "config": asdict(config),
        "fit_seconds": round(time.monotonic() - started, 1),
    }
    return Report(title, recall, counts, train_counts, details)


def simulated_report(sim_dir: Path, config: ReportConfig, model_dir: Path | None = None) -> Report:
    started = time.monotonic()
    table, check = simulated_table(sim_dir, config)
    simulation = json.loads((Path(sim_dir) / "simulation.json").read_text())
    details = {
        "simulation": simulation["config"],
        "bodies": simulation["bodies"],
        "scored_messages": len(table),
        "feature_seconds": round(time.monotonic() - started, 1),
        "recipient_signal_nonzero_share": check,
    }
    title = f"Simulated organisations ({sim_dir})"
    return build_report(title, table, config, details, model_dir)


def corpora_report(
    dataset_dir: Path, config: ReportConfig, model_dir: Path | None = None
) -> Report:
    table, check = corpora_table(dataset_dir)
    details = {"dataset": str(dataset_dir), "recipient_signals_by_source": check}
    return build_report(f"Real corpora ({dataset_dir})", table, config, details, model_dir)


# output


def render_markdown(report: Report) -> str:
    lines = [f"### {report.title}", ""]
    for fpr in FPRS:
        columns = list(report.recall[fpr][ALL])
        lines += [
            f"Recall at {fpr:.1%} FPR (test split: {report.counts['safe']} safe messages)",
            "",
            "| category | attacks | " + " | ".join(columns) + " |",
            "|---|---:|" + "---:|" * len(columns),
        ]
        for name, by_column in report.recall[fpr].items():
            cells = " | ".join(_percent(by_column[c]) for c in columns)
            lines.append(f"| {name} | {report.counts[name]} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1%}"


def write(reports: Sequence[Report], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    payload = [
        {
            "title": r.title,
            "recall": {str(f): v for f, v in r.recall.items()},
            "counts": r.counts,
            "train_counts": r.train_counts,
            "details": r.details,
        }
        for r in reports
    ]
    (output / "report.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (output / "report.md").write_text("\n".join(render_markdown(r) for r in reports))


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--simulated", type=Path, help="output folder of `bulwark simulate`")
    parser.add_argument("--dataset", type=Path, help="a dataset folder built by training.dataset")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-fraction", type=float, default=ReportConfig.train_fraction)
    parser.add_argument(
        "--model", type=Path, help="also score the test split with this exported model version"
    )
    args = parser.parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args.simulated and not args.dataset:
        parser.error("give --simulated, --dataset or both")

    config = ReportConfig(train_fraction=args.train_fraction, seed=args.seed)
    reports = []
    if args.simulated:
        reports.append(simulated_report(args.simulated, config, args.model))
    if args.dataset:
        reports.append(corpora_report(args.dataset, config, args.model))
    write(reports, args.output)
    for report in reports:
        print(render_markdown(report))
        print(json.dumps(report.details, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
