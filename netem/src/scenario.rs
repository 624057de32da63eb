//! Scenario files (TOML): who takes part, over which links, for how long.
//!
//! ```toml
//! name = "downlink drop"
//! duration_s = 40
//! seed = 7
//!
//! [server]
//! command = "my-server --listen 0.0.0.0:8443"   # run inside the server namespace
//!
//! [[clients]]
//! name = "alice"
//! profile = "4g"                 # starting point, see `netem profiles`
//! publish = ["audio", "video"]
//! subscribe = ["bob"]
//! command = "my-client --server $NETEM_SERVER_ADDR"
//! down = { jitter_ms = 5 }       # override on top of the profile
//!
//! [[clients.schedule]]           # changes over time, per direction
//! at_s = 10
//! down = { rate_kbps = 500 }
//! [[clients.schedule]]
//! at_s = 30
//! down = { rate_kbps = 3000 }
//! ```
//!
//! `publish` and `subscribe` are passed to the commands as environment
//! variables (the browser client reads them). `[[expect]]` tables are
//! checked after the run by [`crate::report::expect`]; `short_scale` gives
//! the short version (`netem run --short`).

use std::time::Duration;

use serde::Deserialize;

use crate::profile;
use crate::router::LinkConfig;
use crate::spec::{build_link, LinkSpec, SpecError};

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing scenario: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("{node}: {source}")]
    Spec {
        node: String,
        #[source]
        source: SpecError,
    },
    #[error("a scenario needs at least one client and a positive duration")]
    Empty,
    #[error("\"server\" is reserved for the server node")]
    ReservedName,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub at_s: f64,
    pub up: Option<LinkSpec>,
    pub down: Option<LinkSpec>,
    /// Applied to both directions (before `up`/`down` of the same step).
    pub both: Option<LinkSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    #[serde(default)]
    pub name: String,
    pub profile: Option<String>,
    pub command: Option<String>,
    pub up: Option<LinkSpec>,
    pub down: Option<LinkSpec>,
    /// Applied to both directions (before `up`/`down`).
    pub both: Option<LinkSpec>,
    #[serde(default)]
    pub schedule: Vec<Step>,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: Option<String>,
    pub duration_s: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub server: NodeSpec,
    pub clients: Vec<NodeSpec>,
    /// Expectations, see [`crate::report::expect`].
    #[serde(default)]
    pub expect: Vec<toml::Table>,
    /// `netem run --short` multiplies the duration, the schedule times and
    /// the expectation windows by this (thresholds stay as they are).
    pub short_scale: Option<f64>,
}

fn default_seed() -> u64 {
    1
}

impl Scenario {
    pub fn load(path: &str) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let mut s: Scenario = toml::from_str(text)?;
        if s.clients.is_empty() || !s.duration_s.is_finite() || s.duration_s <= 0.0 {
            return Err(ScenarioError::Empty);
        }
        if s.clients.iter().any(|c| c.name == "server") {
            return Err(ScenarioError::ReservedName);
        }
        s.server.name = "server".into();
        Ok(s)
    }

    /// The short version (`short_scale`; unchanged without one).
    pub fn short(mut self) -> Result<Self, ScenarioError> {
        let Some(f) = self.short_scale else { return Ok(self) };
        if !f.is_finite() || f <= 0.0 {
            return Err(ScenarioError::Empty);
        }
        self.duration_s *= f;
        for node in std::iter::once(&mut self.server).chain(&mut self.clients) {
            for step in &mut node.schedule {
                step.at_s *= f;
            }
        }
        for e in &mut self.expect {
            for key in ["from_s", "to_s"] {
                let v = match e.get(key) {
                    Some(toml::Value::Float(x)) => *x,
                    Some(toml::Value::Integer(i)) => *i as f64,
                    _ => continue,
                };
                e.insert(key.into(), toml::Value::Float(v * f));
            }
        }
        Ok(self)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s)
    }

    /// Server first, then clients: the node order of the topology.
    pub fn nodes(&self) -> Vec<&NodeSpec> {
        std::iter::once(&self.server).chain(&self.clients).collect()
    }

    pub fn link_configs(&self) -> Result<Vec<LinkConfig>, ScenarioError> {
        self.nodes()
            .into_iter()
            .map(|n| {
                n.link_config().map_err(|source| ScenarioError::Spec {
                    node: n.name.clone(),
                    source,
                })
            })
            .collect()
    }
}

impl NodeSpec {
    /// Profile, then the node's own overrides, then its schedule.
    pub fn link_config(&self) -> Result<LinkConfig, SpecError> {
        let (mut up, mut down) = (LinkSpec::default(), LinkSpec::default());
        if let Some(name) = &self.profile {
            let p = profile::named(name).ok_or_else(|| SpecError::UnknownProfile(name.clone()))?;
            (up, down) = (p.up, p.down);
        }
        if let Some(b) = &self.both {
            up = b.over(&up);
            down = b.over(&down);
        }
        if let Some(o) = &self.up {
            up = o.over(&up);
        }
        if let Some(o) = &self.down {
            down = o.over(&down);
        }
        let mut up_steps = Vec::new();
        let mut down_steps = Vec::new();
        for step in &self.schedule {
            if !step.at_s.is_finite() || step.at_s < 0.0 {
                return Err(SpecError::OutOfRange {
                    field: "at_s",
                    value: step.at_s,
                    min: 0.0,
                    max: f64::MAX,
                });
            }
            let at = Duration::from_secs_f64(step.at_s);
            let both = step.both.clone().unwrap_or_default();
            up_steps.push((at, step.up.clone().unwrap_or_default().over(&both)));
            down_steps.push((at, step.down.clone().unwrap_or_default().over(&both)));
        }
        let (up, up_schedule) = build_link(&up, &up_steps)?;
        let (down, down_schedule) = build_link(&down, &down_steps)?;
        Ok(LinkConfig {
            up,
            up_schedule,
            down,
            down_schedule,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        duration_s = 40
        seed = 7
        short_scale = 0.5
        [[clients]]
        name = "alice"
        profile = "4g"
        publish = ["audio", "video"]
        down = { jitter_ms = 5 }
        [[clients.schedule]]
        at_s = 10
        down = { rate_kbps = 500 }
        [[clients.schedule]]
        at_s = 30
        down = { rate_kbps = 3000 }
        [[clients]]
        name = "bob"
        [[expect]]
        kind = "later"
        from_s = 4
    "#;

    #[test]
    fn parses_and_builds_links() {
        let s = Scenario::parse(EXAMPLE).expect("valid scenario");
        assert_eq!(s.nodes().len(), 3);
        assert_eq!(s.nodes()[0].name, "server");
        let cfg = s.link_configs().expect("valid links");
        let alice = &cfg[1];
        assert_eq!(alice.down.rate_bps, Some(20_000_000));
        assert_eq!(alice.down.jitter, Duration::from_millis(5));
        assert_eq!(alice.down_schedule.steps().len(), 2);
        assert_eq!(alice.down_schedule.steps()[0].1.rate_bps, Some(Some(500_000)));
        assert_eq!(cfg[2].down, Default::default());
        let short = s.short().expect("valid scale");
        assert_eq!(short.duration_s, 20.0);
        assert_eq!(short.clients[0].schedule[1].at_s, 15.0);
        assert_eq!(short.expect[0]["from_s"].as_float(), Some(2.0));
    }

    #[test]
    fn rejects_mistakes() {
        assert!(Scenario::parse("duration_s = 1\nclients = []").is_err());
        assert!(
            Scenario::parse("duration_s = 1\n[[clients]]\nname = \"a\"\nprofile = \"5g\"")
                .expect("parses")
                .link_configs()
                .is_err()
        );
        assert!(Scenario::parse("duration_s = 1\n[[clients]]\nname = \"a\"\nbogus = 1").is_err());
    }
}
