//! Runs the Gherkin features in `features/` against real processes: `rbee up` clusters with
//! nats-server, Postgres, a hive, a queen and candle workers on the real model.
//!
//! Scenarios run one at a time (the machine has two cores and each worker uses both). Clusters
//! that scenarios only read from are shared and stopped at the end; the others are private.

mod steps;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use cucumber::World as _;
use cucumber::writer::Stats as _;
use futures::FutureExt as _;
use rbee_features::cluster::Cluster;
use rbee_features::compose::{self, Compose};
use rbee_features::hub::Hub;

/// A cluster serving the default model, shared by the scenarios that only use it.
static SERVING: OnceLock<Cluster> = OnceLock::new();
/// A cluster without workers, for the scenarios that start their own.
static BARE: OnceLock<Cluster> = OnceLock::new();
/// The model-hub double, publishing the default model.
static HUB: OnceLock<Hub> = OnceLock::new();
/// A cluster without workers whose hives download from [`HUB`] with short timeouts.
static DOWNLOADS: OnceLock<Cluster> = OnceLock::new();

/// Where the hub double publishes the default model.
pub const HUB_REPO: &str = "rbee-test/SmolLM2-135M-Instruct-GGUF";
pub const HUB_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

pub fn hub() -> &'static Hub {
    HUB.get_or_init(|| {
        let hub = Hub::start();
        hub.publish(HUB_REPO, HUB_FILE, rbee_features::default_model_file(), rbee_local::model::DEFAULT_SHA256);
        hub
    })
}

/// What the hives of download scenarios are told: the hub, 4 MiB chunks, quick retries.
pub fn download_env() -> Vec<(&'static str, String)> {
    vec![
        ("HF_ENDPOINT", hub().url.clone()),
        ("RBEE_DOWNLOAD_CHUNK_BYTES", (4 << 20).to_string()),
        ("RBEE_DOWNLOAD_RETRIES", "2".into()),
        ("RBEE_DOWNLOAD_STALL_SECS", "1".into()),
        ("RBEE_DOWNLOAD_BACKOFF_MS", "100".into()),
    ]
}

pub fn downloads() -> &'static Cluster {
    DOWNLOADS.get_or_init(|| {
        Cluster::up_with_env(&["--no-worker"], &download_env()).expect("a cluster for downloads starts")
    })
}

pub fn serving() -> &'static Cluster {
    SERVING.get_or_init(|| Cluster::up(&[]).expect("a serving cluster starts"))
}

pub fn bare() -> &'static Cluster {
    // Short liveness timeouts, so the stale-worker scenarios run in seconds.
    let args = ["--no-worker", "--heartbeat-timeout-secs", "4", "--stale-grace-secs", "3"];
    BARE.get_or_init(|| Cluster::up(&args).expect("a cluster without workers starts"))
}

/// The compose cluster, shared by the compose scenarios (tag `@docker`) and taken down before the
/// first scenario that follows them: it takes both cores' worth of processes.
static COMPOSE: Mutex<Option<&'static Compose>> = Mutex::new(None);
/// Why the compose cluster could not start, so later scenarios fail at once instead of trying again.
static COMPOSE_FAILED: OnceLock<String> = OnceLock::new();

pub fn compose() -> &'static Compose {
    if let Some(why) = COMPOSE_FAILED.get() {
        panic!("the compose cluster did not start: {why}");
    }
    let mut slot = COMPOSE.lock().unwrap();
    if slot.is_none() {
        match Compose::up() {
            Ok(c) => *slot = Some(Box::leak(Box::new(c))),
            Err(e) => {
                let why = format!("{e:#}");
                let _ = COMPOSE_FAILED.set(why.clone());
                panic!("the compose cluster did not start: {why}");
            }
        }
    }
    slot.expect("started above")
}

fn compose_down() {
    let running = COMPOSE.lock().unwrap().take();
    if let Some(c) = running {
        c.down();
    }
}

fn needs_docker(feature: &cucumber::gherkin::Feature, scenario: &cucumber::gherkin::Scenario) -> bool {
    feature.tags.iter().chain(&scenario.tags).any(|t| t == "docker")
}

#[tokio::main]
async fn main() {
    let features = concat!(env!("CARGO_MANIFEST_DIR"), "/features");
    // A scenario that fails is run once more, after a pause: these scenarios drive real processes
    // on a shared two-core machine, and one lost race in the harness must not hide the rest of a
    // run. A retried scenario stays visible: cucumber marks it, and the closing line counts it.
    // Without a Docker engine the compose scenarios fail saying so, unless the user opted out.
    static LEFT_OUT: AtomicUsize = AtomicUsize::new(0);
    let skip_docker = compose::skipped();
    let result = steps::RbeeWorld::cucumber()
        .max_concurrent_scenarios(1)
        .fail_on_skipped()
        .retries(1)
        .retry_after(std::time::Duration::from_secs(3))
        .before(|feature, _, scenario, _| {
            let leaving_compose = !needs_docker(feature, scenario);
            async move {
                if leaving_compose {
                    compose_down();
                }
            }
            .boxed_local()
        })
        .filter_run(features, move |feature, _, scenario| {
            let left_out = skip_docker && needs_docker(feature, scenario);
            if left_out {
                LEFT_OUT.fetch_add(1, Ordering::Relaxed);
            }
            !left_out
        })
        .await;
    compose_down();
    for cluster in [SERVING.get(), BARE.get(), DOWNLOADS.get()].into_iter().flatten() {
        cluster.down();
    }
    if skip_docker {
        println!(
            "{} compose scenarios not run: {}=1 (they need a Docker engine)",
            LEFT_OUT.load(Ordering::Relaxed),
            compose::SKIP_ENV
        );
    }
    let stats = result.scenarios_stats();
    // A closing line CI can read: cucumber's own summary is not in a format it knows.
    let failed = stats.failed + result.parsing_errors() + result.hook_errors();
    println!(
        "{} passed, {} failed, {} skipped, {} run a second time after failing",
        stats.passed, failed, stats.skipped, stats.retried
    );
    if result.execution_has_failed() || stats.skipped > 0 || failed > 0 {
        std::process::exit(1);
    }
}
