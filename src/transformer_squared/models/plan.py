"""Memory plan of SVF training and evaluation from a model's config alone (no weights loaded).

Shapes come from the architecture built on the meta device (`accelerate.init_empty_weights`), so
every Linear and its SVD rank is exact. Activations follow what autograd saves in a Llama-style
decoder layer (RMSNorm upcasts its input to float32; SDPA's memory-efficient kernel keeps q, k, v
repeated to all heads, and its output; the SwiGLU MLP keeps gate, act, up and their product), with
per token and layer, for model dtype bytes b and factor dtype bytes f:
    saved = 2·4h (norms) + b·(7h + 4I) + Σ_targets 2·r·f          (training, factored mode)
    with activation checkpointing (`gradient_checkpointing: true`): each layer's input b·h, plus one
    layer's `saved` while the backward pass recomputes it; either way the final norm's 4h + 2·b·h
    peak  = b·(3I + 4h)                                             (evaluation, no graph)
    KV    = 2·n_kv·d_head·b                                         (generation cache)
`tests/test_plan.py` checks the formula against the bytes autograd really saves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import ConfigError
from . import random_weights as random_models
from .load import DTYPES

CARDS_GB = (24, 40, 48, 80, 141)  # common accelerator sizes
USABLE = 0.95  # share of a card's nominal GB (10⁹ bytes) left after the CUDA context and fragmentation
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
OPTIMIZER_STATES = 2  # Adam: first and second moments


@dataclass
class PlanConfig:
    """What to plan for."""

    model: str = "random:llama-3-8b"  # any model name; only its config is read
    targets: str = "mlp"  # mlp, attn, all or a regex
    batch_size: int = 8  # prompts per forward pass (training micro-batch, evaluation batch)
    seq_len: int = 512  # tokens per prompt, padded (VMLU with Llama-3's tokenizer: median 109, max 460 on valid)
    dtype: str = "bfloat16"  # model dtype
    factor_dtype: str = "bfloat16"  # U and V in memory
    new_tokens: int = 64  # generation length for the KV-cache line
    gpus: int = 8  # the sharded column: weights and factors split over this many GPUs
    checkpointing: bool = False  # activation checkpointing of every decoder layer (gradient_checkpointing: true)
    num_layers: int | None = None  # random: models only: plan for this many decoder layers

    FLAGS: ClassVar[dict[str, tuple[str, ...]]] = {"-m": ("model",)}  # the CLI's short flags

    @property
    def spec(self) -> str:
        """The model name with num_layers folded in (random:NAME?layers=N)."""
        return random_models.with_layers(self.model, self.num_layers)

    def __post_init__(self) -> None:
        problems = [f"{k} must be ≥ 1, got {getattr(self, k)}" for k in ("batch_size", "seq_len", "gpus")
                    if getattr(self, k) < 1]
        problems += [f"{k} '{getattr(self, k)}': choose one of {', '.join(DTYPES)}" for k in ("dtype", "factor_dtype")
                     if getattr(self, k) not in DTYPES]
        if self.new_tokens < 0:
            problems.append(f"new_tokens must be ≥ 0, got {self.new_tokens}")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class Shapes:
    """What the plan needs from the architecture."""

    n_params: int  # unique parameters
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    targets: dict[str, tuple[int, int]] = field(default_factory=dict)  # name → (out, in)

    def rank(self, name: str) -> int:
        return min(self.targets[name])


def shapes(model: str, targets: str = "mlp") -> Shapes:
    """Shapes of `model` from its config, built on the meta device (no weights read)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from . import random_weights as random_models
    from .load import resolve_model
    from ..experts.svd import resolve_targets

    if random_models.is_random(model):
        config = random_models.load_config(random_models.parse(model))
    else:
        config = AutoConfig.from_pretrained(resolve_model(model))
    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config)
    names = resolve_targets(meta, targets)
    heads = config.num_attention_heads
    return Shapes(
        n_params=sum(p.numel() for p in meta.parameters()), layers=config.num_hidden_layers,
        hidden=config.hidden_size, intermediate=config.intermediate_size, heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads, vocab=config.vocab_size,
        targets={n: tuple(meta.get_submodule(n).weight.shape) for n in names},
    )


def factor_values(s: Shapes) -> int:
    """Values in U, S and V of every target: Σ (out·r + r + in·r)."""
    return sum((o + 1 + i) * min(o, i) for o, i in s.targets.values())


def activation_bytes_per_token(s: Shapes, dtype: str, factor_dtype: str, checkpointing: bool = False) -> int:
    """Bytes autograd saves per token in training (factored mode), over all layers (module docstring);
    with checkpointing, the peak: every layer's input plus one layer's activations during its recompute."""
    b, f = BYTES[dtype], BYTES[factor_dtype]
    h, inter = s.hidden, s.intermediate
    per_layer = 2 * 4 * h + b * (7 * h + 4 * inter)
    extras = sum(2 * min(o, i) * f + (i * f if f != b else 0) for o, i in s.targets.values())  # (x·V), h; cast x
    head = 4 * h + 2 * b * h  # the final norm: its float32 input, the normalised input, its output (the LM head's)
    if checkpointing:
        return s.layers * b * h + per_layer + extras // max(s.layers, 1) + head
    return s.layers * per_layer + extras + head


def plan(cfg: PlanConfig, s: Shapes | None = None) -> dict[str, dict[str, int]]:
    """Bytes per component for training and evaluation on one GPU and per GPU when sharded over `cfg.gpus`."""
    s = s or shapes(cfg.spec, cfg.targets)
    b, f = BYTES[cfg.dtype], BYTES[cfg.factor_dtype]
    tokens = cfg.batch_size * cfg.seq_len
    ranks = sum(min(o, i) for o, i in s.targets.values())
    weights = s.n_params * b
    factors = sum((o + i) * min(o, i) for o, i in s.targets.values()) * f + ranks * 4  # S in float32
    expert = ranks * 4  # p in float32
    train_act = tokens * activation_bytes_per_token(s, cfg.dtype, cfg.factor_dtype, cfg.checkpointing)
    logits = cfg.batch_size * s.vocab * 4 * 3  # last position: logits, log-softmax, grad (float32)
    eval_act = tokens * b * (3 * s.intermediate + 4 * s.hidden) + cfg.batch_size * s.vocab * 4
    kv = 2 * s.layers * s.kv_heads * s.head_dim * (cfg.seq_len + cfg.new_tokens) * cfg.batch_size * b
    train = {"weights": weights, "factors": factors, "expert": expert, "gradients": expert,
             "optimizer": OPTIMIZER_STATES * expert, "activations": train_act + logits, "kv_cache": 0}
    evaluate = {"weights": weights, "factors": factors, "expert": expert, "gradients": 0, "optimizer": 0,
                "activations": eval_act, "kv_cache": kv}
    layer_share = (weights + factors) // max(s.layers, 1)  # one layer gathered at a time (FSDP), double-buffered
    sharded = {k: (v // cfg.gpus if k in ("weights", "factors") else v) for k, v in train.items()}
    sharded["gathered"] = 2 * layer_share if cfg.gpus > 1 else 0
    for part in (train, evaluate):
        part["gathered"] = 0
    return {"train": train, "eval": evaluate, f"train_sharded_{cfg.gpus}": sharded}


def fits(total_bytes: int) -> list[int]:
    """Card sizes (GB) with room for `total_bytes`."""
    return [c for c in CARDS_GB if total_bytes <= USABLE * c * 1e9]


ROWS = ("weights", "factors", "expert", "gradients", "optimizer", "activations", "kv_cache", "gathered")


def render(cfg: PlanConfig, s: Shapes, result: dict[str, dict[str, int]]) -> str:
    """The plan as Markdown: the shapes, a GB table per component, totals and the cards each fits."""
    gb = lambda n: f"{n / 1e9:,.2f}"  # noqa: E731
    cols = list(result)
    head = {"train": "train, 1 GPU", "eval": "eval, 1 GPU"}
    lines = [
        f"model {cfg.spec}: {s.n_params:,} parameters, {s.layers} layers, hidden {s.hidden}, MLP {s.intermediate}, "
        f"vocab {s.vocab}; {len(s.targets)} targets ({cfg.targets}), {factor_values(s):,} factor values, "
        f"{sum(min(t) for t in s.targets.values()):,} expert parameters",
        f"batch {cfg.batch_size} × {cfg.seq_len} tokens, model {cfg.dtype}, factors {cfg.factor_dtype}; "
        f"eval KV cache for {cfg.new_tokens} new tokens; activation checkpointing "
        f"{'on' if cfg.checkpointing else 'off'}; GB = 10⁹ bytes",
        "",
        "| GB | " + " | ".join(head.get(c, f"train, per GPU of {cfg.gpus} (sharded)") for c in cols) + " |",
        "| --- |" + " ---: |" * len(cols),
    ]
    for row in ROWS:
        lines.append(f"| {row.replace('_', ' ')} | " + " | ".join(gb(result[c].get(row, 0)) for c in cols) + " |")
    totals = {c: sum(result[c].values()) for c in cols}
    lines.append("| **total** | " + " | ".join(f"**{gb(totals[c])}**" for c in cols) + " |")
    lines.append("| fits on (GB cards) | " + " | ".join(", ".join(map(str, fits(totals[c]))) or "none" for c in cols)
                 + " |")
    return "\n".join(lines)
