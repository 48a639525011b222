"""A stand-in for the OpenAI API: ``POST /v1/chat/completions``, plain and streamed.

It answers at once, with the same answer for the same question, and counts tokens as
words, so the example runs offline and its tests know what to expect:

    python examples/stub_openai.py            # http://127.0.0.1:8001/v1

A model named ``stub-error`` answers 500 (and tells the SDK not to retry), and
``stub-rate-limit`` answers 429 to every other request (and tells the SDK to retry after
a millisecond), so failed and retried calls can be seen too.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_rate_limit_calls = 0


def answer_for(messages: list[dict[str, Any]]) -> str:
    """The stub's answer: it repeats the last user message."""
    question = next(
        (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    return f"You asked: {question.strip()} The stub says: 42."


def _tokens(text: str) -> int:
    return len(text.split())


def _usage(messages: list[dict[str, Any]], answer: str) -> dict[str, int]:
    prompt = sum(_tokens(str(m.get("content", ""))) for m in messages)
    completion = _tokens(answer)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


async def chat_completions(request: Request) -> Response:
    global _rate_limit_calls
    body = await request.json()
    model = str(body.get("model", "stub-model"))
    messages = list(body.get("messages", []))
    if model == "stub-error":
        return _error(
            500, "the stub failed on purpose", "server_error", {"x-should-retry": "false"}
        )
    if model == "stub-rate-limit":
        _rate_limit_calls += 1
        if _rate_limit_calls % 2 == 1:
            return _error(429, "slow down", "rate_limit_error", {"retry-after-ms": "1"})
    answer = answer_for(messages)
    usage = _usage(messages, answer)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if not body.get("stream"):
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    async def events() -> AsyncIterator[str]:
        yield f"data: {json.dumps(chunk({'role': 'assistant', 'content': ''}, None))}\n\n"
        for i, word in enumerate(answer.split(" ")):
            text = word if i == 0 else f" {word}"
            yield f"data: {json.dumps(chunk({'content': text}, None))}\n\n"
        yield f"data: {json.dumps(chunk({}, 'stop'))}\n\n"
        if include_usage:
            last = chunk({}, None)
            last["choices"] = []
            last["usage"] = usage
            yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def models(request: Request) -> Response:
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "stub"}
                for name in ("stub-model", "stub-error", "stub-rate-limit")
            ],
        }
    )


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models),
    ]
)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("STUB_PORT", "8001")))
