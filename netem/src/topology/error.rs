use std::io;

/// Why building or tearing down a topology failed.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("`ip {args}` failed ({status}): {stderr}")]
    Ip {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("node name {0:?} must be 1-20 characters of [a-z0-9_]")]
    InvalidName(String),
    #[error("node name {0:?} is used twice")]
    DuplicateName(String),
    #[error("at most {max} nodes per topology, asked for {asked}")]
    TooManyNodes { max: usize, asked: usize },
    #[error("the rig needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for setns) and the `ip` tool: {0}")]
    Unsupported(String),
}

impl TopologyError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
