"""Daemon processes of this machine: spawn detached, track by pid file, tell alive from dead, stop.

A pid alone can be reused by an unrelated process after a crash, so a process counts as ours only while its
command line still carries `--name <name>`. Each daemon leads its own process group; children it forks (RQ's
scheduler, fork-per-job work horses) are found through that group when the leader has to be killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

#: seconds between checks while waiting for a process to exit
POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class Daemon:
    """A named process of ours: its pid file and its log file."""

    name: str
    pid_file: Path
    log_file: Path

    def read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def is_alive(self, pid: int | None = None) -> bool:
        pid = pid if pid is not None else self.read_pid()
        return pid is not None and _is_ours(pid, self.name)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return []


def pid_exists(pid: int | None) -> bool:
    """Whether `pid` is a running process (a zombie nobody reaped yet counts as gone)."""
    stat = _stat(pid) if pid else []
    return bool(stat) and stat[0] not in ("Z", "X")


def _is_ours(pid: int, name: str) -> bool:
    if not pid_exists(pid):
        return False
    args = _cmdline(pid)
    return any(a == "--name" and b == name for a, b in zip(args, args[1:], strict=False))


def _group_members(pgid: int, name: str) -> list[int]:
    """Live processes of process group `pgid` that are ours (the leader and what it forked)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            stat = _stat(pid)
            if len(stat) > 2 and stat[2] == str(pgid) and _is_ours(pid, name):
                members.append(pid)
    return members


def rss_bytes(pid: int) -> int | None:
    """Resident memory of `pid`, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def spawn(daemon: Daemon, argv: list[str], env: dict | None = None) -> int:
    """Start `argv` detached (own session, stdin closed, output appended to the log); writes and returns its pid.

    `argv` must contain `--name <daemon.name>`: that is how the process is recognised later.
    """
    daemon.pid_file.parent.mkdir(parents=True, exist_ok=True)
    daemon.log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(daemon.log_file, "ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    daemon.pid_file.write_text(f"{process.pid}\n")
    return process.pid


def wait_gone(daemon: Daemon, pid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for `pid` to exit; True when it has."""
    deadline = time.monotonic() + timeout
    while daemon.is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def kill_group(daemon: Daemon, pid: int) -> None:
    """SIGKILL whatever is left of the daemon's process group (the leader and the children it forked)."""
    for member in _group_members(pid, daemon.name):
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while _group_members(pid, daemon.name) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)


def stop(daemons: list[Daemon], timeout: float) -> dict[str, tuple[int | None, str]]:
    """Ask every daemon to stop at once (SIGTERM: finish the current job, then exit); SIGKILL what is left after
    `timeout` seconds, with the children it forked.

    Returns:
        name -> (pid, outcome) with outcome "stopped", "killed" (the timeout ran out) or "not running".
    """
    pids = {d.name: d.read_pid() for d in daemons}
    signalled = []
    for daemon in daemons:
        pid = pids[daemon.name]
        if pid is not None and daemon.is_alive(pid):
            os.kill(pid, signal.SIGTERM)
            signalled.append(daemon)
    deadline = time.monotonic() + timeout
    outcomes = {}
    for daemon in daemons:
        pid = pids[daemon.name]
        outcome = "not running"
        if daemon in signalled:
            outcome = "stopped" if wait_gone(daemon, pid, max(0.0, deadline - time.monotonic())) else "killed"
        if pid is not None:
            kill_group(daemon, pid)  # leftovers: forked children of a leader that was killed or died
        daemon.pid_file.unlink(missing_ok=True)
        outcomes[daemon.name] = (pid, outcome)
    return outcomes
