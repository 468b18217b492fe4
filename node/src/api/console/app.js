// The mysocket console: the public REST API, called with the session cookie the node set at
// sign-in (HttpOnly: this script never sees it) and the X-Mysocket-Console header, without
// which the node ignores the cookie. Everything shown goes into the page as text.
"use strict";

const $ = (sel, root) => (root || document).querySelector(sel);
const state = { me: null, nodes: new Map(), sockets: [], timer: null, logTimer: null };

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { "X-Mysocket-Console": "1" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) {
    const msg = data && typeof data.message === "string" ? data.message : `${r.status} ${r.statusText}`;
    throw new ApiError(r.status, msg);
  }
  return data;
}

function say(text, ok) {
  const m = $("#message");
  m.textContent = text;
  m.className = ok ? "ok" : "";
  m.hidden = !text;
}

function failed(e) {
  if (e instanceof ApiError && e.status === 401 && state.me) {
    signedOut("Your session ended: sign in again.");
    return;
  }
  say(e.message || String(e), false);
}

function list(s) {
  return s.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
}

// ----- signing in and out -----

function signedOut(why) {
  state.me = null;
  state.rendered = false;
  clearInterval(state.timer);
  clearInterval(state.logTimer);
  $("#signed-in").hidden = true;
  $("#who").hidden = true;
  $("#signed-out").hidden = false;
  say(why || "", false);
  // The provider's sign-in, when the cluster has one.
  api("GET", "/cluster").then((c) => { $("#provider").hidden = !c.identity_provider; }).catch(() => {});
}

async function signedIn() {
  state.me = await api("GET", "/user/me");
  $("#who-email").textContent = state.me.email;
  $("#who").hidden = false;
  $("#signed-out").hidden = true;
  $("#signed-in").hidden = false;
  try {
    const c = await api("GET", "/cluster");
    state.nodes = new Map(c.nodes.map((n) => [n.id, n]));
  } catch (_) { /* the holder's address is then left out */ }
  await refresh();
  clearInterval(state.timer);
  clearInterval(state.logTimer);
  state.timer = setInterval(() => refresh().catch(failed), 5000);
  state.logTimer = setInterval(() => logs().catch(() => {}), 2000);
  logs().catch(() => {});
}

async function signIn(ev) {
  ev.preventDefault();
  const f = ev.target;
  try {
    await api("POST", "/console/session", { email: f.email.value, password: f.password.value });
    f.reset();
    say("", true);
    await signedIn();
  } catch (e) { say(e.message, false); }
}

async function signUp(ev) {
  ev.preventDefault();
  const f = ev.target;
  const email = f.email.value, password = f.password.value;
  try {
    await api("POST", "/user", { name: f.name.value, email, password, sshkey: f.sshkey.value.trim() });
    await api("POST", "/console/session", { email, password });
    f.reset();
    say("Account created: you are signed in.", true);
    await signedIn();
  } catch (e) { say(e.message, false); }
}

async function signOut() {
  try { await api("DELETE", "/console/session"); } catch (_) { /* signed out either way */ }
  signedOut("Signed out.");
}

// ----- sockets -----

function socketBody(f) {
  const type = f.socket_type.value;
  const web = type === "http" || type === "https";
  const body = {
    name: f.name.value.trim(),
    socket_type: type,
    rate_limit: Number(f.rate_limit.value || 0),
    ip_allow: list(f.ip_allow.value),
    ip_deny: list(f.ip_deny.value),
  };
  if (f.custom_domain.value.trim()) body.custom_domain = f.custom_domain.value.trim();
  if (web) {
    if (f.subdomain.value.trim()) body.subdomain = f.subdomain.value.trim();
    if (f.upstream_protocol.value) body.upstream_protocol = f.upstream_protocol.value;
    if (f.protected_socket.checked) {
      body.protected_socket = true;
      body.protected_username = f.protected_username.value;
      body.protected_password = f.protected_password.value;
    }
    if (f.cloud_authentication_enabled.checked) {
      body.cloud_authentication_enabled = true;
      body.cloud_authentication_email_allowed_addressses = list(f.cloud_authentication_email_allowed_addressses.value);
      body.cloud_authentication_email_allowed_domains = list(f.cloud_authentication_email_allowed_domains.value);
    }
  } else {
    if (f.port.value) body.port = Number(f.port.value);
    if (f.proxy_protocol.value) body.proxy_protocol = f.proxy_protocol.value;
  }
  return body;
}

async function createSocket(ev) {
  ev.preventDefault();
  const f = ev.target;
  try {
    // With its first tunnel, as `mysocketctl connect` makes it.
    const s = await api("POST", "/connect", socketBody(f));
    f.reset();
    showFields();
    say(`Socket ${s.name} created: ${(s.urls && s.urls[0]) || s.dnsname}`, true);
    await refresh();
  } catch (e) { say(e.message, false); }
}

function showFields() {
  const f = $("#new-socket");
  const web = f.socket_type.value === "http" || f.socket_type.value === "https";
  for (const el of f.querySelectorAll(".web")) el.hidden = !web;
  for (const el of f.querySelectorAll(".port")) el.hidden = web;
}

async function refresh() {
  const sockets = await api("GET", "/socket");
  sockets.sort((a, b) => a.name.localeCompare(b.name));
  state.sockets = sockets;
  render();
}

function holder(t) {
  if (!t.session) return null;
  const n = state.nodes.get(t.session.node_id);
  return `node ${t.session.node_id}` + (n && n.ssh_addr ? ` (${n.ssh_addr})` : "");
}

function sshCommand(s, t) {
  const at = t.tunnel_server.lastIndexOf(":");
  let host = t.tunnel_server.slice(0, at), port = t.tunnel_server.slice(at + 1);
  if (host.startsWith("[")) host = host.slice(1, -1);
  return `ssh -N -R ${t.local_port}:127.0.0.1:8000 -l ${s.user_name} -p ${port} ${host}`;
}

function options(s) {
  const o = [];
  if (s.protected_socket) o.push(`password for ${s.protected_username}`);
  if (s.cloud_authentication_enabled) {
    const who = s.cloud_authentication_email_allowed_addressses.concat(s.cloud_authentication_email_allowed_domains);
    o.push(`sign-in: ${who.join(", ") || "anyone signed in"}`);
  }
  if (s.ip_allow.length) o.push(`allow ${s.ip_allow.join(", ")}`);
  if (s.ip_deny.length) o.push(`deny ${s.ip_deny.join(", ")}`);
  if (s.rate_limit) o.push(`${s.rate_limit}/s per visitor`);
  if (s.proxy_protocol) o.push(`PROXY ${s.proxy_protocol}`);
  if (s.upstream_protocol === "h2c") o.push("HTTP/2 to the service");
  if (s.custom_domain) {
    const d = s.custom_domain;
    o.push(d.verified ? `domain ${d.name}` : `domain ${d.name} (waiting: TXT ${d.txt_name} = ${d.txt_value}, or CNAME to ${d.cname_target})`);
  }
  return o.join(" · ") || "no access rules";
}

function render() {
  const root = $("#sockets");
  const open = new Set([...root.querySelectorAll("details[open]")].map((d) => d.dataset.socket));
  const logs = new Map([...root.querySelectorAll("pre.log")].map((p) => [p.dataset.socket, p.textContent]));
  root.textContent = "";
  $("#empty").hidden = state.sockets.length > 0;
  // The form is open for a newcomer, folded away once there is something to look at.
  if (!state.rendered) $("#new-socket-box").open = state.sockets.length === 0;
  state.rendered = true;
  for (const s of state.sockets) {
    const card = $("#socket-card").content.firstElementChild.cloneNode(true);
    card.dataset.socket = s.socket_id;
    $(".name", card).textContent = s.name;
    $(".type", card).textContent = s.socket_type;
    const urls = $(".urls", card);
    for (const u of (s.urls && s.urls.length ? s.urls : [s.dnsname])) {
      const li = document.createElement("li");
      if (/^https?:\/\//.test(u)) {
        const a = document.createElement("a");
        a.href = u;
        a.textContent = u;
        a.rel = "noopener noreferrer";
        a.target = "_blank";
        li.append(a);
      } else {
        li.textContent = u;
      }
      urls.append(li);
    }
    $(".options", card).textContent = options(s);
    const body = $(".tunnels tbody", card);
    for (const t of s.tunnels) {
      const tr = document.createElement("tr");
      const cells = [t.tunnel_id, String(t.local_port), holder(t) || "no client connected"];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (i === 0) td.className = "mono";
        if (i === 2 && !t.session) td.className = "down";
        tr.append(td);
      });
      const td = document.createElement("td");
      const del = document.createElement("button");
      del.type = "button";
      del.className = "small danger delete-tunnel";
      del.textContent = "Delete";
      del.addEventListener("click", () => removeTunnel(s, t));
      td.append(del);
      tr.append(td);
      body.append(tr);
    }
    const flag = s.socket_type === "http" ? "" : ` --type ${s.socket_type}`;
    $(".cmd-ctl", card).textContent = `mysocketctl connect --name ${s.name}${flag} --port 8000`;
    $(".cmd-ssh", card).textContent = s.tunnels.length ? sshCommand(s, s.tunnels[0]) : "(add a tunnel first)";
    const details = $(".commands", card);
    details.dataset.socket = s.socket_id;
    details.open = open.has(s.socket_id);
    const log = $(".log", card);
    log.dataset.socket = s.socket_id;
    if (logs.has(s.socket_id)) log.textContent = logs.get(s.socket_id);
    $(".delete-socket", card).addEventListener("click", () => removeSocket(s));
    $(".add-tunnel", card).addEventListener("click", () => addTunnel(s));
    root.append(card);
  }
}

async function removeSocket(s) {
  if (!confirm(`Delete socket ${s.name}? Its URL stops answering.`)) return;
  try {
    await api("DELETE", `/socket/${encodeURIComponent(s.socket_id)}`);
    say(`Socket ${s.name} deleted.`, true);
    await refresh();
  } catch (e) { failed(e); }
}

async function addTunnel(s) {
  try {
    const t = await api("POST", `/socket/${encodeURIComponent(s.socket_id)}/tunnel`);
    say(`Tunnel ${t.tunnel_id} added to ${s.name}.`, true);
    await refresh();
  } catch (e) { failed(e); }
}

async function removeTunnel(s, t) {
  if (!confirm(`Delete tunnel ${t.tunnel_id} of ${s.name}?`)) return;
  try {
    await api("DELETE", `/socket/${encodeURIComponent(s.socket_id)}/tunnel/${encodeURIComponent(t.tunnel_id)}`);
    await refresh();
  } catch (e) { failed(e); }
}

// ----- the live view -----

async function logs() {
  for (const pre of document.querySelectorAll("pre.log")) {
    const id = pre.dataset.socket;
    let r;
    try { r = await api("GET", `/socket/${encodeURIComponent(id)}/log`); } catch (_) { continue; }
    const lines = [];
    for (const t of r.tunnels) {
      for (const l of t.lines) lines.push(l.trimEnd());
    }
    const text = lines.length ? lines.join("\n") : "Nothing yet.";
    if (pre.textContent !== text) {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = text;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
  }
}

// ----- start -----

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in").addEventListener("submit", signIn);
  $("#sign-up").addEventListener("submit", signUp);
  $("#sign-out").addEventListener("click", signOut);
  $("#new-socket").addEventListener("submit", createSocket);
  $("#new-socket").socket_type.addEventListener("change", showFields);
  showFields();
  signedIn().catch((e) => {
    if (e instanceof ApiError && e.status === 401) signedOut();
    else signedOut(e.message);
  });
});
