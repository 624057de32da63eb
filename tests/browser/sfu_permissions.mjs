// Test 4: permissions. `ann` publishes her camera; `ben` joins with a token
// without can_publish, so his camera is refused with an error on the page,
// while he still receives ann. An admin mutes ann's camera through the REST
// API: ben sees it muted and its frames stop. The admin removes ben through
// the REST API: his page is disconnected.
//
// Config: {base, room, annToken, benToken (no can_publish), adminToken, timeoutMs}
import { cfg, inbound, main, newPage, openDemo, pollUntil, rest } from './sfu_common.mjs';

await main(async (browser) => {
  const timeoutMs = cfg.timeoutMs ?? 20000;
  const ann = await newPage(browser, 'ann');
  const ben = await newPage(browser, 'ben');
  await openDemo(ann, { room: cfg.room, identity: 'ann', token: cfg.annToken, mic: 0, simulcast: 0 });
  await openDemo(ben, { room: cfg.room, identity: 'ben', token: cfg.benToken, mic: 0 });
  const out = {};

  // 1. ben's camera is refused, visibly.
  out.refused = await pollUntil(
    "the error on ben's page",
    () =>
      ben.evaluate(() => ({
        error: window.rtcDemo.error,
        shown: !document.getElementById('error').hidden ? document.getElementById('error').textContent : null,
        state: window.rtcDemo.state,
        published: window.rtcDemo.room.localParticipant.tracks.size,
      })),
    (s) => !!s.error,
    { timeoutMs },
  );

  // 2. ben receives ann's camera.
  let prev = await inbound(ben);
  out.receiving = await pollUntil(
    "ben decoding ann's camera",
    async () => {
      const cur = await inbound(ben);
      const s = { before: prev['ann/camera'], after: cur['ann/camera'] };
      prev = cur;
      return s;
    },
    (s) => (s.after?.framesDecoded ?? 0) > (s.before?.framesDecoded ?? 0) && s.after.framesDecoded >= 5,
    { timeoutMs },
  );

  // 3. An admin mutes ann's camera through the REST API.
  const sid = out.receiving.after.sid;
  out.mute = await rest('POST', `/v1/rooms/${cfg.room}/participants/ann/tracks/${sid}/mute`, cfg.adminToken, { muted: true });
  if (out.mute.status !== 200) throw new Error(`mute: ${JSON.stringify(out.mute)}`);
  prev = await inbound(ben);
  out.muted = await pollUntil(
    "ben seeing ann's camera muted and its frames stopped",
    async () => {
      const cur = await inbound(ben);
      const s = {
        before: prev['ann/camera'],
        after: cur['ann/camera'],
        tileNoVideo: await ben.evaluate(() => document.querySelector('.tile.remote[data-identity="ann"]')?.classList.contains('no-video') ?? null),
        annSeesOwnMuted: await ann.evaluate(() => window.rtcDemo.room.localParticipant.getTrackBySource('camera')?.muted ?? null),
      };
      prev = cur;
      return s;
    },
    (s) => s.after?.muted === true && s.tileNoVideo === true && s.after.framesDecoded === s.before?.framesDecoded,
    { timeoutMs, every: 700 },
  );

  // 4. The admin removes ben: his page is disconnected.
  out.kick = await rest('DELETE', `/v1/rooms/${cfg.room}/participants/ben`, cfg.adminToken);
  if (out.kick.status !== 204) throw new Error(`kick: ${JSON.stringify(out.kick)}`);
  out.kicked = await pollUntil(
    "ben's page disconnected",
    () =>
      ben.evaluate(() => ({
        state: window.rtcDemo.state,
        roomState: window.rtcDemo.room?.state ?? null,
        error: window.rtcDemo.error,
        status: document.getElementById('status').textContent,
        disconnected: window.rtcDemo.events.filter((e) => e.name === 'disconnected').map((e) => e.detail),
      })),
    (s) => s.disconnected.length > 0 && s.state === 'idle',
    { timeoutMs },
  );
  out.annSees = await ann.evaluate(() => [...window.rtcDemo.room.participants.keys()]);
  out.participants = await rest('GET', `/v1/rooms/${cfg.room}/participants`, cfg.adminToken);
  return out;
});
