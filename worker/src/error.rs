//! Why a worker could not start or serve.

use rbee_bus::Code;

use crate::engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    InvalidName(#[from] rbee_bus::subjects::InvalidName),
    #[error("worker {0} is already registered in the cluster; pick another --worker-id")]
    AlreadyRegistered(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Bus(String),
    #[error(transparent)]
    Config(#[from] rbee_bus::InvalidSetting),
    /// The process failed inside: a thread could not start, a task panicked.
    #[error("{0}")]
    Internal(String),
}

impl WorkerError {
    pub fn code(&self) -> Code {
        match self {
            WorkerError::InvalidName(_) => Code::InvalidName,
            WorkerError::AlreadyRegistered(_) => Code::WorkerAlreadyRegistered,
            WorkerError::Engine(e) => e.code(),
            WorkerError::Bus(_) => Code::EventLogUnavailable,
            WorkerError::Config(_) => Code::InvalidConfig,
            WorkerError::Internal(_) => Code::InternalError,
        }
    }
}

impl From<rbee_bus::AppendError> for WorkerError {
    fn from(e: rbee_bus::AppendError) -> Self {
        WorkerError::Bus(e.to_string())
    }
}
