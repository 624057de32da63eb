// The demo page: join a room, publish camera and microphone (simulcast),
// see everyone in a grid with live stats, mute, share the screen, leave.
//
// URL parameters (so scripts and tests can open it directly):
//   ?room=NAME&identity=ID&token=JWT   join at once with that token
//   ?room=NAME&identity=ID             join at once with a development-mode token
//   &name=DISPLAY  &camera=0  &mic=0  &simulcast=0
//   &codec=vp9 (or vp8, h264, av1: the camera's preferred codec)  &dtx=0
//   &svc=L1T3 (the camera's scalability mode in each encoding; &simulcast=0&codec=vp9&svc=L3T3_KEY: VP9 SVC)
//   &adaptive=0 (tiles do not ask for the size they show: a script sets each
//               video's size itself, and a tile resizing cannot override it)
// `window.rtcDemo` exposes the room and the page's state for scripts.
import { Room, RoomEvent, RtcError } from "/sdk/rtc.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
/** Remote tiles ask the SFU for no larger video than they show. */
const adaptiveStream = params.get("adaptive") !== "0" && params.get("adaptive") !== "false";

/** What scripts can look at: `rtcDemo.room`, `rtcDemo.state`, `rtcDemo.error`. */
const demo = (window.rtcDemo = { room: null, state: "idle", error: null, events: [] });

/** tile key -> {el, participant, local, video: publication|null, source} */
const tiles = new Map();
/** remote audio track sid -> <audio> */
const audioEls = new Map();
let room = null;
let statsTimer = null;

// --- status and errors ------------------------------------------------------

function setStatus(state, text) {
  demo.state = state;
  $("status").dataset.state = state;
  $("status").textContent = text || state;
}

function showError(e) {
  const err = e instanceof RtcError ? `${e.code}: ${e.message}` : String(e?.message || e);
  demo.error = err;
  $("error").textContent = err;
  $("error").hidden = false;
  console.error(e);
}

function clearError() {
  $("error").hidden = true;
  demo.error = null;
}

// --- tokens -------------------------------------------------------------------

/** A token from the server's development-mode endpoint (404 outside development mode). */
async function devToken(roomName, identity, name) {
  const res = await fetch("/v1/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ room: roomName, identity, name }),
  });
  if (res.status === 404) {
    throw new RtcError(
      "not_found",
      "this server is not in development mode, so it hands out no tokens: open this page with ?room=NAME&identity=NAME&token=TOKEN",
    );
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new RtcError(body.error?.code || "http_" + res.status, body.error?.message || res.statusText);
  return body.token;
}

/** An identity from a display name: readable, and unique enough to open the page twice. */
function identityFor(name) {
  const base = name.toLowerCase().replace(/[^a-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "guest";
  return `${base}-${Math.random().toString(36).slice(2, 6)}`;
}

// --- joining and leaving --------------------------------------------------------

async function join({ roomName, identity, name, token, camera, mic, simulcast }) {
  clearError();
  $("join").disabled = true;
  setStatus("connecting", "connecting…");
  try {
    token = token || (await devToken(roomName, identity, name));
    room = new Room({ autoSubscribe: true });
    demo.room = room;
    wireRoom(room);
    await room.connect(location.origin, token);
  } catch (e) {
    room = null;
    setStatus("error", "not connected");
    showError(e);
    $("join").disabled = false;
    return;
  }
  $("join-form").hidden = true;
  $("controls").hidden = false;
  $("room-name").textContent = room.name;
  setStatus("connected", `connected as ${room.localParticipant.identity}`);
  history.replaceState(null, "", `?room=${encodeURIComponent(room.name)}`);

  ensureTile(room.localParticipant, "main", true);
  for (const p of room.participants.values()) addParticipant(p);
  statsTimer = setInterval(refreshStats, 1000);

  // Media after joining: a refused camera must not keep us out of the room.
  if (camera) await publishCamera(simulcast).catch(showError);
  if (mic) await publishMic().catch(showError);
  updateButtons();
}

async function leave() {
  if (!room) return;
  const r = room;
  for (const pub of r.localParticipant.tracks.values()) pub.track?.stop();
  await r.disconnect();
}

function resetPage() {
  clearInterval(statsTimer);
  for (const t of tiles.values()) t.el.remove();
  tiles.clear();
  for (const a of audioEls.values()) a.remove();
  audioEls.clear();
  room = null;
  $("controls").hidden = true;
  $("join-form").hidden = false;
  $("join").disabled = false;
  $("room-name").textContent = "";
}

// --- local media --------------------------------------------------------------------

async function publishCamera(simulcast = $("use-simulcast").checked) {
  // 720p gives three simulcast layers (browsers drop layers for small inputs).
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 } });
  const track = stream.getVideoTracks()[0];
  const videoCodec = params.get("codec") || undefined;
  const scalabilityMode = params.get("svc") || undefined;
  const pub = await room.localParticipant.publishTrack(track, { source: "camera", simulcast, videoCodec, scalabilityMode });
  showLocal();
  return pub;
}

async function publishMic() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
  const dtx = params.get("dtx") !== "0";
  return room.localParticipant.publishTrack(stream.getAudioTracks()[0], { source: "microphone", dtx });
}

async function toggleScreen() {
  const lp = room.localParticipant;
  const current = lp.getTrackBySource("screen_share");
  if (current) {
    await lp.unpublishTrack(current, { stop: true });
    return;
  }
  const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  const track = stream.getVideoTracks()[0];
  const pub = await lp.publishTrack(track, { source: "screen_share" });
  // The browser's own "stop sharing" button ends the track.
  track.addEventListener("ended", () => {
    if (lp.tracks.has(pub.sid)) lp.unpublishTrack(pub).catch(showError);
  });
}

async function toggleSource(source) {
  const lp = room.localParticipant;
  const pub = lp.getTrackBySource(source);
  if (!pub) {
    if (source === "camera") await publishCamera();
    else await publishMic();
  } else if (pub.muted) {
    await pub.unmute();
  } else {
    await pub.mute();
  }
  showLocal();
}

function updateButtons() {
  if (!room) return;
  const lp = room.localParticipant;
  const mic = lp.getTrackBySource("microphone");
  const cam = lp.getTrackBySource("camera");
  const screen = lp.getTrackBySource("screen_share");
  $("toggle-mic").textContent = !mic ? "Start microphone" : mic.muted ? "Unmute microphone" : "Mute microphone";
  $("toggle-mic").setAttribute("aria-pressed", String(!!mic?.muted));
  $("toggle-camera").textContent = !cam ? "Start camera" : cam.muted ? "Start camera" : "Stop camera";
  $("toggle-camera").setAttribute("aria-pressed", String(!!cam?.muted));
  $("toggle-screen").textContent = screen ? "Stop sharing" : "Share screen";
  $("toggle-screen").hidden = !navigator.mediaDevices?.getDisplayMedia;
}

/** The local tiles show our own tracks (camera mirrored). */
function showLocal() {
  const lp = room.localParticipant;
  const main = ensureTile(lp, "main", true);
  const cam = lp.getTrackBySource("camera");
  setTileVideo(main, cam && !cam.muted ? cam : null);
  setMicBadge(main, lp);
  for (const pub of lp.tracks.values()) {
    if (pub.source === "screen_share") setTileVideo(ensureTile(lp, pub.sid, true), pub);
  }
  for (const [key, t] of tiles) {
    if (t.local && key !== tileKey(lp, "main") && !lp.tracks.has(key.split("|")[1])) removeTile(key);
  }
  updateButtons();
}

// --- room events ----------------------------------------------------------------------

function wireRoom(r) {
  const log = (name) => (...args) => demo.events.push({ name, at: Date.now(), detail: args[0]?.identity ?? args[0]?.sid ?? args[0] });
  for (const name of Object.values(RoomEvent)) r.on(name, log(name));

  r.on(RoomEvent.ParticipantJoined, addParticipant);
  r.on(RoomEvent.ParticipantLeft, (p) => {
    for (const key of [...tiles.keys()]) if (tiles.get(key).participant === p) removeTile(key);
  });
  r.on(RoomEvent.ParticipantUpdated, (p) => {
    for (const t of tiles.values()) if (t.participant === p) t.el.querySelector(".name").textContent = label(p, t);
  });
  r.on(RoomEvent.TrackSubscribed, (track, pub, p) => {
    if (pub.kind === "audio") {
      const el = pub.attach(new Audio());
      el.dataset.trackSid = pub.sid;
      document.body.append(el);
      audioEls.set(pub.sid, el);
      el.play().catch(() => {}); // autoplay rules: the Join click normally allows it
    } else {
      const key = pub.source === "screen_share" ? pub.sid : "main";
      setTileVideo(ensureTile(p, key, false), pub);
    }
    setMicBadge(ensureTile(p, "main", false), p);
  });
  r.on(RoomEvent.TrackUnsubscribed, (track, pub, p) => {
    audioEls.get(pub.sid)?.remove();
    audioEls.delete(pub.sid);
    for (const [key, t] of tiles) {
      if (t.video === pub) {
        if (t.source === "screen_share") removeTile(key);
        else setTileVideo(t, null);
      }
    }
  });
  r.on(RoomEvent.TrackUnpublished, (pub, p) => {
    const t = tiles.get(tileKey(p, pub.sid));
    if (t) removeTile(tileKey(p, pub.sid));
    if (tiles.has(tileKey(p, "main"))) setMicBadge(tiles.get(tileKey(p, "main")), p);
  });
  r.on(RoomEvent.TrackPublished, (pub, p) => setMicBadge(ensureTile(p, "main", false), p));
  r.on(RoomEvent.TrackMuted, (pub, p) => {
    const main = tiles.get(tileKey(p, "main"));
    if (main) setMicBadge(main, p);
    if (p === r.localParticipant) showLocal();
    else if (main && pub.kind === "video" && pub.source === "camera") main.el.classList.toggle("no-video", pub.muted || !pub.track);
  });
  r.on(RoomEvent.LocalTrackPublished, showLocal);
  r.on(RoomEvent.LocalTrackUnpublished, showLocal);
  r.on(RoomEvent.ActiveSpeakersChanged, (speakers) => {
    const speaking = new Set(speakers.map((p) => p.sid));
    for (const t of tiles.values()) t.el.classList.toggle("speaking", t.source !== "screen_share" && speaking.has(t.participant.sid));
  });
  r.on(RoomEvent.ConnectionQualityChanged, (quality, p) => {
    const t = tiles.get(tileKey(p, "main"));
    if (t) t.el.querySelector(".quality").textContent = quality;
  });
  r.on(RoomEvent.Reconnecting, (why) => setStatus("reconnecting", `reconnecting… (${why})`));
  r.on(RoomEvent.Reconnected, () => {
    setStatus("connected", `connected as ${r.localParticipant.identity}`);
    showLocal();
  });
  r.on(RoomEvent.Disconnected, (reason, error) => {
    setStatus("idle", `left (${reason})`);
    if (error) showError(error);
    else if (reason !== "client_left") showError(new RtcError(reason, `the server ended the session: ${reason}`));
    resetPage();
  });
  r.on(RoomEvent.Error, (e) => console.warn("rtc error", e.code, e.message));
}

function addParticipant(p) {
  const t = ensureTile(p, "main", false);
  setMicBadge(t, p);
}

// --- tiles --------------------------------------------------------------------------------

function tileKey(p, key) {
  return `${p.sid}|${key}`;
}

function label(p, t) {
  const who = p.name || p.identity;
  const suffix = t.source === "screen_share" ? " (screen)" : t.local ? " (you)" : "";
  return who + suffix;
}

function ensureTile(p, key, local) {
  const k = tileKey(p, key);
  let t = tiles.get(k);
  if (t) return t;
  const el = $("tile-template").content.firstElementChild.cloneNode(true);
  t = { el, participant: p, local, video: null, source: key === "main" ? "camera" : "screen_share" };
  el.dataset.identity = p.identity;
  el.dataset.source = t.source;
  el.classList.add(local ? "local" : "remote", t.source === "camera" ? "camera" : "screen", "no-video");
  el.querySelector(".name").textContent = label(p, t);
  el.querySelector(".avatar").textContent = (p.name || p.identity).slice(0, 1).toUpperCase();
  const select = el.querySelector(".layer");
  select.addEventListener("change", () => t.video?.setPreferredLayer?.(select.value));
  tiles.set(k, t);
  $("grid").append(el);

  if (!local) {
    const video = el.querySelector("video");
    // Ask for no larger layer than the tile shows.
    if (adaptiveStream) {
      new ResizeObserver(() => {
        const dpr = window.devicePixelRatio || 1;
        t.video?.setVideoSize?.(video.clientWidth * dpr, video.clientHeight * dpr);
      }).observe(video);
    }
    // Off-screen tiles stop receiving video altogether.
    new IntersectionObserver((entries) => {
      for (const e of entries) t.video?.setEnabled?.(e.isIntersecting);
    }).observe(el);
  }
  return t;
}

function removeTile(key) {
  const t = tiles.get(key);
  if (!t) return;
  t.el.remove();
  tiles.delete(key);
}

/** Shows a publication's video in a tile (null: the avatar). */
function setTileVideo(t, pub) {
  const video = t.el.querySelector("video");
  t.video = pub;
  const track = pub?.track || null;
  if (!track) {
    video.srcObject = null;
    t.el.classList.add("no-video");
  } else {
    if (!video.srcObject || video.srcObject.getVideoTracks()[0] !== track) video.srcObject = new MediaStream([track]);
    video.play().catch(() => {});
    t.el.classList.toggle("no-video", !!pub.muted);
    if (!t.local && adaptiveStream) {
      const dpr = window.devicePixelRatio || 1;
      pub.setVideoSize(video.clientWidth * dpr, video.clientHeight * dpr);
    }
  }
  const select = t.el.querySelector(".layer");
  select.hidden = t.local || !pub || pub.layers.length === 0;
  if (pub && !t.local) select.value = pub.preferredLayer || "auto";
  t.el.dataset.trackSid = pub?.sid || "";
}

function setMicBadge(t, p) {
  const mic = p.getTrackBySource("microphone");
  t.el.querySelector(".mic-off").hidden = !(mic?.muted || !mic);
}

// --- stats -------------------------------------------------------------------------------------

const fmtBitrate = (bps) => (bps >= 1e6 ? `${(bps / 1e6).toFixed(2)} Mbps` : `${Math.round(bps / 1e3)} kbps`);

async function refreshStats() {
  if (!room || room.state === "disconnected") return;
  let stats;
  try {
    stats = await room.getStats();
  } catch (e) {
    console.warn("getStats failed", e);
    return;
  }
  demo.stats = stats;
  for (const t of tiles.values()) {
    const p = t.participant;
    // The tile's video, else (audio-only participant) its microphone.
    const pub = t.video || (t.source === "camera" ? p.getTrackBySource("microphone") : null);
    const s = pub && stats.tracks[pub.sid];
    const dl = t.el.querySelector(".stats");
    if (!s) {
      dl.hidden = true;
      continue;
    }
    const rows = [];
    if (s.kind === "video") {
      rows.push([t.local ? "sending" : "layer", s.layer ?? (pub.layers.length ? "?" : "single")]);
      rows.push(["res", s.width ? `${s.width}×${s.height}${s.fps ? ` @${Math.round(s.fps)}` : ""}` : "–"]);
    } else {
      rows.push(["audio", t.local ? "sending" : "receiving"]);
    }
    rows.push(["rate", fmtBitrate(s.bitrate)]);
    rows.push(["loss", `${(s.packetLoss * 100).toFixed(1)}% (${s.packetsLost})`]);
    rows.push(["rtt", s.rtt != null ? `${Math.round(s.rtt * 1000)} ms` : "–"]);
    dl.replaceChildren(
      ...rows.flatMap(([k, v]) => {
        const dt = document.createElement("dt");
        dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = v;
        return [dt, dd];
      }),
    );
    dl.hidden = false;
    // Machine-readable for scripts and tests.
    Object.assign(t.el.dataset, {
      layer: s.layer ?? "",
      width: s.width ?? "",
      height: s.height ?? "",
      bitrate: Math.round(s.bitrate),
      packetLoss: s.packetLoss.toFixed(4),
      rtt: s.rtt ?? "",
    });
  }
}

// --- page wiring ------------------------------------------------------------------------------

$("join-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("name").value.trim();
  join({
    roomName: $("room").value.trim(),
    identity: identityFor(name),
    name,
    camera: $("use-camera").checked,
    mic: $("use-mic").checked,
    simulcast: $("use-simulcast").checked,
  });
});
$("toggle-mic").addEventListener("click", () => toggleSource("microphone").catch(showError));
$("toggle-camera").addEventListener("click", () => toggleSource("camera").catch(showError));
$("toggle-screen").addEventListener("click", () => toggleScreen().then(showLocal, showError));
$("leave").addEventListener("click", () => leave().catch(showError));
window.addEventListener("pagehide", () => room?.disconnect());

// Prefill from the URL; join at once when it names who to be.
$("room").value = params.get("room") || $("room").value;
$("name").value = params.get("name") || params.get("identity") || "";
const flag = (k) => params.get(k) !== "0" && params.get(k) !== "false";
$("use-camera").checked = flag("camera");
$("use-mic").checked = flag("mic");
$("use-simulcast").checked = flag("simulcast");
if (params.get("room") && (params.get("identity") || params.get("token"))) {
  join({
    roomName: params.get("room"),
    identity: params.get("identity") || identityFor(params.get("name") || "guest"),
    name: params.get("name") || params.get("identity") || "",
    token: params.get("token") || undefined,
    camera: flag("camera"),
    mic: flag("mic"),
    simulcast: flag("simulcast"),
  });
}
