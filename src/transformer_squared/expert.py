"""The `Expert` type: raw SVF parameters p per target plus metadata; save/load; base-model check.

On disk an expert is a folder with `expert.safetensors` (one tensor per target, the raw p) and
`expert.json` (format version, base model and fingerprint, targets, parametrisation, label,
description, provenance, metrics). Both are written atomically; the JSON records the tensor
file's SHA-256, so a half-replaced pair is detected on load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from . import __version__
from .atomic import write_json, write_safetensors
from .errors import ExpertError
from .models import model_id
from .svd import Factors, ensure_factors
from .svf import PARAMETRISATIONS, SVFModel

FORMAT_VERSION = 1
TENSORS = "expert.safetensors"
META = "expert.json"


@dataclass
class ExpertMeta:
    """Everything about an expert except its numbers."""

    base_model: str  # name the base model was loaded under
    fingerprint: str  # svd.fingerprint of the base weights of `targets`
    targets: list[str]  # module names, in order
    parametrisation: str = "sigmoid"  # name in svf.PARAMETRISATIONS
    normalise: bool = True  # keep Σs when rescaling (the reference's choice)
    label: str = ""  # short name used by dispatch ("math", "STEM", ...)
    description: str = ""  # one sentence used by prompt-based dispatch
    task: str = ""  # training task name, "" if untrained
    provenance: dict[str, Any] = field(default_factory=dict)  # config, data split, versions
    metrics: dict[str, Any] = field(default_factory=dict)  # measured results
    format_version: int = FORMAT_VERSION
    t2_version: str = __version__


@dataclass
class Expert:
    """One SVF expert: raw parameters p (r,) per target."""

    p: dict[str, Tensor]
    meta: ExpertMeta

    def z(self) -> dict[str, Tensor]:
        """Singular-value scales z = f(p) per target."""
        f = PARAMETRISATIONS.get(self.meta.parametrisation)
        return {t: f.z(p) for t, p in self.p.items()}

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.p.values())

    @classmethod
    def init(
        cls, factors: dict[str, Factors], base_model: str, fingerprint: str, parametrisation: str = "sigmoid",
        seed: int = 0, label: str = "", description: str = "", normalise: bool = True,
    ) -> "Expert":
        """An untrained expert with the parametrisation's reference initialisation."""
        f = PARAMETRISATIONS.get(parametrisation)
        g = torch.Generator().manual_seed(seed)
        p = {t: f.init(fa.S.numel(), g) for t, fa in factors.items()}
        meta = ExpertMeta(base_model, fingerprint, list(factors), parametrisation, normalise, label,
                          description, provenance={"init_seed": seed})
        return cls(p, meta)

    def check_base(self, base_model: str, fingerprint: str) -> None:
        """Fail with both names when the expert was made for other base weights."""
        if fingerprint != self.meta.fingerprint:
            raise ExpertError(
                f"expert '{self.meta.label or '?'}' was made for base model '{self.meta.base_model}' "
                f"(fingerprint {self.meta.fingerprint}), not for '{base_model}' (fingerprint {fingerprint})"
            )

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {t: p.detach().float().cpu() for t, p in self.p.items()}
        write_safetensors(tensors, folder / TENSORS, metadata={"format": "transformer-squared-expert"})
        meta = asdict(self.meta) | {"tensors_sha256": _sha256(folder / TENSORS)}
        write_json(meta, folder / META)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Expert":
        folder = Path(folder)
        meta_path, tensor_path = folder / META, folder / TENSORS
        for path in (meta_path, tensor_path):
            if not path.is_file():
                raise ExpertError(f"{path}: missing; an expert folder holds {META} and {TENSORS}")
        try:
            raw = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ExpertError(f"{meta_path}: invalid JSON ({e})") from None
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise ExpertError(f"{meta_path}: format version {raw['format_version']} is newer than this "
                              f"transformer-squared understands ({FORMAT_VERSION}); upgrade the package")
        sha = raw.pop("tensors_sha256", None)
        if sha is not None and sha != _sha256(tensor_path):
            raise ExpertError(f"{tensor_path}: does not match {META} (interrupted write?); re-save the expert")
        known = {f.name for f in fields(ExpertMeta)}
        missing = {"base_model", "fingerprint", "targets"} - set(raw)
        if missing:
            raise ExpertError(f"{meta_path}: missing key(s) {', '.join(sorted(missing))}")
        meta = ExpertMeta(**{k: v for k, v in raw.items() if k in known})
        PARAMETRISATIONS.get(meta.parametrisation)
        p = load_file(tensor_path)
        if set(p) != set(meta.targets):
            raise ExpertError(f"{tensor_path}: tensors do not match the targets listed in {META}")
        return cls({t: p[t] for t in meta.targets}, meta)


def attach(model: torch.nn.Module, experts: list[Expert] = (), targets: str | list[str] = "mlp",
           root: Path | None = None) -> SVFModel:
    """SVF on `model` for the experts' targets (else `targets`), decomposing once if needed.

    Every expert must share targets, parametrisation normalisation and base weights.
    """
    experts = list(experts)
    if experts:
        targets = experts[0].meta.targets
        for e in experts[1:]:
            if e.meta.targets != targets:
                raise ExpertError(f"experts '{experts[0].meta.label}' and '{e.meta.label}' adapt different targets")
    fp, factors = ensure_factors(model, targets, root)
    for e in experts:
        e.check_base(model_id(model), fp)
    normalise = experts[0].meta.normalise if experts else True
    return SVFModel(model, factors, normalise, fp)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
