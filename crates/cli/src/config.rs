//! Configuration: `FLOW__SECTION__KEY` environment variables (Airflow's `AIRFLOW__SECTION__KEY`
//! convention) over defaults; flags override both. `..._FILE` variants read secrets from files.

use std::path::PathBuf;

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
    std::fs::create_dir_all(&home)
        .with_context(|| format!("creating FLOW_HOME {}", home.display()))?;
    Ok(home.join("flow.db").display().to_string())
}
