"""Expert files: roundtrip, atomic write integrity, base-model mismatch, reference initialisation."""

from __future__ import annotations

import json
import os

import pytest
import torch

from transformer_squared.errors import ExpertError
from transformer_squared.experts.expert import Expert, ExpertMeta, attach
from transformer_squared.models.load import model_id


def test_init_roundtrip(tiny, tmp_path):
    model, _ = tiny
    svf = attach(model)
    e = Expert.init(svf.factors, model_id(model), svf.fingerprint, "sigmoid", seed=3, label="math",
                    description="Grade-school arithmetic word problems.")
    # reference initialisation: p = 0.1 + N(0, 0.01²)
    allp = torch.cat(list(e.p.values()))
    assert abs(allp.mean().item() - 0.1) < 3e-3 and 0.007 < allp.std().item() < 0.013
    assert e.n_params == sum(f.S.numel() for f in svf.factors.values())
    e.save(tmp_path / "x")
    e2 = Expert.load(tmp_path / "x")
    assert e2.meta == e.meta
    assert all(torch.equal(e.p[t], e2.p[t]) for t in e.p)
    meta = json.loads((tmp_path / "x" / "expert.json").read_text())
    for key in ("format_version", "base_model", "fingerprint", "targets", "parametrisation", "label",
                "description", "provenance", "tensors_sha256"):
        assert key in meta
    assert not list((tmp_path / "x").glob("*.tmp"))


def test_linear_init_is_identity(tiny):
    model, _ = tiny
    svf = attach(model)
    e = Expert.init(svf.factors, "tiny", svf.fingerprint, "linear")
    assert all(torch.equal(z, torch.ones_like(z)) for z in e.z().values())


def test_mismatched_base_names_both_models(tiny, tmp_path):
    model, _ = tiny
    svf = attach(model)
    e = Expert.init(svf.factors, "model-a", svf.fingerprint)
    e.save(tmp_path / "e")
    with torch.no_grad():
        model.get_submodule(svf.targets[0]).weight.mul_(1.01)  # another base model
    with pytest.raises(ExpertError, match=r"made for base model 'model-a'.*not for '.*tiny-llama'"):
        attach(model, [Expert.load(tmp_path / "e")])


def test_corrupt_and_missing_files(tiny, tmp_path):
    model, _ = tiny
    svf = attach(model)
    Expert.init(svf.factors, "tiny", svf.fingerprint).save(tmp_path / "e")
    with pytest.raises(ExpertError, match="missing"):
        Expert.load(tmp_path / "nowhere")
    Expert.init(svf.factors, "tiny", svf.fingerprint, seed=9).save(tmp_path / "other")
    (tmp_path / "e" / "expert.safetensors").write_bytes((tmp_path / "other" / "expert.safetensors").read_bytes())
    with pytest.raises(ExpertError, match="does not match expert.json"):
        Expert.load(tmp_path / "e")
    (tmp_path / "other" / "expert.json").write_text("{not json")
    with pytest.raises(ExpertError, match="invalid JSON"):
        Expert.load(tmp_path / "other")


def test_experts_must_agree_on_normalisation(tiny):
    model, _ = tiny
    svf = attach(model)
    a = Expert.init(svf.factors, "tiny", svf.fingerprint, label="keep", normalise=True)
    b = Expert.init(svf.factors, "tiny", svf.fingerprint, label="raw", normalise=False)
    with pytest.raises(ExpertError, match=r"disagree on normalisation \('keep' normalise=True, 'raw' normalise=False\)"):
        attach(model, [a, b])


def test_version_1_fingerprints_still_match(tiny, tmp_path):
    """Experts and caches made before fingerprint version 2 keep working (small targets only had version 1)."""
    from transformer_squared.experts.svd import cache_dir, decompose, legacy_fingerprint, resolve_targets

    model, _ = tiny
    names = resolve_targets(model, "mlp")
    old = legacy_fingerprint(model, names)
    folder = decompose(model, names, root=tmp_path, progress=False)
    os.replace(folder, cache_dir(old, tmp_path))  # as a version-1 run left it
    again = decompose(model, names, root=tmp_path, progress=False)  # adopts the old folder, no new SVD
    assert again == folder and not cache_dir(old, tmp_path).exists()
    assert json.loads((again / "index.json").read_text())["fingerprint"] == folder.name
    e = Expert.init(attach(model).factors, "tiny", old)
    assert attach(model, [e]).fingerprint == folder.name and e.meta.fingerprint == folder.name


def test_random_base_needs_force(tmp_path):
    e = Expert({"t": torch.zeros(3)}, ExpertMeta("random:llama-3-8b?layers=1", "f" * 20, ["t"]))
    with pytest.raises(ExpertError, match="random weights.*--force"):
        e.save(tmp_path / "e")
    assert Expert.load(e.save(tmp_path / "e", force=True)).meta.base_model == "random:llama-3-8b?layers=1"
