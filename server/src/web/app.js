// The page's behaviour: every call goes to /api/... with the bearer token;
// every value is put into the page as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "cohort.token";

function say(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

async function api(path, method) {
  const r = await fetch(path, {
    method: method || "GET",
    headers: { authorization: "Bearer " + sessionStorage.getItem(KEY) },
  });
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) {
    throw new Error(body.error || r.statusText);
  }
  return body;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  row.appendChild(td);
  return td;
}

function fill(id, items, render) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    render(row, item);
    body.appendChild(row);
  }
}

function button(row, label, onClick) {
  const td = cell(row, "");
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  td.appendChild(b);
}

async function loadSteward() {
  const list = (await api("/api/studies")).studies || [];
  fill("pending", list.filter((s) => s.status === "proposed"), (row, s) => {
    row.dataset.study = s.study_id;
    cell(row, s.study_id); cell(row, s.title); cell(row, s.purpose);
    cell(row, s.researcher); cell(row, s.budget); cell(row, s.approvals);
    button(row, "Approve", async () => {
      try {
        const a = await api(`/api/studies/${s.study_id}/approve`, "POST");
        say(`study ${a.study_id}: ${a.approvals} of ${a.required} approvals` + (a.approved ? ", approved" : ""));
        await loadSteward();
      } catch (e) { say(e.message, true); }
    });
  });
  fill("studies", list, (row, s) => {
    row.dataset.study = s.study_id;
    cell(row, s.study_id); cell(row, s.title); cell(row, s.status);
    // The books are absent for an account that may not see them.
    cell(row, s.remaining ?? "—"); cell(row, s.consenting); cell(row, s.queries ?? "—");
  });
  const v = await api("/api/audit/verify");
  const p = $("verification");
  p.className = v.intact ? "intact" : "broken";
  p.textContent = v.intact
    ? `hash chain intact: ${v.entries} entries, head ${v.head.slice(0, 16)}…`
    : `hash chain BROKEN at entry ${v.first_broken_seq}: ${v.first_broken_reason}`;
  const log = (await api("/api/audit?limit=50")).entries || [];
  fill("audit", log.reverse(), (row, e) => {
    cell(row, e.seq); cell(row, e.at); cell(row, e.actor);
    cell(row, e.action); cell(row, e.target); cell(row, e.purpose);
  });
}

async function loadPatient() {
  const list = (await api("/api/consents")).consents || [];
  fill("consents", list, (row, c) => {
    row.dataset.study = c.study_id;
    cell(row, c.study_id); cell(row, c.title); cell(row, (c.purposes || []).join(", "));
    cell(row, new Date(c.expires_at * 1000).toISOString().slice(0, 10));
    cell(row, c.active ? "active" : "withdrawn");
    if (c.active) {
      button(row, "Withdraw", async () => {
        try {
          const w = await api(`/api/consents/${c.study_id}/withdraw`, "POST");
          say(`withdrew from study ${w.study_id}: later queries leave your records out`);
          await loadPatient();
        } catch (e) { say(e.message, true); }
      });
    } else {
      cell(row, "");
    }
  });
  const log = (await api("/api/access-log?limit=100")).entries || [];
  fill("access", log.reverse(), (row, e) => {
    cell(row, e.at); cell(row, e.actor); cell(row, e.action); cell(row, e.target); cell(row, e.purpose);
  });
  const earned = await api("/api/compensation");
  $("earnings").textContent =
    `earned ${earned.earned}, claimed ${earned.claimed}, claimable ${earned.claimable} (${(earned.shares || []).length} share(s))`;
  fill("shares", earned.shares || [], (row, s) => {
    cell(row, s.study_id); cell(row, s.query_id); cell(row, s.amount_text); cell(row, s.claimed ? "yes" : "no");
  });
}

async function show(which) {
  $("steward").hidden = which !== "steward";
  $("patient").hidden = which !== "patient";
  $("tab-steward").setAttribute("aria-pressed", which === "steward");
  $("tab-patient").setAttribute("aria-pressed", which === "patient");
  say("");
  try {
    await (which === "steward" ? loadSteward() : loadPatient());
  } catch (e) {
    say(e.message, true);
  }
}

function signedIn(yes) {
  $("signin").hidden = yes;
  $("tabs").hidden = !yes;
  if (!yes) {
    $("steward").hidden = true;
    $("patient").hidden = true;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!/^[0-9a-f]{64}$/.test(t)) {
      say("a token is the 64 hex characters `cohort login` prints", true);
      return;
    }
    sessionStorage.setItem(KEY, t);
    $("token").value = "";
    signedIn(true);
    say("signed in; choose a view");
  });
  $("tab-steward").addEventListener("click", () => show("steward"));
  $("tab-patient").addEventListener("click", () => show("patient"));
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    signedIn(false);
    say("signed out");
  });
  signedIn(!!sessionStorage.getItem(KEY));
});
