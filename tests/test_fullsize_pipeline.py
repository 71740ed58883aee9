"""The whole pipeline at Llama-3-8B's matrix sizes through the `t2` command: a one-layer
random:llama-3-8b in bfloat16 decomposes, trains a step, evaluates with the expert, and exports both
ways by streaming its checkpoint. One full-size target (down_proj, 4096 × 14336, r = 4096) keeps the
SVD to about half a minute on two cores; the run is shared by the tests of this module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from test_cli import run  # (exit code, stdout, stderr) of `t2 ARGS`
from vmlu_files import write_vmlu

MODEL = ["--model", "random:llama-3-8b", "--num-layers", "1", "--dtype", "bfloat16"]
TARGET = "model.layers.0.mlp.down_proj"
# Each validation merges the target (0.24 T multiply-adds) and each training step runs it factored: bfloat16
# factors where oneDNN multiplies bfloat16 with AVX-512 (4× faster than float32 there), float32 on an AVX2-only
# CPU, where a bfloat16 matmul is about 7× slower than a float32 one (most of this module's setup time there).
FACTOR_DTYPE = "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fullsize_home")


@pytest.fixture()
def run_dir(home, monkeypatch, capsys) -> Path:
    """A run that trained an expert of the full-size model for one step (in latest/); the first test to ask trains it."""
    monkeypatch.setenv("T2_HOME", str(home))
    out = home / "run"
    if not (out / "latest").is_dir():
        data = write_vmlu(home / "vmlu", per_subject=3, distinct_ids=True)
        code, _, err = run(["train", *MODEL, "--task", "vmlu", "--data", str(data), "--subset", "subject=01",
                            "--out", str(out), "--steps", "1", "--batch-size", "2", "--micro-batch-size", "1",
                            "--factor_dtype", FACTOR_DTYPE, "--targets", TARGET.replace(".", r"\."), "--device", "cpu",
                            "--force"], capsys)
        assert code == 0, err
    return out


def _factors(home: Path) -> dict[str, torch.Tensor]:
    (index,) = (home / "svd").glob("*/index.json")
    entry = json.loads(index.read_text())["targets"][TARGET]
    assert entry["shape"] == [4096, 14336] and entry["rank"] == 4096
    return load_file(index.parent / entry["file"])


def _delta(home: Path, run_dir: Path) -> torch.Tensor:
    """ΔW = U·diag(s' − s)·Vᵀ in float64 from the cache and the expert's p, by the paper's formula."""
    f = _factors(home)
    U, S, V = (f[f"{TARGET}.{k}"].double() for k in ("U", "S", "V"))
    z = torch.sigmoid(load_file(run_dir / "latest" / "expert.safetensors")[TARGET].double())  # (r,)
    s_new = S * z * (S.sum() / (S * z).sum())
    return (U * (s_new - S)) @ V.T  # (4096, 14336)


def test_train_needs_force_for_random_weights(tmp_path, capsys):
    code, _, err = run(["train", *MODEL, "--task", "vmlu", "--data", str(tmp_path), "--out", str(tmp_path / "r")],
                       capsys)
    assert code == 2 and "random weights" in err and "--force" in err


def test_decomposed_and_trained_one_step(home, run_dir, monkeypatch):
    monkeypatch.setenv("T2_HOME", str(home))
    f = _factors(home)
    U, S, V = (f[f"{TARGET}.{k}"] for k in ("U", "S", "V"))
    assert U.shape == (4096, 4096) and V.shape == (14336, 4096)
    from transformer_squared.models.load import random_folder

    folder = random_folder("random:llama-3-8b?layers=1")  # the checkpoint export streams, written once here
    with safe_open(_shard(folder, f"{TARGET}.weight"), "pt") as ckpt:
        rows = ckpt.get_slice(f"{TARGET}.weight")[:64].float()  # (64, 14336): a slice is enough to check U·diag(S)·Vᵀ = W
    assert ((U[:64] * S) @ V.T - rows).norm() / rows.norm() < 1e-5
    steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [s for s in steps if "grad_norm" in s]
    assert len(trained) == 1 and math.isfinite(trained[0]["loss"]) and trained[0]["grad_norm"] > 0
    meta = json.loads((run_dir / "latest" / "expert.json").read_text())
    assert meta["targets"] == [TARGET] and meta["base_model"] == "random:llama-3-8b?layers=1"


def test_eval_with_the_expert(home, run_dir, capsys):
    out = home / "eval.json"
    code, _, err = run(["eval", *MODEL, "--task", "vmlu", "--data", str(home / "vmlu"), "--subset", "subject=05",
                        "--expert", str(run_dir / "latest"), "--device", "cpu", "--out", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["dtype"] == "bfloat16" and len(res["predictions"]) == 3 and len(res["experts"]) == 1
    assert all(r["prediction"]["letter"] in "ABCDE" for r in res["predictions"])


def test_export_merged_streams_the_checkpoint(home, run_dir, capsys):
    out = home / "merged"
    code, _, err = run(["export", "merged", *MODEL[:4], "--expert", str(run_dir / "latest"), "--out", str(out)], capsys)
    assert code == 0, err
    (base,) = (home / "models" / "random").iterdir()  # the checkpoint written once for random:
    key = f"{TARGET}.weight"
    with safe_open(_shard(base, key), "pt") as f:
        W0 = f.get_tensor(key)
    with safe_open(_shard(out, key), "pt") as f:
        W1 = f.get_tensor(key)
    assert W1.dtype == torch.bfloat16
    expected = (W0.double() + _delta(home, run_dir)).to(torch.bfloat16)  # independent float64 merge, rounded once
    assert (W1 != W0).float().mean() > 0.5  # the expert changed most entries
    # bfloat16 rounding of float32 vs float64 sums may differ by one unit in the last place
    torch.testing.assert_close(W1.float(), expected.float(), rtol=8e-3, atol=1e-6)
    index = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) == 2  # written in two shards, streamed one at a time
    for name in index:
        if name != key:
            with safe_open(_shard(base, name), "pt") as a, safe_open(_shard(out, name), "pt") as b:
                assert torch.equal(a.get_tensor(name), b.get_tensor(name)), name
    assert json.loads((out / "config.json").read_text())["_name_or_path"] == "merged"
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()


def test_export_lora_rank_8(home, run_dir, capsys):
    out = home / "lora"
    code, stdout, err = run(["export", "lora", *MODEL[:4], "--expert", str(run_dir / "latest"), "--rank", "8",
                             "--out", str(out)], capsys)
    assert code == 0 and "r=8" in stdout, err
    ab = load_file(out / "adapter_model.safetensors")
    B, A = ab[f"base_model.model.{TARGET}.lora_B.weight"], ab[f"base_model.model.{TARGET}.lora_A.weight"]
    assert B.shape == (4096, 8) and A.shape == (8, 14336)
    dW = _delta(home, run_dir)
    direct = float((dW - (B @ A).double()).norm() / dW.norm())
    reported = json.loads((out / "t2_export.json").read_text())["rel_error"][TARGET]
    assert reported == pytest.approx(direct, rel=1e-3) and 0 < direct < 1


def _shard(folder: Path, key: str) -> Path:
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return folder / "model.safetensors"
    return folder / json.loads(index.read_text())["weight_map"][key]
