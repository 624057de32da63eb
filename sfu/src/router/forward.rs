//! The forwarding loop: one packet received from a publisher fanned out to
//! every down-track of its track. Per packet, so no allocation and no
//! payload copy: each subscriber's str0m stream gets the same `Arc` payload
//! with its own rewritten header.
use std::time::Instant;

use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};

use super::{extend_seq, layer_of, DownState, Router, SfuEvent, TrackId, Write, MAX_QUEUED_PACKETS, RATE_WINDOW};
use crate::codec::dd::DdBytes;
use crate::codec::{self, vp8, vp9, FrameInfo, MAX_TEMPORAL};
use crate::downtrack::{PacketInfo, SourceId};
use crate::keyframe::is_keyframe;
use crate::red::{self, RedOut};
use crate::simulcast::MAX_LAYERS;

impl Router {
    /// Fans one received packet out to the track's down-tracks.
    pub(super) fn forward(&mut self, now: Instant, source: TrackId, rid: Option<Rid>, packet: RtpPacket) {
        let Some(track) = self.tracks.get_mut(&source) else {
            return;
        };
        if !track.started {
            track.started = true;
            self.events.push_back(SfuEvent::TrackMediaStarted { track: source });
        }
        if track.muted {
            return;
        }
        let layer = layer_of(&track.rids, rid);
        let pt_in = packet.header.payload_type;
        let params = match track.params.iter().find(|(p, _)| *p == pt_in) {
            Some((_, params)) => *params,
            None => {
                let Some(pub_peer) = self
                    .participants
                    .get(&source.publisher)
                    .and_then(|p| self.peers.get_mut(p.publisher.0 as usize))
                    .and_then(Option::as_mut)
                else {
                    return;
                };
                let found = pub_peer
                    .peer
                    .guard(|rtc| {
                        rtc.codec_config()
                            .find(|p| p.pt() == pt_in || p.red() == Some(pt_in))
                            .copied()
                    })
                    .flatten();
                let Some(params) = found else { return };
                track.params.push((pt_in, params));
                params
            }
        };
        let is_video = track.kind == MediaKind::Video;
        let is_red = params.red() == Some(pt_in);
        let mut cuts = red::Cuts::new(&packet.payload);
        if let (Some(level), Some(p)) = (
            packet.header.ext_vals.audio_level,
            self.participants.get(&source.publisher),
        ) {
            // RFC 6464 levels are -dBov; str0m hands them over negated.
            let level = level.unsigned_abs().min(127);
            if let Some(det) = self.speakers.get_mut(&p.room) {
                det.on_level(source.publisher.0, level, now);
            }
        }
        let codec = params.spec().codec;
        let vp9 = (is_video && codec == Codec::Vp9)
            .then(|| vp9::parse(&packet.payload).ok())
            .flatten();
        // SVC: spatial layers inside the one stream (no rids), announced by
        // the scalability structure of its keyframes.
        if let (Some(ss), true) = (vp9.and_then(|d| d.ss), track.rids.is_empty()) {
            track.spatial_layers = ss.spatial_layers.min(MAX_LAYERS as u8);
            if let Some(sizes) = ss.sizes {
                for (dim, (w, h)) in track.dims.iter_mut().zip(sizes) {
                    *dim = (u32::from(w), u32::from(h));
                }
            }
        }
        // AV1's dependency descriptor, when the publisher sends it: it
        // places every packet, where the OBU headers only place a frame's
        // first.
        // (Chrome also sends it with VP8 once it is negotiated, and then
        // leaves the temporal layer out of VP8's own descriptor.)
        let dd = (is_video && matches!(codec, Codec::Av1 | Codec::Vp8))
            .then(|| packet.header.ext_vals.user_values.get::<DdBytes>())
            .flatten()
            .and_then(|b| {
                let stream = track.dd.get_mut(layer)?;
                let frame = stream.on_packet(b.bytes());
                let svc_capable = codec == Codec::Av1 && track.rids.is_empty();
                if let (Some(s), true) = (stream.take_new(), svc_capable) {
                    tracing::debug!(track = %source, spatial = s.max_spatial + 1, temporal = s.max_temporal + 1,
                        sizes = ?s.resolutions, "dependency descriptor structure");
                    track.spatial_layers = (s.max_spatial + 1).min(MAX_LAYERS as u8);
                    if let Some(sizes) = s.resolutions {
                        for (dim, (w, h)) in track.dims.iter_mut().zip(sizes) {
                            *dim = (u32::from(w), u32::from(h));
                        }
                    }
                }
                frame
            });
        // The spatial layer of an SVC stream's packet, whether it starts a
        // picture (its base layer frame's first packet) and whether it ends
        // its layer's frame.
        let svc = track.spatial_layers > 1 && track.rids.is_empty();
        let (spatial, picture_start, layer_end) = match (vp9, dd) {
            (Some(d), _) => {
                let sid = d.sid.unwrap_or(0);
                (svc.then_some(sid), d.begin && sid == 0, d.end)
            }
            (None, Some(f)) => (
                svc.then_some(f.spatial),
                f.start_of_frame && f.spatial == 0,
                f.end_of_frame,
            ),
            (None, None) => (None, false, false),
        };
        let spatial = spatial.map(|s| s.min(MAX_LAYERS as u8 - 1));
        // Rates and temporal stats are per spatial layer of an SVC stream.
        let measured = spatial.map_or(layer, usize::from);
        // Layer bitrates over fixed windows of arrival time.
        let window = *track.window_start.get_or_insert(now);
        if now.saturating_duration_since(window) >= RATE_WINDOW {
            let secs = now.saturating_duration_since(window).as_secs_f64();
            for ((bps, last), bytes) in track
                .layer_bps
                .iter_mut()
                .zip(track.last_bps.iter_mut())
                .zip(track.layer_bytes.iter_mut())
            {
                let rate = (*bytes > 0).then(|| (*bytes as f64 * 8.0 / secs) as u64);
                // A window is remembered once the next one also had packets
                // (so the layer flowed through all of it): the window a layer
                // stops in is partial and would understate its cost.
                if rate.is_some() && bps.is_some() {
                    *last = *bps;
                }
                *bps = rate;
                *bytes = 0;
            }
            track.window_start = Some(now);
        }
        track.layer_bytes[measured] += (packet.payload.len() + packet.header.header_len) as u64;

        // VP9's descriptor is already parsed.
        let keyframe = is_video && vp9.map_or_else(|| is_keyframe(codec, &packet.payload), |d| d.keyframe());
        // Parsed once here, not per subscriber.
        let vp8 = (is_video && codec == Codec::Vp8)
            .then(|| vp8::parse(&packet.payload).ok())
            .flatten();
        let frame = if let Some(d) = vp8.as_ref().filter(|d| d.tid.is_some() || dd.is_none()) {
            Some(FrameInfo {
                tid: d.tid,
                sync: d.layer_sync,
                step_up: false,
                frame_start: d.frame_start(),
                keyframe,
            })
        } else if let Some(f) = dd {
            Some(FrameInfo {
                tid: Some(f.temporal.min(MAX_TEMPORAL as u8 - 1)),
                sync: f.switch,
                // As for the OBU headers: browsers' AV1 structures let a
                // receiver add the layer above at any of its frames (VP8's
                // need the switch indication).
                step_up: codec == Codec::Av1 && f.temporal > 0,
                frame_start: f.start_of_frame,
                keyframe,
            })
        } else if is_video && codec == Codec::Av1 {
            track
                .av1
                .get_mut(layer)
                .and_then(|f| f.frame_info(&packet.payload, packet.header.timestamp, keyframe))
        } else if let Some(d) = &vp9 {
            Some(FrameInfo::vp9(d))
        } else if is_video {
            codec::frame_info(codec, &packet.payload).map(|f| FrameInfo { keyframe, ..f })
        } else {
            None
        };
        if is_video {
            let bytes = packet.payload.len() + packet.header.header_len;
            track
                .temporal
                .on_packet(now, measured, &frame.unwrap_or_default(), bytes);
        }
        // str0m's own view of the descriptor, needed to build a patch; only
        // parsed when some subscriber's numbering differs.
        let mut patchable: Option<Option<str0m::rtp::Vp8Descriptor>> = None;
        let h = &packet.header;
        let mut ext = ExtensionValues {
            audio_level: h.ext_vals.audio_level,
            voice_activity: h.ext_vals.voice_activity,
            video_orientation: h.ext_vals.video_orientation,
            video_content_type: h.ext_vals.video_content_type,
            ..Default::default()
        };
        if dd.is_some() && svc {
            if let Some(b) = h.ext_vals.user_values.get_arc::<DdBytes>() {
                ext.user_values.set_arc(b);
            }
        }
        let info = PacketInfo {
            source: SourceId(layer as u8),
            seq: h.sequence_number,
            ts: h.timestamp,
            keyframe,
            droppable: false,
            marker: h.marker,
            arrival: now,
        };
        let mut want_keyframe = None;
        for &(sub, mid) in &track.subscribers {
            let Some(p) = self.participants.get_mut(&sub) else {
                continue;
            };
            let Some(sid) = p.subscriber else { continue };
            let Some(d) = p.downs.get_mut(&mid) else { continue };
            if d.state != DownState::Open || d.paused || d.bw_paused {
                continue;
            }
            // Keyframe-aligned switching: keep the current layer until the
            // target's keyframe arrives, then move for good.
            if rid == d.target && d.current != d.target {
                if is_video && !keyframe {
                    want_keyframe = Some(rid);
                    continue;
                }
                if d.current.is_none() {
                    d.dt.resume();
                }
                d.current = d.target;
                if !self.realloc.contains(&sub) {
                    self.realloc.push(sub);
                }
            } else if rid != d.current {
                continue;
            }
            if d.await_keyframe {
                if !keyframe {
                    want_keyframe = Some(rid);
                    continue;
                }
                d.await_keyframe = false;
                d.dt.resume();
            }
            let mut info = info;
            let mut spatial_drop = false;
            if let Some(layer) = spatial {
                let before = d.spatial.current();
                match d.spatial.accept(layer, picture_start, keyframe, layer_end) {
                    None => spatial_drop = true,
                    Some(ends_picture) => info.marker |= ends_picture,
                }
                if d.spatial.wants_keyframe() {
                    want_keyframe = Some(rid);
                } else if before != d.spatial.current() && !self.realloc.contains(&sub) {
                    // A switch completed: the allocation may probe again.
                    self.realloc.push(sub);
                }
            }
            if let Some(f) = &frame {
                // The temporal filter switches at pictures, not at each of
                // their spatial layer frames.
                let f = FrameInfo {
                    frame_start: f.frame_start && (spatial.is_none() || picture_start),
                    ..*f
                };
                info.droppable = !d.temporal.accept(&f);
            }
            info.droppable |= spatial_drop;
            let Some(rw) = d.dt.forward(&info) else {
                if let (true, Some(v)) = (info.droppable, &vp8) {
                    d.pictures.dropped(v);
                }
                continue;
            };
            let patch = vp8.as_ref().and_then(|v| {
                let r = d.pictures.forward(v, rw.segment_start)?;
                let same = v.picture_id.map(|p| p.value) == Some(r.picture_id) && v.tl0_pic_idx == r.tl0_pic_idx;
                if same {
                    return None;
                }
                let desc = patchable.get_or_insert_with(|| str0m::rtp::Vp8Descriptor::parse(&packet.payload).ok());
                let mut b = desc.as_ref()?.patch().picture_id(r.picture_id);
                if let Some(t) = r.tl0_pic_idx {
                    b = b.tl0_pic_idx(t);
                }
                b.build().ok()
            });
            let out_ext = match d.out_ext {
                None => u64::from(rw.seq),
                Some(last) => extend_seq(last, rw.seq),
            };
            d.out_ext = Some(d.out_ext.map_or(out_ext, |l| l.max(out_ext)));
            let Some(slot) = self.peers.get_mut(sid.0 as usize).and_then(Option::as_mut) else {
                continue;
            };
            let (pt_out, red_out) = match d.pts.iter().find(|(i, _, _)| *i == pt_in) {
                Some(&(_, o, r)) => (o, r),
                None => {
                    let found = slot
                        .peer
                        .guard(|rtc| rtc.codec_config().match_params(params).map(|p| (p.pt(), p.red())))
                        .flatten();
                    let Some((main_pt, red_pt)) = found else { continue };
                    let r = RedOut::choose(is_red, *params.pt(), *main_pt, red_pt.map(|p| *p));
                    let o = match (r, red_pt) {
                        (RedOut::AsIs | RedOut::RenameBlocks { .. }, Some(red_pt)) if is_red => red_pt,
                        _ => main_pt,
                    };
                    d.pts.push((pt_in, o, r));
                    (o, r)
                }
            };
            let Some(payload) = cuts.payload_for(red_out) else {
                continue;
            };
            let wrote = slot.peer.guard(|rtc| {
                let mut api = rtc.direct_api();
                let Some(stream) = api.stream_tx_by_mid(mid, None) else {
                    return Write::NoStream;
                };
                // str0m's send queue has no bound of its own: a subscriber
                // whose queue does not drain (its pacer far below what is
                // forwarded, or a shard that fell behind) loses packets
                // here instead of growing memory.
                if stream
                    .queue_info()
                    .is_some_and(|q| q.packet_count() >= MAX_QUEUED_PACKETS)
                {
                    return Write::QueueFull;
                }
                let mut w = RtpWrite::new(pt_out, out_ext.into(), rw.ts, now, payload)
                    .marker(rw.marker)
                    .ext_vals(ext.clone())
                    .nackable(is_video);
                if let Some(p) = patch {
                    w = w.vp8_patch(p);
                }
                stream.write_rtp(w);
                Write::Written
            });
            if wrote == Some(Write::QueueFull) {
                self.queue_full_drops += 1;
                // The sequence number is spent, so the subscriber sees a
                // loss it cannot repair; video resumes at the next keyframe
                // (the same path as a layer switch) rather than decode
                // garbage until one comes.
                if is_video {
                    d.await_keyframe = true;
                    d.dt.pause();
                }
                continue;
            }
            if wrote == Some(Write::Written) {
                slot.writes = slot.writes.saturating_add(1);
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty.push(sid);
                }
            }
        }
        if let Some(rid) = want_keyframe {
            self.request_keyframe(now, source, rid, KeyframeRequestKind::Pli);
        }
    }
}
