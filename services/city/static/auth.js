// Sign-in and roles of the console (docs/console.md, "Sign-in and roles"). The session lives on the server; the
// browser holds only its HttpOnly cookie, which this script cannot read. The CSRF token of the session is kept
// in this page's memory only (never in localStorage or a URL) and sent in X-CSRF-Token on state-changing calls.
// Role-scoped views: <body> gets a class may-<scope> per scope held; auth.css hides what needs another
// (an element marked data-needs="city:admin" and the like). The server refuses those actions anyway.
"use strict";

Object.assign(I18N.vi, {
  signIn: "Đăng nhập", signInWith: "Đăng nhập qua", signOut: "Đăng xuất", username: "Tên đăng nhập", password: "Mật khẩu",
  signInFailed: "Sai tên đăng nhập hoặc mật khẩu.", signInThrottled: "Đăng nhập sai quá nhiều lần; thử lại sau.",
  sessionEnded: "Phiên làm việc đã hết hạn; vui lòng đăng nhập lại.", operators: "Tài khoản vận hành",
  role: "Vai trò", role_leader: "Lãnh đạo", role_supervisor: "Giám sát viên", role_operator: "Điều hành viên",
  role_administrator: "Quản trị viên", role_admin: "Quản trị viên", saveOperator: "Lưu tài khoản",
  disable: "Vô hiệu hóa", disabled: "Đã vô hiệu hóa", sessions: "Phiên đang mở", saved: "Đã lưu",
});
Object.assign(I18N.en, {
  signIn: "Sign in", signInWith: "Sign in with", signOut: "Sign out", username: "User name", password: "Password",
  signInFailed: "Unknown user name or wrong password.", signInThrottled: "Too many failed sign-ins; try again later.",
  sessionEnded: "Your session has ended; please sign in again.", operators: "Console accounts",
  role: "Role", role_leader: "Leader", role_supervisor: "Supervisor", role_operator: "Operator",
  role_administrator: "Administrator", role_admin: "Administrator", saveOperator: "Save account",
  disable: "Disable", disabled: "Disabled", sessions: "Live sessions", saved: "Saved",
});

const IOC_AUTH = (() => {
  const SCOPES = ["city:read", "city:operate", "city:supervise", "city:admin", "archive:read", "platform:read"];
  let who = null;  // {principal_id, role, scopes, csrf_token, csrf_header}
  let onStart = null;
  // What earlier versions kept there: a key in localStorage is a secret any script of the origin can read.
  localStorage.removeItem("ioc.apiKey");

  const signedIn = () => who !== null;
  const may = (scope) => {
    if (!who) return false;
    const domain = scope.split(":")[0];
    return who.scopes.includes("*") || who.scopes.includes(scope) || who.scopes.includes(`${domain}:*`);
  };
  const headers = (method) => {
    const m = (method || "GET").toUpperCase();
    return who && who.csrf_token && !["GET", "HEAD", "OPTIONS"].includes(m) ? {[who.csrf_header]: who.csrf_token} : {};
  };

  function show(state) {
    document.body.classList.toggle("signed-out", state === null);
    for (const s of SCOPES) document.body.classList.toggle(`may-${s.replace(":", "-")}`, may(s));
    if (state) {
      $("who-name").textContent = state.username || state.principal_id;
      $("who-role").dataset.i18n = `role_${state.role}`;
      $("who-role").textContent = t(`role_${state.role}`);
      $("who").title = state.scopes.join(" ");
    } else {
      $("sign-in-password").value = "";
      $("sign-in-user").focus();
    }
  }

  async function whoAmI() {
    const r = await fetch("/v1/session");
    return r.ok ? r.json() : null;
  }

  function stopStreams() {
    if (S.source) { S.source.close(); S.source = null; }
    if (S.tail) { S.tail.close(); S.tail = null; $("tail-toggle").textContent = t("start"); }
    setConn("off");
  }

  // A 401 anywhere: the session expired or ended; back to the sign-in form.
  function expired() {
    if (!who) return;
    who = null;
    stopStreams();
    show(null);
    const err = $("sign-in-error");
    err.textContent = t("sessionEnded");
    err.hidden = false;
  }

  async function recheck() {
    if (!who) return;
    const now = await whoAmI().catch(() => who);  // a network error is no sign-out
    if (!now) expired(); else who = now;
  }

  async function signIn(e) {
    e.preventDefault();
    const err = $("sign-in-error");
    err.hidden = true;
    const r = await fetch("/v1/session", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({username: $("sign-in-user").value.trim(), password: $("sign-in-password").value})});
    $("sign-in-password").value = "";
    if (!r.ok) {
      err.textContent = r.status === 429 ? t("signInThrottled") : t("signInFailed");
      err.hidden = false;
      return;
    }
    who = await r.json();
    show(who);
    showMessage("");
    if (onStart) await onStart();
    loadOperators();
  }

  async function signOut() {
    stopStreams();
    await fetch("/v1/session", {method: "DELETE", headers: headers("DELETE")}).catch(() => {});
    who = null;
    show(null);
  }

  // Console accounts (administrators) ------------------------------------------------------------------------
  async function loadOperators() {
    if (!may("city:admin")) return;
    let body;
    try { body = await api("/v1/operators"); } catch (e) { return; }
    $("operators").replaceChildren(
      el("tr", {}, ...["username", "role", "state", "sessions", ""].map((k) => el("th", {}, k ? t(k) : ""))),
      ...body.items.map((o) => el("tr", {data: {operator: o.username}},
        el("td", {}, o.username), el("td", {}, t(`role_${o.role}`)),
        el("td", {}, o.disabled ? t("disabled") : ""), el("td", {}, fmtNumber(o.sessions)),
        el("td", {class: "actions"}, o.disabled || o.id === who.principal_id ? null : el("button", {type: "button",
          class: "disable", on: {click: () => api(`/v1/operators/${encodeURIComponent(o.id)}/disable`,
            {method: "POST"}).then(loadOperators, () => {})}}, t("disable"))))));
  }

  async function saveOperator(e) {
    e.preventDefault();
    const body = {username: $("operator-username").value.trim(), role: $("operator-role").value};
    if ($("operator-password").value) body.password = $("operator-password").value;
    try {
      await api("/v1/operators", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    } catch (err) { return; }
    $("operator-password").value = "";
    $("operator-status").textContent = t("saved");
    loadOperators();
  }

  async function start(fn) {
    onStart = fn;
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("operator-form").addEventListener("submit", saveOperator);
    $("lang").addEventListener("click", () => { if (who) loadOperators(); });
    who = await whoAmI().catch(() => null);
    show(who);
    // the deployment's identity provider, when it has one (docs/console.md)
    const ways = await fetch("/v1/session/providers").then((r) => r.json()).catch(() => null);
    if (ways && ways.oidc.enabled) {
      $("sign-in-oidc-label").textContent = ways.oidc.label;
      $("sign-in-oidc").hidden = false;
    }
    if (who) { await onStart(); loadOperators(); }
  }

  return {start, signedIn, may, headers, expired, recheck};
})();
window.IOC_AUTH = IOC_AUTH;
