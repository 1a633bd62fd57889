"""Where the misses are: missed attacks and false alarms grouped into capability gaps.

Contract:
- `capability_gaps(table, scores, threshold, embeddings, config)` takes the evaluated
  messages (`table`: a frame with id, label, source, category, detectors, signals), one
  model's attack scores and its operating threshold, and returns, for the false
  negatives (attacks scored below the threshold) and the false positives (safe mail at
  or above it), every group of each dimension (category, source, detector present or
  none, each signal present or absent, embedding cluster) with its count, its share
  of the misses, its miss rate, the misses above the overall rate it accounts for
  ("excess"), and the ids of a few examples (never their text), plus the largest gaps
  across dimensions ranked by excess.
- `cluster_labels(embeddings, population, config)` assigns KMeans clusters to the
  messages of one population (all attacks, or all safe mail).
- `PooledOnnxFusion(version_dir)` runs an exported model version in ONNX Runtime and
  returns both its probabilities and the pooled MiniLM text embedding the head reads
  (the graph's own intermediate output, so the numbers are the served model's). It
  groups rows into calls as `serving.scorer.OnnxFusion` does, so its probabilities
  are those every scoring path gets.
- `svd_embeddings(texts, ...)` is the fallback when no MiniLM version is evaluated:
  TF-IDF reduced by truncated SVD.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from detection.encoding import encode_rows, load_tokenizer
from detection.signals import SIGNAL_NAMES
from detection.tensors import CLASS_NAMES, PROBABILITIES
from serving.scorer import RuntimeSettings, call_groups, model_feeds, onnx_session, runs_rows_alone

logger = logging.getLogger(__name__)

SAFE, ATTACK = CLASS_NAMES.index("safe"), CLASS_NAMES.index("attack")
NO_DETECTOR = "no detector hit"


@dataclass(frozen=True)
class GapConfig:
    clusters: int = 8  # KMeans clusters per population (fewer when it is small)
    min_cluster_size: int = 10  # messages per cluster at least, on average
    examples: int = 5  # ids shown per group
    largest: int = 10  # gaps listed across dimensions
    min_count: int = 3  # a group with fewer misses is not listed among the largest
    seed: int = 0


class PooledOnnxFusion:
    """An exported version whose session also returns the pooled text embedding.

    Rows are grouped into ONNX Runtime calls as `serving.scorer.OnnxFusion` groups
    them (`call_groups`: length buckets, or one row per call for an int8 version,
    whose scores would otherwise depend on the rows run beside it), so both give a
    message the same probabilities.
    """

    def __init__(self, version_dir: Path, settings: RuntimeSettings | None = None) -> None:
        import onnx

        self.meta = json.loads((version_dir / "bulwark.json").read_text())
        self.settings = settings or RuntimeSettings()
        self.rows_alone = runs_rows_alone(self.meta)
        graph = onnx.load(str(version_dir / "model.onnx"))
        self.pooled_name = _pooled_output(graph)
        if self.pooled_name:
            graph.graph.output.append(onnx.ValueInfoProto(name=self.pooled_name))
        self.session = onnx_session(
            graph.SerializeToString(), self.settings.threads, self.settings.spinning
        )
        self.tokenizer = load_tokenizer(str(version_dir / "tokenizer.json"))
        self.max_length = int(self.meta["max_length"])
        self.head_tokens = int(self.meta["head_tokens"])

    def run(
        self,
        texts: Sequence[str],
        signals: Sequence[Sequence[float]],
        progress: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, pooled embeddings or None), in input order; `progress` names
        a progress bar (none by default)."""
        outputs = [PROBABILITIES.name] + ([self.pooled_name] if self.pooled_name else [])
        probabilities = np.zeros((len(texts), len(CLASS_NAMES)), dtype=np.float32)
        pooled = None
        if not texts:
            return probabilities, pooled

        # tokenised once, then run in the scorer's calls
        rows = encode_rows(self.tokenizer, texts, self.max_length, self.head_tokens)
        groups = call_groups([len(r) for r in rows], self.settings, self.rows_alone)
        for group in tqdm(groups, desc=progress, disable=progress is None, unit="batch"):
            feeds = model_feeds([rows[i] for i in group], [signals[i] for i in group])
            result = self.session.run(outputs, feeds)
            probabilities[group] = result[0]
            if self.pooled_name:
                if pooled is None:
                    pooled = np.zeros((len(texts), result[1].shape[1]), dtype=np.float32)
                pooled[group] = result[1]
        return probabilities, pooled


def _pooled_output(graph) -> str | None:
    """The tensor the head concatenates with the projected signals: the pooled text.

    The fusion model's forward joins [pooled, signal_proj(signals)]; in the exported
    graph that is the Concat one of whose inputs comes from the signal projection.
    """
    for node in graph.graph.node:
        if node.op_type != "Concat" or len(node.input) != 2:
            continue
        if "signal_proj" in node.input[1] and "signal_proj" not in node.input[0]:
            return node.input[0]
    logger.warning("no pooled text output found in the ONNX graph; clusters fall back to TF-IDF")
    return None


def svd_embeddings(texts: Sequence[str], dims: int = 64, seed: int = 0) -> np.ndarray:
    """TF-IDF (uni- and bigrams) reduced to `dims` by truncated SVD, rows L2-normalised."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    features = TfidfVectorizer(max_features=50_000, sublinear_tf=True, min_df=2).fit_transform(
        [t[:4000] for t in texts]
    )
    dims = max(1, min(dims, features.shape[1] - 1, features.shape[0] - 1))
    return normalize(TruncatedSVD(dims, random_state=seed).fit_transform(features))


def cluster_labels(embeddings: np.ndarray, population: np.ndarray, config: GapConfig) -> np.ndarray:
    """KMeans cluster of each message of `population` (a boolean mask); -1 elsewhere."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import normalize

    labels = np.full(len(population), -1)
    count = int(population.sum())
    k = min(config.clusters, count // config.min_cluster_size)
    if k < 2:
        return labels
    points = normalize(np.asarray(embeddings)[population])
    labels[population] = KMeans(k, n_init=3, random_state=config.seed).fit_predict(points)
    return labels


def capability_gaps(
    table: pd.DataFrame,
    scores: np.ndarray,
    threshold: float,
    clusters: dict[str, np.ndarray] | None = None,
    config: GapConfig = GapConfig(),
) -> dict:
    """False negatives and false positives at `threshold`, grouped into gaps.

    `clusters`: {"attack": labels, "safe": labels} from `cluster_labels`, optional.
    """
    labels = table["label"].to_numpy()
    flagged = np.asarray(scores) >= threshold
    clusters = clusters or {}
    return {
        "threshold": float(threshold),
        "false_negatives": _analyse(
            table, labels == ATTACK, ~flagged, clusters.get("attack"), config
        ),
        "false_positives": _analyse(table, labels == SAFE, flagged, clusters.get("safe"), config),
    }


def _analyse(table, population, wrong, cluster, config: GapConfig) -> dict:
    missed = population & wrong
    total, size = int(missed.sum()), int(population.sum())
    rate = total / size if size else 0.0
    dimensions = {
        "category": table["category"].to_numpy(),
        "source": table["source"].to_numpy(),
    }
    if cluster is not None and (cluster[population] >= 0).any():
        dimensions["embedding_cluster"] = np.array([f"cluster {c}" for c in cluster], dtype=object)
    groups: dict[str, list[dict]] = {}
    for name, keys in dimensions.items():
        groups[name] = _groups(table, keys, population, missed, rate, total, config)
    groups["detector"] = _membership_groups(
        table, _detector_members(table), population, missed, rate, total, config
    )
    groups["signal"] = _membership_groups(
        table, _signal_members(table), population, missed, rate, total, config
    )
    if "embedding_cluster" in groups:
        _describe_clusters(groups["embedding_cluster"], table, dimensions["embedding_cluster"])
    candidates = [
        {"dimension": name, **group}
        for name, found in groups.items()
        for group in found
        if group["count"] >= config.min_count and group["excess"] > 0
    ]
    candidates.sort(key=lambda g: -g["excess"])
    return {
        "count": total,
        "population": size,
        "rate": rate,
        "groups": groups,
        "largest": candidates[: config.largest],
    }


def _group(name, member, table, population, missed, rate, total, config) -> dict | None:
    in_population = member & population
    size = int(in_population.sum())
    if size == 0:
        return None
    count = int((member & missed).sum())
    ids = table["id"].to_numpy()[member & missed][: config.examples]
    return {
        "group": name,
        "count": count,
        "share_of_misses": count / total if total else 0.0,
        "population": size,
        "miss_rate": count / size,
        "excess": count - rate * size,
        "example_ids": [str(i) for i in ids],
    }


def _groups(table, keys, population, missed, rate, total, config) -> list[dict]:
    found = []
    for key in sorted(set(keys[population].tolist())):
        group = _group(str(key), keys == key, table, population, missed, rate, total, config)
        if group:
            found.append(group)
    return sorted(found, key=lambda g: -g["count"])


def _membership_groups(table, members, population, missed, rate, total, config) -> list[dict]:
    """One group per distinct set of messages: members that select the same messages of
    the population (signals that always fire together) are listed as one, names joined."""
    merged: dict[bytes, list[str]] = {}
    chosen: dict[bytes, np.ndarray] = {}
    for name, member in members.items():
        key = np.packbits(member & population).tobytes()
        merged.setdefault(key, []).append(name)
        chosen.setdefault(key, member)
    found = []
    for key, names in merged.items():
        group = _group(
            " / ".join(names), chosen[key], table, population, missed, rate, total, config
        )
        if group:
            found.append(group)
    return sorted(found, key=lambda g: -g["excess"])


def _detector_members(table) -> dict[str, np.ndarray]:
    detectors = table["detectors"].tolist()
    members = {NO_DETECTOR: np.array([len(d) == 0 for d in detectors])}
    for category in sorted({c for d in detectors for c in d}):
        members[f"{category} hit"] = np.array([category in d for d in detectors])
    return members


def _signal_members(table) -> dict[str, np.ndarray]:
    signals = np.asarray(table["signals"].tolist(), dtype=np.float32)
    members = {}
    for column, name in enumerate(SIGNAL_NAMES[: signals.shape[1]]):
        fired = signals[:, column] > 0
        if fired.any() and not fired.all():
            members[f"{name} present"] = fired
            members[f"{name} absent"] = ~fired
    return members


def _describe_clusters(groups: list[dict], table, keys) -> None:
    """Name each cluster by the source and category most of its messages have."""
    for group in groups:
        mine = keys == group["group"]
        for column in ("source", "category"):
            counts = pd.Series(table[column].to_numpy()[mine]).value_counts()
            group[f"main_{column}"] = f"{counts.index[0]} ({counts.iloc[0] / counts.sum():.0%})"
