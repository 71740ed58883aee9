"""The configs of `t2 export merged`, `t2 export lora` and `t2 lm-eval` and the functions that carry them
out (the CLI generates its flags from these dataclasses; see evaluation/runs.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..config import check_sections
from ..errors import ConfigError
from ..models.load import DEFAULT_MODEL, DTYPES, ModelConfig
from ..models.random_weights import with_layers

Flags = dict[str, tuple[str, ...]]
EXPORT_FLAGS: Flags = {"-o": ("out",), "-m": ("model",), "--expert": ("experts",), "-e": ("experts",)}


def _export_problems(cfg: Any) -> list[str]:
    problems = []
    if not cfg.out:
        problems.append("Missing option '--out' (out: the folder to write)")
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        problems.append(f"--dtype '{cfg.dtype}': choose one of {', '.join(DTYPES)}")
    if cfg.num_layers is not None and cfg.num_layers < 1:
        problems.append(f"--num-layers {cfg.num_layers}: must be at least 1")
    return problems


@dataclass
class ExportMergedRun:
    """`t2 export merged`: a standalone Hugging Face checkpoint with the experts' W' merged in."""

    out: str = ""  # folder to write (atomically)
    model: str = DEFAULT_MODEL  # built-in name, local folder or hub id of the base checkpoint
    num_layers: int | None = None  # random: models only: build this many decoder layers
    experts: list[str] = field(default_factory=list)  # expert folders merged in (several: a fixed mixture)
    alpha: list[float] = field(default_factory=list)  # mixture weight per expert, in expert order (empty: equal)
    dtype: str | None = None  # cast the checkpoint to float32, bfloat16 or float16 (None: its stored dtype, or the narrower one the expert was trained on)
    push_to_hub: str | None = None  # also upload the folder to this Hugging Face repo id
    overwrite: bool = False  # replace OUT if it exists

    FLAGS: ClassVar[Flags] = EXPORT_FLAGS

    def __post_init__(self) -> None:
        problems = _export_problems(self)
        if problems:
            raise ConfigError("; ".join(problems))


def run_export_merged(cfg: ExportMergedRun) -> Path:
    """Write the merged checkpoint; returns its folder."""
    from .export import export_merged

    return export_merged(with_layers(cfg.model, cfg.num_layers), cfg.experts, cfg.alpha or None, cfg.out,
                         cfg.push_to_hub, dtype=cfg.dtype, overwrite=cfg.overwrite)


@dataclass
class ExportLoraRun:
    """`t2 export lora`: the expert's best rank-R update ΔW per target, as a PEFT LoRA adapter."""

    out: str = ""  # folder to write (atomically)
    expert: str = ""  # the expert folder
    rank: str = "full"  # LoRA rank R, or 'full' (exact)
    model: str = DEFAULT_MODEL  # built-in name, local folder or hub id of the base checkpoint
    num_layers: int | None = None  # random: models only: build this many decoder layers
    dtype: str | None = None  # cast the adapter to float32, bfloat16 or float16 (None: the checkpoint's or the expert's)
    push_to_hub: str | None = None  # also upload the folder to this Hugging Face repo id
    overwrite: bool = False  # replace OUT if it exists

    FLAGS: ClassVar[Flags] = {"-o": ("out",), "-m": ("model",), "-e": ("expert",), "-r": ("rank",)}

    def __post_init__(self) -> None:
        problems = _export_problems(self)
        if not self.expert:
            problems.append("Missing option '--expert' (expert: the expert folder)")
        if self.rank != "full" and not (self.rank.isdigit() and int(self.rank) > 0):
            problems.append(f"--rank {self.rank}: a positive integer or 'full'")
        if problems:
            raise ConfigError("; ".join(problems))


def run_export_lora(cfg: ExportLoraRun) -> Any:
    """Write the adapter; returns export's LoraReport (rank, parameters, relative errors)."""
    from .export import export_lora

    return export_lora(with_layers(cfg.model, cfg.num_layers), cfg.expert,
                       None if cfg.rank == "full" else int(cfg.rank), cfg.out, cfg.push_to_hub,
                       overwrite=cfg.overwrite, dtype=cfg.dtype)


@dataclass
class LmEvalRun:
    """`t2 lm-eval`: lm-evaluation-harness tasks with the base model, an expert or a fixed mixture."""

    tasks: list[str] = field(default_factory=list)  # lm-eval task names (repeat the flag or comma-separate)
    model: ModelConfig = field(default_factory=ModelConfig)  # the base model
    experts: list[str] = field(default_factory=list)  # expert folders (several: a fixed mixture)
    alpha: list[float] = field(default_factory=list)  # mixture weight per expert, in expert order (empty: equal)
    limit: float | None = None  # documents per task: N, or a fraction < 1 (None: all)
    include_path: str | None = None  # folder of extra task YAML files
    no_builtin_tasks: bool = False  # index only include_path (faster)
    num_fewshot: int | None = None  # few-shot examples per prompt (None: the task's default)
    batch_size: int = 8  # prompts per forward pass
    seed: int = 0  # seeds Python, NumPy and torch for lm-eval
    output: str | None = None  # also write lm-eval's results JSON here

    FLAGS: ClassVar[Flags] = {"--model": ("model.name",), "-m": ("model.name",), "--expert": ("experts",),
                              "-e": ("experts",)}

    def __post_init__(self) -> None:
        problems = check_sections(self, ("model",))
        if not self.tasks:
            problems.append("Missing option '--tasks' (tasks: lm-eval task names)")
        if self.limit is not None and (self.limit <= 0 or (self.limit >= 1 and not float(self.limit).is_integer())):
            problems.append(f"--limit {self.limit}: a whole number of documents, or a fraction in (0, 1)")
        if problems:
            raise ConfigError("; ".join(problems))


def run_lm_eval(cfg: LmEvalRun) -> dict[str, Any]:
    """lm-eval's results dict (written to `cfg.output` without its samples when set)."""
    import json

    from ..atomic import check_file_target, write_text
    from . import lm_eval_adapter

    check_file_target(cfg.output, "--output")
    names = [t for spec in cfg.tasks for t in spec.split(",") if t]
    n = None if cfg.limit is None else (int(cfg.limit) if cfg.limit >= 1 else cfg.limit)
    res = lm_eval_adapter.run_lm_eval(cfg.model.spec, names, cfg.experts, cfg.alpha or None, limit=n,
                                      include_path=cfg.include_path, include_defaults=not cfg.no_builtin_tasks,
                                      num_fewshot=cfg.num_fewshot, batch_size=cfg.batch_size, device=cfg.model.device,
                                      dtype=cfg.model.dtype, seed=cfg.seed)
    if cfg.output:
        from lm_eval.utils import handle_non_serializable

        slim = {k: v for k, v in res.items() if k != "samples"}
        write_text(json.dumps(slim, indent=2, default=handle_non_serializable), Path(cfg.output))
    return res
