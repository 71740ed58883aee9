"""`ServeConfig`: what `t2 serve` loads, where it listens and how its scheduler batches requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError, T2Error
from ..models.load import DEFAULT_MODEL

FORMS = ("auto", "serving", "delta")


@dataclass
class ServeConfig:
    """`t2 serve` settings; YAML keys (`--config`) and `--key value` flags map onto these fields."""

    model: str = DEFAULT_MODEL  # built-in name, local folder or hub id of the base model
    experts: list[str] = field(default_factory=list)  # expert folders; each is served under its label
    strategy: str | None = None  # pass 1 of model `t2` (prompt, cls, fewshot, uniform); None: prompt when experts
    cls_expert: str | None = None  # cls: folder of the classification expert
    alpha_from: str | None = None  # fewshot: the α a `t2 eval --strategy fewshot` run saved (JSON)
    settings: dict = field(default_factory=dict)  # more strategy settings by name, each given to the strategies
    # that have it: e.g. --settings.fit_task gsm8k --settings.shots 5 lets fewshot search its α at startup
    name: str | None = None  # id of the base model in /v1/models (None: the `model` value)
    host: str = "127.0.0.1"  # address to listen on (loopback by default: the server has no authentication)
    port: int = 8000  # TCP port (0: any free port, printed at start)
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    dtype: str = "float32"  # model dtype: float32, bfloat16, float16
    trust_remote_code: bool = False  # run code shipped with the model
    max_batch_size: int = 8  # most sequences (requests × n) decoded together in one batch
    max_wait_ms: float = 5.0  # how long the first waiting request waits for others to fill its batch (ms)
    max_queue: int = 64  # most requests waiting for a batch; one more gets HTTP 429
    default_max_tokens: int = 256  # completion budget when a request gives none (cut to the context left)
    factored: Literal["auto", "serving", "delta"] = "auto"  # mixed batches: serving form y=((x·V)⊙s')·Uᵀ, the
    # delta form y=x·Wᵀ+((x·V)⊙(s'−s))·Uᵀ, or auto: serving where its measured error is within the dtype's rounding
    graceful_timeout_s: float | None = None  # after SIGTERM, most seconds to finish requests in flight (None: all)
    log_level: str = "warning"  # uvicorn's log level: critical, error, warning, info, debug

    def __post_init__(self) -> None:
        problems = []
        if not self.model:
            problems.append("model: give a built-in name, folder or hub id")
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port}: must be in 0..65535")
        for key in ("max_batch_size", "max_queue", "default_max_tokens"):
            if getattr(self, key) < 1:
                problems.append(f"{key} {getattr(self, key)}: must be at least 1")
        if self.max_wait_ms < 0:
            problems.append(f"max_wait_ms {self.max_wait_ms}: must be at least 0")
        if self.factored not in FORMS:
            problems.append(f"factored '{self.factored}': choose {', '.join(FORMS)}")
        if self.graceful_timeout_s is not None and self.graceful_timeout_s <= 0:
            problems.append(f"graceful_timeout_s {self.graceful_timeout_s}: must be positive (or none: wait for all)")
        if self.strategy is not None and not self.experts:
            problems.append(f"strategy '{self.strategy}' chooses among experts: give --experts")
        if self.pass1 is not None:
            try:
                self.strategy_config(self.pass1)
            except T2Error as e:
                problems.append(str(e))
            else:
                from ..adapt.registry import SHOTS, STRATEGIES

                if STRATEGIES.get(self.pass1).needs == SHOTS and not self.has_shots(self.pass1):
                    problems.append(f"strategy {self.pass1} needs labelled shots: give --alpha-from FILE "
                                    f"(the α a `t2 eval --strategy {self.pass1}` run saved), or the task to "
                                    f"search it on at startup (--settings.fit_task NAME, --settings.fit_data PATH)")
        if self.settings:
            from dataclasses import fields

            from ..adapt.registry import STRATEGIES

            known = {f.name for n in STRATEGIES.names() for f in fields(STRATEGIES.get(n).settings)}
            problems += [f"settings.{k}: no strategy has this setting (known: {', '.join(sorted(known))})"
                         for k in self.settings if k not in known]
        if problems:
            raise ConfigError("; ".join(problems))

    def given(self, name: str) -> dict[str, Any]:
        """The settings this config gives (`cls_expert`, `alpha_from`, `settings`) that strategy `name` has,
        by its field names (`cls_expert` is cls's `expert`)."""
        from dataclasses import fields

        from ..adapt import STRATEGIES

        own = {f.name for f in fields(STRATEGIES.get(name).settings)}
        values = {"cls_expert": self.cls_expert, "alpha_from": self.alpha_from, **self.settings}
        out = {}
        for key, value in values.items():
            field_name = key if key in own else key.removeprefix(f"{name}_")
            if value is not None and field_name in own:
                out[field_name] = value
        return out

    def has_shots(self, name: str) -> bool:
        """Whether a strategy that needs labelled shots gets them here: a saved α or a task to search α on."""
        return bool({"alpha_from", "fit_task"} & set(self.given(name)))

    def ready(self, name: str) -> bool:
        """Whether strategy `name` can run in the server with what this config gives it."""
        from ..adapt.registry import LABELS, SHOTS, STRATEGIES

        needs = STRATEGIES.get(name).needs
        if needs == LABELS or (needs == SHOTS and not self.has_shots(name)):
            return False
        try:
            self.strategy_config(name)
        except T2Error:
            return False
        return True

    def strategy_config(self, name: str):  # -> adapt.StrategyConfig (adapt is imported late: it loads the tasks)
        """Strategy `name` with the settings this config gives it, coerced to their types as YAML values are
        (its problems raise ConfigError)."""
        from ..adapt import StrategyConfig
        from ..config import load_config

        return load_config(StrategyConfig, base={"name": name, name: self.given(name)})

    @property
    def pass1(self) -> str | None:
        """The strategy of model `t2`: the given one, else prompt when there are experts."""
        return self.strategy or ("prompt" if self.experts else None)
