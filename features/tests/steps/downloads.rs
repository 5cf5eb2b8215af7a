//! Downloads from the model-hub double: progress, faults, resume, claims, limits, a full disk.
//! Every `then` reads the running system: the `rbee` CLI's output and exit code, the event log, the
//! catalog, the files on the node, and the requests the hub saw.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cucumber::{given, then, when};
use rbee_features::hub::Fault;
use rbee_features::poll::eventually;
use rbee_features::signal::{self, Signal};
use serde_json::Value;

use super::RbeeWorld;
use crate::{HUB_FILE, HUB_REPO, download_env, downloads, hub};

const CHUNK: u64 = 4 << 20;

/// What a download scenario set up and saw.
#[derive(Default)]
pub struct Dl {
    /// The model's name in the cluster: unique per scenario.
    pub(super) model: String,
    pub(super) node: String,
    /// The hub file pulled: (repo, file).
    pub(super) file: (String, String),
    /// The hub's request count when the scenario began.
    pub(super) mark: usize,
    /// A hive the scenario runs itself, its data directory and environment.
    pub(super) hive: Option<std::process::Child>,
    pub(super) hive_dir: PathBuf,
    pub(super) hive_env: Vec<(String, String)>,
    /// What the scenario's hive exit looked like, and how long its stop took.
    pub(super) hive_exit: Option<(std::process::ExitStatus, Duration)>,
    /// A worker's pid before the hive was restarted.
    pub(super) pid_before: i32,
    /// A process keeping the disk busy (its process group is killed at the end).
    pub(super) disk_load: Option<std::process::Child>,
    /// Memory the scenario holds on purpose (freed at its end).
    pub(super) hog: Vec<u8>,
    /// Where the hub stalls the scenario's download.
    pub(super) stall_at: u64,
    /// Scratch directories the scenario made (removed at its end).
    pub(super) scratch: Vec<PathBuf>,
    /// A worker binary the scenario made.
    pub(super) worker_bin: PathBuf,
    /// A filesystem mounted for the scenario (unmounted at the end).
    pub(super) mount: Option<PathBuf>,
    pub(super) pull: Option<Output>,
    pub(super) pull_took: Duration,
    pub(super) background: Vec<tokio::task::JoinHandle<(Output, Duration)>>,
    /// The last chunk offset the log recorded before the hive was killed.
    offset_at_kill: u64,
}

impl Drop for Dl {
    fn drop(&mut self) {
        if let Some(mut load) = self.disk_load.take() {
            signal::send_to_group(load.id(), Signal::Kill);
            let _ = load.wait();
        }
        if let Some(mut hive) = self.hive.take() {
            signal::send(hive.id(), Signal::Terminate);
            let _ = hive.wait();
        }
        if let Some(mount) = &self.mount {
            let _ = Command::new("umount").arg(mount).status();
        }
        // The scenario's hive directory holds model copies and disk-load files: gone with it.
        if !self.hive_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.hive_dir);
        }
        for dir in &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn reference(dl: &Dl) -> String {
    format!("hf:{}:{}", dl.file.0, dl.file.1)
}

fn pull_command(w: &RbeeWorld) -> Command {
    let dl = &w.dl;
    let mut cmd = rbee_features::cluster::rbee_command(
        &w.cluster().data_dir,
        &["models", "pull", &reference(dl), "--name", &dl.model, "--node", &dl.node],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn run_pull(w: &mut RbeeWorld) {
    let started = Instant::now();
    let out = pull_command(w).output().expect("rbee models pull runs");
    (w.dl.pull, w.dl.pull_took) = (Some(out), started.elapsed());
}

fn pull_in_background(w: &mut RbeeWorld) {
    let child = pull_command(w).spawn().expect("rbee models pull runs");
    let started = Instant::now();
    w.dl.background
        .push(tokio::task::spawn_blocking(move || (child.wait_with_output().expect("pull output"), started.elapsed())));
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn download_events(w: &RbeeWorld, kind: &str) -> Vec<Value> {
    let id = rbee_bus::download_id(&w.dl.node, &w.dl.model);
    w.cluster().events_of(kind).into_iter().filter(|e| e["data"]["download"] == id.as_str()).collect()
}

fn progressed_offsets(w: &RbeeWorld) -> Vec<u64> {
    download_events(w, "download.progressed").iter().map(|e| e["data"]["offset"].as_u64().expect("offset")).collect()
}

fn catalog_entry(w: &RbeeWorld) -> Option<Value> {
    let out = w.cluster().rbee(&["models", "--json", "--node", &w.dl.node]);
    assert!(out.status.success(), "rbee models failed: {}", text(&out));
    let listing: Value = serde_json::from_slice(&out.stdout).expect("models JSON");
    listing["models"].as_array().into_iter().flatten().find(|m| m["model"] == w.dl.model.as_str()).cloned()
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).expect("model file");
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).expect("read model file");
    hex::encode(hasher.finalize())
}

/// The models directory of the hive that serves the scenario's node.
fn models_dir(w: &RbeeWorld) -> PathBuf {
    if w.dl.hive_dir.as_os_str().is_empty() {
        w.cluster().data_dir.join("models")
    } else {
        w.dl.hive_dir.join("models")
    }
}

pub(super) async fn wait_for_progress(w: &RbeeWorld, percent: u64) -> u64 {
    let want = rbee_features::default_model_size() * percent / 100;
    eventually(&format!("the download passes {percent}%"), Duration::from_secs(60), || async {
        let last = progressed_offsets(w).into_iter().max().unwrap_or(0);
        if last >= want { Ok(last) } else { Err(last) }
    })
    .await
}

#[given("a cluster whose hives download from the model hub double")]
fn downloads_cluster(w: &mut RbeeWorld) {
    w.shared = Some(downloads());
    hub().clear_faults();
    w.dl.model = format!("dl-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    w.dl.node = w.cluster().node.clone();
    w.dl.file = (HUB_REPO.into(), HUB_FILE.into());
    w.dl.mark = hub().seen("").len();
}

#[given("the default model was pulled from the hub")]
fn pulled_before(w: &mut RbeeWorld) {
    run_pull(w);
    let out = w.dl.pull.as_ref().unwrap();
    assert!(out.status.success(), "the first pull failed: {}", text(out));
}

#[given(expr = "the hub answers {int} for the default model")]
fn hub_answers(_w: &mut RbeeWorld, status: u16) {
    let fault = match status {
        404 => Fault::NotFound,
        403 => Fault::Forbidden,
        other => panic!("no such fault: {other}"),
    };
    hub().set_fault(HUB_REPO, HUB_FILE, fault);
}

#[given(expr = "the hub answers 429 with Retry-After {int} for the default model once")]
fn hub_rate_limits(_w: &mut RbeeWorld, secs: u64) {
    hub().set_fault(HUB_REPO, HUB_FILE, Fault::RateLimited { retry_after_secs: secs, times: 1 });
}

fn times(how_often: &str) -> u32 {
    if how_often == "once" { 1 } else { u32::MAX }
}

#[given(regex = r"^the hub stalls at (\d+)% of the default model (once|every time)$")]
fn hub_stalls(_w: &mut RbeeWorld, percent: u64, how_often: String) {
    hub().set_fault(
        HUB_REPO,
        HUB_FILE,
        Fault::StallAt { offset: rbee_features::default_model_size() * percent / 100, times: times(&how_often) },
    );
}

#[given(regex = r"^the hub cuts the connection at (\d+)% of the default model (once|every time)$")]
fn hub_cuts(_w: &mut RbeeWorld, percent: u64, how_often: String) {
    hub().set_fault(
        HUB_REPO,
        HUB_FILE,
        Fault::CutAt { offset: rbee_features::default_model_size() * percent / 100, times: times(&how_often) },
    );
}

#[given(expr = "the hub serves at most {int} MB\\/s")]
fn hub_throttled(_w: &mut RbeeWorld, mb: u64) {
    hub().throttle(mb * 1_000_000);
}

#[given("a second hive on the cluster's node")]
async fn second_hive_same_node(w: &mut RbeeWorld) {
    let c = w.cluster();
    let (node, dir) = (c.node.clone(), c.data_dir.clone());
    w.dl.hive = Some(c.spawn_hive(&node, &dir, &download_env()));
    // Both hives read the node's commands; give the new one a moment to subscribe.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[given("a hive of its own on a new node")]
async fn own_hive_plain(w: &mut RbeeWorld) {
    w.own_hive(owned(download_env()), None).await;
}

fn owned(env: Vec<(&'static str, String)>) -> Vec<(String, String)> {
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

#[given(expr = "a hive of its own on a new node, limited to {int} bytes per second")]
async fn own_hive_limited(w: &mut RbeeWorld, limit: u64) {
    let mut env = owned(download_env());
    env.push(("RBEE_DOWNLOAD_LIMIT_BYTES_PER_SEC".into(), limit.to_string()));
    w.own_hive(env, None).await;
}

#[given(expr = "a hive of its own on a new node, its models on a {int} MB filesystem")]
async fn own_hive_small_disk(w: &mut RbeeWorld, mb: u64) {
    w.own_hive(owned(download_env()), Some(mb)).await;
}

#[when("I pull the default model from the hub")]
#[when("I pull the default model to that node")]
fn pull(w: &mut RbeeWorld) {
    run_pull(w);
}

#[when("I pull the default model to that node in the background")]
fn pull_background(w: &mut RbeeWorld) {
    pull_in_background(w);
}

#[when("two pulls of the default model to the node run at once")]
fn two_pulls(w: &mut RbeeWorld) {
    pull_in_background(w);
    pull_in_background(w);
}

#[when("I pull a hub file whose published checksum is wrong")]
fn pull_wrong_checksum(w: &mut RbeeWorld) {
    w.dl.file = ("rbee-test/bad-GGUF".into(), "wrong-checksum.gguf".into());
    hub().publish(&w.dl.file.0, &w.dl.file.1, rbee_features::default_model_file(), &"0".repeat(64));
    run_pull(w);
}

#[when("I pull a hub file with a corrupt GGUF header")]
fn pull_corrupt(w: &mut RbeeWorld) {
    // The first 8 MiB of the real model with its magic broken; the hub publishes its true checksum.
    let mut bytes = std::fs::read(rbee_features::default_model_file()).expect("model");
    bytes.truncate(8 << 20);
    bytes[..4].copy_from_slice(b"GGUX");
    let dir = rbee_features::scratch_dir("corrupt");
    w.dl.scratch.push(dir.clone());
    let path = dir.join("corrupt.gguf");
    std::fs::write(&path, &bytes).unwrap();
    w.dl.file = ("rbee-test/bad-GGUF".into(), "corrupt-header.gguf".into());
    hub().publish(&w.dl.file.0, &w.dl.file.1, path.clone(), &sha256_of(&path));
    run_pull(w);
}

#[when(expr = "the hive is killed once the download passed {int}%")]
async fn kill_hive_at(w: &mut RbeeWorld, percent: u64) {
    wait_for_progress(w, percent).await;
    let mut hive = w.dl.hive.take().expect("the scenario's hive");
    hive.kill().expect("SIGKILL the hive");
    hive.wait().expect("reap the hive");
    w.dl.offset_at_kill = progressed_offsets(w).into_iter().max().unwrap_or(0);
}

#[when("the hive is started again")]
fn restart_hive(w: &mut RbeeWorld) {
    w.dl.hive = Some(w.cluster().spawn_hive(&w.dl.node, &w.dl.hive_dir, &w.dl.hive_env));
}

#[when(expr = "the filesystem is filled once the download passed {int}%")]
async fn fill_disk(w: &mut RbeeWorld, percent: u64) {
    use std::io::Write;
    wait_for_progress(w, percent).await;
    let filler = w.dl.mount.clone().expect("a mounted filesystem").join("filler");
    let mut file = std::fs::File::create(&filler).expect("filler file");
    let block = vec![0u8; 1 << 20];
    while file.write_all(&block).is_ok() {}
}

#[then("the pull succeeds, printing progress up to 100%")]
fn pull_succeeded_with_progress(w: &mut RbeeWorld) {
    let out = w.dl.pull.as_ref().expect("a pull ran");
    let printed = text(out);
    assert!(out.status.success(), "the pull failed: {printed}");
    assert!(printed.contains("100% ("), "no progress up to 100%: {printed}");
    assert!(printed.contains(&format!("{} is on {}", w.dl.model, w.dl.node)), "{printed}");
}

#[then(expr = "the pull fails with exit code {int} and {string}")]
async fn pull_failed(w: &mut RbeeWorld, code: i32, error: String) {
    if w.dl.pull.is_none() {
        w.dl.pull = w.background_pulls().await.pop();
    }
    let out = w.dl.pull.as_ref().expect("a pull ran");
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("error[{error}]")), "{}", text(out));
}

#[then(expr = "the pull's error mentions {string}")]
fn pull_error_mentions(w: &mut RbeeWorld, needle: String) {
    let stderr = String::from_utf8_lossy(&w.dl.pull.as_ref().unwrap().stderr).into_owned();
    assert!(stderr.contains(&needle), "{stderr}");
}

#[then("both pulls succeed")]
async fn both_pulls_succeed(w: &mut RbeeWorld) {
    let outs = w.background_pulls().await;
    assert_eq!(outs.len(), 2);
    for out in &outs {
        assert!(out.status.success(), "a pull failed: {}", text(out));
    }
}

/// The CLI prints `Resuming from P% (...)`, P the share of the file recorded before the kill.
#[then("the pull succeeds and printed the percentage the download resumed from")]
async fn printed_resume_point(w: &mut RbeeWorld) {
    let out = w.background_pulls().await.pop().expect("a background pull");
    assert!(out.status.success(), "the pull failed: {}", text(&out));
    let percent = w.dl.offset_at_kill * 100 / rbee_features::default_model_size();
    assert!(percent >= 60, "the kill came at {percent}%, before 60%");
    assert!(text(&out).contains(&format!("Resuming from {percent}% (")), "not resumed from {percent}%: {}", text(&out));
}

#[then("the download was recorded in chunks of 4 MiB up to the file's size")]
fn recorded_in_chunks(w: &mut RbeeWorld) {
    let size = rbee_features::default_model_size();
    let offsets = progressed_offsets(w);
    let expected: Vec<u64> = (1..=size / CHUNK).map(|i| i * CHUNK).collect();
    assert_eq!(offsets, expected, "one download.progressed per 4 MiB chunk, in order");
    let finished = download_events(w, "download.finished");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["data"]["size_bytes"], size);
    assert_eq!(finished[0]["data"]["sha256"], rbee_local::model::DEFAULT_SHA256);
}

#[then("the model is catalogued on the node with the hub's checksum, and its file has that checksum")]
async fn catalogued_and_verified(w: &mut RbeeWorld) {
    if !w.dl.background.is_empty() {
        w.background_pulls().await;
    }
    let entry = catalog_entry(w).expect("the model is in the catalog");
    assert_eq!(entry["sha256"], rbee_local::model::DEFAULT_SHA256);
    let path = PathBuf::from(entry["path"].as_str().expect("path"));
    assert!(path.starts_with(models_dir(w)), "{} is not in the node's model store", path.display());
    assert_eq!(sha256_of(&path), rbee_local::model::DEFAULT_SHA256);
}

#[then("the model is not catalogued and no file of it is left on the node")]
fn nothing_left(w: &mut RbeeWorld) {
    assert!(catalog_entry(w).is_none(), "the model was catalogued");
    let prefix = format!("{}.gguf", w.dl.model);
    let left: Vec<String> = std::fs::read_dir(models_dir(w))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[then(expr = "the log holds {int} download.retried with code {string}")]
fn retried(w: &mut RbeeWorld, n: usize, code: String) {
    let retried = download_events(w, "download.retried");
    let with_code = retried.iter().filter(|e| e["data"]["code"] == code.as_str()).count();
    assert_eq!(with_code, n, "{retried:?}");
}

#[then("the hub got one Range request, from no earlier than the last recorded chunk and no later than the reset")]
fn ranged_after_reset(w: &mut RbeeWorld) {
    let cut = rbee_features::default_model_size() * 40 / 100;
    let last_chunk = cut / CHUNK * CHUNK;
    let ranges: Vec<Option<String>> = w.hub_gets().into_iter().map(|s| s.range).collect();
    assert_eq!(ranges.len(), 2, "a full GET, then one ranged: {ranges:?}");
    let from: u64 = ranges[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .expect("a Range header");
    assert!((last_chunk..=cut).contains(&from), "resumed from {from}, not within [{last_chunk}, {cut}]");
}

#[then("the new claim resumed from the last chunk recorded before the kill, with a Range request from there")]
fn resumed_after_kill(w: &mut RbeeWorld) {
    let starts = download_events(w, "download.started");
    assert_eq!(starts.len(), 2, "{starts:?}");
    let at_kill = w.dl.offset_at_kill;
    assert!(at_kill > 0);
    assert_eq!(starts[1]["data"]["resume_from"], at_kill);
    let ranges: Vec<Option<String>> = w.hub_gets().into_iter().map(|s| s.range).collect();
    assert_eq!(ranges.last().cloned().flatten(), Some(format!("bytes={at_kill}-")), "{ranges:?}");
}

#[then("the log holds one download.started for the model, and the hub served the file once")]
#[then("the hub served the file only once, and the log holds one download.started for the model")]
fn downloaded_once(w: &mut RbeeWorld) {
    assert_eq!(download_events(w, "download.started").len(), 1);
    assert_eq!(w.hub_gets().len(), 1, "{:?}", w.hub_gets());
}

#[then("the download took at least as long as the limit allows, and every chunk reported a rate under it")]
fn under_the_limit(w: &mut RbeeWorld) {
    let limit: u64 =
        w.dl.hive_env
            .iter()
            .find(|(k, _)| k == "RBEE_DOWNLOAD_LIMIT_BYTES_PER_SEC")
            .expect("a limit")
            .1
            .parse()
            .unwrap();
    let floor = Duration::from_secs_f64(rbee_features::default_model_size() as f64 / limit as f64);
    assert!(w.dl.pull_took >= floor, "took {:?}, the limit allows no less than {floor:?}", w.dl.pull_took);
    for e in download_events(w, "download.progressed") {
        let rate = e["data"]["bytes_per_sec"].as_u64().unwrap();
        assert!(rate <= limit + limit / 50, "a chunk reported {rate} B/s over the limit {limit}");
    }
}

#[then(expr = "the hub's next request came at least {int} seconds after the 429")]
fn waited_retry_after(w: &mut RbeeWorld, secs: u64) {
    let gets = w.hub_gets();
    let i = gets.iter().position(|s| s.status == 429).expect("a 429 answer");
    let next = gets.get(i + 1).expect("a request after the 429");
    let gap = next.at - gets[i].at;
    assert!(gap >= Duration::from_secs(secs), "the retry came {gap:?} after the 429");
}

#[when("a worker for it is started from the hub reference")]
fn worker_from_hub(w: &mut RbeeWorld) {
    let r = reference(&w.dl);
    let args =
        ["workers", "start", "--node", &w.dl.node, "--model", &r, "--model-name", &w.dl.model, "--timeout-secs", "60"];
    w.output = Some(w.cluster().rbee(&args));
    // The worker is this scenario's: stopped at its end, so the shared cluster stays without workers.
    let pids: Vec<i32> = w
        .cluster()
        .workers()
        .iter()
        .filter(|x| x["model"] == w.dl.model.as_str())
        .filter_map(|x| x["pid"].as_i64())
        .map(|p| p as i32)
        .collect();
    w.stop_at_end.extend(pids);
}

#[given("a worker for it is started from the hub reference")]
fn worker_from_hub_started(w: &mut RbeeWorld) {
    worker_from_hub(w);
    let out = w.output.take().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[then("the worker becomes ready and answers a chat completion")]
async fn worker_answers(w: &mut RbeeWorld) {
    let out = w.output.as_ref().expect("workers start ran");
    assert!(out.status.success(), "{}", text(out));
    let body =
        serde_json::json!({"model": w.dl.model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4});
    let resp = w.post_chat_body(&body).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0, "{answer}");
}

#[then(expr = "the hub got every request for the file with {string}")]
fn hub_saw_token(w: &mut RbeeWorld, authorization: String) {
    let needle = format!("{}/{}", w.dl.file.0, w.dl.file.1);
    let seen: Vec<_> = hub().seen("")[w.dl.mark..].iter().filter(|s| s.path == needle).cloned().collect();
    assert!(seen.iter().any(|s| s.method == "GET"), "{seen:?}");
    assert!(seen.iter().all(|s| s.authorization.as_deref() == Some(authorization.as_str())), "{seen:?}");
}

#[when("I remove the model with rbee models rm")]
fn remove_model(w: &mut RbeeWorld) {
    w.output = Some(w.cluster().rbee(&["models", "rm", &w.dl.model, "--node", &w.dl.node]));
}

#[then("rbee models rm says it freed the model's size")]
fn removed_and_freed(w: &mut RbeeWorld) {
    let out = w.output.as_ref().unwrap();
    assert!(out.status.success(), "{}", text(out));
    let freed = format!("freed {:.1} MB", rbee_features::default_model_size() as f64 / 1_048_576.0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&freed), "{}", text(out));
}

#[then(expr = "rbee models rm fails with exit code {int} and {string}")]
fn remove_failed(w: &mut RbeeWorld, code: i32, error: String) {
    let out = w.output.as_ref().unwrap();
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("error[{error}]")), "{}", text(out));
}

#[then("the log records model.removed for the model, removed on request")]
fn removed_on_request(w: &mut RbeeWorld) {
    let removed: Vec<Value> = w
        .cluster()
        .events_of("model.removed")
        .into_iter()
        .filter(|e| e["data"]["model"] == w.dl.model.as_str())
        .collect();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(removed[0]["data"]["reason"].as_str().unwrap().contains("rbee models rm"));
}

#[when("I pull the default model's repository without naming the file")]
fn pull_repository(w: &mut RbeeWorld) {
    let started = Instant::now();
    let repo = format!("hf:{}", w.dl.file.0);
    let args = ["models", "pull", &repo, "--name", &w.dl.model, "--node", &w.dl.node];
    let out = w.cluster().rbee(&args);
    (w.dl.pull, w.dl.pull_took) = (Some(out), started.elapsed());
}
