"""The migration runner: numbered SQL files in `app/store/migrations/`, applied in order under an advisory lock.

Each file runs in its own transaction with its row in `schema_migrations` (version, name, checksum), so a failed
file leaves nothing half-applied. Several processes may start at once: the lock makes the others wait, then find
nothing left to do. A file edited after it was applied is refused (its checksum no longer matches).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from app.errors import MigrationError
from app.store.db import connect

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: advisory lock key: any constant shared by every bullrq process ("bullrq" in ASCII)
LOCK_KEY = 0x62756C6C7271
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files of `directory`, in version order.

    Raises:
        MigrationError: a file is misnamed or two share a version.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name} must be named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"migrations {found[version].path.name} and {path.name} share version {version}")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


def _applied(conn: psycopg.Connection) -> dict[int, str]:
    return {row["version"]: row["checksum"] for row in conn.execute("SELECT version, checksum FROM schema_migrations")}


def apply_migrations(url: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply every migration not applied yet.

    Returns:
        The migrations applied by this call (empty when the schema was up to date).

    Raises:
        MigrationError: a file fails to apply, or an applied file was changed since.
        psycopg.OperationalError: PostgreSQL is unreachable.
    """
    migrations = discover(directory)
    applied_now: list[Migration] = []
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(_CREATE_TABLE)
            applied = _applied(conn)
            for migration in migrations:
                if migration.version in applied:
                    if applied[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.path.name} changed after it was applied; add a new file instead"
                        )
                    continue
                try:
                    with conn.transaction():
                        conn.execute(migration.sql)
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"migration {migration.path.name} failed: {exc}") from exc
                logger.info("migration %04d_%s applied", migration.version, migration.name)
                applied_now.append(migration)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied_now


def migration_status(url: str, directory: Path = MIGRATIONS_DIR) -> list[tuple[Migration, bool]]:
    """Every migration file and whether it has been applied."""
    with connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') AS t").fetchone()["t"]
        applied = _applied(conn) if exists else {}
    return [(m, m.version in applied) for m in discover(directory)]
