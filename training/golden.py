"""The golden evaluation set: frozen, fingerprinted, per attack category, never trained on.

Contract:
- `freeze_golden(data, config)` chooses the golden messages once, from the "test"
  split of a built dataset (the latest mail of each source, which no model trained on
  that build has seen): up to `per_category` attacks per category, where an attack's
  category is its strongest detector hit ("uncategorised" when none fired), and up to
  `safe_messages` safe messages spread over the safe sources in proportion. Returns
  the JSON-ready manifest (ids, labels, categories), which the caller writes once and
  never rewrites: that file is what "frozen" means.
- `carve_golden(data, manifest, config)` removes every golden id from every split (so
  training never sees it, whatever later builds put where) and returns
  `(data_without_golden, golden_rows)`; golden_rows holds the dataset's columns plus
  `category`, and synthetic attacks (written here for the project, example.* domains)
  for every category with fewer than `min_per_category` real messages.
- `golden_fingerprint(rows)` is a sha256 over (id, label, category, text), in id order.

Known shortcoming: the golden messages' senders still enter the sender history the
dataset build writes (they are removed from the rows, not from the history); a
history leak would need a later message from the same sender, and only raises the
sender signals of that later message, not the golden one's.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import datasets

from detection.detectors import CATEGORIES
from detection.sources import RawMessage
from detection.tensors import CLASS_NAMES
from training.dataset import dataset_from_messages

UNCATEGORISED = "uncategorised"
GOLDEN_CATEGORIES = (*CATEGORIES, UNCATEGORISED)
SAFE, ATTACK = CLASS_NAMES.index("safe"), CLASS_NAMES.index("attack")
SYNTHETIC_SOURCE = "golden-synthetic"


@dataclass(frozen=True)
class GoldenConfig:
    ids_file: str = "runs/retrain/golden.json"  # written once, when absent; then frozen
    per_category: int = 150  # real attacks kept per category
    safe_messages: int = 1500  # real safe messages (the false-positive side)
    min_per_category: int = 12  # synthetic attacks fill a category up to this
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("per_category", "safe_messages", "min_per_category", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"GoldenConfig.{name} must be an int >= 0, got {value!r}")


def attack_category(hit_categories, hit_scores) -> str:
    """An attack's category: its strongest detector hit, "uncategorised" when none fired."""
    if not hit_categories:
        return UNCATEGORISED
    return max(zip(hit_scores, hit_categories, strict=True))[1]


def freeze_golden(data: datasets.DatasetDict, config: GoldenConfig, fingerprint: str) -> dict:
    """The golden manifest chosen from `data["test"]` (see the module docstring)."""
    test = data["test"]
    rng = random.Random(config.seed)
    by_category: dict[str, list[int]] = {c: [] for c in GOLDEN_CATEGORIES}
    safe_by_source: dict[str, list[int]] = {}
    for row, (label, source, cats, scores) in enumerate(
        zip(test["label"], test["source"], test["hit_categories"], test["hit_scores"], strict=True)
    ):
        if label == ATTACK:
            by_category[attack_category(cats, scores)].append(row)
        elif label == SAFE:
            safe_by_source.setdefault(source, []).append(row)

    chosen: list[tuple[int, str]] = []
    for category, rows in by_category.items():
        picked = rng.sample(rows, min(config.per_category, len(rows)))
        chosen += [(row, category) for row in sorted(picked)]
    total_safe = sum(len(rows) for rows in safe_by_source.values())
    for _, rows in sorted(safe_by_source.items()):
        share = round(config.safe_messages * len(rows) / total_safe) if total_safe else 0
        chosen += [(row, "") for row in sorted(rng.sample(rows, min(share, len(rows))))]

    entries = [
        {"id": test["id"][row], "label": CLASS_NAMES[test["label"][row]], "category": category}
        for row, category in chosen
    ]
    return {
        "frozen_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "chosen_from_fingerprint": fingerprint,
        "config": {k: v for k, v in vars(config).items() if k != "ids_file"},
        "counts": dict(Counter(e["category"] or "safe" for e in entries)),
        "messages": entries,
    }


def carve_golden(
    data: datasets.DatasetDict, manifest: dict, config: GoldenConfig
) -> tuple[datasets.DatasetDict, datasets.Dataset]:
    """(the dataset without any golden id, the golden rows with their category)."""
    wanted = {m["id"]: m for m in manifest["messages"]}
    kept, carved = {}, []
    for split, rows in data.items():
        inside = [i for i, row_id in enumerate(rows["id"]) if row_id in wanted]
        inside_set = set(inside)
        kept[split] = rows.select([i for i in range(len(rows)) if i not in inside_set])
        if inside:
            carved.append(rows.select(inside))
    golden = datasets.concatenate_datasets(carved) if carved else _empty_like(data)
    golden = golden.add_column("category", [wanted[i]["category"] for i in golden["id"]])

    counts = Counter(golden["category"])
    short = {c: config.min_per_category - counts[c] for c in CATEGORIES}
    synthetic = synthetic_attacks({c: n for c, n in short.items() if n > 0}, config.seed)
    if synthetic:
        golden = datasets.concatenate_datasets([golden, synthetic.cast(golden.features)])
    return datasets.DatasetDict(kept), golden.sort("id")


def _empty_like(data: datasets.DatasetDict) -> datasets.Dataset:
    return next(iter(data.values())).select([])


def golden_fingerprint(rows: datasets.Dataset) -> str:
    digest = hashlib.sha256()
    for row_id, label, category, text in sorted(
        zip(rows["id"], rows["label"], rows["category"], rows["text"], strict=True)
    ):
        digest.update(f"{row_id}\x1f{label}\x1f{category}\x1f{text}\x1e".encode("utf-8", "replace"))
    return digest.hexdigest()


# synthetic attacks, for categories the public corpora lack (written for the project)
_TEMPLATES = {
    "executive_impersonation": (
        "Quick favour",
        "Are you at your desk? I am in a board meeting and need you to buy {n} gift cards for "
        "a client today. Keep this between us and send me the codes. {name}, CEO",
    ),
    "lookalike_domain": (
        "Updated shared document",
        "A document was shared with you. Open it at https://docs.examp1e-portal.net/{ref} and "
        "sign in with your work account to view it.",
    ),
    "payment_fraud": (
        "Change of bank details for invoice {ref}",
        "Please note our bank account has changed. Pay invoice {ref} of {amount} to the new "
        "account below today to avoid late fees. Regards, {name}, Accounts",
    ),
    "credential_phishing": (
        "Your mailbox will be suspended",
        "We detected unusual sign-in activity. Verify your password within 24 hours at "
        "https://secure-login.example.net/{ref} or your mailbox will be closed.",
    ),
    "malware": (
        "Invoice {ref} attached",
        "Please find the attached invoice {ref}. Enable editing and macros to view the "
        "content. The archive password is {n}.",
    ),
    "thread_hijack": (
        "RE: RE: order {ref}",
        "Following up on our thread below: the payment link has changed, please use "
        "https://pay.example-orders.net/{ref} for the balance of {amount} today.",
    ),
    "callback_phishing": (
        "Your subscription renewed: {amount}",
        "Thank you for your order {ref}. Your annual plan renewed for {amount}. If you did "
        "not authorise this, call our billing desk at +1 800 555 0{n} within 24 hours.",
    ),
}
_NAMES = ("Dana Example", "Lee Sample", "Morgan Placeholder", "Robin Test")


def synthetic_attacks(needed: dict[str, int], seed: int) -> datasets.Dataset | None:
    """`needed[category]` synthetic attack rows per category, with `category` set."""
    if not needed:
        return None
    rng = random.Random(f"golden-synthetic:{seed}")
    start = datetime(2024, 6, 1, tzinfo=timezone.utc)
    items, categories = [], []
    for category, count in sorted(needed.items()):
        subject_template, body_template = _TEMPLATES[category]
        for i in range(count):
            fill = {
                "n": rng.randint(100, 999),
                "ref": f"{rng.randint(10000, 99999)}",
                "amount": f"USD {rng.randint(300, 9800):,}.00",
                "name": rng.choice(_NAMES),
            }
            when = start + timedelta(hours=len(items))
            raw = _message(subject_template.format(**fill), body_template.format(**fill), when)
            message_id = f"{SYNTHETIC_SOURCE}:{category}/{i}"
            items.append((RawMessage(message_id, SYNTHETIC_SOURCE, len(items), raw), "attack"))
            categories.append(category)
    built = dataset_from_messages(items, org=SYNTHETIC_SOURCE)
    rows = datasets.concatenate_datasets([rows for rows in built.values() if len(rows)])
    by_id = dict(zip([m.id for m, _ in items], categories, strict=True))
    return rows.add_column("category", [by_id[i] for i in rows["id"]])


def _message(subject: str, body: str, when: datetime) -> bytes:
    message_id = hashlib.sha1(f"{subject}|{body}".encode()).hexdigest()[:16]
    return (
        f"From: Service Desk <notice@example-mail.net>\r\nTo: user@example.org\r\n"
        f"Subject: {subject}\r\nDate: {format_datetime(when)}\r\n"
        f"Message-ID: <{message_id}@example-mail.net>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()
