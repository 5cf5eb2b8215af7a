//! `rbee models`: the model catalog (list), and asking a node's hive to pull or remove a model.
//! A pull shows a progress bar fed by the download's events, so it shows any hive's download of
//! that model to that node, including one resumed after a crash.

use rbee_bus::NatsAccess;
use std::time::Duration;

use crate::progress::{Bar, mb, next_event};
use futures::StreamExt;
use rbee_bus::Code;
use rbee_bus::model_ref::ModelRef;
use rbee_bus::{AggregateKind, Event, Meta, ModelPullRequested, ModelRemoveRequested, download_id, subjects};
use rbee_projections::aggregate::node::NodeCommand;

use crate::error::{CliError, CliResult};
use crate::live::unavailable;

#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    /// hf:org/repo[:file.gguf], https://.../file.gguf, or file:///path
    pub reference: String,
    /// The model's name in the cluster (default: from the file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Expected sha256 (default: the checksum the hub publishes).
    #[arg(long)]
    pub sha256: Option<String>,
    /// Give up waiting after this many seconds (the hive carries on).
    #[arg(long, default_value_t = 3600)]
    pub timeout_secs: u64,
}

/// `rbee models list`: the catalog, then downloads under way.
pub async fn list(nats: &NatsAccess, node: Option<&str>, json: bool) -> CliResult<()> {
    let cluster = crate::live::connect(nats).await?;
    let (entries, downloads): (Vec<_>, Vec<_>) = cluster.view.read(|v| {
        let entries = v.catalog.page(node, None, usize::MAX).into_iter().cloned().collect();
        let downloads = v.downloads.active().filter(|d| node.is_none_or(|n| d.node == n)).cloned().collect();
        (entries, downloads)
    });
    if json {
        let value = serde_json::json!({ "models": entries, "downloads": downloads });
        println!("{}", serde_json::to_string_pretty(&value).expect("plain data serializes"));
        return Ok(());
    }
    println!("{:<32} {:<16} {:>10} {:>10}  PATH", "MODEL", "NODE", "SIZE MB", "NEEDS MB");
    for e in &entries {
        println!(
            "{:<32} {:<16} {:>10} {:>10}  {}",
            e.model,
            e.node,
            mb(e.size_bytes),
            mb(e.memory_required_bytes),
            e.path
        );
    }
    if entries.is_empty() {
        println!("(no models)");
    }
    for d in &downloads {
        println!("downloading {} to {}: {} of {} MB", d.model, d.node, mb(d.offset), mb(d.total_bytes));
    }
    Ok(())
}

/// `rbee models pull`: asks the node's hive for the model and follows its download to the end.
pub async fn pull(nats: &NatsAccess, node: &str, args: &PullArgs) -> CliResult<()> {
    let reference =
        ModelRef::parse(&args.reference).map_err(|e| CliError::new(Code::InvalidModelSource, e.to_string()))?;
    let model = args.name.clone().unwrap_or_else(|| reference.default_name());
    for (field, value) in [("node", node), ("model", model.as_str())] {
        subjects::validate_name(field, value).map_err(|e| CliError::new(Code::InvalidName, e.to_string()))?;
    }
    let source = match &reference {
        ModelRef::File(path) => {
            format!("file://{}", std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()).display())
        }
        _ => args.reference.clone(),
    };
    let cluster = crate::live::connect(nats).await?;
    if let Some(e) = cluster.view.read(|v| v.catalog.get(&model, node).cloned()) {
        println!("{model} is already on {node}: {} ({} MB)", e.path, mb(e.size_bytes));
        return Ok(());
    }
    let client = cluster.log.client();
    let id = download_id(node, &model);
    let mut downloads =
        client.subscribe(subjects::aggregate(AggregateKind::Download, &id)).await.map_err(unavailable)?;
    let mut models = client.subscribe(subjects::model(node, &model)).await.map_err(unavailable)?;
    let command = NodeCommand::PullModel(ModelPullRequested {
        node: node.into(),
        model: model.clone(),
        source,
        sha256: args.sha256.clone(),
    });
    crate::node_command::send(&cluster.log, command, &Meta { correlation: Some(id.clone()), traceparent: None })
        .await?;
    println!("pulling {model} to {node} from {}", args.reference);
    let bar = Bar::new();
    let follow = async {
        loop {
            let event = next_event(&mut downloads, Some(&mut models)).await?;
            bar.show(&event);
            match event {
                Event::DownloadFailed(f) => return Err(CliError::new(f.code, f.message)),
                Event::ModelRegistered(m) if m.node == node => {
                    bar.done();
                    println!("{model} is on {node}: {} ({} MB)", m.path, mb(m.size_bytes));
                    return Ok(());
                }
                _ => {}
            }
        }
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(args.timeout_secs), follow) => r.unwrap_or_else(|_| {
            Err(CliError::new(Code::DownloadTimeout, format!("{model} was not on {node} within {}s; the hive carries on (rbee models list)", args.timeout_secs)))
        }),
        _ = tokio::signal::ctrl_c() => {
            bar.say("interrupted; the hive carries on with the download (rbee models list)".into());
            Err(CliError::interrupted())
        }
    };
    bar.abandon();
    outcome
}

/// `rbee models rm`: the node's hive deletes the file and records `model.removed`.
pub async fn remove(nats: &NatsAccess, node: &str, model: &str) -> CliResult<()> {
    subjects::validate_name("model", model).map_err(|e| CliError::new(Code::InvalidName, e.to_string()))?;
    let cluster = crate::live::connect(nats).await?;
    let Some(entry) = cluster.view.read(|v| v.catalog.get(model, node).cloned()) else {
        return Err(CliError::new(Code::ModelNotFound, format!("{model} is not on node {node} (rbee models list)")));
    };
    let mut models = cluster.log.client().subscribe(subjects::model(node, model)).await.map_err(unavailable)?;
    let command = NodeCommand::RemoveModel(ModelRemoveRequested { node: node.into(), model: model.into() });
    crate::node_command::send(&cluster.log, command, &Meta::default()).await?;
    let wait = async {
        while let Some(msg) = models.next().await {
            match rbee_bus::Envelope::decode(msg.headers.as_ref(), &msg.payload).map(|env| env.event) {
                Ok(Event::ModelRemoved(r)) if r.node == node => {
                    println!("removed {model} from {node}; freed {} MB", mb(entry.size_bytes));
                    return Ok(());
                }
                Ok(Event::ModelRemoveRefused(r)) if r.node == node => return Err(CliError::new(r.code, r.message)),
                _ => {}
            }
        }
        Err(unavailable("event subscription ended"))
    };
    tokio::time::timeout(Duration::from_secs(60), wait).await.unwrap_or_else(|_| {
        Err(CliError::new(
            Code::HiveUnavailable,
            format!("the hive of {node} did not remove {model} within 60s; is it running?"),
        ))
    })
}
