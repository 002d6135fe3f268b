"""Helpers shared by the process-level tests: run the real console scripts, wait for conditions, find processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def run_cli(script: str, *args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run console script `script` (workers, bullrq) from the venv, as a user would."""
    return subprocess.run(
        [str(BIN / script), *args], capture_output=True, text=True, timeout=timeout, env=env or dict(os.environ)
    )


def wait_for(condition, timeout: float = 15, interval: float = 0.05, message: str = "condition"):
    """Poll `condition()` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def processes_with(needle: str, home: Path | None = None, env: str | None = None) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains `needle` (and, given `home`, that run with
    that BULLRQ_HOME, so test runs side by side do not see each other's processes; given `env`, a `NAME=value`
    their environment holds). This process is never among them."""
    if home is not None:
        env = f"BULLRQ_HOME={home}"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if needle not in cmdline or state in "ZX" or int(entry.name) == os.getpid():
            continue
        if env is not None:
            try:
                if env.encode() not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
            except OSError:
                continue
        found.append(int(entry.name))
    return found
