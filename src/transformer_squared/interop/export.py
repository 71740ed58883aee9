"""Export adapted weights for the plain Hugging Face stack: a merged checkpoint, or an expert as a LoRA adapter.

SVF changes only singular values, so for one target ΔW = W' − W = U · diag(Δ) · Vᵀ with Δ = s' − s.
Keeping the R directions with the largest |Δᵢ| is the best rank-R approximation of ΔW (U and V
are orthonormal; Eckart–Young), and its relative error is closed-form:
‖ΔW − ΔW_R‖_F / ‖ΔW‖_F = sqrt(Σ_dropped Δᵢ²) / sqrt(Σ Δᵢ²). No new SVD is needed.
LoRA split: B = U_R · diag(sign(Δ)·sqrt|Δ|) (out × R), A = diag(sqrt|Δ|) · V_Rᵀ (R × in), with
lora_alpha = r so PEFT's scale is 1 and W + B·A = W + ΔW_R.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from .. import __version__
from ..atomic import atomic_folder, check_folder_target, write_json, write_safetensors, write_text
from ..adapted import AdaptedModel, fixed_alpha, load_experts
from ..errors import ConfigError, ExportError
from ..expert import Expert, attach
from ..models import BUILTINS, load_model, resolve_model
from ..svd import Factors
from ..svf import adapted_s
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
    if model_name in BUILTINS or Path(model_name).is_dir():
        return str(Path(resolve_model(model_name)).resolve())
    return model_name


def export_merged(
    model_name: str, experts: Sequence[str | Path | Expert], alpha: Sequence[float] | None, out_dir: str | Path,
    push_to_hub: str | None = None, dtype: str = "float32", overwrite: bool = False, private: bool = False,
) -> Path:
    """Write base weights with W' = U·diag(s')·Vᵀ merged in as a standalone HF folder (+ model card)."""
    loaded = load_experts(experts)
    if not loaded:
        raise ConfigError("export merged: give at least one expert (--expert)")
    a = fixed_alpha(alpha, len(loaded)).tolist()
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir, overwrite) as tmp:  # fail early if out_dir is taken
        from transformers import AutoTokenizer

        model, tok = load_model(model_name, device="cpu", dtype=dtype)
        am = AdaptedModel(model, tok, attach(model, loaded), loaded, torch.tensor(a))
        am.svf.merge(am.z())
        # A standalone folder: no trace of the built-in name or the cache path in its config.
        model.config.name_or_path = out_dir.name
        model.save_pretrained(tmp, safe_serialization=True)
        # A fresh tokenizer: load_tokenizer's pad/padding-side tweaks are for batching, not for export.
        AutoTokenizer.from_pretrained(resolve_model(model_name)).save_pretrained(tmp)
        meta = {"t2_version": __version__, "base_model": model_name, "base_ref": _base_ref(model_name),
                "alpha": a, "experts": [_expert_summary(e) for e in loaded]}
        write_json(meta, tmp / EXPORT_META)
        write_text(merged_card(meta), tmp / "README.md")
    if push_to_hub:
        push_folder(out_dir, push_to_hub, private)
    return out_dir


def _expert_summary(e: Expert) -> dict:
    m = e.meta
    return {"label": m.label, "description": m.description, "task": m.task, "base_model": m.base_model,
            "fingerprint": m.fingerprint, "parametrisation": m.parametrisation, "n_targets": len(m.targets),
            "n_params": e.n_params, "provenance": m.provenance, "metrics": m.metrics}


def export_lora(
    model_name: str, expert: str | Path | Expert, rank: int | None, out_dir: str | Path,
    push_to_hub: str | None = None, overwrite: bool = False, private: bool = False,
) -> LoraReport:
    """Write the expert's best rank-`rank` ΔW per target as a PEFT LoRA adapter (rank None = exact)."""
    check_out_dir(Path(out_dir), overwrite)
    if rank is not None and int(rank) < 1:
        raise ConfigError(f"--rank {rank}: a positive integer or 'full'")
    (e,) = load_experts([expert])
    model, _ = load_model(model_name, device="cpu")
    svf = attach(model, [e])
    max_r = max(f.S.numel() for f in svf.factors.values())
    R = max_r if rank is None else int(rank)
    if not 1 <= R <= max_r:
        raise ConfigError(f"--rank {rank}: choose 1..{max_r} (the largest target rank) or 'full'")
    out_dir = Path(out_dir)
    report = LoraReport(out_dir, R)
    tensors: dict[str, Tensor] = {}
    sq_total = sq_dropped = 0.0
    z = e.z()
    for name, f in svf.factors.items():
        s_new = adapted_s(f.S, z[name].detach().to(f.S), svf.normalise)  # (r,)
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
        "use_rslora": False, "target_modules": list(svf.factors), "modules_to_save": None,
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

