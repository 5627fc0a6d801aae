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
    /// Print a new Fernet key for FLOW__CORE__FERNET_KEY.
    GenerateKey,
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
        ConnectionsCommand::GenerateKey => {
            println!("{}", flow_store::Cipher::generate_key());
            Ok(ExitCode::SUCCESS)
        }
    }
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
