// Incident workflow panel of the console (docs/console.md, "Incident workflow"): filters, the list, and one
// incident's detail: assignee, escalation, the standard operating procedure's checklist, comments, history.
// Uses app.js's helpers (api, el, t, formatting); every call goes through api(), so it signs in as the page does.
"use strict";

Object.assign(I18N.vi, {
  workflow: "Xử lý sự cố", allStates: "Tất cả", open: "Đang mở", unacknowledged: "Chưa xác nhận",
  closed: "Đã đóng", allDomains: "Mọi lĩnh vực", allSeverities: "Mọi mức", allAreas: "Mọi khu vực",
  anyone: "Mọi người", me: "Của tôi", unassigned: "Chưa giao", assignee: "Người xử lý", escalation: "Chuyển cấp",
  level: "Cấp", assign: "Giao", procedure: "Quy trình xử lý (SOP)", comments: "Ghi chú", historyLog: "Nhật ký",
  addComment: "Thêm ghi chú", commentHint: "Không ghi thông tin cá nhân của người dân (số định danh, điện thoại, email).",
  optional: "không bắt buộc", doneBy: "xong bởi", markDone: "Hoàn thành", clearIncident: "Đóng sự cố",
  overrideReason: "Lý do bỏ qua quy trình (trưởng ca)", pickIncident: "Chọn một sự cố để xem chi tiết.",
  who: "Người thực hiện", action: "Hành động", missingSteps: "Còn bước bắt buộc chưa xong",
  a_assign: "Giao cho {to}", a_reassign: "Chuyển từ {from} sang {to}", a_comment: "Thêm ghi chú",
  a_step: "Hoàn thành bước: {step}", a_clear: "Đóng sự cố", a_override: "Đóng sự cố bỏ qua quy trình: {reason}",
  a_escalate: "Báo cáo lên cấp {to}", a_ack: "Xác nhận cảnh báo", a_alarmClear: "Xóa cảnh báo",
  a_shelve: "Tạm ẩn cảnh báo", a_unshelve: "Hiện lại cảnh báo", a_shelfExpired: "Hết hạn tạm ẩn, cảnh báo hiện lại",
  system: "Hệ thống",
});
Object.assign(I18N.en, {
  workflow: "Incident workflow", allStates: "All", open: "Open", unacknowledged: "Unacknowledged",
  closed: "Closed", allDomains: "All domains", allSeverities: "All severities", allAreas: "All areas",
  anyone: "Anyone", me: "Mine", unassigned: "Unassigned", assignee: "Assignee", escalation: "Escalation",
  level: "Level", assign: "Assign", procedure: "Standard operating procedure", comments: "Comments", historyLog: "History",
  addComment: "Add comment", commentHint: "No personal data of citizens (id numbers, phone numbers, e-mail).",
  optional: "optional", doneBy: "done by", markDone: "Done", clearIncident: "Clear incident",
  overrideReason: "Reason to skip the procedure (supervisor)", pickIncident: "Pick an incident to see its detail.",
  who: "Who", action: "Action", missingSteps: "Mandatory steps still open",
  a_assign: "Assigned to {to}", a_reassign: "Reassigned from {from} to {to}", a_comment: "Commented",
  a_step: "Step done: {step}", a_clear: "Incident cleared", a_override: "Cleared, procedure overridden: {reason}",
  a_escalate: "Escalated to level {to}", a_ack: "Alarm acknowledged", a_alarmClear: "Alarm cleared",
  a_shelve: "Alarm shelved", a_unshelve: "Alarm unshelved", a_shelfExpired: "Shelf expired, alarm back",
  system: "System",
});

const IS = {
  filters: {state: "open", domain: "", severity: "", area: "", assignee: ""},
  selected: null, assignees: [], items: [],
};
const maySupervise = () => typeof IOC_AUTH === "undefined" || !IOC_AUTH.may || IOC_AUTH.may("city:supervise");
const fillTemplate = (s, vars) => s.replace(/\{(\w+)\}/g, (_, k) => (vars[k] ?? ""));
const who = (id) => (id && id.startsWith("system:") ? t("system") : id || "–");
const tr = (o) => (o ? o[S.lang] || o.en : "");

function incSelect(id, options, value, onChange) {
  const sel = el("select", {id, on: {change: (e) => onChange(e.target.value)}},
    ...options.map(([v, label]) => el("option", {value: v}, label)));
  sel.value = value;
  return sel;
}

function renderFilters() {
  const f = IS.filters;
  const set = (k) => (v) => { f[k] = v; loadIncidents(); };
  const domains = Object.keys(DOMAINS[S.lang]).filter((d) => d !== "citytest" || f.domain === "citytest");
  $("inc-filters").replaceChildren(
    incSelect("inc-state", ["open", "unacknowledged", "acknowledged", "closed", "all"]
      .map((s) => [s, t(s === "all" ? "allStates" : s)]), f.state, set("state")),
    incSelect("inc-domain", [["", t("allDomains")], ...domains.map((d) => [d, domainName(d)])], f.domain, set("domain")),
    incSelect("inc-severity", [["", t("allSeverities")], ...["critical", "major", "minor", "warning"]
      .map((s) => [s, t(s === "critical" || s === "warning" ? `${s}_sev` : s)])], f.severity, set("severity")),
    incSelect("inc-area", [["", t("allAreas")], ...S.districts.map((d) => [d.code, d.name])], f.area, set("area")),
    incSelect("inc-assignee", [["", t("anyone")], ["me", t("me")], ["none", t("unassigned")],
      ...IS.assignees.map((p) => [p.id, p.display_name || p.id])], f.assignee, set("assignee")));
}

async function loadIncidents() {
  const params = new URLSearchParams({limit: "100"});
  for (const [k, v] of Object.entries(IS.filters)) if (v) params.set(k, v);
  let body;
  try { body = await api(`/v1/incidents?${params}`); } catch (e) { return; }
  IS.items = body.items;
  const head = el("tr", {}, ...["severity", "incident", "district", "assignee", "escalation", "state", "openedAt"]
    .map((k) => el("th", {}, t(k))));
  const rows = body.items.map((i) => el("tr", {
    class: `inc-row${IS.selected === i.incident_id ? " selected" : ""}`,
    data: {incident: i.incident_id, state: i.state, assignee: i.assignee || "", escalation: String(i.escalation_level)},
    on: {click: () => openIncident(i.incident_id)}},
  el("td", {}, i.severity ? sevBadge(i.severity) : ""), el("td", {}, incidentName(i)),
  el("td", {}, districtName(i.district)), el("td", {class: "inc-assignee"}, i.assignee || t("unassigned")),
  el("td", {}, i.escalation_level ? el("span", {class: "esc"}, `${t("level")} ${i.escalation_level}`) : ""),
  el("td", {}, i.state === "closed" ? t("closed") : i.unacknowledged_alarms ? t("unacknowledged") : t("acknowledged")),
  el("td", {}, fmtDateTime(instant(i.opened_at)))));
  $("inc-list").replaceChildren(head, ...(rows.length ? rows : [el("tr", {}, el("td", {class: "empty", colspan: "7"}, t("none")))]));
}

// An alarm named as the console names it (its id is domain:type:source): the type's name and the source.
function alarmLabel(alarmId) {
  const [, type, ...source] = String(alarmId).split(":");
  return type ? `${alarmTypeName(type)} · ${source.join(":")}` : alarmId;
}

function historyText(h, steps) {
  const d = h.detail || {};
  const step = (steps.find((s) => s.id === d.step) || {}).text;
  switch (h.action) {
    case "incident.assign": return fillTemplate(t("a_assign"), d);
    case "incident.reassign": return fillTemplate(t("a_reassign"), d);
    case "incident.comment": return t("a_comment");
    case "incident.sop_step": return fillTemplate(t("a_step"), {step: step ? tr(step) : d.step});
    case "incident.clear": return t("a_clear");
    case "incident.clear_override": return fillTemplate(t("a_override"), d);
    case "incident.escalate": return fillTemplate(t("a_escalate"), d);
    case "alarm.acknowledge": return `${t("a_ack")}: ${alarmLabel(d.alarm_id || h.target)}`;
    case "alarm.clear": return `${t("a_alarmClear")}: ${alarmLabel(d.alarm_id || h.target)}`;
    case "alarm.shelve": return `${t("a_shelve")}: ${alarmLabel(d.alarm_id || h.target)}`;
    case "alarm.unshelve": return `${t("a_unshelve")}: ${alarmLabel(d.alarm_id || h.target)}`;
    case "alarm.shelf_expired": return `${t("a_shelfExpired")}: ${alarmLabel(d.alarm_id || h.target)}`;
    default: return h.action;
  }
}

async function incidentAction(path, body) {
  const opts = body ? {method: "POST", body: JSON.stringify(body), headers: {"Content-Type": "application/json"}}
    : {method: "POST"};
  try { await api(path, opts); showMessage(""); } catch (e) { return false; }
  await Promise.all([loadIncidents(), IS.selected ? openIncident(IS.selected, false) : null]);
  return true;
}

// One alarm of the incident: acknowledge, shelve for an hour (it comes back by itself), unshelve, or clear it.
function incidentAlarmRow(a, open) {
  const path = `/v1/alarms/${encodeURIComponent(a.alarm_id)}`;
  const shelved = a.shelved_until && instant(a.shelved_until) > Date.now();
  const state = shelved ? `${t("shelved")} → ${fmtTime(instant(a.shelved_until))}` : t(a.state);
  const act = (suffix, body) => incidentAction(`${path}/${suffix}`, body);
  return el("tr", {data: {alarm: a.alarm_id, state: a.state, shelved: String(Boolean(shelved))}, title: a.message},
    el("td", {}, sevBadge(a.severity)), el("td", {}, alarmTypeName(a.alarm_type)), el("td", {}, alarmText(a)),
    el("td", {class: "state"}, state),
    el("td", {class: "actions"}, ...(open && a.state !== "cleared" ? [
      a.state === "active" ? el("button", {type: "button", class: "ack", on: {click: () => act("acknowledge")}}, t("ack")) : null,
      shelved ? el("button", {type: "button", class: "unshelve", on: {click: () => act("unshelve")}}, t("unshelve"))
        : el("button", {type: "button", class: "shelve", on: {click: () => act("shelve", {minutes: 60, reason: "console"})}}, t("shelve")),
    ] : [])));
}

async function openIncident(id, scroll = true) {
  IS.selected = id;
  document.querySelectorAll("#inc-list tr[data-incident]").forEach((r) => r.classList.toggle("selected", r.dataset.incident === id));
  let d, hist;
  try {
    [d, hist] = await Promise.all([api(`/v1/incidents/${encodeURIComponent(id)}`),
      api(`/v1/incidents/${encodeURIComponent(id)}/history`)]);
  } catch (e) { return; }
  if (IS.selected !== id) return;
  const path = `/v1/incidents/${encodeURIComponent(id)}`;
  const steps = d.procedure.steps;
  const open = d.state === "open";
  const assignSel = incSelect("inc-assign-to", [["", "–"], ...IS.assignees.map((p) => [p.id, p.display_name || p.id])],
    "", () => {});
  const comment = el("textarea", {id: "inc-comment", rows: "2", maxlength: "2000", placeholder: t("commentHint")});
  const reason = el("input", {id: "inc-override", maxlength: "500", placeholder: t("overrideReason")});
  // A refresh (an alarm arrived, another action) re-renders the open panel: what the operator was choosing or
  // typing in it is carried over, with the focus, instead of being wiped under their hands.
  if (IS.rendered === id) {
    for (const [now, before] of [[assignSel, $("inc-assign-to")], [comment, $("inc-comment")], [reason, $("inc-override")]]) {
      if (before) now.value = before.value;
    }
  }
  const focused = IS.rendered === id && document.activeElement ? document.activeElement.id : null;
  IS.rendered = id;
  // (replaceChildren writes a null as the text "null": absent parts are filtered out)
  $("inc-detail").replaceChildren(...[
    el("div", {class: "detail-head"}, el("h3", {}, d.severity ? sevBadge(d.severity) : "", " ", incidentName(d)),
      el("span", {class: "muted"}, d.incident_id)),
    el("div", {class: "inc-facts"},
      el("span", {}, `${t("district")}: ${districtName(d.district)}`),
      el("span", {}, `${t("state")}: ${d.state === "closed" ? t("closed") : d.unacknowledged_alarms ? t("unacknowledged") : t("acknowledged")}`),
      el("span", {id: "inc-escalation", data: {level: String(d.escalation_level)}},
        `${t("escalation")}: ${d.escalation_level ? `${t("level")} ${d.escalation_level} · ${tr(d.escalation_name)}` : "–"}`),
      el("span", {id: "inc-assignee-now"}, `${t("assignee")}: ${d.assignee || t("unassigned")}`)),
    open && maySupervise() ? el("div", {class: "row"}, assignSel, el("button", {id: "inc-assign", type: "button",
      on: {click: () => assignSel.value && incidentAction(`${path}/assign`, {assignee: assignSel.value})}}, t("assign"))) : null,
    open ? el("div", {class: "row"},
      el("button", {id: "inc-ack", type: "button", on: {click: () => incidentAction(`${path}/acknowledge`)}}, t("ackAll")),
      maySupervise() ? reason : null,
      // with a reason: a supervisor's clear over the procedure's missing steps (audited with the reason)
      el("button", {id: "inc-clear", type: "button", on: {click: () => (reason.value.trim()
        ? incidentAction(`${path}/clear-override`, {reason: reason.value.trim()}) : incidentAction(`${path}/clear`))}},
      t("clearIncident"))) : null,
    el("h4", {}, t("alarms")),
    el("table", {id: "inc-alarms", class: "table"}, ...d.alarms.map((a) => incidentAlarmRow(a, open))),
    el("h4", {id: "inc-procedure"}, `${t("procedure")}: ${tr(d.procedure.title)}`),
    d.missing_mandatory_steps.length > 0 && open
      ? el("div", {class: "muted"}, `${t("missingSteps")}: ${d.missing_mandatory_steps.length}`) : null,
    el("ol", {id: "inc-sop", class: "sop"}, ...steps.map((s) => el("li", {
      class: s.done_at ? "done" : "", data: {step: s.id, done: String(Boolean(s.done_at))}},
    el("span", {class: "step-text"}, tr(s.text), s.mandatory ? "" : el("span", {class: "muted"}, ` (${t("optional")})`)),
    s.done_at ? el("span", {class: "muted"}, ` ✓ ${t("doneBy")} ${who(s.done_by)} · ${fmtDateTime(instant(s.done_at))}`)
      : open ? el("button", {type: "button", class: "step-done",
        on: {click: () => incidentAction(`${path}/steps/${encodeURIComponent(s.id)}`)}}, t("markDone")) : null))),
    el("h4", {}, t("comments")),
    el("ul", {id: "inc-comments", class: "comments"}, ...d.comments.map((c) => el("li", {data: {comment: String(c.id)}},
      el("span", {class: "muted"}, `${who(c.author)} · ${fmtDateTime(instant(c.at))}: `), c.text))),
    el("div", {class: "row"}, comment, el("button", {id: "inc-comment-add", type: "button", on: {click: async () => {
      if (comment.value.trim() && await incidentAction(`${path}/comments`, {text: comment.value.trim()})) $("inc-comment").value = "";
    }}}, t("addComment"))),
    el("h4", {}, t("historyLog")),
    el("table", {id: "inc-history", class: "table"},
      el("tr", {}, el("th", {}, t("time")), el("th", {}, t("who")), el("th", {}, t("action"))),
      ...hist.items.map((h) => el("tr", {data: {action: h.action}},
        el("td", {}, fmtDateTime(instant(h.at))), el("td", {}, who(h.principal)), el("td", {}, historyText(h, steps)))))]
    .filter((x) => x !== null && x !== undefined && x !== 0));
  $("inc-detail").hidden = false;
  if (focused && ["inc-assign-to", "inc-comment", "inc-override"].includes(focused)) $(focused).focus();
  if (scroll) $("inc-detail").scrollIntoView({block: "nearest"});
}

async function loadWorkflow() {
  try { IS.assignees = (await api("/v1/incident-assignees")).items; } catch (e) { IS.assignees = []; }
  renderFilters();
  await loadIncidents();
  if (IS.selected) await openIncident(IS.selected, false);
}

document.addEventListener("ioc:loaded", () => { loadWorkflow().catch(() => {}); });
document.addEventListener("ioc:alarms", () => {
  loadIncidents().then(() => (IS.selected ? openIncident(IS.selected, false) : null)).catch(() => {});
});
document.addEventListener("DOMContentLoaded", () => {
  // The incidents table of the alarms column opens the same detail.
  $("incidents").addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-incident]");
    if (row && !e.target.closest("button")) openIncident(row.dataset.incident);
  });
});
