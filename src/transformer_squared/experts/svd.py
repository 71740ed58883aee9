"""Choose target matrices, decompose them once (W = U·diag(s)·Vᵀ, paper §3.1) and cache the factors.

Cache layout: `<T2_HOME>/svd/<fingerprint>/<target>.safetensors` (tensors `<target>.U`, `.S`,
`.V`) plus `index.json`. One target at a time, in float32, each file written atomically, so a
killed run resumes where it stopped and peak memory stays near one matrix and its factors; a
file lock (`<T2_HOME>/locks/svd-<fingerprint>.lock`) lets one process decompose while others wait.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from filelock import FileLock
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..atomic import write_json, write_safetensors
from ..errors import CacheError, ConfigError
from ..models.load import DTYPES, model_id, t2_home

log = logging.getLogger(__name__)

_MLP_PARENTS = re.compile(r"(^|\.)(mlp|feed_forward|ffn|ff|moe|experts?)(\.|$)")
_ATTN_PARENTS = re.compile(r"(^|\.)(self_attn|attn|attention|self_attention)(\.|$)")
INDEX = "index.json"
FORMAT_VERSION = 1
FINGERPRINT_VERSION = 2  # 1: float linspace sample (wrong index past 2^24 entries), dtype in the hash
_SLAB = 1 << 24  # entries hashed per step


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


@dataclass(frozen=True)
class WeightSource:
    """Where target weights come from: a loaded model, or a checkpoint read one tensor at a time."""

    name: str  # model id recorded in the cache index and in messages
    get: Callable[[str], torch.Tensor]  # target (module) name → its weight (out, in)


def source_of(model: nn.Module | WeightSource) -> WeightSource:
    if isinstance(model, WeightSource):
        return model
    return WeightSource(model_id(model), lambda n: model.get_submodule(n).weight)


def fingerprint(model: nn.Module | WeightSource, targets: list[str]) -> str:
    """A short hash identifying the base weights of the targets (names, shapes, every value).

    Exact for any size and independent of the device and of the dtype the weights were loaded in:
    each target's values are hashed as float32 bytes (upcasting is exact), slab by slab, several
    targets at once on threads (hashlib releases the GIL), then the per-target digests in order.
    """
    src = source_of(model)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda name: _digest(src.get(name)), targets))
    h = hashlib.blake2b(digest_size=10)
    h.update(f"fingerprint-v{FINGERPRINT_VERSION}".encode())
    for name, d in zip(targets, digests):
        h.update(name.encode() + b"\0" + d)
    return h.hexdigest()


def _digest(W: torch.Tensor) -> bytes:
    flat = W.detach().reshape(-1)
    h = hashlib.sha256(f"{tuple(W.shape)}".encode())  # the fastest hashlib digest here (SHA extensions)
    for start in range(0, flat.numel(), _SLAB):  # slabs bound the float32 copy (64 MB)
        part = flat[start : start + _SLAB].to("cpu", torch.float32).contiguous()  # (slab,)
        h.update(memoryview(part.numpy()))
    return h.digest()


def legacy_fingerprint(model: nn.Module | WeightSource, targets: list[str]) -> str | None:
    """The version-1 fingerprint (float linspace sample, dtype in the hash), for caches and experts
    made before version 2; None where version 1 could not be computed (targets of ≥ 2^24 entries)."""
    src = source_of(model)
    h = hashlib.blake2b(digest_size=10)
    for name in targets:
        W = src.get(name).detach()
        flat = W.reshape(-1)
        if flat.numel() >= 1 << 24:
            return None
        idx = torch.linspace(0, flat.numel() - 1, min(4096, flat.numel()), device=flat.device).long()
        h.update(f"{name}:{tuple(W.shape)}:{W.dtype}".encode())
        h.update(flat[idx].double().cpu().numpy().tobytes())
        h.update(torch.stack([flat.double().sum(), flat.double().square().sum()]).cpu().numpy().tobytes())
    return h.hexdigest()


def cache_dir(fp: str, root: Path | None = None) -> Path:
    return (root or t2_home()) / "svd" / fp


def svd_one(W: torch.Tensor, device: torch.device | None = None) -> Factors:
    """Reduced SVD in float32 (on `device` if given); factors returned on the CPU."""
    W32 = W.detach().to(device or W.device, torch.float32)
    U, S, Vh = torch.linalg.svd(W32, full_matrices=False)  # (out, r), (r,), (r, in)
    return Factors(U.cpu(), S.cpu(), Vh.T.contiguous().cpu())  # V: (in, r)


def default_factor_dtype(device: torch.device | str) -> str:
    """Factors in memory: bfloat16 on a GPU (14.5 GB for Llama-3-8B's MLP targets), float32 elsewhere."""
    return "bfloat16" if torch.device(device).type == "cuda" else "float32"


def decompose(
    model: nn.Module | WeightSource,
    targets: str | list[str] = "mlp",
    device: str | None = None,
    dtype: str = "float32",
    root: Path | None = None,
    progress: bool = True,
    fp: str | None = None,
) -> Path:
    """Decompose each target not yet cached; returns the cache folder. Resumable.

    A file lock on the folder makes concurrent processes (two commands, or the ranks of a
    distributed run) decompose each target once: the others wait, then find it cached.
    """
    if isinstance(targets, str):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"--targets '{targets}': a checkpoint source needs explicit target names")
        names = resolve_targets(model, targets)
    else:
        names = list(targets)
    if dtype not in DTYPES:
        raise ConfigError(f"--factor-dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    src = source_of(model)
    fp = fp or fingerprint(src, names)
    folder = cache_dir(fp, root)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _lock(folder):
        if not folder.exists():
            _adopt_legacy(src, names, folder, root)
        folder.mkdir(exist_ok=True)
        index = _read_index(folder) or {"format_version": FORMAT_VERSION, "model": src.name,
                                         "fingerprint": fp, "targets": {}, "t2_version": __version__}
        todo = [n for n in names if n not in index["targets"] or not (folder / index["targets"][n]["file"]).is_file()]
        _run(src, todo, folder, index, torch.device(device) if device else None, dtype, progress)
    return folder


def _run(src: WeightSource, todo: list[str], folder: Path, index: dict, dev: torch.device | None, dtype: str,
         progress: bool) -> None:
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
            weight = src.get(name)
            f = svd_one(weight, dev)
            shape = list(weight.shape)
            del weight  # a checkpoint source reads each weight anew: keep only one in memory
            if pending is not None:
                pending.result()
            pending = writer.submit(save, name, f, shape)
        if pending is not None:
            pending.result()
    if todo or not (folder / INDEX).is_file():  # a complete cache is only read, never rewritten
        write_json(index, folder / INDEX)


def _adopt_legacy(src: WeightSource, names: list[str], folder: Path, root: Path | None) -> None:
    """Rename a cache made under the version-1 fingerprint of the same weights to its version-2 name."""
    old = legacy_fingerprint(src, names)
    legacy = cache_dir(old, root) if old else None
    if legacy is None or not legacy.is_dir():
        return
    with _lock(legacy):
        if not legacy.is_dir():
            return
        index = _read_index(legacy) or {}
        index["fingerprint"] = folder.name
        write_json(index, legacy / INDEX)
        os.replace(legacy, folder)
    log.info("SVD cache %s renamed to %s (fingerprint version 2)", legacy.name, folder.name)


def _lock(folder: Path) -> FileLock:
    """The lock of a cache folder, kept beside the cache (`<root>/locks/svd-<fingerprint>.lock`)."""
    locks = folder.parent.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"svd-{folder.name}.lock"))


def _read_index(folder: Path) -> dict | None:
    path = folder / INDEX
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CacheError(f"{path}: corrupt SVD index ({e}); delete the folder and decompose again") from None


def load_factors(
    model: nn.Module | WeightSource, targets: list[str], root: Path | None = None,
    device: torch.device | str = "cpu", fp: str | None = None, dtype: str | None = None,
) -> dict[str, Factors]:
    """Cached factors of `targets` for these weights on `device`: U and V in `dtype` (default:
    `default_factor_dtype(device)`), S in float32. Each target is read on the CPU and cast there,
    so the device never holds a second copy."""
    fp = fp or fingerprint(model, targets)
    torch_dtype = DTYPES[dtype or default_factor_dtype(device)]
    folder = cache_dir(fp, root)
    index = _read_index(folder)
    missing = [n for n in targets if not index or n not in index["targets"]]
    if missing:
        raise CacheError(
            f"{folder}: no SVD factors for {len(missing)} target(s) (first: {missing[0]}); "
            f"run `t2 decompose --model {source_of(model).name}` first"
        )
    out = {}
    for name in targets:
        path = folder / index["targets"][name]["file"]
        try:
            t = load_file(path)
        except Exception as e:  # truncated, corrupt or foreign file: safetensors has its own error types
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise CacheError(f"{path}: unreadable SVD factors ({reason}); delete the file and run "
                             f"`t2 decompose` again") from None
        U, S, V = (t[f"{name}.{k}"] for k in ("U", "S", "V"))
        out[name] = Factors(U.to(torch_dtype).to(device), S.float().to(device), V.to(torch_dtype).to(device))
    return out


def ensure_factors(
    model: nn.Module, targets: str | list[str] = "mlp", root: Path | None = None, progress: bool = False,
    dtype: str | None = None, fp: str | None = None,
) -> tuple[str, dict[str, Factors]]:
    """(fingerprint, factors): decompose what is missing, then load all on the model's device
    (U, V in `dtype`, default bfloat16 on a GPU and float32 elsewhere)."""
    names = resolve_targets(model, targets) if isinstance(targets, str) else list(targets)
    device = next(model.parameters()).device
    fp = decompose(model, names, device=str(device), root=root, progress=progress, fp=fp).name
    return fp, load_factors(model, names, root, device, fp, dtype)
