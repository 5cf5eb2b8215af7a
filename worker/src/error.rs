//! Why a worker could not start or serve.

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
}

impl WorkerError {
    pub fn code(&self) -> &'static str {
        match self {
            WorkerError::InvalidName(_) => "INVALID_NAME",
            WorkerError::AlreadyRegistered(_) => "WORKER_ALREADY_REGISTERED",
            WorkerError::Engine(e) => e.code(),
            WorkerError::Bus(_) => "EVENT_LOG_UNAVAILABLE",
        }
    }
}

impl From<rbee_bus::AppendError> for WorkerError {
    fn from(e: rbee_bus::AppendError) -> Self {
        WorkerError::Bus(e.to_string())
    }
}
