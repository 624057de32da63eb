//! The load generator's side of the control channel: starts the server
//! process (`<bin> serve ...`), sends requests, waits for replies, and
//! queues the events that arrive meanwhile.
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::proto::{Request, RequestLine, ServerMsg};
use crate::LoadError;

/// How long any one request may take before the run is abandoned.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A published track as the load generator knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackRef {
    pub publisher: u64,
    pub mid: String,
    pub video: bool,
    pub rids: Vec<String>,
}

pub struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Result<ServerMsg, String>>,
    events: VecDeque<ServerMsg>,
    next_id: u64,
    pub pid: u32,
    pub media: SocketAddr,
    /// Lines from the server that did not parse.
    pub malformed: u64,
}

impl Server {
    /// Starts `bin serve <args>` and waits for its `ready` line.
    pub fn spawn(bin: &Path, args: &[String]) -> Result<Server, LoadError> {
        let mut child = Command::new(bin)
            .arg("serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| LoadError::Protocol("no stdout".into()))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("control-rx".into()).spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let msg = serde_json::from_str::<ServerMsg>(&line).map_err(|_| line);
                if tx.send(msg).is_err() {
                    break;
                }
            }
        })?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let mut s = Server {
            child,
            stdin,
            rx,
            events: VecDeque::new(),
            next_id: 1,
            pid,
            media: SocketAddr::from(([127, 0, 0, 1], 0)),
            malformed: 0,
        };
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            match s.recv_until(deadline)? {
                ServerMsg::Ready { media } => {
                    s.media = media
                        .parse()
                        .map_err(|_| LoadError::Protocol(format!("bad media address {media}")))?;
                    return Ok(s);
                }
                other => s.events.push_back(other),
            }
        }
    }

    fn recv_until(&mut self, deadline: Instant) -> Result<ServerMsg, LoadError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Ok(m)) => return Ok(m),
                Ok(Err(_)) => self.malformed += 1,
                Err(RecvTimeoutError::Timeout) => return Err(LoadError::Timeout("server reply".into())),
                Err(RecvTimeoutError::Disconnected) => return Err(LoadError::Server("server exited".into())),
            }
        }
    }

    fn call(&mut self, req: Request) -> Result<String, LoadError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = serde_json::to_string(&RequestLine { id, req }).map_err(|e| LoadError::Protocol(e.to_string()))?;
        let stdin = self.stdin.as_mut().ok_or_else(|| LoadError::Server("closed".into()))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            match self.recv_until(deadline)? {
                ServerMsg::Reply { id: r, ok, err } if r == id => {
                    return match (ok, err) {
                        (Some(v), _) => Ok(v),
                        (None, e) => Err(LoadError::Server(e.unwrap_or_default())),
                    };
                }
                ServerMsg::Reply { err: Some(e), .. } => return Err(LoadError::Server(e)),
                other => self.events.push_back(other),
            }
        }
    }

    pub fn create(&mut self, room: &str) -> Result<u64, LoadError> {
        let v = self.call(Request::Create { room: room.into() })?;
        v.parse()
            .map_err(|_| LoadError::Protocol(format!("bad participant id {v}")))
    }

    pub fn offer(&mut self, participant: u64, sdp: String) -> Result<String, LoadError> {
        self.call(Request::Offer { participant, sdp })
    }

    pub fn answer(&mut self, participant: u64, sdp: String) -> Result<(), LoadError> {
        self.call(Request::Answer { participant, sdp }).map(drop)
    }

    pub fn subscribe(&mut self, participant: u64, track: &TrackRef) -> Result<(), LoadError> {
        self.call(Request::Subscribe {
            participant,
            publisher: track.publisher,
            mid: track.mid.clone(),
        })
        .map(drop)
    }

    pub fn remove(&mut self, participant: u64) -> Result<(), LoadError> {
        self.call(Request::Remove { participant }).map(drop)
    }

    /// The next event, without waiting.
    pub fn poll_event(&mut self) -> Option<ServerMsg> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        loop {
            match self.rx.try_recv() {
                Ok(Ok(m)) => return Some(m),
                Ok(Err(_)) => self.malformed += 1,
                Err(_) => return None,
            }
        }
    }

    /// (VmRSS, VmHWM) of the server in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        crate::stats::proc_rss_kib(self.pid).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing stdin is the server's signal to shut down; kill it only if
        // it does not within a few seconds.
        drop(self.stdin.take());
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
