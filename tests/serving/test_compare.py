"""The comparison of two models' rescoring, message by message."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from serving.compare import compare_runs, render_markdown, write_comparison

JAN = datetime(2024, 1, 15, tzinfo=timezone.utc)
FEB = datetime(2024, 2, 15, tzinfo=timezone.utc)

# id: (A's verdict, A's category, B's verdict, B's category, date, label)
MESSAGES = {
    "caught": ("safe", None, "attack", "credential_phishing", JAN, "attack"),
    "caught-too": ("spam", "spam", "attack", "payment_fraud", FEB, "attack"),
    "missed": ("attack", "malware", "safe", None, FEB, "attack"),
    "false-alarm": ("safe", None, "attack", "credential_phishing", FEB, "safe"),
    "cleared": ("attack", "phishing", "safe", None, None, "safe"),
    "unlabelled": ("safe", None, "spam", "spam", JAN, None),
    "same": ("attack", "phishing", "attack", "phishing", JAN, "attack"),
    "same-safe": ("safe", None, "safe", None, JAN, "safe"),
}


def frames(broken: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    a_rows, b_rows = [], []
    for message_id, (va, ca, vb, cb, when, label) in MESSAGES.items():
        common = {"id": message_id, "date": when, "label": label}
        error = "ValueError: unreadable" if message_id == broken else None
        a_rows.append({**common, "verdict": va, "category": ca, "error": None, "model": "A/1"})
        b_rows.append({**common, "verdict": vb, "category": cb, "error": error, "model": "B/1"})
    return pd.DataFrame(a_rows), pd.DataFrame(b_rows)


def test_changed_verdicts_are_counted_per_change_category_and_month():
    report = compare_runs(*frames())

    assert report["models"] == {"a": "A/1", "b": "B/1"}
    assert (report["compared"], report["changed"]) == (8, 6)
    assert report["transitions"] == {
        "attack -> safe": 2,
        "safe -> attack": 2,
        "safe -> spam": 1,
        "spam -> attack": 1,
    }
    assert report["per_category"] == {
        "credential_phishing": {"newly_flagged": 2, "no_longer_flagged": 0},
        "malware": {"newly_flagged": 0, "no_longer_flagged": 1},
        "payment_fraud": {"newly_flagged": 1, "no_longer_flagged": 0},
        "phishing": {"newly_flagged": 0, "no_longer_flagged": 1},
    }
    assert report["per_month"] == {
        "2024-01": {"changed": 2, "newly_flagged": 1, "no_longer_flagged": 0},
        "2024-02": {"changed": 3, "newly_flagged": 2, "no_longer_flagged": 1},
        "undated": {"changed": 1, "newly_flagged": 0, "no_longer_flagged": 1},
    }


def test_labels_give_newly_caught_attacks_and_newly_flagged_safe_mail_with_ids():
    labels = compare_runs(*frames())["labels"]

    assert labels["labelled"] == 7
    attack, safe = labels["attack"], labels["safe"]
    assert (attack["messages"], attack["caught_by_a"], attack["caught_by_b"]) == (4, 2, 3)
    assert attack["newly_caught_examples"] == ["caught", "caught-too"]
    assert attack["newly_missed_examples"] == ["missed"]
    assert (safe["messages"], safe["flagged_by_a"], safe["flagged_by_b"]) == (3, 1, 1)
    assert safe["newly_flagged_examples"] == ["false-alarm"]
    assert safe["newly_cleared_examples"] == ["cleared"]


def test_a_message_that_failed_in_either_run_is_left_out_and_counted():
    report = compare_runs(*frames(broken="caught"))

    assert (report["compared"], report["failed_in_either"], report["changed"]) == (7, 1, 5)
    assert report["labels"]["attack"]["newly_caught_examples"] == ["caught-too"]


def test_examples_are_capped():
    report = compare_runs(*frames(), examples=1)

    assert report["labels"]["attack"]["newly_caught_examples"] == ["caught"]


def test_markdown_report_holds_every_table(tmp_path):
    text = render_markdown(compare_runs(*frames()))

    assert "| safe -> attack | 2 |" in text
    assert "| credential_phishing | 2 | 0 |" in text
    assert "| 2024-02 | 3 | 2 | 1 |" in text
    assert "| attacks caught | 4 | 2 | 3 | 2 | 1 |" in text
    assert "| safe mail flagged | 3 | 1 | 1 | 1 | 1 |" in text
    assert "- attack newly caught: `caught`, `caught-too`" in text


def test_a_folder_without_the_second_model_is_refused(tmp_path):
    a, _ = frames()
    (tmp_path / "scores" / "slot=a").mkdir(parents=True)
    a.to_parquet(tmp_path / "scores" / "slot=a" / "part-000000.parquet")

    with pytest.raises(FileNotFoundError, match="slot=b does not exist"):
        write_comparison(tmp_path)
