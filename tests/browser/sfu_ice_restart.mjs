// Test 7: ICE restart on the publisher. `ann` publishes her camera from the
// demo page and `ben` decodes it. Then ann's SDK goes through its own
// "publisher ICE failed" path (`_onIceTrouble` on the publisher connection,
// what `iceconnectionstatechange` -> failed calls): it re-offers with
// `iceRestart: true` through signalling and the SFU answers on the same
// session. Measured: ann's local ICE ufrag before/after (from the local
// description and from the selected candidate pair's transport), her
// publisher connection state, the room events, and ben's framesDecoded
// before and after.
//
// Config: {base, room, timeoutMs}
import { cfg, inbound, main, newPage, openDemo, pollUntil } from './sfu_common.mjs';

await main(async (browser) => {
  const timeoutMs = cfg.timeoutMs ?? 20000;
  const [ann, ben] = await Promise.all(['ann', 'ben'].map((n) => newPage(browser, n)));
  await openDemo(ann, { room: cfg.room, identity: 'ann', name: 'Ann', mic: 0, simulcast: 0 });
  await openDemo(ben, { room: cfg.room, identity: 'ben', name: 'Ben', camera: 0, mic: 0 });

  const frames = async () => (await inbound(ben))['ann/camera']?.framesDecoded ?? 0;
  // Until ben's count has risen by `by` frames from `from` and still rises.
  const rising = async (what, from = 0, by = 10) => {
    let prev = await frames();
    return pollUntil(what, async () => {
      const cur = await frames();
      const s = { before: prev, after: cur };
      prev = cur;
      return s;
    }, (s) => s.after >= from + by && s.after > s.before, { timeoutMs, every: 400 });
  };
  // Ann's publisher connection: states, the ufrag of its local description,
  // and the transport's ufrag of the selected pair.
  const pub = () => ann.evaluate(async () => {
    const room = window.rtcDemo.room;
    const pc = room._pub;
    const ufrag = (sdp) => (sdp ?? '').split(/\r?\n/).find((l) => l.startsWith('a=ice-ufrag:'))?.slice(12).trim() ?? null;
    const out = {
      roomState: room.state,
      connectionState: pc.connectionState,
      iceConnectionState: pc.iceConnectionState,
      signalingState: pc.signalingState,
      localUfrag: ufrag(pc.localDescription?.sdp),
      remoteUfrag: ufrag(pc.remoteDescription?.sdp),
      statsUfrag: null,
      selectedPair: null,
      bytesSent: 0,
      events: window.rtcDemo.events.filter((e) => ['reconnecting', 'reconnected', 'disconnected'].includes(e.name)).map((e) => `${e.name}:${e.detail}`),
      sid: room.localParticipant.sid,
    };
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'transport') {
        out.statsUfrag = s.iceLocalUsernameFragment ?? null;
        out.selectedPair = s.selectedCandidatePairId ?? null;
        out.dtlsState = s.dtlsState;
      }
      if (s.type === 'outbound-rtp' && s.kind === 'video') out.bytesSent += s.bytesSent ?? 0;
    });
    return out;
  });

  const out = {};
  out.beforeRestart = await rising('ben decoding ann');
  out.pubBefore = await pub();
  if (out.pubBefore.connectionState !== 'connected') throw new Error(`publisher not connected before the restart: ${JSON.stringify(out.pubBefore)}`);

  // The SDK's own ICE-failure path for the publisher.
  out.triggered = await ann.evaluate(() => {
    const room = window.rtcDemo.room;
    room._onIceTrouble(room._pub);
    return { roomState: room.state, restarting: room._iceRestarting === room._pub };
  });

  // The restart's offer/answer done: a new local ufrag, connected again.
  out.pubAfter = await pollUntil('ann\'s publisher restarted and connected', pub,
    (p) => p.localUfrag && p.localUfrag !== out.pubBefore.localUfrag && p.signalingState === 'stable'
      && p.connectionState === 'connected' && p.statsUfrag === p.localUfrag && p.roomState === 'connected',
    { timeoutMs, every: 200 });
  const framesAtRestart = await frames();
  out.afterRestart = await rising('ben decoding ann after the restart', framesAtRestart, 30);
  out.framesAtRestart = framesAtRestart;
  out.pubEnd = await pub();
  out.errors = await Promise.all([ann, ben].map((p) => p.evaluate(() => window.rtcDemo.error)));
  return out;
});
