// Drives the page of a running `cohort serve` in headless Chromium, as a
// steward (approve a study, read the audit log and its verification), a
// provider (refused without a grant, then reading; another breaking the
// glass), a patient (sections by role only; grant and revoke a provider,
// see every read of their records with the emergency flagged, withdraw a
// consent) and an auditor (review the override), with a screenshot of
// each. cli/tests/it/web.rs sets the environment, starts the server and
// checks the outcome through the CLI.
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const server = env("COHORT_SERVER");
const pending = env("PENDING_STUDY");
const consented = env("CONSENTED_STUDY");
const shots = env("SHOT_DIR");
const title = env("PENDING_TITLE");
const patientId = env("PATIENT_ID");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); };
try {
  // The server's certificate is the one it generated for itself: this
  // browser does not know it, so the test accepts it (a real deployment
  // has a certificate the browser trusts).
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // Console errors, but for the refused requests the test makes on purpose
  // (the browser reports each non-2xx response there).
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(m.text());
  });
  const status = async () => (await page.textContent("#status")) || "";
  const waitStatus = (text) =>
    page.waitForFunction((t) => document.getElementById("status").textContent.includes(t), text);
  const signIn = async (token) => {
    // Switching accounts by dropping the tab's token, not "Sign out", which
    // would end it on the server (the script signs in with each token again;
    // passkey.mjs tests signing out).
    if (await page.isVisible("#signout")) {
      await page.evaluate(() => sessionStorage.clear());
      await page.reload();
      await page.waitForSelector("#signin", { state: "visible" });
    }
    // The developer's way in: a token from `cohort login`.
    await page.$eval("#developer", (d) => { d.open = true; });
    await page.fill("#token", token);
    await page.click("#signin-button");
    await page.waitForFunction(() => document.getElementById("whoami").textContent !== "");
  };
  const visibleTabs = async () =>
    page.$$eval("#tabs button[id^=tab-]", (bs) => bs.filter((b) => !b.hidden).map((b) => b.id));

  await page.goto(server + "/");
  // Not a token: refused by the page itself.
  await page.$eval("#developer", (d) => { d.open = true; });
  await page.fill("#token", "not a token");
  await page.click("#signin-button");
  check((await status()).includes("64 hex"), "a malformed token is refused");

  // A steward approves the pending study.
  await signIn(env("STEWARD_TOKEN"));
  check(JSON.stringify(await visibleTabs()) === JSON.stringify(["tab-steward", "tab-recovery"]), "a steward sees the steward view (and recovery) only");
  const row = page.locator(`#pending tr[data-study="${pending}"]`);
  await row.waitFor();
  // The title, HTML in it, is shown as text and never parsed.
  check((await row.locator("td").nth(1).textContent()) === title, "the title is shown as text");
  check((await page.locator("#pending b").count()) === 0, "no element from the title");
  await page.waitForSelector("#verification.intact");
  check((await page.textContent("#verification")).includes("hash chain intact"), "audit verification shown");
  // The log fills after the verification line: wait for it, not a race.
  await page.waitForFunction(() => document.querySelectorAll("#audit tbody tr").length > 0);
  check((await page.locator("#audit tbody tr").count()) > 0, "audit entries shown");
  const escrow = await page.locator(`#studies tr[data-study="${pending}"] td`).nth(4).textContent();
  check(/^\d+(\.\d{1,6})? ETH$/.test(escrow), `escrow in ETH with few decimals: ${escrow}`);
  await row.locator("button", { hasText: "Approve" }).click();
  await waitStatus("approvals");
  check((await status()).includes("1 of 2 approvals"), "the approval is counted");
  await page.screenshot({ path: `${shots}/steward.png`, fullPage: true });

  // A provider without a grant is refused, and told why.
  await signIn(env("PROVIDER_TOKEN"));
  check(
    JSON.stringify(await visibleTabs()) === JSON.stringify(["tab-provider", "tab-calendar", "tab-recovery"]),
    "a provider sees the provider and calendar views only",
  );
  await page.fill("#records-patient", patientId);
  await page.click("#records-button");
  await page.waitForSelector("#status.error");
  check((await status()).includes("holds no grant"), `the refusal names the missing grant: ${await status()}`);
  check((await page.locator("#records tbody tr").count()) === 0, "nothing shown when refused");

  // The patient: only their own view; withdraws a consent, grants the provider.
  await signIn(env("PATIENT_TOKEN"));
  check(
    JSON.stringify(await visibleTabs()) === JSON.stringify(["tab-patient", "tab-appointments", "tab-recovery"]),
    "a patient sees their records and appointments, no steward tab",
  );
  check(await page.isHidden("#tab-steward"), "no Steward tab for a patient");
  const refused = await page.evaluate(async () => {
    const r = await fetch("/api/audit", { headers: { authorization: "Bearer " + sessionStorage.getItem("cohort.token") } });
    return r.status;
  });
  check(refused === 403, `the server refuses a patient the audit log too: ${refused}`);
  const consent = page.locator(`#consents tr[data-study="${consented}"]`);
  await consent.waitFor();
  check((await consent.locator("td").nth(4).textContent()) === "active", "the consent is active");
  await consent.locator("button", { hasText: "Withdraw" }).click();
  await page.waitForFunction(
    (id) => {
      const r = document.querySelector(`#consents tr[data-study="${id}"]`);
      return r && r.children[4].textContent === "withdrawn";
    },
    consented,
  );
  check(
    (await page.locator("#access tbody td", { hasText: "dr-who" }).count()) > 0,
    "the provider's read is in the audit trail",
  );
  check((await page.textContent("#earnings")).includes("earned 0 ETH"), `compensation in ETH: ${await page.textContent("#earnings")}`);
  await page.fill("#grant-provider", "dr-no");
  await page.selectOption("#grant-level", "read");
  await page.fill("#grant-days", "7");
  await page.click("#grant-button");
  const granted = page.locator('#grants tr[data-provider="dr-no"]');
  await granted.waitFor();
  check((await granted.locator("td").nth(5).textContent()) === "active", "the grant is active");
  check((await granted.locator("td").nth(2).textContent()) === "treatment", "for treatment");

  // Granted, the provider reads.
  await signIn(env("PROVIDER_TOKEN"));
  await page.fill("#records-patient", patientId);
  await page.click("#records-button");
  await waitStatus("record(s)");
  const found = await page.locator("#records tbody tr").count();
  check(found > 0, "the granted provider reads the records");
  check((await page.locator('#records tr[data-emergency="true"]').count()) === 0, "not an emergency read");
  await page.locator("#records tbody tr").first().click();
  check((await page.textContent("#record-json")).includes("resourceType"), "a record's JSON shown as text");

  // The patient revokes; the provider's next call is refused.
  await signIn(env("PATIENT_TOKEN"));
  await granted.locator("button", { hasText: "Revoke" }).click();
  await page.waitForFunction(() => {
    const r = document.querySelector('#grants tr[data-provider="dr-no"]');
    return r && r.children[5].textContent === "inactive";
  });
  await signIn(env("PROVIDER_TOKEN"));
  await page.fill("#records-patient", patientId);
  await page.click("#records-button");
  await page.waitForSelector("#status.error");
  check((await status()).includes("revoked"), `revoked at the next call: ${await status()}`);

  // Another provider breaks the glass and reads.
  await signIn(env("EMERGENCY_TOKEN"));
  await page.fill("#emergency-patient", patientId);
  await page.fill("#emergency-reason", "unconscious on arrival");
  await page.click("#emergency-button");
  await waitStatus("awaits review");
  await page.fill("#records-patient", patientId);
  await page.click("#records-button");
  await waitStatus("read under an emergency override");
  check((await page.locator('#records tr[data-emergency="true"]').count()) > 0, "the emergency read is flagged");

  // The patient's timeline: every read, the emergency one flagged; told of it.
  await signIn(env("PATIENT_TOKEN"));
  await page.waitForSelector('#timeline li[data-emergency="true"]');
  const timeline = await page.$$eval("#timeline li", (lis) =>
    lis.map((li) => ({ who: li.querySelector(".who").textContent, emergency: li.dataset.emergency, text: li.textContent })));
  check(timeline.some((e) => e.who === "dr-no" && e.emergency === "false"), "the provider's read on the timeline");
  check(timeline.some((e) => e.who === "dr-who" && e.emergency === "false"), "the earlier read on the timeline");
  check(timeline.some((e) => e.who === "dr-er" && e.emergency === "true" && e.text.includes("EMERGENCY")), "the emergency read flagged");
  check(timeline.every((e) => /\d/.test(e.text) && e.text.includes("for treatment")), "each says when and why");
  const note = page.locator('#notifications tr[data-kind="emergency.opened"]').first();
  check((await note.textContent()).includes("dr-er opened emergency access"), "told of the emergency, in words");
  // The accounting of disclosures: each reader, the emergency marked.
  await page.waitForSelector('#disclosures tr[data-basis="emergency"]');
  const told = await page.$$eval("#disclosures tbody tr", (rows) =>
    rows.map((r) => ({ basis: r.dataset.basis, who: r.children[1].textContent, what: r.children[3].textContent })));
  check(told.some((d) => d.who === "dr-er" && d.basis === "emergency"), `the emergency read is accounted: ${JSON.stringify(told)}`);
  check(told.some((d) => d.who === "dr-who" && d.basis === "grant" && /record\(s\)/.test(d.what)), "the granted read is accounted with its records");
  check(told.every((d) => d.who !== "patient-0"), "the patient's own reads are no disclosure");
  // Where the records may be read: the patient narrows it (their own
  // transaction); the page shows it ticked after reloading.
  check((await page.locator("#geo-policy").getAttribute("data-enabled")) === "no", "no geography policy here");
  await page.check('#geo-restrictions input[value="no-cross-border-research"]');
  await page.click("#geo-button");
  await waitStatus("your geographic restriction: no-cross-border-research");
  await page.waitForFunction(() => document.querySelector('#geo-restrictions input[value="no-cross-border-research"]').checked
    && !document.querySelector('#geo-restrictions input[value="domestic-reads-only"]').checked);
  // A copy of the records: a FHIR Bundle downloaded by the browser.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#export-button")]);
  await waitStatus("exported as a FHIR Bundle");
  const fs = await import("node:fs");
  const bundle = JSON.parse(fs.readFileSync(await download.path(), "utf8"));
  check(bundle.resourceType === "Bundle" && bundle.type === "collection" && bundle.entry.length > 0, "the download is a FHIR collection Bundle");
  check(bundle.entry.some((e) => e.resource.resourceType === "Patient" && e.resource.id === patientId), "the patient's own Patient resource in it");
  await page.screenshot({ path: `${shots}/patient.png`, fullPage: true });

  // The auditor reviews the override.
  await signIn(env("AUDITOR_TOKEN"));
  check(JSON.stringify(await visibleTabs()) === JSON.stringify(["tab-auditor", "tab-recovery"]), "an auditor sees the auditor view (and recovery) only");
  const override = page.locator("#queue tbody tr", { hasText: "dr-er" });
  await override.waitFor();
  check((await override.textContent()).includes("unconscious on arrival"), "the reason is shown");
  await override.locator("input.finding").fill("the patient could not consent");
  await override.getByRole("button", { name: "Justified", exact: true }).click();
  await waitStatus("reviewed: justified");
  await page.waitForFunction(() => [...document.querySelectorAll("#queue tbody tr")].some((r) => r.children[6].textContent === "justified"));
  // The regulatory report of the last two days.
  const day = (offset) => new Date(Date.now() + offset * 86400000).toISOString().slice(0, 10);
  await page.fill("#report-from", day(-1));
  await page.fill("#report-to", day(1));
  await page.click("#report-button");
  await waitStatus("report made");
  const summary = await page.textContent("#report-summary");
  check(summary.includes("verification found nothing wrong") && /[1-9]\d* under an emergency override/.test(summary) && summary.includes("1 override(s) opened"), `the report's summary: ${summary}`);
  check(await page.isVisible("#report-link"), "the printable report is offered");
  await page.screenshot({ path: `${shots}/auditor.png`, fullPage: true });

  // Key recovery on the Recovery tab: patient-1 names two guardians; a
  // fresh account opens a recovery; a non-guardian is refused; both
  // guardians approve; a provider attests; the new account completes; the
  // auditor reads the trail and reviews it.
  const recoveryTab = async (token) => {
    await signIn(token);
    await page.click("#tab-recovery");
    await page.waitForSelector("#recovery", { state: "visible" });
  };
  await recoveryTab(env("RECOVERING_TOKEN"));
  await page.fill("#guardians-names", "steward-1, dr-no");
  await page.fill("#guardians-threshold", "2");
  await page.click("#guardians-button");
  await waitStatus("2 of 2 guardians named");
  await page.waitForFunction(() => document.getElementById("guardians-state").textContent.includes("2 of 2 guardians"));
  check((await page.textContent("#guardians-state")).includes("steward-1, dr-no"), `the guardians are shown: ${await page.textContent("#guardians-state")}`);
  await recoveryTab(env("NEW_KEY_TOKEN"));
  await page.fill("#recovery-patient", "patient-1");
  await page.click("#recovery-open-button");
  await waitStatus("recovery ");
  const id = await page.inputValue("#recovery-id");
  const step = async (token, button, evidence, expect) => {
    await recoveryTab(token);
    await page.fill("#recovery-id", id);
    await page.fill("#recovery-evidence", evidence);
    await page.click(button);
    await waitStatus(expect);
  };
  await step(env("EMERGENCY_TOKEN"), "#recovery-approve", "not a guardian", "NotAGuardian");
  check(page.locator("#status.error").count() !== 0, "a non-guardian's approval is shown as refused");
  await step(env("STEWARD_TOKEN"), "#recovery-approve", "video call with photo ID", "1/2 guardian approvals");
  await step(env("PROVIDER_TOKEN"), "#recovery-approve", "met in person", "2/2 guardian approvals");
  await step(env("EMERGENCY_TOKEN"), "#recovery-attest", "checked the passport", "identity attested by dr-er");
  await step(env("NEW_KEY_TOKEN"), "#recovery-complete", "", "completed");
  await recoveryTab(env("AUDITOR_TOKEN"));
  await page.fill("#trail-id", id);
  await page.click("#trail-button");
  await page.waitForFunction(() => document.querySelectorAll("#recovery-trail tbody tr").length >= 5);
  const trailText = await page.textContent("#recovery-trail");
  check(trailText.includes("identity attested by a provider") && trailText.includes("recovery.approve.refused"), "the trail has the chain's events and the refusal");
  await page.fill("#recovery-finding", "two guardians and a provider verified the person");
  await page.click("#recovery-justified");
  await waitStatus("review justified");
  check(errors.length === 0, `no script errors: ${errors.join("; ")}`);
} finally {
  await browser.close();
}
if (failures.length) {
  console.error("FAILED: " + failures.join("; "));
  process.exit(1);
}
console.log("ok: steward, provider, patient and auditor pages");
