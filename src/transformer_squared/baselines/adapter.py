"""A PEFT adapter (LoRA, IA3, ...) on a base model: load it from a folder, name it in results files.

An adapter folder is what `peft.PeftModel.save_pretrained` writes (`adapter_config.json`,
`adapter_model.safetensors`); `t2 baseline` adds `baseline.json` (label, training provenance).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ExpertError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "baseline.json"
DISPLAY = {"lora": "LoRA", "ia3": "IA3"}  # row names of the methods in tables


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("PEFT adapters need the 'lora' extra: pip install 'transformer-squared[lora]'") from None
    return peft


def attach_adapter(model: Any, folder: str | Path) -> Any:
    """The base model wrapped with the adapter of `folder` (a `peft.PeftModel`, eval mode)."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise ExpertError(f"--lora {folder}: not a PEFT adapter folder (no {CONFIG_FILE})")
    peft = _peft()
    try:
        wrapped = peft.PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (ValueError, KeyError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ExpertError(f"--lora {folder}: adapter does not fit model {model.config.name_or_path} ({first})") from None
    return wrapped.eval()


def adapter_identity(model: Any) -> dict[str, Any] | None:
    """Method, hyper-parameters and a hash of the adapter weights of a PeftModel; None for a plain model."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return None
    peft = _peft()
    c = configs[getattr(model, "active_adapter", "default")]
    h = hashlib.sha256()
    state = peft.get_peft_model_state_dict(model)
    for name in sorted(state):
        h.update(name.encode() + state[name].detach().float().cpu().numpy().tobytes())
    method = str(c.peft_type.value).lower()
    targets = c.target_modules if isinstance(c.target_modules, str) else sorted(c.target_modules or [])
    return {"method": method, "r": getattr(c, "r", None), "alpha": getattr(c, "lora_alpha", None),
            "targets": targets, "sha256": h.hexdigest(), "n_params": sum(int(v.numel()) for v in state.values())}


def adapter_label(folder: str | Path) -> str:
    """The label `t2 baseline` recorded for the adapter, else the method's display name."""
    folder = Path(folder)
    if (folder / META_FILE).is_file():
        label = json.loads((folder / META_FILE).read_text(encoding="utf-8")).get("label", "")
        if label:
            return label
    method = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")).get("peft_type", "").lower()
    return DISPLAY.get(method, method.upper() or "adapter")
