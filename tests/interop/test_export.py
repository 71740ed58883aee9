"""Exports: merged HF folders load in plain transformers, LoRA adapters in plain PEFT, with the expert's logits."""

from __future__ import annotations

import json

import pytest
import torch

from transformer_squared.errors import ConfigError, ExportError
from transformer_squared.experts.expert import Expert, attach
from transformer_squared.interop.export import export_lora, export_merged, lora_factors, push_folder
from transformer_squared.models.load import model_id
from transformer_squared.experts.svd import Factors

TEXTS = ["The capital of France is", "12 * 7 ="]


def make_expert(model, seed: int = 0, scale: float = 1.0, label: str = "synthetic") -> Expert:
    """A non-trivial expert: reference init plus N(0, scale²) noise on p."""
    svf = attach(model)
    e = Expert.init(svf.factors, model_id(model), svf.fingerprint, seed=seed, label=label,
                    description="a synthetic test expert")
    g = torch.Generator().manual_seed(seed + 1)
    e.p = {t: p + scale * torch.randn(p.shape, generator=g) for t, p in e.p.items()}
    e.meta.task = "toy"
    e.meta.provenance |= {"data": "toy.jsonl", "split": "train"}
    e.meta.metrics = {"toy/acc": 0.5}
    return e


def logits(model, tok, texts=TEXTS) -> torch.Tensor:
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits.float()  # (B, T, V)


def adapted_logits(model, tok, experts: list[Expert], alpha: list[float]) -> torch.Tensor:
    """Independent path: the library's in-memory merge (no export involved)."""
    from transformer_squared.experts.svf import mix

    svf = attach(model, experts)
    with svf.merged(mix([e.z() for e in experts], torch.tensor(alpha))):
        return logits(model, tok)


def _orthonormal(n: int, r: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0].float()


def test_lora_factors_match_direct_truncation():
    g = torch.Generator().manual_seed(0)
    U, V = _orthonormal(40, 24, g), _orthonormal(30, 24, g)  # (out, r), (in, r)
    S = torch.rand(24, generator=g) * 5
    s_new = S * torch.rand(24, generator=g) * 2
    dW = (U * (s_new - S)) @ V.T  # (out, in), computed directly
    f = Factors(U, S, V)
    full = lora_factors(f, s_new, 24)
    torch.testing.assert_close(full.B @ full.A, dW, rtol=1e-5, atol=1e-5)
    assert full.rel_error == 0.0
    for R in (1, 5, 12):
        lf = lora_factors(f, s_new, R)
        assert lf.A.shape == (R, 30) and lf.B.shape == (40, R)
        direct = torch.linalg.matrix_norm(dW - lf.B @ lf.A) / torch.linalg.matrix_norm(dW)
        assert lf.rel_error == pytest.approx(float(direct), rel=1e-4)
        # Eckart–Young: an independent SVD of ΔW truncated at R gives the same error
        sv = torch.linalg.svdvals(dW.double())
        assert lf.rel_error == pytest.approx(float(sv[R:].norm() / sv.norm()), rel=1e-4)
    padded = lora_factors(f, s_new, 30)  # above the target's rank: zero directions
    assert padded.A.shape == (30, 30)
    torch.testing.assert_close(padded.B @ padded.A, dW, rtol=1e-5, atol=1e-5)


def test_merged_export_loads_in_plain_transformers(tiny, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = tiny
    e1, e2 = make_expert(model, 0, label="a"), make_expert(model, 5, label="b")
    paths = [e1.save(tmp_path / "e1"), e2.save(tmp_path / "e2")]
    expected = adapted_logits(model, tok, [e1, e2], [0.7, 0.3])
    out = export_merged(str(tiny_model_dir), paths, [0.7, 0.3], tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    plain_tok = AutoTokenizer.from_pretrained(out)
    plain_tok.pad_token = plain_tok.pad_token or plain_tok.eos_token
    got = logits(plain, plain_tok)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, logits(model, tok), atol=1e-3)  # the expert changed something
    assert (out / "generation_config.json").is_file() and plain_tok.chat_template
    card = (out / "README.md").read_text()
    assert "Expert `a` — α = 0.7" in card and "toy.jsonl" in card and "toy/acc: 0.5" in card
    assert str(tmp_path) not in json.dumps(json.loads((out / "config.json").read_text()))
    assert not list(tmp_path.glob(".merged.*"))  # the temp folder was renamed away


def test_merged_export_of_a_non_finite_expert_is_an_expert_error(tiny, tiny_model_dir, tmp_path):
    """The export raised ExportError where merging and the vLLM backend raised ExpertError: now one helper, one type."""
    from transformer_squared.errors import ExpertError

    model, _ = tiny
    e = make_expert(model)
    last = e.meta.targets[-1]
    e.p[last] = e.p[last].clone()
    e.p[last][0] = float("nan")
    with pytest.raises(ExpertError, match=f"adapted weight of '{last}' is not finite"):
        export_merged(str(tiny_model_dir), [e], None, tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.*"))


def test_merged_export_keeps_tied_embeddings(tiny_model_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from transformer_squared.models.load import load_model

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    tied_dir = tmp_path / "tied"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tied_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tied_dir)
    model, tok = load_model(str(tied_dir), device="cpu")
    e = make_expert(model)
    expected = adapted_logits(model, tok, [e], [1.0])
    out = export_merged(str(tied_dir), [e.save(tmp_path / "e")], None, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(logits(plain, tok), expected, rtol=1e-4, atol=1e-4)


def test_lora_export_full_rank_matches_merged(tiny, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tok = tiny
    e = make_expert(model)
    expected = adapted_logits(model, tok, [e], [1.0])
    report = export_lora(str(tiny_model_dir), e.save(tmp_path / "e"), None, tmp_path / "lora")
    assert report.overall == 0.0 and report.rank == 64
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 64 and cfg["target_modules"] == e.meta.targets
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "lora")
    torch.testing.assert_close(logits(peft_model.eval(), tok), expected, rtol=1e-4, atol=1e-4)


def test_lora_export_rank_error_matches_direct(tiny, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    model, tok = tiny
    e = make_expert(model)
    report = export_lora(str(tiny_model_dir), e.save(tmp_path / "e"), 8, tmp_path / "lora8")
    ab = load_file(tmp_path / "lora8" / "adapter_model.safetensors")
    name = e.meta.targets[0]
    W = model.get_submodule(name).weight.detach().clone()
    svf = attach(model, [e])
    with svf.merged({name: e.z()[name]}):
        W_new = model.get_submodule(name).weight.detach().clone()
    dW = W_new - W  # direct ΔW from the merged weights
    dW_R = ab[f"base_model.model.{name}.lora_B.weight"] @ ab[f"base_model.model.{name}.lora_A.weight"]
    direct = float(torch.linalg.matrix_norm(dW - dW_R) / torch.linalg.matrix_norm(dW))
    assert report.rel_error[name] == pytest.approx(direct, rel=1e-3)
    assert 0 < report.overall < 1
    assert "rank r: 8" in (tmp_path / "lora8" / "README.md").read_text()


def test_lora_export_rejects_bad_rank_and_taken_folder(tiny, tiny_model_dir, tmp_path):
    model, _ = tiny
    path = make_expert(model).save(tmp_path / "e")
    with pytest.raises(ConfigError, match="--rank 1000"):
        export_lora(str(tiny_model_dir), path, 1000, tmp_path / "lora")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    with pytest.raises(ExportError, match="already exists"):
        export_lora(str(tiny_model_dir), path, 4, tmp_path / "taken")
    assert (tmp_path / "taken" / "x").read_text() == "keep"
    export_lora(str(tiny_model_dir), path, 4, tmp_path / "taken", overwrite=True)
    assert not (tmp_path / "taken" / "x").exists()


def test_push_to_hub_uploads_the_folder(tiny, tiny_model_dir, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: calls.append(("create", repo_id)))
    monkeypatch.setattr(huggingface_hub, "upload_folder",
                        lambda **kw: calls.append(("upload", kw["repo_id"], sorted(p.name for p in
                                                   __import__("pathlib").Path(kw["folder_path"]).iterdir()))))
    model, _ = tiny
    path = make_expert(model).save(tmp_path / "e")
    export_lora(str(tiny_model_dir), path, 4, tmp_path / "lora", push_to_hub="me/expert-lora")
    assert calls[0] == ("create", "me/expert-lora")
    assert calls[1][:2] == ("upload", "me/expert-lora")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(calls[1][2])

    def fail(**kw):
        raise OSError("401 Unauthorized\nmore")

    monkeypatch.setattr(huggingface_hub, "upload_folder", fail)
    with pytest.raises(ExportError, match="401 Unauthorized$"):
        push_folder(tmp_path / "lora", "me/expert-lora")


@pytest.mark.slow
def test_merged_export_smollm2(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = smollm2
    e = make_expert(model, scale=0.5)
    expected = adapted_logits(model, tok, [e], [1.0])
    out = export_merged("smollm2-135m-instruct", [e.save(tmp_path / "e")], None, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert plain.config.tie_word_embeddings
    assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(logits(plain, tok), expected, rtol=1e-4, atol=1e-4)
    assert "smollm2-135m-instruct" not in (out / "config.json").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in (out / "README.md").read_text()


def test_cli_export_merged_and_lora(tiny, tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from transformer_squared.cli import main

    def run(args):
        with pytest.raises(SystemExit) as e:
            main(args)
            raise SystemExit(0)
        out = capsys.readouterr()
        return e.value.code or 0, out.out, out.err

    model, _ = tiny
    e1, e2 = make_expert(model, 0).save(tmp_path / "e1"), make_expert(model, 3).save(tmp_path / "e2")
    code, out, err = run(["export", "merged", "--model", str(tiny_model_dir), "--experts", str(e1), "--experts",
                          str(e2), "--alpha", "0.5", "--alpha", "0.5", "--out", str(tmp_path / "m")])
    assert code == 0 and "merged checkpoint" in out, err
    AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    code, out, _ = run(["export", "lora", "--model", str(tiny_model_dir), "--expert", str(e1), "--rank", "8",
                        "--out", str(tmp_path / "l")])
    assert code == 0 and "r=8" in out and "overall" in out
    code, _, err = run(["export", "lora", "--model", str(tiny_model_dir), "--expert", str(e1), "--rank", "8",
                        "--out", str(tmp_path / "l")])
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    code, _, err = run(["export", "lora", "--model", str(tiny_model_dir), "--expert", str(e1), "--rank", "x",
                        "--out", str(tmp_path / "l2")])
    assert code == 2 and "--rank x" in err
