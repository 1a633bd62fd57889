"""Small synthetic messages written for Bulwark's tests.

Every name and address is a placeholder on example.com / example.net / example.org.
`synthetic_corpus(n, seed)` returns labelled raw messages in three classes.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

SAFE_SUBJECTS = ("Agenda for Thursday", "Build notes", "Lunch order", "Draft report attached")
SAFE_BODIES = (
    "Hi team, the meeting moves to room four. Bring the figures from last week.",
    "The nightly build passed. Release notes are in the usual folder.",
    "Could you review the second section before Friday? Thanks.",
)
SPAM_SUBJECTS = ("Cheap watches today", "You won a cruise", "Lose weight fast")
SPAM_BODIES = (
    "Best prices on replica watches, free shipping, click http://deals.example.net/w now!",
    "Amazing offer just for you, visit http://promo.example.org/offer to claim.",
)
ATTACK_SUBJECTS = ("Verify your account", "Mailbox quota exceeded", "Urgent wire transfer")
ATTACK_BODIES = (
    "Your password expires today. Log in immediately to verify your account or it will be "
    "suspended.",
    "Please process a wire transfer of 9,800 to the new bank details attached. Urgent and "
    "confidential.",
)


@dataclass(frozen=True)
class SyntheticMessage:
    data: bytes
    label: str  # "safe", "spam" or "attack"


def make_message(
    subject: str,
    body: str,
    sender: str = "Alice Example <alice@example.com>",
    when: datetime | None = None,
    html: bool = False,
    extra_headers: str = "",
) -> bytes:
    when = when or datetime(2024, 1, 2, 9, 30, tzinfo=timezone.utc)
    ctype = "text/html" if html else "text/plain"
    message_id = hashlib.sha1(f"{subject}|{body}|{when}".encode()).hexdigest()[:16]
    return (
        f"From: {sender}\r\nTo: Bob Example <bob@example.org>\r\nSubject: {subject}\r\n"
        f"Date: {format_datetime(when)}\r\nMessage-ID: <{message_id}@example.com>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: {ctype}; charset=utf-8\r\n"
        f"{extra_headers}\r\n{body}\r\n"
    ).encode()


def synthetic_corpus(n: int = 60, seed: int = 0) -> list[SyntheticMessage]:
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    kinds = {
        "safe": (SAFE_SUBJECTS, SAFE_BODIES, "Carol Example <carol@example.com>"),
        "spam": (SPAM_SUBJECTS, SPAM_BODIES, "Deals <offers@example.net>"),
        "attack": (ATTACK_SUBJECTS, ATTACK_BODIES, "IT Desk <helpdesk@example.org>"),
    }
    messages = []
    for i in range(n):
        label = ("safe", "spam", "attack")[i % 3]
        subjects, bodies, sender = kinds[label]
        body = f"{rng.choice(bodies)} Ref {rng.randint(1000, 9999)}."
        when = start + timedelta(hours=i)
        messages.append(
            SyntheticMessage(make_message(rng.choice(subjects), body, sender, when), label)
        )
    return messages
