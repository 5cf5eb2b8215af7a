//! Backup, restore and replay of the event log.
//!
//! A backup is JSON Lines, self-describing and checksummed: a header line (format, version, stream,
//! count), one line per event with its exact headers and body (base64), and a last line with the
//! sha256 of everything before it. A restore verifies it, then republishes the events in order into
//! an empty `RBEE` stream; projections then rebuild from the log, equal to the original's.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;

use base64::Engine as _;
use rbee_bus::Code;
use rbee_bus::envelope::HEADER_EXPECTED_LAST_SUBJECT_SEQ;
use rbee_bus::read::{self, From, RawEvent};
use rbee_bus::{EventLog, subjects};
use rbee_projections::ClusterView;
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
pub async fn backup(nats_url: &str, path: &Path) -> CliResult<usize> {
    let log = EventLog::connect(nats_url).await.map_err(unavailable)?;
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
        .map_err(|e| crate::local::process::io_error("write", path, e))?;
    Ok(events.len())
}

/// Reads and verifies a backup file.
pub fn read_backup(path: &Path) -> CliResult<Vec<RawEvent>> {
    let file = std::fs::File::open(path).map_err(|e| crate::local::process::io_error("open", path, e))?;
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
pub async fn restore(nats_url: &str, path: &Path) -> CliResult<usize> {
    let events = read_backup(path)?;
    let log = EventLog::connect(nats_url).await.map_err(unavailable)?;
    log.ensure_streams(&rbee_bus::StreamSettings::from_env().map_err(unavailable)?).await.map_err(unavailable)?;
    if read::last_sequence(&log, subjects::EVENTS_STREAM).await.map_err(unavailable)? > 0 {
        return Err(CliError::new(
            Code::RestoreTargetNotEmpty,
            "the event log already holds events; restore into a fresh cluster (empty JetStream)",
        ));
    }
    // Each event goes after its subject's previous one, so the server checks the order as it did originally.
    let mut last_on_subject: HashMap<String, u64> = HashMap::new();
    for e in &events {
        let mut headers = async_nats::HeaderMap::new();
        for (k, v) in &e.headers {
            if k != HEADER_EXPECTED_LAST_SUBJECT_SEQ {
                headers.insert(k.as_str(), v.as_str());
            }
        }
        let after = last_on_subject.get(&e.subject).copied().unwrap_or(0);
        headers.insert(HEADER_EXPECTED_LAST_SUBJECT_SEQ, after.to_string().as_str());
        let ack = log
            .jetstream()
            .publish_with_headers(e.subject.clone(), headers, e.payload.clone())
            .await
            .map_err(unavailable)?
            .await
            .map_err(|err| {
                CliError::new(Code::RestoreFailed, format!("event {} on {} refused: {err}", e.seq, e.subject))
            })?;
        last_on_subject.insert(e.subject.clone(), ack.sequence);
    }
    Ok(events.len())
}

/// Where `replay` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayPoint {
    Seq(u64),
    TimeMs(u64),
    End,
}

/// Parses `--at`: a stream sequence (`1234`) or a UTC time (`2026-11-22T00:10:00Z`, fraction optional).
pub fn parse_point(at: Option<&str>) -> CliResult<ReplayPoint> {
    let Some(at) = at else { return Ok(ReplayPoint::End) };
    if let Ok(seq) = at.parse::<u64>() {
        return Ok(ReplayPoint::Seq(seq));
    }
    parse_utc_ms(at).map(ReplayPoint::TimeMs).ok_or_else(|| {
        let shown: String = at.chars().take(40).flat_map(char::escape_default).collect();
        CliError::new(
            Code::InvalidArgument,
            format!("--at must be a sequence number or a UTC time like 2026-11-22T00:10:00Z, got \"{shown}\""),
        )
    })
}

fn parse_utc_ms(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let d: Vec<i64> = date.split('-').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let t: Vec<i64> = hms.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if d.len() != 3
        || t.len() != 3
        || !(1..=12).contains(&d[1])
        || !(1..=31).contains(&d[2])
        || t[0] > 23
        || t[1] > 59
        || t[2] > 60
    {
        return None;
    }
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let millis: i64 = format!("{:0<3}", &frac.chars().take(3).collect::<String>()).parse().ok()?;
    let ms = ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + millis;
    u64::try_from(ms).ok()
}

/// Folds `RBEE` from the start up to `point`.
pub async fn replay(log: &EventLog, point: ReplayPoint) -> CliResult<ClusterView> {
    let mut view = ClusterView::default();
    for item in read::read_to_end(log, subjects::EVENTS_STREAM, From::Start).await.map_err(unavailable)? {
        let rec = item.map_err(|e| CliError::new(Code::UndecodableEvent, e.to_string()))?;
        let past = match point {
            ReplayPoint::Seq(seq) => rec.stream_seq > seq,
            ReplayPoint::TimeMs(ms) => rec.envelope.at_ms > ms,
            ReplayPoint::End => false,
        };
        if past {
            break;
        }
        view.apply(&rec);
    }
    Ok(view)
}

/// The view as JSON for people: workers and catalog entries as lists.
pub fn view_json(view: &ClusterView) -> Value {
    json!({
        "at_seq": view.last_seq,
        "digest": view.digest(),
        "nodes": view.registry.nodes.values().collect::<Vec<_>>(),
        "workers": view.registry.workers.values().collect::<Vec<_>>(),
        "catalog": view.catalog.entries.values().collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_points_parse_sequences_and_utc_times() {
        assert_eq!(parse_point(None).unwrap(), ReplayPoint::End);
        assert_eq!(parse_point(Some("42")).unwrap(), ReplayPoint::Seq(42));
        assert_eq!(parse_point(Some("1970-01-01T00:00:01Z")).unwrap(), ReplayPoint::TimeMs(1000));
        assert_eq!(parse_point(Some("2026-11-22T00:10:00.5Z")).unwrap(), ReplayPoint::TimeMs(1_795_306_200_500));
        for bad in ["yesterday", "2026-13-01T00:00:00Z", "2026-11-22 00:10:00", "-1", "\u{7}"] {
            let err = parse_point(Some(bad)).unwrap_err();
            assert_eq!(err.code, Code::InvalidArgument);
            assert!(!err.message.contains('\u{7}'));
        }
    }
}
