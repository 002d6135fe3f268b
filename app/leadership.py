"""A role one process holds at a time (the active scheduler, the alert evaluator): a Redis key with a TTL, taken
with SET NX and renewed only by its holder, so a dead holder's role passes to a standby once the TTL runs out."""

from __future__ import annotations

from redis import Redis
from redis.exceptions import RedisError

_RENEW_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class Leadership:
    """This process's claim on the role kept under `key`."""

    def __init__(self, redis: Redis, key: str, identity: str, ttl_ms: int):
        self.redis = redis
        self.key = key
        self.identity = identity
        self.ttl_ms = ttl_ms
        self.leading = False
        self._renew = redis.register_script(_RENEW_IF_OURS)

    def hold(self) -> str | None:
        """Renew the role if held, else try to take it. Returns "taken" when this call took it (fresh, or again
        after it lapsed: whatever the role set up must be set up again), "lost" when it was held and now is
        another's, None when nothing changed.

        Raises:
            RedisError: Redis did not answer (the role is then kept until its TTL runs out).
        """
        was = self.leading
        if self.leading:
            self.leading = bool(self._renew(keys=[self.key], args=[self.identity, self.ttl_ms]))
            if self.leading:
                return None
        self.leading = bool(self.redis.set(self.key, self.identity, nx=True, px=self.ttl_ms))
        if self.leading:
            return "taken"
        return "lost" if was else None

    def release(self) -> None:
        """Hand the role over at once on a clean stop, rather than after the TTL runs out."""
        if self.leading:
            try:
                if self.redis.get(self.key) == self.identity.encode():
                    self.redis.delete(self.key)
            except RedisError:
                pass
        self.leading = False
