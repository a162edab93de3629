//! The harness's one error type. Every variant names what was being done and keeps the cause.

use std::path::PathBuf;
use std::time::Duration;

use crate::prereq::Missing;

/// Why the harness (demo or end-to-end suite) could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    #[error(transparent)]
    Missing(#[from] Missing),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("msp-host: {0}")]
    Host(#[from] msp_host::HostError),
    #[error("msp-host admin API: {0}")]
    Admin(#[from] msp_host::AdminError),
    #[error("workload `{program}`: {message}")]
    Workload { program: String, message: String },
    #[error("{what}: {message}")]
    Decode { what: String, message: String },
    #[error("{what} failed: {message}")]
    Task { what: &'static str, message: String },
    #[error("at most {max} VMs fit the fabric's address plan, {requested} requested")]
    TooManyVms { requested: usize, max: usize },
    #[error("interrupted")]
    Interrupted,
}

impl HarnessError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HarnessError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
