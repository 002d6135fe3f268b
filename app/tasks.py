"""The task registry: which task types exist, which function runs each, and on which queues.

Queues are declared in `queues.py`; they are looked up by name here, where a wrong name becomes a product error.

Handlers register with the `@task("queue.name")` decorator in their module under `workers/`. Jobs carry the task
type, never a function path, so a worker only ever runs registered code, whatever is planted in Redis.
Handler modules keep module-level imports light: the web app imports them to validate job data.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import queues
from app.errors import DuplicateTaskError, InvalidJobError, UnknownQueueError, UnknownTaskError
from queues import QUEUES, QueueKeys, QueueSpec, queue_names

#: the package whose modules hold the handlers: `system` (built-in tasks) and one module per queue
HANDLER_PACKAGE = "workers"

_TASK_NAME = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$")
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")

#: the job names of the systems bullrq replaces (seeds/), accepted wherever a task type is, so their callers keep
#: working; a job created under an alias is stored, listed and recorded under the task type it names
ALIASES = {
    "sync-manual": "sync.manual",  # Bull: POST /api/admin/workers {"type": "sync-manual"}
    "generate-report": "reports.generate",  # Bull: {"type": "generate-report", "data": {"scheduleId"}}
    "cleanup": "system.retention_cleanup",  # jobs system: old jobs and run logs, daily 03:00
    "update_stats": "system.update_stats",  # jobs system: weekly stats, Sunday 04:00
    "harvest": "harvest.run",  # jobs system: content from the sources, daily 02:00
    "generate_embeddings": "embeddings.generate",  # jobs system: embeddings, Saturday 01:00
}


def camel(name: str) -> str:
    """A handler's argument name as job data writes it (workspace_id -> workspaceId)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclass(frozen=True)
class Task:
    """A registered task type."""

    name: str
    func: Callable[..., Any]
    queue: str | None  #: the queue its jobs go to by default; None: any queue, chosen per job
    validate: Callable[[dict], None] | None = None  #: raises InvalidJobError for bad data
    group_by: str | None = None  #: the argument whose value is a job's group when its options name none

    def group_of(self, kwargs: dict) -> str | None:
        """The group of a job with these arguments, by `group_by` (None when it has none)."""
        value = kwargs.get(self.group_by) if self.group_by else None
        return str(value) if value not in (None, "") else None

    def takes(self, argument: str) -> bool:
        """Whether the handler has a parameter named `argument`."""
        return argument in _signature(self.func).parameters

    def bind(self, data: dict) -> dict:
        """The keyword arguments for the handler from job data (camelCase keys become snake_case).

        Raises:
            InvalidJobError: data is not an object, names an unknown argument or lacks a required one.
        """
        if not isinstance(data, dict):
            raise InvalidJobError(f"data for {self.name} must be a JSON object, not {type(data).__name__}")
        kwargs = {_snake(name): value for name, value in data.items()}
        if len(kwargs) < len(data):  # two keys for one argument (workspaceId and workspace_id)
            first: dict[str, str] = {}
            for name in data:
                other = first.setdefault(_snake(name), name)
                if other != name:
                    raise InvalidJobError(f"data for {self.name}: fields {other!r} and {name!r} name the same "
                                          f"argument; give one")
        if not _shape(self.func).fits(kwargs):  # the slow path, only to name what is wrong
            self._check_fields(data, kwargs)
            try:
                _signature(self.func).bind(**kwargs)
            except TypeError as exc:
                raise InvalidJobError(f"data for {self.name}: {exc}") from None
        if self.validate is not None:
            self.validate(kwargs)
        return kwargs

    def _check_fields(self, data: dict, kwargs: dict) -> None:
        """Unknown and missing fields named as job data writes them (camelCase), never as Python's arguments."""
        parameters = _signature(self.func).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return
        fields = [camel(name) for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        listed = f"fields: {', '.join(fields)}" if fields else "it takes no field"
        unknown = [written for written, name in zip(data, kwargs, strict=True) if name not in parameters]
        if unknown:
            raise InvalidJobError(f"data for {self.name}: unknown field {unknown[0]!r}; {listed}")
        required = [name for name, p in parameters.items()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        missing = [camel(name) for name in required if name not in kwargs]
        if missing:
            raise InvalidJobError(f"data for {self.name}: missing {', '.join(repr(name) for name in missing)}; "
                                  f"{listed}")


class TaskRegistry:
    """Task types by name; refuses a second registration of the same name."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def register(self, task: Task) -> None:
        if not _TASK_NAME.match(task.name):
            raise ValueError(f"task type {task.name!r} must look like 'area.action' (lowercase, dotted)")
        existing = self._tasks.get(task.name)
        if existing is not None and existing.func is not task.func:
            raise DuplicateTaskError(f"task type {task.name!r} is already registered by {_path(existing.func)}")
        self._tasks[task.name] = task

    def get(self, name: str) -> Task:
        """The task registered as `name`, or as the task type the alias `name` stands for (`ALIASES`).

        Raises:
            UnknownTaskError: nothing is registered under that name.
        """
        try:
            return self._tasks[ALIASES.get(name, name) if isinstance(name, str) else name]
        except (KeyError, TypeError):
            raise UnknownTaskError(str(name), self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        return (ALIASES.get(name, name) if isinstance(name, str) else name) in self._tasks


registry = TaskRegistry()
_loaded = False


def task(name: str, *, queue: str | None, validate: Callable[[dict], None] | None = None, group_by: str | None = None):
    """Register the decorated function as task type `name`, run on `queue` (None: any queue); with `group_by`, the
    value of that argument is the group of each job (option `group`) unless the job names its own."""

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        if queue is not None:
            get_queue_spec(queue)  # a typo in a queue name fails at import, not at enqueue
        registry.register(Task(name, func, queue, validate, group_by))
        return func

    return decorator


def load_tasks() -> TaskRegistry:
    """Import every module of the handler package once so all task types are registered; returns the registry."""
    global _loaded
    if not _loaded:
        package = importlib.import_module(HANDLER_PACKAGE)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{HANDLER_PACKAGE}.{module.name}")
        _loaded = True
    return registry


def get_task(name: str) -> Task:
    """The registered task `name`, loading the handler modules on first use."""
    return load_tasks().get(name)


def get_queue_spec(name: str) -> QueueSpec:
    """The policy of queue `name`.

    Raises:
        UnknownQueueError: `name` is not declared here.
    """
    try:
        return QUEUES[name]
    except KeyError:
        raise UnknownQueueError(name, queue_names()) from None


def queue_keys(name: str) -> QueueKeys:
    """The keys of declared queue `name`.

    Raises:
        UnknownQueueError: `name` is not declared here.
    """
    return queues.queue_keys(get_queue_spec(name).name)


@functools.cache
def _signature(func: Callable) -> inspect.Signature:
    return inspect.signature(func)


@dataclass(frozen=True)
class _Shape:
    """What keyword arguments a handler accepts, read once from its signature (binding a signature per job costs
    more than the rest of an enqueue's validation)."""

    names: frozenset[str]  #: arguments that can be passed by keyword
    required: frozenset[str]  #: those without a default
    any_name: bool  #: it takes **kwargs
    positional_only: bool  #: a required argument can only be passed by position: no job data fits

    def fits(self, kwargs: dict) -> bool:
        keys = kwargs.keys()
        return not self.positional_only and (self.any_name or keys <= self.names) and self.required <= keys


@functools.cache
def _shape(func: Callable) -> _Shape:
    parameters = _signature(func).parameters.values()
    keyword = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return _Shape(
        names=frozenset(p.name for p in keyword),
        required=frozenset(p.name for p in keyword if p.default is p.empty),
        any_name=any(p.kind is p.VAR_KEYWORD for p in parameters),
        positional_only=any(p.kind is p.POSITIONAL_ONLY and p.default is p.empty for p in parameters),
    )


@functools.lru_cache(maxsize=4096)
def _snake(name: str) -> str:
    """A job data key as the handler's argument name (workspaceId -> workspace_id); keys repeat, so cached."""
    return _CAMEL.sub(r"_\1", name).lower()


def _path(func: Callable) -> str:
    return f"{func.__module__}.{func.__qualname__}"
