//! `flow connections ...` and `flow rotate-fernet-key`: Airflow's connection commands.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use clap::{Subcommand, ValueEnum};
use flow_model::Connection;
use serde_json::{Value as Json, json};

use crate::config;
use crate::ops::connect_migrated;

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Add a connection: from a URI (`--conn-uri`), JSON (`--conn-json`) or fields.
    Add {
        conn_id: String,
        /// Airflow's URI form: type://login:password@host:port/schema?key=value.
        #[arg(long)]
        conn_uri: Option<String>,
        /// Airflow's JSON form: {"conn_type": ..., "host": ..., "extra": {...}}.
        #[arg(long)]
        conn_json: Option<String>,
        #[arg(long, alias = "type")]
        conn_type: Option<String>,
        #[arg(long, alias = "host")]
        conn_host: Option<String>,
        #[arg(long, alias = "login")]
        conn_login: Option<String>,
        #[arg(long, alias = "password")]
        conn_password: Option<String>,
        #[arg(long, alias = "schema")]
        conn_schema: Option<String>,
        #[arg(long, alias = "port")]
        conn_port: Option<u16>,
        /// A JSON object; for `kafka`, librdkafka settings such as bootstrap.servers.
        #[arg(long, alias = "extra")]
        conn_extra: Option<String>,
        #[arg(long, alias = "description")]
        conn_description: Option<String>,
    },
    /// Every connection, secrets masked.
    List {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One connection (an environment override if set), secrets masked.
    Get {
        conn_id: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Delete a connection from the database.
    Delete { conn_id: String },
    /// Test a connection as the web UI's Test button does (Airflow's `connections test`):
    /// a query, a request or a login with its client. Needs `[core] test_connection =
    /// Enabled`, as Airflow's. Exits 1 when the test fails.
    Test { conn_id: String },
    /// Print a new Fernet key for FLOW__CORE__FERNET_KEY.
    GenerateKey,
    /// Import connections from Airflow's export formats: a `.json` file
    /// (`{"conn_id": {"conn_type": ..., "host": ..., "password": ..., "extra": ...}}`) or a
    /// `.env` file (`conn_id=URI` or `conn_id=JSON` per line).
    Import {
        file: std::path::PathBuf,
        /// Replace connections that exist (else they are skipped).
        #[arg(long)]
        overwrite: bool,
    },
    /// Export every connection to a `.json` file in Airflow's format (or `.env`: one
    /// `conn_id=URI` per line). The file holds the secrets in clear, readable by you only.
    Export { file: std::path::PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub async fn run(command: ConnectionsCommand) -> Result<ExitCode> {
    match command {
        ConnectionsCommand::Add {
            conn_id,
            conn_uri,
            conn_json,
            conn_type,
            conn_host,
            conn_login,
            conn_password,
            conn_schema,
            conn_port,
            conn_extra,
            conn_description,
        } => {
            let fields = Fields {
                conn_type,
                host: conn_host,
                login: conn_login,
                password: conn_password,
                schema: conn_schema,
                port: conn_port,
                extra: conn_extra,
                description: conn_description,
            };
            let conn = build(&conn_id, conn_uri, conn_json, fields)?;
            let cipher = config::fernet_cipher()?;
            let store = connect_migrated().await?;
            if !store.connection_add(&conn, &cipher, Utc::now()).await? {
                bail!("a connection with conn_id `{conn_id}` already exists");
            }
            println!(
                "Successfully added `conn_id`={conn_id} : {}",
                masked_uri(&conn).replace("%2A%2A%2A", "***")
            );
            Ok(ExitCode::SUCCESS)
        }
        ConnectionsCommand::List { output } => {
            let cipher = config::fernet_cipher()?;
            let store = connect_migrated().await?;
            let conns = store.connection_list(&cipher).await?;
            print(&conns, output);
            Ok(ExitCode::SUCCESS)
        }
        ConnectionsCommand::Get { conn_id, output } => {
            let source = config::connection_source()?;
            let store = connect_migrated().await?;
            let Some(conn) = store.connection_resolve(&conn_id, &source).await? else {
                bail!("connection `{conn_id}` not found");
            };
            print(&[conn], output);
            Ok(ExitCode::SUCCESS)
        }
        ConnectionsCommand::Delete { conn_id } => {
            let store = connect_migrated().await?;
            if !store.connection_delete(&conn_id).await? {
                bail!("connection `{conn_id}` not found");
            }
            println!("Successfully deleted connection with `conn_id`={conn_id}");
            Ok(ExitCode::SUCCESS)
        }
        ConnectionsCommand::Test { conn_id } => test(&conn_id).await,
        ConnectionsCommand::GenerateKey => {
            println!("{}", flow_store::Cipher::generate_key());
            Ok(ExitCode::SUCCESS)
        }
        ConnectionsCommand::Import { file, overwrite } => import(&file, overwrite).await,
        ConnectionsCommand::Export { file } => export(&file).await,
    }
}

fn is_env_file(file: &std::path::Path) -> bool {
    file.extension().is_some_and(|e| e == "env")
}

/// The connections of an export file, each checked as `flow connections add` checks it; an
/// error names the file, the line (`.env`) and the connection.
fn parse_export(file: &std::path::Path, text: &str) -> Result<Vec<Connection>> {
    if is_env_file(file) {
        return text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|(i, line)| {
                let (id, value) = line.split_once('=').with_context(|| {
                    format!("{}:{}: expected conn_id=URI", file.display(), i + 1)
                })?;
                Connection::from_env_value(id.trim(), value.trim()).with_context(|| {
                    format!("{}:{}: connection `{}`", file.display(), i + 1, id.trim())
                })
            })
            .collect();
    }
    let json: Json =
        serde_json::from_str(text).with_context(|| format!("{}: not JSON", file.display()))?;
    let Json::Object(map) = json else {
        bail!(
            "{}: expected a JSON object of conn_id -> connection",
            file.display()
        );
    };
    map.iter()
        .map(|(id, value)| {
            Connection::from_json(id, &value.to_string())
                .with_context(|| format!("{}: connection `{id}`", file.display()))
        })
        .collect()
}

async fn import(file: &std::path::Path, overwrite: bool) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let conns = parse_export(file, &text)?;
    let cipher = config::fernet_cipher()?;
    let store = connect_migrated().await?;
    let (mut added, mut replaced, mut skipped) = (0, 0, 0);
    for conn in &conns {
        if store.connection_add(conn, &cipher, Utc::now()).await? {
            added += 1;
        } else if overwrite {
            store.connection_update(conn, &cipher, Utc::now()).await?;
            replaced += 1;
        } else {
            println!(
                "Could not import connection {}: connection already exists.",
                conn.conn_id
            );
            skipped += 1;
        }
    }
    println!("Imported {added} connection(s), replaced {replaced}, skipped {skipped}.");
    Ok(ExitCode::SUCCESS)
}

async fn export(file: &std::path::Path) -> Result<ExitCode> {
    let cipher = config::fernet_cipher()?;
    let store = connect_migrated().await?;
    let conns = store.connection_list(&cipher).await?;
    let text = if is_env_file(file) {
        conns
            .iter()
            .map(|c| format!("{}={}\n", c.conn_id, c.to_uri()))
            .collect::<String>()
    } else {
        let mut out = serde_json::Map::new();
        for c in &conns {
            out.insert(
                c.conn_id.clone(),
                json!({
                    "conn_type": c.conn_type,
                    "description": c.description,
                    "host": c.host,
                    "login": c.login,
                    "password": c.password,
                    "schema": c.schema,
                    "port": c.port,
                    "extra": c.extra,
                }),
            );
        }
        serde_json::to_string_pretty(&Json::Object(out))? + "\n"
    };
    // Secrets in clear: the file is created readable by its owner only.
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(file)
            .with_context(|| format!("writing {}", file.display()))?
    };
    std::io::Write::write_all(&mut f, text.as_bytes())
        .with_context(|| format!("writing {}", file.display()))?;
    // A file that existed keeps its old mode through `open`: narrow it too.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", file.display()))?;
    }
    println!("Connections successfully exported to {}", file.display());
    Ok(ExitCode::SUCCESS)
}

/// `flow rotate-fernet-key`: re-encrypts every connection and secret variable with the first key of
/// FLOW__CORE__FERNET_KEY (`new,old`).
pub async fn rotate() -> Result<ExitCode> {
    let cipher = config::fernet_cipher()?;
    let store = connect_migrated().await?;
    let n = store.connections_rotate(&cipher, Utc::now()).await?;
    let v = store.variables_rotate(&cipher, Utc::now()).await?;
    println!("re-encrypted {n} connection(s) and {v} variable(s) with the first fernet key");
    Ok(ExitCode::SUCCESS)
}

struct Fields {
    conn_type: Option<String>,
    host: Option<String>,
    login: Option<String>,
    password: Option<String>,
    schema: Option<String>,
    port: Option<u16>,
    extra: Option<String>,
    description: Option<String>,
}

impl Fields {
    fn any(&self) -> bool {
        self.conn_type.is_some()
            || self.host.is_some()
            || self.login.is_some()
            || self.password.is_some()
            || self.schema.is_some()
            || self.port.is_some()
            || self.extra.is_some()
    }
}

fn build(
    conn_id: &str,
    uri: Option<String>,
    json_form: Option<String>,
    fields: Fields,
) -> Result<Connection> {
    let mut conn = match (uri, json_form) {
        (Some(_), Some(_)) => bail!("give --conn-uri or --conn-json, not both"),
        (Some(uri), None) => {
            if fields.any() {
                bail!("--conn-uri cannot be combined with --conn-type, --conn-host, ... fields");
            }
            Connection::from_uri(conn_id, &uri)?
        }
        (None, Some(text)) => {
            if fields.any() {
                bail!("--conn-json cannot be combined with --conn-type, --conn-host, ... fields");
            }
            Connection::from_json(conn_id, &text)?
        }
        (None, None) => {
            let Some(conn_type) = &fields.conn_type else {
                bail!("--conn-type is required unless --conn-uri or --conn-json is given");
            };
            let mut conn = Connection::new(conn_id, conn_type)?;
            conn.host = fields.host;
            conn.login = fields.login;
            conn.password = fields.password;
            conn.schema = fields.schema;
            conn.port = fields.port;
            if let Some(extra) = fields.extra {
                let value: Json = serde_json::from_str(&extra).context("--conn-extra")?;
                if !value.is_object() {
                    bail!("--conn-extra must be a JSON object, got {value}");
                }
                conn.extra = Some(extra);
            }
            conn
        }
    };
    if fields.description.is_some() {
        conn.description = fields.description;
    }
    Ok(conn)
}

fn masked_uri(conn: &Connection) -> String {
    conn.masked().to_uri()
}

fn print(conns: &[Connection], output: Output) {
    let conns: Vec<Connection> = conns.iter().map(Connection::masked).collect();
    match output {
        Output::Json => {
            let items: Vec<Json> = conns
                .iter()
                .map(|c| {
                    json!({
                        "conn_id": c.conn_id,
                        "conn_type": c.conn_type,
                        "description": c.description,
                        "host": c.host,
                        "schema": c.schema,
                        "login": c.login,
                        "password": c.password,
                        "port": c.port,
                        "extra": c.extra,
                    })
                })
                .collect();
            println!("{}", Json::Array(items));
        }
        Output::Table => {
            println!(
                "{:<24} {:<12} {:<28} {:>6} {:<12} {:<8} extra",
                "conn_id", "conn_type", "host", "port", "login", "password"
            );
            for c in conns {
                println!(
                    "{:<24} {:<12} {:<28} {:>6} {:<12} {:<8} {}",
                    c.conn_id,
                    c.conn_type,
                    c.host.as_deref().unwrap_or(""),
                    c.port.map(|p| p.to_string()).unwrap_or_default(),
                    c.login.as_deref().unwrap_or(""),
                    c.password.as_deref().unwrap_or(""),
                    c.extra.as_deref().unwrap_or(""),
                );
            }
        }
    }
}

/// `flow connections test`: Airflow's messages, the test's own reason on failure (the tests
/// never put a secret in it).
async fn test(conn_id: &str) -> Result<ExitCode> {
    if config::test_connection_mode()? != flow_http::TestConnectionMode::Enabled {
        eprintln!("{}", flow_http::DISABLED_MESSAGE);
        return Ok(ExitCode::FAILURE);
    }
    let source = config::connection_source()?;
    let store = connect_migrated().await?;
    let Some(conn) = store.connection_resolve(conn_id, &source).await? else {
        bail!("connection `{conn_id}` not found");
    };
    println!("Retrieving connection: '{conn_id}'\n\nTesting...");
    match flow_executor::test_connection(&conn).await {
        Ok(message) => {
            println!("\nConnection success!\n{message}");
            Ok(ExitCode::SUCCESS)
        }
        Err(message) => {
            println!("\nConnection failed!\n{message}");
            Ok(ExitCode::FAILURE)
        }
    }
}
