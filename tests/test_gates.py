"""The gates of the test and drill handlers (bench/gates.py) on the real redis-server: a token pushed while the
run waiting at the gate is gone (SIGKILLed, its connection not yet closed by the server; here SIGSTOPped, which
the server cannot tell apart) stays for the next run. Drill a once lost a job so: its held job's retry waited
forever for a token Redis 6.2 had handed to the killed run's BLPOP."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import redis

from bench.gates import pass_gate
from tests.fixtures import wait_for

WAITER = "import sys, redis; from bench.gates import pass_gate; c = redis.Redis.from_url(sys.argv[1]); " \
         "c.rpush('waiting', 1); pass_gate(c, 'gate', 300)"  # fmt: skip


def test_a_token_pushed_while_its_waiter_is_gone_waits_for_the_next_run(redis_url, redis_conn):
    waiter = subprocess.Popen([sys.executable, "-c", WAITER, redis_url])
    try:
        wait_for(lambda: redis_conn.llen("waiting"), timeout=30, message="the waiter to reach the gate")
        time.sleep(0.2)  # at the gate now
        waiter.send_signal(signal.SIGSTOP)
        redis_conn.rpush("gate", "go")
        assert pass_gate(redis.Redis.from_url(redis_url), "gate", 5)  # the retry passes: the token was kept
    finally:
        waiter.kill()
        waiter.wait()
