"""The `bulwark retrain` command (training/retrain.py does the work).

Kept apart so that building the `bulwark` parser does not import PyTorch.

Run:
    bulwark retrain --config configs/retrain.toml
    bulwark retrain --config configs/retrain.toml --until gate
    bulwark retrain --config configs/retrain.toml --stage gate --force
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

STAGES = ("corpora", "data", "train", "evaluate", "gate", "promote")  # in the order they run


# the `bulwark retrain` command
def add_command(commands) -> None:
    parser = commands.add_parser("retrain", help="retrain, gate and promote a model")
    parser.add_argument("--config", type=Path, required=True, help="a retrain TOML file")
    parser.add_argument("--stage", choices=STAGES, help="run this stage alone on stored inputs")
    parser.add_argument("--until", choices=STAGES, help="run the stages up to this one")
    parser.add_argument("--force", action="store_true", help="rebuild even when stored")
    parser.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    from training.retrain import RetrainConfig, RetrainError, run_retrain

    try:
        config = RetrainConfig.from_file(args.config)
    except (OSError, ValueError) as error:
        logger.error("cannot read retrain config %s: %s", args.config, error)
        return 2
    try:
        result = run_retrain(config, args.stage, args.force, args.until)
    except RetrainError as error:
        logger.error("retrain stopped: %s", error)
        return 2
    for name, stage in result.stages.items():
        how = "reused" if stage.cached else f"built in {stage.seconds:.1f} s"
        logger.info("stage %-8s %s  %s", name, how, stage.path)
    gate = result.stages.get("gate")
    if gate is not None:
        logger.info("gate report: %s", gate.path / "gate.md")
    return 0
