"""The report's figures: quality against latency (Pareto), confusion matrices, the layer probe.

matplotlib's object API on the Agg canvas: no global pyplot state, no display. Each function takes
rows (and the decision) and writes one PNG, returning whether it drew anything.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.text import Text

from rightsizer.candidates import KINDS
from rightsizer.stages.report.decision import METRIC_NAMES, _points, pareto_front, trained

KIND_COLOURS = {"teacher": "#1f77b4", "student": "#2ca02c", "adapter": "#ff7f0e", "slice": "#9467bd",
                "quantized": "#e377c2", "prompting": "#8c564b", "baseline": "#7f7f7f"}


def slice_depth(row: dict) -> int | None:
    """How many layers a slice keeps (its row's ``layers``, from the slice stage's summary)."""
    layers = row.get("layers")
    return layers if isinstance(layers, int) else None


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)  # a renderer to measure text with (label placement)
    return figure


def plot_pareto(rows: list[dict], metric: str, decision: dict, tolerance: float, path: Path) -> bool:
    """Quality against p50 latency: marker area = parameters, colour = kind, the Pareto front as a
    staircase, the tolerance band under the best, the baseline as a line, the recommendation ringed."""
    key = f"val_{metric}" if decision.get("selected_on") == "validation" else metric  # the split chosen on
    pool = [{**row, metric: row[key], "interval": row.get(f"{key}_ci")} for row in trained(rows, metric)
            if row.get("latency_ms") is not None and row.get(key) is not None]
    if not pool:
        return False
    name = METRIC_NAMES.get(metric, metric)
    figure = _figure(7.5, 4.8)
    axes = figure.add_subplot()
    largest = max((row.get("params") or 0) for row in pool) or 1

    def area(row: dict) -> float:
        return 40 + 900 * math.sqrt((row.get("params") or 0) / largest)

    for kind in KINDS:
        group = [row for row in pool if row["kind"] == kind]
        if group:
            axes.scatter([row["latency_ms"] for row in group], [row[metric] for row in group],
                         s=[area(row) for row in group], c=KIND_COLOURS[kind], alpha=0.7, edgecolors="white",
                         linewidths=0.8, label=kind, zorder=3)
    for row in pool:
        if row["interval"]:
            low, high = row["interval"]
            axes.errorbar([row["latency_ms"]], [row[metric]], yerr=[[row[metric] - low], [high - row[metric]]], fmt="none",
                          ecolor=KIND_COLOURS.get(row["kind"], "#17becf"), alpha=0.45, linewidth=1, capsize=2, zorder=2)
    others = [row for row in pool if row["kind"] not in KINDS]
    if others:
        axes.scatter([row["latency_ms"] for row in others], [row[metric] for row in others],
                     s=[area(row) for row in others], c="#17becf", alpha=0.7, label="other", zorder=3)
    by_name = {row["name"]: row for row in pool}
    linked = [(row, by_name[row["source"]]) for row in pool if row["kind"] == "quantized" and row.get("source") in by_name]
    if linked:
        axes.plot([], [], color=KIND_COLOURS["quantized"], label="quantized ← its source")
    for row, origin in linked:  # each quantized candidate linked to the model it was made from
        axes.annotate("", xy=(row["latency_ms"], row[metric]), xytext=(origin["latency_ms"], origin[metric]),
                      arrowprops={"arrowstyle": "->", "color": KIND_COLOURS["quantized"], "alpha": 0.8,
                                  "linewidth": 1.2, "shrinkA": 6, "shrinkB": 6}, zorder=2)
    front = pareto_front(pool, metric)
    if front:
        xs = [row["latency_ms"] for row in front]
        ys = [row[metric] for row in front]
        axes.step(xs + [max(row["latency_ms"] for row in pool) * 1.15], ys + ys[-1:], where="post", color="black",
                  linewidth=1.2, linestyle="--", alpha=0.7, label="Pareto front", zorder=2)
    best = next(row for row in pool if row["name"] == decision["best"]) if decision.get("best") else None
    if best is not None:
        axes.axhspan(best[metric] - tolerance, best[metric], color="#2ca02c", alpha=0.10, zorder=1,
                     label=f"within {_points(tolerance)} of best")
    scores = [row[metric] for row in pool] + ([best[metric] - tolerance] if best is not None else [])
    scores += [end for row in pool if row["interval"] for end in row["interval"]]
    margin = max(max(scores) - min(scores), 0.02) * 0.12
    low, high = min(scores) - margin, max(scores) + margin
    baseline = next((row for row in rows if row.get("kind") == "baseline" and row.get(key) is not None), None)
    floor, floor_label = (baseline[key], "majority baseline") if baseline is not None else (None, "")
    if decision.get("chance"):
        floor, floor_label = decision["chance"][metric], f"chance ({decision['chance']['by'][metric]} guessing)"
    if floor is not None and floor >= low:
        axes.axhline(floor, color=KIND_COLOURS["baseline"], linestyle=":", linewidth=1.2, label=floor_label, zorder=1)
    elif floor is not None:  # far below every candidate: say so rather than squash the axis
        axes.plot([], [], color=KIND_COLOURS["baseline"], linestyle=":", label=f"{floor_label} {floor:.3f} (off the axis)")
    axes.set_ylim(low, high)
    chosen = next((row for row in pool if row["name"] == decision.get("recommended")), None)
    if chosen is not None:
        axes.scatter([chosen["latency_ms"]], [chosen[metric]], s=area(chosen) * 2.2 + 120, facecolors="none",
                     edgecolors="crimson", linewidths=2.2, label="recommended", zorder=4)
    points: dict[tuple[float, float], list[dict]] = {}
    for row in pool:  # one label per point: candidates that coincide share it
        points.setdefault((row["latency_ms"], row[metric]), []).append(row)
    latencies = [row["latency_ms"] for row in pool if row["latency_ms"] > 0]
    if latencies and max(latencies) / min(latencies) > 20:
        axes.set_xscale("log")
    axes.set_xlabel("latency p50 (ms per example)")
    axes.set_ylabel(f"{name} ({decision.get('selected_on') or 'test'}, 95% interval)")
    axes.set_title(f"{name} against latency — marker area ∝ parameters")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8, markerscale=0.5, framealpha=0.85)
    place_labels(axes, [(latency, score, ", ".join(row["name"] for row in together), chosen in together)
                        for (latency, score), together in points.items()])
    figure.savefig(path)
    return True


def text_box(label, renderer):
    """Where an annotation's text is drawn, in pixels (its leader line aside)."""
    label.update_positions(renderer)
    return Text.get_window_extent(label, renderer)


def place_labels(axes, points: list[tuple[float, float, str, bool]]) -> list:
    """Label each point ``(x, y, text, bold)`` so that no two labels overlap each other, the legend or
    the frame: try the four corners next to the point, then further up or down step by step (with a
    leader line), and keep the first free place. Returns the annotations."""
    figure = axes.figure
    figure.draw_without_rendering()  # settle the layout first: positions are measured on the final axes
    figure.set_layout_engine("none")
    renderer = figure.canvas.get_renderer()
    frame = axes.get_window_extent(renderer)
    legend = axes.get_legend()
    taken = [legend.get_window_extent(renderer)] if legend is not None else []
    labels = []
    for x, y, text, bold in sorted(points, key=lambda point: (-point[1], point[0])):
        label = None
        for step in range(14):
            for dx, dy in ((8, 5), (8, -13), (-8, 5), (-8, -13)):
                shift = 11 * step * (1 if dy > 0 else -1)
                label = axes.annotate(text, (x, y), xytext=(dx, dy + shift), textcoords="offset points", fontsize=8,
                                      ha="left" if dx > 0 else "right", weight="bold" if bold else "normal",
                                      arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.6} if step else None)
                box = text_box(label, renderer)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                if inside and not any(box.overlaps(other) for other in taken):
                    break
                label.remove()
                label = None
            if label is not None:
                break
        if label is None:  # nowhere free within reach: the first place, overlapping rather than lost
            label = axes.annotate(text, (x, y), xytext=(8, 5), textcoords="offset points", fontsize=8,
                                  weight="bold" if bold else "normal")
        taken.append(text_box(label, renderer).expanded(1.04, 1.15))
        labels.append(label)
    return labels


def plot_confusions(rows: list[dict], path: Path) -> bool:
    """Row-normalised confusion matrices (counts written in the cells), one panel per row."""
    shown = [row for row in rows if row.get("confusion_matrix")]
    if not shown:
        return False
    labels = shown[0].get("labels") or [str(i) for i in range(len(shown[0]["confusion_matrix"]))]
    side = min(2.2 + 0.45 * len(labels), 9)
    figure = _figure(side * len(shown) + 0.8, side + 0.4)
    for index, row in enumerate(shown, 1):
        counts = np.asarray(row["confusion_matrix"], dtype=float)
        recall = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        axes = figure.add_subplot(1, len(shown), index)
        image = axes.imshow(recall, cmap="Blues", vmin=0, vmax=1)
        names = row.get("labels") or labels
        axes.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        axes.set_yticks(range(len(names)), names, fontsize=8)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(f"{row['name']} ({row['kind']})", fontsize=10)
        if len(names) <= 12:
            for (i, j), value in np.ndenumerate(counts):
                axes.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=8,
                          color="white" if recall[i, j] > 0.6 else "black")
    figure.colorbar(image, ax=figure.axes, shrink=0.8, label="share of the true class")
    figure.savefig(path)
    return True


def plot_probe(probe: dict, rows: list[dict], metric: str, path: Path) -> bool:
    """The probe's per-layer score (linear probe on frozen layers) with each fine-tuned slice and
    the fine-tuned full model drawn at their depth: how much of the model the task needs."""
    layers = [entry for entry in probe.get("layers", []) if isinstance(entry, dict) and "layer" in entry]
    if not layers:
        return False
    name = METRIC_NAMES.get(metric, metric)
    figure = _figure(7, 4)
    axes = figure.add_subplot()
    depths = [entry["layer"] for entry in layers]
    for split, style in (("validation", "o-"), ("test", "s--")):
        scores = [entry.get(split, {}).get(metric) for entry in layers]
        if all(score is not None for score in scores):
            axes.plot(depths, scores, style, label=f"linear probe ({split})", alpha=0.8)
    slices = [(slice_depth(row), row) for row in rows if row.get("kind") == "slice" and row.get(metric) is not None]
    slices = [(depth, row) for depth, row in slices if depth is not None]
    if slices:
        axes.scatter([d for d, _ in slices], [row[metric] for _, row in slices], marker="D", s=70,
                     c=KIND_COLOURS["slice"], label="fine-tuned slice (test)", zorder=3)
        for depth, row in slices:
            axes.annotate(row["name"], (depth, row[metric]), textcoords="offset points", xytext=(6, -12), fontsize=8)
    full = next((row for row in rows if row.get("name") == probe.get("model") and row.get(metric) is not None), None)
    if full is not None and probe.get("depth"):
        axes.scatter([probe["depth"]], [full[metric]], marker="*", s=160, c=KIND_COLOURS.get(full.get("kind"), "black"),
                     label=f"{full['name']}, fine-tuned (test)", zorder=3)
    chance = (probe.get("chance") or {}).get("majority", {}).get(metric)
    if chance is not None:
        axes.axhline(chance, color="grey", linestyle=":", label="majority class")
    if probe.get("best_layer") is not None:
        axes.axvline(probe["best_layer"], color="grey", alpha=0.4, linewidth=6, label=f"best probe layer ({probe['best_layer']})")
    axes.set_xlabel("layers kept (depth)")
    axes.set_ylabel(name)
    axes.set_xticks(sorted(set(depths) | {d for d, _ in slices}))
    axes.set_title(f"layer probe: {probe.get('model', '?')}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.savefig(path)
    return True
