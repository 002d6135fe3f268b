"""The Lua scripts of `app/runtime/lua/`, called by SHA (each runs atomically, in one round trip).

Each file is `<verb>-<number of keys>.lua` ("n" when the count varies) and opens with its KEYS, ARGV and return
value. Callers pass keys built by `queues.py`: `SCRIPTS.dequeue(client, keys, args)`, where `client` is a Redis
client or a pipeline. redis-py's own Script objects ask Redis whether the script is loaded before every pipeline
(one more round trip per job); these load once and again only when Redis answers NOSCRIPT (after a restart).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

LUA_DIR = Path(__file__).parent / "lua"


class LuaScript:
    """One script of `app/runtime/lua/`."""

    def __init__(self, path: Path):
        self.name = path.stem.rsplit("-", 1)[0]
        self.source = path.read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def __call__(self, client: Redis | Pipeline, keys: list, args: list):
        """Run the script; on a pipeline the call is queued (run it with `execute`)."""
        if isinstance(client, Pipeline):
            return client.evalsha(self.sha, len(keys), *keys, *args)
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


class Scripts:
    """Every script, as an attribute named by its verb."""

    def __init__(self, directory: Path = LUA_DIR):
        self.all = [LuaScript(path) for path in sorted(directory.glob("*.lua"))]
        for script in self.all:
            setattr(self, script.name, script)

    enqueue: LuaScript
    dequeue: LuaScript
    finish: LuaScript
    promote: LuaScript
    recover: LuaScript
    renew: LuaScript
    cancel: LuaScript
    requeue: LuaScript
    delete: LuaScript
    compact: LuaScript

    def load(self, connection: Redis) -> None:
        """Load every script into Redis's script cache."""
        for script in self.all:
            connection.script_load(script.source)

    def execute(self, connection: Redis, fill: Callable[[Pipeline], None]) -> list:
        """Run the script calls that `fill` queues on a pipeline, in one round trip; returns their replies.

        After NOSCRIPT (Redis restarted and lost its script cache) the scripts are loaded and the pipeline runs
        again: a command answered NOSCRIPT did not run, so nothing runs twice.
        """
        for attempt in (1, 2):
            with connection.pipeline(transaction=False) as pipe:
                fill(pipe)
                try:
                    return pipe.execute()
                except NoScriptError:
                    if attempt == 2:
                        raise
            self.load(connection)
        raise AssertionError("unreachable")


SCRIPTS = Scripts()
