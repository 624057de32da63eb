// netem browser client: one headless Chromium page in this client's
// namespace joins the rig's rtc-server through the browser SDK
// (/sdk/rtc.js, served by the server), publishes what NETEM_PUBLISH says
// (audio, video; video as 720p simulcast) and subscribes to every
// publisher, then every 250 ms appends one JSON line of getStats() values
// to $NETEM_OUT/browser-$NETEM_NODE.jsonl, which `netem run` merges into
// the timeline's `browser` objects.
//
//   node browser.mjs [--port 8080] [--room netem] [--relay [--relay-transport udp|tcp]]
//                    [--width 1280 --height 720] [--no-simulcast]
//
// --relay forces iceTransportPolicy "relay" on the page's connections (the
// SDK has no such option; the page's RTCPeerConnection is wrapped before the
// SDK loads); --relay-transport keeps only the TURN URLs of that transport. Runs until netem stops it (SIGTERM). Needs playwright-core
// from tests/browser (npm ci there) and Chromium ($CHROMIUM or /usr/bin/chromium).
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(new URL('../../tests/browser/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const flag = (name) => args.includes(`--${name}`);

const env = process.env;
const node = env.NETEM_NODE ?? 'client';
const server = env.NETEM_SERVER_ADDR ?? '127.0.0.1';
const base = `http://${server}:${opt('port', '8080')}`;
const publish = (env.NETEM_PUBLISH ?? '').split(',').filter(Boolean);
const t0 = Number(env.NETEM_T0_MS ?? Date.now());
const outDir = env.NETEM_OUT ?? '.';
const outFile = join(outDir, `browser-${node}.jsonl`);
const cfg = {
  base,
  room: opt('room', 'netem'),
  identity: node,
  audio: publish.includes('audio'),
  video: publish.includes('video'),
  simulcast: !flag('no-simulcast'),
  width: Number(opt('width', '1280')),
  height: Number(opt('height', '720')),
};
const log = (...a) => console.log(`[${node}]`, ...a);
mkdirSync(outDir, { recursive: true });
// A fresh file: a previous run into the same directory must not mix in.
writeFileSync(outFile, '');

const browser = await chromium.launch({
  executablePath: env.CHROMIUM ?? '/usr/bin/chromium',
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
    '--autoplay-policy=no-user-gesture-required',
    // getUserMedia needs a secure context; the rig's server is plain http on a 10.77 address.
    `--unsafely-treat-insecure-origin-as-secure=${base}`,
  ],
});
let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await browser.close().catch(() => {});
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

const ctx = await browser.newContext({ viewport: { width: 640, height: 360 } });
const page = await ctx.newPage();
page.on('console', (m) => {
  if (m.type() === 'error' || m.type() === 'warning') log(`console ${m.type()}: ${m.text()}`);
});
page.on('pageerror', (e) => log(`pageerror ${e.message}`));
if (flag('relay')) {
  await page.addInitScript((transport) => {
    const Native = window.RTCPeerConnection;
    // Only TURN URLs of the wanted transport (udp or tcp), if one is given.
    const keep = (u) => !transport || (u.startsWith('turn') && u.includes(`transport=${transport}`));
    const relay = (c) => ({
      ...(c ?? {}),
      iceTransportPolicy: 'relay',
      iceServers: (c?.iceServers ?? [])
        .map((s) => ({ ...s, urls: [].concat(s.urls ?? []).filter(keep) }))
        .filter((s) => s.urls.length),
    });
    class RelayOnly extends Native {
      constructor(c, ...rest) {
        super(relay(c), ...rest);
      }
      setConfiguration(c) {
        return super.setConfiguration(relay(c));
      }
    }
    window.RTCPeerConnection = RelayOnly;
  }, opt('relay-transport', ''));
}

// The server starts next to us: poll its health endpoint with a deadline.
const deadline = Date.now() + 30000;
for (;;) {
  try {
    const r = await fetch(`${base}/v1/healthz`);
    if (r.ok) break;
  } catch {}
  if (Date.now() > deadline) {
    log(`server ${base} not reachable within 30 s`);
    await stop();
  }
  await new Promise((r) => setTimeout(r, 200));
}
await page.goto(`${base}/v1/healthz`);

// In the page: join, publish, and keep every remote video at full size
// (no display-size limit, so only the server's allocator picks the layer).
const joined = await page.evaluate(async (cfg) => {
  const sdk = await import('/sdk/rtc.js');
  const res = await fetch('/v1/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ room: cfg.room, identity: cfg.identity, name: cfg.identity }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) return { error: `dev token: ${res.status} ${JSON.stringify(body)}` };
  const room = new sdk.Room({ autoSubscribe: true });
  window.netem = { room, sdk, prev: null };
  try {
    await room.connect(location.origin, body.token);
    if (cfg.video) {
      const s = await navigator.mediaDevices.getUserMedia({ video: { width: cfg.width, height: cfg.height } });
      await room.localParticipant.publishTrack(s.getVideoTracks()[0], { source: 'camera', simulcast: cfg.simulcast });
    }
    if (cfg.audio) {
      const s = await navigator.mediaDevices.getUserMedia({ audio: true });
      await room.localParticipant.publishTrack(s.getAudioTracks()[0], { source: 'microphone' });
    }
  } catch (e) {
    return { error: String(e?.stack || e) };
  }
  return { sid: room.localParticipant.sid };
}, cfg);
if (joined.error) {
  log(`joining failed: ${joined.error}`);
  await stop();
}
log(`joined ${cfg.room} as ${node} (${joined.sid}), publishing [${publish.join(', ')}]`);

/** One sample, in the page: the timeline's `browser` fields. */
const sample = () =>
  page.evaluate(async () => {
    const { room, sdk } = window.netem;
    const st = await room.getStats();
    const out = {
      sent_kbps: (st.publisher.sendBitrate ?? 0) / 1000,
      received_kbps: (st.subscriber.receiveBitrate ?? 0) / 1000,
      server_estimate_kbps: room.bandwidthEstimate == null ? null : room.bandwidthEstimate / 1000,
      pub_candidate: null,
      sub_candidate: null,
    };
    // The selected pair's local candidate: "type/transport" (transport to the relay for relay candidates).
    const pair = (report) => {
      if (!report) return null;
      const byId = new Map();
      report.forEach((s) => byId.set(s.id, s));
      let cand = null;
      report.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) {
          const p = byId.get(s.selectedCandidatePairId);
          const l = p && byId.get(p.localCandidateId);
          if (l) cand = `${l.candidateType}/${l.candidateType === 'relay' ? l.relayProtocol ?? l.protocol : l.protocol}`;
        }
      });
      return cand;
    };
    out.pub_candidate = pair(st.publisher.report);
    out.sub_candidate = pair(st.subscriber.report);
    // Sent video: the highest layer whose bytes rose since the last sample.
    for (const t of Object.values(st.tracks)) {
      if (t.direction === 'outbound' && t.kind === 'video') {
        const live = (t.layers ?? []).filter((l) => l.active && l.bitrate > 0);
        out.sent_layer = live.length ? live[live.length - 1].rid : null;
        out.sent_layers = live.length;
      }
    }
    // Received: the first remote camera and microphone.
    for (const p of room.participants.values()) {
      for (const pub of p.tracks.values()) {
        if (!pub.receiver) continue;
        // Played like a real page: audio is only decoded (and counted) while a sink pulls it.
        if (pub.track && !pub._netemEl) {
          pub._netemEl = pub.attach();
          pub._netemEl.muted = false;
          document.body.append(pub._netemEl);
        }
        const t = st.tracks[pub.sid];
        if (pub.kind === 'video' && out.received_width === undefined) {
          if (pub.settings.max_width !== 0 || pub.settings.max_height !== 0) pub.setVideoSize(0, 0);
          out.received_from = p.identity;
          out.received_layer = t?.layer ?? null;
          out.received_width = t?.width ?? null;
          out.received_height = t?.height ?? null;
          out.video_kbps = (t?.bitrate ?? 0) / 1000;
          out.rtt_ms = t?.rtt == null ? null : t.rtt * 1000;
          // One inbound-rtp per SSRC the receiver has seen: counters are
          // summed, the resolution is the most recently active stream's.
          const video = [];
          (await pub.receiver.getStats()).forEach((s) => {
            if (s.type === 'inbound-rtp') video.push(s);
          });
          const sum = (f) => video.reduce((a, s) => a + Math.max(0, s[f] ?? 0), 0);
          const cur = video.reduce((a, s) => ((s.lastPacketReceivedTimestamp ?? 0) > (a?.lastPacketReceivedTimestamp ?? -1) ? s : a), null);
          out.video_ssrcs = video.length;
          if (cur) {
            out.frames_decoded = sum('framesDecoded');
            out.freezes = sum('freezeCount');
            out.freeze_ms = Math.round(sum('totalFreezesDuration') * 1000);
            out.packets_received = sum('packetsReceived');
            out.packets_lost = sum('packetsLost');
            out.nacks = sum('nackCount');
            out.keyframes = sum('keyFramesDecoded');
            if (cur.frameWidth) {
              out.received_width = cur.frameWidth;
              out.received_height = cur.frameHeight ?? null;
              out.received_layer = sdk.layerForResolution(pub.layers, cur.frameWidth, cur.frameHeight);
            }
          }
        }
        if (pub.kind === 'audio' && out.audio_samples === undefined) {
          out.audio_kbps = (t?.bitrate ?? 0) / 1000;
          out.audio_samples = 0;
          out.audio_concealed = 0;
          (await pub.receiver.getStats()).forEach((s) => {
            if (s.type !== 'inbound-rtp') return;
            out.audio_samples += s.totalSamplesReceived ?? 0;
            out.audio_concealed += s.concealedSamples ?? 0;
          });
        }
      }
    }
    if (out.rtt_ms == null) out.rtt_ms = st.subscriber.rtt != null ? st.subscriber.rtt * 1000 : st.publisher.rtt != null ? st.publisher.rtt * 1000 : null;
    // Interval loss of the received video, from the cumulative counters.
    const prev = window.netem.prev;
    if (out.packets_received !== undefined && prev?.packets_received !== undefined) {
      const lost = out.packets_lost - prev.packets_lost;
      const got = out.packets_received - prev.packets_received;
      out.packet_loss_pct = lost + got > 0 ? (Math.max(0, lost) * 100) / (Math.max(0, lost) + got) : 0;
    }
    window.netem.prev = out;
    return out;
  });

// Every 250 ms on the rig's clock (t = 0 when its links were created).
let next = Date.now();
while (!stopping) {
  try {
    const s = await sample();
    s.t_s = (Date.now() - t0) / 1000;
    appendFileSync(outFile, JSON.stringify(s) + '\n');
  } catch (e) {
    if (stopping) break;
    log(`sampling failed: ${e.message}`);
  }
  next += 250;
  await new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())));
}
