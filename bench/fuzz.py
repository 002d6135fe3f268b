"""Fuzz the admin API over real HTTP: schemathesis, many examples per operation, against `bullrq web`.

The suite's bounded run (tests/test_web_fuzz.py: in-process WSGI, 12 derandomized examples per operation) guards
against regressions; this wide run hunts for new bugs and is run by a person, outside the suite:

    ./scripts/fuzz                      # 200 examples per operation, a random seed (printed)
    ./scripts/fuzz --examples 500 --seed 1234 --workers 1

What a run does:

1. uses the servers of REDIS_URL and DATABASE_URL: `scripts/fuzz` starts throwaway ones (`app.local.servers exec
   --fresh`). The API under fuzz empties, cleans and pauses queues and enqueues jobs, so servers that are not
   throwaway (BULLRQ_THROWAWAY_SERVERS=1) are refused unless --force;
2. applies the migrations and starts the production web server (`python -m app.cli.main web`) on a free loopback
   port, with a generated ADMIN_TOKEN, a temporary BULLRQ_HOME and no `.env`, then waits for /readyz;
3. seeds what random strings never reach: the declared schedules (`setup-recurring`) and a few jobs (waiting,
   delayed, canceled, run from a schedule). Their ids, the queue names and the task types are schemathesis
   dictionaries, drawn for the matching parameters half of the time, so routes get past their 404s and 400s;
4. runs schemathesis's phases (examples, coverage, fuzzing, stateful) over every operation of
   /api/admin/openapi.json with positive and negative inputs, randomized; the seed is printed and --seed
   reproduces the inputs (with --workers 1, the default: in parallel the server's state depends on the order;
   and the seeded job ids are new each run). --workers N is faster, but on CPython 3.11 concurrent hypothesis
   runs sometimes hit a CPython bug in the fuzzer itself ("SystemError: AST constructor recursion depth
   mismatch", python/cpython#106905), reported as a flaky error: not a server fault;
5. prints the requests per operation and status class, failures grouped by check and operation with a curl
   command that reproduces each (the token shows as [Filtered]), what went wrong inside the server according to
   its log (the exception of each traceback, ERROR lines), and the time.

Exit status: 0 when no check failed, no request went unanswered and the server logged no exception or ERROR line;
1 otherwise; 2 when the run could not start. After a failure the server's log (`web.log`) is kept and named.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from app.config import redact
from app.local.servers import THROWAWAY_FLAG, free_port
from app.store.migrate import apply_migrations
from app.tasks import load_tasks
from queues import queue_names

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLES = 200
PHASES = ("examples", "coverage", "fuzzing", "stateful")
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
#: every check schemathesis has (`max_response_time` aside: it needs a bound, and timing is no conformance), so a
#: run proves the document is exactly the server: statuses, content types, headers and bodies as documented, valid
#: requests accepted, invalid ones refused, auth enforced, methods not served refused with Allow, and what was
#: created found again. (The suite's bounded run, tests/test_web_fuzz.py, runs the response checks only.)
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
          "response_schema_conformance", "positive_data_acceptance", "negative_data_rejection",
          "missing_required_header", "unsupported_method", "allow_header_conformance", "use_after_free",
          "ensure_resource_availability", "ignored_auth", "object_level_authorization")  # fmt: skip
#: operations whose acceptance of well-formed data depends on meaning no JSON Schema states, so a valid-looking
#: request may get a 400 that names the reason: a job's data is its handler's arguments (per task type, checked by
#: the handler's signature and validator) and a task may run on one queue only; a cron must fire on some date and a
#: zone must exist. positive_data_acceptance also allows 400 there; everywhere else it allows what it always does.
MEANING_CHECKED = (("POST", "/api/admin/jobs"), ("POST", "/api/admin/workers"),
                   ("PATCH", "/api/admin/jobs/schedules/{schedule_id}"))  # fmt: skip
POSITIVE_STATUSES = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
#: share of generated values drawn from the seeded dictionaries (the rest is schemathesis's own invention)
KNOWN_VALUE_PROBABILITY = 0.5
#: seconds for the web server to answer /readyz, for one fuzz request, and for the server to stop
READY_TIMEOUT = 60
REQUEST_TIMEOUT = 30
STOP_TIMEOUT = 40
TRACEBACK = "Traceback (most recent call last)"
#: a line of app.logs.TEXT_FORMAT at level ERROR
ERROR_LINE = re.compile(r"^\S+ \S+ ERROR (?P<logger>\S+): (?P<message>.*)$")
#: failing inputs kept per distinct failure (the shortest), lines of a failure's message, characters of a curl shown
SAMPLES_SHOWN = 2
MESSAGE_LINES = 8
CURL_SHOWN = 1000


class SetupError(Exception):
    """The run could not start: the servers, the web app or the schema are not there."""


def progress(line: str) -> None:
    """On stderr: stdout holds the report alone (--json)."""
    print(line, file=sys.stderr, flush=True)


# -- the web server under test -------------------------------------------------------------------------------------


def web_env(redis_url: str, database_url: str, token: str, home: Path) -> dict:
    """The environment of `bullrq web`: our servers and token, its own run directory, no `.env`, production mode."""
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "BULL_BOARD_ACCESS_TOKEN")}
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        ADMIN_TOKEN=token,
        BULLRQ_HOME=str(home),
        BULLRQ_DOTENV=str(home / "no.env"),  # never created: a developer's .env must not change the server
        LOG_FORMAT="text",
    )
    return env


def start_web(env: dict, port: int, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "app.cli.main", "web", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(base_url: str, web: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if web.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:]
    raise SetupError(f"the web server at {base_url} did not become ready; its log {log}:\n{tail}")


def stop_web(web: subprocess.Popen) -> None:
    """The server's graceful stop; killed if it outlives its own grace period."""
    if web.poll() is None:
        web.send_signal(signal.SIGTERM)
    try:
        web.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        web.kill()
        web.wait()


def server_problems(log_text: str) -> dict[str, list]:
    """What went wrong inside the server, from its log, as summary -> [count, an example line]: the exception
    ending each traceback, and each ERROR line that no traceback follows, by logger and the message's last clause
    (the error; what comes before names the request)."""
    found: dict[str, list] = {}

    def add(summary: str, line: str) -> None:
        found.setdefault(summary, [0, line.strip()[:300]])[0] += 1

    lines = log_text.splitlines()
    in_traceback = False
    for line, following in zip(lines, [*lines[1:], ""], strict=True):
        if line.startswith(TRACEBACK):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace():
            add(line.strip(), line)
            in_traceback = False
        elif (match := ERROR_LINE.match(line)) and not following.startswith(TRACEBACK):
            add(f"{match['logger']}: {match['message'].rsplit(': ', 1)[-1]}", match["message"])
    return found


# -- seeding: values random strings never find ---------------------------------------------------------------------


class Api:
    """A minimal client of the admin API, for seeding."""

    def __init__(self, base_url: str, token: str):
        self.base_url, self.token = base_url, token

    def call(self, method: str, path: str, body: dict | None = None, accept: tuple[int, ...] = ()) -> dict:
        """The JSON answer of a 2xx, or of an error status in `accept`."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            answer = exc.read()
            if exc.code in accept:
                return json.loads(answer)
            raise SetupError(f"seeding: {method} {path} answered {exc.code}: {answer[:500]!r}") from None


def seed_jobs(api: Api, queue: str, schedule_id: str) -> list[str]:
    """A waiting, a delayed, a canceled job and one started from a schedule; returns their ids."""
    ping = {"type": "system.ping", "options": {"queue": queue}}
    waiting = api.call("POST", "/api/admin/jobs", ping)["jobId"]
    delayed = api.call("POST", "/api/admin/jobs", {**ping, "options": {"queue": queue, "delay": 3600}})["jobId"]
    canceled = api.call("POST", "/api/admin/jobs", ping)["jobId"]
    api.call("POST", f"/api/admin/jobs/{canceled}/cancel")
    run = api.call("POST", f"/api/admin/jobs/schedules/{schedule_id}/run", accept=(409,))  # 409: running already
    scheduled = run.get("jobId") or run["error"]["details"]["jobId"]
    return [waiting, delayed, canceled, scheduled]


def seed_known_values(api: Api) -> dict[str, list[str]]:
    """Names and ids that exist on the server, by dictionary name."""
    schedules = api.call("POST", "/api/admin/workers", {"action": "setup-recurring"})["schedules"]
    queues = queue_names()
    tasks = load_tasks().names()
    return {
        "queues": queues,
        "tasks": tasks,
        "schedules": schedules,
        "names": tasks + schedules,  # jobName and /logs/{name}/latest take a task type or a schedule id
        "jobs": seed_jobs(api, queues[0], schedules[0]),
    }


#: parameter (location.name, as schemathesis binds them) -> the dictionary its known values come from
KNOWN_PARAMETERS = {
    "path.job_id": "jobs",
    "path.schedule_id": "schedules",
    "path.name": "names",
    "query.queueName": "queues",
    "query.queue": "queues",
    "query.jobName": "names",
    "body.queueName": "queues",
    "body.type": "tasks",
    "body.options.queue": "queues",
    "body.jobIds[*]": "jobs",
}


# -- schemathesis --------------------------------------------------------------------------------------------------


def schemathesis_config(args: argparse.Namespace, token: str, known: dict[str, list[str]]):
    import schemathesis

    return schemathesis.Config.from_dict({
        "seed": args.seed,
        "workers": args.workers,
        "headers": {"Authorization": f"Bearer {token}"},
        "request-timeout": REQUEST_TIMEOUT,  # a hung route (say, behind a paused queue) fails instead of stalling
        "continue-on-failure": True,  # every distinct failure of an operation, not only its first
        "cache": {"enabled": False},  # nothing learnt by an earlier run: a seed means the same inputs
        "phases": {phase: {"enabled": phase in args.phases} for phase in PHASES} | {
            # the document's links only: inference took `options.jobId` (a dedup key) for a job's id
            "stateful": {"enabled": "stateful" in args.phases, "inference": {"algorithms": ["location-headers"]}},
        },
        "generation": {
            "max-examples": args.examples,
            "database": "none",  # no .hypothesis/ entries replayed or written: inputs depend on the seed alone
        },
        "checks": {"enabled": False, **{name: {"enabled": True} for name in args.checks}},
        "operations": [
            {"include-method": method, "include-path": path, "checks": {
                "positive_data_acceptance": {"enabled": "positive_data_acceptance" in args.checks,
                                             "expected-statuses": POSITIVE_STATUSES}}}
            for method, path in MEANING_CHECKED
        ],
        "dictionaries": {name: {"values": values} for name, values in known.items()},
        "parameters": {
            key: {"dictionary": name, "probability": KNOWN_VALUE_PROBABILITY} for key, name in KNOWN_PARAMETERS.items()
        },
    })  # fmt: skip


@dataclass
class Finding:
    """One distinct failure: a check, an operation, what went wrong; how often, and inputs that show it."""

    check: str
    operation: str
    title: str
    message: str
    status: int | None
    count: int = 0
    curls: list[str] = field(default_factory=list)


@dataclass
class Tally:
    """What the run did and found."""

    checks: tuple[str, ...] = CHECKS  #: the checks that run
    documented: int = 0  #: operations in the document
    requests: Counter = field(default_factory=Counter)  #: operation -> requests sent
    statuses: dict = field(default_factory=lambda: defaultdict(Counter))  #: operation -> status class -> count
    findings: dict = field(default_factory=dict)  #: (check, operation, title, status, message head) -> Finding
    errors: list[str] = field(default_factory=list)  #: requests that got no answer, engine errors
    phases: list[tuple[str, str, float, int]] = field(default_factory=list)  #: name, outcome, seconds, requests
    server_problems: dict = field(default_factory=dict)  #: see `server_problems`
    interrupted: bool = False

    @property
    def problem_count(self) -> int:
        return sum(finding.count for finding in self.findings.values()) + len(self.errors)

    @property
    def failed(self) -> bool:
        return bool(self.findings or self.errors or self.server_problems or self.interrupted)

    def add_scenario(self, recorder) -> int:
        """Count a finished scenario's requests and failed checks; returns its number of requests."""
        for case_id, interaction in recorder.interactions.items():
            node = recorder.cases.get(case_id)
            operation = node.value.operation.label if node is not None else recorder.label
            self.requests[operation] += 1
            status = interaction.response.status_code if interaction.response is not None else None
            self.statuses[operation][f"{status // 100}xx" if status else "none"] += 1
        for case_id, checks in recorder.checks.items():
            interaction = recorder.interactions.get(case_id)
            status = interaction.response.status_code if interaction and interaction.response is not None else None
            for check in checks:
                if check.failure_info is not None:
                    self.add_failure(check.name, check.failure_info, recorder.label, status)
        return len(recorder.interactions)

    def add_failure(self, check: str, info, label: str, status: int | None) -> None:
        if check == "status_code_conformance" and (status or 0) >= 500 and "not_a_server_error" in self.checks:
            return  # the same 5xx again, as an undocumented status
        failure = info.failure
        operation = failure.operation or label
        message = "\n".join(failure.message.strip().splitlines()[:MESSAGE_LINES])
        key = (check, operation, failure.title, status, message.splitlines()[0] if message else "")
        finding = self.findings.setdefault(key, Finding(check, operation, failure.title, message, status))
        finding.count += 1
        curl = "\n".join([step.curl for step in info.steps] or [info.code_sample])
        if curl not in finding.curls:  # the shortest reproductions are the ones worth reading
            finding.curls = sorted([*finding.curls, curl], key=len)[:SAMPLES_SHOWN]


def run_schemathesis(schema_url: str, token: str, config, tally: Tally) -> None:
    import schemathesis
    from schemathesis.engine import events, from_schema

    try:
        schema = schemathesis.openapi.from_url(schema_url, config=config, headers={"Authorization": f"Bearer {token}"})
    except schemathesis.errors.LoaderError as exc:
        raise SetupError(f"schemathesis could not load {schema_url}: {exc}") from None
    tally.documented = sum(
        method in HTTP_METHODS for operations in schema.raw_schema["paths"].values() for method in operations
    )
    started, in_phase, problems = time.monotonic(), 0, 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.PhaseStarted):
            started, in_phase, problems = time.monotonic(), 0, tally.problem_count
        elif isinstance(event, events.ScenarioFinished):
            in_phase += tally.add_scenario(event.recorder)
        elif isinstance(event, events.PhaseFinished) and event.phase.name.value in PHASES:
            name, seconds = event.phase.name.value, time.monotonic() - started
            outcome = event.status.value if event.phase.is_enabled else "off"
            if outcome == "failure" and tally.problem_count == problems:
                outcome = "success"  # schemathesis counted only what add_failure leaves out
            tally.phases.append((name, outcome, seconds, in_phase))
            if event.phase.is_enabled:
                progress(f"  {name:<9} {outcome:<8} {in_phase:>7} requests {seconds:7.1f} s")
        elif isinstance(event, events.NonFatalError):
            tally.errors.append(describe_error(event))
        elif isinstance(event, events.FatalError):
            tally.errors.append(f"schemathesis stopped: {event.exception}")
        elif isinstance(event, events.Interrupted):
            tally.interrupted = True


def describe_error(event) -> str:
    """An engine error, with what a group of them (a flaky test: failed, then passed when replayed) holds."""
    lines = [f"{event.label}: {event.info.title}: {event.info.message}"]
    for inner in getattr(event.value, "exceptions", ()):
        lines.append(f"  first run: {type(inner).__name__}: {str(inner).strip()[:500]}")
    if event.info.code_sample:
        lines.append(f"  reproduce: {event.info.code_sample}")
    return "\n".join(lines)


# -- report --------------------------------------------------------------------------------------------------------


def print_report(tally: Tally, seed: int, examples: int, seconds: float) -> None:
    total = sum(tally.requests.values())
    print(f"\n{'operation':<56} {'requests':>8} {'2xx':>6} {'4xx':>6} {'5xx':>6} {'none':>5}")
    for operation in sorted(tally.requests, key=lambda label: label.split(" ", 1)[::-1]):
        by = tally.statuses[operation]
        print(f"{operation:<56} {tally.requests[operation]:>8} {by['2xx']:>6} {by['4xx']:>6} {by['5xx']:>6} "
              f"{by['none']:>5}")  # fmt: skip
    # schemathesis leaves out the operation serving the document: it only loads it
    print(f"\noperations tested: {len(tally.requests)} of {tally.documented} in the document")
    print(f"requests sent: {total} (up to {examples} generated examples per operation and phase)")
    print(f"seed: {seed}  (--seed {seed} reproduces the inputs)")
    print(f"elapsed: {seconds:.1f} s")
    if not tally.failed:
        print("\nno failures")
        return
    print_findings(tally.findings.values())
    for error in tally.errors:
        print(f"\nERROR {error}")
    for summary, (count, example) in tally.server_problems.items():
        print(f"\nSERVER LOG x{count}: {summary}")
        if example != summary:
            print(f"  e.g. {example}")
    if tally.interrupted:
        print("\nINTERRUPTED: the report covers what ran")


def print_findings(findings) -> None:
    by_group: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for finding in findings:
        by_group[(finding.check, finding.operation)].append(finding)
    if by_group:
        print(f"\nFAILURES: {sum(map(len, by_group.values()))} distinct, in {len(by_group)} (check, operation) groups")
    for (check, operation), group in sorted(by_group.items()):
        print(f"\n== {check} | {operation}")
        for finding in group:
            print(f"  {finding.title} (status {finding.status}, {finding.count} case(s))")
            if finding.message:
                print("    " + finding.message.replace("\n", "\n    "))
            for curl in finding.curls:
                if len(curl) > CURL_SHOWN:
                    curl = f"{curl[:CURL_SHOWN]}... ({len(curl)} characters; --json prints it whole)"
                print("    reproduce: " + curl.replace("\n", "\n               "))


def json_report(tally: Tally, seed: int, examples: int, seconds: float) -> dict:
    return {
        "operations": len(tally.requests),
        "documented": tally.documented,
        "requests": sum(tally.requests.values()),
        "examples": examples,
        "seed": seed,
        "seconds": round(seconds, 1),
        "phases": [{"phase": p, "outcome": o, "seconds": round(s, 1), "requests": n} for p, o, s, n in tally.phases],
        "per_operation": {op: dict(tally.statuses[op]) for op in sorted(tally.requests)},
        "failures": [vars(finding) for finding in tally.findings.values()],
        "errors": tally.errors,
        "server_problems": tally.server_problems,
        "interrupted": tally.interrupted,
    }


# -- main ----------------------------------------------------------------------------------------------------------


def comma_list(allowed: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(",") if item.strip())
        unknown = [item for item in items if item not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (comma-separated)")
        return items

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, help="examples per operation and phase")
    parser.add_argument("--seed", type=int, help="reproduce an earlier run's inputs (default: a random seed)")
    parser.add_argument("--workers", type=int, default=1, help="concurrent requests (1 keeps a seed reproducible)")
    parser.add_argument("--phases", type=comma_list(PHASES), default=PHASES, help=f"default {','.join(PHASES)}")
    parser.add_argument("--checks", type=comma_list(CHECKS), default=CHECKS, help="default: all of them")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--force", action="store_true", help="allow servers that are not throwaway")
    args = parser.parse_args(argv)
    if args.examples < 1 or not 1 <= args.workers <= 64:
        parser.error("--examples must be at least 1 and --workers from 1 to 64")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(10**9)  # short enough to type back
    return args


def server_urls(force: bool) -> tuple[str, str]:
    redis_url, database_url = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
    if not redis_url or not database_url:
        raise SetupError("REDIS_URL and DATABASE_URL must be set; run scripts/fuzz, which starts throwaway servers")
    if os.environ.get(THROWAWAY_FLAG) != "1" and not force:
        raise SetupError(
            f"refusing to fuzz against {redact(redis_url)} and {redact(database_url)}: the fuzzer empties, cleans "
            f"and pauses queues and enqueues jobs, and these are not throwaway servers ({THROWAWAY_FLAG} is not "
            f"set). Pass --force to allow it, or unset REDIS_URL so scripts/fuzz starts throwaway servers."
        )
    return redis_url, database_url


def fuzz(args: argparse.Namespace, run_dir: Path) -> Tally:
    """Start the web server, seed it, fuzz it, stop it; what it found."""
    redis_url, database_url = server_urls(args.force)
    apply_migrations(database_url)
    token, port, log = secrets.token_urlsafe(24), free_port(), run_dir / "web.log"
    base_url = f"http://127.0.0.1:{port}"
    web = start_web(web_env(redis_url, database_url, token, run_dir / "home"), port, log)
    tally = Tally(checks=args.checks)
    try:
        wait_ready(base_url, web, log)
        known = seed_known_values(Api(base_url, token))
        config = schemathesis_config(args, token, known)
        progress(f"fuzzing {base_url}: {args.examples} examples per operation, seed {args.seed}, "
                 f"phases {','.join(args.phases)}, checks {','.join(args.checks)}")  # fmt: skip
        run_schemathesis(f"{base_url}/api/admin/openapi.json", token, config, tally)
    finally:
        stop_web(web)
    tally.server_problems = server_problems(log.read_text(errors="replace"))
    return tally


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="bullrq-fuzz-"))
    started = time.monotonic()
    try:
        tally = fuzz(args, run_dir)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if (run_dir / "web.log").exists():
            print(f"server log kept: {run_dir / 'web.log'}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        return 2
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps(json_report(tally, args.seed, args.examples, seconds), indent=2, default=str))
    else:
        print_report(tally, args.seed, args.examples, seconds)
    if tally.failed:
        print(f"server log kept: {run_dir / 'web.log'}", file=sys.stderr)
        return 1
    shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
