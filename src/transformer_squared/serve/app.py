"""The ASGI app of `t2 serve`: OpenAI's `/v1/models`, `/v1/chat/completions` and `/v1/completions`,
plus `/health`. Requests are checked here, turned into scheduler jobs, and answered from the events
the worker sends back (as one JSON body, or as server-sent events when `stream` is set).
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..models.engine import tokenize
from .config import ServeConfig
from .decode import Row, Sampling
from .protocol import APIError, ChatRequest, CompletionRequest, parse
from .respond import collect, stream
from .scheduler import Job, QueueFull, Scheduler

T2 = "t2"  # model id of pass 1 with the server's strategy; t2:<name> for another


@dataclass
class State:
    """What the endpoints share: the adapted model (read-only here), the scheduler, the config."""

    am: Any
    cfg: ServeConfig
    scheduler: Scheduler
    base_name: str
    created: int
    tokenizer: Any = None  # the event loop's own copy: a fast tokenizer is not safe to share across threads

    def __post_init__(self) -> None:
        if self.tokenizer is None:
            self.tokenizer = copy.deepcopy(self.am.tokenizer)

    def model_ids(self) -> list[str]:
        strategies = list(self.scheduler.router.pipelines)
        return [self.base_name, *self.am.labels] + ([T2] if strategies else []) + [f"{T2}:{s}" for s in strategies]

    def resolve(self, model: str, alpha: dict[str, float] | None) -> tuple[str | None, torch.Tensor | None]:
        """(strategy, fixed α) of a model id and the request's own α; APIError naming the field."""
        labels, K = self.am.labels, len(self.am.experts)
        if model not in self.model_ids():
            raise APIError(f"model '{model}' does not exist; choose one of {', '.join(self.model_ids())}", "model",
                           code="model_not_found")
        if alpha is not None:
            if not model.startswith(T2):
                raise APIError("alpha: a request's own mixture needs model 't2'", "alpha")
            unknown = sorted(set(alpha) - set(labels))
            if unknown:
                raise APIError(f"alpha: unknown expert '{unknown[0]}'; experts are {', '.join(labels)}", "alpha")
            if any(v != v or abs(v) == float("inf") for v in alpha.values()):
                raise APIError("alpha: weights must be finite numbers", "alpha")
            return None, torch.tensor([float(alpha.get(label, 0.0)) for label in labels])
        if model == self.base_name:
            return None, torch.zeros(K) if K else None
        if model in labels:
            return None, torch.nn.functional.one_hot(torch.tensor(labels.index(model)), K).float()
        name = model.partition(":")[2] or self.scheduler.router.default
        return name, None


class Events:
    """Scheduler events of one request's jobs, handed to the event loop (the worker thread calls `emit`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.queue = loop, asyncio.Queue()

    def emit(self, kind: str, payload: dict) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is closed (shutdown after a timeout): nobody is listening
            pass


def _sampling(req: Any, n_prompt: int, limit: int | None, default: int, max_tokens: int | None, field: str,
              logprobs: int | None = None, echo: bool = False) -> Sampling:
    if limit is not None and (n_prompt > limit or (n_prompt == limit and max_tokens != 0)):
        raise APIError(f"the prompt has {n_prompt} tokens; the model's context is {limit}", field_of(req))
    if max_tokens is None:
        max_tokens = default if limit is None else max(0, min(default, limit - n_prompt))
    elif limit is not None and n_prompt + max_tokens > limit:
        raise APIError(f"{field}: {max_tokens} new tokens after {n_prompt} prompt tokens exceed the model's context "
                       f"of {limit}", field)
    return Sampling(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                    stop=req.stops(), logprobs=logprobs, prompt_logprobs=echo and logprobs is not None)


def field_of(req: Any) -> str:
    return "messages" if isinstance(req, ChatRequest) else "prompt"


def _rows(ids: list[int], sampling: Sampling, n: int, events: Events, index0: int = 0) -> list[Row]:
    """n sequences of one prompt; sequence i is seeded seed + i so that n > 1 gives different samples."""
    rows = []
    for i in range(n):
        s = sampling if sampling.seed is None or i == 0 else Sampling(**{**sampling.__dict__, "seed": sampling.seed + i})
        rows.append(Row(ids, s, lambda kind, p, k=index0 + i: events.emit(kind, {**p, "index": k})))
    return rows


def build_app(state: State) -> FastAPI:
    """The FastAPI app over a started scheduler (its lifespan stops the scheduler after the last request)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.get_running_loop().run_in_executor(None, state.scheduler.stop)

    app = FastAPI(title="t2 serve", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.get("/health")
    async def health() -> dict:
        s = state.scheduler
        return {"status": "ok", "waiting": s.waiting(), "factored_form": s.form, **s.stats}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": state.created, "owned_by": "t2"}
                                           for m in state.model_ids()]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        req = parse(ChatRequest, await _json(request))
        strategy, alpha = state.resolve(req.model, req.alpha)
        tok = state.tokenizer
        msgs = [{"role": m.role, "content": m.text()} for m in req.messages]
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant: "
        ids = tokenize(tok, [text])[0]
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        sampling = _sampling(req, len(ids), state.scheduler.context_len, state.cfg.default_max_tokens, max_tokens, field)
        user = [m["content"] for m in msgs if m["role"] == "user"]
        return await _answer(state, request, req, [ids], [user[-1] if user else msgs[-1]["content"]], strategy, alpha,
                             sampling, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = parse(CompletionRequest, await _json(request))
        strategy, alpha = state.resolve(req.model, req.alpha)
        tok = state.tokenizer
        p = req.prompt
        if isinstance(p, str) or (p and all(isinstance(x, str) for x in p)):
            texts = [p] if isinstance(p, str) else list(p)
            ids = tokenize(tok, texts)
        else:
            ids = [p] if p and isinstance(p[0], int) else list(p)
            texts = [tok.decode(x, skip_special_tokens=True) for x in ids]
        if not ids or any(not x for x in ids):
            raise APIError("prompt: must not be empty", "prompt")
        vocab = len(tok)
        if any(t < 0 or t >= vocab for x in ids for t in x):
            raise APIError(f"prompt: token ids must be in 0..{vocab - 1}", "prompt")
        samplings = [_sampling(req, len(x), state.scheduler.context_len, state.cfg.default_max_tokens, req.max_tokens,
                               "max_tokens", req.logprobs, req.echo) for x in ids]
        return await _answer(state, request, req, ids, texts, strategy, alpha, samplings[0], chat=False,
                             samplings=samplings)

    return app


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        raise APIError("the request body is not valid JSON", None) from None


async def _answer(state: State, request: Request, req: Any, ids: list[list[int]], texts: list[str],
                  strategy: str | None, alpha: torch.Tensor | None, sampling: Sampling, chat: bool,
                  samplings: list[Sampling] | None = None) -> Any:
    """Submit one job per prompt, then answer in one body or as a stream."""
    if len(ids) * req.n > state.cfg.max_batch_size:
        raise APIError(f"n: {len(ids)} prompt(s) × n={req.n} sequences exceed the server's max_batch_size "
                       f"{state.cfg.max_batch_size}", "n")
    events = Events(asyncio.get_running_loop())
    jobs = []
    for p, (x, text) in enumerate(zip(ids, texts)):
        rows = _rows(x, (samplings or [sampling])[p], req.n, events, p * req.n)
        emit = lambda kind, payload, q=p: events.emit(kind, {**payload, "prompt": q})  # noqa: E731
        jobs.append(Job(rows, text, emit, strategy, alpha))
    try:
        for job in jobs:
            state.scheduler.submit(job)
    except QueueFull as e:
        for job in jobs:
            job.cancelled.set()
        raise APIError(str(e), None, 429, "rate_limit_error") from None
    try:
        if req.stream:
            return await stream(state, request, req, jobs, events, ids, texts, chat)
        return await collect(state, request, req, jobs, events, ids, texts, chat)
    except BaseException:
        for job in jobs:
            job.cancelled.set()
        raise
