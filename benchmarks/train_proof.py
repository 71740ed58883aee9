"""Base model vs trained expert on each run's held-out questions, with a paired 95 % CI of the difference.

For every run folder: the `holdout` part of its split.json (never used for training nor for picking
best/), scored with the base weights and with `best/` merged. MCQ: both protocols from one forward
pass, `letter` (argmax over the option letters, what the trainer optimises) and `generate` (the
greedy next token read as the letter, VMLU's official protocol). With each: the distribution of
answered letters, the gold letters, and the accuracy of always answering the training part's majority
letter and the best constant letter (an expert on a model at chance may only learn one letter). Statistics: paired bootstrap
(10,000 resamples of questions, seeded) and McNemar's exact test on the discordant pairs.

    python benchmarks/train_proof.py runs/proof/* --out results/train_proof.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

import torch

from transformer_squared.models import engine
from transformer_squared.evaluation import metrics
from transformer_squared.training import splits
from transformer_squared.atomic import write_json
from transformer_squared.experts.expert import Expert, attach
from transformer_squared.models.load import load_model
from transformer_squared.tasks import get_task


def paired_stats(base: list[bool], expert: list[bool], n_boot: int = 10_000, seed: int = 0) -> dict:
    """Accuracies, difference, paired-bootstrap 95 % CI and McNemar exact p-value (keys as first published)."""
    s = metrics.paired_stats(base, expert, n_boot, seed)
    return s | {"acc_expert": s.pop("acc_other"), "expert_only_right": s.pop("other_only_right")}


def score(model, tok, task, examples, chat: bool) -> dict[str, list[bool]]:
    """Per protocol: whether each answer is right, and (under "<protocol>_answers") the letters given."""
    prompts = task.format(examples, tok, chat=chat)
    greedy, logp = engine.score_letters(model, tok, prompts, [e.letters for e in examples], batch_size=16)
    answers = {"letter": [e.letters[int(lp.argmax())] for e, lp in zip(examples, logp)],
               "generate": task.parse(examples, greedy)}
    out = {p: task.score(examples, a) for p, a in answers.items()}
    return out | {f"{p}_answers": a for p, a in answers.items()}


def letter_counts(letters: list[str]) -> dict[str, int]:
    """How often each answer was given ("" = no letter read), most frequent first."""
    return dict(Counter(letters).most_common())


def constant_baselines(train: list, held: list) -> dict:
    """Accuracy on `held` of always answering the training part's majority letter, and of the best constant letter."""
    gold = Counter(e.answer for e in held)
    majority = Counter(e.answer for e in train).most_common(1)[0][0]
    best = max(sorted(gold), key=lambda k: gold[k])
    return {"gold_letters": letter_counts([e.answer for e in held]),
            "train_majority_letter": majority, "train_majority_acc": gold[majority] / len(held),
            "best_constant_letter": best, "best_constant_acc": gold[best] / len(held)}


def evaluate_run(run: Path, limit: int, which: str = "best") -> dict:
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
    record = splits.load_split(run)
    task = get_task(cfg["task"])
    pool = [e for s in record["splits"] for e in task.load(cfg["data"], s)]
    held = splits.restrict(pool, record, "holdout")
    held = random.Random(0).sample(held, min(limit, len(held))) if limit else held  # every subject alike
    train_ids = set(record["ids"]["train"]) | set(record["ids"]["val"])
    assert not train_ids & {e.id for e in held}, "holdout overlaps training or validation"
    model, tok = load_model(cfg["model"], device="cpu")
    expert = Expert.load(run / which)
    svf = attach(model, [expert])
    base = score(model, tok, task, held, cfg["chat"])
    with torch.no_grad(), svf.merged(expert.z()):
        adapted = score(model, tok, task, held, cfg["chat"])
    train = splits.restrict(pool, record, "train")
    answers = {f"{who}_{p}_letters": letter_counts(r[f"{p}_answers"]) for who, r in (("base", base), ("expert", adapted))
               for p in ("letter", "generate")}
    return {"run": str(run), "expert": which, **constant_baselines(train, held), **answers, "expert_step": expert.meta.metrics.get("step"), "task": cfg["task"], "subset": cfg["subset"], "model": cfg["model"],
            "best_step": expert.meta.metrics.get("best_step"), "best_val": expert.meta.metrics.get("best_val"),
            "steps_done": expert.meta.metrics.get("steps_done"), "n_train": record["counts"]["train"],
            "n_val_used": min(record["counts"]["val"], cfg["max_val"] or record["counts"]["val"]),
            "config": cfg, **{p: paired_stats(base[p], adapted[p]) for p in ("letter", "generate")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--limit", type=int, default=0, help="at most N holdout questions per run (0: all)")
    ap.add_argument("--which", default="best", help="best or latest (the last step's expert)")
    ap.add_argument("--out", type=Path, default=Path("results/train_proof.json"))
    args = ap.parse_args()
    results = []
    for run in args.runs:
        if not (run / args.which).is_dir():
            print(f"skip {run}: no {args.which}/", file=sys.stderr)
            continue
        results.append(evaluate_run(run, args.limit, args.which))
        r = results[-1]
        for p in ("letter", "generate"):
            s = r[p]
            print(f"{run.name:<24}{p:<9} n={s['n']:<4} base {s['acc_base']:.3f} expert {s['acc_expert']:.3f} "
                  f"diff {s['diff']:+.3f} CI95 [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}] McNemar p={s['mcnemar_p']:.3g}")
            print(f"{'':<33}letters base {r[f'base_{p}_letters']} expert {r[f'expert_{p}_letters']}")
        print(f"{'':<24}gold {r['gold_letters']}; training majority '{r['train_majority_letter']}' "
              f"{r['train_majority_acc']:.3f}, best constant '{r['best_constant_letter']}' {r['best_constant_acc']:.3f}")
        write_json(results, args.out)


if __name__ == "__main__":
    main()
