// Unit tests of the SDK's pure parts: node --test signalling/web/sdk/*.test.mjs
import test from "node:test";
import assert from "node:assert/strict";

import {
  EventEmitter,
  RtcError,
  buildMessage,
  parseMessage,
  signalUrl,
  httpUrlOf,
  ridToQuality,
  qualityToRid,
  simulcastEncodings,
  SIMULCAST_ENCODINGS,
  layersFor,
  layerForResolution,
  parseSdpMedia,
  matchSubscriptions,
  bytesToBase64,
  base64ToBytes,
  ratePerSecond,
  lossFraction,
  defaultSource,
  RoomEvent,
  encodingsForLayers,
  LocalTrackPublication,
  withOpusDtx,
  videoCodecPreferences,
} from "./rtc.js";

test("buildMessage: version, type, id, no undefined fields", () => {
  assert.deepEqual(buildMessage("subscribe", { track_sid: "TR_1" }, 7), { v: 1, type: "subscribe", id: 7, track_sid: "TR_1" });
  assert.deepEqual(buildMessage("leave"), { v: 1, type: "leave" });
  const join = buildMessage("join", { auto_subscribe: false, resume: undefined }, 1);
  assert.deepEqual(join, { v: 1, type: "join", id: 1, auto_subscribe: false });
  assert.ok(!("resume" in join));
  // The shapes the server decodes (protocol.rs): publish with layers, track_settings flattened.
  const publish = buildMessage("publish", {
    cid: "abc",
    kind: "video",
    source: "camera",
    layers: layersFor(1280, 720),
  });
  assert.equal(publish.layers.length, 3);
  assert.deepEqual(Object.keys(publish.layers[0]).sort(), ["bitrate", "height", "quality", "width"]);
  const settings = buildMessage("track_settings", { track_sid: "TR_1", paused: false, quality: "low", max_width: 320, max_height: 180, max_fps: 0 });
  assert.equal(settings.quality, "low");
});

test("parseMessage: accepts v1, names problems with RtcError", () => {
  assert.equal(parseMessage('{"v":1,"type":"pong","timestamp":1}').type, "pong");
  assert.throws(() => parseMessage("nope"), (e) => e instanceof RtcError && e.code === "malformed_message");
  assert.throws(() => parseMessage('{"v":2,"type":"pong"}'), /version 2/);
  assert.throws(() => parseMessage('{"v":1}'), /no type/);
});

test("RtcError carries the server's code and message", () => {
  const e = RtcError.fromMessage({ code: "permission_denied", message: "can_publish permission required" });
  assert.ok(e instanceof Error);
  assert.equal(e.name, "RtcError");
  assert.equal(e.code, "permission_denied");
  assert.equal(e.message, "can_publish permission required");
  assert.equal(new RtcError("unauthorized", "token expired", { status: 401 }).status, 401);
});

test("EventEmitter: on, off, once, isolation of throwing listeners", () => {
  const em = new EventEmitter();
  const seen = [];
  const a = (x) => seen.push(["a", x]);
  em.on("e", a);
  em.once("e", (x) => seen.push(["once", x]));
  assert.equal(em.emit("e", 1), true);
  em.emit("e", 2);
  em.off("e", a);
  em.emit("e", 3);
  assert.deepEqual(seen, [["a", 1], ["once", 1], ["a", 2]]);
  assert.equal(em.emit("nobody"), false);

  // off() with the original function removes a once() registration.
  const b = () => seen.push("b");
  em.once("f", b);
  em.off("f", b);
  em.emit("f");
  assert.equal(em.listenerCount("f"), 0);

  // A throwing listener does not stop the next one.
  const orig = console.error;
  console.error = () => {};
  try {
    let reached = false;
    em.on("g", () => {
      throw new Error("app bug");
    });
    em.on("g", () => (reached = true));
    em.emit("g");
    assert.ok(reached);
  } finally {
    console.error = orig;
  }
  assert.equal(RoomEvent.ActiveSpeakersChanged, "activeSpeakersChanged");
});

test("signalUrl maps http to ws, appends /v1/rtc and the token", () => {
  assert.equal(signalUrl("http://127.0.0.1:8080", "T"), "ws://127.0.0.1:8080/v1/rtc?access_token=T");
  assert.equal(signalUrl("https://rtc.example.org/", "a.b.c"), "wss://rtc.example.org/v1/rtc?access_token=a.b.c");
  assert.equal(signalUrl("wss://h/prefix/", "T"), "wss://h/prefix/v1/rtc?access_token=T");
  assert.equal(signalUrl("ws://h/v1/rtc?access_token=old", "new"), "ws://h/v1/rtc?access_token=new");
  assert.equal(signalUrl("", "T", "http://page.example:8080/?room=x"), "ws://page.example:8080/v1/rtc?access_token=T");
  assert.throws(() => signalUrl("ftp://h", "T"), (e) => e.code === "invalid_argument");
  assert.equal(httpUrlOf("wss://h/v1/rtc?access_token=T"), "https://h/v1/rtc?access_token=T");
});

test("layer mapping: rids q/h/f are low/medium/high", () => {
  assert.equal(ridToQuality("q"), "low");
  assert.equal(ridToQuality("h"), "medium");
  assert.equal(ridToQuality("f"), "high");
  assert.equal(ridToQuality("high"), "high");
  assert.equal(qualityToRid("medium"), "h");
  assert.throws(() => ridToQuality("x"), (e) => e.code === "invalid_argument");

  const enc = simulcastEncodings();
  assert.deepEqual(enc.map((e) => e.rid), ["q", "h", "f"]);
  assert.deepEqual(enc.map((e) => e.scaleResolutionDownBy), [4, 2, 1]);
  assert.deepEqual(enc.map((e) => e.maxBitrate), [150e3, 500e3, 2.5e6]);
  enc[0].maxBitrate = 1; // copies: the constants stay
  assert.equal(SIMULCAST_ENCODINGS[0].maxBitrate, 150e3);

  assert.deepEqual(layersFor(1280, 720), [
    { quality: "low", width: 320, height: 180, bitrate: 150e3 },
    { quality: "medium", width: 640, height: 360, bitrate: 500e3 },
    { quality: "high", width: 1280, height: 720, bitrate: 2.5e6 },
  ]);
  assert.deepEqual(layersFor(1280, 720, false), []);
  assert.deepEqual(layersFor(undefined, undefined), []);

  const layers = layersFor(1280, 720);
  assert.equal(layerForResolution(layers, 320, 180), "q");
  assert.equal(layerForResolution(layers, 640, 360), "h");
  assert.equal(layerForResolution(layers, 1280, 720), "f");
  assert.equal(layerForResolution(layers, 636, 358), "h"); // encoder alignment
  assert.equal(layerForResolution(layersFor(720, 1280), 180, 320), "q"); // portrait
  assert.equal(layerForResolution([], 640, 360), null);
  assert.equal(layerForResolution(layers, 0, 0), null);
  assert.equal(defaultSource("audio"), "microphone");
  assert.equal(defaultSource("video"), "camera");
});

const OFFER = [
  "v=0",
  "o=- 1 2 IN IP4 127.0.0.1",
  "s=-",
  "t=0 0",
  "a=group:BUNDLE 0 1 2",
  "m=audio 7882 UDP/TLS/RTP/SAVPF 111",
  "a=mid:0",
  "a=sendonly",
  "a=msid:PA_1 TR_1_0",
  "m=video 7882 UDP/TLS/RTP/SAVPF 96",
  "a=mid:1",
  "a=msid:PA_1 TR_1_1",
  "m=video 0 UDP/TLS/RTP/SAVPF 96",
  "a=mid:2",
  "a=msid:- TR_x",
  "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
  "a=mid:3",
  "",
].join("\r\n");

test("parseSdpMedia reads mids, kinds, ports and msids", () => {
  const m = parseSdpMedia(OFFER);
  assert.deepEqual(m, [
    { mid: "0", kind: "audio", port: 7882, streamId: "PA_1", trackId: "TR_1_0" },
    { mid: "1", kind: "video", port: 7882, streamId: "PA_1", trackId: "TR_1_1" },
    { mid: "2", kind: "video", port: 0, streamId: null, trackId: "TR_x" },
    { mid: "3", kind: "application", port: 9, streamId: null, trackId: null },
  ]);
  assert.deepEqual(parseSdpMedia(""), []);
});

function known(...tracks) {
  return new Map(tracks.map((t) => [t.sid, t]));
}

test("matchSubscriptions: msid naming the track sid, cid or participant sid wins", () => {
  const a = { sid: "TR_a", kind: "audio", participantSid: "PA_alice", cid: "cid-a" };
  const v = { sid: "TR_v", kind: "video", participantSid: "PA_alice", cid: "cid-v" };
  const w = { sid: "TR_w", kind: "video", participantSid: "PA_bob", cid: "cid-w" };
  const all = known(a, v, w);
  // Track sid in msid: exact, whatever the waiting order.
  assert.deepEqual(
    matchSubscriptions([{ mid: "0", kind: "video", streamId: "PA_bob", trackId: "TR_w" }], [v, w], all, new Map()),
    [["0", "TR_w"]],
  );
  // The publisher's cid in msid.
  assert.deepEqual(
    matchSubscriptions([{ mid: "0", kind: "video", streamId: "x", trackId: "cid-w" }], [v, w], all, new Map()),
    [["0", "TR_w"]],
  );
  // Participant sid as stream id, opaque track id: that publisher's waiting track of the kind.
  assert.deepEqual(
    matchSubscriptions([{ mid: "0", kind: "video", streamId: "PA_bob", trackId: "opaque" }], [v, w], all, new Map()),
    [["0", "TR_w"]],
  );
});

test("matchSubscriptions: opaque msids fall back to kind and subscription order, learning stream owners", () => {
  const a = { sid: "TR_a", kind: "audio", participantSid: "PA_alice" };
  const v = { sid: "TR_v", kind: "video", participantSid: "PA_alice" };
  const w = { sid: "TR_w", kind: "video", participantSid: "PA_bob" };
  const b = { sid: "TR_b", kind: "audio", participantSid: "PA_bob" };
  const all = known(a, v, w, b);
  const owners = new Map();
  // The SFU's own ids (stream = its participant id, track = its track id).
  const first = matchSubscriptions(
    [
      { mid: "0", kind: "audio", streamId: "PA_1", trackId: "TR_1_0" },
      { mid: "1", kind: "video", streamId: "PA_1", trackId: "TR_1_1" },
    ],
    [a, v, w, b],
    all,
    owners,
  );
  assert.deepEqual(first, [["0", "TR_a"], ["1", "TR_v"]]);
  assert.equal(owners.get("PA_1"), "PA_alice");
  // Bob's lines come under another stream id: alice's are not candidates for it,
  // and bob's video is found even though it was subscribed before his audio.
  const second = matchSubscriptions(
    [
      { mid: "2", kind: "audio", streamId: "PA_2", trackId: "TR_2_0" },
      { mid: "3", kind: "video", streamId: "PA_2", trackId: "TR_2_1" },
    ],
    [w, b],
    all,
    owners,
  );
  assert.deepEqual(second, [["2", "TR_b"], ["3", "TR_w"]]);
  // A later track under a known stream id goes to that stream's publisher only.
  const v2 = { sid: "TR_v2", kind: "video", participantSid: "PA_alice" };
  const w2 = { sid: "TR_w2", kind: "video", participantSid: "PA_bob" };
  assert.deepEqual(
    matchSubscriptions([{ mid: "4", kind: "video", streamId: "PA_2", trackId: "TR_2_4" }], [v2, w2], known(a, v, w, b, v2, w2), owners),
    [["4", "TR_w2"]],
  );
  // Nothing waiting of that kind: the line stays unbound (a `subscribed` may come later).
  assert.deepEqual(matchSubscriptions([{ mid: "5", kind: "audio", streamId: "PA_9", trackId: "t" }], [v2], all, owners), []);
});

test("base64 round trip, and text that is not base64", () => {
  const bytes = new Uint8Array([0, 1, 2, 250, 255, 104, 105]);
  const text = bytesToBase64(bytes);
  assert.equal(text, Buffer.from(bytes).toString("base64"));
  assert.deepEqual(base64ToBytes(text), bytes);
  const big = new Uint8Array(100_000).map((_, i) => i % 256);
  assert.deepEqual(base64ToBytes(bytesToBase64(big)), big);
  assert.equal(base64ToBytes("hello world"), null);
  assert.equal(base64ToBytes("abc"), null);
  assert.deepEqual(base64ToBytes(""), new Uint8Array(0));
});

test("stats arithmetic: rates and loss between samples", () => {
  assert.equal(ratePerSecond(undefined, { value: 100, timestamp: 1000 }), 0);
  assert.equal(ratePerSecond({ value: 0, timestamp: 0 }, { value: 125_000, timestamp: 1000 }), 125_000);
  assert.equal(ratePerSecond({ value: 500, timestamp: 0 }, { value: 100, timestamp: 1000 }), 0); // reset
  assert.equal(ratePerSecond({ value: 0, timestamp: 1000 }, { value: 10, timestamp: 1000 }), 0);
  assert.equal(lossFraction({ packetsLost: 10, packetsReceived: 100 }, { packetsLost: 20, packetsReceived: 190 }), 0.1);
  assert.equal(lossFraction(undefined, { packetsLost: 0, packetsReceived: 10 }), 0);
  assert.equal(lossFraction({ packetsLost: 5, packetsReceived: 10 }, { packetsLost: 5, packetsReceived: 20 }), 0);
});

test("dynacast: encodingsForLayers activates exactly the wanted q/h/f layers", () => {
  const enc = simulcastEncodings();
  const active = (r) => r.encodings.map((e) => e.active);
  let r = encodingsForLayers(enc, ["low", "high"]);
  assert.deepEqual(active(r), [true, false, true]);
  assert.equal(r.changed, true, "no `active` means active: stopping h is a change");
  // Rids are accepted too; the input is not modified.
  assert.deepEqual(active(encodingsForLayers(enc, ["h"])), [false, true, false]);
  assert.equal(enc[0].active, undefined);
  // Nobody watches: every layer stops.
  assert.deepEqual(active(encodingsForLayers(enc, [])), [false, false, false]);
  assert.deepEqual(active(encodingsForLayers(enc, undefined)), [false, false, false]);
  // All wanted on fresh encodings: nothing to change.
  r = encodingsForLayers(enc, ["low", "medium", "high"]);
  assert.deepEqual(active(r), [true, true, true]);
  assert.equal(r.changed, false);
  // Resuming a stopped layer is a change; other fields are kept.
  r = encodingsForLayers([{ rid: "q", active: false, maxBitrate: 1 }, { rid: "f", active: true }], ["low", "high"]);
  assert.deepEqual(r.encodings, [{ rid: "q", active: true, maxBitrate: 1 }, { rid: "f", active: true }]);
  assert.equal(r.changed, true);
  // A single stream (no rid) or unknown rids and qualities are left alone.
  r = encodingsForLayers([{ active: true }, { rid: "x" }], ["ultra"]);
  assert.deepEqual(r.encodings, [{ active: true }, { rid: "x" }]);
  assert.equal(r.changed, false);
});

test("dynacast: a local publication applies layers_wanted to its sender, latest list last", async () => {
  const calls = [];
  let params = { transactionId: "t0", encodings: simulcastEncodings() };
  const sender = {
    getParameters: () => structuredClone(params),
    setParameters: async (p) => {
      calls.push(p.encodings.map((e) => e.active));
      params = { ...p, transactionId: `t${calls.length}` };
    },
  };
  const events = [];
  const room = new EventEmitter();
  room.on(RoomEvent.LayersWanted, (pub, q) => events.push([pub.sid, q]));
  const pub = new LocalTrackPublication(
    { sid: "TR_1", kind: "video", layers: layersFor(1280, 720) },
    { room },
    null,
    { sender },
  );
  assert.equal(pub.layersWanted, null);
  pub._setLayersWanted(["low", "medium", "high"]); // what the server says on publish: no change
  await pub._layersQueue;
  assert.deepEqual(calls, []);
  pub._setLayersWanted(["high"]);
  await pub._layersQueue;
  // Lists arriving faster than setParameters completes: the latest is applied.
  pub._setLayersWanted(["medium"]);
  pub._setLayersWanted([]);
  pub._setLayersWanted([]); // a repeat (e.g. replayed on resume) is not an event
  await pub._layersQueue;
  assert.deepEqual(calls, [[false, false, true], [false, false, false]]);
  assert.deepEqual(pub.layersWanted, []);
  assert.deepEqual(events, [
    ["TR_1", ["low", "medium", "high"]],
    ["TR_1", ["high"]],
    ["TR_1", ["medium"]],
    ["TR_1", []],
  ]);
  // A sender that refuses (e.g. its transceiver stopped) is logged, not thrown.
  sender.setParameters = async () => {
    throw new Error("InvalidStateError");
  };
  const warn = console.warn;
  console.warn = () => {};
  try {
    pub._setLayersWanted(["low"]);
    await pub._layersQueue;
  } finally {
    console.warn = warn;
  }
  assert.deepEqual(pub.layersWanted, ["low"]);
});

const DTX_ANSWER = [
  "v=0",
  "m=audio 9 UDP/TLS/RTP/SAVPF 111 63",
  "a=mid:0",
  "a=rtpmap:111 opus/48000/2",
  "a=fmtp:111 minptime=10;useinbandfec=1",
  "a=rtpmap:63 red/48000/2",
  "m=audio 9 UDP/TLS/RTP/SAVPF 109",
  "a=mid:1",
  "a=rtpmap:109 opus/48000/2",
  "m=video 9 UDP/TLS/RTP/SAVPF 96",
  "a=mid:2",
  "a=rtpmap:96 VP8/90000",
  "",
].join("\r\n");

test("withOpusDtx turns on usedtx for the Opus format of the named mids only", () => {
  const out = withOpusDtx(DTX_ANSWER, new Set(["0", "1"]));
  assert.match(out, /a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n/);
  assert.match(out, /a=rtpmap:109 opus\/48000\/2\r\na=fmtp:109 usedtx=1\r\n/, "an fmtp line is added where there was none");
  assert.doesNotMatch(out, /fmtp:96/);
  assert.equal(out.split("\r\n").length, DTX_ANSWER.split("\r\n").length + 1);
  const only1 = withOpusDtx(DTX_ANSWER, new Set(["1"]));
  assert.doesNotMatch(only1, /useinbandfec=1;usedtx=1/, "mid 0 not named");
  assert.equal(withOpusDtx(DTX_ANSWER, new Set()), DTX_ANSWER);
  // Idempotent, and an explicit usedtx=0 is overridden.
  assert.equal(withOpusDtx(out, new Set(["0", "1"])), out);
  assert.match(withOpusDtx(DTX_ANSWER.replace("useinbandfec=1", "usedtx=0"), new Set(["0"])), /minptime=10;usedtx=1\r\n/);
});

test("videoCodecPreferences puts the named codec first and keeps the rest", () => {
  const codecs = [{ mimeType: "video/VP8" }, { mimeType: "video/rtx" }, { mimeType: "video/AV1" }, { mimeType: "video/H264", sdpFmtpLine: "a" }, { mimeType: "video/H264", sdpFmtpLine: "b" }];
  assert.deepEqual(videoCodecPreferences("h264", codecs).map((c) => c.mimeType + (c.sdpFmtpLine ?? "")), ["video/H264a", "video/H264b", "video/VP8", "video/rtx", "video/AV1"]);
  assert.equal(videoCodecPreferences("AV1", codecs)[0].mimeType, "video/AV1");
  assert.throws(() => videoCodecPreferences("vp9", codecs), (e) => e instanceof RtcError && e.code === "invalid_argument");
});
