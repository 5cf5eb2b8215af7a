//! Backup and restore of the event log.
//!
//! A backup is JSON Lines, self-describing and checksummed: a header line (format, version, stream,
//! count), one line per event with its exact headers and body (base64), and a last line with the
//! sha256 of everything before it. A restore verifies it, then republishes the events in order into
//! an empty `RBEE` stream; projections then rebuild from the log, equal to the original's.

use rbee_bus::NatsAccess;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;

use base64::Engine as _;
use rbee_bus::Code;
use rbee_bus::read::{self, RawEvent};
use rbee_bus::subjects;
use serde_json::{Value, json};
use sha2::Digest;

use crate::error::{CliError, CliResult};
use crate::live::unavailable;

const FORMAT: &str = "rbee-backup";
const FORMAT_VERSION: u64 = 1;

fn invalid(path: &Path, why: impl std::fmt::Display) -> CliError {
    CliError::new(Code::InvalidBackup, format!("{} is not a usable rbee backup: {why}", path.display()))
}

/// Writes every event of `RBEE` to `path`. Returns the number of events.
pub async fn backup(nats: &NatsAccess, path: &Path) -> CliResult<usize> {
    let log = crate::live::connect_log(nats).await?;
    let events = read::raw_to_end(&log, subjects::EVENTS_STREAM).await.map_err(unavailable)?;
    let mut body = Vec::new();
    let header = json!({
        "format": FORMAT, "format_version": FORMAT_VERSION, "stream": subjects::EVENTS_STREAM,
        "events": events.len(), "first_seq": events.first().map(|e| e.seq), "last_seq": events.last().map(|e| e.seq),
        "created_at_ms": rbee_bus::envelope::now_ms(),
    });
    writeln!(body, "{header}").expect("writing to a Vec cannot fail");
    for e in &events {
        let headers: serde_json::Map<String, Value> =
            e.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let line = json!({"seq": e.seq, "subject": e.subject, "headers": headers, "payload": base64::engine::general_purpose::STANDARD.encode(&e.payload)});
        writeln!(body, "{line}").expect("writing to a Vec cannot fail");
    }
    let checksum = hex::encode(sha2::Sha256::digest(&body));
    writeln!(body, "{}", json!({"sha256": checksum})).expect("writing to a Vec cannot fail");
    let partial = path.with_extension("partial");
    std::fs::write(&partial, &body)
        .and_then(|_| std::fs::rename(&partial, path))
        .map_err(|e| rbee_local::process::io_error("write", path, e))?;
    Ok(events.len())
}

/// Reads and verifies a backup file.
pub fn read_backup(path: &Path) -> CliResult<Vec<RawEvent>> {
    let file = std::fs::File::open(path).map_err(|e| rbee_local::process::io_error("open", path, e))?;
    let lines: Vec<String> =
        std::io::BufReader::new(file).lines().collect::<Result<_, _>>().map_err(|e| invalid(path, e))?;
    let (last, rest) = lines.split_last().ok_or_else(|| invalid(path, "empty file"))?;
    let recorded: Value =
        serde_json::from_str(last).map_err(|_| invalid(path, "no checksum line at the end (truncated?)"))?;
    let mut hasher = sha2::Sha256::new();
    for line in rest {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    if recorded["sha256"].as_str() != Some(hex::encode(hasher.finalize()).as_str()) {
        return Err(invalid(path, "checksum mismatch (the file was changed or cut)"));
    }
    let (header, event_lines) = rest.split_first().ok_or_else(|| invalid(path, "no header line"))?;
    let header: Value = serde_json::from_str(header).map_err(|e| invalid(path, e))?;
    if header["format"] != FORMAT || header["format_version"] != FORMAT_VERSION {
        return Err(invalid(path, format!("unknown format {} version {}", header["format"], header["format_version"])));
    }
    if header["events"].as_u64() != Some(event_lines.len() as u64) {
        return Err(invalid(path, "event count does not match the header"));
    }
    event_lines
        .iter()
        .map(|line| {
            let v: Value = serde_json::from_str(line).map_err(|e| invalid(path, e))?;
            let payload = base64::engine::general_purpose::STANDARD
                .decode(v["payload"].as_str().unwrap_or_default())
                .map_err(|e| invalid(path, e))?;
            let headers = v["headers"]
                .as_object()
                .map(|h| h.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                .unwrap_or_default();
            Ok(RawEvent {
                seq: v["seq"].as_u64().unwrap_or(0),
                subject: v["subject"].as_str().ok_or_else(|| invalid(path, "an event without subject"))?.to_string(),
                headers,
                payload: payload.into(),
            })
        })
        .collect()
}

/// Republishes a verified backup into an empty `RBEE` stream. Returns the number of events.
pub async fn restore(nats: &NatsAccess, path: &Path) -> CliResult<usize> {
    let events = read_backup(path)?;
    let log = crate::live::connect_log(nats).await?;
    let settings =
        rbee_bus::StreamSettings::from_env().map_err(|e| CliError::new(Code::InvalidConfig, e.to_string()))?;
    log.ensure_streams(&settings).await.map_err(unavailable)?;
    if read::last_sequence(&log, subjects::EVENTS_STREAM).await.map_err(unavailable)? > 0 {
        return Err(CliError::new(
            Code::RestoreTargetNotEmpty,
            "the event log already holds events; restore into a fresh cluster (empty JetStream)",
        ));
    }
    // Each event goes after its subject's previous one, so the server checks the order as it did originally.
    let mut last_on_subject: HashMap<String, u64> = HashMap::new();
    for e in &events {
        let after = last_on_subject.get(&e.subject).copied().unwrap_or(0);
        let seq = log.import_raw(&e.subject, &e.headers, e.payload.clone(), after).await.map_err(|err| match err {
            rbee_bus::AppendError::Unavailable(_) => unavailable(err),
            conflict => {
                CliError::new(Code::RestoreFailed, format!("event {} on {} refused: {conflict}", e.seq, e.subject))
            }
        })?;
        last_on_subject.insert(e.subject.clone(), seq);
    }
    Ok(events.len())
}

/// After a restore into a new cluster: the workers the backup recorded ran on machines and in
/// processes this cluster does not have. Each is removed from the registry (`worker.removed`), so
/// no request is sent to it; one that still runs registers again under a new id. Returns how many.
pub async fn retire_restored_workers(nats: &NatsAccess) -> CliResult<usize> {
    let log = crate::live::connect_log(nats).await?;
    let folded = rbee_projections::history::replay_to(&log, None, rbee_projections::history::Until::End)
        .await
        .map_err(|e| CliError::new(e.code(), e.to_string()))?;
    let workers: Vec<(String, String)> =
        folded.view.registry.workers.values().map(|w| (w.id.clone(), w.node.clone())).collect();
    for (worker, node) in &workers {
        let removed = rbee_bus::Event::WorkerRemoved(rbee_bus::WorkerRemoved {
            worker: worker.clone(),
            node: node.clone(),
            reason: "restored from a backup: not running in this cluster".into(),
        });
        log.append(removed, rbee_bus::Expected::Any, &rbee_bus::Meta::default()).await.map_err(unavailable)?;
    }
    Ok(workers.len())
}
