//! Steps of recovery.feature: backup/restore/replay and schema upcasting.

use cucumber::{given, then, when};
use rbee_bus::Code;
use rbee_features::infra::Nats;
use rbee_features::poll::eventually;
use rbee_features::signal::{self, Signal};
use serde_json::Value;

use super::{DEADLINE, RbeeWorld};

/// `rbee <args>` against the scenario's cluster, or against `nats` when given.
fn rbee_on(w: &RbeeWorld, nats: Option<&Nats>, args: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = nats.map(Nats::cli_args).unwrap_or_default();
    all.extend(args.iter().map(|a| a.to_string()));
    w.cluster().rbee(&all.iter().map(String::as_str).collect::<Vec<_>>())
}

fn digest(w: &RbeeWorld, nats: Option<&Nats>) -> String {
    let out = rbee_on(w, nats, &["replay", "--digest"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[given("I note the digest of the registry and catalog folded from its log")]
fn note_digest(w: &mut RbeeWorld) {
    w.digest = digest(w, None);
    assert_eq!(w.digest.len(), 64, "a sha256: {}", w.digest);
}

#[when("I back up its log to a file")]
fn back_up(w: &mut RbeeWorld) {
    let dir = rbee_features::scratch_dir("backup");
    w.dl.scratch.push(dir.clone());
    let file = dir.join("rbee.backup");
    let out = w.cluster().rbee(&["backup", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("backed up "));
    w.backup = Some(file);
}

#[when("I restore the file into a fresh, empty JetStream")]
async fn restore_fresh(w: &mut RbeeWorld) {
    let nats = Nats::start().await;
    let out = rbee_on(w, Some(&nats), &["restore", w.backup.as_ref().unwrap().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    w.spare_nats.push(nats);
}

#[then("the registry and catalog folded from the restored log have the same digest")]
fn same_digest(w: &mut RbeeWorld) {
    let restored = digest(w, Some(&w.spare_nats[0]));
    assert_eq!(restored, w.digest);
}

#[then(expr = "restoring the file again into the now non-empty log is refused with {string}")]
fn restore_again_refused(w: &mut RbeeWorld, code: String) {
    let spare = Some(&w.spare_nats[0]);
    let out = rbee_on(w, spare, &["restore", w.backup.as_ref().unwrap().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("error[{code}]")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(digest(w, spare), w.digest, "nothing changed");
}

#[then(expr = "a backup file with one byte changed is refused with {string} and restores nothing")]
async fn corrupt_backup_refused(w: &mut RbeeWorld, code: String) {
    let original = std::fs::read(w.backup.as_ref().unwrap()).unwrap();
    let mut corrupt = original.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] = if corrupt[middle] == b'A' { b'B' } else { b'A' };
    let file = w.backup.as_ref().unwrap().with_file_name("corrupt.backup");
    std::fs::write(&file, corrupt).unwrap();
    let nats = Nats::start().await;
    let out = rbee_on(w, Some(&nats), &["restore", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("error[{code}]")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = rbee_on(w, Some(&nats), &["events", "tail", "--no-follow"]);
    assert!(events.stdout.is_empty(), "nothing was restored: {}", String::from_utf8_lossy(&events.stdout));
    w.spare_nats.push(nats);
}

#[when("an older rbee records a schema 1 model registration in the log")]
async fn old_schema_event(w: &mut RbeeWorld) {
    // Bytes written by rbee 0.1 (schema 1, before model.registered carried memory_required_bytes).
    let body = include_bytes!("../../../bus/tests/fixtures/schema1/model.registered.bin");
    let client = w.cluster().admin_client().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Rbee-Event", "model.registered");
    headers.insert("Rbee-Schema", "1");
    headers.insert("Nats-Msg-Id", "019a0000-0000-7000-8000-000000000002");
    let js = async_nats::jetstream::new(client);
    js.publish_with_headers("rbee.ev.model.SmolLM2-135M-Instruct", headers, body.to_vec().into())
        .await
        .unwrap()
        .await
        .expect("stored");
}

#[then("rbee events tail shows it as model.registered with its memory requirement filled in")]
fn tail_shows_upcast(w: &mut RbeeWorld) {
    let old: Vec<Value> = w
        .cluster()
        .events_of("model.registered")
        .into_iter()
        .filter(|e| e["id"] == "019a0000-0000-7000-8000-000000000002")
        .collect();
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(old[0]["data"]["size_bytes"], 98_362_432u64);
    assert_eq!(old[0]["data"]["memory_required_bytes"], rbee_bus::estimated_memory_bytes(98_362_432));
    assert_eq!(old[0]["data"]["node"], "n1");
}

/// The old event names node `n1`, which no hive of the shared cluster runs: only the upcast event
/// can have put the model there, with the memory estimate the upcast fills in.
#[then("the queen's catalog serves the model it names")]
async fn queen_lists_model(w: &mut RbeeWorld) {
    let url = format!("{}/v1/catalog?node=n1", w.cluster().queen_url);
    let expected_memory = rbee_bus::estimated_memory_bytes(98_362_432);
    eventually("the queen catalogues the model on node n1", DEADLINE, || async {
        let body: Value = w.cluster().http().get(&url).send().await.unwrap().json().await.unwrap();
        let entries = body["data"].as_array().cloned().unwrap_or_default();
        let found = entries.iter().any(|e| {
            e["model"] == "SmolLM2-135M-Instruct"
                && e["node"] == "n1"
                && e["path"] == "/data/models/SmolLM2-135M-Instruct.gguf"
                && e["memory_required_bytes"] == expected_memory
        });
        if found { Ok(()) } else { Err(body) }
    })
    .await;
}

#[then("replaying the log shows the model in the catalog with nothing lost")]
fn replay_shows_model(w: &mut RbeeWorld) {
    let out = w.cluster().rbee(&["replay"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = view["catalog"].as_array().unwrap().iter().find(|e| e["node"] == "n1").cloned().expect("catalog entry");
    assert_eq!(entry["sha256"], "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
    assert_eq!(entry["path"], "/data/models/SmolLM2-135M-Instruct.gguf");
    let tail = w.cluster().events(false).len() as u64;
    assert_eq!(view["at_seq"].as_u64(), Some(tail), "every event folded: the last sequence equals the event count");
}

async fn store(w: &RbeeWorld) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&w.cluster().database_url)
        .await
        .expect("the event store answers")
}

async fn checkpoint_seq(pool: &sqlx::PgPool) -> Option<i64> {
    sqlx::query_scalar("SELECT last_seq FROM projection_checkpoints WHERE name = 'cluster_view'")
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[given("a second queen with the event store, which has checkpointed the registry and catalog")]
async fn queen_with_checkpoint(w: &mut RbeeWorld) {
    w.second_queen = w.start_queen(true).await;
    checkpoint_covers_log(w).await;
}

/// Waits until the stored checkpoint covers every event in the log now.
async fn checkpoint_covers_log(w: &RbeeWorld) {
    let pool = store(w).await;
    let last = w.cluster().events(false).len() as i64;
    eventually("a checkpoint covers the whole log", DEADLINE, || async {
        match checkpoint_seq(&pool).await {
            Some(seq) if seq >= last => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[when("the stored checkpoint is corrupted and that queen is restarted")]
async fn corrupt_and_restart(w: &mut RbeeWorld) {
    w.kill_second_queen();
    let pool = store(w).await;
    // Flip one byte in the middle of the stored snapshot.
    let changed = sqlx::query(
        "UPDATE projection_checkpoints SET snapshot = set_byte(snapshot, length(snapshot) / 2, (get_byte(snapshot, length(snapshot) / 2) + 1) % 256) WHERE name = 'cluster_view'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(changed.rows_affected(), 1);
    w.second_queen = w.start_queen(true).await;
}

async fn health(w: &RbeeWorld) -> Value {
    reqwest::get(format!("{}/health", w.second_queen)).await.unwrap().json().await.unwrap()
}

#[then("the queen reports that the corrupt checkpoint was set aside and the state rebuilt from the log")]
async fn reports_set_aside(w: &mut RbeeWorld) {
    let report = health(w).await["recovery"].as_str().unwrap_or_default().to_string();
    assert!(
        report.contains("set aside")
            && report.contains(Code::CheckpointCorrupt.as_str())
            && report.contains("rebuilt from the log"),
        "{report}"
    );
}

#[then("the corrupt checkpoint is kept aside in Postgres with its reason")]
async fn kept_aside(w: &mut RbeeWorld) {
    let pool = store(w).await;
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM projection_checkpoints_set_aside WHERE name = 'cluster_view'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(reasons.iter().any(|r| r.contains("sha256")), "{reasons:?}");
}

#[then("the queen's registry and catalog equal a replay of the log")]
async fn equal_to_replay(w: &mut RbeeWorld) {
    let replayed = digest(w, None);
    let queen = w.second_queen.clone();
    eventually("the queen's digest equals the replay's", DEADLINE, || async {
        let h: Value = reqwest::get(format!("{queen}/health")).await.unwrap().json().await.unwrap();
        if h["digest"] == replayed.as_str() { Ok(()) } else { Err(h) }
    })
    .await;
}

#[then("a checkpoint is written again")]
async fn checkpoint_again(w: &mut RbeeWorld) {
    checkpoint_covers_log(w).await;
}

#[given("a cluster of my own serving the default model")]
fn own_cluster(w: &mut RbeeWorld) {
    w.own = Some(rbee_features::cluster::Cluster::up(&[]).expect("rbee up succeeds"));
}

#[given("every event of its log is archived in Postgres")]
async fn all_archived(w: &mut RbeeWorld) {
    let pool = store(w).await;
    let last = w.cluster().events(false).len() as i64;
    eventually("the archive holds every event", DEADLINE, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap();
        if n == last { Ok(()) } else { Err(n) }
    })
    .await;
}

#[when("its queen is killed, its checkpoint removed and the older half of its events purged from JetStream")]
async fn kill_purge(w: &mut RbeeWorld) {
    let file = w.cluster().file();
    let pid = file["queen_pid"].as_i64().unwrap() as i32;
    signal::send(pid as u32, Signal::Kill);
    eventually("the queen is gone", DEADLINE, || async {
        if rbee_local::process::is_ours(pid as u32, "rbee-queen") { Err(pid) } else { Ok(()) }
    })
    .await;
    let pool = store(w).await;
    sqlx::query("DELETE FROM projection_checkpoints").execute(&pool).await.unwrap();
    let last = w.cluster().events(false).len() as u64;
    w.purged_below = last / 2 + 1;
    let js = async_nats::jetstream::new(w.cluster().admin_client().await);
    let stream = js.get_stream("RBEE").await.unwrap();
    stream.purge().sequence(w.purged_below).await.expect("purged");
    let left = w.cluster().events(false);
    assert_eq!(left.first().and_then(|e| e["seq"].as_u64()), Some(w.purged_below), "JetStream starts after the purge");
}

#[when("a queen with the event store starts on it")]
async fn queen_starts(w: &mut RbeeWorld) {
    w.second_queen = w.start_queen(true).await;
}

#[then("the queen reports that the purged events were read from the Postgres archive")]
async fn reports_archive(w: &mut RbeeWorld) {
    let report = health(w).await["recovery"].as_str().unwrap_or_default().to_string();
    let expected =
        format!("{} event(s) before sequence {} read from the Postgres archive", w.purged_below - 1, w.purged_below);
    assert!(report.contains(&expected), "{report}");
}

#[then("the queen's registry and catalog have the noted digest")]
async fn noted_digest(w: &mut RbeeWorld) {
    let h = health(w).await;
    assert_eq!(h["digest"], w.digest.as_str(), "{h}");
}

#[then("rbee replay, reading the purged events from the archive as the queen did, gives the noted digest")]
fn replay_reads_the_archive(w: &mut RbeeWorld) {
    assert!(w.purged_below > 1, "nothing was purged");
    assert_eq!(digest(w, None), w.digest, "rbee replay disagrees with the queen on a log JetStream purged");
}

#[given("a cluster of my own serving the default model, checking its catalog every second")]
fn own_cluster_fast_upkeep(w: &mut RbeeWorld) {
    w.own = Some(rbee_features::cluster::Cluster::up(&["--catalog-check-secs", "1"]).expect("rbee up succeeds"));
}

fn catalog(w: &RbeeWorld) -> Vec<Value> {
    let out = w.cluster().rbee(&["models", "--json", "--node", &w.cluster().node]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["models"].as_array().cloned().unwrap_or_default()
}

#[given("rbee models lists the default model on its node")]
fn models_lists(w: &mut RbeeWorld) {
    let entries = catalog(w);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["model"], super::MODEL);
    w.model_path = entries[0]["path"].as_str().unwrap().to_string();
}

#[when("the model file is deleted from the node's disk")]
fn delete_model(w: &mut RbeeWorld) {
    std::fs::remove_file(&w.model_path).expect("the catalogued file existed");
}

#[then("the log records model.removed for that node, naming the missing file")]
async fn model_removed(w: &mut RbeeWorld) {
    let removed = w.one_event("model.removed", "node", &w.cluster().node).await;
    assert!(removed["data"]["reason"].as_str().unwrap().contains(&w.model_path), "{removed}");
}

#[then("rbee models no longer lists it")]
fn models_empty(w: &mut RbeeWorld) {
    assert!(catalog(w).is_empty());
}

#[when("I run rbee projections rebuild")]
fn projections_rebuild(w: &mut RbeeWorld) {
    w.output = Some(w.cluster().rbee(&["projections", "rebuild"]));
}

#[then("it stores a checkpoint with the digest of a replay of the log and sets the previous one aside")]
async fn rebuild_stored(w: &mut RbeeWorld) {
    let out = w.output.as_ref().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("digest {}", digest(w, None))), "{stdout}");
    let pool = store(w).await;
    let replaced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM projection_checkpoints_set_aside WHERE reason = 'replaced by rbee projections rebuild'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(replaced, 1);
    assert!(checkpoint_seq(&pool).await.is_some());
}

#[given("I note the digest of the registry and catalog folded from its log, and its last sequence")]
fn note_digest_and_end(w: &mut RbeeWorld) {
    w.digest = digest(w, None);
    let events = w.cluster().events(false);
    w.noted_seq = events.last().and_then(|e| e["seq"].as_u64()).expect("events");
    w.noted_workers = w.cluster().workers().iter().map(|x| x["id"].as_str().unwrap().to_string()).collect();
}

#[when("I wipe its data directory and run rbee up --restore with the file in a fresh one")]
fn wipe_and_restore(w: &mut RbeeWorld) {
    let old = w.own.take().expect("a cluster of my own");
    old.down();
    assert!(!old.data_dir.exists(), "the data directory is gone");
    let file = w.backup.clone().expect("a backup").display().to_string();
    let restored = rbee_features::cluster::Cluster::up(&["--restore", &file]).expect("rbee up --restore");
    assert!(restored.up_output.contains("restored "), "{}", restored.up_output);
    w.own = Some(restored);
}

#[then("the registry and catalog folded from the restored log up to that sequence have the noted digest")]
fn restored_digest(w: &mut RbeeWorld) {
    let at = w.noted_seq.to_string();
    let out = w.cluster().rbee(&["replay", "--at", &at, "--digest"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), w.digest);
}

#[then("no worker the backup recorded is offered, only the one the new cluster started")]
fn old_workers_gone(w: &mut RbeeWorld) {
    let workers = w.cluster().workers();
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert!(!w.noted_workers.iter().any(|old| workers[0]["id"] == old.as_str()), "{workers:?}");
    assert_eq!(workers[0]["node"], w.cluster().node.as_str(), "{workers:?}");
}
