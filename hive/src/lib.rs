//! rbee's hive: one per machine. Registers the node with its resources, provisions models into a
//! verified local store, and spawns and supervises worker processes, recording every step as events.

pub mod config;
pub mod error;
pub mod fetch;
pub mod identity;
pub mod lifecycle;
pub mod preflight;
pub mod provision;
pub mod resources;
pub mod service;
pub mod sources;
pub mod supervisor;
pub mod upkeep;

pub use config::Config;
pub use error::HiveError;
pub use service::run;
