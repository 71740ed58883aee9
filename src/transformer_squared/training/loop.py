"""The loop both trainers share (SVF experts: `train.py`; PEFT baselines: `baselines/peft_train.py`).

Validate at step 0, every `eval_every` steps and after the last; keep best/ by validation accuracy;
stop after `patience` validations without improvement; write latest/ after every step; one row of
metrics per step in `metrics.jsonl` (written before latest/, so a resume trims the rows past it).
`checkpoint_layers` turns on activation checkpointing for either trainer.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from tqdm.auto import tqdm

from ..errors import ConfigError


class Run(Protocol):
    """What the loop needs from a trainer (torchtune's verbs: setup, train, cleanup around the step)."""

    step: int  # optimisation steps done
    loop: dict[str, Any]  # best_val, best_step, bad_evals, stopped_early
    history: list[dict[str, Any]]  # rows logged so far

    def train_step(self, step: int) -> dict[str, float]: ...
    def validate(self) -> float: ...
    def save_checkpoint(self, kind: str = "latest") -> Path: ...
    def log_row(self, row: dict[str, Any]) -> None: ...
    def setup(self, resume: bool = False) -> None: ...
    def train(self) -> dict[str, Any]: ...
    def cleanup(self) -> None: ...


def checkpoint_layers(model: Any) -> list[Any]:
    """Activation checkpointing of every decoder layer, transformers' own (non-reentrant): in a step with
    gradients a layer keeps only its input and recomputes the rest in the backward pass, so the saved
    activations drop from all layers' to each layer's input plus one layer's (`t2 plan --checkpointing`),
    for one more forward pass of compute. transformers checkpoints a layer only while the layer itself is
    in training mode: the PEFT trainer sets model.train() for its steps (dropout on, as without
    checkpointing); the SVF trainer, whose model stays in eval mode, turns on only the layers' own flag,
    and only around its gradient passes (`layers_training`). Returns the layers."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps the HF model
    layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not getattr(base, "supports_gradient_checkpointing", False) or not layers:
        raise ConfigError(f"gradient_checkpointing: {type(base).__name__} has no checkpointable decoder layers")
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers ≥ 5.x; the old name warns there
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return layers


@contextmanager
def layers_training(layers: list[Any]) -> Iterator[None]:
    """The layers' own training flag on for the block, off after it: their submodules (where dropout lives)
    stay in eval mode, and passes outside the block (validation, rollouts, the KL's base terms) are never
    checkpointed (transformers < 5 checkpoints a training layer even without gradients, and then drops
    the KV cache of generation)."""
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer in layers:
            layer.training = False


def run_job(job: Run, resume: bool = False) -> dict[str, Any]:
    """setup → train → cleanup (also after a failure); returns the trainer's summary."""
    try:
        job.setup(resume=resume)
        return job.train()
    finally:
        job.cleanup()


def new_loop() -> dict[str, Any]:
    return {"best_val": None, "best_step": None, "bad_evals": 0, "stopped_early": False}


def validate_and_keep_best(run: Run, n_val: int) -> float:
    """Validate; a new best accuracy writes best/, else counts one more validation without improvement."""
    acc = run.validate()
    run.log_row({"step": run.step, "val_acc": acc, "n_val": n_val})
    best = run.loop["best_val"]
    if best is None or acc > best:
        run.loop.update(best_val=acc, best_step=run.step, bad_evals=0)
        run.save_checkpoint("best")
    else:
        run.loop["bad_evals"] += 1
    return acc


def train(run: Run, total: int, eval_every: int, patience: int, n_val: int, desc: str,
          postfix: Callable[[dict[str, float], float], dict[str, str]], show: bool = True) -> None:
    """Steps until `total` (or early stopping); `postfix(stats, last_val)` labels the progress bar (shown if `show`)."""
    last = float("nan")
    if run.step == 0 and run.loop["best_val"] is None:
        last = validate_and_keep_best(run, n_val)
        run.save_checkpoint("latest")
    bar = tqdm(total=total, initial=run.step, desc=desc, disable=not show)
    while run.step < total and not run.loop["stopped_early"]:
        t0 = time.perf_counter()
        stats = run.train_step(run.step)
        run.step += 1
        row = {"step": run.step, **stats, "seconds": round(time.perf_counter() - t0, 3)}
        if run.step % eval_every == 0 or run.step == total:
            last = validate_and_keep_best(run, n_val)
            if patience and run.loop["bad_evals"] >= patience:
                run.loop["stopped_early"] = True
        run.log_row(row)  # before the save: resume trims rows past the saved step
        run.save_checkpoint("latest")
        bar.update(1)
        bar.set_postfix(**postfix(stats, last), best=f"{run.loop['best_val']:.3f}")
    bar.close()


def append_row(out: Path, history: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Add one row to the history and to out/metrics.jsonl."""
    history.append(row)
    with open(Path(out) / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def resumed_history(out: Path, step: int, write: bool = True) -> list[dict[str, Any]]:
    """The rows of out/metrics.jsonl up to `step` (a kill may have logged rows past the saved state); rewrites it
    (if `write`: one process of a data-parallel run)."""
    path = Path(out) / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text("utf-8").splitlines() if x]
    kept = [h for h in rows if h["step"] <= step]
    if write:
        path.write_text("".join(json.dumps(h) + "\n" for h in kept), "utf-8")
    return kept
