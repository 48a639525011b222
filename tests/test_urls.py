"""Database URLs: every accepted form, and clear errors for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventlog.database import _asyncpg_connect_args, normalize_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h:5433/db", "postgresql+asyncpg://u@h:5433/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///rel/events.db", "sqlite+aiosqlite:///rel/events.db"),
        ("sqlite:////abs/events.db", "sqlite+aiosqlite:////abs/events.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("events.db", "sqlite+aiosqlite:///events.db"),
        ("/var/lib/app/events.db", "sqlite+aiosqlite:////var/lib/app/events.db"),
    ],
)
def test_accepted_forms(url: str, expected: str) -> None:
    assert normalize_url(url).render_as_string(hide_password=False) == expected


def test_a_path_object_is_a_sqlite_file(tmp_path: Path) -> None:
    assert normalize_url(tmp_path / "e.db").database == str(tmp_path / "e.db")


@pytest.mark.parametrize(
    "url", ["mysql://root@localhost/db", "redis://localhost", "postgresql+psycopg2://h/db", ""]
)
def test_other_schemes_name_the_supported_ones(url: str) -> None:
    with pytest.raises(ValueError, match=r"postgresql://.*sqlite:///") as info:
        normalize_url(url)
    assert "postgres://" in str(info.value)


def test_libpq_sslmode_and_connect_timeout_become_asyncpg_arguments() -> None:
    url = normalize_url("postgresql://u@h/db?sslmode=require&connect_timeout=5")
    args = _asyncpg_connect_args(url)
    assert args.pop("max_cacheable_statement_size") >= 17 * 1024  # the rollup's statement
    assert args == {"ssl": "require", "timeout": 5.0}


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql://h/db?application_name=x", "'application_name' is not supported"),
        ("postgresql://h/db?connect_timeout=soon", "connect_timeout='soon' is not valid"),
    ],
)
def test_unsupported_postgres_parameters_fail_at_once(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        normalize_url(url)
