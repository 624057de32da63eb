// A client behind a firewall that lets only TURN out: ann publishes her
// camera through the embedded relay over TLS only (turns:), ben subscribes
// through it over TCP only (turn:?transport=tcp), both relay-only. Reports
// ben's inbound video from ann and the selected candidate pairs of both
// pages' connections.
//
// Config: {base, room, timeoutMs, chromiumArgs}
import { cfg, forceRelay, inbound, main, newPage, openDemo, pollUntil, selectedPairs } from './sfu_common.mjs';

await main(async (browser) => {
  const ann = await newPage(browser, 'ann');
  const ben = await newPage(browser, 'ben');
  await forceRelay(ann, { scheme: 'turns' });
  await forceRelay(ben, { scheme: 'turn', transport: 'tcp' });
  await openDemo(ann, { room: cfg.room, identity: 'ann', mic: 0 }, 30000);
  await openDemo(ben, { room: cfg.room, identity: 'ben', camera: 0, mic: 0 }, 30000);
  let prev = {};
  const frames = (s) => s['ann/camera']?.framesDecoded ?? 0;
  const last = await pollUntil(
    "ben decoding ann's camera",
    async () => {
      const cur = await inbound(ben);
      const out = { before: prev, after: cur };
      prev = cur;
      return out;
    },
    (s) => frames(s.after) >= 30 && frames(s.after) > frames(s.before),
    { timeoutMs: cfg.timeoutMs ?? 40000, every: 500 },
  );
  return {
    before: last.before['ann/camera'] ?? null,
    after: last.after['ann/camera'] ?? null,
    pairs: { ann: await selectedPairs(ann), ben: await selectedPairs(ben) },
    errors: await Promise.all([ann, ben].map((p) => p.evaluate(() => window.rtcDemo.error))),
  };
});
