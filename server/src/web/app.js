// The page's behaviour: every call goes to /api/... with the bearer token;
// every value is put into the page as text, never as HTML. Which sections
// show is what /api/me says the account's roles are on chain now; the
// server refuses whatever the roles do not allow, whatever the page shows.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "cohort.token";
const SECTIONS = ["patient", "appointments", "provider", "calendar", "auditor", "steward", "recovery"];

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

// A time as the chain keeps it, in UTC: `2026-12-07 09:00 UTC`.
function utc(unixSeconds) {
  if (!unixSeconds) return "";
  return new Date(Number(unixSeconds) * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

// Wei (decimal digits) as exact ether, trailing zeros trimmed: `0.05 ether`.
function ether(wei) {
  if (wei === undefined || wei === null || !/^\d+$/.test(String(wei))) return wei ? String(wei) : "";
  const w = BigInt(wei);
  const unit = 10n ** 18n;
  const frac = (w % unit).toString().padStart(18, "0").replace(/0+$/, "");
  return `${w / unit}${frac ? "." + frac : ""} ether`;
}

function etherCell(row, wei) {
  const td = cell(row, ether(wei));
  td.title = `${wei} wei`;
  return td;
}

// The signed-in account, as /api/me said.
let me = {};

// ---- passkeys (WebAuthn) ---------------------------------------------------
// The server's options carry binary fields as base64url text; the browser
// wants ArrayBuffers, and its answer goes back as base64url text.

function fromB64u(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(text.length / 4) * 4, "=");
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes.buffer;
}

function toB64u(buffer) {
  let bin = "";
  for (const b of new Uint8Array(buffer)) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// A copy of `o` without its null members (the browser refuses some).
function defined(o) {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null && v !== undefined));
}

function withIds(list) {
  return (list || []).map((c) => defined({ ...c, id: fromB64u(c.id) }));
}

async function createPasskey(options) {
  const pk = defined(options.publicKey);
  pk.challenge = fromB64u(pk.challenge);
  pk.user = { ...pk.user, id: fromB64u(pk.user.id) };
  pk.excludeCredentials = withIds(pk.excludeCredentials);
  const c = await navigator.credentials.create({ publicKey: pk });
  return {
    id: c.id,
    rawId: toB64u(c.rawId),
    type: c.type,
    response: {
      attestationObject: toB64u(c.response.attestationObject),
      clientDataJSON: toB64u(c.response.clientDataJSON),
      transports: c.response.getTransports ? c.response.getTransports() : undefined,
    },
    extensions: c.getClientExtensionResults(),
  };
}

async function usePasskey(options) {
  const pk = defined(options.publicKey);
  pk.challenge = fromB64u(pk.challenge);
  pk.allowCredentials = withIds(pk.allowCredentials);
  const c = await navigator.credentials.get({ publicKey: pk });
  return {
    id: c.id,
    rawId: toB64u(c.rawId),
    type: c.type,
    response: {
      authenticatorData: toB64u(c.response.authenticatorData),
      clientDataJSON: toB64u(c.response.clientDataJSON),
      signature: toB64u(c.response.signature),
      userHandle: c.response.userHandle ? toB64u(c.response.userHandle) : null,
    },
    extensions: c.getClientExtensionResults(),
  };
}

// A POST without a token (the sign-in ceremonies), or with the session's.
async function post(path, body, withToken) {
  const headers = { "content-type": "application/json" };
  if (withToken) headers.authorization = "Bearer " + sessionStorage.getItem(KEY);
  const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  const answer = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(answer.error || r.statusText);
  return answer;
}

// The browser's own refusals (no authenticator, the person cancelled) in words.
function browserError(e) {
  if (e && e.name === "NotAllowedError") return "the passkey was not used (cancelled, timed out, or not verified)";
  if (e && e.name === "InvalidStateError") return "this device already holds a passkey for this account";
  return e.message || String(e);
}

async function passkeySignIn() {
  const account = $("account").value.trim();
  const totp = $("totp").value.trim();
  const start = await post("/api/passkeys/sign-in/start", { account });
  let credential;
  try {
    credential = await usePasskey(start.options);
  } catch (e) {
    throw new Error(browserError(e));
  }
  const body = { ceremony: start.ceremony, credential };
  if (totp) body.totp = totp;
  const done = await post("/api/passkeys/sign-in/finish", body);
  $("totp").value = "";
  sessionStorage.setItem(KEY, done.token);
  await signedIn(true);
}

async function registerPasskey(viaSession) {
  const body = viaSession
    ? { label: "another device" }
    : { account: $("register-account").value.trim(), code: $("register-code").value.trim(), label: $("register-label").value.trim() };
  const start = await post("/api/passkeys/register/start", body, viaSession);
  let credential;
  try {
    credential = await createPasskey(start.options);
  } catch (e) {
    throw new Error(browserError(e));
  }
  const done = await post("/api/passkeys/register/finish", { ceremony: start.ceremony, credential });
  if (!viaSession) {
    $("register-code").value = "";
    $("account").value = done.account;
  }
  return `passkey "${done.label}" registered for ${done.account}: sign in with it`;
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
    case "appointment.booked":
      return `${b.patient} booked appointment #${b.appointment} (${b.visit_type}) at ${utc(b.start)}: ${b.confirm}`;
    case "appointment.reminder":
      return `reminder: appointment #${b.appointment} (${b.visit_type}) at ${utc(b.start)}`;
    default:
      if (n.kind.startsWith("appointment.") && b.appointment !== undefined) {
        const moved = [];
        if (b.refunded_wei && b.refunded_wei !== "0") moved.push(`${ether(b.refunded_wei)} back to the patient`);
        if (b.to_provider_wei && b.to_provider_wei !== "0") moved.push(`${ether(b.to_provider_wei)} to the provider`);
        return `appointment #${b.appointment} at ${utc(b.start)}: ${b.status}` +
          (moved.length ? ` (${moved.join(", ")})` : "");
      }
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

  const geo = await api("/api/geo");
  $("geo-policy").dataset.enabled = geo.enabled ? "yes" : "no";
  $("geo-policy").title = geo.policy || "no geography policy: the ledger alone decides each read";
  for (const box of $("geo-restrictions").querySelectorAll("input[type=checkbox]")) {
    box.checked = (geo.restrictions || []).includes(box.value);
  }
  // An account linked to no vault patient has no key to list.
  const held = await api("/api/key-holders").catch(() => ({ copies: [] }));
  fill("key-holders", held.copies || [], (row, c) => {
    row.dataset.holder = c.holder_name || c.holder;
    cell(row, c.epoch); cell(row, c.holder_name || c.holder); cell(row, c.role);
    cell(row, (c.sealed_at || "").slice(0, 19).replace("T", " "));
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
  // An account with the patient role but no records has no accounting.
  const told = (await api("/api/disclosures").catch(() => ({}))).disclosures || [];
  fill("disclosures", told, (row, d) => {
    row.dataset.basis = d.basis;
    if (d.cross_border) row.dataset.crossBorder = d.cross_border;
    cell(row, when(d.at)); cell(row, d.recipient);
    cell(row, d.cross_border ? `${d.basis}, cross-border: ${d.cross_border}` : d.basis);
    cell(row, d.what).title = (d.records || []).join(", ");
    cell(row, d.why); cell(row, d.evidence);
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

// ---- appointments (patient) ------------------------------------------------

// The providers who publish hours, as last loaded.
let providers = [];
// What the shown quote was for: booking needs a quote of the same choice.
let quoted = "";

function choice() {
  return {
    provider: $("book-provider").value,
    visit_type: $("book-visit").value,
    start: Number($("book-slot").value) || 0,
  };
}

function unquote() {
  quoted = "";
  $("quote").textContent = "";
  $("book-button").disabled = true;
}

function listTerms(t, ids) {
  $(ids.hours).textContent = t && t.hours ? t.hours : "not published";
  $(ids.fees).textContent = t && (t.fees || []).length
    ? t.fees.map((f) => `${f.visit_type}: ${ether(f.fee)}`).join("; ")
    : "none offered";
  $(ids.policy).textContent = t && t.policy ? t.policy : "not published";
  $(ids.closed).textContent = t && (t.closed_days || []).length ? t.closed_days.join(", ") : "none";
}

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = String(value);
  o.textContent = text;
  select.appendChild(o);
}

// Shows the chosen provider's terms and offers its visit types.
function pickProvider() {
  const t = providers.find((p) => p.provider === $("book-provider").value);
  listTerms(t, { hours: "terms-hours", fees: "terms-fees", policy: "terms-policy", closed: "terms-closed" });
  const visit = $("book-visit");
  const was = visit.value;
  visit.replaceChildren();
  for (const f of (t && t.fees) || []) option(visit, f.visit_type, `${f.visit_type} (${ether(f.fee)})`);
  if ([...visit.options].some((o) => o.value === was)) visit.value = was;
  $("book-slot").replaceChildren();
  unquote();
}

async function findSlots() {
  const provider = $("book-provider").value;
  if (!provider) throw new Error("choose a provider first");
  const q = new URLSearchParams({ provider });
  // No day given: the server's next 7 days from the chain's now (its
  // clock, which a development chain may have moved past this browser's).
  const from = $("slots-from").value;
  if (from) {
    const start = Date.parse(from + "T00:00:00Z") / 1000;
    const days = Number($("slots-days").value) || 1;
    q.set("from", String(start));
    q.set("to", String(start + days * 86400));
  }
  const starts = (await api("/api/slots?" + q.toString())).starts || [];
  const slot = $("book-slot");
  const was = slot.value;
  slot.replaceChildren();
  for (const s of starts) option(slot, s, utc(s));
  if ([...slot.options].some((o) => o.value === was)) slot.value = was;
  unquote();
  return `${starts.length} free slot(s) with ${provider}` + (starts.length ? ` from ${utc(starts[0])}` : "");
}

async function quote() {
  const c = choice();
  if (!c.provider || !c.visit_type || !c.start) throw new Error("choose a provider, a visit type and a slot first");
  const q = await api("/api/quote?" + new URLSearchParams({
    provider: c.provider, visit_type: c.visit_type, start: String(c.start),
  }).toString());
  $("quote").textContent = q.says;
  quoted = JSON.stringify(c);
  $("book-button").disabled = false;
  return `quoted ${c.visit_type} with ${c.provider} at ${utc(c.start)}`;
}

// An amount typed in ether (`0.02`, or with a unit) as the API takes it.
function amountText(text) {
  const t = text.trim();
  if (!t) return "";
  return /^\d+(\.\d+)?$/.test(t) ? `${t} ether` : t;
}

async function book() {
  const c = choice();
  if (quoted !== JSON.stringify(c)) throw new Error("ask for a quote of this slot first (press Quote)");
  // One click, one booking: the button waits for the answer.
  $("book-button").disabled = true;
  let b;
  try {
    b = await api("/api/appointments", "POST", {
      provider: c.provider, start: c.start, visit_type: c.visit_type,
      reason: $("book-reason").value, pay: amountText($("book-pay").value),
    });
  } catch (e) {
    $("book-button").disabled = false;
    throw e;
  }
  $("book-reason").value = "";
  $("book-pay").value = "";
  const text = `booked appointment #${b.id}: ${c.visit_type} with ${c.provider} at ${utc(c.start)}; ` +
    `paid ${ether(b.paid)} into escrow (copay ${ether(b.quote.copay)})`;
  $("booked").textContent = text;
  $("booked").dataset.appointment = b.id;
  return text;
}

// The appointments in which the signed-in account is `side`.
async function mine(side) {
  const all = (await api("/api/appointments")).appointments || [];
  return all.filter((a) => a[side] === me.account);
}

// Takes step `name` (confirm, cancel, no-show, ...) on appointment `a`.
function step(a, name, reload) {
  return () => act(async () => (await api(`/api/appointments/${a.id}/${name}`, "POST")).says, reload);
}

function actions(row, list) {
  const td = cell(row, "");
  for (const [label, onClick] of list) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", onClick);
    td.appendChild(b);
  }
  return td;
}

async function loadAppointments() {
  providers = (await api("/api/providers")).providers || [];
  const select = $("book-provider");
  const was = select.value;
  select.replaceChildren();
  for (const p of providers) option(select, p.provider, p.provider);
  if ([...select.options].some((o) => o.value === was)) {
    select.value = was;
  }
  if (!providers.length) say("no provider has published hours yet");
  if (select.value !== was || !$("book-visit").options.length) {
    pickProvider();
  } else {
    const t = providers.find((p) => p.provider === select.value);
    listTerms(t, { hours: "terms-hours", fees: "terms-fees", policy: "terms-policy", closed: "terms-closed" });
  }

  const list = await mine("patient");
  fill("my-appointments", list, (row, a) => {
    row.dataset.appointment = a.id;
    row.dataset.status = a.status;
    cell(row, a.id); cell(row, utc(a.start)); cell(row, a.provider); cell(row, a.visit_type);
    cell(row, a.status).className = "status";
    etherCell(row, a.paid); etherCell(row, a.held); etherCell(row, a.refunded); etherCell(row, a.owed);
    cell(row, a.says);
    const todo = [];
    if (a.status === "booked" || a.status === "confirmed") todo.push(["Cancel", step(a, "cancel", loadAppointments)]);
    if (a.status === "no-show") todo.push(["Dispute", step(a, "dispute", loadAppointments)]);
    const td = actions(row, todo);
    if (a.owed && a.owed !== "0") {
      const amount = document.createElement("input");
      amount.className = "amount";
      amount.value = ether(a.owed).replace(/ ether$/, "");
      amount.setAttribute("aria-label", `amount to pay for appointment ${a.id} (ether)`);
      const pay = document.createElement("button");
      pay.type = "button";
      pay.textContent = "Pay";
      pay.addEventListener("click", () => act(async () => {
        const r = await api(`/api/appointments/${a.id}/pay`, "POST", { amount: amountText(amount.value) });
        return `paid ${amountText(amount.value)} for appointment #${r.id} (${r.status})` +
          (r.to_provider !== "0" ? `: ${ether(r.to_provider)} to the provider` : "");
      }, loadAppointments));
      td.append(amount, pay);
    }
  });
}

// ---- calendar (provider) ---------------------------------------------------

async function loadCalendar() {
  const list = await mine("provider");
  fill("calendar-appointments", list, (row, a) => {
    row.dataset.appointment = a.id;
    row.dataset.status = a.status;
    cell(row, a.id); cell(row, utc(a.start)); cell(row, a.patient); cell(row, a.visit_type);
    cell(row, a.status).className = "status";
    cell(row, a.status === "booked" ? utc(a.confirm_by) : "");
    etherCell(row, a.held); etherCell(row, a.to_provider);
    const todo = [];
    if (a.status === "booked") todo.push(["Confirm", step(a, "confirm", loadCalendar)], ["Decline", step(a, "decline", loadCalendar)]);
    if (a.status === "confirmed") todo.push(["Complete", step(a, "complete", loadCalendar)], ["No-show", step(a, "no-show", loadCalendar)]);
    actions(row, todo);
    actions(row, [["Reason", () => act(async () => {
      const r = await api(`/api/appointments/${a.id}/reason`);
      const p = $("reason");
      p.dataset.appointment = r.id;
      p.textContent = `Reason for appointment #${r.id} (${a.patient}, ${utc(a.start)}): ${r.reason || "(none given)"}`;
      return `read the reason of appointment #${r.id} (audited)`;
    }, async () => {})]]);
  });
  const terms = ((await api("/api/providers")).providers || []).find((p) => p.provider === me.account);
  listTerms(terms, { hours: "my-hours", fees: "my-fees", policy: "my-policy", closed: "my-closed" });
}

// The list in a field: `a, b; c` as [a, b, c].
function entries(id, separators) {
  return $(id).value.split(separators).map((e) => e.trim()).filter((e) => e);
}

async function publish() {
  const form = {
    hours: $("avail-hours").value.trim(),
    slot: $("avail-slot").value.trim(),
    utc_offset: $("avail-offset").value.trim(),
    fees: entries("avail-fees", /[;,]/),
    deposit: $("avail-deposit").value.trim(),
    refunds: $("avail-refunds").value.trim(),
    confirm_within: $("avail-confirm").value.trim(),
    no_show_grace: $("avail-grace").value.trim(),
    close: entries("avail-close", /[;,\s]+/),
  };
  const done = (await api("/api/availability", "POST", form)).items || [];
  const list = $("published");
  list.replaceChildren();
  for (const item of done) {
    const li = document.createElement("li");
    li.textContent = item.what;
    li.title = item.tx_hash;
    list.appendChild(li);
  }
  return `published ${done.length} change(s)`;
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

// Downloads the signed-in patient's records as a FHIR Bundle file.
async function exportRecords() {
  const r = await api("/api/export");
  const link = $("export-link");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([r.bundle], { type: "application/fhir+json" }));
  link.download = `${me.account}-records.json`;
  link.textContent = `${me.account}-records.json`;
  link.hidden = false;
  link.click();
  return `${r.records} record(s) exported as a FHIR Bundle (the read is traced on the ledger)`;
}

// The regulatory report of the period the form names, as a summary and a
// printable page.
async function makeReport() {
  const from = Date.parse($("report-from").value) / 1000;
  if (!from) throw new Error("give the period's first day");
  const to = $("report-to").value ? Date.parse($("report-to").value) / 1000 : null;
  const r = await api("/api/report", "POST", to ? { from, to } : { from });
  const report = JSON.parse(r.json);
  const reads = Object.values(report.accesses.reads_by_purpose).reduce((a, b) => a + b, 0);
  $("report-summary").textContent =
    `${report.from} to ${report.to}: ${r.clean ? "verification found nothing wrong" : "VERIFICATION FOUND A PROBLEM"}; ` +
    `${reads} record read(s), ${report.accesses.emergency_reads} under an emergency override, ` +
    `${report.accesses.refused} refused; ${report.emergencies.opened} override(s) opened; ` +
    `${report.erasure.patients_erased} erasure(s), ${report.erasure.versions_purged} version(s) purged`;
  const link = $("report-link");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([r.html], { type: "text/html" }));
  link.hidden = false;
  return "report made";
}

// ---- recovery ------------------------------------------------------------
function recoveryText(r) {
  let t = `recovery ${r.id} of ${r.patient} to ${r.new_key}: ${r.state}, ` +
    `${r.approvals}/${r.threshold} guardian approvals, ${r.released} share(s) released, ` +
    (r.attested_by ? `identity attested by ${r.attested_by}` : "identity not attested");
  if (r.review && r.review !== "none") t += `, review ${r.review}`;
  return t;
}
async function loadRecovery() {
  const p = $("guardians-state");
  try {
    const g = await api("/api/recovery/guardians");
    p.textContent = (g.guardians || []).length
      ? `${g.threshold} of ${g.guardians.length} guardians: ${g.guardians.join(", ")}` +
        (g.backup ? `; backup ${g.backup}` : "") + `; round ${g.round}; shares ${g.shares_held ? "held" : "NOT held"}`
      : "You have named no guardians.";
  } catch (e) {
    p.textContent = "You are not a patient: " + e.message;
  }
}
function recoveryStep(path, body) {
  const id = $("recovery-id").value;
  if (id === "") return say("give the recovery's number", true);
  act(async () => {
    const r = await api(`/api/recovery/${id}/${path}`, "POST", body || {});
    $("recovery-state").textContent = recoveryText(r);
    return recoveryText(r);
  }, loadRecovery);
}
function recoveryEvidence() {
  const evidence = $("recovery-evidence").value.trim();
  if (!evidence) throw new Error("say how you verified the person's identity");
  return { evidence };
}
async function readTrail() {
  const id = $("trail-id").value;
  const t = await api(`/api/recovery/${id}/trail`);
  fill("recovery-trail", t.entries || [], (row, e) => {
    cell(row, e.source); cell(row, e.at); cell(row, e.action); cell(row, e.by); cell(row, e.detail_json);
  });
  return recoveryText(t.recovery);
}
function reviewRecovery(justified) {
  const id = $("trail-id").value;
  const finding = $("recovery-finding").value.trim();
  if (id === "" || !finding) return say("read a recovery's trail and write the finding first", true);
  act(async () => recoveryText(
    await api(`/api/recovery/${id}/review`, "POST", { justified, finding })), async () => {});
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

const LOADERS = {
  patient: loadPatient,
  appointments: loadAppointments,
  provider: async () => {},
  calendar: loadCalendar,
  auditor: loadAuditor,
  steward: loadSteward,
  recovery: loadRecovery,
};

// Which sign-in the page is showing: a load that ends after its account
// signed out (or another signed in) says nothing.
let generation = 0;

async function show(which) {
  for (const s of SECTIONS) {
    $(s).hidden = s !== which;
    $("tab-" + s).setAttribute("aria-pressed", s === which);
  }
  say("");
  const mine = generation;
  try {
    await LOADERS[which]();
  } catch (e) {
    if (mine === generation) say(e.message, true);
  }
}

// The sections an account's roles open: patients (linked to records, or
// holding the role), providers, auditors and admins, stewards and admins.
function allowed(who) {
  const roles = new Set(who.roles || []);
  const patient = !!who.patient_id || roles.has("patient");
  return {
    patient,
    appointments: patient,
    provider: roles.has("provider"),
    calendar: roles.has("provider"),
    auditor: roles.has("auditor") || roles.has("admin"),
    steward: roles.has("steward") || roles.has("admin"),
    // Any account: a patient names guardians, a fresh one recovers, a
    // guardian approves, a provider attests, an auditor reviews.
    recovery: true,
  };
}

async function signedIn(yes) {
  generation += 1;
  const mine = generation;
  $("signin").hidden = yes;
  $("tabs").hidden = !yes;
  for (const s of SECTIONS) {
    $(s).hidden = true;
    $("tab-" + s).hidden = true;
  }
  $("whoami").textContent = "";
  $("session-info").textContent = "";
  me = {};
  // Nothing of the previous account stays on the page.
  for (const id of ["booked", "reason", "published", "book-slot"]) {
    $(id).replaceChildren();
    delete $(id).dataset.appointment;
  }
  unquote();
  if (!yes) return;
  let who;
  try {
    who = await api("/api/me");
  } catch (e) {
    if (mine === generation) say(e.message, true);
    return;
  }
  if (mine !== generation) return;
  me = who;
  const open = allowed(me);
  try {
    const s = await api("/api/session");
    const until = new Date(Date.now() + s.expires_in_secs * 1000).toLocaleTimeString();
    if (mine === generation) $("session-info").textContent = `signed in with ${s.factors.join(" + ")}, until ${until}`;
  } catch (_) {
    $("session-info").textContent = "";
  }
  if (mine !== generation) return;
  // Who, and the tabs, at once (a script waits for the one to see the other).
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
  $("passkey-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    say("");
    try {
      await passkeySignIn();
    } catch (e) {
      say(e.message, true);
    }
  });
  $("register-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      say(await registerPasskey(false));
    } catch (e) {
      say(e.message, true);
    }
  });
  $("add-passkey").addEventListener("click", async () => {
    try {
      say(await registerPasskey(true));
    } catch (e) {
      say(e.message, true);
    }
  });
  // Signing out ends the token on the server, not only in this tab.
  $("signout").addEventListener("click", async () => {
    let ended = true;
    try {
      await post("/api/sign-out", {}, true);
    } catch (_) {
      ended = false;
    }
    sessionStorage.removeItem(KEY);
    await signedIn(false);
    say(ended ? "signed out" : "signed out of this tab (the token had already ended)");
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
  $("geo-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      const restrictions = ticked("geo-restrictions");
      await api("/api/geo/restrict", "POST", { restrictions });
      return `your geographic restriction: ${restrictions.join(", ") || "none beyond the deployment's policy"}`;
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
  $("book-provider").addEventListener("change", pickProvider);
  for (const id of ["book-visit", "book-slot"]) $(id).addEventListener("change", unquote);
  $("slots-button").addEventListener("click", () => act(findSlots, async () => {}));
  $("quote-button").addEventListener("click", () => act(quote, async () => {}));
  $("book-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(book, async () => {
      await loadAppointments();
      await findSlots();
    });
  });
  $("availability-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(publish, loadCalendar);
  });
  $("export-button").addEventListener("click", () => act(exportRecords, async () => {}));
  $("report-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(makeReport, async () => {});
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
  $("guardians-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      const g = await api("/api/recovery/guardians", "POST", {
        guardians: $("guardians-names").value.split(",").map((x) => x.trim()).filter((x) => x),
        threshold: Number($("guardians-threshold").value),
        backup: $("guardians-backup").value.trim(),
      });
      return `${g.threshold} of ${g.guardians.length} guardians named; your key's shares are sealed to them (round ${g.round})`;
    }, loadRecovery);
  });
  $("recovery-open-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      const r = await api("/api/recovery", "POST", { patient: $("recovery-patient").value.trim() });
      $("recovery-id").value = r.id;
      $("recovery-state").textContent = recoveryText(r);
      return recoveryText(r);
    }, loadRecovery);
  });
  $("recovery-approve").addEventListener("click", () => {
    try { recoveryStep("approve", recoveryEvidence()); } catch (e) { say(e.message, true); }
  });
  $("recovery-attest").addEventListener("click", () => {
    try { recoveryStep("attest", recoveryEvidence()); } catch (e) { say(e.message, true); }
  });
  $("recovery-backup").addEventListener("click", () => recoveryStep("backup"));
  $("recovery-complete").addEventListener("click", () => recoveryStep("complete"));
  $("recovery-trail-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(readTrail, async () => {});
  });
  $("recovery-justified").addEventListener("click", () => reviewRecovery(true));
  $("recovery-unjustified").addEventListener("click", () => reviewRecovery(false));
  signedIn(!!sessionStorage.getItem(KEY));
});
