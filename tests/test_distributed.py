"""Data parallel `t2 train` and `t2 eval` under torchrun: 2 CPU processes on the gloo backend give the
single-process results (expert parameters within float tolerance, identical predictions), and only
rank 0 writes files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from transformer_squared.cli import main

from vmlu_files import write_vmlu

REPO = Path(__file__).resolve().parents[1]


def torchrun(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, T2_HOME=str(home), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "transformer_squared.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_vmlu(tmp_path_factory.mktemp("vmlu"), per_subject=3, distinct_ids=True)


def test_data_parallel_training_equals_one_process(tiny_model_dir, data, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("T2_HOME", str(home))
    common = ["--model", str(tiny_model_dir), "--task", "vmlu", "--data", str(data), "--subset", "category=STEM",
              "--steps", "2", "--batch-size", "6", "--micro-batch-size", "2", "--lr", "0.05", "--grad_clip", "0",
              "--eval-every", "1", "--device", "cpu"]
    with pytest.raises(SystemExit) as done:
        main(["train", *common, "--out", str(tmp_path / "one")])
        raise SystemExit(0)
    assert (done.value.code or 0) == 0
    proc = torchrun(["train", *common, "--out", str(tmp_path / "two")], home)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = (load_file(tmp_path / r / "latest" / "expert.safetensors") for r in ("one", "two"))
    init = load_file(tmp_path / "one" / "best" / "expert.safetensors")  # best is step 0 or later
    assert set(one) == set(two)
    moved = max((one[t] - init[t]).abs().max().item() for t in one)
    for t in one:
        torch.testing.assert_close(two[t], one[t], rtol=1e-5, atol=1e-6)
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in ref]  # one writer: no duplicated rows
    for a, b in zip(rows, ref):
        for k in ("loss", "reward", "val_acc"):
            if k in b:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    assert moved > 0 or rows[-1]["grad_norm"] > 0


def test_data_parallel_eval_gives_identical_predictions(tiny_model_dir, data, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("T2_HOME", str(home))
    common = ["eval", "--model", str(tiny_model_dir), "--task", "vmlu", "--data", str(data), "--batch-size", "3",
              "--device", "cpu"]
    main([*common, "--out", str(tmp_path / "one.json")])
    proc = torchrun([*common, "--out", str(tmp_path / "two.json")], home)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert len(two["predictions"]) == len(one["predictions"]) == 24
    assert [r["prediction"] for r in two["predictions"]] == [r["prediction"] for r in one["predictions"]]
    assert two["metrics"] == one["metrics"]
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []
    assert proc.stdout.count("Average") == 1  # rank 0 alone prints the table
