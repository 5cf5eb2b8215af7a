//! Old logs replay forever: a body of every event type of every schema, as that schema wrote it,
//! decodes to the same event of today's types. The bodies are `tests/fixtures/schema<N>/<type>.bin`;
//! the envelope each must become, as JSON, is beside it in `<type>.json`.

use std::path::{Path, PathBuf};

use rbee_bus::envelope::SCHEMA_VERSION;
use rbee_bus::schema::{Framed, v1, v2, v3, v4, v5};
use rbee_bus::*;
use serde::Serialize;
use serde_json::Value;

fn fixtures(schema: u16) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/schema{schema}"))
}

/// How many event types each schema had.
const TYPES_PER_SCHEMA: [(u16, usize); 6] = [(1, 13), (2, 15), (3, 24), (4, 24), (5, 26), (6, 26)];

#[test]
fn every_event_type_of_every_schema_decodes_to_its_expected_event() {
    assert_eq!(TYPES_PER_SCHEMA.last().unwrap().0, SCHEMA_VERSION, "a new schema needs its fixtures");
    for (schema, types) in TYPES_PER_SCHEMA {
        let mut seen = 0;
        for entry in std::fs::read_dir(fixtures(schema)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "bin") {
                continue;
            }
            let kind = path.file_stem().unwrap().to_str().unwrap().to_string();
            let body = std::fs::read(&path).unwrap();
            let envelope = Envelope::decode_schema(&schema.to_string(), &body)
                .unwrap_or_else(|e| panic!("schema {schema} {kind}: {e}"));
            assert_eq!(envelope.event.kind(), kind, "schema {schema}: {} holds another type", path.display());
            let expected: Value = serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
            assert_eq!(serde_json::to_value(&envelope).unwrap(), expected, "schema {schema} {kind}");
            seen += 1;
        }
        assert_eq!(seen, types, "schema {schema}: one fixture per event type");
    }
}

/// Today's schema writes exactly what its fixtures hold: a change to an event's shape without a new
/// schema version fails here.
#[test]
fn todays_bodies_are_byte_for_byte_the_fixtures_of_todays_schema() {
    for event in samples() {
        let path = fixtures(SCHEMA_VERSION).join(format!("{}.bin", event.kind()));
        assert_eq!(postcard::to_stdvec(&frame(event.clone())).unwrap(), std::fs::read(&path).unwrap(), "{path:?}");
    }
}

/// Writes the fixtures a new schema needs (never overwrites one): run once when a schema is frozen,
/// `cargo test -p rbee-bus --test schemas -- --ignored`, and read the JSON it wrote before committing.
#[test]
#[ignore]
fn write_missing_fixtures() {
    for event in samples() {
        let json = serde_json::to_value(&event).unwrap();
        // Each older schema's shape of the same fact, where the schema had that type.
        write_if_missing(1, event.kind(), serde_json::from_value::<v1::Event>(json.clone()).ok());
        write_if_missing(2, event.kind(), serde_json::from_value::<v2::Event>(json.clone()).ok());
        write_if_missing(3, event.kind(), serde_json::from_value::<v3::Event>(json.clone()).ok());
        write_if_missing(4, event.kind(), serde_json::from_value::<v4::Event>(json.clone()).ok());
        write_if_missing(5, event.kind(), serde_json::from_value::<v5::Event>(json).ok());
        write_if_missing(SCHEMA_VERSION, event.kind(), Some(event.clone()));
    }
}

fn write_if_missing<E: Serialize>(schema: u16, kind: &str, event: Option<E>) {
    let Some(event) = event else { return };
    let bin = fixtures(schema).join(format!("{kind}.bin"));
    if !bin.exists() {
        std::fs::create_dir_all(fixtures(schema)).unwrap();
        std::fs::write(&bin, postcard::to_stdvec(&frame(event)).unwrap()).unwrap();
    }
    let json = bin.with_extension("json");
    if !json.exists() {
        let envelope = Envelope::decode_schema(&schema.to_string(), &std::fs::read(&bin).unwrap()).unwrap();
        std::fs::write(json, serde_json::to_string_pretty(&envelope).unwrap() + "\n").unwrap();
    }
}

fn frame<E>(event: E) -> Framed<E> {
    Framed {
        id: "01938a6e-7c2d-7000-8000-000000000001".parse().unwrap(),
        version: 1,
        at_ms: 1_764_000_000_000,
        correlation: Some("chatcmpl-1".into()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        event,
    }
}

/// One event of every type of today's schema.
fn samples() -> Vec<Event> {
    let (w, n, m) = ("n1-w1".to_string(), "n1".to_string(), "SmolLM2-135M-Instruct".to_string());
    let download = download_id(&n, &m);
    let sha = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".to_string();
    vec![
        Event::NodeRegistered(NodeRegistered {
            node: n.clone(),
            ram_total_bytes: 24 << 30,
            ram_available_bytes: 20 << 30,
            cores: 2,
            disk_free_bytes: 80 << 30,
            hive_version: "0.1.0".into(),
        }),
        Event::WorkerStartRequested(WorkerStartRequested {
            node: n.clone(),
            worker: w.clone(),
            model: m.clone(),
            source: "hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:model.Q4_1.gguf".into(),
            sha256: Some(sha.clone()),
            slots: 2,
            backend: "cuda".into(),
            device: Some(1),
        }),
        Event::WorkerRegistered(WorkerRegistered {
            worker: w.clone(),
            node: n.clone(),
            model: m.clone(),
            slots: 2,
            pid: 4242,
            backend: "cpu".into(),
        }),
        Event::WorkerStateChanged(WorkerStateChanged {
            worker: w.clone(),
            node: n.clone(),
            state: WorkerState::Draining,
            context_length: 8192,
        }),
        Event::WorkerExited(WorkerExited { worker: w.clone(), node: n.clone(), exit_code: None, signal: Some(9) }),
        Event::WorkerHeartbeat(WorkerHeartbeat { worker: w.clone(), node: n.clone(), busy_slots: 1 }),
        Event::SlotClaimed(SlotClaimed { worker: w.clone(), node: n.clone(), slot: 1, request: "chatcmpl-1".into() }),
        Event::SlotReleased(SlotReleased { worker: w.clone(), node: n.clone(), slot: 1, request: "chatcmpl-1".into() }),
        Event::RequestAccepted(RequestAccepted {
            request: "chatcmpl-1".into(),
            model: m.clone(),
            worker: w.clone(),
            slot: 1,
            max_tokens: Some(64),
            stream: true,
            key: Some("k-0123456789ab".into()),
        }),
        Event::RequestFinished(RequestFinished {
            request: "chatcmpl-1".into(),
            worker: w.clone(),
            finish_reason: FinishReason::Error,
            prompt_tokens: 31,
            completion_tokens: 7,
            time_to_first_token_ms: 12,
            duration_ms: 80,
            error_code: Some(Code::InferenceFailed),
        }),
        Event::RequestCancelled(RequestCancelled { request: "chatcmpl-1".into(), reason: "deleted".into() }),
        Event::ModelRegistered(ModelRegistered {
            model: m.clone(),
            node: n.clone(),
            path: "/var/lib/rbee/models/SmolLM2-135M-Instruct.gguf".into(),
            size_bytes: 98_362_432,
            sha256: sha.clone(),
            memory_required_bytes: 118_034_918,
        }),
        Event::WorkerStartFailed(WorkerStartFailed {
            worker: w.clone(),
            node: n.clone(),
            code: Code::InsufficientRam,
            message: "needs 118 MB of RAM, 90 MB available".into(),
        }),
        Event::WorkerRemoved(WorkerRemoved { worker: w.clone(), node: n.clone(), reason: "stale".into() }),
        Event::ModelRemoved(ModelRemoved { model: m.clone(), node: n.clone(), reason: "file_missing".into() }),
        Event::ModelPullRequested(ModelPullRequested {
            node: n.clone(),
            model: m.clone(),
            source: "https://example.invalid/model.gguf".into(),
            sha256: None,
        }),
        Event::ModelRemoveRequested(ModelRemoveRequested { node: n.clone(), model: m.clone() }),
        Event::DownloadStarted(DownloadStarted {
            download: download.clone(),
            node: n.clone(),
            model: m.clone(),
            source: "hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF".into(),
            total_bytes: 98_362_432,
            sha256: Some(sha.clone()),
            resume_from: 8 << 20,
            owner: "hive-1".into(),
            pid: 77,
        }),
        Event::DownloadProgressed(DownloadProgressed {
            download: download.clone(),
            offset: 16 << 20,
            total_bytes: 98_362_432,
            sha256_state: (0..32).collect(),
            bytes_per_sec: 12_000_000,
        }),
        Event::DownloadRetried(DownloadRetried {
            download: download.clone(),
            attempt: 2,
            code: Code::DownloadTimeout,
            message: "no bytes for 30s".into(),
            delay_ms: 1000,
        }),
        Event::DownloadFinished(DownloadFinished { download: download.clone(), size_bytes: 98_362_432, sha256: sha }),
        Event::DownloadFailed(DownloadFailed {
            download,
            code: Code::ChecksumMismatch,
            message: "the file's sha256 is not the published one".into(),
        }),
        Event::WorkerSignalled(WorkerSignalled {
            worker: w,
            node: n.clone(),
            pid: 4242,
            signal: 15,
            reason: "shutdown".into(),
        }),
        Event::ModelRemoveRefused(ModelRemoveRefused {
            model: m,
            node: n,
            code: Code::ModelInUse,
            message: "worker n1-w1 serves it".into(),
        }),
        Event::KeyCreated(KeyCreated {
            key: "k-0123456789ab".into(),
            name: "ci".into(),
            secret_sha256: "ab".repeat(32),
            limits: KeyLimits { requests_per_minute: Some(60), tokens_per_minute: None, concurrent_requests: Some(2) },
        }),
        Event::KeyRevoked(KeyRevoked { key: "k-0123456789ab".into(), reason: "rotated".into() }),
    ]
}
