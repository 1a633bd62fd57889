"""Shared fixtures.

`fake_repository` is a model repository whose "bulwark" model is the real
serving/triton_model.py with its scorer replaced by `FakeScorer` (below, in the
model's own source), so the server, the Triton model's request handling and the
client are tested without training a model. `fake_server` serves it; one server is
started for the whole session because each start costs seconds.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

# The model.py of the fake repository. Its scorer answers from the message text:
# "unscorable" fails that message, "batch-crash" fails the whole batch, "slow" makes
# the batch take a second, "attack" / "spam" pick the verdict; reasons echo the org
# and kind the server received. Each batch takes FAKE_DELAY_ENV seconds (0.05 unset).
FAKE_MODEL_PY = textwrap.dedent(
    """
    import os
    import sys
    import time

    # the stub ignores PYTHONPATH (see serving/triton_model.py); apply it first
    sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]

    from detection.decision import Decision
    from serving.triton_model import TritonPythonModel as BulwarkModel


    DELAY_S = float(os.environ.get("BULWARK_FAKE_DELAY_S") or 0.05)


    class FakeScorer:
        def score_batch(self, items):
            slow = any(b"slow" in item.data for item in items)
            time.sleep(1.0 if slow else DELAY_S)  # concurrent requests queue and batch
            if any(b"batch-crash" in item.data for item in items):
                raise RuntimeError("the fake scorer crashed")
            return [self.decide(item) for item in items]

        def decide(self, item):
            text = item.data.decode("utf-8", "replace")
            reasons = [f"org {item.org}", f"kind {item.kind}"]
            if "unscorable" in text:
                return ValueError("message is unscorable")
            if "attack" in text:
                probabilities = [0.05, 0.037655, 0.912345]
                return Decision("attack", "credential_phishing", 0.912345, reasons, probabilities)
            if "spam" in text:
                return Decision("spam", "spam", 0.1, reasons, [0.2, 0.7, 0.1])
            return Decision("safe", None, 0.012, reasons, [0.9, 0.088, 0.012])


    class TritonPythonModel(BulwarkModel):
        def load_scorer(self, version_dir):
            return FakeScorer()
    """
)


FAKE_DELAY_ENV = "BULWARK_FAKE_DELAY_S"


def write_fake_repository(root: Path, config_text: str | None = None) -> Path:
    """A repository at `root` holding bulwark/config.pbtxt and bulwark/1/model.py."""
    from serving.pbtxt import render_config

    model_dir = root / "bulwark"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config_text or render_config())
    (model_dir / "1" / "model.py").write_text(FAKE_MODEL_PY)
    return root


@pytest.fixture(scope="session")
def fake_repository(tmp_path_factory) -> Path:
    return write_fake_repository(tmp_path_factory.mktemp("fake-repository"))


@pytest.fixture(scope="session")
def fake_server(fake_repository):
    from serving.server import TritonServer

    with TritonServer(fake_repository, startup_timeout_s=60) as server:
        yield server
