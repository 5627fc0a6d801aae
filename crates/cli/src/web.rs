//! `flow webserver`, the web UI inside `flow standalone`, and `flow users ...`.

use std::io::Read as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;
use clap::Subcommand;
use flow_http::{AppState, WebConfig};
use flow_model::Role;
use flow_store::{NewUser, Store, UserChange};
use tokio::sync::watch;

use crate::{config, ops};

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user (roles: Admin, Op, User, Viewer).
    Create {
        #[arg(short, long)]
        username: String,
        /// The password; prefer --password-stdin, which keeps it out of shell history.
        #[arg(short, long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        #[arg(short, long)]
        role: String,
        #[arg(short, long, default_value = "")]
        email: String,
        #[arg(short, long, default_value = "")]
        firstname: String,
        #[arg(short, long, default_value = "")]
        lastname: String,
    },
    /// Every user and their role.
    List,
    /// Delete a user (their sessions end at once).
    Delete {
        #[arg(short, long)]
        username: String,
    },
}

pub async fn users(command: UsersCommand) -> Result<ExitCode> {
    let store = ops::connect_migrated().await?;
    match command {
        UsersCommand::Create {
            username,
            password,
            password_stdin,
            role,
            email,
            firstname,
            lastname,
        } => {
            let role = Role::parse_loose(&role).map_err(|e| anyhow!("--role: {e}"))?;
            let password = match (password, password_stdin) {
                (Some(p), false) => p,
                (None, true) => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text)?;
                    text.trim_end_matches(['\r', '\n']).to_owned()
                }
                _ => bail!("give the password with --password or --password-stdin"),
            };
            create_user(
                &store, &username, &password, role, &email, &firstname, &lastname,
            )
            .await?;
            println!("user {username} created with role {role}");
        }
        UsersCommand::List => {
            println!("{:<24} {:<8} {:<32} name", "username", "role", "email");
            for u in store.user_list().await? {
                println!(
                    "{:<24} {:<8} {:<32} {} {}",
                    u.username, u.role, u.email, u.first_name, u.last_name
                );
            }
        }
        UsersCommand::Delete { username } => {
            match store.user_delete(&username).await? {
                UserChange::Done => {}
                UserChange::Missing => bail!("no user `{username}`"),
                UserChange::LastAdmin => bail!(
                    "`{username}` is the last Admin and cannot be deleted; make another user \
                     Admin first"
                ),
            }
            println!("user {username} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn create_user(
    store: &Store,
    username: &str,
    password: &str,
    role: Role,
    email: &str,
    first_name: &str,
    last_name: &str,
) -> Result<()> {
    flow_http::auth::check_username(username).map_err(|e| anyhow!(e))?;
    flow_http::auth::check_password(password).map_err(|e| anyhow!(e))?;
    let hash = flow_http::auth::hash_password(password).map_err(|e| anyhow!("{e}"))?;
    let created = store
        .user_create(
            &NewUser {
                username,
                email,
                first_name,
                last_name,
                password_hash: &hash,
                role,
            },
            Utc::now(),
        )
        .await?;
    if !created {
        bail!("user `{username}` already exists");
    }
    Ok(())
}

/// The key that signs session cookies: `FLOW__WEBSERVER__SECRET_KEY`, else one generated once
/// and kept in `$FLOW_HOME/webserver_secret_key` (mode 0600), so sessions survive restarts.
fn secret_key() -> Result<Vec<u8>> {
    if let Some(key) = config::env_value("webserver", "secret_key")? {
        if key.len() < 32 {
            bail!("FLOW__WEBSERVER__SECRET_KEY must be at least 32 characters");
        }
        return Ok(key.into_bytes());
    }
    let path = config::flow_home().join("webserver_secret_key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        let key = key.trim().to_owned();
        if key.len() >= 32 {
            return Ok(key.into_bytes());
        }
    }
    let key = flow_http::auth::random_token(48).map_err(|e| anyhow!("{e}"))?;
    config::write_private(&path, &key)?;
    Ok(key.into_bytes())
}

/// On first start of `flow standalone` (no users yet): an `admin` user with a random password,
/// printed once and kept in `$FLOW_HOME/standalone_admin_password.txt` (mode 0600).
pub async fn ensure_admin(store: &Store) -> Result<()> {
    if store.user_count().await? > 0 {
        return Ok(());
    }
    let password = flow_http::auth::random_token(12).map_err(|e| anyhow!("{e}"))?;
    create_user(store, "admin", &password, Role::Admin, "", "", "").await?;
    let path = config::flow_home().join("standalone_admin_password.txt");
    let _ = std::fs::remove_file(&path);
    config::write_private(&path, &format!("{password}\n"))?;
    crate::log_fields::announce(&format!(
        "created user `admin` with password {password} (also in {}); change it or add users \
         with `flow users create`",
        path.display()
    ));
    Ok(())
}

/// The web UI on `port` until shutdown.
pub async fn run_webserver(
    store: Store,
    port: u16,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let host =
        config::env_value("webserver", "web_server_host")?.unwrap_or_else(|| "0.0.0.0".to_owned());
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .with_context(|| format!("web server address {host}:{port}"))?;
    let job_store = store.clone();
    let state = AppState::new(
        store,
        WebConfig {
            secret_key: secret_key()?,
            secure_cookies: config::env_bool("webserver", "cookie_secure", false)?,
            cipher: Some(config::fernet_cipher()?),
            exposed_config: config::exposed_config()?,
            connection_testing: config::connection_testing()?,
            default_ui_timezone: config::default_ui_timezone()?,
        },
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("web server on {addr} (is the port in use? -p picks another)"))?;
    // With -p 0 the system picks the port: say which.
    let port = listener.local_addr()?.port();
    crate::log_fields::announce(&format!("web UI at http://localhost:{port}"));
    let job = ops::keep_job(
        job_store,
        flow_store::JobStart::this_process("WebserverJob", &config::hostname()),
        shutdown.clone(),
    );
    let served = flow_http::serve(listener, state, async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    })
    .await
    .with_context(|| format!("web server on {addr}"));
    let _ = job.await;
    served
}

/// `flow webserver`.
pub async fn webserver(port: u16) -> Result<ExitCode> {
    let (store, _lock) = ops::connect_daemon("webserver", false).await?;
    let shutdown = ops::shutdown_signal();
    run_webserver(store, port, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
