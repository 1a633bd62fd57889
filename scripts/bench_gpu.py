"""GPU benchmark of one exported model version: ONNX Runtime latency and throughput
for batch sizes 1 to 256, on real messages, in two steps.

The GPU machine has neither the corpora nor this project's environment, so:

1. `prepare` runs here, with the project's .venv. It samples real messages from the
   public corpora (every `--stride`-th, an equal share per archive, and by default
   only those whose model text fits the model's token limit whole, as
   scripts/bench_serving.py does; `--max-tokens 0` takes every length), computes
   each one's model text and signals the way scoring does (detection/features.py;
   an empty in-memory sender history unless `--history`), encodes the text with
   the version's own tokenizer (head and tail, at most `max_length` tokens) and
   writes a folder, by default runs/gpu_bench/, holding all the device needs:
   `inputs.npz` (token id rows, signal rows, tensor names, provenance) and copies
   of the version's `model.onnx` and `bulwark.json`. The folder has to travel to
   the device as an ignored path of at most 64 MiB; `prepare` fails, saying the
   size, when it would not fit (the fp32 MiniLM, 90 MB, does not; the int8 one the
   demo publishes, 56 MiB, does).
2. `measure` runs on the device and needs only numpy, onnxruntime and this
   repository's serving/cpu_fusions.py (standard library only). It uses
   CUDAExecutionProvider when onnxruntime offers it, else the CPU (leaving out the
   fusions a served CPU session leaves out), and says which one ran: the provider
   the session actually holds and where each node of the graph was placed (from
   one profiled call), never the one merely asked for. For
   each batch size it builds batches from the prepared rows (each padded to its
   longest row; `--order sorted` groups rows of similar length, as the serving
   path's length buckets do), warms up, then times calls until `--runs` calls or
   `--seconds-per-size` seconds, whichever comes first, and stops starting new
   sizes after `--max-seconds`. It prints one table (p50 and p99 ms per call,
   messages/s, padding) and, with `--output`, writes the figures as JSON. Timed
   calls include copying the inputs to the GPU and the probabilities back, as a
   serving call does.

No PyTorch path is offered: running the exported ONNX graph in PyTorch needs an
ONNX-to-PyTorch converter that is not a dependency of this project, and the PyTorch
checkpoint does not fit what travels to the device. When PyTorch sees a CUDA GPU but
onnxruntime has no CUDA provider (the CPU-only `onnxruntime` wheel), the output says
so and the figures are CPU figures.

Run here (a minute for 300 messages):
    .venv/bin/python scripts/bench_gpu.py prepare --model model_repository/bulwark/1 \
        --messages 300 --output runs/gpu_bench
    .venv/bin/python scripts/bench_gpu.py measure --inputs runs/gpu_bench \
        --batch-sizes 1 2 4 8 16 --output runs/gpu_bench.json

On the device (the run tool, with carry ["runs/gpu_bench"] and timeout_s 300; it
runs in the repository root and brings back what is written under $OUT). On the GPU
the nine sizes should take under a minute (not yet measured); should the CUDA
provider be missing, the time bounds keep the CPU run to about three minutes,
leaving device time to rerun:
    set -o pipefail; PY=$(command -v python3 || command -v python); \
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; \
        $PY scripts/bench_gpu.py measure --inputs runs/gpu_bench \
        --seconds-per-size 10 --max-seconds 150 --output "$OUT/gpu_bench.json" 2>&1 \
        | tee "$OUT/gpu_bench.log"
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.cpu_fusions import UNFUSED_ON_CPU  # noqa: E402 - standard library only

logger = logging.getLogger("bench_gpu")

INPUTS_FILE = "inputs.npz"
MODEL_FILE = "model.onnx"
META_FILE = "bulwark.json"
VERSION_FILES = (MODEL_FILE, "tokenizer.json", META_FILE)
# what the device run tool carries along with the working tree, all paths together
CARRY_LIMIT_BYTES = 64 * 1024 * 1024
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ORDERS = ("shuffled", "sorted")
PROVIDER_CHOICES = ("auto", "cuda", "cpu")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# distinct batches built per size; timed calls cycle through them
MAX_DISTINCT_BATCHES = 32
ORG = "bench"


# settings and inputs


@dataclass(frozen=True)
class PrepareSettings:
    """Which messages `prepare` takes: up to `messages`, every `stride`-th, and only
    those whose model text fits `max_tokens` whole (None: the model's limit, as
    scripts/bench_serving.py measures; 0: every length, cut head and tail)."""

    messages: int = 300
    stride: int = 7
    max_tokens: int | None = None
    history: Path | None = None  # sender history (sqlite); an empty one when None

    def __post_init__(self) -> None:
        if self.messages < 1 or self.stride < 1:
            raise ValueError(
                f"messages and stride must be at least 1, got {self.messages} and {self.stride}"
            )
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ValueError(f"max_tokens must be 0 (every length) or more, got {self.max_tokens}")


@dataclass(frozen=True)
class MeasureSettings:
    """What `measure` runs; the defaults finish within about five minutes even where
    the CPU has to stand in for the GPU."""

    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    warmup: int = 5  # untimed calls per batch size (fewer when they take too long)
    runs: int = 200  # timed calls per batch size, at most
    seconds_per_size: float = 20.0  # timed wall time per batch size, at most
    max_seconds: float = 240.0  # no batch size is started after this long
    order: str = "shuffled"
    seed: int = 0
    provider: str = "auto"
    threads: int = 0  # the CPU provider's intra-op threads (0: one per core)

    def __post_init__(self) -> None:
        if not self.batch_sizes:
            raise ValueError("batch sizes: give at least one, got none")
        for size in self.batch_sizes:
            check_batch_size(size)
        if self.warmup < 0:
            raise ValueError(f"warmup must be 0 or more calls, got {self.warmup}")
        if self.runs < 1:
            raise ValueError(f"runs must be at least 1, got {self.runs}")
        if self.seconds_per_size <= 0 or self.max_seconds <= 0:
            raise ValueError(
                "seconds_per_size and max_seconds must be positive, got "
                f"{self.seconds_per_size} and {self.max_seconds}"
            )
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.provider not in PROVIDER_CHOICES:
            raise ValueError(f"provider must be one of {PROVIDER_CHOICES}, got {self.provider!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be 0 (one per core) or more, got {self.threads}")


def check_batch_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"batch sizes must be positive integers, got {size!r}")
    return size


def batch_size_arg(text: str) -> int:
    """argparse type: one batch size, an integer of at least 1."""
    try:
        return check_batch_size(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"batch sizes must be positive integers, got {text!r}"
        ) from None


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


@dataclass(frozen=True)
class PreparedInputs:
    """Token id rows of varying length and their signal rows, as `prepare` wrote them.

    Row i is `ids[offsets[i]:offsets[i + 1]]`; `signals[i]` is its signal row.
    `meta` holds the tensor names, the model's sha256 and where the rows came from.
    """

    ids: np.ndarray  # (total tokens,) int32
    offsets: np.ndarray  # (rows + 1,) int64
    signals: np.ndarray  # (rows, signals) float32
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        rows = len(self.offsets) - 1
        if rows < 1:
            raise ValueError("the prepared inputs hold no rows: run `prepare` again")
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.ids):
            raise ValueError(
                f"row offsets must run from 0 to {len(self.ids)} tokens, "
                f"got {self.offsets[0]} to {self.offsets[-1]}"
            )
        if np.any(np.diff(self.offsets) < 1):
            raise ValueError("every prepared row must hold at least one token")
        if self.signals.ndim != 2 or len(self.signals) != rows:
            raise ValueError(f"got {rows} token rows but signal rows of shape {self.signals.shape}")

    @classmethod
    def from_rows(
        cls, rows: Sequence[Sequence[int]], signals: Sequence[Sequence[float]], meta: dict
    ) -> PreparedInputs:
        lengths = [len(r) for r in rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1]))
        return cls(ids, offsets, np.asarray(signals, dtype=np.float32), meta)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, index: int) -> np.ndarray:
        return self.ids[self.offsets[index] : self.offsets[index + 1]]

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            ids=self.ids,
            offsets=self.offsets,
            signals=self.signals,
            meta=np.array(json.dumps(self.meta)),
        )

    @classmethod
    def load(cls, path: Path) -> PreparedInputs:
        if not path.is_file():
            raise FileNotFoundError(f"prepared inputs {path} not found: run `prepare` first")
        with np.load(path, allow_pickle=False) as data:
            missing = {"ids", "offsets", "signals", "meta"} - set(data.files)
            if missing:
                raise ValueError(f"{path} lacks {sorted(missing)}: run `prepare` again")
            return cls(data["ids"], data["offsets"], data["signals"], json.loads(str(data["meta"])))


# batches


@dataclass(frozen=True)
class Batch:
    """One call's inputs: rows padded with zeros to the longest, masks marking tokens."""

    input_ids: np.ndarray  # (B, T) int64
    attention_mask: np.ndarray  # (B, T) int64
    signals: np.ndarray  # (B, signals) float32
    rows: tuple[int, ...]  # which prepared rows, in order

    @property
    def padding(self) -> float:
        """The share of the call's positions that are padding."""
        return 1.0 - float(self.attention_mask.mean())


def row_order(lengths: np.ndarray, order: str, seed: int = 0) -> np.ndarray:
    """The sequence batches take rows in: a seeded shuffle, or shortest first."""
    if order == "shuffled":
        return np.random.default_rng(seed).permutation(len(lengths))
    if order == "sorted":
        return np.argsort(lengths, kind="stable")
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def pad_batch(inputs: PreparedInputs, rows: Sequence[int]) -> Batch:
    # the same padding as detection.encoding.pad_rows, written again here because the
    # device has no tokenizers package, which importing detection.encoding needs
    width = int(max(inputs.lengths[i] for i in rows))
    input_ids = np.zeros((len(rows), width), dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for position, index in enumerate(rows):
        row = inputs.row(index)
        input_ids[position, : len(row)] = row
        attention_mask[position, : len(row)] = 1
    return Batch(input_ids, attention_mask, inputs.signals[list(rows)], tuple(rows))


def build_batches(
    inputs: PreparedInputs,
    size: int,
    order: np.ndarray,
    max_batches: int = MAX_DISTINCT_BATCHES,
) -> list[Batch]:
    """Consecutive batches of `size` rows taken along `order`, enough to cover every
    row once (at most `max_batches`); past the last row the order starts again, so a
    batch larger than the prepared rows repeats some of them."""
    check_batch_size(size)
    count = min(max_batches, -(-len(order) // size))
    return [
        pad_batch(inputs, [int(order[(k * size + j) % len(order)]) for j in range(size)])
        for k in range(count)
    ]


# providers


@dataclass(frozen=True)
class ProviderChoice:
    providers: tuple[str, ...]  # handed to onnxruntime, in order of preference
    note: str  # why these


def choose_providers(available: Sequence[str], wanted: str = "auto") -> ProviderChoice:
    """Which execution providers to ask onnxruntime for, given those it offers.

    Raises ValueError when `wanted` is "cuda" and onnxruntime offers no CUDA provider.
    """
    if wanted not in PROVIDER_CHOICES:
        raise ValueError(f"provider must be one of {PROVIDER_CHOICES}, got {wanted!r}")
    if wanted == "cpu":
        return ProviderChoice((CPU,), "the CPU provider was asked for")
    if CUDA in available:
        return ProviderChoice((CUDA, CPU), "onnxruntime offers the CUDA provider")
    if wanted == "cuda":
        raise ValueError(
            f"the CUDA provider was asked for, but this onnxruntime offers only "
            f"{list(available)}: install onnxruntime-gpu"
        )
    return ProviderChoice(
        (CPU,),
        f"onnxruntime offers no CUDA provider (only {list(available)}), so these are "
        "CPU figures: install onnxruntime-gpu to measure the GPU",
    )


def node_placement(events: Sequence[dict]) -> dict[str, Counter]:
    """Operator counts by execution provider, from an onnxruntime profile: which
    provider each node of the graph ran on in the profiled call."""
    placed: dict[str, dict[str, str]] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") != "Node" or "provider" not in args:
            continue
        node = event.get("name", "").removesuffix("_kernel_time")
        placed.setdefault(args["provider"], {})[node] = args.get("op_name", "?")
    return {provider: Counter(nodes.values()) for provider, nodes in sorted(placed.items())}


def torch_gpu() -> dict:
    """What PyTorch sees, for the report: its version and the CUDA device, if any.

    Imported before onnxruntime, so that onnxruntime-gpu finds the CUDA and cuDNN
    libraries PyTorch loads."""
    if importlib.util.find_spec("torch") is None:
        return {"torch": None, "cuda": False, "device": None}
    import torch

    cuda = bool(torch.cuda.is_available())
    return {
        "torch": torch.__version__,
        "cuda": cuda,
        "device": torch.cuda.get_device_name(0) if cuda else None,
    }


# measure


@dataclass(frozen=True)
class SizeResult:
    batch_size: int
    runs: int
    warmup: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    messages_per_s: float
    mean_width: float  # padded tokens per row
    padding: float  # share of positions that are padding


def open_session(model: Path, choice: ProviderChoice, threads: int, profile_dir: Path):
    """An onnxruntime session of `model`, profiling until `end_profiling` is called;
    on the CPU alone it leaves out the fusions a served CPU session leaves out."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(profile_dir / "profile")
    return ort.InferenceSession(
        str(model),
        options,
        providers=list(choice.providers),
        disabled_optimizers=disabled_optimizers(choice),
    )


def disabled_optimizers(choice: ProviderChoice) -> list[str]:
    """The fusions left out: those of serving's CPU sessions when only the CPU runs;
    none beside CUDA, whose fused kernels are the fast ones."""
    return [] if CUDA in choice.providers else list(UNFUSED_ON_CPU)


def feeds_of(batch: Batch, names: dict) -> dict[str, np.ndarray]:
    return {
        names["input_ids"]: batch.input_ids,
        names["attention_mask"]: batch.attention_mask,
        names["signals"]: batch.signals,
    }


def check_probabilities(probs: np.ndarray, batch: Batch) -> None:
    """Refuse figures from a model that did not compute: one finite row per message,
    each summing to one."""
    if probs.shape[0] != len(batch.rows) or not np.all(np.isfinite(probs)):
        raise RuntimeError(
            f"the model gave probabilities of shape {probs.shape} (all finite: "
            f"{bool(np.all(np.isfinite(probs)))}) for a batch of {len(batch.rows)}"
        )
    worst = float(np.abs(probs.sum(axis=1) - 1.0).max())
    if worst > 1e-3:
        raise RuntimeError(f"the model's probabilities sum to 1 +- {worst:.3g}, not 1")


def measure_size(session, batches: list[Batch], names: dict, settings: MeasureSettings):
    """Warm up, then time calls cycling through `batches`, within the count and time
    bounds of `settings`."""
    output = names["probabilities"]
    started = time.perf_counter()
    warmup = 0
    for k in range(max(settings.warmup, 1)):
        probs = session.run([output], feeds_of(batches[k % len(batches)], names))[0]
        check_probabilities(probs, batches[k % len(batches)])
        warmup += 1
        if time.perf_counter() - started > settings.seconds_per_size / 4:
            break

    times_ms: list[float] = []
    timed_from = time.perf_counter()
    while len(times_ms) < settings.runs:
        feeds = feeds_of(batches[len(times_ms) % len(batches)], names)
        call = time.perf_counter()
        session.run([output], feeds)
        times_ms.append(1000 * (time.perf_counter() - call))
        if time.perf_counter() - timed_from > settings.seconds_per_size:
            break

    used = [batches[i % len(batches)] for i in range(len(times_ms))]
    size = len(batches[0].rows)
    return SizeResult(
        batch_size=size,
        runs=len(times_ms),
        warmup=warmup,
        p50_ms=float(np.percentile(times_ms, 50)),
        p99_ms=float(np.percentile(times_ms, 99)),
        mean_ms=float(np.mean(times_ms)),
        messages_per_s=1000 * size * len(times_ms) / sum(times_ms),
        mean_width=float(np.mean([b.input_ids.shape[1] for b in used])),
        padding=float(np.mean([b.padding for b in used])),
    )


def ran_on(session, choice: ProviderChoice, profile: Sequence[dict]) -> tuple[str, list[str]]:
    """The provider that actually ran the model, and notes on how it differs from what
    was asked for."""
    held = session.get_providers()
    placement = node_placement(profile)
    ran = CUDA if CUDA in held and CUDA in placement else CPU
    notes = [choice.note]
    if CUDA in choice.providers and ran != CUDA:
        notes.append(
            "the CUDA provider was asked for but did not run the model (CUDA or cuDNN "
            "libraries missing? see onnxruntime's warnings above): these are CPU figures"
        )
    if ran == CUDA and placement.get(CPU):
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(placement[CPU].items()))
        notes.append(f"nodes left on the CPU (their data crosses to and from the GPU): {ops}")
    return ran, notes


def measure(inputs_dir: Path, settings: MeasureSettings) -> dict:
    """Every figure of one measurement, JSON-ready."""
    model = inputs_dir / MODEL_FILE
    if not model.is_file():
        raise FileNotFoundError(f"{model} not found: `prepare` copies it beside {INPUTS_FILE}")
    inputs = PreparedInputs.load(inputs_dir / INPUTS_FILE)
    digest = sha256_of(model)
    if inputs.meta.get("model_sha256") not in (None, digest):
        raise ValueError(f"{model} is not the model {inputs_dir / INPUTS_FILE} was prepared for")

    gpu = torch_gpu()
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeError(
            "onnxruntime is not installed here: install onnxruntime-gpu (or onnxruntime)"
        ) from None
    available = ort.get_available_providers()
    choice = choose_providers(available, settings.provider)
    if CUDA in choice.providers and not gpu["cuda"] and hasattr(ort, "preload_dlls"):
        # without PyTorch's CUDA libraries loaded, look for those of NVIDIA's wheels
        try:
            ort.preload_dlls()
        except Exception as error:  # noqa: BLE001 - the session reports what is missing
            logger.warning("onnxruntime could not preload the CUDA libraries: %s", error)
    logger.info(
        "onnxruntime %s offers %s; asking for %s",
        ort.__version__,
        available,
        list(choice.providers),
    )

    names = inputs.meta["tensors"]
    order = row_order(inputs.lengths, settings.order, settings.seed)
    results: list[SizeResult] = []
    skipped: list[int] = []
    with tempfile.TemporaryDirectory(prefix="bulwark-gpu-profile-") as profile_dir:
        session = open_session(model, choice, settings.threads, Path(profile_dir))
        first = build_batches(inputs, settings.batch_sizes[0], order)[0]
        session.run([names["probabilities"]], feeds_of(first, names))
        profile = json.loads(Path(session.end_profiling()).read_text())
    ran, notes = ran_on(session, choice, profile)
    if not gpu["cuda"] and ran == CUDA:
        notes.append("PyTorch is absent or sees no GPU, though onnxruntime ran on CUDA")
    if gpu["cuda"] and ran != CUDA:
        notes.append(f"a CUDA GPU is present ({gpu['device']}) but the model ran on the CPU")
    logger.info("the model runs on %s", ran)

    started = time.perf_counter()
    for size in settings.batch_sizes:
        if time.perf_counter() - started > settings.max_seconds:
            skipped.append(size)
            continue
        result = measure_size(session, build_batches(inputs, size, order), names, settings)
        logger.info(
            "batch %d: %d calls, p50 %.2f ms, %.0f messages/s",
            size,
            result.runs,
            result.p50_ms,
            result.messages_per_s,
        )
        results.append(result)
    if skipped:
        notes.append(f"batch sizes {skipped} skipped: past --max-seconds {settings.max_seconds}")
    if len(inputs.lengths) < max(settings.batch_sizes):
        notes.append(f"batches larger than the {len(inputs.lengths)} prepared rows repeat rows")

    return {
        "provider": ran,
        "providers_asked": list(choice.providers),
        "providers_available": available,
        "onnxruntime": ort.__version__,
        "node_placement": {p: dict(ops) for p, ops in node_placement(profile).items()},
        "gpu": gpu,
        "cpus": os.cpu_count(),
        "settings": asdict(settings),
        "inputs": {
            **{k: v for k, v in inputs.meta.items() if k != "tensors"},
            "rows": len(inputs.lengths),
            "tokens_p50": float(np.percentile(inputs.lengths, 50)),
            "tokens_max": int(inputs.lengths.max()),
        },
        "rows": [asdict(r) for r in results],
        "notes": notes,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def table(results: Sequence[dict]) -> str:
    lines = [
        "| batch | calls | p50 ms | p99 ms | msg/s | mean width | padding |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['batch_size']} | {r['runs']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['messages_per_s']:.1f} | {r['mean_width']:.0f} | {100 * r['padding']:.0f}% |"
        )
    return "\n".join(lines)


# prepare


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_version_dir(version_dir: Path) -> dict:
    """The version's bulwark.json, after checking the folder holds what is needed and
    that the model fits what travels to the device."""
    missing = [name for name in VERSION_FILES if not (version_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{version_dir} is not an exported model version: it lacks {missing}"
        )
    model_bytes = (version_dir / MODEL_FILE).stat().st_size
    if model_bytes > CARRY_LIMIT_BYTES:
        raise ValueError(
            f"{version_dir / MODEL_FILE} is {model_bytes / 2**20:.1f} MiB, over the "
            f"{CARRY_LIMIT_BYTES / 2**20:.0f} MiB that travels to the device: "
            "prepare an int8 or distilled variant"
        )
    return json.loads((version_dir / META_FILE).read_text())


def model_inputs(messages, history) -> tuple[list[str], list[list[float]], int]:
    """Each message's model text and signal rows, as scoring computes them, and how
    many messages could not be read."""
    from detection.features import extract_features

    texts, signals, failed = [], [], 0
    for message in messages:
        try:
            found = extract_features(message.data, message.kind, ORG, history)
        except Exception:  # noqa: BLE001 - a message scoring would fail is not measured
            failed += 1
            continue
        texts.append(found.text)
        signals.append(found.signals)
    return texts, signals, failed


def prepare(version_dir: Path, corpora: Path, target: Path, settings: PrepareSettings) -> Path:
    """Write `target`/inputs.npz and copies of the model files; return inputs.npz."""
    sys.path.insert(0, str(ROOT / "scripts"))  # the repository root is there since import
    from bench_serving import fits_tokens, sample_messages

    from detection.encoding import encode_rows, load_tokenizer
    from detection.history import SenderHistory
    from detection.signals import SIGNAL_NAMES
    from detection.tensors import ATTENTION_MASK, INPUT_IDS, PROBABILITIES, SIGNALS

    meta = check_version_dir(version_dir)
    if meta["signal_names"] != list(SIGNAL_NAMES):
        raise ValueError(
            f"model {version_dir} expects signals {meta['signal_names']}, "
            f"but this code computes {list(SIGNAL_NAMES)}"
        )
    if not corpora.is_dir():
        raise FileNotFoundError(f"corpora folder {corpora} not found")

    tokenizer = load_tokenizer(str(version_dir / "tokenizer.json"))
    max_tokens = int(meta["max_length"]) if settings.max_tokens is None else settings.max_tokens
    fits = fits_tokens(tokenizer, max_tokens) if max_tokens else None
    sampled = sample_messages(corpora, settings.messages, settings.stride, fits)
    history = SenderHistory(str(settings.history) if settings.history else ":memory:")
    texts, signals, failed = model_inputs(sampled, history)
    if not texts:
        raise ValueError(f"none of the {len(sampled)} messages sampled from {corpora} is usable")
    if len(texts) < settings.messages:
        logger.warning(
            "prepared %d messages, not the %d asked for: each archive gives an equal "
            "whole share, and some may hold fewer usable messages %sat every %d-th",
            len(texts),
            settings.messages,
            f"of up to {max_tokens} tokens " if max_tokens else "",
            settings.stride,
        )
    rows = encode_rows(tokenizer, texts, int(meta["max_length"]), int(meta["head_tokens"]))

    inputs = PreparedInputs.from_rows(
        rows,
        signals,
        {
            "tensors": {
                "input_ids": INPUT_IDS.name,
                "attention_mask": ATTENTION_MASK.name,
                "signals": SIGNALS.name,
                "probabilities": PROBABILITIES.name,
            },
            "model": str(version_dir),
            "variant": meta.get("variant", {}).get("name", "full"),
            "model_sha256": sha256_of(version_dir / MODEL_FILE),
            "max_length": int(meta["max_length"]),
            "corpora": str(corpora),
            "stride": settings.stride,
            "max_tokens": max_tokens or None,
            "history": str(settings.history) if settings.history else "empty (in memory)",
            "unreadable_messages": failed,
            "prepared_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    target.mkdir(parents=True, exist_ok=True)
    inputs.save(target / INPUTS_FILE)
    for name in (MODEL_FILE, META_FILE):
        shutil.copyfile(version_dir / name, target / name)

    size = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    logger.info(
        "wrote %d rows (%d unreadable messages left out) to %s: %.1f MiB in all",
        len(rows),
        failed,
        target,
        size / 2**20,
    )
    if size > CARRY_LIMIT_BYTES:
        raise ValueError(
            f"{target} holds {size / 2**20:.1f} MiB, over the "
            f"{CARRY_LIMIT_BYTES / 2**20:.0f} MiB that travels to the device: "
            "prepare fewer --messages"
        )
    return target / INPUTS_FILE


# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    prep = commands.add_parser("prepare", help="write the device's inputs (run here)")
    prep.add_argument("--model", type=Path, required=True, help="an exported version folder")
    prep.add_argument(
        "--corpora",
        type=Path,
        default=Path(os.environ.get("BULWARK_CORPORA", ROOT.parent / "shared" / "corpora")),
    )
    prep.add_argument("--history", type=Path, help="sender history (sqlite) for the signals")
    prep.add_argument("--messages", type=positive_int, default=PrepareSettings.messages)
    prep.add_argument("--stride", type=positive_int, default=PrepareSettings.stride)
    prep.add_argument(
        "--max-tokens",
        type=int,
        help="only messages whose text fits this many tokens whole (default: the model's "
        "limit; 0: every length)",
    )
    prep.add_argument("--output", type=Path, default=ROOT / "runs" / "gpu_bench")

    defaults = MeasureSettings()
    meas = commands.add_parser("measure", help="time the model (run on the device)")
    meas.add_argument("--inputs", type=Path, default=ROOT / "runs" / "gpu_bench")
    meas.add_argument(
        "--batch-sizes", type=batch_size_arg, nargs="+", default=list(defaults.batch_sizes)
    )
    meas.add_argument("--warmup", type=int, default=defaults.warmup)
    meas.add_argument("--runs", type=int, default=defaults.runs, help="timed calls per size")
    meas.add_argument("--seconds-per-size", type=float, default=defaults.seconds_per_size)
    meas.add_argument("--max-seconds", type=float, default=defaults.max_seconds)
    meas.add_argument("--order", choices=ORDERS, default=defaults.order)
    meas.add_argument("--seed", type=int, default=defaults.seed)
    meas.add_argument("--provider", choices=PROVIDER_CHOICES, default=defaults.provider)
    meas.add_argument("--threads", type=int, default=defaults.threads, help="CPU provider")
    meas.add_argument("--output", type=Path, help="write the figures as JSON here too")
    return parser


def settings_of(args: argparse.Namespace) -> MeasureSettings:
    return MeasureSettings(
        batch_sizes=tuple(sorted(set(args.batch_sizes))),
        warmup=args.warmup,
        runs=args.runs,
        seconds_per_size=args.seconds_per_size,
        max_seconds=args.max_seconds,
        order=args.order,
        seed=args.seed,
        provider=args.provider,
        threads=args.threads,
    )


def report(figures: dict) -> None:
    inputs = figures["inputs"]
    print(
        f"\nmodel {inputs.get('model')} (variant {inputs.get('variant')}); "
        f"{inputs['rows']} messages, tokens p50 {inputs['tokens_p50']:.0f} / max "
        f"{inputs['tokens_max']}; ran on {figures['provider']} "
        f"(onnxruntime {figures['onnxruntime']}; GPU {figures['gpu']['device'] or 'none'}; "
        f"{figures['cpus']} CPUs); batches {figures['settings']['order']}\n"
    )
    print(table(figures["rows"]))
    print()
    for note in figures["notes"]:
        print(f"- {note}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    if args.command == "prepare":
        try:
            settings = PrepareSettings(args.messages, args.stride, args.max_tokens, args.history)
        except ValueError as error:
            parser.error(f"prepare settings: {error}")
        try:
            prepare(args.model, args.corpora, args.output, settings)
        except (FileNotFoundError, ValueError) as error:
            logger.error("%s", error)
            return 2
        return 0

    try:
        settings = settings_of(args)
    except ValueError as error:
        parser.error(f"measure settings: {error}")
    try:
        figures = measure(args.inputs, settings)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        logger.error("%s", error)
        return 2
    report(figures)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
