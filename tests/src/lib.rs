//! Shared harness of the end-to-end tests.
//!
//! Every test starts its own relay process (rtc-relay, or coturn's
//! `turnserver` with equivalent settings as a sanity check of the test
//! itself) on a random free port with its own relay port sub-range, waits
//! until it answers a STUN Binding, and kills it on drop. All traffic goes to
//! 127.0.0.1 / ::1 only; the browser test additionally runs inside a network
//! namespace that has nothing but a loopback interface.
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;

pub mod stun_client;

/// Which TURN server a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    RtcRelay,
    Coturn,
}

impl Impl {
    /// The server under test: `E2E_SERVER=coturn` switches to coturn, the
    /// default is rtc-relay.
    pub fn under_test() -> Impl {
        match std::env::var("E2E_SERVER").as_deref() {
            Ok("coturn") => Impl::Coturn,
            _ => Impl::RtcRelay,
        }
    }
}

/// Whether missing tools are failures (`CI=true`) rather than skips.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Checks that `tool` is on PATH. Outside CI a missing tool makes the test
/// return early with a loud message; in CI it is a failure.
#[must_use]
pub fn require_tool(tool: &str) -> bool {
    if which(tool).is_some() {
        return true;
    }
    if in_ci() {
        panic!("required tool `{tool}` is missing (CI=true makes this a failure; tests/run installs it)");
    }
    eprintln!("\n!!!!!!!! SKIPPING: required tool `{tool}` is not installed (run tests/run to install it) !!!!!!!!\n");
    false
}

/// An npm package of tests/browser (installed by `npm ci` there, which
/// tests/run does), or a skip (outside CI) / failure (in CI).
pub fn require_node_module(name: &str) -> bool {
    let dir = workspace_root().join("tests/browser/node_modules").join(name);
    if dir.is_dir() {
        return true;
    }
    let msg = format!(
        "{} is missing: run `npm ci` in tests/browser (tests/run does)",
        dir.display()
    );
    if in_ci() {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!! SKIPPING: {msg} !!!!!!!!\n");
    false
}

/// Chromium, node, ip and playwright-core: what every browser test needs.
pub fn require_chromium_stack() -> bool {
    require_tool("chromium") && require_tool("node") && require_tool("ip") && require_node_module("playwright-core")
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `rtc-relay` debug binary that `tests/run` builds first.
pub fn rtc_relay_bin() -> PathBuf {
    debug_bin("rtc-relay", "relay")
}

/// `target/debug/<name>` (or under `$CARGO_TARGET_DIR`), built by tests/run's
/// `cargo build --workspace --bins` before the tests run; `package` is for
/// the message that says how to build it by hand.
pub fn debug_bin(name: &str, package: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let target = if target.is_relative() {
        workspace_root().join(target)
    } else {
        target
    };
    let bin = target.join("debug").join(name);
    assert!(
        bin.is_file(),
        "{} does not exist: build it first with `cargo build -p {package} --bin {name}` (tests/run does)",
        bin.display()
    );
    bin
}

/// A self-signed certificate for `localhost` and its key, as PEM files in
/// `dir`: `(cert, key)`.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

/// Where server logs and other artifacts of a run go.
pub fn artifacts_dir() -> PathBuf {
    let dir = workspace_root().join("tests").join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Long-term credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    /// TURN REST credentials computed locally (the scheme every client speaks:
    /// username `<expiry>:<user>`, password base64(HMAC-SHA1(secret, username))).
    pub fn rest(secret: &str, user: &str, expiry_unix: u64) -> Credentials {
        let username = format!("{expiry_unix}:{user}");
        let password = relay::turn::auth::rest_password(secret.as_bytes(), &username);
        Credentials { username, password }
    }
}

/// Settings a test wants; both servers get equivalent flags.
#[derive(Clone, Debug)]
pub struct ServerOpts {
    pub realm: String,
    pub secret: Option<String>,
    pub users: Vec<(String, String)>,
    pub nonce_key: Option<String>,
    pub allow_loopback_peers: bool,
    pub user_quota: Option<u32>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Extra flags appended verbatim.
    pub extra_args: Vec<String>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            realm: "rtc.test".into(),
            secret: Some("e2e-secret".into()),
            users: Vec::new(),
            nonce_key: None,
            allow_loopback_peers: true,
            user_quota: None,
            netns: None,
            extra_args: Vec::new(),
        }
    }
}

/// Picks a listen port in 20000..32000 (below Linux's ephemeral range) that
/// is currently free for both UDP and TCP on 127.0.0.1.
pub fn free_port() -> u16 {
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(20000..32000);
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, port));
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("no free port found in 20000..32000");
}

/// A distinct block of 200 relay ports in 40000..60000, so parallel tests
/// never hand out the same relay ports.
fn relay_port_block() -> (u16, u16) {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        rand::rng().random_range(0..100),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let block = NEXT.fetch_add(1, Ordering::SeqCst) % 100;
    let low = 40000 + block as u16 * 200;
    (low, low + 199)
}

/// A running TURN server, killed on drop.
pub struct RunningServer {
    pub imp: Impl,
    pub port: u16,
    pub relay_ports: (u16, u16),
    pub opts: ServerOpts,
    pub log: PathBuf,
    /// rtc-relay's Prometheus listener on 127.0.0.1 (`None` for coturn).
    pub metrics_port: Option<u16>,
    child: Option<Child>,
}

impl RunningServer {
    /// Starts `imp` with `opts` and waits until it answers a STUN Binding.
    pub fn start(imp: Impl, opts: ServerOpts) -> RunningServer {
        if imp == Impl::Coturn && !require_tool("turnserver") {
            panic!("turnserver is missing");
        }
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let relay_ports = relay_port_block();
            let log = artifacts_dir().join(format!(
                "{}-{}-{}.log",
                match imp {
                    Impl::RtcRelay => "rtc-relay",
                    Impl::Coturn => "coturn",
                },
                port,
                rand::rng().random::<u32>()
            ));
            let metrics_port = (imp == Impl::RtcRelay).then(free_port);
            let args = match imp {
                Impl::RtcRelay => {
                    let mut a = rtc_relay_args(&opts, port, relay_ports);
                    a.extend([
                        "--metrics-listen".into(),
                        format!("127.0.0.1:{}", metrics_port.unwrap()),
                    ]);
                    a
                }
                Impl::Coturn => coturn_args(&opts, port, relay_ports, &log),
            };
            let program = match imp {
                Impl::RtcRelay => rtc_relay_bin(),
                Impl::Coturn => which("turnserver").unwrap(),
            };
            let mut cmd = netns_command(opts.netns.as_deref(), &program);
            cmd.args(&args);
            let out = File::create(&log).unwrap();
            cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
            if imp == Impl::RtcRelay {
                cmd.env(
                    "RUST_LOG",
                    std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "debug".into()),
                );
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
            let mut server = RunningServer {
                imp,
                port,
                relay_ports,
                opts: opts.clone(),
                log,
                metrics_port,
                child: Some(child),
            };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(e) => {
                    last_err = format!("{e}\n--- log {} ---\n{}", server.log.display(), server.log_tail(60));
                    eprintln!("server did not come up on port {port}, retrying: {last_err}");
                }
            }
        }
        panic!("{imp:?} did not start: {last_err}");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port)
    }

    /// Bounded wait for a STUN Binding success, checking the process is alive.
    fn wait_ready(&mut self) -> Result<(), String> {
        let port = self.port;
        for _ in 0..100 {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("exited early with {status}"));
            }
            let ok = in_netns(self.opts.netns.as_deref(), move || {
                binding_ok(port, Duration::from_millis(100))
            });
            if ok {
                return Ok(());
            }
        }
        Err("no STUN Binding answer after 100 attempts".into())
    }

    /// Whether the server still answers a STUN Binding (tries a few times).
    pub fn answers_binding(&self) -> bool {
        let port = self.port;
        in_netns(self.opts.netns.as_deref(), move || {
            (0..5).any(|_| binding_ok(port, Duration::from_millis(500)))
        })
    }

    /// rtc-relay's `/metrics` text (empty for coturn or when unreachable).
    pub fn metrics(&self) -> String {
        let Some(port) = self.metrics_port else {
            return String::new();
        };
        in_netns(self.opts.netns.as_deref(), move || {
            let Ok(mut s) = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
                return String::new();
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        })
    }

    /// The non-zero `rtc_relay_drops_total` lines, for failure messages.
    pub fn drops(&self) -> String {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("rtc_relay_drops_total") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .map(|c| c.try_wait().unwrap().is_none())
            .unwrap_or(false)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let drops = if std::thread::panicking() {
            self.drops()
        } else {
            String::new()
        };
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- non-zero drop counters of {:?} ---\n{drops}", self.imp);
            eprintln!(
                "--- last lines of {} ({:?}) ---\n{}",
                self.log.display(),
                self.imp,
                self.log_tail(80)
            );
        }
    }
}

fn rtc_relay_args(o: &ServerOpts, port: u16, relay: (u16, u16)) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--relay-ip".into(),
        "127.0.0.1".into(),
        "--relay-ports".into(),
        format!("{}-{}", relay.0, relay.1),
        "--realm".into(),
        o.realm.clone(),
    ];
    if let Some(s) = &o.secret {
        a.extend(["--auth-secret".into(), s.clone()]);
    }
    for (u, p) in &o.users {
        a.extend(["--user".into(), format!("{u}:{p}")]);
    }
    if let Some(k) = &o.nonce_key {
        a.extend(["--nonce-key".into(), k.clone()]);
    }
    if o.allow_loopback_peers {
        a.push("--allow-loopback-peers".into());
    }
    if let Some(q) = o.user_quota {
        a.extend(["--user-quota".into(), q.to_string()]);
    }
    a.extend(o.extra_args.iter().cloned());
    a
}

fn coturn_args(o: &ServerOpts, port: u16, relay: (u16, u16), log: &Path) -> Vec<String> {
    let mut a: Vec<String> = [
        "-n",
        "--listening-ip",
        "127.0.0.1",
        "--listening-port",
        &port.to_string(),
        "--relay-ip",
        "127.0.0.1",
        "--min-port",
        &relay.0.to_string(),
        "--max-port",
        &relay.1.to_string(),
        "--realm",
        &o.realm,
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--no-multicast-peers",
        "--fingerprint",
        "--log-file",
        "stdout",
        "--simple-log",
        "--pidfile",
        &log.with_extension("pid").to_string_lossy(),
        "--userdb",
        &log.with_extension("sqlite").to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(s) = &o.secret {
        a.extend(["--use-auth-secret".into(), "--static-auth-secret".into(), s.clone()]);
    } else {
        a.push("--lt-cred-mech".into());
    }
    for (u, p) in &o.users {
        a.extend(["--user".into(), format!("{u}:{p}")]);
    }
    if o.allow_loopback_peers {
        a.push("--allow-loopback-peers".into());
    }
    if let Some(q) = o.user_quota {
        a.extend(["--user-quota".into(), q.to_string()]);
    }
    // The same ranges rtc-relay denies by default.
    for range in [
        "0.0.0.0-0.255.255.255",
        "10.0.0.0-10.255.255.255",
        "100.64.0.0-100.127.255.255",
        "169.254.0.0-169.254.255.255",
        "172.16.0.0-172.31.255.255",
        "192.168.0.0-192.168.255.255",
        "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ] {
        a.push(format!("--denied-peer-ip={range}"));
    }
    a.extend(o.extra_args.iter().cloned());
    a
}

/// A command for `program`, wrapped in `ip netns exec NS` when `netns` is set.
pub fn netns_command(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs `f` on a thread that has entered network namespace `netns` (when
/// set), so sockets it opens live there.
pub fn in_netns<T: Send + 'static>(netns: Option<&str>, f: impl FnOnce() -> T + Send + 'static) -> T {
    let Some(ns) = netns else { return f() };
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd only affects this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// A minimal STUN Binding request (hand-built, independent of the codec under test).
pub fn binding_request(tid: [u8; 12]) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    m[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    m[8..20].copy_from_slice(&tid);
    m
}

/// Sends one Binding to 127.0.0.1:`port` and waits up to `timeout` for a success response.
pub fn binding_ok(port: u16, timeout: Duration) -> bool {
    let Ok(sock) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return false;
    };
    sock.set_read_timeout(Some(timeout)).unwrap();
    let tid: [u8; 12] = rand::rng().random();
    if sock
        .send_to(&binding_request(tid), (Ipv4Addr::LOCALHOST, port))
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 1500];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        if n >= 20 && buf[0..2] == [0x01, 0x01] && buf[8..20] == tid {
            return true;
        }
    }
    false
}

/// A UDP echo peer: coturn's `turnutils_peer` on 127.0.0.1, killed on drop.
pub struct EchoPeer {
    pub port: u16,
    child: Child,
}

impl EchoPeer {
    pub fn start() -> EchoPeer {
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new("turnutils_peer")
                .args(["-L", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start turnutils_peer");
            let mut peer = EchoPeer { port, child };
            let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            for _ in 0..50 {
                if peer.child.try_wait().unwrap().is_some() {
                    break;
                }
                sock.send_to(b"ping", (Ipv4Addr::LOCALHOST, port)).unwrap();
                let mut buf = [0u8; 64];
                if let Ok((4, _)) = sock.recv_from(&mut buf) {
                    return peer;
                }
            }
        }
        panic!("turnutils_peer did not come up");
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion with a hard time limit, capturing its output.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let dir = artifacts_dir();
    let tag: u64 = rand::rng().random();
    let out_path = dir.join(format!("cmd-{tag}.out"));
    let err_path = dir.join(format!("cmd-{tag}.err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if waited >= limit {
            let _ = child.kill();
            let s = child.wait().unwrap();
            eprintln!("command {cmd:?} killed after {limit:?}");
            break s;
        }
        std::thread::sleep(step);
        waited += step;
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    File::open(&out_path).unwrap().read_to_end(&mut stdout).unwrap();
    File::open(&err_path).unwrap().read_to_end(&mut stderr).unwrap();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    Output { status, stdout, stderr }
}

/// `rtc-relay credentials ...` output.
#[derive(Clone, Debug)]
pub struct RestCredentials {
    pub username: String,
    pub credential: String,
    pub ttl: u64,
    pub urls: Vec<String>,
    pub json: serde_json::Value,
}

/// Runs `rtc-relay credentials --secret S --user U --ttl T [--url URL ...]`.
pub fn rtc_relay_credentials(secret: &str, user: &str, ttl: u64, urls: &[String]) -> RestCredentials {
    let mut cmd = Command::new(rtc_relay_bin());
    cmd.args([
        "credentials",
        "--secret",
        secret,
        "--user",
        user,
        "--ttl",
        &ttl.to_string(),
    ]);
    for u in urls {
        cmd.args(["--url", u]);
    }
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "rtc-relay credentials failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "credentials output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    RestCredentials {
        username: json["username"].as_str().expect("username").to_string(),
        credential: json["credential"].as_str().expect("credential").to_string(),
        ttl: json["ttl"].as_u64().expect("ttl"),
        urls: json["urls"]
            .as_array()
            .expect("urls")
            .iter()
            .map(|u| u.as_str().unwrap().to_string())
            .collect(),
        json,
    }
}

/// A network namespace with only an up loopback interface, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn create() -> NetNs {
        let name = format!("rtc-e2e-{:08x}", rand::rng().random::<u32>());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip");
        assert!(st.success(), "ip netns add {name} failed (needs root and iproute2)");
        let ns = NetNs { name };
        let st = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(st.success(), "ip -n {} link set lo up failed", ns.name);
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Kill anything still running inside before removing it.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2) of a process inside our own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Writes `s` to a file in the artifacts directory and returns its path.
pub fn write_artifact(name: &str, s: &str) -> PathBuf {
    let p = artifacts_dir().join(name);
    File::create(&p).unwrap().write_all(s.as_bytes()).unwrap();
    p
}
