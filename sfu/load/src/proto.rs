//! The control channel between the load generator and `sfu-load serve`:
//! one JSON object per line on the child's stdin (requests) and stdout
//! (replies and events). A child process keeps the server's CPU time and RSS
//! apart from the clients' (both read from /proc), which an in-process SFU
//! would not; the channel carries only signalling, never media.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Create {
        room: String,
    },
    Offer {
        participant: u64,
        sdp: String,
    },
    Answer {
        participant: u64,
        sdp: String,
    },
    Subscribe {
        participant: u64,
        publisher: u64,
        mid: String,
    },
    Remove {
        participant: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestLine {
    pub id: u64,
    #[serde(flatten)]
    pub req: Request,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// First line: the media address clients are told.
    Ready {
        media: String,
    },
    /// The result of request `id`: a participant id for `create`, the SDP
    /// answer for `offer`, empty otherwise.
    Reply {
        id: u64,
        ok: Option<String>,
        err: Option<String>,
    },
    TrackPublished {
        publisher: u64,
        mid: String,
        video: bool,
        rids: Vec<String>,
    },
    Offer {
        participant: u64,
        sdp: String,
    },
    Connected {
        participant: u64,
        subscriber: bool,
    },
    Disconnected {
        participant: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let r = RequestLine {
            id: 3,
            req: Request::Subscribe {
                participant: 1,
                publisher: 2,
                mid: "0".into(),
            },
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(!s.contains('\n'));
        assert_eq!(serde_json::from_str::<RequestLine>(&s).unwrap(), r);
        let m = ServerMsg::Offer {
            participant: 9,
            sdp: "v=0\r\no=-\r\n".into(),
        };
        let s = serde_json::to_string(&m).unwrap();
        assert!(!s.contains('\n'), "SDP line breaks are escaped: {s}");
        assert_eq!(serde_json::from_str::<ServerMsg>(&s).unwrap(), m);
    }
}
