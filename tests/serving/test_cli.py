import json
import logging

import pytest

from serving.cli import main
from tests.fresh_interpreter import run_isolated
from tests.model_fixtures import synthetic_raw_messages, tiny_model_version


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level(logging.INFO, logger="bulwark")


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


def _summary(caplog) -> dict:
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("summary: ")]
    return json.loads(line.removeprefix("summary: "))


def test_missing_source_is_an_error_naming_it(tmp_path, caplog):
    _, version_dir = tiny_model_version()
    missing = tmp_path / "nowhere"

    status = main(["score", str(missing), "--model", str(version_dir)])

    assert status == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "nowhere" in errors[0] and "no such file or directory" in errors[0]
    assert _summary(caplog) == {"read": 0, "scored": 0, "failed": 0}


def test_missing_model_is_an_error_naming_it(tmp_path, caplog):
    folder = _write_mail_dir(tmp_path, count=1)
    missing = tmp_path / "no-model"

    status = main(["score", str(folder), "--model", str(missing)])

    assert status == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "no-model" in errors[0] and "does not exist" in errors[0]
    assert _summary(caplog) == {"read": 0, "scored": 0, "failed": 0}


def test_a_missing_model_is_reported_before_torch_and_transformers_are_imported(tmp_path):
    folder = _write_mail_dir(tmp_path, count=1)
    code = (
        "from serving.cli import main; "
        f"status = main(['score', {str(folder)!r}, '--model', {str(tmp_path / 'no-model')!r}]); "
        "print(status, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )

    finished = run_isolated(code)

    assert finished.stdout.split() == ["2", "False", "False"], finished.stderr


def test_model_directory_that_will_not_load_is_an_error_naming_it(tmp_path, caplog):
    folder = _write_mail_dir(tmp_path, count=1)
    empty = tmp_path / "empty-model"
    empty.mkdir()

    assert main(["score", str(folder), "--model", str(empty)]) == 2

    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "empty-model" in errors[0] and "could not be loaded" in errors[0]


def test_unreadable_file_in_a_tree_gets_an_error_line_and_the_run_goes_on(tmp_path, caplog):
    _, version_dir = tiny_model_version()
    folder = _write_mail_dir(tmp_path, count=2)
    (folder / "001b.eml").symlink_to(tmp_path / "gone.eml")
    output = tmp_path / "verdicts.jsonl"

    status = main(["score", str(folder), "--model", str(version_dir), "--output", str(output)])

    lines = _lines(output)
    assert status == 0
    assert [line["id"] for line in lines] == ["mail:000.eml", "mail:001.eml", "mail:001b.eml"]
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert lines[2]["verdict"] is None and "dangling symbolic link" in lines[2]["error"]
    assert all(line["error"] is None for line in lines[:2])
    assert _summary(caplog) == {"read": 3, "scored": 2, "failed": 1}


def test_source_breaking_midway_scores_what_was_read_then_exits_2(tmp_path, caplog):
    import io
    import tarfile

    _, version_dir = tiny_model_version()
    archive = tmp_path / "mail.tar"
    with tarfile.open(archive, "w") as tar:
        for message, _ in synthetic_raw_messages(3, seed=5):
            info = tarfile.TarInfo(f"{message.index}.eml")
            info.size = len(message.data)
            tar.addfile(info, io.BytesIO(message.data))
    with tarfile.open(archive) as tar:
        cut = tar.getmembers()[2].offset + 100
    archive.write_bytes(archive.read_bytes()[:cut])
    output = tmp_path / "verdicts.jsonl"

    status = main(["score", str(archive), "--model", str(version_dir), "--output", str(output)])

    assert status == 2
    assert [line["id"] for line in _lines(output)] == ["mail.tar:0.eml", "mail.tar:1.eml"]
    assert _summary(caplog) == {"read": 2, "scored": 2, "failed": 0}


def test_a_mistyped_history_file_is_an_error_not_a_new_empty_history(tmp_path):
    _, version_dir = tiny_model_version()
    folder = _write_mail_dir(tmp_path, count=1)
    missing = tmp_path / "no-such-history.sqlite"

    status = main(["score", str(folder), "--model", str(version_dir), "--history", str(missing)])

    assert status == 2
    assert not missing.exists()


def test_a_run_in_which_every_message_failed_exits_non_zero(tmp_path):
    from serving.server import free_ports

    folder = _write_mail_dir(tmp_path, count=2)
    dead = f"grpc://127.0.0.1:{free_ports(1)[0]}"
    output = tmp_path / "verdicts.jsonl"

    status = main(["score", str(folder), "--server", dead, "--output", str(output)])

    assert status == 1
    assert all(line["error"] for line in _lines(output))


def test_a_command_that_fails_outside_its_messages_says_why_in_one_line(tmp_path, caplog):
    from serving import cli

    ledger = tmp_path / "a-directory"
    ledger.mkdir()
    status = cli.main(
        [
            "feedback",
            "add",
            "--ledger",
            str(ledger),
            "--message-id",
            "m1",
            "--label",
            "attack",
            "--source",
            "analyst",
        ]
    )
    assert status == 2
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith("bulwark feedback: ") and str(ledger) in line


def test_concurrency_below_one_is_refused_by_the_parser(capsys):
    from serving import cli

    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["score", "x.eml", "--concurrency", "0"])
    assert "must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "content"),
    [("--directory", "not json {"), ("--history", "not an sqlite file")],
)
def test_an_unreadable_history_or_directory_is_named_not_blamed_on_the_model(
    tmp_path, caplog, option, content
):
    _, version_dir = tiny_model_version()
    folder = _write_mail_dir(tmp_path, count=1)
    bad = tmp_path / "bad-file"
    bad.write_text(content)

    status = main(["score", str(folder), "--model", str(version_dir), option, str(bad)])

    assert status == 2
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert f"{option} file {str(bad)!r} cannot be read" in line


def _errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def test_an_output_file_that_is_the_source_is_refused_and_the_mail_kept(tmp_path, caplog):
    _, version_dir = tiny_model_version()
    message, _ = synthetic_raw_messages(1, seed=5)[0]
    source = tmp_path / "one.eml"
    source.write_bytes(message.data)

    status = main(["score", str(source), "--model", str(version_dir), "--output", str(source)])

    assert status == 2
    assert source.read_bytes() == message.data
    [line] = _errors(caplog)
    assert "is the source" in line and "write the verdicts elsewhere" in line


def test_an_output_file_inside_a_source_directory_is_refused(tmp_path, caplog):
    folder = _write_mail_dir(tmp_path, count=1)
    inside = folder / "verdicts.jsonl"

    assert main(["score", str(folder), "--output", str(inside)]) == 2

    assert not inside.exists()
    [line] = _errors(caplog)
    assert "lies in a folder that reading the source" in line


@pytest.mark.parametrize(
    ("option", "make", "expected"),
    [
        ("--model", lambda p: p.write_text("x"), "--model must be a directory, got"),
        ("--history", lambda p: p.mkdir(), "--history must be a file, got"),
        ("--directory", lambda p: p.mkdir(), "--directory must be a file, got"),
    ],
)
def test_a_path_of_the_wrong_kind_is_named_as_such_not_as_missing(
    tmp_path, caplog, option, make, expected
):
    folder = _write_mail_dir(tmp_path, count=1)
    wrong = tmp_path / "wrong-kind"
    make(wrong)

    assert main(["score", str(folder), option, str(wrong)]) == 2

    [line] = _errors(caplog)
    assert expected in line and "does not exist" not in line


def test_learn_without_a_history_file_is_refused(tmp_path, caplog):
    folder = _write_mail_dir(tmp_path, count=1)

    assert main(["score", str(folder), "--learn"]) == 2

    [line] = _errors(caplog)
    assert "--learn" in line and "--history" in line


def test_learn_starts_a_new_history_file_and_records_safe_verdicts(tmp_path):
    import sqlite3

    _, version_dir = tiny_model_version()
    folder = _write_mail_dir(tmp_path, count=4)
    history = tmp_path / "new-org.sqlite"
    output = tmp_path / "verdicts.jsonl"
    args = ["score", str(folder), "--model", str(version_dir), "--output", str(output)]

    assert main([*args, "--history", str(history), "--learn"]) == 0

    safe = sum(line["verdict"] == "safe" for line in _lines(output))
    with sqlite3.connect(history) as db:
        events = db.execute("SELECT COUNT(*) FROM series").fetchone()[0]
    assert safe and events  # the safe mail's senders are now in the new history


def test_a_source_without_messages_says_so(tmp_path, caplog):
    _, version_dir = tiny_model_version()
    empty = tmp_path / "empty"
    empty.mkdir()

    assert main(["score", str(empty), "--model", str(version_dir)]) == 0

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"no message found in {empty}" in w for w in warnings)


def test_an_output_file_hard_linked_to_the_source_is_refused_and_the_mail_kept(tmp_path, caplog):
    message, _ = synthetic_raw_messages(1, seed=5)[0]
    source = tmp_path / "one.eml"
    source.write_bytes(message.data)
    other_name = tmp_path / "verdicts.jsonl"
    other_name.hardlink_to(source)

    assert main(["score", str(source), "--output", str(other_name)]) == 2

    assert source.read_bytes() == message.data
    [line] = _errors(caplog)
    assert "is the source" in line


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: None, "folder that does not exist"),
    ],
)
def test_an_output_that_cannot_be_a_file_is_refused_before_the_model_loads(
    tmp_path, caplog, make, expected
):
    folder = _write_mail_dir(tmp_path, count=1)
    output = tmp_path / "out"
    make(output)
    target = output if output.exists() else output / "verdicts.jsonl"

    # no --model and no exported model in the repository: the output is refused first
    assert main(["score", str(folder), "--output", str(target)]) == 2

    [line] = _errors(caplog)
    assert "cannot be written" in line and expected in line


@pytest.mark.parametrize("learn", [[], ["--learn"]])
def test_an_empty_history_option_is_refused_not_taken_as_no_history(tmp_path, caplog, learn):
    folder = _write_mail_dir(tmp_path, count=1)

    assert main(["score", str(folder), "--history", "", *learn]) == 2

    [line] = _errors(caplog)
    assert "--history must name a file, got an empty string" in line


def test_an_empty_history_file_is_refused_and_left_as_it_was(tmp_path, caplog):
    folder = _write_mail_dir(tmp_path, count=1)
    empty = tmp_path / "history.sqlite"
    empty.touch()

    assert main(["score", str(folder), "--history", str(empty)]) == 2

    assert empty.stat().st_size == 0
    [line] = _errors(caplog)
    assert "is empty, not a sender history" in line


def test_a_learn_run_that_fails_before_scoring_leaves_no_history_behind(tmp_path, caplog):
    folder = _write_mail_dir(tmp_path, count=1)
    broken_model = tmp_path / "empty-model"
    broken_model.mkdir()
    history = tmp_path / "new.sqlite"

    args = ["score", str(folder), "--model", str(broken_model)]
    assert main([*args, "--history", str(history), "--learn"]) == 2

    assert not history.exists()
    [line] = _errors(caplog)
    assert "could not be loaded" in line


def test_learn_into_a_missing_folder_names_the_folder(tmp_path, caplog):
    folder = _write_mail_dir(tmp_path, count=1)
    history = tmp_path / "no-such-folder" / "new.sqlite"

    assert main(["score", str(folder), "--history", str(history), "--learn"]) == 2

    [line] = _errors(caplog)
    assert "no-such-folder" in line and "does not exist" in line


def test_an_output_hard_linked_to_a_message_of_a_source_tree_is_refused(tmp_path, caplog):
    folder = _write_mail_dir(tmp_path, count=2)
    member = folder / "001.eml"
    kept = member.read_bytes()
    other_name = tmp_path / "verdicts.jsonl"
    other_name.hardlink_to(member)

    assert main(["score", str(folder), "--output", str(other_name)]) == 2

    assert member.read_bytes() == kept
    [line] = _errors(caplog)
    assert "has 2 names (hard links)" in line


@pytest.mark.parametrize("existing", [False, True])
def test_an_output_in_a_folder_the_tree_reaches_through_a_link_is_refused(
    tmp_path, caplog, existing
):
    folder = _write_mail_dir(tmp_path, count=1)
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "linked").symlink_to(outside)
    output = outside / "x.eml"
    mail = synthetic_raw_messages(1, seed=9)[0][0].data
    if existing:  # a message the tree would read
        output.write_bytes(mail)

    assert main(["score", str(folder), "--output", str(output)]) == 2

    if existing:
        assert output.read_bytes() == mail
    else:
        assert not output.exists()
    [line] = _errors(caplog)
    assert "lies in a folder that reading the source" in line


def test_an_output_beside_a_source_tree_is_accepted(tmp_path):
    _, version_dir = tiny_model_version()
    folder = _write_mail_dir(tmp_path, count=2)
    output = tmp_path / "verdicts.jsonl"

    assert main(["score", str(folder), "--model", str(version_dir), "--output", str(output)]) == 0

    assert [line["id"] for line in _lines(output)] == ["mail:000.eml", "mail:001.eml"]
