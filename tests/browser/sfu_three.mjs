// Test 2: three participants on the demo page (camera and microphone,
// simulcast as the page does by default) in one room through the SFU. Waits until every page
// decodes the other two's video and receives their audio, with the counters
// of getStats() rising between two samples.
//
// Config: {base, room, timeoutMs}
import { cfg, inbound, main, newPage, openDemo, pollUntil, rose } from './sfu_common.mjs';

const names = ['ann', 'ben', 'cat'];

await main(async (browser) => {
  const pages = await Promise.all(names.map((n) => newPage(browser, n)));
  await Promise.all(pages.map((p, i) => openDemo(p, { room: cfg.room, identity: names[i] })));
  const keysOf = (i) =>
    names.filter((_, j) => j !== i).flatMap((n) => [`${n}/camera`, `${n}/microphone`]);
  const sampleAll = () => Promise.all(pages.map((p) => inbound(p)));
  const ok = (i, before, after) => {
    const keys = keysOf(i);
    const video = keys.filter((k) => k.endsWith('/camera'));
    const audio = keys.filter((k) => k.endsWith('/microphone'));
    return (
      video.every((k) => (after[k]?.framesDecoded ?? 0) >= 10) &&
      rose(before, after, video, 'framesDecoded') &&
      rose(before, after, audio, 'totalSamplesReceived')
    );
  };
  let prev = await sampleAll();
  const last = await pollUntil(
    'every page decoding the other two',
    async () => {
      const cur = await sampleAll();
      const done = pages.map((_, i) => ok(i, prev[i], cur[i]));
      const out = { before: prev, after: cur, done };
      prev = cur;
      return out;
    },
    (s) => s.done.every(Boolean),
    { timeoutMs: cfg.timeoutMs ?? 40000, every: 500 },
  );
  const errors = await Promise.all(pages.map((p) => p.evaluate(() => window.rtcDemo.error)));
  return { names, before: last.before, after: last.after, errors };
});
