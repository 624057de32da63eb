// Temporal layers. `ann` publishes her camera from the demo page (VP8
// simulcast: Chrome encodes each layer with three temporal layers); `ben`
// watches layer q and asks for at most a third of its frame rate: the SFU
// drops the upper temporal layers, so his decoded frame rate falls while
// frames keep being decoded (no keyframe is needed to drop them); with the
// limit lifted it comes back (at the encoder's next layer-sync frame).
// With `codec` (and `svc`, a scalability mode such as L1T3) ann's camera
// prefers that codec and asks for those layers in each encoding.
//
// Config: {base, room, timeoutMs, codec?, svc?}
import { cfg, main, newPage, openDemo, pollUntil, sleep } from './sfu_common.mjs';

await main(async (browser) => {
  const ann = await newPage(browser, 'ann');
  const ben = await newPage(browser, 'ben');
  const out = {};
  await openDemo(ann, { room: cfg.room, identity: 'ann', mic: 0, ...(cfg.codec ? { codec: cfg.codec } : {}), ...(cfg.svc ? { svc: cfg.svc } : {}) });
  await openDemo(ben, { room: cfg.room, identity: 'ben', camera: 0, mic: 0 });
  const timeoutMs = cfg.timeoutMs ?? 30000;

  // What ann's encoder sends, per rid.
  const sent = () =>
    ann.evaluate(async () => {
      const pub = window.rtcDemo.room.localParticipant.getTrackBySource('camera');
      const out = {};
      if (!pub?.sender) return out;
      const stats = await pub.sender.getStats();
      stats.forEach((s) => {
        if (s.type === 'outbound-rtp' && s.rid) {
          const codec = stats.get(s.codecId)?.mimeType ?? null;
          out[s.rid] = { fps: s.framesPerSecond ?? 0, scalabilityMode: s.scalabilityMode ?? null, active: s.active, codec };
        }
      });
      return out;
    });
  // What ben decodes of ann's camera.
  const received = () =>
    ben.evaluate(async () => {
      const pub = window.rtcDemo.room.participants.get('ann')?.getTrackBySource('camera');
      const out = { bound: !!pub?.receiver, framesDecoded: 0, keyFramesDecoded: 0 };
      if (!pub?.receiver) return out;
      (await pub.receiver.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') {
          out.framesDecoded = s.framesDecoded ?? 0;
          out.keyFramesDecoded = s.keyFramesDecoded ?? 0;
          out.framesPerSecond = s.framesPerSecond ?? 0;
          out.frameWidth = s.frameWidth ?? 0;
        }
      });
      return out;
    });
  // Decoded frames per second over `ms`, from framesDecoded (getStats'
  // framesPerSecond is the same, smoothed over an unknown window).
  const rate = async (ms = 2000) => {
    const a = await received();
    const t0 = Date.now();
    await sleep(ms);
    const b = await received();
    const fps = ((b.framesDecoded - a.framesDecoded) * 1000) / (Date.now() - t0);
    return { fps, keyFrames: b.keyFramesDecoded - a.keyFramesDecoded, ...b };
  };
  const limit = (fps) =>
    ben.evaluate((fps) => {
      const pub = window.rtcDemo.room.participants.get('ann').getTrackBySource('camera');
      pub.setVideoSize(0, 0);
      pub.setPreferredLayer('q');
      pub.setMaxFrameRate(fps);
    }, fps);

  out.start = await pollUntil('ben decoding ann', received, (s) => s.bound && s.framesDecoded > 0, { timeoutMs });
  await limit(0);
  out.full = await pollUntil('ben at the full frame rate', () => rate(), (r) => r.fps >= 12, { timeoutMs, every: 0 });
  out.limit = Math.max(1, Math.floor(out.full.fps / 3));
  await limit(out.limit);
  out.limited = await pollUntil('ben at a lower frame rate', () => rate(), (r) => r.fps > 0 && r.fps <= out.full.fps * 0.5, { timeoutMs, every: 0 });
  // And it stays there, decoding.
  out.limitedLater = await rate(3000);
  await limit(0);
  // Against what ann sends now: on this 2-core machine Chrome may lower
  // its camera's frame rate mid-test (CPU adaptation), below the full rate
  // measured at the start.
  const restoredRate = async () => ({ ...(await rate()), sentFps: (await sent()).q?.fps ?? 0 });
  out.restored = await pollUntil('ben back at the full frame rate', restoredRate, (r) => r.fps >= Math.min(out.full.fps, r.sentFps) * 0.75, { timeoutMs, every: 0 });
  out.sent = await sent();
  return out;
});
