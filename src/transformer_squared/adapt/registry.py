"""The `Strategy` protocol of pass 1 (paper §3.2) and the registry of strategies by name.

A strategy maps a batch of requests to mixture weights α over the adapted model's K experts:
a tensor (n_requests, K), or (n_requests, K, n_targets) for one weight per expert per target.
A row of zeros means "no expert" (the base weights); a one-hot row selects one expert.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from ..errors import ConfigError
from ..evaluation.metrics import MIXTURE  # decision name of a row that is neither zero nor one-hot (metrics counts it)
from ..registry import Registry
from ..tasks.base import Example, Task
from ..tasks.route import request_text

BASE = "base"  # decision name of a row of zeros
STRATEGIES: Registry[Any] = Registry("strategy")  # name → StrategySpec


@dataclass(frozen=True)
class Request:
    """One prompt as pass 1 sees it."""

    text: str  # the user's request (a task question, with its options for multiple choice)
    category: str = ""  # true category where known (oracle)
    subject: str = ""  # true subject where known (oracle)
    task: str = ""  # task name where known (oracle)


def request_of(example: Example, task: str = "") -> Request:
    """The request for a task question (text with options, category, subject, task name)."""
    return Request(request_text(example), example.category, example.subject, task)


NOTHING, CLASSIFIER, SHOTS, LABELS = "nothing", "classifier", "shots", "labels"  # what a strategy needs (StrategySpec.needs);
# labels: each request's true category, subject or task, which only evaluation knows


@dataclass
class NoSettings:
    """The settings of a strategy that has none."""


@dataclass
class StrategyConfig:
    """How pass 1 chooses mixtures: the settings every strategy shares, then one section per registered
    strategy (`fewshot: {shots: 4}` in YAML, `--strategy.fewshot.shots 4` as a flag), added by
    `register_strategy` with its help in the field's metadata."""

    name: str = "uniform"  # registry name of the strategy (one module each in adapt/)
    batch_size: int = 8  # prompts per forward pass of pass 1 and of a strategy's own scoring
    seed: int = 0  # seeds what a strategy draws (labelled examples, a search)
    task_chat: bool = False  # task prompts in the chat template when a strategy answers task questions (as eval's --chat)
    max_new_tokens: int = 128  # generation budget when a strategy answers generative task questions itself

    def __post_init__(self) -> None:
        spec = STRATEGIES.get(self.name)  # unknown name: one line listing the known ones
        problems = [f"{k} {getattr(self, k)}: must be at least 1" for k in ("batch_size", "max_new_tokens")
                    if getattr(self, k) < 1]
        for name in STRATEGIES.in_order():
            problems += [f"{name}.{p}" for p in _problems(self.section(name))]
        problems += spec.check(self.section(self.name))
        if problems:
            raise ConfigError("; ".join(problems))

    def section(self, name: str | None = None) -> Any:
        """The settings of strategy `name` (default: the chosen one); its defaults where this config was
        made before the strategy registered."""
        name = name or self.name
        found = getattr(self, name, None)
        return found if found is not None else STRATEGIES.get(name).settings()

    @classmethod
    def of(cls, name: str, **values: Any) -> "StrategyConfig":
        """A config from flat values: shared fields by name, the others into the chosen strategy's section
        (`cls_expert` may name its field `expert`). A value no field takes is an error."""
        shared = {f.name for f in dataclasses.fields(cls) if f.name not in STRATEGIES}
        spec = STRATEGIES.get(name)
        own = {f.name for f in dataclasses.fields(spec.settings)}
        top, section, unknown = {}, {}, []
        for key, value in values.items():
            field_name = key.removeprefix(f"{name}_") if key not in own else key
            if key in shared:
                top[key] = value
            elif field_name in own:
                section[field_name] = value
            else:
                unknown.append(key)
        if unknown:
            raise ConfigError(f"strategy '{name}' has no setting {', '.join(repr(k) for k in unknown)} "
                              f"(its settings: {', '.join(sorted(own)) or 'none'})")
        settings = spec.settings()
        for key, value in section.items():  # set, not passed: StrategyConfig reports every problem together
            setattr(settings, key, value)
        return cls(name=name, **top, **{name: settings})


def _problems(settings: Any) -> list[str]:
    """A settings section's own problems (its `problems()` method, where it has one)."""
    return list(settings.problems()) if hasattr(settings, "problems") else []


@dataclass(frozen=True)
class StrategySpec:
    """Everything about one strategy, declared by its module and registered under `name`."""

    name: str  # registry name; also the key of its settings section in StrategyConfig
    build: Callable[[Any, "StrategyConfig"], Any]  # (AdaptedModel, config) → Strategy
    settings: type = NoSettings  # dataclass of its own settings (each field with a default and a comment)
    needs: str = NOTHING  # nothing; classifier: an expert trained on task `route`; shots: labelled examples of the task;
    # labels: the requests' true labels (evaluation only)
    help: str = ""  # one line: what it does
    check: Callable[[Any], list[str]] = lambda settings: []  # problems of its settings when it is the chosen one
    runs: Callable[[Any], list[str]] = lambda settings: []  # expert folders it runs besides the mixed ones (left out of evaluation)
    given: Callable[[Any, str], Any] = lambda settings, built: settings  # its settings once a recipe built what it needs (a path)


def register_strategy(spec: StrategySpec) -> StrategySpec:
    """Register `spec` and give StrategyConfig its settings section."""
    if not spec.name.isidentifier() or spec.name in {f.name for f in dataclasses.fields(StrategyConfig)}:
        raise ConfigError(f"strategy name '{spec.name}': must be an identifier other than a StrategyConfig field")
    STRATEGIES.register(spec.name, spec)
    _add_section(spec)
    return spec


def _add_section(spec: StrategySpec) -> None:
    """StrategyConfig gains the field `spec.name`: the class is rebuilt with `dataclasses.make_dataclass`,
    and its generated methods and field table are copied onto the one class every module imported
    (so a strategy registered later, from one file, gets its section too)."""
    help_text = f"settings of strategy {spec.name}" + (f": {spec.help}" if spec.help else "")
    section = dataclasses.field(default_factory=spec.settings, metadata={"help": help_text})
    hints = dict(StrategyConfig.__annotations__) | {spec.name: spec.settings}
    fields = [(f.name, hints[f.name], f) for f in dataclasses.fields(StrategyConfig)] + [(spec.name, spec.settings, section)]
    rebuilt = dataclasses.make_dataclass("StrategyConfig", fields,  # its __init__ calls __post_init__ as the original's did
                                         namespace={"__post_init__": StrategyConfig.__post_init__})
    StrategyConfig.__annotations__[spec.name] = spec.settings
    for attr in ("__init__", "__repr__", "__eq__", "__match_args__", "__dataclass_fields__", "__dataclass_params__"):
        setattr(StrategyConfig, attr, rebuilt.__dict__[attr])


class Strategy(Protocol):
    """Pass 1: requests → α. Built by its StrategySpec's `build` from the adapted model and a config;
    run only through `pipeline.Pipeline`."""

    name: str

    def fit(self, task: Task | None, examples: list[Example]) -> list[str]:
        """Prepare once for a target task from its labelled examples (task None: from the strategy's own
        settings, or nothing); returns the ids it used (evaluation leaves them out). Called only by
        `Pipeline.fit`; strategies that need no data return []."""
        ...

    def mix(self, requests: list[Request]) -> Tensor:
        """α per request: (n, K) or (n, K, n_targets), float32."""
        ...

    def record(self) -> dict[str, Any]:
        """What results files record about this strategy (name, settings, fitted α ...)."""
        ...




def build_strategy(am: Any, cfg: StrategyConfig | str | Strategy) -> Strategy:
    """The strategy `cfg.name` for the adapted model `am` (an unknown name lists the known ones);
    a strategy object passes through."""
    if hasattr(cfg, "mix"):
        return cfg
    cfg = StrategyConfig(name=cfg) if isinstance(cfg, str) else cfg
    if not am.experts:
        raise ConfigError(f"strategy '{cfg.name}' chooses among experts: give at least one (--experts)")
    return STRATEGIES.get(cfg.name).build(am, cfg)


def strategy_runs(cfg: StrategyConfig | str | None) -> list[str]:
    """Expert folders a strategy runs besides the mixed ones (a classification expert), from its settings."""
    if cfg is None:
        return []
    cfg = StrategyConfig(name=cfg) if isinstance(cfg, str) else cfg
    return [str(f) for f in STRATEGIES.get(cfg.name).runs(cfg.section())]


def one_hot(choice: list[int], n_experts: int) -> Tensor:
    """α rows selecting expert `choice[i]`; a choice outside 0..K-1 ("other") is a row of zeros (base)."""
    alpha = torch.zeros(len(choice), n_experts)  # (n, K)
    for i, k in enumerate(choice):
        if 0 <= k < n_experts:
            alpha[i, k] = 1.0
    return alpha


def decisions(alpha: Tensor, labels: list[str]) -> list[str]:
    """The routing decision per row: the expert's label for a one-hot row, "base" for zeros, else "mixture"."""
    if alpha.numel() == 0:  # no requests, or no experts (every row is the base weights)
        return [BASE] * alpha.shape[0]
    flat = alpha.reshape(alpha.shape[0], alpha.shape[1], -1)  # (n, K, 1 or n_targets)
    out = []
    for row in flat:
        nonzero = (row != 0).any(-1).nonzero().flatten().tolist()
        if not nonzero:
            out.append(BASE)
        elif len(nonzero) == 1 and bool((row[nonzero[0]] == 1).all()):
            out.append(labels[nonzero[0]])
        else:
            out.append(MIXTURE)
    return out
