//! The settings flow knows, and where a setting's value comes from: `FLOW__SECTION__KEY` in the
//! environment (or the file `FLOW__SECTION__KEY_FILE` names), else `$FLOW_HOME/flow.toml`,
//! else the default. Airflow's names for the same settings are accepted in both places.
//!
//! Pure lookups over an environment reader and a parsed file, so that precedence, masking and
//! the nearest-name hints are tested without touching the process environment.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// What a setting is when nobody sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// This value.
    Value(&'static str),
    /// The file of this name in `$FLOW_HOME`.
    InFlowHome(&'static str),
    /// No value: flow does what the note says instead.
    Unset(&'static str),
}

/// How much of a value may be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    No,
    /// Never shown.
    Whole,
    /// A URL: everything but its password may be shown.
    UrlPassword,
}

/// One setting: flow's name for it, its default, whether it is secret, Airflow's names.
#[derive(Debug)]
pub struct Setting {
    pub section: &'static str,
    pub key: &'static str,
    pub fallback: Fallback,
    pub secret: Secret,
    /// Airflow's `(section, key)` names for the same setting, looked up after flow's own.
    pub aliases: &'static [(&'static str, &'static str)],
}

const fn setting(section: &'static str, key: &'static str, default: &'static str) -> Setting {
    Setting {
        section,
        key,
        fallback: Fallback::Value(default),
        secret: Secret::No,
        aliases: &[],
    }
}

const fn unset(section: &'static str, key: &'static str, note: &'static str) -> Setting {
    Setting {
        section,
        key,
        fallback: Fallback::Unset(note),
        secret: Secret::No,
        aliases: &[],
    }
}

impl Setting {
    const fn secret(mut self, secret: Secret) -> Setting {
        self.secret = secret;
        self
    }

    const fn aliases(mut self, aliases: &'static [(&'static str, &'static str)]) -> Setting {
        self.aliases = aliases;
        self
    }

    /// Flow's name first, then Airflow's.
    fn names(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        std::iter::once((self.section, self.key)).chain(self.aliases.iter().copied())
    }

    fn is_named(&self, section: &str, key: &str) -> bool {
        self.names()
            .any(|(s, k)| s.eq_ignore_ascii_case(section) && k.eq_ignore_ascii_case(key))
    }
}

/// Every setting flow reads, by section. A unit test checks that each `env_value`,
/// `env_bool` and `env_number` call in this crate names one of these, with the same default.
pub static SETTINGS: &[Setting] = &[
    setting("core", "dags_folder", "dags"),
    setting("core", "dags_are_paused_at_creation", "true"),
    setting("core", "parallelism", "32"),
    setting("core", "max_map_length", "1024"),
    setting("core", "max_xcom_size", "1048576"),
    setting("core", "allow_external_dag_links", "false"),
    unset("core", "max_runs_kept_per_dag", "every run is kept"),
    setting("core", "test_connection", "Disabled"),
    unset("core", "fernet_key", "generated into $FLOW_HOME/fernet_key").secret(Secret::Whole),
    Setting {
        fallback: Fallback::InFlowHome("flow.db"),
        ..setting("database", "url", "")
    }
    .secret(Secret::UrlPassword)
    .aliases(&[("database", "sql_alchemy_conn")]),
    setting("database", "pool_size", "8").aliases(&[("database", "sql_alchemy_pool_size")]),
    setting("scheduler", "scheduler_health_check_threshold", "30"),
    setting("scheduler", "zombie_threshold", "60").aliases(&[
        ("scheduler", "task_instance_heartbeat_timeout"),
        ("scheduler", "scheduler_zombie_task_threshold"),
    ]),
    setting("scheduler", "task_queued_timeout", "600"),
    setting("scheduler", "num_stuck_in_queued_retries", "2"),
    setting("worker", "concurrency", "16"),
    unset("worker", "id", "host name and pid"),
    setting("worker", "heartbeat_interval", "5"),
    setting("worker", "shutdown_timeout", "60"),
    setting("webserver", "web_server_port", "8080").aliases(&[("api", "port")]),
    setting("webserver", "web_server_host", "0.0.0.0").aliases(&[("api", "host")]),
    setting("webserver", "base_url", "http://localhost:8080").aliases(&[("api", "base_url")]),
    unset(
        "webserver",
        "secret_key",
        "generated into $FLOW_HOME/webserver_secret_key",
    )
    .secret(Secret::Whole)
    .aliases(&[("api", "secret_key")]),
    setting("webserver", "cookie_secure", "false"),
    setting("webserver", "expose_config", "false").aliases(&[("api", "expose_config")]),
    setting("webserver", "default_ui_timezone", "UTC").aliases(&[("api", "default_ui_timezone")]),
    setting("logging", "level", "info").aliases(&[("logging", "logging_level")]),
    setting("logging", "format", "text"),
    unset("logging", "retention_days", "task logs are kept"),
    setting("triggerer", "capacity", "10000"),
    unset("events", "kafka_conn_id", "no lifecycle events"),
    unset("events", "kafka_topic", "no lifecycle events"),
    setting("events", "max_backlog", "100000"),
    setting("smtp", "smtp_host", "localhost"),
    setting("smtp", "smtp_port", "25"),
    unset("smtp", "smtp_user", "no login"),
    unset("smtp", "smtp_password", "no login").secret(Secret::Whole),
    setting("smtp", "smtp_starttls", "true"),
    setting("smtp", "smtp_ssl", "false"),
    unset("smtp", "smtp_mail_from", "the task's from_email"),
    setting("smtp", "smtp_timeout", "30"),
];

/// The setting `section`/`key` names, by flow's name or Airflow's (any case).
pub fn find(section: &str, key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.is_named(section, key))
}

/// `FLOW__SECTION__KEY`.
pub fn env_name(section: &str, key: &str) -> String {
    format!(
        "FLOW__{}__{}",
        section.to_ascii_uppercase(),
        key.to_ascii_uppercase()
    )
}

/// The known name (flow's or Airflow's) closest to `section.key`, as `(section, key)`: for
/// "did you mean" hints.
pub fn nearest(section: &str, key: &str) -> (&'static str, &'static str) {
    let wanted = format!(
        "{}.{}",
        section.to_ascii_lowercase(),
        key.to_ascii_lowercase()
    );
    SETTINGS
        .iter()
        .flat_map(Setting::names)
        .min_by_key(|(s, k)| edit_distance(&wanted, &format!("{s}.{k}")))
        .unwrap_or(("core", "dags_folder"))
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            let cost = usize::from(ca != *cb);
            row[j + 1] = (diagonal + cost).min(above + 1).min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// One `key = value` of `flow.toml`, names lower-cased, the value as the environment variable
/// would hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub section: String,
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// A parsed `flow.toml`.
#[derive(Debug, Clone)]
pub struct FileConfig {
    pub path: PathBuf,
    pub entries: Vec<FileEntry>,
}

impl FileConfig {
    fn get(&self, section: &str, key: &str) -> Option<&FileEntry> {
        self.entries
            .iter()
            .find(|e| e.section.eq_ignore_ascii_case(section) && e.key.eq_ignore_ascii_case(key))
    }
}

type Sections = std::collections::BTreeMap<
    String,
    std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>,
>;

/// Parses `flow.toml` (`text`, read from `path`): tables of settings, values strings, numbers
/// or booleans (a list is joined with commas, as in the environment). Unknown settings come
/// back as warnings naming the nearest known one; malformed TOML and values of other types
/// are errors naming `path:line`.
pub fn parse_file(path: &Path, text: &str) -> Result<(FileConfig, Vec<String>)> {
    let sections: Sections = toml::from_str(text).map_err(|e| {
        let at = match e.span() {
            Some(span) => format!("{}:{}", path.display(), line_of(text, span.start)),
            None => path.display().to_string(),
        };
        let message = e.message().trim_end();
        // A value outside any [section] reaches serde as a non-table.
        let hint = if message.starts_with("invalid type") {
            " (flow.toml holds [section] tables of key = value settings)"
        } else {
            ""
        };
        anyhow::anyhow!("{at}: {message}{hint}")
    })?;
    // In the file's order, so that warnings read top to bottom.
    let mut items: Vec<(String, String, usize, toml::Value)> = Vec::new();
    for (section, keys) in sections {
        for (key, value) in keys {
            let line = line_of(text, key.span().start);
            let key = key.into_inner().to_ascii_lowercase();
            items.push((section.to_ascii_lowercase(), key, line, value.into_inner()));
        }
    }
    items.sort_by_key(|(_, _, line, _)| *line);
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    for (section, key, line, value) in items {
        let at = format!("{}:{line}", path.display());
        let known = find(&section, &key).is_some();
        if !known {
            let (s, k) = nearest(&section, &key);
            warnings.push(format!(
                "{at}: unknown setting [{section}] {key}; did you mean [{s}] {k}?"
            ));
        }
        let value = match scalar_text(&value) {
            Some(v) => v,
            None if known => {
                bail!("{at}: [{section}] {key} must be a string, a number or a boolean")
            }
            None => continue,
        };
        entries.push(FileEntry {
            section,
            key,
            value,
            line,
        });
    }
    let file = FileConfig {
        path: path.to_path_buf(),
        entries,
    };
    Ok((file, warnings))
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The value as the environment variable would spell it.
fn scalar_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|v| match v {
                    toml::Value::Array(_) | toml::Value::Table(_) => None,
                    other => scalar_text(other),
                })
                .collect();
            parts.map(|p| p.join(","))
        }
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

/// Warnings for `FLOW__...` environment variables that name no known setting.
pub fn env_warnings<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut warnings = Vec::new();
    for name in names {
        let Some(rest) = name.strip_prefix("FLOW__") else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            warnings.push(format!(
                "environment variable {name} is not FLOW__SECTION__KEY"
            ));
            continue;
        };
        // `FLOW__X__Y_FILE` names a file that holds the value of `FLOW__X__Y`.
        let base = key.strip_suffix("_FILE").unwrap_or(key);
        if find(section, key).is_some() || find(section, base).is_some() {
            continue;
        }
        let (s, k) = nearest(section, base);
        warnings.push(format!(
            "unknown setting in the environment: {name}; did you mean {}?",
            env_name(s, k)
        ));
    }
    warnings
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// This environment variable.
    Env(String),
    /// The file named by this `..._FILE` environment variable.
    EnvFile(String),
    /// `flow.toml`, under this name (flow's or Airflow's).
    File {
        path: PathBuf,
        line: usize,
        section: String,
        key: String,
    },
    Default,
}

impl Source {
    /// For error messages: what to fix.
    pub fn describe(&self) -> String {
        match self {
            Source::Env(name) => name.clone(),
            Source::EnvFile(name) => format!("the file {name} names"),
            Source::File {
                path,
                line,
                section,
                key,
            } => format!("[{section}] {key} at {}:{line}", path.display()),
            Source::Default => "the default".to_owned(),
        }
    }
}

/// For `flow config list`: `env FLOW__X__Y`, `flow.toml:12`, `default`; a file value under
/// Airflow's name says which.
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(name) => write!(f, "env {name}"),
            Source::EnvFile(name) => write!(f, "env {name}"),
            Source::File {
                path,
                line,
                section,
                key,
            } => {
                let file = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                write!(f, "{file}:{line}")?;
                match find(section, key) {
                    Some(s) if s.section != section || s.key != key => {
                        write!(f, " as [{section}] {key}")
                    }
                    _ => Ok(()),
                }
            }
            Source::Default => f.write_str("default"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub value: String,
    pub source: Source,
}

/// The value of `section`/`key` (flow's name or Airflow's): the environment under each name
/// (flow's first; the variable itself, then its `_FILE`), then the file under each name. An
/// empty value counts as unset. `None`: the caller's default applies.
pub fn lookup(
    section: &str,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<&FileConfig>,
) -> Result<Option<Found>> {
    let names: Vec<(&str, &str)> = match find(section, key) {
        Some(setting) => setting.names().collect(),
        None => vec![(section, key)],
    };
    for (s, k) in &names {
        if let Some(found) = from_env(&env_name(s, k), env)? {
            return Ok(Some(found));
        }
    }
    let Some(file) = file else {
        return Ok(None);
    };
    for (s, k) in &names {
        if let Some(entry) = file.get(s, k).filter(|e| !e.value.is_empty()) {
            return Ok(Some(Found {
                value: entry.value.clone(),
                source: Source::File {
                    path: file.path.clone(),
                    line: entry.line,
                    section: entry.section.clone(),
                    key: entry.key.clone(),
                },
            }));
        }
    }
    Ok(None)
}

fn from_env(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Found>> {
    if let Some(v) = env(name).filter(|v| !v.is_empty()) {
        return Ok(Some(Found {
            value: v,
            source: Source::Env(name.to_owned()),
        }));
    }
    let file_var = format!("{name}_FILE");
    let Some(path) = env(&file_var).filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let v =
        std::fs::read_to_string(&path).with_context(|| format!("reading {file_var} ({path})"))?;
    Ok(Some(Found {
        value: v.trim_end_matches(['\n', '\r']).to_owned(),
        source: Source::EnvFile(file_var),
    }))
}

/// `value` as `flow config list` shows it: secrets as `***`, a URL with its password as `***`.
pub fn masked(setting: &Setting, value: &str) -> String {
    match setting.secret {
        Secret::No => value.to_owned(),
        Secret::Whole if value.is_empty() => String::new(),
        Secret::Whole => "***".to_owned(),
        Secret::UrlPassword => mask_url_password(value),
    }
}

/// `postgres://user:pass@host/db?password=x` -> `postgres://user:***@host/db?password=***`.
fn mask_url_password(url: &str) -> String {
    let (mut out, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***@")),
                None => out.push_str(&format!("{userinfo}@")),
            }
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    out.push_str(path);
    if query.is_empty() {
        return out;
    }
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => p.to_owned(),
        })
        .collect();
    out.push('?');
    out.push_str(&params.join("&"));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn file(text: &str) -> (FileConfig, Vec<String>) {
        parse_file(Path::new("/home/f/flow.toml"), text).unwrap()
    }

    #[test]
    fn file_values_become_the_text_the_environment_would_hold() {
        let (f, warnings) = file(
            "# comment\n[core]\nparallelism = 8\ndags_are_paused_at_creation = false\n\n\
             [Scheduler]\nTask_Instance_Heartbeat_Timeout = 90\n[smtp]\nsmtp_host = \"mail\"\n\
             [core.paralelism]\n",
        );
        let by_key = |k: &str| f.entries.iter().find(|e| e.key == k).unwrap().clone();
        assert_eq!(by_key("parallelism").value, "8");
        assert_eq!(by_key("parallelism").line, 3);
        assert_eq!(by_key("dags_are_paused_at_creation").value, "false");
        let alias = by_key("task_instance_heartbeat_timeout");
        assert_eq!((alias.section.as_str(), alias.line), ("scheduler", 7));
        assert_eq!(by_key("smtp_host").value, "mail");
        assert_eq!(
            warnings,
            [
                "/home/f/flow.toml:10: unknown setting [core] paralelism; did you mean [core] parallelism?"
            ]
        );
    }

    #[test]
    fn malformed_files_and_bad_values_name_the_line() {
        let path = Path::new("/h/flow.toml");
        let e = parse_file(path, "[core]\nparallelism = 8\nbroken = \n").unwrap_err();
        assert!(e.to_string().starts_with("/h/flow.toml:3: "), "{e}");
        let e = parse_file(path, "[core]\n\nparallelism = 1979-05-27\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/h/flow.toml:3: [core] parallelism must be a string, a number or a boolean"
        );
        let e = parse_file(path, "parallelism = 3\n").unwrap_err();
        assert!(e.to_string().starts_with("/h/flow.toml:1: "), "{e}");
        let e = parse_file(path, "[core]\na = 1\n[core]\nb = 2\n").unwrap_err();
        assert!(e.to_string().starts_with("/h/flow.toml:3: "), "{e}");
    }

    #[test]
    fn unknown_settings_warn_with_the_nearest_known_one() {
        let (f, warnings) =
            file("[scheduler]\n\nzombie_treshold = 5\n[schedular]\nparallelism = 1\n");
        assert_eq!(
            warnings,
            [
                "/home/f/flow.toml:3: unknown setting [scheduler] zombie_treshold; did you mean \
                 [scheduler] zombie_threshold?",
                "/home/f/flow.toml:5: unknown setting [schedular] parallelism; did you mean \
                 [core] parallelism?",
            ]
        );
        assert_eq!(f.entries.len(), 2, "kept, though nothing reads them");
        assert_eq!(
            nearest("webserver", "expose_confg"),
            ("webserver", "expose_config")
        );
        assert_eq!(
            nearest("scheduler", "task_instance_heartbeat_timout"),
            ("scheduler", "task_instance_heartbeat_timeout")
        );
        let env = env_warnings(
            [
                "FLOW__CORE__PARALLELISM",
                "FLOW__CORE__FERNET_KEY_FILE",
                "FLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
                "FLOW__CORE__PARALELISM",
                "FLOW__ODD",
                "FLOW_HOME",
            ]
            .into_iter(),
        );
        assert_eq!(
            env,
            [
                "unknown setting in the environment: FLOW__CORE__PARALELISM; did you mean \
                 FLOW__CORE__PARALLELISM?",
                "environment variable FLOW__ODD is not FLOW__SECTION__KEY",
            ]
        );
    }

    #[test]
    fn the_environment_wins_over_the_file_and_flow_names_over_airflow_names() {
        let (f, _) = file(
            "[scheduler]\nzombie_threshold = 70\ntask_instance_heartbeat_timeout = 80\n\
             [core]\nparallelism = 4\nmax_map_length = \"\"\n",
        );
        let none = env_of(&[]);
        let got = lookup("scheduler", "zombie_threshold", &none, Some(&f))
            .unwrap()
            .unwrap();
        assert_eq!(got.value, "70");
        assert_eq!(got.source.to_string(), "flow.toml:2");
        // Asked by Airflow's name: the same setting.
        let got = lookup(
            "scheduler",
            "task_instance_heartbeat_timeout",
            &none,
            Some(&f),
        )
        .unwrap()
        .unwrap();
        assert_eq!(got.value, "70");

        let env = env_of(&[("FLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", "90")]);
        let got = lookup("scheduler", "zombie_threshold", &env, Some(&f))
            .unwrap()
            .unwrap();
        assert_eq!(got.value, "90");
        assert_eq!(
            got.source.to_string(),
            "env FLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"
        );
        let env = env_of(&[
            ("FLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", "90"),
            ("FLOW__SCHEDULER__ZOMBIE_THRESHOLD", "95"),
        ]);
        let got = lookup("scheduler", "zombie_threshold", &env, Some(&f))
            .unwrap()
            .unwrap();
        assert_eq!(got.value, "95");

        let env = env_of(&[("FLOW__CORE__PARALLELISM", "")]);
        let got = lookup("core", "parallelism", &env, Some(&f))
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.value.as_str(), got.source.to_string()),
            ("4", "flow.toml:5".into())
        );
        assert_eq!(
            lookup("core", "max_map_length", &none, Some(&f)).unwrap(),
            None
        );
        assert_eq!(lookup("core", "parallelism", &none, None).unwrap(), None);

        let (f, _) = file("[scheduler]\ntask_instance_heartbeat_timeout = 80\n");
        let got = lookup("scheduler", "zombie_threshold", &none, Some(&f))
            .unwrap()
            .unwrap();
        assert_eq!(
            got.source.to_string(),
            "flow.toml:2 as [scheduler] task_instance_heartbeat_timeout"
        );
        assert_eq!(
            got.source.describe(),
            "[scheduler] task_instance_heartbeat_timeout at /home/f/flow.toml:2"
        );
    }

    #[test]
    fn a_file_variable_reads_the_file_it_names() {
        let dir = std::env::temp_dir().join(format!("flow-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("key");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let path = secret.display().to_string();
        let env = env_of(&[("FLOW__WEBSERVER__SECRET_KEY_FILE", &path)]);
        let got = lookup("webserver", "secret_key", &env, None)
            .unwrap()
            .unwrap();
        assert_eq!(got.value, "s3cret");
        assert_eq!(
            got.source.to_string(),
            "env FLOW__WEBSERVER__SECRET_KEY_FILE"
        );
        let env = env_of(&[("FLOW__WEBSERVER__SECRET_KEY_FILE", "/nonexistent/x")]);
        assert!(lookup("webserver", "secret_key", &env, None).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn secrets_are_masked() {
        let db = find("database", "url").unwrap();
        assert_eq!(
            masked(
                db,
                "postgres://flow:pa:ss@db:5432/flow?sslmode=require&password=x"
            ),
            "postgres://flow:***@db:5432/flow?sslmode=require&password=***"
        );
        assert_eq!(
            masked(db, "postgres://flow@db/flow"),
            "postgres://flow@db/flow"
        );
        assert_eq!(masked(db, "/var/lib/flow.db"), "/var/lib/flow.db");
        let fernet = find("core", "fernet_key").unwrap();
        assert_eq!(masked(fernet, "abc"), "***");
        let smtp = find("smtp", "smtp_password").unwrap();
        assert_eq!(masked(smtp, "hunter2"), "***");
        assert_eq!(masked(find("api", "secret_key").unwrap(), "k"), "***");
        assert_eq!(masked(find("core", "parallelism").unwrap(), "3"), "3");
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    /// Every setting this crate reads is registered, with the default the code applies: the
    /// registry is what `flow config list` and the API show.
    #[test]
    fn every_setting_read_in_the_code_is_registered_with_its_default() {
        let sources = [
            include_str!("config.rs"),
            include_str!("ops.rs"),
            include_str!("web.rs"),
            include_str!("jobs.rs"),
            include_str!("main.rs"),
        ];
        let call = regex::Regex::new(
            r#"env_(value|bool|number)\(\s*"([a-z_]+)",\s*"([a-z_]+)"\s*(?:,\s*([^)]+?)\s*,?\s*)?\)"#,
        )
        .unwrap();
        let mut seen = 0;
        for text in sources {
            for c in call.captures_iter(text) {
                let (section, key) = (&c[2], &c[3]);
                let setting = find(section, key)
                    .unwrap_or_else(|| panic!("[{section}] {key} is read but not in SETTINGS"));
                seen += 1;
                let Some(default) = c.get(4).map(|m| m.as_str().replace('_', "")) else {
                    continue;
                };
                let literal = default == "true"
                    || default == "false"
                    || default.chars().all(|ch| ch.is_ascii_digit());
                if !literal {
                    continue;
                }
                match setting.fallback {
                    Fallback::Value(v) => assert_eq!(v, default, "[{section}] {key}"),
                    other => {
                        panic!("[{section}] {key}: the code defaults to {default}, not {other:?}")
                    }
                }
            }
        }
        assert!(
            seen >= 30,
            "only {seen} reads found: is the pattern still right?"
        );
        for s in SETTINGS {
            assert_eq!(
                find(s.section, s.key).map(|f| f.key),
                Some(s.key),
                "{}",
                s.key
            );
        }
    }
}
