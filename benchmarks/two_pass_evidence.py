"""Evidence on CPU: three SVF experts of distinct skills on Qwen2.5-Coder-0.5B-Instruct, then every
row (base, each expert, uniform, oracle, prompt, cls, fewshot) on held-out questions of every family.

Stages (each resumable; every command it runs is printed first and is an ordinary `t2` command):

    python benchmarks/two_pass_evidence.py train              # t2 train per family (runs/evidence/<label>)
    python benchmarks/two_pass_evidence.py eval base own      # rows: base, own (each family's expert), expert (every
                                                              #   expert on every family), uniform, oracle, prompt,
                                                              #   cls (needs `train-cls` first), fewshot
    python benchmarks/two_pass_evidence.py train-cls          # the classification expert (t2 train --task route)
    python benchmarks/two_pass_evidence.py table              # results/two_pass_evidence.{json,md}

Held-out questions: reasoning-gym families use their `test` split (disjoint by question hash from the
`train` split every expert trains on); MMLU uses the questions the MMLU expert's run held out
(`--exclude-run`). Per-question results: results/two_pass_evidence/<row>/<family>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from transformer_squared.atomic import write_json, write_text
from transformer_squared.evaluation.metrics import paired_stats, wilson

MODEL = "qwen2.5-coder-0.5b-instruct"
RUNS = Path("runs/evidence")  # expert runs (not committed)
OUT = Path("results/two_pass_evidence")  # per-question eval results (committed)
TABLE = Path("results/two_pass_evidence")  # the table: TABLE.json and TABLE.md
STRATEGIES = ("uniform", "oracle", "prompt", "cls", "fewshot")


@dataclass(frozen=True)
class Family:
    """One skill: its expert's training run and its held-out questions."""

    label: str  # expert label = the questions' category, which `oracle` routes by
    description: str  # one sentence shown to the `prompt` strategy
    task: str  # t2 task name
    data: str | None  # t2 --data for training (reasoning-gym: the `train` split of these generators)
    test_data: str | None  # t2 --data of the held-out questions
    n_test: int  # held-out questions evaluated
    train: tuple[str, ...]  # t2 train flags beyond the shared ones
    subset: str = ""  # --subset for training and evaluation
    max_new_tokens: int = 16  # generation budget (answers are short; generative families only)

    @property
    def protocol(self) -> str:
        return "letter" if self.task == "mmlu" else "generate"

    @property
    def run(self) -> Path:
        return RUNS / self.label

    @property
    def expert(self) -> Path:
        """The expert evaluated: the run's last step (no selection on validation at this budget)."""
        return self.run / "latest"


ARITH = "basic_arithmetic:{n}:min_terms=2,max_terms=2,max_digits=2,operators=+|-"
NEEDLE = "needle_haystack:{n}:max_num_statements=10"
FAMILY = "family_relationships:{n}:max_family_size=4"
GENERATE = ("--chat", "true", "--max-new-tokens", "16")
N_TEST = 30  # held-out questions per family (CPU budget: see docs/evidence.md, "Evidence on CPU")
# Sized for a shared 2-core CPU (a batch-16 step took ~400 s under load): 5 steps of 8 questions at lr 1e-2,
# validation (8 questions) only before the first and after the last step; the experts used are `latest`.
SHARED_TRAIN = ("--steps", "5", "--batch-size", "8", "--micro-batch-size", "8", "--lr", "1e-2", "--kl", "0",
                "--eval-every", "100", "--max-val", "8", "--eval-batch-size", "16", "--seed", "0")
# basic_arithmetic was trained first with a larger budget (batch 16, lr 5e-3), stopped at step 7 of 12 for time.
ARITH_TRAIN = ("--steps", "7", "--batch-size", "16", "--lr", "5e-3", "--eval-every", "4", "--max-val", "32")
FAMILIES = (
    Family("basic_arithmetic", "adds and subtracts integers, answering with a number", "rg-direct",
           ARITH.format(n=400), ARITH.format(n=N_TEST), N_TEST, GENERATE + ARITH_TRAIN),
    Family("needle_haystack", "finds who likes or dislikes something in a list of statements, answering with a name",
           "rg-direct", NEEDLE.format(n=400), NEEDLE.format(n=N_TEST), N_TEST, GENERATE),
    Family("family_relationships", "works out how two people in a family are related, answering with one word "
           "such as wife, son or mother-in-law", "rg-direct", FAMILY.format(n=400), FAMILY.format(n=N_TEST), N_TEST,
           GENERATE),
)
# The paper's CEM (population 32, up to 50 generations, 10 shots) is days of generation on this CPU; this is its budget here.
FEWSHOT = ("--shots", "5", "--population", "4", "--generations", "2")


def t2(*args: str, log: Path | None = None) -> None:
    """Run one `t2` command (this checkout's sources), printed first; a failure stops the script."""
    cmd = [sys.executable, "-m", "transformer_squared.cli", *args]
    print("$ t2 " + " ".join(shlex.quote(a) for a in args), flush=True)
    env = dict(os.environ, PYTHONPATH=str(Path("src").resolve()) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "a") if log else open(os.devnull, "w") as sink:
        done = subprocess.run(cmd, env=env, stderr=sink if log else None)
    if done.returncode:
        sys.exit(f"t2 {args[0]} failed with exit code {done.returncode}" + (f"; log: {log}" if log else ""))


def train(families: tuple[Family, ...]) -> None:
    for f in families:
        resume = ("--resume",) if (f.run / "latest").is_dir() else ()
        data = ("--data", f.data) if f.data else ()
        subset = ("--subset", f.subset) if f.subset else ()
        f.run.mkdir(parents=True, exist_ok=True)
        t2("train", "--model", MODEL, "--task", f.task, *data, *subset, "--out", str(f.run), *SHARED_TRAIN, *f.train,
           "--label", f.label, "--description", f.description, *resume, log=f.run / "train.log")


def train_cls(families: tuple[Family, ...]) -> None:
    run = RUNS / "route"
    resume = ("--resume",) if (run / "latest").is_dir() else ()
    experts = [str(f.expert) for f in families]
    t2("train", "--model", MODEL, "--task", "route", "--experts", *experts, "--out", str(run), *SHARED_TRAIN,
       "--chat", "true", *resume, log=RUNS / "route.log")


def eval_args(f: Family) -> list[str]:
    """The held-out questions of a family, as `t2 eval` flags."""
    args = ["--model", MODEL, "--task", f.task, "--chat", "--batch-size", "8", "--limit", str(f.n_test),
            "--protocol", f.protocol, "--max-new-tokens", str(f.max_new_tokens)]
    if f.task == "mmlu":
        return args + ["--split", "test", "--subset", f.subset, "--exclude-run", str(f.run), "--sample", "stratified"]
    return args + ["--split", "test", "--data", f.test_data]


def row_args(row: str, f: Family) -> list[list[str]]:
    """(row name, extra t2 eval flags) for one row on family `f`; `expert` expands to one row per expert.
    Strategies always route among every family's expert."""
    experts = [str(g.expert) for g in FAMILIES]
    if row == "base":
        return [["base"]]
    if row in ("expert", "own"):  # own: only the family's own expert (the single-expert table)
        return [[f"expert:{g.label}", "--expert", str(g.expert)] for g in FAMILIES if row == "expert" or g == f]
    extra = {"cls": ["--cls-expert", str(RUNS / "route" / "latest")], "fewshot": list(FEWSHOT)}.get(row, [])
    return [[row, "--experts", *experts, "--strategy", row, *extra]]


def evaluate(rows: list[str], families: tuple[Family, ...]) -> None:
    for row in rows:
        for f in families:
            for name, *extra in row_args(row, f):
                out = OUT / name.replace(":", "_") / f"{f.label}.json"
                if out.is_file():
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                t2("eval", *eval_args(f), *extra, "--out", str(out), log=out.with_suffix(".log"))


def _load(row: str, f: Family) -> dict | None:
    path = OUT / row.replace(":", "_") / f"{f.label}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _acc(correct: list[bool]) -> dict:
    k, n = sum(correct), len(correct)
    return {"n": n, "accuracy": k / n if n else None, "ci95": list(wilson(k, n)) if n else None}


def _train_answers(f: Family) -> Counter:
    """Gold answers of the family's training part (from the run's split.json and the task's data)."""
    from transformer_squared.tasks import get_task
    from transformer_squared.training import splits

    record = splits.load_split(f.run)
    task = get_task(f.task)
    pool = [e for s in record["splits"] for e in task.load(record.get("data"), s)]
    return Counter(e.answer for e in splits.restrict(pool, record, "train"))


def single_expert_rows(families: tuple[Family, ...]) -> list[dict]:
    """Per family: base vs its own expert on its held-out questions, with answers and constant baselines."""
    out = []
    for f in families:
        base, mine = _load("base", f), _load(f"expert:{f.label}", f)
        if base is None or mine is None:
            continue
        p = f.protocol
        by_id = {r["id"]: r for r in mine["predictions"]}
        held = [r for r in base["predictions"] if r["id"] in by_id]  # both answered (an expert leaves out what it saw)
        ids = [r["id"] for r in held]
        b = [bool(r["correct"][p]) for r in held]
        e = [bool(by_id[i]["correct"][p]) for i in ids]
        gold = Counter(r["answer"] for r in held)
        majority = _train_answers(f).most_common(1)[0][0]
        best = max(sorted(gold), key=lambda a: gold[a])
        out.append({
            "family": f.label, "protocol": p, "n": len(ids), "base": _acc(b), "expert": _acc(e),
            "difference": paired_stats(b, e),
            "train_majority_answer": majority, "train_majority_acc": gold[majority] / len(ids),
            "best_constant_answer": best, "best_constant_acc": gold[best] / len(ids),
            "answers_base": dict(Counter(r["prediction"][p] for r in held).most_common(6)),
            "answers_expert": dict(Counter(by_id[i]["prediction"][p] for i in ids).most_common(6)),
            "gold_answers": dict(gold.most_common(6)),
            "expert_step": json.loads((f.expert / "expert.json").read_text())["metrics"].get("step"),
        })
    return out


def _rows_present(families: tuple[Family, ...]) -> list[str]:
    names = ["base"] + [f"expert:{f.label}" for f in families] + list(STRATEGIES)
    return [r for r in names if all(_load(r, f) is not None for f in families)]


def _correct(row: str, f: Family) -> dict[str, bool]:
    return {r["id"]: bool(r["correct"][f.protocol]) for r in _load(row, f)["predictions"]}


def mixed_table(families: tuple[Family, ...]) -> list[dict]:
    """Every complete row over the mixed held-out set: accuracy per family and overall, routing accuracy,
    and the paired difference to the base model on the questions both answered (fewshot leaves out its shots)."""
    out = []
    base = {(f.label, i): ok for f in families for i, ok in _correct("base", f).items()}
    for row in _rows_present(families):
        per, mine, routed = {}, {}, []
        for f in families:
            preds = _load(row, f)["predictions"]
            ok = [bool(r["correct"][f.protocol]) for r in preds]
            decisions = [(r.get("routing") or {}).get("decision") for r in preds]
            hits = [d == f.label for d in decisions if d not in (None, "mixture")]  # a mixture routes nowhere
            per[f.label] = _acc(ok) | {"routing": _acc(hits) if hits else None,
                                       "decisions": dict(Counter(d for d in decisions if d is not None))}
            mine |= {(f.label, i): c for i, c in _correct(row, f).items()}
            routed += hits
        common = [k for k in base if k in mine]
        diff = paired_stats([base[k] for k in common], [mine[k] for k in common])
        out.append({"row": row, "families": per, "overall": _acc(list(mine.values())), "vs_base": diff,
                    "routing": _acc(routed) if routed else None})
    return out


def _pct(a: dict | None) -> str:
    if not a or a["accuracy"] is None:
        return "–"
    lo, hi = a["ci95"]
    return f"{100 * a['accuracy']:.1f} [{100 * lo:.0f}, {100 * hi:.0f}]"


def _answers(counts: dict, width: int = 14) -> str:
    return ", ".join(f"{(k or '(none)')[:width]!s}×{v}" for k, v in counts.items())


def markdown(single: list[dict], mixed: list[dict], families: tuple[Family, ...]) -> str:
    lines = [f"# Evidence on CPU: SVF experts and two-pass adaptation on `{MODEL}`", "",
             "Produced by `python benchmarks/two_pass_evidence.py table` from the files in "
             "`results/two_pass_evidence/`. Accuracy in %, 95 % Wilson intervals in brackets; differences with "
             "paired-bootstrap 95 % CIs and McNemar's exact p.", "", "## Single experts on their own held-out questions", "",
             "| family | protocol | n | base | expert | difference [95 % CI], p | training-majority answer: accuracy | "
             "best constant answer: accuracy | answers (base) | answers (expert) |", "| --- | --- | ---: | --- | --- | --- | --- | --- | --- | --- |"]
    for s in single:
        d = s["difference"]
        lines.append(f"| {s['family']} | {s['protocol']} | {s['n']} | {_pct(s['base'])} | {_pct(s['expert'])} | "
                     f"{100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}], p = {d['mcnemar_p']:.2g} | "
                     f"\"{s['train_majority_answer']!s:.14}\": {100 * s['train_majority_acc']:.1f} | "
                     f"\"{s['best_constant_answer']!s:.14}\": {100 * s['best_constant_acc']:.1f} | "
                     f"{_answers(s['answers_base'])} | {_answers(s['answers_expert'])} |")
    if mixed:
        head = " | ".join(f"{f.label} (n = {mixed[0]['families'][f.label]['n']})" for f in families)
        lines += ["", "## Every row on the mixed held-out set", "",
                  f"| row | {head} | overall (n = {mixed[0]['overall']['n']}) | vs base [95 % CI] | routing accuracy |",
                  "| --- |" + " --- |" * (len(families) + 3)]
        for m in mixed:
            d = m["vs_base"]
            vs = f"{100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]" if d else "–"
            cells = " | ".join(_pct(m["families"][f.label]) for f in families)
            lines.append(f"| {m['row']} | {cells} | {_pct(m['overall'])} | {vs} | {_pct(m['routing'])} |")
        routed = [m for m in mixed if m["routing"]]
        lines += ["", "## Pass-1 decisions (true family → chosen expert × count; base = no expert)", "",
                  "| row | " + " | ".join(f.label for f in families) + " |", "| --- |" + " --- |" * len(families)]
        lines += [f"| {m['row']} | " + " | ".join(_answers(m["families"][f.label]["decisions"], 24) for f in families) + " |"
                  for m in routed]
    return "\n".join(lines) + "\n"


def table(families: tuple[Family, ...]) -> None:
    single, mixed = single_expert_rows(families), mixed_table(families) if _load("base", families[0]) else []
    summary = {"model": MODEL, "families": [f.__dict__ | {"run": str(f.run)} for f in families],
               "shared_train_flags": list(SHARED_TRAIN), "single_experts": single, "rows": mixed}
    text = markdown(single, mixed, families)
    write_json(summary, TABLE.with_suffix(".json"))
    write_text(text, TABLE.with_suffix(".md"))
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["train", "train-cls", "eval", "table"])
    ap.add_argument("rows", nargs="*", default=["base", "expert", *STRATEGIES], help="eval: rows to run")
    ap.add_argument("--family", action="append", help="only these families (labels); default all")
    args = ap.parse_args()
    families = tuple(f for f in FAMILIES if not args.family or f.label in args.family)
    if args.stage == "train":
        train(families)
    elif args.stage == "train-cls":
        train_cls(FAMILIES)
    elif args.stage == "eval":
        evaluate(args.rows, families)
    else:
        table(FAMILIES)


if __name__ == "__main__":
    main()
