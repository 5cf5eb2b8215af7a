//! `rbee`, the command line people type: start and stop a local cluster, ask it things, and look
//! inside it (workers, the event log).

pub mod backup;
pub mod cluster;
pub mod cluster_file;
pub mod down;
pub mod error;
pub mod events;
pub mod infer;
pub mod keys;
pub mod live;
pub mod log_point;
pub mod models;
pub mod node_command;
pub mod nodes;
pub mod progress;
pub mod replay;
pub mod start;
pub mod up;
pub mod workers;

use rbee_bus::{Code, NatsAccess};
use rbee_local::trust::{self, Identity};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::cluster_file::ClusterFile;
use crate::error::CliResult;

#[derive(Debug, Parser)]
#[command(name = "rbee", version, about = "rbee: an event-sourced cluster serving LLM inference")]
pub struct Cli {
    /// Where the local cluster keeps its data, logs and cluster.json.
    #[arg(long, global = true, env = "RBEE_DATA_DIR", default_value = ".rbee")]
    pub data_dir: PathBuf,
    /// NATS server (default: the one `rbee up` started).
    #[arg(long, global = true, env = "RBEE_NATS_URL")]
    pub nats_url: Option<String>,
    /// Credentials file of the NATS identity to act as (default: the local cluster's operator
    /// identity to read, its admin identity for commands that change something).
    #[arg(long, global = true, env = "RBEE_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// The CA of a cluster whose NATS serves TLS (default: the local cluster's, when it does).
    #[arg(long, global = true, env = "RBEE_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// The client certificate (and key, one PEM file) such a cluster verifies (default: the local
    /// cluster's, when it has one).
    #[arg(long, global = true, env = "RBEE_NATS_CERT")]
    pub nats_cert: Option<PathBuf>,
    /// Queen base URL (default: the one `rbee up` started).
    #[arg(long, global = true, env = "RBEE_URL")]
    pub url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start (or reuse) a local cluster serving the default model.
    Up(up::UpArgs),
    /// Stop what `rbee up` started.
    Down,
    /// Install what a local cluster needs (nats-server, the default model) without starting it.
    Setup(SetupArgs),
    /// Ask the cluster; the answer streams to the terminal.
    Infer(infer::InferArgs),
    /// List workers.
    Workers {
        #[command(subcommand)]
        action: Option<WorkerAction>,
        #[command(flatten)]
        filter: workers::WorkerFilter,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write every event of the log to a checksummed, self-describing file.
    Backup { file: PathBuf },
    /// Load a backup into an empty cluster (a fresh JetStream); projections rebuild from it.
    Restore { file: PathBuf },
    /// Fold the log up to a point and print the registry and catalog as they were then.
    Replay {
        /// A stream sequence (`1234`) or a UTC time (`2026-11-22T00:10:00Z`); default: now.
        #[arg(long)]
        at: Option<String>,
        /// Print only the digest of the state.
        #[arg(long)]
        digest: bool,
        /// The Postgres event store, for events JetStream no longer holds (default: this cluster's).
        #[arg(long, env = "RBEE_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// The model catalog (which node holds which model, where), and pulling or removing models.
    Models {
        #[command(subcommand)]
        action: Option<ModelAction>,
        /// Only models on this node.
        #[arg(long, global = true)]
        node: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Projections kept in the event store.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// The event log.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// The queens' API keys.
    Keys {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// The machines of the cluster.
    Nodes {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// The multi-machine cluster of docker-compose.yml.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// Write the credentials, certificates and configuration of every compose service into DIR.
    Init(cluster::InitArgs),
    /// Make a new machine a member: its identities, and a join token for `rbee up --join`.
    AddHive(cluster::AddHiveArgs),
    /// Prepare a started compose cluster: event store, streams, first API key, a worker per hive
    /// (what its one-shot `bootstrap` service runs; safe to run again).
    Bootstrap(cluster::BootstrapArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct SetupArgs {
    /// Where nats-server is installed when none is found (default: <data-dir>/tools).
    #[arg(long, env = "RBEE_TOOLS_DIR")]
    pub tools_dir: Option<PathBuf>,
    /// Where the default model is downloaded to (default: ~/.cache/rbee/models).
    #[arg(long, env = "RBEE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

fn setup(args: &SetupArgs, data_dir: &Path) -> CliResult<()> {
    let nats = rbee_local::nats::find_or_install(&args.tools_dir.clone().unwrap_or_else(|| data_dir.join("tools")))?;
    println!("nats-server: {}", nats.display());
    let model = rbee_local::model::resolve(
        None,
        None,
        &args.cache_dir.clone().unwrap_or_else(rbee_local::model::default_cache_dir),
    )?;
    println!("model {}: {}", model.name, model.source);
    let postgres = rbee_local::postgres::find_bin_dir()?;
    println!("postgres: {}", postgres.display());
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Fold the whole log again and store a fresh checkpoint (the old one is set aside).
    Rebuild {
        /// Postgres event store (default: the one `rbee up` started).
        #[arg(long, env = "RBEE_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkerAction {
    /// Ask a node's hive for one more worker, and wait until it is ready.
    Start(workers::StartArgs),
    /// Take no new requests on this worker; its current ones finish.
    Drain { worker: String },
}

#[derive(Debug, Subcommand)]
pub enum ModelAction {
    /// List the catalog and downloads under way (the default).
    List,
    /// Download a model to a node (default: this cluster's node), with a progress bar.
    Pull(models::PullArgs),
    /// Delete a model's file from a node and the catalog.
    Rm { model: String },
}

#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Make a key; its secret is printed once.
    Create(keys::CreateArgs),
    /// List keys: id, name, fingerprint, state, limits (never a secret).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: every queen refuses it as soon as it reads the log.
    Revoke {
        key: String,
        /// Why (recorded in the log).
        #[arg(long, default_value = "revoked")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Make a machine a member of the local cluster: its hive's NATS credentials and worker signing key.
    Add { node: String },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events as JSON lines, following new ones.
    Tail(events::TailArgs),
}

impl Cli {
    /// The event store a command reads: the one given, else this cluster's.
    /// The cluster's URL gets the password `rbee up` made, from its trust directory.
    fn database_url(&self, given: &Option<String>) -> Option<String> {
        given.clone().or_else(|| {
            let url = ClusterFile::load(&self.data_dir).and_then(|c| c.database_url)?;
            rbee_local::postgres::with_password(&url, &trust::dir_in(&self.data_dir)).ok()
        })
    }

    /// NATS, as the identity a command needs: read-only unless it changes the cluster.
    fn nats(&self, access: Access) -> NatsAccess {
        let url = self
            .nats_url
            .clone()
            .or_else(|| ClusterFile::load(&self.data_dir).map(|c| c.nats_url))
            .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
        let identity = match access {
            Access::Read => Identity::Operator,
            Access::Admin => Identity::Admin,
        };
        let local = trust::creds_path(&trust::dir_in(&self.data_dir), identity);
        let recorded = ClusterFile::load(&self.data_dir);
        let ca = self.nats_ca.clone().or_else(|| recorded.as_ref().and_then(|c| c.nats_ca.clone()));
        let cert = self.nats_cert.clone().or_else(|| recorded.as_ref().and_then(|c| c.nats_cert.clone()));
        NatsAccess::new(url, self.nats_creds.clone().or_else(|| local.exists().then_some(local))).with_tls(ca, cert)
    }

    /// The node a command addresses: the one given, else this cluster's, else this host.
    fn node(&self, given: Option<&str>) -> String {
        given
            .map(str::to_string)
            .or_else(|| ClusterFile::load(&self.data_dir).map(|c| c.node))
            .unwrap_or_else(rbee_runtime::hostname)
    }

    fn queen_url(&self) -> String {
        let url = self.url.clone().or_else(|| ClusterFile::load(&self.data_dir).map(|c| c.queen_url));
        url.unwrap_or_else(|| "http://127.0.0.1:8080".into()).trim_end_matches('/').to_string()
    }
}

/// What a command does to the cluster, and so which identity it acts as.
#[derive(Debug, Clone, Copy)]
enum Access {
    Read,
    Admin,
}

pub async fn run(cli: Cli) -> CliResult<()> {
    let data_dir: &Path = &cli.data_dir;
    match &cli.command {
        Command::Up(args) => up::up(args.clone(), data_dir).await,
        Command::Down => down::down(data_dir).await,
        Command::Setup(args) => setup(args, data_dir),
        Command::Backup { file } => {
            let n = backup::backup(&cli.nats(Access::Admin), file).await?;
            println!("backed up {n} events to {}", file.display());
            Ok(())
        }
        Command::Restore { file } => {
            let n = backup::restore(&cli.nats(Access::Admin), file).await?;
            println!("restored {n} events from {}", file.display());
            Ok(())
        }
        Command::Replay { at, digest, database_url } => {
            let url = cli.database_url(database_url);
            replay::replay(&cli.nats(Access::Read), url.as_deref(), at.as_deref(), *digest).await
        }
        Command::Infer(args) => infer::infer(args.clone(), &cli.queen_url(), data_dir).await,
        Command::Keys { action: KeyAction::Create(args) } => keys::create(&cli.nats(Access::Admin), args).await,
        Command::Keys { action: KeyAction::List { json } } => keys::list(&cli.nats(Access::Read), *json).await,
        Command::Keys { action: KeyAction::Revoke { key, reason } } => {
            keys::revoke(&cli.nats(Access::Admin), key, reason).await
        }
        Command::Projections { command: ProjectionsCommand::Rebuild { database_url } } => {
            let url = cli.database_url(database_url);
            let url = url.ok_or_else(|| {
                error::CliError::new(Code::EventStoreUnavailable, "no event store: pass --database-url or run rbee up")
            })?;
            replay::rebuild(&cli.nats(Access::Read), &url).await
        }
        Command::Models { action: None | Some(ModelAction::List), node, json } => {
            models::list(&cli.nats(Access::Read), node.as_deref(), *json).await
        }
        Command::Models { action: Some(ModelAction::Pull(args)), node, .. } => {
            models::pull(&cli.nats(Access::Admin), &cli.node(node.as_deref()), args).await
        }
        Command::Models { action: Some(ModelAction::Rm { model }), node, .. } => {
            models::remove(&cli.nats(Access::Admin), &cli.node(node.as_deref()), model).await
        }
        Command::Workers { action: Some(WorkerAction::Start(args)), .. } => {
            workers::start(&cli.nats(Access::Admin), &cli.node(args.node.as_deref()), args).await
        }
        Command::Workers { action: Some(WorkerAction::Drain { worker }), .. } => {
            workers::drain(&cli.nats(Access::Admin), worker).await
        }
        Command::Workers { action: None, filter, json } => {
            workers::workers(&cli.nats(Access::Read), filter, *json).await
        }
        Command::Nodes { action: NodeAction::Add { node } } => nodes::add(data_dir, node).await,
        Command::Cluster { action: ClusterAction::Init(args) } => cluster::init(args),
        Command::Cluster { action: ClusterAction::AddHive(args) } => cluster::add_hive(args),
        Command::Cluster { action: ClusterAction::Bootstrap(args) } => {
            cluster::bootstrap(&cli.nats(Access::Admin), args).await
        }
        Command::Events { command: EventsCommand::Tail(args) } => {
            events::tail(&cli.nats(Access::Read), args.clone()).await
        }
    }
}
