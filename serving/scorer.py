"""In-process scoring: parse, signals, ONNX Runtime, decision.

Contract: `Scorer.load(version_dir)` reads one exported model version (model.onnx,
tokenizer.json, bulwark.json). `score_batch(items)` returns, per item, a `Decision`
or the exception that stopped that item alone; `score(messages)` returns the
scoring contract's `Verdict` lines in input order. The Triton model calls
`score_batch`, so the server and the in-process path share every step.

The sender history is read, never written, while scoring: every path then sees
the same history and a message scores the same wherever it is scored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm.auto import tqdm

from detection.baselines import observe
from detection.decision import SCORE_DECIMALS, Decision, DecisionPolicy, Verdict, decide
from detection.directory import Directory, load_directory
from detection.encoding import (
    DEFAULT_BATCH_TOKENS,
    DEFAULT_BUCKETS,
    encode_rows,
    length_buckets,
    load_tokenizer,
    pad_rows,
)
from detection.features import EMPTY_DIRECTORY, Features, extract_features
from detection.history import SenderHistory
from detection.signals import SIGNAL_NAMES
from detection.sources import RawMessage
from detection.tensors import ATTENTION_MASK, CLASS_NAMES, INPUT_IDS, PROBABILITIES, SIGNALS
from serving.cpu_fusions import UNFUSED_ON_CPU
from serving.onnx_settings import SPIN_ALWAYS, SPIN_MODES, SPIN_NEVER, SPIN_WITHIN_CALLS, is_count

logger = logging.getLogger(__name__)

KINDS = ("rfc822", "text")
# the Triton model reads the sender-history and directory files' paths from these
HISTORY_ENV = "BULWARK_HISTORY_DB"
DIRECTORY_ENV = "BULWARK_DIRECTORY"
LEARN_ENV = "BULWARK_HISTORY_LEARN"  # "1": the served model records its safe verdicts
WARM_UP_MESSAGE = b"From: warm-up@example.com\r\nSubject: warm-up\r\n\r\nwarm-up\r\n"


@dataclass(frozen=True)
class ScoreItem:
    data: bytes
    org: str = "default"
    kind: str = "rfc822"
    when: datetime | None = None  # the history is read as of this time (default: its Date)


@dataclass(frozen=True)
class RuntimeSettings:
    """How ONNX Runtime runs the model; the defaults suit a small CPU host.

    `threads` is ONNX Runtime's intra-op pool (0: one per physical core).
    `spinning` says when those threads busy-wait for work instead of sleeping:
    "always" (between calls too: the lowest latency for one caller, and a core
    burnt while idle), "within-calls" (from one operator to the next of a call,
    stopping as soon as the call returns, so an idle session leaves the cores to
    other work) or "never". `batch_threads`, when set, is the pool of a second
    session that scores the messages of a batch of more than one: a server that
    runs several model instances gives a lone message every core, and a batch, which
    only forms while the instances are busy, one thread that does not wait on the
    others (None: one session for both). Rows are grouped by token length
    (`buckets`) into calls of at most `max_batch_tokens` padded tokens.
    """

    threads: int = 0
    spinning: str = SPIN_ALWAYS
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS
    batch_threads: int | None = None

    def __post_init__(self) -> None:
        if not is_count(self.threads) or self.threads < 0:
            raise ValueError(f"threads must be 0 (one per core) or more, got {self.threads!r}")
        if self.batch_threads is not None and (
            not is_count(self.batch_threads) or self.batch_threads < 0
        ):
            raise ValueError(
                f"batch_threads must be None, 0 (one per core) or more, got {self.batch_threads!r}"
            )
        if self.spinning not in SPIN_MODES:
            raise ValueError(f"spinning must be one of {SPIN_MODES}, got {self.spinning!r}")
        length_buckets([1], self.buckets, self.max_batch_tokens)  # validates both


def runs_rows_alone(meta: dict) -> bool:
    """Whether a version's rows must each get an ONNX Runtime call of their own.

    An int8 version (dynamic quantisation) quantises its activations with one range
    per call, taken over every row of the call and their padding. Run together, a
    message would score differently beside different messages (by up to 0.17 in
    attack probability on the demo's test split) and a crafted message could move
    the scores of the mail batched with it; alone, it scores the same on every path.
    """
    return bool(meta.get("variant", {}).get("quantization"))


def call_groups(lengths: Sequence[int], settings: RuntimeSettings, rows_alone: bool):
    """The row indices of each ONNX Runtime call for rows of these token lengths:
    the length buckets of `settings`, or one row per call when `rows_alone`."""
    if rows_alone:
        return [[row] for row in range(len(lengths))]
    return length_buckets(lengths, settings.buckets, settings.max_batch_tokens)


class OnnxFusion:
    """The exported fusion model in ONNX Runtime, from text and signals."""

    def __init__(
        self, version_dir: Path, threads: int = 0, settings: RuntimeSettings | None = None
    ) -> None:
        version_dir = Path(version_dir)
        self.meta = json.loads((version_dir / "bulwark.json").read_text())
        if self.meta["signal_names"] != list(SIGNAL_NAMES):
            raise ValueError(
                f"model {version_dir} expects signals {self.meta['signal_names']}, "
                f"but this code computes {list(SIGNAL_NAMES)}"
            )
        self.settings = settings or RuntimeSettings(threads=threads)
        model_path = version_dir / "model.onnx"
        self.session = onnx_session(model_path, self.settings.threads, self.settings.spinning)
        batch_threads = self.settings.batch_threads
        self.batch_session = (
            self.session
            if batch_threads is None or batch_threads == self.settings.threads
            else onnx_session(model_path, batch_threads, self.settings.spinning)
        )
        self.tokenizer = load_tokenizer(str(version_dir / "tokenizer.json"))
        self.max_length = int(self.meta["max_length"])
        self.head_tokens = int(self.meta["head_tokens"])
        self.variant = self.meta.get("variant", {}).get("name", "full")
        self.rows_alone = runs_rows_alone(self.meta)

    def probabilities(
        self,
        texts: Sequence[str],
        signals: Sequence[Sequence[float]],
        progress: str | None = None,
    ) -> np.ndarray:
        """(len(texts), classes) probabilities, in input order.

        Texts are tokenised once, then run in length buckets (see `RuntimeSettings`),
        so little of each call is padding, or one at a time for an int8 version
        (`runs_rows_alone`); more than one text runs in the batch session.
        `progress` names a progress bar to show (none by default).
        """
        if len(texts) != len(signals):
            raise ValueError(f"got {len(texts)} texts but {len(signals)} signal rows")
        result = np.zeros((len(texts), len(CLASS_NAMES)), dtype=np.float32)
        if not texts:
            return result
        session = self.session if len(texts) == 1 else self.batch_session
        rows = encode_rows(self.tokenizer, texts, self.max_length, self.head_tokens)
        groups = call_groups([len(r) for r in rows], self.settings, self.rows_alone)
        for group in tqdm(groups, desc=progress, disable=progress is None, unit="batch"):
            rows_in, signals_in = [rows[i] for i in group], [signals[i] for i in group]
            result[group] = self._run(session, rows_in, signals_in)
        return result

    def _run(
        self, session: ort.InferenceSession, rows: list[list[int]], signals: list[Sequence[float]]
    ) -> np.ndarray:
        (probs,) = session.run([PROBABILITIES.name], model_feeds(rows, signals))
        return probs


def model_feeds(rows: list[list[int]], signals: Sequence[Sequence[float]]) -> dict:
    """The model's inputs for token rows (padded here) and their signal rows."""
    ids, mask = pad_rows(rows)
    return {
        INPUT_IDS.name: ids,
        ATTENTION_MASK.name: mask,
        SIGNALS.name: np.asarray(signals, dtype=np.float32).reshape(len(rows), -1),
    }


def onnx_session(
    model: Path | bytes, threads: int, spinning: str, optimized_copy: Path | None = None
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of `model` (a file, or a serialised graph) with
    `threads` intra-op threads spinning as `spinning`; with `optimized_copy`, ONNX
    Runtime also writes there the graph as it will run it, fusions applied."""
    options = ort.SessionOptions()
    if optimized_copy is not None:
        if not Path(optimized_copy).parent.is_dir():
            raise FileNotFoundError(
                f"optimized_copy must be a file in an existing folder, got {optimized_copy}"
            )
        options.optimized_model_filepath = str(optimized_copy)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "0" if spinning == SPIN_NEVER else "1"
    )
    if spinning == SPIN_WITHIN_CALLS:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(
        source,
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(UNFUSED_ON_CPU),
    )


class Scorer:
    def __init__(
        self,
        model: OnnxFusion,
        policy: DecisionPolicy,
        history: SenderHistory,
        directory: Directory = EMPTY_DIRECTORY,
        learn: bool = False,
    ):
        self.model = model
        self.policy = policy
        self.history = history
        self.directory = directory
        # after each verdict, record the message in the history if, and only if, it
        # was judged safe: flagged mail never makes its sender look known
        self.learn = learn

    @classmethod
    def load(
        cls,
        version_dir: str | Path,
        history_path: str | Path | None = None,
        threads: int = 0,
        directory_path: str | Path | None = None,
        learn: bool = False,
        settings: RuntimeSettings | None = None,
    ) -> Scorer:
        """A scorer for one exported version, reading the history and directory files
        given (an empty history and an empty directory when none); with `learn`, it
        also writes its safe verdicts into that history. `settings` (ONNX Runtime's)
        override `threads`."""
        version_dir = Path(version_dir)
        model = OnnxFusion(version_dir, threads, settings)
        policy = DecisionPolicy(**model.meta.get("policy", {}))
        history = SenderHistory(str(history_path) if history_path else ":memory:")
        directory = load_directory(directory_path) if directory_path else EMPTY_DIRECTORY
        logger.info(
            "loaded model %s (history: %s, directory: %s)",
            version_dir,
            "file" if history_path else "empty",
            "file" if directory_path else "empty",
        )
        return cls(model, policy, history, directory, learn)

    def warm_up(self) -> None:
        """Score one short synthetic message alone and in a batch of two, so that ONNX
        Runtime's first-run set-up (of both sessions, where there are two) is not paid
        by the first real request. The warm-up message is never learnt."""
        learn, self.learn = self.learn, False
        try:
            item = ScoreItem(WARM_UP_MESSAGE, "warm-up")
            self.score_batch([item])
            self.score_batch([item, item])
        finally:
            self.learn = learn

    def score_batch(self, items: Sequence[ScoreItem]) -> list[Decision | Exception]:
        return [result for result, _ in self.score_batch_timed(items)]

    def score_batch_timed(
        self, items: Sequence[ScoreItem]
    ) -> list[tuple[Decision | Exception, datetime | None]]:
        """Each item's decision (or the error that stopped it) with the time its history
        was read as of: the item's `when`, else the message's Date (None if neither)."""
        results: list[tuple[Decision | Exception, datetime | None] | None] = [None] * len(items)
        features: list[tuple[int, Features]] = []
        for i, item in enumerate(items):
            try:
                if item.kind not in KINDS:
                    raise ValueError(f"message kind must be one of {KINDS}, got {item.kind!r}")
                found = extract_features(
                    item.data,
                    item.kind,
                    item.org,
                    self.history,
                    when=item.when,
                    directory=self.directory,
                )
                features.append((i, found))
            except Exception as error:  # noqa: BLE001 - one bad message fails alone
                results[i] = (error, item.when)
        if features:
            probs = self.model.probabilities(
                [f.text for _, f in features], [f.signals for _, f in features]
            )
            for (i, f), p in zip(features, probs, strict=True):
                results[i] = (decide([float(v) for v in p], f.raw, f.hits, self.policy), f.when)
            if self.learn:
                self._learn(items, features, results)
        return results  # type: ignore[return-value]

    def _learn(self, items, features: list[tuple[int, Features]], results) -> None:
        """Record this batch's safe verdicts (messages of one batch do not see each other)."""
        for i, f in features:
            verdict = results[i][0].verdict
            observe(self.history, items[i].org, f.parsed, f.when, verdict, f.recipients)
        self.history.commit()

    def score(
        self, messages: Iterable[RawMessage], org: str = "default", batch_size: int = 32
    ) -> list[Verdict]:
        return list(self.score_stream(messages, org, batch_size))

    def score_stream(
        self, messages: Iterable[RawMessage], org: str = "default", batch_size: int = 32
    ) -> Iterator[Verdict]:
        """Verdicts in input order, scoring `batch_size` messages at a time as they arrive."""
        chunk: list[RawMessage] = []
        for message in messages:
            chunk.append(message)
            if len(chunk) == batch_size:
                yield from self._score_chunk(chunk, org)
                chunk = []
        if chunk:
            yield from self._score_chunk(chunk, org)

    def _score_chunk(self, chunk: list[RawMessage], org: str) -> Iterator[Verdict]:
        items = [ScoreItem(m.data, org, m.kind) for m in chunk]
        for message, result in zip(chunk, self.score_batch(items), strict=True):
            yield to_verdict(message, result)


def to_verdict(message: RawMessage, result: Decision | Exception) -> Verdict:
    if isinstance(result, Exception):
        return Verdict(
            message.id, message.source, message.index, error=f"{type(result).__name__}: {result}"
        )
    return Verdict(
        message.id,
        message.source,
        message.index,
        result.verdict,
        result.category,
        round(result.score, SCORE_DECIMALS),
        result.reasons,
    )
