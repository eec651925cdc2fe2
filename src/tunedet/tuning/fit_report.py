"""``OUT/report.html`` and ``OUT/fit.json`` of a ``tunedet fit`` run: the fingerprint,
each rule with its reason, the search table with the knobs' importances, the rank
agreement between short trials and full-length runs (when measured), where the budget
went, and the final metrics. One self-contained HTML file (no script, no network)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { background: #4a7fb5; height: 0.8em; display: inline-block; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(head: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = []
        for k, cell in enumerate(row):
            cls = ' class="num"' if k in numeric else ""
            cells.append(f"<td{cls}>{cell if isinstance(cell, Markup) else _e(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


class Markup(str):
    """HTML that ``_table`` puts in a cell unescaped."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fingerprint_section(summary: dict[str, Any]) -> str:
    quantile_rows = []
    for key, label in (
        ("image_width", "image width (px)"),
        ("image_height", "image height (px)"),
        ("object_size_px", "object size √(wh) (px)"),
        ("object_size_relative", "object size / image size"),
        ("aspect_h_w", "aspect h / w"),
        ("objects_per_image", "objects per image"),
    ):
        q = summary[key]
        quantile_rows.append([label, *(_fmt(q[p]) for p in ("p5", "p25", "p50", "p75", "p95"))])
    per_class = [
        [c["class"], c["boxes"], c["images"], _fmt(c["median_size"]), _fmt(c["median_aspect_h_w"])]
        for c in summary["per_class"]
    ]
    ov = summary["overhead"]
    per_image = summary["objects_per_image"]
    return "\n".join(
        [
            "<h2>Fingerprint</h2>",
            f"<p>{summary['images']} training images, {summary['boxes']} boxes, "
            f"{summary['classes']} classes; objects per image: mean {per_image['mean']}, "
            f"max {per_image['max']}, {per_image['empty_fraction']:.0%} of images empty; "
            f"class imbalance (most / fewest boxes) {summary['class_imbalance']}.</p>",
            _table(["quantity", "p5", "p25", "p50", "p75", "p95"], quantile_rows, {1, 2, 3, 4, 5}),
            _table(
                ["class", "boxes", "images", "median size", "median h / w"], per_class, {1, 2, 3, 4}
            ),
            f"<p><b>Overhead imagery: {'yes' if ov['overhead'] else 'no'}</b> "
            f"({_e(ov['source'])}): {_e(ov['basis'])}.</p>",
        ]
    )


def rules_section(rules: list[dict[str, Any]]) -> str:
    rows = [
        [r["name"], Markup(f"<code>{_e(json.dumps(r['knobs']))}</code>"), r["reason"]]
        for r in rules
    ]
    return "<h2>Rules</h2>\n" + _table(
        ["rule", "knobs", "reason (the measurement behind it)"], rows
    )


def search_section(
    trials: list[dict[str, Any]], importances: dict[str, float], basis: str = ""
) -> str:
    if not trials:
        return "<h2>Search</h2>\n<p>No search was run (see the search rule).</p>"
    keys = sorted({k for t in trials for k in t["params"]})
    rows = [
        [t["trial"], t["state"], "" if t["value"] is None else f"{t['value']:.4f}"]
        + [_fmt(t["params"].get(k, "–")) for k in keys]
        for t in trials
    ]
    parts = ["<h2>Search</h2>", _table(["trial", "state", "AP50", *keys], rows, {0, 2})]
    if importances:
        bars = [
            [k, f"{v:.2f}", Markup(f'<span class="bar" style="width:{v * 20:.1f}em"></span>')]
            for k, v in importances.items()
        ]
        parts += ["<h3>Importance of each knob</h3>", f"<p>{_e(basis)}.</p>" if basis else ""]
        parts.append(_table(["knob", "share", ""], bars, {1}))
    else:
        parts.append(f"<p>No importances: {_e(basis or 'fewer than 3 scored trials')}.</p>")
    return "\n".join(parts)


def rank_plot(rank: dict[str, Any], path: Path) -> Path:
    """Scatter of each trial's short AP50 against its full-length AP50, with ρ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    short = [r["short"] for r in rank["runs"]]
    full = [r["full"] for r in rank["runs"]]
    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=100)
    ax.scatter(short, full, color="#4a7fb5")
    for r in rank["runs"]:
        ax.annotate(str(r["trial"]), (r["short"], r["full"]), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlabel("short trial AP50 (validation)")
    ax.set_ylabel(f"AP50 after {rank['iterations']} iterations")
    ax.set_title(f"Spearman ρ = {rank['spearman']:.2f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def rank_section(rank: dict[str, Any] | None, plot: Path | None = None) -> str:
    head = "<h2>Rank agreement: short trials against full-length runs</h2>"
    if not rank:
        return (
            f"{head}\n<p>Not measured in this run: it trains every trial's recipe again at "
            "full length (<code>tunedet.tuning.fit.rank_agreement</code>, "
            "<code>benchmarks/fit_table.py --rank-check</code>).</p>"
        )
    rows = [[r["trial"], f"{r['short']:.4f}", f"{r['full']:.4f}"] for r in rank["runs"]]
    return "\n".join(
        [
            head,
            f"<p>Spearman ρ = {rank['spearman']:.2f} over {len(rows)} recipes, each trained "
            f"again for {rank['iterations']} iterations (the final run's length).</p>",
            _table(["trial", "short AP50", "full AP50"], rows, {0, 1, 2}),
            *([_png(plot)] if plot else []),
        ]
    )


def seed_section(spread: dict[str, Any] | None) -> str:
    head = "<h2>Seed spread: the recipe trained again with other seeds</h2>"
    if not spread:
        return (
            f"{head}\n<p>Not measured in this run: it trains the recipe again, once per seed "
            "(<code>tunedet fit … --seed-check N</code>, "
            "<code>tunedet.tuning.fit.seed_spread</code>).</p>"
        )
    rows = [[r["seed"], r["run"], f"{r['AP']:.4f}", f"{r['AP50']:.4f}"] for r in spread["runs"]]

    def shown(key: str) -> str:
        mean, std = spread[key]["mean"], spread[key]["std"]
        return f"{key} {mean:.4f}" + ("" if std is None else f" ± {std:.4f}")

    return "\n".join(
        [
            head,
            f"<p>{shown('AP')}, {shown('AP50')} (mean ± sample std over {len(rows)} runs of "
            f"{spread['iterations']} iterations on the training part, scored on the "
            "validation split, single pass).</p>",
            _table(["seed", "run", "AP", "AP50"], rows, {0, 2, 3}),
        ]
    )


def _png(path: Path) -> str:
    """``path`` inlined as a data URI: the report stays one self-contained file."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{_e(path.name)}" src="data:image/png;base64,{data}"></p>'


def fit_record(result: Any, budget_s: float) -> dict[str, Any]:
    """What a fit run did, as plain values (``OUT/fit.json``): everything the report shows."""
    return {
        "budget_seconds": budget_s,
        "split": result.split,
        "fingerprint": result.fingerprint.summary(),
        "rules": [{"name": r.name, "knobs": r.knobs, "reason": r.reason} for r in result.rules],
        "trials": result.trials,
        "importances": result.importances,
        "importance_basis": result.importance_basis,
        "timings_seconds": result.timings,
        "metrics": result.metrics,
        "scored_by": result.scored_by,
        "recipe": str(result.recipe),
        "checkpoint": result.checkpoint,
        "rank_agreement": None,
        "seed_spread": None,
    }


def write_fit_report(out: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` (``fit_record``) as ``OUT/fit.json`` and ``OUT/report.html`` (with
    ``OUT/rank_agreement.png`` when the rank agreement was measured); returns the HTML
    path."""
    (out / "fit.json").write_text(json.dumps(record, indent=2, default=str))
    budget_s, timings = record["budget_seconds"], record["timings_seconds"]
    used = sum(timings.values())
    timing_rows = [[k, f"{v:.1f}"] for k, v in timings.items()]
    metrics = record["metrics"]
    rank = record.get("rank_agreement")
    body = [
        "<h1>tunedet fit</h1>",
        f"<p>Budget {budget_s / 60:.1f} min of wall time up to the final model "
        f"(evaluation excluded); {used / 60:.1f} min used. {_e(record['split'])}.</p>",
        f"<p>Validation split, scored with {_e(record.get('scored_by', 'the final model'))}: "
        f"AP {metrics.get('AP', float('nan')):.4f}, "
        f"AP50 {metrics.get('AP50', float('nan')):.4f} (single pass). Recipe: "
        f"<code>{_e(record['recipe'])}</code> (<code>tunedet train {_e(record['recipe'])}</code> "
        "trains it again).</p>",
        fingerprint_section(record["fingerprint"]),
        rules_section(record["rules"]),
        search_section(record["trials"], record["importances"], record.get("importance_basis", "")),
        rank_section(rank, rank_plot(rank, out / "rank_agreement.png") if rank else None),
        seed_section(record.get("seed_spread")),
        "<h2>Where the budget went</h2>",
        _table(["step", "seconds"], timing_rows, {1}),
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>tunedet fit</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    path = out / "report.html"
    path.write_text(page)
    return path
