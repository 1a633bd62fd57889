"""The organisation directory: who and what the named detectors protect.

Contract: `load_directory(path) -> Directory` reads a JSON (`.json`) or TOML (`.toml`)
file whose format is documented in docs/directory.md; `directory_from_mapping(data,
source)` builds the same from an already-parsed mapping. Both raise `DirectoryError`
(a `ValueError`) naming the file, the field and what was wrong; unknown keys and wrong
types are rejected, never ignored. An empty file (`{}`) is a valid, empty directory:
the detectors that need a directory then simply do not fire.

Domains are stored as registered domains (eTLD+1) in lower-case ASCII (punycode for an
internationalised domain), so they compare directly with `Url.registered_domain` and
with the registered domain of a sender's address.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import idna

from detection.urls import registered_domain

if sys.version_info >= (3, 11):
    import tomllib
else:  # TODO: drop tomli when the minimum Python is 3.11
    import tomli as tomllib

logger = logging.getLogger(__name__)

ROLES = ("executive", "finance", "hr", "staff")
DOMAIN_KINDS = ("own", "partner", "vendor")
_TOP_LEVEL_KEYS = (
    "organisation", "domains", "people", "partner_domains", "vendor_domains", "phone_region",
)  # fmt: skip
_PERSON_KEYS = ("name", "addresses", "role", "aliases")
_REGION = re.compile(r"[A-Z]{2}")
_LOCAL_PART = re.compile(r"[^\s@<>()\[\],;:\\\"]+")


class DirectoryError(ValueError):
    """A directory file broke a rule; the message names the file, field and value."""


@dataclass(frozen=True)
class Person:
    """One person the organisation protects from impersonation.

    `addresses` are the person's real addresses (lower-case); mail showing the person's
    name from any other address is an impersonation candidate. `aliases` are other
    names the person is shown under ("Bob Example" for "Robert Example").
    """

    name: str
    addresses: tuple[str, ...] = ()
    role: str = "staff"
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise DirectoryError(f"Person.role must be one of {ROLES}, got {self.role!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class Directory:
    """The organisation's domains, people, partners and vendors.

    Every field defaults to empty: `Directory()` is the valid empty directory.
    `phone_region` is the ISO 3166 region used to read phone numbers written without
    a country code.
    """

    organisation: str = ""
    domains: tuple[str, ...] = ()
    people: tuple[Person, ...] = ()
    partner_domains: tuple[str, ...] = ()
    vendor_domains: tuple[str, ...] = ()
    phone_region: str = "US"

    @property
    def protected_domains(self) -> dict[str, str]:
        """Registered domain -> kind ("own", "partner" or "vendor"), in that order; a
        domain listed under two kinds keeps the first."""
        kinds: dict[str, str] = {}
        for kind, domains in (
            ("own", self.domains),
            ("partner", self.partner_domains),
            ("vendor", self.vendor_domains),
        ):
            for domain in domains:
                kinds.setdefault(domain, kind)
        return kinds

    def domain_kind(self, domain: str) -> str | None:
        """ "own", "partner" or "vendor" for a registered domain in the directory, else None."""
        return self.protected_domains.get(domain)

    def person_with_address(self, address: str) -> Person | None:
        address = address.lower()
        return next((p for p in self.people if address in p.addresses), None)

    @property
    def is_empty(self) -> bool:
        return not (self.domains or self.people or self.partner_domains or self.vendor_domains)


EMPTY_DIRECTORY = Directory()


def load_directory(path: str | Path) -> Directory:
    """Read a directory file (`.json` or `.toml`).

    Raises DirectoryError when the file cannot be read or parsed, has another
    extension, or breaks a rule of the format (docs/directory.md).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise DirectoryError(
            f"{path}: extension must be .json or .toml, got {suffix or '(none)'!r}"
        )

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DirectoryError(f"{path}: cannot be read: {error}") from error
    try:
        data = json.loads(text) if suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise DirectoryError(f"{path}: is not valid {suffix[1:].upper()}: {error}") from error

    directory = directory_from_mapping(data, source=str(path))
    logger.info(
        "directory %s: %d own, %d partner, %d vendor domains, %d people",
        path.name, len(directory.domains), len(directory.partner_domains),
        len(directory.vendor_domains), len(directory.people),
    )  # fmt: skip
    return directory


def directory_from_mapping(data: object, source: str = "<directory>") -> Directory:
    """Validate an already-parsed directory document; raises DirectoryError."""
    if not isinstance(data, Mapping):
        raise DirectoryError(f"{source}: the top level must be a table/object, got {_kind(data)}")
    _reject_unknown(data, _TOP_LEVEL_KEYS, source, "")

    people = _list(data, "people", source, "")
    return Directory(
        organisation=_string(data, "organisation", source, "", default=""),
        domains=_domains(data, "domains", source),
        people=tuple(_person(entry, source, f"people[{i}]") for i, entry in enumerate(people)),
        partner_domains=_domains(data, "partner_domains", source),
        vendor_domains=_domains(data, "vendor_domains", source),
        phone_region=_region(data, source),
    )


def normalise_domain(value: str) -> str:
    """The registered domain of `value` in lower-case ASCII, or "" if it has none.

    Unicode labels are converted to punycode (UTS 46) first; raises ValueError for a
    label IDNA rejects.
    """
    host = value.strip().rstrip(".").lower()
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as error:
            raise ValueError(f"not a valid internationalised domain: {error}") from error
    return registered_domain(host)


# fields
def _person(entry: object, source: str, where: str) -> Person:
    if not isinstance(entry, Mapping):
        raise DirectoryError(f"{source}: {where} must be a table/object, got {_kind(entry)}")
    _reject_unknown(entry, _PERSON_KEYS, source, f"{where}.")

    name = _string(entry, "name", source, f"{where}.")
    if not name.strip():
        raise DirectoryError(f"{source}: {where}.name must not be empty, got {name!r}")
    role = _string(entry, "role", source, f"{where}.", default="staff")
    if role not in ROLES:
        raise DirectoryError(f"{source}: {where}.role must be one of {ROLES}, got {role!r}")
    addresses = tuple(
        _address(value, source, f"{where}.addresses[{i}]")
        for i, value in enumerate(_strings(entry, "addresses", source, f"{where}."))
    )
    aliases = _strings(entry, "aliases", source, f"{where}.")
    return Person(name=name.strip(), addresses=addresses, role=role, aliases=aliases)


def _address(value: str, source: str, where: str) -> str:
    local, at, domain = value.strip().lower().rpartition("@")
    if not at or not _LOCAL_PART.fullmatch(local) or not _valid_domain(domain):
        raise DirectoryError(
            f"{source}: {where} must be an address like name@example.com, got {value!r}"
        )
    return f"{local}@{domain}"


def _valid_domain(domain: str) -> bool:
    try:
        return bool(normalise_domain(domain))
    except ValueError:
        return False


def _domains(data: Mapping, key: str, source: str) -> tuple[str, ...]:
    found = []
    for i, value in enumerate(_strings(data, key, source, "")):
        try:
            domain = normalise_domain(value)
        except ValueError as error:
            raise DirectoryError(f"{source}: {key}[{i}] {error}, got {value!r}") from error
        if not domain:
            raise DirectoryError(
                f"{source}: {key}[{i}] must be a registrable domain (public suffix plus one "
                f"label, like example.com), got {value!r}"
            )
        found.append(domain)
    return tuple(dict.fromkeys(found))


def _region(data: Mapping, source: str) -> str:
    region = _string(data, "phone_region", source, "", default="US")
    if not _REGION.fullmatch(region):
        raise DirectoryError(
            f"{source}: phone_region must be a two-letter ISO 3166 code like 'US', got {region!r}"
        )
    return region


# typed access
def _string(data: Mapping, key: str, source: str, where: str, default: str | None = None) -> str:
    if key not in data:
        if default is None:
            raise DirectoryError(f"{source}: {where}{key} is required")
        return default
    value = data[key]
    if not isinstance(value, str):
        raise DirectoryError(f"{source}: {where}{key} must be a string, got {_kind(value)}")
    return value


def _list(data: Mapping, key: str, source: str, where: str) -> list:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise DirectoryError(f"{source}: {where}{key} must be a list, got {_kind(value)}")
    return value


def _strings(data: Mapping, key: str, source: str, where: str) -> tuple[str, ...]:
    values = _list(data, key, source, where)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise DirectoryError(
                f"{source}: {where}{key}[{i}] must be a string, got {_kind(value)}"
            )
    return tuple(values)


def _reject_unknown(data: Mapping, allowed: tuple[str, ...], source: str, where: str) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise DirectoryError(
            f"{source}: unknown field {where + unknown[0]!r}; allowed fields are {allowed}"
        )


def _kind(value: object) -> str:
    return f"{type(value).__name__} {value!r}"[:120]
