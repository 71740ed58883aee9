"""Choose target matrices, decompose them once (W = U·diag(s)·Vᵀ, paper §3.1) and cache the factors.

Cache layout: `<T2_HOME>/svd/<fingerprint>/<target>.safetensors` (tensors `<target>.U`, `.S`,
`.V`) plus `index.json`. One target at a time, in float32, each file written atomically, so a
killed run resumes where it stopped and peak memory stays near one matrix and its factors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .atomic import write_json, write_safetensors
from .errors import CacheError, ConfigError
from .models import DTYPES, model_id, t2_home

log = logging.getLogger(__name__)

_MLP_PARENTS = re.compile(r"(^|\.)(mlp|feed_forward|ffn|ff|moe|experts?)(\.|$)")
_ATTN_PARENTS = re.compile(r"(^|\.)(self_attn|attn|attention|self_attention)(\.|$)")
INDEX = "index.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Factors:
    """Reduced SVD of one target: W (out × in) = U (out × r) · diag(S) (r) · Vᵀ (r × in)."""

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor


def _block_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """Every nn.Linear inside the decoder blocks (a ModuleList of layers); never lm_head."""
    block_lists = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and any(name.startswith(b + ".") for b in block_lists):
            yield name, module


def resolve_targets(model: nn.Module, spec: str = "mlp") -> list[str]:
    """Module names of the targets: `mlp`, `attn`, `all` (all block Linears) or a regex over names."""
    linears = dict(_block_linears(model))
    if spec == "all":
        names = list(linears)
    elif spec in ("mlp", "attn"):
        pattern = _MLP_PARENTS if spec == "mlp" else _ATTN_PARENTS
        names = [n for n in linears if pattern.search(n.rsplit(".", 1)[0])]
    else:
        try:
            rx = re.compile(spec)
        except re.error as e:
            raise ConfigError(f"--targets '{spec}': not mlp, attn, all, nor a valid regex ({e})") from None
        names = [n for n, _ in model.named_modules() if rx.search(n) and isinstance(model.get_submodule(n), nn.Linear)]
    if not names:
        raise ConfigError(f"--targets '{spec}' matches no nn.Linear in {model_id(model)}")
    return names


def fingerprint(model: nn.Module, targets: list[str]) -> str:
    """A short hash identifying the base weights of the targets (names, shapes, dtype, values).

    Values enter through a strided sample of 4,096 entries and the float64 sum and sum of
    squares of each matrix: cheap on an 8B model, and any real change of weights changes it.
    """
    h = hashlib.blake2b(digest_size=10)
    for name in targets:
        W = model.get_submodule(name).weight.detach()
        flat = W.reshape(-1)
        idx = torch.linspace(0, flat.numel() - 1, min(4096, flat.numel()), device=flat.device).long()
        sample = flat[idx].double().cpu()
        stats = torch.stack([flat.double().sum(), flat.double().square().sum()]).cpu()
        h.update(f"{name}:{tuple(W.shape)}:{W.dtype}".encode())
        h.update(sample.numpy().tobytes())
        h.update(stats.numpy().tobytes())
    return h.hexdigest()


def cache_dir(fp: str, root: Path | None = None) -> Path:
    return (root or t2_home()) / "svd" / fp


def svd_one(W: torch.Tensor, device: torch.device | None = None) -> Factors:
    """Reduced SVD in float32 (on `device` if given); factors returned on the CPU."""
    W32 = W.detach().to(device or W.device, torch.float32)
    U, S, Vh = torch.linalg.svd(W32, full_matrices=False)  # (out, r), (r,), (r, in)
    return Factors(U.cpu(), S.cpu(), Vh.T.contiguous().cpu())  # V: (in, r)


def decompose(
    model: nn.Module,
    targets: str | list[str] = "mlp",
    device: str | None = None,
    dtype: str = "float32",
    root: Path | None = None,
    progress: bool = True,
) -> Path:
    """Decompose each target not yet cached; returns the cache folder. Resumable."""
    names = resolve_targets(model, targets) if isinstance(targets, str) else list(targets)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    fp = fingerprint(model, names)
    folder = cache_dir(fp, root)
    folder.mkdir(parents=True, exist_ok=True)
    index = _read_index(folder) or {"format_version": FORMAT_VERSION, "model": model_id(model),
                                     "fingerprint": fp, "targets": {}, "t2_version": __version__}
    todo = [n for n in names if n not in index["targets"] or not (folder / index["targets"][n]["file"]).is_file()]
    dev = torch.device(device) if device else None

    def save(name: str, f: Factors, shape: list[int]) -> None:  # runs on the writer thread
        file = f"{name}.safetensors"
        tensors = {f"{name}.{k}": getattr(f, k).to(DTYPES[dtype]).contiguous() for k in ("U", "S", "V")}
        write_safetensors(tensors, folder / file)
        index["targets"][name] = {"file": file, "shape": shape, "rank": int(f.S.numel()), "dtype": dtype}
        write_json(index, folder / INDEX)  # a target counts as done only once its file is complete

    # Writing target i overlaps the SVD of target i+1; one writer keeps the index in order.
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = None
        for name in tqdm(todo, desc="decompose", disable=not progress or not todo):
            weight = model.get_submodule(name).weight
            f = svd_one(weight, dev)
            if pending is not None:
                pending.result()
            pending = writer.submit(save, name, f, list(weight.shape))
        if pending is not None:
            pending.result()
    if todo or not (folder / INDEX).is_file():  # a complete cache is only read, never rewritten
        write_json(index, folder / INDEX)
    return folder


def _read_index(folder: Path) -> dict | None:
    path = folder / INDEX
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CacheError(f"{path}: corrupt SVD index ({e}); delete the folder and decompose again") from None


def load_factors(
    model: nn.Module, targets: list[str], root: Path | None = None, device: torch.device | str = "cpu",
    fp: str | None = None,
) -> dict[str, Factors]:
    """Read cached factors of `targets` for this model's weights (float32 on `device`)."""
    fp = fp or fingerprint(model, targets)
    folder = cache_dir(fp, root)
    index = _read_index(folder)
    missing = [n for n in targets if not index or n not in index["targets"]]
    if missing:
        raise CacheError(
            f"{folder}: no SVD factors for {len(missing)} target(s) (first: {missing[0]}); "
            f"run `t2 decompose --model {model_id(model)}` first"
        )
    out = {}
    for name in targets:
        path = folder / index["targets"][name]["file"]
        try:
            t = load_file(path, device=str(device))
            out[name] = Factors(*(t[f"{name}.{k}"].float() for k in ("U", "S", "V")))
        except Exception as e:  # truncated, corrupt or foreign file: safetensors has its own error types
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise CacheError(f"{path}: unreadable SVD factors ({reason}); delete the file and run "
                             f"`t2 decompose` again") from None
    return out


def ensure_factors(
    model: nn.Module, targets: str | list[str] = "mlp", root: Path | None = None, progress: bool = False,
) -> tuple[str, dict[str, Factors]]:
    """(fingerprint, factors): decompose what is missing, then load all on the model's device."""
    names = resolve_targets(model, targets) if isinstance(targets, str) else list(targets)
    device = next(model.parameters()).device
    fp = decompose(model, names, device=str(device), root=root, progress=progress).name
    return fp, load_factors(model, names, root, device, fp)
