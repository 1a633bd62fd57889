"""Shadow mode: a candidate scores the same requests as production, without a say.

Design: the candidate is served beside production in the same Triton repository, as a
second model named `bulwark_shadow` (`deploy_shadow` writes its config.pbtxt and
version and loads it). `ShadowScorer` sends every message to production and, after
production has answered, to the shadow model from a small thread pool. The verdicts it
returns are production's, unchanged and undelayed: a shadow request that fails, is
slow, or finds the pool full (more than `max_pending` waiting) is only counted. Each
shadow answer is compared with production's and counted in a `ShadowRecord`: messages
compared, agreements, disagreements by (production verdict, shadow verdict), shadow
failures and skips, the largest score difference, and the ids (never contents) of
the first `keep_examples` disagreements. `close()` waits for pending shadow requests
and writes the record as JSON.

Run:
    bulwark shadow deploy runs/retrain/stages/train/<key>/repository/bulwark/1 \\
        --repository model_repository --server http://127.0.0.1:8000
    bulwark shadow score mail.mbox --server grpc://127.0.0.1:8001 --record shadow.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from detection.decision import Verdict
from detection.sources import RawMessage, SourceError, iter_messages
from serving.client import BulwarkClient
from serving.pbtxt import MODEL_NAME, ServingSettings, write_config
from serving.promotion import load, next_free_version, repository_lock

logger = logging.getLogger(__name__)

SHADOW_MODEL = "bulwark_shadow"


def deploy_shadow(
    candidate_dir: Path,
    repository: Path,
    server_url: str | None = None,
    model: str = SHADOW_MODEL,
) -> Path:
    """Serve `candidate_dir` as the next version of the shadow model; returns its folder."""
    repository = Path(repository)
    with repository_lock(repository, model):
        write_config(repository, ServingSettings(name=model))
        version = next_free_version(repository, model)
        target = repository / model / str(version)
        incoming = repository / model / f".incoming-{version}"
        shutil.copytree(candidate_dir, incoming)
        incoming.rename(target)
        logger.info("shadow model %s version %d from %s", model, version, candidate_dir)
        if server_url:
            load(server_url, model, version)
    return target


@dataclass
class ShadowRecord:
    compared: int = 0
    agreed: int = 0
    disagreed: int = 0
    by_pair: Counter = field(default_factory=Counter)  # "production->shadow" verdicts
    production_failed: int = 0  # no comparison possible
    shadow_failed: int = 0
    shadow_skipped: int = 0  # the shadow pool was full; production went on alone
    max_score_difference: float = 0.0
    examples: list[dict] = field(default_factory=list)  # ids of the first disagreements

    def to_dict(self) -> dict:
        values = dict(vars(self))
        values["by_pair"] = dict(sorted(self.by_pair.items()))
        return values


class ShadowScorer:
    """Production verdicts, with the shadow model's disagreements recorded beside them."""

    def __init__(
        self,
        production: BulwarkClient,
        shadow: BulwarkClient,
        record_path: Path | None = None,
        max_pending: int = 64,
        workers: int = 2,
        keep_examples: int = 50,
    ) -> None:
        self.production, self.shadow = production, shadow
        self.record_path = Path(record_path) if record_path else None
        self.record = ShadowRecord()
        self.max_pending, self.keep_examples = max_pending, keep_examples
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shadow")
        self._lock = threading.Lock()
        self._pending = 0

    def score_messages(
        self, messages: Iterable[RawMessage], org: str = "default", concurrency: int | None = None
    ) -> Iterator[Verdict]:
        """Production's verdicts in input order; each message is then shadow-scored."""
        kept: dict[tuple[str, int], RawMessage] = {}

        def remembered() -> Iterator[RawMessage]:
            for message in messages:
                kept[message.id, message.index] = message
                yield message

        for verdict in self.production.score_messages(remembered(), org, concurrency):
            message = kept.pop((verdict.id, verdict.index))
            self._submit(message, verdict, org)
            yield verdict

    def _submit(self, message: RawMessage, verdict: Verdict, org: str) -> None:
        with self._lock:
            if verdict.error or message.error:
                self.record.production_failed += 1
                return
            if self._pending >= self.max_pending:
                self.record.shadow_skipped += 1
                return
            self._pending += 1
        self._pool.submit(self._compare, message, verdict, org)

    def _compare(self, message: RawMessage, production: Verdict, org: str) -> None:
        try:
            shadow = self.shadow.score_message(message, org)
        except Exception as error:  # noqa: BLE001 - a shadow failure is counted, never raised
            shadow = Verdict(message.id, message.source, message.index, error=repr(error))
        with self._lock:
            self._pending -= 1
            self._count(production, shadow)

    def _count(self, production: Verdict, shadow: Verdict) -> None:
        record = self.record
        if shadow.error:
            record.shadow_failed += 1
            return
        record.compared += 1
        difference = abs(production.score - shadow.score)
        record.max_score_difference = max(record.max_score_difference, round(difference, 6))
        if production.verdict == shadow.verdict:
            record.agreed += 1
            return
        record.disagreed += 1
        record.by_pair[f"{production.verdict}->{shadow.verdict}"] += 1
        if len(record.examples) < self.keep_examples:
            record.examples.append(
                {
                    "id": production.id,
                    "production": [production.verdict, production.score],
                    "shadow": [shadow.verdict, shadow.score],
                }
            )

    def close(self) -> ShadowRecord:
        """Wait for the pending shadow requests, write the record, return it."""
        self._pool.shutdown(wait=True)
        if self.record_path is not None:
            self.record_path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.record_path.with_suffix(".partial")
            partial.write_text(json.dumps(self.record.to_dict(), indent=2) + "\n")
            partial.replace(self.record_path)
        logger.info(
            "shadow: %d compared, %d disagreed, %d failed, %d skipped",
            self.record.compared,
            self.record.disagreed,
            self.record.shadow_failed,
            self.record.shadow_skipped,
        )
        return self.record


# the `bulwark shadow` command
def add_command(commands) -> None:
    parser = commands.add_parser("shadow", help="serve and compare a candidate beside production")
    actions = parser.add_subparsers(dest="shadow_action", required=True)

    deploy = actions.add_parser("deploy", help="serve a candidate version as the shadow model")
    deploy.add_argument("candidate", type=Path, help="an exported model version directory")
    deploy.add_argument("--repository", type=Path, default=Path("model_repository"))
    deploy.add_argument("--server", help="Triton (explicit model control) to load it into")
    deploy.set_defaults(run=run_deploy)

    score = actions.add_parser("score", help="score a source; record shadow disagreements")
    score.add_argument("source", help='a file, directory, mbox, maildir, archive, or "-"')
    score.add_argument("--server", required=True, help="the Triton server's URL")
    score.add_argument("--record", type=Path, required=True, help="disagreement counts (JSON)")
    score.add_argument("--output", type=Path, help="production verdicts, JSON lines")
    score.add_argument("--org", default="default")
    score.add_argument("--text-records", action="store_true")
    score.set_defaults(run=run_score)


def run_deploy(args: argparse.Namespace) -> int:
    from serving.promotion import PromotionError

    if not (args.candidate / "model.onnx").is_file():
        logger.error("%s is not an exported model version (no model.onnx)", args.candidate)
        return 2
    try:
        deploy_shadow(args.candidate, args.repository, args.server)
    except PromotionError as error:
        logger.error("shadow deploy failed: %s", error)
        return 2
    return 0


def run_score(args: argparse.Namespace) -> int:
    """Production's verdicts as JSON lines (the output file or standard output), the
    shadow's disagreements in the record. Exit status as `bulwark score`: 2 when the
    source breaks, 1 when every message failed, else 0."""
    production = BulwarkClient(args.server, model_name=MODEL_NAME)
    shadow = BulwarkClient(args.server, model_name=SHADOW_MODEL)
    scorer = ShadowScorer(production, shadow, args.record)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    status, read, failed = 0, 0, 0
    try:
        messages = iter_messages(args.source, text_records=args.text_records or None)
        for verdict in scorer.score_messages(messages, args.org):
            read += 1
            failed += verdict.error is not None
            out.write(verdict.to_json() + "\n")
    except SourceError as error:
        logger.error("source stopped: %s", error)
        status = 2
    finally:
        scorer.close()
        production.close()
        shadow.close()
        if out is not sys.stdout:
            out.close()
    if status == 0 and read and failed == read:
        status = 1  # every message failed: the run as a whole did not work
    return status
