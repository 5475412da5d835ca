// The page's behaviour: every call goes to /api/... with the bearer token;
// every value is put into the page as text, never as HTML. Which sections
// show is what /api/me says the account's roles are on chain now; the
// server refuses whatever the roles do not allow, whatever the page shows.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "cohort.token";
const SECTIONS = ["patient", "provider", "auditor", "steward"];

function say(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

async function api(path, method, body) {
  const headers = { authorization: "Bearer " + sessionStorage.getItem(KEY) };
  const init = { method: method || "GET", headers };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const answer = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) {
    throw new Error(answer.error || r.statusText);
  }
  return answer;
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
  return td;
}

// Runs an action, says what it did (or why it was refused), then reloads.
async function act(run, reload) {
  try {
    say(await run());
  } catch (e) {
    say(e.message, true);
    return;
  }
  try {
    await reload();
  } catch (e) {
    say(e.message, true);
  }
}

// An amount of ether, given as wei digits or as "N ether", in ETH with at
// most six decimals (the exact value in the element's title).
function eth(text) {
  if (text === undefined || text === null) return "—";
  const s = String(text).trim();
  let whole;
  let frac;
  const m = /^(\d+)(?:\.(\d+))?\s*ether$/.exec(s);
  if (m) {
    whole = m[1];
    frac = m[2] || "";
  } else if (/^\d+$/.test(s)) {
    const wei = BigInt(s);
    const unit = 10n ** 18n;
    whole = (wei / unit).toString();
    frac = (wei % unit).toString().padStart(18, "0");
  } else {
    return s;
  }
  const places = 6;
  let units = BigInt(whole) * 10n ** BigInt(places) + BigInt((frac + "0".repeat(places)).slice(0, places));
  if (frac.length > places && frac[places] >= "5") units += 1n;
  if (units === 0n && /[1-9]/.test(frac)) return "< 0.000001 ETH";
  const scale = 10n ** BigInt(places);
  const decimals = (units % scale).toString().padStart(places, "0").replace(/0+$/, "");
  return `${units / scale}${decimals ? "." + decimals : ""} ETH`;
}

function amount(row, text) {
  const td = cell(row, eth(text));
  if (text !== undefined && text !== null) td.title = String(text);
  return td;
}

function when(unixSeconds) {
  if (!unixSeconds) return "";
  return new Date(Number(unixSeconds) * 1000).toLocaleString();
}

function day(unixSeconds) {
  return new Date(Number(unixSeconds) * 1000).toISOString().slice(0, 10);
}

// ---- patient -------------------------------------------------------------

// A notification in words (its JSON in the cell's title).
function describe(n) {
  let b;
  try {
    b = JSON.parse(n.body);
  } catch (_) {
    return n.body;
  }
  const who = b.provider || b.provider_address || "a provider";
  switch (n.kind) {
    case "emergency.opened":
      return `${who} opened emergency access to your records` +
        (b.reason ? ` ("${b.reason}")` : "") + (b.expires_at ? `, until ${when(b.expires_at)}` : "");
    case "emergency.ended":
      return `emergency access #${b.emergency} was ended by ${b.ended_by}`;
    case "emergency.reviewed":
      return `an auditor found emergency access #${b.emergency} ${b.justified ? "justified" : "unjustified"}` +
        (b.finding ? `: ${b.finding}` : "");
    default:
      return n.body;
  }
}

async function loadPatient() {
  const reads = await api("/api/reads");
  const list = $("timeline");
  list.replaceChildren();
  for (const e of reads.entries || []) {
    const li = document.createElement("li");
    li.dataset.emergency = e.emergency ? "true" : "false";
    li.className = e.emergency ? "emergency" : "";
    const time = document.createElement("time");
    time.textContent = when(e.at);
    li.appendChild(time);
    const who = document.createElement("strong");
    who.className = "who";
    who.textContent = e.accessor_name || e.accessor;
    li.appendChild(who);
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = `read ${e.records} record${e.records === 1 ? "" : "s"} for ${e.purpose}`;
    li.appendChild(what);
    if (e.emergency) {
      const flag = document.createElement("span");
      flag.className = "flag";
      flag.textContent = "EMERGENCY ACCESS";
      li.appendChild(flag);
    }
    list.appendChild(li);
  }
  $("timeline-empty").hidden = (reads.entries || []).length > 0;

  const notes = (await api("/api/notifications")).notifications || [];
  fill("notifications", notes, (row, n) => {
    row.dataset.kind = n.kind;
    cell(row, n.created_at.slice(0, 19).replace("T", " "));
    cell(row, n.kind);
    cell(row, describe(n)).title = n.body;
    cell(row, n.read_at ? "read" : "unread");
  });
  $("mark-read").dataset.upTo = notes.length ? notes[0].id : "";

  const grants = (await api("/api/grants")).grants || [];
  fill("grants", grants, (row, g) => {
    const name = g.provider_name || g.provider;
    row.dataset.provider = name;
    cell(row, name); cell(row, g.level); cell(row, (g.purposes || []).join(", "));
    cell(row, (g.types || []).join(", ")); cell(row, day(g.expires_at));
    cell(row, g.active ? "active" : "inactive");
    if (g.active && g.provider_name) {
      button(row, "Revoke", () => act(async () => {
        const r = await api(`/api/grants/${encodeURIComponent(g.provider_name)}/revoke`, "POST");
        return `revoked ${r.account}'s access: it ends at their next call`;
      }, loadPatient));
    } else {
      cell(row, "");
    }
  });

  const consents = (await api("/api/consents")).consents || [];
  fill("consents", consents, (row, c) => {
    row.dataset.study = c.study_id;
    cell(row, c.study_id); cell(row, c.title); cell(row, (c.purposes || []).join(", "));
    cell(row, day(c.expires_at));
    cell(row, c.active ? "active" : "withdrawn");
    if (c.active) {
      button(row, "Withdraw", () => act(async () => {
        const w = await api(`/api/consents/${c.study_id}/withdraw`, "POST");
        return `withdrew from study ${w.study_id}: later queries leave your records out`;
      }, loadPatient));
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
    `earned ${eth(earned.earned)}, claimed ${eth(earned.claimed)}, claimable ${eth(earned.claimable)} (${(earned.shares || []).length} share(s))`;
  fill("shares", earned.shares || [], (row, s) => {
    cell(row, s.study_id); cell(row, s.query_id); amount(row, s.amount_text); cell(row, s.claimed ? "yes" : "no");
  });
}

function ticked(id) {
  return [...$(id).querySelectorAll("input[type=checkbox]:checked")].map((c) => c.value);
}

// ---- provider ------------------------------------------------------------

function summary(resource) {
  const concept = resource.code || resource.medicationCodeableConcept || (resource.type || [])[0] || {};
  const coding = (concept.coding || [])[0] || {};
  const text = concept.text || coding.display || coding.code || "";
  return `${resource.resourceType}${text ? ": " + text : ""}`;
}

function dated(resource) {
  const d = resource.effectiveDateTime || resource.onsetDateTime || resource.authoredOn ||
    resource.recordedDate || resource.birthDate || (resource.period || {}).start || "";
  return d.slice(0, 10);
}

async function searchRecords() {
  const q = new URLSearchParams({
    patient: $("records-patient").value.trim(),
    type: $("records-type").value,
    code: $("records-code").value.trim(),
    since: $("records-since").value,
    until: $("records-until").value,
    purpose: $("records-purpose").value,
  });
  $("record-json").textContent = "";
  let found;
  try {
    found = (await api("/api/records?" + q.toString())).records || [];
  } catch (e) {
    fill("records", [], () => {});
    say(e.message, true);
    return;
  }
  fill("records", found, (row, r) => {
    let resource = {};
    try { resource = JSON.parse(r.resource_json); } catch (_) { /* shown as is */ }
    row.dataset.record = r.version.record_id;
    row.dataset.emergency = r.emergency ? "true" : "false";
    cell(row, r.version.record_id); cell(row, r.version.version);
    cell(row, summary(resource)); cell(row, dated(resource));
    cell(row, r.emergency ? "EMERGENCY" : "granted");
    row.addEventListener("click", () => {
      $("record-json").textContent = JSON.stringify(resource, null, 2);
    });
  });
  const emergency = found.some((r) => r.emergency);
  say(`${found.length} record(s)` + (emergency ? " read under an emergency override" : ""));
}

// ---- auditor -------------------------------------------------------------

async function loadAuditor() {
  const queue = (await api("/api/emergencies")).emergencies || [];
  fill("queue", queue, (row, e) => {
    row.dataset.emergency = e.id;
    cell(row, e.id); cell(row, e.provider_name || e.provider); cell(row, e.patient_id || e.patient);
    cell(row, e.reason); cell(row, when(e.started_at)); cell(row, e.open ? "open" : "ended");
    cell(row, e.review);
    if (e.review === "pending") {
      const td = cell(row, "");
      const finding = document.createElement("input");
      finding.className = "finding";
      finding.setAttribute("aria-label", `finding for override ${e.id}`);
      td.appendChild(finding);
      const judge = (justified) => act(async () => {
        const text = finding.value.trim();
        if (!text) throw new Error("write the finding first");
        await api(`/api/emergencies/${e.id}/review`, "POST", { justified, finding: text });
        return `override ${e.id} reviewed: ${justified ? "justified" : "unjustified (the provider's overrides are suspended)"}`;
      }, loadAuditor);
      const td2 = button(row, "Justified", () => judge(true));
      const no = document.createElement("button");
      no.type = "button";
      no.textContent = "Unjustified";
      no.addEventListener("click", () => judge(false));
      td2.appendChild(no);
    } else {
      cell(row, e.finding); cell(row, "");
    }
  });
}

// ---- steward -------------------------------------------------------------

async function loadSteward() {
  const list = (await api("/api/studies")).studies || [];
  fill("pending", list.filter((s) => s.status === "proposed"), (row, s) => {
    row.dataset.study = s.study_id;
    cell(row, s.study_id); cell(row, s.title); cell(row, s.purpose);
    cell(row, s.researcher); cell(row, s.budget); cell(row, s.approvals);
    button(row, "Approve", () => act(async () => {
      const a = await api(`/api/studies/${s.study_id}/approve`, "POST");
      return `study ${a.study_id}: ${a.approvals} of ${a.required} approvals` + (a.approved ? ", approved" : "");
    }, loadSteward));
  });
  fill("studies", list, (row, s) => {
    row.dataset.study = s.study_id;
    cell(row, s.study_id); cell(row, s.title); cell(row, s.status);
    // The books are absent for an account that may not see them.
    cell(row, s.remaining ?? "—"); amount(row, s.escrow); amount(row, s.owed);
    cell(row, s.consenting); cell(row, s.queries ?? "—");
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

// ---- navigation ----------------------------------------------------------

const LOADERS = { patient: loadPatient, provider: async () => {}, auditor: loadAuditor, steward: loadSteward };

async function show(which) {
  for (const s of SECTIONS) {
    $(s).hidden = s !== which;
    $("tab-" + s).setAttribute("aria-pressed", s === which);
  }
  say("");
  try {
    await LOADERS[which]();
  } catch (e) {
    say(e.message, true);
  }
}

// The sections an account's roles open: patients (linked to records, or
// holding the role), providers, auditors and admins, stewards and admins.
function allowed(me) {
  const roles = new Set(me.roles || []);
  return {
    patient: !!me.patient_id || roles.has("patient"),
    provider: roles.has("provider"),
    auditor: roles.has("auditor") || roles.has("admin"),
    steward: roles.has("steward") || roles.has("admin"),
  };
}

async function signedIn(yes) {
  $("signin").hidden = yes;
  $("tabs").hidden = !yes;
  for (const s of SECTIONS) {
    $(s).hidden = true;
    $("tab-" + s).hidden = true;
  }
  $("whoami").textContent = "";
  if (!yes) return;
  let me;
  try {
    me = await api("/api/me");
  } catch (e) {
    say(e.message, true);
    return;
  }
  const open = allowed(me);
  $("whoami").textContent = `${me.account} (${(me.roles || []).join(", ") || "no role"})`;
  const first = SECTIONS.find((s) => open[s]);
  for (const s of SECTIONS) $("tab-" + s).hidden = !open[s];
  if (first) {
    await show(first);
  } else {
    say("this account holds no role with a view here");
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
  });
  for (const s of SECTIONS) $("tab-" + s).addEventListener("click", () => show(s));
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    signedIn(false);
    say("signed out");
  });
  $("grant-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      const provider = $("grant-provider").value.trim();
      const purposes = ticked("grant-purposes");
      const types = ticked("grant-types");
      await api("/api/grants", "POST", {
        provider, level: $("grant-level").value, purposes, types, days: Number($("grant-days").value),
      });
      return `granted ${provider} ${$("grant-level").value} access for ${purposes.join(", ") || "treatment"}`;
    }, loadPatient);
  });
  $("delegate-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      const delegate = $("delegate-name").value.trim();
      await api("/api/delegates", "POST", {
        delegate, level: $("delegate-level").value, days: Number($("delegate-days").value),
      });
      return `${delegate} may now act for you up to ${$("delegate-level").value}`;
    }, loadPatient);
  });
  $("mark-read").addEventListener("click", () => {
    const upTo = Number($("mark-read").dataset.upTo);
    if (!upTo) return;
    act(async () => {
      const m = await api("/api/notifications/read", "POST", { up_to: upTo });
      return `${m.marked} notification(s) marked read`;
    }, loadPatient);
  });
  $("records-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    searchRecords();
  });
  $("emergency-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      const o = await api("/api/emergencies", "POST", {
        patient: $("emergency-patient").value.trim(), reason: $("emergency-reason").value.trim(),
      });
      return `emergency override ${o.id} open until ${when(o.expires_at)}; ${o.notified.length} account(s) notified; it awaits review`;
    }, async () => {});
  });
  signedIn(!!sessionStorage.getItem(KEY));
});
