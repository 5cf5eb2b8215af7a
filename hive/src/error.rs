//! The hive's errors: [`HiveError`] ends the process; a [`Refusal`] ends one command (a worker
//! start, a pull) and is recorded as an event with its code.

use rbee_bus::{Code, InvalidSetting, subjects};

/// Why the hive could not run.
#[derive(Debug, thiserror::Error)]
pub enum HiveError {
    #[error(transparent)]
    InvalidName(#[from] subjects::InvalidName),
    #[error("{0}")]
    Bus(String),
    #[error("cannot prepare data directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
    /// A part of the hive could not be set up (e.g. the downloader's HTTP client).
    #[error("{0}")]
    Setup(Refusal),
}

impl HiveError {
    pub fn code(&self) -> Code {
        match self {
            HiveError::InvalidName(_) => Code::InvalidName,
            HiveError::Bus(_) => Code::EventLogUnavailable,
            HiveError::Io(_) => Code::DataDirUnusable,
            HiveError::Config(_) => Code::InvalidConfig,
            HiveError::Setup(r) => r.code,
        }
    }
}

impl From<InvalidSetting> for HiveError {
    fn from(e: InvalidSetting) -> Self {
        HiveError::Config(e.0)
    }
}

/// A command the hive would not, or could not, carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Refusal { code, message: message.into() }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<crate::fetch::Failure> for Refusal {
    fn from(f: crate::fetch::Failure) -> Self {
        Refusal { code: f.code, message: f.message }
    }
}

impl From<crate::supervisor::SpawnError> for Refusal {
    fn from(e: crate::supervisor::SpawnError) -> Self {
        Refusal { code: e.code(), message: e.to_string() }
    }
}
