// Drives the page's appointments of a running `cohort serve` in headless
// Chromium, in two phases around a move of the chain's clock (which needs
// the server stopped: cli/tests/it/web.rs stops it, runs `cohort ledger
// advance`, starts it again and signs the accounts in anew).
//
// PHASE=1: the provider publishes availability (a bad one refused in
// words first); the patient reads the terms, lists free slots, is quoted
// ("no coverage"), books two slots a few hours ahead with a reason (the
// first paying only the deposit), and is shown what was paid and owed;
// the provider sees both, reads one reason and confirms both. Prints
// `{"booked":[A,B]}` for the second phase.
// PHASE=2 (BOOKED=A,B): the provider completes A and marks B a no-show;
// the patient sees A completed and pays what is owed, sees B a no-show
// with its non-deposit part refunded, is told of both, and disputes B.
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const server = env("COHORT_SERVER");
const phase = env("PHASE");
const shots = env("SHOT_DIR");
const reasons = [env("REASON_A"), env("REASON_B")];
const HOUR = 3600;

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
  // The server's own certificate, as in page.mjs.
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
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
  // The row of appointment `id` in table `table`, once its status is `want`.
  const rowWith = async (table, id, want) => {
    await page.waitForFunction(
      ([t, i, w]) => {
        const r = document.querySelector(`#${t} tr[data-appointment="${i}"]`);
        return r && r.dataset.status === w;
      },
      [table, String(id), want],
    );
    return page.locator(`#${table} tr[data-appointment="${id}"]`);
  };
  const text = async (locator) => (await locator.textContent()) || "";

  await page.goto(server + "/");

  if (phase === "1") {
    // The provider publishes: a bad day's hours refused in words, then
    // round-the-clock hours, the check-up's fee and a half deposit.
    await signIn(env("PROVIDER_TOKEN"));
    check(
      JSON.stringify(await visibleTabs()) === JSON.stringify(["tab-provider", "tab-calendar", "tab-recovery"]),
      `a provider sees the provider and calendar views: ${await visibleTabs()}`,
    );
    await page.click("#tab-calendar");
    await page.waitForFunction(() => document.getElementById("my-hours").textContent !== "");
    check((await page.textContent("#my-hours")) === "not published", "nothing published yet");
    await page.fill("#avail-hours", "mon-fri=25:00-26:00");
    await page.click("#avail-button");
    await page.waitForSelector("#status.error");
    check((await status()).includes("hours"), `a bad publication is refused in words: ${await status()}`);
    await page.fill("#avail-hours", "mon-sun=00:00-24:00");
    await page.fill("#avail-slot", "30m");
    await page.fill("#avail-fees", "checkup=0.05 ether");
    await page.fill("#avail-deposit", "50%");
    await page.click("#avail-button");
    await waitStatus("published 3 change(s)");
    const published = await page.textContent("#published");
    check(published.includes("visit type checkup: 0.05 ether"), `the fee is published: ${published}`);
    check(published.includes("deposit 50% of the copay"), `the policy is published: ${published}`);
    await page.waitForFunction(() => document.getElementById("my-hours").textContent.includes("30-minute slots"));
    check((await page.textContent("#my-fees")) === "checkup: 0.05 ether", "the calendar shows the fee");

    // The patient books two slots.
    await signIn(env("PATIENT_TOKEN"));
    check(
      JSON.stringify(await visibleTabs()) === JSON.stringify(["tab-patient", "tab-appointments", "tab-recovery"]),
      `a patient sees their records and appointments: ${await visibleTabs()}`,
    );
    await page.click("#tab-appointments");
    await page.waitForSelector('#book-provider option[value="dr-cal"]', { state: "attached" });
    await page.selectOption("#book-provider", "dr-cal");
    check((await page.textContent("#terms-hours")).includes("mon 00:00-24:00"), "the provider's hours shown");
    check((await page.textContent("#terms-fees")) === "checkup: 0.05 ether", "the provider's fees shown");
    check((await page.textContent("#terms-policy")).includes("deposit 50%"), "the provider's policy shown");
    await page.selectOption("#book-visit", "checkup");
    await page.click("#slots-button");
    await waitStatus("free slot(s) with dr-cal");
    const slots = await page.$$eval("#book-slot option", (os) => os.map((o) => ({ value: Number(o.value), text: o.textContent })));
    check(slots.length > 100, `a week of half-hour slots: ${slots.length}`);
    check(slots.every((s) => /^\d{4}-\d\d-\d\d \d\d:\d\d UTC$/.test(s.text)), `times in UTC: ${slots[0] && slots[0].text}`);
    check(
      slots.every((s) => new Date(s.value * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC" === s.text),
      "each slot's text is its time",
    );
    // Two and three hours after the first free slot: started and past the
    // no-show grace once the clock moves six hours.
    const wanted = [slots[0].value + 2 * HOUR, slots[0].value + 3 * HOUR];
    check(wanted.every((w) => slots.some((s) => s.value === w)), "both slots are free");
    const booked = [];
    for (const [i, start] of wanted.entries()) {
      await page.selectOption("#book-slot", String(start));
      check(await page.isDisabled("#book-button"), "no booking before a quote");
      await page.fill("#book-reason", reasons[i]);
      // The first pays only the deposit now.
      await page.fill("#book-pay", i === 0 ? "0.025" : "");
      await page.click("#quote-button");
      await page.waitForFunction(() => document.getElementById("quote").textContent !== "");
      const says = await page.textContent("#quote");
      check(
        says === "no coverage in force for this visit: you pay the whole fee, 0.05 ether (0.025 ether at least at booking)",
        `the quote says who pays what: ${says}`,
      );
      await page.click("#book-button");
      await waitStatus("booked appointment #");
      const done = await page.textContent("#booked");
      check(done.includes(`at ${slots.find((s) => s.value === start).text}`), `the booking says when: ${done}`);
      check(
        done.includes(i === 0 ? "paid 0.025 ether into escrow" : "paid 0.05 ether into escrow"),
        `the booking says what was paid: ${done}`,
      );
      const id = Number(await page.getAttribute("#booked", "data-appointment"));
      booked.push(id);
      await rowWith("my-appointments", id, "booked");
      // The slot is no longer offered.
      await page.waitForFunction(
        (s) => !document.querySelector(`#book-slot option[value="${s}"]`) && document.querySelectorAll("#book-slot option").length > 0,
        start,
      );
    }
    const [a, b] = booked;
    const rowA = await rowWith("my-appointments", a, "booked");
    const rowB = await rowWith("my-appointments", b, "booked");
    const cells = async (row) => row.locator("td").allTextContents();
    const [ca, cb] = [await cells(rowA), await cells(rowB)];
    check(ca[2] === "dr-cal" && ca[3] === "checkup", `provider and visit: ${ca}`);
    check(ca[5] === "0.025 ether" && ca[8] === "0.025 ether", `A paid the deposit and owes the rest: ${ca}`);
    check(cb[5] === "0.05 ether" && cb[8] === "0 ether", `B paid everything: ${cb}`);
    check(ca[9].includes("0.025 ether owed"), `in words: ${ca[9]}`);
    check((await rowA.locator("button", { hasText: "Cancel" }).count()) === 1, "a booking can be cancelled");
    check((await rowA.locator("button", { hasText: "Pay" }).count()) === 1, "what is owed can be paid");
    check((await rowB.locator("button", { hasText: "Pay" }).count()) === 0, "nothing to pay when nothing is owed");
    check((await page.locator("#my-appointments button", { hasText: "Dispute" }).count()) === 0, "nothing to dispute");
    check((await page.locator("#my-appointments").textContent()).indexOf(reasons[0]) < 0, "the reason is not in the list");
    await page.screenshot({ path: `${shots}/appointments.png`, fullPage: true });

    // The provider sees both, reads a reason, confirms both.
    await signIn(env("PROVIDER_TOKEN"));
    await page.click("#tab-calendar");
    for (const id of booked) {
      const row = await rowWith("calendar-appointments", id, "booked");
      const c = await row.locator("td").allTextContents();
      check(c[2] === "patient-0" && c[3] === "checkup", `the calendar names the patient and visit: ${c}`);
      check(/UTC$/.test(c[5]), `a booking shows its confirmation deadline: ${c[5]}`);
    }
    const calA = page.locator(`#calendar-appointments tr[data-appointment="${a}"]`);
    await calA.locator("button", { hasText: "Reason" }).click();
    await page.waitForFunction((id) => document.getElementById("reason").dataset.appointment === String(id), a);
    const reason = await page.textContent("#reason");
    check(reason.includes(reasons[0]), `the provider reads the reason: ${reason}`);
    check(!reason.includes(reasons[1]), "only that appointment's reason");
    for (const id of booked) {
      const row = page.locator(`#calendar-appointments tr[data-appointment="${id}"]`);
      await row.locator("button", { hasText: "Confirm" }).click();
      await rowWith("calendar-appointments", id, "confirmed");
    }
    check((await page.locator("#calendar-appointments button", { hasText: "Complete" }).count()) === 2, "confirmed: Complete offered");
    await page.screenshot({ path: `${shots}/calendar.png`, fullPage: true });
    console.log(JSON.stringify({ booked }));
  } else {
    const [a, b] = env("BOOKED").split(",").map(Number);
    // The provider completes A and marks B a no-show.
    await signIn(env("PROVIDER_TOKEN"));
    await page.click("#tab-calendar");
    const calA = await rowWith("calendar-appointments", a, "confirmed");
    await calA.locator("button", { hasText: "Complete" }).click();
    await waitStatus(`appointment ${a}: completed`);
    check((await status()).includes("0.025 ether to the provider"), `what was held is paid: ${await status()}`);
    await rowWith("calendar-appointments", a, "completed");
    const calB = await rowWith("calendar-appointments", b, "confirmed");
    await calB.locator("button", { hasText: "No-show" }).click();
    await waitStatus(`appointment ${b}: no-show`);
    check((await status()).includes("0.025 ether back to the patient"), `the non-deposit part goes back: ${await status()}`);
    const noShow = await rowWith("calendar-appointments", b, "no-show");
    check((await noShow.locator("td").nth(6).textContent()) === "0.025 ether", "the deposit is held");
    check((await page.locator("#calendar-appointments button", { hasText: "Confirm" }).count()) === 0, "nothing left to confirm");

    // The patient sees both, pays what A still owes, disputes B.
    await signIn(env("PATIENT_TOKEN"));
    await page.click("#tab-appointments");
    const rowA = await rowWith("my-appointments", a, "completed");
    const rowB = await rowWith("my-appointments", b, "no-show");
    const ca = await rowA.locator("td").allTextContents();
    const cb = await rowB.locator("td").allTextContents();
    check(ca[4] === "completed" && ca[8] === "0.025 ether", `A completed, the rest owed: ${ca}`);
    check(cb[4] === "no-show" && cb[6] === "0.025 ether" && cb[7] === "0.025 ether", `B: deposit held, rest refunded: ${cb}`);
    check(cb[9].includes("0.025 ether refunded"), `in words: ${cb[9]}`);
    check((await page.locator("#my-appointments button", { hasText: "Cancel" }).count()) === 0, "nothing left to cancel");
    await rowA.locator("input.amount").fill("0.025");
    await rowA.locator("button", { hasText: "Pay" }).click();
    await waitStatus(`paid 0.025 ether for appointment #${a}`);
    await page.waitForFunction(
      (id) => document.querySelector(`#my-appointments tr[data-appointment="${id}"]`).children[8].textContent === "0 ether",
      a,
    );
    check((await rowA.locator("button", { hasText: "Pay" }).count()) === 0, "paid up");
    await rowB.locator("button", { hasText: "Dispute" }).click();
    await rowWith("my-appointments", b, "disputed");
    await page.click("#tab-patient");
    await page.waitForSelector('#notifications tr[data-kind="appointment.no-show"]');
    const told = await page.textContent('#notifications tr[data-kind="appointment.no-show"]');
    check(
      told.includes(`appointment #${b} at`) && told.includes("no-show (0.025 ether back to the patient)"),
      `told of the no-show in words: ${told}`,
    );
    const confirmed = await page.locator('#notifications tr[data-kind="appointment.confirmed"]').count();
    check(confirmed === 2, `told of both confirmations: ${confirmed}`);
    check((await page.locator('#notifications tr[data-kind="appointment.completed"]').count()) === 1, "told of the visit's completion");
    await page.click("#tab-appointments");
    await rowWith("my-appointments", b, "disputed");
    await page.screenshot({ path: `${shots}/appointments-after.png`, fullPage: true });
  }
  check(errors.length === 0, `no script errors: ${errors.join("; ")}`);
} finally {
  await browser.close();
}
if (failures.length) {
  console.error("FAILED: " + failures.join("; "));
  process.exit(1);
}
console.error(`ok: appointments phase ${phase}`);
