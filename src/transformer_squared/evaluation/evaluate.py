"""Run a task with the base model, one expert, a fixed mixture, or a two-pass strategy (a mixture per
question chosen in pass 1, paper §3.2); metrics, results JSON, submission file.

The task's kind (tasks/kinds.py) reads the answers: multiple choice gets both protocols from one
forward pass per batch, `generate` (the greedy next token read as the letter, VMLU's official
protocol) and `letter` (argmax over the valid letters); generative and code tasks generate → parse;
task.score scores them. The kind also writes the submission file. With a strategy, pass 1 routes every
pending question first, then pass 2 runs them grouped by mixture (each merged once) or, with
`mixed_batches`, factored with one mixture per row; per question the results record the routing
decision (and α) and the seconds of each pass (its batch's time divided by the batch's size).
An interrupted run resumes from `<out>.partial.json`, rewritten atomically every `save_every` batches.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import Tensor

from .. import __version__, distributed
from . import seen
from ..adapt import Pipeline, Strategy, StrategyConfig, pass2_order, request_of, strategy_runs
from ..experts.adapted import AdaptedModel, load_experts
from ..atomic import check_file_target, write_json, write_text
from ..baselines.adapter import CONFIG_FILE as ADAPTER_CONFIG, DISPLAY, META_FILE as ADAPTER_META, adapter_identity
from ..errors import ConfigError, DataError
from ..models.engine import check_context
from ..experts.expert import META, Expert, check_together, read_seen
from .metrics import CATEGORY_MEAN_CI, accuracy_metrics, routing_metrics
from ..models.load import model_id
from ..tasks import Example, Task, get_task
from ..tasks.kinds import ModelCalls
from ..training import splits

PROTOCOLS = ("generate", "letter")  # every protocol of any kind; a task's kind says which it has
FORMAT_VERSION = 1
Progress = Callable[[int], None]


@dataclass
class EvalConfig:
    """What to evaluate and how."""

    task: str = "vmlu"  # registry name of the task
    data: str | None = None  # local folder/file or Hugging Face dataset id (None: the task's default)
    split: str = "valid"  # split to evaluate
    protocol: str = "both"  # generate, letter or both (all the task's kind has); letter: multiple choice only
    chat: bool = False  # wrap prompts in the model's chat template (VMLU's official protocol: no)
    limit: int | None = None  # evaluate at most this many questions (None: all)
    sample: str = "first"  # how `limit` picks: "first" N, or "stratified" (seeded, proportional per subject)
    seed: int = 0  # seed of the stratified sample and of sampling
    batch_size: int = 8  # prompts per forward pass (halved automatically on out-of-memory)
    max_new_tokens: int = 512  # generation budget of generative tasks, in tokens
    save_every: int = 8  # batches between saves of the partial results (resume)
    submission_protocol: str = ""  # predictions written to the submission file ('': letter for MCQ, else generate)
    subset: str = ""  # filter before `limit`: "category=STEM", "subject=28,29" ('' keeps all)
    exclude_run: str | None = None  # a training run folder (or its split.json): skip its train and val ids
    include_seen: bool = False  # also score questions the experts in use were trained or selected on
    unsafe_exec: bool = False  # code tasks: where bubblewrap cannot run, run generated code unconfined
    mixed_batches: bool = False  # pass 2 with per-question mixtures: factored mixed batches instead of merged groups
    split_file: str | None = None  # a split.json (or run folder): evaluate its part `part` instead of `split`
    part: str = "holdout"  # with split_file: train, val or holdout
    label: str = ""  # the system's row name in reports ('': base, the adapter's method, the experts or the strategy)

    def __post_init__(self) -> None:
        problems = []
        if self.protocol not in (*PROTOCOLS, "both"):
            problems.append(f"protocol '{self.protocol}': choose generate, letter or both")
        if self.submission_protocol not in ("", *PROTOCOLS):
            problems.append(f"submission_protocol '{self.submission_protocol}': choose generate or letter")
        if self.part not in splits.PARTS:
            problems.append(f"part '{self.part}': choose one of {', '.join(splits.PARTS)}")
        if self.sample not in ("first", "stratified"):
            problems.append(f"sample '{self.sample}': choose first or stratified")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit {self.limit}: must be at least 1")
        for name in ("batch_size", "max_new_tokens", "save_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} {getattr(self, name)}: must be at least 1")
        if problems:
            raise ConfigError("; ".join(problems))

    def protocols(self, task: Task) -> tuple[str, ...]:
        """The protocols to report for `task`: those of its kind (generative tasks have only `generate`)."""
        kind = task.kind
        if self.protocol == "both":
            return kind.protocols
        if self.protocol not in kind.protocols:
            raise ConfigError(f"protocol '{self.protocol}': task '{task.name}' is {kind.name}, whose protocols are "
                              f"{', '.join(kind.protocols)} ('letter' needs a multiple-choice task)")
        return (self.protocol,)

    def submission_for(self, task: Task) -> str:
        """The protocol whose predictions go into the submission file ('' : the kind's own)."""
        protocol = self.submission_protocol or task.kind.selection
        if protocol not in task.kind.protocols:
            raise ConfigError(f"submission_protocol '{protocol}': task '{task.name}' is {task.kind.name}, whose "
                              f"protocols are {', '.join(task.kind.protocols)}")
        return protocol


def limit_examples(examples: list[Example], limit: int | None, sample: str = "first", seed: int = 0) -> list[Example]:
    """The first `limit` examples, or a seeded sample stratified by subject (largest-remainder quotas), in data order."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if sample == "first":
        return list(examples[:limit])
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(e.subject, []).append(i)
    exact = {s: limit * len(idx) / len(examples) for s, idx in groups.items()}
    quota = {s: int(q) for s, q in exact.items()}
    by_remainder = sorted(groups, key=lambda s: -(exact[s] - quota[s]))  # stable: ties keep data order
    for s in by_remainder[: limit - sum(quota.values())]:
        quota[s] += 1
    rng = random.Random(seed)
    chosen = sorted(i for s, idx in groups.items() for i in rng.sample(idx, quota[s]))
    return [examples[i] for i in chosen]


def _git() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"hash": None, "dirty": None}
    if head.returncode != 0:
        return {"hash": None, "dirty": None}
    return {"hash": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _experts(am: AdaptedModel) -> list[dict[str, Any]]:
    out = []
    for e in am.experts:
        h = hashlib.sha256()
        for t in sorted(e.p):
            h.update(t.encode() + e.p[t].detach().float().cpu().numpy().tobytes())
        out.append({"label": e.meta.label, "task": e.meta.task, "sha256": h.hexdigest()})
    return out


def label_of(am: AdaptedModel, adapter: dict[str, Any] | None, pipe: Pipeline | None = None) -> str:
    """The default row name of a system: the strategy, the adapter's method, the experts' labels, or "base"."""
    if pipe is not None and pipe.name is not None:
        return f"Transformer² ({pipe.name})"
    if adapter is not None:
        return DISPLAY.get(adapter["method"], adapter["method"])
    if am.experts:
        return "expert " + "+".join(e.meta.label or "?" for e in am.experts)
    return "base"


def _run_key(am: AdaptedModel, cfg: EvalConfig, task: Task, pipe: Pipeline) -> str:
    """Everything that changes a question's record; a partial file with another key is not resumed.

    Records are per question id and hold every protocol, so --limit, --sample and --protocol may change.
    """
    alpha = am.alpha.tolist() if am.alpha is not None else None
    fields = {k: getattr(cfg, k) for k in ("data", "split", "chat", "max_new_tokens", "mixed_batches")}
    routing = pipe.record()
    ident = [model_id(am.model), str(am.model.dtype), _experts(am), alpha, task.name, task.version, fields, routing]
    if (adapter := adapter_identity(am.model)) is not None:  # keeps keys of adapter-free runs unchanged
        ident.append(adapter["sha256"])
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def partial_path(out_path: Path) -> Path:
    """Where records are saved as they come (one file per rank in a data-parallel run)."""
    suffix = f".partial.rank{distributed.rank()}.json" if distributed.world() > 1 else ".partial.json"
    return out_path.with_name(out_path.name + suffix)


def alpha_path(out_path: Path) -> Path:
    """Where a task-level α found by a strategy (fewshot) is saved beside the results."""
    return out_path.with_name(out_path.stem + ".alpha.json")


def _load_partial(path: Path | None, key: str) -> dict[str, dict[str, Any]]:
    """{"records": by id, "routing": pass-1 decisions by id} of a partial file with this key, else empty."""
    empty: dict[str, dict[str, Any]] = {"records": {}, "routing": {}}
    if path is None or not path.is_file():
        return empty
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return empty  # an unreadable partial file only costs the work it held
    if saved.get("key") != key:
        return empty
    return {"records": saved.get("records", {}), "routing": saved.get("routing", {})}


def _load_partials(out_path: Path | None, key: str) -> dict[str, dict[str, Any]]:
    """Every partial file of `out_path` (one per rank of a data-parallel run, of any earlier run) merged."""
    merged: dict[str, dict[str, Any]] = {"records": {}, "routing": {}}
    for path in sorted(out_path.parent.glob(out_path.name + ".partial*.json")) if out_path is not None else []:
        saved = _load_partial(path, key)
        merged["records"].update(saved["records"])
        merged["routing"].update(saved["routing"])
    return merged


def _score(task: Task, examples: list[Example], preds: dict[str, list[str]]) -> dict[str, list[bool | None]]:
    """Correctness per protocol; None where the gold answer is hidden (test splits)."""
    labelled = [i for i, e in enumerate(examples) if e.answer != ""]
    out: dict[str, list[bool | None]] = {}
    for proto, p in preds.items():
        scored = task.score([examples[i] for i in labelled], [p[i] for i in labelled]) if labelled else []
        col: list[bool | None] = [None] * len(examples)
        for i, ok in zip(labelled, scored):
            col[i] = bool(ok)
        out[proto] = col
    return out


def _run_chunk(pipe: Pipeline, task: Task, cfg: EvalConfig, examples: list[Example], prompts: list[str],
               alpha: Tensor | None, progress: Progress | None) -> dict[str, dict[str, Any]]:
    """Records (prediction and correctness per protocol, raw completion, seconds) for one chunk of questions
    (pass 2, each question with its row of `alpha`, or the fixed mixture)."""
    t0 = time.perf_counter()
    calls = ModelCalls(
        lambda p, letters: pipe.score_letters(p, letters, alpha, batch_size=cfg.batch_size, progress=progress),
        lambda p: [a.text for a in pipe.generate(p, cfg.max_new_tokens, chat=False, alpha=alpha,
                                                  batch_size=cfg.batch_size, seed=cfg.seed, progress=progress)])
    answers = task.kind.predict(task, examples, prompts, calls)
    preds, completions = answers.predictions, answers.completions
    seconds = (time.perf_counter() - t0) / len(examples)
    correct = _score(task, examples, preds)
    return {
        e.id: {"completion": completions[i], "prediction": {k: v[i] for k, v in preds.items()},
               "correct": {k: v[i] for k, v in correct.items()}, "pass2_s": seconds}
        for i, e in enumerate(examples)
    }


def predict(am: AdaptedModel, task: Task, cfg: EvalConfig, examples: list[Example], out_path: Path | None = None,
            progress: Progress | None = None, pipe: Pipeline | None = None) -> dict[str, dict[str, Any]]:
    """Records for every example by id (with pass-1 routing when the pipeline has a strategy), resuming
    from and saving to `out_path`'s partial file."""
    pipe = pipe or Pipeline(am, mixed=cfg.mixed_batches)
    routed = pipe.strategy is not None
    key = _run_key(am, cfg, task, pipe)
    part = partial_path(out_path) if out_path is not None else None
    saved = _load_partials(out_path, key)
    records, routing = saved["records"], saved["routing"]

    def save() -> None:
        if part is not None:
            write_json({"key": key, "records": records, "routing": routing}, part)

    if progress is not None and records:
        progress(sum(e.id in records for e in examples))
    pending = distributed.shard([e for e in examples if e.id not in records])  # data parallel: this rank's share
    step = cfg.batch_size * cfg.save_every
    prompts = task.format(pending, am.tokenizer, cfg.chat)
    check_context(am.model, am.tokenizer, prompts, [f"question {e.id}" for e in pending])  # before any pass
    with am.holding():  # weights stay merged between chunks: one merge per mixture (and per classifier) per run
        alpha = None
        if routed:
            requests = {e.id: request_of(e, task.name) for e in pending}
            alpha = pipe.route_all(requests, routing, step, save)
        order = pass2_order([len(p) for p in prompts], alpha, cfg.mixed_batches)
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            chunk = _run_chunk(pipe, task, cfg, [pending[i] for i in idx], [prompts[i] for i in idx],
                               None if alpha is None else alpha[idx], progress)
            for rid, rec in chunk.items():
                if routed:
                    rec["routing"] = routing[rid]
            records.update(chunk)
            save()
    return distributed.gather_records(records)


@dataclass
class Plan:
    """What an evaluation will run, settled before any model is loaded."""

    task: Task
    examples: list[Example]  # the questions to score, in data order
    excluded: list[str] = field(default_factory=list)  # ids left out because an expert in use saw them
    without_record: list[str] = field(default_factory=list)  # experts that do not say what they saw
    pool: list[Example] = field(default_factory=list)  # every question that passed the filters, before --limit (a strategy may fit on some)
    experts: list[Expert] = field(default_factory=list)  # the experts, loaded and checked against each other
    answered_seen: list[str] = field(default_factory=list)  # ids an expert saw, answered for a complete submission, out of the metrics


def plan_eval(cfg: EvalConfig, out_path: str | Path | None = None, submission_path: str | Path | None = None,
            markdown_path: str | Path | None = None, experts: Sequence[str | Path | Expert] = (),
            also_seen: Sequence[str | Path] = ()) -> Plan:
    """Check the output locations, load and select the questions: everything that needs no model.

    The questions: a split (or one part of a split file), then subset and exclude_run. `experts` (folders or
    loaded) are loaded and checked here; the questions any of them saw in training are left out unless
    `cfg.include_seen`, and so are those of `also_seen` (folders of experts used otherwise, a strategy's
    classification expert, or of PEFT adapters); then limit. With a submission they are answered all the
    same (a submission has every id) and listed in `answered_seen`, out of the metrics.
    Raises (before any costly work) when an output cannot be written or nothing would be evaluated.
    """
    for path, flag in ((out_path, "--out"), (submission_path, "--submission"), (markdown_path, "--markdown")):
        check_file_target(path, flag)
    task = get_task(cfg.task, cfg.unsafe_exec)
    cfg.protocols(task)
    if submission_path is not None:
        cfg.submission_for(task)
    if cfg.split_file:
        examples = splits.load_part(task, cfg.data, splits.load_split(cfg.split_file), cfg.part)
    else:
        examples = task.load(cfg.data, cfg.split)
    if not examples:
        source = f" of {cfg.data}" if cfg.data is not None else ""
        where = f"part '{cfg.part}' of {cfg.split_file}" if cfg.split_file else f"split '{cfg.split}'{source}"
        raise DataError(f"task '{task.name}' {where}: no questions to evaluate")
    if cfg.subset:
        examples = splits.filter_subset(examples, cfg.subset)
    if cfg.exclude_run:
        examples = _exclude_run(examples, Path(cfg.exclude_run))
    loaded = load_experts(experts)
    check_together(loaded)
    names = [e.meta.label if isinstance(e, Expert) else str(e) for e in experts]
    records = [(name, e.seen) for name, e in zip(names, loaded)] + [(str(f), _read_seen(Path(f))) for f in also_seen]
    without = [name for name, keys in records if keys is None]
    excluded: list[Example] = []
    everything = examples
    if not cfg.include_seen:
        examples, excluded = seen.split_seen(examples, seen.union([k for _, k in records if k is not None]))
        if not examples and submission_path is None:
            raise ConfigError(f"the expert(s) saw all {len(excluded)} selected questions in training; "
                              "evaluate another split, or pass --include-seen to score them anyway")
    if submission_path is not None and excluded:  # a submission has every id: answer the seen ones too
        return Plan(task, limit_examples(everything, cfg.limit, cfg.sample, cfg.seed), [], without, examples, loaded,
                    answered_seen=[e.id for e in excluded])
    return Plan(task, limit_examples(examples, cfg.limit, cfg.sample, cfg.seed), [e.id for e in excluded], without, examples,
                loaded)


def _exclude_run(examples: list[Example], path: Path) -> list[Example]:
    """Drop a training run's train and val questions (its split.json), or those an expert folder records."""
    if (path / META).is_file() or (path / ADAPTER_CONFIG).is_file():
        keys = _read_seen(path)
        if keys is None:
            raise ConfigError(f"--exclude-run {path}: this expert has no record of the questions it saw")
        kept = seen.split_seen(examples, keys)[0]
    else:
        kept = splits.exclude_used(examples, splits.load_split(path))
    if not kept:
        raise ConfigError(f"--exclude-run {path}: the run used every question of this split")
    return kept


def _read_seen(folder: Path) -> Tensor | None:
    """The seen-question keys recorded by an expert folder or a PEFT baseline's adapter folder (None: no record)."""
    if (folder / ADAPTER_CONFIG).is_file():  # an adapter from elsewhere has no baseline.json: no record
        return read_seen(folder, ADAPTER_META) if (folder / ADAPTER_META).is_file() else None
    return read_seen(folder)


def _fit(pipe: Pipeline, plan: Plan, cfg: EvalConfig) -> tuple[list[Example], list[str], float]:
    """The questions to evaluate, the ids the strategy used to fit itself on the evaluated task's labelled
    pool (left out), and the fit's seconds."""
    used = pipe.fit(plan.task, plan.pool)
    if not used:
        return plan.examples, [], pipe.fit_seconds
    left = [e for e in plan.pool if e.id not in set(used)]
    if not left:
        raise ConfigError(f"strategy '{pipe.name}' used every question of this split to fit itself")
    answered_seen = [e for e in plan.examples if e.id in set(plan.answered_seen)]  # not in the pool it fits on
    return limit_examples(left, cfg.limit, cfg.sample, cfg.seed) + answered_seen, used, pipe.fit_seconds


def strategy_experts(strategy: Strategy | StrategyConfig | str | None) -> list[str]:
    """Expert folders a strategy runs besides the mixed experts (a classification expert), as its module declares."""
    if strategy is None or isinstance(strategy, (str, StrategyConfig)):
        return strategy_runs(strategy)
    return strategy_runs(getattr(strategy, "cfg", None))


def routing_seconds(record: dict[str, Any]) -> float:
    """Pass-1 seconds of a question's record (0 without a strategy)."""
    return record.get("routing", {}).get("pass1_s", 0.0)


def evaluate(am: AdaptedModel, cfg: EvalConfig, out_path: str | Path | None = None,
             submission_path: str | Path | None = None, progress: Progress | None = None,
             total: Callable[[int], None] | None = None, plan: Plan | None = None,
             strategy: Strategy | StrategyConfig | str | None = None) -> dict[str, Any]:
    """Evaluate `cfg.task` with `am`: its fixed mixture merged, or with `strategy` a mixture per question
    chosen in pass 1; write results JSON and submission file if asked.

    `plan` is `plan_eval(cfg, ...)`'s result when the caller checked the inputs before loading the model.
    `total` is called once with the number of questions (for a progress bar); `progress` after each batch.
    """
    plan = plan or plan_eval(cfg, out_path, submission_path, experts=am.experts, also_seen=strategy_experts(strategy))
    distributed.init(next(am.model.parameters()).device)  # no-op unless launched by torchrun / accelerate
    task = plan.task
    protocols = cfg.protocols(task)
    pipe = Pipeline(am, strategy, mixed=cfg.mixed_batches)
    examples, used, fit_seconds = _fit(pipe, plan, cfg)
    if total is not None:
        total(len(examples))
    out = Path(out_path) if out_path is not None else None
    t0 = time.perf_counter()
    records = predict(am, task, cfg, examples, out, progress, pipe)
    seconds = time.perf_counter() - t0
    times = {e.id: {"pass1_s": routing_seconds(records[e.id]), "pass2_s": records[e.id]["pass2_s"]} for e in examples}
    pass1 = sum(t["pass1_s"] for t in times.values())
    pass2 = sum(t["pass2_s"] for t in times.values())
    adapter = adapter_identity(am.model)
    system = {"label": cfg.label or label_of(am, adapter, pipe), "model": model_id(am.model),
              "dtype": str(am.model.dtype).removeprefix("torch."), "device": str(next(am.model.parameters()).device),
              "experts": _experts(am), "alpha": am.alpha.tolist() if am.alpha is not None else None, "adapter": adapter}
    timing = {"seconds": round(seconds, 3), "n_questions": len(examples), "fit_seconds": round(fit_seconds, 3),
              "pass1_seconds": round(pass1, 3), "pass2_seconds": round(pass2, 3),
              "pass1_fraction_of_pass2": pass1 / pass2 if pass2 > 0 else None, "per_question": times}
    results = assemble(plan, cfg, examples, records, system, timing)
    if pipe.strategy is not None:
        results["strategy"] = pipe.record() | {"excluded_ids": used, "n_excluded": len(used),
                                                   "mixed_batches": cfg.mixed_batches}
        results["routing"] = routing_metrics(results["predictions"], am.labels)
        bias = getattr(pipe.strategy, "position_bias", lambda: None)()  # prompt/cls with position_bias
        if bias is not None:
            results["routing"]["position_bias"] = bias
        if out is not None and results["strategy"].get("alpha") is not None and distributed.is_main():
            write_json(results["strategy"], alpha_path(out))  # fewshot: reusable with --alpha-from
    return finish(results, task, cfg, examples, records, out, submission_path)


def assemble(plan: Plan, cfg: EvalConfig, examples: list[Example], records: dict[str, dict[str, Any]],
             system: dict[str, Any], timing: dict[str, Any]) -> dict[str, Any]:
    """The results dict: the system's fields, task, config, seen questions, timing, metrics, per-question rows."""
    task = plan.task
    protocols = cfg.protocols(task)
    answered_seen = set(plan.answered_seen)  # an expert saw them: answered for the submission, never scored
    rows = [{"id": e.id, "subject": e.subject, "category": e.category, "answer": e.answer,
             "prediction": {p: records[e.id]["prediction"][p] for p in protocols},
             "correct": {p: None if e.id in answered_seen else records[e.id]["correct"][p] for p in protocols},
             "completion": records[e.id]["completion"]} | ({"seen": True} if e.id in answered_seen else {})
            | ({"routing": {k: records[e.id]["routing"][k] for k in ("decision", "alpha")}}
               if "routing" in records[e.id] else {})
            for e in examples]
    return {
        "format_version": FORMAT_VERSION, "t2_version": __version__, **system,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": {"name": task.name, "version": task.version, "kind": task.kind.name, "split": cfg.split,
                 "data": None if cfg.data is None else str(cfg.data),
                 "part": None if not cfg.split_file else {"file": str(cfg.split_file), "name": cfg.part}},
        "protocol": list(protocols), "config": asdict(cfg), "git": _git(),
        "seen": {"include_seen": cfg.include_seen, "n_excluded": len(plan.excluded), "excluded_ids": plan.excluded,
                 "answered_seen_ids": plan.answered_seen, "experts_without_record": plan.without_record},
        "timing": timing,
        "ci_method": f"Wilson score interval (95%) per accuracy; {CATEGORY_MEAN_CI} for category_mean",
        "metrics": {p: accuracy_metrics(rows, p, task.categories) for p in protocols},
        "predictions": rows,
    }


def finish(results: dict[str, Any], task: Task, cfg: EvalConfig, examples: list[Example],
           records: dict[str, dict[str, Any]], out: Path | None, submission_path: str | Path | None) -> dict[str, Any]:
    """Write the submission file and the results JSON (if asked; rank 0 only in a data-parallel run), drop
    the partial file; returns `results`."""
    if submission_path is not None:
        results["submission"] = write_submission(submission_path, task, cfg, examples, records,
                                                 write=distributed.is_main())
    if out is not None and distributed.is_main():  # data parallel: rank 0 writes the one results file
        write_json(results, out)
    distributed.barrier()
    if out is not None:
        partial_path(out).unlink(missing_ok=True)
    return results


def write_submission(path: str | Path, task: Task, cfg: EvalConfig, examples: list[Example],
                     records: dict[str, dict[str, Any]], write: bool = True) -> dict[str, Any]:
    """The task's submission file (its kind's format: VMLU's id,answer CSV, id,answer CSV for other multiple
    choice, JSONL otherwise) from one protocol's predictions; every rank checks it, rank 0 writes it."""
    protocol = cfg.submission_for(task)
    ids = [e.id for e in examples]
    text = task.kind.submission(path, ids, [records[i]["prediction"][protocol] for i in ids],
                                [records[i]["completion"] for i in ids])
    if write:
        write_text(text, Path(path))
    return {"path": str(path), "protocol": protocol, "n": len(ids)}
