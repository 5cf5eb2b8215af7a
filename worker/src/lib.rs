//! rbee's inference worker: loads one GGUF model into rbee's engine, registers itself and
//! heartbeats as events, takes requests on `rbee.work.<node>.<id>` (up to its slots, decoded together in
//! one batch), streams tokens on `rbee.tok.<node>.<id>.<request>`, and stops a request within one token when it
//! is cancelled.

pub mod chat_template;
pub mod claims;
pub mod config;
pub mod engine;
pub mod error;
pub mod kernels;
pub mod llama;
pub mod registration;
pub mod rejoin;
pub mod requesters;
pub mod service;
pub mod text_stream;

pub use config::Config;
pub use error::WorkerError;
pub use service::run;
