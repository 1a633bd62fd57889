"""The enterprise simulator and the baseline report, on small synthetic body pools."""

from __future__ import annotations

import csv
import json
import os
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from detection.baselines import domain_label
from detection.directory import load_directory
from detection.signals import SIGNAL_NAMES
from detection.sources import iter_messages
from training.baseline_report import recall_at_fpr, score_stream
from training.simulate import (
    ATTACK_CATEGORIES,
    BodyPools,
    SimulationConfig,
    is_english,
    lookalike_domain,
    render,
    simulate_streams,
    write_stream,
)

REAL_CORPORA = Path(
    os.environ.get("BULWARK_CORPORA", Path(__file__).parents[2].parent / "shared" / "corpora")
)
HAM = tuple(
    (f"Notes {i}", f"Hi, the build for module {i} is ready for review and the tests pass.")
    for i in range(30)
)
NEWS = tuple(
    (f"Weekly digest {i}", f"This week in the project: release {i} is out.") for i in range(5)
)
PHISH = tuple(
    (
        f"Account alert {i}",
        f"Dear {'recipient@example.invalid'}, verify your account at http://login{i}.example.net "
        "or it will be suspended.",
    )
    for i in range(10)
)
POOLS = BodyPools(HAM, NEWS, PHISH, {"ham": {"synthetic": 30}})
SMALL = SimulationConfig(
    orgs=2,
    days=21,
    employees=12,
    executives=2,
    finance_staff=2,
    vendors=3,
    partners=3,
    newsletters=2,
    newsletter_subscribers=3,
    inbound_per_day=4.0,
    internal_per_day=2.0,
    outbound_per_day=1.0,
    attacks_per_day=1.5,
    lateral_recipients=(3, 6),
)


def _streams(config: SimulationConfig = SMALL, seed: int = 0):
    return simulate_streams(config, POOLS, random.Random(seed))


def test_the_same_seed_gives_byte_identical_streams_and_another_seed_does_not():
    first = [render(m) for s in _streams() for m in s.mails]
    again = [render(m) for s in _streams() for m in s.mails]
    other = [render(m) for s in _streams(seed=1) for m in s.mails]
    assert first == again
    assert first != other


def test_streams_are_in_time_order_and_hold_every_attack_category():
    streams = _streams()
    categories = Counter(m.category for s in streams for m in s.mails if m.label == "attack")
    assert set(categories) == set(ATTACK_CATEGORIES)
    for stream in streams:
        times = [m.when for m in stream.mails]
        assert times == sorted(times)


def test_safe_mail_has_new_contacts_and_some_attacks_come_from_known_accounts():
    mails = [m for s in _streams() for m in s.mails]
    safe_inbound = [m for m in mails if m.label == "safe" and m.direction == "inbound"]
    assert any(m.variant == "new_contact" for m in safe_inbound)
    assert any(m.in_reply_to for m in safe_inbound)  # threads and replies
    known = {m.sender.address for m in mails if m.label == "safe"}
    from_known = [m for m in mails if m.label == "attack" and m.sender.address in known]
    assert {m.category for m in from_known} <= {"vendor_invoice_fraud", "lateral_phishing"}
    assert from_known  # compromised accounts: "first-time sender" alone cannot catch them


def test_attack_senders_impersonate_the_directory():
    for stream in _streams():
        executives = {p.name for p in stream.org.role("executive")}
        vendor_domains = {c.domain for c in stream.org.vendors}
        for mail in stream.mails:
            if mail.category == "executive_impersonation":
                assert mail.sender.name in executives
                assert not mail.sender.address.endswith("@" + stream.org.domain)
            if mail.category == "vendor_invoice_fraud" and mail.variant == "lookalike_domain":
                assert mail.sender.address.rpartition("@")[2] not in vendor_domains
            if mail.category == "lateral_phishing":
                assert mail.sender.address.endswith("@" + stream.org.domain)
                assert len(mail.to) >= 3


@pytest.mark.parametrize("seed", range(5))
def test_lookalike_domain_is_another_domain_within_two_edits_of_the_label(seed):
    domain = lookalike_domain("kestrelworks.com", random.Random(seed))
    assert domain != "kestrelworks.com"
    label = domain_label(domain) or domain.partition(".")[0]
    assert _edits(label, "kestrelworks") <= 2


def _edits(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def test_written_archive_labels_and_directory_agree(tmp_path):
    stream = _streams()[0]
    counts = write_stream(stream, tmp_path)
    with open(tmp_path / "labels.csv", newline="") as handle:
        labels = list(csv.DictReader(handle))
    ids = [m.id for m in iter_messages(tmp_path / "mail.tar.gz")]
    assert ids == [row["id"] for row in labels]
    assert sum(counts.values()) == len(labels)
    directory = load_directory(tmp_path / "directory.json")
    assert directory.domains == (stream.org.domain,)
    assert {p.role for p in directory.people} >= {"executive", "finance", "staff"}
    attacks = [row for row in labels if row["label"] == "attack"]
    assert {row["category"] for row in attacks} == set(ATTACK_CATEGORIES)


def test_report_stream_has_recipient_signals_and_learns_only_from_safe_mail(tmp_path):
    stream = _streams()[0]
    write_stream(stream, tmp_path)
    rows = score_stream(tmp_path)
    assert all(row["direction"] != "outbound" for row in rows)
    column = {name: i for i, name in enumerate(SIGNAL_NAMES)}
    safe_messages = [r["signals"][column["recipient_safe_messages"]] for r in rows]
    assert max(safe_messages) > 0  # recipients are keyed although sanitising hid them
    assert all("@" + stream.org.domain not in r["text"].split("\n")[0] for r in rows)

    # a repeat credential-phishing sender never becomes known: its mail is never recorded
    seen = column["sender_seen_before"]
    for row in rows:
        if row["category"] == "credential_phishing":
            assert row["signals"][seen] == 0


def test_recall_at_fpr_uses_the_threshold_that_flags_at_most_that_share_of_safe_mail():
    safe = np.linspace(0.0, 0.999, 1000)  # the best 1 of 1000 sits at 0.999
    attacks = np.array([0.9985, 0.9995, 1.0, 0.5])
    assert recall_at_fpr(safe, attacks, 0.001) == 0.75  # one safe flagged: above 0.998
    assert recall_at_fpr(safe, attacks, 0.0) == 0.5  # none flagged: above 0.999
    assert np.isnan(recall_at_fpr(safe, np.array([]), 0.001))


def test_config_rejects_unknown_keys_and_rates_out_of_range():
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        SimulationConfig.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="reply_rate must be in \\[0, 1\\], got 1.5"):
        SimulationConfig(reply_rate=1.5)
    with pytest.raises(ValueError, match="attack_mix must be 4 weights"):
        SimulationConfig(attack_mix=(1.0, 0.0))
    assert SimulationConfig.from_dict({"lateral_recipients": [2, 4]}).lateral_recipients == (2, 4)


def test_english_test_accepts_english_and_rejects_other_languages():
    english = "Please find the report attached, and let me know if you have any questions on it."
    german = (
        "Bitte bestätigen Sie Ihr Konto innerhalb von vierundzwanzig Stunden, sonst wird der "
        "Zugang zu Ihrem Postfach gesperrt."
    )
    assert is_english(english)
    assert not is_english(german)
    assert not is_english("Too short to tell.")


@pytest.mark.corpora
@pytest.mark.skipif(not REAL_CORPORA.is_dir(), reason=f"real corpora not found at {REAL_CORPORA}")
def test_simulate_command_writes_org_folders_from_real_corpora(tmp_path):
    from serving.cli import main

    config = replace(SMALL, orgs=1, days=7, ham_bodies=40, newsletter_bodies=5, phishing_bodies=10)
    values = {k: v for k, v in config.__dict__.items() if k not in ("orgs", "seed", "days")}
    (tmp_path / "config.json").write_text(json.dumps(values))
    output = tmp_path / "sim"
    status = main(
        [
            "simulate",
            "--orgs",
            "1",
            "--days",
            "7",
            "--seed",
            "3",
            "--output",
            str(output),
            "--corpora",
            str(REAL_CORPORA),
            "--config",
            str(tmp_path / "config.json"),
        ]
    )
    assert status == 0
    summary = json.loads((output / "simulation.json").read_text())
    assert summary["config"]["seed"] == 3
    assert set(summary["bodies"]) == {"ham", "newsletter", "phishing"}
    assert (output / "org00" / "mail.tar.gz").exists()
    rows = score_stream(output / "org00")
    column = SIGNAL_NAMES.index("recipient_safe_messages")
    assert any(row["signals"][column] > 0 for row in rows)


def test_docs_list_every_simulation_parameter_with_its_default():
    from dataclasses import fields

    doc = (Path(__file__).parents[2] / "docs" / "simulator.md").read_text()
    missing = [
        f.name for f in fields(SimulationConfig) if f"| `{f.name}` | `{f.default!r}` |" not in doc
    ]
    assert missing == []


def test_report_compares_every_column_and_an_exported_model_on_a_time_split(tmp_path):
    from dataclasses import asdict

    from tests.model_fixtures import tiny_model_version
    from training.baseline_report import (
        ALL,
        COLUMNS,
        MODEL_COLUMN,
        ReportConfig,
        render_markdown,
        simulated_report,
    )

    for stream in _streams():
        write_stream(stream, tmp_path / stream.org.id)
    summary = {"config": asdict(SMALL), "bodies": POOLS.sources}
    (tmp_path / "simulation.json").write_text(json.dumps(summary))
    _, version_dir = tiny_model_version()

    config = ReportConfig(tree_iterations=20, folds=2, text_max_features=2000)
    report = simulated_report(tmp_path, config, version_dir)

    assert list(report.recall[0.001][ALL]) == [*COLUMNS, MODEL_COLUMN]
    assert report.counts[ALL] == sum(v for k, v in report.counts.items() if k not in (ALL, "safe"))
    assert set(report.train_counts) >= {"safe"}
    for by_column in report.recall[0.01].values():
        assert all(0.0 <= v <= 1.0 for v in by_column.values() if v == v)
    assert "| all attacks |" in render_markdown(report)
