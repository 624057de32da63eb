/// <reference types="./rtc.d.ts" />
// rtc.js — the browser SDK of rtc-server. An ES module without dependencies
// and without a build step: `import { Room } from "/sdk/rtc.js"`.
//
// It speaks the WebSocket signalling protocol of signalling/PROTOCOL.md
// (JSON text frames, `v: 1`) and runs two peer connections, as the server
// expects: a *publisher* connection on which the client offers, and a
// *subscriber* connection on which the server (the SFU, ICE-lite) always
// offers and the client answers.
//
// Everything that does not need a browser (message building, the event
// emitter, simulcast layer mapping, SDP msid parsing, the subscription
// matcher, stats arithmetic) is exported as plain functions so it can be
// unit tested under node (rtc.test.mjs).

export const PROTOCOL_VERSION = 1;

// ---------------------------------------------------------------------------
// Errors and events
// ---------------------------------------------------------------------------

/** An error with the server's (or the SDK's) machine-readable code. */
export class RtcError extends Error {
  /**
   * @param {string} code   server `error.code` (PROTOCOL.md "Errors"), a REST
   *                        error code for refusals before the WebSocket opens,
   *                        or one of the SDK's own codes (connection_failed,
   *                        timeout, disconnected, invalid_state, ...)
   * @param {string} message the server's message, verbatim when it has one
   * @param {{status?: number, cause?: unknown}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message, extra.cause !== undefined ? { cause: extra.cause } : undefined);
    this.name = "RtcError";
    this.code = code;
    /** HTTP status of a refusal before the WebSocket upgrade, if known. */
    this.status = extra.status;
  }

  /** From a server `error` message. */
  static fromMessage(msg) {
    return new RtcError(String(msg.code || "unknown"), String(msg.message || msg.code || "error"));
  }
}

/** A minimal event emitter: on/off/once/emit; a throwing listener does not stop the others. */
export class EventEmitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return this;
  }
  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) {
      set.delete(fn);
      // `once` wrappers are registered under their own identity.
      for (const l of set) if (l._once === fn) set.delete(l);
    }
    return this;
  }
  once(event, fn) {
    const wrapper = (...args) => {
      this.off(event, wrapper);
      fn(...args);
    };
    wrapper._once = fn;
    return this.on(event, wrapper);
  }
  /** Returns whether anyone listened. */
  emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set || set.size === 0) return false;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        // An application bug in one listener must not break the SDK's state
        // machine (which emits from inside its message handling).
        console.error(`rtc: listener for "${event}" threw`, e);
      }
    }
    return true;
  }
  listenerCount(event) {
    return this._listeners.get(event)?.size ?? 0;
  }
}

/** Event names of {@link Room}. */
export const RoomEvent = Object.freeze({
  ParticipantJoined: "participantJoined",
  ParticipantLeft: "participantLeft",
  ParticipantUpdated: "participantUpdated",
  TrackPublished: "trackPublished",
  TrackUnpublished: "trackUnpublished",
  LocalTrackPublished: "localTrackPublished",
  LocalTrackUnpublished: "localTrackUnpublished",
  TrackSubscribed: "trackSubscribed",
  TrackUnsubscribed: "trackUnsubscribed",
  TrackMuted: "trackMuted",
  ActiveSpeakersChanged: "activeSpeakersChanged",
  ConnectionQualityChanged: "connectionQualityChanged",
  PermissionsChanged: "permissionsChanged",
  LayersWanted: "layersWanted",
  BandwidthEstimate: "bandwidthEstimate",
  DataReceived: "dataReceived",
  Reconnecting: "reconnecting",
  Reconnected: "reconnected",
  Disconnected: "disconnected",
  Error: "error",
});

// ---------------------------------------------------------------------------
// Protocol helpers (pure)
// ---------------------------------------------------------------------------

/**
 * One client frame: `{v: 1, type, ...fields}` plus `id` when given. Fields
 * whose value is `undefined` are left out (the server applies its defaults).
 */
export function buildMessage(type, fields = {}, id) {
  const msg = { v: PROTOCOL_VERSION, type };
  if (id !== undefined && id !== null) msg.id = id;
  for (const [k, v] of Object.entries(fields)) {
    if (v !== undefined) msg[k] = v;
  }
  return msg;
}

/**
 * Parses a server frame. Returns the message, or throws an RtcError for
 * frames this SDK cannot read (not JSON, another protocol version).
 */
export function parseMessage(text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch (e) {
    throw new RtcError("malformed_message", `server frame is not JSON: ${e.message}`);
  }
  if (!msg || typeof msg !== "object" || typeof msg.type !== "string") {
    throw new RtcError("malformed_message", "server frame has no type");
  }
  if (msg.v !== PROTOCOL_VERSION) {
    throw new RtcError("malformed_message", `server speaks protocol version ${msg.v}, this SDK ${PROTOCOL_VERSION}`);
  }
  return msg;
}

/**
 * The signalling WebSocket URL for a server URL and a token. Accepts
 * `ws(s)://host[:port][/prefix]`, `http(s)://...` (mapped to ws/wss), a full
 * `.../v1/rtc` URL, or nothing (this page's origin, in a browser).
 */
export function signalUrl(url, token, base) {
  if (!url) {
    if (!base) throw new RtcError("invalid_argument", "no server URL given");
    url = base;
  }
  const u = new URL(url, base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  else if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new RtcError("invalid_argument", `unsupported server URL scheme ${u.protocol}`);
  }
  if (!u.pathname.endsWith("/v1/rtc")) {
    u.pathname = u.pathname.replace(/\/+$/, "") + "/v1/rtc";
  }
  u.search = "";
  u.hash = "";
  u.searchParams.set("access_token", token);
  return u.toString();
}

/** The same endpoint over HTTP(S): asked after a failed WebSocket to learn why. */
export function httpUrlOf(wsUrl) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  return u.toString();
}

// Simulcast layers, by the server's convention (model.rs `Quality::rid`):
// rid `q` (quarter resolution) = `low`, `h` (half) = `medium`, `f` (full) = `high`.
const RID_TO_QUALITY = Object.freeze({ q: "low", h: "medium", f: "high" });
const QUALITY_TO_RID = Object.freeze({ low: "q", medium: "h", high: "f" });

/** `'q'|'h'|'f'` (or a quality name) to the protocol's quality; throws on anything else. */
export function ridToQuality(rid) {
  if (rid in RID_TO_QUALITY) return RID_TO_QUALITY[rid];
  if (rid in QUALITY_TO_RID) return rid;
  throw new RtcError("invalid_argument", `unknown layer ${JSON.stringify(rid)} (expected 'q', 'h' or 'f')`);
}

export function qualityToRid(quality) {
  if (quality in QUALITY_TO_RID) return QUALITY_TO_RID[quality];
  if (quality in RID_TO_QUALITY) return quality;
  throw new RtcError("invalid_argument", `unknown quality ${JSON.stringify(quality)}`);
}

/** The three simulcast encodings, lowest first (the order the SFU expects rids in). */
export const SIMULCAST_ENCODINGS = Object.freeze([
  Object.freeze({ rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150e3 }),
  Object.freeze({ rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500e3 }),
  Object.freeze({ rid: "f", scaleResolutionDownBy: 1, maxBitrate: 2.5e6 }),
]);

/** Fresh copies of the encodings for `addTransceiver({sendEncodings})`. */
export function simulcastEncodings() {
  return SIMULCAST_ENCODINGS.map((e) => ({ ...e }));
}

/**
 * Dynacast: the `encodings` of `RTCRtpSender.getParameters()` with each
 * simulcast encoding (rid `q`, `h`, `f`) `active` exactly when its layer is
 * in `qualities` (the server's `layers_wanted`; quality names or rids). An
 * empty list stops every layer: nobody watches. Encodings without a rid (a
 * single stream) or with another rid are left as they are: the server only
 * names layers by this convention. Returns copies and whether any changed.
 */
export function encodingsForLayers(encodings, qualities) {
  const wanted = new Set();
  for (const q of qualities || []) {
    if (q in QUALITY_TO_RID) wanted.add(QUALITY_TO_RID[q]);
    else if (q in RID_TO_QUALITY) wanted.add(q);
  }
  let changed = false;
  const out = (encodings || []).map((e) => {
    if (!e || typeof e.rid !== "string" || !(e.rid in RID_TO_QUALITY)) return { ...e };
    const active = wanted.has(e.rid);
    // An encoding without `active` is active (the WebRTC default).
    if ((e.active !== false) !== active) changed = true;
    return { ...e, active };
  });
  return { encodings: out, changed };
}

/**
 * The `layers` of a `publish` message for a track of `width` x `height`:
 * one per simulcast encoding with its scaled size and target bitrate, or
 * `[]` for a single stream.
 */
export function layersFor(width, height, simulcast = true) {
  if (!simulcast || !(width > 0) || !(height > 0)) return [];
  return SIMULCAST_ENCODINGS.map((e) => ({
    quality: RID_TO_QUALITY[e.rid],
    width: Math.round(width / e.scaleResolutionDownBy),
    height: Math.round(height / e.scaleResolutionDownBy),
    bitrate: e.maxBitrate,
  }));
}

/**
 * Which announced layer a received resolution is: the layer whose width
 * (or height, for portrait video) is nearest. Returns a rid or null.
 */
export function layerForResolution(layers, width, height) {
  if (!layers || layers.length === 0 || !(width > 0 || height > 0)) return null;
  let best = null;
  let bestDistance = Infinity;
  for (const l of layers) {
    // Compare the longer side: an encoder may crop the other by a pixel.
    const d = Math.abs(Math.max(l.width, l.height) - Math.max(width || 0, height || 0));
    if (d < bestDistance) {
      bestDistance = d;
      best = l;
    }
  }
  return best ? qualityToRid(best.quality) : null;
}

/**
 * The m-lines of an SDP: `[{mid, kind, port, streamId, trackId}]` in order.
 * `streamId`/`trackId` come from `a=msid:<stream> <track>` (`-` means none).
 */
export function parseSdpMedia(sdp) {
  const out = [];
  let cur = null;
  for (const raw of String(sdp || "").split(/\r?\n/)) {
    const line = raw.trim();
    if (line.startsWith("m=")) {
      const [kind, port] = line.slice(2).split(/\s+/);
      cur = { mid: null, kind, port: Number(port), streamId: null, trackId: null };
      out.push(cur);
    } else if (cur && line.startsWith("a=mid:")) {
      cur.mid = line.slice(6);
    } else if (cur && line.startsWith("a=msid:")) {
      const [stream, track] = line.slice(7).split(/\s+/);
      cur.streamId = stream && stream !== "-" ? stream : null;
      cur.trackId = track || null;
    }
  }
  return out;
}

/**
 * The answer `sdp` with `usedtx=1` on the Opus format of every m-section
 * whose mid is in `mids`. The answer is what the browser's encoder reads its
 * Opus settings from, so this turns on discontinuous transmission (a packet
 * every 400 ms or so in silence) for those tracks.
 */
export function withOpusDtx(sdp, mids) {
  if (!mids.size) return sdp;
  const eol = sdp.includes("\r\n") ? "\r\n" : "\n";
  const sections = sdp.split(/\r?\n(?=m=)/);
  return sections
    .map((section) => {
      const mid = /^a=mid:(.+)$/m.exec(section)?.[1]?.trim();
      if (!section.startsWith("m=audio") || !mids.has(mid)) return section;
      const pt = /^a=rtpmap:(\d+) opus\/48000/im.exec(section)?.[1];
      if (!pt) return section;
      const fmtp = new RegExp(`^a=fmtp:${pt} (.*)$`, "m");
      if (fmtp.test(section)) {
        return section.replace(fmtp, (line, params) => (/usedtx=/.test(params) ? line.replace(/usedtx=\d/, "usedtx=1") : `${line};usedtx=1`));
      }
      return section.replace(new RegExp(`^(a=rtpmap:${pt} .*)$`, "m"), `$1${eol}a=fmtp:${pt} usedtx=1`);
    })
    .join(eol);
}

/**
 * The browser's video send codecs with those named `name` (vp8, vp9, h264,
 * av1) first, for `setCodecPreferences`: the offer leads with them and the
 * others stay as fallbacks. Throws invalid_argument when the browser cannot
 * send it.
 */
export function videoCodecPreferences(name, codecs = globalThis.RTCRtpSender?.getCapabilities?.("video")?.codecs ?? []) {
  const mime = `video/${String(name).toLowerCase()}`;
  const first = codecs.filter((c) => c.mimeType.toLowerCase() === mime);
  if (!first.length) throw new RtcError("invalid_argument", `this browser cannot send ${name}`);
  return [...first, ...codecs.filter((c) => c.mimeType.toLowerCase() !== mime)];
}

/**
 * Decides which subscriber m-lines carry which subscribed tracks.
 *
 * PROTOCOL.md ("Media: m-lines and tracks"): the server's m-lines carry
 * msid `<participant sid> <track sid>`, so rule 1 decides; the others are
 * for servers that name m-lines otherwise. Per line, from the most to the
 * least certain:
 *  1. the msid track id is the track sid (or the publisher's `cid`);
 *  2. the msid stream id is the publisher's participant sid, or a stream
 *     id already seen carrying that publisher's tracks: the first waiting
 *     track of that publisher and kind;
 *  3. the first waiting track of the same kind, in the order the
 *     `subscribed` messages came (the order the SFU adds m-lines in), from
 *     a publisher not already known under another stream id.
 *
 * @param {Array<{mid:string, kind:string, streamId:?string, trackId:?string}>} lines unbound live m-lines
 * @param {Array<{sid:string, kind:string, participantSid:string, cid?:string}>} waiting subscribed, unbound tracks, oldest first
 * @param {Map<string, {sid:string, kind:string, participantSid:string, cid?:string}>} known every known remote track by sid
 * @param {Map<string, string>} streamOwners msid stream id -> participant sid, learnt so far (updated in place)
 * @returns {Array<[string, string]>} [mid, trackSid] pairs
 */
export function matchSubscriptions(lines, waiting, known, streamOwners) {
  const result = [];
  const left = [...waiting];
  const take = (pred) => {
    const i = left.findIndex(pred);
    return i < 0 ? null : left.splice(i, 1)[0];
  };
  const ownersInUse = new Set(streamOwners.values());
  for (const line of lines) {
    let track = null;
    if (line.trackId && known.has(line.trackId)) {
      track = known.get(line.trackId);
      take((t) => t.sid === track.sid);
    }
    if (!track && line.trackId) {
      track = take((t) => t.cid && t.cid === line.trackId && t.kind === line.kind);
    }
    const owner = line.streamId ? (known.size && findParticipant(known, line.streamId)) || streamOwners.get(line.streamId) : null;
    if (!track && owner) {
      track = take((t) => t.participantSid === owner && t.kind === line.kind);
    }
    if (!track && !owner) {
      track = take(
        (t) =>
          t.kind === line.kind &&
          // A publisher already seen under a different stream id is not this one.
          !(line.streamId && ownersInUse.has(t.participantSid) && streamOwners.get(line.streamId) !== t.participantSid),
      );
    }
    if (track) {
      result.push([line.mid, track.sid]);
      if (line.streamId && !streamOwners.has(line.streamId)) {
        streamOwners.set(line.streamId, track.participantSid);
        ownersInUse.add(track.participantSid);
      }
    }
  }
  return result;
}

function findParticipant(known, participantSid) {
  for (const t of known.values()) if (t.participantSid === participantSid) return participantSid;
  return null;
}

/** Bytes to standard base64 (the SDK's encoding of `data.payload`). */
export function bytesToBase64(bytes) {
  let s = "";
  // Chunks keep String.fromCharCode's argument list small.
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/** Base64 to bytes; `null` when the text is not base64. */
export function base64ToBytes(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) return null;
  let s;
  try {
    s = atob(text);
  } catch {
    return null;
  }
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/**
 * A rate between two samples of a counter: `{value, timestamp}` with
 * timestamps in ms. Per second; 0 without a previous sample.
 */
export function ratePerSecond(prev, cur) {
  if (!prev || !cur || !(cur.timestamp > prev.timestamp)) return 0;
  const delta = cur.value - prev.value;
  if (delta < 0) return 0; // counter reset (new SSRC)
  return (delta * 1000) / (cur.timestamp - prev.timestamp);
}

/** Fraction of packets lost between two samples of (packetsLost, packetsReceived). */
export function lossFraction(prev, cur) {
  if (!cur) return 0;
  const lost = cur.packetsLost - (prev ? prev.packetsLost : 0);
  const received = cur.packetsReceived - (prev ? prev.packetsReceived : 0);
  if (!(lost > 0)) return 0;
  return lost / (lost + Math.max(received, 0));
}

/** The publish `source` for a track when the application gave none. */
export function defaultSource(kind) {
  return kind === "audio" ? "microphone" : "camera";
}

const SOURCES = new Set(["camera", "microphone", "screen_share", "screen_share_audio", "unknown"]);

// ---------------------------------------------------------------------------
// Signalling connection
// ---------------------------------------------------------------------------

const REQUEST_TIMEOUT_MS = 15_000;
const PING_INTERVAL_MS = 5_000;
/** No frame at all for this long: the socket is dead even if the browser has not noticed. */
const SILENCE_TIMEOUT_MS = 15_000;
/** The server refuses text messages above this (PROTOCOL.md "Limits"). */
export const MAX_MESSAGE_BYTES = 64 * 1024;

/**
 * One WebSocket: sends frames, matches replies to requests (by `id`, or by
 * a predicate for replies that do not echo it, such as `track_published`),
 * keeps itself alive with pings and reports its end once.
 */
class SignalConnection {
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers; // {onMessage(msg), onClose(info)}
    this.ws = null;
    this.nextId = 1;
    /** @type {Map<number, {resolve, reject, match?, timer}>} */
    this.pending = new Map();
    this.closed = false;
    this.lastFrameAt = 0;
    this.pingTimer = null;
  }

  /** Opens the socket; rejects with an RtcError naming the server's refusal when it can learn it. */
  open(WebSocketImpl = globalThis.WebSocket) {
    return new Promise((resolve, reject) => {
      let opened = false;
      const ws = new WebSocketImpl(this.url);
      this.ws = ws;
      ws.onopen = () => {
        opened = true;
        this.lastFrameAt = Date.now();
        this.pingTimer = setInterval(() => this.keepAlive(), PING_INTERVAL_MS);
        resolve();
      };
      ws.onmessage = (ev) => {
        this.lastFrameAt = Date.now();
        if (typeof ev.data !== "string") return;
        let msg;
        try {
          msg = parseMessage(ev.data);
        } catch (e) {
          console.warn("rtc: ignoring server frame:", e.message);
          return;
        }
        this.dispatch(msg);
      };
      ws.onerror = () => {};
      ws.onclose = (ev) => {
        if (!opened) {
          this.closed = true;
          // Browsers hide the HTTP status of a refused upgrade; ask the same
          // URL over HTTP, where the server answers with its error body.
          explainRefusal(this.url).then(reject, reject);
          return;
        }
        this.finish({ code: ev.code, reason: ev.reason });
      };
    });
  }

  keepAlive() {
    if (this.closed) return;
    if (Date.now() - this.lastFrameAt > SILENCE_TIMEOUT_MS) {
      // The network went away without a FIN (sleep, Wi-Fi change).
      try {
        this.ws.close();
      } catch {}
      this.finish({ code: 4000, reason: "no response from the server" });
      return;
    }
    this.send("ping", { timestamp: Date.now() });
  }

  /** Fire and forget; returns the message id. */
  send(type, fields = {}) {
    const id = this.nextId++;
    const text = JSON.stringify(buildMessage(type, fields, id));
    if (text.length > MAX_MESSAGE_BYTES) {
      throw new RtcError("message_too_large", `${type} message of ${text.length} bytes exceeds ${MAX_MESSAGE_BYTES}`);
    }
    if (this.closed || !this.ws || this.ws.readyState !== 1) {
      throw new RtcError("disconnected", `cannot send ${type}: signalling is not connected`);
    }
    this.ws.send(text);
    return id;
  }

  /**
   * Sends and waits for the reply: a message echoing the id, or one for
   * which `match(msg)` is true. An `error` echoing the id rejects.
   */
  request(type, fields = {}, { match, timeout = REQUEST_TIMEOUT_MS } = {}) {
    return new Promise((resolve, reject) => {
      let id;
      try {
        id = this.send(type, fields);
      } catch (e) {
        reject(e);
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RtcError("timeout", `no reply to ${type} within ${timeout} ms`));
      }, timeout);
      this.pending.set(id, { resolve, reject, match, timer, type });
    });
  }

  dispatch(msg) {
    if (msg.type === "error" && msg.id != null && this.pending.has(msg.id)) {
      const p = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      p.reject(RtcError.fromMessage(msg));
      return;
    }
    // State first (the room updates its model), then whoever waits for it.
    this.handlers.onMessage(msg);
    if (msg.type === "error") return;
    for (const [id, p] of this.pending) {
      if ((msg.id != null && msg.id === id) || (p.match && p.match(msg))) {
        this.pending.delete(id);
        clearTimeout(p.timer);
        p.resolve(msg);
        break;
      }
    }
  }

  finish(info) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pingTimer);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new RtcError("disconnected", `signalling connection closed before the reply to ${p.type}`));
    }
    this.pending.clear();
    this.handlers.onClose(info);
  }

  /** Closes without reporting (the caller knows). */
  close() {
    this.closed = true;
    clearInterval(this.pingTimer);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new RtcError("disconnected", "signalling connection closed"));
    }
    this.pending.clear();
    try {
      this.ws?.close();
    } catch {}
  }
}

async function explainRefusal(wsUrl) {
  try {
    const res = await fetch(httpUrlOf(wsUrl), { method: "GET" });
    const body = await res.json().catch(() => null);
    // 400 "WebSocket upgrade required" means the token was accepted: the
    // WebSocket failed for another reason (proxy, network).
    if (body && body.error && res.status !== 400) {
      return new RtcError(body.error.code, body.error.message, { status: res.status });
    }
  } catch {
    // Cross-origin without CORS, or the server is unreachable: no detail.
  }
  return new RtcError("connection_failed", `could not open the signalling WebSocket to ${new URL(wsUrl).host}`);
}

// ---------------------------------------------------------------------------
// Participants and publications
// ---------------------------------------------------------------------------

export class TrackPublication extends EventEmitter {
  constructor(info, participant) {
    super();
    this.participant = participant;
    /** @type {MediaStreamTrack|null} */
    this.track = null;
    this._update(info);
  }
  _update(info) {
    this.sid = info.sid;
    this.name = info.name || "";
    this.kind = info.kind;
    this.source = info.source;
    this.muted = !!info.muted;
    this.layers = info.layers || [];
    this.cid = info.cid || "";
  }
  get trackSid() {
    return this.sid;
  }
  /** Plays the track in `element` (creates a `<video>`/`<audio>` without one). */
  attach(element) {
    if (!this.track) throw new RtcError("invalid_state", `track ${this.sid} has no media yet`);
    const el = element || document.createElement(this.kind === "video" ? "video" : "audio");
    el.autoplay = true;
    el.playsInline = true;
    if (!el.srcObject || el.srcObject.getTracks()[0] !== this.track) el.srcObject = new MediaStream([this.track]);
    return el;
  }
}

export class LocalTrackPublication extends TrackPublication {
  constructor(info, participant, track, transceiver) {
    super(info, participant);
    this.track = track;
    /** @type {RTCRtpTransceiver} */
    this.transceiver = transceiver;
    this.simulcast = (info.layers || []).length > 0;
    this._options = {};
    /** Dynacast: the qualities the server last asked for (null = never told: all are sent). */
    this.layersWanted = null;
    this._layersQueue = Promise.resolve();
  }
  get sender() {
    return this.transceiver?.sender ?? null;
  }
  /** The server's `layers_wanted`: encode only the layers some subscriber receives. */
  _setLayersWanted(qualities) {
    const next = qualities.filter((q) => typeof q === "string");
    const same = this.layersWanted && this.layersWanted.length === next.length && next.every((q, i) => q === this.layersWanted[i]);
    this.layersWanted = next;
    // One setParameters at a time (each needs the transaction of the
    // getParameters just before it); each run applies the latest list.
    this._layersQueue = this._layersQueue
      .then(() => this._applyLayers())
      .catch((e) => console.warn("rtc: cannot change the sent layers:", e?.message || e));
    if (!same) this.participant.room.emit(RoomEvent.LayersWanted, this, [...next]);
  }
  async _applyLayers() {
    const sender = this.sender;
    if (!sender || !this.layersWanted || typeof sender.getParameters !== "function") return;
    const params = sender.getParameters();
    if (!params.encodings || params.encodings.length === 0) return;
    const { encodings, changed } = encodingsForLayers(params.encodings, this.layersWanted);
    if (!changed) return;
    encodings.forEach((e, i) => {
      params.encodings[i].active = e.active;
    });
    await sender.setParameters(params);
  }
  /** Stops sending (the track keeps capturing) and tells everyone. */
  async mute() {
    return this.participant._setMuted(this, true);
  }
  async unmute() {
    return this.participant._setMuted(this, false);
  }
}

export class RemoteTrackPublication extends TrackPublication {
  constructor(info, participant) {
    super(info, participant);
    /** The server confirmed the subscription (`subscribed`). */
    this.subscribed = false;
    /** @type {RTCRtpTransceiver|null} */
    this.transceiver = null;
    this.settings = { paused: false, quality: undefined, max_width: 0, max_height: 0, max_fps: 0 };
    this._settingsSent = null;
  }
  get receiver() {
    return this.transceiver?.receiver ?? null;
  }
  get isSubscribed() {
    return this.subscribed && !!this.track;
  }
  /** Asks the server to subscribe (for rooms joined with `autoSubscribe: false`). */
  setSubscribed(subscribed) {
    return this.participant.room._setSubscribed(this, subscribed);
  }
  /** Prefers a simulcast layer: 'q' (low), 'h' (medium), 'f' (high); null = automatic. */
  setPreferredLayer(layer) {
    this.settings.quality = layer == null || layer === "auto" ? undefined : ridToQuality(layer);
    this._pushSettings();
  }
  get preferredLayer() {
    return this.settings.quality ? qualityToRid(this.settings.quality) : null;
  }
  /** The size the video is shown at: the server sends no larger layer than needed. 0 = no limit. */
  setVideoSize(width, height) {
    this.settings.max_width = Math.max(0, Math.round(width || 0));
    this.settings.max_height = Math.max(0, Math.round(height || 0));
    this._pushSettings();
  }
  /**
   * The highest frame rate wanted (0 = no limit). The server drops temporal
   * layers above it where the codec has them (VP8, VP9), without a keyframe.
   */
  setMaxFrameRate(fps) {
    this.settings.max_fps = Math.max(0, Math.round(fps || 0));
    this._pushSettings();
  }
  /** false pauses forwarding entirely (e.g. a tile scrolled out of view); the subscription stays. */
  setEnabled(enabled) {
    this.settings.paused = !enabled;
    this._pushSettings();
  }
  get enabled() {
    return !this.settings.paused;
  }
  _pushSettings() {
    // `track_settings` replaces all settings at once, so the whole set goes
    // every time; only subscribed tracks take settings (else they wait).
    if (!this.subscribed) return;
    const s = this.settings;
    const key = JSON.stringify(s);
    if (key === this._settingsSent) return;
    const room = this.participant.room;
    if (!room._signal || room.state === "reconnecting") return; // re-sent on reconnect
    try {
      room._signal.send("track_settings", { track_sid: this.sid, ...s });
      this._settingsSent = key;
    } catch (e) {
      console.warn("rtc: track_settings not sent:", e.message);
    }
  }
}

export class Participant extends EventEmitter {
  constructor(info, room) {
    super();
    this.room = room;
    /** @type {Map<string, TrackPublication>} track sid -> publication */
    this.tracks = new Map();
    this.audioLevel = 0;
    this.isSpeaking = false;
    this.connectionQuality = "unknown";
    this._update(info);
  }
  _update(info) {
    this.sid = info.sid;
    this.identity = info.identity;
    this.name = info.name || "";
    this.metadata = info.metadata || "";
    this.state = info.state;
    this.joinedAt = info.joined_at;
    this.permissions = info.permissions;
  }
  get trackPublications() {
    return this.tracks;
  }
  getTrackBySource(source) {
    for (const p of this.tracks.values()) if (p.source === source) return p;
    return undefined;
  }
}

export class RemoteParticipant extends Participant {}

export class LocalParticipant extends Participant {
  /**
   * Publishes a track: announces it (`publish`), then renegotiates the
   * publisher connection so the offer carries it. Video is simulcast in
   * three layers (q, h, f) unless `{simulcast: false}`; `{videoCodec:
   * "vp9"}` (or vp8, h264, av1) prefers that codec; `{scalabilityMode:
   * "L1T3"}` asks the encoder for temporal layers in each encoding (Chrome
   * gives VP8 simulcast three of its own, not AV1 or VP9), and with
   * `{simulcast: false, videoCodec: "vp9"}` `"L3T3_KEY"` for spatial layers
   * in one stream (VP9 SVC, selected by the SFU); audio is sent
   * with Opus DTX unless `{dtx: false}`.
   */
  async publishTrack(track, options = {}) {
    return this.room._publish(track, options);
  }
  /** Withdraws a track (by MediaStreamTrack, publication or sid); `stop` also stops the track. */
  async unpublishTrack(trackOrPublication, { stop = false } = {}) {
    return this.room._unpublish(trackOrPublication, stop);
  }
  async _setMuted(pub, muted) {
    const room = this.room;
    if (pub.track) pub.track.enabled = !muted;
    pub.muted = muted;
    await room._request("mute", { track_sid: pub.sid, muted }, {
      match: (m) => m.type === "track_muted" && m.track_sid === pub.sid,
    });
  }
}

// ---------------------------------------------------------------------------
// Room
// ---------------------------------------------------------------------------

const RECONNECT_DELAYS_MS = [0, 250, 500, 1000, 2000, 4000];
/** A peer connection `disconnected` this long is treated as failed. */
const ICE_DISCONNECTED_GRACE_MS = 5_000;
/** The subscriber connection cannot restart ICE itself (the server offers): wait this long for it. */
const SUBSCRIBER_RECOVERY_MS = 10_000;

export class Room extends EventEmitter {
  /**
   * Connects and joins; resolves with the joined room.
   * @param {string} url server URL (http(s) or ws(s); empty = this page's origin)
   * @param {string} token access token
   * @param {{autoSubscribe?: boolean}} [options]
   */
  static async connect(url, token, options = {}) {
    const room = new Room(options);
    await room.connect(url, token);
    return room;
  }

  constructor(options = {}) {
    super();
    this.options = { autoSubscribe: true, ...options };
    /** @type {'disconnected'|'connecting'|'connected'|'reconnecting'} */
    this.state = "disconnected";
    this.name = "";
    this.sid = "";
    this.metadata = "";
    /** @type {LocalParticipant|null} */
    this.localParticipant = null;
    /** @type {Map<string, RemoteParticipant>} identity -> participant */
    this.participants = new Map();
    /** @type {Participant[]} loudest first */
    this.activeSpeakers = [];
    /** @type {number|null} the server's downlink estimate for our subscriber connection, bit/s */
    this.bandwidthEstimate = null;
    this._signal = null;
    this._pub = null;
    this._sub = null;
    this._iceServers = [];
    this._sessionToken = null;
    this._resumeWindowMs = 15_000;
    this._pubQueue = Promise.resolve();
    this._subQueue = Promise.resolve();
    this._pubCandidates = [];
    this._subCandidates = [];
    /** subscriber mid -> {mid, kind, streamId, trackId, transceiver, trackSid?, dead?} */
    this._lines = new Map();
    this._streamOwners = new Map();
    /** track sids subscribed but without media yet, in `subscribed` order */
    this._waiting = [];
    this._statsPrev = new Map();
    /** Dynacast lists for own track sids whose publication is not set up yet. */
    this._layersPending = new Map();
    this._timers = new Set();
    this._leaving = false;
    this._reconnecting = null;
  }

  // -- public ----------------------------------------------------------------

  async connect(url, token) {
    if (this.state !== "disconnected") throw new RtcError("invalid_state", `room is ${this.state}`);
    const base = typeof location !== "undefined" ? location.href : undefined;
    this._url = signalUrl(url, token, base);
    this._token = token;
    this._leaving = false;
    this._serverLeft = false;
    this.state = "connecting";
    try {
      await this._open({ resume: null });
    } catch (e) {
      this.state = "disconnected";
      this._closePeers();
      throw e;
    }
    this.state = "connected";
    return this;
  }

  /** Every participant by sid (local included). */
  getParticipantBySid(sid) {
    if (this.localParticipant && this.localParticipant.sid === sid) return this.localParticipant;
    for (const p of this.participants.values()) if (p.sid === sid) return p;
    return undefined;
  }

  /**
   * Sends data to the others (or `destinationIdentities`) through the
   * signalling server. `payload` bytes travel base64-encoded in the
   * protocol's string `payload`; a string is sent as its UTF-8 bytes.
   * `reliable: false` is accepted but delivery is always reliable (the
   * server relays data over the WebSocket).
   */
  async sendData(payload, { reliable = true, destinationIdentities = [], topic } = {}) {
    void reliable;
    const bytes = typeof payload === "string" ? new TextEncoder().encode(payload) : toBytes(payload);
    const fields = { payload: bytesToBase64(bytes), topic, destination_identities: destinationIdentities };
    const signal = this._requireSignal();
    // No reply on success; an error (permission) echoes the id. Send and
    // report errors through the `error` event rather than waiting.
    signal.send("data", fields);
  }

  /**
   * Statistics of both peer connections, summarised per track: bitrate,
   * packet loss, round-trip time, resolution and (received video) the
   * simulcast layer. Rates are over the time since the previous call.
   */
  async getStats() {
    const now = Date.now();
    const [pubReport, subReport] = await Promise.all([
      this._pub ? this._pub.getStats() : null,
      this._sub ? this._sub.getStats() : null,
    ]);
    const out = {
      timestamp: now,
      publisher: summarizeTransport(pubReport, this._statsPrev, "pub"),
      subscriber: summarizeTransport(subReport, this._statsPrev, "sub"),
      tracks: {},
    };
    const lp = this.localParticipant;
    if (lp && pubReport) {
      for (const pub of lp.tracks.values()) {
        out.tracks[pub.sid] = summarizeOutbound(pubReport, pub, this._statsPrev, out.publisher.rtt);
      }
    }
    if (subReport) {
      for (const p of this.participants.values()) {
        for (const pub of p.tracks.values()) {
          if (!pub.transceiver) continue;
          out.tracks[pub.sid] = summarizeInbound(subReport, pub, this._statsPrev, out.subscriber.rtt);
        }
      }
    }
    return out;
  }

  /** Leaves the room: tells the server, closes both connections. */
  async disconnect() {
    if (this.state === "disconnected") return;
    this._leaving = true;
    const signal = this._signal;
    if (signal && !signal.closed) {
      try {
        await signal.request("leave", {}, { match: (m) => m.type === "leave", timeout: 2000 });
      } catch {
        // Leaving anyway: the server removes us after the resume window.
      }
    }
    this._teardown("client_left");
  }

  // -- connection ------------------------------------------------------------

  /**
   * The open signalling connection. While reconnecting only an ICE restart
   * (`iceRestart`) may use it: the WebSocket is up then, the media path is not.
   */
  _requireSignal({ iceRestart = false } = {}) {
    const resuming = this.state === "reconnecting" && !(iceRestart && !this._reconnecting);
    if (!this._signal || this._signal.closed || resuming) {
      throw new RtcError("disconnected", "not connected to the room (reconnecting or left)");
    }
    return this._signal;
  }

  _request(type, fields, opts, { iceRestart = false } = {}) {
    try {
      return this._requireSignal({ iceRestart }).request(type, fields, opts);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Opens a WebSocket and joins (or resumes); applies the `joined` state. */
  async _open({ resume }) {
    const signal = new SignalConnection(this._url, {
      onMessage: (m) => this._onMessage(m, signal),
      onClose: (info) => this._onSocketClosed(signal, info),
    });
    await signal.open();
    let joined;
    try {
      joined = await signal.request(
        "join",
        { auto_subscribe: this.options.autoSubscribe !== false, resume: resume || undefined },
        { match: (m) => m.type === "joined" },
      );
    } catch (e) {
      signal.close();
      throw e;
    }
    this._signal = signal;
    this._applyJoined(joined);
    return joined;
  }

  _applyJoined(j) {
    this.name = j.room.name;
    this.sid = j.room.sid;
    this.metadata = j.room.metadata || "";
    this._sessionToken = j.session_token;
    this._resumeWindowMs = (j.resume_window_s || 15) * 1000;
    this._iceServers = (j.ice_servers || []).map((s) => {
      const o = { urls: s.urls };
      if (s.username != null) o.username = s.username;
      if (s.credential != null) o.credential = s.credential;
      return o;
    });
    // One LocalParticipant object for the room's life, even across a new
    // session (its sid changes then; its tracks were cleared before).
    if (!this.localParticipant) this.localParticipant = new LocalParticipant(j.participant, this);
    else this.localParticipant._update(j.participant);
    this._ensurePeers();
    // Fresh TURN credentials with every `joined`.
    for (const pc of [this._pub, this._sub]) {
      try {
        pc.setConfiguration({ ...pc.getConfiguration(), iceServers: this._iceServers });
      } catch (e) {
        console.warn("rtc: could not update ICE servers:", e.message);
      }
    }
    this._reconcileParticipants(j.participants || [], new Set(j.subscriptions || []));
  }

  /** Brings the remote model in line with a `joined` snapshot, emitting the differences. */
  _reconcileParticipants(list, subscriptions) {
    const seen = new Set();
    for (const info of list) {
      seen.add(info.identity);
      let p = this.participants.get(info.identity);
      if (p && p.sid !== info.sid) {
        // Rejoined under a new sid while we were away: it left and came back.
        this._removeParticipant(p);
        p = undefined;
      }
      if (!p) {
        p = new RemoteParticipant(info, this);
        this.participants.set(info.identity, p);
        this.emit(RoomEvent.ParticipantJoined, p);
      } else {
        p._update(info);
      }
      const trackSids = new Set();
      for (const t of info.tracks || []) {
        trackSids.add(t.sid);
        this._upsertRemoteTrack(p, t);
      }
      for (const pub of [...p.tracks.values()]) {
        if (!trackSids.has(pub.sid)) this._removeRemoteTrack(p, pub);
      }
    }
    for (const p of [...this.participants.values()]) {
      if (!seen.has(p.identity)) this._removeParticipant(p);
    }
    for (const p of this.participants.values()) {
      for (const pub of p.tracks.values()) {
        if (subscriptions.has(pub.sid)) this._markSubscribed(pub);
        else if (pub.subscribed) this._endSubscription(pub);
      }
    }
  }

  _onSocketClosed(signal, info) {
    if (signal !== this._signal || this._leaving || this.state === "disconnected") return;
    if (this._serverLeft) return;
    this._beginReconnect(`signalling connection closed (${info.code}${info.reason ? " " + info.reason : ""})`);
  }

  _beginReconnect(why) {
    if (this._reconnecting) return;
    const announce = this.state !== "reconnecting"; // an ICE restart may have said so already
    this.state = "reconnecting";
    if (announce) this.emit(RoomEvent.Reconnecting, why);
    this._reconnecting = this._reconnectLoop().finally(() => {
      this._reconnecting = null;
    });
  }

  async _reconnectLoop() {
    const deadline = Date.now() + this._resumeWindowMs;
    let attempt = 0;
    let resume = this._sessionToken;
    while (!this._leaving) {
      const delay = RECONNECT_DELAYS_MS[Math.min(attempt, RECONNECT_DELAYS_MS.length - 1)];
      attempt++;
      if (delay) await this._sleep(delay);
      if (this._leaving) return;
      if (resume && Date.now() > deadline) {
        resume = null; // the server has removed us by now: a new session
        attempt = 1;
      }
      try {
        this._signal?.close();
        if (!resume) this._prepareFreshSession();
        const joined = await this._open({ resume });
        this.state = "connected";
        this._afterReconnect(joined);
        this.emit(RoomEvent.Reconnected);
        return;
      } catch (e) {
        if (e instanceof RtcError && e.code === "resume_failed") {
          resume = null; // start a new session at once
          attempt = 0;
          continue;
        }
        if (e instanceof RtcError && e.status && [401, 403].includes(e.status)) {
          // The token expired or lost its grant: retrying cannot help.
          this._teardown("token_rejected", e);
          return;
        }
        if (!resume && attempt > 12) {
          this._teardown("reconnect_failed", e);
          return;
        }
      }
    }
  }

  /** Before joining as a new session: drop both connections and remember what to republish. */
  _prepareFreshSession() {
    const lp = this.localParticipant;
    // Accumulates: a failed fresh attempt must not forget what to republish.
    this._pendingRepublish = this._pendingRepublish || [];
    if (lp) {
      for (const p of lp.tracks.values()) {
        if (p.track) this._pendingRepublish.push({ track: p.track, options: p._options });
      }
      for (const pub of lp.tracks.values()) this.emit(RoomEvent.LocalTrackUnpublished, pub, lp);
      lp.tracks.clear();
    }
    for (const p of this.participants.values()) {
      for (const pub of p.tracks.values()) this._endSubscription(pub);
    }
    this._closePeers();
    this._lines.clear();
    this._streamOwners.clear();
    this._layersPending.clear();
    this._waiting = [];
  }

  _afterReconnect(joined) {
    if (!joined.resumed && this._pendingRepublish) {
      // A new session: publish our tracks again (they get new sids).
      const tracks = this._pendingRepublish;
      this._pendingRepublish = null;
      for (const { track, options } of tracks) {
        if (track.readyState === "live") this._publish(track, options).catch((e) => this.emit(RoomEvent.Error, e));
      }
    }
    // Settings are not replayed by the server after a gap: send them again.
    for (const p of this.participants.values()) {
      for (const pub of p.tracks.values()) {
        pub._settingsSent = null;
        pub._pushSettings();
      }
    }
    if (joined.resumed) {
      for (const pc of [this._pub, this._sub]) {
        if (pc && ["failed", "disconnected"].includes(pc.iceConnectionState)) this._onIceTrouble(pc);
      }
    }
  }

  _teardown(reason, error) {
    const was = this.state;
    this.state = "disconnected";
    this._leaving = true;
    this._signal?.close();
    this._signal = null;
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    this._closePeers();
    if (was !== "disconnected") this.emit(RoomEvent.Disconnected, reason, error);
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this._timers.delete(t);
        resolve();
      }, ms);
      this._timers.add(t);
    });
  }

  // -- peer connections ------------------------------------------------------

  _ensurePeers() {
    const config = { iceServers: this._iceServers, bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" };
    if (!this._pub) {
      const pc = new RTCPeerConnection(config);
      this._pub = pc;
      pc.onicecandidate = (ev) => this._onLocalCandidate(pc, "publisher", ev.candidate);
      pc.oniceconnectionstatechange = () => this._onIceState(pc);
    }
    if (!this._sub) {
      const pc = new RTCPeerConnection(config);
      this._sub = pc;
      pc.onicecandidate = (ev) => this._onLocalCandidate(pc, "subscriber", ev.candidate);
      pc.oniceconnectionstatechange = () => this._onIceState(pc);
      // Binding happens after each offer (see _applySubscriberOffer); ontrack
      // only tells us something may be waiting.
      pc.ontrack = () => {};
    }
  }

  _closePeers() {
    for (const pc of [this._pub, this._sub]) {
      if (!pc) continue;
      pc.onicecandidate = pc.oniceconnectionstatechange = pc.ontrack = null;
      try {
        pc.close();
      } catch {}
    }
    this._pub = this._sub = null;
    this._pubCandidates = [];
    this._subCandidates = [];
  }

  _onLocalCandidate(pc, target, candidate) {
    if (!candidate || !candidate.candidate) return;
    const c = {
      candidate: candidate.candidate,
      sdp_mid: candidate.sdpMid ?? undefined,
      sdp_m_line_index: candidate.sdpMLineIndex ?? undefined,
    };
    // Held until the connection has a remote description: the server's
    // media plane knows a connection only once it has seen its SDP.
    if (!pc.remoteDescription) {
      (target === "publisher" ? this._pubCandidates : this._subCandidates).push(c);
      return;
    }
    this._sendCandidate(target, c);
  }

  _flushCandidates(target) {
    const list = target === "publisher" ? this._pubCandidates : this._subCandidates;
    while (list.length) this._sendCandidate(target, list.shift());
  }

  _sendCandidate(target, candidate) {
    try {
      this._signal?.send("trickle", { target, candidate });
    } catch {
      // Reconnecting: the server's ICE-lite side learns our address from
      // our connectivity checks anyway.
    }
  }

  _onIceState(pc) {
    const state = pc.iceConnectionState;
    if (state === "failed") this._onIceTrouble(pc);
    else if (state === "disconnected") {
      const t = setTimeout(() => {
        this._timers.delete(t);
        if (pc.iceConnectionState === "disconnected") this._onIceTrouble(pc);
      }, ICE_DISCONNECTED_GRACE_MS);
      this._timers.add(t);
    } else if ((state === "connected" || state === "completed") && this._iceRestarting === pc) {
      this._iceRestarting = null;
      if (this.state === "reconnecting" && !this._reconnecting) {
        this.state = "connected";
        this.emit(RoomEvent.Reconnected);
      }
    }
  }

  /** ICE failed: restart it on the publisher; wait for the server on the subscriber. */
  _onIceTrouble(pc) {
    if (this.state === "disconnected" || this._reconnecting) return; // after the resume
    if (pc === this._pub) {
      if (!this._pub.remoteDescription) return; // never negotiated: nothing to restart
      if (this.state === "connected") {
        this.state = "reconnecting";
        this.emit(RoomEvent.Reconnecting, "publisher ICE failed; restarting ICE");
      }
      this._iceRestarting = pc;
      // Connected already once the answer is in (the path recovered by
      // itself, or the restart was quick): no state change will tell us.
      this._negotiatePublisher({ iceRestart: true }).then(() => this._onIceState(pc), (e) => {
        console.warn("rtc: ICE restart failed:", e.message);
        // The media plane cannot restart: a new session restores media.
        this._forceFreshSession("ICE restart failed");
      });
    } else if (pc === this._sub) {
      // The subscriber's offers come from the server (ICE-lite): it restarts
      // ICE with a new offer. If none comes, start a new session.
      const t = setTimeout(() => {
        this._timers.delete(t);
        if (pc === this._sub && ["failed", "disconnected"].includes(pc.iceConnectionState)) {
          this._forceFreshSession("subscriber connection did not recover");
        }
      }, SUBSCRIBER_RECOVERY_MS);
      this._timers.add(t);
    }
  }

  _forceFreshSession(why) {
    if (this._reconnecting || this.state === "disconnected") return;
    this._sessionToken = null;
    try {
      this._signal?.send("leave", {});
    } catch {}
    const signal = this._signal;
    this._signal = null;
    signal?.close();
    this._reconnecting = null;
    this._beginReconnect(why);
  }

  /** Serialises publisher negotiations: one offer in flight. */
  _withPublisher(fn) {
    const run = this._pubQueue.then(fn, fn);
    this._pubQueue = run.catch(() => {});
    return run;
  }

  _negotiatePublisher({ iceRestart = false } = {}) {
    return this._withPublisher(() => this._offerPublisher({ iceRestart }));
  }

  async _offerPublisher({ iceRestart = false, before } = {}) {
    const pc = this._pub;
    const offer = await pc.createOffer(iceRestart ? { iceRestart: true } : {});
    await pc.setLocalDescription(offer);
    try {
      if (before) await before(pc.localDescription.sdp);
      const answer = await this._request(
        "offer",
        { sdp: pc.localDescription.sdp, target: "publisher" },
        { match: (m) => m.type === "answer" && m.target === "publisher" },
        { iceRestart },
      );
      const dtxMids = new Set(pc.getTransceivers().filter((t) => t._rtcDtx && t.mid != null).map((t) => t.mid));
      await pc.setRemoteDescription({ type: "answer", sdp: withOpusDtx(answer.sdp, dtxMids) });
      this._flushCandidates("publisher");
    } catch (e) {
      if (pc.signalingState === "have-local-offer") {
        await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
      }
      throw e;
    }
  }

  async _publish(track, options = {}) {
    const lp = this.localParticipant;
    if (!lp || this.state !== "connected") throw new RtcError("invalid_state", "join a room before publishing");
    if (!track || (track.kind !== "audio" && track.kind !== "video")) {
      throw new RtcError("invalid_argument", "publishTrack needs an audio or video MediaStreamTrack");
    }
    for (const pub of lp.tracks.values()) {
      if (pub.track === track) throw new RtcError("conflict", `track ${track.id} is already published as ${pub.sid}`);
    }
    const source = options.source || defaultSource(track.kind);
    if (!SOURCES.has(source)) throw new RtcError("invalid_argument", `unknown source ${source}`);
    const simulcast = track.kind === "video" && (options.simulcast ?? source !== "screen_share");
    const settings = track.getSettings ? track.getSettings() : {};
    const layers = track.kind === "video" ? layersFor(settings.width, settings.height, simulcast) : [];

    return this._withPublisher(async () => {
      const pc = this._pub;
      const init = { direction: "sendonly", streams: [new MediaStream([track])] };
      if (simulcast) init.sendEncodings = simulcastEncodings();
      // Temporal (or SVC) layers within each encoding, e.g. "L1T3": the SFU
      // drops upper temporal layers for subscribers that want fewer frames.
      if (track.kind === "video" && options.scalabilityMode) {
        init.sendEncodings = (init.sendEncodings ?? [{}]).map((e) => ({ ...e, scalabilityMode: options.scalabilityMode }));
      }
      const codecs = track.kind === "video" && options.videoCodec ? videoCodecPreferences(options.videoCodec) : null;
      const transceiver = pc.addTransceiver(track, init);
      if (codecs) transceiver.setCodecPreferences(codecs);
      // Read when the answer arrives (see withOpusDtx).
      if (track.kind === "audio") transceiver._rtcDtx = options.dtx ?? true;
      let published = null;
      try {
        await this._offerPublisher({
          // `publish` goes before the offer that carries the track, with the
          // offer's msid track id as `cid`: that is what the server matches.
          before: async (sdp) => {
            const line = parseSdpMedia(sdp).find((m) => m.mid === transceiver.mid);
            const cid = line?.trackId || track.id;
            const msg = await this._request(
              "publish",
              { cid, kind: track.kind, source, name: options.name, muted: !track.enabled || undefined, layers },
              { match: (m) => m.type === "track_published" && m.track && m.track.cid === cid && m.participant_sid === lp.sid },
            );
            published = msg.track;
          },
        });
      } catch (e) {
        try {
          transceiver.stop();
        } catch {}
        if (published) {
          lp.tracks.delete(published.sid);
          try {
            this._signal?.send("unpublish", { track_sid: published.sid });
          } catch {}
        }
        throw e;
      }
      let pub = lp.tracks.get(published.sid);
      if (!pub) {
        pub = new LocalTrackPublication(published, lp, track, transceiver);
        lp.tracks.set(pub.sid, pub);
      } else {
        pub.track = track;
        pub.transceiver = transceiver;
        pub.simulcast = layers.length > 0;
      }
      pub._options = { ...options, source, simulcast };
      this.emit(RoomEvent.LocalTrackPublished, pub, lp);
      const early = this._layersPending.get(pub.sid);
      this._layersPending.delete(pub.sid);
      if (early) pub._setLayersWanted(early);
      return pub;
    });
  }

  async _unpublish(target, stop) {
    const lp = this.localParticipant;
    if (!lp) throw new RtcError("invalid_state", "not in a room");
    let pub = null;
    for (const p of lp.tracks.values()) {
      if (p === target || p.sid === target || p.track === target) pub = p;
    }
    if (!pub) throw new RtcError("track_not_found", "that track is not published");
    lp.tracks.delete(pub.sid);
    try {
      await this._request("unpublish", { track_sid: pub.sid }, {
        match: (m) => m.type === "track_unpublished" && m.track_sid === pub.sid,
      });
    } finally {
      this._retirePublisherTransceiver(pub.transceiver);
      if (stop) pub.track?.stop();
      this.emit(RoomEvent.LocalTrackUnpublished, pub, lp);
    }
    if (this._pub && this.state === "connected") {
      await this._negotiatePublisher().catch((e) => console.warn("rtc: renegotiation after unpublish failed:", e.message));
    }
    return pub;
  }

  /**
   * Ends a publisher transceiver whose track is withdrawn. The first live
   * m-line carries the BUNDLE transport, and Chrome tears the transport down
   * (DTLS included, which ends the server's session) when that m-line is
   * stopped; so it is only made inactive and sends nothing. Others stop, and
   * their m-lines may be recycled by later tracks.
   */
  _retirePublisherTransceiver(t) {
    if (!t) return;
    try {
      const first = parseSdpMedia(this._pub?.localDescription?.sdp).find((m) => m.port !== 0 && m.kind !== "application");
      if (first && first.mid === t.mid) {
        t.sender.replaceTrack(null).catch(() => {});
        t.direction = "inactive";
      } else {
        t.stop();
      }
    } catch {}
  }

  // -- subscriber ------------------------------------------------------------

  _onServerOffer(sdp) {
    const run = this._subQueue.then(() => this._applySubscriberOffer(sdp));
    this._subQueue = run.catch((e) => {
      console.warn("rtc: subscriber offer failed:", e);
      this.emit(RoomEvent.Error, e instanceof RtcError ? e : new RtcError("media_error", String(e?.message || e)));
    });
  }

  async _applySubscriberOffer(sdp) {
    const pc = this._sub;
    if (!pc) return;
    await pc.setRemoteDescription({ type: "offer", sdp });
    this._noteSubscriberLines(sdp);
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    this._signal?.send("answer", { sdp: pc.localDescription.sdp, target: "subscriber" });
    this._flushCandidates("subscriber");
    this._bindSubscriptions();
  }

  /** Records the offer's m-lines by mid; stopped lines end their binding. */
  _noteSubscriberLines(sdp) {
    const transceivers = new Map(this._sub.getTransceivers().map((t) => [t.mid, t]));
    for (const m of parseSdpMedia(sdp)) {
      if (m.kind !== "audio" && m.kind !== "video") continue;
      const old = this._lines.get(m.mid);
      if (m.port === 0) {
        if (old?.trackSid) this._unbind(old.trackSid);
        this._lines.delete(m.mid);
        continue;
      }
      // A reused mid with another msid is a new line.
      if (old && old.streamId === m.streamId && old.trackId === m.trackId) continue;
      if (old?.trackSid) this._unbind(old.trackSid);
      this._lines.set(m.mid, { ...m, transceiver: transceivers.get(m.mid) || null, trackSid: null, dead: false });
    }
  }

  _knownRemoteTracks() {
    const known = new Map();
    for (const p of this.participants.values()) {
      for (const pub of p.tracks.values()) {
        known.set(pub.sid, { sid: pub.sid, kind: pub.kind, participantSid: p.sid, cid: pub.cid });
      }
    }
    return known;
  }

  _findRemoteTrack(sid) {
    for (const p of this.participants.values()) {
      const pub = p.tracks.get(sid);
      if (pub) return pub;
    }
    return undefined;
  }

  /** Pairs unbound subscriber m-lines with subscribed tracks (see matchSubscriptions). */
  _bindSubscriptions() {
    const lines = [...this._lines.values()].filter((l) => !l.trackSid && !l.dead && l.transceiver);
    if (lines.length === 0) return;
    const known = this._knownRemoteTracks();
    const waiting = this._waiting.map((sid) => known.get(sid)).filter(Boolean);
    for (const [mid, sid] of matchSubscriptions(lines, waiting, known, this._streamOwners)) {
      const line = this._lines.get(mid);
      const pub = this._findRemoteTrack(sid);
      if (!line || !pub) continue;
      line.trackSid = sid;
      this._waiting = this._waiting.filter((s) => s !== sid);
      pub.transceiver = line.transceiver;
      pub.track = line.transceiver.receiver.track;
      if (pub.subscribed) this.emit(RoomEvent.TrackSubscribed, pub.track, pub, pub.participant);
    }
  }

  _unbind(sid) {
    const pub = this._findRemoteTrack(sid);
    for (const line of this._lines.values()) {
      if (line.trackSid === sid) {
        line.trackSid = null;
        line.dead = true; // its m-line is stopped in the server's next offer
      }
    }
    if (pub && pub.track) {
      const track = pub.track;
      pub.track = null;
      pub.transceiver = null;
      if (pub.subscribed) this.emit(RoomEvent.TrackUnsubscribed, track, pub, pub.participant);
    }
  }

  _markSubscribed(pub) {
    if (pub.subscribed) return;
    pub.subscribed = true;
    if (!pub.track && !this._waiting.includes(pub.sid)) this._waiting.push(pub.sid);
    // Settings given before the subscription existed go now.
    pub._pushSettings();
    if (pub.track) this.emit(RoomEvent.TrackSubscribed, pub.track, pub, pub.participant);
    else this._bindSubscriptions();
  }

  _endSubscription(pub) {
    this._waiting = this._waiting.filter((s) => s !== pub.sid);
    if (pub.track) this._unbind(pub.sid);
    pub.subscribed = false;
    pub._settingsSent = null;
  }

  async _setSubscribed(pub, subscribed) {
    if (subscribed) {
      await this._request("subscribe", { track_sid: pub.sid }, {
        match: (m) => m.type === "subscribed" && m.track_sid === pub.sid,
      });
    } else {
      await this._request("unsubscribe", { track_sid: pub.sid }, {
        match: (m) => m.type === "unsubscribed" && m.track_sid === pub.sid,
      });
    }
  }

  // -- remote model ----------------------------------------------------------

  _upsertRemoteTrack(p, info) {
    let pub = p.tracks.get(info.sid);
    if (!pub) {
      pub = new RemoteTrackPublication(info, p);
      p.tracks.set(pub.sid, pub);
      this.emit(RoomEvent.TrackPublished, pub, p);
      return pub;
    }
    const wasMuted = pub.muted;
    pub._update(info);
    if (wasMuted !== pub.muted) this.emit(RoomEvent.TrackMuted, pub, p, pub.muted);
    return pub;
  }

  _removeRemoteTrack(p, pub) {
    this._endSubscription(pub);
    p.tracks.delete(pub.sid);
    this.emit(RoomEvent.TrackUnpublished, pub, p);
  }

  _removeParticipant(p) {
    for (const pub of [...p.tracks.values()]) this._removeRemoteTrack(p, pub);
    this.participants.delete(p.identity);
    for (const [stream, owner] of this._streamOwners) if (owner === p.sid) this._streamOwners.delete(stream);
    if (this.activeSpeakers.includes(p)) {
      this.activeSpeakers = this.activeSpeakers.filter((s) => s !== p);
      this.emit(RoomEvent.ActiveSpeakersChanged, this.activeSpeakers);
    }
    this.emit(RoomEvent.ParticipantLeft, p);
  }

  // -- server messages -------------------------------------------------------

  _onMessage(m, signal) {
    // `joined` arrives before its connection is adopted (see _open); anything
    // else from a connection we have given up on is stale.
    if (signal !== this._signal && m.type !== "joined") return;
    const lp = this.localParticipant;
    switch (m.type) {
      case "joined":
      case "pong":
        break; // handled by the request that asked
      case "offer":
        if (m.target === "subscriber" || m.target === undefined) this._onServerOffer(m.sdp);
        break;
      case "answer":
        // Replies to our offers are taken by the request waiting for them;
        // an unrequested one (the media plane's ICE restart) applies directly.
        if (m.target === "publisher" && this._pub?.signalingState === "have-local-offer" && !this._hasPending(signal, "offer")) {
          this._pub.setRemoteDescription({ type: "answer", sdp: m.sdp }).catch((e) => console.warn("rtc:", e.message));
        }
        break;
      case "trickle": {
        const pc = m.target === "publisher" ? this._pub : this._sub;
        const c = m.candidate || {};
        pc?.addIceCandidate({ candidate: c.candidate, sdpMid: c.sdp_mid ?? null, sdpMLineIndex: c.sdp_m_line_index ?? null })
          .catch((e) => console.warn("rtc: remote candidate refused:", e.message));
        break;
      }
      case "participant_joined": {
        if (lp && m.participant.sid === lp.sid) break;
        const existing = this.participants.get(m.participant.identity);
        if (existing && existing.sid !== m.participant.sid) this._removeParticipant(existing);
        if (!this.participants.has(m.participant.identity)) {
          const p = new RemoteParticipant(m.participant, this);
          this.participants.set(p.identity, p);
          this.emit(RoomEvent.ParticipantJoined, p);
          for (const t of m.participant.tracks || []) this._upsertRemoteTrack(p, t);
        }
        break;
      }
      case "participant_updated": {
        const info = m.participant;
        if (lp && info.sid === lp.sid) {
          lp._update(info);
          this.emit(RoomEvent.ParticipantUpdated, lp);
          break;
        }
        const p = this.participants.get(info.identity);
        if (p && p.sid === info.sid) {
          p._update(info);
          this.emit(RoomEvent.ParticipantUpdated, p);
        }
        break;
      }
      case "participant_left": {
        const p = this.participants.get(m.identity);
        if (p && p.sid === m.participant_sid) this._removeParticipant(p);
        break;
      }
      case "track_published": {
        if (lp && m.participant_sid === lp.sid) break; // the reply to our `publish`
        const p = this.getParticipantBySid(m.participant_sid);
        if (p && p !== lp) this._upsertRemoteTrack(p, m.track);
        break;
      }
      case "track_unpublished": {
        if (lp && m.participant_sid === lp.sid) {
          // Unpublished by the server (permission revoked) or the reply to ours.
          const pub = lp.tracks.get(m.track_sid);
          if (pub) {
            lp.tracks.delete(pub.sid);
            this._retirePublisherTransceiver(pub.transceiver);
            this.emit(RoomEvent.LocalTrackUnpublished, pub, lp);
            if (this._pub && this.state === "connected") this._negotiatePublisher().catch(() => {});
          }
          break;
        }
        const p = this.getParticipantBySid(m.participant_sid);
        const pub = p?.tracks.get(m.track_sid);
        if (pub) this._removeRemoteTrack(p, pub);
        break;
      }
      case "subscribed": {
        const pub = this._findRemoteTrack(m.track_sid);
        if (pub) this._markSubscribed(pub);
        break;
      }
      case "unsubscribed": {
        const pub = this._findRemoteTrack(m.track_sid);
        if (pub) this._endSubscription(pub);
        break;
      }
      case "track_muted": {
        const p = this.getParticipantBySid(m.participant_sid);
        const pub = p?.tracks.get(m.track_sid);
        if (pub) {
          pub.muted = !!m.muted;
          this.emit(RoomEvent.TrackMuted, pub, p, pub.muted);
        }
        break;
      }
      case "permissions_changed":
        if (lp) {
          lp.permissions = m.permissions;
          this.emit(RoomEvent.PermissionsChanged, m.permissions, lp);
        }
        break;
      case "speakers": {
        const speakers = [];
        const levels = new Map((m.speakers || []).map((s) => [s.participant_sid, s.level]));
        for (const p of [lp, ...this.participants.values()]) {
          if (!p) continue;
          const level = levels.get(p.sid);
          p.audioLevel = level ?? 0;
          p.isSpeaking = level !== undefined;
        }
        for (const s of m.speakers || []) {
          const p = this.getParticipantBySid(s.participant_sid);
          if (p) speakers.push(p);
        }
        this.activeSpeakers = speakers;
        this.emit(RoomEvent.ActiveSpeakersChanged, speakers);
        break;
      }
      case "connection_quality":
        for (const u of m.updates || []) {
          const p = this.getParticipantBySid(u.participant_sid);
          if (p && p.connectionQuality !== u.quality) {
            p.connectionQuality = u.quality;
            this.emit(RoomEvent.ConnectionQualityChanged, u.quality, p);
          }
        }
        break;
      case "bandwidth_estimate":
        if (Number.isFinite(m.bitrate)) {
          this.bandwidthEstimate = m.bitrate;
          this.emit(RoomEvent.BandwidthEstimate, m.bitrate);
        }
        break;
      case "layers_wanted": {
        const qualities = Array.isArray(m.qualities) ? m.qualities : [];
        const pub = lp?.tracks.get(m.track_sid);
        if (pub instanceof LocalTrackPublication) pub._setLayersWanted(qualities);
        // The server learns of a track from the offer that carries it, so
        // this can overtake the end of our own publish: applied there.
        else if (m.track_sid) this._layersPending.set(m.track_sid, qualities);
        break;
      }
      case "data": {
        const p = this.getParticipantBySid(m.from_sid);
        // Payloads from other clients may be plain text: pass its UTF-8 bytes.
        const bytes = base64ToBytes(m.payload) ?? new TextEncoder().encode(m.payload);
        this.emit(RoomEvent.DataReceived, bytes, p, { topic: m.topic || "", identity: m.from_identity, payload: m.payload });
        break;
      }
      case "leave":
        this._serverLeft = true;
        if (!this._leaving) this._teardown(m.reason || "server_left");
        break;
      case "error":
        // Errors answering a request were given to that request already.
        this.emit(RoomEvent.Error, RtcError.fromMessage(m));
        break;
      default:
        // Newer servers may add message types; ignoring them is safe.
        break;
    }
  }

  _hasPending(signal, type) {
    for (const p of signal.pending.values()) if (p.type === type) return true;
    return false;
  }
}

function toBytes(payload) {
  if (payload instanceof Uint8Array) return payload;
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  if (ArrayBuffer.isView(payload)) return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
  throw new RtcError("invalid_argument", "sendData needs a Uint8Array, ArrayBuffer or string");
}

// ---------------------------------------------------------------------------
// Stats summaries
// ---------------------------------------------------------------------------

function statsOf(report) {
  const list = [];
  if (report) report.forEach((s) => list.push(s));
  return list;
}

/** The selected candidate pair's RTT (seconds) and byte rates of one connection. */
export function summarizeTransport(report, prev, key) {
  const stats = statsOf(report);
  const byId = new Map(stats.map((s) => [s.id, s]));
  let pair = null;
  for (const s of stats) {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId) || pair;
  }
  if (!pair) pair = stats.find((s) => s.type === "candidate-pair" && s.nominated && s.state === "succeeded") || null;
  const out = { rtt: pair?.currentRoundTripTime ?? null, bytesSent: 0, bytesReceived: 0, sendBitrate: 0, receiveBitrate: 0, report };
  if (pair) {
    out.bytesSent = pair.bytesSent || 0;
    out.bytesReceived = pair.bytesReceived || 0;
    const ts = pair.timestamp;
    const ps = prev.get(`${key}:sent`);
    const pr = prev.get(`${key}:recv`);
    out.sendBitrate = 8 * ratePerSecond(ps, { value: out.bytesSent, timestamp: ts });
    out.receiveBitrate = 8 * ratePerSecond(pr, { value: out.bytesReceived, timestamp: ts });
    prev.set(`${key}:sent`, { value: out.bytesSent, timestamp: ts });
    prev.set(`${key}:recv`, { value: out.bytesReceived, timestamp: ts });
  }
  return out;
}

export function summarizeInbound(report, pub, prev, transportRtt) {
  const mid = pub.transceiver?.mid;
  const trackId = pub.track?.id;
  const stats = statsOf(report);
  const s = stats.find((x) => x.type === "inbound-rtp" && ((mid != null && x.mid === mid) || (trackId && x.trackIdentifier === trackId)));
  const out = {
    trackSid: pub.sid,
    participantIdentity: pub.participant?.identity,
    direction: "inbound",
    kind: pub.kind,
    bitrate: 0,
    packetsLost: 0,
    packetLoss: 0,
    jitter: null,
    rtt: transportRtt ?? null,
    width: null,
    height: null,
    fps: null,
    layer: null,
  };
  if (!s) return out;
  const k = `in:${s.id}`;
  const p = prev.get(k);
  out.bitrate = 8 * ratePerSecond(p && { value: p.bytes, timestamp: p.timestamp }, { value: s.bytesReceived || 0, timestamp: s.timestamp });
  out.packetsLost = s.packetsLost || 0;
  out.packetLoss = lossFraction(p, { packetsLost: s.packetsLost || 0, packetsReceived: s.packetsReceived || 0 });
  out.jitter = s.jitter ?? null;
  out.width = s.frameWidth ?? null;
  out.height = s.frameHeight ?? null;
  out.fps = s.framesPerSecond ?? null;
  out.layer = pub.kind === "video" ? layerForResolution(pub.layers, s.frameWidth, s.frameHeight) : null;
  prev.set(k, { bytes: s.bytesReceived || 0, timestamp: s.timestamp, packetsLost: s.packetsLost || 0, packetsReceived: s.packetsReceived || 0 });
  return out;
}

export function summarizeOutbound(report, pub, prev, transportRtt) {
  const mid = pub.transceiver?.mid;
  const stats = statsOf(report);
  const byId = new Map(stats.map((s) => [s.id, s]));
  const outs = stats.filter((x) => x.type === "outbound-rtp" && mid != null && x.mid === mid);
  const out = {
    trackSid: pub.sid,
    participantIdentity: pub.participant?.identity,
    direction: "outbound",
    kind: pub.kind,
    bitrate: 0,
    packetsLost: 0,
    packetLoss: 0,
    jitter: null,
    rtt: transportRtt ?? null,
    width: null,
    height: null,
    fps: null,
    layer: null,
    layers: [],
  };
  let lossWeighted = 0;
  let lossPackets = 0;
  for (const s of outs) {
    const k = `out:${s.id}`;
    const p = prev.get(k);
    const bitrate = 8 * ratePerSecond(p, { value: s.bytesSent || 0, timestamp: s.timestamp });
    prev.set(k, { value: s.bytesSent || 0, timestamp: s.timestamp });
    out.bitrate += bitrate;
    const remote = s.remoteId ? byId.get(s.remoteId) : stats.find((r) => r.type === "remote-inbound-rtp" && r.localId === s.id);
    if (remote) {
      out.packetsLost += remote.packetsLost || 0;
      if (remote.roundTripTime != null) out.rtt = remote.roundTripTime;
      if (remote.fractionLost != null) {
        lossWeighted += remote.fractionLost * (s.packetsSent || 1);
        lossPackets += s.packetsSent || 1;
      }
      if (remote.jitter != null) out.jitter = remote.jitter;
    }
    const layer = { rid: s.rid || null, width: s.frameWidth ?? null, height: s.frameHeight ?? null, fps: s.framesPerSecond ?? null, bitrate, active: s.active !== false, qualityLimitationReason: s.qualityLimitationReason };
    out.layers.push(layer);
    if ((layer.width || 0) > (out.width || 0)) {
      out.width = layer.width;
      out.height = layer.height;
      out.fps = layer.fps;
      out.layer = layer.rid;
    }
  }
  out.packetLoss = lossPackets ? lossWeighted / lossPackets : 0;
  out.layers.sort((a, b) => (a.width || 0) - (b.width || 0));
  return out;
}
