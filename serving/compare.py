"""Message-by-message comparison of two models' rescoring of the same mail.

Contract: `compare_runs(a, b, examples)` takes the two slots' score tables (pandas
frames with the rescoring output's columns: id, verdict, category, error, date, label,
model) and returns a JSON-ready report of the messages whose verdict differs between
model A and model B; `write_comparison(folder)` reads ``folder/scores/slot=a`` and
``slot=b`` (written by `serving.rescore` or `serving.rescore_spark`), writes
``comparison.json`` and ``comparison.md`` there and returns the report.

"Flagged" means the verdict "attack". The report gives:

- how many messages both models scored, how many changed verdict, and each change
  (``safe -> attack``, ...) with its count;
- per attack category (B's category for a message B newly flags, A's for one B no
  longer flags): newly flagged and no longer flagged;
- per month of the message's date (``undated`` when none): changed, newly flagged,
  no longer flagged;
- where labels exist: for attacks, caught by each model, newly caught by B and newly
  missed by B; for safe mail, flagged by each model, newly flagged by B and newly
  cleared by B;
- the ids of up to `examples` messages of each kind.

Run on a finished rescoring folder:

    .venv/bin/python -m serving.compare runs/rescore-demo
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

FLAGGED = "attack"
EXAMPLES = 10
COLUMNS = ("id", "verdict", "category", "error", "date", "label", "model")


def read_slot(folder: str | Path, slot: str) -> pd.DataFrame:
    """One slot's rows from a rescoring folder (every part file)."""
    path = Path(folder) / "scores" / f"slot={slot}"
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} does not exist: is {folder} a rescoring run with two models?"
        )
    frame = pd.read_parquet(path, columns=list(COLUMNS))
    if frame["id"].duplicated().any():
        duplicated = frame.loc[frame["id"].duplicated(), "id"].iloc[0]
        raise ValueError(f"slot {slot} of {folder} holds message {duplicated!r} more than once")
    return frame


def compare_runs(a: pd.DataFrame, b: pd.DataFrame, examples: int = EXAMPLES) -> dict:
    """The report of the module docstring for two slots' rows (joined on id)."""
    joined = a.merge(b, on="id", how="outer", suffixes=("_a", "_b"), indicator=True)
    only_one = int((joined["_merge"] != "both").sum())
    both = joined[joined["_merge"] == "both"]
    errored = both["error_a"].notna() | both["error_b"].notna()
    scored = both[~errored].copy()
    scored["flag_a"] = scored["verdict_a"] == FLAGGED
    scored["flag_b"] = scored["verdict_b"] == FLAGGED
    changed = scored[scored["verdict_a"] != scored["verdict_b"]]
    newly = changed[~changed["flag_a"] & changed["flag_b"]]
    dropped = changed[changed["flag_a"] & ~changed["flag_b"]]

    transitions = (changed["verdict_a"] + " -> " + changed["verdict_b"]).value_counts().sort_index()
    report = {
        "models": {"a": _first(a["model"]), "b": _first(b["model"])},
        "compared": len(scored),
        "failed_in_either": int(errored.sum()),
        "in_one_run_only": only_one,
        "changed": len(changed),
        "transitions": {k: int(v) for k, v in transitions.items()},
        "per_category": _per_category(newly, dropped),
        "per_month": _per_month(changed, newly, dropped),
        "labels": _labelled(scored, examples),
        "examples": {
            "newly_flagged": _ids(newly, examples),
            "no_longer_flagged": _ids(dropped, examples),
        },
    }
    return report


def _first(values: pd.Series) -> str | None:
    present = values.dropna()
    return str(present.iloc[0]) if len(present) else None


def _ids(frame: pd.DataFrame, limit: int) -> list[str]:
    return sorted(frame["id"].astype(str))[:limit]


def _per_category(newly: pd.DataFrame, dropped: pd.DataFrame) -> dict:
    rows: dict[str, dict[str, int]] = {}
    for name, frame, column in (
        ("newly_flagged", newly, "category_b"),
        ("no_longer_flagged", dropped, "category_a"),
    ):
        for category, count in frame[column].fillna("none").value_counts().items():
            rows.setdefault(category, {"newly_flagged": 0, "no_longer_flagged": 0})
            rows[category][name] = int(count)
    return dict(sorted(rows.items()))


def _month(frame: pd.DataFrame) -> pd.Series:
    dates = pd.to_datetime(frame["date_a"].fillna(frame["date_b"]), utc=True)
    return dates.dt.strftime("%Y-%m").fillna("undated")


def _per_month(changed: pd.DataFrame, newly: pd.DataFrame, dropped: pd.DataFrame) -> dict:
    rows: dict[str, dict[str, int]] = {}
    for name, frame in (
        ("changed", changed),
        ("newly_flagged", newly),
        ("no_longer_flagged", dropped),
    ):
        for month, count in _month(frame).value_counts().items():
            row = rows.setdefault(month, {"changed": 0, "newly_flagged": 0, "no_longer_flagged": 0})
            row[name] = int(count)
    return dict(sorted(rows.items()))


def _labelled(scored: pd.DataFrame, examples: int) -> dict:
    """Caught and newly caught attacks, flagged and newly flagged safe mail."""
    label = scored["label_a"].fillna(scored["label_b"])
    result: dict = {"labelled": int(label.notna().sum())}
    attacks, safe = scored[label == "attack"], scored[label == "safe"]
    if len(attacks):
        caught = attacks[~attacks["flag_a"] & attacks["flag_b"]]
        missed = attacks[attacks["flag_a"] & ~attacks["flag_b"]]
        result["attack"] = {
            "messages": len(attacks),
            "caught_by_a": int(attacks["flag_a"].sum()),
            "caught_by_b": int(attacks["flag_b"].sum()),
            "newly_caught": len(caught),
            "newly_missed": len(missed),
            "newly_caught_examples": _ids(caught, examples),
            "newly_missed_examples": _ids(missed, examples),
        }
    if len(safe):
        flagged = safe[~safe["flag_a"] & safe["flag_b"]]
        cleared = safe[safe["flag_a"] & ~safe["flag_b"]]
        result["safe"] = {
            "messages": len(safe),
            "flagged_by_a": int(safe["flag_a"].sum()),
            "flagged_by_b": int(safe["flag_b"].sum()),
            "newly_flagged": len(flagged),
            "newly_cleared": len(cleared),
            "newly_flagged_examples": _ids(flagged, examples),
            "newly_cleared_examples": _ids(cleared, examples),
        }
    return result


def render_markdown(report: dict) -> str:
    lines = [
        "# Comparison of two models, message by message",
        "",
        f"- model A: `{report['models']['a']}`",
        f"- model B: `{report['models']['b']}`",
        f"- messages scored by both: {report['compared']}; failed in either: "
        f"{report['failed_in_either']}; in one run only: {report['in_one_run_only']}",
        f"- verdict changed: {report['changed']}",
        "",
        "| change (A -> B) | messages |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in report["transitions"].items()),
        "",
        "| category | newly flagged by B | no longer flagged by B |",
        "|---|---|---|",
        *(
            f"| {k} | {v['newly_flagged']} | {v['no_longer_flagged']} |"
            for k, v in report["per_category"].items()
        ),
        "",
        "| month | changed | newly flagged by B | no longer flagged by B |",
        "|---|---|---|---|",
        *(
            f"| {k} | {v['changed']} | {v['newly_flagged']} | {v['no_longer_flagged']} |"
            for k, v in report["per_month"].items()
        ),
        "",
    ]
    labels = report["labels"]
    if "attack" in labels or "safe" in labels:
        lines += [
            "| labelled | messages | A | B | newly (B) | no longer (B) |",
            "|---|---|---|---|---|---|",
        ]
        if "attack" in labels:
            t = labels["attack"]
            lines.append(
                f"| attacks caught | {t['messages']} | {t['caught_by_a']} | "
                f"{t['caught_by_b']} | {t['newly_caught']} | {t['newly_missed']} |"
            )
        if "safe" in labels:
            t = labels["safe"]
            lines.append(
                f"| safe mail flagged | {t['messages']} | {t['flagged_by_a']} | "
                f"{t['flagged_by_b']} | {t['newly_flagged']} | {t['newly_cleared']} |"
            )
        lines.append("")
    lines.append("Examples (message ids):")
    lines.append("")
    groups = dict(report["examples"])
    for kind in ("attack", "safe"):
        for key, value in labels.get(kind, {}).items():
            if key.endswith("_examples"):
                groups[f"{kind} {key.removesuffix('_examples')}"] = value
    for name, ids in groups.items():
        lines.append(f"- {name.replace('_', ' ')}: " + (", ".join(f"`{i}`" for i in ids) or "none"))
    return "\n".join(lines) + "\n"


def write_comparison(folder: str | Path, examples: int = EXAMPLES) -> dict:
    """Compare slots a and b of a rescoring folder; write comparison.json and .md there."""
    folder = Path(folder)
    report = compare_runs(read_slot(folder, "a"), read_slot(folder, "b"), examples)
    (folder / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "comparison.md").write_text(render_markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a rescoring folder with slots a and b")
    parser.add_argument("--examples", type=int, default=EXAMPLES, help="ids listed per kind")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        report = write_comparison(args.folder, args.examples)
    except (FileNotFoundError, ValueError) as error:
        logger.error("cannot compare: %s", error)
        return 2
    sys.stdout.write(render_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
