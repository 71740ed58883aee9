"""benchmarks/two_pass_evidence.py's table stage on tiny hand-written results: accuracies, routing accuracy, the
paired difference to the base model and the constant-answer references, each checked against a count by hand."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bench(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("two_pass_evidence", ROOT / "benchmarks" / "two_pass_evidence.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(mod, "OUT", tmp_path / "out")
    monkeypatch.setattr(mod, "TABLE", tmp_path / "table")
    monkeypatch.setattr(mod, "_train_answers", lambda f: Counter({"7": 3, "1": 1}))  # training part's gold answers
    return mod


def _write(mod, row: str, family: str, golds: list[str], preds: list[str], decisions: list[str] | None = None):
    rows = [{"id": f"{family}-{i}", "answer": g, "prediction": {"generate": p}, "correct": {"generate": p == g}}
            | ({"routing": {"decision": decisions[i], "alpha": None}} if decisions else {})
            for i, (g, p) in enumerate(zip(golds, preds))]
    path = mod.OUT / row.replace(":", "_") / f"{family}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"predictions": rows}))


def test_table_counts(bench):
    fams = tuple(bench.Family(label, "d", "rg-direct", None, None, 4, ()) for label in ("add", "name"))
    for f in fams:
        (f.expert).mkdir(parents=True)
        (f.expert / "expert.json").write_text(json.dumps({"metrics": {"step": 5}}))
    gold = {"add": ["7", "7", "3", "1"], "name": ["Ann", "Bo", "Cy", "Di"]}
    _write(bench, "base", "add", gold["add"], ["7", "0", "0", "0"])  # 1/4
    _write(bench, "base", "name", gold["name"], ["Ann", "x", "x", "x"])  # 1/4
    _write(bench, "expert:add", "add", gold["add"], ["7", "7", "3", "1"])  # 4/4: 3 gains, 0 losses
    _write(bench, "expert:add", "name", gold["name"], ["x", "x", "x", "x"])  # 0/4
    _write(bench, "expert:name", "add", gold["add"], ["7", "0", "0", "0"])  # 1/4
    _write(bench, "expert:name", "name", gold["name"], ["Ann", "Bo", "x", "x"])  # 2/4
    _write(bench, "prompt", "add", gold["add"], ["7", "7", "3", "0"], ["add", "add", "add", "name"])  # 3/4
    _write(bench, "prompt", "name", gold["name"], ["Ann", "Bo", "x", "x"], ["name", "add", "name", "name"])  # 2/4
    _write(bench, "uniform", "add", gold["add"], ["7", "7", "0", "0"], ["mixture"] * 4)  # 2/4
    _write(bench, "uniform", "name", gold["name"], ["x", "x", "x", "x"], ["mixture"] * 4)  # 0/4
    _write(bench, "fewshot", "add", gold["add"], ["7", "7", "0", "0"])  # one family only: not a complete row
    bench.table(fams)

    out = json.loads(bench.TABLE.with_suffix(".json").read_text())
    add = out["single_experts"][0]
    assert (add["base"]["accuracy"], add["expert"]["accuracy"]) == (0.25, 1.0)
    assert add["difference"]["mcnemar_p"] == pytest.approx(2 / 2**3)  # 3 discordant pairs, all gains
    assert (add["train_majority_answer"], add["train_majority_acc"]) == ("7", 0.5)  # "7" is 2 of the 4 golds
    assert (add["best_constant_answer"], add["best_constant_acc"]) == ("7", 0.5)
    assert add["answers_base"] == {"0": 3, "7": 1} and add["expert_step"] == 5
    rows = {r["row"]: r for r in out["rows"]}
    assert list(rows) == ["base", "expert:add", "expert:name", "uniform", "prompt"]  # fewshot lacks a family
    assert rows["uniform"]["routing"] is None and rows["uniform"]["overall"]["accuracy"] == 0.25
    assert rows["expert:add"]["overall"]["accuracy"] == pytest.approx(4 / 8)
    prompt = rows["prompt"]
    assert prompt["overall"]["n"] == 8 and prompt["overall"]["accuracy"] == pytest.approx(5 / 8)
    assert prompt["routing"]["accuracy"] == pytest.approx(6 / 8)  # 3 of 4 "add", 3 of 4 "name" routed right
    assert prompt["families"]["name"]["decisions"] == {"name": 3, "add": 1}
    assert prompt["vs_base"]["diff"] == pytest.approx(3 / 8)  # 5/8 − 2/8
    md = bench.TABLE.with_suffix(".md").read_text()
    assert "| prompt | 75.0 [" in md and "| 62.5 [" in md
    assert "| prompt | add×3, name×1 | name×3, add×1 |" in md


def test_training_diagnostics_and_curves(bench):
    run = bench.RUNS / "add"
    run.mkdir(parents=True)
    rows = [{"step": 0, "val_acc": 0.5, "n_val": 4}]
    rows += [{"step": s, "loss": 0.1, "reward": r, "reward_sd": sd, "kl": 0.0, "z_dist": 0.1 * s, "seconds": 2.0}
             for s, r, sd in [(1, -0.5, 0.5), (2, 0.0, 0.0), (3, 0.5, 1.0), (4, 1.0, 0.0)]]
    rows += [{"step": 4, "val_acc": 0.75, "n_val": 4}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (d,) = bench.diagnostics({"add": run, "missing": bench.RUNS / "none"})
    assert (d["steps"], d["reward_first"], d["reward_last"]) == (4, -0.5, 1.0)  # quarters of 4 steps: one step each
    assert d["flat_steps"] == 0.5 and d["z_dist"] == pytest.approx(0.4) and d["val"] == [(0, 0.5, 4), (4, 0.75, 4)]
    png = bench.curves({"add": run}, bench.TABLE.with_name("curves.png"))
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| add | 4 | 2.0 | -0.500 → +1.000 | 50 % | – | 0.400 |" in bench.diagnostics_markdown([d], png)


def test_the_strategies_use_the_run_validation_chose(bench, monkeypatch):
    first = bench.Family("add", "d", "rg-direct", None, None, 4, ())
    second = bench.Family("add", "d", "rg-direct", None, None, 4, (), variant="group")
    other = bench.Family("name", "d", "rg-direct", None, None, 4, ())
    monkeypatch.setattr(bench, "FAMILIES", (first, other))
    monkeypatch.setattr(bench, "SWEEP", (second,))
    for f, val in ((first, 0.45), (second, 0.6), (other, 0.3)):
        f.expert.mkdir(parents=True)
        (f.expert / "expert.json").write_text(json.dumps({"metrics": {"step": 3, "best_val": val}}))
    assert bench.chosen(first) is second and bench.chosen(other) is other
    (row,) = bench.row_args("cls", other)
    assert row[row.index("--experts") + 1 : row.index("--experts") + 3] == [str(second.expert), str(other.expert)]
    assert [r[0] for r in bench.row_args("expert", other)] == ["expert:add-group", "expert:name"]
    assert bench.row_args("own", first)[0][:3] == ["expert:add", "--expert", str(first.expert)]


def test_a_continued_run_starts_from_a_copy_and_is_kept_out_of_the_mixed_set(bench, monkeypatch):
    first = bench.Family("add", "d", "rg-direct", "add:9", None, 4, ("--steps", "2"), variant="group")
    longer = bench.Family("add", "d", "rg-direct", "add:9", None, 4, ("--steps", "4"), continues="add-group", mixed=False,
                          variant="long")
    monkeypatch.setattr(bench, "FAMILIES", ())
    monkeypatch.setattr(bench, "SWEEP", (first, longer))
    (first.run / "latest").mkdir(parents=True)
    first.expert.mkdir(parents=True)
    (first.expert / "expert.json").write_text(json.dumps({"metrics": {"step": 2, "best_val": 0.5}}))
    calls = []
    monkeypatch.setattr(bench, "t2", lambda *a, log=None: calls.append(a))
    bench.train((longer,))
    assert (longer.run / "latest").is_dir() and (longer.expert / "expert.json").is_file()  # a copy of add-group
    assert "--resume" in calls[0] and calls[0][calls[0].index("--out") + 1] == str(longer.run)
    (longer.expert / "expert.json").write_text(json.dumps({"metrics": {"step": 4, "best_val": 0.9}}))
    assert bench.chosen(longer) is first  # validation prefers it, but it was not in the mixed set
