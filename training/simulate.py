"""Mail streams of synthetic organisations: what no public corpus has.

Contract: `simulate(config, corpora_dir, output_dir) -> list[OrgStream]` builds
`config.orgs` organisations (employees, executives, finance staff, vendors, partners,
external contacts, newsletters) and, for each, a time-ordered stream of safe traffic
and attacks over `config.days` days, every draw from one `random.Random(config.seed)`
(the same config and corpora give byte-identical output). Per organisation it writes,
under `output_dir/<org>/`:

- `mail.tar.gz`: one `.eml` per message (`000000.eml`, ... in time order), readable by
  every message source (`bulwark score output/<org>/mail.tar.gz`);
- `labels.csv`: id (the message source's id, `mail.tar.gz:000123.eml`), message_id,
  label (`safe` or `attack`), category, variant, direction (`inbound`, `internal`,
  `outbound`), org, date (ISO 8601, UTC);
- `directory.json`: the organisation's directory in the format `detection.directory`
  reads (docs/directory.md).

and `simulation.json` beside them (the resolved config, the corpora used, counts).

Texts. Safe bodies are real ham (SpamAssassin `easy_ham`/`easy_ham_2` and usrp-users
for person-to-person mail, SpamAssassin `hard_ham` for newsletters); credential
phishing bodies are real phishing (Nazario, phishing_pot) that use sign-in or
account-verification wording (the honeypot also caught plain scams). The corpora have no
business email compromise, so the simulator writes that wording itself, from slots
(opening, request, amount, pressure, closing) for executive impersonation and invoice
fraud, *and* the safe business mail it must be told apart from: real vendors' invoices
and reminders, a vendor's genuine change of bank details, executives' ordinary
requests, IT's password-expiry notices. Bodies are English only by default (a stop-word
test), so language is not a cue; each one is used by one message at most per org
where the pool allows.

Attacks (`ATTACK_CATEGORIES`, mixed by `attack_mix`):

- `executive_impersonation`: an executive's display name from a free-mail address or
  from a lookalike of the organisation's domain, to finance or other staff, asking for
  gift cards or a payment;
- `vendor_invoice_fraud`: an invoice with new bank details, from a lookalike of a
  vendor's domain, or from the vendor's own (compromised) account;
- `credential_phishing`: a real phishing body from an unseen external sender;
- `lateral_phishing`: a compromised employee's own account sends a sign-in lure to
  many colleagues.

Run:
    bulwark simulate --orgs 4 --seed 0 --output runs/simulated
    python -m training.simulate --orgs 2 --days 30 --output runs/sim

Known shortcomings: the real bodies keep their era's style (2002 and 2019-2023 ham,
2004-2005 and 2022-2024 phishing), so a text model can still learn era from them;
attachments are not simulated (an "attached" invoice is only mentioned); every
mailbox is in one time zone, UTC.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import logging
import math
import random
import re
import tarfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime, formataddr
from pathlib import Path

from detection.features import parse_for_model
from detection.sanitize import RECIPIENT_PLACEHOLDER
from detection.signals import CREDENTIAL_WORDS
from detection.sources import iter_messages

logger = logging.getLogger(__name__)

ATTACK_CATEGORIES = (
    "executive_impersonation",
    "vendor_invoice_fraud",
    "credential_phishing",
    "lateral_phishing",
)
DIRECTIONS = ("inbound", "internal", "outbound")
ARCHIVE_NAME = "mail.tar.gz"
LABEL_COLUMNS = ("id", "message_id", "label", "category", "variant", "direction", "org", "date")
START = datetime(2024, 1, 1, tzinfo=timezone.utc)  # a Monday
FREEMAIL = ("gmail.com", "outlook.com", "yahoo.com", "hotmail.com", "icloud.com")


@dataclass(frozen=True)
class SimulationConfig:
    """Every rate of the simulation, documented in docs/simulator.md. The defaults make
    about 3,000 messages per organisation, a few seconds each on one CPU core."""

    orgs: int = 4
    seed: int = 0
    days: int = 90  # calendar days from 2024-01-01; weekends carry `weekend_factor`
    weekend_factor: float = 0.15  # share of a weekday's traffic on Saturday and Sunday
    # people and correspondents
    employees: int = 40  # executives and finance staff included
    executives: int = 3
    finance_staff: int = 3
    vendors: int = 6
    partners: int = 8  # partner companies, each with a few contacts
    contacts_per_partner: int = 3
    freemail_contacts: int = 6  # known external people who write from free-mail
    newsletters: int = 4
    newsletter_subscribers: int = 6  # employees on each newsletter
    # safe traffic per weekday
    inbound_per_day: float = 10.0  # conversations opened by external contacts
    new_contact_rate: float = 0.08  # ... of those, from someone never seen before
    internal_per_day: float = 7.0  # employee to employee
    outbound_per_day: float = 4.0  # employees writing to external contacts first
    exec_requests_per_day: float = 1.5  # executives' ordinary requests to staff
    exec_payment_share: float = 0.3  # ... of those, a genuine payment or gift-card request
    share_notices_per_day: float = 1.5  # a colleague shares a document on the own domain
    reply_rate: float = 0.35  # a conversation's first message gets a reply
    reply_back_rate: float = 0.4  # ... and that reply gets one back
    cc_rate: float = 0.2  # a message copies one more colleague
    it_notices_per_week: float = 1.0  # internal IT notices (password expiry etc.)
    invoices_per_vendor_month: float = 1.5  # each vendor invoices finance
    vendor_bank_change_rate: float = 0.1  # a genuine invoice announces new bank details
    invoice_bank_block_rate: float = 0.5  # a genuine invoice prints the bank details
    # attacks
    attacks_per_day: float = 2.0  # per weekday, of any category
    attack_mix: tuple[float, ...] = (0.25, 0.25, 0.3, 0.2)  # in ATTACK_CATEGORIES order
    freemail_impersonation_share: float = 0.5  # the rest: a lookalike of the own domain
    compromised_vendor_share: float = 0.35  # the rest: a lookalike of the vendor's domain
    wording_overlap: float = 0.5  # payment wording borrowed from the other class's phrases
    attacker_reply_to_rate: float = 0.4  # an impersonation sets a Reply-To of its own
    fake_thread_rate: float = 0.2  # an attack poses as a reply ("Re:", In-Reply-To)
    lateral_recipients: tuple[int, int] = (5, 15)  # colleagues one lateral lure goes to
    # bodies taken from the corpora
    ham_bodies: int = 1500
    newsletter_bodies: int = 200
    phishing_bodies: int = 600
    english_only: bool = True
    max_body_chars: int = 3000

    def __post_init__(self) -> None:
        counts = (
            "orgs employees executives finance_staff vendors partners contacts_per_partner "
            "newsletters newsletter_subscribers days ham_bodies newsletter_bodies "
            "phishing_bodies max_body_chars"
        ).split()
        for name in counts:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SimulationConfig.{name} must be a positive int, got {value!r}")
        for name in ("seed", "freemail_contacts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"SimulationConfig.{name} must be a non-negative int, got {value!r}"
                )
        if self.executives + self.finance_staff + 2 > self.employees:
            raise ValueError(
                "SimulationConfig.employees must exceed executives + finance_staff + 1, got "
                f"{self.employees} for {self.executives} + {self.finance_staff}"
            )
        shares = (
            "weekend_factor new_contact_rate reply_rate reply_back_rate cc_rate "
            "vendor_bank_change_rate invoice_bank_block_rate exec_payment_share "
            "freemail_impersonation_share compromised_vendor_share wording_overlap "
            "attacker_reply_to_rate fake_thread_rate"
        ).split()
        for name in shares:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value <= 1
            ):
                raise ValueError(f"SimulationConfig.{name} must be in [0, 1], got {value!r}")
        rates = (
            "inbound_per_day internal_per_day outbound_per_day exec_requests_per_day "
            "share_notices_per_day "
            "it_notices_per_week invoices_per_vendor_month attacks_per_day"
        ).split()
        for name in rates:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"SimulationConfig.{name} must be a rate >= 0, got {value!r}")
        mix = self.attack_mix
        if (
            not isinstance(mix, tuple)
            or len(mix) != len(ATTACK_CATEGORIES)
            or any(v < 0 for v in mix)
            or not sum(mix) > 0
        ):
            raise ValueError(
                f"SimulationConfig.attack_mix must be {len(ATTACK_CATEGORIES)} weights >= 0 "
                f"(for {ATTACK_CATEGORIES}) with a positive sum, got {mix!r}"
            )
        low, high = self.lateral_recipients
        if not 1 <= low <= high < self.employees:
            raise ValueError(
                "SimulationConfig.lateral_recipients must be (low, high) with "
                f"1 <= low <= high < employees, got {self.lateral_recipients!r}"
            )

    @classmethod
    def from_dict(cls, values: dict) -> SimulationConfig:
        """A config from plain values (JSON); unknown keys are rejected, lists become tuples."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"SimulationConfig got unknown keys {unknown}; allowed: {sorted(known)}"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# the organisation


@dataclass(frozen=True)
class Person:
    name: str
    address: str
    role: str = "staff"  # executive, finance, hr, staff, or "external"

    @property
    def first(self) -> str:
        return self.name.split()[0]

    @property
    def header(self) -> str:
        return formataddr((self.name, self.address))


@dataclass(frozen=True)
class Company:
    name: str
    domain: str
    contacts: tuple[Person, ...]


@dataclass
class Organisation:
    """One synthetic organisation and everyone it deals with (mutable: contacts grow)."""

    id: str
    name: str
    domain: str
    employees: list[Person]
    vendors: list[Company]
    partners: list[Company]
    contacts: list[Person]  # external people who write, most popular first
    newsletters: list[tuple[Person, list[Person]]]  # sender, subscribers
    it_desk: Person

    def role(self, role: str) -> list[Person]:
        return [p for p in self.employees if p.role == role]

    def directory(self) -> dict:
        """The directory file's content (docs/directory.md)."""
        return {
            "organisation": self.name,
            "domains": [self.domain],
            "people": [
                {"name": p.name, "addresses": [p.address], "role": p.role} for p in self.employees
            ],
            "partner_domains": [c.domain for c in self.partners],
            "vendor_domains": [c.domain for c in self.vendors],
            "phone_region": "US",
        }


FIRST_NAMES = (
    "Avery Blake Casey Dana Elliot Frances Gale Harper Imogen Jordan Kendall Logan Morgan "
    "Noel Oakley Parker Quinn Reese Sawyer Taylor Umber Vesna Wren Xavi Yael Zora Ansel "
    "Briar Cyrus Delphine Emrys Fenna Gideon Hollis Isolde Jasper Kit Linnea Marlow Nico "
    "Odile Piers Rosalind Silas Tamsin Ulric Viola Wendell Yusra Zeno"
).split()
LAST_NAMES = (
    "Ashdown Bramley Calder Danvers Eastwick Fairlie Greaves Halloway Ingram Jessop "
    "Kettering Lockhart Merriweather Northcott Ormsby Pendry Quarles Redfern Stanhope "
    "Thackeray Underhill Vickery Whitlock Yardley Ashcombe Birtwistle Colquhoun Dunstable "
    "Elphick Fenwick Goodall Hesketh Ibbotson Jolliffe Kinsella Lambourne Mottram Netherby"
).split()
NAME_PARTS = (
    "amber birch cobalt delta ember falcon granite harbor indigo juniper kestrel lumen "
    "meadow nimbus orchid pinnacle quarry raven sable tundra umbra vertex willow zephyr "
    "alder beacon cinder drift"
).split()
NAME_SUFFIXES = "works labs group supply systems partners logistics foods media metals".split()
SUFFIXES = ("com", "com", "com", "net", "org", "co.uk", "io")


class _Names:
    """Unique synthetic company domains and people, drawn from one random stream."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.domains: set[str] = set()
        self.addresses: set[str] = set()

    def domain(self) -> tuple[str, str]:
        while True:
            part, suffix = self.rng.choice(NAME_PARTS), self.rng.choice(NAME_SUFFIXES)
            domain = f"{part}{suffix}.{self.rng.choice(SUFFIXES)}"
            if domain not in self.domains:
                self.domains.add(domain)
                return f"{part.title()} {suffix.title()}", domain

    def person(self, domain: str, role: str) -> Person:
        while True:
            first, last = self.rng.choice(FIRST_NAMES), self.rng.choice(LAST_NAMES)
            style = self.rng.random()
            if domain in FREEMAIL:
                local = f"{first}{last[:1]}{self.rng.randint(1, 99)}".lower()
            elif style < 0.6:
                local = f"{first}.{last}".lower()
            else:
                local = f"{first[0]}{last}".lower()
            address = f"{local}@{domain}"
            if address not in self.addresses:
                self.addresses.add(address)
                return Person(f"{first} {last}", address, role)


def build_organisation(index: int, config: SimulationConfig, names: _Names) -> Organisation:
    """One organisation: its staff by role, vendors, partners, contacts and newsletters."""
    rng = names.rng
    org_name, domain = names.domain()
    roles = ["executive"] * config.executives + ["finance"] * config.finance_staff + ["hr"]
    roles += ["staff"] * (config.employees - len(roles))
    employees = [names.person(domain, role) for role in roles]

    def company() -> Company:
        name, company_domain = names.domain()
        people = tuple(
            names.person(company_domain, "external") for _ in range(config.contacts_per_partner)
        )
        return Company(name, company_domain, people)

    vendors = [company() for _ in range(config.vendors)]
    partners = [company() for _ in range(config.partners)]
    contacts = [p for c in partners for p in c.contacts]
    contacts += [
        names.person(rng.choice(FREEMAIL), "external") for _ in range(config.freemail_contacts)
    ]
    rng.shuffle(contacts)
    newsletters = []
    for _ in range(config.newsletters):
        title, news_domain = names.domain()
        sender = Person(f"{title} News", f"news@{news_domain}", "external")
        subscribers = rng.sample(employees, min(config.newsletter_subscribers, len(employees)))
        newsletters.append((sender, subscribers))
    it_desk = Person(f"{org_name} IT Service Desk", f"it-servicedesk@{domain}", "staff")
    return Organisation(
        f"org{index:02d}",
        org_name,
        domain,
        employees,
        vendors,
        partners,
        contacts,
        newsletters,
        it_desk,
    )


def lookalike_domain(domain: str, rng: random.Random) -> str:
    """A domain one or two edits from `domain`'s label, or the label under another suffix."""
    label, _, suffix = domain.partition(".")
    swaps = {"l": "1", "o": "0", "i": "l", "m": "rn", "e": "3", "a": "4", "s": "5"}
    choices = []
    for i, ch in enumerate(label):
        if ch in swaps:
            choices.append(label[:i] + swaps[ch] + label[i + 1 :])
    i = rng.randrange(1, len(label))
    choices += [label[:i] + label[i - 1] + label[i:], label[:i] + label[i + 1 :]]
    choices += [label[:i] + "-" + label[i:]]
    new_label = rng.choice(choices)
    if rng.random() < 0.25:
        return f"{label}.{rng.choice([s for s in ('net', 'co', 'org', 'biz') if s != suffix])}"
    return f"{new_label}.{suffix}"


# bodies


_STOPWORDS = frozenset(
    "the and to of a in is that for it you on with this be are as have at or not your we "
    "i will from by can if an my our they please".split()
)
_WORDS = re.compile(r"[a-z']+")


def is_english(text: str) -> bool:
    """At least 15 words, at least 12% of them common English function words."""
    words = _WORDS.findall(text.lower())
    return len(words) >= 15 and sum(w in _STOPWORDS for w in words) / len(words) >= 0.12


@dataclass(frozen=True)
class BodyPools:
    ham: tuple[tuple[str, str], ...]  # (subject, body)
    newsletter: tuple[tuple[str, str], ...]
    phishing: tuple[tuple[str, str], ...]
    sources: dict  # pool name -> {corpus: count}


_POOL_OF = (
    # (archive prefix, pool, member test)
    ("spamassassin", "ham", lambda m: "/easy_ham" in m),
    ("spamassassin", "newsletter", lambda m: "/hard_ham/" in m),
    ("usrp-users", "ham", lambda m: True),
    ("nazario", "phishing", lambda m: True),
    ("phishing_pot", "phishing", lambda m: True),
)


def load_body_pools(corpora_dir: Path, config: SimulationConfig, rng: random.Random) -> BodyPools:
    """Seeded samples of real bodies, read through the sanitising parser.

    Raises FileNotFoundError naming the folder when a pool would be empty.
    """
    wanted = {
        "ham": config.ham_bodies,
        "newsletter": config.newsletter_bodies,
        "phishing": config.phishing_bodies,
    }
    raw: dict[str, list[tuple[str, bytes]]] = {name: [] for name in wanted}
    for archive in sorted(Path(corpora_dir).glob("*.tar*")):
        rules = [(pool, test) for prefix, pool, test in _POOL_OF if archive.name.startswith(prefix)]
        if not rules:
            continue
        for message in iter_messages(archive, text_records=False):
            if message.error:
                continue
            member = message.id.split(":", 1)[-1]
            for pool, test in rules:
                if test(member):
                    raw[pool].append((archive.name.split("-")[0], message.data))
    pools: dict[str, list[tuple[str, str]]] = {}
    sources: dict[str, dict[str, int]] = {}
    for name, candidates in raw.items():
        rng.shuffle(candidates)
        kept, counts = [], {}
        for corpus, data in candidates:
            if len(kept) == wanted[name]:
                break
            parsed = parse_for_model(data)
            body = parsed.visible_text.strip()
            if len(body) < 80 or (config.english_only and not is_english(body)):
                continue
            if name == "phishing" and not CREDENTIAL_WORDS.search(f"{parsed.subject} {body}"):
                continue  # the honeypot also caught plain scams and spam
            kept.append((parsed.subject.strip()[:150], body[: config.max_body_chars]))
            counts[corpus] = counts.get(corpus, 0) + 1
        if not kept:
            raise FileNotFoundError(
                f"no usable {name} body in {corpora_dir}; the simulator needs the "
                "spamassassin, usrp-users, nazario or phishing_pot archives"
            )
        pools[name], sources[name] = kept, counts
        logger.info("body pool %s: %d bodies %s", name, len(kept), counts)
    return BodyPools(
        tuple(pools["ham"]), tuple(pools["newsletter"]), tuple(pools["phishing"]), sources
    )


class _Deck:
    """Draws from a pool without repeats until it is exhausted, then reshuffles."""

    def __init__(self, items: Sequence, rng: random.Random) -> None:
        self.items, self.rng, self.order = list(items), rng, []

    def draw(self):
        if not self.order:
            self.order = list(range(len(self.items)))
            self.rng.shuffle(self.order)
        return self.items[self.order.pop()]


# the simulator's own wording


GIFT_BRANDS = ("Apple", "Google Play", "Amazon", "Steam", "Target", "Visa")
EXEC_OPENERS = (
    "Are you at your desk?",
    "Do you have a moment?",
    "I need a quick favour from you.",
    "Are you available right now?",
    "Quick task for you this morning.",
    "I need your help with something before lunch.",
)
EXEC_GIFT = (
    "I need you to purchase {n} {brand} gift cards of {amount} each for a client.",
    "Please pick up {n} {brand} gift cards ({amount} each); they are a thank-you for the team.",
    "Can you buy {n} {brand} gift cards at {amount} each today? I will explain later.",
)
EXEC_GIFT_NEXT = (
    "Scratch off the backs and send me photos of the codes.",
    "Email me the card numbers and PINs as soon as you have them.",
    "Reply with the codes; I will hand them out this afternoon.",
)
EXEC_WIRE = (
    "We need to send a payment of {amount} to a new supplier today. The bank details are below.",
    "I am finalising an acquisition and need a wire transfer of {amount} sent out this afternoon.",
    "Please process an urgent payment of {amount} to the account below and confirm when done.",
)
EXEC_PRESSURE = (
    "I'm in meetings all day and can't take calls, so email only.",
    "Keep this between us for now; it is confidential until the announcement.",
    "I will reimburse you by the end of the day.",
    "This needs to happen within the hour.",
    "",
)
SIGN_OFFS = ("Thanks,\n{first}", "{first}", "Regards,\n{name}", "Thanks\n\nSent from my iPhone")
INVOICE_SAFE = (
    "Please find attached invoice {inv} for {amount}, due on {due}.",
    "Invoice {inv} for last month's services is attached. Payment terms are net 30 as usual.",
    "Friendly reminder that invoice {inv} ({amount}) falls due on {due}.",
    "Attached is our statement for the quarter, including invoice {inv} for {amount}.",
)
INVOICE_SAFE_NEXT = (
    "Let me know if you need a purchase order number added.",
    "Thank you for your continued business.",
    "Please contact me if anything on it looks wrong.",
    "",
)
BANK_CHANGE_SAFE = (
    "Please note that from {due} our receiving bank changes. The new details are below and "
    "on the attached letterhead; please confirm them with your account manager by phone "
    "before updating your records."
)
GENUINE_PAYMENT = (
    "Please pay the deposit of {amount} for the offsite venue today; their bank details are below.",
    "We agreed to settle the consultant's final invoice of {amount} this week. Account "
    "details below.",
    "Can you send the sponsorship payment of {amount} to the organisers? Details below.",
)
GENUINE_GIFT = (
    "Please order {n} {brand} gift cards of {amount} each for the long-service awards.",
    "We need {n} {brand} gift cards ({amount} each) as prizes for the sales kick-off.",
    "Can you buy {n} {brand} gift cards at {amount} each for the volunteers? Expense them "
    "as usual.",
)
GENUINE_PRESSURE = (
    "This needs to happen within the hour.",
    "I'm in meetings all day, so email is best.",
    "Thanks for turning this round quickly.",
    "",
)
SHARE_NOTICES = (
    '{first} shared a document with you: "{doc}".\n\nOpen it here: {url}',
    "Hi,\n\nI've put the {doc} in the team folder: {url}\n\nThanks,\n{first}",
    "Please review the updated {doc} before Friday: {url}\n\n{first}",
)
INVOICE_FRAUD = (
    "Please note our bank details have changed. Kindly remit invoice {inv} ({amount}) to the "
    "new account below.",
    "Our previous account is under review, so all payments, including invoice {inv} for "
    "{amount}, must go to our new bank account.",
    "Attached is invoice {inv} for {amount}. Due to an audit, please use the updated banking "
    "details below rather than those on file.",
    "Invoice {inv} for {amount} is now overdue. To avoid a late fee, pay today to the account "
    "below; our old account can no longer receive funds.",
)
INVOICE_FRAUD_NEXT = (
    "Please confirm once the payment has been scheduled.",
    "Send me the remittance advice when done.",
    "Do not use the old details as payments there will be returned.",
    "",
)
EXEC_SAFE = (
    "Can you send me the latest figures for the board pack by Thursday?",
    "Please approve the {vendor} invoice when you get a chance, it is in the queue.",
    "Can we move our one-to-one to Wednesday afternoon?",
    "Great work on the customer review yesterday. Let's discuss next steps on Monday.",
    "Please book the usual room for the quarterly planning session.",
    "I have asked finance to process the conference fees; can you send them the receipts?",
)
IT_NOTICES = (
    (
        "Password expiry reminder",
        "Your network password will expire in {n} days. Change it from "
        "the self-service page on the intranet. IT will never ask for your password by email.",
    ),
    (
        "Planned maintenance this weekend",
        "Email and file shares will be unavailable on Saturday "
        "from 22:00 to 02:00 while we apply updates.",
    ),
    (
        "New sign-in protection",
        "From next week, signing in from a new device will ask for a "
        "code from the authenticator app. See the intranet guide for setup.",
    ),
    (
        "Laptop upgrade schedule",
        "The next group of laptop upgrades starts on Monday. Your "
        "manager has the list; please back up local files first.",
    ),
)
LATERAL_LURES = (
    '{first} shared a document with you: "{doc}".\n\nOpen it here: {url}\n\nYou will need '
    "to sign in with your work account to view it.",
    "Hi,\n\nPlease review the updated {doc} before Friday. Sign in to acknowledge: {url}\n\n"
    "Thanks,\n{first}",
    "I've uploaded the {doc} for everyone. Access it with your email login here: {url}",
)
DOCUMENTS = ("Q3 salary review", "expense policy", "holiday rota", "bonus schedule", "org chart")


def _amount(rng: random.Random) -> str:
    return f"${rng.choice((2, 3, 4, 5, 7, 9, 12, 18, 24, 38, 46)) * 1000 + rng.randint(0, 999):,}"


def _bank_block(rng: random.Random) -> str:
    return (
        f"Account name: {rng.choice(NAME_PARTS).title()} Holdings\n"
        f"Routing number: {rng.randint(100000000, 999999999)}\n"
        f"Account number: {rng.randint(10**9, 10**10 - 1)}"
    )


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


# the stream


@dataclass(frozen=True)
class Mail:
    """One simulated message before it is written out."""

    when: datetime
    sender: Person
    to: tuple[Person, ...]
    subject: str
    body: str
    label: str = "safe"
    category: str = "safe"
    variant: str = ""
    direction: str = "inbound"
    cc: tuple[Person, ...] = ()
    reply_to: str = ""
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    message_id: str = ""
    extra_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class OrgStream:
    org: Organisation
    mails: tuple[Mail, ...]


class _Simulator:
    def __init__(
        self,
        org: Organisation,
        pools: BodyPools,
        config: SimulationConfig,
        rng: random.Random,
        names: _Names,
    ) -> None:
        self.org, self.config, self.rng = org, config, rng
        self.ham = _Deck(pools.ham, rng)
        self.news = _Deck(pools.newsletter, rng)
        self.phish = _Deck(pools.phishing, rng)
        self.mails: list[Mail] = []
        self.serial = 0
        self.names = names

    # helpers
    def _mid(self, domain: str) -> str:
        self.serial += 1
        return f"<{self.rng.getrandbits(48):012x}.{self.serial}@{domain}>"

    def _time(self, day: datetime, business: bool = True) -> datetime:
        if business:
            hour = min(23.9, max(0.0, self.rng.gauss(12.5, 2.6)))
        else:
            hour = self.rng.uniform(0, 24)
        # whole seconds, as the Date header writes them
        return day + timedelta(seconds=int(hour * 3600) + self.rng.randint(0, 59))

    def _count(self, rate: float) -> int:
        """A Poisson draw (Knuth's method; the rates here are small)."""
        limit, k, p = math.exp(-rate), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1

    def _colleague(self, *besides: Person) -> Person:
        while True:
            person = self.rng.choice(self.org.employees)
            if person not in besides:
                return person

    def _contact(self) -> Person:
        """A known contact, the popular ones far more often (a Zipf-like draw)."""
        contacts = self.org.contacts
        index = min(len(contacts) - 1, int(len(contacts) * self.rng.random() ** 2.5))
        return contacts[index]

    def _new_contact(self) -> Person:
        roll = self.rng.random()
        if roll < 0.3:
            domain = self.rng.choice(self.org.partners).domain  # a new person at a known firm
        elif roll < 0.5:
            domain = self.rng.choice(FREEMAIL)
        else:
            domain = self.names.domain()[1]
        person = self.names.person(domain, "external")
        self.org.contacts.append(person)
        return person

    def _emit(self, mail: Mail) -> Mail:
        domain = mail.sender.address.rpartition("@")[2]
        mail = replace(mail, message_id=mail.message_id or self._mid(domain))
        self.mails.append(mail)
        return mail

    def _conversation(self, first: Mail) -> None:
        """The first message, then perhaps a reply and a reply to that."""
        first = self._emit(first)
        if self.rng.random() >= self.config.reply_rate:
            return
        replier = first.to[0]
        direction = (
            "internal"
            if first.direction == "internal"
            else ("inbound" if first.direction == "outbound" else "outbound")
        )
        subject = (
            first.subject if first.subject.lower().startswith("re:") else f"Re: {first.subject}"
        )
        when = first.when + timedelta(minutes=self.rng.randint(5, 600))
        _, body = self.ham.draw()
        reply = self._emit(
            Mail(
                when,
                replier,
                (first.sender,),
                subject,
                body,
                direction=direction,
                in_reply_to=first.message_id,
                references=(first.message_id,),
            )
        )
        if self.rng.random() >= self.config.reply_back_rate:
            return
        _, body = self.ham.draw()
        self._emit(
            Mail(
                reply.when + timedelta(minutes=self.rng.randint(5, 900)),
                first.sender,
                (replier,),
                subject,
                body,
                direction=first.direction,
                in_reply_to=reply.message_id,
                references=(first.message_id, reply.message_id),
            )
        )

    def _cc(self, *besides: Person) -> tuple[Person, ...]:
        return (self._colleague(*besides),) if self.rng.random() < self.config.cc_rate else ()

    # safe traffic
    def inbound(self, day: datetime) -> None:
        is_new = self.rng.random() < self.config.new_contact_rate
        sender = self._new_contact() if is_new else self._contact()
        to = self._colleague()
        subject, body = self.ham.draw()
        self._conversation(
            Mail(
                self._time(day),
                sender,
                (to,),
                subject,
                body,
                category="safe",
                variant="new_contact" if is_new else "contact",
                cc=self._cc(to),
            )
        )

    def internal(self, day: datetime) -> None:
        sender = self._colleague()
        to = self._colleague(sender)
        subject, body = self.ham.draw()
        self._conversation(
            Mail(
                self._time(day),
                sender,
                (to,),
                subject,
                body,
                variant="colleague",
                direction="internal",
                cc=self._cc(sender, to),
            )
        )

    def outbound(self, day: datetime) -> None:
        sender = self._colleague()
        subject, body = self.ham.draw()
        self._conversation(
            Mail(
                self._time(day),
                sender,
                (self._contact(),),
                subject,
                body,
                variant="outbound",
                direction="outbound",
            )
        )

    def exec_request(self, day: datetime) -> None:
        sender = self.rng.choice(self.org.role("executive"))
        if self.rng.random() < self.config.exec_payment_share:
            self._exec_payment(day, sender)
            return
        to = self._colleague(sender)
        vendor = self.rng.choice(self.org.vendors).name
        body = _join(
            f"Hi {to.first},",
            self.rng.choice(EXEC_SAFE).format(vendor=vendor),
            self.rng.choice(SIGN_OFFS).format(first=sender.first, name=sender.name),
        )
        subject = self.rng.choice(("Quick request", "Board pack", "Next week", "Follow-up"))
        self._conversation(
            Mail(
                self._time(day),
                sender,
                (to,),
                subject,
                body,
                variant="exec_request",
                direction="internal",
            )
        )

    def _exec_payment(self, day: datetime, sender: Person) -> None:
        """A genuine request for a payment or gift cards, worded like the frauds."""
        to = self.rng.choice(self.org.role("finance"))
        body, subject = self._payment_request(to, sender, fraud=False)
        self._conversation(
            Mail(
                self._time(day),
                sender,
                (to,),
                subject,
                body,
                variant="exec_payment",
                direction="internal",
            )
        )

    def _payment_request(self, to: Person, executive: Person, fraud: bool) -> tuple[str, str]:
        """(body, subject) of a gift-card or payment request in an executive's name.

        Frauds and genuine requests have their own phrase pools, but a share
        `wording_overlap` of each is written from the other's, so wording alone cannot
        tell every fraud from every genuine request.
        """
        fraud_words = fraud != (self.rng.random() < self.config.wording_overlap)
        fills = {
            "n": self.rng.randint(3, 20),
            "brand": self.rng.choice(GIFT_BRANDS),
            "amount": f"${self.rng.choice((25, 50, 100, 200, 250, 500))}",
        }
        if self.rng.random() < 0.5:
            if fraud_words:
                request = _join(
                    self.rng.choice(EXEC_GIFT).format(**fills), self.rng.choice(EXEC_GIFT_NEXT)
                )
            else:
                request = self.rng.choice(GENUINE_GIFT).format(**fills)
            subject = self.rng.choice(("Quick favour", "Request", "Gift cards", "Awards", "Task"))
        else:
            pool = EXEC_WIRE if fraud_words else GENUINE_PAYMENT
            request = _join(
                self.rng.choice(pool).format(amount=_amount(self.rng)), _bank_block(self.rng)
            )
            subject = self.rng.choice(("Payment today", "Urgent payment", "Payment", "Deposit"))
        opener = self.rng.choice(EXEC_OPENERS) if fraud_words or self.rng.random() < 0.5 else ""
        body = _join(
            f"{to.first},",
            opener,
            request,
            self.rng.choice(EXEC_PRESSURE if fraud_words else GENUINE_PRESSURE),
            self.rng.choice(SIGN_OFFS).format(first=executive.first, name=executive.name),
        )
        return body, subject

    def share_notice(self, day: datetime) -> None:
        sender = self._colleague()
        count = self.rng.randint(1, 6)
        others = [p for p in self.org.employees if p != sender]
        to = tuple(self.rng.sample(others, count))
        doc = self.rng.choice(DOCUMENTS)
        url = f"https://docs.{self.org.domain}/d/{self.rng.getrandbits(32):x}"
        body = self.rng.choice(SHARE_NOTICES).format(first=sender.first, doc=doc, url=url)
        self._emit(
            Mail(
                self._time(day),
                sender,
                to,
                doc.capitalize(),
                body,
                variant="share_notice",
                direction="internal",
            )
        )

    def it_notice(self, day: datetime) -> None:
        subject, text = self.rng.choice(IT_NOTICES)
        recipients = tuple(self.rng.sample(self.org.employees, min(8, len(self.org.employees))))
        self._emit(
            Mail(
                self._time(day),
                self.org.it_desk,
                recipients,
                subject,
                text.format(n=self.rng.randint(3, 14)),
                variant="it_notice",
                direction="internal",
            )
        )

    def invoice(self, day: datetime) -> None:
        vendor = self.rng.choice(self.org.vendors)
        sender = vendor.contacts[0]
        to = self.rng.choice(self.org.role("finance"))
        fills = self._invoice_fills(day)
        if self.rng.random() < self.config.vendor_bank_change_rate:
            variant = "vendor_bank_change"
            borrowed = self.rng.random() < self.config.wording_overlap
            text = (self.rng.choice(INVOICE_FRAUD) if borrowed else BANK_CHANGE_SAFE).format(
                **fills
            )
        else:
            text, variant = self.rng.choice(INVOICE_SAFE).format(**fills), "vendor_invoice"
        printed = variant == "vendor_bank_change" or (
            self.rng.random() < self.config.invoice_bank_block_rate
        )
        body = _join(
            f"Dear {to.first},",
            text,
            _bank_block(self.rng) if printed else "",
            self.rng.choice(INVOICE_SAFE_NEXT),
            f"Kind regards,\n{sender.name}\n{vendor.name}",
        )
        self._conversation(
            Mail(self._time(day), sender, (to,), f"Invoice {fills['inv']}", body, variant=variant)
        )

    def _invoice_fills(self, day: datetime) -> dict:
        due = day + timedelta(days=self.rng.choice((14, 21, 30)))
        return {
            "inv": f"INV-{self.rng.randint(10000, 99999)}",
            "amount": _amount(self.rng),
            "due": f"{due:%d %B %Y}",
        }

    def newsletter(self, day: datetime, sender: Person, subscribers: list[Person]) -> None:
        subject, body = self.news.draw()
        when = self._time(day)
        for person in subscribers:
            self._emit(
                Mail(
                    when + timedelta(seconds=self.rng.randint(0, 300)),
                    sender,
                    (person,),
                    subject,
                    body,
                    variant="newsletter",
                    extra_headers=(
                        ("List-Unsubscribe", f"<https://{sender.address.split('@')[1]}/u>"),
                    ),
                )
            )

    # attacks
    def attack(self, day: datetime) -> None:
        category = self.rng.choices(ATTACK_CATEGORIES, weights=self.config.attack_mix)[0]
        mail = getattr(self, f"_{category}")(day)
        if category != "lateral_phishing" and self.rng.random() < self.config.fake_thread_rate:
            fake = self._mid(self.rng.choice(FREEMAIL))
            mail = replace(
                mail, subject=f"Re: {mail.subject}", in_reply_to=fake, references=(fake,)
            )
        self._emit(mail)

    def _executive_impersonation(self, day: datetime) -> Mail:
        executive = self.rng.choice(self.org.role("executive"))
        if self.rng.random() < self.config.freemail_impersonation_share:
            first, last = executive.name.lower().split()
            domain = self.rng.choice(FREEMAIL)
            address = f"{first}.{last}{self.rng.randint(1, 999)}@{domain}"
            variant = "freemail"
        else:
            domain = lookalike_domain(self.org.domain, self.rng)
            address = f"{executive.address.split('@')[0]}@{domain}"
            variant = "lookalike_domain"
        sender = Person(executive.name, address, "external")
        finance = self.org.role("finance")
        to = self.rng.choice(finance) if self.rng.random() < 0.6 else self._colleague(executive)
        body, subject = self._payment_request(to, executive, fraud=True)
        reply_to = ""
        if self.rng.random() < self.config.attacker_reply_to_rate:
            local = f"{executive.first.lower()}.office{self.rng.randint(1, 99)}"
            reply_to = f"{local}@{self.rng.choice(FREEMAIL)}"
        return Mail(
            self._time(day),
            sender,
            (to,),
            subject,
            body,
            "attack",
            "executive_impersonation",
            variant,
            reply_to=reply_to,
        )

    def _vendor_invoice_fraud(self, day: datetime) -> Mail:
        vendor = self.rng.choice(self.org.vendors)
        real = vendor.contacts[0]
        if self.rng.random() < self.config.compromised_vendor_share:
            sender, variant = real, "compromised_account"
        else:
            domain = lookalike_domain(vendor.domain, self.rng)
            sender = Person(real.name, f"{real.address.split('@')[0]}@{domain}", "external")
            variant = "lookalike_domain"
        to = self.rng.choice(self.org.role("finance"))
        fills = self._invoice_fills(day)
        borrowed = self.rng.random() < self.config.wording_overlap
        body = _join(
            f"Dear {to.first},",
            (BANK_CHANGE_SAFE if borrowed else self.rng.choice(INVOICE_FRAUD)).format(**fills),
            _bank_block(self.rng),
            self.rng.choice(INVOICE_FRAUD_NEXT),
            f"Kind regards,\n{real.name}\n{vendor.name}",
        )
        reply_to = ""
        if (
            variant == "compromised_account"
            and self.rng.random() < self.config.attacker_reply_to_rate
        ):
            reply_to = f"{real.address.split('@')[0]}.accounts@{self.rng.choice(FREEMAIL)}"
        return Mail(
            self._time(day),
            sender,
            (to,),
            f"Invoice {fills['inv']}",
            body,
            "attack",
            "vendor_invoice_fraud",
            variant,
            reply_to=reply_to,
        )

    def _credential_phishing(self, day: datetime) -> Mail:
        _, domain = self.names.domain()
        sender = Person(
            self.rng.choice(("Account Services", "Mail Admin", "Security Team", "Support")),
            f"{self.rng.choice(('no-reply', 'support', 'alert', 'service'))}@{domain}",
            "external",
        )
        to = self._colleague()
        subject, body = self.phish.draw()
        body = body.replace(RECIPIENT_PLACEHOLDER, to.address)
        return Mail(
            self._time(day, business=self.rng.random() < 0.7),
            sender,
            (to,),
            subject or "Account notice",
            body,
            "attack",
            "credential_phishing",
            "external",
        )

    def _lateral_phishing(self, day: datetime) -> Mail:
        sender = self._colleague()
        low, high = self.config.lateral_recipients
        others = [p for p in self.org.employees if p != sender]
        to = tuple(self.rng.sample(others, min(len(others), self.rng.randint(low, high))))
        host = f"{self.rng.choice(NAME_PARTS)}-{self.rng.choice(('docs', 'share', 'files'))}"
        suffix = self.rng.choice(("com", "net", "io"))
        url = f"https://{host}.{suffix}/view?d={self.rng.getrandbits(32):x}"
        if self.rng.random() < 0.6:
            doc = self.rng.choice(DOCUMENTS)
            body = self.rng.choice(LATERAL_LURES).format(first=sender.first, doc=doc, url=url)
            subject, variant = f"{doc.capitalize()}", "written_lure"
        else:
            subject, body = self.phish.draw()
            body, variant = f"{body}\n\n{url}", "corpus_lure"
        return Mail(
            self._time(day, business=self.rng.random() < 0.5),
            sender,
            to,
            subject,
            body,
            "attack",
            "lateral_phishing",
            variant,
            direction="internal",
        )

    # the whole run
    def run(self) -> list[Mail]:
        config = self.config
        for offset in range(config.days):
            day = START + timedelta(days=offset)
            factor = 1.0 if day.weekday() < 5 else config.weekend_factor
            for rate, make in (
                (config.inbound_per_day, self.inbound),
                (config.internal_per_day, self.internal),
                (config.outbound_per_day, self.outbound),
                (config.exec_requests_per_day, self.exec_request),
                (config.share_notices_per_day, self.share_notice),
                (config.it_notices_per_week / 5, self.it_notice),
                (config.invoices_per_vendor_month * config.vendors / 21, self.invoice),
                (config.attacks_per_day, self.attack),
            ):
                for _ in range(self._count(rate * factor)):
                    make(day)
            if day.weekday() == 1:
                for sender, subscribers in self.org.newsletters:
                    self.newsletter(day, sender, subscribers)
        return sorted(self.mails, key=lambda m: (m.when, m.message_id))


def render(mail: Mail) -> bytes:
    """The message as RFC 5322 bytes (UTF-8 text/plain, 8bit)."""
    headers = [
        ("From", mail.sender.header),
        ("To", ", ".join(p.header for p in mail.to)),
    ]
    if mail.cc:
        headers.append(("Cc", ", ".join(p.header for p in mail.cc)))
    if mail.reply_to:
        headers.append(("Reply-To", mail.reply_to))
    headers += [
        ("Subject", " ".join(mail.subject.split()) or "(no subject)"),
        ("Date", format_datetime(mail.when)),
        ("Message-ID", mail.message_id),
    ]
    if mail.in_reply_to:
        headers.append(("In-Reply-To", mail.in_reply_to))
        headers.append(("References", " ".join(mail.references)))
    headers += [
        *mail.extra_headers,
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "8bit"),
    ]
    head = "".join(f"{name}: {value}\n" for name, value in headers)
    return (head + "\n" + mail.body.replace("\r\n", "\n").rstrip("\n") + "\n").encode("utf-8")


def simulate_streams(
    config: SimulationConfig, pools: BodyPools, rng: random.Random
) -> list[OrgStream]:
    """Every organisation's stream, from pools already loaded (tests call this)."""
    names = _Names(rng)
    streams = []
    for index in range(config.orgs):
        org = build_organisation(index, config, names)
        mails = _Simulator(org, pools, config, rng, names).run()
        streams.append(OrgStream(org, tuple(mails)))
        logger.info(
            "%s: %d messages, %d attacks",
            org.id,
            len(mails),
            sum(m.label == "attack" for m in mails),
        )
    return streams


def write_stream(stream: OrgStream, folder: Path) -> dict:
    """Write one organisation's archive, labels and directory; returns its counts."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    # gzip's header would carry the time of writing: a fixed one keeps runs byte-identical
    with (
        gzip.GzipFile(folder / ARCHIVE_NAME, "wb", mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w") as tar,
    ):
        for position, mail in enumerate(stream.mails):
            name = f"{position:06d}.eml"
            data = render(mail)
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(mail.when.timestamp())
            tar.addfile(info, io.BytesIO(data))
            rows.append(
                {
                    "id": f"{ARCHIVE_NAME}:{name}",
                    "message_id": mail.message_id,
                    "label": mail.label,
                    "category": mail.category,
                    "variant": mail.variant,
                    "direction": mail.direction,
                    "org": stream.org.id,
                    "date": mail.when.isoformat(),
                }
            )
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (folder / "directory.json").write_text(json.dumps(stream.org.directory(), indent=2) + "\n")
    counts: dict[str, int] = {}
    for row in rows:
        key = row["category"] if row["label"] == "attack" else f"safe/{row['direction']}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def simulate(config: SimulationConfig, corpora_dir: Path, output_dir: Path) -> list[OrgStream]:
    """Build, write and return every organisation's stream (see the module contract)."""
    rng = random.Random(config.seed)
    pools = load_body_pools(Path(corpora_dir), config, rng)
    streams = simulate_streams(config, pools, rng)
    output_dir = Path(output_dir)
    summary = {"config": asdict(config), "bodies": pools.sources, "orgs": {}}
    for stream in streams:
        summary["orgs"][stream.org.id] = write_stream(stream, output_dir / stream.org.id)
    (output_dir / "simulation.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("wrote %d organisations to %s", len(streams), output_dir)
    return streams


# the command


def add_command(commands) -> None:
    parser = commands.add_parser("simulate", help="write mail streams of synthetic organisations")
    _add_arguments(parser)
    parser.set_defaults(run=run_simulate)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    root = Path(__file__).resolve().parents[1]
    defaults = SimulationConfig()
    # given flags override the config file; absent ones leave it (or the defaults)
    parser.add_argument("--orgs", type=int, help=f"organisations (default {defaults.orgs})")
    parser.add_argument("--seed", type=int, help=f"random seed (default {defaults.seed})")
    parser.add_argument("--days", type=int, help=f"days of mail (default {defaults.days})")
    parser.add_argument("--output", type=Path, required=True, help="folder to write into")
    parser.add_argument("--corpora", type=Path, default=root.parent / "shared" / "corpora")
    parser.add_argument("--config", type=Path, help="JSON file of SimulationConfig values")


def run_simulate(args: argparse.Namespace) -> int:
    try:
        values = json.loads(args.config.read_text()) if args.config else {}
        given = {"orgs": args.orgs, "seed": args.seed, "days": args.days}
        values.update({key: value for key, value in given.items() if value is not None})
        config = SimulationConfig.from_dict(values)
        simulate(config, args.corpora, args.output)
    except (ValueError, OSError) as error:
        logger.error("cannot simulate: %s", error)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return run_simulate(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
