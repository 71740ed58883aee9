"""Bounded state of the server's worker (issue 18, RSS growth): a batch that requests keep joining keeps a
KV cache no longer than its oldest running row, and switching between merged and mixed batches keeps one
set of CPU copies of the base weights and no more live tensors."""

from __future__ import annotations

import gc
import threading
import warnings

import torch

from labelled_experts import make_experts
from transformer_squared.experts.adapted import AdaptedModel
from transformer_squared.experts.expert import attach
from transformer_squared.serve.config import ServeConfig
from transformer_squared.serve.decode import Row, Sampling
from transformer_squared.serve.routing import Router
from transformer_squared.serve.scheduler import Job, Scheduler


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some torch module attributes warns of deprecation
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def _round(sch: Scheduler, alphas: list[torch.Tensor], max_tokens: tuple[int, ...] = (3,)) -> None:
    """One request per α, all queued before the worker takes them; returns when every one is done."""
    done = [threading.Event() for _ in alphas]
    errors: list[dict] = []
    with sch._cv:  # queue them all at once so that they share a batch
        for i, (a, ev) in enumerate(zip(alphas, done)):
            emit = lambda kind, p, ev=ev: ev.set() if kind == "done" else None  # noqa: E731
            fail = lambda kind, p, ev=ev: (errors.append(p), ev.set()) if kind == "error" else None  # noqa: E731
            sch._queue.append(Job([Row([1, 5, 9, 3], Sampling(max_tokens=max_tokens[i % len(max_tokens)], temperature=0), emit)], "x", fail, None, a))
        sch._cv.notify()
    for ev in done:
        assert ev.wait(60)
    assert not errors, errors


def _scheduler(tiny, max_batch_size: int) -> tuple[AdaptedModel, Scheduler]:
    model, tok = tiny
    experts = make_experts(model)
    am = AdaptedModel(model, tok, attach(model, experts), experts)
    sch = Scheduler(am, ServeConfig(model="tiny", max_batch_size=max_batch_size, max_wait_ms=0),
                    Router(am, ServeConfig(model="tiny")))
    sch.start()
    return am, sch


def test_a_batch_that_requests_keep_joining_keeps_a_short_kv_cache(tiny):
    am, sch = _scheduler(tiny, 4)
    widths = []  # attention-mask columns of every forward: the KV cache's length
    hook = am.model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["attention_mask"].shape[1]),
                                              with_kwargs=True)
    one_hot = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    try:
        _round(sch, one_hot * 20, max_tokens=(2, 3, 4, 5))  # 40 requests through 4 slots, ending at different steps:
        # one batch, the others join it
    finally:
        hook.remove()
        sch.stop(30)
    assert sch.stats["joined"] >= 30 and sch.stats["batches"] <= 4
    assert max(widths) <= 4 + 5 + 1  # prompt + new tokens (+1): columns of rows that left are dropped


def test_switching_mixtures_keeps_one_copy_of_the_base_weights(tiny):
    am, sch = _scheduler(tiny, 4)
    one_hot = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    held, counts = [], []  # the CPU copies of every merge, kept alive here; live tensors after each round
    try:
        for i in range(6):
            _round(sch, [one_hot[i % 2]] * 4)  # one mixture: merged into the weights (originals copied)
            held += list(am.svf._originals.values())
            _round(sch, one_hot * 2)  # mixed: per-row layers over the base weights (originals put back)
            counts.append(_live_tensors())
    finally:
        sch.stop(30)
    assert sch.stats["mixed_batches"] >= 6 and sch.stats["batches"] >= 12
    n_targets = len(am.svf.targets)
    assert len({t.untyped_storage().data_ptr() for t in held}) == n_targets  # the same buffers every merge
    # nothing kept per request or per batch: 8 requests a round over 5 rounds would leave ≥ 40 tensors; the
    # count is process-wide, so a few tensors that other tests' objects free late may come and go
    assert max(counts[1:]) - counts[1] < 8, counts
