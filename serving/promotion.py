"""Promotion and rollback of model versions, hot-loaded by Triton in explicit mode.

The served version is the repository's highest numbered version directory: the model's
config.pbtxt keeps `version_policy: { latest: { num_versions: 1 } }`. So:

- `promote(candidate_dir, repository, lineage, server_url)` copies a candidate version
  (exported by training/export.py) to the next free version number, with
  `lineage.json` beside it, renaming it into place only once complete; with a
  `server_url` it then asks Triton to load the model. In explicit mode Triton loads the
  new version while the old one keeps serving, routes new requests to the new one and
  unloads the old one once its requests are answered: no request fails.
- `rollback(repository, server_url, reason)` renames the served version to
  `rolled-back-<n>` (a name Triton ignores: it does not start with a digit) with a
  `rollback.json` saying when and why, and loads the model again, so the previous
  version serves, the same way. Version numbers are never reused.
- `served_versions(server_url, model)` says which versions Triton has loaded.

Promotion and rollback take a lock file in the model folder, so two of them never
interleave (Triton may load a model twice when two loads race).

Run:
    bulwark rollback --repository model_repository --server http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from serving.client import parse_url
from serving.pbtxt import CONFIG_FILE, MODEL_NAME, ServingSettings, write_config

logger = logging.getLogger(__name__)

RETIRED = re.compile(r"^(?:rolled-back|rejected)-(\d+)$")
LINEAGE_FILE = "lineage.json"
LOAD_TIMEOUT_S = 120.0


class PromotionError(RuntimeError):
    """A promotion or rollback could not be done; the message says what and why."""


def numbered_versions(repository: Path, model: str = MODEL_NAME) -> list[int]:
    """The version numbers Triton would see, ascending."""
    folder = Path(repository) / model
    return sorted(int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit())


def production_version(repository: Path, model: str = MODEL_NAME) -> int | None:
    """The version Triton serves under the latest-1 policy, or None when there is none."""
    versions = numbered_versions(repository, model)
    return versions[-1] if versions else None


def next_free_version(repository: Path, model: str = MODEL_NAME) -> int:
    """One past every version ever used, retired ones included."""
    folder = Path(repository) / model
    used = numbered_versions(repository, model)
    used += [int(m.group(1)) for p in folder.glob("*") if (m := RETIRED.match(p.name))]
    return max(used, default=0) + 1


@contextmanager
def repository_lock(repository: Path, model: str = MODEL_NAME) -> Iterator[None]:
    folder = Path(repository) / model
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".promotion.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def promote(
    candidate_dir: Path,
    repository: Path,
    lineage: dict,
    server_url: str | None = None,
    model: str = MODEL_NAME,
) -> Path:
    """Publish `candidate_dir` as the next version of `model`; load it when a server is given.

    Raises PromotionError when the candidate is not an exported version, or when the
    server does not load it (the new version is then renamed `rejected-<n>` and the
    previous one loaded again).
    """
    candidate_dir, repository = Path(candidate_dir), Path(repository)
    missing = [
        n for n in ("model.onnx", "bulwark.json", "model.py") if not (candidate_dir / n).is_file()
    ]
    if missing:
        raise PromotionError(
            f"candidate {candidate_dir} is not an exported version: lacks {missing}"
        )

    with repository_lock(repository, model):
        if not (repository / model / CONFIG_FILE).is_file():
            write_config(repository, ServingSettings(name=model))
        previous = production_version(repository, model)
        version = next_free_version(repository, model)
        incoming = repository / model / f".incoming-{version}"
        shutil.rmtree(incoming, ignore_errors=True)
        shutil.copytree(candidate_dir, incoming, ignore=shutil.ignore_patterns(LINEAGE_FILE))
        record = {
            **lineage,
            "version": version,
            "previous_version": previous,
            "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "candidate_dir": str(candidate_dir),
        }
        (incoming / LINEAGE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        target = repository / model / str(version)
        incoming.rename(target)
        logger.info(
            "promoted %s as %s version %d (previous %s)", candidate_dir, model, version, previous
        )

        if server_url:
            try:
                load(server_url, model, version)
            except PromotionError:
                target.rename(repository / model / f"rejected-{version}")
                if previous is not None:
                    load(server_url, model, previous)
                raise
    return target


def rollback(
    repository: Path,
    server_url: str | None = None,
    reason: str = "",
    model: str = MODEL_NAME,
) -> tuple[int, int]:
    """Retire the served version and serve the one before it; returns (retired, now served)."""
    repository = Path(repository)
    with repository_lock(repository, model):
        versions = numbered_versions(repository, model)
        if len(versions) < 2:
            raise PromotionError(
                f"rollback needs two versions of {model} in {repository}, found {versions}"
            )
        current, previous = versions[-1], versions[-2]
        retired = repository / model / f"rolled-back-{current}"
        (repository / model / str(current)).rename(retired)
        record = {
            "version": current,
            "rolled_back_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "reason": reason,
            "now_serving": previous,
        }
        (retired / "rollback.json").write_text(json.dumps(record, indent=2) + "\n")
        logger.info("rolled back %s version %d; version %d serves", model, current, previous)
        if server_url:
            load(server_url, model, previous)
    return current, previous


def _control_client(server_url: str):
    protocol, address = parse_url(server_url)
    if protocol == "http":
        import tritonclient.http as triton
    else:
        import tritonclient.grpc as triton
    return triton.InferenceServerClient(address)


def served_versions(server_url: str, model: str = MODEL_NAME) -> list[int]:
    """The versions of `model` Triton reports READY."""
    client = _control_client(server_url)
    try:
        index = client.get_model_repository_index()
    finally:
        client.close()
    rows = index if isinstance(index, list) else [_message_dict(m) for m in index.models]
    return sorted(
        int(row["version"])
        for row in rows
        if row.get("name") == model and row.get("state") == "READY" and row.get("version")
    )


def _message_dict(message) -> dict:
    return {"name": message.name, "version": message.version, "state": message.state}


def load(server_url: str, model: str, version: int, timeout_s: float = LOAD_TIMEOUT_S) -> None:
    """Ask Triton (explicit mode) to load `model` and wait until `version` alone serves.

    Raises PromotionError when the load is refused or does not finish in `timeout_s`.
    """
    started = time.monotonic()
    client = _control_client(server_url)
    try:
        client.load_model(model)
    except Exception as error:  # noqa: BLE001 - any refusal is reported as one error
        raise PromotionError(f"Triton at {server_url} did not load {model}: {error}") from error
    finally:
        client.close()
    while time.monotonic() - started < timeout_s:
        if served_versions(server_url, model) == [version]:
            logger.info(
                "Triton serves %s version %d (%.1f s after the load request)",
                model,
                version,
                time.monotonic() - started,
            )
            return
        time.sleep(0.1)
    raise PromotionError(
        f"Triton at {server_url} did not serve {model} version {version} alone within "
        f"{timeout_s:.0f} s; it serves {served_versions(server_url, model)}"
    )


# the `bulwark rollback` command
def add_command(commands) -> None:
    parser = commands.add_parser("rollback", help="serve the previous model version again")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--server", help="Triton (explicit model control) to reload, e.g. http://127.0.0.1:8000"
    )
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--reason", default="", help="recorded in rollback.json")
    parser.set_defaults(run=run_rollback)


def run_rollback(args: argparse.Namespace) -> int:
    try:
        rollback(args.repository, args.server, args.reason, args.model)
    except PromotionError as error:
        logger.error("rollback failed: %s", error)
        return 2
    return 0
