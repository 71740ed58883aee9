"""lm-evaluation-harness backend: an `HFLM` whose target weights carry SVF experts (merged mode, paper §3.2).

    lm_eval --model t2 --model_args pretrained=smollm2-135m-instruct,experts=runs/a|runs/b,alpha=0.7|0.3 ...
    t2 lm-eval --model smollm2-135m-instruct --expert runs/a --tasks arc_easy --limit 50

Per-document adaptation runs through the one two-pass `adapt.Pipeline`: `mixture_for(requests) -> alpha
(n_requests, K)` is its pass 1 on each request's context with a `strategy` (any registered one; a strategy
that needs labelled shots fits once from its settings, e.g. `fewshot.fit_task`), else the fixed α for every
request. The pipeline runs the requests grouped by identical rows of α, each group with z' = Σₖ αₖ zₖ
merged (a row of zeros runs the base weights). `strategy_config` names a YAML file of StrategyConfig keys.

    lm_eval --model t2 --model_args pretrained=...,experts=runs/a|runs/b,strategy=prompt ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from torch import Tensor

from ..adapt import Pipeline, Request, Strategy, StrategyConfig
from ..experts.adapted import AdaptedModel, load_adapted
from ..errors import ConfigError
from ..models.load import DEFAULT_MODEL

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError:  # the `lm-eval` extra is optional; `cli.py` imports this module only when asked
    raise ConfigError("lm-evaluation-harness is not installed: pip install 'transformer-squared[lm-eval]'") from None


def _split(value: str | Sequence[Any] | None) -> list[Any]:
    """lm-eval's model_args are comma-separated, so lists inside them use '|'."""
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [v for v in str(value).split("|") if v]
    return list(value)


class T2LM(HFLM):
    """HFLM with SVF experts; `mixture_for` is the pass-1 hook (a strategy, else the fixed α)."""

    def __init__(
        self, pretrained: str = DEFAULT_MODEL, experts: str | Sequence[str | Path] | None = None,
        alpha: str | Sequence[float] | None = None, device: str | None = "auto", dtype: str = "float32",
        trust_remote_code: bool = False, adapted: AdaptedModel | None = None,
        strategy: str | StrategyConfig | Strategy | None = None, strategy_config: str | None = None, **kwargs: Any,
    ) -> None:
        if adapted is None:
            weights = [float(a) for a in _split(alpha)] or None
            adapted = load_adapted(pretrained, _split(experts), weights, device=device or "auto", dtype=dtype,
                                   trust_remote_code=trust_remote_code)
        super().__init__(pretrained=adapted.model, tokenizer=adapted.tokenizer, **kwargs)
        self.adapted = adapted
        if strategy_config is not None:
            from ..config import load_config

            strategy = load_config(StrategyConfig, strategy_config, [] if strategy is None else ["--name", str(strategy)])
        self.pipeline = Pipeline(adapted, strategy)

    @staticmethod
    def requests_of(requests: list[Any]) -> list[Request]:
        """Pass 1's view of lm-eval requests: the context, and the lm-eval task name."""
        return [Request(str(r.args[0]), task=str(getattr(r, "task_name", "") or "")) for r in requests]

    def mixture_for(self, requests: list[Any]) -> Tensor:
        """α per request (n_requests, K): the pipeline's pass 1 on each request's context, else the fixed α."""
        return self.pipeline.route(self.requests_of(requests)).alpha

    def _by_mixture(self, requests: list[Any], run: Callable[[list[Any]], list[Any]]) -> list[Any]:
        alpha = self.mixture_for(requests)  # (n, K) or (n, K, n_targets)
        return self.pipeline.run(self.requests_of(requests), lambda idx: run([requests[i] for i in idx]), alpha)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._by_mixture(requests, lambda rs: super(T2LM, self).loglikelihood(rs, disable_tqdm))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._by_mixture(requests, lambda rs: super(T2LM, self).loglikelihood_rolling(rs, disable_tqdm))

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._by_mixture(requests, lambda rs: super(T2LM, self).generate_until(rs, disable_tqdm))


register_model("t2")(T2LM)


def run_lm_eval(
    model: str, tasks: Sequence[str], experts: Sequence[str | Path] = (), alpha: Sequence[float] | None = None,
    limit: int | float | None = None, include_path: str | Path | None = None, include_defaults: bool = True,
    num_fewshot: int | None = None, batch_size: int = 8, device: str = "auto", dtype: str = "float32",
    seed: int = 0, strategy: str | StrategyConfig | None = None, **simple_evaluate_kwargs: Any,
) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` with the experts applied; returns lm-eval's results dict."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"--include-path {include_path}: no such folder of task YAML files")
    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=include_defaults)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"--tasks: unknown lm-eval task '{unknown[0]}' (see `lm_eval ls tasks`, or --include-path)")
    lm = T2LM(model, experts=list(experts), alpha=alpha, device=device, dtype=dtype, batch_size=batch_size,
              strategy=strategy)
    return simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                           random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                           fewshot_random_seed=seed, **simple_evaluate_kwargs)
