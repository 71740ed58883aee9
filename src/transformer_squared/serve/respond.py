"""Answers from scheduler events: one JSON body (`collect`) or server-sent events (`stream`), with
`usage`, the routing record in the extra field `t2` and the headers `x-t2-decision` / `x-t2-alpha`."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .protocol import APIError, chat_chunk, chat_response, completion_response, logprobs_block, new_id, usage

POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there


async def _next(events: Any, request: Request | None, jobs: list) -> tuple[str, dict]:
    """The next event; with `request`, a client that went away cancels the jobs (their rows stop)."""
    while True:
        try:
            kind, payload = await asyncio.wait_for(events.queue.get(), POLL_S if request is not None else None)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                for job in jobs:
                    job.cancelled.set()
                raise asyncio.CancelledError from None
            continue
        if kind == "error":
            raise APIError(payload["message"], None, 500, "server_error")
        return kind, payload


def _route(payload: dict) -> dict:
    return {k: v for k, v in payload.items() if k != "prompt"}


def headers(routes: list[dict]) -> dict[str, str]:
    """The routing decision(s) and α as response headers (ASCII: labels percent-encoded, α as JSON)."""
    return {"x-t2-decision": quote(",".join(r["decision"] for r in routes), safe=",:"),
            "x-t2-alpha": json.dumps([r["alpha"] for r in routes] if len(routes) > 1 else routes[0]["alpha"])}


def _top(tok: Any, top: dict[int, float] | None) -> dict[str, float] | None:
    if top is None:
        return None
    out: dict[str, float] = {}
    for i, lp in top.items():  # two ids with the same text: the likelier one
        s = tok.decode([i])
        out[s] = max(lp, out.get(s, float("-inf")))
    return out


def _logprobs(tok: Any, prompt_lp: dict | None, gen: list, prefix: str) -> dict[str, Any]:
    """The completions `logprobs` block: the prompt's tokens (echo) then the new ones."""
    ids, lps, tops = [], [], []
    if prompt_lp is not None:
        ids, lps, tops = list(prompt_lp["ids"]), list(prompt_lp["token_logprobs"]), list(prompt_lp["top"])
    for i, lp, top in gen:
        ids.append(i), lps.append(lp), tops.append(top)
    return logprobs_block([tok.decode([i]) for i in ids], lps, [_top(tok, t) for t in tops],
                          0 if prompt_lp is not None else len(prefix))


async def collect(state: Any, request: Request, req: Any, jobs: list, events: Any, ids: list[list[int]],
                  texts: list[str], chat: bool) -> JSONResponse:
    """Wait for every sequence of every prompt, then answer in one body."""
    n_rows = len(jobs) * req.n
    out, finish, count = [""] * n_rows, [""] * n_rows, [0] * n_rows
    gen_lp: list[list] = [[] for _ in range(n_rows)]
    prompt_lp: list[dict | None] = [None] * n_rows
    routes: list[dict] = [{}] * len(jobs)
    done = 0
    while done < n_rows:
        kind, p = await _next(events, request, jobs)
        if kind == "route":
            routes[p["prompt"]] = _route(p)
        elif kind == "prompt_logprobs":
            prompt_lp[p["index"]] = p
        elif kind == "delta":
            out[p["index"]] += p["text"]
        elif kind == "done":
            i = p["index"]
            finish[i], count[i], gen_lp[i] = p["finish_reason"], p["completion_tokens"], p["logprobs"]
            done += 1
    n_prompt, n_completion = sum(len(x) for x in ids), sum(count)
    if chat:
        body = chat_response(new_id("chatcmpl"), req.model, out, finish, n_prompt, n_completion, routes[0])
    else:
        tok = state.tokenizer
        choices = []
        for i in range(n_rows):
            prefix = texts[i // req.n] if req.echo else ""
            lp = None if req.logprobs is None else _logprobs(tok, prompt_lp[i] if req.echo else None, gen_lp[i], prefix)
            choices.append({"index": i, "text": prefix + out[i], "logprobs": lp, "finish_reason": finish[i]})
        body = completion_response(new_id("cmpl"), req.model, choices, n_prompt, n_completion, routes)
    return JSONResponse(body, headers=headers(routes))


async def stream(state: Any, request: Request, req: Any, jobs: list, events: Any, ids: list[list[int]],
                 texts: list[str], chat: bool) -> StreamingResponse:
    """Server-sent events: a chunk per piece of text, a last chunk per sequence with its finish reason,
    a usage chunk if asked (`stream_options.include_usage`), then `data: [DONE]`."""
    routes: list[dict] = [{}] * len(jobs)
    pending: list[tuple[str, dict]] = []
    while any(not r for r in routes):  # the routing decision goes into the headers: wait for pass 1
        kind, p = await _next(events, request, jobs)
        if kind == "route":
            routes[p["prompt"]] = _route(p)
        else:
            pending.append((kind, p))
    rid, created, n_rows = new_id("chatcmpl" if chat else "cmpl"), int(time.time()), len(jobs) * req.n
    route = routes[0] if len(routes) == 1 else {"routes": routes}

    def chunk(i: int, text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
            body = chat_chunk(rid, req.model, created, [{"index": i, "delta": delta, "logprobs": None,
                                                         "finish_reason": finish}], **({"t2": route} if first else {}))
        else:
            body = {"id": rid, "object": "text_completion", "created": created, "model": req.model,
                    "choices": [{"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}],
                    **({"t2": route} if first else {})}
        return f"data: {json.dumps(body)}\n\n"

    async def events_out() -> AsyncIterator[str]:
        finished = False
        try:
            for i in range(n_rows):
                yield chunk(i, texts[i // req.n] if (not chat and req.echo) else None, None, first=True)
            count, done = 0, 0
            while done < n_rows:
                kind, p = pending.pop(0) if pending else await _next(events, None, jobs)
                if kind == "delta":
                    yield chunk(p["index"], p["text"], None)
                elif kind == "done":
                    count += p["completion_tokens"]
                    done += 1
                    yield chunk(p["index"], None, p["finish_reason"])
            finished = True
            if req.stream_options is not None and req.stream_options.include_usage:
                body = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                        "created": created, "model": req.model, "choices": [],
                        "usage": usage(sum(len(x) for x in ids), count)}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
        except APIError as e:  # the batch failed after the stream began: OpenAI's error object as an event
            finished = True
            yield f"data: {json.dumps(e.body())}\n\n"
        finally:
            if not finished:  # the client went away (or the server is cancelling): stop the generation
                for job in jobs:
                    job.cancelled.set()

    return StreamingResponse(events_out(), media_type="text/event-stream", headers=headers(routes))
