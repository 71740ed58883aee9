"""Soak test: 2,000 requests, each with its own mixture of several experts, through the Python API.

Requests go to one `AdaptedModel` with K experts in calls of `--batch` prompts; each request gets its
own α (one expert, a random mixture, or none = the base weights), half the calls score option letters
and half generate a few tokens, and calls alternate between mixed batches (factored, one mixture per
row) and grouped execution (merged per mixture). Passes when no request fails and the process's RSS
after warm-up (the first 10 % of requests) grows by less than 10 %.

    nice -n 15 python benchmarks/soak.py [--model smollm2-135m-instruct] [--n 2000] [--out results/soak.txt]

The experts are synthetic (seeded noise on the reference initialisation), made for the chosen model in a
temporary folder, so the run needs nothing but the model.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import psutil
import torch

from transformer_squared.experts.adapted import load_adapted
from transformer_squared.experts.expert import Expert, attach
from transformer_squared.models.load import load_model, model_id

LETTERS = ("A", "B", "C", "D")


def make_experts(model_name: str, k: int, folder: Path, targets: str) -> list[Path]:
    """K synthetic experts for `model_name` on `targets`: the reference init plus seeded N(0, 1) noise on p."""
    model, _ = load_model(model_name, device="cpu")
    svf = attach(model, targets=targets)
    out = []
    for i in range(k):
        e = Expert.init(svf.factors, model_id(model), svf.fingerprint, seed=i, label=f"e{i}")
        g = torch.Generator().manual_seed(1000 + i)
        e.p = {t: p + torch.randn(p.shape, generator=g) for t, p in e.p.items()}
        out.append(e.save(folder / f"e{i}"))
    return out


def prompt(rng: random.Random, i: int) -> str:
    a, b = rng.randint(1, 999), rng.randint(1, 999)
    filler = " ".join(rng.choice(["please", "answer", "briefly", "carefully", "now"]) for _ in range(rng.randint(0, 40)))
    return f"Request {i}: {filler} What is {a} + {b}?\nA. {a + b}\nB. {a - b}\nC. {a * b}\nD. {b}\nAnswer:"


def alpha_row(rng: random.Random, k: int) -> list[float]:
    kind = rng.random()
    if kind < 0.4:  # one expert
        row = [0.0] * k
        row[rng.randrange(k)] = 1.0
        return row
    if kind < 0.9:  # a mixture
        w = [rng.random() for _ in range(k)]
        return [x / sum(w) for x in w]
    return [0.0] * k  # the base weights


def rss() -> int:
    return psutil.Process().memory_info().rss


def soak(am, n: int, batch: int, new_tokens: int, seed: int) -> dict:
    rng = random.Random(seed)
    k = len(am.experts)
    warm_n, samples, failures = max(1, n // 10), [], []
    warm_rss = None
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        size = min(batch, n - start)
        prompts = [prompt(rng, start + j) for j in range(size)]
        alpha = torch.tensor([alpha_row(rng, k) for _ in range(size)])  # (size, K)
        call = start // batch
        mixed = call % 2 == 0
        try:
            if call % 4 < 2:
                greedy, logp = am.score_letters(prompts, [LETTERS] * size, alpha, mixed, batch)
                assert len(logp) == size and all(torch.isfinite(x).all() for x in logp)
            else:
                texts = am.generate(prompts, new_tokens, alpha, mixed, chat=False, batch_size=batch)
                assert len(texts) == size
        except Exception as e:  # a failed request is counted, and the soak goes on
            failures.append(f"requests {start}-{start + size - 1}: {type(e).__name__}: {e}"[:300])
        done = start + size
        if warm_rss is None and done >= warm_n:
            gc.collect()
            warm_rss = rss()
        samples.append((done, rss()))
    gc.collect()
    final = rss()
    after = [r for d, r in samples if d >= warm_n] + [final]
    return {"seconds": time.perf_counter() - t0, "warm_rss": warm_rss, "final_rss": final, "peak_rss": max(after),
            "failures": failures, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--experts", type=int, default=3, help="number of synthetic experts")
    ap.add_argument("--n", type=int, default=2000, help="requests")
    ap.add_argument("--batch", type=int, default=8, help="requests per call")
    ap.add_argument("--new-tokens", type=int, default=4, help="tokens generated per generation request")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", default="mlp", help="expert targets: mlp, attn, all or a regex (fewer = cheaper merges)")
    ap.add_argument("--out", type=Path, default=Path("results/soak.txt"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_experts(args.model, args.experts, Path(tmp), args.targets)
        am = load_adapted(args.model, experts=folders, device="cpu")
        load_before = os.getloadavg()
        r = soak(am, args.n, args.batch, args.new_tokens, args.seed)
    growth = (r["final_rss"] - r["warm_rss"]) / r["warm_rss"]
    peak_growth = (r["peak_rss"] - r["warm_rss"]) / r["warm_rss"]
    ok = not r["failures"] and peak_growth < 0.10
    mb = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
    lines = [
        f"# benchmarks/soak.py --model {args.model} --experts {args.experts} --n {args.n} --batch {args.batch} "
        f"--new-tokens {args.new_tokens} --seed {args.seed} --targets '{args.targets}'",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), float32 on CPU; load average at start "
        f"{load_before[0]:.1f}, at end {os.getloadavg()[0]:.1f}",
        f"requests: {args.n} ({args.experts} experts, a mixture per request: 40 % one expert, 50 % a random "
        f"mixture, 10 % base), half letter scoring, half generation of {args.new_tokens} tokens; calls alternate "
        f"mixed batches (factored) and grouped (merged)",
        f"time: {r['seconds']:.1f} s ({args.n / r['seconds']:.1f} requests/s)",
        f"failed requests: {len(r['failures'])}" + (f" (first: {r['failures'][0]})" if r["failures"] else ""),
        f"RSS after warm-up ({max(1, args.n // 10)} requests): {mb(r['warm_rss'])}; at the end: {mb(r['final_rss'])} "
        f"({growth:+.1%}); peak after warm-up: {mb(r['peak_rss'])} ({peak_growth:+.1%}); limit +10 %",
        "RSS every 200 requests (MiB): " + ", ".join(f"{d}: {b / 2**20:.0f}" for d, b in r["samples"] if d % 200 == 0),
        f"verdict: {'PASS' if ok else 'FAIL'}",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
