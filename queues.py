"""The queues of bullrq and their policies: the one place that declares them and names their Redis keys.

RQ's own keys keep RQ's names and formats, so `rq info`, rq-scheduler and rq-dashboard read our queues and jobs:

    rq:queue:<q>            list    waiting jobs of normal priority (RQ's queue)
    rq:queue:<q>:priority-<p>  list  waiting jobs of priority p (1 first .. 10 last, but 5: rq:queue:<q>); named
                            as RQ queues (and added to rq:queues when used) so `rq info` counts them, as lanes
                            of <q>
    rq:wip:<q>              zset    running jobs, "<job id>:<execution id>" scored by the time their lease ends,
                            in milliseconds (app.runtime.leases)
    rq:scheduled:<q>        zset    delayed jobs and delayed retries, scored by the time they are due
    rq:deferred:<q>         zset    jobs waiting for their parents (or their batch: callbacks), scored by creation
    rq:job:<id>:dependents  set     ids of the deferred jobs that wait for job <id> (RQ's key); gone once it ends
    rq:finished:<q>         zset    completed jobs, scored by their expiry time (also failed:, canceled:)
    rq:job:<id>             hash    the job (RQ's fields, plus priority, attempts, dedup_key and progress)
    rq:results:<id>         stream  the job's results (RQ's format)

Keys of our own, `bullrq:<queue>:<family>[:<part>]`:

    bullrq:<q>:paused       string  present while the queue is paused                                  no TTL
    bullrq:<q>:marker       list    at most one element: "work may be waiting", wakes idle workers        no TTL
    bullrq:<q>:limiter      string  jobs started in the current rate-limit window                   TTL: the window
    bullrq:batch:<id>       hash    a batch: total, pending, completed, failed, canceled, state, its callbacks'
                            job ids (app.runtime.flows)                            TTL: BATCH_TTL once it ends
    bullrq:<q>:groups:<p>   zset    the groups with jobs waiting at priority p (and "" for the lane while it has
                            jobs too), scored by their turn: workers take from them in rotation          no TTL
    bullrq:<q>:group:<g>:<p>  list  waiting jobs of group g at priority p                               no TTL
    bullrq:<q>:group-limits hash    group -> most of its jobs running at once, as its latest job asked   no TTL
    bullrq:<q>:turn         string  the last turn given in the rings of groups                         no TTL
    bullrq:<q>:dedup:<key>  string  id of the job holding dedup key <key>   TTL: due + timeout + 7 d, freed at end
    bullrq:<q>:stats        hash    counters: completed, failed, retried, canceled, abandoned           no TTL
    bullrq:<q>:lease-clock  hash    seen: Redis time of the last look for expired leases; grace: its end  no TTL
    bullrq:worker:<name>:commands  list  commands for one worker process (cancel <job id>)        TTL: 1 day
    bullrq:history          stream  run-history rows on their way to PostgreSQL (app.store.history)   capped length
    bullrq:scheduler:leader string  identity of the active scheduler process                    TTL: 5 s, renewed
    bullrq:alerts:evaluator string  identity of the process evaluating alerts (app.alerts)     TTL: 30 s, renewed
    bullrq:scheduler:tick   string  epoch seconds of the active scheduler's last completed tick   TTL: 1 day
    bullrq:processes:restarts  hash  "<host>/<process>" -> restarts by the supervisor of a run directory  no TTL
    bullrq:cache-cleanup:cursor:<pattern>  string  SCAN cursor where the next cache cleanup resumes   TTL: 7 days
    bullrq:sync:fanout-batches:<job id>  list  ids of the batches scheduled sync <job id> created, in order
                            (a retry creates only the rest: workers/_sync_fanout.py)                 TTL: 1 day
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
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

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
#: the alert evaluator's lease: one process at a time evaluates the alert conditions (app.alerts.evaluator)
ALERTS_LEASE_KEY = f"{KEY_PREFIX}:alerts:evaluator"
#: when the active scheduler last completed a tick (epoch seconds)
SCHEDULER_TICK_KEY = f"{KEY_PREFIX}:scheduler:tick"
#: restarts of crashed processes, per host and process name (app.local.supervisor)
PROCESS_RESTARTS_KEY = f"{KEY_PREFIX}:processes:restarts"
#: RQ's set of known queue keys (`rq info` lists queues from it)
QUEUES_SET = Queue.redis_queues_keys
#: seconds a batch's hash is kept once its last job has ended
BATCH_TTL = 7 * 24 * 3600
#: what joins a queue's name and a priority in a lane's name: RQ's tools show lane 1 of `sync` as `sync:priority-1`
LANE_INFIX = "priority-"


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
class AlertSpec:
    """When a queue raises an alert (app.alerts); each value can be overridden by environment (README "Alerts").

    A threshold of 0 switches its condition off for the queue.
    """

    failed: bool = True  #: a job failed for good (attempts exhausted, or a permanent failure)
    failed_window: int = 600  #: seconds: failures of a task this close are one alert, which clears after as long
    quiet_tasks: frozenset[str] = frozenset()  #: task types whose failures raise no alert
    failure_rate: float = 0.2  #: share of finished attempts that failed, over `failure_window`
    failure_window: int = 900  #: seconds
    failure_min_runs: int = 20  #: attempts in the window below which no rate is judged
    backlog_waiting: int = 10_000  #: waiting jobs
    backlog_age: int = 3600  #: seconds the oldest waiting job has waited
    no_worker_after: int = 120  #: seconds without a live worker


@dataclass(frozen=True)
class SystemAlertSpec:
    """Alerts about the system as a whole (seconds; 0 switches the condition off)."""

    no_leader_after: int = 60  #: no scheduler process holds the lead
    schedule_late_after: int = 300  #: an enabled entry's due run has not fired
    schedule_failed: bool = True  #: an entry's last run failed, or ran past its max_runtime
    history_behind_after: int = 300  #: the oldest run-history row still waiting in Redis


#: the defaults of the system-wide alerts
SYSTEM_ALERTS = SystemAlertSpec()


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
    group_concurrency: int | None = None  #: jobs of one group (option `group`) running at once (None: no cap)
    rate_limit: RateLimit | None = None
    alerts: AlertSpec = field(default_factory=AlertSpec)


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
            group_concurrency=1,  # one sync of a workspace at a time (sync.manual's group is its workspace)
            rate_limit=RateLimit(max_jobs=20, period=1.0),  # the providers' APIs throttle bursts
            alerts=AlertSpec(backlog_age=1800),
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
            # messages people wait for: a short queue is already late
            alerts=AlertSpec(backlog_waiting=1000, backlog_age=300, no_worker_after=60),
        ),
        QueueSpec("harvest", "Fetch content from harvest sources", timeout=900),
        QueueSpec(
            "embeddings",
            "Embed harvested content",
            timeout=1800,
            alerts=AlertSpec(backlog_age=6 * 3600),  # weekly bulk runs wait their turn behind long batches
        ),
    )
}


def queue_names() -> list[str]:
    """Every declared queue, in declaration order."""
    return list(QUEUES)


def queue_keys(name: str) -> QueueKeys:
    """The keys of declared queue `name` (KeyError when none is declared by that name: `app.tasks.queue_keys`
    answers input from people with a clear error instead)."""
    return QueueKeys(QUEUES[name].name)


def key(queue: str, kind: str, *parts: str) -> str:
    """The Redis key of family `kind` for `queue` (see the module docstring for the families)."""
    return ":".join((KEY_PREFIX, queue, kind, *parts))


def job_key(job_id: str) -> str:
    return JOB_KEY_PREFIX + job_id


def results_key(job_id: str) -> str:
    return RESULTS_KEY_PREFIX + job_id


def dependents_key(job_id: str) -> str:
    """The set of the jobs that wait for job `job_id` (RQ's own key, so RQ's `Job.dependent_ids` reads it)."""
    return Job.dependents_key_for(job_id)


def batch_key(batch_id: str) -> str:
    return ":".join((KEY_PREFIX, "batch", batch_id))


def sync_fanout_key(job_id: str) -> str:
    """The batches scheduled sync `job_id` created (workers/_sync_fanout.py)."""
    return key("sync", "fanout-batches", job_id)


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
    def deferred(self) -> str:
        return DeferredJobRegistry.key_template.format(self.name)

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


    @property
    def lease_clock(self) -> str:
        return key(self.name, "lease-clock")

    def dedup(self, dedup_key: str) -> str:
        return key(self.name, "dedup", dedup_key)

    def ring(self, priority: int) -> str:
        """The groups with jobs waiting at `priority`, in the order of their turns."""
        return key(self.name, "groups", str(priority))

    @property
    def rings(self) -> list[str]:
        return [self.ring(p) for p in PRIORITY_RANGE]

    def group_lane(self, group: str, priority: int) -> str:
        return key(self.name, "group", group, str(priority))

    @property
    def group_limits(self) -> str:
        return key(self.name, "group-limits")

    @property
    def turn(self) -> str:
        return key(self.name, "turn")

    def lane(self, priority: int) -> str:
        return self.queue if priority == NORMAL_PRIORITY else f"{self.queue}:{LANE_INFIX}{priority}"

    @property
    def lanes(self) -> list[str]:
        """The waiting lists in the order workers take from them: priority 1 first."""
        return [self.lane(p) for p in PRIORITY_RANGE]

    @property
    def legacy_lanes(self) -> dict[int, str]:
        """Where releases before lanes were named as RQ queues kept them (`bullrq:<q>:lane:<p>`), by priority."""
        return {p: key(self.name, "lane", str(p)) for p in PRIORITY_RANGE if p != NORMAL_PRIORITY}
