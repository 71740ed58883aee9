"""The worker that owns the adapted model and batches concurrent requests, whatever their mixtures.

The HTTP side `submit`s jobs; one thread takes them from a bounded queue, waits up to `max_wait_ms`
for more (at most `max_batch_size` sequences), runs pass 1 for the jobs that need it (one batched
call per strategy), then decodes the batch: merged weights when every row shares one mixture (kept
merged for the next batch), else one mixture per row through per-row SVF layers (`factored.per_row`).
Only this thread touches the model: `AdaptedModel` keeps merged weights as state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import ResourceError
from ..experts.adapted import group_rows
from ..experts.svf import mix_batch
from .config import ServeConfig
from .decode import Row, decode
from .factored import choose_form, per_row
from .routing import Router, alpha_record

log = logging.getLogger(__name__)


class QueueFull(ResourceError):
    """Too many requests waiting; the client should retry later (HTTP 429)."""


@dataclass
class Job:
    """One prompt with its n sequences and how its mixture is chosen."""

    rows: list[Row]  # n sequences of the same prompt
    text: str  # what pass 1 reads (the last user message, or the prompt)
    emit: Callable[[str, dict], None]  # ("route", ...), ("error", ...) for the whole job
    strategy: str | None = None  # pass 1 with this strategy; None: `alpha` is fixed
    alpha: Tensor | None = None  # fixed α (K,): base = zeros, one expert = one-hot, or the request's own
    cancelled: threading.Event = field(default_factory=threading.Event)


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a sequence: the tokenizer's and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(cfg_eos) if isinstance(cfg_eos, (list, tuple)) else ({cfg_eos} if cfg_eos is not None else set())
    return ids


class Scheduler:
    """One worker thread over an `AdaptedModel`; `submit` from any thread."""

    def __init__(self, am: Any, cfg: ServeConfig, router: Router) -> None:
        self.am, self.cfg, self.router = am, cfg, router
        self.form, self.form_error = choose_form(am.svf, cfg.factored) if am.svf is not None else ("merged", 0.0)
        self.context_len = getattr(am.model.config, "max_position_embeddings", None)
        self.eos = eos_ids(am.model, am.tokenizer)
        self._queue: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self.stats = {"completed": 0, "cancelled": 0, "batches": 0, "mixed_batches": 0, "largest_batch": 0,
                      "tokens": 0, "joined": 0}
        self._thread = threading.Thread(target=self._loop, name="t2-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job; QueueFull when `max_queue` jobs are waiting already."""
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.cfg.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting (max_queue {self.cfg.max_queue}); retry later")
            self._queue.append(job)
            self._cv.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the queued jobs, then end the worker."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)

    def waiting(self) -> int:
        return len(self._queue)

    # ---- the worker ----------------------------------------------------------------------------
    def _gather(self) -> list[Job] | None:
        """The next batch: the first waiting job and those that arrive within max_wait_ms, ≤ max_batch_size rows."""
        with self._cv:
            while not self._queue and not self._stopping:
                self._cv.wait()
            if not self._queue:
                return None
            deadline = time.monotonic() + self.cfg.max_wait_ms / 1000
            while sum(len(j.rows) for j in self._queue) < self.cfg.max_batch_size and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch, n = [], 0
            while self._queue and n + len(self._queue[0].rows) <= self.cfg.max_batch_size:
                n += len(self._queue[0].rows)
                batch.append(self._queue.popleft())
            return batch

    def _loop(self) -> None:
        with torch.no_grad(), self.am.holding():  # merged weights stay between batches
            while (batch := self._gather()) is not None:
                live = [j for j in batch if not j.cancelled.is_set()]
                self.stats["cancelled"] += len(batch) - len(live)
                try:
                    if live:
                        self._run(live)
                except Exception as e:  # a failed batch fails its requests, never the server
                    log.exception("batch of %d request(s) failed", len(live))
                    for j in live:
                        j.emit("error", {"message": f"{type(e).__name__}: {e}"})

    def _alpha(self, jobs: list[Job]) -> Tensor:
        """α per job (n_jobs, K) or (n_jobs, K, n_targets): pass 1 batched per strategy, fixed ones as given."""
        K = len(self.am.experts)
        rows: list[Tensor | None] = [j.alpha for j in jobs]
        decided = [""] * len(jobs)
        seconds = [0.0] * len(jobs)
        for name in {j.strategy for j in jobs if j.strategy}:
            idx = [i for i, j in enumerate(jobs) if j.strategy == name]
            alpha, dec, s = self.router.route(name, [jobs[i].text for i in idx])
            for i, a, d in zip(idx, alpha, dec):
                rows[i], decided[i], seconds[i] = a, d, s / len(idx)
        shapes = {tuple(r.shape) for r in rows}
        if len(shapes) > 1:  # per-target α next to per-expert α: spread the latter over targets
            T = len(self.am.targets)
            rows = [r if r.dim() == 2 else r[:, None].expand(K, T) for r in rows]
        alpha = torch.stack(rows) if rows else torch.zeros(0, K)
        fixed_dec = self.router.fixed(alpha)[1] if K else ["base"] * len(jobs)
        for i, j in enumerate(jobs):
            j.emit("route", {"strategy": j.strategy, "decision": decided[i] or fixed_dec[i],
                             "alpha": alpha_record(alpha[i], self.am.labels), "pass1_seconds": seconds[i]})
        return alpha

    def _run(self, jobs: list[Job]) -> None:
        alpha = self._alpha(jobs) if self.am.experts else None
        if alpha is None:
            self._route_base(jobs)
        rows = [r for j in jobs for r in j.rows]
        self._watch(jobs)
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(rows))
        if alpha is None or len(group_rows(alpha)) == 1:
            key = None if alpha is None else next(iter(group_rows(alpha)))
            z = None if alpha is None else self.am.z(alpha[0])
            self.am.use(None if z is None else key, z)  # the adapted model holds the merged-weight state
            decode(self.am.model, self.am.tokenizer, rows, self.eos, self.context_len,
                   join=self._joiner(jobs, key, None))
        else:
            self.stats["mixed_batches"] += 1
            if self.form == "delta":  # the delta form adds to x·Wᵀ: the base weights must be in place
                self.am.use(None, None)
            with per_row(self.am.svf, mix_batch(self.am.zs, self._per_seq(jobs, alpha)), self.form) as layers:
                decode(self.am.model, self.am.tokenizer, rows, self.eos, self.context_len, layers.select,
                       join=self._joiner(jobs, None, layers))
        self._account(jobs)

    def _account(self, jobs: list[Job]) -> None:
        """Count finished jobs in the stats."""
        self.stats["completed"] += sum(1 for j in jobs if not j.cancelled.is_set())
        self.stats["cancelled"] += sum(1 for j in jobs if j.cancelled.is_set())
        self.stats["tokens"] += sum(len(r.out) for j in jobs for r in j.rows if r.finish != "cancelled")

    @staticmethod
    def _per_seq(jobs: list[Job], alpha: Tensor) -> Tensor:
        """α per sequence: each job's row repeated for its n sequences."""
        return torch.cat([alpha[i : i + 1].expand(len(j.rows), *alpha.shape[1:]) for i, j in enumerate(jobs)])

    @staticmethod
    def _route_base(jobs: list[Job]) -> None:
        for j in jobs:
            j.emit("route", {"strategy": None, "decision": "base", "alpha": {}, "pass1_seconds": 0.0})

    @staticmethod
    def _watch(jobs: list[Job]) -> None:
        for j in jobs:  # a row stops when its job's client went away
            for r in j.rows:
                r.cancelled = j.cancelled.is_set

    def _joiner(self, jobs: list[Job], key: bytes | None, layers: Any) -> Callable[[int], Any]:
        """`decode`'s join: waiting jobs whose mixture needs no pass 1 take free slots of the running batch,
        first come first served (the queue's head only, so nobody is overtaken). A merged batch takes jobs
        of its own mixture; a mixed batch (`layers`) takes any fixed mixture, appended to its per-row layers."""
        def join(n_running: int) -> tuple[list[Row], Any] | None:
            free, taken, n = self.cfg.max_batch_size - n_running, [], 0
            with self._cv:
                while self._queue and not self._queue[0].cancelled.is_set():
                    j = self._queue[0]
                    if j.strategy is not None or n + len(j.rows) > free:
                        break
                    if layers is None and (j.alpha.numpy().tobytes() if j.alpha is not None else None) != key:
                        break
                    taken.append(self._queue.popleft())
                    n += len(j.rows)
            if not taken:
                return None
            self.stats["joined"] += len(taken)
            done = [j for j in jobs if all(r.finish is not None for r in j.rows)]
            self._account(done)  # finished jobs leave the list: a batch that keeps taking jobs keeps none
            jobs[:] = [j for j in jobs if all(j is not d for d in done)] + taken
            self._watch(taken)
            alpha = self._alpha(taken) if self.am.experts else None
            if alpha is None:
                self._route_base(taken)
            ctx = nullcontext() if layers is None else layers.push(mix_batch(self.am.zs, self._per_seq(taken, alpha)))
            return [r for j in taken for r in j.rows], ctx
        return join
