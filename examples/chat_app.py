"""An existing FastAPI + OpenAI application, instrumented with eventlog.

The lines marked ``# eventlog`` are all that was added to the application: its runs,
steps, LLM calls, HTTP requests and log lines then land in the database, each log line
and request with its request id, each LLM call and log line with its run and step.

Run it against the stub OpenAI server beside it (from the repository's root)::

    .venv/bin/python examples/stub_openai.py &      # a stand-in OpenAI API on :8001
    .venv/bin/python examples/chat_app.py &         # this app on :8000
    curl -s 127.0.0.1:8000/chat -H 'content-type: application/json' \\
        -d '{"question": "What does eventlog store?"}'
    .venv/bin/eventlog stats --url sqlite:///example.db

Settings: ``EVENTLOG_DATABASE_URL`` (default ``sqlite:///example.db``),
``OPENAI_BASE_URL`` (default the stub, ``http://127.0.0.1:8001/v1``), ``OPENAI_API_KEY``,
``PORT`` (8000), and the logging variables of :func:`eventlog.configure_logging`
(``LOG_LEVEL``, ``LOG_DIR``, ...) and of the middleware (``LOG_REQUEST_BODY``, ...).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel

import eventlog  # eventlog
from eventlog.asgi import RequestContextMiddleware  # eventlog
from eventlog.context import get_request_id  # eventlog
from eventlog.integrations.openai import instrument  # eventlog

log = logging.getLogger("chat_app")

DOCUMENTS = {
    "eventlog": "eventlog writes LLM calls, runs, steps and events to SQL in batches.",
    "store": "Rows go to chronicle_events, chronicle_runs and chronicle_steps.",
    "logs": "Application log lines become events of type log.",
}


class Question(BaseModel):
    question: str
    model: str = "stub-model"


@eventlog.step("retrieval", "find documents")  # eventlog
def retrieve(question: str) -> list[str]:
    """A stand-in for a search: the documents whose key is a word of the question."""
    words = {word.strip("?.,!").lower() for word in question.split()}
    found = [text for key, text in DOCUMENTS.items() if key in words]
    log.info("found %d documents", len(found))
    return found


def prompt(question: str, documents: list[str]) -> list[ChatCompletionMessageParam]:
    context = "\n".join(documents) or "(nothing found)"
    return [
        {"role": "system", "content": f"Answer from these notes:\n{context}"},
        {"role": "user", "content": question},
    ]


def create_app(
    database_url: str | None = None, client: openai.AsyncOpenAI | None = None
) -> FastAPI:
    """The application; tests pass their own database and OpenAI client."""
    url = database_url or os.environ.get("EVENTLOG_DATABASE_URL", "sqlite:///example.db")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = await eventlog.open_database(url, migrate=True)  # eventlog
        sender, writer = eventlog.start_database_logger(db)  # eventlog
        eventlog.set_default_sender(sender)  # eventlog
        eventlog.configure_logging("chat_app", sender=sender)  # eventlog
        openai_client = client or openai.AsyncOpenAI(
            base_url=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8001/v1"),
            api_key=os.environ.get("OPENAI_API_KEY", "stub-key"),
        )
        app.state.openai = instrument(openai_client)  # eventlog
        log.info("chat app ready")
        try:
            yield
        finally:
            log.info("chat app stopping")
            eventlog.set_default_sender(None)  # eventlog
            sender.close()  # eventlog: write everything sent, then stop
            await writer  # eventlog
            await db.close()  # eventlog

    app = FastAPI(title="eventlog example", lifespan=lifespan)
    app.add_middleware(RequestContextMiddleware)  # eventlog

    @app.post("/chat")
    async def chat(body: Question, request: Request) -> dict[str, Any]:
        """Retrieve, then answer: one run with two steps and one LLM call."""
        client: openai.AsyncOpenAI = request.app.state.openai
        try:
            async with eventlog.run(  # eventlog
                "chat",
                input=body.model_dump(),
                application="chat-example",
                info={"request_id": get_request_id()},
            ) as run:
                documents = retrieve(body.question)
                async with eventlog.step("llm", "answer") as step:  # eventlog
                    completion = await client.chat.completions.create(
                        model=body.model, messages=prompt(body.question, documents)
                    )
                    answer = completion.choices[0].message.content
                    step.set_output(answer)
                run.set_output({"answer": answer})
        except openai.APIError as err:
            log.exception("the model call failed")
            raise HTTPException(502, "the model is unavailable") from err
        log.info("answered in %d tokens", completion.usage.total_tokens if completion.usage else 0)
        return {"answer": answer, "run_id": str(run.id)}

    @app.post("/chat/stream")
    async def chat_stream(body: Question, request: Request) -> StreamingResponse:
        """The answer as it comes; the call is logged when the stream ends."""
        client: openai.AsyncOpenAI = request.app.state.openai
        stream = await client.chat.completions.create(
            model=body.model,
            messages=prompt(body.question, retrieve(body.question)),
            stream=True,
            stream_options={"include_usage": True},
        )

        async def text() -> AsyncIterator[str]:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

        return StreamingResponse(text(), media_type="text/plain")

    @app.post("/summarise")
    async def summarise(body: Question, request: Request) -> dict[str, Any]:
        """A call the integration does not see (``with_raw_response``), timed by hand."""
        client: openai.AsyncOpenAI = request.app.state.openai
        messages: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": f"Summarise: {body.question}"}
        ]
        async with eventlog.track_llm_call(  # eventlog
            provider="openai",
            model=body.model,
            request={"model": body.model, "messages": messages},
            metadata={"application": "chat-example", "user_id": "example-user"},
        ) as call:
            raw = await client.chat.completions.with_raw_response.create(
                model=body.model, messages=messages
            )
            completion = raw.parse()
            call.set_response(completion)  # eventlog
        return {"summary": completion.choices[0].message.content}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "logging": eventlog.get_logging_stats()}  # eventlog

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
