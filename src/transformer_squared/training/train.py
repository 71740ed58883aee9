"""Train an SVF expert with REINFORCE (paper §3.1): `TrainConfig` and `SVFRun`, a run with torchtune's verbs.

    run = SVFRun(TrainConfig(task="vmlu", data="data/vmlu", subset="category=STEM"), "runs/stem")
    run.setup(); run.train(); run.cleanup()

Run folder: `config.yaml` (resolved), `split.json`, `metrics.jsonl`, `best/` (by validation
accuracy) and `latest/` (plus optimizer and RNG state, for `resume`).
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .. import distributed
from ..models import engine
from ..evaluation import seen
from ..atomic import check_folder_target
from ..config import dump_config
from ..errors import ConfigError
from ..experts.expert import Expert, attach
from ..models.load import DEFAULT_MODEL, DTYPES, load_model, model_id, pick_device
from ..models.random_weights import is_random
from ..experts.svf import PARAMETRISATIONS
from ..tasks.kinds import ModelCalls, objective_of
from . import loop as trainloop
from . import rollout, splits
from .checkpoint import load_expert, load_trainer_state, recover, save_trainer_state, write_folder
from .sinks import MetricsSink

log = logging.getLogger(__name__)



@dataclass
class TrainConfig:
    """Everything a training run needs; YAML keys and `--key value` flags map onto these fields."""

    task: str = "vmlu"  # task name in the registry (vmlu, mmlu, mcq, gsm8k, rg, ...)
    data: str | None = None  # task data: local file/folder or hub id (None: the task's default)
    splits: list[str] = field(default_factory=list)  # labelled splits pooled before splitting ([]: vmlu dev+valid, else train)
    subset: str = ""  # filter: "category=STEM", "subject=28,29", "category=STEM;subject=05"
    val_fraction: float = 0.2  # share of each subject held out for validation (model selection)
    holdout_fraction: float = 0.0  # share of each subject held out for final evaluation only
    split_file: str | None = None  # a recipe's shared split.json: parts come from it (filtered by subset)
    max_val: int = 0  # cap on validation questions, taken in split order (0: all)
    model: str = DEFAULT_MODEL  # base model: built-in name, local folder or hub id
    device: str = "auto"  # auto, cpu, cuda, mps
    dtype: str = "float32"  # model dtype
    targets: str = "mlp"  # which Linear weights get an SVF vector: mlp, attn, all or a regex
    parametrisation: str = "sigmoid"  # z = f(p): sigmoid (reference) or linear
    mode: Literal["merged", "factored"] = "factored"  # how W' runs in training steps (results/train_step.txt)
    steps: int = 100  # optimisation steps
    batch_size: int = 256  # global batch: prompts per optimisation step (paper: 256)
    micro_batch_size: int = 8  # prompts per forward/backward; gradients accumulate to the global batch
    sort_micro: bool = True  # micro-batches of items sorted by token length (less padding; sampled letters differ)
    lr: float = 2e-3  # Adam step size (paper: 2e-3)
    kl: float = 0.0  # λ, weight of KL(adapted ‖ base) on the answer tokens (paper: 0, 0.1, 0.3)
    grad_clip: float = 1e-3  # max global L2 norm of the gradient on p (paper: 1e-3); 0 = off
    seed: int = 0  # seeds Python, NumPy, torch, the split, the data order and sampling
    objective: Literal["auto", "exact", "sample"] = "auto"  # auto: the task kind's default (MCQ: exact, else sample)
    temperature: float = 0.0  # rollout temperature; 0 = greedy (reference); MCQ sampling needs > 0
    samples_per_prompt: int = 1  # rollouts (or sampled letters) per prompt
    baseline: Literal["none", "group"] = "none"  # rollouts: none (R, the paper) or group (R − mean R of the prompt's samples)
    max_new_tokens: int = 64  # rollout length for generative tasks
    chat: bool = False  # wrap prompts in the chat template (VMLU's official protocol: no)
    eval_every: int = 10  # validate every N steps (and before the first and after the last)
    eval_batch_size: int = 16  # prompts per forward pass in validation
    patience: int = 0  # stop after this many validations without improvement (0: never)
    label: str = ""  # expert label (default: the subset's value, else the task name)
    description: str = ""  # one sentence for prompt-based dispatch (default: made from task and subset)
    logger: Literal["none", "tensorboard", "wandb"] = "none"  # extra metrics sink besides metrics.jsonl
    unsafe_exec: bool = False  # code tasks: where bubblewrap cannot run, run generated code unconfined
    factor_dtype: str = ""  # U and V in memory: float32, bfloat16 ("": bfloat16 on a GPU, float32 elsewhere)
    force: bool = False  # allow saving experts of a random: base model (tests and benchmarks)
    gradient_checkpointing: bool = False  # recompute each decoder layer in backward: activations ≈ 1/layers, +1 forward

    def __post_init__(self) -> None:
        problems = [f"{k} must be ≥ 1, got {getattr(self, k)}" for k in
                    ("steps", "batch_size", "micro_batch_size", "eval_every", "samples_per_prompt", "max_new_tokens",
                     "eval_batch_size") if getattr(self, k) < 1]
        problems += [f"{k} must be ≥ 0, got {getattr(self, k)}" for k in
                     ("lr", "kl", "grad_clip", "temperature", "patience", "max_val") if getattr(self, k) < 0]
        if self.baseline not in ("none", "group"):
            problems.append(f"baseline '{self.baseline}': choose none or group")
        if self.baseline == "group" and (self.samples_per_prompt < 2 or self.temperature <= 0):
            problems.append(f"baseline 'group' compares the samples of one prompt: it needs samples_per_prompt ≥ 2 "
                            f"(got {self.samples_per_prompt}) and temperature > 0 (got {self.temperature})")
        if self.micro_batch_size > self.batch_size * self.samples_per_prompt:  # items: prompts × samples
            problems.append(f"micro_batch_size {self.micro_batch_size} > batch_size {self.batch_size} × "
                            f"samples_per_prompt {self.samples_per_prompt}")
        if self.factor_dtype not in ("", *DTYPES):
            problems.append(f"factor_dtype '{self.factor_dtype}': choose one of {', '.join(DTYPES)} (or '' for the default)")
        if is_random(self.model) and not self.force:
            problems.append(f"model '{self.model}' has random weights: its experts are only good for tests and "
                            "benchmarks; pass --force to train and save one anyway")
        if self.parametrisation not in PARAMETRISATIONS:
            problems.append(f"parametrisation '{self.parametrisation}': choose one of {', '.join(PARAMETRISATIONS)}")
        if problems:
            raise ConfigError("; ".join(problems))


class SVFRun:
    """setup() → train() → cleanup(); save_checkpoint() writes latest/ (and best/)."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, task: Any = None) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.task = task  # a Task object; None: looked up by cfg.task
        self.step = 0
        self.loop: dict[str, Any] = trainloop.new_loop()
        self.history: list[dict[str, Any]] = []
        self.seconds: dict[str, float] = {}  # wall seconds per phase of the last train_step (benchmarks read it)

    @contextmanager
    def _phase(self, name: str) -> Any:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    # ---- setup -------------------------------------------------------------------------------
    def setup(self, resume: bool = False) -> None:
        cfg = self.cfg
        _seed_all(cfg.seed)
        if self.task is None:
            from ..tasks import get_task

            self.task = get_task(cfg.task, cfg.unsafe_exec)
        self.objective = rollout.OBJECTIVES.get(objective_of(self.task.kind, self.task.name, cfg.objective))
        if problems := self.objective.check(cfg):
            raise ConfigError("; ".join(problems))
        if resume and not (self.out / "latest").exists() and not (self.out / ".latest.old").exists():
            raise ConfigError(f"--resume: {self.out / 'latest'} does not exist; start without --resume")
        check_folder_target(self.out, "--out")
        distributed.init(pick_device(cfg.device))
        self.parts = splits.make_parts(cfg, self.task, self.out, resume, write=distributed.is_main())
        self.seen = seen.keys(self.parts["train"] + self.parts["val"])  # recorded in every expert it writes
        self.model, self.tokenizer = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        self.svf = attach(self.model, targets=cfg.targets, factor_dtype=cfg.factor_dtype or None)
        self.svf.track_weight_grads(cfg.mode == "merged")
        self.checkpointed = trainloop.checkpoint_layers(self.model) if cfg.gradient_checkpointing else []
        init = Expert.init(self.svf.factors, model_id(self.model), self.svf.fingerprint, cfg.parametrisation,
                           cfg.seed, self._label(), self._description())
        self.meta = init.meta
        self.f = PARAMETRISATIONS.get(cfg.parametrisation)
        self.names = list(init.p)
        self.p = {t: v.clone().requires_grad_(True) for t, v in init.p.items()}  # raw parameters (r,)
        with torch.no_grad():
            self.z0 = {t: self.f.z(v) for t, v in init.p.items()}  # z at initialisation: the step metric z_dist
        self.optimizer = torch.optim.Adam(list(self.p.values()), lr=cfg.lr)
        self.letter_ids = rollout.LetterIds(self.tokenizer)
        used = self.parts["train"] + self.parts["val"]
        engine.check_context(self.model, self.tokenizer, self.task.format(used, self.tokenizer, chat=cfg.chat),
                             [f"question {e.id}" for e in used])
        if resume:
            self._resume()
        elif distributed.is_main():
            (self.out / "metrics.jsonl").write_text("", encoding="utf-8")
        if distributed.is_main():  # only rank 0 writes files
            dump_config(cfg, self.out / "config.yaml")
            self.sink = MetricsSink(cfg.logger, self.out, asdict(cfg))

    def _label(self) -> str:
        if self.cfg.label:
            return self.cfg.label
        values = [v for s in splits.parse_subset(self.cfg.subset).values() for v in sorted(s)]
        return ",".join(values) or self.cfg.task

    def _description(self) -> str:
        if self.cfg.description:
            return self.cfg.description
        what = f" on {self.cfg.subset.replace('=', ' ')}" if self.cfg.subset else ""
        return f"Expert for {self.cfg.task} questions{what}."

    def _resume(self) -> None:
        latest = self.out / "latest"
        if distributed.is_main():
            recover(latest)  # may rename folders: one process, then everyone reads
        distributed.barrier()
        expert = load_expert(latest)
        if expert.meta.fingerprint != self.meta.fingerprint or list(expert.p) != self.names:
            raise ConfigError(f"{latest}: expert does not match the model or targets of this config; cannot resume")
        with torch.no_grad():
            for t in self.names:
                self.p[t].copy_(expert.p[t])
        state = load_trainer_state(latest, self.optimizer, self.names)
        self.step, self.loop = state["step"], state["loop"]
        self.history = trainloop.resumed_history(self.out, self.step, write=distributed.is_main())

    # ---- one optimisation step ----------------------------------------------------------------
    def z(self) -> dict[str, torch.Tensor]:
        return {t: self.f.z(p) for t, p in self.p.items()}  # (r,) per target, with graph

    def batch_examples(self, step: int) -> list[Any]:
        """The global batch of a step: consecutive slices of seeded per-epoch permutations of train."""
        return splits.batch_of(self.parts["train"], self.cfg.batch_size, self.cfg.seed, step)

    def step_seed(self, step: int) -> int:
        return _step_seed(self.cfg.seed, step)

    def rollouts(self, step: int, examples: list[Any]) -> list[rollout.Item]:
        """The step's training items with their rewards (sampled answers for a rollout objective)."""
        prompts = self.task.format(examples, self.tokenizer, chat=self.cfg.chat)
        return self.objective.items(self, step, examples, prompts)

    def terms(self, items: list[rollout.Item], base: Any, generator: torch.Generator):
        """(J, KL, reward) per item, under whatever weights are in place."""
        return self.objective.terms(self, items, base, generator)

    def base_terms(self, items: list[rollout.Item]) -> Any:
        """Base-model quantities for the KL term (base weights must be in place), None when λ = 0."""
        if self.cfg.kl == 0:
            return None
        return self.objective.base_terms(self, items)

    def train_step(self, step: int) -> dict[str, float]:
        """Rollouts, micro-batched REINFORCE gradient on p, clip, Adam step. Returns the step's metrics.

        `self.seconds` gets the step's wall time per phase: generation (rollouts and rewards), forward
        (the base model's KL reference and the adapted terms), backward, optimizer (clip and Adam)."""
        cfg = self.cfg
        self.seconds = {}
        torch.manual_seed(_step_seed(cfg.seed, step))
        generator = torch.Generator().manual_seed(_step_seed(cfg.seed, step))
        if cfg.mode == "merged":
            with self._phase("other"):
                s_new = self.svf.merge(self.z())  # W' written target by target; s' per target, with graph to p
        try:
            return self._step(step, s_new if cfg.mode == "merged" else {}, generator)
        finally:
            with self._phase("other"):
                self.svf.restore()

    def _step(self, step: int, s_new: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, float]:
        """train_step once W'(z) is merged (merged mode: the rollouts are generated with it too)."""
        cfg = self.cfg
        with self._phase("generation"):
            items = self.rollouts(step, distributed.shard(self.batch_examples(step)))  # this rank's share
        if cfg.sort_micro:  # similar lengths together: left-padding wastes fewer tokens
            items = rollout.by_length(self.tokenizer, items)
        micro = [items[i : i + cfg.micro_batch_size] for i in range(0, len(items), cfg.micro_batch_size)]
        (n,) = distributed.all_sum([len(items)])  # items in the global batch
        self.optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "reward": 0.0, "kl": 0.0, "reward_sq": 0.0, "right": 0.0}
        if any(it.advantage is not None for it in items):  # group baseline: items that carry no signal
            totals["zero_advantage"] = sum(it.advantage == 0 for it in items) / n
        if hasattr(self.task, "runs"):  # code tasks: share of rollouts whose program ended before its checks
            totals["early_exit"] = sum(it.exited for it in items) / n
        if cfg.mode == "merged":
            for mb in micro:
                with self._phase("forward"), self.svf.base_weights():  # base log-probs per micro-batch
                    base = self.base_terms(mb)
                self._backward(mb, base, n, generator, totals)
            with self._phase("backward"):
                self.svf.backward_to_z(s_new)  # accumulated dL/dW' → dL/ds' → dL/dp
        else:
            for mb in micro:
                with self._phase("forward"):
                    base = self.base_terms(mb)
                z = self.z()
                with self.svf.factored({t: zt.expand(len(mb), -1) for t, zt in z.items()}):  # (mb, r) per target
                    self._backward(mb, base, n, generator, totals)
        with self._phase("optimizer"):
            params = list(self.p.values())
            distributed.all_reduce_grads(params)  # data parallel: only the expert's gradients travel
            totals = dict(zip(totals, distributed.all_sum(totals.values())))
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            self.optimizer.step()
        return diagnostics(totals) | {"grad_norm": float(grad_norm), "z_dist": self.z_dist()}

    @torch.no_grad()
    def z_dist(self) -> float:
        """‖z − z₀‖₂ over every target: how far the expert has moved from its initialisation."""
        return float(sum(((self.f.z(p) - self.z0[t]) ** 2).sum() for t, p in self.p.items()) ** 0.5)

    def _backward(self, mb: list[rollout.Item], base: Any, n: int, generator: torch.Generator,
                  totals: dict[str, float]) -> None:
        with trainloop.layers_training(self.checkpointed):  # checkpointed only in these passes
            with self._phase("forward"):
                J, KL, reward = self.terms(mb, base, generator)  # (mb,) each
                loss = (-J + self.cfg.kl * KL).sum() / n  # −mean(R · log π') + λ·KL, mean over the global batch
            with self._phase("backward"):
                loss.backward()
        totals["loss"] += loss.item()
        totals["reward"] += reward.sum().item() / n
        totals["kl"] += KL.detach().sum().item() / n
        totals["reward_sq"] += (reward ** 2).sum().item() / n
        totals["right"] += (reward > 0).sum().item() / n

    # ---- validation, checkpoints, loop ----------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        """Accuracy on the validation part with the current z, under the kind's selection protocol (MCQ: argmax
        over the letters)."""
        val = self.parts["val"][: self.cfg.max_val or None]
        assert val, "setup() guarantees a validation part"
        local = distributed.shard(val)  # data parallel: each rank scores its share
        prompts = self.task.format(local, self.tokenizer, chat=self.cfg.chat)
        preds = []
        kind, bs = self.task.kind, self.cfg.eval_batch_size
        calls = ModelCalls(
            lambda p, letters: engine.score_letters(self.model, self.tokenizer, p, letters, batch_size=bs),
            lambda p: engine.generate(self.model, self.tokenizer, p, max_new_tokens=self.cfg.max_new_tokens,
                                      batch_size=bs))
        with self.svf.merged({t: z.detach() for t, z in self.z().items()}):
            if local:
                preds = kind.predict(self.task, local, prompts, calls).predictions[kind.selection]
        (correct,) = distributed.all_sum([sum(self.task.score(local, preds))])
        return correct / len(val)

    def expert(self, p: dict[str, torch.Tensor] | None = None) -> Expert:
        """The expert at the current p (or given p), with provenance and metrics."""
        parts = self.parts
        self.meta.task = self.cfg.task
        self.meta.provenance = {"config": asdict(self.cfg), "init_seed": self.cfg.seed,
                                "task_version": str(getattr(self.task, "version", "")),
                                "split": {"file": splits.SPLIT_FILE, "counts": {k: len(v) for k, v in parts.items()}}}
        self.meta.seen = {"task": self.cfg.task, "parts": ["train", "val"]}  # the questions in seen.safetensors
        self.meta.metrics = {"step": self.step, **self.loop,
                             "val_history": [h for h in self.history if "val_acc" in h]}
        return Expert({t: v.detach().clone() for t, v in (p or self.p).items()}, self.meta, self.seen)

    def save_checkpoint(self, kind: str = "latest") -> Path:
        """Write latest/ (expert + optimizer/RNG/loop state) or best/ (expert only), atomically (rank 0 only)."""
        if not distributed.is_main():
            return self.out / kind
        expert = self.expert()

        def fill(tmp: Path) -> None:
            expert.save(tmp, force=self.cfg.force)
            if kind == "latest":
                save_trainer_state(tmp, self.optimizer, self.names, {"step": self.step, "loop": self.loop})

        return write_folder(self.out / kind, fill)

    def train(self) -> dict[str, Any]:
        """The loop (`loop.train`): validate at step 0 and every eval_every steps; checkpoint every step."""
        cfg = self.cfg

        def postfix(stats: dict[str, float], val: float) -> dict[str, str]:
            return {"reward": f"{stats['reward']:+.3f}", "loss": f"{stats['loss']:.4f}", "kl": f"{stats['kl']:.2e}",
                    "val": f"{val:.3f}"}

        trainloop.train(self, cfg.steps, cfg.eval_every, cfg.patience, len(self.parts["val"][: cfg.max_val or None]),
                        f"train {self.meta.label}", postfix, show=distributed.is_main())
        summary = self.finish()
        distributed.barrier()  # data parallel: rank 0 has written best/ before anyone reports success
        return summary

    def finish(self) -> dict[str, Any]:
        """Rewrite best/ with the final metrics (its p unchanged); returns the summary."""
        summary = {"steps_done": self.step, **self.loop}
        if not distributed.is_main():
            return summary | {"out": str(self.out)}
        best = load_expert(self.out / "best")
        # best/ holds the weights of best_step, so its metadata names that step, not the last one
        self.meta.metrics = {**self.expert().meta.metrics, **summary, "step": self.loop["best_step"]}
        write_folder(self.out / "best", lambda tmp: Expert(best.p, self.meta, self.seen).save(tmp, force=self.cfg.force))
        return summary | {"out": str(self.out)}

    def log_row(self, row: dict[str, Any]) -> None:
        if not distributed.is_main():  # data parallel: rank 0 writes metrics
            self.history.append(row)
            return
        trainloop.append_row(self.out, self.history, row)
        self.sink.log(row)

    def cleanup(self) -> None:
        """Close the metrics sink and put the base weights back; safe after a failed setup."""
        if hasattr(self, "sink"):
            self.sink.close()
        if hasattr(self, "svf"):
            self.svf.restore()


def _step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, task: Any = None) -> dict[str, Any]:
    """setup → train → cleanup; returns the summary (best validation accuracy, steps, folder)."""
    return trainloop.run_job(SVFRun(cfg, out_dir, task), resume)


def configure(out_dir: str | Path, config_path: str | Path | None, named: dict[str, Any], flags: list[str],
              resume: bool = False, experts: list[str | Path] = (), num_layers: int | None = None) -> TrainConfig:
    """TrainConfig from (on resume) the run's saved config.yaml, then a YAML file, then named and --key flags.

    `experts` (the CLI's --experts) are the experts of `task: route`, which builds its data from them;
    `num_layers` builds a random: model with that many layers."""
    from ..config import configure_run
    from ..models.random_weights import with_layers

    named = dict(named)
    if experts:
        if named.get("task") != "route" or named.get("data") is not None:
            raise ConfigError("--experts names the experts of --task route (which builds its data from them); "
                              "use it with --task route and without --data")
        named["data"] = "|".join(str(Path(e).resolve()) for e in experts)
    if num_layers is not None:
        if named.get("model") is None:
            raise ConfigError("--num-layers needs --model random:NAME")
        named["model"] = with_layers(named["model"], num_layers)
    return configure_run(TrainConfig, out_dir, config_path, named, flags, resume)


def diagnostics(totals: dict[str, float]) -> dict[str, float]:
    """Step metrics from batch means: reward_sd (SD of the rewards in the batch; 0 means every item got the
    same reward, so the ±1 REINFORCE gradient only shifts the whole batch's answers one way) and `right`
    (share of items with a positive reward), beside loss, reward and KL."""
    out = {k: v for k, v in totals.items() if k != "reward_sq"}
    out["reward_sd"] = max(totals["reward_sq"] - totals["reward"] ** 2, 0.0) ** 0.5
    return out
