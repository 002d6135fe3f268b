"""Registers extra task modules in every Python process started with this folder on PYTHONPATH.

Worker processes started through the `workers` CLI import only the handler package (`workers/`); a drill or a test
that needs task types of its own (a job held at a gate, say) puts this folder and the project root on PYTHONPATH
and names the modules in BULLRQ_PRELOAD (comma-separated), and every process of the run, the daemonized workers
included, registers them. See `preload_env()` in bench/drill_kit.py.
"""

import importlib
import os

for _name in filter(None, (part.strip() for part in os.environ.get("BULLRQ_PRELOAD", "").split(","))):
    importlib.import_module(_name)
