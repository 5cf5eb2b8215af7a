//! Configuration files. Every flag of an rbee process is also a key of its TOML file, named as the
//! flag without its dashes and with `_` for `-` (`--queue-timeout-secs` is `queue_timeout_secs`).
//! A flag overrides the environment, which overrides the file, which overrides the default. The
//! file is named by `--config FILE` or by the process's own variable (`RBEE_QUEEN_CONFIG`,
//! `RBEE_HIVE_CONFIG`, `RBEE_WORKER_CONFIG`: a worker never reads its hive's file by inheriting
//! its environment).
//!
//! A file with a key no flag has, a value its flag would refuse, or bad TOML is refused whole,
//! naming the key and the reason. On SIGHUP a process reads its file again and takes the keys
//! that can change while it runs ([`reload_on_sighup`]); a file that no longer parses changes nothing.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command, CommandFactory, FromArgMatches};

const CONFIG: &str = "config";

/// Every key's effective value, as the text its flag would take.
pub type Values = BTreeMap<String, Vec<String>>;

/// Why a configuration cannot be used.
#[derive(Debug)]
pub enum ConfigError {
    /// The command line or the environment: clap reports it (and `--help`/`--version` end here too).
    Flags(clap::Error),
    /// The file as a whole: it cannot be read or is not TOML.
    File { path: PathBuf, reason: String },
    /// One key of the file.
    Key { path: PathBuf, key: String, reason: String },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Flags(e) => write!(f, "{}", e.render().to_string().trim().trim_start_matches("error: ")),
            ConfigError::File { path, reason } => write!(f, "config file {}: {reason}", path.display()),
            ConfigError::Key { path, key, reason } => write!(f, "config file {}: `{key}`: {reason}", path.display()),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where a process's configuration comes from: its command line, its environment and its file.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    argv: Vec<OsString>,
}

/// A configuration and the effective value of each of its keys.
#[derive(Debug, Clone)]
pub struct Loaded<C> {
    pub config: C,
    pub values: Values,
}

impl ConfigSource {
    /// This process's command line.
    pub fn from_args() -> ConfigSource {
        ConfigSource { argv: std::env::args_os().collect() }
    }

    pub fn new<I: IntoIterator<Item = T>, T: Into<OsString>>(argv: I) -> ConfigSource {
        ConfigSource { argv: argv.into_iter().map(Into::into).collect() }
    }

    /// Parses the command line, the environment and the file (when one is named), in that order of precedence.
    pub fn load<C: CommandFactory + FromArgMatches>(&self) -> Result<Loaded<C>, ConfigError> {
        let cmd = command::<C>();
        // A first look, lenient (the file may hold what a required flag needs): the file's name,
        // and which keys the command line or the environment already give.
        let given = cmd.clone().ignore_errors(true).try_get_matches_from(&self.argv).map_err(ConfigError::Flags)?;
        let Some(path) = given.get_one::<PathBuf>(CONFIG).cloned() else {
            let matches = cmd.clone().try_get_matches_from(&self.argv).map_err(ConfigError::Flags)?;
            return finish(&cmd, matches);
        };
        let mut argv = self.argv.clone();
        let mut from_file = BTreeMap::new();
        for (key, value) in read_table(&path)? {
            let key_error = |reason: String| ConfigError::Key { path: path.clone(), key: key.clone(), reason };
            let arg = keys(&cmd)
                .find(|a| a.get_id() == key.as_str())
                .ok_or_else(|| key_error(format!("no such key; the keys are: {}", key_list(&cmd))))?;
            if matches!(given.value_source(&key), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
                continue;
            }
            let long = arg.get_long().unwrap_or_default();
            from_file.insert(long.to_string(), key.clone());
            if !arg.get_action().takes_values() {
                match value {
                    toml::Value::Boolean(true) => argv.push(format!("--{long}").into()),
                    toml::Value::Boolean(false) => {}
                    other => return Err(key_error(format!("expected true or false, not a {}", other.type_str()))),
                }
                continue;
            }
            for text in texts(value).map_err(key_error)? {
                argv.push(format!("--{long}={text}").into());
            }
        }
        let matches = cmd.clone().try_get_matches_from(&argv).map_err(|e| blame(e, &path, &from_file))?;
        finish(&cmd, matches)
    }
}

/// The process's command with `--config` added, and its own variable naming the file.
fn command<C: CommandFactory>() -> Command {
    let cmd = C::command();
    let variable = format!("{}_CONFIG", cmd.get_name().to_uppercase().replace('-', "_"));
    cmd.arg(
        Arg::new(CONFIG)
            .long(CONFIG)
            .env(variable)
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("TOML file whose keys are these flags' names with `_` for `-`; the environment overrides it, flags override both"),
    )
}

/// The arguments a file may set: every flag but `--config`, `--help` and `--version`.
fn keys(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| a.get_long().is_some() && !matches!(a.get_id().as_str(), CONFIG | "help" | "version"))
}

fn key_list(cmd: &Command) -> String {
    keys(cmd).map(|a| a.get_id().as_str()).collect::<Vec<_>>().join(", ")
}

fn finish<C: FromArgMatches>(cmd: &Command, matches: ArgMatches) -> Result<Loaded<C>, ConfigError> {
    let values = keys(cmd)
        .filter_map(|a| {
            let id = a.get_id().as_str();
            let raw = matches.get_raw(id)?;
            Some((id.to_string(), raw.map(|v| v.to_string_lossy().into_owned()).collect()))
        })
        .collect();
    let config = C::from_arg_matches(&matches).map_err(ConfigError::Flags)?;
    Ok(Loaded { config, values })
}

fn read_table(path: &std::path::Path) -> Result<toml::Table, ConfigError> {
    let file_error = |reason: String| ConfigError::File { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    text.parse::<toml::Table>().map_err(|e| file_error(e.to_string().trim().replace('\n', " ")))
}

/// A value as the text(s) its flag takes: an array gives one per element.
fn texts(value: toml::Value) -> Result<Vec<String>, String> {
    match value {
        toml::Value::String(s) => Ok(vec![s]),
        toml::Value::Integer(i) => Ok(vec![i.to_string()]),
        toml::Value::Float(f) => Ok(vec![f.to_string()]),
        toml::Value::Boolean(b) => Ok(vec![b.to_string()]),
        toml::Value::Array(items) => {
            let mut all = Vec::new();
            for item in items {
                match item {
                    toml::Value::Array(_) | toml::Value::Table(_) => {
                        return Err("expected a list of values, not of lists or tables".into());
                    }
                    scalar => all.extend(texts(scalar)?),
                }
            }
            Ok(all)
        }
        toml::Value::Datetime(d) => Err(format!("expected a value this key takes, not the date {d}")),
        toml::Value::Table(_) => Err("expected a value, not a table".into()),
    }
}

/// Names the file's key when clap refused a value taken from the file.
fn blame(e: clap::Error, path: &std::path::Path, from_file: &BTreeMap<String, String>) -> ConfigError {
    let flag = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.split([' ', '=']).next().unwrap_or_default().trim_start_matches('-'),
        _ => "",
    };
    let Some(key) = from_file.get(flag) else {
        return ConfigError::File { path: path.to_path_buf(), reason: ConfigError::Flags(e).to_string() };
    };
    let reason = match std::error::Error::source(&e) {
        Some(inner) => inner.to_string(),
        None => ConfigError::Flags(e).to_string(),
    };
    ConfigError::Key { path: path.to_path_buf(), key: key.clone(), reason }
}

/// A value that can change while the process runs (a configuration): readers take the current one.
#[derive(Debug)]
pub struct Live<C>(Arc<RwLock<Arc<C>>>);

impl<C> Clone for Live<C> {
    fn clone(&self) -> Self {
        Live(self.0.clone())
    }
}

impl<C> Live<C> {
    pub fn new(config: C) -> Live<C> {
        Live(Arc::new(RwLock::new(Arc::new(config))))
    }

    /// The configuration now.
    pub fn get(&self) -> Arc<C> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the configuration; readers see the new one from their next `get`.
    pub fn set(&self, config: C) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }
}

/// One key whose value a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub before: String,
    pub after: String,
    /// Whether the running process took it (else it applies at the next start).
    pub applied: bool,
}

/// Reads the configuration again: the keys in `reloadable` take their new values, every other key
/// keeps the one it started with. Returns the merged configuration and what changed.
pub fn reload<C: CommandFactory + FromArgMatches>(
    source: &ConfigSource,
    current: &Values,
    reloadable: &[&str],
) -> Result<(Loaded<C>, Vec<Change>), ConfigError> {
    let cmd = command::<C>();
    let fresh = source.load::<C>()?;
    let secret = |key: &str| keys(&cmd).any(|a| a.get_id() == key && a.is_hide_env_values_set());
    let shown = |key: &str, values: Option<&Vec<String>>| match values {
        _ if secret(key) => "(hidden)".to_string(),
        Some(v) => v.join(","),
        None => "(unset)".to_string(),
    };
    let mut merged = current.clone();
    let mut changes = Vec::new();
    for arg in keys(&cmd) {
        let key = arg.get_id().as_str();
        let (before, after) = (current.get(key), fresh.values.get(key));
        if before == after {
            continue;
        }
        let applied = reloadable.contains(&key);
        changes.push(Change { key: key.to_string(), before: shown(key, before), after: shown(key, after), applied });
        if applied {
            match after {
                Some(v) => merged.insert(key.to_string(), v.clone()),
                None => merged.remove(key),
            };
        }
    }
    let config = from_values::<C>(&cmd, &merged)?;
    Ok((Loaded { config, values: merged }, changes))
}

/// Builds a configuration from effective values alone (no file, no environment).
fn from_values<C: FromArgMatches>(cmd: &Command, values: &Values) -> Result<C, ConfigError> {
    let mut argv: Vec<OsString> = vec![cmd.get_name().into()];
    for arg in keys(cmd) {
        let (Some(long), Some(texts)) = (arg.get_long(), values.get(arg.get_id().as_str())) else { continue };
        if !arg.get_action().takes_values() {
            if texts.iter().any(|t| t == "true") {
                argv.push(format!("--{long}").into());
            }
            continue;
        }
        argv.extend(texts.iter().map(|t| OsString::from(format!("--{long}={t}"))));
    }
    let matches = cmd.clone().try_get_matches_from(argv).map_err(ConfigError::Flags)?;
    C::from_arg_matches(&matches).map_err(ConfigError::Flags)
}

/// On every SIGHUP: reads the configuration again, logs each changed key (taken, or waiting for a
/// restart), points the log filter at a new `log_level`, and hands the merged configuration to
/// `apply`. A configuration that does not load is logged and changes nothing.
fn reload_on_sighup<C, F>(source: ConfigSource, loaded: Values, reloadable: &'static [&'static str], apply: F)
where
    C: CommandFactory + FromArgMatches + Send + Sync + 'static,
    F: Fn(C) + Send + 'static,
{
    tokio::spawn(async move {
        let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; the configuration cannot be reloaded");
                return;
            }
        };
        let mut current = loaded;
        while hangups.recv().await.is_some() {
            match reload::<C>(&source, &current, reloadable) {
                Err(e) => tracing::error!(error = %e, "configuration not reloaded; the running one stays"),
                Ok((fresh, changes)) => {
                    for c in &changes {
                        if !c.applied {
                            tracing::warn!(key = %c.key, before = %c.before, after = %c.after, "configuration changed; takes effect at the next start");
                        } else {
                            tracing::info!(key = %c.key, before = %c.before, after = %c.after, "configuration reloaded");
                        }
                    }
                    if let Some(c) = changes.iter().find(|c| c.applied && c.key == LOG_LEVEL) {
                        crate::set_log_filter(fresh.values.get(LOG_LEVEL).and_then(|v| v.first()).map(String::as_str));
                        tracing::info!(filter = %c.after, "log filter changed");
                    }
                    tracing::info!(changed = changes.len(), "configuration reloaded (SIGHUP)");
                    current = fresh.values;
                    apply(fresh.config);
                }
            }
        }
    });
}

/// What a service does with its configuration once loaded: starts logging as its `log_level`
/// says, and from then on takes the `reloadable` keys on SIGHUP. Call inside the tokio runtime.
pub fn go_live<C>(loaded: Loaded<C>, source: ConfigSource, reloadable: &'static [&'static str]) -> Live<C>
where
    C: CommandFactory + FromArgMatches + Send + Sync + 'static,
{
    crate::init_tracing(loaded.values.get(LOG_LEVEL).and_then(|v| v.first()).map(String::as_str));
    let live = Live::new(loaded.config);
    let target = live.clone();
    reload_on_sighup(source, loaded.values, reloadable, move |config| target.set(config));
    live
}

/// The key of [`crate::LogArgs`]; reloadable in every process.
pub const LOG_LEVEL: &str = "log_level";

/// Parses this process's configuration, or prints why not and exits: 2 for a command line clap
/// refuses (as clap does), 1 with `error[INVALID_CONFIG]` for a file.
pub fn load_or_exit<C: CommandFactory + FromArgMatches>() -> (Loaded<C>, ConfigSource) {
    let source = ConfigSource::from_args();
    match source.load::<C>() {
        Ok(loaded) => (loaded, source),
        Err(ConfigError::Flags(e)) => e.exit(),
        Err(e) => {
            eprintln!("error[{}]: {e}", rbee_bus::Code::InvalidConfig);
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    #[command(name = "rbee-demo")]
    struct Demo {
        #[arg(long, default_value_t = 1)]
        port: u16,
        /// The one key with a variable: only the test of the environment sets it.
        #[arg(long, env = "RBEE_DEMO_LIMIT", default_value_t = 1)]
        limit: u16,
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
        #[arg(long)]
        quiet: bool,
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        #[arg(long, hide_env_values = true)]
        secret: Option<String>,
        #[arg(long)]
        name: String,
    }

    /// A file with `text` in a directory of its own; the directory goes when the guard does.
    struct File(PathBuf);

    impl File {
        fn new(name: &str, text: &str) -> File {
            let dir = std::env::temp_dir().join(format!("rbee-config-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("demo.toml");
            std::fs::write(&path, text).unwrap();
            File(path)
        }

        fn write(&self, text: &str) {
            std::fs::write(&self.0, text).unwrap();
        }

        fn source(&self, flags: &[&str]) -> ConfigSource {
            let mut argv = vec!["rbee-demo".to_string(), format!("--config={}", self.0.display())];
            argv.extend(flags.iter().map(|f| f.to_string()));
            ConfigSource::new(argv)
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    #[test]
    fn the_file_fills_what_no_flag_gives_and_a_flag_wins() {
        let file =
            File::new("fill", "name = \"n\"\ntimeout_secs = 9\nquiet = true\nhosts = [\"a\", \"b\"]\nport = 7\n");
        let demo = file.source(&[]).load::<Demo>().unwrap().config;
        assert_eq!(
            (demo.timeout_secs, demo.quiet, demo.hosts.clone(), demo.port),
            (9, true, vec!["a".into(), "b".into()], 7)
        );
        let demo = file.source(&["--port", "8", "--hosts=c"]).load::<Demo>().unwrap().config;
        assert_eq!((demo.port, demo.hosts, demo.timeout_secs), (8, vec!["c".to_string()], 9));
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let file = File::new("env", "name = \"n\"\nlimit = 7\n");
        // SAFETY: the other tests run beside this one but none reads `limit`.
        unsafe { std::env::set_var("RBEE_DEMO_LIMIT", "11") };
        let demo = file.source(&[]).load::<Demo>().map(|l| l.config);
        unsafe { std::env::remove_var("RBEE_DEMO_LIMIT") };
        assert_eq!(demo.unwrap().limit, 11);
    }

    #[test]
    fn a_bad_file_is_refused_naming_the_key_and_the_reason() {
        let refused = |text: &str| {
            let file = File::new("bad", &format!("name = \"n\"\n{text}"));
            file.source(&[]).load::<Demo>().unwrap_err().to_string()
        };
        let e = refused("timeout_secs = \"soon\"\n");
        assert!(e.contains("`timeout_secs`") && e.contains("invalid digit"), "{e}");
        let e = refused("port = 70000\n");
        assert!(e.contains("`port`") && e.contains("70000"), "{e}");
        let e = refused("colour = \"blue\"\n");
        assert!(e.contains("`colour`") && e.contains("no such key") && e.contains("timeout_secs"), "{e}");
        let e = refused("quiet = \"yes\"\n");
        assert!(e.contains("`quiet`") && e.contains("true or false"), "{e}");
        let e = refused("port = [[1]]\n");
        assert!(e.contains("`port`"), "{e}");
        let e = refused("port = \n");
        assert!(e.contains("demo.toml") && e.contains("line 2"), "{e}");
        let e =
            ConfigSource::new(["rbee-demo", "--name=n", "--config=/nonexistent/rbee.toml"]).load::<Demo>().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/rbee.toml"), "{e}");
    }

    #[test]
    fn a_reload_takes_only_the_reloadable_keys_and_hides_secrets() {
        let file = File::new("reload", "name = \"n\"\nport = 7\ntimeout_secs = 9\nsecret = \"s1\"\n");
        let source = file.source(&[]);
        let first = source.load::<Demo>().unwrap();
        file.write("name = \"n\"\nport = 8\ntimeout_secs = 3\nsecret = \"s2\"\n");
        let (fresh, changes) = reload::<Demo>(&source, &first.values, &["timeout_secs", "secret"]).unwrap();
        assert_eq!((fresh.config.port, fresh.config.timeout_secs), (7, 3), "port waits for a restart");
        assert_eq!(fresh.config.secret.as_deref(), Some("s2"));
        let change = |key: &str| changes.iter().find(|c| c.key == key).cloned().unwrap();
        assert_eq!(
            change("timeout_secs"),
            Change { key: "timeout_secs".into(), before: "9".into(), after: "3".into(), applied: true }
        );
        assert!(!change("port").applied);
        assert_eq!((change("secret").before, change("secret").after), ("(hidden)".into(), "(hidden)".into()));
        assert_eq!(changes.len(), 3);
    }

    #[test]
    fn a_reload_of_a_broken_file_fails_and_keeps_nothing_half_done() {
        let file = File::new("broken", "name = \"n\"\ntimeout_secs = 9\n");
        let source = file.source(&[]);
        let first = source.load::<Demo>().unwrap();
        file.write("name = \"n\"\ntimeout_secs = -1\n");
        let e = reload::<Demo>(&source, &first.values, &["timeout_secs"]).unwrap_err();
        assert!(e.to_string().contains("`timeout_secs`"), "{e}");
    }
}
