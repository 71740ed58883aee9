"""Evidence on CPU: three SVF experts of distinct skills on Qwen2.5-Coder-0.5B-Instruct, a classification
expert that routes between them, then every row (base, each expert, uniform, oracle, prompt, cls, fewshot) on
held-out questions of every family. `bash benchmarks/two_pass_evidence.sh` runs every stage in order.

Stages (each resumable; every command it runs is printed first and is an ordinary `t2` command):

    python benchmarks/two_pass_evidence.py train              # t2 train per family (runs/evidence/<label>)
    python benchmarks/two_pass_evidence.py train-cls          # the classification expert (t2 train --task route)
    python benchmarks/two_pass_evidence.py eval base own      # rows: base, own (each family's expert), expert (every
                                                              #   expert on every family), uniform, oracle, prompt,
                                                              #   cls (needs `train-cls` first), fewshot
    python benchmarks/two_pass_evidence.py table              # results/two_pass_evidence.{json,md}, _curves.png

Held-out questions: the reasoning-gym `test` split (disjoint by question hash from the `train` split every
expert trains on): N_SINGLE of basic_arithmetic for base vs its expert, and the first N_MIXED of each family
for the mixed set every strategy row is scored on. Per-question results: results/two_pass_evidence/<row>/<family>.json;
training curves and diagnostics (reward mean and SD per step, ‖z − z₀‖, KL, validation) from each run's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
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
    max_new_tokens: int = 12  # generation budget, as in training (answers are short; generative families only)
    also_valid: bool = False  # base and own rows: also reasoning-gym's `valid` split (disjoint from train and test)
    continues: str = ""  # a sweep run that starts as a copy of this run's folder (then resumes to its own --steps)
    mixed: bool = True  # may be chosen for the mixed set (False: a run continued after the mixed set was scored)
    variant: str = ""  # another training run of the same family (the sweep): its run folder and row get this suffix

    @property
    def protocol(self) -> str:
        return "letter" if self.task == "mmlu" else "generate"

    @property
    def name(self) -> str:
        """The run's name: the label, or label-variant for a sweep run."""
        return f"{self.label}-{self.variant}" if self.variant else self.label

    @property
    def run(self) -> Path:
        return RUNS / self.name

    @property
    def expert(self) -> Path:
        """The expert evaluated: the run's best/ (the step with the highest validation accuracy)."""
        return self.run / "best"


ARITH = "basic_arithmetic:{n}:min_terms=2,max_terms=2,max_digits=2,operators=+|-"
NEEDLE = "needle_haystack:{n}:max_num_statements=10"
FAMILY = "family_relationships:{n}:max_family_size=4"
GENERATE = ("--chat", "true", "--max-new-tokens", "12")
N_MIXED = 50  # held-out questions per family in the mixed set every strategy row is scored on (150 in all)
N_SINGLE = 100  # held-out questions of basic_arithmetic per split, test and valid (200 in all), for expert vs base
# (reasoning-gym draws few distinct 2-term questions per split: 100 is what it gives for sure within its rounds)
# Budget on the quiet 2-core CPU (about 20 s a step at batch 8; docs/evidence.md, "Evidence on CPU"): the
# basic_arithmetic expert is the serious attempt, validated on 48 questions every 8 steps, the expert used is best/
# (chosen on validation). First run: the paper's REINFORCE (R = ±1, greedy rollouts) at lr 1e-2, planned for 40
# steps, stopped by hand after step 17 when validation had fallen at steps 8 and 16 (the 16 steps here reproduce
# it); second run: SWEEP below. The other two experts exist so that there is something to route to (one step
# each: their best/ is the initial z), and the classification expert routes between all three.
SHARED_TRAIN = ("--batch-size", "8", "--micro-batch-size", "8", "--kl", "0", "--eval-batch-size", "8", "--seed", "0")
ARITH_TRAIN = ("--steps", "16", "--lr", "1e-2", "--eval-every", "8", "--max-val", "48")
SMALL_TRAIN = ("--steps", "1", "--lr", "1e-2", "--eval-every", "1", "--max-val", "8")
CLS_TRAIN = ("--steps", "12", "--lr", "1e-2", "--eval-every", "4", "--max-val", "48")
FAMILIES = (
    Family("basic_arithmetic", "adds and subtracts integers, answering with a number", "rg-direct",
           ARITH.format(n=400), ARITH.format(n=N_SINGLE), N_SINGLE, GENERATE + ARITH_TRAIN, also_valid=True),
    Family("needle_haystack", "finds who likes or dislikes something in a list of statements, answering with a name",
           "rg-direct", NEEDLE.format(n=400), NEEDLE.format(n=N_MIXED), N_MIXED, GENERATE + SMALL_TRAIN),
    Family("family_relationships", "works out how two people in a family are related, answering with one word "
           "such as wife, son or mother-in-law", "rg-direct", FAMILY.format(n=400), FAMILY.format(n=N_MIXED), N_MIXED,
           GENERATE + SMALL_TRAIN),
)
# Second attempt at the arithmetic expert, chosen on validation against the first: REINFORCE with a group
# baseline (4 sampled answers per question at temperature 0.7, advantage = reward − the question's mean reward),
# 4 questions per step, lr 5e-3.
GROUP_TRAIN = ("--steps", "24", "--batch-size", "4", "--samples-per-prompt", "4", "--temperature", "0.7",
               "--baseline", "group", "--micro-batch-size", "16", "--eval-batch-size", "16", "--lr", "5e-3",
               "--eval-every", "8", "--max-val", "48")
SWEEP = (Family("basic_arithmetic", FAMILIES[0].description, "rg-direct", ARITH.format(n=400), ARITH.format(n=N_SINGLE),
                N_SINGLE, GENERATE + GROUP_TRAIN, also_valid=True, variant="group"),
         # The group run continued from its step 24 to 48 (validation was still rising), after the mixed set was
         # scored with the step-24 expert: in the single-expert table only.
         Family("basic_arithmetic", FAMILIES[0].description, "rg-direct", ARITH.format(n=400), ARITH.format(n=N_SINGLE),
                N_SINGLE, GENERATE + GROUP_TRAIN[2:] + ("--steps", "48"), also_valid=True,
                continues="basic_arithmetic-group", mixed=False, variant="group-long"))
# The paper's CEM (population 32, up to 50 generations, 10 shots) is days of generation on this CPU; this is its budget here.
FEWSHOT = ("--shots", "5", "--population", "4", "--generations", "2")
# Pass-1 settings of the routing rows: every cyclic order is routed too, to measure position bias.
ROUTING = {"prompt": ("--prompt-position-bias",), "cls": ("--cls-position-bias",)}


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
        if f.continues and not f.run.exists():
            shutil.copytree(RUNS / f.continues, f.run)
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
       *CLS_TRAIN, "--chat", "true", *resume, log=RUNS / "route.log")


def eval_args(f: Family, n: int | None = None, split: str = "test") -> list[str]:
    """The first `n` held-out questions of a family (default: all `n_test`) in `split`, as `t2 eval` flags."""
    args = ["--model", MODEL, "--task", f.task, "--chat", "--batch-size", "8", "--limit", str(n or f.n_test),
            "--protocol", f.protocol, "--max-new-tokens", str(f.max_new_tokens)]
    if f.task == "mmlu":
        return args + ["--split", "test", "--subset", f.subset, "--exclude-run", str(f.run), "--sample", "stratified"]
    return args + ["--split", split, "--data", f.test_data]


def _expert_metrics(f: Family) -> dict:
    """The metrics block of a run's best/ expert.json (step, best_val, ...)."""
    return json.loads((f.expert / "expert.json").read_text(encoding="utf-8"))["metrics"]


def chosen(f: Family) -> Family:
    """The run of f's family that validation chose: the highest best validation accuracy among the family's runs
    (FAMILIES and SWEEP) that have a best/ expert; ties go to the first listed."""
    runs = [g for g in FAMILIES + SWEEP if g.label == f.label and g.mixed and (g.expert / "expert.json").is_file()]
    return max(runs, key=lambda g: _expert_metrics(g).get("best_val") or 0.0) if runs else f


def row_args(row: str, f: Family) -> list[list[str]]:
    """(row name, extra t2 eval flags) for one row on family `f`; `expert` expands to one row per expert.
    `own` is every run's own expert on its family (the single-expert table); `expert` and the strategies use
    each family's run chosen on validation (`chosen`)."""
    experts = [str(chosen(g).expert) for g in FAMILIES]
    if row == "base":
        return [["base"]]
    if row == "own":
        return [[f"expert:{f.name}", "--expert", str(f.expert)]]
    if row == "expert":
        if f.variant:
            return []
        return [[f"expert:{chosen(g).name}", "--expert", str(chosen(g).expert)] for g in FAMILIES]
    extra = {"cls": ["--cls-expert", str(RUNS / "route" / "best"), *ROUTING["cls"]], "fewshot": list(FEWSHOT),
             "prompt": list(ROUTING["prompt"])}.get(row, [])
    return [[row, "--experts", *experts, "--strategy", row, *extra]]


def evaluate(rows: list[str], families: tuple[Family, ...]) -> None:
    for row in rows:
        for f in families:
            for name, *extra in row_args(row, f):
                single = row in ("base", "own")
                for split in ("test", "valid") if single and f.also_valid else ("test",):
                    out = OUT / name.replace(":", "_") / f"{f.label}{'' if split == 'test' else '@' + split}.json"
                    if out.is_file():
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    n = f.n_test if single else min(N_MIXED, f.n_test)  # strategies: the mixed set
                    t2("eval", *eval_args(f, n, split), *extra, "--out", str(out), log=out.with_suffix(".log"))


def _load(row: str, f: Family) -> dict | None:
    """A row's results on a family: its test-split file, with the predictions of its valid-split file appended."""
    path = OUT / row.replace(":", "_") / f"{f.label}.json"
    if not path.is_file():
        return None
    out = json.loads(path.read_text(encoding="utf-8"))
    extra = path.with_name(f"{f.label}@valid.json")
    if extra.is_file():
        out["predictions"] = out["predictions"] + json.loads(extra.read_text(encoding="utf-8"))["predictions"]
    return out


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
        base, mine = _load("base", f), _load(f"expert:{f.name}", f)
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
            "family": f.label, "run": f.name, "protocol": p, "n": len(ids), "base": _acc(b), "expert": _acc(e),
            "difference": paired_stats(b, e),
            "train_majority_answer": majority, "train_majority_acc": gold[majority] / len(ids),
            "best_constant_answer": best, "best_constant_acc": gold[best] / len(ids),
            "answers_base": dict(Counter(r["prediction"][p] for r in held).most_common(6)),
            "answers_expert": dict(Counter(by_id[i]["prediction"][p] for i in ids).most_common(6)),
            "gold_answers": dict(gold.most_common(6)),
            "expert_step": _expert_metrics(f).get("step"),
            "best_val": _expert_metrics(f).get("best_val"),
        })
    return out


def _rows_present(families: tuple[Family, ...]) -> list[str]:
    names = ["base"] + [f"expert:{chosen(f).name}" for f in families] + list(STRATEGIES)
    return [r for r in names if all(_load(r, f) is not None for f in families)]


def _correct(row: str, f: Family) -> dict[str, bool]:
    return {r["id"]: bool(r["correct"][f.protocol]) for r in _load(row, f)["predictions"]}


def mixed_ids(families: tuple[Family, ...]) -> dict[str, set[str]]:
    """Per family, the ids of the mixed held-out set: those every complete row answered (base and a family's own
    expert answer more of basic_arithmetic; the strategy rows answer its first N_MIXED)."""
    rows = _rows_present(families)
    return {f.label: set.intersection(*(set(_correct(r, f)) for r in rows)) for f in families}


def _position_bias(row: str, families: tuple[Family, ...]) -> dict | None:
    """The results' position-bias blocks of one row, pooled over the families (weighted by their n)."""
    blocks = [((_load(row, f) or {}).get("routing") or {}).get("position_bias") for f in families]
    blocks = [b for b in blocks if b and b.get("n")]
    if not blocks:
        return None
    n = sum(b["n"] for b in blocks)
    return {"n": n, **{k: sum(b[k] * b["n"] for b in blocks) / n for k in ("follows_expert", "follows_position")
                       if all(b.get(k) is not None for b in blocks)}}


def mixed_table(families: tuple[Family, ...]) -> list[dict]:
    """Every complete row over the mixed held-out set: accuracy per family and overall, routing accuracy,
    and the paired difference to the base model on the questions both answered (fewshot leaves out its shots)."""
    out = []
    keep = mixed_ids(families)
    base = {(f.label, i): ok for f in families for i, ok in _correct("base", f).items() if i in keep[f.label]}
    for row in _rows_present(families):
        per, mine, routed = {}, {}, []
        for f in families:
            preds = [r for r in _load(row, f)["predictions"] if r["id"] in keep[f.label]]
            ok = [bool(r["correct"][f.protocol]) for r in preds]
            decisions = [(r.get("routing") or {}).get("decision") for r in preds]
            hits = [d == f.label for d in decisions if d not in (None, "mixture")]  # a mixture routes nowhere
            per[f.label] = _acc(ok) | {"routing": _acc(hits) if hits else None,
                                       "decisions": dict(Counter(d for d in decisions if d is not None))}
            mine |= {(f.label, r["id"]): c for r, c in zip(preds, ok)}
            routed += hits
        common = [k for k in base if k in mine]
        diff = paired_stats([base[k] for k in common], [mine[k] for k in common])
        out.append({"row": row, "families": per, "overall": _acc(list(mine.values())), "vs_base": diff,
                    "routing": _acc(routed) if routed else None, "position_bias": _position_bias(row, families)})
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
             "| run (expert: step, validation accuracy) | protocol | n | base | expert | difference [95 % CI], p | training-majority answer: accuracy | "
             "best constant answer: accuracy | answers (base) | answers (expert) |", "| --- | --- | ---: | --- | --- | --- | --- | --- | --- | --- |"]
    for s in single:
        d = s["difference"]
        val = f"{100 * s['best_val']:.1f}" if s.get("best_val") is not None else "–"
        lines.append(f"| {s.get('run', s['family'])} (step {s['expert_step']}, {val}) | {s['protocol']} | {s['n']} | {_pct(s['base'])} | {_pct(s['expert'])} | "
                     f"{100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}], p = {d['mcnemar_p']:.2g} | "
                     f"\"{s['train_majority_answer']!s:.14}\": {100 * s['train_majority_acc']:.1f} | "
                     f"\"{s['best_constant_answer']!s:.14}\": {100 * s['best_constant_acc']:.1f} | "
                     f"{_answers(s['answers_base'])} | {_answers(s['answers_expert'])} |")
    if mixed:
        head = " | ".join(f"{f.label} (n = {mixed[0]['families'][f.label]['n']})" for f in families)
        lines += ["", "## Every row on the mixed held-out set", "",
                  f"| row | {head} | overall (n = {mixed[0]['overall']['n']}) | vs base [95 % CI], McNemar p | "
                  "routing accuracy | decision follows the expert / the position (every cyclic order) |",
                  "| --- |" + " --- |" * (len(families) + 4)]
        for m in mixed:
            d = m["vs_base"]
            vs = (f"{100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}], "
                  f"p = {d['mcnemar_p']:.2g}") if d else "–"
            cells = " | ".join(_pct(m["families"][f.label]) for f in families)
            pb = m.get("position_bias") or {}
            bias = (f"{100 * pb['follows_expert']:.1f} % / {100 * pb['follows_position']:.1f} % (n = {pb['n']})"
                    if "follows_expert" in pb else "–")
            lines.append(f"| {m['row']} | {cells} | {_pct(m['overall'])} | {vs} | {_pct(m['routing'])} | {bias} |")
        routed = [m for m in mixed if m["routing"]]
        lines += ["", "## Pass-1 decisions (true family → chosen expert × count; base = no expert)", "",
                  "| row | " + " | ".join(f.label for f in families) + " |", "| --- |" + " --- |" * len(families)]
        lines += [f"| {m['row']} | " + " | ".join(_answers(m["families"][f.label]["decisions"], 24) for f in families) + " |"
                  for m in routed]
    return "\n".join(lines) + "\n"


def _metrics(run: Path) -> tuple[list[dict], list[dict]]:
    """(training-step rows, validation rows) of a run's metrics.jsonl ([] for a run not trained yet)."""
    path = run / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()] if path.is_file() else []
    return [r for r in rows if "loss" in r], [r for r in rows if "val_acc" in r]


def diagnostics(runs: dict[str, Path]) -> list[dict]:
    """Per training run: steps, reward (mean over the first and the last quarter of the steps), the share of steps
    whose rewards were all equal (reward SD 0), ‖z − z₀‖ and KL at the last step, the validation curve."""
    out = []
    for name, run in runs.items():
        steps, vals = _metrics(run)
        if not steps:
            continue
        q = max(1, len(steps) // 4)
        mean = lambda rows, k: sum(r.get(k, 0.0) for r in rows) / len(rows)  # noqa: E731
        out.append({"run": name, "steps": len(steps), "reward_first": mean(steps[:q], "reward"),
                    "reward_last": mean(steps[-q:], "reward"),
                    "flat_steps": sum(1 for r in steps if r.get("reward_sd", 1.0) == 0.0) / len(steps),
                    "zero_advantage": (mean(steps, "zero_advantage") if all("zero_advantage" in r for r in steps)
                                       else None),
                    "z_dist": steps[-1].get("z_dist"), "kl": steps[-1].get("kl"),
                    "seconds_per_step": mean(steps, "seconds"),
                    "val": [(v["step"], v["val_acc"], v["n_val"]) for v in vals]})
    return out


def curves(runs: dict[str, Path], out: Path) -> Path | None:
    """One PNG: per run, reward mean ± SD per step, ‖z − z₀‖, KL and the validation accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {name: _metrics(run) for name, run in runs.items()}
    data = {k: v for k, v in data.items() if v[0]}
    if not data:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for name, (steps, vals) in data.items():
        x = [r["step"] for r in steps]
        m = [r["reward"] for r in steps]
        sd = [r.get("reward_sd", 0.0) for r in steps]
        line, = axes[0].plot(x, m, label=name)
        axes[0].fill_between(x, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], alpha=0.15,
                             color=line.get_color())
        axes[1].plot(x, [r.get("z_dist", float("nan")) for r in steps], label=name)
        axes[2].plot(x, [r.get("kl", 0.0) for r in steps], label=name)
        axes[3].plot([v["step"] for v in vals], [v["val_acc"] for v in vals], marker="o", label=name)
    for ax, title in zip(axes, ("batch reward (mean ± SD)", "‖z − z₀‖₂", "KL to base (answer tokens)",
                                "validation accuracy")):
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".tmp-" + out.name)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def _runs(families: tuple[Family, ...]) -> dict[str, Path]:
    return {f.name: f.run for f in families} | {"route (cls)": RUNS / "route"}


def diagnostics_markdown(diag: list[dict], png: Path | None) -> str:
    if not diag:
        return ""
    lines = ["", "## Training diagnostics", "",
             "| run | steps | s/step | reward, first quarter → last quarter | steps with all rewards equal | "
             "items with zero advantage (group baseline) | ‖z − z₀‖ at the end | KL at the end | "
             "validation accuracy (step: acc, n) |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for d in diag:
        zero = "–" if d.get("zero_advantage") is None else f"{100 * d['zero_advantage']:.0f} %"
        val = ", ".join(f"{s}: {100 * a:.1f}" for s, a, _ in d["val"]) + (f" (n = {d['val'][0][2]})" if d["val"] else "")
        lines.append(f"| {d['run']} | {d['steps']} | {d['seconds_per_step']:.1f} | {d['reward_first']:+.3f} → "
                     f"{d['reward_last']:+.3f} | {100 * d['flat_steps']:.0f} % | "
                     f"{zero} | "
                     f"{d['z_dist'] or 0:.3f} | "
                     f"{d['kl'] or 0:.2e} | {val} |")
    if png:
        lines += ["", f"![training curves]({png.name})"]
    return "\n".join(lines) + "\n"


def table(families: tuple[Family, ...], sweep: tuple[Family, ...] = ()) -> None:
    """The tables from whatever results exist: single experts (the families' and the sweep's runs), the mixed set
    (the families), training diagnostics and curves (every run)."""
    single, mixed = single_expert_rows(families + sweep), mixed_table(families) if _load("base", families[0]) else []
    summary = {"model": MODEL, "families": [f.__dict__ | {"run": str(f.run)} for f in families + sweep],
               "shared_train_flags": list(SHARED_TRAIN), "single_experts": single, "rows": mixed}
    diag = diagnostics(_runs(families + sweep))
    summary["training"] = diag
    png = curves(_runs(families + sweep), TABLE.with_name(TABLE.name + "_curves.png"))
    text = markdown(single, mixed, families) + diagnostics_markdown(diag, png)
    write_json(summary, TABLE.with_suffix(".json"))
    write_text(text, TABLE.with_suffix(".md"))
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["train", "train-cls", "eval", "table"])
    ap.add_argument("rows", nargs="*", default=["base", "expert", *STRATEGIES], help="eval: rows to run")
    ap.add_argument("--family", action="append", help="only these families (labels); default all")
    ap.add_argument("--sweep", action="store_true", help="train / eval own: the sweep's other runs (SWEEP) instead")
    args = ap.parse_args()
    families = tuple(f for f in (SWEEP if args.sweep else FAMILIES) if not args.family or f.label in args.family)
    if args.stage == "train":
        train(families)
    elif args.stage == "train-cls":
        train_cls(FAMILIES)
    elif args.stage == "eval":
        evaluate(args.rows, families)
    else:
        table(FAMILIES, SWEEP)


if __name__ == "__main__":
    main()
