"""Named detectors for the high-value attack categories, configured by the directory.

Contract: `run_detectors(parsed, directory, context=None) -> list[Hit]` runs every
detector in `DETECTORS` on one parsed message and returns the hits, strongest first.
It never raises: a detector that fails is logged (its name and the error type) and
skipped. Each `Hit` names its detector and category (one of `CATEGORIES`, the names the
decision layer uses), a score in [0, 1] and a reason that shows the evidence: the
display name, the two domains, the phrase, the attachment name.

A detector combines pieces of evidence, each with a weight, by noisy-OR
(1 - prod(1 - w)), and fires when that reaches its `fire_at`; every detector also
needs its defining evidence (an impersonated name, a payment request, a lure, ...), so
weak hints alone never add up to a hit. docs/detectors.md describes each detector,
what fires it and its benign twin.

`DetectorContext` carries what history knew before the message. Every field is
optional and defaults to "unknown" (None or empty), never to "no": without history
the detectors still run, they just cannot use the facts they were not given.
Detectors read the visible text only; hidden text (preheaders, white-on-white) is the
signals' business.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import phonenumbers
from anyascii import anyascii

from detection.directory import ROLES, Directory, Person, normalise_domain
from detection.lookalike import Lookalike, find_lookalike, skeleton, to_unicode
from detection.parsing import Address, Attachment, ParsedMessage
from detection.signals import FREEMAIL_DOMAINS, SenderFacts
from detection.urls import OBFUSCATION_TRICKS, Url, registered_domain

logger = logging.getLogger(__name__)

CATEGORIES = (
    "executive_impersonation",
    "lookalike_domain",
    "payment_fraud",
    "credential_phishing",
    "malware",
    "thread_hijack",
    "callback_phishing",
)
MAX_LINKS_COMPARED = 50  # distinct link domains compared with the directory per message
MAX_WORDING_TEXT = 20_000  # characters of subject and visible text searched for wording
MAX_PHONE_TEXT = 20_000  # characters searched for phone numbers
_SHOWN = 80  # characters of a name or phrase quoted in a reason
SEEN_DOMAIN_WEIGHT = 0.6  # a From lookalike's weight when history has safe mail from it
_KIND_NAMES = {"own": "own domain", "partner": "partner", "vendor": "vendor"}


@dataclass(frozen=True)
class Hit:
    """One detector's finding on one message."""

    detector: str
    category: str
    score: float
    reason: str

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"Hit.category must be one of {CATEGORIES}, got {self.category!r}")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Hit.score must be in [0, 1], got {self.score!r}")


@dataclass(frozen=True)
class DetectorContext:
    """History facts from before the message; None or empty means unknown.

    `known_domains`: registered domains the organisation corresponds with (writes to
    or has long received from). `thread_domains`: registered sender domains of the
    thread this message replies to, when the thread was found.
    """

    sender_seen_before: bool | None = None
    sender_domain_seen_before: bool | None = None
    known_domains: frozenset[str] = frozenset()
    thread_domains: frozenset[str] = frozenset()

    @classmethod
    def from_sender_facts(cls, facts: SenderFacts, **more) -> DetectorContext:
        """A context from the history store's `SenderFacts` (plus any other fields)."""
        return cls(
            sender_seen_before=facts.messages_before > 0,
            sender_domain_seen_before=facts.domain_messages_before > 0,
            **more,
        )


NO_CONTEXT = DetectorContext()


@dataclass(frozen=True)
class _View:
    """One message as the detectors see it; each fact is computed once, when first read."""

    parsed: ParsedMessage
    directory: Directory
    context: DetectorContext

    @cached_property
    def text(self) -> str:
        """Subject and visible text, lower-cased (the wording patterns are lower-case)."""
        return f"{self.parsed.subject}\n{self.parsed.visible_text}"[:MAX_WORDING_TEXT].lower()

    @cached_property
    def protected(self) -> dict[str, str]:
        return self.directory.protected_domains

    @cached_property
    def sender_domain(self) -> str:
        return _address_domain(self.parsed.from_)

    @cached_property
    def reply_to_domain(self) -> str:
        return _address_domain(self.parsed.reply_to)

    @cached_property
    def sender_lookalike(self) -> Lookalike | None:
        return self.lookalike(self.sender_domain)

    @cached_property
    def reply_to_lookalike(self) -> Lookalike | None:
        return self.lookalike(self.reply_to_domain)

    @cached_property
    def link_lookalikes(self) -> list[tuple[Url, Lookalike]]:
        found, seen = [], set()
        for url in self.parsed.urls:
            key = (url.registered_domain, url.host)
            if url.registered_domain and key not in seen and len(seen) < MAX_LINKS_COMPARED:
                seen.add(key)
                match = self.lookalike(url.registered_domain, url.host)
                if match:
                    found.append((url, match))
        return found

    @cached_property
    def sender_trusted(self) -> bool:
        """The sender's domain is in the directory or known, or the sender wrote before."""
        domain = self.sender_domain
        return bool(
            domain in self.protected
            or domain in self.context.known_domains
            or self.context.sender_seen_before
        )

    def lookalike(self, domain: str, host: str = "") -> Lookalike | None:
        if not domain or not self.protected or domain in self.context.known_domains:
            return None
        return find_lookalike(domain, self.protected, host)

    def kind_of(self, domain: str) -> str:
        """How a reason names a directory domain's kind: "own domain", "vendor", ..."""
        return _KIND_NAMES[self.protected[domain]]


@dataclass(frozen=True)
class Detector:
    """A named detector: `find` returns (score, reason) or None for one message."""

    name: str
    category: str
    description: str
    find: Callable[[_View], tuple[float, str] | None]
    fire_at: float = 0.5


@dataclass
class _Evidence:
    """Weighted pieces of evidence, combined by noisy-OR."""

    weights: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, weight: float, note: str) -> None:
        self.weights.append(weight)
        self.notes.append(note)

    @property
    def score(self) -> float:
        remaining = 1.0
        for weight in self.weights:
            remaining *= 1.0 - weight
        return round(1.0 - remaining, 4)

    def result(self) -> tuple[float, str] | None:
        return (self.score, "; ".join(self.notes)) if self.weights else None


def run_detectors(
    parsed: ParsedMessage, directory: Directory, context: DetectorContext | None = None
) -> list[Hit]:
    """Every detector's hit on `parsed`, strongest first; never raises."""
    view = _View(parsed, directory, context or NO_CONTEXT)
    hits = []
    for detector in DETECTORS:
        try:
            found = detector.find(view)
        except Exception as error:  # noqa: BLE001 - one detector must not stop scoring
            logger.warning("detector %s failed (%s); skipped", detector.name, type(error).__name__)
            logger.debug("detector failure", exc_info=True)
            continue
        if found and found[0] >= detector.fire_at:
            hits.append(Hit(detector.name, detector.category, found[0], found[1]))
    hits.sort(key=lambda hit: -hit.score)
    logger.debug("%d detector hit(s): %s", len(hits), [hit.detector for hit in hits])
    return hits


# impersonation
_TITLES = frozenset(
    ("mr", "mrs", "ms", "miss", "dr", "prof", "sir", "jr", "sr", "ii", "iii", "phd", "mba", "cpa",
     "ceo", "cfo", "coo", "cto", "cio")
)  # fmt: skip
_BRACKETED = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_NAME_PUNCTUATION = re.compile(r"[^a-z0-9,\s]+")
_ADDRESS_IN_NAME = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def name_key(name: str) -> frozenset[str]:
    """A person's name reduced to what identifies it: the set of its name words.

    Confusable characters become the Latin letters they look like, accents go
    (anyascii), case, quotes, bracketed notes ("(CEO)"), titles and middle initials are
    dropped, and "Last, First" reads as "First Last"; order no longer matters.
    """
    text = anyascii(skeleton(_BRACKETED.sub(" ", name))).lower()
    text = _NAME_PUNCTUATION.sub(" ", text)
    if text.count(",") == 1:
        last, first = text.split(",")
        text = f"{first} {last}"
    words = {word for word in text.replace(",", " ").split() if len(word) > 1}
    return frozenset(words - _TITLES)


def _impersonated(view: _View, roles: tuple[str, ...] = ROLES) -> Person | None:
    """The directory person (of `roles`) whose name or address the sender shows without
    writing from one of their addresses or from the organisation's own domain."""
    sender = view.parsed.from_
    if sender is None or not sender.display_name:
        return None
    if view.protected.get(view.sender_domain) == "own":
        return None  # an internal address: spoofing the own domain is authentication's job
    person = _person_named(view, sender.display_name, roles) or _address_in_name(view, roles)
    if person is None or sender.address in person.addresses:
        return None
    return person


def _person_named(view: _View, display_name: str, roles: tuple[str, ...]) -> Person | None:
    key = name_key(display_name)
    if len(key) < 2:
        return None
    for person in view.directory.people:
        if person.role in roles and any(name_key(name) == key for name in person.names):
            return person
    return None


def _impersonation(view: _View, roles: tuple[str, ...]) -> tuple[float, str] | None:
    """A directory person's name from an address that is not theirs, outside the org."""
    person = _impersonated(view, roles)
    if person is None:
        return None
    sender, domain = view.parsed.from_, view.sender_domain

    evidence = _Evidence()
    where = f"from {to_unicode(domain) or 'no valid address'}"
    if view.sender_lookalike:
        lookalike = view.sender_lookalike
        kind, technique = view.kind_of(lookalike.target), lookalike.technique.replace("_", " ")
        evidence.add(0.95, f"{where}, a lookalike of {kind} {lookalike.target} ({technique})")
    elif domain in FREEMAIL_DOMAINS:
        evidence.add(0.85, f"{where} (free mail)")
    elif domain in view.protected:
        evidence.add(0.35, f"{where} ({view.kind_of(domain)})")
    else:
        evidence.add(0.6, f"{where} (outside the organisation)")

    score = evidence.score * {"executive": 1.0, "finance": 0.95, "hr": 0.95}.get(person.role, 0.85)
    if view.context.sender_seen_before:
        score *= 0.6  # a known correspondent who happens to share the name
    shown = _quote(sender.display_name)
    reason = f"display name {shown} matches {person.role} {person.name}, but the mail comes "
    reason += "; ".join(evidence.notes) + ", not one of their addresses"
    return round(score, 4), reason


def _address_in_name(view: _View, roles: tuple[str, ...]) -> Person | None:
    """A display name that shows a directory person's address ("alice@example.com")."""
    for shown in _ADDRESS_IN_NAME.findall(view.parsed.from_.display_name):
        person = view.directory.person_with_address(shown)
        if person and person.role in roles:
            return person
    return None


def _executive_impersonation(view: _View) -> tuple[float, str] | None:
    return _impersonation(view, ("executive",))


def _colleague_impersonation(view: _View) -> tuple[float, str] | None:
    return _impersonation(view, ("finance", "hr", "staff"))


# lookalike domains
def _lookalike_domain(view: _View) -> tuple[float, str] | None:
    """From, Reply-To, Return-Path and link domains imitating a directory domain."""
    # a domain the organisation already has safe mail from is more likely a namesake
    # (another company on another TLD) than a fresh lookalike: only the strongest
    # techniques (homoglyphs, swaps) still fire from it
    sender_weight = SEEN_DOMAIN_WEIGHT if view.context.sender_domain_seen_before else 1.0
    found = [
        ("From", view.sender_lookalike, sender_weight),
        ("Reply-To", view.reply_to_lookalike, 1.0),
        ("Return-Path", view.lookalike(_address_domain(view.parsed.return_path)), 0.9),
        *(("link", match, 0.9) for _, match in view.link_lookalikes),
    ]
    found = [(where, match, weight) for where, match, weight in found if match]
    if not found:
        return None

    best = max(match.score * weight for _, match, weight in found)
    notes = dict.fromkeys(
        f"{where} domain {match.describe(view.kind_of(match.target))}" for where, match, _ in found
    )
    return round(best, 4), "; ".join(list(notes)[:3])


# payment fraud
def _phrases(*patterns: str) -> re.Pattern:
    """One pattern for lower-case text: case-insensitive matching costs twice the time."""
    return re.compile(r"\b(?:" + "|".join(patterns) + r")\b")


BANK_CHANGE = _phrases(
    r"(?:new|changed?|updated?|different|alternate|alternative)\s+(?:[\w-]+\s+){0,3}?"
    r"(?:bank(?:ing)?|account|remittance|payment|payroll|direct deposit)\s+"
    r"(?:details|information|info|account|instructions)",
    r"(?:bank(?:ing)?|account|payment|remittance)\s+(?:details|information|instructions)\s+"
    r"(?:have|has)\s+(?:been\s+)?(?:changed|updated)",
    r"(?:change|update)\s+(?:of\s+|to\s+)?(?:my|our|the)?\s*"
    r"(?:bank(?:ing)?|payroll|direct deposit|remittance)(?:\s+(?:details|information|account))?",
)
WIRE_REQUEST = _phrases(
    r"wire\s+(?:transfer|the\s+(?:funds|payment|money|amount))",
    r"(?:process|make|send|initiate|arrange|complete|execute)\s+(?:a\s+|an\s+|the\s+)?"
    r"(?:urgent\s+|quick\s+|same[- ]day\s+)?(?:wire|transfer|bank transfer|payment)",
    r"transfer\s+(?:the\s+)?(?:funds|money|amount)",
)
GIFT_CARDS = _phrases(
    r"gift\s?cards?",
    r"(?:app store|play store|steam|prepaid)\s+cards?",
    r"scratch\s+(?:off\s+)?the\s+(?:back|card)",
    r"send\s+me\s+the\s+(?:codes|card numbers)",
)
URGENCY = _phrases(
    r"urgent(?:ly)?",
    r"asap",
    r"immediately",
    r"right away",
    r"as soon as possible",
    r"(?:by|before)\s+(?:the\s+)?end\s+of\s+(?:the\s+)?day",
    r"within\s+the\s+hour",
    r"time[- ]sensitive",
    r"today",
)
SECRECY = _phrases(
    r"confidential(?:ity)?",
    r"keep\s+(?:this|it)\s+(?:between\s+us|quiet|to\s+yourself)",
    r"do\s+not\s+(?:tell|share|discuss|mention)",
    r"don'?t\s+(?:tell|share|discuss|mention)",
    r"discreet(?:ly)?",
    r"(?:i'?m|i\s+am)\s+(?:in\s+a\s+meeting|travell?ing|on\s+a\s+flight)",
    r"can'?t\s+(?:talk|take\s+calls)",
)


def _payment_fraud(view: _View) -> tuple[float, str] | None:
    """A payment request (bank change, wire, gift cards) with sender risk or pressure."""
    evidence = _Evidence()
    for pattern, weight, what in (
        (BANK_CHANGE, 0.45, "asks to change bank details"),
        (GIFT_CARDS, 0.45, "asks for gift cards"),
        (WIRE_REQUEST, 0.35, "asks for a wire or payment"),
    ):
        match = pattern.search(view.text)
        if match:
            evidence.add(weight, f"{what} ({_quote(match.group(0))})")
            break
    if not evidence.weights:
        return None

    _add_phrase(evidence, URGENCY, view.text, 0.15, "urgency")
    _add_phrase(evidence, SECRECY, view.text, 0.25, "secrecy")
    _add_sender_risk(evidence, view)
    return evidence.result()


def _add_sender_risk(evidence: _Evidence, view: _View) -> None:
    """How far the sender is from someone the organisation knows."""
    lookalike = view.sender_lookalike or view.reply_to_lookalike
    if lookalike:
        evidence.add(0.6, f"sender {lookalike.describe(view.kind_of(lookalike.target))}")
    person = _impersonated(view)
    if person and not view.context.sender_seen_before:
        shown = _quote(view.parsed.from_.display_name)
        evidence.add(0.45, f"display name {shown} of {person.role} {person.name}")
    if _reply_to_diverts(view):
        evidence.add(0.3, f"replies go to {to_unicode(view.reply_to_domain)}")
    if view.sender_domain in FREEMAIL_DOMAINS:
        evidence.add(0.25, f"free-mail sender ({view.sender_domain})")
    if view.context.sender_seen_before is False and not view.sender_trusted:
        evidence.add(0.3, "first-time sender")


# credential phishing
CREDENTIAL_LURE = _phrases(
    r"(?:reset|change|update|confirm|verify|expir\w*)\s+(?:\w+\s+){0,2}?password",
    r"password\s+(?:\w+\s+){0,2}?(?:expir\w*|reset|change)",
    r"verify\s+(?:your\s+)?(?:account|identity|email|mailbox|credentials)",
    r"(?:log|sign)\s?(?:-\s?)?in\s+(?:to|now|here|below|again)",
    r"(?:mailbox|storage|inbox|email)\s+(?:is\s+)?(?:full|quota|limit|almost full)",
    r"quota",
    r"(?:shared|sent)\s+(?:a|an|the)?\s*(?:document|file|folder|spreadsheet|pdf)\s+with\s+you",
    r"view\s+(?:the\s+)?(?:shared\s+)?(?:document|file|invoice|message|voicemail)",
    r"(?:new\s+)?voice\s?mail",
    r"unusual\s+(?:sign[- ]?in|login|activity)",
    r"account\s+(?:will\s+be\s+|has\s+been\s+|is\s+)?(?:suspended|locked|disabled|deactivated|closed)",
    r"confirm\s+(?:your\s+)?(?:account|identity|credentials)",
    r"re-?validate",
    r"keep\s+(?:the\s+)?same\s+password",
    r"credentials",
)
FORM_EXTENSIONS = (".htm", ".html", ".shtml", ".xhtml", ".svg")


def _credential_phishing(view: _View) -> tuple[float, str] | None:
    """A login/password/quota/share lure that carries a risky link or an HTML form."""
    lures = list(dict.fromkeys(m.group(0) for m in CREDENTIAL_LURE.finditer(view.text)))
    if not lures:
        return None
    carriers = _Evidence()
    _add_link_carriers(carriers, view)
    for attachment in view.parsed.attachments:
        if _extension(attachment.filename) in FORM_EXTENSIONS:
            carriers.add(
                0.55, f"HTML attachment {_quote(attachment.filename)} can hold a login form"
            )
            break
    if not carriers.weights:
        return None

    evidence = _Evidence()
    evidence.add(0.4 if len(lures) == 1 else 0.55, "lure " + ", ".join(map(_quote, lures[:3])))
    evidence.weights += carriers.weights
    evidence.notes += carriers.notes
    if view.sender_domain in FREEMAIL_DOMAINS:
        evidence.add(0.15, f"free-mail sender ({view.sender_domain})")
    return evidence.result()


def _add_link_carriers(evidence: _Evidence, view: _View) -> None:
    """The strongest of each kind of risky link: lookalike, mismatched, tricked, unseen."""
    if view.link_lookalikes:
        lookalike = view.link_lookalikes[0][1]
        evidence.add(0.6, f"link to {lookalike.describe(view.kind_of(lookalike.target))}")
    mismatched = next((u for u in view.parsed.urls if _shows_other_domain(u)), None)
    if mismatched:
        evidence.add(
            0.5,
            f"link text shows {mismatched.text_domain} but goes to {mismatched.registered_domain}",
        )
    tricked = next((u for u in view.parsed.urls if _tricks(u)), None)
    if tricked:
        evidence.add(0.4, f"link to {tricked.host} uses {', '.join(_tricks(tricked))}")
    unseen = next((u for u in view.parsed.urls if _unseen(view, u.registered_domain)), None)
    if unseen and not (mismatched or view.link_lookalikes):
        evidence.add(
            0.25, f"link to {to_unicode(unseen.registered_domain)}, a domain not seen before"
        )


def _shows_other_domain(url: Url) -> bool:
    return bool(
        url.text_domain and url.registered_domain and url.text_domain != url.registered_domain
    )


def _tricks(url: Url) -> list[str]:
    return [trick for trick in url.tricks if trick in OBFUSCATION_TRICKS or trick == "userinfo"]


def _unseen(view: _View, domain: str) -> bool:
    """A link domain that history says is new: not in the directory or `known_domains`
    (when given), and the sender's own domain only when that domain is new too.

    Without history nothing is unseen: legitimate mail links to tracking and content
    domains of its own all the time.
    """
    context = view.context
    if not domain or domain in view.protected or domain in context.known_domains:
        return False
    if domain == view.sender_domain or context.sender_domain_seen_before is False:
        return context.sender_domain_seen_before is False
    return bool(context.known_domains)


# malware lures
EXECUTABLE_EXTENSIONS = (
    ".exe", ".scr", ".pif", ".com", ".bat", ".cmd", ".js", ".jse", ".vbs", ".vbe", ".wsf",
    ".wsh", ".hta", ".lnk", ".msi", ".msix", ".ps1", ".jar", ".cpl", ".reg", ".dll", ".appx",
    ".sct", ".chm", ".one", ".application", ".gadget",
)  # fmt: skip
DECOY_EXTENSIONS = (
    ".pdf", ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx", ".rtf", ".txt", ".csv",
    ".jpg", ".jpeg", ".png", ".gif", ".mp3", ".mp4", ".wav",
)  # fmt: skip
DISK_IMAGE_EXTENSIONS = (".iso", ".img", ".vhd", ".vhdx")
ARCHIVE_EXTENSIONS = (
    ".zip", ".zipx", ".rar", ".r00", ".7z", ".gz", ".tgz", ".tar", ".bz2", ".xz", ".cab",
    ".ace", ".arj", ".lzh",
)  # fmt: skip
MACRO_EXTENSIONS = (
    ".docm", ".dotm", ".xlsm", ".xltm", ".xlam", ".xlsb", ".pptm", ".potm", ".ppsm", ".ppam",
    ".sldm",
)  # fmt: skip
EXECUTABLE_TYPES = frozenset(
    ("application/x-msdownload", "application/x-msdos-program", "application/x-dosexec",
     "application/x-executable", "application/hta", "application/x-ms-shortcut")
)  # fmt: skip
ENABLE_MACROS = _phrases(r"enable\s+(?:the\s+)?(?:content|editing|macros?)")
ARCHIVE_PASSWORD = _phrases(r"password\s*(?:is|:)", r"(?:zip|archive|file)\s+password")
_RTLO = "\u202e"


def _malware_lure(view: _View) -> tuple[float, str] | None:
    """The riskiest attachment: executables, disguises, disk images, macros, archives."""
    findings = [_attachment_risk(view, attachment) for attachment in view.parsed.attachments]
    findings = [finding for finding in findings if finding]
    if not findings:
        return None
    findings.sort(key=lambda finding: -finding[0])
    reason = "; ".join(note for _, note in findings[:3])
    return findings[0][0], reason


def _attachment_risk(view: _View, attachment: Attachment) -> tuple[float, str] | None:
    name = attachment.filename.strip().lower().rstrip(". ")
    extension, inner = _extension(name), _extension(name[: -len(_extension(name)) or None])
    shown = _quote(attachment.filename)

    if _RTLO in name or (extension in EXECUTABLE_EXTENSIONS and _reversed_decoy(name)):
        return 0.97, f"attachment {shown} hides its {extension} extension with right-to-left text"
    if extension in EXECUTABLE_EXTENSIONS and inner in DECOY_EXTENSIONS:
        return 0.97, f"attachment {shown} is a {extension} disguised as {inner} (double extension)"
    if extension in EXECUTABLE_EXTENSIONS or attachment.content_type in EXECUTABLE_TYPES:
        return 0.9, f"attachment {shown} runs code ({extension or attachment.content_type})"
    if extension in DISK_IMAGE_EXTENSIONS:
        return 0.75, f"attachment {shown} is a disk image, which bypasses download warnings"
    if extension in MACRO_EXTENSIONS:
        asks = ENABLE_MACROS.search(view.text)
        if asks:
            return 0.9, f"macro-enabled {shown} with {_quote(asks.group(0))} in the text"
        score = 0.5 if view.sender_trusted else 0.65  # finance teams do trade .xlsm files
        return score, f"attachment {shown} is a macro-enabled document"
    if extension in ARCHIVE_EXTENSIONS or attachment.is_archive:
        return _archive_risk(view, shown, inner)
    return None


def _archive_risk(view: _View, shown: str, inner: str) -> tuple[float, str] | None:
    if inner in EXECUTABLE_EXTENSIONS:
        return 0.85, f"archive {shown} is named for an executable ({inner}) inside"
    password = ARCHIVE_PASSWORD.search(view.text)
    if password:
        quoted = _quote(password.group(0))
        return (
            0.7,
            f"archive {shown} with its password in the text ({quoted}): scanners can't open it",
        )
    return None


def _reversed_decoy(name: str) -> bool:
    """A stem ending in a reversed document extension ("invoicegpj.exe"): what a name
    built with a right-to-left override looks like once the parser has dropped it."""
    stem = name.rsplit(".", 1)[0]
    return any(stem.endswith(decoy[1:][::-1]) for decoy in DECOY_EXTENSIONS if len(decoy) > 3)


def _extension(name: str) -> str:
    base = name.strip().lower().rsplit("/", 1)[-1]
    return "." + base.rsplit(".", 1)[1] if "." in base.strip(".") else ""


# thread hijack
_REPLY_SUBJECT = re.compile(r"^\s*(?:(?:re|aw|sv|antw|vs|r)\s*(?:\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def _thread_hijack(view: _View) -> tuple[float, str] | None:
    """A reply from a domain the thread never had, or a reply whose Reply-To diverts."""
    parsed = view.parsed
    threaded = bool(parsed.in_reply_to or parsed.references)
    if not (threaded or _REPLY_SUBJECT.match(parsed.subject)):
        return None

    evidence = _Evidence()
    thread = view.context.thread_domains
    domain = view.sender_domain
    if thread and domain and domain not in thread and view.protected.get(domain) != "own":
        impostor = None if domain in view.protected else find_lookalike(domain, thread)
        if impostor:
            evidence.add(0.95, f"reply from {impostor.describe()}, a domain of this thread")
        else:
            # a partner or vendor joining the thread is common; alone it does not fire
            weight = 0.4 if domain in view.protected else 0.65
            evidence.add(weight, f"reply from {to_unicode(domain)}, which this thread never had")
    if _reply_to_diverts(view):
        evidence.add(
            0.55, f"Reply-To diverts answers from {domain} to {to_unicode(view.reply_to_domain)}"
        )
    if not threaded and view.context.sender_seen_before is False:
        evidence.add(0.4, "a first-time sender's 'RE:' subject with no thread headers")
    return evidence.result()


def _reply_to_diverts(view: _View) -> bool:
    """Reply-To on another domain than From that neither the thread nor the org uses."""
    reply, sender = view.reply_to_domain, view.sender_domain
    if not reply or not sender or reply == sender:
        return False
    return reply not in view.context.thread_domains and reply not in view.protected


# callback phishing
BILLING = _phrases(
    r"invoice",
    r"subscription",
    r"(?:auto[- ]?)?renew(?:al|ed|s)?",
    r"refund",
    r"order\s+(?:number|no|#)",
    r"(?:has\s+been|will\s+be|was)\s+(?:charged|debited|billed)",
    r"billing",
    r"receipt",
    r"transaction",
    r"purchase",
    r"cancel(?:lation)?",
    r"dispute",
    r"membership",
)
CALL_TO_ACTION = _phrases(
    r"call\s+(?:us|our|the|now|immediately|at|this\s+number)",
    r"(?:contact|reach|dial)\s+(?:our|the)?\s*(?:billing|support|help\s?desk|customer|refund)",
    r"toll[- ]free",
    r"helpline",
    r"hotline",
)
AMOUNT = re.compile(r"[$€£]\s?\d[\d,]*(?:\.\d\d)?|\b\d[\d,]*(?:\.\d\d)?\s?(?:usd|eur|gbp)\b")


def _callback_phishing(view: _View) -> tuple[float, str] | None:
    """A phone number with billing wording, no links, from a sender nobody vouches for."""
    if view.parsed.urls or view.sender_trusted:
        return None
    billing = list(dict.fromkeys(m.group(0) for m in BILLING.finditer(view.text)))
    if not billing:
        return None
    phone = _phone_number(view.text, view.directory.phone_region)
    if phone is None:
        return None

    evidence = _Evidence()
    wording = ", ".join(map(_quote, billing[:3]))
    evidence.add(0.45, f"phone number {phone} with billing wording ({wording}) and no links")
    _add_phrase(evidence, AMOUNT, view.text, 0.2, "amount")
    _add_phrase(evidence, CALL_TO_ACTION, view.text, 0.2, "call to action")
    if view.sender_domain in FREEMAIL_DOMAINS:
        evidence.add(0.15, f"free-mail sender ({view.sender_domain})")
    return evidence.result()


def _phone_number(text: str, region: str) -> str | None:
    """The first valid phone number written as one (separators or a leading +)."""
    matcher = phonenumbers.PhoneNumberMatcher(
        text[:MAX_PHONE_TEXT], region, leniency=phonenumbers.Leniency.VALID, max_tries=50
    )
    for match in matcher:
        written = match.raw_string
        if written.startswith("+") or re.search(r"\d[\s().-]+\d", written):
            return phonenumbers.format_number(
                match.number, phonenumbers.PhoneNumberFormat.INTERNATIONAL
            )
    return None


# helpers
def _address_domain(address: Address | None) -> str:
    """The registered domain (ASCII) of an address, or ""."""
    if address is None or not address.domain:
        return ""
    try:
        return normalise_domain(address.domain)
    except ValueError:
        return registered_domain(address.domain.lower())


def _add_phrase(
    evidence: _Evidence, pattern: re.Pattern, text: str, weight: float, what: str
) -> None:
    match = pattern.search(text)
    if match:
        evidence.add(weight, f"{what} ({_quote(match.group(0))})")


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return f'"{text[:_SHOWN]}{"..." if len(text) > _SHOWN else ""}"'


DETECTORS: tuple[Detector, ...] = (
    Detector(
        "executive_impersonation", "executive_impersonation",
        "an executive's display name from an address that is not theirs", _executive_impersonation,
    ),
    Detector(
        "colleague_impersonation", "executive_impersonation",
        "a colleague's display name from an address that is not theirs", _colleague_impersonation,
    ),
    Detector(
        "lookalike_domain", "lookalike_domain",
        "a sender, Reply-To or link domain imitating an own, partner or vendor domain",
        _lookalike_domain,
    ),
    Detector(
        "payment_fraud", "payment_fraud",
        "bank-detail change, wire or gift-card request with sender risk or pressure",
        _payment_fraud,
    ),
    Detector(
        "credential_phishing", "credential_phishing",
        "login, password, quota or share lure with a risky link or an HTML attachment",
        _credential_phishing,
    ),
    Detector(
        "malware_lure", "malware",
        "executable, disguised, disk-image, macro or archive attachment", _malware_lure, 0.6,
    ),
    Detector(
        "thread_hijack", "thread_hijack",
        "a reply from a domain new to the thread, or a Reply-To that diverts", _thread_hijack,
    ),
    Detector(
        "callback_phishing", "callback_phishing",
        "a phone number with invoice or renewal wording and no links", _callback_phishing,
    ),
)  # fmt: skip
DETECTOR_NAMES: tuple[str, ...] = tuple(detector.name for detector in DETECTORS)
assert len(set(DETECTOR_NAMES)) == len(DETECTOR_NAMES), "detector names must be unique"
assert all(detector.category in CATEGORIES for detector in DETECTORS)
