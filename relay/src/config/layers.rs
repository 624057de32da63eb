//! The generic part of the command-line configuration shared by `rtc-relay`
//! and `rtc-server`: each setting comes from a flag, an environment variable,
//! a key in a TOML file, or its default, in that order of precedence.
//!
//! The binaries differ only in the environment variable prefix and in the
//! example keys named by the unknown-key message, given by an [`EnvPrefix`].

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

/// What distinguishes one binary's configuration sources from another's.
pub trait EnvPrefix: Clone + fmt::Debug + Eq {
    /// Prepended to the upper-cased flag name, e.g. `"RTC_RELAY_"`.
    const PREFIX: &'static str;
    /// Named by the unknown-key message, e.g. `"listen, auth-secret, realm"`.
    const EXAMPLE_KEYS: &'static str;
}

/// The environment variable read for `flag`, e.g. `RTC_RELAY_AUTH_SECRET` for `auth-secret`.
pub fn env_var<P: EnvPrefix>(flag: &str) -> String {
    format!("{}{}", P::PREFIX, flag.to_ascii_uppercase().replace('-', "_"))
}

/// An empty variable is how compose files and shells say "not set".
pub fn nonempty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

/// Where a setting came from, so an error points at the line to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source<P> {
    Flag,
    Env,
    File(PathBuf),
    /// Never built: only carries the binary's [`EnvPrefix`].
    #[doc(hidden)]
    _Prefix(Infallible, PhantomData<P>),
}

/// One flag as given by one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting<P> {
    /// The long flag name without dashes, e.g. `"relay-ports"`.
    pub flag: &'static str,
    pub source: Source<P>,
}

impl<P> Setting<P> {
    /// `flag` as given on the command line.
    pub fn flag(flag: &'static str) -> Self {
        Setting {
            flag,
            source: Source::Flag,
        }
    }

    fn env(flag: &'static str) -> Self {
        Setting {
            flag,
            source: Source::Env,
        }
    }

    fn file(flag: &'static str, path: &std::path::Path) -> Self {
        Setting {
            flag,
            source: Source::File(path.to_path_buf()),
        }
    }
}

impl<P: EnvPrefix> fmt::Display for Setting<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Flag => write!(f, "--{}", self.flag),
            Source::Env => write!(f, "{} (--{})", env_var::<P>(self.flag), self.flag),
            Source::File(p) => write!(f, "{} in {} (--{})", self.flag, p.display(), self.flag),
            Source::_Prefix(never, _) => match *never {},
        }
    }
}

/// Why a layer refused a setting. Each binary's `ConfigError` wraps these
/// (and keeps `Invalid` as its own variant, since it also raises it itself).
#[derive(Debug, Error)]
pub enum LayerError<P: EnvPrefix> {
    #[error("cannot read config file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    TomlSyntax { path: PathBuf, source: toml::de::Error },
    #[error(
        "config file {path}: unknown key {key:?} (keys are the long flag names, e.g. {})",
        P::EXAMPLE_KEYS
    )]
    UnknownKey { path: PathBuf, key: String },
    #[error("config file {path}: key {key:?} is given twice (once with '-', once with '_')")]
    DuplicateKey { path: PathBuf, key: String },
    #[error("{at}: expected {expected}")]
    WrongType { at: Setting<P>, expected: &'static str },
    #[error("{at}: invalid value {value:?}, expected {expected}")]
    Invalid {
        at: Setting<P>,
        value: String,
        expected: &'static str,
    },
}

/// The non-flag sources, consulted in order for each flag.
pub struct Layers<'a, P> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file: Option<(PathBuf, toml::Table)>,
    prefix: PhantomData<P>,
}

impl<'a, P: EnvPrefix> Layers<'a, P> {
    /// The environment and the TOML file read by [`read_toml`], if any.
    pub fn new(env: &'a dyn Fn(&str) -> Option<String>, file: Option<(PathBuf, toml::Table)>) -> Self {
        Layers {
            env,
            file,
            prefix: PhantomData,
        }
    }

    fn env_value(&self, flag: &str) -> Option<String> {
        nonempty((self.env)(&env_var::<P>(flag)))
    }

    /// One value: the flag, else the variable, else the file key, else `None`.
    pub fn scalar(
        &mut self,
        flag: &'static str,
        cli: Option<String>,
    ) -> Result<Option<(String, Setting<P>)>, LayerError<P>> {
        if let Some(v) = cli {
            return Ok(Some((v, Setting::flag(flag))));
        }
        if let Some(v) = self.env_value(flag) {
            return Ok(Some((v.trim().to_string(), Setting::env(flag))));
        }
        if let Some((path, table)) = &mut self.file {
            if let Some(v) = table.remove(flag) {
                let at = Setting::file(flag, path);
                return toml_scalar(v, &at).map(|s| Some((s, at)));
            }
        }
        Ok(None)
    }

    /// A repeatable flag: all flags, else the comma-separated variable, else
    /// the file's array (or single value), else empty.
    pub fn list(&mut self, flag: &'static str, cli: Vec<String>) -> Result<(Vec<String>, Setting<P>), LayerError<P>> {
        if !cli.is_empty() {
            return Ok((cli, Setting::flag(flag)));
        }
        if let Some(v) = self.env_value(flag) {
            let items = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from);
            return Ok((items.collect(), Setting::env(flag)));
        }
        if let Some((path, table)) = &mut self.file {
            let at = Setting::file(flag, path);
            if let Some(v) = table.remove(flag) {
                let items = match v {
                    toml::Value::Array(a) => a.into_iter().map(|v| toml_scalar(v, &at)).collect::<Result<_, _>>()?,
                    v => vec![toml_scalar(v, &at)?],
                };
                return Ok((items, at));
            }
        }
        Ok((Vec::new(), Setting::flag(flag)))
    }

    /// A boolean flag: where it was turned on, or `None` if it is off.
    pub fn switch(&mut self, flag: &'static str, cli: bool) -> Result<Option<Setting<P>>, LayerError<P>> {
        if cli {
            return Ok(Some(Setting::flag(flag)));
        }
        if let Some(v) = self.env_value(flag) {
            let at = Setting::env(flag);
            return match parse_bool(&v) {
                Some(true) => Ok(Some(at)),
                Some(false) => Ok(None),
                None => Err(LayerError::Invalid {
                    at,
                    value: v,
                    expected: "true or false",
                }),
            };
        }
        if let Some((path, table)) = &mut self.file {
            if let Some(v) = table.remove(flag) {
                let at = Setting::file(flag, path);
                return match v.as_bool() {
                    Some(true) => Ok(Some(at)),
                    Some(false) => Ok(None),
                    None => Err(LayerError::WrongType {
                        at,
                        expected: "true or false",
                    }),
                };
            }
        }
        Ok(None)
    }

    /// A non-negative integer, or `default` if no source gives one.
    pub fn number<T: FromStr>(
        &mut self,
        flag: &'static str,
        cli: Option<String>,
        default: T,
    ) -> Result<T, LayerError<P>> {
        match self.scalar(flag, cli)? {
            Some((v, at)) => parse_number(&v, at),
            None => Ok(default),
        }
    }
}

/// `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`, in any case.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A TOML string or integer as the text a flag would have given.
pub fn toml_scalar<P: EnvPrefix>(v: toml::Value, at: &Setting<P>) -> Result<String, LayerError<P>> {
    match v {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(i) => Ok(i.to_string()),
        _ => Err(LayerError::WrongType {
            at: at.clone(),
            expected: "a string or an integer",
        }),
    }
}

/// A non-negative integer.
pub fn parse_number<T: FromStr, P: EnvPrefix>(v: &str, at: Setting<P>) -> Result<T, LayerError<P>> {
    v.trim().parse().map_err(|_| LayerError::Invalid {
        at,
        value: v.to_string(),
        expected: "a non-negative integer",
    })
}

/// Reads a TOML file whose keys must be in `known` (with `_` for `-` allowed,
/// but not both spellings of one key). Keys come back spelled with `-`.
pub fn read_toml<P: EnvPrefix>(
    path: PathBuf,
    known: &HashSet<String>,
) -> Result<(PathBuf, toml::Table), LayerError<P>> {
    let text = std::fs::read_to_string(&path).map_err(|source| LayerError::ReadFile {
        path: path.clone(),
        source,
    })?;
    let raw: toml::Table = toml::from_str(&text).map_err(|source| LayerError::TomlSyntax {
        path: path.clone(),
        source,
    })?;
    let mut table = toml::Table::new();
    for (key, value) in raw {
        let norm = key.replace('_', "-");
        if !known.contains(&norm) {
            return Err(LayerError::UnknownKey { path, key });
        }
        if table.insert(norm.clone(), value).is_some() {
            return Err(LayerError::DuplicateKey { path, key: norm });
        }
    }
    Ok((path, table))
}

/// A command's long flags, which are exactly the accepted TOML keys, so a new
/// flag is a new key without a second list to keep in sync.
pub fn known_keys(command: &clap::Command) -> HashSet<String> {
    command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "help" | "version" | "config"))
        .map(String::from)
        .collect()
}
