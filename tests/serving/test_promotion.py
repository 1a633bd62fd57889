"""Promotion and rollback: version folders, and a hot swap in Triton with no failed request.

The swap test serves a tiny trained model in explicit model-control mode, keeps a
client thread sending requests, promotes a second version and rolls it back, and
counts the requests that failed (none may) and the seconds each swap took.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest

from detection.sources import RawMessage
from serving.client import BulwarkClient
from serving.promotion import (
    PromotionError,
    next_free_version,
    production_version,
    promote,
    rollback,
    served_versions,
)
from tests.model_fixtures import tiny_model_version
from tests.synthetic_mail import make_message

logger = logging.getLogger(__name__)


def _repository_with_one_version(root: Path) -> tuple[Path, Path]:
    """A repository holding the tiny model as version 1, and a candidate copy of it."""
    source_repo, version_dir = tiny_model_version()
    repository = root / "repository"
    (repository / "bulwark").mkdir(parents=True)
    shutil.copyfile(
        source_repo / "bulwark" / "config.pbtxt", repository / "bulwark" / "config.pbtxt"
    )
    shutil.copytree(version_dir, repository / "bulwark" / "1")
    candidate = root / "candidate"
    shutil.copytree(version_dir, candidate)
    return repository, candidate


def test_promote_adds_the_next_version_with_its_lineage(tmp_path):
    repository, candidate = _repository_with_one_version(tmp_path)

    target = promote(candidate, repository, {"candidate_key": "abc"})

    assert target == repository / "bulwark" / "2"
    lineage = json.loads((target / "lineage.json").read_text())
    assert lineage["candidate_key"] == "abc" and lineage["previous_version"] == 1
    assert production_version(repository) == 2
    assert not list((repository / "bulwark").glob(".incoming-*"))


def test_rollback_retires_the_served_version_and_never_reuses_its_number(tmp_path):
    repository, candidate = _repository_with_one_version(tmp_path)
    promote(candidate, repository, {})

    assert rollback(repository, reason="too many false positives") == (2, 1)

    assert production_version(repository) == 1
    record = json.loads((repository / "bulwark" / "rolled-back-2" / "rollback.json").read_text())
    assert record["reason"] == "too many false positives"
    assert next_free_version(repository) == 3


def test_rollback_with_a_single_version_is_refused(tmp_path):
    repository, _ = _repository_with_one_version(tmp_path)
    with pytest.raises(PromotionError, match=r"rollback needs two versions .* found \[1\]"):
        rollback(repository)


def test_promote_refuses_a_folder_that_is_not_an_exported_version(tmp_path):
    repository, _ = _repository_with_one_version(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PromotionError, match=r"not an exported version: lacks \['model.onnx'"):
        promote(tmp_path / "empty", repository, {})


class _Sender(threading.Thread):
    """Sends one request after another until stopped; counts answers and failures."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = BulwarkClient(url, timeout_s=30)
        self.stop = threading.Event()
        self.sent = self.failed = 0
        self.errors: list[str] = []

    def run(self) -> None:
        data = make_message("Build notes", "The nightly build passed; notes are in the folder.")
        while not self.stop.is_set():
            verdict = self.client.score_message(
                RawMessage(f"m{self.sent}", "swap", self.sent, data)
            )
            self.sent += 1
            if verdict.error:
                self.failed += 1
                self.errors.append(verdict.error)


@pytest.mark.server
def test_hot_swap_and_rollback_while_serving_fail_no_request(tmp_path):
    from serving.server import TritonServer

    repository, candidate = _repository_with_one_version(tmp_path)
    with TritonServer(
        repository, model_control_mode="explicit", load_models=["bulwark"], startup_timeout_s=90
    ) as server:
        assert served_versions(server.http_url) == [1]
        sender = _Sender(server.grpc_url)
        sender.start()
        time.sleep(1.0)

        started, sent_before = time.monotonic(), sender.sent
        promote(candidate, repository, {"candidate_key": "swap-test"}, server.http_url)
        swap_seconds, during_swap = time.monotonic() - started, sender.sent - sent_before
        assert served_versions(server.http_url) == [2]
        time.sleep(1.0)

        started, sent_before = time.monotonic(), sender.sent
        rollback(repository, server.http_url, reason="swap test")
        rollback_seconds, during_rollback = time.monotonic() - started, sender.sent - sent_before
        assert served_versions(server.http_url) == [1]
        time.sleep(1.0)

        sender.stop.set()
        sender.join(timeout=30)
        sender.client.close()

    logger.info(
        "hot swap: %d requests sent, %d failed; promote to v2 took %.2f s (%d requests "
        "answered meanwhile), rollback to v1 %.2f s (%d requests answered meanwhile)",
        sender.sent,
        sender.failed,
        swap_seconds,
        during_swap,
        rollback_seconds,
        during_rollback,
    )
    assert sender.failed == 0, sender.errors[:3]
    assert during_swap > 0 and during_rollback > 0
