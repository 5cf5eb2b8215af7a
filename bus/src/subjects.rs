//! Subjects and stream names: the only place that spells them.
//!
//! * `rbee.ev.<aggregate>.<id>`  domain events of nodes, requests, downloads and keys, stream `RBEE`
//! * `rbee.ev.worker.<node>.<worker>`, `rbee.ev.model.<node>.<model>`  events of a node's workers
//!   and models (schema 6; older events of these kept `rbee.ev.<aggregate>.<id>`)
//! * `rbee.hb.<node>.<worker>`   heartbeats, stream `RBEE_HB` (last per subject kept)
//! * `rbee.work.<node>.<worker>` core NATS: a request's text dispatched to a worker
//! * `rbee.tok.<node>.<worker>.<request>` core NATS: token frames streamed back by the worker
//! * `rbee.live.<node>.<worker>` core NATS: the worker's requests a queen still streams to a client
//!
//! Identity lives in the subject: nats-server lets a node's hive and workers write only subjects
//! that name their node (and a worker only its own name), so the node in the subject is proven.

use crate::event::{AggregateKind, Event};

pub const EVENTS_STREAM: &str = "RBEE";
pub const HEARTBEATS_STREAM: &str = "RBEE_HB";
pub const EVENTS_SUBJECTS: &str = "rbee.ev.>";
pub const HEARTBEATS_SUBJECTS: &str = "rbee.hb.>";
pub const TOKENS_SUBJECTS: &str = "rbee.tok.>";

/// The durable consumer the archiver copies `RBEE` into Postgres through.
pub const ARCHIVER_CONSUMER: &str = "archiver";

/// The durable consumer a hive reads its node's commands through.
pub fn hive_consumer(node: &str) -> String {
    format!("hive-{node}")
}

/// The subject of an aggregate that is not kept per node (node, request, download, key); for a
/// worker or a model, [`worker`] and [`model`].
pub fn aggregate(kind: AggregateKind, id: &str) -> String {
    format!("rbee.ev.{}.{id}", kind.as_str())
}

/// The events of `worker` on `node`.
pub fn worker(node: &str, worker: &str) -> String {
    format!("rbee.ev.worker.{node}.{worker}")
}

/// The events of `model` on `node`.
pub fn model(node: &str, model: &str) -> String {
    format!("rbee.ev.model.{node}.{model}")
}

pub fn heartbeat(node: &str, worker: &str) -> String {
    format!("rbee.hb.{node}.{worker}")
}

pub fn work(node: &str, worker: &str) -> String {
    format!("rbee.work.{node}.{worker}")
}

/// Where queens say which of a worker's requests they still stream ([`crate::frames::StillWanted`]).
pub fn still_wanted(node: &str, worker: &str) -> String {
    format!("rbee.live.{node}.{worker}")
}

/// Token frames name the worker and its node, so a worker can only ever stream under its own name.
pub fn tokens(node: &str, worker: &str, request: &str) -> String {
    format!("rbee.tok.{node}.{worker}.{request}")
}

/// Where an event is published.
pub fn for_event(event: &Event) -> String {
    let (kind, id) = event.aggregate();
    match (event, event.node_scope()) {
        (Event::WorkerHeartbeat(hb), _) => heartbeat(&hb.node, &hb.worker),
        (_, Some(node)) if !node.is_empty() => format!("rbee.ev.{}.{node}.{id}", kind.as_str()),
        _ => aggregate(kind, id),
    }
}

/// Where a schema 5 (or older) event of the same aggregate was published: worker and model events
/// did not name their node in the subject yet. Only the admin may write there now.
pub fn before_node_scopes(event: &Event) -> Option<String> {
    match event {
        Event::WorkerHeartbeat(_) => None,
        _ => event.node_scope().map(|_| {
            let (kind, id) = event.aggregate();
            aggregate(kind, id)
        }),
    }
}

/// Why a name was refused: names the field, the rule and the (escaped) value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value}: {rule}")]
pub struct InvalidName {
    pub field: &'static str,
    pub rule: &'static str,
    /// The offending value, escaped so control characters are never echoed raw.
    pub value: String,
}

/// The longest id accepted for a node, worker, model or request.
pub const MAX_NAME_LEN: usize = 64;

/// A new worker id for `node`: the node's name (cut to 40 characters) and a random suffix, a
/// valid name (see [`validate_name`]) for any valid node name.
pub fn new_worker_id(node: &str) -> String {
    format!("{}-{}", node.chars().take(40).collect::<String>(), &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// Ids become subject tokens and file names, so they are restricted to `[A-Za-z0-9_-]`, 1 to 64 long.
/// This rules out path traversal, subject wildcards, shell metacharacters and control characters at once.
pub fn validate_name(field: &'static str, value: &str) -> Result<(), InvalidName> {
    let rule = "must be 1 to 64 characters of A-Z, a-z, 0-9, '-' or '_'";
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(InvalidName { field, rule, value: format!("{:?}", truncate_chars(value, 80)) }) }
}

fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).flat_map(char::escape_default).collect::<String>().chars().take(max * 2).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_accepted() {
        for ok in ["node-1", "SmolLM2-135M-Instruct", "w_01"] {
            assert!(validate_name("model", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn traversal_wildcards_and_control_characters_are_refused() {
        for bad in ["", "../etc", "a.b", "a*", "a>", "a b", "x;rm -rf", "tab\there", "é", &"x".repeat(65)] {
            let err = validate_name("model", bad).unwrap_err();
            assert_eq!(err.field, "model");
            assert!(!err.to_string().contains('\t'), "control chars must not be echoed: {err}");
        }
    }
}
