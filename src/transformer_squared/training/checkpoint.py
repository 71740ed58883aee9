"""Training checkpoints: an expert folder plus optimizer, RNG and loop state, swapped in atomically.

`latest/` and `best/` are normal expert folders (`Expert.save`); `latest/` also holds
`trainer_state.safetensors` (Adam moments, RNG states) and `trainer_state.json` (step, best
validation accuracy, Adam hyper-parameters). No pickle: safetensors and JSON only. A folder is
written beside its final name and renamed into place, so a kill leaves the previous one whole.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ..atomic import atomic_folder, recover_folder as recover, write_json, write_safetensors
from ..errors import ExpertError
from ..experts.expert import Expert

STATE_TENSORS = "trainer_state.safetensors"
STATE_META = "trainer_state.json"


def write_folder(final: Path, fill) -> Path:
    """Call fill(tmp_dir) on a fresh temp folder, then swap it into `final` (rename; old one removed)."""
    with atomic_folder(Path(final)) as tmp:
        fill(tmp)
    return Path(final)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, json) capturing the torch, NumPy and Python global RNGs."""
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(np_keys.astype(np.int64))}
    meta = {"numpy": [np_name, int(np_pos), int(np_gauss), float(np_cached)], "python": _py_state()}
    return tensors, meta


def _py_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_trainer_state(folder: Path, optimizer: torch.optim.Optimizer, names: list[str], loop: dict[str, Any]) -> None:
    """Write Adam moments per target (names in parameter order), RNG states and the loop state into `folder`."""
    sd = optimizer.state_dict()
    tensors, rng_meta = rng_state()
    for idx, name in enumerate(names):
        for key, value in sd["state"].get(idx, {}).items():
            tensors[f"adam.{name}.{key}"] = value.detach().cpu().reshape(-1).clone()
    write_safetensors(tensors, folder / STATE_TENSORS)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    meta = {"loop": loop, "adam_param_groups": groups, "rng": rng_meta, "tensors_sha256": _sha256(folder / STATE_TENSORS)}
    write_json(meta, folder / STATE_META)


def load_trainer_state(folder: Path, optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, Any]:
    """Restore Adam and the RNGs from `folder`; returns the loop state."""
    meta_path, tensor_path = folder / STATE_META, folder / STATE_TENSORS
    if not meta_path.is_file() or not tensor_path.is_file():
        raise ExpertError(f"{folder}: no trainer state ({STATE_META}, {STATE_TENSORS}); cannot resume from it")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("tensors_sha256") != _sha256(tensor_path):
        raise ExpertError(f"{tensor_path}: does not match {STATE_META} (interrupted write?)")
    tensors = load_file(tensor_path)
    state: dict[int, dict[str, torch.Tensor]] = {}
    params = [p for g in optimizer.param_groups for p in g["params"]]  # moments were saved flat
    for idx, name in enumerate(names):
        keys = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"adam.{name}.")}
        if keys:
            state[idx] = {k: (v.reshape(()) if k == "step" else v.reshape(params[idx].shape)) for k, v in keys.items()}
    optimizer.load_state_dict({"state": state, "param_groups": meta["adam_param_groups"]})
    set_rng_state(tensors, meta["rng"])
    return meta["loop"]


def load_expert(folder: Path) -> Expert:
    recover(Path(folder))
    return Expert.load(folder)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
