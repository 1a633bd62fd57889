"""The organisation directory: loading, normalising and rejecting directory files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from detection.directory import (
    EMPTY_DIRECTORY,
    Directory,
    DirectoryError,
    Person,
    directory_from_mapping,
    load_directory,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "directory.md"

EXAMPLE = {
    "organisation": "Example Corp",
    "domains": ["Example.COM"],
    "people": [
        {"name": "Alice Example", "addresses": ["Alice@Example.com"], "role": "executive"},
        {"name": "Dana Sample", "addresses": ["dana@example.com"], "role": "finance"},
        {"name": "Robert Placeholder", "aliases": ["Bob Placeholder"]},
    ],
    "partner_domains": ["mail.example.org"],
    "vendor_domains": ["example.net"],
}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _docs_block(language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    assert match, f"docs/directory.md has no {language} example"
    return match.group(1)


def test_json_file_loads_and_normalises_domains_and_addresses(tmp_path):
    directory = load_directory(_write(tmp_path, "org.json", json.dumps(EXAMPLE)))

    assert directory.domains == ("example.com",)
    assert directory.partner_domains == ("example.org",)
    assert directory.people[0] == Person("Alice Example", ("alice@example.com",), "executive")
    assert directory.people[2].role == "staff"
    assert directory.people[2].names == ("Robert Placeholder", "Bob Placeholder")
    assert directory.protected_domains == {
        "example.com": "own", "example.org": "partner", "example.net": "vendor",
    }  # fmt: skip


def test_documented_json_and_toml_examples_load_to_the_same_directory(tmp_path):
    from_json = load_directory(_write(tmp_path, "org.json", _docs_block("json")))
    from_toml = load_directory(_write(tmp_path, "org.toml", _docs_block("toml")))

    assert from_json == from_toml
    assert from_json.domain_kind("example.net") == "vendor"
    assert from_json.person_with_address("D.Sample@example.com").name == "Dana Sample"


def test_empty_file_is_a_valid_empty_directory(tmp_path):
    assert load_directory(_write(tmp_path, "empty.json", "{}")) == EMPTY_DIRECTORY
    assert load_directory(_write(tmp_path, "empty.toml", "")) == EMPTY_DIRECTORY
    assert EMPTY_DIRECTORY.is_empty
    assert EMPTY_DIRECTORY.protected_domains == {}


def test_internationalised_domain_is_stored_as_punycode():
    directory = directory_from_mapping({"domains": ["пример.рф"]})
    assert directory.domains == ("xn--e1afmkfd.xn--p1ai",)


def test_own_domain_wins_when_listed_twice():
    directory = Directory(domains=("example.com",), vendor_domains=("example.com",))
    assert directory.domain_kind("example.com") == "own"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"domain": ["example.com"]}, r"org\.json: unknown field 'domain'"),
        ({"people": [{"name": "Alice", "title": "x"}]}, r"unknown field 'people\[0\]\.title'"),
        ({"domains": "example.com"}, r"org\.json: domains must be a list, got str"),
        ({"domains": [3]}, r"domains\[0\] must be a string, got int 3"),
        ({"domains": ["com"]}, r"domains\[0\] must be a registrable domain.*got 'com'"),
        ({"people": [{"addresses": []}]}, r"people\[0\]\.name is required"),
        ({"people": [{"name": "  "}]}, r"people\[0\]\.name must not be empty"),
        (
            {"people": [{"name": "A B", "role": "boss"}]},
            r"people\[0\]\.role must be one of .*'boss'",
        ),
        (
            {"people": [{"name": "A B", "addresses": ["alice.example.com"]}]},
            r"people\[0\]\.addresses\[0\] must be an address .*'alice\.example\.com'",
        ),
        ({"phone_region": "usa"}, r"phone_region must be a two-letter ISO 3166 code.*'usa'"),
        ([], r"the top level must be a table/object, got list"),
    ],
)
def test_invalid_directory_names_file_field_and_value(tmp_path, data, message):
    path = _write(tmp_path, "org.json", json.dumps(data))
    with pytest.raises(DirectoryError, match=message):
        load_directory(path)


def test_unparsable_file_names_the_file_and_format(tmp_path):
    with pytest.raises(DirectoryError, match=r"bad\.json: is not valid JSON"):
        load_directory(_write(tmp_path, "bad.json", "{domains: "))
    with pytest.raises(DirectoryError, match=r"bad\.toml: is not valid TOML"):
        load_directory(_write(tmp_path, "bad.toml", "domains = ["))


def test_other_extension_and_missing_file_are_rejected(tmp_path):
    with pytest.raises(DirectoryError, match=r"extension must be \.json or \.toml, got '\.yaml'"):
        load_directory(_write(tmp_path, "org.yaml", "{}"))
    with pytest.raises(DirectoryError, match=r"missing\.json: cannot be read"):
        load_directory(tmp_path / "missing.json")


def test_person_rejects_unknown_role():
    with pytest.raises(ValueError, match=r"Person\.role must be one of .* got 'boss'"):
        Person("Alice Example", role="boss")
