//! Steps of catalog.feature: a large catalog, paged.

use cucumber::{given, then, when};
use futures::StreamExt;
use rbee_bus::{Event, EventLog, Expected, Meta, ModelRegistered};
use rbee_features::poll::eventually;
use serde_json::Value;

use super::{DEADLINE, RbeeWorld};

#[when(expr = "{int} models on {int} nodes are registered in the catalog")]
async fn register_models(w: &mut RbeeWorld, count: usize, nodes: usize) {
    let log = EventLog::connect(&w.cluster().admin).await.unwrap();
    let prefix = &uuid::Uuid::now_v7().simple().to_string()[20..];
    w.catalog_prefix = format!("bulk{prefix}");
    let meta = Meta::default();
    let appended = futures::stream::iter(0..count)
        .map(|i| {
            let event = Event::ModelRegistered(ModelRegistered {
                model: format!("{}-{i:05}", w.catalog_prefix),
                node: format!("{}-node{}", w.catalog_prefix, i % nodes),
                path: format!("/models/{i}.gguf"),
                size_bytes: i as u64,
                sha256: "00".repeat(32),
                memory_required_bytes: i as u64,
            });
            let (log, meta) = (&log, &meta);
            async move { log.append(event, Expected::NoStream, meta).await.is_ok() }
        })
        .buffer_unordered(256)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    assert_eq!(appended, count);
}

/// Pages through `GET /v1/catalog`; returns the (model, node) keys of this scenario's entries in order.
async fn page_through(w: &RbeeWorld, node: Option<&str>, limit: usize) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/catalog?limit={limit}", w.cluster().queen_url);
        if let Some(n) = node {
            url.push_str(&format!("&node={n}"));
        }
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page: Value = w.cluster().http().get(&url).send().await.unwrap().json().await.unwrap();
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit);
        keys.extend(
            data.iter()
                .filter(|e| e["model"].as_str().unwrap().starts_with(&w.catalog_prefix))
                .map(|e| (e["model"].as_str().unwrap().to_string(), e["node"].as_str().unwrap().to_string())),
        );
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return keys,
        }
    }
}

#[then(
    expr = "paging through the queen's catalog for one node {int} at a time returns its {int} models once each, in order"
)]
async fn page_one_node(w: &mut RbeeWorld, limit: usize, expected: usize) {
    let node = format!("{}-node3", w.catalog_prefix);
    let want: Vec<(String, String)> =
        (0..10_000).filter(|i| i % 10 == 3).map(|i| (format!("{}-{i:05}", w.catalog_prefix), node.clone())).collect();
    assert_eq!(want.len(), expected);
    let w2 = &*w;
    let keys = eventually("the queen has folded every registration", DEADLINE, || async {
        let keys = page_through(w2, Some(&node), limit).await;
        if keys.len() == expected { Ok(keys) } else { Err(keys.len()) }
    })
    .await;
    assert_eq!(keys, want);
}

#[then(expr = "paging through the whole catalog {int} at a time returns every one of the {int} models once")]
async fn page_all(w: &mut RbeeWorld, limit: usize, expected: usize) {
    let keys = page_through(w, None, limit).await;
    let mut models: Vec<&String> = keys.iter().map(|(m, _)| m).collect();
    assert_eq!(models.len(), expected);
    models.dedup();
    assert_eq!(models.len(), expected, "each model once");
}

#[then(expr = "a page size over the limit is refused with HTTP {int} naming {string}")]
async fn page_too_big(w: &mut RbeeWorld, status: u16, param: String) {
    for url in [
        format!("{}/v1/catalog?limit=1001", w.cluster().queen_url),
        format!("{}/v1/catalog?limit=lots", w.cluster().queen_url),
    ] {
        let response = w.cluster().http().get(&url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        if url.ends_with("1001") {
            assert_eq!(body["error"]["param"], param.as_str());
        }
    }
}

#[given(expr = "a cluster of my own without workers, with {int} more hives on its node")]
fn own_cluster_extra_hives(w: &mut RbeeWorld, extra: usize) {
    w.own = Some(rbee_features::cluster::Cluster::up(&["--no-worker"]).expect("rbee up succeeds"));
    for _ in 0..extra {
        let c = w.cluster();
        let child = std::process::Command::new(rbee_features::bin("rbee-hive"))
            .args(["--node", &c.node])
            .envs(c.hive_env(&c.node))
            .arg("--data-dir")
            .arg(&c.data_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rbee-hive starts");
        w.children.push(child);
    }
}

#[when(expr = "{int} workers for the default model are started at once with rbee workers start")]
async fn start_at_once(w: &mut RbeeWorld, n: usize) {
    let starts = (0..n).map(|_| {
        let data_dir = w.cluster().data_dir.clone();
        tokio::task::spawn_blocking(move || {
            rbee_features::cluster::rbee(&data_dir, &["workers", "start", "--timeout-secs", "120"])
        })
    });
    for out in futures::future::join_all(starts).await {
        let out = out.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[then(expr = "all {int} workers become ready")]
async fn all_ready(w: &mut RbeeWorld, n: usize) {
    let c = w.cluster();
    eventually("every worker is ready", DEADLINE, || async {
        let states: Vec<Value> = c.workers().iter().map(|x| x["state"].clone()).collect();
        if states.len() == n && states.iter().all(|s| s == "Ready") { Ok(()) } else { Err(states) }
    })
    .await;
}

#[then("the log holds exactly one model.registered for the model on that node")]
fn one_model_registration(w: &mut RbeeWorld) {
    let node = w.cluster().node.clone();
    let registered: Vec<Value> =
        w.cluster().events_of("model.registered").into_iter().filter(|e| e["data"]["node"] == node.as_str()).collect();
    assert_eq!(registered.len(), 1, "{registered:?}");
}

#[then("no worker start failed")]
fn none_failed(w: &mut RbeeWorld) {
    let failed = w.cluster().events_of("worker.start_failed");
    assert!(failed.is_empty(), "{failed:?}");
    let stray: Vec<_> = std::fs::read_dir(w.cluster().data_dir.join("models"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains(".partial"))
        .collect();
    assert!(stray.is_empty(), "no partial file left: {stray:?}");
}
