// Type declarations of the rtc-server browser SDK (/sdk/rtc.js).
//
//   import { Room } from "http://127.0.0.1:8080/sdk/rtc.js";
//   const room = await Room.connect("http://127.0.0.1:8080", token, { autoSubscribe: true });
//
// Field shapes follow the server's JSON (snake_case) where they are the
// server's records (permissions, layers); the SDK's own API is camelCase.

export declare const PROTOCOL_VERSION: 1;
/** The server refuses larger signalling messages. */
export declare const MAX_MESSAGE_BYTES: number;

/** Server error codes (PROTOCOL.md), REST refusal codes, and the SDK's own. */
export type RtcErrorCode =
  | "malformed_message" | "message_too_large" | "unsupported_frame" | "rate_limited"
  | "not_joined" | "already_joined" | "join_timeout" | "permission_denied"
  | "track_not_found" | "participant_not_found" | "room_not_found" | "room_full"
  | "conflict" | "invalid_argument" | "resume_failed" | "session_ended"
  | "media_unavailable" | "media_error" | "unavailable"
  // refusals of the WebSocket upgrade (HTTP 401/403/409/429)
  | "unauthorized"
  // the SDK's own
  | "connection_failed" | "timeout" | "disconnected" | "invalid_state"
  | (string & {});

/** An error carrying the server's code and message. */
export declare class RtcError extends Error {
  constructor(code: RtcErrorCode, message: string, extra?: { status?: number; cause?: unknown });
  readonly name: "RtcError";
  readonly code: RtcErrorCode;
  /** HTTP status when the WebSocket upgrade itself was refused. */
  readonly status?: number;
  static fromMessage(msg: { code: string; message: string }): RtcError;
}

export declare class EventEmitter<Events extends Record<string, (...args: any[]) => void> = Record<string, (...args: any[]) => void>> {
  on<E extends keyof Events & string>(event: E, listener: Events[E]): this;
  off<E extends keyof Events & string>(event: E, listener: Events[E]): this;
  once<E extends keyof Events & string>(event: E, listener: Events[E]): this;
  emit<E extends keyof Events & string>(event: E, ...args: Parameters<Events[E]>): boolean;
  listenerCount(event: keyof Events & string): number;
}

export type TrackKind = "audio" | "video";
export type TrackSource = "camera" | "microphone" | "screen_share" | "screen_share_audio" | "unknown";
/** Simulcast layer by rid: quarter, half, full resolution. */
export type Layer = "q" | "h" | "f";
export type Quality = "low" | "medium" | "high";
export type ConnectionQuality = "excellent" | "good" | "poor" | "lost" | "unknown";
export type ParticipantState = "joined" | "active" | "disconnected";
export type RoomState = "disconnected" | "connecting" | "connected" | "reconnecting";

export interface VideoLayer {
  quality: Quality;
  width: number;
  height: number;
  bitrate?: number;
}

export interface Permissions {
  can_publish: boolean;
  can_subscribe: boolean;
  can_publish_data: boolean;
  can_publish_sources: TrackSource[];
  hidden: boolean;
}

export declare class TrackPublication extends EventEmitter {
  readonly sid: string;
  readonly trackSid: string;
  readonly name: string;
  readonly kind: TrackKind;
  readonly source: TrackSource;
  readonly muted: boolean;
  /** Simulcast layers announced by the publisher (empty: a single stream). */
  readonly layers: VideoLayer[];
  /** The publisher's MediaStreamTrack id (SDP msid). */
  readonly cid: string;
  /** The media; null until subscribed (remote) . */
  readonly track: MediaStreamTrack | null;
  readonly participant: Participant;
  /** Plays the track in `element`, or in a new `<video>`/`<audio>`. */
  attach<T extends HTMLMediaElement = HTMLMediaElement>(element?: T): T;
}

export declare class LocalTrackPublication extends TrackPublication {
  readonly track: MediaStreamTrack;
  readonly transceiver: RTCRtpTransceiver;
  readonly sender: RTCRtpSender | null;
  readonly simulcast: boolean;
  readonly participant: LocalParticipant;
  /**
   * Dynacast: the layers the server last said some subscriber receives
   * (`layers_wanted`), lowest first; the SDK keeps only these encodings
   * active (`[]`: none, nobody watches). null until the server said so.
   */
  readonly layersWanted: Quality[] | null;
  /** Disables the track and announces `track_muted`. */
  mute(): Promise<void>;
  unmute(): Promise<void>;
}

export interface TrackSettings {
  paused: boolean;
  quality?: Quality;
  max_width: number;
  max_height: number;
  max_fps: number;
}

export declare class RemoteTrackPublication extends TrackPublication {
  readonly participant: RemoteParticipant;
  /** The server confirmed the subscription. */
  readonly subscribed: boolean;
  /** Subscribed and the media has arrived on the subscriber connection. */
  readonly isSubscribed: boolean;
  readonly transceiver: RTCRtpTransceiver | null;
  readonly receiver: RTCRtpReceiver | null;
  /** What is asked of the server for this track (sent whole with every change). */
  readonly settings: Readonly<TrackSettings>;
  readonly preferredLayer: Layer | null;
  readonly enabled: boolean;
  /** Subscribes or unsubscribes (rooms joined with `autoSubscribe: false`). */
  setSubscribed(subscribed: boolean): Promise<void>;
  /** Prefers a simulcast layer (on a VP9 SVC track, the spatial layer: q lowest, f highest); null or "auto" lets the server choose. */
  setPreferredLayer(layer: Layer | Quality | "auto" | null): void;
  /** The displayed size: the server forwards no larger layer than needed (0 = no limit). */
  setVideoSize(width: number, height: number): void;
  /** The highest frame rate wanted (0 = no limit): temporal layers above it are not forwarded (VP8, VP9). */
  setMaxFrameRate(fps: number): void;
  /** false pauses forwarding; the subscription stays. */
  setEnabled(enabled: boolean): void;
}

export declare class Participant extends EventEmitter {
  readonly sid: string;
  readonly identity: string;
  readonly name: string;
  readonly metadata: string;
  readonly state: ParticipantState;
  readonly joinedAt: number;
  readonly permissions: Permissions;
  /** Track sid -> publication. */
  readonly tracks: Map<string, TrackPublication>;
  readonly trackPublications: Map<string, TrackPublication>;
  /** 0..1, from the server's active speaker detection. */
  readonly audioLevel: number;
  readonly isSpeaking: boolean;
  readonly connectionQuality: ConnectionQuality;
  readonly room: Room;
  getTrackBySource(source: TrackSource): TrackPublication | undefined;
}

export declare class RemoteParticipant extends Participant {
  readonly tracks: Map<string, RemoteTrackPublication>;
  readonly trackPublications: Map<string, RemoteTrackPublication>;
  getTrackBySource(source: TrackSource): RemoteTrackPublication | undefined;
}

export interface PublishOptions {
  /** Video only; default true for every source but screen_share. */
  simulcast?: boolean;
  /** Default: microphone for audio, camera for video. */
  source?: TrackSource;
  name?: string;
  /** Video only: the codec to prefer (the others stay as fallbacks). Default: the browser's choice. */
  videoCodec?: "vp8" | "vp9" | "h264" | "av1";
  /**
   * Video only: the encoder's scalability mode for each encoding, e.g. "L1T3" (temporal layers), or with
   * `{simulcast: false, videoCodec: "vp9"}` "L3T3_KEY" (three spatial layers in one stream, which the SFU
   * selects per subscriber). Default: the browser's choice.
   */
  scalabilityMode?: string;
  /** Audio only: Opus discontinuous transmission (few packets in silence). Default true. */
  dtx?: boolean;
}

export declare class LocalParticipant extends Participant {
  readonly tracks: Map<string, LocalTrackPublication>;
  readonly trackPublications: Map<string, LocalTrackPublication>;
  getTrackBySource(source: TrackSource): LocalTrackPublication | undefined;
  /** Announces the track (`publish`) and renegotiates the publisher connection. Rejects with RtcError. */
  publishTrack(track: MediaStreamTrack, options?: PublishOptions): Promise<LocalTrackPublication>;
  unpublishTrack(track: MediaStreamTrack | LocalTrackPublication | string, options?: { stop?: boolean }): Promise<LocalTrackPublication>;
}

export interface DataOptions {
  /** Accepted for API compatibility; data always travels reliably (over the signalling WebSocket). */
  reliable?: boolean;
  /** Empty or absent: everyone else in the room. */
  destinationIdentities?: string[];
  topic?: string;
}

export interface DataInfo {
  topic: string;
  /** The sender's identity (also for senders not in `participants`). */
  identity: string;
  /** The protocol's `payload` string as received. */
  payload: string;
}

export interface TrackStats {
  trackSid: string;
  participantIdentity: string | undefined;
  direction: "inbound" | "outbound";
  kind: TrackKind;
  /** Bits per second since the previous getStats(). */
  bitrate: number;
  packetsLost: number;
  /** 0..1 since the previous getStats() (outbound: the receiver's reported fraction). */
  packetLoss: number;
  jitter: number | null;
  /** Round-trip time in seconds. */
  rtt: number | null;
  width: number | null;
  height: number | null;
  fps: number | null;
  /** Received video: the simulcast layer the resolution corresponds to; sent video: the largest active. */
  layer: Layer | null;
  /** Outbound simulcast: one entry per rid, smallest first. */
  layers?: Array<{ rid: string | null; width: number | null; height: number | null; fps: number | null; bitrate: number; active: boolean; qualityLimitationReason?: string }>;
}

export interface TransportStats {
  /** Selected candidate pair's current round-trip time, seconds. */
  rtt: number | null;
  bytesSent: number;
  bytesReceived: number;
  sendBitrate: number;
  receiveBitrate: number;
  report: RTCStatsReport | null;
}

export interface RoomStats {
  timestamp: number;
  publisher: TransportStats;
  subscriber: TransportStats;
  /** By track sid: own published tracks (outbound) and subscribed remote tracks (inbound). */
  tracks: Record<string, TrackStats>;
}

export interface RoomEvents {
  participantJoined: (participant: RemoteParticipant) => void;
  participantLeft: (participant: RemoteParticipant) => void;
  participantUpdated: (participant: Participant) => void;
  trackPublished: (publication: RemoteTrackPublication, participant: RemoteParticipant) => void;
  trackUnpublished: (publication: RemoteTrackPublication, participant: RemoteParticipant) => void;
  localTrackPublished: (publication: LocalTrackPublication, participant: LocalParticipant) => void;
  localTrackUnpublished: (publication: LocalTrackPublication, participant: LocalParticipant) => void;
  trackSubscribed: (track: MediaStreamTrack, publication: RemoteTrackPublication, participant: RemoteParticipant) => void;
  trackUnsubscribed: (track: MediaStreamTrack, publication: RemoteTrackPublication, participant: RemoteParticipant) => void;
  trackMuted: (publication: TrackPublication, participant: Participant, muted: boolean) => void;
  /** Loudest first; empty = silence. */
  activeSpeakersChanged: (speakers: Participant[]) => void;
  connectionQualityChanged: (quality: ConnectionQuality, participant: Participant) => void;
  permissionsChanged: (permissions: Permissions, participant: LocalParticipant) => void;
  /**
   * Dynacast: the server named the layers of one of our tracks that some
   * subscriber receives (lowest first; `[]` = nobody). The SDK has already
   * started stopping the others (`encodings[i].active` on the sender); this
   * reports changes, e.g. to show that nobody watches.
   */
  layersWanted: (publication: LocalTrackPublication, qualities: Quality[]) => void;
  /** The server's downlink bandwidth estimate for our subscriber connection (bit/s), at most every 250 ms. */
  bandwidthEstimate: (bitrate: number) => void;
  dataReceived: (payload: Uint8Array, participant: RemoteParticipant | undefined, info: DataInfo) => void;
  /** The signalling connection dropped or ICE failed; the SDK is restoring the session. */
  reconnecting: (reason: string) => void;
  reconnected: () => void;
  /** For good: `client_left`, a server `leave` reason (`removed`, `room_deleted`, `duplicate_identity`, ...), `token_rejected` or `reconnect_failed`. */
  disconnected: (reason: string, error?: RtcError) => void;
  /** A server error not tied to a pending call (e.g. a refused `data`). */
  error: (error: RtcError) => void;
}

export declare const RoomEvent: {
  readonly ParticipantJoined: "participantJoined";
  readonly ParticipantLeft: "participantLeft";
  readonly ParticipantUpdated: "participantUpdated";
  readonly TrackPublished: "trackPublished";
  readonly TrackUnpublished: "trackUnpublished";
  readonly LocalTrackPublished: "localTrackPublished";
  readonly LocalTrackUnpublished: "localTrackUnpublished";
  readonly TrackSubscribed: "trackSubscribed";
  readonly TrackUnsubscribed: "trackUnsubscribed";
  readonly TrackMuted: "trackMuted";
  readonly ActiveSpeakersChanged: "activeSpeakersChanged";
  readonly ConnectionQualityChanged: "connectionQualityChanged";
  readonly PermissionsChanged: "permissionsChanged";
  readonly LayersWanted: "layersWanted";
  readonly BandwidthEstimate: "bandwidthEstimate";
  readonly DataReceived: "dataReceived";
  readonly Reconnecting: "reconnecting";
  readonly Reconnected: "reconnected";
  readonly Disconnected: "disconnected";
  readonly Error: "error";
};

export interface ConnectOptions {
  /** Subscribe to every track, now and later (default true). */
  autoSubscribe?: boolean;
}

export declare class Room extends EventEmitter<RoomEvents> {
  /** Connects and joins; rejects with an RtcError (e.g. code `unauthorized` with the server's message). */
  static connect(url: string, token: string, options?: ConnectOptions): Promise<Room>;
  constructor(options?: ConnectOptions);
  /** For listeners that must see everything: `new Room(); room.on(...); await room.connect(url, token)`. */
  connect(url: string, token: string): Promise<this>;
  readonly state: RoomState;
  readonly name: string;
  readonly sid: string;
  readonly metadata: string;
  readonly localParticipant: LocalParticipant;
  /** Remote participants by identity. */
  readonly participants: Map<string, RemoteParticipant>;
  readonly activeSpeakers: Participant[];
  /** The server's last `bandwidth_estimate` (bit/s); null until one arrived. */
  readonly bandwidthEstimate: number | null;
  getParticipantBySid(sid: string): Participant | undefined;
  /** Sends bytes (or a string as UTF-8) to the others, base64 in the protocol's `payload`. */
  sendData(payload: Uint8Array | ArrayBuffer | ArrayBufferView | string, options?: DataOptions): Promise<void>;
  getStats(): Promise<RoomStats>;
  disconnect(): Promise<void>;
}

// Pure helpers (exported for tests and advanced use).
export declare function buildMessage(type: string, fields?: Record<string, unknown>, id?: number): Record<string, unknown> & { v: 1; type: string };
export declare function parseMessage(text: string): Record<string, any> & { v: 1; type: string };
export declare function signalUrl(url: string | undefined, token: string, base?: string): string;
export declare function httpUrlOf(wsUrl: string): string;
export declare function ridToQuality(rid: Layer | Quality): Quality;
export declare function qualityToRid(quality: Quality | Layer): Layer;
export declare const SIMULCAST_ENCODINGS: ReadonlyArray<Readonly<RTCRtpEncodingParameters & { rid: Layer }>>;
export declare function simulcastEncodings(): Array<RTCRtpEncodingParameters & { rid: Layer }>;
/** Dynacast: copies of `encodings` with each `q`/`h`/`f` encoding active exactly when its layer is in `qualities`; others unchanged. */
export declare function encodingsForLayers(
  encodings: RTCRtpEncodingParameters[],
  qualities: Array<Quality | Layer>,
): { encodings: RTCRtpEncodingParameters[]; changed: boolean };
export declare function withOpusDtx(sdp: string, mids: Set<string>): string;
export declare function videoCodecPreferences(name: string, codecs?: RTCRtpCodec[]): RTCRtpCodec[];
export declare function layersFor(width: number, height: number, simulcast?: boolean): VideoLayer[];
export declare function layerForResolution(layers: VideoLayer[], width: number, height: number): Layer | null;
export interface SdpMedia { mid: string | null; kind: string; port: number; streamId: string | null; trackId: string | null }
export declare function parseSdpMedia(sdp: string): SdpMedia[];
export interface TrackRef { sid: string; kind: string; participantSid: string; cid?: string }
export declare function matchSubscriptions(
  lines: Array<Pick<SdpMedia, "kind" | "streamId" | "trackId"> & { mid: string }>,
  waiting: TrackRef[],
  known: Map<string, TrackRef>,
  streamOwners: Map<string, string>,
): Array<[mid: string, trackSid: string]>;
export declare function bytesToBase64(bytes: Uint8Array): string;
export declare function base64ToBytes(text: string): Uint8Array | null;
export declare function ratePerSecond(prev: { value: number; timestamp: number } | undefined, cur: { value: number; timestamp: number }): number;
export declare function lossFraction(prev: { packetsLost: number; packetsReceived: number } | undefined, cur: { packetsLost: number; packetsReceived: number }): number;
export declare function defaultSource(kind: TrackKind): TrackSource;
