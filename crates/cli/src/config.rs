//! Configuration: `FLOW__SECTION__KEY` environment variables (Airflow's `AIRFLOW__SECTION__KEY`
//! convention) over `$FLOW_HOME/flow.toml` over defaults; flags override all three. `..._FILE`
//! variants read secrets from files. `settings` knows every setting and the precedence.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;

use crate::settings::{self, FileConfig, Found, Source};

/// `$FLOW_HOME/flow.toml` as read at startup (`None`: there is none). Kept here, never copied
/// into the environment: task processes inherit the environment, and the file may hold
/// secrets.
static FILE: OnceLock<Option<FileConfig>> = OnceLock::new();

/// Warnings about unknown settings found by `load`, until someone reports them.
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Reads `$FLOW_HOME/flow.toml` (if there is one) for every later lookup, and notes unknown
/// settings in it and in the environment for `take_warnings`. A malformed file is an error
/// naming its line: nothing should run on a configuration it half understood.
pub fn load() -> Result<()> {
    let path = flow_home().join("flow.toml");
    let (file, mut warnings) = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (file, warnings) = settings::parse_file(&path, &text)?;
            (Some(file), warnings)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .collect();
    warnings.extend(settings::env_warnings(names.iter().map(String::as_str)));
    let _ = FILE.set(file);
    if let Ok(mut pending) = WARNINGS.lock() {
        pending.extend(warnings);
    }
    Ok(())
}

/// The warnings `load` found, once: the caller prints or logs them.
pub fn take_warnings() -> Vec<String> {
    WARNINGS
        .lock()
        .map(|mut w| std::mem::take(&mut *w))
        .unwrap_or_default()
}

/// A setting's value and where it came from (`None`: not set, the default applies).
pub fn lookup(section: &str, key: &str) -> Result<Option<Found>> {
    let env = |name: &str| std::env::var(name).ok();
    let file = FILE.get().and_then(Option::as_ref);
    settings::lookup(section, key, &env, file)
}

/// Reads a setting: `FLOW__{SECTION}__{KEY}` (or the file named by `..._FILE`), else
/// `flow.toml`; Airflow's name for the same setting works too.
pub fn env_value(section: &str, key: &str) -> Result<Option<String>> {
    Ok(lookup(section, key)?.map(|f| f.value))
}

pub fn env_bool(section: &str, key: &str, default: bool) -> Result<bool> {
    match lookup(section, key)? {
        None => Ok(default),
        Some(found) => {
            parse_bool(&found.value).ok_or_else(|| must_be(&found, "true or false", section, key))
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

pub fn env_number(section: &str, key: &str, default: i64) -> Result<i64> {
    match lookup(section, key)? {
        None => Ok(default),
        Some(found) => found
            .value
            .trim()
            .parse()
            .map_err(|_| must_be(&found, "a number", section, key)),
    }
}

/// The zone the web UI shows times in until a user picks one: an IANA name (`Europe/Paris`),
/// `UTC` by default; `system` is Airflow's word for UTC-as-configured, taken as UTC.
pub fn default_ui_timezone() -> Result<chrono_tz::Tz> {
    match lookup("webserver", "default_ui_timezone")? {
        None => Ok(chrono_tz::UTC),
        Some(found) if found.value.eq_ignore_ascii_case("system") => Ok(chrono_tz::UTC),
        Some(found) => found.value.trim().parse().map_err(|_| {
            must_be(
                &found,
                "an IANA time zone such as UTC or Europe/Paris",
                "webserver",
                "default_ui_timezone",
            )
        }),
    }
}

/// "FLOW__X__Y must be a number, got `v`", naming the place the value came from.
fn must_be(found: &Found, what: &str, section: &str, key: &str) -> anyhow::Error {
    let name = match &found.source {
        Source::Default => settings::env_name(section, key),
        other => other.describe(),
    };
    anyhow!("{name} must be {what}, got `{}`", found.value)
}

/// The dags folder: `--dags-folder`, else the `[core] dags_folder` setting, else `dags`.
pub fn dags_folder(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(folder) = flag {
        return Ok(folder);
    }
    Ok(PathBuf::from(
        env_value("core", "dags_folder")?.unwrap_or_else(|| "dags".to_owned()),
    ))
}

/// The web UI's port: `-p`, else the `[webserver] web_server_port` setting, else 8080.
pub fn web_server_port(flag: Option<u16>) -> Result<u16> {
    if let Some(port) = flag {
        return Ok(port);
    }
    let port = env_number("webserver", "web_server_port", 8080)?;
    u16::try_from(port).map_err(|_| {
        anyhow!("FLOW__WEBSERVER__WEB_SERVER_PORT must be a port number (0 to 65535), got {port}")
    })
}

/// How the daemons write their own log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `time LEVEL target: message name=value`, control characters escaped.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`).
    Json,
}

/// `[logging] format`: `text` (the default) or `json`.
pub fn log_format() -> Result<LogFormat> {
    let Some(found) = lookup("logging", "format")? else {
        return Ok(LogFormat::Text);
    };
    match found.value.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(must_be(&found, "text or json", "logging", "format")),
    }
}

/// The log filter: `[logging] level` (Airflow's `logging_level`), else `RUST_LOG`, else `info`.
pub fn log_filter() -> Result<String> {
    if let Some(level) = env_value("logging", "level")? {
        return Ok(level);
    }
    Ok(std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "info".to_owned()))
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Every setting with its value (secrets masked) and where the value comes from.
    List,
    /// One setting's value, unmasked (flow's or Airflow's name).
    GetValue { section: String, key: String },
}

pub fn run(command: ConfigCommand) -> Result<ExitCode> {
    match command {
        ConfigCommand::List => list(),
        ConfigCommand::GetValue { section, key } => get_value(&section, &key),
    }
}

/// A setting's effective value (empty when unset) and its source.
fn effective(setting: &settings::Setting) -> Result<(String, Source)> {
    if let Some(found) = lookup(setting.section, setting.key)? {
        return Ok((found.value, found.source));
    }
    let value = match setting.fallback {
        settings::Fallback::Value(v) => v.to_owned(),
        settings::Fallback::InFlowHome(name) => flow_home().join(name).display().to_string(),
        settings::Fallback::Unset(_) => String::new(),
    };
    Ok((value, Source::Default))
}

/// `flow config list`.
fn list() -> Result<ExitCode> {
    let mut rows = vec![["setting".to_owned(), "value".into(), "source".into()]];
    for setting in settings::SETTINGS {
        let (value, source) = effective(setting)?;
        let source = match (setting.fallback, &source) {
            (settings::Fallback::Unset(note), Source::Default) => format!("default ({note})"),
            _ => source.to_string(),
        };
        rows.push([
            format!("{}.{}", setting.section, setting.key),
            crate::log_fields::escape(&settings::masked(setting, &value)).into_owned(),
            source,
        ]);
    }
    print!("{}", crate::dags::table(&rows));
    Ok(ExitCode::SUCCESS)
}

/// `flow config get-value SECTION KEY`: the real value, as Airflow's command prints it.
fn get_value(section: &str, key: &str) -> Result<ExitCode> {
    let Some(setting) = settings::find(section, key) else {
        let (s, k) = settings::nearest(section, key);
        bail!("the option [{section}] {key} is not a setting flow knows; did you mean [{s}] {k}?");
    };
    let (value, _) = effective(setting)?;
    println!("{value}");
    Ok(ExitCode::SUCCESS)
}

/// Airflow's `[core] test_connection` (Disabled by default), for the web server and
/// `flow connections test`.
pub fn test_connection_mode() -> Result<flow_http::TestConnectionMode> {
    Ok(match lookup("core", "test_connection")? {
        None => flow_http::TestConnectionMode::Disabled,
        Some(found) => flow_http::TestConnectionMode::parse(&found.value).map_err(|_| {
            must_be(
                &found,
                "Disabled, Enabled or Hidden",
                "core",
                "test_connection",
            )
        })?,
    })
}

/// Whether the web server tests connections (Airflow's `[core] test_connection`: Disabled,
/// Enabled or Hidden; Disabled by default), with the operators' clients.
pub fn connection_testing() -> Result<flow_http::ConnectionTesting> {
    let mode = test_connection_mode()?;
    Ok(flow_http::ConnectionTesting::new(mode, |conn| async move {
        flow_executor::test_connection(&conn).await
    }))
}

/// The configuration `GET /api/v2/config` serves when `[webserver] expose_config` (Airflow's
/// `[api] expose_config`) is on, secrets replaced by `< hidden >` as Airflow does: the web
/// server never holds them in this form. `None` when off (the API answers 403).
pub fn exposed_config() -> Result<Option<flow_http::ExposedConfig>> {
    let expose = match lookup("webserver", "expose_config")? {
        None => false,
        // Airflow 2's value, still accepted by Airflow 3: secrets are hidden anyway.
        Some(found) if found.value.eq_ignore_ascii_case("non-sensitive-only") => true,
        Some(found) => parse_bool(&found.value)
            .ok_or_else(|| must_be(&found, "true or false", "webserver", "expose_config"))?,
    };
    if !expose {
        return Ok(None);
    }
    let mut sections: Vec<flow_http::ConfigSection> = Vec::new();
    for setting in settings::SETTINGS {
        let (value, _) = effective(setting)?;
        let value = match setting.secret {
            settings::Secret::No => value,
            _ => "< hidden >".to_owned(),
        };
        let option = flow_http::ConfigOption {
            key: setting.key.to_owned(),
            value,
        };
        match sections.iter_mut().find(|s| s.name == setting.section) {
            Some(section) => section.options.push(option),
            None => sections.push(flow_http::ConfigSection {
                name: setting.section.to_owned(),
                options: vec![option],
            }),
        }
    }
    Ok(Some(flow_http::ExposedConfig { sections }))
}

/// This machine's name, for heartbeats, worker ids and static Kafka group members (a process
/// restarted on the same host takes its predecessor's place): the kernel's, else `HOSTNAME`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".into())
}

/// `$FLOW_HOME`, default `./.flow`.
pub fn flow_home() -> PathBuf {
    std::env::var_os("FLOW_HOME")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(".flow"), PathBuf::from)
}

/// The metadata database URL: `FLOW__DATABASE__URL`, else SQLite at `$FLOW_HOME/flow.db`.
pub fn database_url() -> Result<String> {
    if let Some(url) = env_value("database", "url")? {
        return Ok(url);
    }
    let home = flow_home();
    create_private_dir(&home)?;
    Ok(home.join("flow.db").display().to_string())
}

/// Creates `dir` (and its parents) if missing, the folder itself readable by its owner only
/// (0700): `$FLOW_HOME` holds the database, the secret key and the Fernet key.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// The file of a SQLite database URL (`sqlite:///path`, `sqlite:path` or a bare path); `None`
/// for other databases and in-memory ones.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    if url.contains("://") && !url.starts_with("sqlite:") {
        return None;
    }
    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(path))
}

/// Makes a SQLite database file, and its WAL and shared-memory files, readable by their owner
/// only (0600), creating the database file that way if it is missing: SQLite creates its WAL
/// files with the database file's mode, and the default umask would leave all of them
/// readable by everyone on the machine.
pub fn make_sqlite_private(url: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(path) = sqlite_path(url) else {
        return Ok(());
    };
    let path = path.as_path();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => std::fs::File::open(path),
                _ => Err(e),
            })
            .with_context(|| format!("creating {}", path.display()))?;
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        if let Ok(meta) = std::fs::metadata(&file)
            && meta.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", file.display()))?;
        }
    }
    Ok(())
}

/// Writes `contents` to a new file readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// The Fernet key(s) that encrypt connection secrets: `FLOW__CORE__FERNET_KEY` (a
/// comma-separated list for rotation, newest first), else one generated on first use and kept
/// in `$FLOW_HOME/fernet_key` (mode 0600), as Airflow generates one into its config.
pub fn fernet_cipher() -> Result<flow_store::Cipher> {
    if let Some(keys) = env_value("core", "fernet_key")? {
        return flow_store::Cipher::new(&keys).context("FLOW__CORE__FERNET_KEY");
    }
    let path = flow_home().join("fernet_key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        return flow_store::Cipher::new(key.trim())
            .with_context(|| format!("the key in {}", path.display()));
    }
    // Written whole to a private temporary file, then linked into place: the link fails if
    // another process got there first, and nobody ever reads a half-written key.
    let key = flow_store::Cipher::generate_key();
    // Unique per call: tasks of one process may get here at the same time.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    write_private(&temp, &format!("{key}\n"))?;
    let linked = std::fs::hard_link(&temp, &path);
    let _ = std::fs::remove_file(&temp);
    if linked.is_err() {
        let theirs = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return flow_store::Cipher::new(theirs.trim())
            .with_context(|| format!("the key in {}", path.display()));
    }
    flow_store::Cipher::new(&key).context("the generated fernet key")
}

/// Connections as flow resolves them: `FLOW_CONN_<ID>` (or Airflow's `AIRFLOW_CONN_<ID>`)
/// environment variables, URI or JSON, over the database's.
pub fn connection_source() -> Result<flow_store::ConnectionSource> {
    let mut source = flow_store::ConnectionSource::new(fernet_cipher()?);
    // AIRFLOW_ first so that FLOW_ wins when both name the same connection.
    for prefix in ["AIRFLOW_CONN_", "FLOW_CONN_"] {
        // vars_os: one variable that is not UTF-8 must not stop flow.
        for (name, value) in std::env::vars_os() {
            let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
                continue;
            };
            let Some(id) = name.strip_prefix(prefix) else {
                continue;
            };
            let conn_id = id.to_ascii_lowercase();
            let conn = flow_model::Connection::from_env_value(&conn_id, value)
                .with_context(|| format!("environment variable {prefix}{id}"))?;
            source.overrides.insert(conn_id, conn);
        }
    }
    Ok(source)
}
