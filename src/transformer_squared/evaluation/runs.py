"""The configs of `t2 eval` and `t2 generate` and the functions that carry them out: one wiring for the
CLI (which generates its flags from these dataclasses), the recipe and the server.

Each run config is a dataclass of sections (`model`, `eval`, `strategy`) and its own keys; YAML files
(`--config`) and flags (`--eval.limit 20`, or the short `--limit 20`) fill it, and its `__post_init__`
reports every problem at once. `FLAGS` names the short flags that do not follow from a unique field
name (a pattern with `*` may match no field: strategies declare their own settings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from ..adapt import StrategyConfig
from ..config import check_sections
from ..errors import ConfigError
from ..models.load import ModelConfig
from . import evaluate as evaluation
from .evaluate import EvalConfig, Plan, plan_eval, strategy_experts

Flags = dict[str, tuple[str, ...]]  # short flag → the dotted keys it sets (fnmatch patterns allowed)
COMMON_FLAGS: Flags = {"--model": ("model.name",), "-m": ("model.name",), "--expert": ("experts",),
                       "-e": ("experts",), "--strategy": ("strategy.name",)}


def check_strategy(strategy: StrategyConfig | None, experts: list[str], alpha: list[float]) -> list[str]:
    """A strategy chooses α among experts: it needs experts and excludes a fixed α."""
    if strategy is None:
        return []
    problems = []
    if alpha:
        problems.append("--alpha and --strategy exclude each other: the strategy chooses α")
    if not experts:
        problems.append(f"strategy '{strategy.name}' chooses among experts: give at least one (--experts)")
    return problems


@dataclass
class EvalRun:
    """`t2 eval`: one system (base, experts, a strategy, a PEFT adapter or a constant) on one task."""

    out: str = ""  # results JSON to write (an interrupted run resumes from OUT.partial.json)
    model: ModelConfig = field(default_factory=ModelConfig)  # the base model
    experts: list[str] = field(default_factory=list)  # expert folders: mixed by `alpha`, or routed by `strategy`
    alpha: list[float] = field(default_factory=list)  # fixed mixture weight per expert, in expert order (empty: equal)
    lora: str | None = None  # a PEFT adapter folder (t2 baseline's best/) evaluated instead of experts
    constant_from: str | None = None  # no model: answer with the best constant letter of this split file's train part
    submission: str | None = None  # also write the id,answer CSV (unlabelled test split)
    markdown: str | None = None  # also write the category table as Markdown
    eval: EvalConfig = field(default_factory=EvalConfig)  # what to evaluate and how
    strategy: StrategyConfig | None = None  # pass 1 choosing a mixture per question (None: the fixed experts)

    FLAGS: ClassVar[Flags] = COMMON_FLAGS | {
        "-o": ("out",), "-t": ("eval.task",), "--seed": ("eval.seed", "strategy*.seed"),
        "--batch-size": ("eval.batch_size", "strategy*.batch_size"),
        "--max-new-tokens": ("eval.max_new_tokens", "strategy*.max_new_tokens"),
        "--chat": ("eval.chat", "strategy*.task_chat")}

    def __post_init__(self) -> None:
        problems = check_sections(self, ("model", "eval", "strategy"))
        if not self.out:
            problems.append("Missing option '--out' (out: the results JSON to write)")
        problems += check_strategy(self.strategy, self.experts, self.alpha)
        if self.lora is not None and (self.experts or self.constant_from is not None or self.strategy is not None):
            problems.append("--lora evaluates a PEFT adapter alone: not with --expert, --strategy or --constant-from")
        if self.constant_from is not None and self.strategy is not None:
            problems.append("--constant-from answers without a model: not with --strategy")
        if problems:
            raise ConfigError("; ".join(problems))


def run_eval(cfg: EvalRun, progress: Callable[[int], None] | None = None, total: Callable[[int], None] | None = None,
             announce: Callable[[Plan], None] | None = None) -> dict[str, Any]:
    """Evaluate as `cfg` says and write its files; returns the results. Everything that needs no model (outputs,
    questions, experts) is checked first; `announce(plan)` is called once the run is sure to start."""
    from ..experts.adapted import AdaptedModel, load_adapted

    adapters = [cfg.lora] if cfg.lora is not None else []  # their seen questions are left out too
    plan = plan_eval(cfg.eval, cfg.out, cfg.submission, cfg.markdown, cfg.experts,
                   strategy_experts(cfg.strategy) + adapters)
    if cfg.constant_from is not None:
        from .reference import evaluate_constant

        if announce:
            announce(plan)
        return evaluate_constant(cfg.eval, cfg.constant_from, cfg.out, cfg.submission, plan=plan)
    if cfg.lora is not None:
        from ..baselines.adapter import adapter_label, attach_adapter

        base, tok = cfg.model.load()
        am = AdaptedModel(attach_adapter(base, cfg.lora), tok)
        cfg.eval.label = cfg.eval.label or adapter_label(cfg.lora)
    else:
        am = load_adapted(cfg.model.spec, experts=plan.experts, alpha=cfg.alpha or None, device=cfg.model.device,
                          dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    if announce:
        announce(plan)
    return evaluation.evaluate(am, cfg.eval, cfg.out, cfg.submission, progress=progress, total=total, plan=plan,
                    strategy=cfg.strategy)


@dataclass
class GenerateRun:
    """`t2 generate`: answer one prompt with the base model, fixed experts, or two passes (a strategy routes)."""

    prompt: str = ""  # the user message
    model: ModelConfig = field(default_factory=ModelConfig)  # the base model
    experts: list[str] = field(default_factory=list)  # expert folders: mixed by `alpha`, or routed by `strategy`
    alpha: list[float] = field(default_factory=list)  # fixed mixture weight per expert, in expert order (empty: equal)
    max_new_tokens: int = 128  # generation budget, in tokens
    chat: bool | None = None  # wrap the prompt in the model's chat template (None: if it has one; --no-chat sends it raw)
    strategy: StrategyConfig | None = None  # pass 1 choosing the mixture for the prompt (None: the fixed experts)

    FLAGS: ClassVar[Flags] = COMMON_FLAGS

    def __post_init__(self) -> None:
        problems = check_sections(self, ("model", "strategy"))
        if not self.prompt:
            problems.append("Missing argument 'prompt' (t2 generate [OPTIONS] PROMPT, or prompt: in --config)")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens {self.max_new_tokens}: must be at least 1")
        problems += check_strategy(self.strategy, self.experts, self.alpha)
        if problems:
            raise ConfigError("; ".join(problems))


def run_generate(cfg: GenerateRun) -> Any:
    """The answer to `cfg.prompt` (`adapt.Answer`: text, routing decision, α), through the one two-pass
    pipeline: pass 1 routes when `cfg.strategy` is set, else the fixed experts answer."""
    from ..adapt import Pipeline
    from ..experts.adapted import load_adapted

    am = load_adapted(cfg.model.spec, experts=cfg.experts, alpha=cfg.alpha or None, device=cfg.model.device,
                      dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    return Pipeline(am, cfg.strategy).generate([cfg.prompt], max_new_tokens=cfg.max_new_tokens, chat=cfg.chat)[0]
