"""Run a task with the base model, one expert or a fixed mixture; metrics, results JSON, submission CSV.

Multiple choice gets both protocols from one forward pass per batch: `generate` (the greedy next
token read as the letter, VMLU's official protocol) and `letter` (argmax over the valid letters).
Generative tasks: generate → task.parse → task.score. An interrupted run resumes from
`<out>.partial.json`, rewritten atomically every `save_every` batches.
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

from . import __version__, engine, seen
from .adapted import AdaptedModel
from .atomic import check_file_target, write_json
from .errors import ConfigError, DataError
from .expert import META, Expert, read_seen
from .metrics import accuracy_metrics
from .models import model_id
from .tasks import Example, Task, get_task
from .training import splits

PROTOCOLS = ("generate", "letter")
FORMAT_VERSION = 1
Progress = Callable[[int], None]


@dataclass
class EvalConfig:
    """What to evaluate and how."""

    task: str = "vmlu"  # registry name of the task
    data: str | None = None  # local folder/file or Hugging Face dataset id (None: the task's default)
    split: str = "valid"  # split to evaluate
    protocol: str = "both"  # MCQ: generate, letter or both (one forward pass gives both); other tasks: generate
    chat: bool = False  # wrap prompts in the model's chat template (VMLU's official protocol: no)
    limit: int | None = None  # evaluate at most this many questions (None: all)
    sample: str = "first"  # how `limit` picks: "first" N, or "stratified" (seeded, proportional per subject)
    seed: int = 0  # seed of the stratified sample and of sampling
    batch_size: int = 8  # prompts per forward pass (halved automatically on out-of-memory)
    max_new_tokens: int = 512  # generation budget of generative tasks, in tokens
    save_every: int = 8  # batches between saves of the partial results (resume)
    submission_protocol: str = "letter"  # predictions written to the submission CSV
    subset: str = ""  # filter before `limit`: "category=STEM", "subject=28,29" ('' keeps all)
    exclude_run: str | None = None  # a training run folder (or its split.json): skip its train and val ids
    include_seen: bool = False  # also score questions the experts in use were trained or selected on
    unsafe_exec: bool = False  # code tasks: where bubblewrap cannot run, run generated code unconfined

    def __post_init__(self) -> None:
        problems = []
        if self.protocol not in (*PROTOCOLS, "both"):
            problems.append(f"protocol '{self.protocol}': choose generate, letter or both")
        if self.submission_protocol not in PROTOCOLS:
            problems.append(f"submission_protocol '{self.submission_protocol}': choose generate or letter")
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
        """The protocols to report for `task` (generative tasks have only `generate`)."""
        if task.kind != "mcq":
            if self.protocol == "letter":
                raise ConfigError(f"protocol 'letter' needs a multiple-choice task; '{task.name}' is generative")
            return ("generate",)
        return PROTOCOLS if self.protocol == "both" else (self.protocol,)


def select(examples: list[Example], limit: int | None, sample: str = "first", seed: int = 0) -> list[Example]:
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


def _run_key(am: AdaptedModel, cfg: EvalConfig, task: Task) -> str:
    """Everything that changes a question's record; a partial file with another key is not resumed.

    Records are per question id and hold every protocol, so --limit, --sample and --protocol may change.
    """
    alpha = am.alpha.tolist() if am.alpha is not None else None
    fields = {k: getattr(cfg, k) for k in ("data", "split", "chat", "max_new_tokens")}
    ident = [model_id(am.model), str(am.model.dtype), _experts(am), alpha, task.name, task.version, fields]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def partial_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".partial.json")


def _load_partial(path: Path, key: str) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # an unreadable partial file only costs the work it held
    return saved.get("records", {}) if saved.get("key") == key else {}


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


def _run_chunk(am: AdaptedModel, task: Task, cfg: EvalConfig, examples: list[Example], prompts: list[str],
               progress: Progress | None) -> dict[str, dict[str, Any]]:
    """Records (prediction and correctness per protocol, raw completion) for one chunk of questions."""
    if task.kind == "mcq":
        letters = [e.letters for e in examples]
        greedy, logp = engine.score_letters(am.model, am.tokenizer, prompts, letters, cfg.batch_size, progress)
        preds = {"generate": task.parse(examples, greedy),
                 "letter": [e.letters[int(lp.argmax())] for e, lp in zip(examples, logp)]}
        completions = greedy
    else:
        completions = engine.generate(am.model, am.tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size,
                                      seed=cfg.seed, progress=progress)
        preds = {"generate": task.parse(examples, completions)}
    correct = _score(task, examples, preds)
    return {
        e.id: {"completion": completions[i], "prediction": {k: v[i] for k, v in preds.items()},
               "correct": {k: v[i] for k, v in correct.items()}}
        for i, e in enumerate(examples)
    }


def predict(am: AdaptedModel, task: Task, cfg: EvalConfig, examples: list[Example], out_path: Path | None = None,
            progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Records for every example by id, resuming from and saving to `out_path`'s partial file."""
    key = _run_key(am, cfg, task)
    part = partial_path(out_path) if out_path is not None else None
    records = _load_partial(part, key) if part is not None else {}
    if progress is not None and records:
        progress(sum(e.id in records for e in examples))
    pending = [e for e in examples if e.id not in records]
    prompts = task.format(pending, am.tokenizer, cfg.chat)
    order = sorted(range(len(pending)), key=lambda i: -len(prompts[i]))  # longest first: OOM shows at once
    step = cfg.batch_size * cfg.save_every
    with am.applied():
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            records.update(_run_chunk(am, task, cfg, [pending[i] for i in idx], [prompts[i] for i in idx], progress))
            if part is not None:
                write_json({"key": key, "records": records}, part)
    return records


@dataclass
class Plan:
    """What an evaluation will run, settled before any model is loaded."""

    task: Task
    examples: list[Example]  # the questions to score, in data order
    excluded: list[str] = field(default_factory=list)  # ids left out because an expert in use saw them
    without_record: list[str] = field(default_factory=list)  # experts that do not say what they saw


def prepare(cfg: EvalConfig, out_path: str | Path | None = None, submission_path: str | Path | None = None,
            markdown_path: str | Path | None = None, experts: Sequence[str | Path | Expert] = ()) -> Plan:
    """Check the output locations, load and select the questions: everything that needs no model.

    Questions any of `experts` (folders or loaded) saw in training are left out unless `cfg.include_seen`.
    Raises (before any costly work) when an output cannot be written or nothing would be evaluated.
    """
    for path, flag in ((out_path, "--out"), (submission_path, "--submission"), (markdown_path, "--markdown")):
        check_file_target(path, flag)
    task = get_task(cfg.task, cfg.unsafe_exec)
    cfg.protocols(task)
    if submission_path is not None and task.kind != "mcq":
        raise ConfigError(f"--submission: only multiple-choice tasks have an id,answer submission ('{task.name}' is generative)")
    examples = task.load(cfg.data, cfg.split)
    if not examples:
        source = f" of {cfg.data}" if cfg.data is not None else ""
        raise DataError(f"task '{task.name}' split '{cfg.split}'{source}: no questions to evaluate")
    if cfg.subset:
        examples = splits.select(examples, cfg.subset)
    if cfg.exclude_run:
        examples = _exclude_run(examples, Path(cfg.exclude_run))
    records = [(e.meta.label, e.seen) if isinstance(e, Expert) else (str(e), read_seen(e)) for e in experts]
    without = [name for name, keys in records if keys is None]
    excluded: list[Example] = []
    if not cfg.include_seen:
        examples, excluded = seen.split_seen(examples, seen.union([k for _, k in records if k is not None]))
        if not examples:
            raise ConfigError(f"the expert(s) saw all {len(excluded)} selected questions in training; "
                              "evaluate another split, or pass --include-seen to score them anyway")
    return Plan(task, select(examples, cfg.limit, cfg.sample, cfg.seed), [e.id for e in excluded], without)


def _exclude_run(examples: list[Example], path: Path) -> list[Example]:
    """Drop a training run's train and val questions (its split.json), or those an expert folder records."""
    if (path / META).is_file():
        keys = read_seen(path)
        if keys is None:
            raise ConfigError(f"--exclude-run {path}: this expert has no record of the questions it saw")
        kept = seen.split_seen(examples, keys)[0]
    else:
        kept = splits.exclude_used(examples, splits.load_split(path))
    if not kept:
        raise ConfigError(f"--exclude-run {path}: the run used every question of this split")
    return kept


def evaluate(am: AdaptedModel, cfg: EvalConfig, out_path: str | Path | None = None,
             submission_path: str | Path | None = None, progress: Progress | None = None,
             total: Callable[[int], None] | None = None, plan: Plan | None = None) -> dict[str, Any]:
    """Evaluate `cfg.task` with `am` (its experts applied merged); write results JSON and submission CSV if asked.

    `plan` is `prepare(cfg, ...)`'s result when the caller checked the inputs before loading the model.
    `total` is called once with the number of questions (for a progress bar); `progress` after each batch.
    """
    plan = plan or prepare(cfg, out_path, submission_path, experts=am.experts)
    task, examples = plan.task, plan.examples
    protocols = cfg.protocols(task)
    if total is not None:
        total(len(examples))
    out = Path(out_path) if out_path is not None else None
    t0 = time.perf_counter()
    records = predict(am, task, cfg, examples, out, progress)
    seconds = time.perf_counter() - t0
    rows = [{"id": e.id, "subject": e.subject, "category": e.category, "answer": e.answer,
             "prediction": {p: records[e.id]["prediction"][p] for p in protocols},
             "correct": {p: records[e.id]["correct"][p] for p in protocols},
             "completion": records[e.id]["completion"]}
            for e in examples]
    results = {
        "format_version": FORMAT_VERSION, "t2_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_id(am.model), "dtype": str(am.model.dtype).removeprefix("torch."),
        "device": str(next(am.model.parameters()).device),
        "experts": _experts(am), "alpha": am.alpha.tolist() if am.alpha is not None else None,
        "task": {"name": task.name, "version": task.version, "kind": task.kind, "split": cfg.split,
                 "data": None if cfg.data is None else str(cfg.data)},
        "protocol": list(protocols), "config": asdict(cfg), "git": _git(),
        "seen": {"include_seen": cfg.include_seen, "n_excluded": len(plan.excluded), "excluded_ids": plan.excluded,
                 "experts_without_record": plan.without_record},
        "timing": {"seconds": round(seconds, 3), "n_questions": len(examples)},
        "ci_method": "Wilson score interval (95%) per accuracy; normal approximation for category_mean",
        "metrics": {p: accuracy_metrics(rows, p, task.categories) for p in protocols},
        "predictions": rows,
    }
    if submission_path is not None:
        preds = [records[e.id]["prediction"][cfg.submission_protocol] for e in examples]
        results["submission"] = write_submission(submission_path, [e.id for e in examples], preds, cfg.submission_protocol)
    if out is not None:
        write_json(results, out)
        partial_path(out).unlink(missing_ok=True)
    return results


def write_submission(path: str | Path, ids: list[str], preds: list[str], protocol: str) -> dict[str, Any]:
    """The benchmark's `id,answer` CSV from one protocol's predictions (VMLU's writer checks every line)."""
    from .tasks.vmlu import write_submission as write_csv

    missing = [i for i, p in zip(ids, preds) if p == ""]
    if missing:
        raise ConfigError(f"--submission: {len(missing)} question(s) without a letter under protocol '{protocol}' "
                          f"(first: {missing[0]}); use --submission-protocol letter")
    write_csv(path, ids, preds)
    return {"path": str(path), "protocol": protocol, "n": len(ids)}
