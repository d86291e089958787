// Drill-down pages (area → asset), the multi-series history and the daily report: routes on location.hash
// (#area/<code>, #asset/<kind>/<id>, #history, #report/daily[/<date>]). Plain JS on app.js's helpers (S, t, el,
// api, fmt, toCsv ...); words in I18N, live through the "ioc:<kind>" events app.js re-dispatches from its stream.
"use strict";

Object.assign(I18N.vi, {
  back: "← Tổng quan", areaPage: "Trang khu vực", assetsInAlarmNone: "Không có thiết bị nào đang cảnh báo",
  asset: "Thiết bị", kind_intersection: "Nút giao", kind_kiosk: "Ki-ốt", kind_feeder: "Xuất tuyến", kind_meter: "Công tơ",
  kind_agency: "Cơ quan", kind_dossier: "Hồ sơ", liveState: "Trạng thái hiện tại", alarmHistory: "Lịch sử cảnh báo",
  areaKpis: "Chỉ số của khu vực", openAlarms: "Cảnh báo đang mở", raised: "phát sinh", cleared_log: "kết thúc",
  notAvailable: "Dịch vụ nguồn không cung cấp", forbidden: "Khóa này không có quyền đọc dịch vụ nguồn",
  unavailable: "Dịch vụ nguồn không trả lời", not_found: "Dịch vụ nguồn không biết thiết bị này",
  no_endpoint: "Dịch vụ nguồn chưa có trang cho loại thiết bị này", phase: "Pha", signal: "Tín hiệu",
  green: "xanh", yellow: "vàng", red_clearance: "đỏ chuyển tiếp", red: "đỏ", ended: "Kết thúc",
  pcd: "Biểu đồ phối hợp Purdue", splitMonitor: "Theo dõi phân pha (split) theo chu kỳ",
  terminations: "Kết thúc pha (gap-out / max-out / force-off)", cycleStart: "Đầu chu kỳ", greenStart: "Bắt đầu xanh",
  yellowStart: "Bắt đầu vàng", cycleLength: "Độ dài chu kỳ", aogPerCycle: "Xe đến khi xanh / chu kỳ",
  aorPerCycle: "Xe đến khi đỏ / chu kỳ", split: "Phân pha", splitAvg: "Phân pha TB (15 phút)",
  splitMax: "Phân pha lớn nhất (15 phút)", gapOuts: "Gap-out", maxOuts: "Max-out", forceOffs: "Force-off",
  seconds: "giây", name: "Tên", index766: "Chỉ số Quyết định 766", total: "Tổng điểm", coveredPoints: "Điểm có dữ liệu",
  compare: "So sánh lịch sử", areas: "Khu vực", previousPeriod: "So với kỳ trước", current: "kỳ này",
  previous: "kỳ trước", dailyReport: "Báo cáo ngày", date: "Ngày", print: "In", alarmsRaised: "Cảnh báo phát sinh",
  worstAreas: "Khu vực kém nhất", criticalKpis: "Chỉ số nghiêm trọng", warningKpis: "Chỉ số cảnh báo",
  thresholdWarning: "Ngưỡng cảnh báo", thresholdCritical: "Ngưỡng nghiêm trọng", mean: "Trung bình",
  dayWindow: "cửa sổ ngày", meanOfWindows: "trung bình các cửa sổ", basis: "Cách tính", childAreas: "Đơn vị trực thuộc",
  incidentsOpen: "Sự cố đang mở", atspmNone: "Chưa có số đo của dịch vụ giao thông trong khoảng này",
  period: "Kỳ", chartFor: "Biểu đồ", controller: "Bộ điều khiển", coordinates: "Tọa độ", phases: "Các pha",
  detectors: "Số đầu dò", building: "Tòa nhà", address: "Địa chỉ", peripherals: "Thiết bị ngoại vi",
  noCycles: "Không có chu kỳ nào của pha này trong khoảng thời gian", inOutage: "Đang mất điện",
  metersWithoutSupply: "Công tơ mất điện / tổng số", interruptions: "Các lần mất điện", minutes: "Phút", ongoing: "đang diễn ra",
  peripheralFaults: "Thiết bị ngoại vi đang lỗi", index766Group: "Nhóm chỉ số", points: "Điểm",
  g766_transparency: "Công khai, minh bạch", g766_progress: "Tiến độ, kết quả giải quyết", g766_digitisation: "Số hóa hồ sơ",
  g766_online_service: "Cung cấp dịch vụ trực tuyến", g766_satisfaction: "Mức độ hài lòng", softwareVersion: "Phiên bản phần mềm", inServiceSince: "Hoạt động từ", activeAsset: "Đang hoạt động", yes: "có", no: "không",
  arrivalOnRed: "Xe đến khi đỏ", arrivalOnGreen: "Xe đến khi xanh", arrivalOnYellow: "Xe đến khi vàng",
  secondsInCycle: "Giây trong chu kỳ", terminationsPerCycle: "Kết thúc pha theo chu kỳ",
  connection: "Kết nối", kioskOnline: "trực tuyến", kioskOffline: "mất kết nối", lastHeartbeat: "tín hiệu cuối",
  sessionsToday: "Phiên hôm nay", completed: "hoàn thành", abandoned: "bỏ dở", failed: "lỗi", availability: "Mức sẵn sàng",
  journeyCol: "Dịch vụ", today: "Hôm nay", last7Days: "7 ngày qua", technicalAvailability: "Sẵn sàng kỹ thuật",
  journey_lookup_procedure: "Tra cứu thủ tục", journey_submit_dossier: "Nộp hồ sơ", journey_check_status: "Tra cứu tình trạng hồ sơ",
  journey_pay_fee: "Nộp phí", journey_print_result: "In kết quả", journey_queue_ticket: "Lấy số thứ tự", journey_rate_service: "Đánh giá",
  peripheral: "Thiết bị", deviceState: "Trạng thái", paper: "Giấy in", usable: "Dùng được",
  peripheral_touchscreen: "Màn hình cảm ứng", peripheral_printer: "Máy in", peripheral_id_scanner: "Đầu đọc CCCD",
  peripheral_card_reader: "Đầu đọc thẻ", peripheral_barcode_reader: "Đầu đọc mã vạch", peripheral_camera: "Camera",
  peripheral_payment_terminal: "Thiết bị thanh toán",
  xfs_online: "hoạt động", xfs_busy: "đang bận", xfs_offline: "ngắt kết nối", xfs_power_off: "tắt nguồn",
  xfs_no_device: "không có thiết bị", xfs_hardware_error: "lỗi phần cứng", xfs_user_error: "bị người dùng cản trở",
  xfs_fraud_attempt: "nghi gian lận", paper_full: "đủ", paper_low: "sắp hết", paper_out: "hết", paper_jammed: "kẹt", paper_unknown: "không rõ",
});
Object.assign(I18N.en, {
  back: "← Overview", areaPage: "Area page", assetsInAlarmNone: "No asset in alarm",
  asset: "Asset", kind_intersection: "Intersection", kind_kiosk: "Kiosk", kind_feeder: "Feeder", kind_meter: "Meter",
  kind_agency: "Agency", kind_dossier: "Dossier", liveState: "Live state", alarmHistory: "Alarm history",
  areaKpis: "Area KPIs", openAlarms: "Open alarms", raised: "raised", cleared_log: "cleared",
  notAvailable: "Not provided by the source service", forbidden: "This key may not read the source service",
  unavailable: "The source service did not answer", not_found: "The source service does not know this asset",
  no_endpoint: "The source service has no page for this kind of asset", phase: "Phase", signal: "Signal",
  green: "green", yellow: "yellow", red_clearance: "red clearance", red: "red", ended: "Ended",
  pcd: "Purdue coordination diagram", splitMonitor: "Split monitor (per cycle)",
  terminations: "Phase terminations (gap-out / max-out / force-off)", cycleStart: "Cycle start",
  greenStart: "Begin green", yellowStart: "Begin yellow", cycleLength: "Cycle length",
  aogPerCycle: "Arrivals on green per cycle", aorPerCycle: "Arrivals on red per cycle", split: "Split",
  splitAvg: "Mean split (15 min)", splitMax: "Longest split (15 min)", gapOuts: "Gap-out", maxOuts: "Max-out",
  forceOffs: "Force-off", seconds: "s", name: "Name", index766: "Decision 766 index", total: "Total points",
  coveredPoints: "Points with data", compare: "Compare history", areas: "Areas", previousPeriod: "Against the previous period",
  current: "this period", previous: "previous period", dailyReport: "Daily report", date: "Date", print: "Print",
  alarmsRaised: "Alarms raised", worstAreas: "Worst areas", criticalKpis: "KPIs critical", warningKpis: "KPIs in warning",
  thresholdWarning: "Warning level", thresholdCritical: "Critical level", mean: "Mean",
  dayWindow: "day window", meanOfWindows: "mean of windows", basis: "Basis", childAreas: "Units within",
  incidentsOpen: "Open incidents", atspmNone: "No traffic measures in this period yet",
  period: "Period", chartFor: "Chart", controller: "Controller", coordinates: "Coordinates", phases: "Phases",
  detectors: "Detectors", building: "Building", address: "Address", peripherals: "Peripherals",
  noCycles: "No cycle of this phase in the period", inOutage: "In outage",
  metersWithoutSupply: "Meters without supply / all", interruptions: "Interruptions", minutes: "Minutes", ongoing: "ongoing",
  peripheralFaults: "Peripherals in fault", index766Group: "Group", points: "Points",
  g766_transparency: "Transparency", g766_progress: "Progress and results", g766_digitisation: "Digitisation",
  g766_online_service: "Online service", g766_satisfaction: "Satisfaction", softwareVersion: "Software version", inServiceSince: "In service since", activeAsset: "Active", yes: "yes", no: "no",
  arrivalOnRed: "Arrival on red", arrivalOnGreen: "Arrival on green", arrivalOnYellow: "Arrival on yellow",
  secondsInCycle: "Seconds in cycle", terminationsPerCycle: "Phase terminations per cycle",
  connection: "Connection", kioskOnline: "online", kioskOffline: "offline", lastHeartbeat: "last heartbeat",
  sessionsToday: "Sessions today", completed: "completed", abandoned: "abandoned", failed: "failed", availability: "Availability",
  journeyCol: "Service", today: "Today", last7Days: "Last 7 days", technicalAvailability: "Technical availability",
  journey_lookup_procedure: "Look up a procedure", journey_submit_dossier: "Submit a dossier", journey_check_status: "Check a dossier's status",
  journey_pay_fee: "Pay a fee", journey_print_result: "Print a result", journey_queue_ticket: "Queue ticket", journey_rate_service: "Rate the service",
  peripheral: "Peripheral", deviceState: "State", paper: "Paper", usable: "Usable",
  peripheral_touchscreen: "Touchscreen", peripheral_printer: "Printer", peripheral_id_scanner: "ID scanner",
  peripheral_card_reader: "Card reader", peripheral_barcode_reader: "Barcode reader", peripheral_camera: "Camera",
  peripheral_payment_terminal: "Payment terminal",
  xfs_online: "online", xfs_busy: "busy", xfs_offline: "offline", xfs_power_off: "power off", xfs_no_device: "no device",
  xfs_hardware_error: "hardware error", xfs_user_error: "user error", xfs_fraud_attempt: "fraud attempt",
  paper_full: "full", paper_low: "low", paper_out: "out", paper_jammed: "jammed", paper_unknown: "unknown",
});

// Decision 766 groups and their maximum points (Art. 1(1); services/dossier/index766.py GROUPS)
const G766 = {transparency: 18, progress: 20, digitisation: 22, online_service: 22, satisfaction: 18};
const V = {route: null, charts: [], timer: null, live: null};
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];

function view() {
  let v = $("view");
  if (!v) {
    v = el("section", {id: "view", class: "view"});
    document.querySelector("main").prepend(v);
  }
  return v;
}
// (DOM's replaceChildren writes a null child as the text "null")
function fill(node, ...children) { node.replaceChildren(...children.filter((c) => c !== null && c !== undefined)); }
function areaHref(code) { return `#area/${encodeURIComponent(code)}`; }
function assetHref(kind, id) { return `#asset/${kind}/${encodeURIComponent(id)}`; }
function kindName(kind) { return t(`kind_${kind}`); }
function areaName(code) { return code === "HN" ? t("city") : districtName(code); }
function link(href, text, attrs = {}) { return el("a", {href, ...attrs}, text); }
function table(id, heads, rows, colspanEmpty) {
  return el("table", {id, class: "table"}, el("tr", {}, ...heads.map((h) => el("th", {}, h))),
    ...(rows.length ? rows : [el("tr", {}, el("td", {class: "empty", colspan: String(colspanEmpty || heads.length)}, t("none")))]));
}
function exportButton(name) {
  return el("button", {type: "button", class: "export", data: {exportView: name}, on: {click: () => exportTable(name)}}, t("exportCsv"));
}
function statusBadge(status) { return el("span", {class: `badge status-${status}`}, t(status)); }
function destroyCharts() { for (const c of V.charts) c.destroy(); V.charts = []; }

// Routing ---------------------------------------------------------------------------------------------------
async function route() {
  const h = decodeURIComponent(location.hash.replace(/^#/, ""));
  const parts = h.split("/");
  const known = ["area", "asset", "history", "report"].includes(parts[0]);
  document.body.classList.toggle("view-open", known);
  destroyCharts();
  V.route = known ? parts : null;
  if (!known) { view().replaceChildren(); return; }
  if (!Object.keys(S.defs).length || !S.districts.length) await loadAll().catch(() => {});
  try {
    if (parts[0] === "area") await renderArea(parts[1] || "HN");
    else if (parts[0] === "asset") await renderAsset(parts[1], parts.slice(2).join("/"));
    else if (parts[0] === "history") await renderCompare(parts[1], parts[2]);
    else await renderReport(parts[2]);
  } catch (e) { /* the message is shown by api() */ }
  window.scrollTo(0, 0);
}

function head(title, ...extra) {
  return el("div", {class: "view-head"}, link("#", t("back"), {class: "back"}), el("h2", {class: "view-title"}, title), ...extra);
}

// Live: a stream event about what the page shows re-renders it (one render per burst).
function onLive(kind, data) {
  if (!V.route || V.route[0] === "report" || V.route[0] === "history") return;
  const [page, a, b] = V.route;
  const mine = page === "area"
    ? (a === "HN" || data.district === a || data.scope_code === a || data.commune === a)
    : (kind === "alarm" && data.source_id === decodeURIComponent(V.route.slice(2).join("/"))) ||
      (kind === "kpi" && V.live && data.scope_code === V.live);
  if (!mine) return;
  clearTimeout(V.timer);
  V.timer = setTimeout(() => { if (V.route && V.route[0] === page && V.route[1] === a) refreshView(page, a, b); }, 400);
}
async function refreshView(page, a) {
  try {
    if (page === "area") await renderArea(a);
    else await renderAsset(a, V.route.slice(2).join("/"));
  } catch (e) { /* shown */ }
}
for (const k of ["alarm", "kpi", "incident"]) document.addEventListener(`ioc:${k}`, (e) => onLive(k, e.detail));

// Area --------------------------------------------------------------------------------------------------------
function assetRows(items) {
  return items.map((a) => el("tr", {data: {asset: a.asset_id, kind: a.kind}},
    el("td", {}, sevBadge(a.severity)), el("td", {}, kindName(a.kind)),
    el("td", {}, link(assetHref(a.kind, a.asset_id), a.asset_id, {class: "asset-link"})),
    el("td", {}, a.alarm_types.map(alarmTypeName).join(", ")), el("td", {}, areaName(a.district)),
    el("td", {}, fmtDateTime(instant(a.since)))));
}
const ASSET_HEADS = () => [t("severity"), t("type"), t("asset"), t("alarms"), t("district"), t("since")];

// The overview's district panel lists assets (with links), not KPI breaches.
async function fillAssetsInAlarm(container, code) {
  const body = await api(`/v1/assets-in-alarm?area=${encodeURIComponent(code)}`);
  S.exports.district_assets = {name: `assets-in-alarm-${code}`, items: body.items};
  container.replaceChildren(el("tr", {}, ...ASSET_HEADS().map((h) => el("th", {}, h))),
    ...(body.items.length ? assetRows(body.items) : [el("tr", {}, el("td", {class: "empty", colspan: "6"}, t("assetsInAlarmNone")))]));
}

function kpiRows(kpis) {
  const rows = kpis.filter((k) => k.window_seconds === ((S.defs[k.kpi] && S.defs[k.kpi].windows[0]) ?? k.window_seconds));
  return rows.map((k) => {
    const c = k.complete || (k.running ? null : k);
    return el("tr", {data: {kpi: k.kpi}},
      el("td", {}, link(`#history/${k.kpi}/${k.scope_code}`, kpiName(k.kpi), {class: "kpi-link"})), el("td", {}, domainName(k.domain)), el("td", {}, windowName(k.window_seconds)),
      el("td", {}, c ? fmt(c.value, k.unit) : "–"), el("td", {}, k.running ? fmt(k.value, k.unit) : "–"),
      el("td", {}, statusBadge(c ? c.status : "unknown")));
  });
}
const KPI_HEADS = () => [t("kpis"), t("domain"), t("window"), t("value"), t("runningWindow"), t("status")];

async function renderArea(code) {
  const a = await api(`/v1/areas/${encodeURIComponent(code)}`);
  V.live = code;
  S.exports.area_kpis = {name: `area-${code}-kpis`, items: a.kpis};
  S.exports.area_assets = {name: `area-${code}-assets`, items: a.assets_in_alarm};
  const v = view();
  v.dataset.page = "area";
  v.dataset.code = code;
  fill(v, 
    head(`${code === "HN" ? t("city") : a.name} · ${t(a.status)}`, a.parent ? link(areaHref(a.parent), areaName(a.parent), {class: "up"}) : null),
    el("div", {class: "view-grid"},
      el("div", {}, el("h3", {}, t("assetsInAlarm"), " ", exportButton("area_assets")),
        table("area-assets", ASSET_HEADS(), assetRows(a.assets_in_alarm)),
        el("h3", {}, t("incidentsOpen")),
        table("area-incidents", [t("severity"), t("incident"), t("openedAt"), t("alarms")],
          a.incidents.map((i) => el("tr", {}, el("td", {}, i.severity ? sevBadge(i.severity) : ""),
            el("td", {}, i.incident_id), el("td", {}, fmtDateTime(instant(i.opened_at))), el("td", {}, fmtNumber(i.open_alarms)))))),
      el("div", {}, el("h3", {}, t("kpis"), " ", exportButton("area_kpis")), table("area-kpis", KPI_HEADS(), kpiRows(a.kpis)),
        a.children.length ? el("h3", {}, t("childAreas")) : null,
        a.children.length ? el("div", {class: "children"}, ...a.children.map((c) => link(areaHref(c.code), c.name))) : null)));
}

// Asset -------------------------------------------------------------------------------------------------------
function detailsBlock(p) {
  // a kiosk's peripherals in fault: its open alarms other than the kiosk's own connection
  const faults = p.kind === "kiosk" ? p.alarms.filter((a) => a.state !== "cleared" && a.alarm_type !== "kiosk_offline") : [];
  const faultLine = faults.length ? el("p", {id: "kiosk-faults"}, `${t("peripheralFaults")}: `, faults.map((a) => alarmTypeName(a.alarm_type)).join(", ")) : null;
  if (p.details_error) return el("div", {}, el("p", {class: "muted details-error"}, t(p.details_error.reason) || t("notAvailable")), faultLine);
  const d = p.details || {};
  if (p.kind === "kiosk") return el("div", {}, kvTable(p, d), kioskState(d), faultLine);
  if (p.kind === "agency") {
    const card = d.index766;
    const who = el("table", {class: "table kv"}, el("tr", {}, el("th", {}, t("name")), el("td", {}, d.name || "–")),
      el("tr", {}, el("th", {}, t("district")), el("td", {}, d.district ? districtName(d.district) : "–")));
    if (!card) return el("div", {}, who, el("p", {class: "muted"}, `${t("index766")} ${d.period}: ${t("noData")}`));
    return el("div", {}, who, el("p", {id: "agency-766"}, `${t("index766")} ${d.period}: `, el("strong", {class: "score"}, fmtNumber(card.total)),
      ` / 100 · ${t("coveredPoints")}: ${fmtNumber(card.covered_points)}`),
    table("agency-groups", [t("index766Group"), t("points")], Object.entries(card.groups || {}).map(([g, v]) =>
      el("tr", {data: {group: g}}, el("td", {}, t(`g766_${g}`)), el("td", {}, `${fmtNumber(v)} / ${fmtNumber(G766[g] ?? null)}`)))));
  }
  if (p.kind === "feeder") {
    const n = d.meters_without_supply;
    return el("div", {},
      el("table", {class: "table kv", id: "feeder-state"},
        el("tr", {}, el("th", {}, t("inOutage")), el("td", {}, t(d.in_outage ? "yes" : "no"))),
        el("tr", {}, el("th", {}, t("metersWithoutSupply")),
          el("td", {}, n === null || n === undefined ? "–" : `${fmtNumber(n)} / ${fmtNumber(d.meters)}`))),
      el("h3", {}, t("interruptions")),
      table("feeder-interruptions", [t("from"), t("to"), t("minutes")], d.interruptions.map((i) => el("tr", {},
        el("td", {}, fmtDateTime(instant(i.start))), el("td", {}, i.end ? fmtDateTime(instant(i.end)) : t("ongoing")),
        el("td", {}, i.minutes === null ? "–" : fmtNumber(i.minutes))))));
  }
  return kvTable(p, d);
}

// A kiosk's state from the kiosk service's status: connection, sessions today, availability (the kiosk KPIs'
// definition: online / scheduled time; per journey: with the peripherals it needs usable), peripherals (CEN/XFS).
const pct = (x) => (x === null || x === undefined ? "–" : `${fmtNumber(x)} %`);
function kioskState(d) {
  if (!d.availability_today) return null;
  const today = d.availability_today, week = d.availability_7d;
  const weekJ = Object.fromEntries(((week && week.journeys) || []).map((j) => [j.journey, j]));
  const sessions = d.sessions_today || {total: 0};
  return el("div", {id: "kiosk-state"},
    el("table", {class: "table kv"},
      el("tr", {}, el("th", {}, t("connection")), el("td", {data: {online: String(d.online)}},
        t(d.online ? "kioskOnline" : "kioskOffline"),
        d.last_heartbeat ? ` · ${t("lastHeartbeat")} ${fmtDateTime(instant(d.last_heartbeat))}` : "")),
      el("tr", {}, el("th", {}, t("sessionsToday")), el("td", {id: "kiosk-sessions-today"},
        `${fmtNumber(sessions.total)}`, sessions.total ? ` (${t("completed")} ${fmtNumber(sessions.completed || 0)}, ` +
          `${t("abandoned")} ${fmtNumber(sessions.abandoned || 0)}, ${t("failed")} ${fmtNumber(sessions.failed || 0)})` : ""))),
    el("h3", {}, t("availability")),
    table("kiosk-availability", [t("journeyCol"), t("today"), t("last7Days")], [
      el("tr", {data: {journey: "technical"}}, el("td", {}, t("technicalAvailability")),
        el("td", {}, pct(today.technical_pct)), el("td", {}, pct(week ? week.technical_pct : null))),
      ...today.journeys.map((j) => el("tr", {data: {journey: j.journey}}, el("td", {}, t(`journey_${j.journey}`)),
        el("td", {}, pct(j.functional_pct)), el("td", {}, pct(weekJ[j.journey] ? weekJ[j.journey].functional_pct : null))))]),
    el("h3", {}, t("peripherals")),
    table("kiosk-peripherals", [t("peripheral"), t("deviceState"), t("paper"), t("usable"), t("since")],
      (d.peripheral_states || []).map((x) => el("tr", {class: x.usable === false ? "state-active" : "", data: {peripheral: x.peripheral}},
        el("td", {}, t(`peripheral_${x.peripheral}`)), el("td", {}, x.state ? t(`xfs_${x.state}`) : "–"),
        el("td", {}, x.paper ? t(`paper_${x.paper}`) : "–"),
        el("td", {}, x.usable === null ? "–" : t(x.usable ? "yes" : "no")),
        el("td", {}, x.since ? fmtDateTime(instant(x.since)) : "–")))));
}

// the fields of the source service's answer that are worth reading, with their names in the chosen language
function kvTable(p, d) {
  const fields = p.kind === "intersection"
    ? [["name", d.name], ["controller", d.controller_id], ["district", districtName(d.district)],
      ["coordinates", d.lat !== undefined ? `${nf({maximumFractionDigits: 5}).format(d.lat)}, ${nf({maximumFractionDigits: 5}).format(d.lon)}` : null],
      ["phases", (d.phases || []).join(", ")], ["detectors", fmtNumber((d.detectors || []).length)]]
    : p.kind === "kiosk"
      ? [["building", d.building], ["address", d.address], ["district", districtName(d.district)],
        ["peripherals", (d.peripherals || []).map((x) => t(`peripheral_${x}`)).join(", ")], ["softwareVersion", d.software_version],
        ["inServiceSince", d.in_service_since ? fmtDateTime(instant(d.in_service_since)) : null],
        ["activeAsset", d.active === undefined ? null : t(d.active ? "yes" : "no")]]
      : [];
  return el("table", {class: "table kv"}, ...fields.map(([k, v]) =>
    el("tr", {}, el("th", {}, t(k)), el("td", {}, v === null || v === undefined || v === "" ? "–" : String(v)))));
}

async function renderAsset(kind, id) {
  const p = await api(`/v1/assets/${kind}/${encodeURIComponent(id)}`);
  V.live = p.district;
  S.exports.asset_alarms = {name: `${kind}-${id}-alarms`, items: p.alarms};
  S.exports.asset_history = {name: `${kind}-${id}-alarm-history`, items: p.alarm_history};
  S.exports.asset_kpis = {name: `${kind}-${id}-area-kpis`, items: p.kpis};
  const v = view();
  v.dataset.page = "asset";
  v.dataset.kind = kind;
  v.dataset.asset = id;
  const name = p.details && p.details.name ? ` · ${p.details.name}` : "";
  fill(v, 
    head(`${kindName(kind)} ${id}${name}`, statusBadge(p.status),
      p.district ? link(areaHref(p.district), p.district_name || p.district, {class: "up"}) : null),
    el("div", {class: "view-grid"},
      el("div", {}, el("h3", {}, t("liveState")), detailsBlock(p), el("div", {id: "live-phases"}),
        el("h3", {}, t("openAlarms"), " ", exportButton("asset_alarms")),
        // (a source's message is English text: a tooltip, as in the overview's alarm list)
        table("asset-alarms", [t("severity"), t("type"), t("state"), t("since")],
          p.alarms.map((a) => el("tr", {class: `state-${a.state}`, data: {alarm: a.alarm_id, state: a.state}, title: a.message},
            el("td", {}, sevBadge(a.severity)), el("td", {}, alarmTypeName(a.alarm_type)), el("td", {}, t(a.state)),
            el("td", {}, fmtDateTime(instant(a.raised_at))))))),
      el("div", {}, el("h3", {}, t("areaKpis"), " ", exportButton("asset_kpis")), table("asset-kpis", KPI_HEADS(), kpiRows(p.kpis)),
        el("h3", {}, t("alarmHistory"), " ", exportButton("asset_history")),
        table("asset-history", [t("time"), t("type"), t("state")],
          p.alarm_history.map((h) => el("tr", {}, el("td", {}, fmtDateTime(instant(h.at))),
            el("td", {}, alarmTypeName(h.alarm_type)), el("td", {}, h.state === "raised" ? t("raised") : t("cleared_log"))))))),
    kind === "intersection" ? el("div", {id: "atspm"}) : null);
  if (kind === "intersection" && !p.details_error) await renderAtspm(id);
}

// ATSPM charts ---------------------------------------------------------------------------------------------------
const secs = (iso) => instant(iso) / 1000;
function timeAxis() {
  // seconds when the chart spans minutes (a few cycles), the date when it spans days
  return {values: (u, vals) => {
    const span = u.scales.x.max - u.scales.x.min;
    const f = span < 3 * 3600 ? df({hour: "2-digit", minute: "2-digit", second: "2-digit"})
      : span < 2 * 86400 ? df({hour: "2-digit", minute: "2-digit"}) : df({day: "2-digit", month: "2-digit", hour: "2-digit"});
    return vals.map((x) => f.format(new Date(x * 1000)));
  }};
}
// The x range of an ATSPM chart: its data, and the whole 15-minute bin of its last bin.
function xRange(data, binned) {
  const xs = data[0];
  if (!xs.length) return undefined;
  const lo = Math.floor(xs[0] / 900) * 900;  // from the start of the first bin to the end of the last one
  return () => [lo, Math.max(lo + 900, binned ? Math.floor(xs[xs.length - 1] / 900) * 900 + 900 : xs[xs.length - 1])];
}
function numAxis(unit) { return {values: (u, vals) => vals.map((x) => fmtNumber(x, unit)), size: 60}; }
function plot(target, title, data, series, extra = {}) {
  const box = el("div", {class: "chart-box", data: {chart: title}});
  target.append(box);
  const opts = {width: Math.max(300, (target.clientWidth || 700) - 4), height: 220, title,
    scales: {x: {time: true, range: xRange(data, true)}}, axes: [timeAxis(), numAxis("")],
    series: [{label: t("time"), value: (u, x) => (x === null ? "–" : fmtDateTime(x * 1000))}, ...series], ...extra};
  V.charts.push(new uPlot(opts, data, box));
}
const val = (u, x) => (x === null || x === undefined ? "–" : fmtNumber(x));

async function renderAtspm(id) {
  const to = new Date();
  const from = new Date(to.getTime() - 6 * 3600e3);
  const box = $("atspm");
  let body;
  try {
    body = await api(`/v1/assets/intersection/${encodeURIComponent(id)}/atspm?${new URLSearchParams({from: from.toISOString(), to: to.toISOString()})}`);
  } catch (e) { return; }
  S.exports.atspm = {name: `intersection-${id}-atspm`, items: body.phases.flatMap((ph) => [
    ...ph.coordination.bins.map((b) => ({chart: "coordination", phase: ph.phase, ...b})),
    ...ph.split_monitor.cycles.map((c) => ({chart: "split_monitor", phase: ph.phase, ...c})),
    ...ph.terminations.bins.map((b) => ({chart: "terminations", phase: ph.phase, ...b})),
    ...(ph.terminations.cycles || []).map((x) => ({chart: "terminations_per_cycle", phase: ph.phase, ...x}))])};
  $("live-phases").replaceChildren(table("latest-phases", [t("phase"), t("signal"), t("since"), t("ended")],
    body.latest.map((l) => el("tr", {data: {phase: String(l.phase)}}, el("td", {}, String(l.phase)),
      el("td", {}, el("span", {class: `signal signal-${l.kind}`}, t(l.kind))), el("td", {}, fmtDateTime(instant(l.start))),
      el("td", {}, fmtDateTime(instant(l.end)))))));
  box.replaceChildren(el("h3", {}, "ATSPM ", exportButton("atspm")));
  if (!body.phases.length) { box.append(el("p", {class: "muted"}, t("atspmNone"))); return; }
  for (const ph of body.phases) {
    const grid = el("div", {class: "atspm-phase", data: {phase: String(ph.phase)}}, el("h4", {}, `${t("phase")} ${ph.phase}`));
    box.append(grid);
    const served = ph.coordination.cycles.length || ph.split_monitor.cycles.length ||
      ph.terminations.bins.some((b) => b.gap_outs + b.max_outs + b.force_offs > 0) || ph.coordination.bins.some((b) => b.cycles);
    if (!served) { grid.append(el("p", {class: "muted"}, t("noCycles"))); continue; }
    const cyc = ph.coordination.cycles, bins = ph.coordination.bins, veh = ph.coordination.vehicles || [];
    if (veh.length) {
      // one dot per vehicle at its arrival time, as seconds into its cycle, coloured by the indication it met
      // (UDOT's Purdue coordination diagram); the lines are each cycle's begin green, begin yellow and length
      const dots = {red: new Map(), green: new Map(), yellow: new Map()};
      for (const c of veh) {
        const start = secs(c.cycle_start);
        for (const o of c.arrival_offsets_seconds) {
          const on = o < c.green_seconds ? "red" : o < c.yellow_seconds ? "green" : "yellow";
          dots[on].set(start + o, o);  // one vehicle at one instant of one phase is one dot
        }
      }
      const table = (m) => { const xs = [...m.keys()].sort((a, b) => a - b); return [xs, xs.map((x) => m.get(x))]; };
      const data = uPlot.join([
        [veh.map((c) => secs(c.cycle_start)), veh.map((c) => c.green_seconds), veh.map((c) => c.yellow_seconds), veh.map((c) => c.cycle_seconds)],
        table(dots.red), table(dots.green), table(dots.yellow)]);
      const dot = (fill) => ({show: true, size: 5, fill, stroke: fill});
      plot(grid, `${t("pcd")} · ${t("phase")} ${ph.phase}`, data, [
        {label: t("greenStart"), stroke: "#16a34a", width: 1.5, value: val, spanGaps: true},
        {label: t("yellowStart"), stroke: "#ca8a04", width: 1.5, value: val, spanGaps: true},
        {label: t("cycleLength"), stroke: "#dc2626", width: 1.5, value: val, spanGaps: true},
        {label: t("arrivalOnRed"), stroke: "#b91c1c", width: 0, paths: () => null, points: dot("#b91c1c"), value: val},
        {label: t("arrivalOnGreen"), stroke: "#15803d", width: 0, paths: () => null, points: dot("#15803d"), value: val},
        {label: t("arrivalOnYellow"), stroke: "#a16207", width: 0, paths: () => null, points: dot("#a16207"), value: val}],
      {axes: [timeAxis(), {...numAxis(""), label: t("secondsInCycle")}]});
    } else {
      const pcd = uPlot.join([
        [cyc.map((c) => secs(c.cycle_start)), cyc.map((c) => c.green_seconds), cyc.map((c) => c.yellow_seconds), cyc.map((c) => c.cycle_seconds)],
        [bins.map((b) => secs(b.bin_start)), bins.map((b) => b.arrivals_on_green_per_cycle), bins.map((b) => b.arrivals_on_red_per_cycle)]]);
      plot(grid, `${t("pcd")} · ${t("phase")} ${ph.phase}`, pcd, [
        {label: t("greenStart"), stroke: "#16a34a", width: 2, value: val, spanGaps: true},
        {label: t("yellowStart"), stroke: "#ca8a04", width: 2, value: val, spanGaps: true},
        {label: t("cycleLength"), stroke: "#dc2626", width: 2, value: val, spanGaps: true},
        {label: t("aogPerCycle"), stroke: "#15803d", scale: "n", width: 0, points: {show: true, size: 8, fill: "#15803d"}, value: val},
        {label: t("aorPerCycle"), stroke: "#b91c1c", scale: "n", width: 0, points: {show: true, size: 8, fill: "#b91c1c"}, value: val}],
      {axes: [timeAxis(), numAxis(""), {scale: "n", side: 1, grid: {show: false}, values: (u, vals) => vals.map((x) => fmtNumber(x))}]});
    }
    const sc = ph.split_monitor.cycles, sb = ph.split_monitor.bins;
    const split = uPlot.join([[sc.map((c) => secs(c.cycle_start)), sc.map((c) => c.split_seconds)],
      [sb.map((b) => secs(b.bin_start)), sb.map((b) => b.split_seconds_avg), sb.map((b) => b.split_seconds_max)]]);
    plot(grid, `${t("splitMonitor")} · ${t("phase")} ${ph.phase}`, split, [
      {label: t("split"), stroke: "#2563eb", width: 0, points: {show: true, size: 7, fill: "#2563eb"}, value: val},
      {label: t("splitAvg"), stroke: "#64748b", width: 1.5, value: val, spanGaps: true},
      {label: t("splitMax"), stroke: "#94a3b8", dash: [4, 4], width: 1.5, value: val, spanGaps: true}]);
    const tb = ph.terminations.bins;
    const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({size: [0.25, 40]}) : undefined;
    // each kind's bar at its own place within the bin (gap-outs first), so that bars of a bin never overlap
    const at = (off) => tb.map((b) => secs(b.bin_start) + off);
    plot(grid, `${t("terminations")} · ${t("phase")} ${ph.phase}`,
      uPlot.join([[at(150), tb.map((b) => b.gap_outs)], [at(450), tb.map((b) => b.max_outs)], [at(750), tb.map((b) => b.force_offs)]]), [
        {label: t("gapOuts"), stroke: "#16a34a", fill: "#16a34a88", paths: bars, value: val},
        {label: t("maxOuts"), stroke: "#dc2626", fill: "#dc262688", paths: bars, value: val},
        {label: t("forceOffs"), stroke: "#2563eb", fill: "#2563eb88", paths: bars, value: val}]);
    const ended = ph.terminations.cycles || [];
    if (ended.length) {
      // each cycle's termination at its time, one lane per kind (ATSPM's phase termination chart)
      const lanes = {gap_out: 1, max_out: 2, force_off: 3};
      const by = (kind) => { const xs = [...new Set(ended.filter((x) => x.termination === kind).map((x) => secs(x.at)))].sort((a, b) => a - b); return [xs, xs.map(() => lanes[kind])]; };
      const laneName = {1: t("gapOuts"), 2: t("maxOuts"), 3: t("forceOffs")};
      const mark = (fill) => ({show: true, size: 8, fill, stroke: fill});
      plot(grid, `${t("terminationsPerCycle")} · ${t("phase")} ${ph.phase}`, uPlot.join([by("gap_out"), by("max_out"), by("force_off")]), [
        {label: t("gapOuts"), stroke: "#16a34a", width: 0, paths: () => null, points: mark("#16a34a"), value: (u, y) => (y ? laneName[y] : "–")},
        {label: t("maxOuts"), stroke: "#dc2626", width: 0, paths: () => null, points: mark("#dc2626"), value: (u, y) => (y ? laneName[y] : "–")},
        {label: t("forceOffs"), stroke: "#2563eb", width: 0, paths: () => null, points: mark("#2563eb"), value: (u, y) => (y ? laneName[y] : "–")}],
      {scales: {x: {time: true, range: xRange([ended.map((x) => secs(x.at)).sort((a, b) => a - b)], true)}, y: {range: [0.5, 3.5]}},
        axes: [timeAxis(), {size: 80, splits: () => [1, 2, 3], values: (u, vals) => vals.map((v) => laneName[v] || "")}]});
    }
  }
}

// Multi-series history with threshold bands --------------------------------------------------------------------
function bandsPlugin(thresholds, direction) {
  // Shade the warning and critical ranges of the KPI's definition behind the series.
  return {hooks: {drawClear: (u) => {
    const {warning: w, critical: c} = thresholds || {};
    if ((w === null || w === undefined) && (c === null || c === undefined)) return;
    const ctx = u.ctx, {left, top, width, height} = u.bbox;
    const y = (v) => u.valToPos(v, "y", true);
    const fill = (a, b, color) => {
      const y1 = Math.max(top, Math.min(top + height, y(a))), y2 = Math.max(top, Math.min(top + height, y(b)));
      ctx.fillStyle = color;
      ctx.fillRect(left, Math.min(y1, y2), width, Math.abs(y2 - y1));
    };
    const lo = u.scales.y.min, hi = u.scales.y.max;
    ctx.save();
    if (direction === "higher") {
      if (c !== null && c !== undefined) fill(lo, c, "rgba(214,69,69,0.16)");
      if (w !== null && w !== undefined) fill(c ?? lo, w, "rgba(217,162,27,0.18)");
    } else if (direction === "lower") {
      if (c !== null && c !== undefined) fill(c, hi, "rgba(214,69,69,0.16)");
      if (w !== null && w !== undefined) fill(w, c ?? hi, "rgba(217,162,27,0.18)");
    }
    ctx.restore();
  }}};
}

// #history[/<kpi>[/<area>,<area>...]]: the chart of that KPI for those areas (an area page's KPI rows link here)
async function renderCompare(kpiId, areaCodes) {
  const v = view();
  v.dataset.page = "history";
  const kpiSel = el("select", {id: "cmp-kpi"}, ...Object.keys(S.defs).sort((a, b) => kpiName(a).localeCompare(kpiName(b), locale()))
    .map((id) => el("option", {value: id}, kpiName(id))));
  const areaSel = el("select", {id: "cmp-areas", multiple: "", size: "6"}, el("option", {value: "HN", selected: ""}, t("city")),
    ...S.districts.map((d) => el("option", {value: d.code}, d.name)));
  const range = el("select", {id: "cmp-range"}, ...[["24", "h24"], ["168", "d7"], ["720", "d30"]].map(([h, k]) => el("option", {value: h}, t(k))));
  const prev = el("input", {id: "cmp-previous", type: "checkbox"});
  const chart = el("div", {id: "cmp-chart", class: "chart-box"});
  fill(v, head(t("compare")),
    el("div", {class: "row compare-form"}, el("label", {}, `${t("kpis")} `, kpiSel), el("label", {}, `${t("areas")} `, areaSel),
      el("label", {}, range), el("label", {}, prev, ` ${t("previousPeriod")}`),
      el("button", {id: "cmp-show", type: "button", on: {click: () => drawCompare()}}, t("show")),
      el("button", {id: "cmp-export", type: "button", on: {click: () => exportTable("compare")}}, t("exportCsv"))),
    chart);
  const first = kpiId || ($("history-kpi") && $("history-kpi").value);
  if (first) kpiSel.value = first;
  if (areaCodes) {
    const wanted = new Set(["HN", ...areaCodes.split(",")]);
    for (const o of areaSel.options) o.selected = wanted.has(o.value);
  }
  await drawCompare();
}

async function drawCompare() {
  const kpi = $("cmp-kpi").value;
  if (!kpi) return;
  const scopes = [...$("cmp-areas").selectedOptions].map((o) => o.value);
  const hours = Number($("cmp-range").value);
  const to = new Date(), from = new Date(to.getTime() - hours * 3600e3);
  const params = new URLSearchParams({kpi, from: from.toISOString(), to: to.toISOString(), compare: $("cmp-previous").checked ? "previous" : "none"});
  for (const s of scopes.length ? scopes : ["HN"]) params.append("scope", s);
  const body = await api(`/v1/history?${params}`);
  S.exports.compare = {name: `history-${kpi}-${(scopes.length ? scopes : ["HN"]).join("+")}`, items: body.rows};
  const unit = body.unit || "";
  const parts = body.series.map((s) => [s.points.map((p) => secs(p.shown_at)), s.points.map((p) => p.value)]);
  const data = parts.length ? uPlot.join(parts) : [[]];
  const chart = $("cmp-chart");
  destroyCharts();
  chart.replaceChildren();
  chart.dataset.series = String(body.series.length);
  chart.dataset.points = String(body.rows.length);
  const th = body.thresholds || {};
  const values = body.rows.map((r) => r.value).filter((x) => x !== null);
  const levels = [th.warning, th.critical].filter((x) => x !== null && x !== undefined);
  const all = [...values, ...levels];
  const lo = all.length ? Math.min(...all) : 0, hi = all.length ? Math.max(...all) : 1, pad = (hi - lo || 1) * 0.08;
  const yfmt = (u, x) => (x === null || x === undefined ? "–" : fmt(x, unit));
  const opts = {width: Math.max(300, chart.clientWidth || 800), height: 320,
    title: `${kpiName(kpi)} · ${t("window")} ${windowName(body.window_seconds)} · ${t(`step_${body.step}`)}`,
    scales: {x: {time: true, range: () => [from.getTime() / 1000, to.getTime() / 1000]}, y: {range: () => [lo - pad, hi + pad]}},
    axes: [{values: (u, vals) => vals.map((x) => (hours > 48 ? df({day: "2-digit", month: "2-digit"}) : df({hour: "2-digit", minute: "2-digit"})).format(new Date(x * 1000)))},
      {values: (u, vals) => vals.map((x) => fmtNumber(x, unit)), size: 70}],
    series: [{label: t("time"), value: (u, x) => (x === null ? "–" : fmtDateTime(x * 1000))},
      // an area's previous period in its own colour, dashed
      ...body.series.map((s) => ({label: `${areaName(s.scope_code)} · ${t(s.period)}`,
        stroke: COLORS[[...new Set(body.series.map((x) => x.scope_code))].indexOf(s.scope_code) % COLORS.length],
        dash: s.period === "previous" ? [6, 4] : undefined, width: 2, spanGaps: true, value: yfmt}))],
    plugins: [bandsPlugin(th, body.direction)]};
  V.charts.push(new uPlot(opts, data, chart));
  chart.append(el("div", {class: "legend-bands muted"},
    levels.length ? el("span", {class: "band band-warning"}, `${t("thresholdWarning")}: ${fmt(th.warning, unit)}`) : null,
    th.critical !== null && th.critical !== undefined ? el("span", {class: "band band-critical"}, `${t("thresholdCritical")}: ${fmt(th.critical, unit)}`) : null));
}

// Daily report -----------------------------------------------------------------------------------------------
function yesterday() {
  const d = new Date(Date.now() + 7 * 3600e3 - 86400e3);  // Hanoi (UTC+7, no daylight saving)
  return d.toISOString().slice(0, 10);
}
async function renderReport(date) {
  const day = date || yesterday();
  const r = await api(`/v1/reports/daily?date=${encodeURIComponent(day)}`);
  S.exports.report = {name: `daily-report-${r.date}`, items: r.kpis};
  const v = view();
  v.dataset.page = "report";
  const input = el("input", {id: "report-date", type: "date", value: r.date,
    on: {change: (e) => { location.hash = `#report/daily/${e.target.value}`; }}});
  const name = (row) => (S.lang === "vi" ? row.name_vi : row.name_en);
  const byDomain = {};
  for (const k of r.kpis) (byDomain[k.domain] = byDomain[k.domain] || []).push(k);
  fill(v, 
    head(`${t("dailyReport")} · ${df({dateStyle: "full"}).format(new Date(`${r.date}T12:00:00+07:00`))}`,
      el("label", {class: "no-print"}, `${t("date")} `, input),
      el("button", {id: "report-print", type: "button", class: "no-print", on: {click: () => window.print()}}, t("print")),
      el("button", {id: "report-export", type: "button", class: "no-print", on: {click: () => exportTable("report")}}, t("exportCsv"))),
    el("div", {class: "report-summary"},
      el("div", {class: "stat"}, el("div", {class: "muted"}, t("alarmsRaised")), el("div", {id: "report-alarms", class: "big"}, fmtNumber(r.alarms_total))),
      ...r.alarms_by_domain.map((a) => el("div", {class: "stat"}, el("div", {class: "muted"}, domainName(a.domain)), el("div", {class: "big"}, fmtNumber(a.raised))))),
    el("h3", {}, t("worstAreas")),
    table("report-worst", [t("area"), t("criticalKpis"), t("warningKpis"), t("alarmsRaised")],
      r.worst_areas.map((a) => el("tr", {}, el("td", {}, link(areaHref(a.scope_code), a.area_name || a.scope_code)),
        el("td", {}, fmtNumber(a.critical)), el("td", {}, fmtNumber(a.warning)), el("td", {}, fmtNumber(a.alarms))))),
    ...Object.entries(byDomain).sort().flatMap(([domain, rows]) => [el("h3", {}, domainName(domain)),
      table(`report-${domain}`, [t("kpis"), t("area"), t("value"), t("minValue"), t("maxValue"), t("basis"), t("status")],
        rows.map((k) => el("tr", {data: {kpi: k.kpi, scope: k.scope_code}}, el("td", {}, name(k)),
          el("td", {}, k.scope_level === "city" ? t("city") : k.area_name || k.scope_code),
          el("td", {}, fmt(k.value, k.unit)), el("td", {}, fmt(k.min, k.unit)), el("td", {}, fmt(k.max, k.unit)),
          el("td", {}, k.basis === "day_window" ? t("dayWindow") : t("meanOfWindows")), el("td", {}, statusBadge(k.status)))))]),
    r.kpis.length ? null : el("p", {class: "empty"}, t("noData")));
}

// Navigation -------------------------------------------------------------------------------------------------
function addNav() {
  const nav = el("nav", {class: "view-nav"},
    el("a", {href: "#history", id: "nav-history", "data-i18n": "compare"}, t("compare")),
    el("a", {href: "#report/daily", id: "nav-report", "data-i18n": "dailyReport"}, t("dailyReport")));
  document.querySelector("header .controls").prepend(nav);
}

// Charts follow the page's width (a laptop, a wall screen, the print preview).
let resizing = null;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => {
    for (const c of V.charts) c.setSize({width: Math.max(300, c.root.parentElement.clientWidth - 4), height: c.height});
  }, 150);
});

window.IOC_ASSETS = {fillAssetsInAlarm, assetHref, areaHref};
document.addEventListener("DOMContentLoaded", () => {
  addNav();
  window.addEventListener("hashchange", route);
  // a page opened before the key was given; a page redrawn in the new language (when the page has these controls)
  if ($("key-form")) $("key-form").addEventListener("submit", () => setTimeout(route, 500));
  if ($("lang")) $("lang").addEventListener("click", () => { if (V.route) setTimeout(route, 0); });
  if (location.hash) setTimeout(route, 0);
});
