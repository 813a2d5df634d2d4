"""The report: Pareto front, recommendation and its costs, the speed verdict, flags, and the written
report (leaderboard schema, self-contained HTML with embedded plots) on hand-made metrics."""

from __future__ import annotations

import base64
import html
import itertools
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from rightsizer.errors import UserError
from rightsizer.stages import report

LABELS = ["negative", "neutral", "positive"]


def row(name: str, kind: str, f1: float, latency: float | None, params: int, size_mb: float | None = None, **extra) -> dict:
    """A candidate's metrics.json as the evaluate stage writes it (quality numbers made up)."""
    correct = int(round(30 * f1))
    confusion = [[correct, 30 - correct, 0], [0, correct, 30 - correct], [30 - correct, 0, correct]]
    return {"name": name, "kind": kind, "accuracy": f1, "macro_f1": f1, "labels": LABELS, "confusion_matrix": confusion,
            "per_class": {}, "latency_ms": latency, "latency_p95_ms": None if latency is None else latency * 1.3,
            "throughput_per_s": None if not latency else 1000 / latency, "params": params, "trainable_params": params,
            "size_mb": size_mb if size_mb is not None else params * 4 / 1e6, "train_time_s": 12.5, "samples_per_s": 100.0,
            **extra}


BASELINE = row("majority-baseline", "baseline", 0.17, 0.0, 0, 0.0)


# ---------------------------------------------------------------------------------------------
# Pareto front


def test_pareto_front_on_a_known_set():
    rows = [
        row("slow-best", "teacher", 0.90, 10.0, 100),
        row("fast-good", "student", 0.88, 2.0, 20),
        row("dominated", "student", 0.85, 3.0, 30),     # fast-good is better and faster
        row("same-score-slower", "adapter", 0.88, 5.0, 100),  # same score as fast-good, slower
        row("fastest-weak", "slice", 0.60, 1.0, 10),
        row("twin", "student", 0.88, 2.0, 20),          # identical to fast-good: both stay
        row("no-latency", "prompting", 0.95, None, 500),  # cannot be placed
        BASELINE,                                        # latency 0 would dominate the cost axis; excluded
    ]
    front = report.pareto_front(rows, "macro_f1")
    assert [r["name"] for r in front] == ["fastest-weak", "fast-good", "twin", "slow-best"]
    by_params = report.pareto_front(rows, "macro_f1", cost="params")
    assert [r["name"] for r in by_params] == ["fastest-weak", "fast-good", "twin", "slow-best", "no-latency"]
    assert report.pareto_front([BASELINE], "macro_f1") == []


def test_pareto_front_matches_brute_force_on_random_points():
    rng = np.random.default_rng(0)
    for trial in range(20):
        rows = [row(f"c{i}", "student", float(rng.choice([0.5, 0.6, 0.7, 0.8])), float(rng.integers(1, 6)), 10)
                for i in range(12)]
        front = {r["name"] for r in report.pareto_front(rows, "macro_f1")}
        for a in rows:
            beaten = any(b["macro_f1"] >= a["macro_f1"] and b["latency_ms"] <= a["latency_ms"]
                         and (b["macro_f1"] > a["macro_f1"] or b["latency_ms"] < a["latency_ms"]) for b in rows)
            assert (a["name"] in front) == (not beaten), (trial, a)


# ---------------------------------------------------------------------------------------------
# recommendation


ROWS = [
    row("teacher", "teacher", 0.90, 10.0, 1_000_000, 4.0),
    row("student-2l", "student", 0.895, 4.0, 400_000, 1.6),
    row("lora-q", "adapter", 0.893, 11.0, 1_010_000, 0.2),  # tiny on disk (adapter weights only), slowest
    row("tiny", "student", 0.85, 1.0, 100_000, 0.4),
    BASELINE,
]


@pytest.mark.parametrize("size_by, tolerance, expected", [
    ("latency", 0.01, "student-2l"),
    ("params", 0.01, "student-2l"),
    ("size_mb", 0.01, "lora-q"),
    ("latency", 0.0, "teacher"),    # nothing else within tolerance: the best itself
    ("latency", 0.05, "tiny"),      # exactly on the edge (0.90 - 0.05 = 0.85) counts as within
    ("params", 0.1, "tiny"),
])
def test_recommendation_by_size_measure_and_tolerance(size_by, tolerance, expected):
    decision = report.recommendation(ROWS, "macro_f1", tolerance, size_by)
    assert decision["recommended"] == expected
    assert decision["best"] == "teacher"
    assert "majority-baseline" not in decision["within_tolerance"]


def test_recommendation_costs_against_the_best():
    decision = report.recommendation(ROWS, "macro_f1", 0.01, "latency")
    cost = decision["cost"]
    assert cost["quality_points_lost"] == pytest.approx(0.5)
    assert cost["speedup"] == pytest.approx(2.5) and cost["params_ratio"] == pytest.approx(2.5)
    assert cost["size_ratio"] == pytest.approx(4.0 / 1.6)
    assert decision["within_tolerance"] == ["teacher", "student-2l", "lora-q"]
    assert "fastest of the 3 candidates within 1.0 pt" in decision["reason"]
    assert "0.5 points" in decision["cost_statement"] and "2.5× faster" in decision["cost_statement"]
    best = report.recommendation(ROWS, "macro_f1", 0.0)
    assert best["cost"]["quality_points_lost"] == 0 and "gives up nothing" in best["cost_statement"]


def test_recommendation_ties():
    # equal scores: the best is the smaller one; equal score and size: the first name
    rows = [row("b-twin", "student", 0.8, 2.0, 10), row("a-twin", "student", 0.8, 2.0, 10), row("big", "teacher", 0.8, 9.0, 90)]
    decision = report.recommendation(rows, "macro_f1", 0.0)
    assert decision["best"] == "a-twin" and decision["recommended"] == "a-twin"
    assert decision["within_tolerance"] == ["b-twin", "a-twin", "big"]
    # equal size within tolerance: the higher score wins
    rows = [row("teacher", "teacher", 0.9, 5.0, 50), row("x", "student", 0.895, 1.0, 10), row("y", "student", 0.899, 1.0, 10)]
    assert report.recommend(rows, "macro_f1", 0.01)[0] == "y"


def test_recommendation_single_and_no_candidate():
    name, reason = report.recommend([row("only", "teacher", 0.7, 3.0, 10), BASELINE], "macro_f1", 0.01)
    assert name == "only" and "only candidate" in reason
    name, reason = report.recommend([BASELINE], "macro_f1", 0.01)
    assert name is None and "no trained candidate" in reason
    assert report.recommendation([], "macro_f1", 0.01)["speed"]["meets_target"] is False
    with pytest.raises(UserError, match="size_by"):
        report.recommendation(ROWS, "macro_f1", 0.01, "flops")


def test_missing_size_is_never_preferred():
    rows = [row("teacher", "teacher", 0.9, 5.0, 50), row("unmeasured", "prompting", 0.9, None, 10)]
    assert report.recommend(rows, "macro_f1", 0.01, "latency")[0] == "teacher"
    assert report.recommend(rows, "macro_f1", 0.01, "params")[0] == "unmeasured"


def test_speed_verdict_meets_the_target_or_says_none_qualifies():
    speed = report.recommendation(ROWS, "macro_f1", 0.01)["speed"]
    assert speed["meets_target"] and speed["qualifying"] == ["student-2l"] and speed["teacher"] == "teacher"
    assert speed["recommended_speedup"] == pytest.approx(2.5)
    assert "meets the 2× target" in speed["statement"]
    # a 3x target: student-2l (2.5x) is not enough, tiny is outside the tolerance
    speed = report.recommendation(ROWS, "macro_f1", 0.01, speedup_target=3.0)["speed"]
    assert not speed["meets_target"] and speed["qualifying"] == []
    assert speed["statement"].startswith("None qualifies")
    assert "student-2l, is 2.5× as fast" in speed["statement"]
    assert "those that are fast enough, tiny (10.0×), is 5.0 points below the best" in speed["statement"]
    # met by a candidate that is not the recommendation (chosen by disk size)
    speed = report.recommendation(ROWS, "macro_f1", 0.01, "size_mb")["speed"]
    assert speed["meets_target"] and "not by the recommendation" in speed["statement"]
    speed = report.recommendation([row("s", "student", 0.8, 1.0, 10)], "macro_f1", 0.01)["speed"]
    assert not speed["meets_target"] and "No teacher" in speed["statement"]


# ---------------------------------------------------------------------------------------------
# flags


def flag_set(flags):
    return {(flag["flag"], flag["candidate"]) for flag in flags}


def test_flags_fire_on_hand_made_inputs(tiny_config):
    rows = [
        row("teacher", "teacher", 0.80, 10.0, 1000),
        row("other-teacher", "teacher", 0.70, 10.0, 1000),
        row("student-a", "student", 0.75, 3.0, 300, teachers=["teacher"]),
        row("student-a-nodistill", "student", 0.78, 3.0, 300, control_of="student-a"),  # distillation hurt
        row("student-b", "student", 0.76, 3.0, 300),
        row("student-b-nodistill", "student", 0.70, 3.0, 300, control_of="student-b"),  # distillation helped
        row("lora-on-other", "adapter", 0.72, 11.0, 1000, base_teacher="other-teacher"),  # beats its own base
        row("lora-on-teacher", "adapter", 0.79, 11.0, 1000, base_teacher="teacher"),      # below its base
        row("ia3-no-base", "adapter", 0.81, 11.0, 1000),                                   # beats the best teacher
        row("broken", "slice", 0.17, 1.0, 100),
        row("worse", "slice", 0.10, 1.0, 100),
        BASELINE,
    ]
    flags = report.find_flags(rows, "macro_f1")
    assert flag_set(flags) == {
        ("below_baseline", "broken"), ("below_baseline", "worse"),
        ("distillation_no_gain", "student-a"),
        ("adapter_beats_full_finetune", "lora-on-other"), ("adapter_beats_full_finetune", "ia3-no-base"),
    }
    message = next(f["message"] for f in flags if f["candidate"] == "lora-on-other")
    assert "other-teacher" in message and "0.7200 vs 0.7000" in message
    effects = {e["student"]: e["gain_points"] for e in report.distillation_effects(rows, "macro_f1")}
    assert effects == {"student-a": pytest.approx(-3.0), "student-b": pytest.approx(6.0)}

    # an adapter's base from the config: a teacher name, or the teacher's model reference
    config = tiny_config(
        teachers=[{"name": "teacher", "model": "tiny-bert-4l"}, {"name": "other-teacher", "model": "tiny-bert-2l"}],
        adapters=[{"name": "by-name", "base": "other-teacher"}, {"name": "by-ref", "base": "tiny-bert-2l"}])
    adapters = [row("by-name", "adapter", 0.75, 11.0, 1000), row("by-ref", "adapter", 0.75, 11.0, 1000)]
    flags = report.find_flags(rows[:2] + adapters, "macro_f1", config)
    assert flag_set(flags) == {("adapter_beats_full_finetune", "by-name"), ("adapter_beats_full_finetune", "by-ref")}
    assert report.find_flags(rows[:2] + adapters, "macro_f1") == []  # without the config: against the best teacher


# ---------------------------------------------------------------------------------------------
# the stage, end to end on hand-made metrics


def write_candidates(root, rows):
    dirs = []
    for candidate in rows:
        directory = root / candidate["name"]
        directory.mkdir(parents=True)
        (directory / "metrics.json").write_text(json.dumps(candidate))
        dirs.append(directory)
    return dirs


def probe_output(root):
    directory = root / "probe"
    directory.mkdir()
    layers = [{"layer": k, "validation": {"accuracy": 0.5 + 0.1 * k, "macro_f1": 0.45 + 0.1 * k},
               "test": {"accuracy": 0.5 + 0.1 * k, "macro_f1": 0.44 + 0.1 * k}} for k in (1, 2, 3, 4)]
    probe = {"model": "teacher", "depth": 4, "metric": "macro_f1", "best_layer": 4, "slices": [2], "layers": layers,
             "chance": {"majority": {"accuracy": 0.33, "macro_f1": 0.17}}}
    (directory / "probe.json").write_text(json.dumps(probe))
    return directory


CANDIDATES = [
    row("teacher", "teacher", 0.90, 10.0, 4_400_000, 17.0),
    row("student-2l", "student", 0.895, 4.0, 2_100_000, 8.4, teachers=["teacher"]),
    row("student-2l-nodistill", "student", 0.90, 4.0, 2_100_000, 8.4, control_of="student-2l"),
    dict(row("lora-q", "adapter", 0.80, 11.0, 4_420_000, 0.3), trainable_params=20_000),
    row("teacher-L2", "slice", 0.86, 5.0, 2_200_000, 8.5, layers=2),
]

URL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def test_report_stage_writes_a_self_contained_report(tmp_path, demo_data, tiny_config):
    config = tiny_config(report={"tolerance": 0.01})
    dirs = write_candidates(tmp_path / "metrics", CANDIDATES)
    board = report.run(config, demo_data, dirs, tmp_path / "report", probe_dir=probe_output(tmp_path))
    out = tmp_path / "report"

    on_disk = json.loads((out / "leaderboard.json").read_text())
    assert on_disk == json.loads(json.dumps(board))
    assert {"metric", "tolerance", "recommended", "reason", "candidates", "selected_on", "rule", "chance"} <= set(on_disk)
    assert on_disk["selected_on"] == "test" and on_disk["rule"] == "tolerance"  # made-up rows have no validation scores
    assert all(tuple(candidate) == report.LEADERBOARD_KEYS for candidate in on_disk["candidates"])
    assert [c["name"] for c in on_disk["candidates"]][:2] == ["student-2l-nodistill", "teacher"]  # by score, then name
    assert on_disk["candidates"][-1]["kind"] == "baseline"
    # the best are tied at 0.90; the faster one (the control) is the best and nothing within 1 pt is faster
    assert on_disk["recommended"] == "student-2l-nodistill"

    details = json.loads((out / "report.json").read_text())
    assert details["best"] == "student-2l-nodistill" and details["speed"]["meets_target"]
    assert details["speed"]["recommended_speedup"] == pytest.approx(2.5)
    assert flag_set(details["flags"]) == {("distillation_no_gain", "student-2l")}
    assert details["pareto_front"] == ["student-2l-nodistill"]  # as good as any and the fastest
    # what the report task shows in the KFP UI
    assert report.headline(out) == pytest.approx({"best_macro_f1": 0.90, "recommended_macro_f1": 0.90,
                                                  "recommended_latency_ms": 4.0, "recommended_points_lost": 0.0,
                                                  "recommended_speedup_vs_teacher": 2.5})

    for name in ("pareto.png", "confusion.png", "probe.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (out / "report.html").read_text()
    assert not URL.search(page), URL.search(page)
    assert "http://" not in page and "https://" not in page
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 3
    assert base64.b64decode(embedded[0]) == (out / "pareto.png").read_bytes()
    assert "Recommended: <strong>student-2l-nodistill</strong> has the best" in page and "distillation did not help student-2l" in page
    assert "meets the 2× target" in page

    markdown = (out / "report.md").read_text()
    assert "## Recommendation" in markdown and "![Quality against latency](pareto.png)" in markdown
    assert "| 1 | student-2l-nodistill ⭐ (best) | student |" in markdown
    assert "| student-2l | 0.8950 | student-2l-nodistill | 0.9000 | -0.5 |" in markdown
    lora_line = next(line for line in markdown.splitlines() if line.startswith("| ") and "| lora-q |" in line)
    assert "| 0.45% |" in lora_line  # 20k of 4.42M trainable
    assert json.loads((out / "probe.json").read_text())["best_layer"] == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recommended"] == "student-2l-nodistill" and summary["flags"] == ["distillation_no_gain:student-2l"]


def test_report_says_honestly_when_none_qualifies(tmp_path, demo_data, tiny_config):
    rows = [row("teacher", "teacher", 0.90, 10.0, 4_400_000), row("student", "student", 0.80, 2.0, 1_000_000)]
    report.run(tiny_config(), demo_data, write_candidates(tmp_path / "metrics", rows), tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    assert "None qualifies: no candidate within 1.0 pt of the best test macro-F1 is at least 2× faster" in page
    assert page.count("data:image/png;base64,") == 2  # no probe: Pareto + confusion only
    assert not (tmp_path / "report" / "probe.png").exists()


def test_report_refuses_bad_inputs_and_leaves_nothing(tmp_path, demo_data, tiny_config):
    twice = write_candidates(tmp_path / "a", [row("same", "teacher", 0.9, 1.0, 10)]) + \
        write_candidates(tmp_path / "b", [row("same", "student", 0.8, 1.0, 10)])
    with pytest.raises(UserError, match="repeated: same"):
        report.run(tiny_config(), demo_data, twice, tmp_path / "out")
    with pytest.raises(UserError, match="no probe.json"):
        report.run(tiny_config(), demo_data, twice[:1], tmp_path / "out", probe_dir=tmp_path / "a")
    with pytest.raises(UserError, match="no metrics.json"):
        report.run(tiny_config(), demo_data, [tmp_path], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))


def test_cli_prints_the_recommendation_and_the_html_path(tmp_path, demo_data, tiny_config, capsys):
    from rightsizer import cli

    out = tmp_path / "run"
    report.run(tiny_config(), demo_data, write_candidates(tmp_path / "metrics", CANDIDATES[:2]), out)
    cli._print_run(out, 1.0)
    printed = capsys.readouterr().out
    assert "recommended: student-2l" in printed and "2.5× faster" in printed
    assert str(out / "report.html") in " ".join(printed.split())


def test_every_figure_draws_without_a_display(tmp_path):
    # the plotting functions on edge cases: one candidate, a row without latency, many classes
    decision = report.recommendation([row("only", "teacher", 0.7, 3.0, 10)], "macro_f1", 0.01)
    assert report.plot_pareto([row("only", "teacher", 0.7, 3.0, 10), row("x", "prompting", 0.6, None, 10)], "macro_f1",
                              decision, 0.01, tmp_path / "one.png")
    assert not report.plot_pareto([BASELINE], "macro_f1", decision, 0.01, tmp_path / "none.png")
    many = [f"c{i}" for i in range(20)]
    wide = dict(row("wide", "teacher", 0.5, 1.0, 10), labels=many, confusion_matrix=np.eye(20, dtype=int).tolist())
    assert report.plot_confusions([wide], tmp_path / "wide.png")
    assert not report.plot_probe({"layers": []}, [], "macro_f1", tmp_path / "p.png")
    for name in ("one.png", "wide.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert list(itertools.chain(tmp_path.glob("none.png"), tmp_path.glob("p.png"))) == []


def test_report_component_fills_its_artifacts(tmp_path, demo_data, tiny_config):
    """The KFP component as a task calls it: metrics artifacts by kind in, report + Markdown + HTML + headline out."""
    from kfp import dsl

    from components.report import report as component
    from conftest import artifact

    dirs = write_candidates(tmp_path / "metrics", CANDIDATES)
    by_kind = {}
    for directory, candidate in zip(dirs, CANDIDATES):
        by_kind.setdefault(candidate["kind"], []).append(artifact(dsl.Artifact, directory))
    out = artifact(dsl.Artifact, tmp_path / "report")
    markdown, html = artifact(dsl.Markdown, tmp_path / "report.md"), artifact(dsl.HTML, tmp_path / "report.html")
    headline = artifact(dsl.Metrics, tmp_path / "headline")
    component.python_func(config_json=tiny_config(report={"tolerance": 0.01}).to_json(),
                          data=artifact(dsl.Dataset, demo_data), report_dir=out, markdown=markdown, html=html,
                          headline=headline, teacher_metrics=by_kind["teacher"], student_metrics=by_kind["student"],
                          adapter_metrics=by_kind["adapter"], slice_metrics=by_kind["slice"],
                          probe=artifact(dsl.Artifact, probe_output(tmp_path)))
    board = json.loads((tmp_path / "report" / "leaderboard.json").read_text())
    assert {c["name"] for c in board["candidates"]} == {c["name"] for c in CANDIDATES} | {"majority-baseline"}
    assert board["recommended"] == out.metadata["recommended"] == "student-2l-nodistill"
    assert (tmp_path / "report.md").read_text() == (tmp_path / "report" / "report.md").read_text()
    assert "## Recommendation" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 3  # with the probe's plot
    assert headline.metadata == pytest.approx({"best_macro_f1": 0.90, "recommended_macro_f1": 0.90,
                                               "recommended_latency_ms": 4.0, "recommended_points_lost": 0.0,
                                               "recommended_speedup_vs_teacher": 2.5})


# the HTML report as a browser lays it out: nothing wider than the window, the star drawn, figures scaled
MEASURE = """<script>addEventListener("load", () => {
  const table = document.querySelector("table"), star = document.querySelector("tr.rec svg.star");
  document.title = JSON.stringify({page: document.documentElement.scrollWidth, window: innerWidth,
    table: table.scrollWidth, room: table.parentElement.clientWidth, star: star ? star.getBoundingClientRect().width : 0,
    glyph: document.body.innerText.includes("\\u2b50"), images: [...document.images].map(i => i.width <= i.parentElement.clientWidth
      && i.naturalWidth > 0)});
});</script>"""


def browser_layout(page: str, tmp_path, width: int) -> dict:
    """The page's measures (``MEASURE``) in headless Chromium at ``width`` px, read back from the title."""
    measured = tmp_path / f"measured-{width}.html"
    measured.write_text(page.replace("</body>", MEASURE + "</body>"))
    done = subprocess.run([shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-background-networking", "--disable-component-update", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},1000", "--dump-dom",
                           measured.as_uri()], capture_output=True, text=True, timeout=60)
    title = re.search(r"<title>(\{.*?\})</title>", done.stdout)
    assert title, done.stderr[-2000:]
    return json.loads(html.unescape(title.group(1)))


@pytest.mark.skipif(not shutil.which("chromium"), reason="no chromium on this machine (apt-get install chromium)")
def test_html_report_fits_the_browser_window(tmp_path, demo_data, tiny_config):
    def longer(name):
        return name.replace("student-2l", "student-6l-from-teacher-bert-base-uncased") if name else name

    long_names = [dict(candidate, name=longer(candidate["name"]), control_of=longer(candidate.get("control_of")),
                       macro_f1_ci=[candidate["macro_f1"] - 0.031, candidate["macro_f1"] + 0.027],
                       val_macro_f1=candidate["macro_f1"] - 0.004, val_accuracy=candidate["accuracy"] + 0.01)
                  for candidate in CANDIDATES]
    report.run(tiny_config(), demo_data, write_candidates(tmp_path / "metrics", long_names), tmp_path / "report",
               probe_dir=probe_output(tmp_path))
    page = (tmp_path / "report" / "report.html").read_text()
    wide, narrow = browser_layout(page, tmp_path, 1300), browser_layout(page, tmp_path, 800)
    assert wide["page"] <= wide["window"] and wide["table"] <= wide["room"], wide  # the leaderboard fits at 1300 px
    assert narrow["page"] <= narrow["window"], narrow  # narrower, the table scrolls in its box, not the page
    for layout in (wide, narrow):
        assert layout["star"] > 5 and not layout["glyph"], layout  # drawn, not left to a font that may lack it
        assert len(layout["images"]) == 3 and all(layout["images"]), layout
