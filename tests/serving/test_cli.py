import json

from serving.cli import main
from tests.model_fixtures import synthetic_raw_messages, tiny_model_version


def _write_mail_dir(tmp_path, count=4):
    folder = tmp_path / "mail"
    folder.mkdir()
    for message, _ in synthetic_raw_messages(count, seed=5):
        (folder / f"{message.index:03d}.eml").write_bytes(message.data)
    return folder


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_writes_one_contract_line_per_message_in_input_order(tmp_path):
    _, version_dir = tiny_model_version()
    folder = _write_mail_dir(tmp_path)
    output = tmp_path / "verdicts.jsonl"

    assert main(["score", str(folder), "--model", str(version_dir), "--output", str(output)]) == 0

    lines = _lines(output)
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    assert all(line["id"].endswith(f"{i:03d}.eml") for i, line in enumerate(lines))
    assert all(line["verdict"] in ("safe", "spam", "attack") for line in lines)
    assert all(0.0 <= line["score"] <= 1.0 and line["error"] is None for line in lines)


def test_garbage_bytes_still_get_a_scored_line_and_the_run_goes_on(tmp_path):
    _, version_dir = tiny_model_version()
    folder = _write_mail_dir(tmp_path, count=2)
    (folder / "zz-garbage.eml").write_bytes(b"\xff\xfe\x00\x01 not a message \x00" * 50)
    output = tmp_path / "verdicts.jsonl"

    main(["score", str(folder), "--model", str(version_dir), "--output", str(output)])

    lines = _lines(output)
    assert len(lines) == 3
    assert lines[-1]["id"].endswith("zz-garbage.eml")
    assert lines[-1]["verdict"] is not None


def test_standard_input_is_a_source(tmp_path, monkeypatch):
    import io
    import sys

    _, version_dir = tiny_model_version()
    message, _ = synthetic_raw_messages(1)[0]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(message.data)))
    output = tmp_path / "verdicts.jsonl"

    main(["score", "-", "--model", str(version_dir), "--output", str(output)])

    (line,) = _lines(output)
    assert line["error"] is None and line["index"] == 0


def test_missing_source_is_an_error_naming_it(tmp_path, capsys):
    import pytest

    _, version_dir = tiny_model_version()
    missing = tmp_path / "nowhere"
    with pytest.raises(Exception, match="nowhere"):
        main(["score", str(missing), "--model", str(version_dir)])
