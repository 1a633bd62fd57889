"""A content-addressed store of pipeline stage outputs.

Contract: `StageStore(root)` keeps each stage's output in `root/<stage>/<key>/`, where
`key` is the sha256 of the stage's inputs (`stage_key(stage, inputs)`: the stage name
and a JSON-ready dict of everything the output depends on: upstream keys, data
fingerprints, the resolved configuration, the code version). `run(stage, inputs, build)`
returns the stored output when a complete one exists (no work done), and otherwise
calls `build(folder)` in a scratch folder, writes `stage.json` (the inputs, the key,
what `build` returned, the wall time) and renames the folder into place, so that a
stage killed midway leaves no output that looks complete. `force=True` rebuilds.

`code_version(paths)` is a sha256 over the Python sources under `paths`: unlike the
git commit it changes with an uncommitted edit too, so a stage never reuses an
output made by different code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RECORD = "stage.json"


@dataclass(frozen=True)
class StageResult:
    stage: str
    key: str
    path: Path
    cached: bool  # True when the stored output was reused and no work was done
    outputs: dict  # what the stage's build function returned
    seconds: float  # the wall time of the build that made the output


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def stage_key(stage: str, inputs: dict) -> str:
    """The sha256 of a stage's name and inputs; equal inputs give equal keys."""
    return hashlib.sha256(canonical_json({"stage": stage, "inputs": inputs}).encode()).hexdigest()


def code_version(paths: Iterable[str | Path]) -> str:
    """sha256 over the relative path and bytes of every .py file under `paths`."""
    digest = hashlib.sha256()
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        path = path if path.is_absolute() else REPO_ROOT / path
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(REPO_ROOT)).encode() + b"\x00")
        digest.update(file.read_bytes() + b"\x00")
    return digest.hexdigest()


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class StageStore:
    """Stage outputs under `root`, one folder per (stage, key)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> StageResult | None:
        """The complete stored output for (stage, key), or None."""
        folder = self.path(stage, key)
        record_path = folder / RECORD
        if not record_path.is_file():
            return None
        record = json.loads(record_path.read_text())
        return StageResult(stage, key, folder, True, record["outputs"], record["seconds"])

    def latest(self, stage: str) -> StageResult | None:
        """The most recently completed output of `stage` (for rerunning a later stage alone)."""
        records = sorted((self.root / stage).glob(f"*/{RECORD}"), key=lambda p: p.stat().st_mtime)
        return self.lookup(stage, records[-1].parent.name) if records else None

    def run(
        self,
        stage: str,
        inputs: dict,
        build: Callable[[Path], dict],
        force: bool = False,
    ) -> StageResult:
        """The output of `stage` for `inputs`: stored, or built now by `build(folder)`."""
        key = stage_key(stage, inputs)
        stored = None if force else self.lookup(stage, key)
        if stored is not None:
            logger.info(
                "stage %s: inputs unchanged (key %s), reusing %s", stage, key[:12], stored.path
            )
            return stored

        logger.info("stage %s: building (key %s)", stage, key[:12])
        scratch = self.root / stage / f".building-{key[:12]}-{uuid.uuid4().hex[:8]}"
        scratch.mkdir(parents=True)
        started = time.monotonic()
        try:
            outputs = build(scratch)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        seconds = round(time.monotonic() - started, 1)
        record = {"stage": stage, "key": key, "inputs": inputs, "outputs": outputs}
        record["seconds"] = seconds
        (scratch / RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")

        target = self.path(stage, key)
        if target.exists():  # a forced rebuild replaces the old output
            shutil.rmtree(target)
        scratch.rename(target)
        logger.info("stage %s: built in %.1f s into %s", stage, seconds, target)
        return StageResult(stage, key, target, False, outputs, seconds)
