"""The Redis half of the cache cleanup: SCAN a namespace, check keys in batches, UNLINK the stale ones.

Rule (the same for `cache.cleanup` and `cache.ai_cleanup`, only the idle limit differs):
- a key with a TTL is kept: Redis removes it when its writer said (SCAN itself drops keys whose TTL has run out);
- a key without a TTL never expires on its own: it is removed once nobody has read or written it for longer than
  the idle limit (OBJECT IDLETIME), and kept while it is still in use, so hot entries are never thrown away;
- a key whose idle time Redis does not track (an LFU maxmemory-policy) is kept and counted as unchecked.
Keys outside the pattern, RQ's `rq:` keys and bullrq's keys outside `bullrq:cache:` are never touched.

Redis keys of the cleanup itself (built by `queues.key`):

    bullrq:cache-cleanup:cursor:<pattern>  string  SCAN cursor where the next run resumes   TTL: 7 days
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from workers._cleanup_glob import compile_glob, is_protected

logger = logging.getLogger(__name__)

#: SCAN COUNT: hash-table slots Redis visits per call
SCAN_COUNT = 100
#: keys checked and removed per batch (two pipelined round trips)
BATCH_SIZE = 100
#: seconds a saved SCAN cursor lives: a pattern dropped from the configuration leaves nothing behind
CURSOR_TTL = 7 * 24 * 3600


def cursor_key(pattern: str) -> str:
    """The Redis key holding the SCAN cursor of `pattern` between runs."""
    from queues import key

    return key("cache-cleanup", "cursor", pattern)


def verdict(ttl_ms: object, idle: object, max_idle: float) -> str:
    """What to do with a key given its PTTL and OBJECT IDLETIME replies: remove, keep, gone or unchecked."""
    if isinstance(ttl_ms, Exception) or isinstance(idle, Exception):
        return "unchecked"
    if ttl_ms == -2 or idle is None:
        return "gone"
    if ttl_ms != -1:
        return "keep"
    return "remove" if idle > max_idle else "keep"


def used_memory(client) -> int:
    """Redis's `used_memory` (bytes) from INFO memory."""
    return int(client.info("memory")["used_memory"])


@dataclass(frozen=True)
class SweepRules:
    """How one run sweeps its namespaces."""

    max_idle: float  #: seconds a key without TTL may go unused
    max_keys: int  #: keys examined per run, all patterns together
    batch_delay: float  #: seconds between batches
    dry_run: bool = False  #: count what would go, remove nothing, leave the cursors alone
    exclude: tuple[str, ...] = ()  #: patterns another task cleans (their keys are skipped)


@dataclass
class NamespaceReport:
    """What one run did in one namespace."""

    pattern: str
    cursor_from: int
    cursor_to: int = 0
    cycle_complete: bool = False  #: the SCAN reached the end of the key space: the next run starts over
    scanned: int = 0  #: distinct keys SCAN returned (the cap counts these)
    candidates: int = 0  #: distinct keys the rule selects (removed, or would be in a dry run)
    removed: int = 0  #: keys UNLINK removed (0 in a dry run)
    kept: int = 0
    without_ttl: int = 0
    excluded: int = 0  #: keys left to another task (or refused by the safety guard)
    unchecked: int = 0
    bytes: int = 0  #: MEMORY USAGE of the candidates before removal (what a dry run would free)
    bytes_removed: int = 0  #: MEMORY USAGE of the candidates removed (0 in a dry run)
    #: keys seen so far: SCAN returns a key more than once while the key space shrinks (UNLINK) or grows
    seen: set = field(default_factory=set, repr=False, compare=False)


@dataclass
class SweepReport:
    """What one run did in Redis."""

    namespaces: list[NamespaceReport] = field(default_factory=list)
    batches: int = 0
    delays: int = 0
    scan_calls: int = 0

    def total(self, name: str) -> int:
        return sum(getattr(ns, name) for ns in self.namespaces)

    def as_dict(self) -> dict:
        return {
            "keys_scanned": self.total("scanned"),
            "keys_removed": self.total("removed"),
            "keys_candidates": self.total("candidates"),
            "keys_kept": self.total("kept"),
            "keys_without_ttl": self.total("without_ttl"),
            "keys_excluded": self.total("excluded"),
            "keys_unchecked": self.total("unchecked"),
            "bytes_candidates": self.total("bytes"),
            "bytes_removed": self.total("bytes_removed"),
            "batches": self.batches,
            "delays": self.delays,
            "scan_calls": self.scan_calls,
            "namespaces": [{k: v for k, v in asdict(ns).items() if k != "seen"} for ns in self.namespaces],
        }


class Sweeper:
    """One run over a list of namespace patterns, sharing the run's key budget between them."""

    def __init__(self, client, rules: SweepRules, on_batch: Callable[[SweepReport], None] = lambda report: None):
        self.client = client
        self.rules = rules
        self.on_batch = on_batch
        self.report = SweepReport()
        self._exclude = [compile_glob(pattern) for pattern in rules.exclude]

    def run(self, patterns: list[str]) -> SweepReport:
        """Sweep each pattern from its saved cursor; each gets a fair share of what is left of the budget."""
        budget = self.rules.max_keys
        for index, pattern in enumerate(patterns):
            share = budget // (len(patterns) - index)
            if share <= 0:
                self.report.namespaces.append(NamespaceReport(pattern, cursor_from=self._load_cursor(pattern)))
                continue
            namespace = self._sweep(pattern, share)
            budget -= namespace.scanned
        return self.report

    def _sweep(self, pattern: str, budget: int) -> NamespaceReport:
        matcher = compile_glob(pattern)
        cursor = self._load_cursor(pattern)
        namespace = NamespaceReport(pattern, cursor_from=cursor)
        self.report.namespaces.append(namespace)
        pending: list[bytes] = []
        while True:
            following, keys = self.client.scan(cursor, match=pattern, count=SCAN_COUNT)
            self.report.scan_calls += 1
            # SCAN guarantees every key at least once, not once: a key already seen this run is not counted again
            fresh = list(dict.fromkeys(key for key in keys if key not in namespace.seen))
            if namespace.scanned and namespace.scanned + len(fresh) > budget:
                break  # over the cap: this reply is read again by the next run, so no key is skipped
            namespace.scanned += len(fresh)
            namespace.seen.update(fresh)
            cursor = following
            pending.extend(key for key in fresh if self._eligible(key, matcher, namespace))
            while len(pending) >= BATCH_SIZE:
                self._batch(pending[:BATCH_SIZE], namespace)
                del pending[:BATCH_SIZE]
            if cursor == 0:
                namespace.cycle_complete = True
                break
            if namespace.scanned >= budget:
                break
        if pending:
            self._batch(pending, namespace)
        namespace.cursor_to = cursor
        self._save_cursor(pattern, cursor)
        return namespace

    def _eligible(self, key: bytes, matcher, namespace: NamespaceReport) -> bool:
        if not matcher.fullmatch(key) or is_protected(key):
            logger.warning("cache cleanup: SCAN MATCH %s returned %r, which the guard refuses", namespace.pattern, key)
            namespace.excluded += 1
            return False
        if any(other.fullmatch(key) for other in self._exclude):
            namespace.excluded += 1
            return False
        return True

    def _batch(self, keys: list[bytes], namespace: NamespaceReport) -> None:
        if self.report.batches:
            time.sleep(self.rules.batch_delay)  # spread the load: other clients get Redis between batches
            self.report.delays += 1
        self.report.batches += 1
        doomed = self._select(keys, namespace)
        if doomed:
            self._remove(doomed, namespace)
        self.on_batch(self.report)

    def _select(self, keys: list[bytes], namespace: NamespaceReport) -> list[bytes]:
        """The keys of the batch the rule removes (PTTL and OBJECT IDLETIME never refresh a key's idle time)."""
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
            pipe.object("idletime", key)
        replies = pipe.execute(raise_on_error=False)
        doomed = []
        for key, ttl, idle in zip(keys, replies[0::2], replies[1::2], strict=True):
            decision = verdict(ttl, idle, self.rules.max_idle)
            namespace.without_ttl += ttl == -1
            if decision == "remove":
                doomed.append(key)
            elif decision == "keep":
                namespace.kept += 1
            elif decision == "unchecked":
                namespace.unchecked += 1
        return doomed

    def _remove(self, doomed: list[bytes], namespace: NamespaceReport) -> None:
        """Measure the doomed keys, then UNLINK them (freed in the background for big values) unless a dry run."""
        pipe = self.client.pipeline(transaction=False)
        for key in doomed:
            pipe.memory_usage(key)
        if not self.rules.dry_run:
            pipe.unlink(*doomed)
        replies = pipe.execute(raise_on_error=False)
        namespace.candidates += len(doomed)
        size = sum(size for size in replies[: len(doomed)] if isinstance(size, int))
        namespace.bytes += size
        if not self.rules.dry_run:
            removed = replies[-1]
            if isinstance(removed, Exception):
                raise removed
            namespace.removed += removed
            namespace.bytes_removed += size

    def _load_cursor(self, pattern: str) -> int:
        raw = self.client.get(cursor_key(pattern))
        try:
            return max(0, int(raw)) if raw is not None else 0
        except ValueError:
            return 0  # a mangled cursor only costs a fresh start

    def _save_cursor(self, pattern: str, cursor: int) -> None:
        if self.rules.dry_run:
            return
        import redis

        try:
            if cursor == 0:
                self.client.unlink(cursor_key(pattern))
            else:
                self.client.set(cursor_key(pattern), cursor, ex=CURSOR_TTL)
        except redis.ResponseError as exc:  # e.g. OOM refuses SET: the keys are gone anyway, the cursor can wait
            logger.warning("cache cleanup: cursor of %s not saved: %s", pattern, exc)
