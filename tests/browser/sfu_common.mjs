// Shared helpers of the sfu_*.mjs scripts, which tests/tests/sfu_browser.rs
// runs inside a network namespace holding only `lo`, next to an rtc-server.
//
// Every script takes one JSON argument (at least `base`, the server's
// http://127.0.0.1:PORT) and prints one JSON line: what it measured, or
// `{"error": ..., "logs": [...]}`. Waits are bounded: a condition is polled
// until it holds or its deadline passes, and a failure carries the last
// sample. Chromium is the system one (/usr/bin/chromium or $CHROMIUM),
// driven by playwright; Firefox is Debian's firefox-esr ($FIREFOX), driven
// by puppeteer-core over WebDriver BiDi (playwright cannot drive a stock
// Firefox). Neither library downloads a browser here. Scripts pick the
// browser with `cfg.browser` ("chromium" by default); the page helpers
// below accept either library's pages.
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

export const cfg = JSON.parse(process.argv[2] ?? '{}');
export const base = cfg.base;
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Console output of every page, for failure reports. */
export const logs = [];

export async function launch(kind = cfg.browser ?? 'chromium') {
  if (kind === 'firefox') return launchFirefox();
  if (kind !== 'chromium') throw new Error(`unknown browser ${kind}`);
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      '--allow-loopback-in-peer-connection',
      '--autoplay-policy=no-user-gesture-required',
      ...(cfg.chromiumArgs ?? []),
    ],
  });
}

/**
 * Firefox with fake capture devices, no permission prompt, and ICE on
 * loopback: the test's namespace has only `lo`, which Firefox skips by
 * default, and host candidates must be plain addresses (mDNS names do not
 * resolve there). Camera and microphone are also granted as permissions:
 * without a granted permission Firefox gathers only the default route's
 * address, and a namespace with only `lo` has no default route, so it would
 * gather no candidate at all ("failed to find default addresses").
 */
async function launchFirefox() {
  return puppeteer.launch({
    browser: 'firefox',
    executablePath: process.env.FIREFOX ?? '/usr/bin/firefox-esr',
    headless: true,
    extraPrefsFirefox: {
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      'media.peerconnection.ice.loopback': true,
      'media.peerconnection.ice.obfuscate_host_addresses': false,
      'permissions.default.camera': 1,
      'permissions.default.microphone': 1,
      'media.autoplay.default': 0,
      'media.autoplay.blocking_policy': 0,
    },
  });
}

/** Which browser a page (of either library) belongs to. */
export function browserOf(browser) {
  return browser.newContext ? 'chromium' : 'firefox';
}

/** A page in its own context (a participant), with its console captured under `name`. */
export async function newPage(browser, name, viewport = { width: 960, height: 600 }) {
  let page;
  if (browser.newContext) {
    const ctx = await browser.newContext({ viewport });
    page = await ctx.newPage();
  } else {
    const ctx = await browser.createBrowserContext();
    page = await ctx.newPage();
    await page.setViewport(viewport);
  }
  page.on('console', (m) => logs.push(`${name}: ${m.type()} ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`${name}: pageerror ${e.message}`));
  return page;
}

/**
 * Makes every RTCPeerConnection the page creates relay-only, with only the
 * ICE server URLs of `scheme` ("turn" or "turns") and, if given,
 * `transport` ("udp" or "tcp"): a client behind a firewall that lets
 * nothing but one kind of TURN connection out. Call before the page loads.
 */
export async function forceRelay(page, { scheme, transport = null }) {
  const init = ({ scheme, transport }) => {
    const keep = (u) => u.startsWith(`${scheme}:`) && (!transport || u.includes(`transport=${transport}`));
    const Native = window.RTCPeerConnection;
    const relay = (c) => ({
      ...(c ?? {}),
      iceTransportPolicy: 'relay',
      iceServers: (c?.iceServers ?? [])
        .map((s) => ({ ...s, urls: [].concat(s.urls ?? []).filter(keep) }))
        .filter((s) => s.urls.length),
    });
    window.RTCPeerConnection = class extends Native {
      constructor(c, ...rest) {
        super(relay(c), ...rest);
      }
      setConfiguration(c) {
        return super.setConfiguration(relay(c));
      }
    };
  };
  // playwright: addInitScript(fn, arg); puppeteer: evaluateOnNewDocument(fn, arg).
  if (page.addInitScript) await page.addInitScript(init, { scheme, transport });
  else await page.evaluateOnNewDocument(init, { scheme, transport });
}

/**
 * The selected candidate pair of the demo room's publisher and subscriber
 * connections (`{pub, sub}`), and the ICE server URLs they were given.
 */
export async function selectedPairs(page) {
  return page.evaluate(async () => {
    const selected = async (pc) => {
      if (!pc) return null;
      const stats = await pc.getStats();
      const byId = new Map();
      stats.forEach((s) => byId.set(s.id, s));
      let pair;
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
      });
      if (!pair) return null;
      const pick = (c) =>
        c && { type: c.candidateType, protocol: c.protocol, relayProtocol: c.relayProtocol ?? null, address: c.address, port: c.port, url: c.url ?? null };
      return { state: pair.state, local: pick(byId.get(pair.localCandidateId)), remote: pick(byId.get(pair.remoteCandidateId)) };
    };
    const room = window.rtcDemo.room;
    const urls = (pc) => (pc ? pc.getConfiguration().iceServers.flatMap((s) => [].concat(s.urls)) : null);
    return {
      pub: await selected(room._pub),
      sub: await selected(room._sub),
      urls: { pub: urls(room._pub), sub: urls(room._sub) },
    };
  });
}

/** The demo page URL for `params` (room, identity, token, camera, mic, simulcast...). */
export function demoUrl(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) q.set(k, String(v));
  return `${base}/?${q}`;
}

/** Opens the demo page and waits until it is connected. */
export async function openDemo(page, params, timeout = 20000) {
  await page.goto(demoUrl(params));
  // Polled rather than waitForFunction, whose signature differs between
  // playwright and puppeteer.
  const st = await pollUntil(
    `demo page for ${params.identity} connected`,
    () => page.evaluate(() => ({ state: window.rtcDemo?.state ?? null, error: window.rtcDemo?.error ?? null })),
    (s) => s.state === 'connected' || s.error,
    { timeoutMs: timeout, every: 100 },
  );
  if (st.state !== 'connected') throw new Error(`demo page for ${params.identity} did not connect: ${JSON.stringify(st)}`);
  return page;
}

/**
 * Calls `sample()` every `every` ms until `done(sample)` holds; throws with
 * the last sample when `timeoutMs` passes first. Returns the last sample.
 */
export async function pollUntil(what, sample, done, { timeoutMs = 30000, every = 250 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await sample();
    if (done(last)) return last;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last sample: ${JSON.stringify(last)}`);
    }
    await sleep(every);
  }
}

/**
 * In the page: getStats() of every subscribed remote track of the demo's
 * room, keyed `identity/kind`: the inbound-rtp counters that show media
 * arriving and being decoded.
 */
export async function inbound(page) {
  return page.evaluate(async () => {
    const room = window.rtcDemo?.room;
    const out = {};
    if (!room) return out;
    // mid -> "stream track" of the server's (subscriber) offer.
    const msids = new Map();
    let mid = null;
    for (const line of (room._sub?.remoteDescription?.sdp ?? '').split(/\r?\n/)) {
      if (line.startsWith('m=')) mid = null;
      else if (line.startsWith('a=mid:')) mid = line.slice(6).trim();
      else if (line.startsWith('a=msid:') && mid !== null) msids.set(mid, line.slice(7).trim());
    }
    for (const p of room.participants.values()) {
      for (const pub of p.tracks.values()) {
        const key = `${p.identity}/${pub.source}`;
        const e = {
          sid: pub.sid, participantSid: p.sid, kind: pub.kind, muted: pub.muted, subscribed: pub.subscribed, bound: !!pub.receiver,
          msid: pub.transceiver ? msids.get(pub.transceiver.mid) ?? null : null,
        };
        out[key] = e;
        if (!pub.receiver) continue;
        const stats = await pub.receiver.getStats();
        stats.forEach((s) => {
          if (s.type !== 'inbound-rtp') return;
          e.codec = stats.get(s.codecId)?.mimeType ?? null;
          e.packetsReceived = s.packetsReceived ?? 0;
          e.bytesReceived = s.bytesReceived ?? 0;
          e.codec = stats.get(s.codecId)?.mimeType ?? null;
          if (s.kind === 'video') {
            e.framesDecoded = s.framesDecoded ?? 0;
            e.frameWidth = s.frameWidth ?? 0;
            e.frameHeight = s.frameHeight ?? 0;
          } else {
            e.totalSamplesReceived = s.totalSamplesReceived ?? 0;
            e.concealedSamples = s.concealedSamples ?? 0;
            e.audioLevel = s.audioLevel ?? 0;
          }
        });
      }
    }
    return out;
  });
}

/** Whether every counter named `field` of `keys` rose from `before` to `after`. */
export function rose(before, after, keys, field) {
  return keys.every((k) => (after[k]?.[field] ?? 0) > (before[k]?.[field] ?? 0));
}

/**
 * Runs `body(browser)` and prints its result as one JSON line; any
 * exception becomes `{"error"}` with the pages' last console lines.
 */
export async function main(body) {
  let result;
  const browser = await launch();
  try {
    result = await body(browser);
  } catch (e) {
    result = { error: String((e && e.stack) || e) };
  } finally {
    result.logs = logs.slice(-40);
    for (const b of [browser, ...extra]) await b.close().catch(() => {});
  }
  console.log(JSON.stringify(result));
}

/** Browsers a script launched besides main's; closed by `main`. */
const extra = [];

/** Another browser of `kind` for the same script (e.g. Firefox next to Chromium). */
export async function launchAnother(kind) {
  const b = await launch(kind);
  extra.push(b);
  return b;
}

/** A REST call to the server (inside the namespace, like the pages). */
export async function rest(method, path, token, body) {
  const res = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {}
  return { status: res.status, body: json ?? text };
}
