"""An executive report's figures rendered: HTML (Jinja2, autoescaped), CSV (one figure per row), PDF (fpdf2's
core fonts) and the plain-text summary that every notification carries.

Task names, queue names, workspace ids and error messages come from job data: untrusted. HTML escapes them, CSV
defuses cells a spreadsheet would read as formulas, PDF keeps only what its latin-1 fonts can show.
"""

from __future__ import annotations

import csv
import functools
import io
import unicodedata
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path

#: where the report templates live
TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = "report.html.j2"
#: characters of the plain-text summary (WhatsApp takes 4096 with the subject)
MAX_TEXT = 3000
#: characters kept of a text cell in the PDF (the page is 190 mm wide)
PDF_CELL = 48
#: leading characters that make a spreadsheet read a cell as a formula
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: typographic characters the PDF's latin-1 fonts lack, and their plain equivalents
_PLAIN = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                        "\u2026": "...", "\u2022": "*", "\u00a0": " "})


def percent(rate: float | None) -> str:
    """A ratio as a percentage with one decimal (0.1234 -> 12.3 %)."""
    return "-" if rate is None else f"{rate * 100:.1f} %"


def duration(ms: float | None) -> str:
    """Milliseconds in the unit that reads best (850 ms, 2.4 s, 3.1 min)."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


def day(iso: str) -> str:
    """The date and time (to the minute, UTC) of an ISO timestamp."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


def shown(value: object) -> object:
    """`value` if a report may print it (text or a number), else TypeError: a template never shows a Python object
    (a method, a dict, None) by its repr."""
    if isinstance(value, str | int | float | Decimal) and not isinstance(value, bool):
        return value
    raise TypeError(f"report template: a {type(value).__name__} value would be printed as Python's repr: "
                    f"{str(value)[:80]}")


@functools.cache
def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    class ReportEnvironment(Environment):
        """`{{ sync.items }}` is the figure named items: a mapping's keys come before its methods (Jinja's own
        order is the other way round, so it printed `dict.items`)."""

        def getattr(self, obj, attribute):
            if isinstance(obj, Mapping):
                try:
                    return obj[attribute]
                except (KeyError, TypeError):
                    pass
            return super().getattr(obj, attribute)

    # autoescape on for every template: the figures carry task names and error messages from job data
    env = ReportEnvironment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                            trim_blocks=True, lstrip_blocks=True, finalize=shown)
    env.filters.update(percent=percent, duration=duration, day=day)
    return env


def subject(title: str, summary: dict) -> str:
    period = summary["period"]
    return f"{title}: {day(period['start'])[:10]} to {day(period['end'])[:10]}"


def html(title: str, summary: dict, generated_at: datetime) -> str:
    """The report as one self-contained HTML page (inline CSS, no external assets)."""
    return _environment().get_template(TEMPLATE).render(
        title=title, summary=summary, jobs=summary["jobs"], sync=summary["sync"],
        generated_at=generated_at.strftime("%Y-%m-%d %H:%M UTC"),
    )  # fmt: skip


def _cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text, never runs as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def csv_text(title: str, summary: dict) -> str:
    """The report as CSV, one figure per row: `section, key, metric, value` (key is unique within its section)."""
    rows: list[tuple] = [("report", title, "period_start", summary["period"]["start"]),
                         ("report", title, "period_end", summary["period"]["end"])]
    jobs, sync = summary["jobs"], summary["sync"]
    rows += [("jobs", "all", metric, jobs[metric]) for metric in ("runs", "completed", "failed", "failure_rate")]
    for row in jobs["queues"]:
        rows += [("queue", row["queue"], metric, value) for metric, value in row.items() if metric != "queue"]
    for row in jobs["failing_tasks"]:
        key = f"{row['queue']}/{row['task']}"
        rows += [("failing_task", key, metric, row[metric]) for metric in ("runs", "failed", "failure_rate")]
    for row in jobs["errors"]:
        key = f"{row['queue']}/{row['task']}/{row['error_type']}"
        rows += [("error", key, metric, row[metric]) for metric in ("count", "last_at", "last_message")]
    rows += [("sync", "all", metric, value) for metric, value in sync.items() if metric != "workspaces"]
    for row in sync["workspaces"]:
        rows += [("workspace", row["workspace_id"], metric, value) for metric, value in row.items()
                 if metric != "workspace_id"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(("section", "key", "metric", "value"))
    writer.writerows(tuple(_cell(value) for value in row) for row in rows)
    return out.getvalue()


def latin1(text: object, limit: int | None = None) -> str:
    """`text` as the PDF's core fonts can show it (latin-1; other characters become ?), cut to `limit`."""
    plain = unicodedata.normalize("NFKC", str(text)).translate(_PLAIN)
    plain = "".join(ch for ch in plain if ch.isprintable())
    if limit is not None and len(plain) > limit:
        plain = plain[: limit - 3] + "..."
    return plain.encode("latin-1", "replace").decode("latin-1")


def pdf(title: str, summary: dict, generated_at: datetime) -> bytes:
    """The report as a PDF (A4, Helvetica)."""
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    doc = FPDF(format="A4")
    doc.set_title(latin1(title))
    doc.set_creator("bullrq reports")
    doc.add_page()
    jobs, sync, period = summary["jobs"], summary["sync"], summary["period"]

    def line(text: str, size: int = 10, style: str = "") -> None:
        doc.set_font("Helvetica", style, size)
        doc.multi_cell(0, size * 0.55, latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def table(heading: str, header: tuple, rows: list[tuple]) -> None:
        doc.ln(3)
        line(heading, 12, "B")
        if not rows:
            line("Nothing in this period.")
            return
        doc.set_font("Helvetica", "", 8)
        with doc.table(text_align="LEFT", line_height=4.5) as grid:
            for values in (header, *rows):
                cells = grid.row()
                for value in values:
                    cells.cell(latin1(value, PDF_CELL))

    line(title, 16, "B")
    line(f"Period: {day(period['start'])} to {day(period['end'])}; generated {generated_at:%Y-%m-%d %H:%M} UTC")
    line(f"Jobs: {jobs['runs']} runs, {jobs['failed']} failed ({percent(jobs['failure_rate'])}). Synced data: "
         f"{sync['items']} items in {sync['workspaces_total']} workspaces, {sync['new']} new, {sync['changed']} "
         "changed.")
    table("Job runs per queue", ("Queue", "Runs", "Failed", "Failure rate", "p50", "p95"),
          [(q["queue"], q["runs"], q["failed"], percent(q["failure_rate"]), duration(q["p50_ms"]),
            duration(q["p95_ms"])) for q in jobs["queues"]])
    table("Tasks with most failures", ("Queue", "Task", "Runs", "Failed", "Failure rate"),
          [(t["queue"], t["task"], t["runs"], t["failed"], percent(t["failure_rate"])) for t in jobs["failing_tasks"]])
    table("Synced data per workspace", ("Workspace", "Items", "New", "Changed", "Errors", "Sync runs"),
          [(w["workspace_id"], w["items"], w["new"], w["changed"], w["with_errors"], w["runs"])
           for w in sync["workspaces"]])
    return bytes(doc.output())


def text(title: str, summary: dict) -> str:
    """A few plain lines: what every channel (also WhatsApp) shows."""
    jobs, sync, period = summary["jobs"], summary["sync"], summary["period"]
    lines = [
        title,
        f"{day(period['start'])} to {day(period['end'])}",
        f"Jobs: {jobs['runs']} runs, {jobs['completed']} completed, {jobs['failed']} failed "
        f"({percent(jobs['failure_rate'])})",
    ]
    lines += [f"- {q['queue']}: {q['runs']} runs, {q['failed']} failed, p95 {duration(q['p95_ms'])}"
              for q in jobs["queues"][:10]]
    lines.append(f"Synced data: {sync['items']} items in {sync['workspaces_total']} workspaces, {sync['new']} new, "
                 f"{sync['changed']} changed, {sync['runs']} sync runs ({sync['failed_count']} failed items)")
    body = "\n".join(lines)
    return body if len(body) <= MAX_TEXT else body[: MAX_TEXT - 3] + "..."
