"""A Redis Sentinel deployment on loopback for drills and tests: a master, a replica and three sentinels.

Every node asks for a password and so do the sentinels, so the product is proven with the credentials a real
deployment has. The sentinels' timings are short (`EmbeddedSentinel`): a killed master is replaced in seconds.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from app.errors import ServerError
from app.local.servers import EmbeddedRedis, EmbeddedSentinel, free_port
from app.sentinel import SentinelTarget

MASTER_NAME = "bullrq"
#: seconds to wait for the group to form, for a failover, for a restarted node to sync
READY_TIMEOUT = 60
POLL = 0.05


class SentinelGroup:
    """Two data nodes (one starts as master, one as its replica) and three sentinels with quorum 2."""

    def __init__(self, root: Path, sentinels: int = 3):
        self.password = secrets.token_urlsafe(12)
        self.sentinel_password = secrets.token_urlsafe(12)
        master_port = free_port()
        self.nodes = [
            EmbeddedRedis(root / "node-1", port=master_port, persistent=False, password=self.password),
            EmbeddedRedis(
                root / "node-2", port=free_port(), persistent=False, password=self.password, replica_of=master_port
            ),
        ]
        self.sentinels = [
            EmbeddedSentinel(
                root / f"sentinel-{n}",
                MASTER_NAME,
                master_port,
                port=free_port(),
                password=self.password,
                sentinel_password=self.sentinel_password,
            )
            for n in range(1, sentinels + 1)
        ]

    @property
    def target(self) -> SentinelTarget:
        return SentinelTarget(
            sentinels=tuple(s.address for s in self.sentinels),
            master=MASTER_NAME,
            password=self.password,
            sentinel_password=self.sentinel_password,
        )

    def env(self) -> dict[str, str]:
        """The variables that point bullrq at this group (the way an operator configures it)."""
        return {
            "REDIS_SENTINELS": ",".join(f"{host}:{port}" for host, port in self.target.sentinels),
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
            "REDIS_PASSWORD": self.password,
            "REDIS_SENTINEL_PASSWORD": self.sentinel_password,
        }

    def start(self) -> None:
        """Start every node and sentinel; return once the sentinels know the replica and one another."""
        for node in self.nodes:
            node.start()
        self.wait_synced(self.nodes[1])
        for sentinel in self.sentinels:
            sentinel.start()
        self._until(self._formed, "the sentinels did not find the replica and one another")

    def stop(self) -> None:
        for server in [*self.sentinels, *self.nodes]:
            server.stop()

    # -- reading the group ---------------------------------------------------------------------------------------

    def _client(self, node: EmbeddedRedis) -> Redis:
        return Redis(port=node.port, password=self.password, socket_timeout=2, socket_connect_timeout=2)

    def _ask_sentinels(self, question) -> list:
        """`question(client)` asked of each running sentinel (answers of those that fail are left out)."""
        answers = []
        for sentinel in self.sentinels:
            client = Redis(port=sentinel.port, password=self.sentinel_password, socket_timeout=2)
            try:
                answers.append(question(client))
            except RedisError:
                pass
            finally:
                client.close()
        return answers

    def _formed(self) -> bool:
        states = self._ask_sentinels(lambda c: c.sentinel_master(MASTER_NAME))
        return len(states) == len(self.sentinels) and all(
            s["num-slaves"] >= 1 and s["num-other-sentinels"] == len(self.sentinels) - 1 for s in states
        )

    def master_port(self) -> int | None:
        """The master's port, when every running sentinel agrees on it."""
        ports = {port for _, port in self._ask_sentinels(lambda c: c.sentinel_get_master_addr_by_name(MASTER_NAME))}
        return int(ports.pop()) if len(ports) == 1 else None

    def master(self) -> EmbeddedRedis:
        port = self.master_port()
        return next(node for node in self.nodes if node.port == port)

    def role(self, node: EmbeddedRedis) -> dict:
        """The node's INFO replication ({} when it does not answer)."""
        client = self._client(node)
        try:
            return client.info("replication")
        except RedisError:
            return {}
        finally:
            client.close()

    # -- damage and recovery -------------------------------------------------------------------------------------

    def kill_master(self) -> EmbeddedRedis:
        """SIGKILL the current master; returns its node (stopped)."""
        node = self.master()
        pid = int(node.pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        while node.is_running():
            time.sleep(0.01)
        return node

    def wait_promoted(self, old: EmbeddedRedis) -> EmbeddedRedis:
        """Wait until the sentinels name another master and it answers as one; returns it."""
        self._until(
            lambda: self.master_port() not in (None, old.port) and self.role(self.master()).get("role") == "master",
            "no replica was promoted",
        )
        return self.master()

    def wait_synced(self, replica: EmbeddedRedis) -> None:
        """Wait until `replica` replicates from the current master with its link up."""
        self._until(lambda: self.role(replica).get("master_link_status") == "up", f"node {replica.port} did not sync")

    def rejoin(self, node: EmbeddedRedis) -> None:
        """Start a killed node again: it comes back a master, the sentinels turn it into the new master's replica."""
        node.start()

        def following() -> bool:
            role = self.role(node)
            return role.get("role") == "slave" and role.get("master_port") == self.master_port()

        self._until(following, f"node {node.port} did not rejoin as a replica")
        self.wait_synced(node)

    @staticmethod
    def _until(condition, failure: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not condition():
            if time.monotonic() > deadline:
                raise ServerError(f"sentinel group: {failure} in {READY_TIMEOUT} s")
            time.sleep(POLL)
