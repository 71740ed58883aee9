"""Seconds per training step, old settings against new, side by side in one run (issue 17 item 3).

Two step kinds on the same base model (default Qwen2.5-Coder-0.5B-Instruct):
  gen  REINFORCE on reasoning-gym basic_arithmetic (recipes/rg-arithmetic.yaml: chat, greedy rollouts of up to
       128 tokens, λ = 0.1 KL to the base model), `--batch` questions per step;
  mcq  the exact multiple-choice objective on MMLU STEM, `--batch` questions per step.
"old" is the step as it was before issue 17 (factored W', micro-batches in batch order); "merged" merges W'
once per step (the rollouts are generated with it, the KL reference runs the original weights swapped in,
dL/dz from the weights' gradients) with micro-batches sorted by length; "new" today's defaults (factored,
sorted; the same work as "old" when one micro-batch holds the whole batch).
Each (kind, setting) runs in its own subprocess, one after the other; each prints the step's split into
generation, forward, backward, optimizer and other (`SVFRun.seconds`). The load average is printed at the
start, around every configuration and at the end: take timings only on a quiet machine.

    python benchmarks/train_step.py --steps 2 | tee results/train_step.txt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PHASES = ("generation", "forward", "backward", "optimizer", "other")
KINDS = {
    "gen": dict(task="rg", data="basic_arithmetic:64", objective="sample", temperature=0.0, samples_per_prompt=1,
                max_new_tokens=128, chat=True, kl=0.1, val_fraction=0.1),
    "mcq": dict(task="mmlu", subset="category=STEM", val_fraction=0.1),
}
SETTINGS = {
    "old": dict(mode="factored", sort_micro=False),  # the step before issue 17 (and today's default but for sorting)
    "merged": dict(mode="merged", sort_micro=True),  # W' merged once per step, rollouts generated with it
    "new": dict(mode="factored", sort_micro=True),  # today's defaults
}


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _one(kind: str, setting: str, model: str, batch: int, micro: int, steps: int, warmup: int) -> None:
    import torch

    from transformer_squared.tasks import get_task
    from transformer_squared.training.train import SVFRun, TrainConfig

    torch.manual_seed(0)
    cfg = TrainConfig(model=model, steps=steps + warmup, batch_size=batch, micro_batch_size=micro, seed=0,
                      **KINDS[kind], **SETTINGS[setting])
    run = SVFRun(cfg, tempfile.mkdtemp(prefix="t2bench."), get_task(cfg.task))
    run.setup()
    rows = []
    for step in range(steps + warmup):
        t0 = time.perf_counter()
        stats = run.train_step(step)
        total = time.perf_counter() - t0
        split = {p: run.seconds.get(p, 0.0) for p in PHASES}
        split["other"] += total - sum(split.values())
        rows.append({"seconds": total, "split": split, "loss": stats["loss"], "reward": stats["reward"],
                     "load1": os.getloadavg()[0]})
    print(json.dumps({"rows": rows[warmup:], "threads": torch.get_num_threads()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--batch", type=int, default=8, help="questions per step")
    ap.add_argument("--micro-new", type=int, default=8, help="micro-batch size of the new setting (old: --batch)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--kinds", default="mcq,gen")
    ap.add_argument("--settings", default="old,merged", help=f"of {', '.join(SETTINGS)}; the first is the baseline")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    settings = args.settings.split(",")
    micro = {"old": args.batch, "new": args.micro_new, "merged": args.micro_new}
    if args.one:
        kind, setting = args.one
        return _one(kind, setting, args.model, args.batch, micro[setting], args.steps, args.warmup)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} start, {_load()}; {os.cpu_count()} CPUs", flush=True)
    res = {}
    for kind in args.kinds.split(","):
        for setting in settings:
            cmd = [sys.executable, __file__, "--one", kind, setting, "--model", args.model, "--batch", str(args.batch),
                   "--micro-new", str(args.micro_new), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            before = _load()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"TQDM_DISABLE": "1"})
            if proc.returncode != 0:
                sys.exit(f"{kind}/{setting} failed:\n{proc.stderr[-3000:]}")
            res[kind, setting] = r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"# {kind}/{setting}: before {before}; after {_load()}; "
                  f"1-min load at each timed step {[round(x['load1'], 2) for x in r['rows']]}", flush=True)
    print(f"{args.model} float32 on CPU ({os.cpu_count()} cores, torch threads {r['threads']}); {args.batch} questions "
          f"per step; median of {args.steps} steps after {args.warmup} warm-up; micro-batch old {args.batch}, others {args.micro_new}")
    print(f"{'step':<9}{'setting':<9}{'s/step':>8}" + "".join(f"{p:>12}" for p in PHASES) + f"{'loss':>11}{'reward':>9}")
    for (kind, setting), r in res.items():
        med = statistics.median(x["seconds"] for x in r["rows"])
        split = "".join(f"{statistics.median(x['split'][p] for x in r['rows']):>12.2f}" for p in PHASES)
        print(f"{kind:<9}{setting:<9}{med:>8.2f}{split}{r['rows'][0]['loss']:>11.5f}{r['rows'][0]['reward']:>9.3f}")
    for kind in args.kinds.split(","):
        old, *others = (statistics.median(x["seconds"] for x in res[kind, s]["rows"]) for s in settings)
        for s, t in zip(settings[1:], others):
            print(f"{kind}: {settings[0]} {old:.2f} s/step, {s} {t:.2f} s/step, speedup {old / t:.2f}x")
    print(f"# end, {_load()}")


if __name__ == "__main__":
    main()
