"""Two-pass inference from Python: load a base model with experts and a strategy, answer a list of
mixed prompts in one call, and show which expert each prompt was routed to.

    python examples/inference.py --experts runs/math/best runs/code/best [--strategy prompt]

The model and experts can also come from T2_MODEL and T2_EXPERTS (folders separated by ':').
"""

import argparse
import os

from transformer_squared.adapt import Pipeline
from transformer_squared.experts.adapted import load_adapted

PROMPTS = ["What is 17 + 25?", "Write a Python function that reverses a string.", "Who painted the Mona Lisa?"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("T2_MODEL", "smollm2-135m-instruct"))
    ap.add_argument("--experts", nargs="+", default=[e for e in os.environ.get("T2_EXPERTS", "").split(":") if e])
    ap.add_argument("--strategy", default="prompt", help="prompt, cls, fewshot, oracle or uniform")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args(argv)
    am = load_adapted(args.model, experts=args.experts)  # checks every expert fits the base weights
    pipeline = Pipeline(am, args.strategy)  # pass 1: the strategy; pass 2: each prompt with its mixture
    for prompt, answer in zip(PROMPTS, pipeline.generate(PROMPTS, max_new_tokens=args.max_new_tokens)):
        print(f"[{answer.expert}] {prompt}\n    {answer.text.strip()}")
    print(f"pass 1 {pipeline.timing.pass1:.2f} s, pass 2 {pipeline.timing.pass2:.2f} s")


if __name__ == "__main__":
    main()
