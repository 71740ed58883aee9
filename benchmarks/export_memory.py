"""Peak memory of `t2 export merged`: streaming the checkpoint's shards vs loading the whole model.

Each way runs in its own fresh process, one after the other, in one run of this script:
  whole      the previous export: load the model (float32), load every target's factors, merge all
             targets, save_pretrained (what `export_merged` did before it streamed)
  streaming  `interop.export.export_merged`: read a shard, adapt its targets one at a time (their
             factors read from the cache one target at a time), write it; untouched shards are copied
on two layouts of the same SmolLM2-135M checkpoint: as converted (one 538 MB file) and resharded
into 100 MB shards (hub checkpoints are sharded: Llama-3-8B ships four of about 5 GB). The SVD
cache is filled first, so neither way decomposes. A thread samples the process's resident set
(/proc/self/status VmRSS) every 5 ms from just before the export to its end: "before" is the RSS
after imports and loading the expert, "peak" the largest sample, "growth" their difference (what the
export itself costs). Not ru_maxrss: Linux carries it over fork and exec, so a child started by this
script reports this script's own peak (it did, as "growth 0", in the first version of this
benchmark). The merged weights of the two ways are compared tensor by tensor.

    nice python benchmarks/export_memory.py [--model smollm2-135m-instruct] [--out results/export_memory.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import json, sys, threading, time
    import torch, transformers
    from transformer_squared.experts.expert import Expert, attach
    from transformer_squared.interop.export import export_merged
    from transformer_squared.models.load import load_model

    def rss():  # resident set size now, bytes (ru_maxrss only grows, and starts at the parent's peak)
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS:"))

    way, model_name, expert_dir, out_dir = sys.argv[1:5]
    expert = Expert.load(expert_dir)
    rss0 = rss()
    samples, done = [rss0], threading.Event()

    def sample():
        while not done.wait(0.005):
            samples.append(rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    if way == "whole":
        model, _ = load_model(model_name, device="cpu", dtype="float32")
        svf = attach(model, [expert])
        svf.merge({t: z.detach() for t, z in expert.z().items()})
        model.save_pretrained(out_dir, safe_serialization=True)
    else:
        export_merged(model_name, [expert], None, out_dir)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    peak = max(samples + [rss()])
    print(json.dumps({"way": way, "seconds": seconds, "rss0": rss0, "peak": peak}))
    """
)


def run_child(way: str, model: str, expert: Path, out: Path, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, way, model, str(expert), str(out)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{way} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_weights(a: Path, b: Path) -> float:
    """Largest |difference| between the tensors of two checkpoint folders (same names)."""
    from safetensors.torch import load_file

    ta = {k: v for f in a.glob("*.safetensors") for k, v in load_file(f).items()}
    tb = {k: v for f in b.glob("*.safetensors") for k, v in load_file(f).items()}
    if set(ta) != set(tb):
        raise SystemExit(f"the two exports hold different tensors: {sorted(set(ta) ^ set(tb))[:3]}")
    return max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--shard-mb", type=int, default=100)
    ap.add_argument("--out", default="results/export_memory.txt")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from transformer_squared.experts.expert import Expert, attach
    from transformer_squared.models.load import load_model, model_id, resolve_model

    work = Path(tempfile.mkdtemp(prefix="export_memory."))
    env = dict(os.environ)
    try:
        model, tok = load_model(args.model, device="cpu")
        svf = attach(model)  # fills the SVD cache for both ways
        e = Expert.init(svf.factors, model_id(model), svf.fingerprint, seed=0, label="synthetic",
                        description="SYNTHETIC: reference init plus seeded N(0, 1) noise on p")
        g = torch.Generator().manual_seed(0)
        e.p = {t: p + torch.randn(p.shape, generator=g) for t, p in e.p.items()}
        expert_dir = e.save(work / "expert")
        resharded = work / "resharded"
        AutoModelForCausalLM.from_pretrained(resolve_model(args.model)).save_pretrained(
            resharded, max_shard_size=f"{args.shard_mb}MB")
        tok.save_pretrained(resharded)
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        del model, svf
        rows = []
        for layout, name in (("one file", args.model), (f"{args.shard_mb} MB shards", str(resharded))):
            outs = {}
            for way in ("whole", "streaming"):
                outs[way] = work / f"{way}-{len(rows)}"
                r = run_child(way, name, expert_dir, outs[way], env) | {"layout": layout}
                shards = sorted(Path(resolve_model(name)).glob("*.safetensors"))
                r["largest_shard"] = max(p.stat().st_size for p in shards)
                rows.append(r)
            rows[-1]["max_diff"] = rows[-2]["max_diff"] = same_weights(outs["whole"], outs["streaming"])
        text = report(args, rows, model_bytes)
        print(text)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args, rows: list[dict], model_bytes: int) -> str:
    mb = lambda n: f"{n / 1e6:,.0f}"  # noqa: E731
    lines = [
        f"# export merged: streaming vs whole-model load ({args.model}, float32 weights {mb(model_bytes)} MB)",
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.machine()} {os.cpu_count()} CPUs, "
        f"load average before: {os.getloadavg()[0]:.1f}; command: python benchmarks/export_memory.py",
        "",
        "| checkpoint layout | way | seconds | RSS before MB | peak RSS MB | growth MB | largest shard MB | max |Δ| vs other way |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['way']} | {r['seconds']:.2f} | {mb(r['rss0'])} | {mb(r['peak'])} | "
                     f"{mb(r['peak'] - r['rss0'])} | {mb(r['largest_shard'])} | {r['max_diff']:.1e} |")
    for layout in dict.fromkeys(r["layout"] for r in rows):
        w, s = (next(r for r in rows if r["layout"] == layout and r["way"] == k) for k in ("whole", "streaming"))
        lines.append(f"\n{layout}: streaming peak growth / whole-model growth = "
                     f"{(s['peak'] - s['rss0']) / (w['peak'] - w['rss0']):.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
