//! Configuration: `FLOW__SECTION__KEY` environment variables (Airflow's `AIRFLOW__SECTION__KEY`
//! convention) over defaults; flags override both. `..._FILE` variants read secrets from files.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Reads `FLOW__{SECTION}__{KEY}`, or the contents of the file named by `..._FILE`.
pub fn env_value(section: &str, key: &str) -> Result<Option<String>> {
    let name = format!("FLOW__{}__{}", section.to_uppercase(), key.to_uppercase());
    if let Ok(v) = std::env::var(&name)
        && !v.is_empty()
    {
        return Ok(Some(v));
    }
    if let Ok(path) = std::env::var(format!("{name}_FILE"))
        && !path.is_empty()
    {
        let v = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {name}_FILE ({path})"))?;
        return Ok(Some(v.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(None)
}

pub fn env_bool(section: &str, key: &str, default: bool) -> Result<bool> {
    match env_value(section, key)? {
        None => Ok(default),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            other => bail!(
                "FLOW__{}__{} must be true or false, got `{other}`",
                section.to_uppercase(),
                key.to_uppercase()
            ),
        },
    }
}

pub fn env_number(section: &str, key: &str, default: i64) -> Result<i64> {
    match env_value(section, key)? {
        None => Ok(default),
        Some(v) => v.trim().parse().with_context(|| {
            format!(
                "FLOW__{}__{} must be a number, got `{v}`",
                section.to_uppercase(),
                key.to_uppercase()
            )
        }),
    }
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
