"""Time the baseline lookup for one message against an organisation's large history.

Builds a synthetic organisation with `--messages` messages of history (a year of
inbound and outbound mail: a few thousand staff, tens of thousands of outside
senders with a heavy-tailed volume, replies, new senders and lookalike domains) in
bulk (`TableBuilder`, then one load), then times `facts_before` for `--lookups` new
inbound messages one at a time and prints p50 / p99 / max per message: for the default
SQLite store (a file) and, unless `--no-shared`, for the PostgreSQL store (a fresh
schema, dropped afterwards). Names and addresses are synthetic; nothing is printed
but counts and times.

Run from the repository root (about two to four minutes for a million messages):

    .venv/bin/python scripts/bench_baselines.py [--messages 1000000] [--lookups 5000]
        [--postgres "host=127.0.0.1 dbname=test user=postgres"] [--no-shared]
"""

from __future__ import annotations

import argparse
import gc
import logging
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detection.baselines import (  # noqa: E402
    PostgresBaselineStore,
    SQLiteBaselineStore,
    TableBuilder,
    make_record,
)
from detection.parsing import Address, ParsedMessage  # noqa: E402

logger = logging.getLogger(__name__)

KEY = b"bench-baselines-key-0123456789ab"
ORG = "bench-org"
START_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z
YEAR_US = 365 * 86_400_000_000
TLDS = ("com", "net", "org")


class Population:
    """Synthetic staff and correspondents; every name is made up."""

    def __init__(self, rng: random.Random, staff: int = 3000, outside: int = 40000) -> None:
        self.rng = rng
        self.staff = [f"staff{i:05d}@corpexample.com" for i in range(staff)]
        domains = sorted({f"{self.word()}.{TLDS[i % 3]}" for i in range(outside // 10)})
        self.outside = [f"person{i:06d}@{domains[i % len(domains)]}" for i in range(outside)]
        self.names = {a: f"Person {i}" for i, a in enumerate(self.staff + self.outside)}
        near = [a.partition("@")[2] for a in self.outside[:3]]
        self.lookalikes = ["ceo@corpexampie.com"] + [f"billing@{d[1:]}" for d in near]

    def word(self) -> str:
        """A made-up label of three to five syllables, so correspondents differ as real ones do."""
        syllables = [self.rng.choice("bdfgklmnprstvz") + self.rng.choice("aeiou") for _ in range(4)]
        return "".join(syllables[: self.rng.randint(3, 5)]) + self.rng.choice(("", "x", "ia", "co"))

    def outside_sender(self) -> str:
        # heavy tail: a few correspondents send most of the mail
        return self.outside[min(int(self.rng.paretovariate(1.1)) - 1, len(self.outside) - 1)]

    def staff_member(self) -> str:
        return self.staff[min(int(self.rng.paretovariate(1.3)) - 1, len(self.staff) - 1)]

    def recipients(self, pool: list[str]) -> list[str]:
        count = 1 if self.rng.random() < 0.7 else self.rng.randint(2, 4)
        if self.rng.random() < 0.01:
            count = self.rng.randint(10, 40)
        return self.rng.sample(pool, count)


def history(pop: Population, messages: int) -> tuple[TableBuilder, list[str]]:
    """Every recorded message of the history, fed to a `TableBuilder`; outbound ids too."""
    rng, builder, outbound_ids = pop.rng, TableBuilder(KEY), []
    step = YEAR_US // messages
    for i in range(messages):
        ts = START_US + i * step + rng.randrange(step)
        mid = f"h{i}@bench.example"
        roll = rng.random()
        if roll < 0.2:  # the organisation writes out, a third of it replies
            sender, to = pop.staff_member(), pop.recipients(pop.outside[:5000])
            direction, reply = (
                "outbound",
                outbound_ids[-1] if rng.random() < 0.3 and outbound_ids else "",
            )
            outbound_ids.append(mid)
        elif rng.random() < 0.05:  # spam and attacks: never recorded
            continue
        else:
            internal = roll < 0.4
            sender = pop.staff_member() if internal else pop.outside_sender()
            direction, to, reply = "inbound", pop.recipients(pop.staff), ""
        rec = make_record(ORG, ts, direction, sender, pop.names.get(sender, ""), to, mid, reply)
        builder.add(rec)
    return builder, outbound_ids


def lookups(pop: Population, count: int, outbound_ids: list[str]) -> list[ParsedMessage]:
    """New inbound messages after the history: known, internal, new and lookalike senders."""
    rng, out = pop.rng, []
    for i in range(count):
        roll = rng.random()
        if roll < 0.05:
            sender = rng.choice(pop.lookalikes)
        elif roll < 0.15:
            sender = f"new{i}@newcomer{i % 500:03d}y.{TLDS[i % 3]}"
        elif roll < 0.35:
            sender = pop.staff_member()
        else:
            sender = pop.outside_sender()
        refs = (rng.choice(outbound_ids),) if rng.random() < 0.2 else ()
        out.append(
            ParsedMessage(
                from_=Address(pop.names.get(sender, "Someone New"), sender),
                recipients=tuple(Address("", r) for r in pop.recipients(pop.staff)),
                message_id=f"<q{i}@bench.example>",
                in_reply_to=f"<{refs[0]}>" if refs else "",
                references=tuple(f"<{r}>" for r in refs),
            )
        )
    return out


def time_lookups(store, messages: list[ParsedMessage], when) -> tuple[list[float], list[float]]:
    """Wall-clock and this thread's CPU milliseconds per `facts_before`."""
    for message in messages[:200]:  # warm the caches as a running server would be
        store.facts_before(ORG, message, when)
    wall, cpu = [], []
    for message in messages:
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        store.facts_before(ORG, message, when)
        cpu.append((time.thread_time_ns() - start_cpu) / 1e6)
        wall.append((time.perf_counter_ns() - start) / 1e6)
    return wall, cpu


def report(name: str, times: tuple[list[float], list[float]]) -> None:
    # CPU time is shown beside wall time: on a shared machine the wall-clock tail
    # includes the moments another process held the core
    for clock, values in zip(("wall", "cpu"), times, strict=True):
        ordered = sorted(values)
        p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
        print(
            f"{name:<34} {clock:<4} p50 {p50:.3f} ms   p99 {p99:.3f} ms   max {ordered[-1]:.3f} ms"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages of history")
    parser.add_argument("--lookups", type=int, default=5000, help="messages to time")
    parser.add_argument("--postgres", default="host=127.0.0.1 dbname=test user=postgres")
    parser.add_argument("--no-shared", action="store_true", help="skip the PostgreSQL store")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    # history, in bulk
    pop = Population(random.Random(args.seed))
    started = time.perf_counter()
    builder, outbound_ids = history(pop, args.messages)
    series, correspondents, variants = builder.tables()
    series, variants = list(series), list(variants)
    built = time.perf_counter() - started
    print(
        f"history: {args.messages} messages -> {len(series)} series rows, "
        f"{len(correspondents)} correspondent domains, {len(variants)} variant rows "
        f"(built in {built:.1f} s)"
    )
    queries = lookups(pop, args.lookups, outbound_ids)
    when = None  # now: after the whole history

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        store = SQLiteBaselineStore(str(Path(folder) / "baselines.sqlite"), key=KEY)
        store.load(series, correspondents, variants)
        size = (Path(folder) / "baselines.sqlite").stat().st_size / 2**20
        print(f"sqlite: loaded in {time.perf_counter() - started:.1f} s ({size:.0f} MiB)")
        shared = (
            None if args.no_shared else load_shared(args.postgres, series, correspondents, variants)
        )

        # a scoring server holds no history in Python objects: drop the built tables so
        # that the garbage collector's pauses over them do not land in the timings
        del builder, series, correspondents, variants
        gc.collect()
        try:
            report("sqlite (file) facts_before", time_lookups(store, queries, when))
            if shared is not None:
                report("postgres (localhost) facts_before", time_lookups(shared, queries, when))
        finally:
            store.close()
            if shared is not None:
                shared.drop()
                shared.close()
    return 0


def load_shared(dsn: str, series, correspondents, variants) -> PostgresBaselineStore | None:
    """The history loaded into a fresh PostgreSQL schema, or None if the server is unreachable."""
    try:
        shared = PostgresBaselineStore(
            dsn, schema=f"bench_{uuid.uuid4().hex[:12]}", key=KEY, connect_timeout=3
        )
    except Exception as error:  # noqa: BLE001 - report and go on: the default store still runs
        print(f"postgres: skipped ({type(error).__name__}: {error})")
        return None
    started = time.perf_counter()
    try:
        shared.load(series, correspondents, variants)
    except BaseException:
        shared.drop()
        shared.close()
        raise
    print(f"postgres: loaded in {time.perf_counter() - started:.1f} s")
    return shared


if __name__ == "__main__":
    sys.exit(main())
