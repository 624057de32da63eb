// Test 3: simulcast. `ann` publishes her camera (1280x720, three layers)
// from the demo page; `ben` (demo page, no media of his own) prefers layer
// q, then f. After each switch his decoded frameWidth must equal the width
// ann's encoder is sending on that layer (getStats on both sides). Layers
// nobody needs are paused by dynacast, so asking for f also checks that it
// is resumed.
//
// Config: {base, room, timeoutMs}
import { cfg, main, newPage, openDemo, pollUntil } from './sfu_common.mjs';

await main(async (browser) => {
  const ann = await newPage(browser, 'ann');
  const ben = await newPage(browser, 'ben');
  const out = {};
  await openDemo(ann, { room: cfg.room, identity: 'ann', mic: 0 });
  await openDemo(ben, { room: cfg.room, identity: 'ben', camera: 0, mic: 0 });
  const timeoutMs = cfg.timeoutMs ?? 30000;

  // What ann sends: width per rid.
  const sent = () =>
    ann.evaluate(async () => {
      const pub = window.rtcDemo.room.localParticipant.getTrackBySource('camera');
      const out = {};
      if (!pub?.sender) return out;
      (await pub.sender.getStats()).forEach((s) => {
        if (s.type === 'outbound-rtp' && s.rid) out[s.rid] = { width: s.frameWidth ?? 0, framesEncoded: s.framesEncoded ?? 0, active: s.active };
      });
      return out;
    });
  // What ben decodes of ann's camera.
  const received = () =>
    ben.evaluate(async () => {
      const pub = window.rtcDemo.room.participants.get('ann')?.getTrackBySource('camera');
      const out = { bound: !!pub?.receiver, layers: pub?.layers ?? [] };
      if (!pub?.receiver) return out;
      (await pub.receiver.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') {
          out.frameWidth = s.frameWidth ?? 0;
          out.framesDecoded = s.framesDecoded ?? 0;
        }
      });
      return out;
    });
  const prefer = (layer) =>
    ben.evaluate((layer) => {
      const pub = window.rtcDemo.room.participants.get('ann').getTrackBySource('camera');
      pub.setVideoSize(0, 0); // no size limit: only the preference decides
      pub.setPreferredLayer(layer);
    }, layer);

  // Three layers announced and sent (dynacast may pause the ones nobody
  // needs yet: the preference below must bring them back).
  out.start = await pollUntil('ann publishing three layers and ben receiving', async () => ({ sent: await sent(), received: await received() }),
    (s) => ['q', 'h', 'f'].every((r) => r in s.sent) && s.received.layers.length === 3 && s.received.framesDecoded > 0, { timeoutMs });

  const steps = {};
  for (const layer of ['q', 'f']) {
    await prefer(layer);
    let prevFrames = -1;
    steps[layer] = await pollUntil(
      `ben decoding layer ${layer}`,
      async () => {
        const s = { sent: await sent(), received: await received(), prevFrames };
        prevFrames = s.received.framesDecoded ?? 0;
        return s;
      },
      (s) =>
        s.received.frameWidth > 0 &&
        s.received.frameWidth === s.sent[layer]?.width &&
        s.received.framesDecoded > s.prevFrames && s.prevFrames >= 0,
      { timeoutMs, every: 300 },
    );
  }
  out.steps = steps;
  return out;
});
