"""Per-row SVF layers for mixed batches: the serving form y = ((x·V) ⊙ s'_b)·Uᵀ against merged weights,
the form chosen per dtype, and batched decoding with one mixture per row against one request at a time."""

from __future__ import annotations

import pytest
import torch

from labelled_experts import make_experts
from transformer_squared.errors import ConfigError
from transformer_squared.experts.expert import attach
from transformer_squared.experts.svf import adapted_s, mix_batch
from transformer_squared.serve.config import ServeConfig
from transformer_squared.serve.decode import Row, Sampling, decode
from transformer_squared.serve.factored import ServingLinear, choose_form, per_row


def _errors(model, dtype, factor_dtype):
    """Worst relative errors (serving form, merged in dtype) against merged weights in float64, per target."""
    model = model.to(dtype)
    experts = make_experts(model)  # made for the weights in this dtype (their fingerprint)
    svf = attach(model, experts, factor_dtype=factor_dtype)
    zs = [{t: z.detach() for t, z in e.z().items()} for e in experts]
    alpha = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7], [0.0, 0.0]])  # expert, expert, mixture, base
    z_rows = mix_batch(zs, alpha)
    g = torch.Generator().manual_seed(0)
    worst_serve = worst_merged = 0.0
    for name in svf.targets:
        f, base = svf.factors[name], model.get_submodule(name)
        x = torch.randn(4, 3, base.in_features, generator=g).to(dtype)  # (B, T, in)
        s2 = adapted_s(f.S, z_rows[name])  # (B, r)
        y_serve = ServingLinear(base, f, s2)(x)  # (B, T, out)
        W = base.weight
        for b in range(4):
            d = (f.U.double() * (s2[b] - f.S).double()) @ f.V.double().T  # ΔW (out, in) in float64
            y_ref = x[b].double() @ (W.double() + d).T  # (T, out): merged weights, exactly
            W_merged = (W + ((f.U * (s2[b] - f.S).to(f.U.dtype)) @ f.V.T).to(W.dtype))  # as SVFModel._write
            y_merged = (x[b] @ W_merged.T).double()
            rel = lambda y: ((y - y_ref).norm() / y_ref.norm()).item()  # noqa: E731
            worst_serve = max(worst_serve, rel(y_serve[b].double()))
            worst_merged = max(worst_merged, rel(y_merged))
    return worst_serve, worst_merged, svf


@pytest.mark.parametrize("dtype, factor_dtype", [(torch.bfloat16, "bfloat16"), (torch.bfloat16, "float32")])
def test_serving_form_within_bfloat16_rounding(tiny, dtype, factor_dtype):
    model, _ = tiny
    serve, merged, svf = _errors(model, dtype, factor_dtype)
    eps = torch.finfo(dtype).eps  # 2^-7: one rounding step of bfloat16
    # the rule the server applies: relative error against the merged weights within one rounding step;
    # merged weights written in bfloat16 are themselves ~eps/2 off, so this is the dtype's own noise level
    assert serve <= eps, (serve, merged)
    assert merged <= eps
    assert choose_form(svf)[0] == "serving"


def test_serving_form_in_float32_is_the_svd_residual_so_delta_is_chosen(tiny):
    model, _ = tiny
    serve, merged, svf = _errors(model, torch.float32, "float32")
    eps = torch.finfo(torch.float32).eps
    # merged float32 weights are within a few eps of exact; the serving form carries the float32 SVD's
    # residual W − U·diag(s)·Vᵀ (~1e-6), more than float32 rounding but far below bfloat16's
    assert merged <= 8 * eps
    assert serve <= 1e-4, serve
    form, worst = choose_form(svf)
    assert (form == "serving") == (worst <= eps)
    assert choose_form(svf, "serving") == ("serving", pytest.approx(float("nan"), nan_ok=True))


def _greedy(model, tok, prompts, n_new):
    rows, out = [], {}
    for i, (p, n) in enumerate(zip(prompts, n_new)):
        ids = tok(p)["input_ids"]
        rows.append(Row(ids, Sampling(max_tokens=n, temperature=0),
                        lambda kind, payload, i=i: out.setdefault(i, []).append((kind, payload))))
    return rows, out


@pytest.mark.parametrize("form", ["delta", "serving"])
def test_mixed_batch_decodes_like_one_request_at_a_time(tiny, form):
    """4 prompts with 4 mixtures in one batch, rows ending at different lengths (finished rows leave the
    batch): the same tokens as each prompt decoded alone with its mixture merged."""
    model, tok = tiny
    experts = make_experts(model)
    svf = attach(model, experts)
    zs = [{t: z.detach() for t, z in e.z().items()} for e in experts]
    alpha = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    prompts = ["The first prompt is longer than the others", "Hi", "A third one", "And four"]
    n_new = [3, 7, 5, 6]
    rows, _ = _greedy(model, tok, prompts, n_new)
    with per_row(svf, mix_batch(zs, alpha), form) as layers:
        decode(model, tok, rows, eos_ids=set(), context_len=None, select=layers.select)
    for b in range(4):
        alone, _ = _greedy(model, tok, prompts[b : b + 1], n_new[b : b + 1])
        z = mix_batch(zs, alpha[b : b + 1])
        with svf.merged({t: v[0] for t, v in z.items()}):
            decode(model, tok, alone, eos_ids=set(), context_len=None)
        assert rows[b].out == alone[0].out and len(rows[b].out) == n_new[b]


def test_rows_stop_on_their_own(tiny):
    """EOS ends a row without counting it, and a stop string cuts the text; the other row goes on."""
    model, tok = tiny
    rows, events = _greedy(model, tok, ["Hello world", "Hello world", "Hello world"], [8, 8, 8])
    decode(model, tok, rows, eos_ids=set(), context_len=None)
    ref = rows[0].out
    full = tok.decode(ref, skip_special_tokens=True)
    start = next(i for i in range(3, len(full) - 2) if "\ufffd" not in full[i : i + 2] and full[i : i + 2].strip())
    stop = full[start : start + 2]
    eos = next(t for t in ref[2:] if t not in ref[:2])  # a token that first appears at index ≥ 2
    rows, events = _greedy(model, tok, ["Hello world", "Hello world", "Hello world"], [8, 8, 8])
    rows[1].sampling.stop = (stop,)
    decode(model, tok, rows, eos_ids={eos}, context_len=None)
    done = [dict(events[i])["done"] for i in range(3)]
    text = ["".join(p["text"] for k, p in events[i] if k == "delta") for i in range(3)]
    n = ref.index(eos)
    assert rows[0].out == ref[:n] and done[0] == {**done[0], "finish_reason": "stop", "completion_tokens": n}
    assert text[0] == tok.decode(ref[:n], skip_special_tokens=True)
    assert text[1] == full[: full.find(stop)] and done[1]["finish_reason"] == "stop"
    assert rows[2].out == ref[:n]


def test_serve_config_reports_all_problems():
    with pytest.raises(ConfigError) as e:
        ServeConfig(port=70000, max_batch_size=0, strategy="prompt", factored="fast")
    msg = str(e.value)
    assert "port 70000" in msg and "max_batch_size 0" in msg and "factored 'fast'" in msg and "--experts" in msg
    with pytest.raises(ConfigError, match="cls-expert"):
        ServeConfig(experts=["a"], strategy="cls")
    assert ServeConfig(experts=["a"]).pass1 == "prompt" and ServeConfig().pass1 is None


@pytest.mark.parametrize("form", ["delta", "merged"])
def test_rows_joining_a_running_batch_decode_like_alone(tiny, form):
    """Continuous batching: two rows (one with a longer prompt) join after the first step of a running
    batch and one more after the third; every row gives the tokens it gives alone."""
    model, tok = tiny
    experts = make_experts(model)
    svf = attach(model, experts)
    zs = [{t: z.detach() for t, z in e.z().items()} for e in experts]
    alpha = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8], [0.0, 0.0], [0.6, 0.4]])
    if form == "merged":
        alpha = alpha[:1].expand(5, 2)
    prompts = ["Short", "A prompt of middling size", "This one is clearly the longest prompt of all five here",
               "Four", "Fifth and last"]
    n_new = [6, 4, 5, 3, 4]
    rows, _ = _greedy(model, tok, prompts, n_new)
    steps = [0]

    def join(n_running, layers=None):
        steps[0] += 1
        take = {2: [1, 2], 4: [3, 4]}.get(steps[0])
        if take is None:
            return None
        ctx = layers.push(mix_batch(zs, alpha[take])) if layers is not None else torch.no_grad()
        return [rows[i] for i in take], ctx

    if form == "merged":
        z = mix_batch(zs, alpha[:1])
        with svf.merged({t: v[0] for t, v in z.items()}):
            decode(model, tok, rows[:1], set(), None, join=join)
    else:
        with per_row(svf, mix_batch(zs, alpha[:1]), form) as layers:
            decode(model, tok, rows[:1], set(), None, layers.select, join=lambda n: join(n, layers))
    for b in range(5):
        alone, _ = _greedy(model, tok, prompts[b : b + 1], n_new[b : b + 1])
        z = mix_batch(zs, alpha[b : b + 1])
        with svf.merged({t: v[0] for t, v in z.items()}):
            decode(model, tok, alone, eos_ids=set(), context_len=None)
        assert rows[b].out == alone[0].out and len(rows[b].out) == n_new[b], b
