"""The `t2` command: a thin table from subcommand to library function (as in litgpt).

Typed library errors become one line on stderr and exit code 2 (a traceback only with --debug).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console

from .errors import T2Error
from .evaluation.runs import EvalRun, GenerateRun
from .experts.runs import DecomposeRun, ExpertInitRun
from .interop.runs import ExportLoraRun, ExportMergedRun, LmEvalRun
from .flags import command, normalise
from .models.plan import PlanConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transformer²: SVF experts and self-adaptive inference.")
expert_app = typer.Typer(no_args_is_help=True, help="Create and inspect experts.")
app.add_typer(expert_app, name="expert")
export_app = typer.Typer(no_args_is_help=True, help="Export adapted weights: merged HF checkpoint or PEFT LoRA adapter.")
app.add_typer(export_app, name="export")
recipe_app = typer.Typer(no_args_is_help=True, help="Run a whole comparison (experts, baselines, evaluation, report) from one YAML file.")
app.add_typer(recipe_app, name="recipe")
console = Console()
err = Console(stderr=True)

DATA_HELP = ("Local folder/file or Hugging Face dataset id; for rg a generator NAME[:N][:key=value,...], "
             "e.g. basic_arithmetic:200:max_terms=2,operators=+|-.")
MULTI_FLAGS = ("--experts", "--expert", "-e")  # flags that take several values: --experts A B C


def _expand_multi(args: list[str]) -> list[str]:
    """`--experts A B C` → `--experts A --experts B --experts C` (values run until the next flag)."""
    out: list[str] = []
    flag = None
    for a in args:
        if a in MULTI_FLAGS:
            flag = a
            out.append(a)
            continue
        if flag is not None and not a.startswith("-") and out[-1] != flag:
            out += [flag, a]
            continue
        if a.startswith("-"):
            flag = None
        out.append(a)
    return out


LAYERS = typer.Option(None, "--num-layers", help="random: models only: build this many decoder layers (full-size matrices).")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    if not verbose:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()


def _decompose(cfg: Any) -> None:
    from .experts.runs import run_decompose

    console.print(f"SVD cache: {run_decompose(cfg)}")


def _expert_init(cfg: Any) -> None:
    from .experts.runs import run_expert_init

    e = run_expert_init(cfg)
    console.print(f"expert with {e.n_params:,} parameters over {len(e.p)} targets: {cfg.out}")


def _plan(cfg: Any) -> None:
    from .models.plan import plan, render, shapes

    s = shapes(cfg.spec, cfg.targets)
    typer.echo(render(cfg, s, plan(cfg, s)))


def _generate(cfg: Any) -> None:
    from .evaluation.runs import run_generate

    answer = run_generate(cfg)
    if cfg.strategy is not None:
        err.print(f"expert: {answer.expert}" + ("" if answer.expert != "mixture" else f" (alpha {answer.alpha})"))
    console.print(answer.text)


def _prompt_after_experts(values: dict[str, Any]) -> None:
    """`t2 generate --expert DIR "PROMPT"`: the flag's values run on to the prompt; when no prompt was given,
    a last value that is not an existing folder is the prompt."""
    experts = values.get("experts") or []
    if not values.get("prompt") and experts and not Path(experts[-1]).is_dir():
        values["prompt"] = experts.pop()


def _eval(cfg: Any) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from . import distributed
    from .atomic import write_text
    from .evaluation.runs import run_eval
    from .report.tables import confusion_table, eval_markdown, eval_table, routing_lines

    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=not err.is_terminal or not distributed.is_main()) as bar:
        job = bar.add_task(f"{cfg.eval.task} {cfg.eval.split}", total=None)
        results = run_eval(cfg, progress=lambda n: bar.advance(job, n), total=lambda n: bar.update(job, total=n),
                           announce=_announce)
    if not distributed.is_main():  # data parallel: rank 0 reports
        return
    console.print(eval_table(results))
    if cfg.constant_from is None:
        if confusion_table(results) is not None:
            console.print(confusion_table(results))
        for line in routing_lines(results):
            console.print(line)
    if cfg.markdown is not None:
        write_text(eval_markdown(results), Path(cfg.markdown))
    console.print(f"results: {cfg.out}" + (f"\nsubmission: {cfg.submission}" if cfg.submission else ""))


command(app, "decompose", DecomposeRun, _decompose, help="Decompose the target weights once and cache U, s, V "
        "(resumable).")
command(expert_app, "init", ExpertInitRun, _expert_init, help="Write an untrained expert with the reference "
        "initialisation.")
command(app, "plan", PlanConfig, _plan, help="Memory plan (weights, factors, expert, optimizer, activations, KV) "
        "for training and evaluation.")
command(app, "generate", GenerateRun, _generate, argument="prompt", fill=_prompt_after_experts,
        help="Generate an answer with the base model, an adapted one, or two passes (--strategy picks the expert).")
command(app, "eval", EvalRun, _eval, help="Evaluate a task with the base model, an expert, a fixed mixture, a two-pass "
        "strategy or a PEFT adapter.")


def _announce(plan: Any) -> None:
    """The run's notes on seen questions, in plain one-line prints (never wrapped)."""
    if plan.without_record:
        print(f"warning: {', '.join(plan.without_record)}: no record of the questions seen in training "
              "(made by an older version); they may be scored on them (see --exclude-run)", file=sys.stderr)
    if plan.excluded:
        print(f"excluded {len(plan.excluded)} question(s) the expert(s) saw in training (--include-seen scores them)")
    if plan.answered_seen:
        print(f"answered {len(plan.answered_seen)} question(s) the expert(s) saw in training, for a complete submission "
              f"(not scored): {' '.join(plan.answered_seen)}")


@app.command("report")
def report_(
    results: List[Path] = typer.Argument(..., help="Results JSON files of t2 eval, one row each, in this order."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for report.md, report.json and chart.png."),
    protocol: str = typer.Option("letter", "--protocol", help="Which predictions to compare: letter or generate."),
    base: str = typer.Option("base", "--base", help="Label of the row that paired differences are taken against."),
    quote: Optional[str] = typer.Option(None, "--quote", help="Add published numbers as separately marked rows: seed."),
    chart: bool = typer.Option(True, "--chart/--no-chart", help="Also draw chart.png (needs matplotlib)."),
) -> None:
    """Compare systems: Markdown table with 95 % CIs, predicted letters, paired differences, bar chart."""
    from .report.comparison import load_results
    from .report.tables import comparison_table, write_report

    comp = write_report([(str(p), load_results(p)) for p in results], out, protocol, base, quote, chart)
    console.print(comparison_table(comp))
    console.print(f"report: {out / 'report.md'}" + (f"\nchart: {out / 'chart.png'}" if chart else ""))


def _stage_line(kind: str, stage: str, i: int, n: int, info: dict) -> None:
    """One line of progress per recipe stage."""
    if kind == "start":
        err.print(f"[{i}/{n}] {stage} ...")
        return
    if kind == "skip":
        console.print(f"[{i}/{n}] {stage}: complete, skipped")
        return
    got = info.get("info", {})
    if "counts" in got:
        detail = " · ".join(f"{k} {v}" for k, v in got["counts"].items())
    elif "best_val" in got and got["best_val"] is not None:
        detail = f"best val. acc. {got['best_val']:.3f} (step {got['best_step']}/{got['steps_done']})"
    elif got.get("accuracy") is not None:
        detail = f"{100 * got['accuracy']:.1f} % of {got['n']}"
    else:
        detail = ""
    secs = info["seconds"]
    console.print(f"[{i}/{n}] {stage}: done in {int(secs // 60)}m{secs % 60:04.1f}s" + (f" — {detail}" if detail else ""))


@recipe_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def recipe_run(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Recipe YAML (recipes/vmlu-smollm2.yaml, ...)."),
    data: Optional[str] = typer.Option(None, "--data", help="Data folder/file or hub id (sets data.path)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output folder (default: runs/<name>)."),
) -> None:
    """Run every stage not yet complete (a rerun resumes); any recipe key works as --section.key value."""
    import json

    from .report.comparison import compare, load_results
    from .recipe.config import load_recipe
    from .recipe.runner import run_recipe
    from .report.tables import comparison_table, pass1_screen

    cfg = load_recipe(file, list(ctx.args), data, out)
    done = run_recipe(cfg, _stage_line)
    named = [(f, load_results(f)) for f in done["report"]["info"]["files"]]  # the same numbers as report.md
    comp = compare(named, cfg.eval.protocol, "base", None, cfg.report.n_boot)
    console.print(comparison_table(comp))
    gen = cfg.out_dir() / "generations.json"
    if gen.is_file():
        for row in json.loads(gen.read_text(encoding="utf-8")):
            console.print(f"\n[bold]{row['prompt']}[/bold]")
            for label, text in row["answers"].items():
                console.print(f"  {label}: {text.strip()!r}")
    console.print(f"\nreport: {cfg.out_dir() / 'report' / 'report.md'}\nchart: {cfg.out_dir() / 'report' / 'chart.png'}")
    for part in pass1_screen(comp):  # the last screen: routing per strategy, and whether anything beat base
        console.print(part)


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config.yaml, split.json, metrics.jsonl, best/, latest/)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task name (vmlu, mmlu, mcq, rg, ...)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Built-in name, local folder or hub id."),
    num_layers: Optional[int] = LAYERS,
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Model dtype: float32, bfloat16, float16."),
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    subset: Optional[str] = typer.Option(None, "--subset", help="category=STEM, subject=28,29, ..."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file of TrainConfig keys."),
    steps: Optional[int] = typer.Option(None, "--steps"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch (prompts per step)."),
    micro_batch_size: Optional[int] = typer.Option(None, "--micro-batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    kl: Optional[float] = typer.Option(None, "--kl", help="λ of the KL penalty to the base model."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    eval_every: Optional[int] = typer.Option(None, "--eval-every"),
    label: Optional[str] = typer.Option(None, "--label"),
    description: Optional[str] = typer.Option(None, "--description", help="One sentence used by dispatch."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/latest with optimizer and RNG state."),
    experts: Optional[List[Path]] = typer.Option(None, "--experts", help="--task route: the expert folders to route "
                                                 "between (a classification expert for --strategy cls)."),
) -> None:
    """Train an SVF expert with REINFORCE; any other TrainConfig key works as --key value."""
    from . import distributed
    from .training.train import configure, run

    named = {"task": task, "model": model, "dtype": dtype, "data": data, "subset": subset, "steps": steps, "batch_size": batch_size,
             "micro_batch_size": micro_batch_size, "lr": lr, "kl": kl, "seed": seed, "eval_every": eval_every,
             "label": label, "description": description}
    cfg = configure(out, config, named, list(ctx.args), resume, experts or [], num_layers)
    summary = run(cfg, out, resume=resume)
    if not distributed.is_main():  # data parallel: rank 0 reports
        return
    console.print(f"best validation accuracy {summary['best_val']:.4f} at step {summary['best_step']} "
                  f"({summary['steps_done']} steps{', stopped early' if summary['stopped_early'] else ''})\n"
                  f"expert: {out / 'best'}")


@app.command("baseline", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def baseline_(
    ctx: typer.Context,
    method: Optional[str] = typer.Argument(None, help="PEFT method: lora (default) or ia3."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config.yaml, split.json, metrics.jsonl, best/, latest/)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Multiple-choice task (vmlu, mmlu, mcq)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Built-in name, local folder or hub id."),
    data: Optional[str] = typer.Option(None, "--data", help="Local folder/file or Hugging Face dataset id."),
    subset: Optional[str] = typer.Option(None, "--subset", help="category=STEM, subject=28,29, ..."),
    preset: Optional[str] = typer.Option(None, "--preset", help="vmlu (r 8, all projections, lr 2e-4, 5 epochs) or paper (r 16, q/v)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Cap on optimisation steps (quick checks)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file of BaselineConfig keys."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/latest with optimizer and RNG state."),
) -> None:
    """Train a LoRA or IA3 baseline on the experts' split; any other BaselineConfig key works as --key value."""
    from .baselines.peft_train import configure, run

    named = {"method": method, "task": task, "model": model, "data": data, "subset": subset, "preset": preset,
             "steps": steps}
    cfg = configure(out, config, named, list(ctx.args), resume)
    summary = run(cfg, out, resume=resume)
    console.print(f"best validation accuracy {summary['best_val']:.4f} at step {summary['best_step']} "
                  f"({summary['steps_done']} of {summary['total_steps']} steps)\nadapter: {out / 'best'}")


@expert_app.command("show")
def expert_show(folder: Path = typer.Argument(..., help="Expert folder.")) -> None:
    """Print an expert's metadata."""
    from .experts.expert import Expert

    e = Expert.load(folder)
    m = e.meta
    console.print(f"label: {m.label}\ndescription: {m.description}\nbase model: {m.base_model} ({m.fingerprint})\n"
                  f"targets: {len(m.targets)}, parameters: {e.n_params:,}, parametrisation: {m.parametrisation}\n"
                  f"task: {m.task}\nmetrics: {m.metrics}\n"
                  + (f"seen: {e.seen.numel():,} question(s) ({', '.join(m.seen.get('parts', [])) or 'none'}), "
                     "left out of evaluations" if e.seen is not None else "seen: no record (older expert)"))


@app.command("serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve_(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of ServeConfig keys (flags override it)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Built-in name, local folder or hub id."),
    expert: Optional[List[Path]] = typer.Option(None, "--experts", "--expert", "-e", help="Expert folders: --experts A B."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Pass 1 of model t2: prompt, cls, fewshot, uniform."),
    cls_expert: Optional[Path] = typer.Option(None, "--cls-expert", help="cls: the classification expert folder."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="TCP port (default 8000; 0: any free one)."),
) -> None:
    """OpenAI-compatible server that adapts every request (other ServeConfig keys as --key value)."""
    from .config import load_config
    from .serve import ServeConfig, serve

    named = {"model": model, "strategy": strategy, "cls_expert": cls_expert, "host": host, "port": port,
             "experts": ",".join(map(str, expert)) if expert else None}
    flags = [x for k, v in named.items() if v is not None for x in (f"--{k}", str(v))]
    cfg = load_config(ServeConfig, config, flags + list(ctx.args))
    serve(cfg, ready=lambda url: err.print(f"serving {url}", highlight=False, soft_wrap=True))


def _export_merged(cfg: Any) -> None:
    from .interop.runs import run_export_merged

    folder = run_export_merged(cfg)
    console.print(f"merged checkpoint: {folder}" + (f" (pushed to {cfg.push_to_hub})" if cfg.push_to_hub else ""))


def _export_lora(cfg: Any) -> None:
    from .interop.runs import run_export_lora

    rep = run_export_lora(cfg)
    worst = max(rep.rel_error, key=rep.rel_error.get)
    console.print(f"LoRA adapter r={rep.rank} ({rep.n_params:,} parameters): {rep.out_dir}\n"
                  f"relative error ||dW - dW_R||/||dW||: {rep.overall:.4f} overall, "
                  f"worst {rep.rel_error[worst]:.4f} ({worst})" + (f"\npushed to {cfg.push_to_hub}" if cfg.push_to_hub else ""))


def _lm_eval(cfg: Any) -> None:
    from lm_eval.utils import make_table

    from .interop.runs import run_lm_eval

    console.print(make_table(run_lm_eval(cfg)))
    if cfg.output:
        console.print(f"results: {cfg.output}")


command(export_app, "merged", ExportMergedRun, _export_merged, help="A standalone Hugging Face checkpoint with the "
        "experts' W' merged in, plus a model card (streamed shard by shard).")
command(export_app, "lora", ExportLoraRun, _export_lora, help="The expert's best rank-R update ΔW per target, as a "
        "PEFT LoRA adapter.")
command(app, "lm-eval", LmEvalRun, _lm_eval, help="Run lm-evaluation-harness tasks with the base model, an expert or "
        "a fixed mixture.")


def _click_errors() -> tuple[type[Exception], type[Exception]]:
    """(ClickException, NoArgsIsHelpError) of the click that typer runs on (typer ≥ 0.22 vendors its own)."""
    try:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
    except ImportError:  # older typer on plain click
        from click.exceptions import ClickException, NoArgsIsHelpError
    return ClickException, NoArgsIsHelpError


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2 (a traceback only with --debug).

    Typed library errors (T2Error) and click usage errors (unknown option, bad value, missing or
    extra argument) exit 2; an operating-system failure (disk full, permission) exits 1, also in
    one line; anything else is a bug and keeps its traceback.
    """
    args = _expand_multi(normalise(sys.argv[1:] if argv is None else list(argv)))
    debug = "--debug" in args
    click_error, no_args_help = _click_errors()
    try:
        code = app(args=args, prog_name="t2", standalone_mode=False)
        if "transformer_squared.distributed" in sys.modules:  # torchrun / accelerate launch: leave the group
            sys.modules["transformer_squared.distributed"].shutdown()
    except T2Error as e:
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except no_args_help as e:  # `t2` or `t2 export` alone: the help text
        e.show()
        sys.exit(0)
    except click_error as e:
        if debug:
            raise
        hint = ""
        ctx = getattr(e, "ctx", None)
        if ctx is not None:
            hint = f" (try '{ctx.command_path} --help')"
        print(f"error: {_one_line(e.format_message()).rstrip('.')}{hint}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2) or 2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except OSError as e:
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(1)
    if isinstance(code, int) and code:  # typer.Exit(n) returns n when not standalone
        sys.exit(code)


if __name__ == "__main__":
    main()
