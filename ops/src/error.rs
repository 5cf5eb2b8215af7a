//! The CLI's errors: a stable code, a message saying what to do, and an exit code.

use rbee_bus::Code;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub code: Code,
    pub message: String,
}

impl CliError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        CliError { code, message: message.into() }
    }

    /// Ctrl+C: the command stopped on the user's word (exit 130).
    pub fn interrupted() -> Self {
        CliError::new(Code::Interrupted, "interrupted")
    }

    pub fn exit_code(&self) -> u8 {
        if self.code == Code::Interrupted { EXIT_INTERRUPTED } else { 1 }
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// Exit codes: 0 ok, 1 error, 130 interrupted.
pub const EXIT_INTERRUPTED: u8 = 130;

impl From<rbee_local::LocalError> for CliError {
    fn from(e: rbee_local::LocalError) -> Self {
        CliError { code: e.code, message: e.message }
    }
}
