// FLM dashboard: plain modern JavaScript, no build step, no library, no inline script.
// Every URL is relative (the page may live under a reverse proxy's sub-path); every
// admin API error is shown in words; live views follow one GET api/events stream.

const TOKEN_KEY = "flm-admin-token";
const ROW_H = 40;

// ---------------------------------------------------------------- DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (k === "style") el.style.cssText = v; // CSSOM: allowed by the CSP, unlike a style attribute
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}
const $ = (sel, root = document) => root.querySelector(sel);
const field = (label, input) => h("label", {}, label, input);
const badge = (text, cls) => h("span", { class: `badge ${cls || text}` }, text);

function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}
function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function fmtDuration(s) {
  if (s === null || s === undefined) return "—";
  s = Math.round(s);
  const d = Math.floor(s / 86400), hr = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d} d ${hr} h` : hr ? `${hr} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}
const fmtTime = (iso) => iso ? new Date(iso).toLocaleString() : "—";

// ---------------------------------------------------------------- the admin API

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set token(t) { if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY); },
};

async function call(method, path, body, token = session.token) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, "unreachable", "FLM cannot be reached (is it running, and is this the right address?).");
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: said below */ }
  if (!res.ok) {
    const err = data && data.error;
    const message = err && err.message ? err.message : `The admin API answered ${res.status} ${res.statusText}.`;
    if (res.status === 401 && token === session.token && app.signedIn) app.signOut("Your admin token was refused; sign in again.");
    throw new ApiError(res.status, err ? err.code : "http_error", message);
  }
  return data;
}

// ---------------------------------------------------------------- live events

class Events {
  constructor() { this.handlers = new Set(); this.live = false; this.ctrl = null; this.onstate = () => {}; }
  on(fn) { this.handlers.add(fn); return () => this.handlers.delete(fn); }
  start() {
    this.stop();
    const ctrl = this.ctrl = new AbortController();
    this.loop(ctrl).catch(() => {});
  }
  stop() { if (this.ctrl) this.ctrl.abort(); this.ctrl = null; this.setLive(false); }
  setLive(live) { if (live !== this.live) { this.live = live; this.onstate(live); } }
  async loop(ctrl) {
    let wait = 500;
    while (!ctrl.signal.aborted) {
      try {
        const res = await fetch("api/events?types=log,api,key,backend,pull",
          { headers: { Authorization: `Bearer ${session.token}` }, signal: ctrl.signal });
        if (res.ok && res.body) {
          this.setLive(true);
          wait = 500;
          await this.read(res.body, ctrl);
        }
      } catch { /* reconnect below */ }
      if (ctrl.signal.aborted) return;
      this.setLive(false);
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(wait * 2, 10000);
    }
  }
  async read(body, ctrl) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    while (!ctrl.signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n?/g, "\n");
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        let type = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) type = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (!data) continue;
        let obj; try { obj = JSON.parse(data); } catch { continue; }
        for (const fn of this.handlers) { try { fn(type, obj); } catch (e) { app.error(String(e)); } }
      }
    }
  }
}

// ---------------------------------------------------------------- the app shell

const app = {
  signedIn: false,
  events: new Events(),
  view: null,
  root: null,

  init() {
    this.root = $("#app");
    this.events.onstate = (live) => this.showLive(live);
    window.addEventListener("hashchange", () => this.route());
    if (session.token) this.enter(); else this.signInPage();
  },

  signInPage(message) {
    this.signedIn = false;
    const input = h("input", { type: "password", name: "token", autocomplete: "current-password", required: true });
    const msg = h("p", { class: "alert", role: "alert" }, message || "");
    const button = h("button", { type: "submit", class: "primary" }, "Sign in");
    const form = h("form", { class: "panel", "aria-label": "Sign in", onsubmit: async (e) => {
      e.preventDefault();
      button.disabled = true; msg.textContent = "";
      try {
        await call("GET", "api/apis?limit=1", undefined, input.value.trim());
        session.token = input.value.trim();
        this.enter();
      } catch (err) {
        msg.textContent = err.status === 401
          ? "That admin token is wrong. Use the token FLM printed on first start (or `flm token`)."
          : err.message;
        button.disabled = false; input.focus();
      }
    } }, h("h1", {}, "FLM"), h("div", { class: "grid" }, field("Admin token", input), button), msg);
    this.root.replaceChildren(h("main", {}, form));
    input.focus();
  },

  signOut(message) {
    session.token = null;
    this.events.stop();
    if (this.view && this.view.close) this.view.close();
    this.view = null;
    this.signInPage(message);
  },

  enter() {
    this.signedIn = true;
    const nav = h("nav", { "aria-label": "Main" },
      ...[["APIs", "#/apis"], ["Backends", "#/backends"], ["Models", "#/models"], ["System", "#/system"]]
        .map(([t, href]) => h("a", { href }, t)));
    this.liveBadge = h("span", { class: "badge stale", role: "status" }, "Connecting…");
    this.errors = h("div", { "aria-live": "assertive" });
    this.main = h("main", {});
    this.root.replaceChildren(
      h("header", {}, h("span", { class: "brand" }, "FLM"), nav,
        h("div", { class: "right" }, this.liveBadge, h("button", { onclick: () => this.signOut() }, "Sign out"))),
      h("div", { class: "errors" }, this.errors), this.main);
    this.events.start();
    if (!location.hash) location.hash = "#/apis"; else this.route();
  },

  showLive(live) {
    if (!this.liveBadge) return;
    this.liveBadge.className = `badge ${live ? "live" : "stale"}`;
    this.liveBadge.textContent = live ? "Live" : "Stale: reconnecting";
    if (live && this.view && this.view.refresh) this.view.refresh();
  },

  error(message) {
    const close = h("button", { "aria-label": "Dismiss" }, "×");
    const box = h("div", { class: "alert", role: "alert" }, h("span", {}, message), close);
    close.addEventListener("click", () => box.remove());
    this.errors.append(box);
    while (this.errors.children.length > 3) this.errors.firstChild.remove();
  },

  route() {
    if (!this.signedIn) return;
    const parts = location.hash.replace(/^#\/?/, "").split("/");
    if (this.view && this.view.close) this.view.close();
    this.errors.replaceChildren();
    const views = { apis: parts[1] ? () => new ApiPage(decodeURIComponent(parts[1])) : () => new ApisPage(),
      backends: () => new BackendsPage(), models: () => new ModelsPage(), system: () => new SystemPage() };
    const make = views[parts[0]] || views.apis;
    for (const a of document.querySelectorAll("header nav a")) {
      if (a.getAttribute("href") === `#/${parts[0] || "apis"}`) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    this.view = make();
    this.main.replaceChildren(this.view.el);
    if (this.view.focus) this.view.focus();
  },
};

/** Run an admin call; its error goes to the page's alert area in words. */
async function attempt(fn, where) {
  try { return await fn(); } catch (e) {
    if (where) { where.textContent = e.message; } else app.error(e.message);
    return undefined;
  }
}

// ---------------------------------------------------------------- APIs list

async function allApis() {
  const items = [];
  let cursor = null;
  do {
    const page = await call("GET", `api/apis?limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

function endpointOf(api) {
  const host = ["0.0.0.0", "::"].includes(api.host) ? location.hostname : api.host;
  const loop = /^(127\.|localhost$|::1$)/.test(api.host);
  const scheme = loop || api.insecure ? "http" : "https";
  return `${scheme}://${host.includes(":") ? `[${host}]` : host}:${api.port}`;
}

class ApisPage {
  constructor() {
    this.apis = [];
    this.shown = [];
    this.stats = new Map(); // id -> {at, requests, p95, keys}
    this.pending = new Set();
    this.search = h("input", { type: "search", placeholder: "Filter by name, model or port", "aria-label": "Filter APIs",
      oninput: () => this.filter() });
    this.count = h("span", { class: "note", role: "status" });
    this.spacer = h("div", { class: "spacer" });
    this.list = h("div", { class: "vlist", role: "table", "aria-label": "APIs", tabindex: "0" },
      h("div", { class: "vhead", role: "row" }, ...["Name", "Status", "Model", "Host:port", "Backends", "Keys",
        "Req / 1 h", "p95 / 1 h", ""].map((t, i) =>
        h("span", { role: "columnheader", class: [2, 3, 4, 5, 6, 7].includes(i) ? "wide" : "" }, t))),
      this.spacer);
    this.list.addEventListener("scroll", () => this.render());
    this.form = h("div", {});
    this.el = h("section", {}, h("h1", {}, "APIs"),
      h("div", { class: "toolbar" }, this.search,
        h("button", { class: "primary", onclick: () => this.openForm() }, "New API"), this.count),
      this.form, this.list);
    this.off = app.events.on((type, e) => this.onEvent(type, e));
    window.addEventListener("resize", this.onResize = () => this.render());
    this.load();
  }
  focus() { this.search.focus(); }
  close() { this.off(); window.removeEventListener("resize", this.onResize); clearTimeout(this.statsTimer); }
  refresh() { this.load(); }

  async load() {
    const items = await attempt(() => allApis());
    if (!items) return;
    this.apis = items;
    this.filter();
    this.loaded = performance.now();
  }

  filter() {
    const q = this.search.value.trim().toLowerCase();
    this.shown = q ? this.apis.filter((a) => a.name.toLowerCase().includes(q) || a.model.toLowerCase().includes(q)
      || String(a.port).includes(q)) : this.apis;
    this.count.textContent = `${this.shown.length} of ${this.apis.length} APIs`;
    this.render(true);
  }

  render(all = false) {
    this.spacer.style.height = `${this.shown.length * ROW_H}px`;
    const top = Math.max(0, this.list.scrollTop - ROW_H);
    const first = Math.floor(top / ROW_H);
    const last = Math.min(this.shown.length, first + Math.ceil((this.list.clientHeight || 600) / ROW_H) + 2);
    const rows = [];
    for (let i = first; i < last; i++) rows.push(this.row(this.shown[i], i));
    this.spacer.replaceChildren(...rows);
    clearTimeout(this.statsTimer);
    this.statsTimer = setTimeout(() => this.loadStats(this.shown.slice(first, last)), all ? 50 : 200);
  }

  row(api, i) {
    const st = this.stats.get(api.id);
    const busy = this.pending.has(api.id);
    const running = api.status === "running";
    const label = busy ? (running ? "Stopping…" : "Starting…") : running ? "Stop" : "Start";
    return h("div", { class: "vrow", role: "row", style: `top:${i * ROW_H}px`, "data-id": api.id },
      h("span", { role: "cell" }, h("a", { href: `#/apis/${api.id}` }, api.name)),
      h("span", { role: "cell" }, busy ? badge(running ? "stopping" : "starting", "pending") : badge(api.status)),
      h("span", { role: "cell", class: "wide", title: api.model }, api.model),
      h("span", { role: "cell", class: "wide mono" }, `${api.host}:${api.port}`),
      h("span", { role: "cell", class: "wide" }, (api.backends && api.backends.length) ? api.backends.join(", ") : "default"),
      h("span", { role: "cell", class: "wide num" }, st ? fmtNum(st.keys) : "…"),
      h("span", { role: "cell", class: "wide num" }, st ? fmtNum(st.requests) : "…"),
      h("span", { role: "cell", class: "wide num" }, st && st.p95 !== null ? `${fmtNum(st.p95)} ms` : st ? "—" : "…"),
      h("span", { role: "cell" }, h("button", { disabled: busy, "aria-label": `${label} ${api.name}`,
        onclick: () => this.toggle(api) }, label)));
  }

  async loadStats(visible) {
    const since = new Date(Date.now() - 3600e3).toISOString();
    const todo = visible.filter((a) => { const s = this.stats.get(a.id); return !s || Date.now() - s.at > 60e3; });
    for (const api of todo) {
      if (!this.apis.includes(api)) continue;
      try {
        const [m, k] = await Promise.all([
          call("GET", `api/apis/${api.id}/metrics?since=${encodeURIComponent(since)}`),
          call("GET", `api/apis/${api.id}/keys`)]);
        const p95s = m.buckets.map((b) => b.p95_response_ms).filter((v) => v !== null);
        this.stats.set(api.id, { at: Date.now(), requests: m.buckets.reduce((s, b) => s + b.request_count, 0),
          p95: p95s.length ? Math.max(...p95s) : null, keys: k.items.filter((x) => x.status === "active").length });
      } catch (e) {
        if (e.status !== 404) { app.error(`${api.name}: ${e.message}`); return; }
      }
    }
    if (todo.length) this.render();
  }

  async toggle(api) {
    const action = api.status === "running" ? "stop" : "start";
    this.pending.add(api.id);
    this.render(); // feedback at once; the server's answer settles it
    try {
      const updated = await call("POST", `api/apis/${api.id}/${action}`);
      this.replace(updated);
    } catch (e) {
      app.error(`${action === "stop" ? "Stopping" : "Starting"} ${api.name}: ${e.message}`);
      const fresh = await call("GET", `api/apis/${api.id}`).catch(() => null);
      if (fresh) this.replace(fresh);
    } finally {
      this.pending.delete(api.id);
      this.render();
    }
  }

  replace(api) {
    const i = this.apis.findIndex((a) => a.id === api.id);
    if (i >= 0) this.apis[i] = api; else this.apis.push(api);
    const j = this.shown.findIndex((a) => a.id === api.id);
    if (j >= 0 && this.shown !== this.apis) this.shown[j] = api;
  }

  onEvent(type, e) {
    if (type === "api") {
      if (e.action === "deleted") this.apis = this.apis.filter((a) => a.id !== e.api.id);
      else if (!this.pending.has(e.api.id)) this.replace(e.api);
      this.filter();
    } else if (type === "key" && e.api_id) { this.stats.delete(e.api_id); }
  }

  async openForm() {
    const msg = h("p", { class: "alert", role: "alert" });
    const name = h("input", { name: "name", required: true, pattern: "[A-Za-z][A-Za-z0-9._\\-]*", autocomplete: "off" });
    const model = h("select", { name: "model", required: true }, h("option", { value: "" }, "Loading models…"));
    const used = new Set(this.apis.map((a) => a.port));
    let port = 8080; while (used.has(port)) port++;
    const portIn = h("input", { name: "port", type: "number", min: 1, max: 65535, value: port });
    const maxc = h("input", { name: "max_concurrent", type: "number", min: 1, value: 1 });
    const maxq = h("input", { name: "max_queue", type: "number", min: 0, value: 32 });
    const rpm = h("input", { name: "rate_limit_rpm", type: "number", min: 1, placeholder: "none" });
    const create = h("button", { type: "submit", class: "primary" }, "Create");
    const form = h("form", { class: "panel", "aria-label": "New API", onsubmit: async (ev) => {
      ev.preventDefault();
      msg.textContent = ""; create.disabled = true;
      const body = { name: name.value.trim(), model: model.value, max_concurrent: Number(maxc.value),
        max_queue: Number(maxq.value) };
      if (portIn.value) body.port = Number(portIn.value);
      if (rpm.value) body.rate_limit_rpm = Number(rpm.value);
      try {
        const api = await call("POST", "api/apis", body);
        this.replace(api); this.filter();
        this.form.replaceChildren(keyShown(api, api.key, `API ${api.name} created`, () => { location.hash = `#/apis/${api.id}`; }));
      } catch (e) { msg.textContent = e.message; create.disabled = false; }
    } }, h("h2", {}, "New API"),
    h("div", { class: "grid" }, field("Name", name), field("Model", model), field("Port", portIn),
      field("Max concurrent", maxc), field("Max queue", maxq), field("Rate limit (requests/min)", rpm), create,
      h("button", { type: "button", onclick: () => this.form.replaceChildren() }, "Cancel")), msg);
    this.form.replaceChildren(form);
    name.focus();
    try {
      const listing = await call("GET", "api/models");
      model.replaceChildren(...listing.models.map((m) => h("option", { value: m.name }, m.name)));
      if (listing.stale) msg.textContent = "The backend cannot be reached: this is the last model list fetched.";
    } catch (e) {
      model.replaceChildren(h("option", { value: "" }, "No model list"));
      msg.textContent = `Models: ${e.message}`;
    }
  }
}

/** A secret shown once: Copy, and curl and Python snippets ready to paste. */
function keyShown(api, key, title, done) {
  const url = endpointOf(api);
  const curl = `curl ${url}/v1/chat/completions \\\n  -H "Authorization: Bearer ${key}" \\\n  -H "Content-Type: application/json" \\\n  -d '{"model": "${api.model}", "messages": [{"role": "user", "content": "Hello"}]}'`;
  const py = `from openai import OpenAI\n\nclient = OpenAI(base_url="${url}/v1", api_key="${key}")\nreply = client.chat.completions.create(\n    model="${api.model}", messages=[{"role": "user", "content": "Hello"}])\nprint(reply.choices[0].message.content)`;
  const copied = h("span", { role: "status", class: "note" });
  const copy = async (text) => {
    try { await navigator.clipboard.writeText(text); copied.textContent = "Copied."; } catch {
      copied.textContent = "Copying is not allowed here: select the text and copy it.";
    }
  };
  return h("section", { class: "panel", "aria-label": "New key" }, h("h2", {}, title),
    h("p", {}, "This key is shown only now. Copy it and keep it safe."),
    h("div", { class: "toolbar" }, h("code", { class: "secret", "aria-label": "Key" }, key),
      h("button", { class: "primary", onclick: () => copy(key) }, "Copy"), copied),
    h("h3", {}, "curl"), h("pre", { "aria-label": "curl snippet" }, curl),
    h("h3", {}, "Python"), h("pre", { "aria-label": "Python snippet" }, py),
    done ? h("button", { onclick: done }, "Done") : null);
}

// ---------------------------------------------------------------- one API

const SETTINGS = [["model", "Model", "text"], ["port", "Port", "number"], ["max_concurrent", "Max concurrent", "number"],
  ["max_queue", "Max queue", "number"], ["queue_timeout_s", "Queue timeout (s)", "number"],
  ["upstream_timeout_s", "Upstream timeout (s)", "number"], ["rate_limit_rpm", "Rate limit (requests/min)", "number"],
  ["priority", "Priority", "number"]];
const RANGES = [["1 h", 3600], ["24 h", 86400], ["7 d", 7 * 86400]];

class ApiPage {
  constructor(ref) {
    this.ref = ref;
    this.logFilter = { status: "", key: "" };
    this.range = 3600;
    this.early = []; // log events that arrive while the log's first page loads
    this.el = h("section", {}, h("p", { class: "note" }, "Loading…"));
    this.off = app.events.on((type, e) => this.onEvent(type, e));
    this.load();
  }
  close() { this.off(); clearInterval(this.timer); clearTimeout(this.chartTimer); }
  refresh() { this.load(); }

  async load() {
    const api = await attempt(() => call("GET", `api/apis/${encodeURIComponent(this.ref)}`));
    if (!api) { this.el.replaceChildren(h("h1", {}, "API not found"), h("p", {}, h("a", { href: "#/apis" }, "Back to the APIs"))); return; }
    this.api = api;
    this.header = h("div", {});
    this.secret = h("div", {});
    this.keys = h("div", {});
    this.queue = h("div", {});
    this.charts = h("div", { class: "charts" });
    this.logBody = h("tbody", {});
    this.more = h("button", { onclick: () => this.loadLogs(true) }, "Older");
    this.el.replaceChildren(this.header, this.secret,
      h("h2", {}, "Settings"), this.settingsForm(),
      h("h2", {}, "Keys"), this.keys,
      h("h2", {}, "Queue"), this.queue,
      h("h2", {}, "Charts"), this.rangeBar(), this.charts,
      h("h2", {}, "Request log"), this.logFilters(),
      h("div", { class: "scroll" }, h("table", { "aria-label": "Request log" }, h("thead", {}, h("tr", {},
        ...["Time", "Request id", "Method and path", "Status", "Key", "Queue", "Response", "Tokens", "Error"]
          .map((t) => h("th", {}, t)))), this.logBody)), this.more);
    this.drawHeader();
    this.loadKeys(); this.loadLogs(); this.loadCharts(); this.loadQueue();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.loadQueue(), 2000);
  }

  drawHeader() {
    const api = this.api;
    const running = api.status === "running";
    const busy = this.busy;
    this.header.replaceChildren(h("h1", {}, api.name, " ", busy ? badge(busy, "pending") : badge(api.status)),
      h("p", { class: "note" }, `${api.model} on ${endpointOf(api)}`, api.status_reason ? ` — ${api.status_reason}` : ""),
      h("div", { class: "toolbar" },
        h("button", { disabled: !!busy, onclick: () => this.toggle() }, busy ? `${busy[0].toUpperCase()}${busy.slice(1)}…` : running ? "Stop" : "Start"),
        h("label", {}, "Grace (s)", this.grace = h("input", { type: "number", min: 0, max: 604800, value: 0, style: "width:7rem" })),
        h("button", { onclick: () => this.rotate() }, "Rotate key"),
        h("button", { class: "danger", onclick: () => this.remove() }, "Delete")));
  }

  async toggle() {
    const action = this.api.status === "running" ? "stop" : "start";
    this.busy = action === "stop" ? "stopping" : "starting";
    this.drawHeader();
    try { this.api = await call("POST", `api/apis/${this.api.id}/${action}`); } catch (e) { app.error(e.message); }
    this.busy = null; this.drawHeader();
  }

  async rotate() {
    const res = await attempt(() => call("POST", `api/apis/${this.api.id}/rotate-key`, { grace_s: Number(this.grace.value || 0) }));
    if (!res) return;
    this.secret.replaceChildren(keyShown(res, res.key, "New secret for the key named default",
      () => this.secret.replaceChildren()));
    this.loadKeys();
  }

  async remove() {
    if (!window.confirm(`Delete API ${this.api.name}? Its port closes and its logs and metrics go.`)) return;
    const ok = await attempt(() => call("DELETE", `api/apis/${this.api.id}`));
    if (ok !== undefined) location.hash = "#/apis";
  }

  settingsForm() {
    const msg = h("p", { class: "alert", role: "alert" });
    const inputs = SETTINGS.map(([k, label, type]) => [k, h("input", { name: k, type,
      value: this.api[k] === null ? "" : this.api[k], placeholder: k === "rate_limit_rpm" ? "none" : null })]);
    const save = h("button", { type: "submit", class: "primary" }, "Save");
    return h("form", { class: "panel", "aria-label": "Settings", onsubmit: async (ev) => {
      ev.preventDefault(); msg.textContent = "";
      const body = {};
      for (const [k, input] of inputs) {
        const raw = input.value.trim();
        const v = input.type === "number" ? (raw === "" ? null : Number(raw)) : raw;
        if (v !== this.api[k]) body[k] = v;
      }
      if (!Object.keys(body).length) { msg.textContent = "Nothing changed."; return; }
      save.disabled = true;
      try { this.api = await call("PATCH", `api/apis/${this.api.id}`, body); this.drawHeader(); msg.textContent = "Saved."; }
      catch (e) { msg.textContent = e.message; }
      save.disabled = false;
    } }, h("div", { class: "grid" }, ...inputs.map(([k, input]) => field(SETTINGS.find((s) => s[0] === k)[1], input)), save), msg);
  }

  async loadKeys() {
    const res = await attempt(() => call("GET", `api/apis/${this.api.id}/keys`));
    if (!res) return;
    this.keyList = res.items;
    const msg = h("p", { class: "alert", role: "alert" });
    const name = h("input", { name: "key_name", required: true, autocomplete: "off" });
    const expires = h("input", { name: "expires_at", type: "datetime-local" });
    const daily = h("input", { name: "daily_token_budget", type: "number", min: 1, placeholder: "none" });
    const monthly = h("input", { name: "monthly_token_budget", type: "number", min: 1, placeholder: "none" });
    const rpm = h("input", { name: "key_rpm", type: "number", min: 1, placeholder: "none" });
    const budget = (used, limit) => limit ? `${fmtNum(used)} / ${fmtNum(limit)}` : fmtNum(used);
    const rows = res.items.map((k) => h("tr", {},
      h("td", {}, k.name), h("td", { class: "mono" }, k.prefix), h("td", {}, badge(k.status)),
      h("td", {}, k.expires_at ? fmtTime(k.expires_at) : "never"),
      h("td", {}, fmtTime(k.last_used_at)),
      h("td", { class: "num" }, fmtNum(k.usage.requests_today)),
      h("td", { class: "num" }, budget(k.usage.tokens_today, k.daily_token_budget)),
      h("td", { class: "num" }, budget(k.usage.tokens_month, k.monthly_token_budget)),
      h("td", {}, k.grace_until ? `old secret until ${fmtTime(k.grace_until)}` : ""),
      h("td", {}, k.status === "revoked" ? "" : h("span", { class: "toolbar" },
        h("button", { "aria-label": `Rotate ${k.name}`, onclick: () => this.rotateKey(k) }, "Rotate"),
        h("button", { class: "danger", "aria-label": `Revoke ${k.name}`, onclick: () => this.revokeKey(k) }, "Revoke")))));
    this.keys.replaceChildren(
      h("div", { class: "scroll" }, h("table", { "aria-label": "Keys" }, h("thead", {}, h("tr", {},
        ...["Name", "Prefix", "Status", "Expires", "Last used", "Requests today", "Tokens today", "Tokens this month", "Grace", ""]
          .map((t) => h("th", {}, t)))), h("tbody", {}, rows))),
      h("form", { class: "panel", "aria-label": "New key", onsubmit: async (ev) => {
        ev.preventDefault(); msg.textContent = "";
        const body = { name: name.value.trim() };
        if (expires.value) body.expires_at = new Date(expires.value).toISOString();
        if (daily.value) body.daily_token_budget = Number(daily.value);
        if (monthly.value) body.monthly_token_budget = Number(monthly.value);
        if (rpm.value) body.rate_limit_rpm = Number(rpm.value);
        try {
          const key = await call("POST", `api/apis/${this.api.id}/keys`, body);
          this.secret.replaceChildren(keyShown(this.api, key.key, `Key ${key.name} created`, () => this.secret.replaceChildren()));
          this.loadKeys();
        } catch (e) { msg.textContent = e.message; }
      } }, h("div", { class: "grid" }, field("Key name", name), field("Expires", expires), field("Daily token budget", daily),
        field("Monthly token budget", monthly), field("Requests/min", rpm), h("button", { type: "submit" }, "Create key")), msg));
  }

  async rotateKey(k) {
    const res = await attempt(() => call("POST", `api/apis/${this.api.id}/keys/${k.id}/rotate`, { grace_s: Number(this.grace.value || 0) }));
    if (!res) return;
    this.secret.replaceChildren(keyShown(this.api, res.key, `New secret for key ${k.name}`, () => this.secret.replaceChildren()));
    this.loadKeys();
  }

  async revokeKey(k) {
    if (!window.confirm(`Revoke key ${k.name}? It stops working at once.`)) return;
    if (await attempt(() => call("DELETE", `api/apis/${this.api.id}/keys/${k.id}`))) this.loadKeys();
  }

  async loadQueue() {
    let sys;
    try { sys = await call("GET", "api/system"); } catch (e) { this.queue.textContent = `Queue: ${e.message}`; clearInterval(this.timer); return; }
    const mine = sys.apis[this.api.name];
    // Each backend this API may use (its own list, else every enabled one), shared by all APIs.
    let backends = [];
    try { backends = (await call("GET", "api/backends")).items || []; } catch (e) { backends = []; }
    const named = this.api.backends && this.api.backends.length ? this.api.backends : null;
    const rows = backends.filter((b) => named ? named.includes(b.name) : b.enabled)
      .flatMap((b) => [h("dt", {}, `Backend ${b.name} (${b.state}, all APIs)`),
        h("dd", {}, `${b.in_flight} in flight of ${b.max_concurrent}, ${b.waiting} waiting`)]);
    if (!rows.length && sys.backend) {
      rows.push(h("dt", {}, "Backend (all APIs)"),
        h("dd", {}, `${sys.backend.in_use} in use of ${sys.backend.limit}, ${sys.backend.waiting} waiting`));
    }
    this.queue.replaceChildren(h("dl", { class: "kv" },
      h("dt", {}, "In flight"), h("dd", {}, mine ? `${mine.in_flight} of ${this.api.max_concurrent}` : "not running"),
      h("dt", {}, "Waiting"), h("dd", {}, mine ? `${mine.queue_depth} of ${this.api.max_queue}` : "—"),
      ...rows));
  }

  logFilters() {
    const status = h("select", { "aria-label": "Status filter", onchange: () => { this.logFilter.status = status.value; this.loadLogs(); } },
      ...[["", "All statuses"], ["2xx", "2xx"], ["4xx", "4xx"], ["5xx", "5xx"], ["429", "429"]].map(([v, t]) => h("option", { value: v }, t)));
    this.keyFilter = h("select", { "aria-label": "Key filter", onchange: () => { this.logFilter.key = this.keyFilter.value; this.loadLogs(); } },
      h("option", { value: "" }, "All keys"));
    this.keyFilter.addEventListener("focus", () => {
      const have = new Set([...this.keyFilter.options].map((o) => o.value));
      for (const k of this.keyList || []) if (!have.has(String(k.id))) this.keyFilter.append(h("option", { value: k.id }, k.name));
    });
    return h("div", { class: "toolbar" }, status, this.keyFilter);
  }

  logRow(r) {
    const tokens = r.prompt_tokens === null && r.completion_tokens === null ? "—" : `${fmtNum(r.prompt_tokens)} + ${fmtNum(r.completion_tokens)}`;
    return h("tr", { "data-request-id": r.request_id },
      h("td", {}, fmtTime(r.created_at)), h("td", { class: "mono" }, r.request_id),
      h("td", { class: "mono" }, `${r.method} ${r.path}`), h("td", {}, String(r.status)), h("td", {}, r.key_name || "—"),
      h("td", { class: "num" }, `${fmtNum(r.queue_ms)} ms`), h("td", { class: "num" }, `${fmtNum(r.response_ms)} ms`),
      h("td", { class: "num" }, tokens), h("td", {}, r.error || ""));
  }

  async loadLogs(older = false) {
    const q = new URLSearchParams({ limit: "50" });
    if (this.logFilter.status) q.set("status", this.logFilter.status);
    if (this.logFilter.key) q.set("key", this.logFilter.key);
    if (older && this.cursor) q.set("cursor", this.cursor);
    if (!older) this.logsReady = false;
    const page = await attempt(() => call("GET", `api/apis/${this.api.id}/logs?${q}`));
    if (!page) { this.logsReady = true; return; }
    this.cursor = page.next_cursor;
    this.more.hidden = !this.cursor;
    const rows = page.items.map((r) => this.logRow(r));
    if (older) { this.logBody.append(...rows); return; }
    this.logBody.replaceChildren(...rows);
    // Rows that arrived meanwhile: those not yet written are not in the page.
    const have = new Set(page.items.map((r) => r.request_id));
    for (const e of this.early) if (!have.has(e.request_id)) this.onLog(e);
    this.early = [];
    this.logsReady = true;
  }

  onLog(e) {
    if (e.api_id !== this.api.id || !this.matches(e)) return;
    this.logBody.prepend(this.logRow(e));
    if (!this.chartTimer) this.chartTimer = setTimeout(() => { this.chartTimer = null; this.loadCharts(); }, 5000);
    while (this.logBody.children.length > 500) this.logBody.lastChild.remove();
  }

  matches(r) {
    const s = this.logFilter.status;
    if (s && !(s.endsWith("xx") ? String(r.status)[0] === s[0] : String(r.status) === s)) return false;
    return !this.logFilter.key || String(r.key_id) === String(this.logFilter.key);
  }

  onEvent(type, e) {
    if (type === "log" && !this.logsReady) {
      this.early.push(e);
      if (this.early.length > 500) this.early.shift();
      return;
    }
    if (!this.api) return;
    if (type === "log") this.onLog(e);
    else if (type === "api" && e.api.id === this.api.id) {
      if (e.action === "deleted") { app.error(`API ${this.api.name} was deleted.`); location.hash = "#/apis"; return; }
      if (!this.busy) { this.api = e.api; this.drawHeader(); }
    } else if (type === "key" && e.api_id === this.api.id) { this.loadKeys(); }
  }

  rangeBar() {
    const bar = h("div", { class: "toolbar", role: "group", "aria-label": "Chart range" });
    for (const [label, s] of RANGES) {
      bar.append(h("button", { "aria-pressed": String(s === this.range), onclick: (ev) => {
        this.range = s;
        for (const b of bar.children) b.setAttribute("aria-pressed", String(b === ev.currentTarget));
        this.loadCharts();
      } }, label));
    }
    return bar;
  }

  async loadCharts() {
    const since = new Date(Date.now() - this.range * 1000).toISOString();
    const m = await attempt(() => call("GET", `api/apis/${this.api.id}/metrics?since=${encodeURIComponent(since)}`));
    if (!m) return;
    const per = m.bucket_s / 60;
    const t0 = Date.parse(m.since), t1 = Date.parse(m.until);
    const series = (f) => m.buckets.map((b) => [Date.parse(b.start) || b.start * 1000, f(b)]);
    this.charts.replaceChildren(
      chart("Requests / min", series((b) => b.request_count / per), t0, t1, "", m.bucket_s * 1000),
      chart("p95 latency", series((b) => b.p95_response_ms), t0, t1, " ms", m.bucket_s * 1000),
      chart("p95 time to first byte", series((b) => b.p95_ttfb_ms), t0, t1, " ms", m.bucket_s * 1000),
      chart("Tokens / min", series((b) => ((b.prompt_tokens || 0) + (b.completion_tokens || 0)) / per), t0, t1, "", m.bucket_s * 1000),
      chart("Error rate", series((b) => 100 * b.error_rate), t0, t1, " %", m.bucket_s * 1000));
  }
}

/** A small SVG bar chart, one bar per bucket of the rollups. */
function chart(title, points, t0, t1, unit, bucketMs) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 300, H = 110, L = 34, B = 16;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  const vals = points.map((p) => p[1]).filter((v) => v !== null && v !== undefined);
  const max = Math.max(1e-9, ...vals);
  const last = vals.length ? vals[vals.length - 1] : null;
  svg.setAttribute("aria-label", `${title}: ${vals.length ? `latest ${fmtNum(last, 1)}${unit}, highest ${fmtNum(max, 1)}${unit}` : "no requests in this range"}`);
  const el = (tag, attrs) => { const e = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; };
  svg.append(el("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }), el("line", { class: "axis", x1: L, y1: 4, x2: L, y2: H - B }));
  const top = el("text", { x: 2, y: 12 }); top.textContent = fmtNum(max, 1); svg.append(top);
  const x = (t) => L + (W - L) * Math.min(1, Math.max(0, (t - t0) / Math.max(1, t1 - t0)));
  const y = (v) => (H - B) - (H - B - 6) * (v / max);
  // One bar per bucket: buckets exist only where there were requests, so bars show gaps.
  const bw = Math.max(2, (W - L) * bucketMs / Math.max(1, t1 - t0) - 1);
  const drawn = points.filter((p) => p[1] !== null && p[1] !== undefined);
  for (const [t, v] of drawn) {
    const top = y(v);
    svg.append(el("rect", { class: "bar", x: Math.min(W - bw, x(t)).toFixed(1), y: top.toFixed(1), width: bw.toFixed(1),
      height: Math.max(1, H - B - top).toFixed(1) }));
  }
  if (!drawn.length) { const t = el("text", { x: L + 8, y: H / 2 }); t.textContent = "no requests in this range"; svg.append(t); }
  return h("figure", { class: "chart" }, h("h3", {}, title), svg);
}

// ---------------------------------------------------------------- backends

const BACKEND_FIELDS = [["name", "Name", "text"], ["url", "URL", "url"], ["kind", "Kind", "select"],
  ["max_concurrent", "Max concurrent", "number"], ["weight", "Weight", "number"]];

class BackendsPage {
  constructor() {
    this.body = h("div", {}, h("p", { class: "note" }, "Loading…"));
    this.form = h("div", {});
    this.el = h("section", {}, h("h1", {}, "Backends"), this.form, this.body);
    this.off = app.events.on((type) => { if (type === "backend") this.load(); });
    this.load();
  }
  close() { this.off(); }
  refresh() { this.load(); }

  async load() {
    let res;
    try { res = await call("GET", "api/backends"); } catch (e) {
      if (e.status === 404) {
        this.body.replaceChildren(h("p", { class: "panel", role: "status" },
          "Backends are not available: this FLM serves one model server, set by its --backend option. ",
          "Its state shows on the System page."));
        return;
      }
      this.body.replaceChildren(h("p", { class: "alert", role: "alert" }, e.message));
      return;
    }
    const items = res.items || res.backends || [];
    this.body.replaceChildren(h("div", { class: "toolbar" }, h("button", { class: "primary", onclick: () => this.edit(null) }, "Add backend")),
      h("div", { class: "scroll" }, h("table", { "aria-label": "Backends" }, h("thead", {}, h("tr", {},
        ...["Name", "URL", "Kind", "State", "In flight", "Waiting", "Models", "Last error", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, items.map((b) => h("tr", { "data-name": b.name },
        h("td", {}, b.name), h("td", { class: "mono" }, b.url), h("td", {}, b.kind),
        h("td", {}, b.enabled === false ? badge("disabled") : badge(b.state || "probing")),
        h("td", { class: "num" }, `${fmtNum(b.in_flight)} of ${fmtNum(b.max_concurrent)}`),
        h("td", { class: "num" }, fmtNum(b.waiting)),
        h("td", {}, (b.models || []).map((m) => (typeof m === "string" ? m : m.name)).join(", ") || "—"),
        h("td", {}, b.last_error || ""),
        h("td", {}, h("span", { class: "toolbar" },
          h("button", { "aria-label": `Edit ${b.name}`, onclick: () => this.edit(b) }, "Edit"),
          h("button", { "aria-label": `${b.enabled === false ? "Enable" : "Disable"} ${b.name}`,
            onclick: () => this.patch(b.name, { enabled: b.enabled === false }) }, b.enabled === false ? "Enable" : "Disable")))))))));
  }

  async patch(name, body) {
    if (await attempt(() => call("PATCH", `api/backends/${encodeURIComponent(name)}`, body))) this.load();
  }

  edit(b) {
    const msg = h("p", { class: "alert", role: "alert" });
    const inputs = BACKEND_FIELDS.map(([k, , type]) => [k, type === "select"
      ? h("select", { name: k }, ...["ollama", "openai"].map((v) => h("option", { value: v, selected: b && b.kind === v }, v)))
      : h("input", { name: k, type, value: b ? b[k] : k === "max_concurrent" || k === "weight" ? 1 : "", disabled: !!b && k === "name" })]);
    this.form.replaceChildren(h("form", { class: "panel", "aria-label": b ? `Edit ${b.name}` : "Add backend", onsubmit: async (ev) => {
      ev.preventDefault(); msg.textContent = "";
      const body = {};
      for (const [k, input] of inputs) {
        if (b && k === "name") continue;
        body[k] = input.type === "number" ? Number(input.value) : input.value;
      }
      try {
        if (b) await call("PATCH", `api/backends/${encodeURIComponent(b.name)}`, body);
        else await call("POST", "api/backends", body);
        this.form.replaceChildren(); this.load();
      } catch (e) { msg.textContent = e.message; }
    } }, h("h2", {}, b ? `Edit ${b.name}` : "Add backend"),
    h("div", { class: "grid" }, ...inputs.map(([k, input]) => field(BACKEND_FIELDS.find((f) => f[0] === k)[1], input)),
      h("button", { type: "submit", class: "primary" }, "Save"), h("button", { type: "button", onclick: () => this.form.replaceChildren() }, "Cancel")), msg));
  }
}

// ---------------------------------------------------------------- models

class ModelsPage {
  constructor() {
    this.jobs = new Map(); // job id -> progress element
    this.msg = h("p", { class: "alert", role: "alert" });
    this.name = h("input", { name: "model_name", required: true, placeholder: "llama3.2:1b", autocomplete: "off" });
    this.pulls = h("div", {});
    this.list = h("div", {}, h("p", { class: "note" }, "Loading…"));
    this.el = h("section", {}, h("h1", {}, "Models"),
      h("form", { class: "panel", "aria-label": "Pull a model", onsubmit: (ev) => { ev.preventDefault(); this.pull(); } },
        h("div", { class: "grid" }, field("Model name", this.name), h("button", { type: "submit", class: "primary" }, "Pull")), this.msg),
      this.pulls, this.list);
    this.off = app.events.on((type, e) => { if (type === "pull") this.progress(e); });
    this.load();
  }
  close() { this.off(); for (const t of this.polls || []) clearInterval(t); }
  refresh() { this.load(); }

  async load() {
    let res;
    try { res = await call("GET", "api/models"); } catch (e) {
      this.list.replaceChildren(h("p", { class: "alert", role: "alert" }, e.message)); return;
    }
    this.list.replaceChildren(res.stale ? h("p", { class: "alert", role: "status" }, "The backend cannot be reached: this is the last list fetched.") : "",
      h("div", { class: "scroll" }, h("table", { "aria-label": "Models" }, h("thead", {}, h("tr", {},
        ...["Name", "Size", "Family", "Backends", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, res.models.map((m) => h("tr", {},
        h("td", { class: "mono" }, m.name), h("td", { class: "num" }, fmtBytes(m.size)),
        h("td", {}, (m.details && m.details.family) || "—"), h("td", {}, (m.backends || ["default"]).join(", ")),
        h("td", {}, h("button", { class: "danger", "aria-label": `Delete ${m.name}`, onclick: () => this.remove(m.name) }, "Delete"))))))));
  }

  async pull() {
    this.msg.textContent = "";
    const name = this.name.value.trim();
    if (!name) return;
    try {
      const job = await call("POST", "api/models/pull", { name });
      this.progress(job);
      this.name.value = "";
      this.follow(job.job);
    } catch (e) { this.msg.textContent = e.message; }
  }

  /** When the event stream is down, poll the job instead. */
  follow(id) {
    this.polls = this.polls || [];
    const t = setInterval(async () => {
      if (app.events.live) return;
      try { const s = await call("GET", `api/models/pulls/${id}`); this.progress(s); if (s.status !== "running") clearInterval(t); }
      catch (e) { clearInterval(t); this.msg.textContent = e.message; }
    }, 1000);
    this.polls.push(t);
  }

  progress(s) {
    let row = this.jobs.get(s.job);
    if (!row) {
      row = { bar: h("div", {}), box: null, text: h("span", { class: "note" }) };
      row.box = h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
        "aria-label": `Pulling ${s.name}` }, row.bar);
      this.pulls.prepend(h("div", { class: "panel" }, h("strong", {}, s.name), row.box, row.text));
      this.jobs.set(s.job, row);
    }
    const pct = Math.max(0, Math.min(100, s.percent || 0));
    row.bar.style.width = `${pct}%`;
    row.box.setAttribute("aria-valuenow", String(pct));
    row.box.setAttribute("aria-valuetext", `${pct}%`);
    const parts = [`${pct.toFixed(1)}%`];
    if (s.total) parts.push(`${fmtBytes(s.completed)} of ${fmtBytes(s.total)}`);
    if (s.speed_bps) parts.push(`${fmtBytes(s.speed_bps)}/s`);
    if (s.eta_s !== null && s.eta_s !== undefined) parts.push(`about ${fmtDuration(s.eta_s)} left`);
    if (s.status === "done") parts.push("done");
    if (s.status === "error") parts.push(`failed: ${s.error}`);
    row.text.textContent = ` ${parts.join(" · ")}`;
    if (s.status !== "running") this.load();
  }

  async remove(name) {
    if (!window.confirm(`Delete model ${name} from the model server?`)) return;
    try { await call("DELETE", `api/models/${encodeURIComponent(name)}`); this.load(); } catch (e) {
      this.msg.textContent = e.status === 409 ? `Not deleted: ${e.message}` : e.message;
    }
  }
}

// ---------------------------------------------------------------- system

class SystemPage {
  constructor() {
    this.body = h("div", {}, h("p", { class: "note" }, "Loading…"));
    this.el = h("section", {}, h("h1", {}, "System"), this.body);
    this.load();
    this.timer = setInterval(() => this.load(), 2000);
  }
  close() { clearInterval(this.timer); }
  refresh() { this.load(); }

  async load() {
    let sys, health;
    try {
      [sys, health] = await Promise.all([call("GET", "api/system"), fetch("health").then((r) => r.json())]);
    } catch (e) {
      this.body.replaceChildren(h("p", { class: "alert", role: "alert" }, e.message || "FLM cannot be reached.")); return;
    }
    const db = health.database ? (health.database.writable ? "writable" : "cannot be written") : "—";
    const rows = [["Status", badge(health.status, health.status === "ok" ? "up" : "down")],
      ["Memory", `${fmtBytes(sys.rss_bytes)}${sys.memory_limit_bytes ? ` of ${fmtBytes(sys.memory_limit_bytes)}` : ""}`],
      ["CPU", sys.cpu_percent === null ? "—" : `${fmtNum(sys.cpu_percent, 1)} %`],
      ["Uptime", fmtDuration(sys.uptime_s)], ["Running APIs", fmtNum(sys.running_apis)],
      ["Open connections", fmtNum(sys.open_connections)], ["In flight", fmtNum(sys.in_flight)],
      ["Backend", `${health.backend && health.backend.reachable ? "reachable" : "unreachable"}; ${sys.backend.in_use} in use of ${sys.backend.limit}, ${sys.backend.waiting} waiting`],
      ["Log rows", `${fmtNum(sys.log_rows.written)} written, ${fmtNum(sys.log_rows.buffered)} buffered`],
      ["Dropped log rows", fmtNum(sys.dropped_log_rows)], ["Database", db]];
    this.body.replaceChildren(h("dl", { class: "kv panel" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  }
}

window.flmDashboard = app; // for the benchmark script and curious people
app.init();
