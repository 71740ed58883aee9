"""The `t2` command: a thin table from subcommand to library function (as in litgpt).

Typed library errors become one line on stderr and exit code 2 (a traceback only with --debug).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from .errors import T2Error
from .models import DEFAULT_MODEL

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Transformer²: SVF experts and self-adaptive inference.")
expert_app = typer.Typer(no_args_is_help=True, help="Create and inspect experts.")
app.add_typer(expert_app, name="expert")
console = Console()
err = Console(stderr=True)

MODEL = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Built-in name, local folder or hub id.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps.")
DTYPE = typer.Option("float32", "--dtype", help="Model dtype: float32, bfloat16, float16.")
TRUST = typer.Option(False, "--trust-remote-code", help="Run code shipped with the model (off by default).")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    if not verbose:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()


@app.command()
def decompose(
    model: str = MODEL,
    targets: str = typer.Option("mlp", "--targets", help="mlp, attn, all, or a regex over module names."),
    device: str = DEVICE,
    factor_dtype: str = typer.Option("float32", "--factor-dtype", help="Dtype of cached factors: float32 or bfloat16."),
    trust_remote_code: bool = TRUST,
) -> None:
    """Decompose the target weights once and cache U, s, V (resumable)."""
    from .models import load_model
    from .svd import decompose as run

    m, _ = load_model(model, device=device, trust_remote_code=trust_remote_code)
    folder = run(m, targets, device=None if device == "auto" else device, dtype=factor_dtype)
    console.print(f"SVD cache: {folder}")


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="The user message."),
    model: str = MODEL,
    expert: Optional[List[Path]] = typer.Option(None, "--expert", "-e", help="Expert folder(s); several are mixed."),
    alpha: Optional[List[float]] = typer.Option(None, "--alpha", help="Mixture weight per expert (default: equal)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    no_chat: bool = typer.Option(False, "--no-chat", help="Send the prompt raw, without the chat template."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    trust_remote_code: bool = TRUST,
) -> None:
    """Generate an answer with the base model or an adapted one."""
    from .adapted import load_adapted

    am = load_adapted(model, experts=expert or [], alpha=alpha, device=device, dtype=dtype,
                      trust_remote_code=trust_remote_code)
    console.print(am.generate([prompt], max_new_tokens=max_new_tokens, chat=not no_chat)[0])


@app.command("eval")
def eval_(
    task: str = typer.Option(..., "--task", "-t", help="Task name (vmlu, mmlu, mcq, gsm8k, ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Results JSON (resumes from OUT.partial.json)."),
    model: str = MODEL,
    data: Optional[str] = typer.Option(None, "--data", help="Local folder/file or Hugging Face dataset id."),
    split: str = typer.Option("valid", "--split"),
    expert: Optional[List[Path]] = typer.Option(None, "--expert", "-e", help="Expert folder(s); several are mixed."),
    alpha: Optional[List[float]] = typer.Option(None, "--alpha", help="Mixture weight per expert (default: equal)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate at most N questions."),
    sample: str = typer.Option("first", "--sample", help="How --limit picks: first or stratified (by subject, seeded)."),
    seed: int = typer.Option(0, "--seed"),
    protocol: str = typer.Option("both", "--protocol", help="generate, letter or both (one forward pass gives both)."),
    chat: bool = typer.Option(False, "--chat", help="Wrap prompts in the chat template (VMLU's official: off)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Prompts per forward pass (halved on out-of-memory)."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Generation budget of generative tasks."),
    submission: Optional[Path] = typer.Option(None, "--submission", help="Write the id,answer CSV (unlabelled test split)."),
    submission_protocol: str = typer.Option("letter", "--submission-protocol", help="generate or letter."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    trust_remote_code: bool = TRUST,
) -> None:
    """Evaluate a task with the base model, an expert or a fixed mixture."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from .adapted import load_adapted
    from .evaluate import EvalConfig, evaluate
    from .report import eval_table

    cfg = EvalConfig(task=task, data=data, split=split, protocol=protocol, chat=chat, limit=limit, sample=sample,
                     seed=seed, batch_size=batch_size, max_new_tokens=max_new_tokens,
                     submission_protocol=submission_protocol)
    am = load_adapted(model, experts=expert or [], alpha=alpha, device=device, dtype=dtype,
                      trust_remote_code=trust_remote_code)
    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        job = bar.add_task(f"{task} {split}", total=None)
        results = evaluate(am, cfg, out, submission, progress=lambda n: bar.advance(job, n),
                           total=lambda n: bar.update(job, total=n))
    console.print(eval_table(results))
    console.print(f"results: {out}" + (f"\nsubmission: {submission}" if submission else ""))


@app.command("eval")
def eval_(
    task: str = typer.Option(..., "--task", "-t", help="Task name (vmlu, mmlu, mcq, gsm8k, ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Results JSON (resumes from OUT.partial.json)."),
    model: str = MODEL,
    data: Optional[str] = typer.Option(None, "--data", help="Local folder/file or Hugging Face dataset id."),
    split: str = typer.Option("valid", "--split"),
    expert: Optional[List[Path]] = typer.Option(None, "--expert", "-e", help="Expert folder(s); several are mixed."),
    alpha: Optional[List[float]] = typer.Option(None, "--alpha", help="Mixture weight per expert (default: equal)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate at most N questions."),
    sample: str = typer.Option("first", "--sample", help="How --limit picks: first or stratified (by subject, seeded)."),
    seed: int = typer.Option(0, "--seed"),
    protocol: str = typer.Option("both", "--protocol", help="generate, letter or both (one forward pass gives both)."),
    chat: bool = typer.Option(False, "--chat", help="Wrap prompts in the chat template (VMLU's official: off)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Prompts per forward pass (halved on out-of-memory)."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Generation budget of generative tasks."),
    submission: Optional[Path] = typer.Option(None, "--submission", help="Write the id,answer CSV (unlabelled test split)."),
    submission_protocol: str = typer.Option("letter", "--submission-protocol", help="generate or letter."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    trust_remote_code: bool = TRUST,
) -> None:
    """Evaluate a task with the base model, an expert or a fixed mixture."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from .adapted import load_adapted
    from .evaluate import EvalConfig, evaluate
    from .report import eval_table

    cfg = EvalConfig(task=task, data=data, split=split, protocol=protocol, chat=chat, limit=limit, sample=sample,
                     seed=seed, batch_size=batch_size, max_new_tokens=max_new_tokens,
                     submission_protocol=submission_protocol)
    am = load_adapted(model, experts=expert or [], alpha=alpha, device=device, dtype=dtype,
                      trust_remote_code=trust_remote_code)
    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        job = bar.add_task(f"{task} {split}", total=None)
        results = evaluate(am, cfg, out, submission, progress=lambda n: bar.advance(job, n),
                           total=lambda n: bar.update(job, total=n))
    console.print(eval_table(results))
    console.print(f"results: {out}" + (f"\nsubmission: {submission}" if submission else ""))


@expert_app.command("init")
def expert_init(
    out: Path = typer.Option(..., "--out", help="Folder to write the expert into."),
    model: str = MODEL,
    targets: str = typer.Option("mlp", "--targets"),
    label: str = typer.Option("", "--label"),
    description: str = typer.Option("", "--description"),
    parametrisation: str = typer.Option("sigmoid", "--parametrisation", help="sigmoid (reference) or linear."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DEVICE,
) -> None:
    """Write an untrained expert with the reference initialisation."""
    from .expert import Expert, attach
    from .models import load_model, model_id

    m, _ = load_model(model, device=device)
    svf = attach(m, targets=targets)
    e = Expert.init(svf.factors, model_id(m), svf.fingerprint, parametrisation, seed, label, description)
    e.save(out)
    console.print(f"expert with {e.n_params:,} parameters over {len(e.p)} targets: {out}")


@expert_app.command("show")
def expert_show(folder: Path = typer.Argument(..., help="Expert folder.")) -> None:
    """Print an expert's metadata."""
    from .expert import Expert

    e = Expert.load(folder)
    m = e.meta
    console.print(f"label: {m.label}\ndescription: {m.description}\nbase model: {m.base_model} ({m.fingerprint})\n"
                  f"targets: {len(m.targets)}, parameters: {e.n_params:,}, parametrisation: {m.parametrisation}\n"
                  f"task: {m.task}\nmetrics: {m.metrics}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning T2Error into one line and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    try:
        app(args=args, standalone_mode=False)
    except T2Error as e:
        if "--debug" in args:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
