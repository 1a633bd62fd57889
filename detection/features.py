"""One message to the model's inputs, the same way on every path.

Contract: `extract_features(data, kind, org, history, when, directory)` sanitizes the
raw bytes (rfc822 only), parses them, reads the sender's history as it stood strictly
before the message, runs the detectors against the organisation's directory, and
returns the model text, the normalised signal vector, the raw signal values and the
detectors' hits.

Recipients: the text the model and the message signals read has every recipient
address replaced by a placeholder; the addresses themselves (`Features.recipients`,
from `parse_with_recipients`) go only to the history store, which keys them by keyed
hash, so the recipient signals see who the message was for without any address
reaching the model in clear. Training, the in-process scorer, the Triton model and batch
rescoring all call it, so a message gets the same inputs everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from detection.detectors import DetectorContext, Hit, run_detectors
from detection.directory import Directory
from detection.history import SenderHistory
from detection.parsing import ParsedMessage, parse_raw
from detection.sanitize import replace_recipients_in_text, sanitize_with_recipients
from detection.signals import SenderFacts, normalised, raw_signals

EMPTY_DIRECTORY = Directory()


@dataclass(frozen=True)
class Features:
    parsed: ParsedMessage
    text: str
    signals: list[float]  # normalised, in REGISTRY order
    raw: dict[str, float]  # unscaled values by name, for reasons
    when: datetime | None
    facts: SenderFacts
    hits: list[Hit]  # detector hits, strongest first
    recipients: tuple[str, ...] = ()  # lower-case, header order; for the history store only


def model_text(parsed: ParsedMessage) -> str:
    """What the encoder reads: the subject, a line break, then the visible text."""
    return f"{parsed.subject}\n{parsed.visible_text}"


def parse_for_model(data: bytes, kind: str = "rfc822") -> ParsedMessage:
    """Sanitize (receiver-added headers, recipient addresses) and parse.

    The recipient addresses sanitize found are replaced once more in the decoded text
    (subject, visible and hidden text, URLs, header values), where encodings the raw
    bytes hide (an RFC 2047 word, HTML entities, a charset) have been undone: that
    text is what the model and the signals read.
    """
    return parse_with_recipients(data, kind)[0]


def parse_with_recipients(
    data: bytes, kind: str = "rfc822"
) -> tuple[ParsedMessage, tuple[str, ...]]:
    """`parse_for_model`, plus the recipient addresses sanitize replaced (header order).

    The addresses are for the history store alone (pass them to `facts_before` and
    `record`); text records have none.
    """
    if kind != "rfc822":
        return parse_raw(data, kind), ()
    data, ordered = sanitize_with_recipients(data)
    recipients = frozenset(ordered)
    parsed = parse_raw(data, kind)

    def clean(text: str) -> str:
        return replace_recipients_in_text(text, recipients)

    return replace(
        parsed,
        subject=clean(parsed.subject),
        visible_text=clean(parsed.visible_text),
        hidden_text=clean(parsed.hidden_text),
        urls=tuple(replace(u, raw=clean(u.raw), text=clean(u.text)) for u in parsed.urls),
        raw_headers=tuple((name, clean(value)) for name, value in parsed.raw_headers),
    ), ordered


class EmptyMessageError(ValueError):
    """A message with no content at all was sent for scoring."""


def extract_features(
    data: bytes,
    kind: str,
    org: str,
    history: SenderHistory,
    when: datetime | None = None,
    directory: Directory = EMPTY_DIRECTORY,
) -> Features:
    """The features of one message as scoring sees them.

    Raises EmptyMessageError when `data` holds nothing but whitespace: there is no
    message to judge, and a verdict on it would be noise.
    """
    if not data.strip():
        held = f"{len(data)} bytes, all whitespace" if data else "0 bytes"
        raise EmptyMessageError(f"the message is empty ({held})")
    parsed, recipients = parse_with_recipients(data, kind)
    when = when or parsed.date
    facts = history.facts_before(org, parsed, when, recipients=recipients)
    return features_of(parsed, facts, when, directory, recipients)


def features_of(
    parsed: ParsedMessage,
    facts: SenderFacts,
    when: datetime | None,
    directory: Directory = EMPTY_DIRECTORY,
    recipients: tuple[str, ...] = (),
) -> Features:
    """The model's inputs and the detectors' hits for a parsed message, given what the
    history knew before it (the dataset build calls this with its own history)."""
    raw = raw_signals(parsed, facts)
    hits = run_detectors(parsed, directory, DetectorContext.from_sender_facts(facts))
    text = model_text(parsed)
    return Features(parsed, text, normalised(raw), raw, when, facts, hits, recipients)
