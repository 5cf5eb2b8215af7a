//! What each role may say and hear on the bus. Identity lives in the subject (a worker's id, a
//! hive's node), so an allow list of subjects is the whole of a role's rights, and nats-server
//! enforces it. Everything not listed is refused, the JetStream API's delete, purge and update
//! included: only the admin, which has no list, may use them.

use super::jwt::Permissions;
use crate::event::AggregateKind::{Download, Node, Request};
use crate::subjects::{self, ARCHIVER_CONSUMER, EVENTS_STREAM, HEARTBEATS_STREAM, aggregate, hive_consumer};

/// Any one token of a subject.
const ANY: &str = "*";
/// A worker's id, filled in by nats-server from the user's name.
const WORKER_NAME: &str = "{{name()}}";

/// A user's private reply subjects: `_INBOX.<its public key>`, so nobody reads another's replies.
pub fn inbox_prefix(user_public_key: &str) -> String {
    format!("_INBOX.{user_public_key}")
}

/// Reading the log: stream info, single messages and ordered consumers of both streams.
fn reader(inbox: &str) -> Permissions {
    let mut publish = vec!["$JS.API.INFO".to_string()];
    for stream in [EVENTS_STREAM, HEARTBEATS_STREAM] {
        publish.extend([
            format!("$JS.API.STREAM.INFO.{stream}"),
            format!("$JS.API.STREAM.MSG.GET.{stream}"),
            format!("$JS.API.DIRECT.GET.{stream}"),
            format!("$JS.API.DIRECT.GET.{stream}.>"),
            format!("$JS.API.CONSUMER.CREATE.{stream}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
            format!("$JS.API.CONSUMER.INFO.{stream}.*"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
        ]);
    }
    Permissions { publish, subscribe: vec![format!("{inbox}.>")], respond: false }
}

/// Creating the two streams (idempotent when they exist with the same settings).
fn stream_creator(p: &mut Permissions) {
    for stream in [EVENTS_STREAM, HEARTBEATS_STREAM] {
        p.publish.push(format!("$JS.API.STREAM.CREATE.{stream}"));
    }
}

/// A durable consumer of the events stream that only this role creates and acknowledges.
fn durable(p: &mut Permissions, name: &str) {
    p.publish.extend([
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{EVENTS_STREAM}.{name}"),
        format!("$JS.ACK.{EVENTS_STREAM}.{name}.>"),
    ]);
}

/// The queen: requests, slots and workers' states in the log, work items out, tokens in.
pub fn queen(inbox: &str) -> Permissions {
    let mut p = reader(inbox);
    stream_creator(&mut p);
    durable(&mut p, ARCHIVER_CONSUMER);
    p.publish.extend([
        aggregate(Request, ANY),
        subjects::worker(ANY, ANY),
        subjects::work(ANY, ANY),
        subjects::still_wanted(ANY, ANY),
    ]);
    p.subscribe.push(subjects::TOKENS_SUBJECTS.into());
    p
}

/// The hive of `node`: its node's events, commands and downloads; its workers' lifecycle; the catalog.
pub fn hive(node: &str, inbox: &str) -> Permissions {
    let mut p = reader(inbox);
    stream_creator(&mut p);
    durable(&mut p, &hive_consumer(node));
    p.publish.extend([
        aggregate(Node, node),
        aggregate(Download, &format!("{node}.{ANY}")),
        subjects::worker(node, ANY),
        subjects::model(node, ANY),
    ]);
    p
}

/// Any worker of `node`, as a template: `{{name()}}` is the worker's id, `{{subject()}}` its key.
/// Its heartbeat, its own events, tokens of the requests it was given, its own work items.
pub fn worker_template(node: &str) -> Permissions {
    let mut p = reader(&inbox_prefix("{{subject()}}"));
    p.publish.extend([
        subjects::heartbeat(node, WORKER_NAME),
        subjects::worker(node, WORKER_NAME),
        aggregate(Request, ANY),
        subjects::tokens(node, WORKER_NAME, ANY),
    ]);
    p.subscribe.extend([
        subjects::work(node, WORKER_NAME),
        subjects::still_wanted(node, WORKER_NAME),
        aggregate(Request, ANY),
        // Its own events: the slots claimed on it (a claim whose request never comes is released).
        subjects::worker(node, WORKER_NAME),
    ]);
    p.respond = true;
    p
}

/// The operator's CLI: reads the log and watches events; writes nothing.
pub fn operator(inbox: &str) -> Permissions {
    let mut p = reader(inbox);
    p.subscribe.extend([subjects::EVENTS_SUBJECTS.into(), subjects::HEARTBEATS_SUBJECTS.into()]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_role_but_admin_may_delete_purge_or_update() {
        let roles = [queen("_INBOX.Q"), hive("n1", "_INBOX.H"), worker_template("n1"), operator("_INBOX.O")];
        for p in roles {
            for subject in &p.publish {
                for verb in ["DELETE", "PURGE", "UPDATE", "RESTORE", "SNAPSHOT"] {
                    assert!(!subject.contains(verb), "{subject}");
                }
                assert!(subject != ">" && !subject.starts_with("$JS.API.>"), "{subject}");
            }
        }
    }

    #[test]
    fn a_hive_writes_only_its_own_node() {
        let p = hive("n1", "_INBOX.H");
        for subject in &p.publish {
            if let Some(rest) = subject.strip_prefix("rbee.") {
                assert!(rest.split('.').nth(2) == Some("n1"), "{subject} does not name the node");
            }
        }
    }

    #[test]
    fn a_worker_speaks_only_as_itself() {
        let p = worker_template("n1");
        assert!(p.publish.contains(&"rbee.hb.n1.{{name()}}".to_string()));
        assert!(p.publish.contains(&"rbee.tok.n1.{{name()}}.*".to_string()));
        assert!(p.publish.contains(&"rbee.ev.worker.n1.{{name()}}".to_string()));
        assert!(p.subscribe.contains(&"rbee.work.n1.{{name()}}".to_string()));
        assert!(!p.subscribe.iter().any(|s| s.starts_with("rbee.tok")), "a worker hears no tokens");
        assert_eq!(p.subscribe[0], "_INBOX.{{subject()}}.>");
    }
}
