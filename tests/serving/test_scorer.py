import numpy as np
import pytest

from detection.signals import SIGNAL_NAMES
from serving.scorer import OnnxFusion, RuntimeSettings
from tests.model_fixtures import tiny_model_version
from tests.synthetic_mail import synthetic_corpus


def _texts_of_mixed_length() -> list[str]:
    texts = [m.data.decode("utf-8", "replace") for m in synthetic_corpus(12, seed=5)]
    return texts[:6] + ["short one", "pay the invoice " * 40] + texts[6:]


def test_length_buckets_give_the_same_probabilities_as_one_message_at_a_time():
    _, version_dir = tiny_model_version()
    texts = _texts_of_mixed_length()
    rng = np.random.default_rng(0)
    model = OnnxFusion(
        version_dir, settings=RuntimeSettings(buckets=(16, 64), max_batch_tokens=256)
    )
    signals = rng.uniform(0, 1, (len(texts), len(model.meta["signal_names"]))).tolist()

    together = model.probabilities(texts, signals)
    alone = np.concatenate(
        [model.probabilities([t], [s]) for t, s in zip(texts, signals, strict=True)]
    )
    assert together.shape == (len(texts), 3)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_texts_and_signal_rows_must_pair_up():
    _, version_dir = tiny_model_version()
    model = OnnxFusion(version_dir)
    with pytest.raises(ValueError, match="got 2 texts but 1 signal rows"):
        model.probabilities(["a", "b"], [[0.0] * len(model.meta["signal_names"])])


def test_no_texts_give_an_empty_result_without_calling_the_model():
    _, version_dir = tiny_model_version()
    assert OnnxFusion(version_dir).probabilities([], []).shape == (0, 3)


def test_negative_thread_count_is_refused():
    with pytest.raises(ValueError, match="threads must be 0 .* got -1"):
        RuntimeSettings(threads=-1)


def test_an_unknown_spinning_mode_is_refused_naming_the_modes():
    with pytest.raises(ValueError, match=r"spinning must be one of .*within-calls.* got 'yes'"):
        RuntimeSettings(spinning="yes")


@pytest.mark.parametrize("spinning", ["never", "within-calls", "always"])
def test_every_spinning_mode_scores_the_same(spinning):
    _, version_dir = tiny_model_version()
    signals = [[0.0] * len(SIGNAL_NAMES)]
    expected = OnnxFusion(version_dir).probabilities(["invoice overdue"], signals)
    model = OnnxFusion(version_dir, settings=RuntimeSettings(spinning=spinning))
    np.testing.assert_allclose(model.probabilities(["invoice overdue"], signals), expected)


def test_a_batch_runs_in_the_batch_session_and_scores_as_each_message_alone():
    _, version_dir = tiny_model_version()
    model = OnnxFusion(version_dir, settings=RuntimeSettings(threads=2, batch_threads=1))
    calls = []
    for name in ("session", "batch_session"):
        session = getattr(model, name)
        setattr(model, name, _CountingSession(session, name, calls))
    texts = ["invoice overdue", "lunch on friday?", "reset your password now"]
    signals = [[0.0] * len(SIGNAL_NAMES)] * len(texts)

    alone = np.vstack([model.probabilities([t], [s]) for t, s in zip(texts, signals, strict=True)])
    assert set(calls) == {"session"}
    calls.clear()
    together = model.probabilities(texts, signals)

    assert set(calls) == {"batch_session"}
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_without_batch_threads_one_session_serves_both():
    _, version_dir = tiny_model_version()
    model = OnnxFusion(version_dir, settings=RuntimeSettings(threads=1, batch_threads=None))
    assert model.batch_session is model.session


def test_negative_batch_thread_count_is_refused():
    with pytest.raises(ValueError, match="batch_threads must be None, 0 .* got -2"):
        RuntimeSettings(batch_threads=-2)


def test_a_thread_count_that_is_not_a_whole_number_is_refused_naming_it():
    with pytest.raises(ValueError, match="batch_threads must be .* got '2'"):
        RuntimeSettings(batch_threads="2")
    with pytest.raises(ValueError, match="threads must be .* got True"):
        RuntimeSettings(threads=True)


class _CountingSession:
    """An ONNX Runtime session that notes its name in `calls` at each run."""

    def __init__(self, session, name: str, calls: list) -> None:
        self.session, self.name, self.calls = session, name, calls

    def run(self, outputs, feeds):
        self.calls.append(self.name)
        return self.session.run(outputs, feeds)


def test_a_full_model_without_a_variant_entry_reads_as_full():
    _, version_dir = tiny_model_version()
    assert OnnxFusion(version_dir).variant == "full"


def test_an_int8_version_scores_a_message_the_same_whatever_runs_beside_it(tmp_path):
    from tests.training.speed_fixtures import parity_rows, tiny_checkpoint
    from training.export import export_variant

    export_variant(tiny_checkpoint(), tmp_path, parity_rows(8), "int8")
    model = OnnxFusion(tmp_path)
    texts = _texts_of_mixed_length()
    signals = [[0.0] * len(SIGNAL_NAMES)] * len(texts)
    alone = np.vstack([model.probabilities([t], [s]) for t, s in zip(texts, signals, strict=True)])

    assert model.rows_alone
    np.testing.assert_array_equal(model.probabilities(texts, signals), alone)
    # the reason: run in shared calls, its activations are quantised with its neighbours'
    model.rows_alone = False
    assert not np.array_equal(model.probabilities(texts, signals), alone)


def test_a_full_version_still_runs_its_rows_in_length_buckets():
    _, version_dir = tiny_model_version()
    assert not OnnxFusion(version_dir).rows_alone
