"""The task registry: unique dotted names, lookups that list what exists, and binding job data to a handler."""

from __future__ import annotations

import pytest

from app.errors import DuplicateTaskError, InvalidJobError, UnknownTaskError
from app.tasks import Task, TaskRegistry, get_task, load_tasks


def sync_records(provider, force_update=False, batch_size=50):
    return provider, force_update, batch_size


def other(provider):
    return provider


@pytest.fixture
def registry():
    reg = TaskRegistry()
    reg.register(Task("sync.records", sync_records, "sync"))
    return reg


def test_registry_refuses_a_second_function_under_the_same_name(registry):
    with pytest.raises(DuplicateTaskError, match="sync.records"):
        registry.register(Task("sync.records", other, "sync"))
    assert registry.get("sync.records").func is sync_records


def test_registering_the_same_function_again_is_harmless(registry):
    registry.register(Task("sync.records", sync_records, "sync"))
    assert registry.names() == ["sync.records"]


@pytest.mark.parametrize("name", ["ping", "System.ping", "sync.", ".sync", "sync..run", "1sync.run", "sync.run now"])
def test_bad_names_are_rejected(registry, name):
    with pytest.raises(ValueError):
        registry.register(Task(name, other, None))
    assert name not in registry


def test_unknown_type_lists_the_registered_ones(registry):
    registry.register(Task("reports.weekly", other, "reports"))
    with pytest.raises(UnknownTaskError) as excinfo:
        registry.get("os.system")
    assert excinfo.value.valid == ["reports.weekly", "sync.records"]
    assert "reports.weekly, sync.records" in str(excinfo.value)


def test_bind_converts_camel_case(registry):
    kwargs = registry.get("sync.records").bind({"provider": "primary", "forceUpdate": True, "batchSize": 10})
    assert kwargs == {"provider": "primary", "force_update": True, "batch_size": 10}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"provider": "p", "unknown": 1}, "unknown"),
        ({"forceUpdate": True}, "provider"),
        (["provider"], "JSON object"),
        ("provider", "JSON object"),
    ],
)
def test_bind_rejects_bad_data(registry, data, message):
    with pytest.raises(InvalidJobError, match=message):
        registry.get("sync.records").bind(data)


def test_bind_runs_the_validator():
    def validate(kwargs):
        if kwargs["provider"] not in ("primary", "fallback"):
            raise InvalidJobError("provider must be primary or fallback")

    t = Task("sync.records", sync_records, "sync", validate)
    assert t.bind({"provider": "fallback"}) == {"provider": "fallback"}
    with pytest.raises(InvalidJobError, match="primary or fallback"):
        t.bind({"provider": "other"})


def test_system_ping_is_registered_after_load_tasks():
    from workers.system import ping

    assert "system.ping" in load_tasks()
    t = get_task("system.ping")
    assert t.func is ping
    assert t.queue is None  # it runs on any queue
    assert t.func(echo="pong") == "pong"


def test_bind_names_fields_as_job_data_writes_them():
    task = get_task("sync.manual")
    with pytest.raises(InvalidJobError) as missing:
        task.bind({})
    assert str(missing.value) == "data for sync.manual: missing 'workspaceId'; fields: workspaceId, forceUpdate"
    with pytest.raises(InvalidJobError) as unknown:
        task.bind({"workspaceId": "w", "force": True})
    assert str(unknown.value) == "data for sync.manual: unknown field 'force'; fields: workspaceId, forceUpdate"
    assert "workspace_id" not in str(missing.value) + str(unknown.value)
    with pytest.raises(InvalidJobError, match="it takes no field"):
        get_task("reports.weekly").bind({"x": 1})


def test_the_seed_systems_job_names_are_aliases_of_our_task_types():
    from app.tasks import ALIASES

    registry = load_tasks()
    for alias, name in ALIASES.items():
        assert alias not in registry.names() and name in registry.names()
        assert get_task(alias) is get_task(name) and alias in registry
    assert {"sync-manual", "generate-report", "cleanup", "update_stats"} <= set(ALIASES)
    with pytest.raises(UnknownTaskError, match="registered types: "):
        get_task("extract-blueprints")  # a seed job with no counterpart here is not guessed at


def test_bind_refuses_two_keys_for_one_argument():
    """workspaceId and workspace_id both name `workspace_id`: a clear error, never a crash (it was a ValueError,
    an HTTP 500 on POST /api/admin/jobs)."""
    with pytest.raises(InvalidJobError) as twice:
        get_task("sync.manual").bind({"workspaceId": "a", "workspace_id": "b"})
    assert str(twice.value) == ("data for sync.manual: fields 'workspaceId' and 'workspace_id' name the same "
                                "argument; give one")


def positional(a, /, b=1):
    return a, b


def keywords(a, *, b, **rest):
    return a, b, rest


def test_bind_agrees_with_the_handlers_signature():
    """The argument check read once from a handler's signature accepts and refuses what binding it would."""
    assert Task("t.kw", keywords, None).bind({"a": 1, "b": 2, "anyName": 3}) == {"a": 1, "b": 2, "any_name": 3}
    with pytest.raises(InvalidJobError, match="'b'"):
        Task("t.kw", keywords, None).bind({"a": 1})  # **rest takes any name, but b has no default
    with pytest.raises(InvalidJobError):
        Task("t.pos", positional, None).bind({"a": 1})  # `a` can only be given by position
