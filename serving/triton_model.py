"""The served Bulwark model for Triton's Python backend: raw message in, verdict out.

training/export.py copies this file to `model_repository/bulwark/<version>/model.py`
beside `model.onnx`, `tokenizer.json` and `bulwark.json`; Triton loads it there.

Contract (tensor names, dtypes and dims from detection/tensors.py; `n` is a request's
batch size, 1 from serving/client.py):

- inputs: RAW_MESSAGE (BYTES [n, 1], the message's bytes), ORG_ID (BYTES [n, 1],
  UTF-8, the receiving organisation) and the optional MESSAGE_KIND (BYTES [n, 1],
  "rfc822" when absent, or "text" for a text-only record);
- outputs: PROBABILITIES (FP32 [n, 3]), VERDICT, CATEGORY ("" for none) and REASONS
  (a JSON list) as BYTES [n, 1], SCORE (FP32 [n, 1]).

`execute` scores every message of every request it is given in one
`Scorer.score_batch` call, so the dynamic batcher's batches reach ONNX Runtime
whole. A request with bad input (a missing tensor, a wrong shape, an org id that is
not UTF-8, an unknown kind) or with a message that could not be scored gets a
`TritonError` naming what was wrong; the other requests of the batch are unaffected.

Beside Triton's own `nv_inference_*` metrics, the model exports the verdict counts,
the attack-score histogram and its own request failures (serving/metrics.py) on
the server's metrics port.

Run it by serving a repository that holds an exported version:

    .venv/bin/python -m serving.server --model-repository model_repository
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _honour_pythonpath() -> None:
    """Put PYTHONPATH on sys.path, as plain Python would.

    The backend stub embeds Python in isolated mode, which ignores PYTHONPATH;
    serving/server.py sets it to the repository root and site-packages so that the
    imports below resolve.
    """
    entries = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    sys.path[:0] = [entry for entry in entries if entry not in sys.path]


_honour_pythonpath()

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from detection.tensors import (  # noqa: E402
    CATEGORY,
    MESSAGE_KIND,
    OPTIONAL_SERVED_INPUTS,
    ORG_ID,
    PROBABILITIES,
    RAW_MESSAGE,
    REASONS,
    SCORE,
    SERVED_INPUTS,
    SERVED_OUTPUTS,
    VERDICT,
)
from serving.metrics import ModelMetrics  # noqa: E402
from serving.pbtxt import onnx_options  # noqa: E402
from serving.scorer import (  # noqa: E402
    DIRECTORY_ENV,
    HISTORY_ENV,
    KINDS,
    LEARN_ENV,
    RuntimeSettings,
    ScoreItem,
    Scorer,
)

DEFAULT_KIND = "rfc822"


class RequestError(ValueError):
    """One request's input broke the contract; the message says how."""


class TritonPythonModel:
    """Bulwark's Triton model: `initialize` once, `execute` per batch, `finalize` at unload."""

    def initialize(self, args: dict[str, str]) -> None:
        self.model_config = json.loads(args["model_config"])
        self._check_config()
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.scorer = self.load_scorer(version_dir)
        self.metrics = ModelMetrics(pb_utils, args["model_name"], args["model_version"])
        pb_utils.Logger.log_info(
            f"bulwark: loaded model version {args['model_version']} from {version_dir} "
            f"(instance {args.get('model_instance_name', '?')})"
        )

    def load_scorer(self, version_dir: Path) -> Scorer:
        """The scorer for one exported version; tests override this with a fake."""
        scorer = Scorer.load(
            version_dir,
            history_path=os.environ.get(HISTORY_ENV) or None,
            directory_path=os.environ.get(DIRECTORY_ENV) or None,
            learn=os.environ.get(LEARN_ENV) == "1",
            settings=RuntimeSettings(**onnx_options(self.model_config)),
        )
        scorer.warm_up()  # the first request should not pay ONNX Runtime's set-up
        return scorer

    def _check_config(self) -> None:
        """config.pbtxt is the contract: fail the load when it and detection/tensors.py differ."""
        declared = {t["name"]: t for t in self.model_config["input"] + self.model_config["output"]}
        for spec in SERVED_INPUTS + OPTIONAL_SERVED_INPUTS + SERVED_OUTPUTS:
            got = declared.get(spec.name, {}).get("data_type")
            if got != spec.triton_dtype:
                raise ValueError(
                    f"config.pbtxt must declare {spec.name} as {spec.triton_dtype}, got {got}; "
                    "regenerate it with `python -m serving.pbtxt`"
                )

    def execute(self, requests: list) -> list:
        """One response per request, in order; all good requests scored in one batch."""
        parsed = [self._read_request(request) for request in requests]
        good = [p for p in parsed if not isinstance(p, RequestError)]
        scored = iter(self._score_requests(good))

        rejected = len(parsed) - len(good)
        if rejected:
            self.metrics.record_failures("invalid_input", rejected)

        responses = []
        for p in parsed:
            if isinstance(p, RequestError):
                responses.append(_error_response(str(p), pb_utils.TritonError.INVALID_ARG))
            else:
                responses.append(next(scored))
        return responses

    def _score_requests(self, requests: list[list[ScoreItem]]) -> list:
        """A response per request from one score_batch call.

        Should the whole batch fail (score_batch raises rather than returning the
        error of the message at fault), each request is scored alone, so that only
        the requests that fail by themselves get an error.
        """
        items = [item for request in requests for item in request]
        try:
            results = self.scorer.score_batch(items) if items else []
        except Exception as error:  # noqa: BLE001 - retried request by request below
            pb_utils.Logger.log_error(
                f"bulwark: scoring a batch of {len(items)} failed ({error!r}); "
                "scoring its requests one by one"
            )
            return [self._score_alone(request) for request in requests]

        responses, start = [], 0
        for request in requests:
            responses.append(self._respond(results[start : start + len(request)]))
            start += len(request)
        return responses

    def _score_alone(self, items: list[ScoreItem]):
        try:
            return self._respond(self.scorer.score_batch(items))
        except Exception as error:  # noqa: BLE001 - this request alone fails
            self.metrics.record_failures("scoring_failed")
            message = f"scoring failed: {type(error).__name__}: {error}"
            return _error_response(message, pb_utils.TritonError.INTERNAL)

    def _respond(self, results: list):
        """The response for one request's results, counted in the metrics."""
        if any(isinstance(result, Exception) for result in results):
            self.metrics.record_failures("unscorable")
        else:
            self.metrics.record_decisions(results)
        return _scored_response(results)

    def _read_request(self, request) -> list[ScoreItem] | RequestError:
        """The request's messages as ScoreItems, or the RequestError saying what is wrong."""
        try:
            data = _rows(request, RAW_MESSAGE.name, required=True)
            orgs = _rows(request, ORG_ID.name, required=True, rows=len(data))
            kinds = _rows(request, MESSAGE_KIND.name, required=False, rows=len(data))
            items = []
            for row, raw in enumerate(data):
                org = _text(orgs[row], ORG_ID.name, row)
                kind = _text(kinds[row], MESSAGE_KIND.name, row) if kinds else DEFAULT_KIND
                if not org:
                    raise RequestError(f"{ORG_ID.name} row {row} is empty; send an org id")
                if kind not in KINDS:
                    raise RequestError(
                        f"{MESSAGE_KIND.name} row {row} must be one of {KINDS}, got {kind!r}"
                    )
                items.append(ScoreItem(raw, org, kind))
            return items
        except RequestError as error:
            pb_utils.Logger.log_warn(f"bulwark: rejected a request: {error}")
            return error

    def finalize(self) -> None:
        pb_utils.Logger.log_info("bulwark: model unloaded")
        self.metrics.close()
        self.scorer = None


def _rows(request, name: str, required: bool, rows: int | None = None) -> list[bytes]:
    """The BYTES input `name` as one bytes value per row; [] for an absent optional one."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise RequestError(f"missing input {name}; the model needs {_input_names()}")
        return []
    array = tensor.as_numpy()
    if array.ndim != 2 or array.shape[1] != 1 or array.shape[0] < 1:
        raise RequestError(f"{name} must have shape [batch, 1], got {list(array.shape)}")
    if rows is not None and array.shape[0] != rows:
        raise RequestError(
            f"{name} must have one row per {RAW_MESSAGE.name} row ({rows}), got {array.shape[0]}"
        )
    values = [array[row, 0] for row in range(array.shape[0])]
    for row, value in enumerate(values):
        if not isinstance(value, bytes):
            raise RequestError(f"{name} row {row} must be BYTES, got {type(value).__name__}")
    return values


def _text(value: bytes, name: str, row: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as error:
        reason = f"{error.reason} at byte {error.start}"
        raise RequestError(f"{name} row {row} is not UTF-8 ({reason})") from None


def _input_names() -> list[str]:
    return [spec.name for spec in SERVED_INPUTS]


def _error_response(message: str, code: int):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def _scored_response(results: list):
    """The outputs for one request's rows, or its error when a row could not be scored."""
    for row, result in enumerate(results):
        if isinstance(result, Exception):
            where = "" if len(results) == 1 else f"message row {row}: "
            return _error_response(
                f"{where}{type(result).__name__}: {result}", pb_utils.TritonError.INVALID_ARG
            )

    def column(values: list, dtype) -> np.ndarray:  # (n, 1)
        return np.array(values, dtype=dtype).reshape(len(results), 1)

    tensors = {
        PROBABILITIES.name: np.array([d.probabilities for d in results], dtype=np.float32),
        VERDICT.name: column([d.verdict.encode() for d in results], np.object_),
        CATEGORY.name: column([(d.category or "").encode() for d in results], np.object_),
        SCORE.name: column([d.score for d in results], np.float32),
        REASONS.name: column(
            [json.dumps(d.reasons, ensure_ascii=False).encode() for d in results], np.object_
        ),
    }
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, value) for name, value in tensors.items()]
    )
