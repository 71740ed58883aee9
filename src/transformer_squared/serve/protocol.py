"""OpenAI's request and response shapes for `/v1/chat/completions` and `/v1/completions`, their
validation, and OpenAI's error JSON. A bad request becomes `APIError` (HTTP 400 unless said) whose
`param` names the field: a wrong type or value, an unknown key, a field this server does not support.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# OpenAI fields that t2 serve does not implement: named in the error rather than called unknown
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logit_bias",
               "frequency_penalty", "presence_penalty", "parallel_tool_calls", "audio", "modalities", "prediction",
               "reasoning_effort", "service_tier", "store", "metadata", "best_of", "suffix", "top_logprobs")


class APIError(Exception):
    """An error response in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type_: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type_, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False  # a last chunk with `usage` and no choices


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class _Sampling(_Strict):
    model: str
    temperature: float = Field(1.0, ge=0, le=2)  # 0: greedy
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored (OpenAI's end-user id)
    alpha: dict[str, float] | None = None  # extra body: this request's mixture, weight per expert label

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError("stop: up to 4 non-empty strings", "stop")
        return tuple(stops)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = Field(None, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)


def parse(cls: type[_Sampling], body: Any) -> Any:
    """The request, or APIError naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError("the request body must be a JSON object", None)
    for key in UNSUPPORTED:
        if body.get(key) not in (None, 0, False, [], {}):
            raise APIError(f"{key}: not supported by t2 serve", key)
    if cls is ChatRequest and body.get("logprobs") not in (None, False):
        raise APIError("logprobs: not supported for chat completions by t2 serve (use /v1/completions)", "logprobs")
    try:
        req = cls.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        field = str(err["loc"][0]) if err["loc"] else None
        msg = "unknown field (not an OpenAI field this server takes)" if err["type"] == "extra_forbidden" else err["msg"]
        raise APIError(f"{loc}: {msg}", field) from None
    if cls is ChatRequest and req.messages and all(not m.text() for m in req.messages):
        raise APIError("messages: every message is empty", "messages")
    if req.stream and getattr(req, "logprobs", None) is not None and cls is CompletionRequest:
        raise APIError("logprobs: not supported with stream by t2 serve", "logprobs")
    req.stops()
    return req


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(rid: str, model: str, texts: list[str], finishes: list[str], n_prompt: int, n_completion: int,
                  route: dict[str, Any]) -> dict[str, Any]:
    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None, "finish_reason": f}
               for i, (t, f) in enumerate(zip(texts, finishes))]
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model, "choices": choices,
            "usage": usage(n_prompt, n_completion), "t2": route}


def chat_chunk(rid: str, model: str, created: int, choices: list[dict], **extra: Any) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
            **extra}


def completion_response(rid: str, model: str, choices: list[dict], n_prompt: int, n_completion: int,
                        routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": choices,
            "usage": usage(n_prompt, n_completion), "t2": routes[0] if len(routes) == 1 else {"routes": routes}}


def logprobs_block(tokens: list[str], token_logprobs: list[float | None], top: list[dict[str, float] | None],
                   start: int = 0) -> dict[str, Any]:
    """Completions' `logprobs`: tokens, their log-probabilities, top alternatives, character offsets."""
    offsets, at = [], start
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}
