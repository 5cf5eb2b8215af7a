//! Hive benchmarks, in one run against real processes: download throughput from a loopback hub
//! double through `rbee models pull` vs `curl` fetching the same file, with 8 MiB chunk events and
//! with (almost) none, SHA-256 alone; time from `rbee workers start` to ready; time for a hive to stop
//! 5 workers. Needs release binaries and curl:
//! `cargo build --release --workspace --bins && cargo bench -p rbee-features --bench hive`

use std::process::Command;
use std::time::{Duration, Instant};

use rbee_features::bench::median;
use rbee_features::cluster::{Cluster, unique_node};
use rbee_features::hub::Hub;
use rbee_features::signal::{self, Signal};

const RUNS: usize = 5;
const REPO: &str = "bench/SmolLM2-GGUF";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn run_ok(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Seconds from `download.started` to `download.finished` of a download, by the events' clocks.
fn transfer_secs(cluster: &Cluster, node: &str, model: &str) -> f64 {
    let id = rbee_bus::download_id(node, model);
    let out = cluster
        .rbee_command_for(&["events", "tail", "--no-follow", "--no-heartbeats", "--type", "download."])
        .output()
        .unwrap();
    let at = |kind: &str| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["type"] == kind && e["data"]["download"] == id.as_str())
            .and_then(|e| e["at_ms"].as_u64())
            .expect("download events")
    };
    (at("download.finished") - at("download.started")) as f64 / 1000.0
}

/// Seconds per `rbee models pull` into a fresh hive whose chunks are `chunk` bytes: end to end,
/// and the transfer alone (claim to verified file).
fn pulls(cluster: &Cluster, hub: &Hub, chunk: u64) -> Vec<(f64, f64)> {
    let node = unique_node();
    let dir = rbee_features::scratch_dir("bench-hive");
    let env = vec![("HF_ENDPOINT", hub.url.clone()), ("RBEE_DOWNLOAD_CHUNK_BYTES", chunk.to_string())];
    let mut hive = rbee_features::KillOnDrop(cluster.spawn_hive(&node, &dir, &env));
    std::thread::sleep(Duration::from_secs(1));
    let times = (0..RUNS)
        .map(|i| {
            let name = format!("bench{chunk}x{i}");
            let cmd = cluster.rbee_command_for(&[
                "models",
                "pull",
                &format!("hf:{REPO}:{FILE}"),
                "--name",
                &name,
                "--node",
                &node,
            ]);
            let t0 = Instant::now();
            run_ok(cmd, "rbee models pull");
            let took = t0.elapsed().as_secs_f64();
            let _ = std::fs::remove_file(dir.join("models").join(format!("{name}.gguf")));
            (took, transfer_secs(cluster, &node, &name))
        })
        .collect();
    signal::send(hive.0.id(), Signal::Terminate);
    let _ = hive.0.wait();
    let _ = std::fs::remove_dir_all(&dir);
    times
}

/// Seconds per `curl` of the file, and per `curl` followed by an fsync of it (what a download that
/// survives a power cut costs at least).
fn curls(hub: &Hub) -> Vec<(f64, f64)> {
    let out = rbee_features::scratch_dir("bench-curl").join("model.gguf");
    (0..RUNS)
        .map(|_| {
            let mut cmd = Command::new("curl");
            cmd.args(["-sSf", "-o"]).arg(&out).arg(format!("{}/{REPO}/resolve/main/{FILE}", hub.url));
            let t0 = Instant::now();
            run_ok(cmd, "curl");
            let fetched = t0.elapsed().as_secs_f64();
            std::fs::File::open(&out).and_then(|f| f.sync_all()).expect("fsync");
            (fetched, t0.elapsed().as_secs_f64())
        })
        .collect()
}

fn sha256_secs(path: &std::path::Path) -> f64 {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    let t0 = Instant::now();
    std::hint::black_box(sha2::Sha256::digest(&bytes));
    t0.elapsed().as_secs_f64()
}

fn main() {
    let model = rbee_features::default_model_file();
    let size = std::fs::metadata(&model).unwrap().len() as f64;
    let hub = Hub::start();
    hub.publish(REPO, FILE, model.clone(), rbee_local::model::DEFAULT_SHA256);
    let cluster = Cluster::up_with_env(&["--no-worker"], &[("HF_ENDPOINT", hub.url.clone())]).expect("rbee up");

    // Interleaved, so drift on a shared machine hits both alike.
    let (mut curl, mut chunked, mut unchunked) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        curl.extend(curls(&hub));
        chunked.extend(pulls(&cluster, &hub, 8 << 20));
        unchunked.extend(pulls(&cluster, &hub, 1 << 40));
    }
    let (curl, curl_synced) = (median(curl.iter().map(|c| c.0).collect()), median(curl.iter().map(|c| c.1).collect()));
    let split = |v: Vec<(f64, f64)>| (median(v.iter().map(|x| x.0).collect()), median(v.iter().map(|x| x.1).collect()));
    let ((chunked, chunked_transfer), (unchunked, unchunked_transfer)) = (split(chunked), split(unchunked));
    let sha = median((0..RUNS).map(|_| sha256_secs(&model)).collect());
    let mbs = |secs: f64| size / secs / 1e6;
    println!("download of {:.1} MB from a loopback hub double, medians of {} runs:", size / 1e6, RUNS * 2);
    println!("  curl                                  {curl:.3} s  {:.0} MB/s", mbs(curl));
    println!("  curl, then fsync of the file          {curl_synced:.3} s  {:.0} MB/s", mbs(curl_synced));
    println!(
        "  rbee models pull, 8 MiB chunks        {chunked:.3} s  {:.0} MB/s  ratio to curl {:.2}",
        mbs(chunked),
        curl / chunked
    );
    println!(
        "    of which the transfer (claim->verified) {chunked_transfer:.3} s  {:.0} MB/s  ratio to curl {:.2}, to curl+fsync {:.2}",
        mbs(chunked_transfer),
        curl / chunked_transfer,
        curl_synced / chunked_transfer
    );
    println!(
        "  rbee models pull, one chunk           {unchunked:.3} s  {:.0} MB/s  ratio to curl {:.2}",
        mbs(unchunked),
        curl / unchunked
    );
    println!(
        "    of which the transfer               {unchunked_transfer:.3} s  {:.0} MB/s  ratio to curl {:.2}, to curl+fsync {:.2}",
        mbs(unchunked_transfer),
        curl / unchunked_transfer,
        curl_synced / unchunked_transfer
    );
    println!(
        "  chunk events + fsync cost             {:.3} s per download ({} events)",
        chunked_transfer - unchunked_transfer,
        (size as u64) >> 23
    );
    println!("  sha256 of the file alone   {sha:.3} s  {:.0} MB/s", mbs(sha));

    // Worker start to ready, and stopping 5 workers.
    let node = unique_node();
    let dir = rbee_features::scratch_dir("bench-life");
    let mut hive =
        rbee_features::KillOnDrop(cluster.spawn_hive(&node, &dir, &[("RBEE_WORKER_GRACE_SECS", "10".to_string())]));
    std::thread::sleep(Duration::from_secs(1));
    let start = || {
        let cmd = cluster.rbee_command_for(&["workers", "start", "--node", &node, "--timeout-secs", "120"]);
        let t0 = Instant::now();
        run_ok(cmd, "rbee workers start");
        t0.elapsed().as_secs_f64()
    };
    let ready = (0..5).map(|_| start()).collect::<Vec<_>>();
    println!(
        "rbee workers start -> ready (default model, model already on the node): median {:.3} s of 5 (one after another: {:?})",
        median(ready.clone()),
        ready.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>()
    );
    let t0 = Instant::now();
    signal::send(hive.0.id(), Signal::Terminate);
    let status = hive.0.wait().unwrap();
    println!("hive SIGTERM -> exit with 5 idle workers stopped: {:.3} s ({status})", t0.elapsed().as_secs_f64());
}
