"""The processes of a run directory: what they are, how each is started, and spawn / track / stop them.

One model serves `scripts/up`, the `workers` CLI and the supervisor (`app.local.supervisor`): the processes of a run
directory are exactly those with a pid file in `<run dir>/pids/` (`web`, `scheduler`, `<queue>-<n>`), whoever
started them; each writes its output to its log file (`RunProcesses.log_file`).

A pid alone can be reused by an unrelated process after a crash, so a process counts as ours only while its
command line still carries `--name <name>`. Each daemon leads its own process group; children it forks (RQ's
scheduler, fork-per-job work horses) are found through that group when the leader has to be killed.

A process being stopped on purpose has its pid file renamed to `<name>.stopping` before it is signalled, so the
supervisor never takes a deliberate stop for a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import RunDir

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

    @property
    def stopping_file(self) -> Path:
        """The pid file's name while the process is being stopped on purpose."""
        return self.pid_file.with_suffix(".stopping")


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


#: the kernel's flag of its own threads, in /proc/<pid>/stat (they have no command line either)
_PF_KTHREAD = 0x00200000


def _is_ours(pid: int, name: str) -> bool:
    stat = _stat(pid)
    if not stat or stat[0] in ("Z", "X"):
        return False
    args = _cmdline(pid)
    if args == [""] and not int(stat[6]) & _PF_KTHREAD:
        # Being torn down after SIGKILL: its memory, and so its command line, is gone a moment before it can be
        # reaped. Still ours until then: taken for gone, its exit status and its sockets would not be there yet.
        return True
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
    return spawn_child(daemon, argv, env).pid


def spawn_child(daemon: Daemon, argv: list[str], env: dict | None = None) -> subprocess.Popen:
    """`spawn`, returning the child (whose parent must reap it: `poll()` it)."""
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
    partial = daemon.pid_file.with_name(f".{daemon.name}.{os.getpid()}")
    partial.write_text(f"{process.pid}\n")
    os.replace(partial, daemon.pid_file)  # whole: a reader never takes a half-written pid file for "no process"
    return process


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


def mark_stopping(daemons: list[Daemon]) -> dict[str, int | None]:
    """Rename each pid file to its `.stopping` name (a supervisor then leaves the process to its stop); returns
    name -> pid, also for a stop that was itself interrupted."""
    pids = {}
    for daemon in daemons:
        pid = daemon.read_pid()
        if pid is not None:
            os.replace(daemon.pid_file, daemon.stopping_file)
        else:
            pid = _read_int(daemon.stopping_file)
        pids[daemon.name] = pid
    return pids


def stop(daemons: list[Daemon], timeout: float) -> dict[str, tuple[int | None, str]]:
    """Ask every daemon to stop at once (SIGTERM: finish the current job, then exit); SIGKILL what is left after
    `timeout` seconds, with the children it forked.

    Returns:
        name -> (pid, outcome) with outcome "stopped", "killed" (the timeout ran out) or "not running".
    """
    pids = mark_stopping(daemons)
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
        daemon.stopping_file.unlink(missing_ok=True)
        outcomes[daemon.name] = (pid, outcome)
    return outcomes


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


#: name of the web and scheduler processes (workers are named `<queue>-<n>`)
WEB = "web"
SCHEDULER = "scheduler"


class RunProcesses:
    """The processes of one run directory: names, commands, pid files, logs, and the supervisor's state."""

    def __init__(self, home: RunDir):
        self.home = home

    # -- what the processes are ---------------------------------------------------------------------------------

    @staticmethod
    def planned(queues: list[str] | None = None) -> list[str]:
        """Names of the processes `scripts/up` runs: the web app, the scheduler, then every queue's workers."""
        from app.runtime.worker import worker_processes
        from queues import queue_names

        return [WEB, SCHEDULER] + [name for name, _ in worker_processes(queues or queue_names())]

    @staticmethod
    def queue_of(name: str) -> str | None:
        """The queue a worker process serves (`sync-2` -> `sync`); None for the web app and the scheduler."""
        from queues import QUEUES

        queue, _, number = name.rpartition("-")
        return queue if queue in QUEUES and number.isdigit() else None

    @staticmethod
    def kind(name: str) -> str:
        """`web`, `scheduler` or `worker`."""
        return name if name in (WEB, SCHEDULER) else "worker"

    @staticmethod
    def command(name: str, port: int | None = None) -> list[str]:
        """The command that runs process `name` in the foreground, carrying `--name name`."""
        python = sys.executable
        if name == WEB:
            port = port or int(os.environ.get("PORT") or 5000)
            return [python, "-m", "app.cli.main", "web", "--port", str(port), "--name", name]
        if name == SCHEDULER:
            return [python, "-m", "app.cli.main", "scheduler", "--name", name]
        queue = RunProcesses.queue_of(name)
        if queue is None:
            raise ValueError(f"{name!r} is not a process of a run directory (web, scheduler, <queue>-<n>)")
        from app.runtime.worker import worker_command

        return worker_command(queue, name)

    # -- where they are -----------------------------------------------------------------------------------------

    def log_file(self, name: str) -> Path:
        return self.home.worker_log(name) if self.queue_of(name) else self.home.logs / f"{name}.log"

    def daemon(self, name: str) -> Daemon:
        return Daemon(name, self.home.pid_file(name), self.log_file(name))

    def on_file(self, stopping: bool = False) -> list[Daemon]:
        """The processes with a pid file (with `stopping`, also those being stopped), web and scheduler first."""
        if not self.home.pids.is_dir():
            return []
        names = {p.stem for p in self.home.pids.glob("*.pid")}
        if stopping:
            names |= {p.stem for p in self.home.pids.glob("*.stopping")}
        known = [n for n in names if n in (WEB, SCHEDULER) or self.queue_of(n)]
        return [self.daemon(n) for n in sorted(known, key=lambda n: (n not in (WEB, SCHEDULER), n != WEB, n))]

    @contextlib.contextmanager
    def lock(self):
        """Held while a process is checked and (re)started, so the CLI and a supervisor never both start one."""
        self.home.pids.mkdir(parents=True, exist_ok=True)
        with open(self.home.pids / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- the supervisor -----------------------------------------------------------------------------------------

    @property
    def supervisor_pid_file(self) -> Path:
        return self.home.root / "supervisor.pid"

    @property
    def supervisor_state_file(self) -> Path:
        """Written by the supervisor on every change: restarts per process, crash loops, its own pid and mode."""
        return self.home.root / "supervisor.json"

    def supervisor_pid(self) -> int | None:
        """Pid of the live supervisor of this run directory (`scripts/up`, or one `workers start` spawned)."""
        pid = _read_int(self.supervisor_pid_file)
        if pid is None or not pid_exists(pid):
            return None
        args = _cmdline(pid)
        return pid if "app.local.up" in args or "app.local.supervisor" in args else None

    def supervisor_state(self) -> dict:
        """The supervisor's last written state ({} when none ran here); stale once its pid is gone."""
        try:
            state = json.loads(self.supervisor_state_file.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}
