"""Same seed, same machine → identical experts, results and CEM α, also across processes (another
PYTHONHASHSEED, so no result may hang on set or dict-of-str order): `t2 train` with sampled letters,
`t2 eval` of a mixture on a stratified sample, and `t2 eval --strategy fewshot`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transformer_squared.cli import main

from labelled_experts import make_experts
from outputs import same_folder
from vmlu_files import write_vmlu


@pytest.fixture()
def commands(tmp_path, tiny_model_dir, monkeypatch):
    """t2 argument lists writing under an output root (the train run, a mixture's eval, a fewshot eval)."""
    from transformer_squared.models.load import load_model

    monkeypatch.setenv("T2_HOME", str(tmp_path / "home"))
    model, _ = load_model(str(tiny_model_dir), device="cpu")
    experts = [str(e.save(tmp_path / f"e{k}")) for k, e in enumerate(make_experts(model))]
    vmlu = write_vmlu(tmp_path / "vmlu")
    mcq = tmp_path / "mcq.jsonl"
    mcq.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + {i % 5}?", "subject": f"s{i % 3}",
                                       "choices": [str(i), str(i + i % 5), "none"], "answer": "B"}) + "\n"
                           for i in range(18)), encoding="utf-8")
    m = ["--model", str(tiny_model_dir), "--device", "cpu"]

    def make(root: Path, seed: int = 5) -> list[list[str]]:  # the seed's effect: test_cem, test_train
        ev = ["eval", *m, "--task", "vmlu", "--data", str(vmlu), "--experts", *experts, "--protocol", "letter"]
        return [["train", *m, "--task", "mcq", "--data", str(mcq), "--out", str(root / "run"), "--steps", "2",
                 "--batch-size", "4", "--micro-batch-size", "2", "--eval-every", "1", "--lr", "0.1",
                 "--objective", "sample", "--temperature", "1", "--samples-per-prompt", "3", "--seed", str(seed)],
                [*ev, "--alpha", "0.3", "--alpha", "0.7", "--limit", "10", "--sample", "stratified", "--seed",
                 str(seed), "--out", str(root / "mixture.json")],
                [*ev, "--strategy", "fewshot", "--shots", "4", "--population", "6", "--generations", "3",
                 "--alpha-per", "target", "--seed", str(seed), "--out", str(root / "fewshot.json")]]

    return make


def test_same_seed_same_outputs_across_processes(commands, tmp_path):
    for args in commands(tmp_path / "a"):
        main(args)
    script = "import json, sys; from transformer_squared.cli import main; [main(a) for a in json.loads(sys.argv[1])]"
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(commands(tmp_path / "b"))], capture_output=True,
                          text=True, env=os.environ | {"PYTHONHASHSEED": "12345", "TQDM_DISABLE": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    same_folder(tmp_path / "a", tmp_path / "b")  # experts, optimizer state, metrics, results, the fewshot α file
    alpha = json.loads((tmp_path / "a" / "fewshot.alpha.json").read_text(encoding="utf-8"))["alpha"]
    assert len(alpha) == 2 and len({round(x, 6) for row in alpha for x in row}) > 1  # a real search result
