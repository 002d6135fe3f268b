// The admin page: everything goes through the admin API with the session cookie. Values from the server are
// written with textContent only, so job data can never become markup.
"use strict";

const api = async (path, options = {}) => {
  const response = await fetch(path, {
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    ...options,
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  return body;
};

const say = (text) => { document.getElementById("status").textContent = text; };

const cell = (row, value, numeric = false) => {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "-" : String(value);
  if (numeric) td.className = "n";
  return td;
};

const button = (td, label, onClick) => {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await onClick(); } catch (error) { say(error.message); } finally { b.disabled = false; refresh(); }
  });
  td.appendChild(b);
};

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "-");

async function showQueues() {
  const [stats, lastHour] = await Promise.all([
    api("/api/admin/workers?action=stats"),
    api("/api/admin/jobs/history-stats?hours=1"),
  ]);
  const runs = Object.fromEntries(lastHour.failure_rate.map((r) => [r.queue, r.total]));
  const body = document.querySelector("#queues tbody");
  body.replaceChildren();
  for (const [name, q] of Object.entries(stats.queues)) {
    const row = body.insertRow();
    row.dataset.queue = name;
    cell(row, name);
    for (const key of ["waiting", "active", "delayed", "completed", "failed", "workers"]) cell(row, q[key], true);
    cell(row, runs[name] || 0, true);
    const state = cell(row, q.paused ? "paused" : "running");
    if (q.paused) state.className = "paused";
    const action = q.paused ? "resume" : "pause";
    const actions = row.insertCell();
    const post = (body) => api("/api/admin/workers", { method: "POST", body: JSON.stringify(body) });
    button(actions, action === "pause" ? "Pause" : "Resume", async () => {
      await post({ action, queueName: name });
      say(`${name}: ${action}d`);
    });
    button(actions, "Retry failed", async () => {
      const done = await post({ action: "retry-failed", queueName: name });
      say(`${name}: ${done.requeued[name]} failed job(s) requeued`);
    });
    button(actions, "Clean completed", async () => {
      const done = await post({ action: "clean", queueName: name, state: "completed", grace: 3600 });
      say(`${name}: ${done.removed[name]} completed job(s) older than 1 h removed`);
    });
  }
}

async function showSchedules() {
  const { schedules } = await api("/api/admin/jobs/schedules");
  const body = document.querySelector("#schedules tbody");
  body.replaceChildren();
  for (const s of schedules) {
    const row = body.insertRow();
    row.dataset.schedule = s.id;
    cell(row, s.id);
    cell(row, s.task);
    cell(row, s.effective_cron);
    cell(row, s.effective_timezone);
    cell(row, `${s.last_status} ${when(s.last_run_at)}`);
    cell(row, s.effective_enabled ? when(s.next_run_at) : "disabled");
    cell(row, s.total_runs, true);
    const actions = row.insertCell();
    button(actions, s.effective_enabled ? "Disable" : "Enable", async () => {
      await api(`/api/admin/jobs/schedules/${encodeURIComponent(s.id)}`,
        { method: "PATCH", body: JSON.stringify({ is_active: !s.effective_enabled }) });
      say(`${s.id}: ${s.effective_enabled ? "disabled" : "enabled"}`);
    });
    button(actions, "Run now", async () => {
      const run = await api(`/api/admin/jobs/schedules/${encodeURIComponent(s.id)}/run`, { method: "POST" });
      say(`${s.id}: started job ${run.jobId}`);
    });
  }
}

function drawThroughput(rows, canvas = document.getElementById("throughput")) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const perHour = new Map();
  for (const r of rows) {
    const entry = perHour.get(r.hour) || { total: 0, failed: 0 };
    entry.total += r.total;
    entry.failed += r.failed;
    perHour.set(r.hour, entry);
  }
  const hours = [...perHour.keys()].sort();
  const top = Math.max(1, ...[...perHour.values()].map((e) => e.total));
  const width = canvas.width / Math.max(hours.length, 24);
  hours.forEach((hour, i) => {
    const e = perHour.get(hour);
    const h = (e.total / top) * (canvas.height - 10);
    const f = (e.failed / top) * (canvas.height - 10);
    ctx.fillStyle = "#0a84ff";
    ctx.fillRect(i * width + 1, canvas.height - h, width - 2, h - f);
    ctx.fillStyle = "#ff453a";
    ctx.fillRect(i * width + 1, canvas.height - f, width - 2, f);
  });
  canvas.dataset.hours = String(hours.length);
}

function drawQueueCharts(stats, rates) {
  const holder = document.getElementById("queue-charts");
  holder.replaceChildren();
  const p95 = Object.fromEntries(stats.durations.map((d) => [d.queue, d.p95]));
  for (const queue of [...new Set(stats.throughput.map((r) => r.queue))].sort()) {
    const figure = document.createElement("figure");
    figure.dataset.queue = queue;
    const caption = document.createElement("figcaption");
    const rate = rates[queue] ? (rates[queue].rate * 100).toFixed(1) : "0.0";
    const p = p95[queue] === undefined || p95[queue] === null ? "-" : p95[queue].toFixed(1);
    caption.textContent = `${queue}: runs per hour; failure rate ${rate} %; p95 ${p} ms`;
    const canvas = document.createElement("canvas");
    canvas.width = 900;
    canvas.height = 90;
    figure.append(caption, canvas);
    holder.appendChild(figure);
    drawThroughput(stats.throughput.filter((r) => r.queue === queue), canvas);
  }
}

async function showHistory() {
  const hours = document.getElementById("window").value;
  const stats = await api(`/api/admin/jobs/history-stats?hours=${hours}`);
  drawThroughput(stats.throughput);
  const rates = Object.fromEntries(stats.failure_rate.map((r) => [r.queue, r]));
  drawQueueCharts(stats, rates);
  const body = document.querySelector("#durations tbody");
  body.replaceChildren();
  for (const d of stats.durations) {
    const row = body.insertRow();
    cell(row, d.queue);
    cell(row, d.runs, true);
    cell(row, rates[d.queue] ? `${(rates[d.queue].rate * 100).toFixed(1)} %` : "-", true);
    for (const p of ["p50", "p95", "p99"]) cell(row, d[p] === null ? null : d[p].toFixed(1), true);
  }
}

document.getElementById("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = document.getElementById("job-id").value.trim();
  try {
    const job = await api(`/api/admin/jobs/${encodeURIComponent(id)}`);
    document.getElementById("job").textContent = JSON.stringify(job, null, 2);
  } catch (error) {
    document.getElementById("job").textContent = error.message;
  }
});

document.getElementById("runs-search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = new URLSearchParams({ limit: "50" });
  const fields = { jobName: "runs-name", status: "runs-status", error: "runs-error" };
  for (const [param, id] of Object.entries(fields)) {
    const value = document.getElementById(id).value.trim();
    if (value) query.set(param, value);
  }
  const body = document.querySelector("#runs tbody");
  body.replaceChildren();
  try {
    const page = await api(`/api/admin/jobs/logs?${query}`);
    body.dataset.count = String(page.runs.length);
    for (const r of page.runs) {
      const row = body.insertRow();
      cell(row, when(r.started_at));
      cell(row, r.job_id);
      cell(row, r.attempt, true);
      cell(row, r.status);
      cell(row, r.duration_ms === null ? null : r.duration_ms.toFixed(1), true);
      cell(row, r.error_message);
    }
  } catch (error) {
    say(error.message);
  }
});

async function refresh() {
  try {
    await Promise.all([showQueues(), showSchedules(), showHistory()]);
    document.body.dataset.loaded = "true";
  } catch (error) {
    say(error.message);
  }
}

document.getElementById("window").addEventListener("change", () => showHistory().catch((e) => say(e.message)));

refresh();
setInterval(refresh, 5000);
