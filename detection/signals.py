"""The one registry of named signals that every path reads.

Each signal has a stable name, a group (message, sender, recipient), a one-line
description and a bounded range. Training, export, the server and batch rescoring
all call `signal_vector`, which returns the values in `REGISTRY` order, each
clipped to its range and scaled to [0, 1].

Message signals read the parsed message alone. Sender and recipient signals read
`SenderFacts`, which a baseline store (`detection.baselines`) computes from the
organisation's history strictly before the message: safe mail it received and mail
it sent.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from detection.parsing import DEFECT_KINDS, ParsedMessage
from detection.urls import registered_domain

GROUPS = ("message", "sender", "recipient")
SCALES = ("linear", "log")


@dataclass(frozen=True)
class SenderFacts:
    """What the organisation's history knew before one message (every field defaults).

    Filled by `detection.baselines.assemble_facts`; `SenderFacts()` is "no history".
    """

    # the sender's address: safe inbound mail from it
    messages_before: int = 0
    domain_messages_before: int = 0
    first_seen: datetime | None = None
    message_date: datetime | None = None
    last_seen: datetime | None = None
    messages_in_window: int = 0  # in the window before the message (30 days by default)
    # the organisation's own mail towards the sender
    domain_is_correspondent: bool = False  # mail from, to or inside the domain before
    org_messages_to_sender: int = 0
    org_replies_to_sender: int = 0
    org_messages_to_domain: int = 0
    # display name
    display_name_other_addresses: int = 0  # other addresses seen with the same name
    display_name_known_with_address: bool = False
    # threads
    thread_references: int = 0  # In-Reply-To and References ids looked up
    thread_replies_to_org: int = 0  # ... that are Message-IDs of the organisation's mail
    thread_known_references: int = 0  # ... that are of any mail the organisation has
    lookalike_distance: int = -1  # edits to the nearest correspondent's domain; -1 none
    # the sender inside the organisation
    sender_internal: bool = False
    sender_mean_recipients: float = 0.0
    # recipients
    recipient_count: int = 0
    recipients_with_sender_history: int = 0  # recipients this sender wrote to before
    # the first few recipients' own history (BaselineConfig.max_recipient_profiles)
    recipients_profiled: int = 0
    recipients_who_wrote_to_sender: int = 0
    recipient_safe_messages: float = 0.0  # mean over the profiled recipients
    recipient_distinct_senders: float = 0.0  # mean over the profiled recipients
    recipient_first_time_rate: float = 0.0  # share of their safe mail from new senders

    @property
    def days_known(self) -> float:
        return _days(self.first_seen, self.message_date)

    @property
    def days_since_last(self) -> float:
        return _days(self.last_seen, self.message_date)

    @property
    def new_recipients(self) -> int:
        return self.recipient_count - self.recipients_with_sender_history


def _days(start: datetime | None, end: datetime | None) -> float:
    if start is None or end is None:
        return 0.0
    return max(0.0, (end - start).total_seconds() / 86400.0)


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


@dataclass(frozen=True)
class Signal:
    name: str
    group: str
    description: str
    high: float
    compute: Callable
    scale: str = "linear"
    low: float = 0.0

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(
                f"signal {self.name!r}: group must be one of {GROUPS}, got {self.group!r}"
            )
        if self.scale not in SCALES:
            raise ValueError(
                f"signal {self.name!r}: scale must be one of {SCALES}, got {self.scale!r}"
            )
        if not self.low < self.high:
            raise ValueError(f"signal {self.name!r}: range [{self.low}, {self.high}] is empty")

    def normalise(self, value: float) -> float:
        """Clip to [low, high], then map onto [0, 1] (log1p first for counts)."""
        clipped = min(max(float(value), self.low), self.high)
        if self.scale == "log":
            return math.log1p(clipped - self.low) / math.log1p(self.high - self.low)
        return (clipped - self.low) / (self.high - self.low)


# wording
def _phrases(*words: str) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE)


CREDENTIAL_WORDS = _phrases(
    r"verify (?:your )?(?:account|identity|email|mailbox)",
    r"log ?in",
    r"sign ?in",
    r"password",
    r"confirm (?:your )?(?:account|identity|details)",
    r"suspend(?:ed)?",
    r"unlock",
    r"mailbox (?:is )?(?:full|quota)",
    r"re-?activate",
    r"credentials?",
    r"security alert",
    r"unusual (?:sign-in )?activity",
    r"update (?:your )?(?:account|information|details)",
)
PAYMENT_WORDS = _phrases(
    r"wire transfer",
    r"invoice",
    r"bank (?:details|account)",
    r"payment",
    r"gift ?cards?",
    r"remittance",
    r"overdue",
    r"account number",
    r"routing number",
    r"iban",
    r"swift",
    r"refund",
    r"bitcoin",
    r"btc",
    r"transfer (?:the )?funds",
)
URGENCY_WORDS = _phrases(
    r"urgent(?:ly)?",
    r"immediately",
    r"within (?:24|48|72) hours",
    r"act now",
    r"final notice",
    r"expire[sd]?",
    r"as soon as possible",
    r"asap",
    r"right away",
    r"last warning",
    r"confidential",
    r"do not share",
)
RISKY_EXTENSIONS = (
    ".exe",
    ".scr",
    ".js",
    ".jse",
    ".vbs",
    ".vbe",
    ".bat",
    ".cmd",
    ".com",
    ".pif",
    ".hta",
    ".htm",
    ".html",
    ".shtml",
    ".iso",
    ".img",
    ".lnk",
    ".jar",
    ".msi",
    ".ps1",
    ".wsf",
    ".docm",
    ".xlsm",
    ".pptm",
    ".dotm",
    ".xlam",
    ".one",
)
FREEMAIL_DOMAINS = frozenset(
    (
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "hotmail.com",
        "outlook.com",
        "live.com",
        "aol.com",
        "icloud.com",
        "mail.com",
        "gmx.com",
        "gmx.de",
        "gmx.net",
        "web.de",
        "yandex.ru",
        "mail.ru",
        "protonmail.com",
        "proton.me",
        "zoho.com",
        "qq.com",
    )
)
SHORTENER_DOMAINS = frozenset(
    (
        "bit.ly",
        "tinyurl.com",
        "t.co",
        "goo.gl",
        "ow.ly",
        "is.gd",
        "buff.ly",
        "rebrand.ly",
        "cutt.ly",
    )
)


def _text(m: ParsedMessage) -> str:
    return f"{m.subject} {m.visible_text}"


def _domain(address) -> str:
    return registered_domain(address.domain) if address is not None and address.domain else ""


def _differs(m: ParsedMessage, other) -> float:
    sender, alt = _domain(m.from_), _domain(other)
    return float(bool(sender and alt and sender != alt))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _mismatched_links(m: ParsedMessage) -> int:
    return sum(
        1
        for u in m.urls
        if u.text_domain and u.registered_domain and u.text_domain != u.registered_domain
    )


def _message_id_mismatch(m: ParsedMessage) -> float:
    _, _, mid_host = m.message_id.strip("<>").rpartition("@")
    mid, sender = registered_domain(mid_host), _domain(m.from_)
    return float(bool(mid and sender and mid != sender))


def _hidden_ratio(m: ParsedMessage) -> float:
    total = len(m.visible_text) + len(m.hidden_text)
    return len(m.hidden_text) / total if total else 0.0


def _defect_signal(kind: str) -> Signal:
    return Signal(
        f"defect_{kind}",
        "message",
        f"parse defect: {kind.replace('_', ' ')}",
        1.0,
        lambda m, k=kind: float(m.defects.get(k, 0) > 0),
    )


MESSAGE_SIGNALS = (
    Signal("link_count", "message", "links in the message", 50, lambda m: len(m.urls), "log"),
    Signal(
        "link_domain_count",
        "message",
        "distinct registered domains that links point to",
        20,
        lambda m: len({u.registered_domain for u in m.urls if u.registered_domain}),
        "log",
    ),
    Signal(
        "link_text_mismatch",
        "message",
        "links whose visible text shows another domain than the target",
        5,
        _mismatched_links,
    ),
    Signal(
        "ip_link",
        "message",
        "links to a bare IP address",
        1,
        lambda m: any(_is_ip(u.host) for u in m.urls),
    ),
    Signal(
        "shortener_link",
        "message",
        "links through a URL shortener",
        1,
        lambda m: any(u.registered_domain in SHORTENER_DOMAINS for u in m.urls),
    ),
    Signal(
        "reply_to_differs",
        "message",
        "Reply-To domain differs from From domain",
        1,
        lambda m: _differs(m, m.reply_to),
    ),
    Signal(
        "return_path_differs",
        "message",
        "Return-Path domain differs from From domain",
        1,
        lambda m: _differs(m, m.return_path),
    ),
    Signal(
        "message_id_differs",
        "message",
        "Message-ID domain differs from From domain",
        1,
        _message_id_mismatch,
    ),
    Signal(
        "freemail_sender",
        "message",
        "From is a free-mail address",
        1,
        lambda m: _domain(m.from_) in FREEMAIL_DOMAINS,
    ),
    Signal(
        "credential_wording",
        "message",
        "login, password or account-verification wording",
        10,
        lambda m: len(CREDENTIAL_WORDS.findall(_text(m))),
        "log",
    ),
    Signal(
        "payment_wording",
        "message",
        "payment, invoice, bank-detail or gift-card wording",
        10,
        lambda m: len(PAYMENT_WORDS.findall(_text(m))),
        "log",
    ),
    Signal(
        "urgency_wording",
        "message",
        "urgency or secrecy wording",
        10,
        lambda m: len(URGENCY_WORDS.findall(_text(m))),
        "log",
    ),
    Signal(
        "html_only", "message", "HTML body with no plain-text alternative", 1, lambda m: m.html_only
    ),
    Signal("attachment_count", "message", "attachments", 10, lambda m: len(m.attachments), "log"),
    Signal(
        "risky_attachment",
        "message",
        "attachments of a type that runs code or hides a page",
        3,
        lambda m: sum(1 for a in m.attachments if a.filename.lower().endswith(RISKY_EXTENSIONS)),
    ),
    Signal(
        "text_length",
        "message",
        "characters of visible text",
        20000,
        lambda m: len(m.visible_text),
        "log",
    ),
    Signal(
        "no_text",
        "message",
        "fewer than 20 characters of visible text",
        1,
        lambda m: len(m.visible_text.strip()) < 20,
    ),
    Signal(
        "hidden_text_ratio",
        "message",
        "share of the text that is hidden from the reader",
        1,
        _hidden_ratio,
    ),
    Signal("image_count", "message", "images in the message", 20, lambda m: m.image_count, "log"),
    Signal(
        "linked_image_count",
        "message",
        "images wrapped in a link",
        10,
        lambda m: m.linked_image_count,
        "log",
    ),
    Signal("no_subject", "message", "empty or missing Subject", 1, lambda m: not m.subject.strip()),
    *(_defect_signal(kind) for kind in DEFECT_KINDS),
    Signal(
        "invisible_char_count",
        "message",
        "zero-width or bidi-control characters in the text",
        50,
        lambda m: m.invisible_char_count,
        "log",
    ),
    Signal(
        "link_userinfo_trick",
        "message",
        "links with text before an @ that hides the real host",
        3,
        lambda m: sum(1 for u in m.urls if "userinfo" in u.tricks),
    ),
    Signal(
        "link_obfuscated_host",
        "message",
        "links whose host is encoded, numeric or mangled",
        3,
        lambda m: sum(1 for u in m.urls if u.obfuscated_host),
    ),
    Signal(
        "punycode_link",
        "message",
        "links to an internationalised (punycode) host",
        1,
        lambda m: any("punycode" in u.tricks for u in m.urls),
    ),
    Signal(
        "archive_attachment",
        "message",
        "attachments that are archives (zip, rar, 7z, ...)",
        3,
        lambda m: sum(1 for a in m.attachments if a.is_archive),
    ),
    Signal(
        "document_attachment",
        "message",
        "attachments that are PDF or office documents",
        3,
        lambda m: sum(1 for a in m.attachments if a.is_document),
    ),
)

SENDER_SIGNALS = (
    Signal(
        "sender_seen_before",
        "sender",
        "the organisation had safe mail from this address before",
        1,
        lambda f: f.messages_before > 0,
    ),
    Signal(
        "first_time_sender",
        "sender",
        "no safe mail from this address before and the organisation never wrote to it",
        1,
        lambda f: f.messages_before == 0 and f.org_messages_to_sender == 0,
    ),
    Signal(
        "sender_message_count",
        "sender",
        "safe messages from this address so far",
        1000,
        lambda f: f.messages_before,
        "log",
    ),
    Signal(
        "sender_recent_messages",
        "sender",
        "safe messages from this address in the recent window (30 days by default)",
        300,
        lambda f: f.messages_in_window,
        "log",
    ),
    Signal(
        "sender_days_known",
        "sender",
        "days since this address first wrote",
        3650,
        lambda f: f.days_known,
        "log",
    ),
    Signal(
        "sender_days_since_last",
        "sender",
        "days since this address last wrote (0 if never)",
        3650,
        lambda f: f.days_since_last,
        "log",
    ),
    Signal(
        "sender_domain_seen_before",
        "sender",
        "the organisation had safe mail from this domain before",
        1,
        lambda f: f.domain_messages_before > 0,
    ),
    Signal(
        "sender_domain_message_count",
        "sender",
        "safe messages from this domain so far",
        10000,
        lambda f: f.domain_messages_before,
        "log",
    ),
    Signal(
        "org_wrote_to_sender",
        "sender",
        "someone in the organisation wrote to this address before",
        1,
        lambda f: f.org_messages_to_sender > 0,
    ),
    Signal(
        "org_replied_to_sender",
        "sender",
        "someone in the organisation replied to this address before",
        1,
        lambda f: f.org_replies_to_sender > 0,
    ),
    Signal(
        "org_wrote_to_sender_domain",
        "sender",
        "the organisation wrote to this domain before",
        1,
        lambda f: f.org_messages_to_domain > 0,
    ),
    Signal(
        "display_name_new_address",
        "sender",
        "the display name came before from other addresses, never from this one",
        1,
        lambda f: f.display_name_other_addresses > 0 and not f.display_name_known_with_address,
    ),
    Signal(
        "reply_to_org_thread",
        "sender",
        "In-Reply-To or References names a message the organisation sent",
        1,
        lambda f: f.thread_replies_to_org > 0,
    ),
    Signal(
        "reply_to_unknown_thread",
        "sender",
        "the message claims a thread (In-Reply-To/References) the organisation has no mail of",
        1,
        lambda f: f.thread_references > 0 and f.thread_known_references == 0,
    ),
    Signal(
        "lookalike_correspondent_domain",
        "sender",
        "the domain is one or two edits from a correspondent's domain but is not it",
        1,
        lambda f: f.lookalike_distance >= 0,
    ),
    Signal(
        "internal_sender",
        "sender",
        "the sender's domain is one the organisation sends from",
        1,
        lambda f: f.sender_internal,
    ),
    Signal(
        "internal_new_recipients",
        "sender",
        "recipients an internal sender never wrote to before (0 for external senders)",
        100,
        lambda f: f.new_recipients if f.sender_internal else 0,
        "log",
    ),
    Signal(
        "internal_fanout_ratio",
        "sender",
        "recipients of this message over the internal sender's usual number (0 for external)",
        20,
        lambda f: f.recipient_count / max(1.0, f.sender_mean_recipients) * f.sender_internal,
    ),
)

RECIPIENT_SIGNALS = (
    Signal(
        "first_time_sender_to_recipient",
        "recipient",
        "share of the recipients who never had mail from this sender",
        1,
        lambda f: _share(f.new_recipients, f.recipient_count),
    ),
    Signal(
        "recipient_wrote_to_sender",
        "recipient",
        "share of the recipients who wrote to this sender before",
        1,
        lambda f: _share(f.recipients_who_wrote_to_sender, f.recipients_profiled),
    ),
    Signal(
        "recipient_safe_messages",
        "recipient",
        "safe messages each recipient received before (mean)",
        100000,
        lambda f: f.recipient_safe_messages,
        "log",
    ),
    Signal(
        "recipient_distinct_senders",
        "recipient",
        "distinct senders each recipient had mail from (mean)",
        10000,
        lambda f: f.recipient_distinct_senders,
        "log",
    ),
    Signal(
        "recipient_first_time_rate",
        "recipient",
        "share of the recipients' safe mail that came from first-time senders",
        1,
        lambda f: f.recipient_first_time_rate,
    ),
)
BASELINE_SIGNALS = SENDER_SIGNALS + RECIPIENT_SIGNALS

REGISTRY: tuple[Signal, ...] = MESSAGE_SIGNALS + SENDER_SIGNALS + RECIPIENT_SIGNALS
SIGNAL_NAMES: tuple[str, ...] = tuple(s.name for s in REGISTRY)
assert len(set(SIGNAL_NAMES)) == len(SIGNAL_NAMES), "signal names must be unique"


def raw_signals(message: ParsedMessage, facts: SenderFacts) -> dict[str, float]:
    """Every signal's unscaled value, by name (for reasons and reports)."""
    values = {s.name: float(s.compute(message)) for s in MESSAGE_SIGNALS}
    values.update(baseline_signals(facts))
    return values


def baseline_signals(facts: SenderFacts) -> dict[str, float]:
    """The sender and recipient signals' unscaled values, by name (Spark computes these)."""
    return {s.name: float(s.compute(facts)) for s in BASELINE_SIGNALS}


def normalised(raw: dict[str, float]) -> list[float]:
    """Unscaled values by name to normalised values in `REGISTRY` order."""
    return [s.normalise(raw[s.name]) for s in REGISTRY]


def signal_vector(message: ParsedMessage, facts: SenderFacts) -> list[float]:
    """Normalised values in `REGISTRY` order: the model's tabular input."""
    return normalised(raw_signals(message, facts))
