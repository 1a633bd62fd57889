"""Splits that expose shift: by time, by source, and the in-distribution one beside them.

Contract: each function takes the pooled table (`pooled_frame(data)`: one row per
message of every split of a built dataset, with its `split` column) and returns
`ShiftSplit`s, whose `train`, `calibrate` and `test` are row positions in that table:

- `time_split(frame, evaluated)`: the dataset's own split, cut by time within each
  source and label: train on the earlier "train" rows, choose thresholds on
  "validation", test on `evaluated` ("validation" or "test"), which is later still.
- `leave_one_source_out(frame, evaluated)`: per source S, train on the "train" rows of
  the other sources, choose thresholds on their "validation" rows, and test on the
  `evaluated` rows of every source, S included: S's attacks are then measured against
  thresholds set on other mail, and S's safe mail shows the false-positive rate such
  thresholds give on mail from a source never seen.
- `random_split(frame, seed)`: the in-distribution reference, a random split of all
  rows stratified by source and label (70/15/15). It is reported only beside the two
  above, never alone: it is what every public benchmark saturates.

Raises ValueError when a split would train on no attack or test on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from datasets import DatasetDict

from detection.tensors import CLASS_NAMES
from training.evaluate import message_categories, months

ATTACK = CLASS_NAMES.index("attack")
POOLED_COLUMNS = ("id", "source", "label", "date", "text", "signals")
KINDS = ("time", "leave_one_source_out", "in_distribution")


@dataclass(frozen=True)
class ShiftSplit:
    name: str
    kind: str  # one of KINDS
    train: np.ndarray
    calibrate: np.ndarray
    test: np.ndarray
    held_out_source: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"split kind must be one of {KINDS}, got {self.kind!r}")

    def summary(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "held_out_source": self.held_out_source,
            "train_rows": int(len(self.train)),
            "calibrate_rows": int(len(self.calibrate)),
            "test_rows": int(len(self.test)),
            "note": self.note,
        }


def pooled_frame(data: DatasetDict) -> pd.DataFrame:
    """Every split's rows in one frame, with `split`, `category`, `detectors` and `month`.

    The raw bytes are left out; `category` is the strongest detector hit's, `detectors`
    the categories of every hit.
    """
    parts = []
    for split, rows in data.items():
        columns = rows.select_columns([*POOLED_COLUMNS, "hit_categories", "hit_scores"])
        frame = pd.DataFrame({c: columns[c] for c in POOLED_COLUMNS})
        frame["category"] = message_categories(columns["hit_categories"], columns["hit_scores"])
        frame["detectors"] = [tuple(sorted(set(c))) for c in columns["hit_categories"]]
        frame["hit_categories"] = columns["hit_categories"]
        frame["hit_scores"] = columns["hit_scores"]
        frame["split"] = split
        parts.append(frame)
    frame = pd.concat(parts, ignore_index=True)
    frame["month"] = months(frame["date"].tolist())
    return frame


def _positions(mask) -> np.ndarray:
    return np.flatnonzero(np.asarray(mask))


def _check(split: ShiftSplit, frame: pd.DataFrame) -> ShiftSplit:
    if not np.any(frame["label"].to_numpy()[split.train] == ATTACK):
        raise ValueError(f"split {split.name!r} has no attack in its training rows")
    if len(split.test) == 0:
        raise ValueError(f"split {split.name!r} has no test rows")
    return split


def time_split(frame: pd.DataFrame, evaluated: str = "test") -> ShiftSplit:
    if evaluated not in ("validation", "test"):
        raise ValueError(f"the evaluated split must be 'validation' or 'test', got {evaluated!r}")
    split = frame["split"]
    note = "earlier mail trains, later mail tests, within each source and label"
    if evaluated == "validation":
        note += "; thresholds are chosen on the same validation rows they are tested on"
    return _check(
        ShiftSplit(
            "time",
            "time",
            _positions(split == "train"),
            _positions(split == "validation"),
            _positions(split == evaluated),
            note=note,
        ),
        frame,
    )


def leave_one_source_out(frame: pd.DataFrame, evaluated: str = "test") -> list[ShiftSplit]:
    """One split per source that has attacks or safe mail to measure."""
    out = []
    split, source = frame["split"], frame["source"]
    for held_out in sorted(source.unique()):
        others = source != held_out
        candidate = ShiftSplit(
            f"without {held_out}",
            "leave_one_source_out",
            _positions(others & (split == "train")),
            _positions(others & (split == "validation")),
            _positions(split == evaluated),
            held_out_source=held_out,
            note=f"trained and thresholded without any {held_out} mail",
        )
        if not np.any(frame["label"].to_numpy()[candidate.train] == ATTACK):
            continue  # the other sources hold no attack to learn from
        out.append(_check(candidate, frame))
    return out


def random_split(frame: pd.DataFrame, seed: int = 0, fractions=(0.70, 0.15)) -> ShiftSplit:
    rng = np.random.default_rng(seed)
    train, calibrate, test = [], [], []
    for _, rows in frame.groupby(["source", "label"], sort=True):
        positions = rng.permutation(rows.index.to_numpy())
        cut_train = int(len(positions) * fractions[0])
        cut_calibrate = int(len(positions) * (fractions[0] + fractions[1]))
        train.append(positions[:cut_train])
        calibrate.append(positions[cut_train:cut_calibrate])
        test.append(positions[cut_calibrate:])
    return _check(
        ShiftSplit(
            "random",
            "in_distribution",
            np.sort(np.concatenate(train)),
            np.sort(np.concatenate(calibrate)),
            np.sort(np.concatenate(test)),
            note="random rows, stratified by source and label: the optimistic reference",
        ),
        frame,
    )
