// The asdlc dashboard page: polls the JSON API every 2 s and renders one view by the URL's
// hash (#/, #/group?stream=&group=, #/dead, #/dead/one?stream=&id=). Everything from the
// server is put in the page as text (textContent), never as HTML.
"use strict";

const REFRESH_MS = 2000;
// The API is beside the script, wherever the dashboard is mounted (`/`, `/ops/`, or `/ops`
// nested in an application's router, where a page-relative `api/` would miss it).
const BASE = document.currentScript.src.replace(/[^/]*$/, "");
const state = { overview: null, lastKey: null, busy: false };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function duration(ms) {
  if (ms === null || ms === undefined) return "-";
  const s = ms / 1000;
  if (s < 1) return `${Math.round(ms)}ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${Math.floor(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
}

function ageOfId(id) {
  const ms = Number(String(id).split("-")[0]);
  return Number.isFinite(ms) ? Math.max(0, Date.now() - ms) : null;
}

function route() {
  const h = location.hash.replace(/^#/, "") || "/";
  const [path, query] = h.split("?");
  return { path, params: new URLSearchParams(query || "") };
}

function link(path, params, text) {
  const q = new URLSearchParams(params).toString();
  return el("a", { href: `#${path}${q ? "?" + q : ""}` }, text);
}

function tenant() {
  return document.getElementById("tenant").value;
}

function withTenant(url) {
  const t = tenant();
  return t ? `${url}${url.includes("?") ? "&" : "?"}tenant=${encodeURIComponent(t)}` : url;
}

async function getJson(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

function say(text, ok) {
  const m = document.getElementById("message");
  m.hidden = false;
  m.className = ok ? "ok" : "error";
  m.textContent = text;
}

function confirmThen(text, action) {
  const box = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  box.hidden = false;
  const yes = document.getElementById("confirm-yes");
  const no = document.getElementById("confirm-no");
  const close = () => {
    box.hidden = true;
    yes.onclick = null;
    no.onclick = null;
  };
  yes.onclick = () => { close(); action(); };
  no.onclick = close;
}

async function mutate(path, body, describe) {
  const token = document.getElementById("token").value;
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const r = await fetch(`${BASE}api/${path}`, { method: "POST", headers, body: JSON.stringify(body) });
    const answer = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) {
      say(`Refused (${r.status}): ${answer.error}`, false);
      return;
    }
    say(describe(answer), true);
  } catch (e) {
    say(`Failed: ${e.message}`, false);
  }
  state.lastKey = null;
  refresh();
}

// `group`: replay for that group only (the others acknowledge the copy unhandled).
function replayOne(stream, id, group) {
  const whom = group ? ` for group ${group} only` : " for every group";
  confirmThen(`Replay dead letter ${id} to ${stream}${whom}?`, () =>
    mutate("dead-letters/replay", { stream, id, to_group: group || undefined }, (a) =>
      `Replayed ${id} as ${a.replayed[0].new_id}${whom}`));
}

function purgeOne(stream, id) {
  confirmThen(`Delete dead letter ${id} of ${stream} for good?`, () =>
    mutate("dead-letters/purge", { stream, id }, () => `Purged ${id}`));
}

// On a phone the table's rows become cards (app.css, `table.stack`): each cell is labelled
// with its column's header, read from `data-label`.
function table(headers, rows, attrs) {
  for (const row of rows) {
    [...row.children].forEach((cell, i) => {
      if (headers[i]) cell.dataset.label = headers[i];
    });
  }
  const a = Object.assign({}, attrs);
  a.class = a.class ? `${a.class} stack` : "stack";
  return el("div", { class: "scroll" },
    el("table", a,
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)));
}

function td(key, value, cls) {
  return el("td", { "data-k": key, class: cls }, value === null || value === undefined ? "-" : value);
}

function sparkline(samples) {
  const ns = "http://www.w3.org/2000/svg";
  const w = 120, h = 24;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "spark");
  if (!samples || samples.length < 2) return svg;
  const max = Math.max(1, ...samples.map((s) => s.per_second));
  const pts = samples.map((s, i) =>
    `${(i / (samples.length - 1)) * w},${h - 1 - (s.per_second / max) * (h - 2)}`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts.join(" "));
  svg.append(line);
  return svg;
}

async function renderOverview(view) {
  const [o, tp] = await Promise.all([
    getJson(withTenant(BASE + "api/overview")),
    getJson(withTenant(BASE + "api/throughput")),
  ]);
  state.overview = o;
  header(o);
  const series = new Map(tp.groups.map((g) => [`${g.stream}\n${g.group}`, g.samples]));
  const t = o.totals;
  const cards = el("section", { class: "cards" },
    [["streams", t.streams], ["groups", t.groups], ["consumers", t.consumers],
     ["lag", t.lag], ["pending", t.pending], ["dead letters", t.dead_letters]].map(([k, v]) =>
      el("div", { class: "card" },
        el("div", { class: "num", id: `total-${k.replace(" ", "-")}` }, v),
        el("div", { class: "muted" }, k))));
  const reasons = o.reasons.length
    ? el("ul", { class: "reasons", id: "reasons" }, o.reasons.map((r) => el("li", {}, r)))
    : null;
  const streams = o.streams.map((s) => {
    const title = el("h2", {}, s.stream, s.tenant ? el("span", { class: "tag" }, `tenant ${s.tenant}`) : null);
    const facts = el("p", { class: "muted" },
      s.exists ? [el("span", { "data-k": "length" }, s.length), ` entries · last ${s.last_id || "-"} · `]
        : "not created yet · ",
      link("/dead", {}, `${s.dead_letters} dead letter(s)`));
    const rows = s.groups.map((g) => {
      const samples = series.get(`${s.stream}\n${g.name}`) || [];
      const rate = samples.length ? samples[samples.length - 1].per_second : null;
      return el("tr", { "data-stream": s.stream, "data-group": g.name },
        el("td", { "data-k": "group" }, link("/group", { stream: s.stream, group: g.name }, g.name)),
        td("consumers", g.consumers.length),
        td("lag", g.lag),
        td("pending", g.pending),
        td("oldest", g.pending > 0 ? duration(g.oldest_pending_ms) : "-"),
        td("rate", rate === null ? "-" : `${rate.toFixed(1)}/s`),
        el("td", { class: "chart" }, sparkline(samples)));
    });
    const consumers = s.groups.flatMap((g) => g.consumers.map((c) =>
      el("tr", { "data-consumer": c.name },
        td("group", g.name), td("consumer", c.name), td("pending", c.pending), td("idle", duration(c.idle_ms)))));
    return el("section", { class: "stream", "data-stream": s.stream }, title, facts,
      s.groups.length
        ? table(["group", "consumers", "lag", "pending", "oldest pending", "processed", "last minutes"], rows, { class: "groups" })
        : el("p", { class: "muted" }, "no consumer groups"),
      consumers.length
        ? el("details", {}, el("summary", {}, `${consumers.length} consumer(s)`),
            table(["group", "consumer", "pending", "idle"], consumers))
        : null);
  });
  view.replaceChildren(cards, reasons || "", ...(streams.length ? streams : [el("p", { class: "muted" }, "no streams found")]));
}

function eventCells(e) {
  if (!e) return [td("type", "(entry deleted)"), td("session", null)];
  if (e.decode_error) return [td("type", `(does not decode: ${e.decode_error})`), td("session", null)];
  return [td("type", e.event_type), td("session", e.session_id)];
}

async function renderGroup(view, params) {
  const stream = params.get("stream"), group = params.get("group");
  const g = await getJson(`${BASE}api/group?${new URLSearchParams({ stream, group })}`);
  const pending = g.pending.map((p) => el("tr", { "data-id": p.id },
    td("id", p.id), td("consumer", p.consumer), td("idle", duration(p.idle_ms)),
    td("deliveries", p.deliveries), ...eventCells(p.event)));
  const recent = g.recent.map((r) => el("tr", { "data-id": r.id },
    td("id", r.id), ...eventCells(r.event), td("task", r.event.task_id),
    td("key", r.event.idempotency_key)));
  view.replaceChildren(
    el("p", {}, link("/", {}, "← overview")),
    el("h2", {}, `${group}`, el("span", { class: "tag" }, stream)),
    el("p", { class: "muted", id: "group-facts" },
      `lag ${g.group.lag ?? "-"} · pending ${g.group.pending} · last delivered ${g.group.last_delivered_id}`),
    el("h3", {}, `Pending entries (${g.pending.length})`),
    pending.length ? table(["id", "consumer", "idle", "deliveries", "type", "session"], pending, { id: "pending" })
      : el("p", { class: "muted" }, "nothing pending"),
    el("h3", {}, "Latest entries"),
    recent.length ? table(["id", "type", "session", "task", "idempotency key"], recent, { id: "recent" })
      : el("p", { class: "muted" }, "the stream is empty"));
}

async function renderDead(view) {
  const [o, d] = await Promise.all([
    getJson(withTenant(BASE + "api/overview")),
    getJson(withTenant(BASE + "api/dead-letters")),
  ]);
  header(o);
  const groupSel = document.getElementById("dead-group");
  const only = groupSel ? groupSel.value : "";
  const key = JSON.stringify([d, only, tenant(), o.writable]);
  if (key === state.lastKey) {
    for (const c of view.querySelectorAll("[data-age-of]")) c.textContent = duration(ageOfId(c.dataset.ageOf));
    return;
  }
  state.lastKey = key;
  const letters = d.dead_letters.filter((l) => !only || l.group === only);
  const groups = [...new Set(d.dead_letters.map((l) => l.group))].sort();
  const rows = letters.map((l) => el("tr", { "data-dead-id": l.id, "data-stream": l.stream },
    el("td", { "data-k": "id" }, link("/dead/one", { stream: l.stream, id: l.id }, l.id)),
    td("stream", l.stream), td("group", l.group),
    el("td", { "data-k": "reason" }, l.reason,
      l.error ? el("div", { class: "muted", "data-k": "error" }, l.error) : null),
    td("attempts", l.attempts), el("td", { "data-k": "age", "data-age-of": l.id }, duration(ageOfId(l.id))),
    el("td", { class: "actions" }, el("div", { class: "buttons" },
      el("button", { type: "button", class: "replay", on: { click: () => replayOne(l.stream, l.id) } }, "Replay"),
      l.group ? el("button", { type: "button", class: "replay-group", title: `replay for group ${l.group} only`,
        on: { click: () => replayOne(l.stream, l.id, l.group) } }, `Replay to ${l.group}`) : null,
      el("button", { type: "button", class: "purge danger", on: { click: () => purgeOne(l.stream, l.id) } }, "Purge")))));
  const scope = only ? `of group ${only}` : "";
  const bar = el("div", { class: "toolbar" },
    el("label", {}, "Group ",
      el("select", { id: "dead-group", on: { change: () => { state.lastKey = null; refresh(); } } },
        el("option", { value: "" }, "all"),
        groups.map((g) => el("option", { value: g, selected: g === only }, g)))),
    el("button", { type: "button", id: "replay-all", disabled: !letters.length, on: { click: () =>
      confirmThen(`Replay all ${letters.length} dead letter(s) ${scope}${only ? ` to group ${only} only` : ""}? ` +
        "Those that cannot succeed (malformed, of another tenant, cut to the payload cap) are skipped.", () =>
        mutate("dead-letters/replay",
          { all: true, tenant: tenant() || undefined, group: only || undefined, to_group: only || undefined },
          (a) => `Replayed ${a.count} dead letter(s)` +
            (a.skipped.length ? `; skipped ${a.skipped.length} that cannot succeed: ` +
              a.skipped.map((k) => `${k.dead_letter_id} (${k.reason})`).join(", ") : ""))) } }, "Replay all"),
    el("button", { type: "button", id: "purge-all", class: "danger", disabled: !d.total || !!only, on: { click: () =>
      confirmThen(`Delete all ${d.total} dead letter(s) for good?`, () =>
        mutate("dead-letters/purge", { all: true, tenant: tenant() || undefined },
          (a) => `Purged ${a.purged.reduce((n, p) => n + p.purged, 0)} dead letter(s)`)) } }, "Purge all"),
    o.writable ? null : el("span", { class: "muted", id: "read-only-note" },
      "read-only: replay and purge are refused (start with --write and a token)"));
  view.replaceChildren(
    el("h2", {}, "Dead letters ", el("span", { id: "dead-total", class: "count" }, d.total)),
    bar,
    rows.length ? table(["id", "stream", "group", "reason", "attempts", "age", ""], rows, { id: "dead-letters" })
      : el("p", { class: "muted", id: "no-dead" }, "no dead letters"));
}

async function renderDeadOne(view, params) {
  const stream = params.get("stream"), id = params.get("id");
  const l = await getJson(`${BASE}api/dead-letter?${new URLSearchParams({ stream, id })}`);
  const key = JSON.stringify(l.id);
  if (key === state.lastKey) return;
  state.lastKey = key;
  const facts = [["dead letter", l.id], ["stream", l.stream], ["tenant", l.tenant], ["source stream", l.source_stream],
    ["source id", l.source_id], ["group", l.group], ["consumer", l.consumer], ["handler", l.handler],
    ["attempts", l.attempts], ["dead at", l.dead_at], ["reason", l.reason], ["error", l.error]];
  view.replaceChildren(
    el("p", {}, link("/dead", {}, "← dead letters")),
    el("h2", {}, `Dead letter ${l.id}`),
    el("dl", { class: "facts" }, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-k": k }, v || "-")])),
    el("div", { class: "toolbar" },
      el("button", { type: "button", class: "replay", on: { click: () => replayOne(l.stream, l.id) } }, "Replay"),
      l.group ? el("button", { type: "button", class: "replay-group",
        on: { click: () => replayOne(l.stream, l.id, l.group) } }, `Replay to ${l.group}`) : null,
      el("button", { type: "button", class: "purge danger", on: { click: () => purgeOne(l.stream, l.id) } }, "Purge")),
    el("h3", {}, "Event"),
    l.event ? el("pre", {}, JSON.stringify(l.event, null, 2)) : el("p", { class: "error" }, `does not decode: ${l.decode_error}`),
    el("h3", {}, "Original fields"),
    table(["field", "value"], l.fields.map(([k, v]) => el("tr", {}, td("field", k), td("value", v)))));
}

function header(o) {
  const server = document.getElementById("server");
  server.textContent = `${o.url} · ${o.server || "server unreachable"} · ${o.stream_base}`;
  server.title = server.textContent;
  const badge = document.getElementById("health-status");
  badge.textContent = o.health;
  badge.className = `badge ${o.health}`;
  badge.title = o.reasons.join("\n");
  document.getElementById("nav-dead-count").textContent = o.totals.dead_letters || "";
  document.getElementById("token-box").hidden = !o.writable;
  document.getElementById("mode").textContent = o.writable ? "writable" : "read-only";
  const sel = document.getElementById("tenant");
  const want = ["", ...o.tenants];
  const have = [...sel.options].map((x) => x.value);
  if (JSON.stringify(want) !== JSON.stringify(have)) {
    const current = sel.value;
    sel.replaceChildren(...want.map((t) => el("option", { value: t, selected: t === current }, t || "all")));
  }
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  const view = document.getElementById("view");
  const { path, params } = route();
  document.getElementById("nav-overview").className = path === "/" ? "active" : "";
  document.getElementById("nav-dead").className = path.startsWith("/dead") ? "active" : "";
  try {
    if (path === "/group") await renderGroup(view, params);
    else if (path === "/dead") await renderDead(view);
    else if (path === "/dead/one") await renderDeadOne(view, params);
    else await renderOverview(view);
    if (!path.startsWith("/dead")) state.lastKey = null;
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    document.body.dataset.loaded = "1";
  } catch (e) {
    view.replaceChildren(el("p", { class: "error", id: "load-error" }, `Cannot load: ${e.message}`));
    state.lastKey = null;
  } finally {
    state.busy = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const token = document.getElementById("token");
  token.value = sessionStorage.getItem("asdlc-token") || "";
  token.addEventListener("input", () => sessionStorage.setItem("asdlc-token", token.value));
  document.getElementById("tenant").addEventListener("change", () => { state.overview = null; state.lastKey = null; refresh(); });
  window.addEventListener("hashchange", () => {
    state.lastKey = null;
    document.getElementById("message").hidden = true;
    refresh();
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
});
