"""The stages of a recipe (run by recipe/runner.py): what each one computes, from which settings, into which files.

Output folder: `split.json` (shared by every system), `experts/<category>/`, `router/` (the
classification expert of strategies that need one) and `baselines/<method>/` (run folders),
`fit/<strategy>.json` (what a strategy that needs labelled shots fitted on the validation part, e.g. an α),
`eval/<system>.json` (holdout results), `submissions/<system>.csv`
(+ .json), `report/` (report.md, report.json, chart.png), `generations.json`, `stages/` (markers).
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from ..adapt import CLASSIFIER, SHOTS, STRATEGIES
from ..baselines.adapter import DISPLAY
from ..errors import ConfigError
from ..training import splits
from .config import RecipeConfig, slug



@dataclass
class Stage:
    """One resumable step: its settings (a changed setting invalidates it), outputs and work."""

    name: str
    settings: dict[str, Any]
    outputs: list[Path]
    run: Callable[[], Any]


@dataclass(frozen=True)
class System:
    """A row of the table: how to build it and where its files go."""

    label: str  # row name
    kind: str  # base, constant, adapter, expert, strategy
    folder: str = ""  # adapter or expert folder (best/ of its run)
    stage: str = ""  # the stage that trains it
    members: tuple[str, ...] = ()  # strategy: the expert folders it mixes
    needs: tuple[str, ...] = ()  # strategy: the stages it depends on
    strategy: Any = None  # strategy: its StrategyConfig

    @property
    def slug(self) -> str:
        return slug(self.label)


class Loader:
    """Loads the base model once per recipe run and builds each system's adapted model on it."""

    def __init__(self, cfg: RecipeConfig) -> None:
        self.cfg = cfg
        self._base: tuple[Any, Any] | None = None

    def base(self) -> tuple[Any, Any]:
        if self._base is None:
            from ..models.load import load_model

            m = self.cfg.model
            self._base = load_model(m.name, device=m.device, dtype=m.dtype)
        return self._base

    @contextmanager
    def adapted(self, system: System) -> Iterator[Any]:
        """The AdaptedModel of a system on the shared base model; a PEFT adapter is unloaded afterwards."""
        from ..experts.adapted import AdaptedModel
        from ..experts.expert import Expert, attach

        model, tok = self.base()
        if system.kind == "adapter":
            from ..baselines.adapter import attach_adapter

            wrapped = attach_adapter(model, system.folder)
            try:
                yield AdaptedModel(wrapped, tok)
            finally:
                wrapped.unload()  # takes the adapter's modules out again: the base weights were never changed
        elif system.kind in ("expert", "strategy"):
            experts = [Expert.load(f) for f in (system.members or (system.folder,))]
            yield AdaptedModel(model, tok, attach(model, experts), experts)
        else:
            yield AdaptedModel(model, tok)


# ---- the work of each stage ---------------------------------------------------------------------
def make_split(cfg: RecipeConfig, task: Any, path: Path) -> dict[str, Any]:
    """One seeded split of the labelled pool (optionally a stratified sample of it) into train / val / holdout."""
    from ..evaluation.evaluate import limit_examples

    d = cfg.data
    names = d.splits or splits.DEFAULT_SPLITS.get(d.task, ["train"])
    pool = limit_examples(splits.labelled_pool(task, d.path, names), d.sample or None, "stratified", d.seed)
    parts = splits.stratified_split(pool, d.val_fraction, d.holdout_fraction, d.seed)
    record = splits.split_record(parts, task=d.task, data=d.path, splits=names, subset="", seed=d.seed,
                                 val_fraction=d.val_fraction, holdout_fraction=d.holdout_fraction, sample=d.sample,
                                 by_category={p: dict(Counter(e.category for e in v)) for p, v in parts.items()})
    splits.save_split(record, path.parent)
    return {"counts": record["counts"], "by_category": record["by_category"]}


def expert_config(cfg: RecipeConfig, category: str, split_path: Path) -> Any:
    m = cfg.model
    return replace(cfg.experts.train, task=cfg.data.task, data=cfg.data.path, model=m.name, device=m.device,
                   dtype=m.dtype, targets=m.targets, subset=f"category={category}", split_file=str(split_path),
                   label=category, description=cfg.experts.descriptions.get(category, f"Questions in {category}."))


def router_config(cfg: RecipeConfig, experts: list[System]) -> Any:
    """The classification expert's run: task `route` over the category experts (their own train and val questions)."""
    m = cfg.model
    return replace(cfg.router.train, task="route", data="|".join(e.folder for e in experts), splits=[], subset="",
                   split_file=None, model=m.name, device=m.device, dtype=m.dtype, targets=m.targets, label="router",
                   description="Names the expert that should answer a request.")


def baseline_config(cfg: RecipeConfig, method: str, split_path: Path) -> Any:
    m = cfg.model
    return replace(getattr(cfg.baselines, method), method=method, task=cfg.data.task, data=cfg.data.path,
                   model=m.name, device=m.device, dtype=m.dtype, subset="", split_file=str(split_path))


def train_run(kind: str, run_cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Train an expert or a baseline, resuming from latest/ if an earlier attempt was interrupted."""
    resume = (run_dir / "latest").exists() or (run_dir / ".latest.old").exists()
    if kind == "expert":
        from ..training.train import run
    else:
        from ..baselines.peft_train import run
    summary = run(run_cfg, run_dir, resume=resume)
    return {k: summary.get(k) for k in ("best_val", "best_step", "steps_done")}


def eval_config(cfg: RecipeConfig, system: System, split_path: Path | None, test: bool = False) -> Any:
    """Holdout part of the shared split (or, for a submission, the whole unlabelled test split)."""
    from ..evaluation.evaluate import EvalConfig

    e, d = cfg.eval, cfg.data
    where = {"split": d.test_split} if test else {"split_file": str(split_path), "part": "holdout",
                                                   "limit": e.limit or None, "sample": "stratified"}
    return EvalConfig(task=d.task, data=d.path, protocol="both", chat=e.chat, batch_size=e.batch_size, seed=d.seed,
                      label="" if system.kind == "constant" else system.label,  # constant: "best constant (B)"
                      submission_protocol="letter", **where)


def evaluate_system(loader: Loader, system: System, ecfg: Any, split_path: Path, out: Path,
                    submission: Path | None = None) -> dict[str, Any]:
    """Score one system; the constant row learns its letter from the shared split's train part."""
    from ..evaluation.evaluate import evaluate, plan_eval, strategy_experts
    from ..evaluation.reference import evaluate_constant

    out.parent.mkdir(parents=True, exist_ok=True)
    experts = list(system.members) or ([system.folder] if system.kind == "expert" else [])
    others = [system.folder] if system.kind == "adapter" else strategy_experts(system.strategy)
    plan = plan_eval(ecfg, out, submission, experts=experts, also_seen=others)  # leaves out what the system saw
    if system.kind == "constant":
        res = evaluate_constant(ecfg, split_path, out, submission, plan=plan)
    else:
        with loader.adapted(system) as am:
            res = evaluate(am, ecfg, out, submission, plan=plan, strategy=system.strategy)
    m = res["metrics"].get(loader.cfg.eval.protocol, {})
    return {"n": m.get("n"), "accuracy": m.get("weighted_average")}


def fit_strategy(cfg: RecipeConfig, loader: Loader, system: System, split_path: Path, path: Path) -> dict[str, Any]:
    """Fit a strategy that needs labelled shots on the validation part (through the pipeline) and save
    what it recorded, for its evaluations to reuse."""
    from ..adapt import Pipeline
    from ..atomic import write_json
    from ..tasks import get_task

    task = get_task(cfg.data.task)
    val = splits.load_part(task, cfg.data.path, splits.load_split(split_path), "val")
    with loader.adapted(system) as am:
        pipe = Pipeline(am, system.strategy)
        shots = pipe.fit(task, val)
        record = pipe.record()
    write_json(record, path)
    return {"shots": len(shots)}


def fit_path(out: Path, name: str) -> Path:
    """Where the fit stage of strategy `name` saves its record."""
    return out / "fit" / f"{name}.json"


def strategy_systems(cfg: RecipeConfig, experts: list[System], router: Stage | None, out: Path) -> list[System]:
    """A Transformer² row per strategy: the category experts mixed by pass 1; a strategy that needs a
    classifier gets the router's expert, one that needs labelled shots the record of its fit stage."""
    rows = []
    for name in cfg.eval.strategies:
        spec = STRATEGIES.get(name)
        settings, needs = cfg.eval.strategy.section(name), tuple(e.stage for e in experts)
        if spec.needs == CLASSIFIER:
            settings, needs = spec.given(settings, str(out / "router" / "best")), needs + ((router.name,) if router else ())
        elif spec.needs == SHOTS:
            settings, needs = spec.given(settings, str(fit_path(out, name))), needs + (f"fit {name}",)
        scfg = replace(cfg.eval.strategy, name=name, task_chat=cfg.eval.chat, **{name: settings})
        rows.append(System(f"Transformer² ({name})", "strategy", members=tuple(e.folder for e in experts),
                           needs=needs, strategy=scfg))
    return rows


def write_generations(cfg: RecipeConfig, loader: Loader, systems: list[System], path: Path) -> dict[str, Any]:
    """Each prompt answered (chat template if the model has one, greedy) by every system that has weights: the before/after check."""
    from ..atomic import write_json

    r = cfg.report
    rows = [{"prompt": p, "answers": {}} for p in r.generate]
    for system in systems:
        with loader.adapted(system) as am:
            texts = am.generate(r.generate, max_new_tokens=r.max_new_tokens, chat=None)  # the template if any
        for row, text in zip(rows, texts):
            row["answers"][system.label] = text
    write_json(rows, path)
    return {"n_prompts": len(rows)}


def write_recipe_report(cfg: RecipeConfig, files: list[Path], out: Path) -> dict[str, Any]:
    from ..report.comparison import load_results
    from ..report.tables import write_report

    r = cfg.report
    comp = write_report([(str(f), load_results(f)) for f in files], out, cfg.eval.protocol, "base", r.quote,
                        r.chart, r.n_boot)
    return {"rows": [row.label for row in comp.rows], "files": [str(f) for f in files]}


# ---- the stage list -----------------------------------------------------------------------------
def build_stages(cfg: RecipeConfig, out: Path) -> list[Stage]:
    """Every stage of `cfg`, in order: each system is evaluated right after it is trained, so an
    interrupted run already holds complete rows; submissions, report and generations come last."""
    from ..tasks import get_task

    task = get_task(cfg.data.task)
    if not task.kind.letters:
        raise ConfigError(f"data.task '{cfg.data.task}': recipes compare multiple-choice tasks ('{task.name}' is "
                          f"{task.kind.name})")
    split_path = out / splits.SPLIT_FILE
    loader = Loader(cfg)
    stages = [Stage("split", asdict(cfg.data), [split_path], lambda: make_split(cfg, task, split_path)),
              Stage("decompose", asdict(cfg.model), [], lambda: _decompose(loader))]
    systems = [System("base", "base"), System("best constant", "constant")]
    for method in cfg.baselines.methods:
        bcfg = baseline_config(cfg, method, split_path)
        run_dir = out / "baselines" / method
        stages.append(Stage(f"baseline {method}", asdict(bcfg), [run_dir / "best"],
                            lambda b=bcfg, d=run_dir: train_run("baseline", b, d)))
        systems.append(System(bcfg.label or DISPLAY[method], "adapter", str(run_dir / "best"), stages[-1].name))
    experts = []
    for category in cfg.experts.categories or list(task.categories):
        tcfg = expert_config(cfg, category, split_path)
        run_dir = out / "experts" / slug(category)
        stages.append(Stage(f"expert {category}", asdict(tcfg), [run_dir / "best"],
                            lambda t=tcfg, d=run_dir: train_run("expert", t, d)))
        experts.append(System(f"expert {category}", "expert", str(run_dir / "best"), stages[-1].name))
    router = None
    if cfg.router.enabled and experts:
        rcfg = router_config(cfg, experts)
        router = Stage("router", asdict(rcfg), [out / "router" / "best"],
                       lambda: train_run("expert", rcfg, out / "router"))
        stages.append(router)
    strategies = strategy_systems(cfg, experts, router, out) if experts else []
    for system in strategies:
        name = system.strategy.name
        if STRATEGIES.get(name).needs == SHOTS:  # fitted without the record it is about to write
            unfitted = replace(system, strategy=replace(system.strategy, **{name: cfg.eval.strategy.section(name)}))
            stages.append(Stage(f"fit {name}", _settings(cfg, unfitted, None, stages), [fit_path(out, name)],
                                lambda s=unfitted: fit_strategy(cfg, loader, s, split_path, fit_path(out, s.strategy.name))))
    rows = systems + (experts if cfg.eval.experts else []) + strategies
    results = []
    for system in rows:  # right after the stage that trains it (base and constant: at once; strategies: last)
        path = out / "eval" / f"{system.slug}.json"
        ecfg = eval_config(cfg, system, split_path)
        at = next((i + 1 for i, st in enumerate(stages) if st.name == system.stage), 2 + len(results))
        at = len(stages) if system.kind == "strategy" else at
        stages.insert(at, Stage(f"eval {system.label}", _settings(cfg, system, ecfg, stages), [path],
                                lambda s=system, e=ecfg, p=path: evaluate_system(loader, s, e, split_path, p)))
        results.append(path)
    if cfg.data.test_split and cfg.eval.submissions:
        for system in rows:
            csv = out / "submissions" / f"{system.slug}.csv"
            ecfg = eval_config(cfg, system, None, test=True)
            stages.append(Stage(f"submission {system.label}", _settings(cfg, system, ecfg, stages), [csv],
                                lambda s=system, e=ecfg, c=csv: evaluate_system(loader, s, e, split_path,
                                                                                c.with_suffix(".json"), c)))
    stages.append(Stage("report", asdict(cfg.report) | {"files": [str(p) for p in results],
                                                        "protocol": cfg.eval.protocol},
                        [out / "report" / "report.md"], lambda: write_recipe_report(cfg, results, out / "report")))
    if cfg.report.generate:
        with_weights = [s for s in systems if s.kind != "constant"] + experts
        stages.append(Stage("generate", {"report": asdict(cfg.report), "systems": [s.label for s in with_weights]},
                            [out / "generations.json"],
                            lambda: write_generations(cfg, loader, with_weights, out / "generations.json")))
    return stages


def _settings(cfg: RecipeConfig, system: System, ecfg: Any, stages: list[Stage]) -> dict[str, Any]:
    """An evaluation's settings: its EvalConfig and model, plus the settings of the stages that trained it."""
    by_name = {st.name: st.settings for st in stages}
    out = {"eval": None if ecfg is None else asdict(ecfg), "model": asdict(cfg.model), "system": asdict(system),
           "trained": by_name.get(system.stage), "split": asdict(cfg.data)}
    return out | ({"needs": {n: by_name.get(n) for n in system.needs}} if system.needs else {})


def _decompose(loader: Loader) -> dict[str, Any]:
    from ..experts.svd import decompose

    model, _ = loader.base()
    folder = decompose(model, loader.cfg.model.targets, progress=False)
    return {"cache": str(folder)}
