"""The evaluation report: plots as PNG, one self-contained HTML page, Markdown, JSON.

Contract:
- `write_plots(curves, output_dir)` draws, for every model on the evaluated rows: ROC
  on a log false-positive axis, precision-recall, recall and safe FPR against the
  threshold, score distributions per class and a reliability (calibration) plot;
  returns {plot name: PNG path}.
- `side_by_side(figures)` gives the rows of the table of every model at the FPR
  points and at its operating threshold.
- `markdown_report(result)` and `html_report(result, plots)` render the result of
  `training.evaluate_cli.evaluate`; the HTML embeds the PNGs as base64, so the one
  file is the whole report.
- `write_report(result, curves, output_dir)` writes evaluation.json, evaluation.md,
  report.html and the PNGs, and returns the paths.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

from detection.tensors import CLASS_NAMES

SAFE, ATTACK = CLASS_NAMES.index("safe"), CLASS_NAMES.index("attack")
PLOTS = ("roc", "precision_recall", "recall_threshold", "score_distributions", "reliability")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def write_plots(curves: dict, output_dir: Path) -> dict[str, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(curves["labels"])
    scores = {name: np.asarray(s, float) for name, s in curves["scores"].items()}
    thresholds = curves["thresholds"]
    drawers = {
        "roc": _roc,
        "precision_recall": _precision_recall,
        "recall_threshold": _recall_threshold,
        "score_distributions": _distributions,
        "reliability": _reliability,
    }
    paths = {}
    plt = _pyplot()
    for name, draw in drawers.items():
        figure = draw(plt, labels, scores, thresholds)
        paths[name] = output_dir / f"{name}.png"
        figure.savefig(paths[name], dpi=110, bbox_inches="tight")
        plt.close(figure)
    return paths


def _roc(plt, labels, scores, thresholds):
    from sklearn.metrics import roc_curve

    figure, axis = plt.subplots(figsize=(7, 5))
    keep = (labels == SAFE) | (labels == ATTACK)
    n_safe = max(1, int(np.sum(labels == SAFE)))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(labels[keep] == ATTACK, s[keep])
        axis.step(np.maximum(fpr, 0.5 / n_safe), tpr, where="post", label=name)
    for point in (0.01, 0.001, 0.0001):
        axis.axvline(point, color="grey", linewidth=0.6, linestyle=":")
    axis.set_xscale("log")
    axis.set_xlim(0.5 / n_safe, 1.0)
    axis.set_xlabel(f"false-positive rate on safe mail (log; {n_safe} safe, 0 drawn at 1/2n)")
    axis.set_ylabel("recall of attacks")
    axis.set_title("ROC, attacks against safe mail")
    axis.legend(fontsize=8, loc="lower right")
    return figure


def _precision_recall(plt, labels, scores, thresholds):
    from sklearn.metrics import precision_recall_curve

    figure, axis = plt.subplots(figsize=(7, 5))
    for name, s in scores.items():
        precision, recall, _ = precision_recall_curve(labels == ATTACK, s)
        axis.step(recall, precision, where="post", label=name)
    axis.set_xlabel("recall of attacks")
    axis.set_ylabel("precision (spam flagged as attack counts against)")
    axis.set_title("Precision-recall")
    axis.legend(fontsize=8, loc="lower left")
    return figure


def _recall_threshold(plt, labels, scores, thresholds):
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    grid = np.linspace(0, 1, 501)
    for name, s in scores.items():
        attack, safe = np.sort(s[labels == ATTACK]), np.sort(s[labels == SAFE])
        recall = 1 - np.searchsorted(attack, grid, side="left") / max(1, len(attack))
        fpr = 1 - np.searchsorted(safe, grid, side="left") / max(1, len(safe))
        (line,) = top.plot(grid, recall, label=name)
        bottom.plot(grid, np.maximum(fpr, 0.5 / max(1, len(safe))), color=line.get_color())
        top.axvline(thresholds[name], color=line.get_color(), linewidth=0.7, linestyle="--")
    top.set_ylabel("recall of attacks")
    top.set_title("Recall and false-positive rate against the threshold (dashed: operating)")
    top.legend(fontsize=8, loc="lower left")
    bottom.set_yscale("log")
    bottom.set_ylabel("safe FPR (log)")
    bottom.set_xlabel("threshold (flag at or above)")
    return figure


def _distributions(plt, labels, scores, thresholds):
    rows = len(scores)
    figure, axes = plt.subplots(rows, 1, figsize=(7, 1.9 * rows + 0.6), sharex=True, squeeze=False)
    bins = np.linspace(0, 1, 51)
    for axis, (name, s) in zip(axes[:, 0], scores.items(), strict=True):
        for index, label in enumerate(CLASS_NAMES):
            if np.any(labels == index):
                axis.hist(s[labels == index], bins=bins, histtype="step", label=label)
        axis.axvline(thresholds[name], color="black", linewidth=0.7, linestyle="--")
        axis.set_yscale("log")
        axis.set_ylabel("messages")
        axis.set_title(name, fontsize=9)
    axes[0, 0].legend(fontsize=8)
    axes[-1, 0].set_xlabel("attack score (dashed: operating threshold)")
    return figure


def _reliability(plt, labels, scores, thresholds):
    figure, axis = plt.subplots(figsize=(6, 6))
    edges = np.linspace(0, 1, 11)
    for name, s in scores.items():
        bins = np.clip(np.digitize(s, edges[1:-1]), 0, len(edges) - 2)
        predicted, observed = [], []
        for b in range(len(edges) - 1):
            mine = bins == b
            if mine.sum() >= 5:
                predicted.append(float(s[mine].mean()))
                observed.append(float(np.mean(labels[mine] == ATTACK)))
        axis.plot(predicted, observed, marker="o", label=name)
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set_xlabel("mean attack score in bin")
    axis.set_ylabel("share of attacks in bin")
    axis.set_title("Reliability (bins of at least 5 messages)")
    axis.legend(fontsize=8, loc="upper left")
    return figure


# tables
def _pct(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.{digits}f}%"


def _with_ci(value, interval, scale: float = 100.0, unit: str = "%", digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{scale * value:.{digits}f}{unit}"
    if interval:
        text += f" [{scale * interval[0]:.{digits}f}, {scale * interval[1]:.{digits}f}]"
    return text


SIDE_BY_SIDE = (
    "model",
    "attacks",
    "safe",
    "recall @1% FPR",
    "recall @0.1% FPR",
    "recall @0.01% FPR",
    "threshold",
    "recall @threshold",
    "FP per million safe @threshold",
    "precision @threshold",
)


def side_by_side(figures: dict) -> list[list[str]]:
    rows = []
    for name, f in figures.items():
        op = f["operating"]
        at = f["at_fpr"]
        fp_per_million = op["false_positives_per_million_safe"]
        rows.append(
            [
                name + (f" ({f['note']})" if f.get("note") else ""),
                str(f["counts"]["attack"]),
                str(f["counts"]["safe"]),
                *(
                    _with_ci(at[k]["recall"], at[k]["recall_ci"]) if k in at else "n/a"
                    for k in ("fpr_0.01", "fpr_0.001", "fpr_0.0001")
                ),
                f"{op['threshold']:.4g}",
                _with_ci(op["recall"], op["recall_ci"]),
                _with_ci(
                    fp_per_million / 1e6 if fp_per_million is not None else None,
                    [v / 1e6 for v in op["false_positives_per_million_safe_ci"]]
                    if op["false_positives_per_million_safe_ci"]
                    else None,
                    scale=1e6,
                    unit="",
                    digits=0,
                ),
                _with_ci(op["precision"], op["precision_ci"]),
            ]
        )
    return rows


def _recall_cell(at: dict, key: str) -> str:
    return _with_ci(at[key]["recall"], at[key]["recall_ci"]) if at.get(key) else "n/a"


def held_out_rows(splits: dict) -> tuple[tuple[str, ...], list[list[str]]]:
    """Per leave-one-source-out split, each model on the held-out source's own mail."""
    header = (
        "held-out source",
        "model",
        "its attacks",
        "recall @1% FPR",
        "recall @0.1% FPR",
        "its safe",
        "its safe FPR @threshold",
    )
    rows = []
    for split in splits.values():
        source = split.get("held_out_source")
        if split["kind"] != "leave_one_source_out" or source is None:
            continue
        for name, f in split["figures"].items():
            group = f.get("per_source", {}).get(source)
            if group is None:
                continue
            op, at = group["operating"], group["attack_recall_at_fpr"]
            rows.append(
                [
                    source,
                    name + (f" ({f['note']})" if f.get("note") else ""),
                    str(op["attacks"]),
                    _recall_cell(at, "fpr_0.01"),
                    _recall_cell(at, "fpr_0.001"),
                    str(op["safe"]),
                    _pct(op["safe_fpr"]),
                ]
            )
    return header, rows


def group_rows(figures: dict, group: str, model: str) -> tuple[tuple[str, ...], list[list[str]]]:
    header = (group, "attacks", "recall @0.1% FPR", "recall @threshold", "safe", "safe FPR @thr")
    rows = []
    for key, g in figures[model].get(f"per_{group}", {}).items():
        op, at = g["operating"], g["attack_recall_at_fpr"].get("fpr_0.001")
        rows.append(
            [
                key,
                str(op["attacks"]),
                _with_ci(at["recall"], at["recall_ci"]) if at else "n/a",
                _with_ci(op["recall"], op["recall_ci"]),
                str(op["safe"]),
                _pct(op["safe_fpr"]),
            ]
        )
    return header, rows


GAP_HEADER = ("dimension", "group", "misses", "share of misses", "miss rate", "excess", "examples")


def gap_rows(analysis: dict) -> list[list[str]]:
    rows = []
    for g in analysis["largest"]:
        extra = "; ".join(g[k] for k in ("main_source", "main_category") if k in g)
        rows.append(
            [
                g["dimension"],
                g["group"] + (f" ({extra})" if extra else ""),
                f"{g['count']} of {g['population']}",
                _pct(g["share_of_misses"], 1),
                _pct(g["miss_rate"], 1),
                f"{g['excess']:.1f}",
                ", ".join(g["example_ids"][:3]),
            ]
        )
    return rows


def _md_table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _main_model(result: dict) -> str | None:
    """The model the gap analysis is shown for: the first named --model, else a baseline."""
    names = list(result["gaps"]["models"])
    return next((n for n in result.get("models", {}) if n in names), names[0] if names else None)


def markdown_report(result: dict) -> str:
    lines = [
        f"# Evaluation: {result['evaluated_split']} split, {result['messages']} messages",
        "",
        "Intervals are 95% bootstrap intervals. Recall at an FPR point sets its threshold on "
        "the evaluated safe mail; the operating threshold was chosen beforehand (models: on "
        "validation, stored with the version; baselines: on the split's calibration rows).",
        "",
    ]
    for name, split in result["splits"].items():
        if split["kind"] == "leave_one_source_out":
            continue
        lines += [f"## Split: {name} ({split['kind']}; {split['note']})", ""]
        lines += _md_table(SIDE_BY_SIDE, side_by_side(split["figures"])) + [""]
    header, rows = held_out_rows(result["splits"])
    if rows:
        lines += ["## Leave one source out: each held-out source's own mail", ""]
        lines += _md_table(header, rows) + [""]
    main = _main_model(result)
    if main:
        time_figures = result["splits"]["time"]["figures"]
        for group in ("source", "category", "month"):
            header, rows = group_rows(time_figures, group, main)
            lines += [f"## {main}, per {group} (time split)", ""] + _md_table(header, rows) + [""]
        gaps = result["gaps"]["models"][main]
        for kind in ("false_negatives", "false_positives"):
            analysis = gaps[kind]
            lines += [
                f"## Largest gaps, {kind.replace('_', ' ')} of {main} "
                f"({analysis['count']} of {analysis['population']}; clusters from "
                f"{result['gaps']['embeddings']})",
                "",
            ]
            lines += _md_table(GAP_HEADER, gap_rows(analysis)) + [""]
    return "\n".join(lines)


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:80em}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.85em}"
    "td,th{border:1px solid #bbb;padding:0.25em 0.5em;text-align:left}"
    "th{background:#eee}img{max-width:100%;margin:0.5em 0}"
)


def html_report(result: dict, plots: dict[str, Path]) -> str:
    parts = [
        f"<h1>Evaluation: {html.escape(result['evaluated_split'])} split, "
        f"{result['messages']} messages</h1>",
        "<p>Intervals are 95% bootstrap intervals. Recall at an FPR point sets its threshold "
        "on the evaluated safe mail; operating thresholds were chosen beforehand.</p>",
    ]
    for name, split in result["splits"].items():
        if split["kind"] == "leave_one_source_out":
            continue
        parts.append(f"<h2>Split: {html.escape(name)} ({html.escape(split['note'])})</h2>")
        parts.append(_html_table(SIDE_BY_SIDE, side_by_side(split["figures"])))
    header, rows = held_out_rows(result["splits"])
    if rows:
        parts += ["<h2>Leave one source out</h2>", _html_table(header, rows)]
    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(name.replace('_', ' '))}</h3>")
        parts.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
    main = _main_model(result)
    if main:
        time_figures = result["splits"]["time"]["figures"]
        for group in ("source", "category", "month"):
            header, rows = group_rows(time_figures, group, main)
            parts += [f"<h2>{html.escape(main)}, per {group}</h2>", _html_table(header, rows)]
        for kind in ("false_negatives", "false_positives"):
            analysis = result["gaps"]["models"][main][kind]
            parts.append(
                f"<h2>Largest gaps: {kind.replace('_', ' ')} of {html.escape(main)} "
                f"({analysis['count']} of {analysis['population']})</h2>"
            )
            parts.append(_html_table(GAP_HEADER, gap_rows(analysis)))
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Bulwark evaluation</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )


def write_report(result: dict, curves: dict, output_dir: Path) -> dict[str, Path]:
    output_dir = Path(output_dir)
    plots = write_plots(curves, output_dir / "plots")
    paths = {
        "json": output_dir / "evaluation.json",
        "markdown": output_dir / "evaluation.md",
        "html": output_dir / "report.html",
    }
    paths["json"].write_text(json.dumps(finite_values(result), indent=2, default=_plain) + "\n")
    paths["markdown"].write_text(markdown_report(result) + "\n")
    paths["html"].write_text(html_report(result, plots))
    return {**paths, **plots}


def finite_values(value):
    """The result with every NaN or infinite float as null, so the file is strict JSON."""
    if isinstance(value, dict):
        return {k: finite_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_values(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
