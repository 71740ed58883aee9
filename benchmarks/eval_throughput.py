"""Throughput of `t2 eval` on VMLU questions against the old per-question loop and the forward-pass ceiling.

    python benchmarks/eval_throughput.py [--data ../shared/data/vmlu] [--n 200] [--model smollm2-135m-instruct]

(a) ours: `evaluate()` with the letter protocol (the same pass also gives `generate`);
(b) the loop of tuyentn/self-adaptive-llm: HF `generate`, batch 1, max_new_tokens=5, first letter;
(c) the ceiling: a bare forward pass over the same prompts, pre-tokenized and pre-padded in
    length-sorted batches, logits for the last position only, at the best batch size.
Times are the best of `--repeats` runs (the machine may be shared); prompt tokens exclude padding.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from transformer_squared.models import engine
from transformer_squared.experts.adapted import AdaptedModel
from transformer_squared.evaluation.evaluate import EvalConfig, evaluate
from transformer_squared.models.load import load_model
from transformer_squared.tasks import get_task

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "vmlu"


def ceiling(model, batches: list[dict[str, torch.Tensor]]) -> float:
    """Seconds for bare forward passes over pre-built batches (last-position logits only)."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(**b, logits_to_keep=1, use_cache=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def build_batches(ids: list[list[int]], batch_size: int, pad: int, device) -> list[dict[str, torch.Tensor]]:
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    return [engine.pad_left([ids[i] for i in order[s : s + batch_size]], pad, device)
            for s in range(0, len(order), batch_size)]


def best_of(fn, repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def search_batch_size(model, ids: list[list[int]], sizes: list[int], pad: int, repeats: int) -> dict[int, float]:
    """Prompt tokens/s of the bare forward pass at each batch size."""
    device = next(model.parameters()).device
    rates = {}
    for bs in sizes:
        batches = build_batches(ids, bs, pad, device)
        rates[bs] = sum(map(len, ids)) / best_of(lambda: ceiling(model, batches), repeats)
    return rates


def old_loop(model, tok, prompts: list[str], letters: list[tuple[str, ...]]) -> tuple[float, list[str], list[str]]:
    """tuyentn/self-adaptive-llm's loop: one prompt at a time, 5 new tokens, the first letter of the reply
    ("" when that character is not a valid option letter, as in our parser); also its first token's text."""
    preds, first = [], []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p, valid in zip(prompts, letters):
            enc = tok(p, return_tensors="pt").to(model.device)
            gen = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
            new = gen[0, enc["input_ids"].shape[1]:]  # (5,)
            first.append(tok.decode(new[:1]))
            text = tok.decode(new, skip_special_tokens=True).strip()
            preds.append(text[:1].upper() if text[:1].upper() in valid else "")
    return time.perf_counter() - t0, preds, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="VMLU folder (dev/valid/test.jsonl)")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--n", type=int, default=200, help="questions")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-sizes", default="1,4,8,16", help="candidates for the ceiling's best batch size")
    ap.add_argument("--search-n", type=int, default=32, help="questions used to pick the best batch size")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    model, tok = load_model(args.model, device=args.device)
    device = next(model.parameters()).device
    task = get_task("vmlu")
    examples = task.load(args.data, args.split)[: args.n]
    prompts = task.format(examples, tok)
    ids = engine.tokenize(tok, prompts)
    n_tok = sum(len(x) for x in ids)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    print(f"model {args.model} · {len(examples)} VMLU {args.split} questions · {n_tok} prompt tokens "
          f"(mean {n_tok / len(ids):.0f}) · {name} · {platform.platform()} · load avg {os.getloadavg()[0]:.1f}")

    rates = search_batch_size(model, ids[: args.search_n], [int(b) for b in args.batch_sizes.split(",")],
                              tok.pad_token_id, args.repeats)
    for bs, rate in rates.items():
        print(f"  ceiling search: batch {bs:>3}: {rate:8.1f} prompt tokens/s")
    best = max(rates, key=rates.get)

    am = AdaptedModel(model, tok)
    cfg = EvalConfig(task="vmlu", data=args.data, split=args.split, limit=args.n, protocol="both", batch_size=best)
    results = {}

    def ours() -> float:
        t0 = time.perf_counter()
        results["r"] = evaluate(am, cfg)
        return time.perf_counter() - t0

    batches = build_batches(ids, best, tok.pad_token_id, device)
    t_c, t_a = float("inf"), float("inf")
    for _ in range(args.repeats):  # interleaved, so a busy moment on a shared machine hits both alike
        t_c = min(t_c, ceiling(model, batches))
        t_a = min(t_a, ours())
    t_b, old_preds, old_first = old_loop(model, tok, prompts, [e.letters for e in examples])
    ours_gen = [r["prediction"]["generate"] for r in results["r"]["predictions"]]
    agree = sum(a == b for a, b in zip(ours_gen, old_preds)) / len(prompts)
    ours_first = [r["completion"] for r in results["r"]["predictions"]]
    same_token = sum(a == b for a, b in zip(ours_first, old_first)) / len(prompts)
    blank = [i for i, t in enumerate(ours_first) if not t.strip()]
    agree_rest = [ours_gen[i] == old_preds[i] for i in range(len(prompts)) if i not in set(blank)]

    q = len(prompts)
    print(f"(a) ours (t2 eval, letter+generate, batch {best}): {q / t_a:7.2f} questions/s  {n_tok / t_a:8.1f} prompt tokens/s")
    print(f"(b) old loop (HF generate, batch 1, 5 tokens):    {q / t_b:7.2f} questions/s  {n_tok / t_b:8.1f} prompt tokens/s")
    print(f"(c) ceiling (bare forward, batch {best}):          {q / t_c:7.2f} questions/s  {n_tok / t_c:8.1f} prompt tokens/s")
    print(f"ours / ceiling = {t_c / t_a:.1%}   ours / old loop = {t_b / t_a:.2f}x")
    print(f"first generated token: ours (batched, padded) = old loop's (batch 1) for {same_token:.1%} of questions")
    print(f"letter: our `generate` protocol (1 greedy token, VMLU's official reading) = old loop's first letter of 5 "
          f"tokens for {agree:.1%}; the first token is whitespace for {len(blank)}/{len(prompts)} questions "
          f"(ours then reads no letter, the 5-token loop reads the next one); on the other "
          f"{len(agree_rest)}: {sum(agree_rest) / max(1, len(agree_rest)):.1%}")
    print(f"letter accuracy {results['r']['metrics']['letter']['weighted_average']:.3f}, "
          f"generate accuracy {results['r']['metrics']['generate']['weighted_average']:.3f} · load avg {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
