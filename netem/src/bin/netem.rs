//! `netem`: the impairment rig from the command line.
//!
//! - `netem up --clients N [--profile NAME]`: server + N client namespaces,
//!   router in the foreground until Ctrl-C, then teardown and counters.
//! - `netem run SCENARIO.toml [--out DIR]`: topology and links from the
//!   file, each node's `command` run inside its namespace, stopped after
//!   `duration_s`; writes `timeline.json` (every 250 ms), `timeline.svg`
//!   and `summary.md` (the `[[expect]]` table) and fails if one fails.
//! - `netem down [--all]`: remove namespaces left by runs that were killed.
//! - `netem profiles`: the named profiles and their parameters.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand};
use netem::profile;
use netem::report::timeline::{Recorder, Timeline, INTERVAL};
use netem::report::{browser, expect, plot};
use netem::router::{LinkConfig, Report, Router};
use netem::scenario::Scenario;
use netem::spec::{build_link, LinkSpec};
use netem::topology::{self, signals, Topology};

#[derive(Parser)]
#[command(
    name = "netem",
    about = "Network impairment rig: namespaces joined by a user-space impairment router"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a server and N client namespaces and forward until Ctrl-C.
    Up {
        #[arg(long, default_value_t = 2)]
        clients: usize,
        /// Profile applied to every client's link (see `netem profiles`).
        #[arg(long)]
        profile: Option<String>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run a scenario file; writes timeline.json, timeline.svg and
    /// summary.md, and fails if an expectation fails.
    Run {
        scenario: String,
        /// Output directory (default: netem-out/<scenario-name>-<unix time>/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The scenario's short version: its times scaled by `short_scale`.
        #[arg(long)]
        short: bool,
    },
    /// Remove leftover rig namespaces of runs that are no longer alive.
    Down {
        /// Also remove namespaces of runs still alive.
        #[arg(long)]
        all: bool,
    },
    /// List the named link profiles.
    Profiles,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Up { clients, profile, seed } => up(clients, profile.as_deref(), seed),
        Cmd::Run { scenario, out, short } => run(&scenario, out, short),
        Cmd::Down { all } => down(all),
        Cmd::Profiles => {
            profiles();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netem: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyError = Box<dyn std::error::Error>;

fn up(clients: usize, profile_name: Option<&str>, seed: u64) -> Result<(), AnyError> {
    topology::preflight()?;
    let client_link = match profile_name {
        None => LinkConfig::default(),
        Some(name) => {
            let p = profile::named(name).ok_or_else(|| format!("unknown profile {name:?} (see `netem profiles`)"))?;
            let (up, up_schedule) = build_link(&p.up, &[])?;
            let (down, down_schedule) = build_link(&p.down, &[])?;
            LinkConfig {
                up,
                up_schedule,
                down,
                down_schedule,
            }
        }
    };
    let names: Vec<String> = std::iter::once("server".to_string())
        .chain((1..=clients).map(|i| format!("c{i}")))
        .collect();
    let stop = signals::install();
    let (topo, tuns) = Topology::build(&names)?;
    let configs = (0..names.len())
        .map(|i| {
            if i == 0 {
                LinkConfig::default()
            } else {
                client_link.clone()
            }
        })
        .collect();
    let mut router = Router::new(&topo, tuns, configs, seed)?;
    println!("{:<8} {:<40} address", "node", "namespace");
    for n in topo.nodes() {
        println!("{:<8} {:<40} {}", n.name, n.netns, n.addr);
    }
    if let Some(c1) = topo.nodes().get(1) {
        println!("\ntry: ip netns exec {} ping {}", c1.netns, topo.nodes()[0].addr);
    }
    println!("forwarding; Ctrl-C to stop and tear down");
    router.run(stop)?;
    print_report(&router.report());
    Ok(())
}

/// `netem-out/<scenario name as a slug>-<unix time>`.
fn default_out_dir(name: &str) -> PathBuf {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from("netem-out").join(format!("{}-{unix}", if slug.is_empty() { "scenario" } else { slug }))
}

/// Where the scenario commands find the browser client and the workspace
/// (`$NETEM_BROWSER_CLIENT`, `$NETEM_WORKSPACE`), unless already set.
fn source_paths() -> (PathBuf, PathBuf) {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let client =
        std::env::var_os("NETEM_BROWSER_CLIENT").map_or_else(|| crate_dir.join("clients/browser.mjs"), PathBuf::from);
    let workspace = std::env::var_os("NETEM_WORKSPACE").map_or_else(
        || crate_dir.parent().map_or(crate_dir.clone(), Path::to_path_buf),
        PathBuf::from,
    );
    (client, workspace)
}

fn run(path: &str, out: Option<PathBuf>, short: bool) -> Result<(), AnyError> {
    topology::preflight()?;
    let scenario = Scenario::load(path)?;
    let scenario = if short { scenario.short()? } else { scenario };
    let configs = scenario.link_configs()?;
    let file_stem = Path::new(path)
        .file_stem()
        .map_or_else(|| path.to_string(), |s| s.to_string_lossy().into_owned());
    let timeline = Timeline::for_scenario(&scenario, &file_stem);
    let out = out.unwrap_or_else(|| default_out_dir(&timeline.scenario));
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let out = std::fs::canonicalize(&out)?;
    let (browser_client, workspace) = source_paths();
    // Browser samples of an earlier run into the same directory must not
    // be merged into this one.
    for n in scenario.nodes() {
        let _ = std::fs::remove_file(out.join(format!("browser-{}.jsonl", n.name)));
    }
    let nodes = scenario.nodes();
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let stop = signals::install();
    let (topo, tuns) = Topology::build(&names)?;
    let mut router = Router::new(&topo, tuns, configs, scenario.seed)?;
    // Schedules count from the router's creation: t = 0 of the timeline.
    let t0 = Instant::now();
    let t0_unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut recorder = Recorder::new(timeline, t0);
    recorder.record(&router.report());
    let router_stop = AtomicBool::new(false);
    let server_addr = topo.nodes()[0].addr;

    let report = std::thread::scope(|s| -> Result<Report, AnyError> {
        let forwarding = s.spawn(|| {
            let r = router.run_with(&router_stop, INTERVAL, |r| recorder.record(&r.report()));
            let report = router.report();
            recorder.record(&report);
            (r, report)
        });
        let mut children: Vec<(String, Child)> = Vec::new();
        let mut spawn_error = None;
        for (spec, node) in nodes.iter().zip(topo.nodes()) {
            let Some(cmd) = &spec.command else { continue };
            // `ip netns exec` runs the command in the node's namespace; its
            // own process group lets us stop everything it starts.
            let child = Command::new("ip")
                .args(["netns", "exec", &node.netns, "sh", "-c", cmd])
                .env("NETEM_NODE", &node.name)
                .env("NETEM_ADDR", node.addr.to_string())
                .env("NETEM_SERVER_ADDR", server_addr.to_string())
                .env("NETEM_PUBLISH", spec.publish.join(","))
                .env("NETEM_SUBSCRIBE", spec.subscribe.join(","))
                .env("NETEM_OUT", &out)
                .env("NETEM_T0_MS", t0_unix_ms.to_string())
                .env("NETEM_BROWSER_CLIENT", &browser_client)
                .env("NETEM_WORKSPACE", &workspace)
                .process_group(0)
                .spawn();
            match child {
                Ok(c) => children.push((node.name.clone(), c)),
                Err(e) => {
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        let started = Instant::now();
        let clients_with_commands = nodes[1..].iter().filter(|n| n.command.is_some()).count();
        println!(
            "running {:?} for {} s",
            scenario.name.as_deref().unwrap_or(path),
            scenario.duration_s
        );
        while spawn_error.is_none() && !stop.load(Ordering::Relaxed) && started.elapsed() < scenario.duration() {
            // Done early when every client command has exited.
            let mut exited = 0;
            for (name, child) in children.iter_mut() {
                if name != "server" && matches!(child.try_wait(), Ok(Some(_))) {
                    exited += 1;
                }
            }
            if clients_with_commands > 0 && exited == clients_with_commands {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Clients first: a server stopping under them shows up as errors.
        for (name, child) in children.iter_mut().rev() {
            stop_child(name, child);
        }
        router_stop.store(true, Ordering::SeqCst);
        let (result, report) = forwarding.join().map_err(|_| "router thread panicked")?;
        result?;
        if let Some(e) = spawn_error {
            return Err(format!("starting a node command: {e}").into());
        }
        Ok(report)
    })?;
    print_report(&report);

    let mut timeline = recorder.finish();
    for (node, lines, bad) in browser::merge_dir(&mut timeline, &out) {
        println!(
            "{node}: {lines} browser samples{}",
            if bad > 0 {
                format!(" ({bad} malformed lines)")
            } else {
                String::new()
            }
        );
    }
    let write = |name: &str, text: &str| -> Result<(), AnyError> {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()).into())
    };
    write("timeline.json", &(timeline.to_json() + "\n"))?;
    write("timeline.svg", &plot::svg(&timeline))?;
    let checks = expect::evaluate(&scenario.expect, &timeline);
    let summary = expect::summary_markdown(&timeline.scenario, &checks);
    write("summary.md", &summary)?;
    println!("\n{summary}");
    println!(
        "wrote {0}/timeline.json, {0}/timeline.svg, {0}/summary.md",
        out.display()
    );
    let failed = checks.iter().filter(|c| c.outcome == expect::Outcome::Failed).count();
    if failed > 0 {
        return Err(format!("{failed} expectation(s) failed").into());
    }
    Ok(())
}

/// SIGTERM to the child's process group (ours: created at spawn), then
/// SIGKILL if it has not exited within two seconds.
fn stop_child(name: &str, child: &mut Child) {
    if let Ok(Some(status)) = child.try_wait() {
        println!("{name}: exited with {status}");
        return;
    }
    let pgid = child.id() as i32;
    // SAFETY: signalling the process group we created for this child.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            println!("{name}: stopped ({status})");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    println!("{name}: killed");
}

fn down(all: bool) -> Result<(), AnyError> {
    let sweep = topology::sweep(all)?;
    for n in &sweep.removed {
        println!("removed {n}");
    }
    for n in &sweep.kept_live {
        println!("kept {n} (its run is still alive; --all removes it)");
    }
    for (n, e) in &sweep.failed {
        eprintln!("could not remove {n}: {e}");
    }
    if sweep.removed.is_empty() && sweep.kept_live.is_empty() && sweep.failed.is_empty() {
        println!("no leftovers");
    }
    if sweep.failed.is_empty() {
        Ok(())
    } else {
        Err("some namespaces could not be removed".into())
    }
}

fn fmt_spec(s: &LinkSpec) -> String {
    s.describe()
}

fn profiles() {
    for p in profile::all() {
        println!("{:<10} {}", p.name, p.description);
        println!("{:<10}   up:   {}", "", fmt_spec(&p.up));
        println!("{:<10}   down: {}", "", fmt_spec(&p.down));
    }
}

fn print_report(r: &Report) {
    println!(
        "\n{:<8} {:<4} {:>9} {:>9} {:>11} {:>8} {:>8} {:>8} {:>6}",
        "node", "dir", "pkts in", "pkts out", "bytes out", "loss", "queue", "blocked", "dups"
    );
    for p in &r.ports {
        for (dir, s) in [("up", &p.up), ("down", &p.down)] {
            println!(
                "{:<8} {:<4} {:>9} {:>9} {:>11} {:>8} {:>8} {:>8} {:>6}",
                p.name,
                dir,
                s.packets_in,
                s.packets_out,
                s.bytes_out,
                s.dropped_loss,
                s.dropped_queue,
                s.dropped_blocked,
                s.duplicated
            );
        }
    }
    let x = r.router;
    println!(
        "router: {} malformed, {} unroutable, {} pool exhausted, {} read errors, {} write errors",
        x.malformed, x.unroutable, x.pool_exhausted, x.read_errors, x.write_errors
    );
}
