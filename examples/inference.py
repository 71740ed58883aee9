"""Two-pass inference from Python: load a base model with experts and a strategy, answer a list of
mixed prompts in one call, and show which expert each prompt was routed to.

    python examples/inference.py                       # after `make demo`: the experts it trained
    python examples/inference.py --experts runs/math/best runs/code/best [--strategy prompt]

The model and experts can also come from T2_MODEL and T2_EXPERTS (folders separated by ':'); without
either, the experts are those `make demo` left under runs/demo/experts/ (another demo folder: --demo or T2_DEMO).
"""

import argparse
import os
import sys
from pathlib import Path

from transformer_squared.adapt import Pipeline
from transformer_squared.errors import T2Error
from transformer_squared.experts.adapted import load_adapted

PROMPTS = ["What is 17 + 25?", "Write a Python function that reverses a string.", "Who painted the Mona Lisa?"]
DEMO_DIR = Path(__file__).resolve().parents[1] / "runs" / "demo"  # where `make demo` writes


def demo_experts(demo_dir: Path) -> list[str]:
    """The category experts a finished `make demo` trained: <demo_dir>/experts/<category>/best/."""
    return sorted(str(p.parent) for p in demo_dir.glob("experts/*/best/expert.json"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("T2_MODEL", "smollm2-135m-instruct"))
    ap.add_argument("--experts", nargs="+", default=[e for e in os.environ.get("T2_EXPERTS", "").split(":") if e])
    ap.add_argument("--demo", type=Path, default=Path(os.environ.get("T2_DEMO", DEMO_DIR)),
                    help="the `make demo` output folder whose experts are used when --experts is not given")
    ap.add_argument("--strategy", default="prompt", help="prompt, cls, fewshot, oracle or uniform")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args(argv)
    experts = args.experts or demo_experts(args.demo)
    if not experts:
        print(f"no experts to route between: run `make demo` first (it trains them under {args.demo}/experts/), "
              "or pass --experts DIR [DIR ...]", file=sys.stderr)
        return 2
    try:
        am = load_adapted(args.model, experts=experts)  # checks every expert fits the base weights
        pipeline = Pipeline(am, args.strategy)  # pass 1: the strategy; pass 2: each prompt with its mixture
        answers = pipeline.generate(PROMPTS, max_new_tokens=args.max_new_tokens)
    except T2Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for prompt, answer in zip(PROMPTS, answers):
        print(f"[{answer.expert}] {prompt}\n    {answer.text.strip()}")
    print(f"pass 1 {pipeline.timing.pass1:.2f} s, pass 2 {pipeline.timing.pass2:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
