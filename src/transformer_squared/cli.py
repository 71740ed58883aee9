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
