// Test 1: two RTCPeerConnections in one page, iceTransportPolicy 'relay',
// with the ICE servers the page fetched from rtc-server's
// POST /v1/turn/credentials: each sends a fake camera to the other through
// the embedded relay. Reports the selected candidate pairs and framesDecoded
// samples of both sides.
//
// Config: {base, token (room_join), timeoutMs}
import { cfg, main, newPage } from './sfu_common.mjs';

await main(async (browser) => {
  const page = await newPage(browser, 'relay');
  await page.goto(`${cfg.base}/v1/healthz`);
  return page.evaluate(async ({ token, timeoutMs }) => {
    const res = await fetch('/v1/turn/credentials', {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ttl: 600 }),
    });
    const creds = await res.json();
    if (res.status !== 200) return { error: `POST /v1/turn/credentials: ${res.status} ${JSON.stringify(creds)}` };
    const conf = { iceServers: creds.iceServers, iceTransportPolicy: 'relay' };
    const pc1 = new RTCPeerConnection(conf);
    const pc2 = new RTCPeerConnection(conf);
    const errors = [];
    const wire = (from, to, name) => {
      from.onicecandidate = (e) => {
        if (e.candidate) to.addIceCandidate(e.candidate).catch((err) => errors.push(String(err)));
      };
      from.onicecandidateerror = (e) => errors.push(`${name} candidate error ${e.errorCode} ${e.errorText} ${e.url}`);
    };
    wire(pc1, pc2, 'pc1');
    wire(pc2, pc1, 'pc2');
    for (const pc of [pc1, pc2]) {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 } });
      for (const t of stream.getTracks()) pc.addTrack(t, stream);
    }
    const offer = await pc1.createOffer();
    await pc1.setLocalDescription(offer);
    await pc2.setRemoteDescription(offer);
    const answer = await pc2.createAnswer();
    await pc2.setLocalDescription(answer);
    await pc1.setRemoteDescription(answer);

    const frames = async (pc) => {
      let f = 0;
      (await pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') f = s.framesDecoded ?? 0;
      });
      return f;
    };
    const selected = async (pc) => {
      const stats = await pc.getStats();
      const byId = new Map();
      stats.forEach((s) => byId.set(s.id, s));
      let pair;
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
      });
      if (!pair) return null;
      const pick = (c) =>
        c && { type: c.candidateType, relayProtocol: c.relayProtocol ?? null, address: c.address, port: c.port, url: c.url ?? null };
      return { state: pair.state, local: pick(byId.get(pair.localCandidateId)), remote: pick(byId.get(pair.remoteCandidateId)) };
    };
    // Until both sides decode, and keep decoding (two rising samples past 30 frames).
    const deadline = Date.now() + timeoutMs;
    const samples = { pc1: [], pc2: [] };
    const rising = (s) => s.length >= 2 && s[s.length - 1] >= 30 && s[s.length - 1] > s[s.length - 2];
    while (Date.now() < deadline) {
      samples.pc1.push(await frames(pc1));
      samples.pc2.push(await frames(pc2));
      if (rising(samples.pc1) && rising(samples.pc2)) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    const out = {
      iceServers: creds.iceServers.map((s) => ({ urls: s.urls, hasUsername: !!s.username, hasCredential: !!s.credential })),
      connectionState: { pc1: pc1.connectionState, pc2: pc2.connectionState },
      samples: { pc1: samples.pc1.slice(-6), pc2: samples.pc2.slice(-6) },
      pairs: { pc1: await selected(pc1), pc2: await selected(pc2) },
      errors,
    };
    pc1.close();
    pc2.close();
    return out;
  }, { token: cfg.token, timeoutMs: cfg.timeoutMs ?? 30000 });
});
