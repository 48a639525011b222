"""Fuzz the collector from its own OpenAPI schema (schemathesis): no 5xx, and every
answer one the schema describes, for valid bodies and for broken ones.

In process over ASGI, on a real SQLite file: the fuzz is about the HTTP layer and the
parser, and writing through the real database (every POST may carry ``?wait=true``)
catches a value the parser lets through but storage refuses, which would be a 503.

One check is left out: ``negative_data_rejection``, which demands that a body breaking
the schema be refused. The parser is deliberately more lenient than the schema can say
(any ISO 8601 time, not only RFC 3339's; UUIDs in any form ``uuid.UUID`` reads; Unix
times up to datetime's last microsecond, not a round bound), so that check would flag
leniency, not faults. Broken bodies are still checked for what matters: no 5xx, and a
documented status with a documented body.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection

from eventlog.server import create_app

pytestmark = pytest.mark.slow

# Module level, as schemathesis's pytest integration wants; the folder is removed with
# the system's temporary files (a fixture-built schema fails under this pytest).
_FOLDER = Path(tempfile.mkdtemp(prefix="eventlog_fuzz_"))
app = create_app(
    f"sqlite:///{_FOLDER / 'events.db'}",
    migrate=True,
    max_body_bytes=64 * 1024,
    debounce_time=0,  # ?wait=true answers at once
)
# The /v1/ routes are the same handlers under another prefix: fuzzed once is enough.
schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(
    path_regex="^/(event|events|log|healthz|metrics|openapi.json)$"
)


@schema.parametrize()
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_api_answers_every_request_as_its_schema_says(case: schemathesis.Case) -> None:
    case.call_and_validate(excluded_checks=[negative_data_rejection])


_TOKEN = "fuzz-token"
guarded = schemathesis.openapi.from_asgi(
    "/openapi.json",
    create_app(f"sqlite:///{_FOLDER / 'guarded.db'}", migrate=True, token=_TOKEN, debounce_time=0),
    headers={"Authorization": f"Bearer {_TOKEN}"},
).include(path_regex="^/(events|log|healthz|metrics)$")


@guarded.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_with_a_token_the_api_still_answers_as_its_schema_says(case: schemathesis.Case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {_TOKEN}"}, excluded_checks=[negative_data_rejection]
    )
