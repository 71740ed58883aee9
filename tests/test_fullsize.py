"""Llama-3-8B shapes without downloads: a one-layer random:llama-3-8b (every matrix at full size,
1.27 G parameters with the vocabulary, 218 M in the layer) in bfloat16 on the CPU.

Regression tests for the full-size bugs: the fingerprint's index past 2^24 entries, its dependence on
the loaded dtype, and a mismatched expert costing an SVD before failing.
"""

from __future__ import annotations

import pytest
import torch

from transformer_squared.errors import ExpertError, ModelError
from transformer_squared.experts.expert import Expert, ExpertMeta, attach
from transformer_squared.models.load import load_model, model_id, t2_home
from transformer_squared.models.random_weights import parse, with_layers
from transformer_squared.experts.svd import WeightSource, fingerprint, legacy_fingerprint, resolve_targets

MODEL = "random:llama-3-8b?layers=1"


@pytest.fixture(scope="module")
def big():
    """(model, tokenizer): one decoder layer of Llama-3-8B, bfloat16, CPU (2.5 GB)."""
    return load_model(MODEL, device="cpu", dtype="bfloat16")


def test_shapes_are_llama3_8b(big):
    model, tok = big
    h, inter, vocab, heads, kv_heads = 4096, 14336, 128256, 32, 8  # Meta-Llama-3-8B's config.json
    kv = kv_heads * (h // heads)
    layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h  # q, o; k, v; gate, up, down; two norms
    assert layer == 218_112_000
    assert sum(p.numel() for p in model.model.layers[0].parameters()) == layer
    assert sum(p.numel() for p in model.parameters()) == 2 * vocab * h + layer + h  # untied embeddings
    assert model.get_submodule("model.layers.0.mlp.down_proj").weight.shape == (h, inter)
    assert model.dtype == torch.bfloat16 and model.config.rope_parameters["rope_theta"] == 500000.0
    assert len(tok) == vocab + 1  # the Llama-3.2 tokenizer adds <|image|> (id 128256), which text never produces
    assert tok.convert_tokens_to_ids("<|eot_id|>") < vocab and tok.pad_token is not None and tok.chat_template
    assert model_id(model) == MODEL and with_layers("random:llama-3-8b", 1) == MODEL


def test_fingerprint_is_exact_at_full_size(big):
    model, _ = big
    names = resolve_targets(model, "mlp")
    n = model.get_submodule(names[0]).weight.numel()
    assert n == 58_720_256 > 1 << 24
    # the version-1 sample put its last index at n (one past the end): float32 cannot hold n − 1
    assert torch.linspace(0, n - 1, 4096)[-1].long().item() == n
    assert legacy_fingerprint(model, names) is None
    one = names[:1]
    fp = fingerprint(model, one)
    W = model.get_submodule(names[0]).weight
    with torch.no_grad():
        last = W[-1, -1].clone()
        W[-1, -1] += 1.0  # the very last entry
        assert fingerprint(model, one) != fp
        W[-1, -1] = last
        a, b = W[7, 1].clone(), W[7, 2].clone()
        assert not torch.equal(a, b)
        W[7, 1], W[7, 2] = b, a  # a swap keeps every sum and moment: only the positions differ
        assert fingerprint(model, one) != fp
        W[7, 1], W[7, 2] = a, b
    assert fingerprint(model, one) == fp


def test_fingerprint_ignores_the_loaded_dtype(big):
    model, _ = big
    names = resolve_targets(model, "mlp")
    as_float32 = WeightSource("float32 load", lambda n: model.get_submodule(n).weight.float())  # exact upcast
    assert fingerprint(as_float32, names) == fingerprint(model, names)


def test_mismatched_expert_fails_before_any_decomposition(big):
    model, _ = big
    names = resolve_targets(model, "mlp")
    other = Expert({t: torch.zeros(4096) for t in names}, ExpertMeta("random:llama-3-8b?layers=1&seed=1", "0" * 20,
                                                                     names, label="other"))
    with pytest.raises(ExpertError, match=r"made for base model 'random:llama-3-8b\?layers=1&seed=1'"):
        attach(model, [other])
    assert not [p for p in t2_home().rglob("*") if p.is_file()]  # no SVD ran, nothing was cached


def test_random_names_are_checked():
    with pytest.raises(ModelError, match="unknown option 'layer'"):
        parse("random:llama-3-8b?layer=1")
    with pytest.raises(ModelError, match="neither a shipped config"):
        parse("random:llama-9")
    with pytest.raises(ModelError, match="only random: models"):
        with_layers("smollm2-135m-instruct", 2)


def test_same_weights_in_every_dtype(tmp_path):
    """A small random:CONFIG.json: values are drawn in the config's dtype, so float32 is an exact upcast."""
    import json

    cfg = json.loads((__import__("importlib").resources.files("transformer_squared") / "configs" / "llama-3-8b.json")
                     .read_text())
    cfg |= {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 2}
    path = tmp_path / "small.json"
    path.write_text(json.dumps(cfg))
    bf16, _ = load_model(f"random:{path}", device="cpu", dtype="bfloat16")
    fp32, _ = load_model(f"random:{path}?layers=1", device="cpu", dtype="float32")
    for name, p in fp32.named_parameters():  # layer 0 is the same with 1 or 2 layers
        assert torch.equal(p, bf16.get_parameter(name).float()), name
    other, _ = load_model(f"random:{path}?layers=1&seed=1", device="cpu", dtype="float32")
    assert not torch.equal(other.model.layers[0].mlp.up_proj.weight, fp32.model.layers[0].mlp.up_proj.weight)
