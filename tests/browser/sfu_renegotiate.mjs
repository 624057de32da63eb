// Renegotiation mid-call: `ann` publishes camera and microphone, `ben`
// subscribes; then ann's camera is withdrawn and published again, twice:
//  A. through the SDK (unpublishTrack, then publishTrack of the same
//     MediaStreamTrack): signalling unpublishes, the transceiver stops, the
//     publisher renegotiates;
//  B. behind the SDK's back: the camera transceiver's direction goes
//     `inactive` and the publisher renegotiates; the SFU sees the m-line
//     stop sending, unpublishes the track itself and the room tells both
//     pages (ann's SDK then stops the transceiver), then publishTrack again.
// Ben must lose the camera publication each time, decode the re-published
// one (a new track sid), and receive ann's microphone throughout: its
// inbound-rtp counters are sampled at the start and the end, and the
// concealed samples in between tell whether the audio glitched.
//
// The publisher and subscriber browsers are chosen by `publisher` and
// `subscriber` ("chromium" or "firefox"), so Firefox <-> Chromium runs too.
//
// Config: {base, room, publisher, subscriber, simulcast, timeoutMs}
import { cfg, inbound, launchAnother, main, newPage, openDemo, pollUntil, rose } from './sfu_common.mjs';

const publisher = cfg.publisher ?? 'chromium';
const subscriber = cfg.subscriber ?? publisher;
// `main` launches cfg.browser: the publisher's.
cfg.browser = publisher;

await main(async (browser) => {
  const timeoutMs = cfg.timeoutMs ?? 20000;
  const subBrowser = subscriber === publisher ? browser : await launchAnother(subscriber);
  const ann = await newPage(browser, 'ann');
  const ben = await newPage(subBrowser, 'ben');
  await openDemo(ann, { room: cfg.room, identity: 'ann', name: 'Ann', simulcast: cfg.simulcast ?? 0 });
  await openDemo(ben, { room: cfg.room, identity: 'ben', name: 'Ben', camera: 0, mic: 0 });
  const out = { publisher, subscriber, steps: {} };

  // Ben's microphone counters summed over every sample from the first to
  // the last: Firefox restarts a receiver's counters when a renegotiation
  // touches its connection, so one reading at each end would not do.
  out.audio = { received: 0, concealed: 0, packets: 0, restarts: 0 };
  let lastMic = null;
  const sampleBen = async () => {
    const cur = await inbound(ben);
    const mic = cur['ann/microphone'];
    if (mic?.bound && mic.totalSamplesReceived !== undefined) {
      if (lastMic) {
        const restarted = mic.totalSamplesReceived < lastMic.totalSamplesReceived;
        if (restarted) out.audio.restarts += 1;
        const base = restarted ? { totalSamplesReceived: 0, concealedSamples: 0, packetsReceived: 0 } : lastMic;
        out.audio.received += mic.totalSamplesReceived - base.totalSamplesReceived;
        out.audio.concealed += Math.max(0, mic.concealedSamples - base.concealedSamples);
        out.audio.packets += Math.max(0, mic.packetsReceived - base.packetsReceived);
      }
      lastMic = mic;
    }
    return cur;
  };

  /** Samples ben's inbound stats until `done({before, after})`. */
  const watch = async (what, done) => {
    let prev = await sampleBen();
    return pollUntil(what, async () => {
      const cur = await sampleBen();
      const s = { before: prev, after: cur };
      prev = cur;
      return s;
    }, done, { timeoutMs, every: 400 });
  };
  const micFlows = (s) => rose(s.before, s.after, ['ann/microphone'], 'totalSamplesReceived');
  const cameraDecodes = (s, notSid) => {
    const c = s.after['ann/camera'];
    return c?.subscribed && c.bound && c.sid !== notSid && (c.framesDecoded ?? 0) >= 10
      && rose(s.before, s.after, ['ann/camera'], 'framesDecoded');
  };
  const annCamera = () => ann.evaluate(() => {
    const pub = window.rtcDemo.room.localParticipant.getTrackBySource('camera');
    return { sid: pub?.sid ?? null, error: window.rtcDemo.error };
  });
  const republish = () => ann.evaluate(async (simulcast) => {
    const lp = window.rtcDemo.room.localParticipant;
    const pub = await lp.publishTrack(window.camTrack, { source: 'camera', simulcast: !!simulcast });
    return pub.sid;
  }, cfg.simulcast ?? 0);

  const start = await watch('ben decoding ann\'s camera and microphone',
    (s) => cameraDecodes(s, null) && micFlows(s));
  out.start = start.after;
  let cameraSid = start.after['ann/camera'].sid;

  for (const step of ['sdk', 'inactive']) {
    const r = {};
    r.before = (await watch(`${step}: ben decoding`, (s) => cameraDecodes(s, null) && micFlows(s))).after;
    r.removedSid = await ann.evaluate(async (how) => {
      const room = window.rtcDemo.room;
      const pub = room.localParticipant.getTrackBySource('camera');
      window.camTrack = pub.track?.mediaStreamTrack ?? pub.track;
      if (how === 'sdk') {
        await room.localParticipant.unpublishTrack(pub);
      } else {
        // A client that just stops sending: no `unpublish` message.
        pub.transceiver.direction = 'inactive';
        await room._negotiatePublisher();
      }
      return pub.sid;
    }, step);
    // Ben loses the publication, the microphone goes on.
    r.removed = (await watch(`${step}: ann's camera gone at ben, microphone flowing`,
      (s) => !s.after['ann/camera'] && micFlows(s))).after;
    // Ann's own SDK no longer lists it (for `inactive`, the server said so).
    r.annAfterRemove = await pollUntil(`${step}: ann's camera unpublished at ann`, annCamera,
      (s) => s.sid === null || s.error !== null, { timeoutMs, every: 200 });
    r.readdedSid = await republish();
    r.readded = (await watch(`${step}: ben decoding ann's re-published camera`,
      (s) => cameraDecodes(s, cameraSid) && s.after['ann/camera'].sid === r.readdedSid && micFlows(s))).after;
    cameraSid = r.readdedSid;
    out.steps[step] = r;
  }

  out.end = (await watch('ben decoding at the end', (s) => cameraDecodes(s, null) && micFlows(s))).after;
  out.pages = {};
  for (const [name, page] of [['ann', ann], ['ben', ben]]) {
    out.pages[name] = await page.evaluate(async () => {
      const room = window.rtcDemo.room;
      // Each m-line with its direction attribute.
      const lines = (sdp) => {
        const out = [];
        for (const l of (sdp ?? '').split(/\r?\n/)) {
          if (l.startsWith('m=')) out.push({ m: l, dir: null });
          else if (out.length && /^a=(sendonly|recvonly|sendrecv|inactive)$/.test(l)) out[out.length - 1].dir = l.slice(2);
        }
        return out;
      };
      return {
        error: window.rtcDemo.error,
        state: window.rtcDemo.state,
        events: (window.rtcDemo.events ?? []).map((e) => (typeof e === "string" ? e : e?.name ?? e?.type ?? String(e))).slice(-30),
        pubState: room._pub?.connectionState ?? null,
        subState: room._sub?.connectionState ?? null,
        subMLines: lines(room._sub?.remoteDescription?.sdp),
        pubMLines: lines(room._pub?.localDescription?.sdp),
        sent: await (async () => {
          const list = [];
          for (const t of room._pub?.getTransceivers() ?? []) {
            if (t.stopped || t.currentDirection === 'stopped' || !t.sender.track) continue;
            const stats = await t.sender.getStats();
            stats.forEach((s) => {
              if (s.type === 'outbound-rtp') list.push({ kind: s.kind, rid: s.rid ?? null, frameWidth: s.frameWidth ?? 0, codec: stats.get(s.codecId)?.mimeType ?? null });
            });
          }
          return list;
        })(),
        subTransceivers: room._sub ? room._sub.getTransceivers().filter((t) => !t.stopped && t.currentDirection !== 'stopped').length : 0,
      };
    });
  }
  return out;
});
