"""``eventlog demo``: a simulated LLM gateway logging through eventlog, then a summary.

The gateway serves a traffic mix of six models at four providers: single chat calls from
four applications, and workflow runs (``run:start``, steps with the LLM calls made inside
them, ``run:update``). Latencies, token counts, rate limits (~3%) and errors (~2%) are
drawn from per-model distributions and *recorded*, never slept: the point is to show the
logger keeping up with a busy application, so 10,000 calls take seconds, not hours.
Times are simulated backwards from the moment a call is generated: a call's
``timestamp`` is when it finished, and a run ends when its last step does.

Every row of one demo carries ``environment = 'demo-<time>-<random>'`` (runs and LLM
calls have that column; steps are found through their run), and the summary is read back
with SQL restricted to that value. So a second demo on the same database neither counts
the first one's rows nor touches them, and the value printed at the end lets a person
query exactly this demo's rows.

``seed`` makes the content reproducible (models, payloads, latencies, errors): two demos
with one seed log the same calls and print the same figures, under new ids and times.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import string
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from eventlog.channel import LogSender
from eventlog.database import Database, open_database
from eventlog.events import (
    InternalMetadata,
    ProxyLogEvent,
    RequestMetadata,
    RunStartEvent,
    RunUpdateEvent,
    StepEndEvent,
    StepErrorEvent,
    StepStartEvent,
)
from eventlog.exceptions import DatabaseError
from eventlog.ids import uuid7
from eventlog.writer import start_database_logger

__all__ = ["DemoSummary", "ModelSummary", "run_demo"]

# Of the application's jobs, this share are workflow runs (about one run for every 20
# LLM calls); the rest are single calls.
_RUN_SHARE = 0.07
_ERROR_RATE = 0.017  # of single calls; runs fail by plan (see _plan_run) at a similar rate
_RATE_LIMIT_RATE = 0.03
_RATE_LIMIT_GIVE_UP = 0.1  # of rate-limited single calls: still limited after 3 retries
_GATEWAY_TIMEOUT = 30.0


# -- what the gateway serves -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Model:
    provider: str
    name: str
    share: float  # of the traffic
    overhead: float  # median seconds before the first token
    tokens_per_second: float


_MODELS = (
    _Model("openai", "gpt-4o", 0.20, 0.45, 85.0),
    _Model("openai", "gpt-4o-mini", 0.30, 0.30, 130.0),
    _Model("anthropic", "claude-sonnet-4-20250514", 0.18, 0.80, 75.0),
    _Model("anthropic", "claude-3-5-haiku-20241022", 0.12, 0.45, 140.0),
    _Model("google", "gemini-2.0-flash", 0.13, 0.35, 210.0),
    _Model("mistral", "mistral-large", 0.07, 0.60, 55.0),
)
_MODEL_SHARES = tuple(m.share for m in _MODELS)

_PROVIDER_ERRORS: Mapping[str, dict[str, Any]] = {
    "openai": {
        "status": 500,
        "type": "server_error",
        "message": "The server had an error while processing your request. Sorry about that!",
    },
    "anthropic": {"status": 529, "type": "overloaded_error", "message": "Overloaded"},
    "google": {
        "status": 503,
        "type": "UNAVAILABLE",
        "message": "The model is overloaded. Please try again later.",
    },
    "mistral": {"status": 502, "type": "bad_gateway", "message": "Upstream connect error"},
}


@dataclass(frozen=True, slots=True)
class _App:
    name: str
    systems: tuple[str, ...]  # the system prompt's versions, 1-based
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    sources: tuple[str, ...] = ()  # retrieved passages put in front of the question


_APPS = (
    _App(
        name="support-bot",
        systems=(
            "You are the support assistant for Acme Cloud, a hosting platform. Answer the "
            "customer's question in a friendly, concise way. If the answer depends on their "
            "plan, ask which plan they are on. Never invent features.",
            "You are the support assistant for Acme Cloud, a hosting platform. Answer the "
            "customer's question in a friendly, concise way and link to docs.acme.example "
            "when relevant. If the answer depends on their plan, ask which plan they are on. "
            "Never invent features. Escalate billing disputes by opening a ticket.",
        ),
        questions=(
            "My deployment has been stuck in 'pending' for 20 minutes. Is something wrong "
            "on your side?",
            "How do I rotate the API key for my project without downtime?",
            "I was charged twice this month for the Pro plan. Can you refund one of them?",
            "Can I attach a custom domain to a preview environment?",
            "Our database connections keep timing out after exactly 30 seconds. What limit "
            "are we hitting?",
            "Is there a way to get an email when a build fails?",
            "Which regions do you have in Europe, and can I move an existing app?",
            "How do I export my logs to S3?",
        ),
        answers=(
            "Thanks for reaching out, and sorry for the trouble.",
            "Deployments usually leave the pending state within two minutes; a longer wait "
            "normally means the build queue for your region is saturated.",
            "Create a second key under Project Settings > API Keys, switch your services to "
            "it, then revoke the old one.",
            "I've opened a billing ticket; our finance team will confirm the refund within "
            "two business days.",
            "Custom domains work on preview environments for Pro and Team plans.",
            "The 30-second cut-off is the idle timeout of the connection pooler; enabling "
            "keep-alives or lowering the pool's idle time avoids it.",
            "Build notifications are under Settings > Notifications and support email, "
            "Slack and webhooks.",
            "In Europe we run Frankfurt, Dublin and Stockholm; moving an app means "
            "redeploying it in the new region and switching DNS.",
            "Log drains support S3, GCS and any HTTPS endpoint: see docs.acme.example/logs/drains.",
            "Let me know if anything is still unclear.",
        ),
    ),
    _App(
        name="code-assistant",
        systems=(
            "You are a senior software engineer helping a colleague. Prefer small, correct "
            "changes over rewrites. Show code in fenced blocks and explain why in one or two "
            "sentences.",
        ),
        questions=(
            "Why does this function return None sometimes?\n\ndef find_user(users, name):\n"
            "    for u in users:\n        if u.name == name:\n            return u\n",
            "Write a SQL query for the ten slowest endpoints of the last day from a table "
            "requests(path, duration_ms, created_at).",
            "What's the difference between asyncio.gather and asyncio.TaskGroup when one "
            "task fails?",
            "Review this regex for email validation: ^[\\w.]+@[\\w]+\\.[a-z]{2,3}$",
            "How do I type a TypeScript parameter as a string or an array of strings, but "
            "never undefined?",
            "Our Go service leaks goroutines under load. How would you find where?",
        ),
        answers=(
            "The loop falls off the end when no user matches, and a Python function "
            "without a return statement returns None.",
            "```sql\nSELECT path, percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)"
            " AS p95\nFROM requests\nWHERE created_at > now() - interval '1 day'\n"
            "GROUP BY path ORDER BY p95 DESC LIMIT 10;\n```",
            "gather keeps the other tasks running when one fails unless you cancel them; a "
            "TaskGroup cancels the rest and raises an ExceptionGroup.",
            "That pattern rejects valid addresses, such as ones with a plus sign or a "
            "top-level domain longer than three letters.",
            "Use `string | string[]` and turn on strictNullChecks so undefined is not assignable.",
            "Take goroutine profiles from net/http/pprof under load a minute apart; the "
            "stacks whose counts keep growing are the leak.",
            "I'd add a test for the failing case first, so the fix stays fixed.",
        ),
    ),
    _App(
        name="search-summarizer",
        systems=(
            "Answer the question using only the sources provided. Cite them as [1], [2]. If "
            "the sources do not contain the answer, say so plainly.",
        ),
        questions=(
            "What changed in the refund policy this quarter?",
            "How long are audit logs retained on the Team plan?",
            "Which customers are affected by the Frankfurt maintenance window?",
            "Summarise the incident report for the March 14 outage.",
            "What is the recommended way to store secrets for scheduled jobs?",
        ),
        answers=(
            "Refunds are now prorated to the day instead of the month [1].",
            "Audit logs are kept for 400 days on the Team plan and 90 days otherwise [2].",
            "Only projects with a primary database in eu-central-1 are affected [3].",
            "The outage lasted 47 minutes and was caused by an expired internal certificate "
            "on the load balancers [1][3].",
            "Scheduled jobs should read secrets from the project's secret store at start-up "
            "rather than from environment files [2].",
            "The sources do not say whether this applies to legacy plans.",
        ),
        sources=(
            "Billing handbook, rev. 12: From this quarter, refunds for downgrades are "
            "prorated to the day. Annual plans keep their existing terms until renewal.",
            "Security overview: Audit events are retained for 400 days on Team and "
            "Enterprise plans and for 90 days on all other plans. Exports are available.",
            "Status page: Scheduled maintenance in Frankfurt (eu-central-1), Saturday "
            "02:00-04:00 UTC. Databases may fail over once; applications should retry.",
            "Incident 2291 post-mortem: an internal certificate used between the load "
            "balancers and the routing tier expired; alerting covered only public certs.",
            "Platform guide: Secrets are injected at process start from the secret store. "
            "Avoid baking them into images or committing environment files.",
        ),
    ),
    _App(
        name="email-writer",
        systems=(
            "You write short, warm B2B emails for Acme Cloud's sales team. Keep them under "
            "120 words, end with one clear question, and never promise discounts.",
            "You write short, warm B2B emails for Acme Cloud's sales team. Keep them under "
            "100 words, use the prospect's first name, end with one clear question, and "
            "never promise discounts.",
            "You write short B2B emails for Acme Cloud's sales team in the prospect's own "
            "language. Under 100 words, one clear question at the end, no discounts.",
        ),
        questions=(
            "Draft a follow-up to Dana at Globex, who went quiet after last Tuesday's demo.",
            "Write a first-touch email to a CTO whose team just posted about migrating off Heroku.",
            "Reply to Sam, who asked whether we support SOC 2 reports on the Team plan.",
            "Thank Priya for the call today and propose a two-week pilot.",
        ),
        answers=(
            "Hi Dana, thanks again for your time on Tuesday.",
            "I noticed your team is planning a move off Heroku, and that's exactly the kind "
            "of migration we help with every week.",
            "Yes: SOC 2 Type II reports are available on the Team plan under NDA.",
            "A two-week pilot on a staging copy of your app would show the build times "
            "without any commitment.",
            "Would Thursday or Friday work for a 20-minute call?",
            "Best regards,\nAlex",
        ),
    ),
)

_ORGANIZATIONS = ("org-acme", "org-globex", "org-initech", "org-umbrella")


@dataclass(frozen=True, slots=True)
class _StepKind:
    name: str
    calls: tuple[int, int]  # (min, max) LLM calls; (0, 0) for a tool step

    @property
    def is_tool(self) -> bool:
        return self.calls[1] == 0


@dataclass(frozen=True, slots=True)
class _Workflow:
    name: str
    app: _App
    steps: tuple[_StepKind, ...]


_APP = {app.name: app for app in _APPS}
_WORKFLOWS = (
    _Workflow(
        "ticket-triage",
        _APP["support-bot"],
        (
            _StepKind("classify", (1, 1)),
            _StepKind("fetch-account", (0, 0)),
            _StepKind("draft-reply", (1, 3)),
            _StepKind("policy-check", (1, 1)),
        ),
    ),
    _Workflow(
        "doc-qa",
        _APP["search-summarizer"],
        (
            _StepKind("plan-queries", (1, 1)),
            _StepKind("search", (0, 0)),
            _StepKind("read-sources", (2, 5)),
            _StepKind("answer", (1, 1)),
        ),
    ),
    _Workflow(
        "code-review",
        _APP["code-assistant"],
        (
            _StepKind("load-diff", (0, 0)),
            _StepKind("review-files", (2, 6)),
            _StepKind("summarize", (1, 1)),
        ),
    ),
    _Workflow(
        "outreach-campaign",
        _APP["email-writer"],
        (
            _StepKind("pick-leads", (0, 0)),
            _StepKind("draft-emails", (3, 8)),
            _StepKind("tone-check", (1, 1)),
        ),
    ),
)


# -- the plan: which jobs, decided up front so the number of calls is exact ---------------


@dataclass(frozen=True, slots=True)
class _Job:
    """One single call (``workflow`` None), or one run of ``workflow``.

    ``calls[i]`` is the number of LLM calls of step ``i``; only the steps that run are
    listed. ``failed_step`` is the index of the step that fails (its last call errors,
    or its tool does), which ends the run with status ``error``.
    """

    index: int
    workflow: _Workflow | None = None
    calls: tuple[int, ...] = (1,)
    failed_step: int | None = None

    @property
    def call_count(self) -> int:
        return sum(self.calls)


def _plan(events: int, seed: int) -> Iterator[_Job]:
    """Jobs holding exactly ``events`` LLM calls in all, made lazily (for huge demos)."""
    rng = random.Random(seed)
    remaining = events
    index = 0
    while remaining > 0:
        job = _plan_run(rng, index) if rng.random() < _RUN_SHARE else _Job(index)
        if job.call_count > remaining:
            job = _Job(index)
        yield job
        remaining -= job.call_count
        index += 1


def _plan_run(rng: random.Random, index: int) -> _Job:
    workflow = rng.choice(_WORKFLOWS)
    calls = [rng.randint(*step.calls) for step in workflow.steps]
    failed_step = None
    roll = rng.random()
    if roll < 0.14:  # 10%: an LLM call fails; 4%: a tool does
        want_tool = roll >= 0.10
        candidates = [i for i, s in enumerate(workflow.steps) if s.is_tool == want_tool]
        failed_step = rng.choice(candidates)
        calls = calls[: failed_step + 1]
    return _Job(index, workflow, tuple(calls), failed_step)


# -- one simulated model call -------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    model: _Model
    request: dict[str, Any]
    response: dict[str, Any] | None
    error: dict[str, Any] | BaseException | None
    latency: float  # of the last attempt
    total_latency: float  # what the caller waited, retries included
    retries: int
    rate_limited: bool
    prompt_version: int


def _tokens(content: str) -> int:
    """About four characters a token, as for English text with the usual tokenizers."""
    return max(1, len(content) // 4)


def _random_id(rng: random.Random, prefix: str, length: int) -> str:
    return prefix + "".join(rng.choices(string.ascii_letters + string.digits, k=length))


def _messages(rng: random.Random, app: _App) -> list[dict[str, str]]:
    """The chat: the question alone, or after an earlier exchange (1 or 3 messages)."""
    question = rng.choice(app.questions)
    if app.sources:
        picked = rng.sample(app.sources, k=rng.randint(2, 3))
        sources = "\n".join(f"[{i}] {s}" for i, s in enumerate(picked, 1))
        question = f"Sources:\n{sources}\n\nQuestion: {question}"
    if rng.random() < 0.6:
        return [{"role": "user", "content": question}]
    return [
        {"role": "user", "content": rng.choice(app.questions)},
        {"role": "assistant", "content": " ".join(rng.sample(app.answers, k=2))},
        {"role": "user", "content": question},
    ]


def _fake_call(
    rng: random.Random, app: _App, model: _Model, now: datetime, *, fail: bool | None
) -> _Call:
    """Simulate one call; ``fail`` forces the outcome, ``None`` draws it."""
    version = rng.randint(1, len(app.systems))
    system = app.systems[version - 1]
    messages = _messages(rng, app)
    temperature = rng.choice((0.0, 0.2, 0.7, 1.0))
    request: dict[str, Any]
    if model.provider == "anthropic":
        request = {"model": model.name, "system": system, "messages": messages}
    else:
        request = {"model": model.name, "messages": [{"role": "system", "content": system}]}
        request["messages"].extend(messages)
    request.update(max_tokens=1024, temperature=temperature)

    prompt_tokens = _tokens(system) + sum(_tokens(m["content"]) + 4 for m in messages) + 3
    answer = " ".join(rng.sample(app.answers, k=rng.randint(1, min(5, len(app.answers)))))
    completion_tokens = max(1, round(_tokens(answer) * rng.uniform(0.9, 1.2)))

    overhead = model.overhead * rng.lognormvariate(0.0, 0.35)
    latency = overhead + completion_tokens / (model.tokens_per_second * rng.lognormvariate(0, 0.2))
    if rng.random() < 0.02:  # a slow upstream replica
        latency *= rng.uniform(2.0, 4.0)

    rate_limited = rng.random() < _RATE_LIMIT_RATE
    gave_up = fail is None and rate_limited and rng.random() < _RATE_LIMIT_GIVE_UP
    retries = 3 if gave_up else rng.randint(1, 3) if rate_limited else 0
    waited = 0.0
    for attempt in range(retries):  # a quick 429, then exponential backoff with jitter
        waited += rng.uniform(0.05, 0.25) + 0.5 * 2**attempt * rng.uniform(0.8, 1.2)

    error: dict[str, Any] | BaseException | None = None
    if gave_up:
        latency = rng.uniform(0.05, 0.25)  # the last attempt was a quick 429 too
        error = {
            "status": 429,
            "type": "rate_limit_error",
            "message": f"Rate limit reached for {model.name} (tokens per minute); "
            f"gave up after {retries} retries.",
        }
    elif fail or (fail is None and rng.random() < _ERROR_RATE):
        if rng.random() < 0.25:
            latency = _GATEWAY_TIMEOUT
            error = TimeoutError(f"{model.provider} did not answer within {_GATEWAY_TIMEOUT:g} s")
        else:
            latency = overhead * rng.lognormvariate(0.0, 0.5)
            error = dict(_PROVIDER_ERRORS[model.provider])

    response = None
    if error is None:
        response = _response(rng, model, answer, now, prompt_tokens, completion_tokens)
    return _Call(
        model=model,
        request=request,
        response=response,
        error=error,
        latency=latency,
        total_latency=latency + waited,
        retries=retries,
        rate_limited=rate_limited,
        prompt_version=version,
    )


def _response(
    rng: random.Random, model: _Model, answer: str, now: datetime, prompt: int, completion: int
) -> dict[str, Any]:
    """The provider's response body: Anthropic's Messages shape, else OpenAI's."""
    if model.provider == "anthropic":
        return {
            "id": _random_id(rng, "msg_01", 22),
            "type": "message",
            "role": "assistant",
            "model": model.name,
            "content": [{"type": "text", "text": answer}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }
    return {
        "id": _random_id(rng, "chatcmpl-", 24),
        "object": "chat.completion",
        "created": int(now.timestamp()),
        "model": model.name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


# -- the gateway: workers that play the jobs and send what they log -----------------------


def _who(rng: random.Random, app: _App) -> tuple[str, InternalMetadata]:
    """A user of the application, and who they are to the gateway (org and project)."""
    number = rng.randrange(2000)
    user = f"user-{number:04d}"
    org = _ORGANIZATIONS[number % len(_ORGANIZATIONS)]
    return user, InternalMetadata(organization_id=org, project_id=app.name, user_id=user)


class _Gateway:
    """Plays jobs with ``concurrency`` workers, sending every entry through ``sender``."""

    def __init__(self, sender: LogSender, environment: str, seed: int) -> None:
        self.sender = sender
        self.environment = environment
        self.seed = seed
        self.calls = 0  # LLM calls sent so far

    async def work(self, jobs: Iterator[_Job]) -> None:
        """Take jobs from the shared iterator until it is exhausted."""
        for job in jobs:
            # One generator per job, seeded by the job's index: the content does not
            # depend on which worker plays the job, or when.
            rng = random.Random(f"{self.seed}/{job.index}")
            if job.workflow is None:
                await self._single(rng)
            else:
                await self._run(rng, job, job.workflow)

    async def _single(self, rng: random.Random) -> None:
        app = rng.choice(_APPS)
        model = rng.choices(_MODELS, _MODEL_SHARES)[0]
        now = datetime.now(UTC)
        call = _fake_call(rng, app, model, now, fail=None)
        user, internal = _who(rng, app)
        metadata = RequestMetadata(
            application=app.name,
            environment=self.environment,
            user_id=user,
            prompt_id=f"{app.name}/system",
            prompt_version=call.prompt_version,
        )
        await self._send_call(call, now, metadata, internal)

    async def _send_call(
        self, call: _Call, end: datetime, metadata: RequestMetadata, internal: InternalMetadata
    ) -> None:
        self.sender.send(
            ProxyLogEvent(
                timestamp=end,
                request=call.request,
                response=call.response,
                provider=call.model.provider,
                model=call.model.name,
                latency=timedelta(seconds=call.latency),
                total_latency=timedelta(seconds=call.total_latency),
                was_rate_limited=call.rate_limited,
                num_retries=call.retries,
                error=call.error,
                metadata=metadata,
                internal_metadata=internal,
            )
        )
        self.calls += 1
        await asyncio.sleep(0)  # let the other workers and the writer run

    async def _run(self, rng: random.Random, job: _Job, workflow: _Workflow) -> None:
        app = workflow.app
        now = datetime.now(UTC)
        # Simulate first, then lay the run out on a timeline that ends now.
        steps: list[tuple[float, list[_Call]]] = []  # (duration, calls) per step
        for i, count in enumerate(job.calls):
            if workflow.steps[i].is_tool:
                steps.append((rng.uniform(0.02, 0.8), []))
                continue
            made = []
            for c in range(count):
                fail = job.failed_step == i and c == count - 1
                model = rng.choices(_MODELS, _MODEL_SHARES)[0]
                made.append(_fake_call(rng, app, model, now, fail=fail))
            steps.append((sum(call.total_latency for call in made), made))
        gaps = [rng.uniform(0.005, 0.05) for _ in range(len(steps) + 1)]
        duration = sum(d for d, _ in steps) + sum(gaps)
        t = now - timedelta(seconds=duration)

        run_id = uuid7()
        user, internal = _who(rng, app)
        self.sender.send(
            RunStartEvent(
                id=run_id,
                name=workflow.name,
                application=app.name,
                environment=self.environment,
                input={"user_id": user, "request": _random_id(rng, "req_", 12)},
                tags=("demo", workflow.name),
                info={"seed": self.seed, "job": job.index},
                time=t,
            )
        )
        for i, (duration, calls) in enumerate(steps):
            kind = workflow.steps[i]
            step_id = uuid7()
            t += timedelta(seconds=gaps[i])
            self.sender.send(
                StepStartEvent(
                    step_id=step_id,
                    run_id=run_id,
                    type="tool" if kind.is_tool else "llm",
                    name=kind.name,
                    input={"step": i},
                    time=t,
                )
            )
            for call in calls:
                t += timedelta(seconds=call.total_latency)
                metadata = RequestMetadata(
                    application=app.name,
                    environment=self.environment,
                    user_id=user,
                    workflow_id=workflow.name,
                    workflow_name=workflow.name.replace("-", " ").title(),
                    run_id=run_id,
                    step_id=step_id,
                    step_index=i,
                    prompt_id=f"{app.name}/system",
                    prompt_version=call.prompt_version,
                )
                await self._send_call(call, t, metadata, internal)
            if kind.is_tool:
                t += timedelta(seconds=duration)
            if job.failed_step == i:
                error: object = (
                    calls[-1].error
                    if calls
                    else {"type": "ToolError", "message": f"{kind.name}: backend returned 503"}
                )
                self.sender.send(
                    StepErrorEvent(step_id=step_id, run_id=run_id, error=error, time=t)
                )
                self.sender.send(
                    RunUpdateEvent(
                        id=run_id, status="error", info={"failed_step": kind.name}, time=t
                    )
                )
                return
            output = {"calls": len(calls)} if calls else {"results": rng.randint(1, 20)}
            self.sender.send(StepEndEvent(step_id=step_id, run_id=run_id, output=output, time=t))
        t += timedelta(seconds=gaps[-1])
        self.sender.send(
            RunUpdateEvent(id=run_id, status="finished", output={"steps": len(steps)}, time=t)
        )


# -- the summary --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """One model's figures in a demo: calls, failures, latency and tokens.

    Latency is ``total_latency`` (what the caller waited, retries included), in ms.
    """

    provider: str
    model: str
    calls: int
    errors: int
    rate_limited: int
    p50_ms: float | None
    p95_ms: float | None
    prompt_tokens: int
    completion_tokens: int

    @property
    def error_rate(self) -> float:
        """Errors per call, 0.0 to 1.0."""
        return self.errors / self.calls if self.calls else 0.0


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """The figures a demo printed: read back from the database, except the timings.

    ``events`` counts this demo's LLM calls found in the database (``errors`` and
    ``rate_limited`` among them), ``environment`` is the value that marks its rows.
    ``elapsed`` runs from the first send to the writer's last commit, and
    ``events_per_second`` is the LLM calls sent over it. ``sent``, ``written`` and
    ``failed`` count every entry (LLM calls and workflow events) as the logger saw them.
    """

    url: str
    environment: str
    events: int
    errors: int
    rate_limited: int
    runs: int
    steps: int
    models: tuple[ModelSummary, ...]
    runs_by_status: Mapping[str, int]
    steps_by_status: Mapping[str, int]
    elapsed: float
    events_per_second: float
    sent: int
    written: int
    failed: int
    p50_ms: float | None
    p95_ms: float | None


_WHERE_CALLS = "WHERE environment = :env AND event_type = 'chronicle_llm_request'"

# Plain SQL that reads the same on PostgreSQL and SQLite: rate_limited is a boolean there
# and 0/1 here, and both take it as a CASE condition. Percentiles are computed in Python
# from the latencies (SQLite has no percentile_cont).
_SQL_MODELS = text(
    f"""
    SELECT provider, model, COUNT(*) AS calls,
           SUM(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END) AS errors,
           SUM(CASE WHEN rate_limited THEN 1 ELSE 0 END) AS rate_limited,
           COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,
           COALESCE(SUM(completion_tokens), 0) AS completion_tokens
    FROM chronicle_events {_WHERE_CALLS}
    GROUP BY provider, model
    ORDER BY calls DESC, model
    """
)
_SQL_LATENCIES = text(
    f"""
    SELECT model, COALESCE(total_latency_ms, request_latency_ms) AS ms
    FROM chronicle_events {_WHERE_CALLS}
      AND COALESCE(total_latency_ms, request_latency_ms) IS NOT NULL
    """
)
_SQL_RUNS = text(
    "SELECT status, COUNT(*) FROM chronicle_runs WHERE environment = :env GROUP BY status"
)
_SQL_STEPS = text(
    """
    SELECT s.status, COUNT(*)
    FROM chronicle_steps s JOIN chronicle_runs r ON r.id = s.run_id
    WHERE r.environment = :env
    GROUP BY s.status
    """
)


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks, as PostgreSQL's percentile_cont."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def _read_summary(
    db: Database, environment: str
) -> tuple[list[ModelSummary], dict[str, int], dict[str, int], list[float]]:
    """Per-model figures, runs and steps by status, and every latency, for one demo."""
    params = {"env": environment}
    try:
        async with db.engine.connect() as conn:
            model_rows = (await conn.execute(_SQL_MODELS, params)).all()
            latency_rows = (await conn.execute(_SQL_LATENCIES, params)).all()
            runs = {str(s): int(n) for s, n in (await conn.execute(_SQL_RUNS, params)).all()}
            steps = {str(s): int(n) for s, n in (await conn.execute(_SQL_STEPS, params)).all()}
    except (SQLAlchemyError, OSError) as err:
        raise DatabaseError(
            f"reading the demo's summary back from {db.dialect} failed: {err}"
        ) from err
    latencies: dict[str, list[float]] = {}
    for model, ms in latency_rows:
        latencies.setdefault(model, []).append(float(ms))
    models = []
    for row in model_rows:
        ordered = sorted(latencies.get(row.model, ()))
        models.append(
            ModelSummary(
                provider=row.provider,
                model=row.model,
                calls=int(row.calls),
                errors=int(row.errors),
                rate_limited=int(row.rate_limited),
                p50_ms=_percentile(ordered, 0.50),
                p95_ms=_percentile(ordered, 0.95),
                prompt_tokens=int(row.prompt_tokens),
                completion_tokens=int(row.completion_tokens),
            )
        )
    every = sorted(ms for values in latencies.values() for ms in values)
    return models, runs, steps, every


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _table(title: str) -> Table:
    # Rules under the header and above the totals (the footer), no frame, collapsed
    # padding: the calls table fits an 80-column terminal.
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE,
        show_edge=False,
        show_footer=True,
        collapse_padding=True,
    )


def _print_summary(summary: DemoSummary, console: Console) -> None:
    rate = summary.errors / summary.events if summary.events else 0.0
    # Two-line headers keep the table inside 80 columns without truncating a figure.
    headers = (
        "model",
        "calls",
        "error\nrate",
        "rate\nlimited",
        "p50\nms",
        "p95\nms",
        "tokens\nin",
        "tokens\nout",
    )
    footer = [
        "all",
        f"{summary.events:,}",
        f"{rate:.1%}",
        f"{summary.rate_limited:,}",
        _ms(summary.p50_ms),
        _ms(summary.p95_ms),
        f"{sum(m.prompt_tokens for m in summary.models):,}",
        f"{sum(m.completion_tokens for m in summary.models):,}",
    ]
    rows = [
        [
            m.model,
            f"{m.calls:,}",
            f"{m.error_rate:.1%}",
            f"{m.rate_limited:,}",
            _ms(m.p50_ms),
            _ms(m.p95_ms),
            f"{m.prompt_tokens:,}",
            f"{m.completion_tokens:,}",
        ]
        for m in summary.models
    ]
    calls = _table("LLM calls by model")
    for i, header in enumerate(headers):
        calls.add_column(header, footer[i], justify="right" if i else "left", no_wrap=True)
    for row in rows:
        calls.add_row(*row)
    console.print(calls)
    console.print(
        "[dim]ms: what the caller waited, retries included; tokens in/out: prompt/completion[/dim]"
    )

    if summary.runs:
        workflow = _table("Runs and steps")
        workflow.add_column("status", "all")
        workflow.add_column("runs", f"{summary.runs:,}", justify="right")
        workflow.add_column("steps", f"{summary.steps:,}", justify="right")
        for status in sorted(set(summary.runs_by_status) | set(summary.steps_by_status)):
            workflow.add_row(
                status,
                f"{summary.runs_by_status.get(status, 0):,}",
                f"{summary.steps_by_status.get(status, 0):,}",
            )
        console.print(workflow)

    per_second = summary.written / summary.elapsed if summary.elapsed > 0 else 0.0
    console.print(
        f"{summary.events:,} LLM calls ({summary.errors:,} errors, {summary.rate_limited:,} "
        f"rate-limited), {summary.runs:,} runs and {summary.steps:,} steps.\n"
        f"{summary.written:,} entries written in [bold]{summary.elapsed:.2f} s[/bold]: "
        f"[bold]{summary.events_per_second:,.0f} LLM calls/s[/bold], "
        f"{per_second:,.0f} entries/s.",
        highlight=False,
    )
    if summary.failed:
        console.print(
            f"[bold red]{summary.failed:,} entries could not be written[/bold red] "
            "(the errors are above).",
            highlight=False,
        )
    console.print(f"This demo's rows have environment = '{summary.environment}'.", highlight=False)


# -- the demo -----------------------------------------------------------------------------


def _new_environment() -> str:
    """A value unique to one demo, readable and sorting by time: demo-20261122-183455-9f3a."""
    return f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


async def run_demo(
    url: str,
    events: int = 10_000,
    *,
    concurrency: int = 64,
    seed: int = 0,
    console: Console | None = None,
) -> DemoSummary:
    """Migrate the database at ``url``, log a simulated gateway's traffic, summarise it.

    ``events`` is the number of LLM calls (workflow events come on top). Only rows are
    added; nothing is dropped or changed. Raises :class:`~eventlog.DatabaseError` if the
    database cannot be migrated or read; entries that could not be written are counted
    in :attr:`DemoSummary.failed` (the logger never raises for them). Cancelled (Ctrl-C),
    it stops at once rather than writing what is still queued: it is only a demo.
    """
    for name, value in (("events", events), ("concurrency", concurrency)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    console = console or Console()
    db = await open_database(url, migrate=True)
    try:
        return await _demo(db, events, concurrency, seed, console)
    finally:
        await db.close()


async def _demo(
    db: Database, events: int, concurrency: int, seed: int, console: Console
) -> DemoSummary:
    environment = _new_environment()
    console.print(f"Database {db.url}: schema up to date.", highlight=False)
    console.print(
        f"Simulating {events:,} LLM calls, {concurrency} at a time (seed {seed}),\n"
        f"in environment '{environment}'.",
        highlight=False,
    )
    sender, writer = start_database_logger(db, batch_size=500, debounce_time=0.1)
    gateway = _Gateway(sender, environment, seed)
    jobs = _plan(events, seed)
    progress = Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    sent_bar = progress.add_task("LLM calls sent", total=events)
    written_bar = progress.add_task("entries written", total=None)
    workers: list[asyncio.Task[None]] = []
    ticker: asyncio.Task[None] | None = None
    started = time.perf_counter()
    try:
        with progress:
            ticker = asyncio.create_task(_tick(progress, gateway, sent_bar, written_bar))
            workers = [asyncio.create_task(gateway.work(jobs)) for _ in range(concurrency)]
            await asyncio.gather(*workers)
            sender.close()
            await writer
            elapsed = time.perf_counter() - started
            ticker.cancel()
            _show(progress, gateway, sent_bar, written_bar)
    finally:
        # Reached early only on an error or a cancellation (Ctrl-C): stop everything.
        sender.close()
        pending = [t for t in (*workers, ticker, writer) if t is not None and not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    stats = sender.stats()
    models, runs, steps, latencies = await _read_summary(db, environment)
    summary = DemoSummary(
        url=db.url,
        environment=environment,
        events=sum(m.calls for m in models),
        errors=sum(m.errors for m in models),
        rate_limited=sum(m.rate_limited for m in models),
        runs=sum(runs.values()),
        steps=sum(steps.values()),
        models=tuple(models),
        runs_by_status=runs,
        steps_by_status=steps,
        elapsed=elapsed,
        events_per_second=gateway.calls / elapsed if elapsed > 0 else 0.0,
        sent=stats.sent,
        written=stats.written,
        failed=stats.failed,
        p50_ms=_percentile(latencies, 0.50),
        p95_ms=_percentile(latencies, 0.95),
    )
    _print_summary(summary, console)
    return summary


def _show(progress: Progress, gateway: _Gateway, sent_bar: TaskID, written_bar: TaskID) -> None:
    stats = gateway.sender.stats()
    progress.update(sent_bar, completed=gateway.calls)
    failed = f" ({stats.failed:,} failed)" if stats.failed else ""
    progress.update(
        written_bar,
        completed=stats.written,
        total=stats.sent,
        description=f"entries written{failed}",
    )


async def _tick(
    progress: Progress, gateway: _Gateway, sent_bar: TaskID, written_bar: TaskID
) -> None:
    while True:
        _show(progress, gateway, sent_bar, written_bar)
        await asyncio.sleep(0.05)
