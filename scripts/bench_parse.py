"""Parse every message of the real-mail corpora and report speed and defects.

Streams each `.tar.xz` archive in the corpora folder (never unpacks it to disk),
splits mbox files into messages on their `From ` lines, reads Enron-Spam `.txt`
files as text records, parses each message and computes its message signals, all
in this one process (one core). Prints messages per second of parse time, the
p50 / p99 / max time per message, how many messages hit a limit, how many raised
(the contract says none may), and how many messages each defect kind fired on.
No message content, name or address is printed.

Run from the repository root:

    .venv/bin/python scripts/bench_parse.py [../shared/corpora] [--per-archive N]
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detection.parsing import DEFECT_KINDS, parse_raw  # noqa: E402
from detection.signals import SenderFacts, raw_signals  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_CORPORA = Path(__file__).resolve().parent.parent / ".." / "shared" / "corpora"
_MBOX_FROM = re.compile(rb"^From [^\r\n]*\r?\n", re.MULTILINE)


def records(corpora: Path, per_archive: int) -> Iterator[tuple[str, str, bytes]]:
    """(archive name, kind, bytes) for every message, streamed archive by archive."""
    for archive in sorted(corpora.glob("*.tar.xz")):
        count = 0
        with tarfile.open(archive, "r|xz") as tar:
            for member in tar:
                if not member.isfile() or count >= per_archive:
                    continue
                data = tar.extractfile(member).read()
                if member.name.endswith(".mbox"):
                    messages = [m for m in _MBOX_FROM.split(data) if m.strip()]
                    kind = "rfc822"
                else:
                    messages = [data]
                    kind = "text" if member.name.endswith(".txt") else "rfc822"
                for message in messages[: per_archive - count]:
                    count += 1
                    yield archive.name, kind, message


def bench(corpora: Path, per_archive: int) -> int:
    times: list[float] = []
    per_archive_times: dict[str, list[float]] = {}
    defects: Counter[str] = Counter()
    limit_hits = escapes = 0
    facts = SenderFacts()
    started = time.perf_counter()

    for archive, kind, data in records(corpora, per_archive):
        begin = time.perf_counter()
        try:
            parsed = parse_raw(data, kind)
            raw_signals(parsed, facts)
        except Exception:  # noqa: BLE001 - counted: the contract says this never happens
            escapes += 1
            logger.exception("escape in %s", archive)
            continue
        elapsed = time.perf_counter() - begin
        times.append(elapsed)
        per_archive_times.setdefault(archive, []).append(elapsed)
        defects.update(kind for kind, n in parsed.defects.items() if n)
        limit_hits += parsed.defects.get("limit_hit", 0) > 0

    wall = time.perf_counter() - started
    if not times:
        print(f"no messages found under {corpora}")
        return 1
    times.sort()
    print(f"messages            {len(times) + escapes}")
    print(f"escapes             {escapes}")
    print(f"parse msg/s         {len(times) / sum(times):.0f} (one core, parse + signals only)")
    print(f"wall msg/s          {len(times) / wall:.0f} (including xz decompression)")
    print(f"p50 ms              {1000 * times[len(times) // 2]:.2f}")
    print(f"p99 ms              {1000 * times[int(len(times) * 0.99)]:.2f}")
    print(f"max ms              {1000 * times[-1]:.2f}")
    print(f"hit a limit         {limit_hits}")
    for archive, archive_times in per_archive_times.items():
        archive_times.sort()
        p99 = 1000 * archive_times[int(len(archive_times) * 0.99)]
        print(f"  {archive:38s} {len(archive_times):6d} msgs  p99 {p99:6.2f} ms")
    print("messages with each defect:")
    for kind in DEFECT_KINDS:
        print(f"  {kind:22s} {defects.get(kind, 0)}")
    return 1 if escapes else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", nargs="?", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument(
        "--per-archive", type=int, default=10**9, help="read at most N messages per archive"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return bench(args.corpora.resolve(), args.per_archive)


if __name__ == "__main__":
    sys.exit(main())
