// A patient registers a passkey on the page with the operator's one-time
// code and signs in with it and a TOTP code, in headless Chromium with
// DevTools' virtual authenticator standing in for a platform authenticator
// (CTAP2, internal transport, user verification: the biometric factor).
// Refused on the way, each with the page saying why: a sign-in before any
// passkey, a wrong enrolment code, a replayed assertion (posted again as
// captured, and inside a fresh ceremony), a wrong TOTP code, a token used
// after sign-out, an authenticator that does not verify the user.
// cli/tests/it/web.rs sets the environment, starts the server and checks
// the audit log and the stored passkey through the CLI.
import { createHmac } from "node:crypto";
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const server = env("COHORT_SERVER");
const account = env("ACCOUNT");
const code = env("ENROLMENT_CODE");
const secret = env("TOTP_SECRET");
const shots = env("SHOT_DIR");

// RFC 6238 (HMAC-SHA-1, 6 digits, 30 s), as an authenticator app computes it.
function base32(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0;
  let value = 0;
  const out = [];
  for (const ch of text.replace(/=+$/, "")) {
    value = ((value << 5) | alphabet.indexOf(ch)) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 255);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}
function totpAt(step) {
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(step));
  const h = createHmac("sha1", base32(secret)).update(msg).digest();
  const o = h[h.length - 1] & 15;
  const n = (((h[o] & 127) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3]) % 1_000_000;
  return String(n).padStart(6, "0");
}
// Each step signs in once: every code asked for is of a later step than
// the last, and the current one or the next (which the server accepts).
let lastStep = 0;
function nextCode() {
  const now = Math.floor(Date.now() / 1000 / 30);
  const step = Math.max(lastStep + 1, now);
  if (step > now + 1) throw new Error("more than two sign-ins within one TOTP step");
  lastStep = step;
  return totpAt(step);
}

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
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(m.text());
  });
  // The platform authenticator: DevTools' virtual one.
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  // Every sign-in's last request, as the browser sent it.
  const finished = [];
  page.on("request", (r) => {
    if (r.url().endsWith("/api/passkeys/sign-in/finish")) finished.push(r.postData());
  });

  const status = async () => (await page.textContent("#status")) || "";
  const waitStatus = (text) =>
    page.waitForFunction((t) => document.getElementById("status").textContent.includes(t), text);
  const signedIn = () =>
    page.waitForFunction(() => document.getElementById("whoami").textContent !== "");
  const passkeySignIn = async (totp) => {
    await page.fill("#account", account);
    await page.fill("#totp", totp);
    await page.click("#passkey-button");
  };
  // A request the page's own script would not make, from inside the page.
  const postRaw = (path, body) =>
    page.evaluate(async ([p, b]) => {
      const r = await fetch(p, { method: "POST", headers: { "content-type": "application/json" }, body: b });
      return { status: r.status, body: await r.json().catch(() => ({})) };
    }, [path, body]);

  await page.goto(server + "/");
  check(await page.evaluate(() => window.isSecureContext), "the page is a secure context (localhost)");

  // No passkey yet: the page says how to get one.
  await passkeySignIn("000000");
  await waitStatus("has no passkey");

  // A wrong enrolment code registers nothing.
  await page.click("#register summary");
  await page.fill("#register-account", account);
  await page.fill("#register-code", "AAAAAAAAAAAAAAAA");
  await page.click("#register-button");
  await waitStatus("enrolment code is wrong");
  let creds = (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials;
  check(creds.length === 0, "nothing was created with a wrong code");

  // The right code: a passkey on the authenticator, registered on the server.
  await page.fill("#register-code", code);
  await page.fill("#register-label", "test laptop");
  await page.click("#register-button");
  await waitStatus("registered for");
  check((await status()).includes(`"test laptop" registered for ${account}`), `registration said: ${await status()}`);
  creds = (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials;
  check(creds.length === 1, `one credential on the authenticator: ${creds.length}`);
  check((await page.inputValue("#account")) === account, "the sign-in form has the account");
  // The code is used up.
  const again = await postRaw("/api/passkeys/register/start", JSON.stringify({ account, code }));
  check(again.status === 401 && /wrong, was already used/.test(again.body.error), `a used code: ${JSON.stringify(again)}`);

  // Sign in: passkey (user verified) and the TOTP code.
  await passkeySignIn(nextCode());
  await signedIn();
  check((await page.textContent("#whoami")).startsWith(account), "signed in as the patient");
  check(!(await page.isHidden("#tab-patient")), "the patient's view");
  await page.waitForFunction(() => document.getElementById("session-info").textContent !== "");
  check((await page.textContent("#session-info")).includes("passkey + totp"), `factors shown: ${await page.textContent("#session-info")}`);
  const afterSignIn = (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials[0];
  check(afterSignIn.signCount >= 1, "the authenticator counted the assertion");
  await page.screenshot({ path: `${shots}/passkey.png`, fullPage: true });

  // The assertion replayed as captured: its ceremony is used up.
  check(finished.length === 1, `one sign-in request captured: ${finished.length}`);
  const replay = await postRaw("/api/passkeys/sign-in/finish", finished[0]);
  check(replay.status === 401, `the replay is refused: ${JSON.stringify(replay)}`);
  check(/already used/.test(replay.body.error || ""), `the replay's refusal says why: ${JSON.stringify(replay)}`);
  check(!("token" in replay.body), "no token for a replay");
  // Replayed into a fresh ceremony: its challenge is not the one signed.
  const fresh = await postRaw("/api/passkeys/sign-in/start", JSON.stringify({ account }));
  const spliced = JSON.parse(finished[0]);
  spliced.ceremony = fresh.body.ceremony;
  const replay2 = await postRaw("/api/passkeys/sign-in/finish", JSON.stringify(spliced));
  check(replay2.status === 401 && /refused/.test(replay2.body.error || ""), `a replay in a new ceremony: ${JSON.stringify(replay2)}`);

  // Signing out ends the token on the server.
  const token = await page.evaluate(() => sessionStorage.getItem("cohort.token"));
  await page.click("#signout");
  await waitStatus("signed out");
  const ended = await page.evaluate(async (t) => (await fetch("/api/session", { headers: { authorization: "Bearer " + t } })).status, token);
  check(ended === 401, `the token after sign-out: ${ended}`);

  // The passkey with a wrong TOTP code: refused, nothing signed in.
  const right = nextCode();
  const wrong = String((Number(right) + 1) % 1_000_000).padStart(6, "0");
  await passkeySignIn(wrong);
  await waitStatus("wrong or expired");
  check(await page.isHidden("#tabs"), "a wrong code signs nothing in");
  check(!(await page.evaluate(() => sessionStorage.getItem("cohort.token"))), "no token kept");
  // And the right one still signs in.
  await passkeySignIn(right);
  await signedIn();
  // Signed out at once, while the patient's view may still be loading.
  await page.click("#signout");
  await waitStatus("signed out");

  // An authenticator that does not verify its user is not enough.
  await cdp.send("WebAuthn.setUserVerified", { authenticatorId, isUserVerified: false });
  await passkeySignIn(totpAt(lastStep + 1));
  await page.waitForFunction(() => document.getElementById("status").className === "error");
  // Chromium refuses before the server sees anything, or the server refuses
  // an assertion without the user-verified flag: either way, nothing.
  check(/not used|verif/i.test(await status()), `without user verification: ${await status()}`);
  check(await page.isHidden("#tabs"), "no sign-in without user verification");

  check(errors.length === 0, `page errors: ${errors.join(" | ")}`);
  console.log(JSON.stringify({ credential: afterSignIn.credentialId, failures }));
} finally {
  await browser.close();
}
if (failures.length) {
  console.error("FAILED:\n" + failures.join("\n"));
  process.exit(1);
}
