// VP9 spatial layers (SVC). `ann` publishes her camera as one VP9 stream
// with three spatial layers (`scalabilityMode: "L3T3_KEY"`, no simulcast);
// `ben` watches it. Asked for a small size, the SFU forwards only the
// spatial layers that size needs, so ben decodes the lowest layer's
// resolution; without a limit he is back at the full resolution (after
// the keyframe the SFU asks for); a preferred quality (`h`) picks the
// middle spatial layer.
//
// Ann is Chromium (Firefox does not encode VP9 SVC); ben is `subscriber`
// ("chromium" or "firefox").
//
// Config: {base, room, timeoutMs, subscriber?}
import { cfg, launchAnother, main, newPage, openDemo, pollUntil } from './sfu_common.mjs';

const subscriber = cfg.subscriber ?? 'chromium';
const codec = cfg.codec ?? 'vp9';
cfg.browser = 'chromium';

await main(async (browser) => {
  const subBrowser = subscriber === 'chromium' ? browser : await launchAnother(subscriber);
  const ann = await newPage(browser, 'ann');
  const ben = await newPage(subBrowser, 'ben');
  const out = {};
  await openDemo(ann, { room: cfg.room, identity: 'ann', mic: 0, simulcast: 0, codec, svc: 'L3T3_KEY' });
  // Ben's tile does not ask for its own size (`adaptive: 0`): it would
  // ask again whenever it resizes (the first frames arriving), overriding
  // the sizes this script sets; that race left ben on the middle layer.
  await openDemo(ben, { room: cfg.room, identity: 'ben', camera: 0, mic: 0, adaptive: 0 });
  const timeoutMs = cfg.timeoutMs ?? 30000;

  const sent = () =>
    ann.evaluate(async () => {
      const pub = window.rtcDemo.room.localParticipant.getTrackBySource('camera');
      const out = { encodings: 0 };
      if (!pub?.sender) return out;
      const stats = await pub.sender.getStats();
      stats.forEach((s) => {
        if (s.type === 'outbound-rtp') {
          out.encodings += 1;
          out.codec = stats.get(s.codecId)?.mimeType ?? null;
          out.scalabilityMode = s.scalabilityMode ?? null;
          out.frameWidth = s.frameWidth ?? 0;
          out.frameHeight = s.frameHeight ?? 0;
        }
      });
      // The camera's size: the top spatial layer's (the encoder's own
      // frameWidth drops with its top layer when the CPU is short).
      const settings = pub.sender.track?.getSettings() ?? {};
      out.captureWidth = settings.width ?? 0;
      out.captureHeight = settings.height ?? 0;
      return out;
    });
  const received = () =>
    ben.evaluate(async () => {
      const pub = window.rtcDemo.room.participants.get('ann')?.getTrackBySource('camera');
      const out = { bound: !!pub?.receiver, framesDecoded: 0, keyFramesDecoded: 0, frameWidth: 0 };
      if (!pub?.receiver) return out;
      (await pub.receiver.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') {
          out.framesDecoded = s.framesDecoded ?? 0;
          out.keyFramesDecoded = s.keyFramesDecoded ?? 0;
          out.frameWidth = s.frameWidth ?? 0;
          out.frameHeight = s.frameHeight ?? 0;
        }
      });
      return out;
    });
  const size = (w, h) =>
    ben.evaluate(
      ([w, h]) => window.rtcDemo.room.participants.get('ann').getTrackBySource('camera').setVideoSize(w, h),
      [w, h],
    );

  // Under CPU load Chrome scales its input down, which moves every layer's
  // size mid-test; the test is about the SFU's choice among the layers, so
  // the encoder keeps its resolution (and drops frames instead).
  await pollUntil('ann keeping her resolution', () =>
    ann.evaluate(async () => {
      const sender = window.rtcDemo.room.localParticipant.getTrackBySource('camera')?.sender;
      if (!sender) return false;
      const p = sender.getParameters();
      p.degradationPreference = 'maintain-resolution';
      await sender.setParameters(p);
      return sender.getParameters().degradationPreference === 'maintain-resolution';
    }), (ok) => ok, { timeoutMs });
  // Ann's encoder up to three spatial layers at full size.
  out.sentFull = await pollUntil('ann sending three spatial layers', sent, (s) => s.scalabilityMode === 'L3T3_KEY' && s.captureWidth >= 640, { timeoutMs });
  // No limit.
  await size(0, 0);
  const full = out.sentFull.captureWidth;
  out.full = await pollUntil('ben decoding ann at full size', received, (r) => r.framesDecoded > 0 && r.frameWidth === full, { timeoutMs });
  const small = Math.floor(full / 4);
  await size(small, Math.floor(out.sentFull.captureHeight / 4));
  out.small = await pollUntil('ben decoding the lowest spatial layer', received, (r) => r.frameWidth > 0 && r.frameWidth <= small, { timeoutMs });
  const mark = out.small.framesDecoded;
  out.smallLater = await pollUntil('ben still decoding', received, (r) => r.framesDecoded > mark + 10, { timeoutMs });
  await size(0, 0);
  out.restored = await pollUntil('ben back at full size', received, (r) => r.frameWidth === full, { timeoutMs });
  // A preferred quality picks a spatial layer too: medium is the middle one.
  await ben.evaluate(() => window.rtcDemo.room.participants.get('ann').getTrackBySource('camera').setPreferredLayer('h'));
  const half = Math.floor(full / 2);
  out.medium = await pollUntil('ben decoding the middle spatial layer', received, (r) => r.frameWidth === half, { timeoutMs });
  out.sent = await sent();
  return out;
});
