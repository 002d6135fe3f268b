"""The queues of bullrq and their policies: the one place that declares them and names our Redis keys.

RQ's `rq:` keys stay exactly as RQ writes them, so `rq info`, rq-scheduler and rq-dashboard keep reading our queues
and jobs. Keys of our own are `bullrq:<queue>:<family>[:<part>...]`, built only by `key()` below; each family is
listed here with its Redis type and TTL as the feature that needs it lands (none yet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from app.errors import UnknownQueueError

#: prefix of every Redis key bullrq writes outside RQ's own `rq:` keys
KEY_PREFIX = "bullrq"


class Isolation(StrEnum):
    """How a worker process runs a job."""

    INLINE = "inline"  # in the worker process: fast, for light handlers
    FORK = "fork"  # in a forked child per job: slower, a crash or leak cannot hurt the worker


class BackoffType(StrEnum):
    FIXED = "fixed"
    EXPONENTIAL = "exponential"


@dataclass(frozen=True)
class Backoff:
    """Delay before a retry: `delay` seconds, doubled per attempt when exponential (with jitter)."""

    type: BackoffType = BackoffType.EXPONENTIAL
    delay: float = 5.0  #: seconds


@dataclass(frozen=True)
class RateLimit:
    """At most `max_jobs` started per `period` seconds, across all workers."""

    max_jobs: int
    period: float  #: seconds


@dataclass(frozen=True)
class QueueSpec:
    """A queue's policy; the defaults apply to every job enqueued on it unless the job overrides them."""

    name: str
    description: str
    processes: int = 1  #: worker processes `workers start` runs for this queue
    isolation: Isolation = Isolation.INLINE
    timeout: int = 180  #: seconds a job may run
    attempts: int = 3  #: total tries, the first included
    backoff: Backoff = field(default_factory=Backoff)
    priority: str = "normal"  #: default priority of its jobs
    result_ttl: int = 24 * 3600  #: seconds a finished job and its result are kept
    failure_ttl: int = 7 * 24 * 3600  #: seconds a failed job is kept in the failed registry
    concurrency: int | None = None  #: jobs running at once across all workers (None: no cap)
    rate_limit: RateLimit | None = None


QUEUES: dict[str, QueueSpec] = {
    spec.name: spec
    for spec in (
        QueueSpec(
            "sync",
            "Sync records from external HTTP APIs into PostgreSQL",
            attempts=3,
            backoff=Backoff(BackoffType.FIXED, 30),
            timeout=600,
            concurrency=5,
        ),
        QueueSpec(
            "reports",
            "Build executive reports and hand them to notifications",
            timeout=300,
            concurrency=3,
        ),
        QueueSpec("cache-cleanup", "Remove expired cache keys and old rows", timeout=900, attempts=2),
        QueueSpec("documents", "Extract and analyse PDF documents", isolation=Isolation.FORK, timeout=600),
        QueueSpec(
            "notifications",
            "Deliver e-mail, webhooks and WhatsApp messages",
            priority="high",
            attempts=5,
            timeout=60,
        ),
        QueueSpec("harvest", "Fetch content from harvest sources", timeout=900),
        QueueSpec("embeddings", "Embed harvested content", timeout=1800),
    )
}


def queue_names() -> list[str]:
    """Every declared queue, in declaration order."""
    return list(QUEUES)


def get_queue_spec(name: str) -> QueueSpec:
    """The policy of queue `name`.

    Raises:
        UnknownQueueError: `name` is not declared here.
    """
    try:
        return QUEUES[name]
    except KeyError:
        raise UnknownQueueError(name, queue_names()) from None


def key(queue: str, kind: str, *parts: str) -> str:
    """The Redis key of family `kind` for `queue` (see the module docstring for the families)."""
    return ":".join((KEY_PREFIX, queue, kind, *parts))
