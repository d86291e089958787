// IOC operations console: plain JS, no build step. Data from the city API, live through Server-Sent Events.
// Every visible word comes from I18N (Vietnamese and English), numbers and dates from the browser's Intl in the
// chosen language, Hanoi time. Tiles show the last COMPLETE window; the running one is a labelled second line.
"use strict";

const I18N = {
  vi: {
    title: "Trung tâm điều hành thông minh Hà Nội", apiKey: "Khóa API", save: "Lưu", headline: "Chỉ số chính toàn thành phố",
    districts: "Quận, huyện", kpis: "Chỉ số", assetsInAlarm: "Thiết bị đang cảnh báo", incidents: "Sự cố",
    alarms: "Cảnh báo", history: "Lịch sử", show: "Xem", tail: "Dòng sự kiện trực tiếp", filter: "Lọc",
    start: "Bắt đầu", stop: "Dừng", live: "Trực tuyến", offline: "Mất kết nối", reconnecting: "Đang kết nối lại",
    quiet: "Không có dữ liệu mới", target: "Mục tiêu", ack: "Xác nhận", clear: "Xóa", severity: "Mức",
    domain: "Lĩnh vực", type: "Loại", source: "Nguồn", district: "Quận/huyện", state: "Trạng thái",
    message: "Nội dung", since: "Từ lúc", none: "Không có", needKey: "Đăng nhập để xem dữ liệu.",
    city: "Toàn thành phố", value: "Giá trị", status: "Tình trạng", active: "chưa xác nhận",
    acknowledged: "đã xác nhận", cleared: "đã xóa", ok: "bình thường", warning: "cảnh báo", critical: "nghiêm trọng",
    unknown: "chưa rõ", ackAll: "Xác nhận tất cả", clearAll: "Xóa tất cả", noData: "Chưa có dữ liệu",
    incident: "Sự cố", critical_sev: "nghiêm trọng", major: "cao", minor: "thấp", warning_sev: "cảnh báo",
    window: "Cửa sổ", completeWindow: "Cửa sổ đã đủ", runningWindow: "Đang tính", staleSince: "Dữ liệu cũ từ",
    shelve: "Tạm ẩn 1 giờ", unshelve: "Hiện lại", shelved: "Đang tạm ẩn", showShelved: "Xem cảnh báo tạm ẩn",
    hideShelved: "Ẩn cảnh báo tạm ẩn", alarmRate: "Tần suất cảnh báo", per10: "/10 phút", budget: "ngưỡng",
    chattering: "lặp liên tục", showingOf: "Hiển thị {n} trên {total}", openedAt: "Mở lúc",
    minValue: "Thấp nhất", maxValue: "Cao nhất", h6: "6 giờ", h24: "24 giờ", d7: "7 ngày", d30: "30 ngày",
    d365: "365 ngày", step_raw: "từng cửa sổ", step_minute: "theo phút", step_hour: "theo giờ", step_day: "theo ngày",
    powerOutage: "Sự cố mất điện", multiDomain: "Sự cố nhiều lĩnh vực", noSignalFrom: "Mất tín hiệu dữ liệu",
    backWithin: "trở lại bình thường", close: "Đóng", langButton: "EN", langTitle: "Chuyển sang tiếng Anh",
    wholeCity: "toàn thành phố", time: "Thời gian", noCompleteWindow: "Chưa có cửa sổ nào đủ", nowWindow: "Hiện tại, cửa sổ",
    exportCsv: "Tải CSV", archive: "Trích xuất dữ liệu lưu trữ", topic: "Chủ đề", from: "Từ", to: "Đến",
    area: "Khu vực", entity: "Đối tượng", format: "Định dạng", download: "Tải về",
    archiveHint: "Giờ Hà Nội; khoảng [từ, đến). Cần quyền archive:read.", archiveDenied: "Tài khoản này không có quyền archive:read.",
    archiveDown: "Dịch vụ lưu trữ không trả lời.", rows: "dòng",
  },
  en: {
    title: "Hanoi Intelligent Operations Center", apiKey: "API key", save: "Save", headline: "City-wide headline KPIs",
    districts: "Districts", kpis: "KPIs", assetsInAlarm: "Assets in alarm", incidents: "Incidents",
    alarms: "Alarms", history: "History", show: "Show", tail: "Live event tail", filter: "Filter",
    start: "Start", stop: "Stop", live: "Live", offline: "Offline", reconnecting: "Reconnecting",
    quiet: "No new data", target: "Target", ack: "Acknowledge", clear: "Clear", severity: "Severity",
    domain: "Domain", type: "Type", source: "Source", district: "District", state: "State",
    message: "Message", since: "Since", none: "None", needKey: "Sign in to see the data.",
    city: "Whole city", value: "Value", status: "Status", active: "unacknowledged",
    acknowledged: "acknowledged", cleared: "cleared", ok: "normal", warning: "warning", critical: "critical",
    unknown: "unknown", ackAll: "Acknowledge all", clearAll: "Clear all", noData: "No data yet",
    incident: "Incident", critical_sev: "critical", major: "major", minor: "minor", warning_sev: "warning",
    window: "Window", completeWindow: "Last complete window", runningWindow: "Running", staleSince: "Stale since",
    shelve: "Shelve 1 h", unshelve: "Unshelve", shelved: "Shelved", showShelved: "Show shelved alarms",
    hideShelved: "Hide shelved alarms", alarmRate: "Alarm rate", per10: "/10 min", budget: "budget",
    chattering: "chattering", showingOf: "Showing {n} of {total}", openedAt: "Opened",
    minValue: "Lowest", maxValue: "Highest", h6: "6 hours", h24: "24 hours", d7: "7 days", d30: "30 days",
    d365: "365 days", step_raw: "each window", step_minute: "per minute", step_hour: "per hour", step_day: "per day",
    powerOutage: "Power outage", multiDomain: "Multi-domain incident", noSignalFrom: "No data from",
    backWithin: "back to normal", close: "Close", langButton: "VI", langTitle: "Switch to Vietnamese",
    wholeCity: "whole city", time: "Time", noCompleteWindow: "No complete window yet", nowWindow: "Now, window",
    exportCsv: "Export CSV", archive: "Archive extract", topic: "Topic", from: "From", to: "To",
    area: "Area", entity: "Entity", format: "Format", download: "Download",
    archiveHint: "Hanoi time; range [from, to). Needs archive:read.", archiveDenied: "This account lacks archive:read.",
    archiveDown: "The archive service did not answer.", rows: "rows",
  },
};

const DOMAINS = {
  vi: {meter: "Điện", traffic: "Giao thông", kiosk: "Ki-ốt dịch vụ công", dossier: "Hồ sơ hành chính",
    city: "Thành phố", citytest: "Thử nghiệm"},
  en: {meter: "Electricity", traffic: "Traffic", kiosk: "Public-service kiosks", dossier: "Administrative dossiers",
    city: "City", citytest: "Test"},
};

const ALARM_TYPES = {
  vi: {kpi_breach: "Chỉ số vượt ngưỡng", no_signal: "Mất tín hiệu dữ liệu", feeder_outage: "Mất điện xuất tuyến",
    tamper: "Can thiệp công tơ", kiosk_offline: "Ki-ốt mất kết nối", device_offline: "Thiết bị ngoại vi mất kết nối",
    hardware_error: "Lỗi phần cứng", paper_out: "Máy in hết giấy", paper_jam: "Kẹt giấy",
    fraud_attempt: "Nghi gian lận thẻ", controller_flash: "Đèn tín hiệu nhấp nháy vàng",
    power_failure: "Đèn tín hiệu mất điện", comm_loss: "Mất liên lạc bộ điều khiển", detector_fault: "Lỗi đầu dò",
    stuck_detector: "Đầu dò bị kẹt", dossier_overdue: "Hồ sơ quá hạn", other: "Cảnh báo khác"},
  en: {kpi_breach: "KPI out of range", no_signal: "No data", feeder_outage: "Feeder outage",
    tamper: "Meter tampering", kiosk_offline: "Kiosk offline", device_offline: "Peripheral offline",
    hardware_error: "Hardware error", paper_out: "Printer out of paper", paper_jam: "Paper jam",
    fraud_attempt: "Card fraud attempt", controller_flash: "Signal in flash",
    power_failure: "Signal power failure", comm_loss: "Controller communication lost", detector_fault: "Detector fault",
    stuck_detector: "Stuck detector", dossier_overdue: "Dossier overdue", other: "Other alarm"},
};

// Units: Vietnamese has no plural; English takes Intl.PluralRules' one/other. "" = shown by the number itself.
const UNITS = {
  vi: {ratio: "", "%": "", kWh: "kWh", kW: "kW", MW: "MW", dossiers: "hồ sơ", points: "điểm", kiosks: "ki-ốt",
    sessions: "phiên", "sessions/h": "phiên/giờ", "faults/1000": "lỗi/1.000 phiên", s: "giây", score: "/5",
    count: "lần", meters: "công tơ", "int/cust": "lần mất điện/khách hàng", min: "phút", vehicles: "xe",
    intersections: "nút giao", signals: "cụm đèn", alarms: "cảnh báo", x: ""},
  en: {ratio: "", "%": "", kWh: "kWh", kW: "kW", MW: "MW", dossiers: ["dossier", "dossiers"],
    points: ["point", "points"], kiosks: ["kiosk", "kiosks"], sessions: ["session", "sessions"],
    "sessions/h": "sessions/h", "faults/1000": "faults per 1,000 sessions", s: "s", score: "/5",
    count: ["time", "times"], meters: ["meter", "meters"], "int/cust": "interruptions per customer", min: "min",
    vehicles: ["vehicle", "vehicles"], intersections: ["intersection", "intersections"],
    signals: ["signal", "signals"], alarms: ["alarm", "alarms"], x: ""},
};

const S = {
  lang: localStorage.getItem("ioc.lang") || "vi",
  defs: {}, tiles: {}, districts: [], selected: null, lastEventId: null, source: null, tail: null, chart: null,
  domainSeen: {}, lastKpiAt: 0, noSignal: new Set(), showShelved: false, rate: null,
  exports: {},  // the API's items behind each table and chart, exported as they came (not as formatted)
};
window.IOC_I18N = {I18N, DOMAINS, ALARM_TYPES, UNITS};  // for the console's translation tests

const $ = (id) => document.getElementById(id);
const t = (k) => (I18N[S.lang][k] ?? k);
const HANOI = "Asia/Ho_Chi_Minh";
// A stale tile: its domain sent nothing for this long, or its newest window is two windows behind the clock.
const STALE_AFTER_MS = 5 * 60e3;

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

// Formatting --------------------------------------------------------------------------------------------------
const locale = () => (S.lang === "vi" ? "vi-VN" : "en-GB");
const formats = {};
function nf(opts) {
  const k = `${S.lang}|${JSON.stringify(opts)}`;
  return formats[k] || (formats[k] = new Intl.NumberFormat(locale(), opts));
}
function df(opts) {
  const k = `${S.lang}|d|${JSON.stringify(opts)}`;
  return formats[k] || (formats[k] = new Intl.DateTimeFormat(locale(), {timeZone: HANOI, ...opts}));
}
const instant = (s) => (s ? Date.parse(s) : NaN);  // REST and SSE times compared as instants, never as text

function fmtNumber(v, unit) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (unit === "ratio") return nf({style: "percent", maximumFractionDigits: 1}).format(v);
  if (unit === "%") return nf({style: "percent", maximumFractionDigits: 1}).format(v / 100);
  const a = Math.abs(v);
  const digits = a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
  return nf({maximumFractionDigits: digits}).format(v);
}

function unitLabel(unit, v) {
  const u = UNITS[S.lang][unit];
  if (u === undefined) return unit || "";
  if (Array.isArray(u)) return new Intl.PluralRules(locale()).select(v ?? 0) === "one" ? u[0] : u[1];
  return u;
}

function fmt(v, unit) {
  const n = fmtNumber(v, unit);
  const u = unitLabel(unit, v);
  if (!u || n === "–") return n;
  return u.startsWith("/") ? n + u : `${n} ${u}`;
}

function windowName(seconds) {
  const vi = S.lang === "vi";
  if (seconds % 86400 === 0) {
    const d = seconds / 86400;
    return vi ? `${d} ngày` : d === 1 ? "1 day" : `${d} days`;
  }
  if (seconds % 3600 === 0) {
    const h = seconds / 3600;
    return vi ? `${h} giờ` : h === 1 ? "1 hour" : `${h} hours`;
  }
  return vi ? `${seconds / 60} phút` : `${seconds / 60} min`;
}

function fmtTime(ms) { return df({hour: "2-digit", minute: "2-digit"}).format(new Date(ms)); }
function fmtDateTime(ms) { return df({dateStyle: "short", timeStyle: "short"}).format(new Date(ms)); }
function fmtWindow(startIso, seconds) {
  const s = instant(startIso);
  if (seconds >= 86400) return df({dateStyle: "medium"}).format(new Date(s));
  return `${fmtTime(s)}–${fmtTime(s + seconds * 1000)}`;
}

function kpiName(id) {
  const d = S.defs[id];
  return d ? d.name[S.lang] : id;
}
function domainName(d) { return DOMAINS[S.lang][d] || d; }
function districtName(code) {
  if (!code || code === "HN") return t("city");
  const d = S.districts.find((x) => x.code === code);
  return d ? d.name : code;
}
function alarmTypeName(type) {
  const names = ALARM_TYPES[S.lang];
  return names[type] || (type.startsWith("tamper") ? names.tamper : names.other);
}

// What an alarm is about, in the chosen language, from its structured fields (messages are English text).
function alarmText(a) {
  if (a.alarm_type === "kpi_breach") {
    const [kpi, code] = a.source_id.split(":");
    return `${kpiName(kpi)} · ${districtName(code)}`;
  }
  if (a.alarm_type === "no_signal") {
    const [domain, code] = a.source_id.split(":");
    return `${t("noSignalFrom")} ${domainName(domain)} · ${districtName(code)}`;
  }
  return a.source_id;  // the asset's id (its type has a column of its own)
}

function incidentName(i) {
  const types = new Set((i.alarms || []).map((a) => (a.alarm_type.startsWith("tamper") ? "tamper" : a.alarm_type)));
  if (types.has("feeder_outage") || types.has("power_failure")) return t("powerOutage");
  if (types.size === 1 && types.has("kpi_breach")) {
    const kpis = [...new Set(i.alarms.map((a) => kpiName(a.source_id.split(":")[0])))];
    return `${alarmTypeName("kpi_breach")}: ${kpis.slice(0, 2).join(", ")}${kpis.length > 2 ? "…" : ""}`;
  }
  if (types.size === 1) return alarmTypeName([...types][0]);
  if (i.domains.length > 1) return `${t("multiDomain")}: ${i.domains.map(domainName).join(" + ")}`;
  return i.domains.map(domainName).join(" + ");
}

function showMessage(text) {
  const m = $("message");
  m.textContent = text || "";
  m.hidden = !text;
}

// Signed in by the session cookie (auth.js): a state-changing call carries the session's CSRF token.
async function api(path, options = {}) {
  const r = await fetch(path, {...options, headers: {...(options.headers || {}), ...IOC_AUTH.headers(options.method)}});
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    if (r.status === 401) IOC_AUTH.expired();
    showMessage(r.status === 401 ? t("needKey") : (body.error && body.error.message) || `HTTP ${r.status}`);
    throw new Error(`HTTP ${r.status}`);
  }
  return r.json();
}

// Language ------------------------------------------------------------------------------------------------
function applyLanguage() {
  document.documentElement.lang = S.lang;
  document.querySelectorAll("[data-i18n]").forEach((e) => { e.textContent = t(e.dataset.i18n); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((e) => { e.placeholder = t(e.dataset.i18nPlaceholder); });
  document.querySelectorAll("[data-i18n-title]").forEach((e) => { e.title = t(e.dataset.i18nTitle); });
  $("lang").textContent = t("langButton");
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
  const pts = points.filter((p) => p[1] !== null);
  if (pts.length >= 2) {
    const vals = pts.map((p) => p[1]);
    const lo = Math.min(...vals), hi = Math.max(...vals), span = hi - lo || 1;
    const pl = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    const step = 100 / (pts.length - 1);
    pl.setAttribute("points", pts.map((p, i) => `${(i * step).toFixed(1)},${(28 - ((p[1] - lo) / span) * 26).toFixed(1)}`).join(" "));
    svg.append(pl);
  }
  return svg;
}

function isStale(tile, id) {
  const now = Date.now();
  const d = S.defs[id];
  const domain = d ? d.domain : id.split(".")[0];
  if (S.noSignal.has(domain)) return true;
  const seen = S.domainSeen[domain];
  if (seen !== undefined && now - seen > STALE_AFTER_MS) return true;
  const newest = tile.running || tile.complete;
  if (!newest) return false;
  const w = (tile.windowSeconds || 900) * 1000;
  return instant(newest.window_start) + 2 * w < now && w < 86400e3;
}

function renderTile(id) {
  const tile = S.tiles[id];
  const d = S.defs[id];
  const unit = tile.unit || (d && d.unit) || "";
  // A level KPI (things in fault now) shows its running window first: "now" is what it means.
  const level = d && d.level;
  const shown = (level ? tile.running || tile.complete : tile.complete) || null;
  const second = level ? (tile.running ? tile.complete : null) : tile.running;
  const status = shown ? shown.status : "unknown";
  const stale = isStale(tile, id);
  const target = d && d.target !== null && d.target !== undefined ? `${t("target")}: ${fmt(d.target, unit)}` : "\u00a0";
  const ws = tile.windowSeconds || primaryWindow(id) || 900;
  const node = el("div", {class: `tile status-${status}${stale ? " stale" : ""}`, data: {kpi: id, status, stale: String(stale)}},
    el("div", {class: "name"}, kpiName(id)),
    el("div", {}, el("span", {class: "value"}, shown ? fmtNumber(shown.value, unit) : "–"),
      el("span", {class: "unit"}, shown ? unitLabel(unit, shown.value) : "")),
    el("div", {class: "window"}, shown
      ? `${t(shown === tile.running ? "nowWindow" : "completeWindow")} ${windowName(ws)} · ${fmtWindow(shown.window_start, ws)}`
      : t(tile.running ? "noCompleteWindow" : "noData")),
    el("div", {class: "running"}, second
      ? `${t(second === tile.running ? "runningWindow" : "completeWindow")} (${fmtWindow(second.window_start, ws)}): ${fmt(second.value, unit)}`
      : "\u00a0"),
    el("div", {class: "target"}, target),
    stale ? el("div", {class: "stale-badge"}, `${t("staleSince")} ${fmtTime(tile.updatedAt || Date.now())}`) : null,
    sparkline(tile.trend.slice(-24)));
  node.addEventListener("click", () => { $("history-kpi").value = id; $("history-scope").value = "HN"; loadHistory(); });
  const old = document.querySelector(`.tile[data-kpi="${CSS.escape(id)}"]`);
  if (old) old.replaceWith(node); else $("tiles").append(node);
}

function noteDomain(domain, updatedAt) {
  const at = instant(updatedAt);
  if (!Number.isNaN(at) && !(S.domainSeen[domain] >= at)) S.domainSeen[domain] = at;
}

async function loadTiles() {
  const [defs, cur] = await Promise.all([api("/v1/kpis/definitions"), api("/v1/kpis?scope_level=city&trend=24")]);
  S.defs = Object.fromEntries(defs.items.map((d) => [d.id, d]));
  const headline = defs.items.filter((d) => d.headline).map((d) => d.id);
  const ids = headline.length ? headline : defs.items.map((d) => d.id);
  S.tiles = {};
  $("tiles").replaceChildren();
  for (const r of cur.items) noteDomain(r.domain, r.updated_at);
  for (const id of ids) {
    const pw = primaryWindow(id);
    const row = cur.items.find((r) => r.kpi === id && r.scope_code === "HN" && (pw === null || r.window_seconds === pw));
    S.tiles[id] = {
      unit: row ? row.unit : null, windowSeconds: row ? row.window_seconds : pw, trend: row ? row.trend : [],
      complete: row ? row.complete : null, running: row && row.running ? row : null,
      updatedAt: row ? instant(row.updated_at) : null,
    };
    renderTile(id);
  }
  fillHistorySelectors();
}

function onKpi(u) {
  noteDomain(u.domain, u.updated_at);
  S.lastKpiAt = Date.now();
  if (u.scope_level === "city" && S.tiles[u.kpi] !== undefined) {
    const pw = primaryWindow(u.kpi);
    if (pw !== null && u.window_seconds !== pw) return;
    const tile = S.tiles[u.kpi];
    const start = instant(u.window_start);
    const ended = start + u.window_seconds * 1000 <= Date.now();
    const entry = {window_start: u.window_start, value: u.value, status: u.status};
    if (ended) {
      if (!tile.complete || instant(tile.complete.window_start) <= start) tile.complete = entry;
      if (tile.running && instant(tile.running.window_start) <= start) tile.running = null;
    } else if (!tile.running || instant(tile.running.window_start) <= start) {
      // a new running window: the one it follows is complete now
      if (tile.running && instant(tile.running.window_start) < start) tile.complete = tile.running;
      tile.running = entry;
    }
    tile.unit = u.unit || tile.unit;
    tile.windowSeconds = u.window_seconds;
    tile.updatedAt = instant(u.updated_at);
    const i = tile.trend.findIndex((p) => instant(p[0]) === start);
    if (i >= 0) tile.trend[i] = [u.window_start, u.value]; else tile.trend.push([u.window_start, u.value]);
    tile.trend.sort((a, b) => instant(a[0]) - instant(b[0]));
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
  }, el("div", {}, d.name), d.open_alarms ? el("div", {class: "count"}, `⚠ ${fmtNumber(d.open_alarms)}`) : null)));
  if (S.selected) openDistrict(S.selected, false);
  document.dispatchEvent(new CustomEvent("ioc:areas-changed"));  // map.js follows
}

async function openDistrict(code, scroll = true) {
  S.selected = code;
  document.querySelectorAll(".district").forEach((e) => e.classList.toggle("selected", e.dataset.code === code));
  const d = await api(`/v1/districts/${encodeURIComponent(code)}`);
  $("district-name").textContent = `${d.name} · ${t(d.status)}`;
  S.exports.district = {name: `district-${code}`, items: d.kpis};
  // One row per KPI: its primary window, the last complete value first (the running one beside it).
  const rows = d.kpis.filter((k) => k.window_seconds === (primaryWindow(k.kpi) ?? k.window_seconds));
  $("district-kpis").replaceChildren(
    el("tr", {}, el("th", {}, t("kpis")), el("th", {}, t("window")), el("th", {}, t("value")),
      el("th", {}, t("runningWindow")), el("th", {}, t("status"))),
    ...(rows.length ? rows.map((k) => {
      const c = k.complete;
      return el("tr", {data: {kpi: k.kpi}},
        el("td", {}, kpiName(k.kpi)), el("td", {}, windowName(k.window_seconds)),
        el("td", {}, c ? fmt(c.value, k.unit) : "–"), el("td", {}, k.running ? fmt(k.value, k.unit) : "–"),
        el("td", {}, el("span", {class: `tile status-${c ? c.status : "unknown"}`, style: "padding:0 6px"}, t(c ? c.status : "unknown"))));
    }) : [el("tr", {}, el("td", {class: "empty", colspan: "5"}, t("noData")))]));
  if (window.IOC_ASSETS) {  // assets (with links to their pages), not KPI breaches
    $("district-area-link").href = IOC_ASSETS.areaHref(code);
    await IOC_ASSETS.fillAssetsInAlarm($("district-alarms"), code);
  } else $("district-alarms").replaceChildren(
    el("tr", {}, el("th", {}, t("severity")), el("th", {}, t("type")), el("th", {}, t("source")), el("th", {}, t("state"))),
    ...(d.alarms.length ? d.alarms.map((a) => el("tr", {data: {alarm: a.alarm_id}, title: a.message},
      el("td", {}, sevBadge(a.severity)), el("td", {}, alarmTypeName(a.alarm_type)), el("td", {}, alarmText(a)),
      el("td", {}, t(a.state))))
      : [el("tr", {}, el("td", {class: "empty", colspan: "4"}, t("none")))]));
  $("district-detail").hidden = false;
  if (scroll) $("district-detail").scrollIntoView({block: "nearest"});
}

// Alarms and incidents ------------------------------------------------------------------------------------
function sevBadge(sev) {
  return el("span", {class: `sev sev-${sev}`}, t(sev === "critical" || sev === "warning" ? `${sev}_sev` : sev));
}

async function operate(path, body) {
  try {
    await api(path, body ? {method: "POST", body: JSON.stringify(body), headers: {"Content-Type": "application/json"}}
      : {method: "POST"});
    showMessage("");
  } catch (e) { /* message shown */ }
  scheduleRefresh("alarms");
}

const MAX_ALARM_ROWS = 50;

function alarmRow(a) {
  const id = encodeURIComponent(a.alarm_id);
  const shelved = a.shelved_until && instant(a.shelved_until) > Date.now();
  return el("tr", {class: `state-${a.state}`, data: {alarm: a.alarm_id, state: a.state}, title: a.message},
    el("td", {}, sevBadge(a.severity)), el("td", {}, domainName(a.domain)), el("td", {}, alarmTypeName(a.alarm_type)),
    el("td", {}, alarmText(a), a.chattering ? el("span", {class: "chatter"}, ` · ${t("chattering")}`) : null),
    el("td", {}, districtName(a.district)), el("td", {class: "state"}, shelved ? t("shelved") : t(a.state)),
    el("td", {}, fmtDateTime(instant(a.raised_at))),
    el("td", {class: "actions"},
      a.state === "active" ? el("button", {class: "ack", type: "button",
        on: {click: () => operate(`/v1/alarms/${id}/acknowledge`)}}, t("ack")) : null,
      shelved ? el("button", {class: "unshelve", type: "button", on: {click: () => operate(`/v1/alarms/${id}/unshelve`)}}, t("unshelve"))
        : el("button", {class: "shelve", type: "button",
          on: {click: () => operate(`/v1/alarms/${id}/shelve`, {minutes: 60, reason: "console"})}}, t("shelve")),
      el("button", {class: "clear", type: "button", on: {click: () => operate(`/v1/alarms/${id}/clear`)}}, t("clear"))));
}

async function loadAlarms() {
  const [alarms, incidents] = await Promise.all([
    api(`/v1/alarms?state=${S.showShelved ? "shelved" : "open"}&limit=500`), api("/v1/incidents?state=open&limit=50")]);
  const head = el("tr", {}, ...["severity", "domain", "type", "source", "district", "state", "since", ""]
    .map((k) => el("th", {}, k ? t(k) : "")));
  S.exports.alarms = {name: "alarms", items: alarms.items};
  S.exports.incidents = {name: "incidents", items: incidents.items};
  const rows = alarms.items.slice(0, MAX_ALARM_ROWS).map(alarmRow);
  $("alarms").replaceChildren(head, ...(rows.length ? rows : [el("tr", {}, el("td", {class: "empty", colspan: "8"}, t("none")))]));
  $("alarms-count").textContent = alarms.items.length > MAX_ALARM_ROWS
    ? t("showingOf").replace("{n}", fmtNumber(MAX_ALARM_ROWS)).replace("{total}", fmtNumber(alarms.items.length)) : "";
  $("toggle-shelved").textContent = S.showShelved ? t("hideShelved") : t("showShelved");
  S.noSignal = new Set(alarms.items.filter((a) => a.alarm_type === "no_signal" && a.source_id.endsWith(":HN"))
    .map((a) => a.source_id.split(":")[0]));
  $("incidents").replaceChildren(...(incidents.items.length ? incidents.items.map((i) => el("tr", {
    data: {incident: i.incident_id}},
  el("td", {}, i.severity ? sevBadge(i.severity) : ""), el("td", {class: "incident-name"}, incidentName(i)),
  el("td", {}, districtName(i.district)), el("td", {}, `${t("openedAt")} ${fmtDateTime(instant(i.opened_at))}`),
  el("td", {}, fmt(i.open_alarms, "alarms")),
  el("td", {class: "actions"},
    el("button", {type: "button", on: {click: () => operate(`/v1/incidents/${encodeURIComponent(i.incident_id)}/acknowledge`)}}, t("ackAll")),
    el("button", {type: "button", on: {click: () => operate(`/v1/incidents/${encodeURIComponent(i.incident_id)}/clear`)}}, t("clearAll")))))
    : [el("tr", {}, el("td", {class: "empty"}, t("none")))]));
}

async function loadRate() {
  try { S.rate = await api("/v1/alarms/stats?minutes=60"); } catch (e) { return; }
  const r = S.rate;
  const over = r.per_10_minutes > r.budget_per_10_minutes;
  const badge = $("alarm-rate");
  badge.className = `rate ${over ? "rate-over" : "rate-ok"}`;
  badge.textContent = `${t("alarmRate")}: ${fmtNumber(r.per_10_minutes)}${t("per10")} (${t("budget")} ${fmtNumber(r.budget_per_10_minutes)})`;
}

// Refresh scheduling: many events in a burst cause one reload.
const timers = {};
function scheduleRefresh(what) {
  if (timers[what]) return;
  timers[what] = setTimeout(async () => {
    timers[what] = null;
    try {
      if (what === "alarms") { await loadAlarms(); await loadDistricts(); await loadRate(); document.dispatchEvent(new Event("ioc:alarms")); }
      if (what === "districts") await loadDistricts();
      if (what === "all") await loadAll();
    } catch (e) { /* shown */ }
  }, 500);
}

// Live stream (SSE, resumable) ----------------------------------------------------------------------------
function setConn(state) {
  S.connState = state;
  const c = $("conn");
  // Connected but nothing new for a while is not "live": say so.
  const quiet = state === "on" && S.lastKpiAt && Date.now() - S.lastKpiAt > 2 * 60e3;
  c.className = `conn conn-${quiet ? "quiet" : state}`;
  c.textContent = quiet ? t("quiet") : t({on: "live", off: "offline", wait: "reconnecting"}[state]);
}

async function connect() {
  if (S.source) S.source.close();
  if (!IOC_AUTH.signedIn()) return;
  // Same origin: EventSource sends the session cookie, so no credential travels in the URL.
  const es = new EventSource(S.lastEventId ? `/v1/stream?last_event_id=${encodeURIComponent(S.lastEventId)}` : "/v1/stream");
  S.source = es;
  const track = (e) => { if (e.lastEventId) S.lastEventId = e.lastEventId; };
  // other views (assets.js) follow the same stream
  for (const k of ["kpi", "alarm", "incident"]) es.addEventListener(k, (e) => document.dispatchEvent(new CustomEvent(`ioc:${k}`, {detail: JSON.parse(e.data)})));
  es.addEventListener("hello", () => { if (!S.lastKpiAt) S.lastKpiAt = Date.now(); setConn("on"); scheduleRefresh("alarms"); });
  es.addEventListener("kpi", (e) => { track(e); onKpi(JSON.parse(e.data)); });
  es.addEventListener("alarm", (e) => { track(e); scheduleRefresh("alarms"); });
  es.addEventListener("incident", (e) => { track(e); scheduleRefresh("alarms"); });
  es.addEventListener("reset", () => { S.lastEventId = null; scheduleRefresh("all"); });
  es.onerror = () => {
    // The browser retries by itself (sending Last-Event-ID) unless the server answered with an error.
    setConn(es.readyState === EventSource.CLOSED ? "off" : "wait");
    // (an error answer may mean the session ended: ask before reconnecting)
    if (es.readyState === EventSource.CLOSED) setTimeout(() => { if (S.source === es) IOC_AUTH.recheck().then(connect); }, 2000);
  };
}

// History -------------------------------------------------------------------------------------------------
function fillHistorySelectors() {
  const kpiSel = $("history-kpi");
  const current = kpiSel.value;
  kpiSel.replaceChildren(...Object.keys(S.defs).sort((a, b) => kpiName(a).localeCompare(kpiName(b), locale()))
    .map((id) => el("option", {value: id}, kpiName(id))));
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
  const unit = body.unit || (S.defs[kpi] && S.defs[kpi].unit) || "";
  S.exports.history = {name: `history-${kpi}-${scope}`, items: body.points};
  const xs = body.points.map((p) => instant(p.t) / 1000);
  const data = [xs, body.points.map((p) => p.value), body.points.map((p) => p.min), body.points.map((p) => p.max)];
  const chartEl = $("chart");
  chartEl.replaceChildren();
  chartEl.dataset.points = String(body.points.length);
  const yfmt = (u, v) => (v === null || v === undefined ? "–" : fmt(v, unit));
  const opts = {
    width: Math.max(300, chartEl.clientWidth || 600), height: 260,
    title: `${kpiName(kpi)} · ${districtName(scope)} · ${t("window")} ${windowName(body.window_seconds)} · ${t(`step_${body.step}`)}`,
    // The whole range asked for, whatever points there are (one point must not stretch over years).
    scales: {x: {time: true, range: () => [from.getTime() / 1000, to.getTime() / 1000]}},
    axes: [
      {values: (u, vals) => vals.map((v) => (hours > 48 ? df({day: "2-digit", month: "2-digit"}) : df({hour: "2-digit", minute: "2-digit"})).format(new Date(v * 1000)))},
      {values: (u, vals) => vals.map((v) => fmtNumber(v, unit)), size: 70},
    ],
    series: [{label: t("time"), value: (u, v) => (v === null ? "–" : fmtDateTime(v * 1000))},
      {label: t("value"), stroke: "#2563eb", width: 2, value: yfmt},
      {label: t("minValue"), stroke: "#94a3b8", dash: [4, 4], value: yfmt},
      {label: t("maxValue"), stroke: "#94a3b8", dash: [4, 4], value: yfmt}],
  };
  S.chart = new uPlot(opts, data, chartEl);
}

// Exports ---------------------------------------------------------------------------------------------------
// A table or chart exports the API's own items (values as the API gave them, not the formatted text): nested
// objects become dotted columns, lists JSON. RFC 4180 quoting, CRLF, a UTF-8 byte-order mark (spreadsheets
// then read Vietnamese names right). Text starting with = + - @ or a tab/CR is prefixed with ' so a
// spreadsheet never runs it as a formula (OWASP "CSV injection").
function flatten(item, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(item)) {
    const key = prefix + k;
    if (v !== null && typeof v === "object" && !Array.isArray(v)) flatten(v, `${key}.`, out);
    else out[key] = Array.isArray(v) ? JSON.stringify(v) : v;
  }
  return out;
}
function csvCell(v) {
  if (v === null || v === undefined) return "";
  let s = String(v);
  if (typeof v === "string" && /^[=+\-@\t\r]/.test(s)) s = `'${s}`;
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}
function toCsv(items) {
  const rows = items.map((i) => flatten(i));
  const cols = [];
  for (const r of rows) for (const k of Object.keys(r)) if (!cols.includes(k)) cols.push(k);
  return "\ufeff" + [cols, ...rows.map((r) => cols.map((c) => r[c]))].map((r) => r.map(csvCell).join(",")).join("\r\n") + "\r\n";
}
function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el("a", {href: url, download: name});
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
function stamp() { return new Date().toISOString().replace(/[-:]/g, "").slice(0, 15); }
function exportTable(what) {
  const x = S.exports[what];
  if (!x) return;
  saveBlob(new Blob([toCsv(x.items)], {type: "text/csv;charset=utf-8"}), `ioc-${x.name}-${stamp()}.csv`);
}

// Archive extracts go through the city (same origin, so the CSP's connect-src 'self' holds), signed in by the
// session cookie; the archive checks archive:read for this operator and audits the extract.
async function archiveFetch(path) {
  const r = await fetch(path);
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    const msg = r.status === 403 ? t("archiveDenied") : r.status === 502 ? t("archiveDown")
      : (body.error && body.error.message) || `HTTP ${r.status}`;
    $("archive-status").textContent = msg;
    throw new Error(`HTTP ${r.status}`);
  }
  return r;
}
async function loadArchiveTopics() {
  const sel = $("archive-topic");
  let body;
  try { body = await (await archiveFetch("/v1/exports/archive/topics")).json(); } catch (e) { return; }
  const cur = sel.value;
  sel.replaceChildren(...body.topics.map((tp) => el("option", {value: tp.topic}, tp.topic)));
  if (cur) sel.value = cur;
  $("archive-status").textContent = "";
}
// datetime-local inputs are read as Hanoi wall time (UTC+7, no daylight saving)
const hanoiInstant = (v) => (v ? new Date(`${v}:00+07:00`).toISOString() : "");
async function downloadArchive(e) {
  e.preventDefault();
  const params = new URLSearchParams({topic: $("archive-topic").value, from: hanoiInstant($("archive-from").value),
    to: hanoiInstant($("archive-to").value), format: $("archive-format").value});
  for (const k of ["area", "entity"]) if ($(`archive-${k}`).value.trim()) params.set(k, $(`archive-${k}`).value.trim());
  $("archive-status").textContent = "…";
  let r;
  try { r = await archiveFetch(`/v1/exports/archive?${params}`); } catch (err) { return; }
  const disposition = r.headers.get("Content-Disposition") || "";
  const name = (disposition.match(/filename="([^"]+)"/) || [])[1] || `ioc-archive.${params.get("format")}`;
  saveBlob(await r.blob(), name);
  $("archive-status").textContent = `${fmtNumber(Number(r.headers.get("X-Row-Count") || 0))} ${t("rows")}`;
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
  const params = new URLSearchParams({topic: $("tail-topic").value});  // the session cookie signs it in
  if ($("tail-filter").value) params.set("filter", $("tail-filter").value);
  const es = new EventSource(`/v1/tail?${params}`);
  S.tail = es;
  $("tail-toggle").textContent = t("stop");
  const out = $("tail");
  es.addEventListener("record", (e) => {
    const r = JSON.parse(e.data);
    const line = `${df({timeStyle: "medium"}).format(new Date(r.timestamp))} ${r.topic}[${r.partition}]@${r.offset} ${r.type || r.error} ${r.key || ""} ${JSON.stringify(r.data || {})}\n`;
    out.append(line);
    while (out.childNodes.length > 300) out.removeChild(out.firstChild);
    out.scrollTop = out.scrollHeight;
  });
}

// Start ---------------------------------------------------------------------------------------------------
async function loadAll() {
  if (!IOC_AUTH.signedIn()) { showMessage(t("needKey")); return; }
  showMessage("");
  await loadDistricts();  // names first: tiles, alarms and incidents show district names
  await loadTiles();
  await Promise.all([loadAlarms(), loadTopics(), loadRate(), IOC_AUTH.may("archive:read") ? loadArchiveTopics() : null]);
  fillHistorySelectors();
  document.dispatchEvent(new Event("ioc:loaded"));  // panels in their own files (incidents.js) load now
}

function init() {
  applyLanguage();
  $("lang").addEventListener("click", () => {
    S.lang = S.lang === "vi" ? "en" : "vi";
    localStorage.setItem("ioc.lang", S.lang);
    applyLanguage();
    loadAll().catch(() => {});
  });
  $("close-detail").addEventListener("click", () => {
    $("district-detail").hidden = true;
    S.selected = null;
    document.querySelectorAll(".district").forEach((e) => e.classList.remove("selected"));
  });
  $("toggle-shelved").addEventListener("click", () => { S.showShelved = !S.showShelved; scheduleRefresh("alarms"); });
  $("history-load").addEventListener("click", loadHistory);
  $("tail-toggle").addEventListener("click", toggleTail);
  for (const b of document.querySelectorAll("button[data-export]")) b.addEventListener("click", () => exportTable(b.dataset.export));
  $("archive-form").addEventListener("submit", downloadArchive);
  // Staleness and the badge move with the clock, not only with events.
  setInterval(() => {
    for (const id of Object.keys(S.tiles)) renderTile(id);
    setConn(S.connState || "off");
  }, 15000);
  setInterval(() => { if (IOC_AUTH.signedIn()) loadRate(); }, 60000);
  // auth.js shows the sign-in form until a session holds, then starts the console
  IOC_AUTH.start(() => { S.lastEventId = null; return loadAll().then(connect).catch(() => {}); });
}

document.addEventListener("DOMContentLoaded", init);
