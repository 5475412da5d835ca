// Drives the page of a running `cohort serve` in headless Chromium, as a
// steward (approve a study, read the audit log and its verification) and as
// a patient (see and withdraw a consent, see who accessed their records),
// and takes a screenshot of each. cli/tests/it/web.rs sets the
// environment, starts the server and checks the outcome through the CLI.
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

  await page.goto(server + "/");
  // Not a token: refused by the page itself.
  await page.fill("#token", "not a token");
  await page.click("#signin-button");
  check((await page.textContent("#status")).includes("64 hex"), "a malformed token is refused");

  // A steward approves the pending study.
  await page.fill("#token", env("STEWARD_TOKEN"));
  await page.click("#signin-button");
  await page.click("#tab-steward");
  const row = page.locator(`#pending tr[data-study="${pending}"]`);
  await row.waitFor();
  // The title, HTML in it, is shown as text and never parsed.
  check((await row.locator("td").nth(1).textContent()) === title, "the title is shown as text");
  check((await page.locator("#pending b").count()) === 0, "no element from the title");
  await page.waitForSelector("#verification.intact");
  check((await page.textContent("#verification")).includes("hash chain intact"), "audit verification shown");
  check((await page.locator("#audit tbody tr").count()) > 0, "audit entries shown");
  await row.locator("button", { hasText: "Approve" }).click();
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("approvals"));
  check((await page.textContent("#status")).includes("1 of 2 approvals"), "the approval is counted");
  await page.screenshot({ path: `${shots}/steward.png`, fullPage: true });

  // The patient sees their consent, withdraws it, sees their access log.
  await page.click("#signout");
  await page.fill("#token", env("PATIENT_TOKEN"));
  await page.click("#signin-button");
  await page.click("#tab-patient");
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
    "the provider's read is in the access log",
  );
  check((await page.textContent("#earnings")).includes("earned"), "compensation shown");
  await page.screenshot({ path: `${shots}/patient.png`, fullPage: true });

  // A patient is no steward: the audit log is refused, and the page says so.
  await page.click("#tab-steward");
  await page.waitForSelector("#status.error");
  check((await page.textContent("#status")).includes("audit log"), "the refusal is shown");
  check(errors.length === 0, `no script errors: ${errors.join("; ")}`);
} finally {
  await browser.close();
}
if (failures.length) {
  console.error("FAILED: " + failures.join("; "));
  process.exit(1);
}
console.log("ok: steward and patient pages");
