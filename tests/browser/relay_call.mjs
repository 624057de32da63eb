// One page, two RTCPeerConnections with iceTransportPolicy 'relay': a fake
// camera track goes from pc1 to pc2 through the TURN server given in the
// config. Prints one JSON line with what getStats saw.
//
// Usage: node relay_call.mjs '{"iceServers":[...],"timeoutMs":60000}'
// Chromium is the system one (/usr/bin/chromium or $CHROMIUM); playwright
// never downloads a browser here.
import { chromium } from 'playwright-core';
import { fileURLToPath, pathToFileURL } from 'node:url';
import path from 'node:path';

const cfg = JSON.parse(process.argv[2] ?? '{}');
const timeoutMs = cfg.timeoutMs ?? 60000;
const here = path.dirname(fileURLToPath(import.meta.url));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--allow-loopback-in-peer-connection',
  ],
});

let result;
try {
  const page = await browser.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(m.text()));
  await page.goto(pathToFileURL(path.join(here, 'page.html')).href);
  result = await page.evaluate(async ({ iceServers, timeoutMs }) => {
    const deadline = Date.now() + timeoutMs;
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const conf = { iceServers, iceTransportPolicy: 'relay' };
    const pc1 = new RTCPeerConnection(conf);
    const pc2 = new RTCPeerConnection(conf);
    const gathered = { pc1: [], pc2: [] };
    const errors = [];
    const wire = (from, to, name) => {
      from.onicecandidate = (e) => {
        if (e.candidate) {
          gathered[name].push(e.candidate.type + ' ' + (e.candidate.relayProtocol ?? '') + ' ' + e.candidate.address + ':' + e.candidate.port);
          to.addIceCandidate(e.candidate).catch((err) => errors.push(String(err)));
        }
      };
      from.onicecandidateerror = (e) => errors.push(`${name} candidate error ${e.errorCode} ${e.errorText} ${e.url}`);
    };
    wire(pc1, pc2, 'pc1');
    wire(pc2, pc1, 'pc2');

    let stream;
    let source;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 } });
      source = 'fake camera';
    } catch (e) {
      // Fallback: a canvas track (no secure context or no fake device).
      const c = document.createElement('canvas');
      c.width = 320; c.height = 240;
      const g = c.getContext('2d');
      let n = 0;
      setInterval(() => { g.fillStyle = `hsl(${(n += 7) % 360},80%,50%)`; g.fillRect(0, 0, 320, 240); }, 33);
      stream = c.captureStream(30);
      source = 'canvas (' + e + ')';
    }
    for (const t of stream.getTracks()) pc1.addTrack(t, stream);

    const offer = await pc1.createOffer();
    await pc1.setLocalDescription(offer);
    await pc2.setRemoteDescription(offer);
    const answer = await pc2.createAnswer();
    await pc2.setLocalDescription(answer);
    await pc1.setRemoteDescription(answer);

    const inbound = async () => {
      const stats = await pc2.getStats();
      let frames = 0;
      stats.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded ?? 0; });
      return frames;
    };
    const samples = [];
    while (Date.now() < deadline) {
      const f = await inbound();
      samples.push(f);
      // Rising and well past the first keyframe.
      if (f >= 30 && samples.length >= 2 && f > samples[samples.length - 2]) break;
      await sleep(250);
    }

    const selected = async (pc) => {
      const stats = await pc.getStats();
      const byId = new Map();
      stats.forEach((s) => byId.set(s.id, s));
      let pair;
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
      });
      if (!pair) {
        stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
      }
      if (!pair) return null;
      const pick = (c) => c && {
        type: c.candidateType, protocol: c.protocol, relayProtocol: c.relayProtocol ?? null,
        address: c.address ?? c.ip, port: c.port, url: c.url ?? null,
      };
      return {
        state: pair.state, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived,
        local: pick(byId.get(pair.localCandidateId)), remote: pick(byId.get(pair.remoteCandidateId)),
      };
    };
    const out = {
      source,
      connectionState: { pc1: pc1.connectionState, pc2: pc2.connectionState },
      iceConnectionState: { pc1: pc1.iceConnectionState, pc2: pc2.iceConnectionState },
      framesDecoded: samples[samples.length - 1] ?? 0,
      samples: samples.slice(-8),
      pairs: { pc1: await selected(pc1), pc2: await selected(pc2) },
      gathered,
      errors,
    };
    pc1.close();
    pc2.close();
    return out;
  }, { iceServers: cfg.iceServers ?? [], timeoutMs });
  result.consoleLogs = logs.slice(-20);
} catch (e) {
  result = { error: String(e && e.stack || e) };
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
