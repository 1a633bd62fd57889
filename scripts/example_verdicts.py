"""Three example verdicts, with their reasons, on synthetic messages.

An executive's name on a free-mail address asking for gift cards, a mailbox-quota lure
from a lookalike of the organisation's own domain, and the benign twin of invoice
fraud (a known vendor's usual invoice from its real domain), scored in process with an
exported model and the synthetic directory below. Every name and address is a
placeholder on example.com / example.net / example.org or a free-mail domain.

`--policy` replaces the model's stored decision policy with one written by
scripts/decision_table.py (policy.json), to show a policy fitted with this code;
`--tiny` trains the tests' tiny model instead of reading `--model` (about a minute).

Run from the repository root:

    .venv/bin/python scripts/example_verdicts.py \\
        --model model_repository/bulwark/1 \\
        [--policy runs/decision/policy.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detection.decision import DecisionPolicy  # noqa: E402
from detection.sources import RawMessage  # noqa: E402
from tests.synthetic_mail import make_message  # noqa: E402

DIRECTORY = {
    "organisation": "Example Corp",
    "domains": ["example.com"],
    "people": [
        {"name": "Alice Example", "addresses": ["alice@example.com"], "role": "executive"},
        {"name": "Dana Sample", "addresses": ["dana@example.com"], "role": "finance"},
    ],
    "partner_domains": ["example.org"],
    "vendor_domains": ["example.net"],
}

MESSAGES = (
    (
        "gift-card request under the CEO's name",
        make_message(
            "Quick favour",
            "Dana, I need you to buy six gift cards for a client today. I am in a meeting "
            "and can't take calls, so keep this between us. Scratch the back of each card "
            "and send me the codes as soon as possible.\n\nAlice",
            sender="Alice Example <alice.example.office@gmail.com>",
        ),
    ),
    (
        "quota lure from a lookalike of the own domain",
        make_message(
            "Mailbox quota exceeded",
            "<p>Your mailbox is almost full. Sign in to keep receiving mail:</p>"
            '<p><a href="https://examp1e.com/owa/login">https://mail.example.com/owa</a></p>'
            "<p>IT Service Desk</p>",
            sender="IT Service Desk <helpdesk@examp1e.com>",
            html=True,
        ),
    ),
    (
        "a known vendor's usual invoice (benign twin)",
        make_message(
            "Invoice 1042 for March",
            "Hello, please find our invoice 1042 for the March support hours in the "
            "customer portal as usual. Payment terms are unchanged: 30 days to the account "
            "on file.\n\nAccounts, Example Net Services",
            sender="Example Net Accounts <accounts@example.net>",
        ),
    ),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="an exported model version directory")
    parser.add_argument("--policy", type=Path, help="a policy.json to decide with instead")
    parser.add_argument("--tiny", action="store_true", help="train and use the tiny model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    if not (args.model or args.tiny):
        parser.error("give --model DIR or --tiny")

    from serving.scorer import Scorer

    if args.tiny:
        from tests.model_fixtures import tiny_model_version

        args.model = tiny_model_version()[1]
    with tempfile.TemporaryDirectory() as work:
        directory = Path(work) / "directory.json"
        directory.write_text(json.dumps(DIRECTORY))
        scorer = Scorer.load(args.model, directory_path=directory)
    if args.policy:
        scorer.policy = DecisionPolicy(**json.loads(args.policy.read_text()))

    messages = [
        RawMessage(f"example#{i}", "example", i, data) for i, (_, data) in enumerate(MESSAGES)
    ]
    print(f"model {args.model}; policy: {scorer.policy.mode}, {scorer.policy.score_calibration}")
    for (title, _), verdict in zip(MESSAGES, scorer.score(messages), strict=True):
        print(f"\n{verdict.id} ({title})")
        print(f"  verdict {verdict.verdict}, category {verdict.category}, score {verdict.score}")
        for reason in verdict.reasons:
            print(f"  - {reason}")
        if verdict.error:
            print(f"  error: {verdict.error}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
