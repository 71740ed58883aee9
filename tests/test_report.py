"""`t2 report` on small hand-made results files: every number of the table checked against values
worked out by hand (Wilson intervals, category means, letter entropy, McNemar), the chart, the quotes."""

from __future__ import annotations

import json
import re

import pytest

from transformer_squared.cli import main
from transformer_squared.report.comparison import compare
from transformer_squared.errors import ConfigError

CATS = ("STEM", "Social Science", "Humanities", "Other")
ANSWERS = "ABCDABAC"  # q1..q8, two questions per category in CATS order


def _results(label: str, preds: str, reference: bool = False, task_split: str = "valid") -> dict:
    rows = [{"id": f"q{i + 1}", "subject": f"s{i // 2}", "category": CATS[i // 2], "answer": a,
             "prediction": {"letter": p}, "correct": {"letter": p == a}, "completion": ""}
            for i, (a, p) in enumerate(zip(ANSWERS, preds))]
    return {"label": label, "reference": "constant" if reference else None, "model": "tiny-model",
            "created": "2025-01-02T03:04:05+00:00", "git": {"hash": "abc123def456"}, "protocol": ["letter"],
            "task": {"name": "vmlu", "split": task_split, "part": None},
            "metrics": {"letter": {"categories": {c: {} for c in CATS}}}, "predictions": rows}


def _write(tmp_path, name: str, res: dict):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(res))
    return str(path)


def test_report_numbers_match_hand_computation(tmp_path, capsys):
    files = [_write(tmp_path, "base", _results("base", "AAAAAAAA")),
             _write(tmp_path, "lora", _results("LoRA", "ABCABBAC")),
             _write(tmp_path, "const", _results("best constant (A)", "AAAAAAAA", reference=True))]
    main(["report", *files, "--out", str(tmp_path / "rep"), "--quote", "seed"])
    md = (tmp_path / "rep" / "report.md").read_text()
    # base: right on q1, q5, q7 → 3/8; per category 1/2, 0/2, 1/2, 1/2. Wilson 95 %: 1/2 → [9.5, 90.5],
    # 0/2 → [0.0, 65.8], 3/8 → [13.7, 69.4]; mean of categories 37.5, MOVER over the Wilson limits:
    # 37.5 − √(3·((50 − 9.45)/4)²) and 37.5 + √(3·((90.55 − 50)/4)² + (65.76/4)²) → [19.9, 61.6]
    assert ("| base | 50.0 [9.5, 90.5] | 0.0 [0.0, 65.8] | 50.0 [9.5, 90.5] | 50.0 [9.5, 90.5] | 37.5 [13.7, 69.4] "
            "| 37.5 [19.9, 61.6] | 8 | 0.00 [0.00, 0.00] |") in md
    # LoRA: right on q1 q2 q3 q6 q7 q8 → 6/8; categories 2/2, 1/2, 1/2, 2/2 (2/2 → [34.2, 100.0]; 6/8 → [40.9, 92.9]);
    # mean 75.0, MOVER: 75 − √(2·(65.8/4)² + 2·(40.55/4)²) … → [47.7, 89.3]; letters A 3, B 3, C 2 → entropy 1.56 bits
    lora = next(x for x in md.splitlines() if x.startswith("| LoRA |"))
    assert lora.startswith("| LoRA | 100.0 [34.2, 100.0] | 50.0 [9.5, 90.5] | 50.0 [9.5, 90.5] | 100.0 [34.2, 100.0] "
                           "| 75.0 [40.9, 92.9] | 75.0 [47.7, 89.3] | 8 | 1.56 [")
    assert "| *best constant (A)* | 50.0 [9.5, 90.5] |" in md  # a reference row, marked
    assert "| LoRA | 37.5 | 37.5 | 25.0 |" in md and "| base | 100.0 | 0.0 | 0.0 |" in md  # predicted letters, %
    # paired against base: base alone right on q5, LoRA alone right on q2 q3 q6 q8 → McNemar p = 2·(1+5)/2⁵ = 0.375
    paired = next(x for x in md.splitlines() if x.startswith("| LoRA | 8 |"))
    m = re.match(r"\| LoRA \| 8 \| 37\.5 \| 75\.0 \| \+37\.5 \[([+-][\d.]+), ([+-][\d.]+)\] \| 1 \| 4 \| 0\.375 \|", paired)
    assert m and float(m[1]) <= 37.5 <= float(m[2])
    assert "vmlu · valid · tiny-model" in md and "2025-01-02" in md and "Protocol letter" in md
    assert "| LoRA (quoted) | 45.41 | 55.66 | 53.00 | 47.69 | 49.89 |" in md and "3a6f1d3" in md
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["rows"][1]["entropy_bits"] == pytest.approx(-(2 * 3 / 8 * __import__("math").log2(3 / 8) + 0.25 * -2))
    png = (tmp_path / "rep" / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    screen = capsys.readouterr().out
    lora_line = next(x for x in screen.splitlines() if x.startswith("LoRA "))  # 80 columns: the compact table
    assert lora_line.split() == ["LoRA", "100.0", "50.0", "50.0", "100.0", "75.0", "75.0", "8"]


def test_report_refuses_mixed_splits_and_repeated_labels():
    with pytest.raises(ConfigError, match="different tasks or splits"):
        compare([("a", _results("base", "AAAAAAAA")), ("b", _results("LoRA", "AAAAAAAA", task_split="test"))])
    with pytest.raises(ConfigError, match="label 'base' names several"):
        compare([("a", _results("base", "AAAAAAAA")), ("b", _results("base", "BBBBBBBB"))])
    with pytest.raises(ConfigError, match="no 'generate' predictions"):
        compare([("a", _results("base", "AAAAAAAA"))], protocol="generate")


def test_chart_whiskers_clamped_at_the_point(tmp_path, monkeypatch):
    """A Wilson bound at 0 % or 100 % can miss the point by a rounding error; the whisker is then 0, not
    negative (matplotlib refuses a negative error and the whole chart was lost)."""
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    from transformer_squared.report.chart import bar_chart
    from transformer_squared.report.comparison import AVERAGE

    comp = compare([("b", _results("base", "AAAAAAAA")), ("l", _results("LoRA", "ABCABBAC"))])
    row = comp.rows[0]
    row.cells["Social Science"] = (0.0, [1e-17, 0.658])  # lower bound a hair above 0 %
    row.cells["STEM"] = (1.0, [0.342, 1.0 - 1e-16])  # upper bound a hair below 100 %
    seen = []
    real_barh = matplotlib.axes.Axes.barh

    def spy(self, y, width, *args, xerr=None, **kw):
        seen.append((self, y, width, xerr[0][0], xerr[1][0]))  # the panel's title is set after its bars
        return real_barh(self, y, width, *args, xerr=xerr, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "barh", spy)
    png = bar_chart(comp, tmp_path / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(seen) == 2 * 6  # two systems × (four categories, average, mean of categories)
    bars = {(ax.get_title(), y): (w, lo, hi) for ax, y, w, lo, hi in seen}
    assert bars["STEM", 0] == (100.0, pytest.approx(65.8), 0.0)  # (value, below, above), independent values
    assert bars["Social Science", 0] == (0.0, 0.0, pytest.approx(65.8))
    assert min(min(lo, hi) for _, _, _, lo, hi in seen) >= 0.0
    avg_acc, (avg_lo, avg_hi) = row.cells[AVERAGE]
    w, lo, hi = bars[AVERAGE, 0]
    assert w == pytest.approx(100 * avg_acc) and lo == pytest.approx(100 * (avg_acc - avg_lo))
    assert hi == pytest.approx(100 * (avg_hi - avg_acc))
    assert bars["STEM", 1][0] == pytest.approx(100.0) and bars["Other", 1][0] == pytest.approx(100.0)  # LoRA: 2/2 each


def test_chart_dashes_the_row_named_by_base(tmp_path, monkeypatch):
    """The dashed reference line is the `--base` row's value in each panel, not a row that happens to be called base."""
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    from transformer_squared.report.chart import bar_chart

    comp = compare([("b", _results("base", "AAAAAAAA")), ("l", _results("LoRA", "ABCABBAC"))], base="LoRA")
    lines = []
    real = matplotlib.axes.Axes.axvline
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline", lambda self, x, *a, **k: lines.append(x) or real(self, x, *a, **k))
    bar_chart(comp, tmp_path / "chart.png")
    # LoRA per category 2/2, 1/2, 1/2, 2/2; average 6/8; mean of categories 0.75 (worked out in the first test)
    assert lines == pytest.approx([100.0, 50.0, 50.0, 100.0, 75.0, 75.0])


def test_report_bolds_only_what_mcnemar_and_the_ci_both_call_significant(tmp_path):
    """0 vs 4 discordant answers in 40: the bootstrap CI excludes 0 (≈ [+2.5, +20.0]) but McNemar's p = 0.125;
    the report states its one rule and does not bold the difference. The reference row says what it is."""
    def res(label, right, reference=False):
        rows = [{"id": f"q{i}", "subject": "s", "category": CATS[i % 4], "answer": "A",
                 "prediction": {"letter": "A" if ok else "B"}, "correct": {"letter": ok}, "completion": ""}
                for i, ok in enumerate(right)]
        return _results(label, "", reference) | {"predictions": rows}

    base = [False] * 4 + [True] * 20 + [False] * 16
    files = [_write(tmp_path, "base", res("base", base)), _write(tmp_path, "exp", res("expert", [True] * 24 + [False] * 16)),
             _write(tmp_path, "const", res("best constant (A)", [True] * 40, reference=True))]
    main(["report", *files, "--out", str(tmp_path / "rep"), "--no-chart"])
    md = (tmp_path / "rep" / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| expert | 40 |"))
    m = re.search(r"\| (\*\*)?\+10\.0 \[([+-][\d.]+), [+-][\d.]+\](\*\*)? \| 0 \| 4 \| 0\.125 \|", line)
    assert m and float(m[2]) > 0 and not m[1] and not m[3]
    assert "McNemar's exact p < 0.05 and the paired bootstrap 95 % CI excludes 0" in md
    assert "the score of always answering X only" in md


def test_pass1_section_routing_accuracy_confusion_and_the_one_line_verdict(tmp_path):
    """A two-pass row gets its routing accuracy (counted here by hand) and confusion table in the section that
    ends report.md; the last line names the row whose paired difference is significant (20 vs 0 discordant
    answers in 40), not the one that equals base; without such a row it says that none differs."""
    from transformer_squared.report.tables import verdict_line

    def res(label, right, decisions=None):
        rows = [{"id": f"q{i}", "subject": "s", "category": CATS[i % 4], "answer": "A",
                 "prediction": {"letter": "A" if ok else "B"}, "correct": {"letter": ok}, "completion": ""}
                | ({"routing": {"decision": decisions[i], "alpha": None}} if decisions else {})
                for i, ok in enumerate(right)]
        two_pass = {"routing": {"decisions": {}}, "experts": [{"label": "STEM"}, {"label": "Humanities"}]}
        return _results(label, "") | {"predictions": rows} | (two_pass if decisions else {})

    cats = [CATS[i % 4] for i in range(40)]
    decisions = [c if i % 3 else "base" for i, c in enumerate(cats)]  # every third question goes to the base
    base = [True] * 20 + [False] * 20
    named = [("b", res("base", base)), ("e", res("expert STEM", base)),
             ("t", res("Transformer² (prompt)", [True] * 40, decisions))]
    files = [_write(tmp_path, name, r) for name, r in named]
    main(["report", *files, "--out", str(tmp_path / "rep"), "--no-chart"])
    md = (tmp_path / "rep" / "report.md").read_text().splitlines()
    at = md.index("### What pass 1 decided")
    pairs = [(c, d) for c, d in zip(cats, decisions) if c in ("STEM", "Humanities")]
    k, n = sum(c == d for c, d in pairs), len(pairs)
    assert (k, n) == (13, 20)
    assert md[at + 2].startswith(f"Transformer² (prompt): routing accuracy {100 * k / n:.1f} % [") and f"({k} of n = {n} " in md[at + 2]
    stem = [d for c, d in zip(cats, decisions) if c == "STEM"]
    cols = sorted(set(decisions))
    assert "| category | " + " | ".join(cols) + " |" in md[at:]
    assert "| STEM | " + " | ".join(str(stem.count(c)) for c in cols) + " |" in md[at:]
    assert md[-1].startswith("Differ from base beyond their CI (significant: McNemar") and "Transformer² (prompt) +50.0 points" in md[-1]
    assert "expert STEM" not in md[-1]
    comp = compare(named[:2])
    assert not comp.routing and verdict_line(comp) == ("No system differs from base beyond its CI on these 40 questions "
                                                      "(significant: McNemar's exact p < 0.05 and the paired bootstrap "
                                                      "95 % CI excludes 0 (both tests must agree)).")


def _demo_like_comparison():
    """Four categories and the rows `make demo` prints, with varied answers."""
    labels = ["base", "LoRA", "expert STEM", "expert Humanities", *(f"Transformer² ({s})" for s in
              ("prompt", "cls", "fewshot", "oracle", "uniform"))]
    preds = ["AAAAAAAA", "ABCABBAC", "ABCDABAC", "DCBADCBA", "ABCDAAAA", "BBBBABAC", "ABCDDDDD", "CCCCABAC", "ABAB ABA"]
    return compare([(str(i), _results(label, p)) for i, (label, p) in enumerate(zip(labels, preds))])


@pytest.mark.parametrize("width", [80, 100])
def test_comparison_table_on_a_narrow_terminal_keeps_each_row_on_one_line(width):
    """In 80 columns the full table wrapped every cell over three lines: now accuracy and n, one line per row."""
    from rich.console import Console

    from transformer_squared.report.comparison import AVERAGE, MEAN
    from transformer_squared.report.tables import comparison_table

    comp = _demo_like_comparison()
    console = Console(width=width, record=True, color_system=None)
    console.print(comparison_table(comp))
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    for row in comp.rows:  # the label, every accuracy and n on the row's one line
        mine = [line for line in lines if line.strip().startswith(row.label + " ")]
        cells = [f"{100 * row.cells[c][0]:.1f}" for c in (*comp.categories, AVERAGE, MEAN)] + [str(row.n)]
        assert len(mine) == 1 and mine[0].split()[-len(cells):] == cells, (row.label, lines)
    assert "report.md" in text and "[" not in text  # no CI: they stay in the report


def test_comparison_table_on_a_wide_terminal_shows_the_cis():
    from rich.console import Console

    from transformer_squared.report.tables import comparison_table

    comp = _demo_like_comparison()
    console = Console(width=250, record=True, color_system=None)
    console.print(comparison_table(comp))
    text = console.export_text()
    lora = next(r for r in comp.rows if r.label == "LoRA")
    ci = lora.cells["STEM"][1]
    assert f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" in text and "entropy" in text
