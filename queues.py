"""The queues of bullrq and their policies: the one place that declares them and names their Redis keys.

RQ's own keys keep RQ's names and formats, so `rq info`, rq-scheduler and rq-dashboard read our queues and jobs:

    rq:queue:<q>            list    waiting jobs of normal priority (RQ's queue)
    rq:wip:<q>              zset    running jobs, "<job id>:<execution id>" scored by the time their lease ends
    rq:scheduled:<q>        zset    delayed jobs and delayed retries, scored by the time they are due
    rq:finished:<q>         zset    completed jobs, scored by their expiry time (also failed:, canceled:)
    rq:job:<id>             hash    the job (RQ's fields, plus priority, attempts, dedup_key and progress)
    rq:results:<id>         stream  the job's results (RQ's format)

Keys of our own, `bullrq:<queue>:<family>[:<part>]`:

    bullrq:<q>:lane:<p>     list    waiting jobs of priority p (1 first .. 10 last; 5 is rq:queue:<q>)   no TTL
    bullrq:<q>:paused       string  present while the queue is paused                                  no TTL
    bullrq:<q>:marker       list    at most one element: "work may be waiting", wakes idle workers        no TTL
    bullrq:<q>:limiter      string  jobs started in the current rate-limit window                   TTL: the window
    bullrq:<q>:dedup:<key>  string  id of the job holding dedup key <key>                  TTL: 7 days, freed at end
    bullrq:<q>:stats        hash    counters: completed, failed, retried, canceled, abandoned           no TTL
    bullrq:worker:<name>:commands  list  commands for one worker process (cancel <job id>)        TTL: 1 day
    bullrq:history          stream  run-history rows on their way to PostgreSQL (app.history)   capped length
    bullrq:scheduler:leader string  identity of the active scheduler process                    TTL: 5 s, renewed
    bullrq:scheduler:tick   string  epoch seconds of the active scheduler's last completed tick   TTL: 1 day
    bullrq:processes:restarts  hash  "<host>/<process>" -> restarts by the supervisor of a run directory  no TTL
    bullrq:cache-cleanup:cursor:<pattern>  string  SCAN cursor where the next cache cleanup resumes   TTL: 7 days
    bullrq:sync:fanout:<job id>  set  workspaces a scheduled sync already enqueued (retry-safe)       TTL: 1 day
    bullrq:cache:<area>:... handler caches (sync answers: cache:sync:<sha256>; AI results: cache:ai:...)  TTL set
                            by their writer; swept by the cache-cleanup queue

Every key is built here; nothing else writes our key names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from rq.job import Job
from rq.queue import Queue
from rq.registry import (
    CanceledJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from app.errors import UnknownQueueError

#: prefix of every Redis key bullrq writes outside RQ's own `rq:` keys
KEY_PREFIX = "bullrq"
#: priorities run from 1 (first) to 10 (last); NORMAL jobs wait in RQ's own list
PRIORITY_RANGE = range(1, 11)
NORMAL_PRIORITY = 5
JOB_KEY_PREFIX = Job.redis_job_namespace_prefix
RESULTS_KEY_PREFIX = "rq:results:"
#: run-history rows waiting to be written to PostgreSQL
HISTORY_STREAM = f"{KEY_PREFIX}:history"
#: the active scheduler's lease
SCHEDULER_LEADER_KEY = f"{KEY_PREFIX}:scheduler:leader"
#: when the active scheduler last completed a tick (epoch seconds)
SCHEDULER_TICK_KEY = f"{KEY_PREFIX}:scheduler:tick"
#: restarts of crashed processes, per host and process name (app.supervisor)
PROCESS_RESTARTS_KEY = f"{KEY_PREFIX}:processes:restarts"
#: RQ's set of known queue keys (`rq info` lists queues from it)
QUEUES_SET = Queue.redis_queues_keys


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
            concurrency=5,  # the original system sent at most 5 requests at once
            rate_limit=RateLimit(max_jobs=20, period=1.0),  # the providers' APIs throttle bursts
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


def job_key(job_id: str) -> str:
    return JOB_KEY_PREFIX + job_id


def results_key(job_id: str) -> str:
    return RESULTS_KEY_PREFIX + job_id


def worker_commands_key(worker_name: str) -> str:
    return ":".join((KEY_PREFIX, "worker", worker_name, "commands"))


@dataclass(frozen=True)
class QueueKeys:
    """Every Redis key of one queue, RQ's and ours."""

    name: str

    @property
    def queue(self) -> str:
        return Queue.redis_queue_namespace_prefix + self.name

    @property
    def started(self) -> str:
        return StartedJobRegistry.key_template.format(self.name)

    @property
    def scheduled(self) -> str:
        return ScheduledJobRegistry.key_template.format(self.name)

    @property
    def finished(self) -> str:
        return FinishedJobRegistry.key_template.format(self.name)

    @property
    def failed(self) -> str:
        return FailedJobRegistry.key_template.format(self.name)

    @property
    def canceled(self) -> str:
        return CanceledJobRegistry.key_template.format(self.name)

    @property
    def workers(self) -> str:
        """RQ's set of the worker keys serving this queue."""
        return WORKERS_BY_QUEUE_KEY % self.name

    @property
    def paused(self) -> str:
        return key(self.name, "paused")

    @property
    def marker(self) -> str:
        return key(self.name, "marker")

    @property
    def limiter(self) -> str:
        return key(self.name, "limiter")

    @property
    def stats(self) -> str:
        return key(self.name, "stats")

    def dedup(self, dedup_key: str) -> str:
        return key(self.name, "dedup", dedup_key)

    def lane(self, priority: int) -> str:
        return self.queue if priority == NORMAL_PRIORITY else key(self.name, "lane", str(priority))

    @property
    def lanes(self) -> list[str]:
        """The waiting lists in the order workers take from them: priority 1 first."""
        return [self.lane(p) for p in PRIORITY_RANGE]


def queue_keys(name: str) -> QueueKeys:
    """The keys of declared queue `name`.

    Raises:
        UnknownQueueError: `name` is not declared here.
    """
    return QueueKeys(get_queue_spec(name).name)
