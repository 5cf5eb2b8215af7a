//! `rbee up`: finds or starts nats-server and Postgres, starts a hive and a queen, makes sure a
//! worker serves the model, and prints the endpoint. A second `up` reuses what is running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rbee_bus::Code;
use rbee_bus::WorkerState;

use crate::cluster_file::ClusterFile;
use crate::error::{CliError, CliResult};
use crate::start::{StartRequest, start_and_wait};
use rbee_bus::subjects::new_worker_id;
use rbee_local::trust::{self, Identity, Trust};
use rbee_local::{model, nats, postgres, process};

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Port of the OpenAI-compatible API (0: any free port).
    #[arg(long, env = "RBEE_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Serve this model instead of the default one: hf:org/repo[:file.gguf], https://..., or a GGUF file.
    #[arg(long, alias = "model-file", env = "RBEE_MODEL")]
    pub model: Option<String>,
    /// The name clients use for the model (default: SmolLM2-135M-Instruct, or the file's name).
    #[arg(long, env = "RBEE_MODEL_NAME")]
    pub model_name: Option<String>,
    /// This machine's node name (default: the host name).
    #[arg(long, env = "RBEE_NODE")]
    pub node: Option<String>,
    /// Where nats-server is installed when none is found (default: <data-dir>/tools).
    #[arg(long, env = "RBEE_TOOLS_DIR")]
    pub tools_dir: Option<PathBuf>,
    /// Where the default model is downloaded to (default: ~/.cache/rbee/models).
    #[arg(long, env = "RBEE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Start the cluster without a worker.
    #[arg(long)]
    pub no_worker: bool,
    /// Requests the worker serves at once, advanced together in one batch.
    #[arg(long, env = "RBEE_WORKER_SLOTS", default_value_t = 1)]
    pub slots: u32,
    /// Seconds without a heartbeat before a worker is marked stale (passed to the queen).
    #[arg(long, env = "RBEE_HEARTBEAT_TIMEOUT_SECS", default_value_t = 10)]
    pub heartbeat_timeout_secs: u64,
    /// Seconds a stale, busy worker keeps its requests before it is removed (passed to the queen).
    #[arg(long, env = "RBEE_STALE_GRACE_SECS", default_value_t = 30)]
    pub stale_grace_secs: u64,
    /// Seconds between the hive's checks that catalogued model files still exist.
    #[arg(long, env = "RBEE_CATALOG_CHECK_SECS", default_value_t = 30)]
    pub catalog_check_secs: u64,
    /// JetStream's fsync policy: `always` (no acknowledged event lost on power failure) or a
    /// duration such as `2m` (NATS' default: faster, may lose the last acked events on power loss).
    #[arg(long, env = "RBEE_NATS_SYNC_INTERVAL", default_value = "always")]
    pub nats_sync_interval: String,
    /// Serve NATS over TLS with a certificate signed by a CA rbee makes (`.rbee/trust/nats-ca.pem`);
    /// needed when processes on other machines connect. On loopback it may stay plain TCP.
    #[arg(long, env = "RBEE_NATS_TLS")]
    pub nats_tls: bool,
    /// Most workers the registry may hold (passed to the hive).
    #[arg(long, env = "RBEE_MAX_WORKERS", default_value_t = 64)]
    pub max_workers: usize,
    /// Start a new cluster from a backup (`rbee backup`): its log is the only history; the archive
    /// and checkpoints are rebuilt from it; the workers it recorded are dropped from the registry
    /// (they ran elsewhere) and a new one is started. Needs a data directory without a cluster.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// Seconds to wait for the worker to be ready.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Join a cluster instead: start only a hive, with the identity in this token file (made by
    /// `rbee cluster add-hive` on the cluster's side), and a worker of the model.
    #[arg(long, value_name = "TOKEN", conflicts_with = "restore")]
    pub join: Option<PathBuf>,
}

pub async fn up(args: UpArgs, data_dir: &Path) -> CliResult<()> {
    if let Some(token) = &args.join {
        return join(&args, data_dir, token).await;
    }
    std::fs::create_dir_all(data_dir).map_err(|e| process::io_error("create", data_dir, e))?;
    let data_dir = std::fs::canonicalize(data_dir).map_err(|e| process::io_error("resolve", data_dir, e))?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(model::default_cache_dir);
    let source = model::resolve(args.model.as_deref(), args.model_name.as_deref(), &cache_dir)?;

    let cluster = match ClusterFile::load(&data_dir) {
        Some(_) if args.restore.is_some() => {
            return Err(CliError::new(
                Code::RestoreTargetNotEmpty,
                format!("{} holds a cluster already; restore into a new data directory", data_dir.display()),
            ));
        }
        Some(cf) if is_running(&cf).await => {
            println!("reusing the running cluster in {}", data_dir.display());
            cf
        }
        // Only what died starts again, on its recorded port; when that fails (its port was
        // taken meanwhile), the cluster starts afresh on its data.
        Some(cf) => match restart_dead(&args, &data_dir, &source, cf.clone()).await {
            Ok(cf) => cf,
            Err(e) => {
                println!("could not start the dead processes again ({e}); starting the cluster afresh");
                crate::down::stop_cluster(&cf);
                start_cluster(&args, &data_dir, &source).await?
            }
        },
        None => start_cluster(&args, &data_dir, &source).await?,
    };
    let key_file = crate::keys::local_key_file(&data_dir);
    if !key_file.exists() {
        let admin = trust::creds_path(&trust::dir_in(&data_dir), Identity::Admin);
        let nats = cluster.nats(Some(admin));
        let (id, secret) = crate::keys::create_key(&nats, "local", Default::default()).await?;
        trust::write_secret(&key_file, &secret)?;
        println!("made API key {id}, kept in {} (rbee infer uses it)", key_file.display());
    }
    if !args.no_worker {
        let admin = trust::creds_path(&trust::dir_in(&data_dir), Identity::Admin);
        let timeout = Duration::from_secs(args.timeout_secs);
        ensure_worker(&cluster, &data_dir, &admin, &source, args.slots.max(1), timeout).await?;
    }
    println!("rbee is up: {}/v1  (model {})", cluster.queen_url, source.name);
    println!(
        "try: curl {}/v1/chat/completions -H \"Authorization: Bearer $(cat {})\" \\",
        cluster.queen_url,
        key_file.display()
    );
    println!("       -H 'Content-Type: application/json' \\");
    println!(
        "       -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'",
        source.name
    );
    Ok(())
}

/// `rbee up --join TOKEN`: this machine becomes a node of the cluster the token names (made by
/// `rbee cluster add-hive` there): its hive's identity and worker-signing key, the cluster's CA
/// and client certificate go into this data directory's `trust/`, a hive starts, and it serves the
/// model with one worker. Nothing else runs here: the log, the queens and the store are the cluster's.
async fn join(args: &UpArgs, data_dir: &Path, token_file: &Path) -> CliResult<()> {
    let token = crate::cluster::JoinToken::read(token_file)?;
    let dir = trust::dir_in(data_dir);
    for d in [dir.clone(), dir.join("nodes"), data_dir.join("logs")] {
        std::fs::create_dir_all(&d).map_err(|e| process::io_error("create", &d, e))?;
    }
    let hive_creds = trust::creds_path(&dir, Identity::Hive(&token.node));
    trust::write_secret(&hive_creds, &token.hive_creds)?;
    trust::write_secret(&trust::worker_signer_path(&dir, &token.node), &token.worker_signing_key)?;
    let (ca, cert) = (dir.join("nats-ca.pem"), dir.join("nats-client.pem"));
    trust::write_secret(&ca, &token.ca)?;
    trust::write_secret(&cert, &token.client_cert)?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(model::default_cache_dir);
    let source = model::resolve(args.model.as_deref(), args.model_name.as_deref(), &cache_dir)?;
    let mut cf = ClusterFile {
        nats_url: token.nats_url.clone(),
        node: token.node.clone(),
        model: source.name.clone(),
        nats_ca: Some(ca),
        nats_cert: Some(cert),
        ..Default::default()
    };
    start_hive(args, data_dir, &source, &mut cf)?;
    let timeout = Duration::from_secs(args.timeout_secs);
    ensure_worker(&cf, data_dir, &hive_creds, &source, args.slots.max(1), timeout).await?;
    println!("{} joined the cluster and serves {}", token.node, source.name);
    Ok(())
}

/// Every process the file names is alive and the queen answers.
async fn is_running(cf: &ClusterFile) -> bool {
    process::is_ours(cf.nats_pid, "nats-server")
        && cf.postgres_pid.is_none_or(|pid| process::is_ours(pid, "postgres"))
        && process::is_ours(cf.hive_pid, "rbee-hive")
        && process::is_ours(cf.queen_pid, "rbee-queen")
        && rbee_local::wait_http_ok(&format!("{}/health", cf.queen_url), Duration::from_secs(2)).await.is_ok()
}

fn binary(name: &str) -> CliResult<PathBuf> {
    process::find_binary(name).ok_or_else(|| {
        CliError::new(
            Code::BinaryMissing,
            format!("{name} not found beside rbee or on PATH; build it with `cargo build`"),
        )
    })
}

/// What the local hive may fetch models from: the hub, the model cache, and the source this `up`
/// was given (the operator named it).
fn allowed_sources(args: &UpArgs, source: &model::ModelSource) -> (String, String) {
    let mut hosts = vec![std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())];
    let mut dirs = vec![args.cache_dir.clone().unwrap_or_else(model::default_cache_dir)];
    match rbee_bus::model_ref::ModelRef::parse(&source.source) {
        Ok(rbee_bus::model_ref::ModelRef::Url(url)) => hosts.push(url),
        Ok(rbee_bus::model_ref::ModelRef::File(path)) => dirs.extend(path.parent().map(Path::to_path_buf)),
        _ => {}
    }
    let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    (hosts.join(","), dirs.join(","))
}

async fn start_cluster(args: &UpArgs, data_dir: &Path, source: &model::ModelSource) -> CliResult<ClusterFile> {
    let model = source.name.as_str();
    // All of them are needed: fail before starting anything when one is missing.
    let _ = (binary("rbee-queen")?, binary("rbee-hive")?, binary("rbee-worker")?);
    nats::find_or_install(&args.tools_dir.clone().unwrap_or_else(|| data_dir.join("tools")))?;
    let node = args.node.clone().unwrap_or_else(rbee_runtime::hostname);
    rbee_bus::subjects::validate_name("node", &node).map_err(|e| CliError::new(Code::InvalidName, e.to_string()))?;

    // The cluster's identities: made on the first start, kept (0600) in <data-dir>/trust.
    let trust = Trust::open(&trust::dir_in(data_dir))?;
    trust.add_node(&node)?;

    let tls = nats_tls(args.nats_tls, data_dir)?;

    // Every port at once: ports picked one by one can collide, and then a process fails to bind.
    let ports = process::free_ports(5)?;
    let (nats_port, monitor_port, pg_port) = (ports[0], ports[1], ports[2]);
    let queen_port = if args.port == 0 { ports[3] } else { args.port };
    if std::net::TcpListener::bind(("127.0.0.1", queen_port)).is_err() {
        return Err(CliError::new(
            Code::PortInUse,
            format!("port {queen_port} is taken; pass --port <free port> (or --port 0 for any)"),
        ));
    }
    let mut cf = ClusterFile {
        nats_url: format!("nats://127.0.0.1:{nats_port}"),
        nats_monitor_url: format!("http://127.0.0.1:{monitor_port}"),
        queen_url: format!("http://127.0.0.1:{queen_port}"),
        hive_status_url: Some(format!("http://127.0.0.1:{}", ports[4])),
        node: node.clone(),
        model: model.into(),
        nats_ca: tls.as_ref().map(|t| t.ca.clone()),
        nats_cert: tls.as_ref().map(|t| t.client.clone()),
        ..Default::default()
    };
    // Record each process as soon as it exists, so `down` can stop a half-started cluster.
    start_nats(args, data_dir, &mut cf, &trust, (nats_port, monitor_port), tls.as_ref()).await?;

    let pg_bin = postgres::find_bin_dir()?;
    let pg_root = postgres::prepare_root(&data_dir.join("postgres"))?;
    cf.postgres_bin = Some(pg_bin.clone());
    cf.postgres_root = Some(pg_root.clone());
    let secrets = trust::dir_in(data_dir);
    let (pg_pid, database_url) = postgres::start(&pg_bin, &pg_root, pg_port, &secrets).await?;
    cf.postgres_pid = Some(pg_pid);
    cf.database_url = Some(database_url.clone());
    cf.save(data_dir)?;

    // A restored log goes in before any process of this cluster writes to it.
    if let Some(file) = &args.restore {
        let admin = cf.nats(Some(trust.creds(Identity::Admin)));
        let restored = crate::backup::restore(&admin, file).await?;
        let retired = crate::backup::retire_restored_workers(&admin).await?;
        println!("restored {restored} events from {}; {retired} worker(s) it recorded dropped", file.display());
    }
    start_hive(args, data_dir, source, &mut cf)?;
    start_queen(args, data_dir, &mut cf, &trust, queen_port).await?;
    Ok(cf)
}

/// The CA and certificates of NATS over TLS (made once, kept in the trust directory), if it serves TLS.
fn nats_tls(on: bool, data_dir: &Path) -> CliResult<Option<rbee_local::tls::TlsFiles>> {
    if !on {
        return Ok(None);
    }
    let names = ["127.0.0.1".to_string(), "localhost".to_string(), rbee_runtime::hostname()];
    Ok(Some(rbee_local::tls::ensure(&trust::dir_in(data_dir), &names)?))
}

/// Starts nats-server on `ports` (client, monitor) with the cluster's store, and records it.
async fn start_nats(
    args: &UpArgs,
    data_dir: &Path,
    cf: &mut ClusterFile,
    trust: &Trust,
    (port, monitor_port): (u16, u16),
    tls: Option<&rbee_local::tls::TlsFiles>,
) -> CliResult<()> {
    let tools_dir = args.tools_dir.clone().unwrap_or_else(|| data_dir.join("tools"));
    cf.nats_pid = nats::start(&nats::NatsPlan {
        binary: &nats::find_or_install(&tools_dir)?,
        port,
        monitor_port,
        store_dir: &data_dir.join("nats"),
        log: &data_dir.join("logs").join("nats.log"),
        sync_interval: &args.nats_sync_interval,
        auth: &trust.server_config()?,
        tls,
    })
    .await?;
    cf.record(cf.nats_pid);
    cf.save(data_dir)?;
    Ok(())
}

/// Starts again, on their recorded ports and with their stores, the processes of the cluster
/// that died; the living ones, and the workers, are left as they are. A queen started again
/// recovers its view from its last checkpoint.
async fn restart_dead(
    args: &UpArgs,
    data_dir: &Path,
    source: &model::ModelSource,
    mut cf: ClusterFile,
) -> CliResult<ClusterFile> {
    let trust = Trust::open(&trust::dir_in(data_dir))?;
    let no_port = |what: &str| CliError::new(Code::InvalidConfig, format!("cluster.json: no {what} port"));
    if !cf.still_ours(cf.nats_pid) {
        let port = port_of(&cf.nats_url).ok_or_else(|| no_port("NATS"))?;
        let monitor_port = port_of(&cf.nats_monitor_url).ok_or_else(|| no_port("NATS monitor"))?;
        println!("starting nats-server again on port {port}");
        let tls = nats_tls(cf.nats_ca.is_some(), data_dir)?;
        start_nats(args, data_dir, &mut cf, &trust, (port, monitor_port), tls.as_ref()).await?;
    }
    if let (Some(pid), Some(bin), Some(root), Some(url)) =
        (cf.postgres_pid, cf.postgres_bin.clone(), cf.postgres_root.clone(), cf.database_url.clone())
        && !process::is_ours(pid, "postgres")
    {
        let port = port_of(&url).ok_or_else(|| no_port("Postgres"))?;
        println!("starting Postgres again on port {port}");
        // A killed postmaster's backends hold its shared memory for a moment after it died.
        let mut tries = 0;
        let pid = loop {
            match postgres::start(&bin, &root, port, &trust::dir_in(data_dir)).await {
                Ok((pid, _)) => break pid,
                Err(e) if tries < 10 => {
                    tries += 1;
                    tracing::debug!(error = %e, "Postgres did not start yet; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        cf.postgres_pid = Some(pid);
        cf.save(data_dir)?;
    }
    if !cf.still_ours(cf.hive_pid) {
        println!("starting the hive again");
        start_hive(args, data_dir, source, &mut cf)?;
    }
    if !cf.still_ours(cf.queen_pid) {
        let port = port_of(&cf.queen_url).ok_or_else(|| no_port("queen"))?;
        println!("starting the queen again on port {port}");
        start_queen(args, data_dir, &mut cf, &trust, port).await?;
    }
    Ok(cf)
}

/// The port at the end of a URL's authority (`http://127.0.0.1:8080`, `postgres://u@h:5432/db`).
fn port_of(url: &str) -> Option<u16> {
    let authority = url.split("://").nth(1)?.split('/').next()?;
    authority.rsplit(':').next()?.parse().ok()
}

/// Where the cluster's processes find its CA and client certificate, when NATS serves TLS.
fn tls_env(cf: &ClusterFile) -> Vec<(&'static str, String)> {
    [("RBEE_NATS_CA", &cf.nats_ca), ("RBEE_NATS_CERT", &cf.nats_cert)]
        .into_iter()
        .filter_map(|(name, file)| Some((name, file.as_ref()?.display().to_string())))
        .collect()
}

fn start_hive(args: &UpArgs, data_dir: &Path, source: &model::ModelSource, cf: &mut ClusterFile) -> CliResult<()> {
    let path = |p: PathBuf| p.display().to_string();
    let (allowed_hosts, allowed_dirs) = allowed_sources(args, source);
    let trust_dir = trust::dir_in(data_dir);
    // Credentials by file or environment, never on a command line.
    let mut env = vec![
        ("RBEE_NATS_URL", cf.nats_url.clone()),
        ("RBEE_NATS_CREDS", path(trust::creds_path(&trust_dir, Identity::Hive(&cf.node)))),
        ("RBEE_WORKER_SIGNING_KEY", path(trust::worker_signer_path(&trust_dir, &cf.node))),
        ("RBEE_ALLOWED_HOSTS", allowed_hosts),
        ("RBEE_ALLOWED_DIRS", allowed_dirs),
    ];
    env.extend(tls_env(cf));
    let mut hive_args = vec![
        "--node".into(),
        cf.node.clone(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--catalog-check-secs".into(),
        args.catalog_check_secs.to_string(),
        "--max-workers".into(),
        args.max_workers.to_string(),
    ];
    if let Some(port) = cf.hive_status_url.as_deref().and_then(port_of) {
        hive_args.extend(["--status-addr".into(), format!("127.0.0.1:{port}")]);
    }
    let log = data_dir.join("logs").join("hive.log");
    cf.hive_pid = process::spawn_detached(&binary("rbee-hive")?, &hive_args, &log, &env)?;
    cf.record(cf.hive_pid);
    cf.save(data_dir)
}

async fn start_queen(args: &UpArgs, data_dir: &Path, cf: &mut ClusterFile, trust: &Trust, port: u16) -> CliResult<()> {
    let database_url = cf.database_url.clone().unwrap_or_default();
    let mut env = vec![
        ("RBEE_NATS_URL", cf.nats_url.clone()),
        ("RBEE_NATS_CREDS", trust.creds(Identity::Queen).display().to_string()),
        ("RBEE_DATABASE_URL", postgres::with_password(&database_url, &trust::dir_in(data_dir))?),
    ];
    env.extend(tls_env(cf));
    let queen_args = vec![
        "--bind".into(),
        format!("127.0.0.1:{port}"),
        "--heartbeat-timeout-secs".into(),
        args.heartbeat_timeout_secs.to_string(),
        "--stale-grace-secs".into(),
        args.stale_grace_secs.to_string(),
    ];
    let log = data_dir.join("logs").join("queen.log");
    cf.queen_pid = process::spawn_detached(&binary("rbee-queen")?, &queen_args, &log, &env)?;
    cf.record(cf.queen_pid);
    cf.save(data_dir)?;
    let queen = Some((cf.queen_pid, "rbee-queen"));
    rbee_local::wait_serving(&format!("{}/health", cf.queen_url), queen, Duration::from_secs(30)).await.map_err(|_| {
        CliError::new(
            Code::QueenStartFailed,
            format!("the queen did not answer on {}; see {}", cf.queen_url, log.display()),
        )
    })
}

/// How recent a heartbeat must be for `up` to trust that a worker is alive.
const FRESH_HEARTBEAT_MS: u64 = 10_000;

/// Makes sure a live worker serves the model on this node: reuses one, or asks the hive for one and
/// waits until it is ready.
/// `creds` is the identity that asks: the admin, or a joining node's own hive.
async fn ensure_worker(
    cf: &ClusterFile,
    data_dir: &Path,
    creds: &Path,
    source: &model::ModelSource,
    slots: u32,
    timeout: Duration,
) -> CliResult<()> {
    let nats = cf.nats(Some(creds.to_path_buf()));
    let crate::live::Connected { log, view, .. } = &crate::live::connect(&nats).await?;
    let now = rbee_bus::envelope::now_ms();
    let existing = view.read(|v| {
        v.registry
            .workers_for(&source.name)
            .filter(|w| w.node == cf.node && matches!(w.state, WorkerState::Ready | WorkerState::Loading))
            .filter(|w| w.last_heartbeat_ms.is_some_and(|hb| now.saturating_sub(hb) < FRESH_HEARTBEAT_MS))
            .map(|w| (w.id.clone(), w.state))
            .next()
    });
    let reusing = existing.is_some();
    let worker = match existing {
        Some((id, WorkerState::Ready)) => {
            println!("reusing ready worker {id}");
            return Ok(());
        }
        Some((id, _)) => id,
        None => new_worker_id(&cf.node),
    };
    let request = (!reusing).then_some(StartRequest { source, slots, backend: "cpu", device: None });
    // The hive this cluster started is the one that starts the worker: if it dies, say so now.
    let hive_gone = async {
        while cf.still_ours(cf.hive_pid) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        started = start_and_wait(log, view, &cf.node, &worker, request, timeout) => started,
        () = hive_gone => Err(CliError::new(
            Code::HiveUnavailable,
            format!("the hive exited before the worker was ready; see {}", data_dir.join("logs").join("hive.log").display()),
        )),
    }
}
