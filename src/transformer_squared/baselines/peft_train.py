"""LoRA and IA3 baselines with PEFT: supervised next-token training on the answer letter, same split as the experts.

    run(BaselineConfig(task="vmlu", data="data/vmlu", preset="vmlu"), "runs/lora")

Each item is the task's prompt followed by its answer letter (" A" after a plain prompt, "A" after a
chat template); the loss is −Σ log p(answer tokens | prompt), averaged over the global batch, so
only the answer is learned. AdamW, linear decay to 0 without warm-up, grad-norm clip 1.0: the
defaults of the Hugging Face Trainer that tuyentn/self-adaptive-llm ran (lora_vmlu.ipynb).
Run folder as `t2 train`'s: config.yaml (resolved), split.json, metrics.jsonl, best/ (the adapter
with the best validation accuracy) and latest/ (adapter + optimizer, RNG and loop state), each a
standard PEFT adapter folder swapped in atomically; `resume` continues bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from ..models import engine
from ..evaluation import seen
from ..atomic import check_folder_target, write_json, write_safetensors
from ..config import configure_run, dump_config
from ..errors import ConfigError
from ..experts.expert import SEEN, _sha256
from ..models.load import DEFAULT_MODEL, load_model, model_id
from ..experts.svd import resolve_targets
from ..training import loop as trainloop
from ..training import rollout, splits
from ..training.checkpoint import load_trainer_state, recover, save_trainer_state, write_folder
from ..training.train import _seed_all, _step_seed
from .adapter import CONFIG_FILE, DISPLAY, META_FILE, WEIGHTS_FILE, _peft

# Presets fill every field left at None. `vmlu`: what tuyentn/self-adaptive-llm ran for its VMLU LoRA
# row; `paper`: the LoRA baseline of the Transformer² paper (rank 16 on the query and value projections).
PRESETS: dict[str, dict[str, Any]] = {
    "vmlu": {"r": 8, "alpha": 32.0, "dropout": 0.1, "targets": "attn+mlp", "lr": 2e-4, "epochs": 5.0},
    "paper": {"r": 16, "alpha": 32.0, "dropout": 0.05, "targets": "q_proj,v_proj", "lr": 2e-4, "epochs": 5.0},
}
IA3_LR = 3e-3  # IA3's step size in T-Few (Liu et al., 2022); its scaling vectors need a larger one than LoRA


@dataclass
class BaselineConfig:
    """A PEFT baseline run; YAML keys and `--key value` flags map onto these fields."""

    method: Literal["lora", "ia3"] = "lora"  # PEFT method
    preset: Literal["vmlu", "paper"] = "vmlu"  # defaults of r, alpha, dropout, targets, lr, epochs (PRESETS)
    task: str = "vmlu"  # multiple-choice task in the registry (vmlu, mmlu, arc, mcq)
    data: str | None = None  # task data: local file/folder or hub id (None: the task's default)
    splits: list[str] = field(default_factory=list)  # labelled splits pooled ([]: vmlu dev+valid, mmlu test, else train)
    subset: str = ""  # filter: "category=STEM", "subject=28,29"
    split_file: str | None = None  # a recipe's shared split.json: parts come from it (filtered by subset)
    val_fraction: float = 0.2  # share of each subject for validation (without split_file)
    holdout_fraction: float = 0.0  # share of each subject for the final evaluation only (without split_file)
    max_val: int = 0  # cap on validation questions, in split order (0: all)
    model: str = DEFAULT_MODEL  # base model: built-in name, local folder or hub id
    device: str = "auto"  # auto, cpu, cuda, mps
    dtype: str = "float32"  # model dtype
    r: int | None = None  # LoRA rank (None: the preset's)
    alpha: float | None = None  # LoRA α: the update B·A is scaled by α / r (None: the preset's)
    dropout: float | None = None  # LoRA dropout on the adapter's input (None: the preset's)
    targets: str | None = None  # adapted modules: attn+mlp, attn, mlp or leaf names "q_proj,v_proj" (None: preset's)
    lr: float | None = None  # peak AdamW step size (None: the preset's for LoRA, 3e-3 for IA3)
    epochs: float | None = None  # passes over the training part (None: the preset's)
    steps: int = 0  # cap on optimisation steps (0: no cap, epochs × ⌈n_train / batch_size⌉)
    batch_size: int = 8  # global batch in questions (tuyentn: 1 per device × 8 accumulation steps)
    micro_batch_size: int = 8  # questions per forward/backward; gradients accumulate to the global batch
    weight_decay: float = 0.0  # AdamW weight decay (HF Trainer default: 0)
    grad_clip: float = 1.0  # max global L2 norm of the gradient (HF Trainer default: 1.0); 0 = off
    seed: int = 0  # seeds Python, NumPy, torch, adapter init, the split, data order and dropout
    chat: bool = False  # wrap prompts in the chat template (VMLU's official protocol: no)
    eval_every: int = 0  # validate every N steps (0: once per epoch), and at step 0 and the last step
    eval_batch_size: int = 16  # prompts per forward pass in validation
    patience: int = 0  # stop after this many validations without improvement (0: never)
    label: str = ""  # row name in reports (default: LoRA / IA3)
    gradient_checkpointing: bool = False  # recompute each decoder layer in backward: activations ≈ 1/layers, +1 forward

    def __post_init__(self) -> None:
        problems = [f"{k} must be ≥ 1, got {getattr(self, k)}" for k in
                    ("batch_size", "micro_batch_size", "eval_batch_size") if getattr(self, k) < 1]
        problems += [f"{k} must be ≥ 0, got {getattr(self, k)}" for k in
                     ("steps", "weight_decay", "grad_clip", "eval_every", "patience", "max_val") if getattr(self, k) < 0]
        problems += [f"{k} must be > 0, got {getattr(self, k)}" for k in ("r", "alpha", "lr", "epochs")
                     if getattr(self, k) is not None and getattr(self, k) <= 0]
        if self.dropout is not None and not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.micro_batch_size > self.batch_size:
            problems.append(f"micro_batch_size {self.micro_batch_size} > batch_size {self.batch_size}")
        if self.preset not in PRESETS:
            problems.append(f"preset '{self.preset}': choose one of {', '.join(PRESETS)}")
        if problems:
            raise ConfigError("; ".join(problems))


def resolve(cfg: BaselineConfig) -> BaselineConfig:
    """The config with every None filled from its preset (IA3: its own lr); the run saves this one."""
    fill = dict(PRESETS[cfg.preset]) | ({"lr": IA3_LR} if cfg.method == "ia3" else {})
    return dataclasses.replace(cfg, **{k: v for k, v in fill.items() if getattr(cfg, k) is None},
                               label=cfg.label or DISPLAY[cfg.method])


def target_names(model: Any, spec: str) -> list[str]:
    """Leaf module names PEFT should adapt: from attn/mlp groups of the model's blocks, or given names."""
    groups = [g for g in spec.split("+") if g]
    if groups and all(g in ("attn", "mlp") for g in groups):
        full = [n for g in groups for n in resolve_targets(model, g)]
    else:
        wanted = {x.strip() for x in spec.split(",") if x.strip()}
        full = [n for n in resolve_targets(model, "all") if n.rsplit(".", 1)[-1] in wanted]
        missing = wanted - {n.rsplit(".", 1)[-1] for n in full}
        if missing:
            raise ConfigError(f"targets '{spec}': no Linear named {', '.join(sorted(missing))} in {model_id(model)}")
    return sorted({n.rsplit(".", 1)[-1] for n in full})


def peft_config(cfg: BaselineConfig, model: Any) -> Any:
    """The PEFT config of a resolved BaselineConfig (IA3: MLP modules scale their input, as in the IA3 paper)."""
    peft = _peft()
    names = target_names(model, cfg.targets)
    if cfg.method == "lora":
        return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=names,
                               bias="none", task_type="CAUSAL_LM")
    mlp = {n.rsplit(".", 1)[-1] for n in resolve_targets(model, "mlp")}
    return peft.IA3Config(target_modules=names, feedforward_modules=[n for n in names if n in mlp],
                          task_type="CAUSAL_LM")


class BaselineRun:
    """setup() → train() → cleanup(), as the expert trainer; save_checkpoint() writes latest/ (and best/)."""

    def __init__(self, cfg: BaselineConfig, out_dir: str | Path, task: Any = None) -> None:
        self.cfg = resolve(cfg)
        self.out = Path(out_dir)
        self.task = task  # a Task object; None: looked up by cfg.task
        self.step = 0
        self.loop: dict[str, Any] = trainloop.new_loop()
        self.history: list[dict[str, Any]] = []
        self._answer_ids: dict[str, list[int]] = {}

    def setup(self, resume: bool = False) -> None:
        cfg = self.cfg
        _seed_all(cfg.seed)
        if self.task is None:
            from ..tasks import get_task

            self.task = get_task(cfg.task)
        if not self.task.kind.letters:
            raise ConfigError(f"t2 baseline trains on the answer letter: task '{cfg.task}' is {self.task.kind.name}, "
                              "not multiple choice")
        if resume and not (self.out / "latest").exists() and not (self.out / ".latest.old").exists():
            raise ConfigError(f"--resume: {self.out / 'latest'} does not exist; start without --resume")
        check_folder_target(self.out, "--out")
        self.parts = splits.make_parts(cfg, self.task, self.out, resume)
        self.seen = seen.keys(self.parts["train"] + self.parts["val"])  # recorded in every adapter folder it writes
        base, self.tokenizer = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        self.model = _peft().get_peft_model(base, peft_config(cfg, base))
        if cfg.gradient_checkpointing:
            trainloop.checkpoint_layers(self.model)  # active in train_step, which sets model.train()
        self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        per_epoch = math.ceil(len(self.parts["train"]) / cfg.batch_size)
        self.total = max(1, math.ceil(cfg.epochs * per_epoch))
        self.total = min(self.total, cfg.steps) if cfg.steps else self.total
        self.eval_every = cfg.eval_every or per_epoch
        if resume:
            self._resume()
        else:
            (self.out / "metrics.jsonl").write_text("", encoding="utf-8")
        dump_config(cfg, self.out / "config.yaml")

    def _resume(self) -> None:
        latest = self.out / "latest"
        recover(latest)
        _peft().set_peft_model_state_dict(self.model, load_file(latest / WEIGHTS_FILE))
        state = load_trainer_state(latest, self.optimizer, self.names)
        self.step, self.loop = state["step"], state["loop"]
        self.history = trainloop.resumed_history(self.out, self.step)

    # ---- one optimisation step ----------------------------------------------------------------
    def answer_ids(self, letter: str) -> list[int]:
        """Token ids of the answer after the prompt: " A" (plain prompt ending in "Answer:") or "A" (chat)."""
        if letter not in self._answer_ids:
            text = letter if self.cfg.chat else " " + letter
            self._answer_ids[letter] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._answer_ids[letter]

    def items(self, examples: list[Any]) -> list[rollout.Item]:
        prompts = self.task.format(examples, self.tokenizer, chat=self.cfg.chat)
        return [rollout.Item(p, answer_ids=self.answer_ids(e.answer)) for p, e in zip(prompts, examples)]

    def lr_at(self, step: int) -> float:
        """Linear decay from lr to 0 over the run (the HF Trainer's default schedule, no warm-up)."""
        return self.cfg.lr * max(0.0, (self.total - step) / self.total)

    def train_step(self, step: int) -> dict[str, float]:
        """Micro-batched answer-only next-token loss, clip, AdamW step. Returns the step's metrics."""
        cfg = self.cfg
        torch.manual_seed(_step_seed(cfg.seed, step))  # dropout masks depend on the step only
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        items = self.items(splits.batch_of(self.parts["train"], cfg.batch_size, cfg.seed, step))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(0, len(items), cfg.micro_batch_size):
            token_logp, _, _ = rollout.answer_logprobs(self.model, self.tokenizer, items[i : i + cfg.micro_batch_size])
            loss = -token_logp.sum() / len(items)  # (mb, L) → mean over the global batch of −Σ log p(answer)
            loss.backward()
            total += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.model.eval()
        return {"loss": total, "lr": self.lr_at(step), "grad_norm": float(grad_norm)}

    # ---- validation, checkpoints, loop ----------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        """Letter-protocol accuracy on the validation part (argmax over the valid letters)."""
        val = self.parts["val"][: self.cfg.max_val or None]
        if not val:
            return float("nan")
        prompts = self.task.format(val, self.tokenizer, chat=self.cfg.chat)
        _, logp = engine.score_letters(self.model, self.tokenizer, prompts, [e.letters for e in val],
                                       batch_size=self.cfg.eval_batch_size)
        preds = [e.letters[int(lp.argmax())] for e, lp in zip(val, logp)]
        return sum(self.task.score(val, preds)) / len(val)

    def meta(self) -> dict[str, Any]:
        """baseline.json: label, base model, provenance (config, split ids seen in training) and metrics."""
        return {"label": self.cfg.label, "method": self.cfg.method, "base_model": model_id(self.model),
                "task": self.cfg.task, "config": asdict(self.cfg),
                "split": {"file": splits.SPLIT_FILE, "counts": {k: len(v) for k, v in self.parts.items()},
                          "ids": {k: [e.id for e in v] for k, v in self.parts.items()}},
                "metrics": {"step": self.step, "total_steps": self.total, **self.loop,
                            "val_history": [h for h in self.history if "val_acc" in h]}}

    def save_checkpoint(self, kind: str = "latest") -> Path:
        """Write latest/ (adapter + optimizer/RNG/loop state) or best/ (adapter only), atomically."""
        meta = self.meta()

        def fill(tmp: Path) -> None:
            self.model.save_pretrained(str(tmp))
            _sort_targets(tmp / CONFIG_FILE)
            write_safetensors({"keys": self.seen}, tmp / SEEN, metadata={"format": "transformer-squared-seen"})
            write_json(meta | {"seen": {"n": int(self.seen.numel()), "task": self.cfg.task, "parts": ["train", "val"]},
                               "seen_sha256": _sha256(tmp / SEEN)}, tmp / META_FILE)
            if kind == "latest":
                save_trainer_state(tmp, self.optimizer, self.names, {"step": self.step, "loop": self.loop})

        return write_folder(self.out / kind, fill)

    def train(self) -> dict[str, Any]:
        """The loop (`training.loop.train`): validate at step 0, every eval_every steps and at the end."""
        cfg = self.cfg
        trainloop.train(self, self.total, self.eval_every, cfg.patience, len(self.parts["val"][: cfg.max_val or None]),
                        f"baseline {cfg.label}", lambda stats, val: {"loss": f"{stats['loss']:.4f}"})
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Rewrite best/baseline.json with the final summary (its adapter unchanged); returns the summary."""
        summary = {"steps_done": self.step, "total_steps": self.total, **self.loop}
        meta = json.loads((self.out / "best" / META_FILE).read_text(encoding="utf-8"))
        meta["metrics"] = {**self.meta()["metrics"], **summary, "step": self.loop["best_step"]}
        write_json(meta, self.out / "best" / META_FILE)
        return summary | {"out": str(self.out)}

    def log_row(self, row: dict[str, Any]) -> None:
        trainloop.append_row(self.out, self.history, row)

    def cleanup(self) -> None:
        """Nothing is patched into the base model, so only memory is released."""
        self.model = None


def _sort_targets(path: Path) -> None:
    """PEFT keeps target_modules as a set and saves it in hash order, which varies between processes
    (PYTHONHASHSEED); sorted, the same run writes the same adapter_config.json every time."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        write_json(config, path)


def run(cfg: BaselineConfig, out_dir: str | Path, resume: bool = False, task: Any = None) -> dict[str, Any]:
    """setup → train → cleanup; returns the summary (best validation accuracy, steps, folder)."""
    return trainloop.run_job(BaselineRun(cfg, out_dir, task), resume)


def configure(out_dir: str | Path, config_path: str | Path | None, named: dict[str, Any], flags: list[str],
              resume: bool = False) -> BaselineConfig:
    """BaselineConfig from (on resume) the run's saved config.yaml, then a YAML file, then named and --key flags."""
    return configure_run(BaselineConfig, out_dir, config_path, named, flags, resume)
