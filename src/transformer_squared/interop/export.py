"""Export adapted weights for the plain Hugging Face stack: a merged checkpoint, or an expert as a LoRA adapter.

SVF changes only singular values, so for one target ΔW = W' − W = U · diag(Δ) · Vᵀ with Δ = s' − s.
Keeping the R directions with the largest |Δᵢ| is the best rank-R approximation of ΔW (U and V
are orthonormal; Eckart–Young), and its relative error is closed-form:
‖ΔW − ΔW_R‖_F / ‖ΔW‖_F = sqrt(Σ_dropped Δᵢ²) / sqrt(Σ Δᵢ²). No new SVD is needed.
LoRA split: B = U_R · diag(sign(Δ)·sqrt|Δ|) (out × R), A = diag(sqrt|Δ|) · V_Rᵀ (R × in), with
lora_alpha = r so PEFT's scale is 1 and W + B·A = W + ΔW_R.
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors.torch import load_file
from torch import Tensor

from .. import __version__
from ..atomic import atomic_folder, check_folder_target, write_json, write_safetensors, write_text
from ..experts.adapted import fixed_alpha, load_experts
from ..errors import ConfigError, ExportError
from ..experts.expert import Expert, check_together
from ..models.load import BUILTINS, DTYPES, pick_device, resolve_model
from ..models.random_weights import is_random
from ..experts.svd import Factors, decompose, fingerprint, legacy_fingerprint, load_factors
from ..experts.svf import adapted_s, adapted_weight, delta_w, mix
from .checkpoint import INDEX, Checkpoint, base_folder
from .model_card import lora_card, merged_card

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EXPORT_META = "t2_export.json"


@dataclass(frozen=True)
class LoraFactors:
    """Rank-R LoRA factors of one target: ΔW_R = B (out × R) · A (R × in)."""

    A: Tensor
    B: Tensor
    rel_error: float  # ‖ΔW − ΔW_R‖_F / ‖ΔW‖_F (0 when ΔW = 0)
    sq_total: float  # ‖ΔW‖_F²
    sq_dropped: float  # ‖ΔW − ΔW_R‖_F²


@dataclass
class LoraReport:
    """What `export_lora` wrote and how close the adapter is to the expert."""

    out_dir: Path
    rank: int  # LoRA r (columns of B, rows of A)
    rel_error: dict[str, float] = field(default_factory=dict)  # per target
    overall: float = 0.0  # sqrt(Σ dropped Δ²) / sqrt(Σ Δ²) over all targets
    n_params: int = 0  # adapter parameters


def lora_factors(f: Factors, s_new: Tensor, rank: int) -> LoraFactors:
    """Best rank-`rank` factors of U·diag(s_new − s)·Vᵀ; rank above r pads with zero directions."""
    delta = (s_new - f.S).float()  # (r,)
    r = delta.numel()
    keep = torch.topk(delta.abs(), min(rank, r)).indices  # (R',) largest |Δ|
    d = delta[keep]  # (R',)
    root = d.abs().sqrt()  # (R',)
    B = f.U[:, keep] * (root * torch.sign(d))  # (out, R')
    A = root[:, None] * f.V[:, keep].T  # (R', in)
    if rank > r:  # a target of smaller rank than R: zero directions add nothing
        B = torch.cat([B, B.new_zeros(B.shape[0], rank - r)], 1)  # (out, R)
        A = torch.cat([A, A.new_zeros(rank - r, A.shape[1])], 0)  # (R, in)
    sq = delta.double().square()
    sq_total = float(sq.sum())
    sq_dropped = max(sq_total - float(sq[keep].sum()), 0.0)
    rel = math.sqrt(sq_dropped / sq_total) if sq_total > 0 else 0.0
    return LoraFactors(A.contiguous(), B.contiguous(), rel, sq_total, sq_dropped)


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Fail before any work when `out_dir` cannot become the export folder."""
    out_dir = Path(out_dir)
    check_folder_target(out_dir, "--out")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir}: already exists and is not empty (pass overwrite / --overwrite to replace it)")


@contextmanager
def _atomic_dir(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp folder beside `out_dir`; on success it becomes `out_dir` (replacing it if `overwrite`).

    A killed export leaves `out_dir` as it was (or restores it on the next run) and its temp folder is
    cleared by the next export to the same place.
    """
    check_out_dir(Path(out_dir), overwrite)
    with atomic_folder(Path(out_dir)) as tmp:
        yield tmp


def push_folder(folder: Path, repo_id: str, private: bool = False, commit_message: str = "") -> str:
    """Create `repo_id` on the Hugging Face hub (if needed) and upload `folder`; returns the commit URL."""
    try:
        import huggingface_hub as hub
    except ImportError:
        raise ExportError("--push-to-hub needs huggingface_hub: pip install 'transformer-squared[hub]'") from None
    try:
        hub.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = hub.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message or f"Upload {Path(folder).name} (transformer-squared)")
    except Exception as e:  # network, auth and hub errors all end the same way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"push of {folder} to hub repo '{repo_id}' failed: {first[:200]}") from None
    return str(getattr(info, "commit_url", info))


def _base_ref(model_name: str) -> str:
    """Where a user finds the base model: the hub id, or the local folder for built-ins and folders."""
    if model_name in BUILTINS or is_random(model_name) or Path(model_name).is_dir():
        return str(Path(resolve_model(model_name)).resolve())
    return model_name


@dataclass
class _Base:
    """A checkpoint matched to the experts: where its shards are, the targets, the dtype, the factors' cache."""

    ckpt: Checkpoint
    targets: list[str]
    dtype: str | None  # cast every floating tensor to this (None: keep the stored dtypes)
    fingerprint: str


def _match_base(model_name: str, experts: list[Expert], dtype: str | None) -> _Base:
    """Read the target weights from the shards (one at a time), check the experts' base fingerprint
    before any decomposition, and decompose what the cache lacks. With no `dtype`, a checkpoint whose
    stored weights do not match is tried cast to bfloat16 and float16 (an expert trained on a
    narrower load of a float32 checkpoint)."""
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    targets = check_together(experts)
    ckpt = Checkpoint(base_folder(model_name))
    stored = ckpt.stored_dtype(ckpt.target_key(targets[0]))
    tries = [dtype] if dtype else [None] + [d for d in ("bfloat16", "float16") if d != stored]
    first = None
    for cand in tries:
        src = ckpt.source(model_name, cand)
        fp = fingerprint(src, targets)
        first = first or (fp, src)
        if all(e.meta.fingerprint == fp for e in experts):
            break
    else:  # none matched: the legacy fingerprint of the stored weights, else the error naming both models
        fp, src = first
        legacy = legacy_fingerprint(src, targets)
        for e in experts:
            e.check_base(model_name, fp, legacy)
        cand = tries[0]
    decompose(src, targets, device=str(pick_device("auto")), progress=False, fp=fp)
    return _Base(ckpt, targets, cand, fp)


def export_merged(
    model_name: str, experts: Sequence[str | Path | Expert], alpha: Sequence[float] | None, out_dir: str | Path,
    push_to_hub: str | None = None, dtype: str | None = None, overwrite: bool = False, private: bool = False,
) -> Path:
    """Write the base checkpoint with W' = W + U·diag(s' − s)·Vᵀ merged into the targets, as a standalone
    HF folder (+ model card), streaming shard by shard: peak memory is about one shard plus one
    target's factors. `dtype` casts every floating tensor (default: keep the checkpoint's)."""
    loaded = load_experts(experts)
    if not loaded:
        raise ConfigError("export merged: give at least one expert (--expert)")
    a = fixed_alpha(alpha, len(loaded)).tolist()
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir, overwrite) as tmp:  # fail early if out_dir is taken
        base = _match_base(model_name, loaded, dtype)
        z = {t: v.detach().float() for t, v in mix([e.z() for e in loaded], torch.tensor(a)).items()}
        for shard in base.ckpt.shards:
            _write_shard(base, shard, z, loaded[0].meta.normalise, tmp / shard)
        _write_side_files(base, tmp, out_dir.name)
        meta = {"t2_version": __version__, "base_model": model_name, "base_ref": _base_ref(model_name),
                "alpha": a, "dtype": base.dtype, "experts": [_expert_summary(e) for e in loaded]}
        write_json(meta, tmp / EXPORT_META)
        write_text(merged_card(meta), tmp / "README.md")
    if push_to_hub:
        push_folder(out_dir, push_to_hub, private)
    return out_dir


def _write_shard(base: _Base, shard: str, z: dict[str, Tensor], normalise: bool, path: Path) -> None:
    """One output shard: a byte copy when nothing in it changes, else read, adapt its targets, write."""
    keys = set(base.ckpt.keys_in(shard))
    here = [t for t in base.targets if f"{t}.weight" in keys]
    if not here and base.dtype is None:
        shutil.copyfile(base.ckpt.folder / shard, path)
        return
    tensors = load_file(base.ckpt.folder / shard)  # one shard in memory
    cast = DTYPES[base.dtype] if base.dtype else None
    if cast is not None:
        tensors = {k: v.to(cast) if v.is_floating_point() else v for k, v in tensors.items()}
    for t in here:
        (f,) = load_factors(base.ckpt.source("", base.dtype), [t], fp=base.fingerprint, dtype="float32").values()
        W0 = tensors[f"{t}.weight"]  # (out, in)
        W = adapted_weight(t, W0, delta_w(f.U, f.S, f.V, z[t], normalise))  # (out, in), float32 factors
        tensors[f"{t}.weight"] = W.to(W0.dtype)
        del f, W
    write_safetensors(tensors, path, metadata=base.ckpt.shard_metadata(shard) or {"format": "pt"})


def _write_side_files(base: _Base, tmp: Path, name: str) -> None:
    """Config (renamed, dtype updated), tokenizer and generation config, and the shard index."""
    base.ckpt.copy_side_files(tmp)
    config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
    config["_name_or_path"] = name  # a standalone folder: no trace of the built-in name or the cache path
    if base.dtype:
        for key in [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]:
            config[key] = base.dtype
    write_json(config, tmp / "config.json")
    if base.ckpt.index is not None:
        index = json.loads(json.dumps(base.ckpt.index))
        if base.dtype:
            index.setdefault("metadata", {})["total_size"] = sum(p.stat().st_size - _header_size(p)
                                                                 for p in tmp.glob("*.safetensors"))
        write_json(index, tmp / INDEX)


def _header_size(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def _expert_summary(e: Expert) -> dict:
    m = e.meta
    return {"label": m.label, "description": m.description, "task": m.task, "base_model": m.base_model,
            "fingerprint": m.fingerprint, "parametrisation": m.parametrisation, "n_targets": len(m.targets),
            "n_params": e.n_params, "provenance": m.provenance, "metrics": m.metrics}


def export_lora(
    model_name: str, expert: str | Path | Expert, rank: int | None, out_dir: str | Path,
    push_to_hub: str | None = None, overwrite: bool = False, private: bool = False, dtype: str | None = None,
) -> LoraReport:
    """Write the expert's best rank-`rank` ΔW per target as a PEFT LoRA adapter (rank None = exact).
    Reads the base checkpoint one target at a time (fingerprint, missing factors), never the whole model."""
    check_out_dir(Path(out_dir), overwrite)
    if rank is not None and int(rank) < 1:
        raise ConfigError(f"--rank {rank}: a positive integer or 'full'")
    (e,) = load_experts([expert])
    base = _match_base(model_name, [e], dtype)
    max_r = max(min(base.ckpt.shape(base.ckpt.target_key(t))) for t in base.targets)
    R = max_r if rank is None else int(rank)
    if not 1 <= R <= max_r:
        raise ConfigError(f"--rank {rank}: choose 1..{max_r} (the largest target rank) or 'full'")
    out_dir = Path(out_dir)
    report = LoraReport(out_dir, R)
    tensors: dict[str, Tensor] = {}
    sq_total = sq_dropped = 0.0
    z = e.z()
    for name in base.targets:  # one target's factors in memory at a time
        (f,) = load_factors(base.ckpt.source("", base.dtype), [name], fp=base.fingerprint, dtype="float32").values()
        s_new = adapted_s(f.S, z[name].detach().float(), e.meta.normalise)  # (r,)
        lf = lora_factors(f, s_new, R)
        tensors[f"base_model.model.{name}.lora_A.weight"] = lf.A  # (R, in)
        tensors[f"base_model.model.{name}.lora_B.weight"] = lf.B  # (out, R)
        report.rel_error[name] = lf.rel_error
        sq_total, sq_dropped = sq_total + lf.sq_total, sq_dropped + lf.sq_dropped
    report.overall = math.sqrt(sq_dropped / sq_total) if sq_total > 0 else 0.0
    report.n_params = sum(t.numel() for t in tensors.values())
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": _base_ref(model_name),
        "r": R, "lora_alpha": R, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "target_modules": list(base.targets), "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True,
    }
    meta = {"t2_version": __version__, "base_model": model_name, "base_ref": _base_ref(model_name), "rank": R,
            "overall_rel_error": report.overall, "rel_error": report.rel_error, "n_params": report.n_params,
            "expert": _expert_summary(e)}
    with _atomic_dir(out_dir, overwrite) as tmp:
        write_safetensors(tensors, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        write_json(config, tmp / ADAPTER_CONFIG)
        write_json(meta, tmp / EXPORT_META)
        write_text(lora_card(meta), tmp / "README.md")
    if push_to_hub:
        push_folder(out_dir, push_to_hub, private)
    return report

