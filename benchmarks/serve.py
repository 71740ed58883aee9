"""Throughput, latency and memory of `t2 serve` with 1, 2, 4 and 8 distinct experts in flight versus the
base model without experts, in one run against one server on the loopback interface.

    python benchmarks/serve.py [--model smollm2-135m-instruct] [--clients 16] [--per-point 128]
                               [--requests 2000] [--max-tokens 32] [--out results/serve.txt]

N concurrent clients send greedy chat requests (each its own prompt, `--max-tokens` new tokens) until
`--per-point` requests have been answered; a point with k experts sends them round robin over k
experts, so every batch mixes up to k mixtures. Reported per point: completion tokens/s, requests/s,
p50/p95 latency, and the ratio of tokens/s to the base model's. Then the server's resident memory
(RSS) before and after `--requests` more requests over all experts. Random experts (seeded noise on
the reference init) stand in for trained ones: the cost does not depend on their values. Every
phase stops by itself: at its request count or at `--time-limit` seconds for the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src"


def make_experts(model_name: str, k: int, folder: Path, dtype: str) -> list[str]:
    """k random experts for the model, saved under folder (labels e0..e{k-1})."""
    from transformer_squared.experts.expert import Expert, attach
    from transformer_squared.models.load import load_model, model_id

    model, _ = load_model(model_name, device="cpu", dtype=dtype)
    svf = attach(model)
    out = []
    for i in range(k):
        e = Expert.init(svf.factors, model_id(model), svf.fingerprint, seed=i, label=f"e{i}", description=f"expert {i}")
        g = torch.Generator().manual_seed(1000 + i)
        e.p = {t: p + 0.5 * torch.randn(p.shape, generator=g) for t, p in e.p.items()}
        out.append(str(e.save(folder / f"e{i}")))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def load(url: str, models: list[str], n: int, clients: int, max_tokens: int, deadline: float) -> dict:
    """n requests from `clients` threads, round robin over `models`; tokens/s, requests/s, latencies."""
    lat: list[float] = []
    tokens = [0]
    next_i = [0]
    failed: list[str] = []  # one line per request that got no answer
    lock = threading.Lock()

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= n:
                return
            body = {"model": models[i % len(models)], "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": f"Request {i}: write a short story about the number {i}."}]}
            t0 = time.perf_counter()
            try:
                r = post(f"{url}/chat/completions", body, timeout=max(1.0, deadline - time.monotonic()))
            except OSError as e:  # TimeoutError, URLError: the time limit cut the request, or the server failed
                with lock:
                    failed.append(f"{type(getattr(e, 'reason', e)).__name__}: {getattr(e, 'reason', e)}")
                return
            with lock:
                lat.append(time.perf_counter() - t0)
                tokens[0] += r["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 5)
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=20) if len(lat) >= 2 else [float("nan")] * 19
    if failed:
        cut = "cut by --time-limit" if time.monotonic() >= deadline - 1 else "failed"
        print(f"serve.py: {len(failed)} request(s) {cut}; first: {failed[0]}", file=sys.stderr)
    return {"requests": len(lat), "tok_s": tokens[0] / wall, "req_s": len(lat) / wall,
            "p50": statistics.median(lat) if lat else float("nan"), "p95": q[18]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--per-point", type=int, default=128, help="requests per throughput point")
    ap.add_argument("--requests", type=int, default=2000, help="requests between the two RSS readings")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--time-limit", type=float, default=1800, help="seconds for the whole run")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args()
    deadline = time.monotonic() + args.time_limit
    tmp = Path(tempfile.mkdtemp(prefix="t2-serve-bench-"))
    experts = make_experts(args.model, 8, tmp, args.dtype)
    port = free_port()
    cmd = [sys.executable, "-m", "transformer_squared.cli", "serve", "--model", args.model, "--experts", *experts,
           "--port", str(port), "--name", "base", "--max_batch_size", str(args.max_batch_size), "--device",
           args.device, "--dtype", args.dtype, "--max_queue", str(max(64, 2 * args.clients))]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"t2 serve exited {proc.returncode}: {proc.stderr.read()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        load(url, ["base", "e0", "e1"], args.clients, args.clients, 4, deadline)  # warm-up, not reported
        lines = [f"# t2 serve: {args.model} {args.dtype} on {platform.machine()} ({os.cpu_count()} CPUs"
                 f"{', ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}); {args.clients} "
                 f"clients, {args.max_tokens} new tokens, max_batch_size {args.max_batch_size}",
                 f"{'in flight':>12} {'requests':>9} {'tok/s':>8} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'vs base':>8}"]
        base = None
        for k in (0, 1, 2, 4, 8):
            models = ["base"] if k == 0 else [f"e{i}" for i in range(k)]
            r = load(url, models, args.per_point, args.clients, args.max_tokens, deadline)
            base = base or r["tok_s"]
            name = "base model" if k == 0 else f"{k} expert{'s' if k > 1 else ''}"
            lines.append(f"{name:>12} {r['requests']:>9} {r['tok_s']:>8.1f} {r['req_s']:>7.2f} {r['p50']:>7.2f} "
                         f"{r['p95']:>7.2f} {r['tok_s'] / base:>8.2f}")
        before = rss_mb(proc.pid)
        r = load(url, [f"e{i}" for i in range(8)], args.requests, args.clients, args.max_tokens, deadline)
        after = rss_mb(proc.pid)
        lines.append(f"RSS {before:.0f} MB before and {after:.0f} MB after {r['requests']} requests over 8 experts "
                     f"({100 * (after - before) / before:+.1f} %)")
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())
        lines.append(f"server: mixed batches in the {health['factored_form']} form; {health['batches']} batches, "
                     f"{health['mixed_batches']} mixed, largest {health['largest_batch']}; {health['joined']} requests joined "
                     "a running batch")
        if time.monotonic() > deadline:
            lines.append(f"stopped at --time-limit {args.time_limit:.0f} s: counts above are partial")
        report = "\n".join(lines)
        print(report)
        if args.out:
            from transformer_squared.atomic import write_text

            write_text(report + "\n", args.out)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
