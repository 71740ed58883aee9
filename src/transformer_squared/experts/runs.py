"""The configs of `t2 decompose` and `t2 expert init` and the functions that carry them out (the CLI
generates its flags from these dataclasses; see evaluation/runs.py for eval and generate)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..config import check_sections
from ..errors import ConfigError
from ..models.load import ModelConfig
from .expert import Expert

FACTOR_DTYPES = ("float32", "bfloat16")
MODEL_FLAGS = {"--model": ("model.name",), "-m": ("model.name",)}


@dataclass
class DecomposeRun:
    """`t2 decompose`: decompose the target weights once and cache U, s, V (resumable)."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the base model
    targets: str = "mlp"  # mlp, attn, all, or a regex over module names
    factor_dtype: str = "float32"  # dtype of the cached factors: float32 or bfloat16

    FLAGS: ClassVar[dict[str, tuple[str, ...]]] = MODEL_FLAGS

    def __post_init__(self) -> None:
        problems = check_sections(self, ("model",))
        if self.factor_dtype not in FACTOR_DTYPES:
            problems.append(f"--factor-dtype '{self.factor_dtype}': choose one of {', '.join(FACTOR_DTYPES)}")
        if problems:
            raise ConfigError("; ".join(problems))


def run_decompose(cfg: DecomposeRun) -> Path:
    """The SVD cache folder of the model's targets (decomposed now where missing)."""
    from .svd import decompose

    m, _ = cfg.model.load()
    return decompose(m, cfg.targets, device=None if cfg.model.device == "auto" else cfg.model.device,
                     dtype=cfg.factor_dtype)


@dataclass
class ExpertInitRun:
    """`t2 expert init`: write an untrained expert with the reference initialisation."""

    out: str = ""  # folder to write the expert into
    model: ModelConfig = field(default_factory=ModelConfig)  # the base model
    targets: str = "mlp"  # mlp, attn, all, or a regex over module names
    label: str = ""  # the expert's short name (routing, reports)
    description: str = ""  # one sentence the prompt strategy shows when routing
    parametrisation: str = "sigmoid"  # sigmoid (reference) or linear
    seed: int = 0  # seeds the initial noise
    force: bool = False  # save even for a random: base model (tests, benchmarks)

    FLAGS: ClassVar[dict[str, tuple[str, ...]]] = MODEL_FLAGS

    def __post_init__(self) -> None:
        problems = check_sections(self, ("model",))
        if not self.out:
            problems.append("Missing option '--out' (out: the folder to write the expert into)")
        if problems:
            raise ConfigError("; ".join(problems))


def run_expert_init(cfg: ExpertInitRun) -> Expert:
    """Write the untrained expert to `cfg.out`; returns it."""
    from ..atomic import check_folder_target
    from ..models.load import model_id
    from .expert import attach

    check_folder_target(Path(cfg.out), "--out")
    m, _ = cfg.model.load()
    svf = attach(m, targets=cfg.targets)
    e = Expert.init(svf.factors, model_id(m), svf.fingerprint, cfg.parametrisation, cfg.seed, cfg.label,
                    cfg.description)
    e.save(Path(cfg.out), force=cfg.force)
    return e
