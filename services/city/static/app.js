// IOC operations console: plain JS, no build step. Data from the city API, live through Server-Sent Events.
"use strict";

const I18N = {
  vi: {
    title: "Trung tâm điều hành thông minh Hà Nội", apiKey: "Khóa API", save: "Lưu", headline: "Chỉ số chính toàn thành phố",
    districts: "Quận, huyện", kpis: "Chỉ số", assetsInAlarm: "Thiết bị đang cảnh báo", incidents: "Sự cố",
    alarms: "Cảnh báo", history: "Lịch sử", show: "Xem", tail: "Dòng sự kiện trực tiếp", filter: "Lọc",
    start: "Bắt đầu", stop: "Dừng", live: "Trực tuyến", offline: "Mất kết nối", reconnecting: "Đang kết nối lại",
    target: "Mục tiêu", ack: "Xác nhận", clear: "Xóa", severity: "Mức", domain: "Lĩnh vực", type: "Loại",
    source: "Nguồn", district: "Quận/huyện", state: "Trạng thái", message: "Nội dung", since: "Từ lúc",
    none: "Không có", needKey: "Nhập khóa API để xem dữ liệu.", city: "Toàn thành phố", value: "Giá trị",
    status: "Tình trạng", active: "đang hoạt động", acknowledged: "đã xác nhận", cleared: "đã xóa",
    ok: "bình thường", warning: "cảnh báo", critical: "nghiêm trọng", unknown: "chưa rõ", alarmsCount: "cảnh báo",
    ackAll: "Xác nhận tất cả", clearAll: "Xóa tất cả", noData: "Chưa có dữ liệu", incident: "Sự cố",
    critical_sev: "nghiêm trọng", major: "lớn", minor: "nhỏ", warning_sev: "cảnh báo",
  },
  en: {
    title: "Hanoi Intelligent Operations Center", apiKey: "API key", save: "Save", headline: "City-wide headline KPIs",
    districts: "Districts", kpis: "KPIs", assetsInAlarm: "Assets in alarm", incidents: "Incidents",
    alarms: "Alarms", history: "History", show: "Show", tail: "Live event tail", filter: "Filter",
    start: "Start", stop: "Stop", live: "Live", offline: "Offline", reconnecting: "Reconnecting",
    target: "Target", ack: "Acknowledge", clear: "Clear", severity: "Severity", domain: "Domain", type: "Type",
    source: "Source", district: "District", state: "State", message: "Message", since: "Since",
    none: "None", needKey: "Enter an API key to see the data.", city: "Whole city", value: "Value",
    status: "Status", active: "active", acknowledged: "acknowledged", cleared: "cleared",
    ok: "ok", warning: "warning", critical: "critical", unknown: "unknown", alarmsCount: "alarms",
    ackAll: "Acknowledge all", clearAll: "Clear all", noData: "No data yet", incident: "Incident",
    critical_sev: "critical", major: "major", minor: "minor", warning_sev: "warning",
  },
};

const S = {
  lang: localStorage.getItem("ioc.lang") || "vi",
  key: localStorage.getItem("ioc.apiKey") || "",
  defs: {}, tiles: {}, districts: [], selected: null, lastEventId: null, source: null, tail: null, chart: null,
};

const $ = (id) => document.getElementById(id);
const t = (k) => (I18N[S.lang][k] ?? k);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = dv;
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function kpiName(id) {
  const d = S.defs[id];
  return d ? d.name[S.lang] : id;
}

function fmt(v, unit) {
  if (v === null || v === undefined) return "–";
  if (unit === "ratio") return (v * 100).toFixed(1) + "%";
  const a = Math.abs(v);
  return a >= 1000 ? v.toLocaleString(S.lang === "vi" ? "vi-VN" : "en-US", {maximumFractionDigits: 0})
    : a >= 10 ? v.toFixed(1) : v.toFixed(3).replace(/\.?0+$/, "");
}

function unitLabel(unit) { return unit === "ratio" ? "" : unit; }

function showMessage(text) {
  const m = $("message");
  m.textContent = text || "";
  m.hidden = !text;
}

async function api(path, options = {}) {
  const r = await fetch(path, {...options, headers: {...(options.headers || {}), Authorization: `Bearer ${S.key}`}});
  if (r.status === 401 || r.status === 403) {
    const body = await r.json().catch(() => ({}));
    showMessage((body.error && body.error.message) || t("needKey"));
    throw new Error(`HTTP ${r.status}`);
  }
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    showMessage((body.error && body.error.message) || `HTTP ${r.status}`);
    throw new Error(`HTTP ${r.status}`);
  }
  return r.json();
}

// Language ------------------------------------------------------------------------------------------------
function applyLanguage() {
  document.documentElement.lang = S.lang;
  document.querySelectorAll("[data-i18n]").forEach((e) => { e.textContent = t(e.dataset.i18n); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((e) => { e.placeholder = t(e.dataset.i18nPlaceholder); });
  $("lang").textContent = S.lang === "vi" ? "EN" : "VI";
  $("tail-toggle").textContent = S.tail ? t("stop") : t("start");
  setConn(S.connState || "off");
}

// Tiles ---------------------------------------------------------------------------------------------------
function primaryWindow(id) {
  const d = S.defs[id];
  return d ? d.windows[0] : null;
}

function sparkline(points) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 100 30");
  svg.setAttribute("preserveAspectRatio", "none");
  const vals = points.map((p) => p[1]).filter((v) => v !== null);
  if (vals.length >= 2) {
    const lo = Math.min(...vals), hi = Math.max(...vals), span = hi - lo || 1;
    const pl = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    const step = 100 / (points.length - 1);
    pl.setAttribute("points", points.filter((p) => p[1] !== null)
      .map((p, i) => `${(i * step).toFixed(1)},${(28 - ((p[1] - lo) / span) * 26).toFixed(1)}`).join(" "));
    svg.append(pl);
  }
  return svg;
}

function renderTile(id) {
  const tile = S.tiles[id];
  const d = S.defs[id];
  const unit = (tile.row && tile.row.unit) || (d && d.unit) || "";
  const status = tile.row ? tile.row.status : "unknown";
  const target = d && d.target !== null && d.target !== undefined ? `${t("target")}: ${fmt(d.target, unit)}` : "";
  const node = el("div", {class: `tile status-${status}`, data: {kpi: id, status}},
    el("div", {class: "name"}, kpiName(id)),
    el("div", {}, el("span", {class: "value"}, tile.row ? fmt(tile.row.value, unit) : "–"),
      el("span", {class: "unit"}, unitLabel(unit))),
    el("div", {class: "target"}, target || "\u00a0"),
    sparkline(tile.trend.slice(-24)));
  node.addEventListener("click", () => { $("history-kpi").value = id; $("history-scope").value = "HN"; loadHistory(); });
  const old = document.querySelector(`.tile[data-kpi="${CSS.escape(id)}"]`);
  if (old) old.replaceWith(node); else $("tiles").append(node);
}

async function loadTiles() {
  const [defs, cur] = await Promise.all([api("/v1/kpis/definitions"), api("/v1/kpis?scope_level=city&trend=24")]);
  S.defs = Object.fromEntries(defs.items.map((d) => [d.id, d]));
  const headline = defs.items.filter((d) => d.headline).map((d) => d.id);
  const ids = headline.length ? headline : defs.items.map((d) => d.id);
  for (const r of cur.items) if (!ids.includes(r.kpi) && !S.defs[r.kpi]) ids.push(r.kpi);
  S.tiles = {};
  $("tiles").replaceChildren();
  for (const id of ids) {
    const pw = primaryWindow(id);
    const row = cur.items.find((r) => r.kpi === id && r.scope_code === "HN" && (pw === null || r.window_seconds === pw));
    S.tiles[id] = {row: row || null, trend: row ? row.trend : []};
    renderTile(id);
  }
  fillHistorySelectors();
}

function onKpi(u) {
  if (u.scope_level === "city" && S.tiles[u.kpi] !== undefined) {
    const pw = primaryWindow(u.kpi);
    if (pw !== null && u.window_seconds !== pw) return;
    const tile = S.tiles[u.kpi];
    const prev = tile.row;
    if (prev && prev.window_start > u.window_start) return;
    tile.row = {...(prev || {}), ...u};
    const i = tile.trend.findIndex((p) => p[0] === u.window_start);
    if (i >= 0) tile.trend[i] = [u.window_start, u.value]; else tile.trend.push([u.window_start, u.value]);
    tile.trend.sort((a, b) => (a[0] < b[0] ? -1 : 1));
    renderTile(u.kpi);
  } else if (u.scope_level === "district") {
    scheduleRefresh("districts");
  }
}

// Districts -----------------------------------------------------------------------------------------------
async function loadDistricts() {
  const body = await api("/v1/districts");
  S.districts = body.items;
  $("districts").replaceChildren(...body.items.map((d) => el("div", {
    class: `district status-${d.status}${S.selected === d.code ? " selected" : ""}`,
    data: {code: d.code, status: d.status}, title: `${d.name}: ${t(d.status)}`,
    on: {click: () => openDistrict(d.code)},
  }, el("div", {}, d.name), d.open_alarms ? el("div", {class: "count"}, `⚠ ${d.open_alarms}`) : null)));
  if (S.selected) openDistrict(S.selected, false);
}

async function openDistrict(code, scroll = true) {
  S.selected = code;
  document.querySelectorAll(".district").forEach((e) => e.classList.toggle("selected", e.dataset.code === code));
  const d = await api(`/v1/districts/${encodeURIComponent(code)}`);
  $("district-name").textContent = `${d.name} (${d.code}) · ${t(d.status)}`;
  $("district-kpis").replaceChildren(
    el("tr", {}, el("th", {}, t("kpis")), el("th", {}, t("value")), el("th", {}, t("status"))),
    ...(d.kpis.length ? d.kpis.map((k) => el("tr", {data: {kpi: k.kpi}},
      el("td", {}, kpiName(k.kpi)), el("td", {}, `${fmt(k.value, k.unit)} ${unitLabel(k.unit)}`),
      el("td", {}, el("span", {class: `tile status-${k.status}`, style: "padding:0 6px"}, t(k.status)))))
      : [el("tr", {}, el("td", {class: "empty", colspan: "3"}, t("noData")))]));
  $("district-alarms").replaceChildren(
    el("tr", {}, el("th", {}, t("severity")), el("th", {}, t("source")), el("th", {}, t("type")), el("th", {}, t("state"))),
    ...(d.alarms.length ? d.alarms.map((a) => el("tr", {data: {alarm: a.alarm_id}},
      el("td", {}, sevBadge(a.severity)), el("td", {}, `${a.domain} · ${a.source_id}`), el("td", {}, a.alarm_type),
      el("td", {}, t(a.state))))
      : [el("tr", {}, el("td", {class: "empty", colspan: "4"}, t("none")))]));
  $("district-detail").hidden = false;
  if (scroll) $("district-detail").scrollIntoView({block: "nearest"});
}

// Alarms and incidents ------------------------------------------------------------------------------------
function sevBadge(sev) {
  return el("span", {class: `sev sev-${sev}`}, t(sev === "critical" || sev === "warning" ? `${sev}_sev` : sev));
}

async function operate(path) {
  try {
    await api(path, {method: "POST"});
    showMessage("");
  } catch (e) { /* message shown */ }
  scheduleRefresh("alarms");
}

async function loadAlarms() {
  const [alarms, incidents] = await Promise.all([api("/v1/alarms?state=open"), api("/v1/incidents?state=open")]);
  const head = el("tr", {}, ...["severity", "domain", "source", "district", "message", "state", "since", ""]
    .map((k) => el("th", {}, k ? t(k) : "")));
  $("alarms").replaceChildren(head, ...(alarms.items.length ? alarms.items.map((a) => el("tr", {
    class: `state-${a.state}`, data: {alarm: a.alarm_id, state: a.state}},
  el("td", {}, sevBadge(a.severity)), el("td", {}, a.domain), el("td", {}, `${a.alarm_type} · ${a.source_id}`),
  el("td", {}, a.district || "–"), el("td", {}, a.message), el("td", {class: "state"}, t(a.state)),
  el("td", {}, new Date(a.raised_at).toLocaleString(S.lang === "vi" ? "vi-VN" : "en-GB")),
  el("td", {},
    a.state === "active" ? el("button", {class: "ack", type: "button",
      on: {click: () => operate(`/v1/alarms/${encodeURIComponent(a.alarm_id)}/acknowledge`)}}, t("ack")) : null,
    el("button", {class: "clear", type: "button",
      on: {click: () => operate(`/v1/alarms/${encodeURIComponent(a.alarm_id)}/clear`)}}, t("clear")))))
    : [el("tr", {}, el("td", {class: "empty", colspan: "8"}, t("none")))]));
  $("incidents").replaceChildren(...(incidents.items.length ? incidents.items.map((i) => el("tr", {
    data: {incident: i.incident_id}},
  el("td", {}, i.severity ? sevBadge(i.severity) : ""), el("td", {}, i.district),
  el("td", {}, i.domains.join(" + ")), el("td", {}, `${i.open_alarms} ${t("alarmsCount")}`),
  el("td", {},
    el("button", {type: "button", on: {click: () => operate(`/v1/incidents/${encodeURIComponent(i.incident_id)}/acknowledge`)}}, t("ackAll")),
    el("button", {type: "button", on: {click: () => operate(`/v1/incidents/${encodeURIComponent(i.incident_id)}/clear`)}}, t("clearAll")))))
    : [el("tr", {}, el("td", {class: "empty"}, t("none")))]));
}

// Refresh scheduling: many events in a burst cause one reload.
const timers = {};
function scheduleRefresh(what) {
  if (timers[what]) return;
  timers[what] = setTimeout(async () => {
    timers[what] = null;
    try {
      if (what === "alarms") { await loadAlarms(); await loadDistricts(); }
      if (what === "districts") await loadDistricts();
      if (what === "all") await loadAll();
    } catch (e) { /* shown */ }
  }, 300);
}

// Live stream (SSE, resumable) ----------------------------------------------------------------------------
function setConn(state) {
  S.connState = state;
  const c = $("conn");
  c.className = `conn conn-${state}`;
  c.textContent = t({on: "live", off: "offline", wait: "reconnecting"}[state]);
}

async function streamTicket() {
  // A single-use ticket stands for the key on one EventSource request: a key never travels in a URL.
  return (await api("/v1/stream-tickets", {method: "POST"}).catch(() => ({}))).ticket;
}

async function connect() {
  if (S.source) S.source.close();
  if (!S.key) return;
  const ticket = await streamTicket();
  if (!ticket) { setConn("off"); setTimeout(connect, 2000); return; }
  if (S.source) S.source.close();
  const params = new URLSearchParams({ticket});
  if (S.lastEventId) params.set("last_event_id", S.lastEventId);
  const es = new EventSource(`/v1/stream?${params}`);
  S.source = es;
  const track = (e) => { if (e.lastEventId) S.lastEventId = e.lastEventId; };
  es.addEventListener("hello", () => { setConn("on"); scheduleRefresh("alarms"); });
  es.addEventListener("kpi", (e) => { track(e); onKpi(JSON.parse(e.data)); });
  es.addEventListener("alarm", (e) => { track(e); scheduleRefresh("alarms"); });
  es.addEventListener("incident", (e) => { track(e); scheduleRefresh("alarms"); });
  es.addEventListener("reset", () => { S.lastEventId = null; scheduleRefresh("all"); });
  es.onerror = () => {
    // The browser retries by itself (sending Last-Event-ID) unless the server answered with an error.
    setConn(es.readyState === EventSource.CLOSED ? "off" : "wait");
    if (es.readyState === EventSource.CLOSED) setTimeout(() => { if (S.source === es) connect(); }, 2000);
  };
}

// History -------------------------------------------------------------------------------------------------
function fillHistorySelectors() {
  const kpiSel = $("history-kpi");
  const current = kpiSel.value;
  kpiSel.replaceChildren(...Object.keys({...S.defs, ...S.tiles}).sort().map((id) => el("option", {value: id}, kpiName(id))));
  if (current) kpiSel.value = current;
  const scopeSel = $("history-scope");
  const scope = scopeSel.value;
  scopeSel.replaceChildren(el("option", {value: "HN"}, t("city")),
    ...S.districts.map((d) => el("option", {value: d.code}, d.name)));
  if (scope) scopeSel.value = scope;
}

async function loadHistory() {
  const kpi = $("history-kpi").value;
  if (!kpi) return;
  const scope = $("history-scope").value || "HN";
  const hours = Number($("history-range").value);
  const to = new Date();
  const from = new Date(to.getTime() - hours * 3600e3);
  const params = new URLSearchParams({scope_level: scope === "HN" ? "city" : "district", scope_code: scope,
    from: from.toISOString(), to: to.toISOString()});
  let body;
  try { body = await api(`/v1/kpis/${encodeURIComponent(kpi)}/history?${params}`); } catch (e) { return; }
  const xs = body.points.map((p) => new Date(p.t).getTime() / 1000);
  const data = [xs, body.points.map((p) => p.value), body.points.map((p) => p.min), body.points.map((p) => p.max)];
  const chartEl = $("chart");
  chartEl.replaceChildren();
  chartEl.dataset.points = String(body.points.length);
  const opts = {
    width: Math.max(300, chartEl.clientWidth || 600), height: 260,
    title: `${kpiName(kpi)} · ${scope} · ${body.step}`,
    series: [{}, {label: t("value"), stroke: "#2563eb", width: 2},
      {label: "min", stroke: "#94a3b8", dash: [4, 4]}, {label: "max", stroke: "#94a3b8", dash: [4, 4]}],
  };
  S.chart = new uPlot(opts, data, chartEl);
}

// Live tail -----------------------------------------------------------------------------------------------
async function loadTopics() {
  const body = await api("/v1/topics");
  const sel = $("tail-topic");
  const cur = sel.value;
  sel.replaceChildren(...body.items.map((tp) => el("option", {value: tp.name}, tp.name)));
  sel.value = cur || "ioc.city.alarms";
}

async function toggleTail() {
  if (S.tail) {
    S.tail.close();
    S.tail = null;
    $("tail-toggle").textContent = t("start");
    return;
  }
  const params = new URLSearchParams({ticket: await streamTicket(), topic: $("tail-topic").value});
  if ($("tail-filter").value) params.set("filter", $("tail-filter").value);
  const es = new EventSource(`/v1/tail?${params}`);
  S.tail = es;
  $("tail-toggle").textContent = t("stop");
  const out = $("tail");
  es.addEventListener("record", (e) => {
    const r = JSON.parse(e.data);
    const line = `${new Date(r.timestamp).toLocaleTimeString()} ${r.topic}[${r.partition}]@${r.offset} ${r.type || r.error} ${r.key || ""} ${JSON.stringify(r.data || {})}\n`;
    out.append(line);
    while (out.childNodes.length > 300) out.removeChild(out.firstChild);
    out.scrollTop = out.scrollHeight;
  });
}

// Start ---------------------------------------------------------------------------------------------------
async function loadAll() {
  if (!S.key) { showMessage(t("needKey")); return; }
  showMessage("");
  await loadTiles();
  await Promise.all([loadDistricts(), loadAlarms(), loadTopics()]);
  fillHistorySelectors();
}

function init() {
  $("api-key").value = S.key;
  applyLanguage();
  $("lang").addEventListener("click", () => {
    S.lang = S.lang === "vi" ? "en" : "vi";
    localStorage.setItem("ioc.lang", S.lang);
    applyLanguage();
    loadAll().catch(() => {});
  });
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    S.key = $("api-key").value.trim();
    localStorage.setItem("ioc.apiKey", S.key);
    S.lastEventId = null;
    loadAll().then(connect).catch(() => {});
  });
  $("close-detail").addEventListener("click", () => {
    $("district-detail").hidden = true;
    S.selected = null;
    document.querySelectorAll(".district").forEach((e) => e.classList.remove("selected"));
  });
  $("history-load").addEventListener("click", loadHistory);
  $("tail-toggle").addEventListener("click", toggleTail);
  loadAll().then(connect).catch(() => {});
}

document.addEventListener("DOMContentLoaded", init);
