"""The study report: a self-contained HTML page, claims.json, metrics.csv and the plots.

``out_dir/index.html`` embeds every PNG as base64, so the page alone can be
mailed or archived; the PNGs, the claims and the full tidy table are also
written beside it for other tools.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from rlhfscale.analysis.claims import Claim, check_all
from rlhfscale.analysis.plots import OVEROPTIMIZATION, write_plots
from rlhfscale.analysis.table import SEED, TRIAL, final_points, to_csv, to_table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.supported { background: #d9f2d9; } .not-supported { background: #f8d7d7; }
.inconclusive { background: #fff3cd; } .not-tested { background: #eee; color: #777; }
img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
.metrics { font-size: 0.75em; }
.note { background: #fff3cd; padding: 0.5em; }
"""


def write_report(
    rows_or_table: pd.DataFrame | Iterable[Mapping[str, object]],
    out_dir: str | Path,
    *,
    spec_text: str,
    version: str,
    title: str,
    notes: Sequence[str] = (),
) -> Path:
    """Check every claim, draw the plots and write the report into ``out_dir``; returns index.html.
    `notes` (e.g. that the study mixes artifacts of several code versions) head the page."""
    rows = rows_or_table.to_dict("records") if isinstance(rows_or_table, pd.DataFrame) else rows_or_table
    table = to_table(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = check_all(table)
    pngs = write_plots(table, results, out)
    results = [replace(c, plot=pngs[c.id].name if c.id in pngs else None) for c in results]
    entries = [{key: _json_value(value) for key, value in asdict(c).items()} for c in results]
    (out / "claims.json").write_text(json.dumps(entries, indent=2) + "\n")
    to_csv(table, out / "metrics.csv")
    page = render(table, results, pngs, spec_text=spec_text, version=version, title=title, notes=notes)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _json_value(value: object) -> object:
    """NaN becomes null (JSON has no NaN); numpy scalars become Python numbers; in nested values (a claim's
    fits) infinities become null too."""
    if isinstance(value, Mapping):
        return {str(k): _nested(v) for k, v in value.items()}
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def _nested(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _nested(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nested(v) for v in value]
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def render(table: pd.DataFrame, results: list[Claim], pngs: Mapping[str, Path], *,
           spec_text: str, version: str, title: str, notes: Sequence[str] = ()) -> str:
    """The whole HTML page."""
    esc = html.escape
    summary = (f"{table[TRIAL].nunique()} trials, {table[SEED].nunique()} seed(s), {len(table)} rows; "
               f"rlhfscale {esc(version)}")
    return "\n".join([
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{STYLE}</style></head><body>',
        f"<h1>{esc(title)}</h1>",
        f"<p>{summary}</p>",
        *(f'<p class="note">Note: {esc(note)}</p>' for note in notes),
        "<h2>What this grid says</h2>",
        _learned(results),
        "<h2>Claims</h2>",
        "<p>Each finding of Hou et al. 2024 (arXiv 2412.06000) checked on this grid: effect with its 95% "
        "confidence interval (paired by seed; a noise model pooled over the grid and aware that accuracies are "
        "proportions over a finite number of evaluation prompts; never outside the effect's range). Each claim has "
        "a smallest effect of interest: a direction is <em>not supported</em> when the interval lies below it, "
        "<em>supported</em> when it lies above 0; a similarity is supported when the interval lies within "
        "&plusmn; it. <em>Smallest detectable</em> is the effect this grid would find 4 times in 5 at its "
        "standard error: beside an inconclusive verdict, how large an effect it could have seen. See each "
        "claim's detail for what the effect measures.</p>",
        _claims_table(results),
        "<h2>Plots</h2>",
        _plots(results, pngs),
        "<h2>Metrics</h2>",
        "<p>The final eval point of every trial and seed (every row, curves included, is in "
        '<a href="metrics.csv">metrics.csv</a>).</p>',
        _metrics_table(table),
        "<h2>Study spec</h2>",
        f"<pre>{esc(spec_text)}</pre>",
        f"<footer><p>rlhfscale {esc(version)}</p></footer>",
        "</body></html>",
    ])


def _learned(results: list[Claim]) -> str:
    """The verdicts in a few sentences: what held, what did not, and how large an effect the rest could show."""
    by = {v: [c for c in results if c.verdict == v] for v in ("supported", "not supported", "inconclusive", "not tested")}
    sentences = []
    if by["supported"]:
        sentences.append("Supported here: " + "; ".join(f"{html.escape(c.title)} (effect {_number(c.effect)})"
                                                         for c in by["supported"]) + ".")
    if by["not supported"]:
        sentences.append("Not supported here: " + "; ".join(f"{html.escape(c.title)} (effect {_number(c.effect)})"
                                                             for c in by["not supported"]) + ".")
    if by["inconclusive"]:
        sentences.append("Inconclusive, with the smallest effect this grid could have detected: " + "; ".join(
            f"{c.id} ({_number(c.min_detectable, False)})" for c in by["inconclusive"]) + ".")
    if by["not tested"]:
        sentences.append("Not tested by this grid: " + ", ".join(c.id for c in by["not tested"]) + ".")
    return f"<p>{' '.join(sentences)}</p>"


def _number(value: float, sign: bool = True) -> str:
    return "–" if math.isnan(value) else f"{value:+.4g}" if sign else f"{value:.3g}"


def _claims_table(results: list[Claim]) -> str:
    rows = []
    for number, c in enumerate(results, 1):
        name = f'<a href="#plot-{c.id}">{c.id}</a>' if c.plot else c.id
        ci = f"[{_number(c.ci_low)}, {_number(c.ci_high)}]"
        rows.append(
            f'<tr class="{c.verdict.replace(" ", "-")}"><td>{number}</td><td>{name}</td><td>{html.escape(c.title)}</td>'
            f"<td>{c.verdict}</td><td>{_number(c.effect)}</td><td>{ci}</td>"
            f"<td>{_number(c.smallest_effect_of_interest, False)}</td><td>{_number(c.min_detectable, False)}</td>"
            f"<td>{c.n_seeds}</td><td>{html.escape(c.detail)}</td></tr>"
        )
    head = ("<tr><th>#</th><th>id</th><th>claim</th><th>verdict</th><th>effect</th><th>95% CI</th>"
            "<th>smallest effect of interest</th><th>smallest detectable (80% power)</th><th>seeds</th>"
            "<th>detail</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _plots(results: list[Claim], pngs: Mapping[str, Path]) -> str:
    sections = [
        f'<section id="plot-{c.id}"><h3>{c.id}: {html.escape(c.title)} ({c.verdict})</h3>{_image(pngs[c.id])}</section>'
        for c in results if c.id in pngs
    ]
    if OVEROPTIMIZATION in pngs:
        sections.append(f'<section id="plot-{OVEROPTIMIZATION}"><h3>Reward over-optimization (gold vs proxy)</h3>'
                        f"{_image(pngs[OVEROPTIMIZATION])}</section>")
    return "\n".join(sections) or "<p>No claim could be tested on this grid, so there is nothing to plot.</p>"


def _metrics_table(table: pd.DataFrame) -> str:
    final = final_points(table).dropna(axis=1, how="all")
    return final.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", classes="metrics", border=0)
