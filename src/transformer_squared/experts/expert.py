"""The `Expert` type: raw SVF parameters p per target plus metadata; save/load; base-model check.

On disk an expert is a folder with `expert.safetensors` (one tensor per target, the raw p),
`seen.safetensors` (keys of the questions it was trained or selected on, `seen.py`) and
`expert.json` (format version, base model and fingerprint, targets, parametrisation, label,
description, provenance, metrics). Each is written atomically, the JSON last; it records the
other files' SHA-256, so a half-replaced set is detected on load.
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

from .. import __version__
from ..atomic import write_json, write_safetensors
from ..errors import ExpertError
from ..models.load import model_id
from ..models.random_weights import is_random
from .svd import Factors, ensure_factors, fingerprint, legacy_fingerprint, resolve_targets
from .svf import PARAMETRISATIONS, SVFModel

FORMAT_VERSION = 1
TENSORS = "expert.safetensors"
META = "expert.json"
SEEN = "seen.safetensors"


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
    seen: dict[str, Any] = field(default_factory=dict)  # about seen.safetensors: {"n", "task", "parts"}; {}: none
    format_version: int = FORMAT_VERSION
    t2_version: str = __version__


@dataclass
class Expert:
    """One SVF expert: raw parameters p (r,) per target, and the questions it saw."""

    p: dict[str, Tensor]
    meta: ExpertMeta
    seen: Tensor | None = None  # (n,) int64 keys (seen.question_key) of its training questions; None: no record

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
                          description, provenance={"init_seed": seed}, seen={"n": 0, "task": "", "parts": []})
        return cls(p, meta, torch.empty(0, dtype=torch.int64))  # untrained: it saw no question

    def check_base(self, base_model: str, fingerprint: str, legacy: str | None = None) -> None:
        """Fail with both names when the expert was made for other base weights.

        `legacy` is the same weights' version-1 fingerprint: experts saved before version 2 match it
        (and are upgraded in memory to the current fingerprint)."""
        if self.meta.fingerprint == fingerprint:
            return
        if legacy is not None and self.meta.fingerprint == legacy:
            self.meta.fingerprint = fingerprint
            return
        raise ExpertError(
            f"expert '{self.meta.label or '?'}' was made for base model '{self.meta.base_model}' "
            f"(fingerprint {self.meta.fingerprint}), not for '{base_model}' (fingerprint {fingerprint})"
        )

    def save(self, folder: str | Path, force: bool = False) -> Path:
        """Write the folder atomically; an expert of a `random:` base model needs `force`."""
        if is_random(self.meta.base_model) and not force:
            raise ExpertError(f"{folder}: expert of '{self.meta.base_model}' (random weights) is only good for tests "
                              "and benchmarks; pass --force (force=True) to save it anyway")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {t: p.detach().float().cpu() for t, p in self.p.items()}
        write_safetensors(tensors, folder / TENSORS, metadata={"format": "transformer-squared-expert"})
        meta = asdict(self.meta) | {"tensors_sha256": _sha256(folder / TENSORS)}
        if self.seen is not None:
            write_safetensors({"keys": self.seen.to(torch.int64)}, folder / SEEN,
                              metadata={"format": "transformer-squared-seen"})
            meta |= {"seen": self.meta.seen | {"n": int(self.seen.numel())}, "seen_sha256": _sha256(folder / SEEN)}
        else:
            meta["seen"] = {}
        write_json(meta, folder / META)  # last: the commit point of the folder
        if self.seen is None:
            (folder / SEEN).unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Expert":
        folder = Path(folder)
        meta_path, tensor_path = folder / META, folder / TENSORS
        for path in (meta_path, tensor_path):
            if not path.is_file():
                raise ExpertError(f"{path}: missing; an expert folder holds {META} and {TENSORS}")
        raw = _read_meta(meta_path)
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise ExpertError(f"{meta_path}: format version {raw['format_version']} is newer than this "
                              f"transformer-squared understands ({FORMAT_VERSION}); upgrade the package")
        sha = raw.pop("tensors_sha256", None)
        if sha is not None and sha != _sha256(tensor_path):
            raise ExpertError(f"{tensor_path}: does not match {META} (interrupted write?); re-save the expert")
        seen = _seen_keys(folder, raw.pop("seen_sha256", None))
        known = {f.name for f in fields(ExpertMeta)}
        missing = {"base_model", "fingerprint", "targets"} - set(raw)
        if missing:
            raise ExpertError(f"{meta_path}: missing key(s) {', '.join(sorted(missing))}")
        meta = ExpertMeta(**{k: v for k, v in raw.items() if k in known})
        PARAMETRISATIONS.get(meta.parametrisation)
        p = _load_tensors(tensor_path)
        if set(p) != set(meta.targets):
            raise ExpertError(f"{tensor_path}: tensors do not match the targets listed in {META}")
        for t in meta.targets:
            if p[t].dim() != 1 or not p[t].is_floating_point() or not torch.isfinite(p[t]).all():
                raise ExpertError(f"{tensor_path}: tensor '{t}' must be a finite float vector (NaN, inf or bad shape)")
        return cls({t: p[t] for t in meta.targets}, meta, seen)


def read_seen(folder: str | Path, meta_name: str = META) -> Tensor | None:
    """The seen-question keys of the expert in `folder` without loading its parameters; None: no record.

    `meta_name`: the JSON file that holds `seen_sha256` (a PEFT baseline's `baseline.json`).
    """
    return _seen_keys(Path(folder), _read_meta(Path(folder) / meta_name).get("seen_sha256"))


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExpertError(f"{path}: missing; an expert folder holds {META} and {TENSORS}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExpertError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ExpertError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def _seen_keys(folder: Path, sha: str | None) -> Tensor | None:
    if sha is None:
        return None
    path = folder / SEEN
    if not path.is_file():
        raise ExpertError(f"{path}: missing, but {META} records it; re-save the expert")
    if sha != _sha256(path):
        raise ExpertError(f"{path}: does not match {META} (interrupted write?); re-save the expert")
    return _load_tensors(path)["keys"]


def _load_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error type for truncated or corrupt files
        raise ExpertError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None


def check_together(experts: list[Expert]) -> list[str]:
    """Experts used together must adapt the same targets of the same base weights with the same
    normalisation (checked without the model); returns the shared targets. Errors name the experts."""
    if not experts:
        return []
    first = experts[0]
    for e in experts[1:]:
        if e.meta.fingerprint != first.meta.fingerprint:
            raise ExpertError(f"experts '{first.meta.label or '?'}' and '{e.meta.label or '?'}' were made for different "
                              f"base models ('{first.meta.base_model}' {first.meta.fingerprint}, "
                              f"'{e.meta.base_model}' {e.meta.fingerprint})")
        if e.meta.targets != first.meta.targets:
            raise ExpertError(f"experts '{first.meta.label or '?'}' and '{e.meta.label or '?'}' adapt different targets")
    if len({e.meta.normalise for e in experts}) > 1:
        named = ", ".join(f"'{e.meta.label or '?'}' normalise={e.meta.normalise}" for e in experts)
        raise ExpertError(f"experts disagree on normalisation ({named}); mix only experts made with the same setting")
    return list(first.meta.targets)


def attach(model: torch.nn.Module, experts: list[Expert] = (), targets: str | list[str] = "mlp",
           root: Path | None = None, factor_dtype: str | None = None) -> SVFModel:
    """SVF on `model` for the experts' targets (else `targets`), decomposing once if needed.

    Every expert must share targets, normalisation and base weights; all of that is checked
    before any decomposition. `factor_dtype`: U and V in memory (default bfloat16 on a GPU, else float32).
    """
    experts = list(experts)
    if experts:
        targets = check_together(experts)
        linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        unknown = [t for t in targets if t not in linears]
        if unknown:
            raise ExpertError(f"expert '{experts[0].meta.label or '?'}' adapts '{unknown[0]}', which is no Linear "
                              f"layer of {model_id(model)} ({len(unknown)} unknown target(s))")
    names = resolve_targets(model, targets) if isinstance(targets, str) else list(targets)
    fp = fingerprint(model, names)
    if experts:
        legacy = legacy_fingerprint(model, names) if any(e.meta.fingerprint != fp for e in experts) else None
        for e in experts:
            e.check_base(model_id(model), fp, legacy)
            ranks = {t: min(model.get_submodule(t).weight.shape) for t in e.p}
            bad = [t for t in e.p if e.p[t].numel() != ranks[t]]
            if bad:
                raise ExpertError(f"expert '{e.meta.label or '?'}': {bad[0]} has {e.p[bad[0]].numel()} values, "
                                  f"the base weight's rank is {ranks[bad[0]]}")
    fp, factors = ensure_factors(model, names, root, dtype=factor_dtype, fp=fp)
    normalise = experts[0].meta.normalise if experts else True
    return SVFModel(model, factors, normalise, fp)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
