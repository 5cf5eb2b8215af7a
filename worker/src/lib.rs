//! rbee's inference worker: loads one GGUF model with candle, registers itself and heartbeats as
//! events, takes requests on `rbee.work.<id>`, streams tokens on `rbee.tok.<request>`, and stops
//! within one token when its request is cancelled.

pub mod chat_template;
pub mod config;
pub mod engine;
pub mod error;
pub mod kernels;
pub mod llama;
pub mod registration;
pub mod service;
pub mod text_stream;

pub use config::Config;
pub use error::WorkerError;
pub use service::run;
