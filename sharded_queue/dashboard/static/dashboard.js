// The dashboard page: polls the JSON endpoints every second and redraws its tables, no reload.
// Everything from storage (handler names, errors, payloads) goes in as text (textContent), never
// as HTML. Columns are drawn as the endpoints list them, so new stats columns appear by themselves.
"use strict";

const REFRESH_MS = 1000;
const DEAD_LETTERS_SHOWN = 20;
const PER_THREAD = new Set(["thread", "order", "holder", "held_since"]); // not on a handler's total row
const TIMES = new Set(["held_since", "started_at", "heartbeat_at", "failed_at", "next_at"]);

// The buttons of the server's actions (dashboard/app.py ACTIONS), drawn when /api/info lists them:
// "on" says where (a handler's dead letters, or a thread row), "path" where they post.
const enc = encodeURIComponent;
const BUTTONS = {
  requeue: { label: "Requeue all", on: "dead-letters", path: (h) => `api/dead-letters/${enc(h)}/requeue` },
  purge: {
    label: "Purge all",
    on: "dead-letters",
    path: (h) => `api/dead-letters/${enc(h)}/purge`,
    confirm: (h) => `Delete every dead letter of ${h} for good?`,
  },
  pause: { label: "Pause", on: "thread", path: (h, t) => `api/threads/${enc(h)}/${enc(t)}/pause` },
  resume: { label: "Resume", on: "thread", path: (h, t) => `api/threads/${enc(h)}/${enc(t)}/resume` },
};

let info = { storage: "", prefix: "", actions: [] };
let timer = null;
let running = false;
const drawn = new Map(); // table id -> the JSON it was last drawn from
const opened = new Set(); // tracebacks the reader opened, kept open across redraws

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "data") Object.assign(node.dataset, value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

function when(seconds) {
  const date = new Date(seconds * 1000);
  return `${date.toLocaleDateString("en-CA")} ${clock(seconds)}`;
}

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

const FORMATS = {
  lag: (v) => `${v.toFixed(3)} s`,
  held_since: clock,
  failed_at: when,
  next_at: when,
  started_at: (v, now) => `up ${duration(now - v)}`,
  heartbeat_at: (v, now) => `${Math.max(0, now - v).toFixed(1)} s ago`,
  every: (v) => (typeof v === "number" ? `every ${v} s` : v),
  request: (v) => JSON.stringify(v),
};

function format(column, value, now) {
  if (value === null || value === undefined) return "";
  if (FORMATS[column]) return FORMATS[column](value, now);
  if (typeof value === "boolean") return value ? "yes" : "";
  if (Array.isArray(value)) return value.join(", ");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function cell(column, value, now) {
  const numeric = typeof value === "number" && !TIMES.has(column);
  return el("td", { data: { column }, class: numeric ? "number" : "" }, format(column, value, now));
}

// A table of rows (objects) under their columns; extra: [{name, draw(row) -> node}] after them.
function drawTable(id, columns, rows, { now, data, rowClass, extra = [], empty }) {
  const table = document.getElementById(id);
  const head = el("tr", {}, ...columns.map((c) => el("th", {}, c)), ...extra.map((e) => el("th", {}, e.name)));
  const body = rows.map((row) =>
    el(
      "tr",
      { data: data ? data(row) : {}, class: rowClass ? rowClass(row) : "" },
      ...columns.map((c) => cell(c, row[c], now)),
      ...extra.map((e) => el("td", { data: { column: e.name } }, e.draw(row))),
    ),
  );
  if (!rows.length) {
    body.push(el("tr", {}, el("td", { class: "empty", colspan: columns.length + extra.length }, empty)));
  }
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
}

function buttons(on, ...where) {
  const enabled = info.actions.filter((name) => BUTTONS[name] && BUTTONS[name].on === on);
  return el(
    "span",
    {},
    ...enabled.map((name) => {
      const button = el("button", { type: "button", data: { action: name, target: where.join("/") } });
      button.textContent = BUTTONS[name].label;
      button.addEventListener("click", () => act(name, ...where));
      return button;
    }),
  );
}

async function act(name, ...where) {
  const spec = BUTTONS[name];
  if (spec.confirm && !window.confirm(spec.confirm(...where))) return;
  const result = document.getElementById("action-result");
  const token = document.getElementById("token").value;
  try {
    const response = await fetch(spec.path(...where), {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
    });
    const body = await response.json().catch(() => ({}));
    result.textContent = response.ok
      ? `${where.join("/")}: ${Object.entries(body).map(([k, v]) => `${k} ${v}`).join(", ")}`
      : `${name} refused: ${body.error || `HTTP ${response.status}`}`;
  } catch (error) {
    result.textContent = `${name} failed: ${error.message}`;
  }
  schedule(0);
}

function drawHandlers(stats, totals, workers) {
  const columns = stats.columns.filter((c) => !PER_THREAD.has(c));
  const serving = (handler) => workers.rows.filter((w) => (w.handlers || []).includes(handler)).length;
  drawTable("handlers", columns, totals, {
    data: (row) => ({ handler: row.handler }),
    extra: [{ name: "workers", draw: (row) => String(serving(row.handler)) }],
    empty: "no handlers in storage (nothing registered and no worker ran yet)",
  });
}

function drawThreads(stats) {
  const rows = stats.rows.filter((row) => row.thread !== null);
  const actions = info.actions.some((name) => BUTTONS[name] && BUTTONS[name].on === "thread");
  drawTable("threads", stats.columns, rows, {
    data: (row) => ({ handler: row.handler, thread: row.thread, order: row.order ?? "" }),
    extra: actions ? [{ name: "actions", draw: (row) => buttons("thread", row.handler, row.thread) }] : [],
    empty: "no messages waiting",
  });
}

function drawWorkers(workers) {
  drawTable("workers", workers.columns, workers.rows, {
    now: workers.now,
    data: (row) => ({ worker: row.id }),
    empty: "no live worker",
  });
}

function drawDeadLetters(letters) {
  const text = JSON.stringify([letters, info.actions]);
  if (drawn.get("dead-letters") === text) return; // keep the reader's place and open tracebacks
  drawn.set("dead-letters", text);
  const parts = letters.map(({ handler, count, rows }) => {
    const more = count > rows.length ? ` (the first ${rows.length} shown)` : "";
    const title = el("h3", {}, `${handler}: ${count} dead letter${count === 1 ? "" : "s"}${more}`);
    title.append(buttons("dead-letters", handler));
    const table = el("table", { id: `dead-${handler}`, data: { handler } });
    const body = rows.map((row, index) => {
      const key = `${handler}\n${row.thread}\n${row.failed_at}\n${index}`;
      const details = el("details", {}, el("summary", {}, "traceback"), el("pre", {}, row.traceback));
      details.open = opened.has(key);
      details.addEventListener("toggle", () => (details.open ? opened.add(key) : opened.delete(key)));
      return el(
        "tr",
        { data: { handler, thread: row.thread, order: row.order } },
        cell("thread", row.thread),
        cell("order", row.order),
        cell("failed_at", row.failed_at),
        cell("attempts", row.attempts),
        el("td", { data: { column: "error" }, class: "wide" }, `${row.error_type}: ${row.error}`),
        el("td", { data: { column: "payload" }, class: "wide" }, row.payload ?? `hex ${row.payload_hex}`),
        el("td", {}, details),
      );
    });
    const head = ["thread", "order", "failed at", "attempts", "error", "payload", ""].map((c) => el("th", {}, c));
    table.append(el("thead", {}, el("tr", {}, ...head)), el("tbody", {}, ...body));
    return el("div", {}, title, table);
  });
  const box = document.getElementById("dead-letters");
  box.replaceChildren(...(parts.length ? parts : [el("p", { class: "empty" }, "no dead letters")]));
}

function drawSchedules(schedules) {
  drawTable("schedules", schedules.columns, schedules.rows, { empty: "no recurring requests" });
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${path}: HTTP ${response.status}`);
  return body;
}

function setStatus(text, failed) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", failed);
}

async function refresh() {
  if (running) return;
  running = true;
  try {
    const [stats, workers, schedules] = await Promise.all([
      getJSON("api/stats"),
      getJSON("api/workers"),
      getJSON("api/schedules"),
    ]);
    const totals = stats.rows.filter((row) => row.thread === null);
    const dead = totals.filter((row) => row.dead > 0).map((row) => row.handler);
    const letters = await Promise.all(
      dead.map((handler) => getJSON(`api/dead-letters/${enc(handler)}?limit=${DEAD_LETTERS_SHOWN}`)),
    );
    drawHandlers(stats, totals, workers);
    drawThreads(stats);
    drawWorkers(workers);
    drawDeadLetters(letters);
    drawSchedules(schedules);
    setStatus(`updated ${clock(Date.now() / 1000)}`, false);
  } catch (error) {
    setStatus(`error: ${error.message}`, true);
  } finally {
    running = false;
    schedule(REFRESH_MS);
  }
}

function schedule(ms) {
  clearTimeout(timer);
  timer = setTimeout(refresh, ms);
}

async function start() {
  try {
    info = await getJSON("api/info");
  } catch (error) {
    setStatus(`error: ${error.message}`, true);
  }
  document.getElementById("storage").textContent = `${info.storage} · prefix ${info.prefix}`;
  const form = document.getElementById("actions");
  form.hidden = info.actions.length === 0;
  form.addEventListener("submit", (event) => event.preventDefault()); // the token is only sent by actions
  refresh();
}

start();
