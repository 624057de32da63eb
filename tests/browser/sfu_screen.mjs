// Test 8: screen share. `ann` joins the demo page with her camera, `ben`
// subscribes. Then ann clicks the demo's "Share screen" button: headless
// Chromium with --use-fake-device-for-media-stream and
// --use-fake-ui-for-media-stream answers getDisplayMedia with a fake screen
// without a picker, and the demo publishes it with source `screen_share`.
// Measured on ben's page: the SDK's trackPublished/trackSubscribed events for
// that publication (recorded by a listener added before the click), its
// publication in room.participants, and the inbound-rtp framesDecoded of the
// screen track and of ann's camera between two samples.
//
// Config: {base, room, timeoutMs}
import { cfg, inbound, main, newPage, openDemo, pollUntil, rose } from './sfu_common.mjs';

await main(async (browser) => {
  const timeoutMs = cfg.timeoutMs ?? 20000;
  const [ann, ben] = await Promise.all(['ann', 'ben'].map((n) => newPage(browser, n)));
  await openDemo(ann, { room: cfg.room, identity: 'ann', name: 'Ann', mic: 0, simulcast: 0 });
  await openDemo(ben, { room: cfg.room, identity: 'ben', name: 'Ben', camera: 0, mic: 0 });

  const keys = ['ann/camera', 'ann/screen_share'];
  const out = {};
  // Ben decodes ann's camera before the share.
  let prev = await inbound(ben);
  out.cameraBefore = await pollUntil('ben decoding ann\'s camera', async () => {
    const cur = await inbound(ben);
    const s = { before: prev, after: cur };
    prev = cur;
    return s;
  }, (s) => (s.after['ann/camera']?.framesDecoded ?? 0) >= 10 && rose(s.before, s.after, ['ann/camera'], 'framesDecoded'),
  { timeoutMs, every: 400 });

  // Ben's own record of the SDK's track events, with the publication's source.
  await ben.evaluate(() => {
    const room = window.rtcDemo.room;
    window.screenEvents = [];
    room.on('trackPublished', (pub, p) => window.screenEvents.push({ name: 'trackPublished', sid: pub.sid, source: pub.source, identity: p?.identity }));
    room.on('trackSubscribed', (_t, pub, p) => window.screenEvents.push({ name: 'trackSubscribed', sid: pub.sid, source: pub.source, identity: p?.identity }));
  });

  // The demo's real button.
  out.buttonText = await ann.locator('#toggle-screen').textContent();
  await ann.locator('#toggle-screen').click({ timeout: 5000 });
  out.local = await pollUntil('ann\'s screen share published', () => ann.evaluate(() => {
    const pub = window.rtcDemo.room.localParticipant.getTrackBySource('screen_share');
    const t = pub?.track?.mediaStreamTrack ?? pub?.track;
    return {
      sid: pub?.sid ?? null,
      source: pub?.source ?? null,
      label: t?.label ?? null,
      settings: t?.getSettings ? t.getSettings() : null,
      button: document.getElementById('toggle-screen').textContent,
      error: window.rtcDemo.error,
    };
  }), (s) => s.sid !== null || s.error !== null, { timeoutMs, every: 200 });
  if (!out.local.sid) throw new Error(`ann's screen share failed: ${JSON.stringify(out.local)}`);

  // Ben: the publication appears, is subscribed, and both tracks decode.
  prev = await inbound(ben);
  const last = await pollUntil('ben decoding ann\'s screen and camera', async () => {
    const cur = await inbound(ben);
    const s = { before: prev, after: cur };
    prev = cur;
    return s;
  }, (s) => {
    const sc = s.after['ann/screen_share'];
    return sc?.subscribed && sc.bound && sc.sid === out.local.sid && (sc.framesDecoded ?? 0) >= 10
      && rose(s.before, s.after, keys, 'framesDecoded');
  }, { timeoutMs, every: 400 });
  out.before = last.before;
  out.after = last.after;
  out.events = await ben.evaluate(() => window.screenEvents);
  out.errors = await Promise.all([ann, ben].map((p) => p.evaluate(() => window.rtcDemo.error)));
  return out;
});
