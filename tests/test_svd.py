"""SVD cache: target resolution, reconstruction, fingerprints, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from transformer_squared.errors import CacheError, ConfigError
from transformer_squared.experts.svd import decompose, fingerprint, load_factors, resolve_targets


def _rel_err(model, factors):
    errs = {}
    for name, f in factors.items():
        W = model.get_submodule(name).weight.detach().float()
        W2 = f.U @ torch.diag(f.S) @ f.V.T  # independent recomposition
        errs[name] = ((W2 - W).norm() / W.norm()).item()
    return errs


def test_resolve_targets(tiny):
    model, _ = tiny
    mlp = resolve_targets(model, "mlp")
    attn = resolve_targets(model, "attn")
    assert len(mlp) == 2 * 3 and all(n.rsplit(".", 1)[1] in ("gate_proj", "up_proj", "down_proj") for n in mlp)
    assert len(attn) == 2 * 4 and all(n.rsplit(".", 1)[1] in ("q_proj", "k_proj", "v_proj", "o_proj") for n in attn)
    assert sorted(resolve_targets(model, "all")) == sorted(mlp + attn)
    assert "lm_head" not in resolve_targets(model, "all")
    assert resolve_targets(model, r"layers\.1\..*down_proj") == ["model.layers.1.mlp.down_proj"]
    with pytest.raises(ConfigError, match="matches no nn.Linear"):
        resolve_targets(model, "nothing_like_this")
    with pytest.raises(ConfigError, match="not mlp, attn, all"):
        resolve_targets(model, "(")


def test_reconstruction_and_only_targets(tiny, tmp_path):
    model, _ = tiny
    folder = decompose(model, "mlp", root=tmp_path, progress=False)
    index = json.loads((folder / "index.json").read_text())
    assert sorted(index["targets"]) == sorted(resolve_targets(model, "mlp"))  # only targets decomposed
    factors = load_factors(model, resolve_targets(model, "mlp"), root=tmp_path)
    assert max(_rel_err(model, factors).values()) < 1e-5
    for name, f in factors.items():
        out, inp = model.get_submodule(name).weight.shape
        r = min(out, inp)
        assert f.U.shape == (out, r) and f.S.shape == (r,) and f.V.shape == (inp, r)
        assert torch.all(f.S[:-1] >= f.S[1:])  # sorted singular values


def test_fingerprint_changes_with_weights(tiny):
    model, _ = tiny
    names = resolve_targets(model, "mlp")
    fp = fingerprint(model, names)
    assert fp == fingerprint(model, names)
    with torch.no_grad():
        model.get_submodule(names[0]).weight[3, 5] += 1e-3
    assert fingerprint(model, names) != fp


def test_missing_cache_error(tiny, tmp_path):
    model, _ = tiny
    with pytest.raises(CacheError, match="t2 decompose"):
        load_factors(model, resolve_targets(model, "mlp"), root=tmp_path)


def test_bfloat16_factors(tiny, tmp_path):
    model, _ = tiny
    folder = decompose(model, "mlp", dtype="bfloat16", root=tmp_path, progress=False)
    t = load_file(next(folder.glob("*.safetensors")))
    assert all(v.dtype == torch.bfloat16 for v in t.values())


KILLABLE = textwrap.dedent(
    """
    import sys, time
    from transformer_squared.experts import svd
    from transformer_squared.models.load import load_model
    slow = svd.svd_one
    def svd_one(W, device=None):
        time.sleep(0.3)
        return slow(W, device)
    svd.svd_one = svd_one
    model, _ = load_model(sys.argv[1], device="cpu")
    svd.decompose(model, "all", progress=False)
    """
)


def test_killed_decomposition_resumes_identically(tiny_model_dir, tmp_path):
    env = dict(os.environ, T2_HOME=str(tmp_path / "killed"))
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(tiny_model_dir)], env=env)
    svd_root = tmp_path / "killed" / "svd"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a few targets are on disk, mid-run
        idx = list(svd_root.glob("*/index.json"))
        if idx and len(json.loads(idx[0].read_text())["targets"]) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(json.loads(idx[0].read_text())["targets"])
    assert 3 <= done < 14, "the kill must land halfway"

    from transformer_squared.models.load import load_model

    model, _ = load_model(str(tiny_model_dir), device="cpu")
    resumed = decompose(model, "all", root=tmp_path / "killed", progress=False)
    clean = decompose(model, "all", root=tmp_path / "clean", progress=False)
    assert resumed.name == clean.name
    files = sorted(p.name for p in clean.glob("*.safetensors"))
    assert files == sorted(p.name for p in resumed.glob("*.safetensors")) and len(files) == 14
    for name in files:
        a, b = load_file(resumed / name), load_file(clean / name)
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_smollm2_reconstruction(smollm2):
    from transformer_squared.experts.svd import ensure_factors

    model, _ = smollm2
    _, factors = ensure_factors(model, "mlp")
    assert len(factors) == 90
    assert max(_rel_err(model, factors).values()) < 1e-5


CONCURRENT = textwrap.dedent(
    """
    import sys, time
    from transformer_squared.experts import svd
    from transformer_squared.models.load import load_model
    slow = svd.svd_one
    def svd_one(W, device=None):
        with open(sys.argv[2], "a") as log:
            log.write("x\\n")
        time.sleep(0.05)
        return slow(W, device)
    svd.svd_one = svd_one
    model, _ = load_model(sys.argv[1], device="cpu")
    open(sys.argv[3], "w").close()  # ready
    while not all(__import__("os").path.exists(p) for p in sys.argv[4:]):
        time.sleep(0.01)  # start together
    svd.decompose(model, "mlp", progress=False)
    """
)


def test_two_processes_decompose_each_target_once(tiny_model_dir, tmp_path):
    """The file lock: two concurrent `decompose` runs on one cache give one complete, consistent cache,
    and every target is decomposed exactly once between them."""
    env = dict(os.environ, T2_HOME=str(tmp_path / "home"))
    log, ready = tmp_path / "svd_calls.log", [tmp_path / "ready0", tmp_path / "ready1"]
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(tiny_model_dir), str(log), str(ready[i]),
                               *map(str, ready)], env=env) for i in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    (folder,) = [p for p in (tmp_path / "home" / "svd").iterdir() if p.is_dir()]
    index = json.loads((folder / "index.json").read_text())
    assert len(index["targets"]) == 6 and len(log.read_text().split()) == 6  # 6 targets, 6 SVDs in all
    from transformer_squared.models.load import load_model

    model, _ = load_model(str(tiny_model_dir), device="cpu")
    clean = decompose(model, "mlp", root=tmp_path / "clean", progress=False)
    for name in sorted(p.name for p in clean.glob("*.safetensors")):
        a, b = load_file(folder / name), load_file(clean / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
