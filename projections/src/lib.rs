//! rbee's projections: state folded from the event log. The folds are pure and deterministic (the
//! same events give the same state); [`live`] keeps one current by tailing JetStream.

pub mod aggregate;
pub mod catalog;
pub mod checkpoint;
pub mod downloads;
pub mod history;
pub mod keys;
pub mod live;
pub mod registry;

pub use catalog::{Catalog, CatalogEntry};
pub use downloads::{Download, DownloadStatus, Downloads};
pub use keys::{Key, Keys};
pub use live::{ClusterView, LiveView};
pub use registry::{Node, Registry, Worker};
