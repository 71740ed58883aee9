"""examples/inference.py, the first thing a newcomer runs: on the demo's experts as is, else one line saying what to do."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from labelled_experts import make_experts

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "inference.py"


def load_example():
    spec = importlib.util.spec_from_file_location("inference_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_experts_it_says_in_one_line_to_run_the_demo(tmp_path, monkeypatch, capsys):
    """It used to end in a 20-line traceback (ConfigError: strategy 'prompt' chooses among experts)."""
    monkeypatch.delenv("T2_EXPERTS", raising=False)
    monkeypatch.setenv("T2_DEMO", str(tmp_path / "no-demo"))
    assert load_example().main([]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and "make demo" in out.err and "--experts" in out.err


def test_after_the_demo_it_runs_on_the_demo_experts(tiny, tiny_model_dir, tmp_path, monkeypatch, capsys):
    model, _ = tiny
    demo = tmp_path / "demo"
    for expert in make_experts(model):  # as `make demo` leaves them: <demo>/experts/<category>/best/
        expert.save(demo / "experts" / expert.meta.label.lower() / "best")
    (demo / "experts" / "unfinished").mkdir()  # a category whose training has not finished: no best/
    monkeypatch.delenv("T2_EXPERTS", raising=False)
    monkeypatch.setenv("T2_DEMO", str(demo))
    example = load_example()
    assert example.main(["--model", str(tiny_model_dir), "--max-new-tokens", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    routed = [line for line in lines if line.endswith(tuple(example.PROMPTS))]  # "[expert or base] prompt"
    assert [line.split("] ", 1)[1] for line in routed] == example.PROMPTS
    assert {line.split("]")[0] for line in routed} <= {"[STEM", "[Humanities", "[base"} and lines[-1].startswith("pass 1 ")
