"""Procfile and docker-compose.yml describe the same processes: web, scheduler and one worker per queue."""

from __future__ import annotations

import shlex
import tomllib

import pytest
import yaml

from app.config import PROJECT_ROOT
from queues import QUEUES

INFRASTRUCTURE = {"redis", "postgres"}


def procfile() -> dict[str, str]:
    processes = {}
    for line in (PROJECT_ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            assert name not in processes, f"Procfile declares {name} twice"
            processes[name.strip()] = command.strip()
    return processes


def compose() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())


def compose_commands() -> dict[str, str]:
    services = compose()["services"]
    return {name: service["command"] for name, service in services.items() if name not in INFRASTRUCTURE}


def program(command: str) -> list[str]:
    """The command without its options: compose adds the bind address and port that a Procfile host supplies."""
    words = shlex.split(command)
    return words[: next((i for i, w in enumerate(words) if w.startswith("-")), len(words))]


def test_procfile_names_are_the_compose_app_services():
    assert set(procfile()) == set(compose_commands())
    assert all("-" not in name for name in procfile())


def test_commands_match():
    proc, comp = procfile(), compose_commands()
    for name in proc:
        assert program(proc[name]) == program(comp[name]), name
        if name != "web":
            assert proc[name] == comp[name], name


@pytest.mark.parametrize("processes", [procfile(), compose_commands()], ids=["Procfile", "compose"])
def test_every_queue_has_exactly_one_worker_process(processes):
    served = [shlex.split(c)[2:] for c in processes.values() if shlex.split(c)[:2] == ["workers", "run"]]
    assert sorted(q for queues in served for q in queues) == sorted(QUEUES)
    assert all(len(queues) == 1 for queues in served)
    assert {"web", "scheduler"} <= set(processes)


def test_every_command_is_a_declared_console_script():
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for command in [*procfile().values(), *compose_commands().values()]:
        assert shlex.split(command)[0] in scripts, command


def test_compose_app_services_share_servers_and_wait_for_them():
    services = compose()["services"]
    assert services["redis"]["image"].startswith("redis:7")
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "healthcheck" in services["redis"] and "healthcheck" in services["postgres"]
    for name in compose_commands():
        env = services[name]["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        assert env["DATABASE_URL"] == "postgresql://bullrq:bullrq@postgres:5432/bullrq", name
        assert env["ADMIN_TOKEN"].startswith("${ADMIN_TOKEN:?"), name
        assert {dep: cond["condition"] for dep, cond in services[name]["depends_on"].items()} == {
            "redis": "service_healthy",
            "postgres": "service_healthy",
        }, name
    assert services["web"]["ports"] == ["8000:8000"]
