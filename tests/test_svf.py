"""SVF core: parametrisations × {merged, factored} × {one expert, mixture} (the contract matrix),
uniform-z identity, exact restore, gradients against finite differences, mixing."""

from __future__ import annotations

import pytest
import torch

from transformer_squared.experts.expert import Expert, attach
from transformer_squared.models.load import model_id
from transformer_squared.experts.svd import Factors
from transformer_squared.experts.svf import PARAMETRISATIONS, SVFModel, adapted_s, mix, mix_batch, recompose

PROMPTS = ["The quick brown fox jumps over", "Hà Nội là thủ đô của", "1 2 3 4"]


def _logits(model, tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits  # (B, T, V)


def _experts(svf, parametrisation, n=2):
    out = []
    for k in range(n):
        e = Expert.init(svf.factors, "tiny", svf.fingerprint, parametrisation, seed=k)
        g = torch.Generator().manual_seed(100 + k)
        e.p = {t: p + 0.8 * torch.randn(p.shape, generator=g) for t, p in e.p.items()}  # a clearly non-uniform z
        out.append(e)
    return out


def test_recompose_formula():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(7, 5, generator=g)
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    z = torch.rand(5, generator=g) + 0.5
    expected = U @ torch.diag(s * z * (s.sum() / (s * z).sum())) @ Vh  # written out by hand
    torch.testing.assert_close(recompose(U, s, Vh.T, z), expected)
    torch.testing.assert_close(recompose(U, s, Vh.T, torch.ones(5)), W, rtol=1e-5, atol=1e-5)
    assert torch.allclose(adapted_s(s, z).sum(), s.sum())  # the sum of singular values is kept


@pytest.mark.parametrize("const", [1.0, 0.3, 7.0])
def test_uniform_z_leaves_logits(tiny, const):
    model, tok = tiny
    svf = attach(model)
    base = _logits(model, tok, PROMPTS)
    z = {t: torch.full_like(f.S, const) for t, f in svf.factors.items()}
    with svf.merged(z):
        merged = _logits(model, tok, PROMPTS)
    with svf.factored({t: v.expand(len(PROMPTS), -1) for t, v in z.items()}):
        factored = _logits(model, tok, PROMPTS)
    assert (merged - base).abs().max() < 1e-4
    assert (factored - base).abs().max() < 1e-4


def test_restore_is_bit_identical(tiny):
    model, tok = tiny
    svf = attach(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (e,) = _experts(svf, "sigmoid", 1)
    with svf.merged(e.z()):
        assert not torch.equal(model.get_submodule(svf.targets[0]).weight, before[svf.targets[0] + ".weight"])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS.names())
@pytest.mark.parametrize("mixture", [False, True])
def test_contract_merged_equals_factored(tiny, parametrisation, mixture):
    """Every parametrisation × {merged, factored} × {one expert, mixture} gives the same logits."""
    model, tok = tiny
    svf = attach(model)
    experts = _experts(svf, parametrisation, 2)
    zs = [e.z() for e in experts]
    alpha = torch.tensor([0.3, 0.7]) if mixture else torch.tensor([1.0, 0.0])
    z = mix(zs, alpha)
    base = _logits(model, tok, PROMPTS)
    with svf.merged(z):
        merged = _logits(model, tok, PROMPTS)
    with svf.factored(mix_batch(zs, alpha.expand(len(PROMPTS), -1))):
        factored = _logits(model, tok, PROMPTS)
    assert (merged - base).abs().max() > 1e-2  # the expert really changes the model
    torch.testing.assert_close(factored, merged, rtol=1e-4, atol=1e-4)


def test_mixed_batch_matches_rows_alone(tiny):
    """A factored batch whose rows carry different experts (and one base row) = each row run alone, merged."""
    model, tok = tiny
    svf = attach(model)
    zs = [e.z() for e in _experts(svf, "sigmoid", 2)]
    alpha = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # expert 0, expert 1, base
    with svf.factored(mix_batch(zs, alpha)):
        batch = _logits(model, tok, PROMPTS)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    for row in range(3):
        ctx = svf.merged(zs[row]) if row < 2 else torch.no_grad()
        with ctx:
            with torch.no_grad():
                alone = model(input_ids=enc.input_ids[row : row + 1], attention_mask=enc.attention_mask[row : row + 1]).logits
        mask = enc.attention_mask[row].bool()
        torch.testing.assert_close(batch[row][mask], alone[0][mask], rtol=1e-4, atol=1e-4)


def test_one_hot_alpha_selects_expert_and_mixing_is_after_sigmoid():
    g = torch.Generator().manual_seed(1)
    p1, p2 = {"t": torch.randn(6, generator=g)}, {"t": torch.randn(6, generator=g)}
    f = PARAMETRISATIONS.get("sigmoid")
    z1, z2 = {"t": f.z(p1["t"])}, {"t": f.z(p2["t"])}
    assert torch.equal(mix([z1, z2], torch.tensor([0.0, 1.0]))["t"], z2["t"])
    mixed = mix([z1, z2], torch.tensor([0.5, 0.5]))["t"]
    torch.testing.assert_close(mixed, 0.5 * torch.sigmoid(p1["t"]) + 0.5 * torch.sigmoid(p2["t"]))
    assert not torch.allclose(mixed, torch.sigmoid(0.5 * p1["t"] + 0.5 * p2["t"]))
    per_target = mix([z1, z2], torch.tensor([[0.25], [0.75]]))["t"]
    torch.testing.assert_close(per_target, 0.25 * z1["t"] + 0.75 * z2["t"])


def test_gradient_matches_finite_differences():
    """d loss / d p through the merged route (weight grad → backward_to_z) against central differences."""
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(5, 4, bias=False)).double()
    W = lin[0].weight.detach().clone()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    svf = SVFModel(lin, {"0": Factors(U, S, Vh.T)})
    f = PARAMETRISATIONS.get("sigmoid")
    x = torch.randn(3, 5, dtype=torch.float64)

    def loss_at(p):
        with svf.merged({"0": f.z(p)}):
            return lin(x).pow(2).sum().item()

    p = (0.1 + 0.5 * torch.randn(4, dtype=torch.float64)).requires_grad_(True)
    svf.track_weight_grads(True)
    Ws = svf.merge({"0": f.z(p)})
    lin(x).pow(2).sum().backward()
    svf.backward_to_z(Ws)
    svf.restore()
    eps = 1e-6
    fd = torch.tensor([(loss_at(p.detach() + eps * e) - loss_at(p.detach() - eps * e)) / (2 * eps)
                       for e in torch.eye(4, dtype=torch.float64)], dtype=torch.float64)
    torch.testing.assert_close(p.grad, fd, rtol=1e-6, atol=1e-8)


def test_non_finite_expert_is_refused(tiny):
    model, _ = tiny
    svf = attach(model)
    z = {t: torch.full_like(f.S, float("nan")) for t, f in svf.factors.items()}
    before = model.get_submodule(svf.targets[0]).weight.clone()
    from transformer_squared.errors import ExpertError

    with pytest.raises(ExpertError, match="not finite"):
        svf.merge(z)
    svf.restore()
    assert torch.equal(model.get_submodule(svf.targets[0]).weight, before)


@pytest.mark.slow
def test_smollm2_uniform_z_and_factored(smollm2):
    model, tok = smollm2
    svf = attach(model)
    base = _logits(model, tok, PROMPTS)
    z = {t: torch.full_like(f.S, 0.5) for t, f in svf.factors.items()}
    with svf.merged(z):
        assert (_logits(model, tok, PROMPTS) - base).abs().max() < 1e-4
    e = _experts(svf, "sigmoid", 1)[0]
    with svf.merged(e.z()):
        merged = _logits(model, tok, PROMPTS)
    with svf.factored({t: v.expand(len(PROMPTS), -1) for t, v in e.z().items()}):
        factored = _logits(model, tok, PROMPTS)
    # 30 layers of float32 rounding in two different product orders, amplified by the first
    # position's very large activations (attention sink); logits are ~10 in size, so 5e-3 is ~1e-4 relative
    torch.testing.assert_close(factored, merged, rtol=1e-3, atol=5e-3)
    assert model_id(model) == "smollm2-135m-instruct"


def test_failed_merge_leaves_every_weight_bit_identical(tiny):
    """A non-finite z on the last target, or a delta that overflows while writing the last target
    (after the others are merged), raises and leaves every weight as it was."""
    from transformer_squared.errors import ExpertError

    model, _ = tiny
    svf = attach(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (e,) = _experts(svf, "sigmoid", 1)
    last = svf.targets[-1]
    z = e.z()
    z[last] = z[last].clone()
    z[last][3] = float("inf")
    with pytest.raises(ExpertError, match=f"'{last}'.*not finite"):
        with svf.merged(z):
            pass
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    f = svf.factors[last]
    U = f.U.clone()
    U[0, 0] = float("inf")  # finite s', but a non-finite ΔW, found while writing the last target
    svf.factors[last] = Factors(U, f.S, f.V)
    with pytest.raises(ExpertError, match=f"adapted weight of '{last}' is not finite"):
        svf.merge(e.z())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not svf._originals


def test_factored_uses_the_factors_without_casting(tiny):
    """FactoredLinear holds the SVFModel's own U and V (one copy for the model's life), whatever the dtype."""
    from transformer_squared.experts.svf import FactoredLinear

    model, _ = tiny
    svf = attach(model, factor_dtype="bfloat16")
    z = {t: torch.full((2, f.S.numel()), 0.5) for t, f in svf.factors.items()}
    with svf.factored(z):
        layer = model.get_submodule(svf.targets[0])
        assert isinstance(layer, FactoredLinear)
        assert layer.U.data_ptr() == svf.factors[svf.targets[0]].U.data_ptr() and layer.U.dtype == torch.bfloat16


def test_adapted_s_of_zero_z_is_the_base():
    """z = 0 (a target whose α are all zero) has no scale to keep: s' = s, never 0·∞ = NaN."""
    torch.testing.assert_close(adapted_s(torch.ones(3), torch.zeros(3)), torch.ones(3))
    s = torch.tensor([3.0, 2.0, 1.0])
    z = torch.stack([torch.zeros(3), torch.tensor([1.0, 0.5, 0.0])])  # (2, r): one empty row, one real
    out = adapted_s(s, z)
    torch.testing.assert_close(out[0], s)
    torch.testing.assert_close(out[1], s * z[1] * (6.0 / 4.0))  # by hand: Σs = 6, Σ(s⊙z) = 4


@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS.names())
def test_target_with_all_zero_alpha_keeps_base_weights(tiny, parametrisation):
    """--alpha-per target: the α of target 0 are all zero, the rest are not. Merged: target 0's weight is
    exactly W, every other target is U·diag(s')·Vᵀ from its own mixture, written out by hand. Factored: each
    target's output is x·Wᵀ for target 0 and x·W'ᵀ for the others; the logits are finite and equal merged."""
    model, tok = tiny
    svf = attach(model)
    zs = [e.z() for e in _experts(svf, parametrisation, 2)]
    names = svf.targets
    alpha = torch.full((2, len(names)), 0.5)
    alpha[:, 0] = 0.0  # (K, n_targets): no expert for the first target
    W0 = {t: model.get_submodule(t).weight.detach().clone() for t in names}
    with svf.merged(mix(zs, alpha)):
        for i, t in enumerate(names):
            W = model.get_submodule(t).weight.detach()
            if i == 0:
                assert torch.equal(W, W0[t])
                continue
            f = svf.factors[t]
            z = 0.5 * zs[0][t] + 0.5 * zs[1][t]
            s2 = f.S * z * (f.S.sum() / (f.S * z).sum()) if svf.normalise else f.S * z
            torch.testing.assert_close(W, (f.U * s2) @ f.V.T, rtol=1e-4, atol=1e-4)
        merged = _logits(model, tok, PROMPTS)
    x = torch.randn(2, 3, W0[names[0]].shape[1], generator=torch.Generator().manual_seed(0))  # (B, T, in)
    with svf.factored(mix_batch(zs, alpha.expand(2, -1, -1))):
        torch.testing.assert_close(model.get_submodule(names[0])(x), x @ W0[names[0]].T, rtol=1e-4, atol=1e-4)
    with svf.factored(mix_batch(zs, alpha.expand(len(PROMPTS), -1, -1))):
        factored = _logits(model, tok, PROMPTS)
    assert torch.isfinite(factored).all()
    torch.testing.assert_close(factored, merged, rtol=1e-4, atol=1e-4)


def test_adapted_weight_adds_in_the_wider_dtype_and_refuses_non_finite():
    """The one W₀ + ΔW of merging, export and the vLLM backend."""
    from transformer_squared.errors import ExpertError
    from transformer_squared.experts.svf import adapted_weight

    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(6, 4, generator=g).to(torch.bfloat16)
    dW = torch.randn(6, 4, generator=g) * 1e-3  # below bfloat16's resolution at these sizes
    W = adapted_weight("layer.mlp", W0, dW)
    assert W.dtype == torch.float32
    torch.testing.assert_close(W, W0.to(torch.float64).add(dW.to(torch.float64)).float(), rtol=0, atol=1e-7)
    dW[2, 1] = float("nan")
    with pytest.raises(ExpertError, match="adapted weight of 'layer.mlp' is not finite"):
        adapted_weight("layer.mlp", W0, dW)
