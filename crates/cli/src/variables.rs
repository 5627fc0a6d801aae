//! `flow variables ...`: Airflow's variable commands, with Airflow's JSON file format for
//! import and export (`{"key": value}` or `{"key": {"value": ..., "description": ...}}`).

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use clap::{Subcommand, ValueEnum};
use flow_store::Variable;
use serde_json::{Map, Value as Json};

use crate::config;
use crate::ops::connect_migrated;

#[derive(Debug, Subcommand)]
pub enum VariablesCommand {
    /// Set a variable (created or replaced). Keys or descriptions naming a secret
    /// (password, token, api_key, ...) are encrypted at rest.
    Set {
        key: String,
        value: String,
        #[arg(long)]
        description: Option<String>,
        /// Store VALUE as JSON (checked).
        #[arg(short = 'j', long)]
        serialize_json: bool,
    },
    /// Print a variable's value (the environment's FLOW_VAR_/AIRFLOW_VAR_ override if set).
    Get {
        key: String,
        /// Printed when there is no such variable (else: an error).
        #[arg(long)]
        default: Option<String>,
        /// Pretty-print the value as JSON.
        #[arg(short = 'j', long)]
        deserialize_json: bool,
    },
    /// Every variable's key (and description).
    List {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Delete a variable.
    Delete { key: String },
    /// Import variables from a JSON file.
    Import {
        file: std::path::PathBuf,
        #[arg(long, value_enum, default_value_t = OnExisting::Overwrite)]
        action_on_existing_key: OnExisting,
    },
    /// Export every variable to a JSON file.
    Export { file: std::path::PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnExisting {
    Overwrite,
    Fail,
    Skip,
}

pub async fn run(command: VariablesCommand) -> Result<ExitCode> {
    let cipher = config::fernet_cipher()?;
    match command {
        VariablesCommand::Set {
            key,
            value,
            description,
            serialize_json,
        } => {
            if serialize_json {
                serde_json::from_str::<Json>(&value).with_context(|| {
                    format!("--serialize-json: the value of `{key}` is not JSON")
                })?;
            }
            flow_store::check_variable_key(&key).map_err(|e| anyhow::anyhow!("{e}"))?;
            let store = connect_migrated().await?;
            let v = Variable {
                key: key.clone(),
                value,
                description,
            };
            store
                .variable_set(&v, Some(&cipher), false, Utc::now())
                .await?;
            println!("Variable {key} created");
            Ok(ExitCode::SUCCESS)
        }
        VariablesCommand::Get {
            key,
            default,
            deserialize_json,
        } => {
            let from_env = ["FLOW_VAR_", "AIRFLOW_VAR_"]
                .iter()
                .find_map(|p| std::env::var(format!("{p}{}", key.to_uppercase())).ok());
            let value = match from_env {
                Some(v) => Some(v),
                None => {
                    let store = connect_migrated().await?;
                    store
                        .variable_get(&key, Some(&cipher))
                        .await?
                        .map(|v| v.value)
                }
            };
            let Some(value) = value.or(default) else {
                bail!("Variable {key} does not exist");
            };
            if deserialize_json {
                let json: Json = serde_json::from_str(&value)
                    .with_context(|| format!("variable `{key}` is not JSON"))?;
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                println!("{value}");
            }
            Ok(ExitCode::SUCCESS)
        }
        VariablesCommand::List { output } => {
            let store = connect_migrated().await?;
            let vars = store.variable_list(Some(&cipher)).await?;
            match output {
                Output::Json => {
                    let list: Vec<Json> = vars
                        .iter()
                        .map(|v| serde_json::json!({"key": v.key, "description": v.description}))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&list)?);
                }
                Output::Table => {
                    println!("key\tdescription");
                    for v in &vars {
                        println!("{}\t{}", v.key, v.description.as_deref().unwrap_or(""));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        VariablesCommand::Delete { key } => {
            let store = connect_migrated().await?;
            if !store.variable_delete(&key).await? {
                bail!("Variable {key} does not exist");
            }
            println!("Variable {key} deleted");
            Ok(ExitCode::SUCCESS)
        }
        VariablesCommand::Import {
            file,
            action_on_existing_key,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let vars = parse_file(&text).with_context(|| format!("{}", file.display()))?;
            let store = connect_migrated().await?;
            let (mut imported, mut skipped) = (0, 0);
            for v in &vars {
                let only_new = action_on_existing_key != OnExisting::Overwrite;
                if store
                    .variable_set(v, Some(&cipher), only_new, Utc::now())
                    .await?
                {
                    imported += 1;
                } else if action_on_existing_key == OnExisting::Fail {
                    bail!(
                        "{}: variable `{}` exists (--action-on-existing-key fail); {imported} imported before it",
                        file.display(),
                        v.key
                    );
                } else {
                    skipped += 1;
                }
            }
            println!(
                "{imported} of {} variables successfully imported ({skipped} skipped).",
                vars.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        VariablesCommand::Export { file } => {
            let store = connect_migrated().await?;
            let vars = store.variable_list(Some(&cipher)).await?;
            let mut out = Map::new();
            for v in &vars {
                // A value that is JSON is exported as JSON, as Airflow does.
                let value = serde_json::from_str::<Json>(&v.value)
                    .unwrap_or_else(|_| Json::String(v.value.clone()));
                let entry = match &v.description {
                    Some(d) => serde_json::json!({"value": value, "description": d}),
                    None => value,
                };
                out.insert(v.key.clone(), entry);
            }
            std::fs::write(
                &file,
                serde_json::to_string_pretty(&Json::Object(out))? + "\n",
            )
            .with_context(|| format!("writing {}", file.display()))?;
            println!(
                "{} variables successfully exported to {}",
                vars.len(),
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Airflow's variables file: an object of key -> value, where a value is a string, other
/// JSON (stored as its JSON text), or `{"value": ..., "description": ...}`.
fn parse_file(text: &str) -> Result<Vec<Variable>> {
    let json: Json = serde_json::from_str(text).context("not JSON")?;
    let Json::Object(map) = json else {
        bail!("expected a JSON object of variable key -> value");
    };
    let as_text = |v: &Json| match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    map.iter()
        .map(|(key, value)| {
            flow_store::check_variable_key(key).map_err(|e| anyhow::anyhow!("`{key}`: {e}"))?;
            let (value, description) = match value {
                Json::Object(o) if o.contains_key("value") && o.len() <= 2 => (
                    as_text(&o["value"]),
                    o.get("description")
                        .and_then(Json::as_str)
                        .map(str::to_owned),
                ),
                other => (as_text(other), None),
            };
            Ok(Variable {
                key: key.clone(),
                value,
                description,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn airflow_variable_files() {
        let vars = parse_file(
            r#"{"plain": "x", "n": 3, "obj": {"a": 1}, "described": {"value": "v", "description": "d"}}"#,
        )
        .unwrap();
        let get = |k: &str| vars.iter().find(|v| v.key == k).unwrap();
        assert_eq!(get("plain").value, "x");
        assert_eq!(get("n").value, "3");
        assert_eq!(get("obj").value, r#"{"a":1}"#);
        assert_eq!(get("described").value, "v");
        assert_eq!(get("described").description.as_deref(), Some("d"));
        assert!(parse_file("[1]").is_err());
    }
}
