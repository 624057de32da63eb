//! The order of the codecs in our answers to publishers.
//!
//! A browser sends with the first codec of the answer's format list, so the
//! answer decides the publisher's codec. str0m lists codecs in its own
//! configured order (VP8 before VP9, H.264 and AV1), which would overrule a
//! publisher that asked for VP9 or AV1 by putting it first in its offer. So
//! each answer m-line is reordered to follow its offer m-line.
//!
//! One exception: a browser sends Opus inside RED only when RED comes
//! before Opus in the answer (libwebrtc takes the RED listed ahead of the
//! send codec), while its offer lists Opus first. So RED is put just before
//! the codec it carries.

/// `answer` with each m-line's payload types in `offer`'s order (RED just
/// before the first codec), text otherwise unchanged. m-lines pair up by
/// position, as RFC 3264 requires; any that cannot be paired are left alone.
pub fn follow_offer(offer: &str, answer: &str) -> String {
    let offer_orders: Vec<Vec<&str>> = offer.lines().filter_map(formats).collect();
    let lines: Vec<&str> = answer.split_inclusive('\n').collect();
    // The RED payload types of each answer m-section, by section.
    let mut reds: Vec<Vec<&str>> = Vec::new();
    for l in &lines {
        if l.starts_with("m=") {
            reds.push(Vec::new());
        } else if let (Some(red), Some((pt, codec))) = (
            reds.last_mut(),
            l.strip_prefix("a=rtpmap:").and_then(|r| r.split_once(' ')),
        ) {
            if codec.to_ascii_lowercase().starts_with("red/") {
                red.push(pt);
            }
        }
    }
    let mut out = String::with_capacity(answer.len());
    let mut section = 0;
    for l in lines {
        let body = l.trim_end_matches(['\r', '\n']);
        match (formats(body), offer_orders.get(section)) {
            (Some(ours), Some(theirs)) => {
                let ordered = reorder(&ours, theirs, &reds[section]);
                let head: Vec<&str> = body.split(' ').take(3).collect();
                out.push_str(&head.join(" "));
                for pt in ordered {
                    out.push(' ');
                    out.push_str(pt);
                }
                out.push_str(&l[body.len()..]);
            }
            _ => out.push_str(l),
        }
        if body.starts_with("m=") {
            section += 1;
        }
    }
    out
}

/// The payload types of an `m=` line, or `None` for any other line.
fn formats(line: &str) -> Option<Vec<&str>> {
    let rest = line.trim_end().strip_prefix("m=")?;
    Some(rest.split(' ').skip(3).filter(|s| !s.is_empty()).collect())
}

fn reorder<'a>(ours: &[&'a str], theirs: &[&str], red: &[&str]) -> Vec<&'a str> {
    let mut out: Vec<&'a str> = theirs
        .iter()
        .filter_map(|t| ours.iter().find(|o| *o == t).copied())
        .collect();
    for o in ours {
        if !out.contains(o) {
            out.push(o);
        }
    }
    if let Some(red_at) = out.iter().position(|p| red.iter().any(|r| r == p)) {
        if red_at > 0 {
            let pt = out.remove(red_at);
            out.insert(0, pt);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        a=rtpmap:63 red/48000/2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 98 99 96 97 45\r\n\
        a=rtpmap:98 VP9/90000\r\n";
    const ANSWER: &str = "v=0\r\n\
        o=- 1 1 IN IP4 0.0.0.0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        a=rtpmap:63 red/48000/2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97 45 98 99\r\n\
        a=rtpmap:96 VP8/90000\r\n";

    #[test]
    fn answer_follows_the_offer_with_red_first() {
        let out = follow_offer(OFFER, ANSWER);
        let m: Vec<&str> = out.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m,
            [
                "m=audio 9 UDP/TLS/RTP/SAVPF 63 111",
                "m=video 9 UDP/TLS/RTP/SAVPF 98 99 96 97 45"
            ]
        );
        // Everything else is untouched, line endings included.
        assert_eq!(out.len(), ANSWER.len());
        assert_eq!(
            out.replace("63 111", "111 63")
                .replace("98 99 96 97 45", "96 97 45 98 99"),
            ANSWER
        );
    }

    #[test]
    fn answer_only_codecs_stay_and_odd_input_is_left_alone() {
        let out = follow_offer("m=video 9 RTP/SAVPF 100\r\n", "m=video 9 RTP/SAVPF 96 100\r\n");
        assert_eq!(out, "m=video 9 RTP/SAVPF 100 96\r\n");
        assert_eq!(follow_offer("", ANSWER), ANSWER, "no offer m-lines: unchanged");
        assert_eq!(follow_offer(OFFER, "garbage"), "garbage");
        assert_eq!(
            follow_offer(OFFER, "m=audio 9"),
            "m=audio 9",
            "an m-line without formats"
        );
    }
}
