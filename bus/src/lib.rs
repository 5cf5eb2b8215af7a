//! rbee's event log: the event types, their wire form, the subjects, appends to NATS JetStream with
//! optimistic concurrency, ordered reads, and the Postgres archive.
//!
//! Every other crate meets the others here: nothing crosses between processes except these events
//! and the core-NATS frames in [`frames`].

pub mod archive;
pub mod auth;
pub mod code;
pub mod envelope;
pub mod event;
pub mod frames;
pub mod fuzz;
pub mod log;
pub mod model_ref;
pub mod outbox;
pub mod prompt;
pub mod read;
pub mod schema;
pub mod subjects;
pub mod trace;

pub use auth::NatsAccess;
pub use code::Code;
pub use envelope::{Envelope, Meta};
pub use event::*;
pub use log::{AppendError, EventLog, Expected, InvalidSetting, Position, Recorded, StreamSettings};
