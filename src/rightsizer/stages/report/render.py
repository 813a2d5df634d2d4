"""The report as text: the leaderboard table, Markdown and a self-contained HTML page.

``report.html`` inlines its styles and embeds the figures as base64 PNG: no external URL.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from rightsizer import __version__
from rightsizer.stages.report.confidence import points
from rightsizer.stages.report.decision import _fmt_percent, _points, trainable_percent

def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value / 1e6:.2f}M"
    return str(value)



def with_spread(row, key: str, digits: int = 4) -> str:
    """A score as shown: '0.8120', or for a candidate trained with several seeds the mean, the sample standard
    deviation over the seeds and their count, '0.8120 ± 0.0060 (3 seeds)'. ``row``: a leaderboard row (dict or
    :class:`rightsizer.records.LeaderboardRow`)."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name, None)
    value, spread, seeds = get(key), get(f"{key}_std"), get("seeds") or []
    if value is None:
        return "–"
    if spread is None or len(seeds) < 2:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {spread:.{digits}f} ({len(seeds)} seeds)"


FIGURE_CAPTIONS = {"pareto": "Quality against latency", "confusion": "Confusion matrices", "probe": "Layer probe"}
TABLE_COLUMNS = ("#", "candidate", "kind", "val accuracy", "val macro-F1", "test accuracy", "test macro-F1 [95% CI]",
                 "vs best, test (pt)", "latency p50 (ms)", "p95 (ms)", "throughput (/s)", "params", "trainable",
                 "size (MB)", "train time (s)", "Pareto")


STAR = "⭐"  # the recommended candidate (drawn as STAR_SVG in HTML: many fonts lack the glyph)
STAR_SVG = ('<svg class="star" viewBox="0 0 24 24" role="img" aria-label="recommended"><path fill="#f2b600" '
            'stroke="#b8860b" stroke-width="1.2" d="M12 1.8l3.1 6.6 7.2.9-5.3 5 1.4 7.2L12 18l-6.4 3.5 1.4-7.2-5.3-5 '
            '7.2-.9z"/></svg>')


def table_cells(rows: list[dict], report: dict) -> list[list[str]]:
    """The leaderboard as text cells, one list per row (shared by Markdown and HTML)."""
    front = set(report["pareto_front"])
    cells = []
    for rank, row in enumerate(rows, 1):
        marks = (f" {STAR}" if row["name"] == report["recommended"] else "") + (" (best)" if row["name"] == report["best"] else "")
        measured = row.get("kind") != "baseline"  # the baseline's zeros are not measurements
        difference = ((report.get("comparisons") or {}).get(row["name"]) or {}).get("test")
        cells.append([str(rank), row["name"] + marks, row["kind"], with_spread(row, "val_accuracy"),
                      with_spread(row, "val_macro_f1"), with_spread(row, "accuracy"),
                      _with_interval(with_spread(row, "macro_f1"), row.get("macro_f1_ci")),
                      _difference(difference) if difference else "",
                      *(_fmt(row.get(key), digits) if measured else "–" for key, digits in
                        (("latency_ms", 3), ("latency_p95_ms", 3), ("throughput_per_s", 1), ("params", 4))),
                      _fmt_percent(trainable_percent(row)) if measured else "–",
                      _fmt(row.get("size_mb"), 2) if measured else "–", _fmt(row.get("train_time_s"), 1),
                      "●" if row["name"] in front else ""])
    return cells


def _with_interval(shown: str, interval) -> str:
    return shown + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval and shown != "–" else "")


def _difference(compared: dict) -> str:
    low, high = compared["interval"]
    return f"{points(compared['difference'])} [{points(low)}, {points(high)}]"


def seeds_line(rows: list[dict]) -> str | None:
    """What a row trained with several seeds shows, and which of its models is shipped (None when none is)."""
    several = [row for row in rows if len(row.get("seeds") or []) > 1]
    if not several:
        return None
    shipped = "; ".join(f"{row['name']}: seed {row.get('seed')} of {row['seeds']}" for row in several)
    return ("Candidates trained with several seeds show the mean ± the sample standard deviation over their seeds; "
            "the decision uses the mean validation score, and the interval is the bootstrap interval of the mean over "
            "the test examples. Each such row's model (and `recommended/`) is its seed with the best validation score "
            f"({shipped}).")


def leakage_line(card: dict) -> str | None:
    """What prepare found and removed between the splits, in one sentence (None before the check existed)."""
    leakage = card.get("leakage")
    if not leakage:
        return None
    removed = leakage.get("removed", {})
    found = leakage.get("normalised", {})
    parts = [f"{removed.get('validation', 0)} validation and {removed.get('test', 0)} test rows duplicating a training "
             f"text {'removed' if leakage.get('dedupe') else 'kept (data.dedupe: false)'}"]
    if not leakage.get("dedupe"):
        parts = [f"{found.get('validation_in_train', 0)} validation and {found.get('test_in_train', 0)} test rows "
                 "duplicate a training text (kept: data.dedupe is false)"]
    parts.append(f"{found.get('test_in_validation', 0)} test rows repeat a validation text")
    within = found.get("within", {})
    parts.append(f"repeats within splits: {within.get('train', 0)} train, {within.get('validation', 0)} validation, "
                 f"{within.get('test', 0)} test")
    if "shared_members" in leakage:
        shared = leakage["shared_members"]
        parts.append(f"pairs sharing a text with a training pair: {shared.get('validation', 0)} validation, "
                     f"{shared.get('test', 0)} test")
    return "Leakage check (case, spacing and punctuation aside): " + "; ".join(parts) + "."


def comparison_lines(report: dict) -> list[str]:
    """'student-2l: −0.8 pt [−2.1, +0.4] vs teacher on test (validation: ...)' for every compared candidate."""
    lines = []
    for name, compared in (report.get("comparisons") or {}).items():
        if "test" in compared:
            line = compared["test"]["line"] + " on test"
            if "validation" in compared:
                low, high = compared["validation"]["interval"]
                line += (f" (validation: {points(compared['validation']['difference'])} pt "
                         f"[{points(low)}, {points(high)}])")
            lines.append(line)
    return lines


def _data_line(card: dict, code: bool = False) -> str:
    rows = card.get("rows", {})
    source = f"`{card.get('source', '?')}`" if code else card.get("source", "?")
    return (f"Data: {source} — {rows.get('train', '?')} train / {rows.get('validation', '?')} validation / "
            f"{rows.get('test', '?')} test rows, {card.get('num_labels', '?')} classes ({', '.join(card.get('label_names', []))})"
            + _dropped_words(card) + ".")


def _dropped_words(card: dict) -> str:
    """'; dropped: 3 row(s) with empty text, ...' — every row the data lost on the way, or ''."""
    counts = {f"row(s) with {key.replace('_', ' ')}": count for key, count in (card.get("dropped_rows") or {}).items()}
    removed = ((card.get("leakage") or {}).get("removed") or {})
    counts["duplicate(s) of training texts"] = sum(removed.values()) if isinstance(removed, dict) else 0
    shown = [f"{count:,} {what}" for what, count in counts.items() if count]
    return "; dropped: " + ", ".join(shown) if shown else ""


def _settings_line(report: dict) -> str:
    selected_on = report.get("selected_on", "test")
    rule = ("not significantly worse than the best (paired bootstrap at "
            f"{report.get('confidence', 0.95):.0%})" if report.get("rule") == "not_worse" else
            f"within {_points(report['tolerance'])} (tolerance {report['tolerance']:g}) of the best")
    chance = report.get("chance")
    chance_text = (f"; chance: {chance[report['metric']]:.4f} ({chance['by'][report['metric']]} guessing), a "
                   "candidate whose interval does not clear it is never recommended" if chance else "")
    return (f"Metric: {report['metric']}, chosen on the {selected_on} split"
            + (" and confirmed on test" if selected_on == "validation" else "") + f"; rule: {rule}{chance_text}; "
            f"size measured by {report['size_by']}; speed target: {report['speed']['target']:g}× faster than the best "
            "teacher. Intervals are 95 % bootstrap intervals over the examples; differences are paired (same examples).")


def render_markdown(report: dict, rows: list[dict], card: dict, figures: dict[str, str]) -> str:
    leakage = leakage_line(card)
    lines = [f"# rightsizer report: {report['name']}", "", _data_line(card, code=True), "",
             *([leakage, ""] if leakage else []), "## Recommendation", ""]
    if report["recommended"]:
        lines.append("Recommended: " + report["reason"].replace(report["recommended"], f"**{report['recommended']}**", 1) + ".")
    else:
        lines.append(f"None: {report['reason']}.")
    if report.get("confirmation"):
        lines += ["", report["confirmation"]["statement"]]
    if report["cost_statement"]:
        lines += ["", report["cost_statement"]]
    lines += ["", report["speed"]["statement"], "", _settings_line(report), ""]
    compared = comparison_lines(report)
    if compared:
        lines += [f"## Against the best ({report['best']}), on the same examples", ""] + [f"- {line}" for line in compared] + [""]
    if report["flags"]:
        lines += ["## Flags", ""] + [f"- ⚠️ {flag['message']}." for flag in report["flags"]] + [""]
    lines += ["## Leaderboard", "", "| " + " | ".join(TABLE_COLUMNS) + " |",
              "|" + "|".join("---" if c in ("candidate", "kind", "Pareto") else "---:" for c in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_cells(rows, report)]
    lines += ["", f"{STAR} recommended · ● on the Pareto front of quality against latency", ""]
    if seeds_line(rows):
        lines += [seeds_line(rows), ""]
    if report["distillation"]:
        lines += ["## Distillation against its control", "", "| student | with teacher | control | without | gain (pt) |",
                  "|---|---:|---|---:|---:|"]
        lines += [f"| {e['student']} | {e['student_score']:.4f} | {e['control']} | {e['control_score']:.4f} | {e['gain_points']:+.1f} |"
                  for e in report["distillation"]] + [""]
    for key, caption in FIGURE_CAPTIONS.items():
        if key in figures:
            lines += [f"## {caption}", "", f"![{caption}]({figures[key]})", ""]
    return "\n".join(lines)


HTML_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.muted{color:#666;font-size:.9em}.box{background:#f3f8f3;border-left:4px solid #2ca02c;padding:.6em 1em;margin:1em 0}
.box.none{background:#fbf5ec;border-color:#e08a00}.flags li{margin:.3em 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.84em;width:100%}
th,td{padding:.3em .35em;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}
th{background:#fafafa;white-space:normal;vertical-align:bottom}td.l,th.l{text-align:left}
td.name{white-space:normal;overflow-wrap:break-word;min-width:9em}td.wrap{white-space:normal}.ci{white-space:nowrap}
tr.rec td{background:#fff7d6;font-weight:600}tr.baseline td{color:#888}
svg.star{width:1em;height:1em;vertical-align:-.12em}
img{max-width:100%;height:auto;border:1px solid #eee}
"""


LEFT = ' class="l"'


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_cell(column: str, cell: str) -> str:
    """A leaderboard cell: names may break (at their hyphens), a value and its interval only before the bracket."""
    text = html.escape(cell)
    if column == "candidate":
        return f'<td class="l name">{text.replace(STAR, STAR_SVG)}</td>'
    if " [" in text:
        value, interval = text.split(" [", 1)
        return f'<td class="wrap">{value} <span class="ci">[{interval}</span></td>'
    return f"<td{LEFT if column == 'kind' else ''}>{text}</td>"


def render_html(report: dict, rows: list[dict], card: dict, figures: dict[str, Path]) -> str:
    """One self-contained page: inline style, figures as base64 data URIs, no external URL."""
    e = html.escape
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>rightsizer report: {e(report['name'])}</title><style>{HTML_STYLE}</style></head><body>",
             f"<h1>rightsizer report: {e(report['name'])}</h1>", f'<p class="muted">{e(_data_line(card))}</p>']
    if leakage_line(card):
        parts.append(f'<p class="muted">{e(leakage_line(card))}</p>')
    parts.append("<h2>Recommendation</h2>")
    if report["recommended"]:
        name = e(report["recommended"])
        parts.append(f'<div class="box"><p>Recommended: {e(report["reason"]).replace(name, f"<strong>{name}</strong>", 1)}.</p>')
    else:
        parts.append(f'<div class="box none"><p>None: {e(report["reason"])}.</p>')
    if report.get("confirmation"):
        parts.append(f"<p>{e(report['confirmation']['statement'])}</p>")
    if report["cost_statement"]:
        parts.append(f"<p>{e(report['cost_statement'])}</p>")
    parts.append(f"<p>{e(report['speed']['statement'])}</p></div>")
    parts.append(f'<p class="muted">{e(_settings_line(report))}</p>')
    if comparison_lines(report):
        parts.append(f"<h2>Against the best ({e(report['best'])}), on the same examples</h2><ul>")
        parts += [f"<li>{e(line)}</li>" for line in comparison_lines(report)]
        parts.append("</ul>")
    if report["flags"]:
        parts.append('<h2>Flags</h2><ul class="flags">')
        parts += [f"<li>⚠️ {e(flag['message'])}.</li>" for flag in report["flags"]]
        parts.append("</ul>")
    parts.append('<h2>Leaderboard</h2><div class="scroll"><table><thead><tr>')
    parts += [f'<th{LEFT if c in ("candidate", "kind") else ""}>{e(c)}</th>' for c in TABLE_COLUMNS]
    parts.append("</tr></thead><tbody>")
    for row, cells in zip(rows, table_cells(rows, report)):
        css = ' class="rec"' if row["name"] == report["recommended"] else ' class="baseline"' if row.get("kind") == "baseline" else ""
        parts.append(f'<tr{css}>' + "".join(_html_cell(column, cell) for column, cell in zip(TABLE_COLUMNS, cells)) + "</tr>")
    parts.append(f'</tbody></table></div><p class="muted">{STAR_SVG} recommended · ● on the Pareto front of quality '
                 "against latency · latency is end to end (tokenize + forward) per example</p>")
    if seeds_line(rows):
        parts.append(f'<p class="muted">{e(seeds_line(rows).replace("`", ""))}</p>')
    if report["distillation"]:
        parts.append('<h2>Distillation against its control</h2><div class="scroll"><table><thead><tr><th class="l">student</th>'
                     '<th>with teacher</th><th class="l">control</th><th>without</th><th>gain (pt)</th></tr></thead><tbody>')
        parts += [f'<tr><td class="l name">{e(x["student"])}</td><td>{x["student_score"]:.4f}</td><td class="l name">'
                  f'{e(x["control"])}</td><td>{x["control_score"]:.4f}</td><td>{x["gain_points"]:+.1f}</td></tr>'
                  for x in report["distillation"]]
        parts.append("</tbody></table></div>")
    for key, caption in FIGURE_CAPTIONS.items():
        if key in figures:
            parts.append(f'<h2>{caption}</h2><img alt="{caption}" src="{_embed(figures[key])}">')
    parts.append(f'<p class="muted">rightsizer {e(__version__)} · {e(time.strftime("%Y-%m-%d %H:%M"))}</p></body></html>')
    return "\n".join(parts)
