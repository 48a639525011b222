"""Schema migrations with alembic, from code or the CLI, inside a running event loop.

The alembic scripts are the repository's ``migrations/`` folder; a wheel carries them as
``eventlog/_migrations``, so migrating works from an installed package too.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from eventlog.exceptions import MigrationError

__all__ = ["alembic_config", "downgrade", "migrations_dir", "upgrade"]


def migrations_dir() -> Path:
    """Where the alembic scripts are: inside the package when installed from a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationError(f"alembic migrations not found next to {here}")


def alembic_config(url: str | None = None) -> Config:
    """An alembic ``Config`` for eventlog's migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _run(connection: Connection, action: str, revision: str) -> None:
    config = alembic_config()
    # migrations/env.py runs on this connection instead of opening its own engine, so
    # this works inside an event loop (alembic's async template calls asyncio.run()).
    config.attributes["connection"] = connection
    if action == "upgrade":
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)


async def _apply(engine: AsyncEngine, action: str, revision: str) -> None:
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run, action, revision)
    except Exception as err:
        raise MigrationError(f"could not {action} the schema to {revision!r}: {err}") from err


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (default: the newest)."""
    await _apply(engine, "upgrade", revision)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    """Take the schema down to ``revision`` (default: no eventlog tables at all)."""
    await _apply(engine, "downgrade", revision)
