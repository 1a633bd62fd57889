import numpy as np
import pandas as pd
import pytest

from training.splits import leave_one_source_out, random_split, time_split


def _frame() -> pd.DataFrame:
    rows = []
    for source, labels in (("corp-a", (0, 2)), ("corp-b", (0, 1, 2)), ("list-c", (0,))):
        for label in labels:
            for i in range(20):
                split = "train" if i < 14 else ("validation" if i < 17 else "test")
                rows.append(
                    {
                        "id": f"{source}#{label}-{i}",
                        "source": source,
                        "label": label,
                        "date": f"2024-{1 + i % 12:02d}-01T00:00:00+00:00",
                        "split": split,
                    }
                )
    return pd.DataFrame(rows)


def test_time_split_trains_on_train_thresholds_on_validation_and_tests_on_test():
    frame = _frame()
    split = time_split(frame, "test")
    assert set(frame["split"].iloc[split.train]) == {"train"}
    assert set(frame["split"].iloc[split.calibrate]) == {"validation"}
    assert set(frame["split"].iloc[split.test]) == {"test"}


def test_time_split_on_validation_says_its_thresholds_are_in_sample():
    assert "same validation rows" in time_split(_frame(), "validation").note
    with pytest.raises(ValueError, match="'validation' or 'test'"):
        time_split(_frame(), "train")


def test_leave_one_source_out_never_trains_or_thresholds_on_the_held_out_source():
    frame = _frame()
    splits = leave_one_source_out(frame, "test")
    assert [s.held_out_source for s in splits] == ["corp-a", "corp-b", "list-c"]
    for split in splits:
        assert split.held_out_source not in set(frame["source"].iloc[split.train])
        assert split.held_out_source not in set(frame["source"].iloc[split.calibrate])
        assert split.held_out_source in set(frame["source"].iloc[split.test])


def test_leave_one_source_out_skips_a_source_whose_absence_leaves_no_attack():
    frame = _frame()
    frame = frame[~((frame["source"] == "corp-b") & (frame["label"] == 2))].reset_index(drop=True)
    held_out = [s.held_out_source for s in leave_one_source_out(frame, "test")]
    assert "corp-a" not in held_out  # only corp-a has attacks left


def test_random_split_is_disjoint_and_keeps_every_source_and_label_in_test():
    frame = _frame()
    split = random_split(frame, seed=3)
    parts = [set(split.train), set(split.calibrate), set(split.test)]
    assert sum(map(len, parts)) == len(frame) == len(set().union(*parts))
    test = frame.iloc[split.test]
    assert len(test.groupby(["source", "label"])) == len(frame.groupby(["source", "label"]))
    assert not np.array_equal(np.sort(split.test), np.sort(time_split(frame).test))


def test_a_split_with_no_attack_to_train_on_is_refused():
    frame = _frame()
    frame = frame[frame["label"] != 2].reset_index(drop=True)
    with pytest.raises(ValueError, match="no attack in its training rows"):
        time_split(frame)
