"""The short way for the job path's commands (`app.connections.call_direct`), on the real redis-server: one kept
connection per thread, given back when the thread ends, closed with the client, never out of step with its replies,
and a dropped connection or a restarted Redis cost nothing but a reconnect."""

from __future__ import annotations

import gc
import os
import signal
import threading

import hiredis
import pytest
from redis.exceptions import ResponseError

from app.connections import SLOT, CommandTemplate, call_direct, call_direct_many, redis_from_url

pytestmark = pytest.mark.integration


def _ours(admin, name: str) -> list[dict]:
    return [c for c in admin.client_list() if c["name"] == name]


@pytest.fixture
def client(redis_url):
    client = redis_from_url(redis_url, client_name="direct-test")
    yield client
    client.close()


def test_a_thread_keeps_one_connection_and_gives_it_back_when_it_ends(client, redis_conn):
    for n in range(50):
        assert call_direct(client, "ECHO", n) == str(n).encode()
    assert len(_ours(redis_conn, "direct-test")) == 1 and len(client.connection_pool._in_use_connections) == 1

    together = threading.Barrier(4)  # all four hold a connection at once

    def in_a_thread():
        call_direct(client, "ECHO", "first")
        together.wait(timeout=30)
        for n in range(10):
            assert call_direct(client, "ECHO", n) == str(n).encode()

    threads = [threading.Thread(target=in_a_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # the four threads' connections are back in the pool for the next borrower; this thread still has its own
    assert len(client.connection_pool._in_use_connections) == 1
    assert len(client.connection_pool._available_connections) == 4


def test_close_disconnects_the_kept_connections(client, redis_conn):
    call_direct(client, "PING")
    client.close()
    assert _ours(redis_conn, "direct-test") == []


def test_a_killed_connection_or_a_redis_error_costs_nothing(client, redis_conn):
    call_direct(client, "SET", "k", "1")
    redis_conn.client_kill_filter(_type="normal", skipme=True)  # the server drops every other client
    assert call_direct(client, "INCR", "k") == 2  # reconnected, and run once
    with pytest.raises(ResponseError):
        call_direct(client, "INCR", "no-such-command-args", "x")
    assert call_direct(client, "GET", "k") == b"2"  # still in step after an error reply


def test_an_exception_half_way_never_leaves_a_reply_for_the_next_command(client):
    """A signal handler's exception (a job timeout, a stop) can land between the send and the read: the reply on
    its way must not answer the next command."""
    call_direct(client, "SET", "first", "A")

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupted)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):  # sent; its reply (nil, 0.3 s later) is left unread
            call_direct(client, "BLPOP", "nothing-here", "0.3")
    finally:
        signal.signal(signal.SIGALRM, previous)
    gc.collect()  # the dropped connection is back in the pool (the exception's frames held it): it is reused
    # at once: on the same connection, the next command would wait behind the blocked one and read its reply
    assert call_direct(client, "ECHO", "second") == b"second"
    assert call_direct_many(client, [("GET", "first"), ("ECHO", "third")]) == [b"A", b"third"]


def test_a_forked_child_uses_a_connection_of_its_own(client, redis_conn):
    call_direct(client, "SET", "n", "0")
    pid = os.fork()
    if pid == 0:  # the child: its own connection; the parent's socket is left alone
        try:
            in_step = all(call_direct(client, "ECHO", f"child {n}") == f"child {n}".encode() for n in range(300))
            call_direct(client, "INCR", "n")
        finally:
            os._exit(0 if in_step else 1)
    in_step = all(call_direct(client, "ECHO", f"parent {n}") == f"parent {n}".encode() for n in range(300))
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 and in_step
    assert call_direct(client, "GET", "n") == b"1" and len(_ours(redis_conn, "direct-test")) == 1


def test_many_commands_in_one_round_trip_answer_in_order(client, redis_conn):
    replies = call_direct_many(client, [("SET", "a", "1"), ("INCR", "a"), ("HGET", "a", "x"), ("GET", "a")])
    assert replies[:2] == [b"OK", 2] and isinstance(replies[2], ResponseError) and replies[3] == b"2"
    redis_conn.client_kill_filter(_type="normal", skipme=True)  # the kept connection is dead: redis-py's pipeline
    assert call_direct_many(client, [("INCR", "a"), ("GET", "a")]) == [3, b"3"]
    assert call_direct(client, "GET", "a") == b"3"  # and the next command has a connection in step again


def test_a_template_packs_its_command_as_its_arguments_would_be(client, redis_conn):
    """`CommandTemplate.fill` gives the bytes hiredis (and redis-py) would pack, and the arguments for redis-py's
    path: both ways run the same command."""
    template = CommandTemplate(("HSET", SLOT, "text", "é", "number", 7, "float", 0.25, "slot", SLOT, "bytes", b"\x00"))
    command = template.fill("h", 1.5)
    assert tuple(command) == ("HSET", "h", "text", "é", "number", 7, "float", 0.25, "slot", 1.5, "bytes", b"\x00")
    assert command.packed == hiredis.pack_command(tuple(command))
    assert call_direct_many(client, [command]) == [5]  # the short way
    redis_conn.client_kill_filter(_type="normal", skipme=True)  # the kept connection is dead: redis-py's pipeline
    assert call_direct_many(client, [template.fill("h2", b"x")]) == [5]
    assert redis_conn.hgetall("h2") == {b"text": "é".encode(), b"number": b"7", b"float": b"0.25", b"slot": b"x",
                                        b"bytes": b"\x00"}  # fmt: skip
