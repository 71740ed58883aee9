"""`t2 plan`: numbers from the config alone, checked against hand formulas, published parameter counts,
and the bytes autograd really saves on a small random Llama."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from transformer_squared.cli import main
from transformer_squared.models.plan import PlanConfig, activation_bytes_per_token, factor_values, fits, plan, shapes

H, INTER, VOCAB, LAYERS, HEADS, KV_HEADS = 4096, 14336, 128256, 32, 32, 8  # Meta-Llama-3-8B


@pytest.fixture(scope="module")
def llama8b():
    return shapes("random:llama-3-8b", "mlp")


def test_llama3_8b_shapes_and_factors(llama8b):
    s = llama8b
    assert s.n_params == 8_030_261_248  # Meta-Llama-3-8B's published parameter count
    assert len(s.targets) == 3 * LAYERS
    r = H  # min(14336, 4096) for every MLP matrix
    assert factor_values(s) == LAYERS * 3 * (INTER * r + r + H * r) == 7_248_150_528
    p = plan(PlanConfig(batch_size=8, seq_len=256, gpus=4), s)
    assert p["train"]["factors"] == LAYERS * 3 * ((INTER + H) * r * 2 + r * 4)  # U, V bfloat16; S float32
    assert round(p["train"]["factors"] / 1e9, 1) == 14.5
    assert p["train"]["weights"] == 2 * 8_030_261_248
    assert p["train"]["expert"] == 4 * 96 * r and p["train"]["optimizer"] == 2 * p["train"]["expert"]
    kv_per_token = 2 * LAYERS * KV_HEADS * (H // HEADS) * 2  # K and V, every layer, bfloat16
    assert p["eval"]["kv_cache"] == kv_per_token * (256 + 64) * 8
    assert p["train_sharded_4"]["weights"] == p["train"]["weights"] // 4


def test_llama3_70b_parameter_count():
    assert shapes("random:llama-3-70b", "mlp").n_params == 70_553_706_496  # Meta-Llama-3-70B's


def test_svf_training_of_8b_fits_one_80gb_gpu(llama8b):
    """The target of issue 9: MLP targets, bfloat16, micro-batches at VMLU prompt lengths, one 80 GB card."""
    total = sum(plan(PlanConfig(batch_size=8, seq_len=512), llama8b)["train"].values())
    assert 40e9 < total < 0.95 * 80e9 and fits(total) == [80, 141]


def _saved_bytes(tmp_path, checkpointing: bool) -> tuple[int, str, int]:
    """Bytes a factored forward pass of a small random Llama (padded batch, SDPA) leaves saved for backward,
    counted by a saved-tensors hook; also the model name and B·T."""
    from transformer_squared.experts.expert import attach
    from transformer_squared.models.load import load_model
    from transformer_squared.training.loop import checkpoint_layers, layers_training

    cfg = json.loads((resources.files("transformer_squared") / "configs" / "llama-3-8b.json").read_text())
    cfg |= {"hidden_size": 256, "intermediate_size": 896, "num_attention_heads": 8, "num_key_value_heads": 2,
            "num_hidden_layers": 2, "vocab_size": 4096}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    name = f"random:{tmp_path / 'c.json'}"
    model, _ = load_model(name, device="cpu", dtype="bfloat16")
    svf = attach(model, factor_dtype="bfloat16")
    layers = checkpoint_layers(model) if checkpointing else []
    B, T = 4, 64
    ids = torch.randint(0, 4096, (B, T), generator=torch.Generator().manual_seed(0))  # (B, T)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :5] = 0  # padding, as the engine's batches have
    fixed = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    fixed |= {t.untyped_storage().data_ptr() for f in svf.factors.values() for t in (f.U, f.S, f.V)}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in fixed:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    z = {t: torch.full((B, f.S.numel()), 0.7, requires_grad=True) for t, f in svf.factors.items()}  # (B, r)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), svf.factored(z), layers_training(layers):
        model(input_ids=ids, attention_mask=mask, logits_to_keep=1)  # as the SVF trainer's gradient passes
    return sum(saved.values()), name, B * T


def test_activation_formula_matches_saved_tensors(tmp_path):
    """What autograd saves in a factored forward pass against the plan's per-token formula."""
    saved, name, tokens = _saved_bytes(tmp_path, checkpointing=False)
    assert saved == pytest.approx(tokens * activation_bytes_per_token(shapes(name, "mlp"), "bfloat16", "bfloat16"),
                                  rel=0.05)


def test_checkpointed_activations_match_saved_tensors(tmp_path):
    """With checkpointing, the forward pass keeps each layer's input (bfloat16) and the final norm's float32
    input, normalised input and output; the plan adds one layer's share of the full formula (checked above)
    for the recompute."""
    saved, name, tokens = _saved_bytes(tmp_path, checkpointing=True)
    s = shapes(name, "mlp")
    boundary = s.layers * 2 * s.hidden + 4 * s.hidden + 2 * 2 * s.hidden  # per token
    assert saved == pytest.approx(tokens * boundary, rel=0.05)
    full = activation_bytes_per_token(s, "bfloat16", "bfloat16")
    assert activation_bytes_per_token(s, "bfloat16", "bfloat16", checkpointing=True) == pytest.approx(
        boundary + (full - 8 * s.hidden) / s.layers, abs=1)
    llama = shapes("random:llama-3-8b", "mlp")
    on, off = (plan(PlanConfig(batch_size=8, seq_len=512, checkpointing=c), llama)["train"] for c in (True, False))
    assert on["activations"] < off["activations"] / 10  # 32 layers: ~1/32 of the activations plus the boundaries
    assert fits(sum(on.values())) == [40, 48, 80, 141]  # SVF training of Llama-3-8B on a 40 GB card


def test_cli_prints_the_8b_and_70b_plans(capsys):
    main(["plan", "--model", "random:llama-3-8b", "--seq-len", "256"])
    out = capsys.readouterr().out
    assert "7,248,150,528 factor values" in out and "| factors | 14.50 |" in out and "train, 1 GPU" in out
    main(["plan", "--model", "random:llama-3-70b", "--batch-size", "1", "--gpus", "8"])
    out = capsys.readouterr().out
    assert "70,553,706,496 parameters" in out and "per GPU of 8 (sharded)" in out
