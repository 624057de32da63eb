// Test 5: resume. `ann` and `ben` publish their cameras from the demo page
// and decode each other; ann's page is saved as a screenshot. Then the test
// cuts every signalling WebSocket from outside the browser (`ss -K` on the
// server's HTTP port, inside the namespace): both pages must resume the same
// session (same participant sid) and keep decoding.
//
// Config: {base, room, httpPort, screenshot (path), timeoutMs}
import { execFileSync } from 'node:child_process';
import { cfg, inbound, main, newPage, openDemo, pollUntil } from './sfu_common.mjs';

await main(async (browser) => {
  const timeoutMs = cfg.timeoutMs ?? 20000;
  const names = ['ann', 'ben'];
  const pages = await Promise.all(names.map((n) => newPage(browser, n)));
  await Promise.all(pages.map((p, i) => openDemo(p, { room: cfg.room, identity: names[i], name: names[i] === 'ann' ? 'Ann' : 'Ben', mic: 0, simulcast: 0 })));
  const other = (i) => `${names[1 - i]}/camera`;
  const frames = async () => Promise.all(pages.map(async (p, i) => (await inbound(p))[other(i)]?.framesDecoded ?? 0));
  const rising = async (what) => {
    let prev = await frames();
    return pollUntil(what, async () => {
      const cur = await frames();
      const s = { before: prev, after: cur };
      prev = cur;
      return s;
    }, (s) => s.after.every((f, i) => f >= 10 && f > s.before[i]), { timeoutMs, every: 400 });
  };
  const out = {};
  out.beforeCut = await rising('both pages decoding each other');
  // Both tiles showing video, with the stats overlay filled in.
  await pollUntil('tiles with stats on ann\'s page', () => pages[0].evaluate(() =>
    [...document.querySelectorAll('.tile[data-identity]')].map((t) => ({ id: t.dataset.identity, width: t.dataset.width, bitrate: t.dataset.bitrate, noVideo: t.classList.contains('no-video') }))),
  (tiles) => tiles.length === 2 && tiles.every((t) => t.width && Number(t.bitrate) > 0 && !t.noVideo), { timeoutMs });
  if (cfg.screenshot) await pages[0].screenshot({ path: cfg.screenshot, fullPage: true });
  out.tiles = await pages[0].evaluate(() => [...document.querySelectorAll('.tile[data-identity]')].map((t) => ({ ...t.dataset, cls: t.className })));

  const session = () => Promise.all(pages.map((p) => p.evaluate(() => ({
    sid: window.rtcDemo.room.localParticipant.sid,
    state: window.rtcDemo.state,
    roomState: window.rtcDemo.room.state,
    events: window.rtcDemo.events.filter((e) => ['reconnecting', 'reconnected', 'disconnected'].includes(e.name)).map((e) => `${e.name}:${e.detail}`),
  }))));
  out.sessionBefore = await session();

  // Cut: abort every TCP connection to the server's HTTP port (the pages' WebSockets).
  out.cut = execFileSync('ss', ['-K', '-t', 'dst', '127.0.0.1', 'dport', '=', `:${cfg.httpPort}`], { encoding: 'utf8' });
  out.sessionAfter = await pollUntil('both pages resumed', session,
    (s) => s.every((p) => p.roomState === 'connected' && p.events.some((e) => e.startsWith('reconnected'))), { timeoutMs, every: 200 });
  out.afterResume = await rising('both pages decoding after the resume');
  out.errors = await Promise.all(pages.map((p) => p.evaluate(() => window.rtcDemo.error)));
  return out;
});
