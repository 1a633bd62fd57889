"""Fuzz the parser for N minutes with hypothesis and report what escaped.

Feeds `parse_message` (and `parse_raw(..., "text")`) mutated synthetic messages from
the property tests' strategies plus arbitrary bytes, batch after batch until the time
is up. An escape is any exception, a CR/LF/NUL in a text field, or a non-finite
signal; each is counted (type and message, never the input) and the run goes on.
Inputs slower than `--slow-ms` are counted too. Exits 1 if anything escaped.

Run from the repository root:

    .venv/bin/python scripts/fuzz_parse.py --minutes 10
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from detection.parsing import parse_message, parse_raw  # noqa: E402
from tests.detection.test_parsing_properties import check_invariants, mutated  # noqa: E402

logger = logging.getLogger(__name__)

BATCH = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


class Tally:
    def __init__(self, slow_s: float) -> None:
        self.inputs = 0
        self.escapes: Counter[str] = Counter()
        self.slow = 0
        self.slowest = 0.0
        self.slow_s = slow_s

    def run(self, data: bytes) -> None:
        self.inputs += 1
        started = time.perf_counter()
        try:
            check_invariants(parse_message(data))
            check_invariants(parse_raw(data, "text"))
        except Exception as error:  # noqa: BLE001 - every escape is counted, none stops the run
            self.escapes[f"{type(error).__name__}: {str(error)[:80]}"] += 1
        elapsed = time.perf_counter() - started
        self.slowest = max(self.slowest, elapsed)
        self.slow += elapsed > self.slow_s


def fuzz(minutes: float, slow_ms: float) -> int:
    tally = Tally(slow_ms / 1000)

    @BATCH
    @given(mutated() | st.binary(max_size=4000))
    def batch(data: bytes) -> None:
        tally.run(data)

    deadline = time.monotonic() + 60 * minutes
    next_report = time.monotonic() + 60
    while time.monotonic() < deadline:
        batch()
        if time.monotonic() >= next_report:
            logger.info("%d inputs, %d escapes", tally.inputs, sum(tally.escapes.values()))
            next_report += 60

    print(f"inputs tried        {tally.inputs}")
    print(f"escapes             {sum(tally.escapes.values())}")
    print(f"slower than {slow_ms:.0f} ms   {tally.slow}")
    print(f"slowest ms          {1000 * tally.slowest:.1f}")
    for kind, count in tally.escapes.most_common():
        print(f"  {count:6d}  {kind}")
    return 1 if tally.escapes else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--slow-ms", type=float, default=100.0, help="count inputs slower than this"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("detection").setLevel(logging.ERROR)
    return fuzz(args.minutes, args.slow_ms)


if __name__ == "__main__":
    sys.exit(main())
