"""The cheap baselines every model is compared with, fitted on the same split.

Contract:
- `TfidfBaseline.fit(texts, labels)` fits TF-IDF word uni- and bigrams with logistic
  regression; `.attack_scores(texts)` gives each text's attack probability. The words
  are hashed (`hashed_counts`), so the counts of a table can be computed once and
  refitted on many splits (`fit_counts`, `attack_scores_counts`): the inverse document
  frequencies are still learnt from each split's own training rows.
- `SignalGbmBaseline.fit(signals, labels)` fits scikit-learn's
  HistGradientBoostingClassifier on the signal vectors alone (no text);
  `.attack_scores(signals)` gives each row's attack probability.

Both take labels as indices into `CLASS_NAMES`, learn attack against everything else
(safe and spam), and raise ValueError when the training labels hold no attack or
nothing else, since an attack score cannot be learnt from one class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detection.tensors import CLASS_NAMES

ATTACK = CLASS_NAMES.index("attack")


@dataclass(frozen=True)
class TfidfConfig:
    hash_bits: int = 20  # 2**20 hashed uni- and bigram features
    max_chars: int = 4000  # of each text, read from the start: bounds the work on long mail
    c: float = 10.0
    max_iter: int = 1000


@dataclass(frozen=True)
class GbmConfig:
    max_iter: int = 150
    learning_rate: float = 0.1
    max_leaf_nodes: int = 31
    seed: int = 0  # also draws the rows held back for early stopping


def _attack_targets(labels: Sequence[int], name: str) -> np.ndarray:
    """1 for an attack, 0 for anything else; ValueError unless both occur."""
    labels = np.asarray(labels)
    targets = (labels == ATTACK).astype(np.int64)
    if targets.min(initial=1) == 1 or targets.max(initial=0) == 0:
        raise ValueError(
            f"{name} needs attack and non-attack messages among its training labels, got "
            f"classes {sorted({CLASS_NAMES[i] for i in np.unique(labels)})}"
        )
    return targets


def hashed_counts(texts: Sequence[str], config: TfidfConfig = TfidfConfig()):
    """Word uni- and bigram counts of `texts`, hashed (a sparse matrix, one row each)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(
        n_features=2**config.hash_bits,
        ngram_range=(1, 2),
        alternate_sign=False,
        norm=None,
        dtype=np.float32,
    )
    return vectorizer.transform([t[: config.max_chars] for t in texts])


class TfidfBaseline:
    def __init__(self, config: TfidfConfig = TfidfConfig()) -> None:
        self.config = config

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> TfidfBaseline:
        return self.fit_counts(hashed_counts(texts, self.config), labels)

    def fit_counts(self, counts, labels: Sequence[int]) -> TfidfBaseline:
        from sklearn.feature_extraction.text import TfidfTransformer
        from sklearn.linear_model import LogisticRegression

        targets = _attack_targets(labels, "the TF-IDF baseline")
        self.weighting_ = TfidfTransformer(sublinear_tf=True)
        features = self.weighting_.fit_transform(counts)
        self.classifier_ = LogisticRegression(
            max_iter=self.config.max_iter, C=self.config.c, class_weight="balanced"
        )
        self.classifier_.fit(features, targets)
        return self

    def attack_scores(self, texts: Sequence[str]) -> np.ndarray:
        return self.attack_scores_counts(hashed_counts(texts, self.config))

    def attack_scores_counts(self, counts) -> np.ndarray:
        return self.classifier_.predict_proba(self.weighting_.transform(counts))[:, 1]


class SignalGbmBaseline:
    def __init__(self, config: GbmConfig = GbmConfig()) -> None:
        self.config = config

    def fit(self, signals: Sequence[Sequence[float]], labels: Sequence[int]) -> SignalGbmBaseline:
        from sklearn.ensemble import HistGradientBoostingClassifier

        targets = _attack_targets(labels, "the signals GBM baseline")
        self.classifier_ = HistGradientBoostingClassifier(
            max_iter=self.config.max_iter,
            learning_rate=self.config.learning_rate,
            max_leaf_nodes=self.config.max_leaf_nodes,
            class_weight="balanced",
            early_stopping=True,
            random_state=self.config.seed,
        )
        self.classifier_.fit(np.asarray(signals, dtype=np.float32), targets)
        return self

    def attack_scores(self, signals: Sequence[Sequence[float]]) -> np.ndarray:
        return self.classifier_.predict_proba(np.asarray(signals, dtype=np.float32))[:, 1]
