"""The migration runner and `bullrq db migrate` / `db status`, on a fresh database of the real PostgreSQL."""

from __future__ import annotations

import hashlib
import threading

import psycopg
import pytest

from app.cli.main import cli
from app.errors import MigrationError
from app.local.servers import free_port
from app.store.migrate import MIGRATIONS_DIR, apply_migrations, discover, migration_status

pytestmark = pytest.mark.postgres


def _query(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def _exists(url: str, relation: str) -> bool:
    return _query(url, f"SELECT to_regclass('{relation}') IS NOT NULL")[0][0]


def _job_run(conn: psycopg.Connection, job_id: str, attempt: int = 1, status: str = "completed") -> None:
    conn.execute(
        "INSERT INTO job_runs (job_id, attempt, queue, task, status) VALUES (%s, %s, 'default', 'system.ping', %s)",
        (job_id, attempt, status),
    )


@pytest.fixture
def two_files(tmp_path):
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_first.sql").write_text("CREATE TABLE first_t (id int);\n")
    (directory / "0002_second.sql").write_text("CREATE TABLE second_t (id int);\nSELECT 1 / 0;\n")
    return directory


def test_apply_on_an_empty_database_creates_the_schema(database_url):
    assert not _exists(database_url, "job_runs")
    applied = apply_migrations(database_url)
    shipped = discover()
    assert [m.version for m in applied] == [m.version for m in shipped] == list(range(1, len(shipped) + 1))
    assert _exists(database_url, "job_runs") and _exists(database_url, "job_schedules")
    checksum = hashlib.sha256((MIGRATIONS_DIR / "0001_job_runs.sql").read_bytes()).hexdigest()
    rows = _query(database_url, "SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    assert rows[0] == (1, "job_runs", checksum) and len(rows) == len(shipped)


def test_second_run_applies_nothing_and_changes_nothing(database_url):
    apply_migrations(database_url)
    before = _query(database_url, "SELECT * FROM schema_migrations ORDER BY version")
    assert apply_migrations(database_url) == []
    assert _query(database_url, "SELECT * FROM schema_migrations ORDER BY version") == before


def test_migration_status_before_and_after(database_url):
    names = [m.path.name for m in discover()]
    assert [(m.path.name, done) for m, done in migration_status(database_url)] == [(n, False) for n in names]
    apply_migrations(database_url)
    assert [(m.path.name, done) for m, done in migration_status(database_url)] == [(n, True) for n in names]


def test_a_failing_file_leaves_nothing_behind(database_url, two_files):
    with pytest.raises(MigrationError, match="0002_second.sql failed"):
        apply_migrations(database_url, two_files)
    assert _exists(database_url, "first_t")
    assert not _exists(database_url, "second_t")
    assert _query(database_url, "SELECT version FROM schema_migrations") == [(1,)]


def test_an_applied_file_edited_afterwards_is_refused(database_url, two_files):
    (two_files / "0002_second.sql").unlink()
    apply_migrations(database_url, two_files)
    (two_files / "0001_first.sql").write_text("CREATE TABLE first_t (id bigint);\n")
    with pytest.raises(MigrationError, match="0001_first.sql changed after it was applied"):
        apply_migrations(database_url, two_files)


@pytest.mark.parametrize(
    ("names", "message"),
    [(["1_bad.sql"], "must be named NNNN_name.sql"), (["0001_a.sql", "0001_b.sql"], "share version 1")],
)
def test_discover_refuses_bad_file_names(tmp_path, names, message):
    for name in names:
        (tmp_path / name).write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match=message):
        discover(tmp_path)


def test_concurrent_runs_apply_each_migration_once(database_url):
    barrier, results, errors = threading.Barrier(4), [], []

    def run():
        barrier.wait()
        try:
            results.append(apply_migrations(database_url))
        except Exception as exc:  # collected: an exception in a thread would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(m.version for applied in results for m in applied) == [m.version for m in discover()]
    counts = _query(database_url, "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY 1")
    assert counts == [(m.version, 1) for m in discover()]


def test_job_runs_rejects_a_duplicate_attempt_and_an_unknown_status(database_url):
    apply_migrations(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        _job_run(conn, "job-1", attempt=1)
        _job_run(conn, "job-1", attempt=2)
        with pytest.raises(psycopg.errors.UniqueViolation):
            _job_run(conn, "job-1", attempt=1)
        with pytest.raises(psycopg.errors.CheckViolation):
            _job_run(conn, "job-2", status="exploded")
        assert conn.execute("SELECT count(*) FROM job_runs").fetchone()[0] == 2


def test_cli_db_migrate_and_status(runner, database_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    names = [m.path.name for m in discover()]
    status = runner.invoke(cli, ["db", "status"])
    assert status.exit_code == 0 and status.output.split() == [w for n in names for w in ("pending", n)]

    first = runner.invoke(cli, ["db", "migrate"])
    assert first.exit_code == 0, first.output
    assert first.output.splitlines() == [f"applied {n}" for n in names] + [
        f"{len(names)} migration(s) applied; schema up to date"
    ]
    second = runner.invoke(cli, ["db", "migrate"])
    assert second.exit_code == 0
    assert second.output.splitlines() == ["0 migration(s) applied; schema up to date"]
    assert runner.invoke(cli, ["db", "status"]).output.split() == [w for n in names for w in ("applied", n)]


@pytest.mark.parametrize("command", ["migrate", "status"])
def test_cli_db_with_postgres_down_says_so_in_one_line(runner, monkeypatch, command):
    monkeypatch.setenv("DATABASE_URL", f"postgresql://bullrq:s3cret-pw@127.0.0.1:{free_port()}/bullrq")
    result = runner.invoke(cli, ["db", command])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: PostgreSQL is unreachable"), result.stderr
    assert "Traceback" not in result.output and "s3cret-pw" not in result.output
