//! `rbee events tail`: the log decoded, one JSON object per line, following by default.

use futures::StreamExt;
use rbee_bus::Code;
use rbee_bus::NatsAccess;
use rbee_bus::log::ReadError;
use rbee_bus::read::{self, StartAt};
use rbee_bus::{Recorded, subjects};
use rbee_projections::history::Until;
use serde_json::{Value, json};

use crate::error::{CliError, CliResult};
use crate::live::unavailable;

#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Print what is in the log now and exit, instead of following.
    #[arg(long)]
    pub no_follow: bool,
    /// Leave out heartbeats.
    #[arg(long)]
    pub no_heartbeats: bool,
    /// Only events of this type (e.g. `slot.claimed`) or type prefix (e.g. `worker.`).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Only events of this aggregate kind (node, worker, model, request).
    #[arg(long)]
    pub aggregate: Option<String>,
    /// Only events recorded at or after this UTC time (`2026-11-22T00:10:00Z`).
    #[arg(long)]
    pub since: Option<String>,
}

/// One event as a JSON line: metadata first, then the decoded body under `data`.
pub fn to_json(stream: &str, rec: &Recorded) -> Value {
    let env = &rec.envelope;
    let body = serde_json::to_value(&env.event).unwrap_or(Value::Null);
    // Events serialize as {"VariantName": {...}}; the type is already in "type".
    let data = body.as_object().and_then(|o| o.values().next().cloned()).unwrap_or(body);
    json!({
        "type": env.event.kind(), "stream": stream, "seq": rec.stream_seq, "subject": rec.subject,
        "id": env.id.to_string(), "version": env.version, "at_ms": env.at_ms,
        "correlation": env.correlation, "traceparent": env.traceparent, "data": data,
    })
}

/// An event that cannot be decoded, as a line of its own: `type` "undecodable", where it is and why.
/// The time is when JetStream stored it. Also said on stderr, for a reader of the terminal.
fn quarantined(stream: &str, e: &ReadError) -> Option<(u64, Value)> {
    let ReadError::Undecodable { seq, subject, at_ms, source, .. } = e else { return None };
    eprintln!("undecodable event: {e}");
    let line = json!({
        "type": "undecodable", "stream": stream, "seq": seq, "subject": subject, "at_ms": at_ms,
        "reason": source.to_string(), "code": Code::UndecodableEvent.as_str(),
    });
    Some((*at_ms, line))
}

fn wanted(args: &TailArgs, since_ms: u64, rec: &Recorded) -> bool {
    let kind = rec.envelope.event.kind();
    rec.envelope.at_ms >= since_ms
        && args.event_type.as_deref().is_none_or(|t| kind == t || (t.ends_with('.') && kind.starts_with(t)))
        && args.aggregate.as_deref().is_none_or(|a| rec.envelope.event.aggregate().0.as_str() == a)
}

pub async fn tail(nats: &NatsAccess, args: TailArgs) -> CliResult<()> {
    let since_ms = match crate::log_point::parse(args.since.as_deref())? {
        Until::TimeMs(ms) => ms,
        Until::End => 0,
        Until::Seq(_) => {
            return Err(CliError::new(Code::InvalidArgument, "--since takes a UTC time like 2026-11-22T00:10:00Z"));
        }
    };
    if let Some(kind) = args.aggregate.as_deref().filter(|a| !["node", "worker", "model", "request"].contains(a)) {
        let shown: String = kind.chars().take(40).flat_map(char::escape_default).collect();
        return Err(CliError::new(
            Code::InvalidArgument,
            format!("--aggregate must be node, worker, model or request, got \"{shown}\""),
        ));
    }
    let log = crate::live::connect_log(nats).await?;
    let mut streams = vec![subjects::EVENTS_STREAM];
    if !args.no_heartbeats {
        streams.push(subjects::HEARTBEATS_STREAM);
    }
    if args.no_follow {
        let mut lines = Vec::new();
        for stream in &streams {
            for item in read::read_to_end(&log, stream, StartAt::Start).await.map_err(|e| unavailable(e.to_string()))? {
                match item {
                    Ok(rec) if wanted(&args, since_ms, &rec) => lines.push((rec.envelope.at_ms, to_json(stream, &rec))),
                    Ok(_) => {}
                    Err(e) => {
                        if let Some((at_ms, line)) = quarantined(stream, &e) {
                            lines.push((at_ms, line));
                        }
                    }
                }
            }
        }
        lines.sort_by_key(|(at, _)| *at);
        for (_, line) in lines {
            println!("{line}");
        }
        return Ok(());
    }
    let mut merged = futures::stream::SelectAll::new();
    for stream in streams {
        let name = stream.to_string();
        let s = read::follow(&log, stream, StartAt::Start).await.map_err(|e| unavailable(e.to_string()))?;
        merged.push(s.map(move |item| (name.clone(), item)).boxed());
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Err(CliError::interrupted()),
            item = merged.next() => match item {
                Some((stream, Ok(d))) if wanted(&args, since_ms, &d.recorded) => println!("{}", to_json(&stream, &d.recorded)),
                Some((_, Ok(_))) => {}
                Some((stream, Err(e @ ReadError::Undecodable { .. }))) => {
                    if let Some((_, line)) = quarantined(&stream, &e) {
                        println!("{line}");
                    }
                }
                Some((_, Err(e))) => return Err(unavailable(e.to_string())),
                None => return Ok(()),
            },
        }
    }
}
