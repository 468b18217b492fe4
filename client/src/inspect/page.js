// The inspector's page: polls /api/requests, shows one request in detail, replays it. Every
// value is put in the page as text (textContent), never as HTML.
"use strict";
let selected = null;
let shownStatus = null;
let entries = [];

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function fields(table, headers) {
  table.replaceChildren();
  for (const [name, value] of headers || []) {
    const tr = el("tr");
    tr.append(el("td", name), el("td", value));
    table.append(tr);
  }
}

function body(pre, msg) {
  if (!msg) { pre.textContent = "(no answer yet)"; return; }
  let text = msg.body;
  if (msg.cut) text += "\n… cut: " + msg.body_size + " bytes in all, the first 65536 kept";
  pre.textContent = text || "(empty body)";
}

// Shows entry `id` (fetched whole: the list leaves the bodies out).
async function open(id) {
  const r = await fetch("/api/requests/" + id);
  if (r.ok) show(await r.json());
}

function show(e) {
  selected = e.id;
  shownStatus = e.status;
  document.getElementById("detail").hidden = false;
  document.getElementById("title").textContent =
    "#" + e.id + " " + e.method + " " + e.path + (e.replay_of ? " (replay of #" + e.replay_of + ")" : "");
  fields(document.getElementById("req-headers"), e.request.headers);
  body(document.getElementById("req-body"), e.request);
  fields(document.getElementById("resp-headers"), e.response ? e.response.headers : []);
  body(document.getElementById("resp-body"), e.response);
  document.getElementById("e-method").value = e.method;
  document.getElementById("e-path").value = e.path;
  document.getElementById("e-body").value = e.request.body;
  for (const tr of document.querySelectorAll("#requests tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.id === String(e.id));
  }
}

function render() {
  const tbody = document.querySelector("#requests tbody");
  tbody.replaceChildren();
  document.getElementById("empty").hidden = entries.length > 0;
  for (const e of entries) {
    const tr = el("tr", undefined, e.replay_of ? "replay" : "");
    tr.dataset.id = String(e.id);
    const status = e.status === null ? "…" : String(e.status);
    tr.append(
      el("td", new Date(e.at_ms).toLocaleTimeString()),
      el("td", e.socket),
      el("td", e.method),
      el("td", e.path, "path"),
      el("td", status, e.status ? "s" + String(e.status)[0] : ""),
      el("td", e.duration_ms === null ? "" : e.duration_ms + " ms"),
    );
    if (e.id === selected) tr.classList.add("selected");
    tr.addEventListener("click", () => open(e.id));
    tbody.append(tr);
  }
}

async function refresh() {
  try {
    const r = await fetch("/api/requests");
    if (r.ok) {
      entries = await r.json();
      render();
      const current = entries.find((e) => e.id === selected);
      // An answer still coming: shown again once it is complete.
      if (current && shownStatus !== current.status && !document.getElementById("detail").contains(document.activeElement)) {
        open(current.id);
      }
    }
  } catch (_) { /* the client stopped: keep what is shown */ }
}

async function replay(edit) {
  const result = document.getElementById("replay-result");
  result.textContent = "sending…";
  const r = await fetch("/api/requests/" + selected + "/replay", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(edit || {}),
  });
  const answer = await r.json();
  if (r.ok) {
    result.textContent = "replayed as #" + answer.id + ": " + (answer.status === null ? "no answer" : answer.status);
    await refresh();
    show(answer);
  } else {
    result.textContent = answer.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("replay").addEventListener("click", () => replay());
  document.getElementById("edit").addEventListener("click", () => {
    const f = document.getElementById("editor");
    f.hidden = !f.hidden;
  });
  document.getElementById("editor").addEventListener("submit", (ev) => {
    ev.preventDefault();
    replay({
      method: document.getElementById("e-method").value,
      path: document.getElementById("e-path").value,
      body: document.getElementById("e-body").value,
    });
  });
  document.getElementById("clear").addEventListener("click", async () => {
    await fetch("/api/requests", { method: "DELETE", headers: { "content-type": "application/json" } });
    selected = null;
    document.getElementById("detail").hidden = true;
    refresh();
  });
  refresh();
  setInterval(refresh, 1000);
});
