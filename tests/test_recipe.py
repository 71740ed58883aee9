"""Recipes: every shipped YAML loads; a tiny recipe runs end to end on the tiny model (shared split, experts,
baselines, holdout evaluation, submissions, report, generations), a rerun skips it, a changed setting is refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from transformer_squared.cli import main
from transformer_squared.config import load_config
from transformer_squared.recipe.config import RecipeConfig, is_recipe, load_recipe, slug
from transformer_squared.tasks.vmlu import category_of
from transformer_squared.training import splits
from transformer_squared.training.train import TrainConfig

import strategy_first  # noqa: F401  (registers `first`: the default eval.strategies lists it too)
from vmlu_files import SUBJECTS, write_vmlu

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_yaml_loads():
    files = sorted((REPO / "recipes").glob("*.yaml"))
    assert any(is_recipe(f) for f in files)
    for path in files:
        assert path.read_text(encoding="utf-8").startswith("#"), f"{path} must open with a comment"
        if is_recipe(path):
            cfg = load_recipe(path, data="somewhere")
            assert cfg.data.path == "somewhere" and cfg.out_dir().name
        else:
            load_config(TrainConfig, path)


TINY = {
    "name": "tiny",
    "data": {"task": "vmlu", "val_fraction": 0.25, "holdout_fraction": 0.25, "seed": 3, "test_split": "test"},
    "experts": {"categories": ["STEM", "Humanities"],
                "train": {"steps": 1, "batch_size": 4, "micro_batch_size": 4, "eval_every": 1, "lr": 0.01}},
    "router": {"train": {"steps": 1, "batch_size": 4, "micro_batch_size": 4, "eval_every": 1}},
    "baselines": {"methods": ["lora"], "lora": {"steps": 1, "batch_size": 4, "micro_batch_size": 4}},
    "eval": {"batch_size": 16, "strategy": {"fewshot": {"shots": 3, "population": 4, "generations": 2},
                                            "first": {"expert": 1}}},
    "report": {"n_boot": 200, "generate": ["Hello"], "max_new_tokens": 3},
}


def test_tiny_recipe_end_to_end_then_skips_and_refuses_changes(tmp_path, tiny_model_dir, capsys):
    data = write_vmlu(tmp_path / "vmlu", per_subject=4, distinct_ids=True)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("# tiny\n" + yaml.safe_dump(TINY | {"model": {"name": str(tiny_model_dir), "device": "cpu"}}))
    out = tmp_path / "out"
    main(["recipe", "run", str(recipe), "--data", str(data), "--out", str(out)])
    screen = capsys.readouterr().out
    shared = splits.load_split(out)
    assert shared["counts"] == {"train": 32, "val": 16, "holdout": 16}  # per subject of 8: 4 train, 2 val, 2 holdout
    own = splits.load_split(out / "experts" / "stem")  # the expert: the STEM questions of each shared part
    for part in splits.PARTS:
        stem = [i for i in shared["ids"][part] if category_of(i) == "STEM"]
        assert sorted(own["ids"][part]) == sorted(stem) and stem
    assert splits.load_split(out / "baselines" / "lora")["ids"] == shared["ids"]  # baselines: the whole train part
    strategies = [f"Transformer² ({x})" for x in ("prompt", "cls", "fewshot", "oracle", "uniform", "first")]
    labels = ["base", "best constant", "LoRA", "expert STEM", "expert Humanities", *strategies]
    for label in labels:
        res = json.loads((out / "eval" / f"{slug(label)}.json").read_text())
        assert res["label"].startswith(label) and sorted(r["id"] for r in res["predictions"]) == sorted(shared["ids"]["holdout"])
        with open(out / "submissions" / f"{slug(label)}.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["id", "answer"] and len(rows) - 1 == 4 * len(SUBJECTS)
    oracle = json.loads((out / "eval" / "transformer-oracle.json").read_text())
    for r in oracle["predictions"]:  # the oracle sends each question to its category's expert, else to the base
        assert r["routing"]["decision"] == (f"{r['category']}" if r["category"] in ("STEM", "Humanities") else "base")
    first = json.loads((out / "eval" / "transformer-first.json").read_text())  # a strategy added as one file
    assert first["strategy"]["expert"] == 1 and all(r["routing"]["decision"] == "Humanities" for r in first["predictions"])
    alpha = json.loads((out / "fit" / "fewshot.json").read_text())  # found on shots of the validation part
    assert len(alpha["shots"]) == 3 and set(alpha["shots"]) <= set(shared["ids"]["val"]) and len(alpha["alpha"]) == 2
    assert (out / "router" / "best" / "expert.json").is_file()
    check_report_against_results(out, labels, data, shared)
    check_pass1_section(out, strategies, screen)
    report = (out / "report" / "report.md").read_text()
    assert all(f"| {x} |" in report for x in labels[:1] + labels[2:]) and "| *best constant (" in report
    assert (out / "report" / "chart.png").is_file() and "expert STEM" in screen
    gens = json.loads((out / "generations.json").read_text())
    assert set(gens[0]["answers"]) == {"base", "LoRA", "expert STEM", "expert Humanities"}

    markers = [json.loads(p.read_text()) for p in sorted((out / "stages").iterdir())]
    rss = [m["max_rss_mb"] for m in sorted(markers, key=lambda m: (m["finished"], m["max_rss_mb"]))]  # peak so far
    assert rss == sorted(rss) and rss[0] > 50 and all(m["cpu_seconds"] >= 0 for m in markers)
    before = {p: p.stat().st_mtime_ns for p in (out / "stages").iterdir()}
    main(["recipe", "run", str(recipe), "--data", str(data), "--out", str(out)])
    assert "complete, skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "stages").iterdir()} == before
    with pytest.raises(SystemExit) as exc:
        main(["recipe", "run", str(recipe), "--data", str(data), "--out", str(out), "--experts.train.lr", "0.5"])
    assert exc.value.code == 2 and "completed with other settings" in capsys.readouterr().err


def check_report_against_results(out: Path, labels: list[str], data: Path, shared: dict) -> None:
    """report.json's numbers recounted from the per-question predictions of eval/*.json (plain counting, no
    library code): n, per-category and weighted accuracy, letter counts, the paired discordant counts against
    base, and the constant row's letters from the answers of the shared train part."""
    rep = json.loads((out / "report" / "report.json").read_text())
    rows = {r["label"]: r for r in rep["rows"]}
    preds = {}
    for label in labels:
        res = json.loads((out / "eval" / f"{slug(label)}.json").read_text())
        preds[label] = {p["id"]: p for p in res["predictions"]}
        row = rows[res["label"]]
        got = [(p["category"], p["prediction"]["letter"] == p["answer"]) for p in res["predictions"]]
        assert row["n"] == len(got) == 16
        assert row["cells"]["Average"]["accuracy"] == pytest.approx(sum(ok for _, ok in got) / len(got))
        for cat in {c for c, _ in got}:
            in_cat = [ok for c, ok in got if c == cat]
            assert row["cells"][cat]["accuracy"] == pytest.approx(sum(in_cat) / len(in_cat))
        letters = [p["prediction"]["letter"] for p in res["predictions"]]
        assert row["letters"] == {x: letters.count(x) for x in set(letters)}
    for pair in rep["paired"]:
        label = next(x for x in labels if pair["label"].startswith(x))
        base, other = preds["base"], preds[label]
        right = {k: {i: p["prediction"]["letter"] == p["answer"] for i, p in d.items()} for k, d in (("b", base), ("o", other))}
        assert pair["base_only_right"] == sum(right["b"][i] and not right["o"][i] for i in base)
        assert pair["other_only_right"] == sum(right["o"][i] and not right["b"][i] for i in base)
    labelled = [json.loads(x) for split in ("dev", "valid") for x in (data / f"{split}.jsonl").read_text().splitlines()]
    answer = {r["id"]: r["answer"] for r in labelled}
    options = {r["id"]: "ABCDE"[:len(r["choices"])] for r in labelled}
    train = [answer[i] for i in shared["ids"]["train"]]
    ranking = sorted(set(train), key=lambda x: (-train.count(x), x))  # most frequent first, ties alphabetical
    for i, p in preds["best constant"].items():  # the best-ranked letter among the question's options
        assert p["prediction"]["letter"] == next(x for x in ranking if x in options[i])


def check_pass1_section(out: Path, strategies: list[str], screen: str) -> None:
    """The screen and report.md end with what pass 1 decided: per strategy its routing accuracy, recounted here
    from the per-question decisions (correct decisions / questions of an expert's category not given a mixture),
    and its confusion counts; then one line naming the rows significant against base, or saying none is."""
    rep = json.loads((out / "report" / "report.json").read_text())
    routing = {r["label"]: r for r in rep["routing"]}
    assert sorted(routing) == sorted(json.loads((out / "eval" / f"{slug(x)}.json").read_text())["label"] for x in strategies)
    flat = " ".join(screen.split())  # rich wraps long lines
    section = flat[flat.rindex("What pass 1 decided"):]
    assert flat.index("report:") < flat.rindex("What pass 1 decided")
    for label in strategies:
        res = json.loads((out / "eval" / f"{slug(label)}.json").read_text())
        got = routing[res["label"]]
        decided = [(p["category"], p["routing"]["decision"]) for p in res["predictions"]]
        matched = [(c, d) for c, d in decided if c in ("STEM", "Humanities") and d != "mixture"]
        for cat in {c for c, _ in decided}:
            in_cat = [d for c, d in decided if c == cat]
            assert got["confusion"][cat] == {d: in_cat.count(d) for d in in_cat}
        if not matched:  # fewshot and uniform mix the experts on every question
            assert got["accuracy"] is None and f"{res['label']}: routing accuracy — " in section
            continue
        k = sum(c == d for c, d in matched)
        assert (got["accuracy"]["n_correct"], got["accuracy"]["n"]) == (k, len(matched))
        assert got["accuracy"]["accuracy"] == pytest.approx(k / len(matched))
        assert f"{res['label']}: routing accuracy {100 * k / len(matched):.1f} % [" in section
        assert f"({k} of n = {len(matched)} questions" in section
    assert routing["Transformer² (oracle)"]["accuracy"]["accuracy"] == 1.0
    significant = [p["label"] for p in rep["paired"] if p["significant"] and not p["reference"]]
    last = (out / "report" / "report.md").read_text().splitlines()[-1]
    if significant:
        assert last.startswith("Differ from base beyond their CI") and all(x in last for x in significant)
    else:
        assert last.startswith("No system differs from base beyond its CI on these 16 questions (significant: McNemar")
    assert flat.endswith(last)


def test_recipe_config_errors():
    with pytest.raises(Exception, match="unknown key 'experts.trian'"):
        load_config(RecipeConfig, flags=["--experts.trian.lr", "1"])
    with pytest.raises(Exception, match="baselines.methods: 'adalora'"):
        load_config(RecipeConfig, flags=["--baselines.methods", "lora,adalora"])
    with pytest.raises(Exception, match="eval.strategies 'cls' needs router.enabled"):  # declared by cls's spec
        load_config(RecipeConfig, flags=["--router.enabled", "false", "--eval.strategies", "cls,uniform"])
    with pytest.raises(Exception, match="fewshot.shots 0: must be at least 1"):  # a section checked once filled
        load_config(RecipeConfig, flags=["--eval.strategy.fewshot.shots", "0"])
