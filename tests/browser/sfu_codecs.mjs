// Test 13: codecs through the SFU. Three publishers on the demo page prefer
// VP9, H.264 and AV1 for their cameras (single stream); `dan` subscribes
// and publishes nothing. Each publisher also publishes a silent microphone
// (an AudioContext destination with no input), with Opus DTX on (ann, ben)
// or off (cat). Measured on dan's page: each camera's inbound-rtp codec and
// framesDecoded rising between two samples, each microphone's
// totalSamplesReceived rising. On the publishers' pages: the Opus formats of
// the answer the SDK applied and the microphone's packetsSent over the same
// window (DTX sends a packet every 400 ms or so in silence instead of every
// 20 ms).
//
// Config: {base, room, timeoutMs}
import { cfg, inbound, main, newPage, openDemo, pollUntil, rose, sleep } from './sfu_common.mjs';

const pubs = [
  { identity: 'ann', codec: 'vp9', dtx: 1 },
  { identity: 'ben', codec: 'h264', dtx: 1 },
  { identity: 'cat', codec: 'av1', dtx: 0 },
];

/** In a publisher's page: its microphone's packetsSent and the answer's Opus fmtp. */
async function micOut(page) {
  return page.evaluate(async () => {
    const room = window.rtcDemo.room;
    const pub = [...room.localParticipant.tracks.values()].find((p) => p.source === 'microphone');
    let packetsSent = null;
    let codec = null;
    const stats = await pub.transceiver.sender.getStats();
    stats.forEach((s) => {
      if (s.type !== 'outbound-rtp') return;
      packetsSent = s.packetsSent;
      codec = stats.get(s.codecId)?.mimeType ?? null;
    });
    const sdp = room._pub.remoteDescription.sdp;
    const pt = /a=rtpmap:(\d+) opus\/48000/i.exec(sdp)?.[1];
    const fmtp = new RegExp(`a=fmtp:${pt} (.*)`).exec(sdp)?.[1] ?? '';
    const audio = sdp.split(/\r?\n(?=m=)/).find((m) => m.startsWith('m=audio')) ?? '';
    const formats = audio.split(/\r?\n/).filter((l) => /^(m=audio|a=rtpmap|a=fmtp)/.test(l));
    const first = /^m=audio \S+ \S+ (\d+)/m.exec(audio)?.[1];
    const redFirst = new RegExp(`^a=rtpmap:${first} red/48000`, 'mi').test(audio);
    return { packetsSent, codec, fmtp, formats, redFirst };
  });
}

await main(async (browser) => {
  const timeoutMs = cfg.timeoutMs ?? 30000;
  const pages = await Promise.all(pubs.map((p) => newPage(browser, p.identity)));
  const dan = await newPage(browser, 'dan');
  await Promise.all(
    pubs.map((p, i) => openDemo(pages[i], { room: cfg.room, identity: p.identity, codec: p.codec, mic: 0, simulcast: 0 })),
  );
  await Promise.all(
    pubs.map((p, i) =>
      pages[i].evaluate(async (dtx) => {
        // An oscillator through a zero gain: digital silence, rendered
        // continuously while the context runs.
        const ctx = new AudioContext();
        await ctx.resume();
        const dst = ctx.createMediaStreamDestination();
        const osc = ctx.createOscillator();
        const mute = ctx.createGain();
        mute.gain.value = 0;
        osc.connect(mute).connect(dst);
        osc.start();
        window.silence = { ctx, osc };
        const track = dst.stream.getAudioTracks()[0];
        await window.rtcDemo.room.localParticipant.publishTrack(track, { source: 'microphone', dtx });
      }, !!p.dtx),
    ),
  );
  await openDemo(dan, { room: cfg.room, identity: 'dan', camera: 0, mic: 0 });

  const cams = pubs.map((p) => `${p.identity}/camera`);
  const mics = pubs.map((p) => `${p.identity}/microphone`);
  let prev = await inbound(dan);
  const last = await pollUntil(
    'dan decoding every camera and receiving every microphone',
    async () => {
      const cur = await inbound(dan);
      const s = { before: prev, after: cur };
      prev = cur;
      return s;
    },
    (s) =>
      cams.every((k) => (s.after[k]?.framesDecoded ?? 0) >= 10) &&
      rose(s.before, s.after, cams, 'framesDecoded') &&
      rose(s.before, s.after, mics, 'totalSamplesReceived'),
    { timeoutMs, every: 500 },
  );

  // Microphone packets over the same 4 s on every publisher.
  const t0 = await Promise.all(pages.map(micOut));
  await sleep(4000);
  const t1 = await Promise.all(pages.map(micOut));
  const mic = pubs.map((p, i) => ({
    identity: p.identity,
    dtx: p.dtx,
    fmtp: t1[i].fmtp,
    packets: t1[i].packetsSent - t0[i].packetsSent,
    answer: t1[i].formats,
    sentCodec: t1[i].codec,
    redFirst: t1[i].redFirst,
  }));
  const errors = await Promise.all([...pages, dan].map((p) => p.evaluate(() => window.rtcDemo.error)));
  return { before: last.before, after: last.after, mic, errors };
});
