//! Commands that talk to the metadata database: db, standalone/scheduler/worker, trigger,
//! pause, runs and task inspection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration as StdDuration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Subcommand;
use flow_dag::Dag;
use flow_executor::triggerer::{Triggerer, TriggererConfig};
use flow_executor::worker::{Worker, WorkerConfig, WorkerWakeups};
use flow_model::{DagRunState, TaskInstanceState};
use flow_scheduler::{DagProcessor, Scheduler, SchedulerConfig, Wakeups};
use flow_scheduler::{EventPublisher, EventsConfig, KafkaTriggerConfig, KafkaTriggers};
use flow_store::{Backend, Store, TiKey, TriggerError, TriggerRequest};
use tokio::sync::watch;

use crate::config;

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply pending migrations.
    Migrate,
    /// Check that the database is reachable and fully migrated.
    Check,
    /// Drop everything and migrate again.
    Reset {
        /// Required: this deletes all runs, logs and history.
        #[arg(long)]
        yes: bool,
    },
    /// Purge old records in metadata tables (Airflow's `airflow db clean`).
    Clean(crate::db_clean::CleanArgs),
}

pub async fn connect() -> Result<Store> {
    let url = config::database_url()?;
    config::make_sqlite_private(&url)?;
    // Airflow's `sql_alchemy_pool_size`: PostgreSQL's max_connections must cover every
    // process's 2 x pool size + 1.
    let pool_size = config::env_number("database", "pool_size", 8)?;
    let pool_size = u32::try_from(pool_size)
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| anyhow!("FLOW__DATABASE__POOL_SIZE must be 1 to 1000, got {pool_size}"))?;
    let store = Store::connect_sized(&url, pool_size)
        .await
        .with_context(|| format!("connecting to {}", flow_store::redact_url(&url)))?;
    Ok(store)
}

/// Connects and applies migrations: every command that reads or writes state starts this
/// way. A database a newer flow migrated is refused before anything is written.
pub async fn connect_migrated() -> Result<Store> {
    let store = connect().await?;
    migrate_known(&store).await?;
    Ok(store)
}

/// Applies pending migrations, unless the database is newer than this binary.
async fn migrate_known(store: &Store) -> Result<()> {
    let unknown = store.unknown_migrations().await?;
    if let Some(newest) = unknown.last() {
        bail!(
            "the database {} was migrated by a newer flow (migration {newest} is unknown to flow {}): \
             upgrade this flow, or set FLOW__DATABASE__URL to another database",
            store.redacted_url(),
            env!("CARGO_PKG_VERSION")
        );
    }
    store.migrate().await.context("migrating the database")?;
    Ok(())
}

/// What a daemon (scheduler, standalone, worker, triggerer, web server) holds while it runs
/// on SQLite: the lock that makes it the only one.
pub struct DaemonLock {
    _file: Option<std::fs::File>,
}

/// Connects as a long-running process: the schema checks of [`connect_migrated`]; on SQLite,
/// `exclusive` daemons (a scheduler: SQLite is the one-process embedded mode) take a lock
/// file beside the database and a second one is refused; every daemon's Fernet key must
/// read the secrets already stored.
pub async fn connect_daemon(what: &str, exclusive: bool) -> Result<(Store, DaemonLock)> {
    let store = connect().await?;
    let url = config::database_url()?;
    let lock = match (store.backend(), exclusive, config::sqlite_path(&url)) {
        (Backend::Sqlite, true, Some(path)) => Some(lock_sqlite(&path, what)?),
        _ => None,
    };
    migrate_known(&store).await?;
    let cipher = config::fernet_cipher()?;
    if !store.fernet_check(&cipher).await? {
        bail!(
            "FLOW__CORE__FERNET_KEY does not decrypt the secrets stored in {}: every process of \
             a cluster needs the same key (set FLOW__CORE__FERNET_KEY, or the file \
             $FLOW_HOME/fernet_key, to the key the others use)",
            store.redacted_url()
        );
    }
    Ok((store, DaemonLock { _file: lock }))
}

/// Takes `<database>.daemon.lock` (an `flock`, released when the process ends however it
/// ends) or says who holds it.
fn lock_sqlite(db: &Path, what: &str) -> Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = PathBuf::from(format!("{}.daemon.lock", db.display()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "another flow {} already runs on the SQLite database {}; SQLite is the \
                 one-process embedded mode, so a second {what} is refused: set \
                 FLOW__DATABASE__URL to a PostgreSQL database to run several schedulers and \
                 workers",
                holder.trim().split_once(' ').map_or("process", |(_, w)| w),
                db.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(
        file,
        "{} {what} (pid {})",
        std::process::id(),
        std::process::id()
    )?;
    Ok(file)
}

pub async fn db(command: DbCommand) -> Result<ExitCode> {
    // Checks its arguments before it connects.
    if let DbCommand::Clean(args) = command {
        return crate::db_clean::run(args).await;
    }
    let store = connect().await?;
    match command {
        DbCommand::Migrate => {
            store.migrate().await?;
            println!("database {} is up to date", store.redacted_url());
        }
        DbCommand::Check => {
            store.ping().await?;
            let pending = store.pending_migrations().await?;
            if !pending.is_empty() {
                eprintln!(
                    "database {} needs migrations: {} (run `flow db migrate`)",
                    store.redacted_url(),
                    pending.join(", ")
                );
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "database {} is reachable and up to date",
                store.redacted_url()
            );
        }
        DbCommand::Reset { yes } => {
            if !yes {
                bail!("`flow db reset` deletes everything; pass --yes to confirm");
            }
            store.reset().await?;
            println!("database {} reset", store.redacted_url());
        }
        // Handled above, before connecting.
        DbCommand::Clean(_) => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Stops on Ctrl-C or SIGTERM.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// Whether DAG files may be symbolic links to files outside the dags folder (off: a link
/// could show any file the daemon can read to everyone who reads DAG sources).
pub fn allow_external_dag_links() -> Result<bool> {
    config::env_bool("core", "allow_external_dag_links", false)
}

/// Airflow's `[core] max_map_length`: the most instances a mapped task may have.
fn max_map_length() -> Result<usize> {
    let n = config::env_number(
        "core",
        "max_map_length",
        i64::try_from(flow_dag::dag::DEFAULT_MAX_MAP_LENGTH).unwrap_or(1024),
    )?;
    usize::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| anyhow!("FLOW__CORE__MAX_MAP_LENGTH must be at least 1, got {n}"))
}

/// `[core] max_xcom_size`: the largest XCom an operator may push, in bytes of JSON.
pub fn max_xcom_size() -> Result<usize> {
    let default = i64::try_from(flow_executor::DEFAULT_MAX_XCOM_SIZE).unwrap_or(1 << 20);
    let n = config::env_number("core", "max_xcom_size", default)?;
    usize::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| anyhow!("FLOW__CORE__MAX_XCOM_SIZE must be at least 1, got {n}"))
}

/// Airflow's `[smtp]` section from `FLOW__SMTP__*` (smtp_host, smtp_port, smtp_user,
/// smtp_password, smtp_starttls, smtp_ssl, smtp_mail_from, smtp_timeout).
pub fn smtp_settings() -> Result<flow_executor::email::SmtpSettings> {
    let d = flow_executor::email::SmtpSettings::default();
    let port = config::env_number("smtp", "smtp_port", i64::from(d.port))?;
    Ok(flow_executor::email::SmtpSettings {
        host: config::env_value("smtp", "smtp_host")?.unwrap_or(d.host),
        port: u16::try_from(port)
            .map_err(|_| anyhow!("FLOW__SMTP__SMTP_PORT must be a port number, got {port}"))?,
        user: config::env_value("smtp", "smtp_user")?.filter(|u| !u.is_empty()),
        password: config::env_value("smtp", "smtp_password")?,
        starttls: config::env_bool("smtp", "smtp_starttls", d.starttls)?,
        ssl: config::env_bool("smtp", "smtp_ssl", d.ssl)?,
        mail_from: config::env_value("smtp", "smtp_mail_from")?,
        timeout: StdDuration::from_secs(
            u64::try_from(config::env_number("smtp", "smtp_timeout", 30)?.max(1)).unwrap_or(30),
        ),
    })
}

pub fn scheduler_config(dags_folder: &Path) -> Result<SchedulerConfig> {
    Ok(SchedulerConfig {
        dags_folder: dags_folder.to_path_buf(),
        parallelism: config::env_number("core", "parallelism", 32)?,
        dags_are_paused_at_creation: config::env_bool("core", "dags_are_paused_at_creation", true)?,
        zombie_threshold: zombie_threshold()?,
        task_queued_timeout: StdDuration::from_secs(
            u64::try_from(config::env_number("scheduler", "task_queued_timeout", 600)?)
                .unwrap_or(600),
        ),
        num_stuck_in_queued_retries: config::env_number(
            "scheduler",
            "num_stuck_in_queued_retries",
            2,
        )?
        .max(0),
        hostname: config::hostname(),
        max_map_length: max_map_length()?,
        allow_external_dag_links: allow_external_dag_links()?,
        retention: retention_config()?,
        ..SchedulerConfig::default()
    })
}

/// What the scheduler's background retention keeps: `[core] max_runs_kept_per_dag` runs per
/// DAG, `[logging] retention_days` days of task logs; unset keeps everything.
fn retention_config() -> Result<flow_scheduler::RetentionConfig> {
    Ok(flow_scheduler::RetentionConfig {
        max_runs_kept_per_dag: positive_count(
            config::env_value("core", "max_runs_kept_per_dag")?,
            "FLOW__CORE__MAX_RUNS_KEPT_PER_DAG",
        )?,
        log_retention_days: positive_count(
            config::env_value("logging", "retention_days")?,
            "FLOW__LOGGING__RETENTION_DAYS",
        )?,
    })
}

/// A setting that is a count of at least 1 when set (an empty value is unset).
fn positive_count(value: Option<String>, name: &str) -> Result<Option<u32>> {
    let Some(text) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    match text.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => bail!(
            "{name} must be a whole number of at least 1 (unset keeps everything), got `{text}`"
        ),
    }
}

/// Airflow's `[scheduler] zombie_threshold` (here also the worker's fencing horizon).
fn zombie_threshold() -> Result<StdDuration> {
    Ok(StdDuration::from_secs(
        u64::try_from(config::env_number("scheduler", "zombie_threshold", 60)?.max(1))
            .unwrap_or(60),
    ))
}

pub fn worker_config(
    dags_folder: &Path,
    worker_id: Option<String>,
    queues: Option<Vec<String>>,
    concurrency: Option<usize>,
) -> Result<WorkerConfig> {
    let default_concurrency =
        usize::try_from(config::env_number("worker", "concurrency", 16)?).unwrap_or(16);
    let hostname = config::hostname();
    let worker_id = match worker_id.or(config::env_value("worker", "id")?) {
        Some(id) if id.trim().is_empty() || id.len() > 250 => {
            bail!("the worker id (--worker-id or FLOW__WORKER__ID) must be 1 to 250 characters")
        }
        Some(id) => id,
        None => format!("{hostname}-{}", std::process::id()),
    };
    let queues = queues.unwrap_or_else(|| vec!["default".into()]);
    if let Some(bad) = queues.iter().find(|q| q.trim().is_empty()) {
        bail!("--queues names an empty queue ({bad:?}): give comma-separated queue names");
    }
    Ok(WorkerConfig {
        worker_id,
        hostname,
        queues,
        concurrency: concurrency.unwrap_or(default_concurrency).max(1),
        heartbeat_interval: StdDuration::from_secs(
            u64::try_from(config::env_number("worker", "heartbeat_interval", 5)?.max(1))
                .unwrap_or(5),
        ),
        heartbeat_timeout: zombie_threshold()?,
        shutdown_timeout: StdDuration::from_secs(
            u64::try_from(config::env_number("worker", "shutdown_timeout", 60)?.max(0))
                .unwrap_or(60),
        ),
        dags_folder: dags_folder.to_path_buf(),
        connections: Some(config::connection_source()?),
        max_map_length: max_map_length()?,
        max_xcom_size: max_xcom_size()?,
        smtp: Some(smtp_settings()?),
        // Airflow's `[api] base_url`: where the log links of callbacks point.
        base_url: config::env_value("webserver", "base_url")?
            .or(config::env_value("api", "base_url")?)
            .unwrap_or_else(|| "http://localhost:8080".to_owned()),
        ..WorkerConfig::default()
    })
}

/// Keeps a job row for a process that has no loop of its own to heartbeat it (the web
/// server): started now, heartbeated every 5 s, ended when `shutdown` turns true. A database
/// outage delays the row, never the process.
pub fn keep_job(
    store: Store,
    job: flow_store::JobStart,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut id = None;
        loop {
            let now = Utc::now();
            let beat = match id {
                None => store.job_start(&job, now).await.map(|new| id = Some(new)),
                Some(id) => store.job_heartbeat(id, now).await,
            };
            if let Err(e) = beat {
                tracing::warn!(error = %e, job_type = %job.job_type, "job heartbeat failed");
            }
            tokio::select! {
                () = tokio::time::sleep(StdDuration::from_secs(5)) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        if let Some(id) = id
            && let Err(e) = store.job_end(id, Utc::now()).await
        {
            tracing::warn!(error = %e, "could not record the job's end");
        }
    })
}

/// Whether a process with this pid runs on this host.
fn process_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Records the worker as a live `WorkerJob`, refusing an id another live worker uses, and
/// starts its reaper (see `flow_executor::reaper`).
async fn register_worker(store: &Store, config: &mut WorkerConfig) -> Result<()> {
    let job = flow_store::JobStart {
        instance: Some(config.worker_id.clone()),
        queues: config.queues.clone(),
        ..flow_store::JobStart::this_process("WorkerJob", &config.hostname)
    };
    let now = Utc::now();
    let stale_before =
        now - chrono::Duration::from_std(config.heartbeat_timeout).unwrap_or_default();
    let mut started = store.job_start_unique(&job, stale_before, now).await?;
    // The same id on this host whose process is gone (a restart after a crash: a container
    // comes back with its old host name, often as the same pid): that worker is dead, not
    // live, whatever its last heartbeat says.
    if let Err(other) = &started
        && other.hostname == config.hostname
        && other
            .pid
            .is_some_and(|p| p == i64::from(std::process::id()) || !process_alive(p))
    {
        store.job_end_failed(other.id, now).await?;
        started = store.job_start_unique(&job, stale_before, now).await?;
    }
    match started {
        Ok(id) => {
            config.job_id = Some(id);
            let exe = std::env::current_exe().context("finding this program for the reaper")?;
            flow_executor::reaper::start(&exe, &["__reap"])
                .context("starting the worker's reaper")?;
            Ok(())
        }
        Err(other) => bail!(
            "worker id `{}` is in use by a live worker on {} (pid {}, heartbeat {} s ago): give \
             each worker its own --worker-id (FLOW__WORKER__ID)",
            config.worker_id,
            other.hostname,
            other.pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
            (now - other.latest_heartbeat).num_seconds().max(0)
        ),
    }
}

/// What `flow standalone` / `flow scheduler` run in this process.
#[derive(Debug, Default)]
pub struct Serve {
    pub with_worker: bool,
    /// Parse the dags folder here (off with `--no-processor`: a `flow dag-processor` does).
    pub process_dags: bool,
    pub worker: Option<WorkerConfig>,
    pub web_port: Option<u16>,
    /// `--metrics-port`: `/metrics` on its own port (the web server has its own).
    pub metrics_port: Option<u16>,
}

/// `--metrics-port`: serves this process's `/metrics` on `port` (on the web server's host
/// setting, `0.0.0.0` by default) until shutdown. A port that cannot be bound stops the
/// command before it starts work.
async fn serve_metrics(
    store: &Store,
    port: Option<u16>,
    shutdown: &watch::Receiver<bool>,
) -> Result<()> {
    let Some(port) = port else {
        return Ok(());
    };
    let host =
        config::env_value("webserver", "web_server_host")?.unwrap_or_else(|| "0.0.0.0".to_owned());
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("metrics port {host}:{port}"))?;
    let port = listener.local_addr().map_or(port, |a| a.port());
    eprintln!("flow: metrics at http://{host}:{port}/metrics");
    let router = flow_http::metrics::metrics_router(store.clone());
    let mut shutdown = shutdown.clone();
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

/// `flow standalone` and `flow scheduler`: the scheduler, with an embedded worker and
/// triggerer unless `with_worker` is false.
pub async fn serve_with(dags_folder: &Path, serve: Serve) -> Result<ExitCode> {
    let Serve {
        with_worker,
        process_dags,
        worker,
        web_port,
        metrics_port,
    } = serve;
    let what = if web_port.is_some() {
        "standalone"
    } else {
        "scheduler"
    };
    let (store, _lock) = connect_daemon(what, true).await?;
    crate::log_fields::announce(&format!(
        "metadata database {} ({}), dags folder {}",
        store.redacted_url(),
        match store.backend() {
            Backend::Postgres => "PostgreSQL",
            Backend::Sqlite => "SQLite",
        },
        dags_folder.display()
    ));
    let shutdown = shutdown_signal();
    serve_metrics(&store, metrics_port, &shutdown).await?;
    // FLOW_DEBUG_HEAP=1 logs the live heap every 10 s: what the daemon really holds, which
    // its resident size cannot tell apart from allocator slack.
    if std::env::var_os("FLOW_DEBUG_HEAP").is_some() {
        crate::ALLOC.start_counting();
        tokio::spawn(async {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                tracing::info!(live_bytes = crate::ALLOC.live_bytes(), "heap");
            }
        });
    }
    let wakeups = Wakeups::default();
    store.spawn_wake_listener(vec![
        (flow_store::WAKE_SCHEDULER, wakeups.scheduler.clone()),
        (flow_store::WAKE_WORKERS, wakeups.workers.clone()),
        (flow_store::WAKE_TRIGGERER, wakeups.triggerer.clone()),
    ]);
    let scheduler = Scheduler::new(
        store.clone(),
        SchedulerConfig {
            process_dags,
            ..scheduler_config(dags_folder)?
        },
        wakeups.clone(),
    );
    // The web UI first: a port already in use should stop `flow standalone` before it
    // starts scheduling.
    let web = match web_port {
        Some(port) => {
            crate::web::ensure_admin(&store).await?;
            let (store, shutdown) = (store.clone(), shutdown.clone());
            Some(tokio::spawn(crate::web::run_webserver(
                store, port, shutdown,
            )))
        }
        None => None,
    };
    let mut handles = Vec::new();
    handles.push(tokio::spawn(scheduler.run(shutdown.clone())));
    // Runs from Kafka messages (`schedule: {kafka: ...}`); idle unless a DAG declares one.
    let kafka_triggers = KafkaTriggers::new(
        store.clone(),
        config::connection_source()?,
        KafkaTriggerConfig {
            hostname: config::hostname(),
            ..KafkaTriggerConfig::default()
        },
    );
    handles.push(tokio::spawn(kafka_triggers.run(shutdown.clone())));
    // Lifecycle events to Kafka, when `[events] kafka_conn_id` and `kafka_topic` are set.
    if let Some(config) = events_config()? {
        let publisher = EventPublisher::new(store.clone(), config::connection_source()?, config);
        handles.push(tokio::spawn(publisher.run(shutdown.clone())));
    }
    if with_worker {
        let mut config = match worker {
            Some(c) => c,
            None => worker_config(dags_folder, None, None, None)?,
        };
        register_worker(&store, &mut config).await?;
        let worker = Worker::new(
            store.clone(),
            config,
            WorkerWakeups {
                work: wakeups.workers.clone(),
            },
        );
        handles.push(tokio::spawn(worker.run(shutdown.clone())));
        // The triggerer runs beside the embedded worker, as `airflow standalone` runs one.
        let triggerer = Triggerer::new(
            store.clone(),
            TriggererConfig {
                wake: wakeups.triggerer.clone(),
                ..triggerer_config()?
            },
        );
        handles.push(tokio::spawn(triggerer.run(shutdown.clone())));
    }
    if let Some(web) = web {
        web.await.map_err(|e| anyhow!("web server failed: {e}"))??;
    }
    for h in handles {
        h.await.map_err(|e| anyhow!("task failed: {e}"))?;
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// `flow dag-processor`: parses the dags folder into the database, for schedulers started
/// with `--no-processor`. Several may run (each file's rows are upserts of the same content).
pub async fn dag_processor(dags_folder: &Path, metrics_port: Option<u16>) -> Result<ExitCode> {
    let (store, _lock) = connect_daemon("dag-processor", false).await?;
    let shutdown = shutdown_signal();
    serve_metrics(&store, metrics_port, &shutdown).await?;
    let config = scheduler_config(dags_folder)?;
    let processor = DagProcessor::new(
        store.clone(),
        dags_folder.to_path_buf(),
        config.dags_are_paused_at_creation,
    )
    .allow_external_links(config.allow_external_dag_links);
    processor.run(config.hostname, shutdown).await;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

fn events_config() -> Result<Option<EventsConfig>> {
    let conn_id = config::env_value("events", "kafka_conn_id")?;
    let topic = config::env_value("events", "kafka_topic")?;
    match (conn_id, topic) {
        (None, None) => Ok(None),
        (Some(conn_id), Some(topic)) => Ok(Some(EventsConfig {
            conn_id,
            topic,
            poll_interval: std::time::Duration::from_millis(200),
            batch: 500,
            max_backlog: config::env_number("events", "max_backlog", 100_000)?.max(1),
            holder: format!("{}-{}", config::hostname(), std::process::id()),
            lease_ttl: std::time::Duration::from_secs(10),
        })),
        _ => {
            bail!("set both FLOW__EVENTS__KAFKA_CONN_ID and FLOW__EVENTS__KAFKA_TOPIC, or neither")
        }
    }
}

fn triggerer_config() -> Result<TriggererConfig> {
    let capacity = config::env_number("triggerer", "capacity", 10_000)?;
    let hostname = config::hostname();
    Ok(TriggererConfig {
        triggerer_id: format!("triggerer-{hostname}-{}", std::process::id()),
        hostname,
        capacity: capacity.max(1),
        connections: Some(config::connection_source()?),
        ..TriggererConfig::default()
    })
}

/// `flow triggerer`: runs deferred tasks' waits (more than one may run; each takes over the
/// triggers of one that stopped heartbeating).
pub async fn triggerer(metrics_port: Option<u16>) -> Result<ExitCode> {
    let (store, _lock) = connect_daemon("triggerer", false).await?;
    let shutdown = shutdown_signal();
    serve_metrics(&store, metrics_port, &shutdown).await?;
    let config = triggerer_config()?;
    // New deferrals wake it at once (PostgreSQL NOTIFY), not at its next poll.
    store.spawn_wake_listener(vec![(flow_store::WAKE_TRIGGERER, config.wake.clone())]);
    Triggerer::new(store, config).run(shutdown).await;
    Ok(ExitCode::SUCCESS)
}

/// `flow worker`: a remote worker. Needs PostgreSQL: several processes claiming from one
/// SQLite file would contend for its single writer lock.
pub async fn worker(mut config: WorkerConfig, metrics_port: Option<u16>) -> Result<ExitCode> {
    // A remote worker runs tasks against the DAG bundles in the database, not a dags folder.
    config.bundle_dir = Some(config::flow_home().join("bundles"));
    // Refused before anything is written to the database.
    if config::sqlite_path(&config::database_url()?).is_some() {
        bail!(
            "`flow worker` needs PostgreSQL (set FLOW__DATABASE__URL=postgres://...); SQLite is \
             the one-process embedded mode: use `flow standalone` or `flow scheduler`, which run \
             an embedded worker"
        );
    }
    let (store, _lock) = connect_daemon("worker", false).await?;
    register_worker(&store, &mut config).await?;
    let shutdown = shutdown_signal();
    serve_metrics(&store, metrics_port, &shutdown).await?;
    let wakeups = WorkerWakeups::default();
    // Queued work wakes it at once (PostgreSQL NOTIFY), not at its next poll.
    store.spawn_wake_listener(vec![(flow_store::WAKE_WORKERS, wakeups.work.clone())]);
    Worker::new(store, config, wakeups).run(shutdown).await;
    Ok(ExitCode::SUCCESS)
}

/// The DAG as the database knows it; parses the dags folder once if the database has never
/// seen it (so `trigger` works before a scheduler ever ran).
pub async fn dag_from_store(
    store: &Store,
    dags_folder: &Path,
    dag_id: &str,
) -> Result<(Dag, String)> {
    if store.serialized_dag_get(dag_id).await?.is_none() && dags_folder.exists() {
        let paused = config::env_bool("core", "dags_are_paused_at_creation", true)?;
        DagProcessor::new(store.clone(), dags_folder.to_path_buf(), paused)
            .allow_external_links(allow_external_dag_links()?)
            .run_once(Utc::now())
            .await?;
    }
    let Some((data, hash)) = store.serialized_dag_get(dag_id).await? else {
        let known: Vec<String> = store
            .dag_list()
            .await?
            .into_iter()
            .map(|d| d.dag_id)
            .collect();
        let hint = flow_dag::de::did_you_mean_hint(dag_id, known.iter().map(String::as_str));
        let errors = store.import_errors().await?;
        let broken = if errors.is_empty() {
            String::new()
        } else {
            format!(
                "; {} file(s) have import errors (`flow dags validate`)",
                errors.len()
            )
        };
        bail!("dag `{dag_id}` not found{hint}{broken}");
    };
    let dag = Dag::from_json(&data).context("reading the serialized DAG")?;
    Ok((dag, hash))
}

/// `--conf`: a JSON object (`dag_run.conf`), `{}` when absent.
pub fn parse_conf(conf: Option<&str>) -> Result<serde_json::Value> {
    let Some(text) = conf else {
        return Ok(serde_json::json!({}));
    };
    let conf: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        anyhow!(
            "--conf is not valid JSON: {e} (at line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    if !conf.is_object() {
        bail!("--conf must be a JSON object, like '{{\"key\": \"value\"}}'");
    }
    Ok(conf)
}

/// A date flag: `2025-01-01`, `2025-01-01T06:00:00` (UTC unless an offset is given).
pub fn parse_when(text: Option<&str>, what: &str) -> Result<Option<DateTime<Utc>>> {
    text.map(|t| {
        flow_dag::duration::parse_date(t, chrono_tz::UTC, Utc::now())
            .map_err(|e| anyhow!("{what}: {e}"))
    })
    .transpose()
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn opt_iso(t: Option<DateTime<Utc>>) -> String {
    t.map(iso).unwrap_or_default()
}

#[allow(clippy::too_many_arguments)] // mirrors the command's flags one to one
pub async fn trigger(
    dags_folder: &Path,
    dag_id: &str,
    conf: Option<&str>,
    run_id: Option<String>,
    logical_date: Option<String>,
    wait: bool,
) -> Result<ExitCode> {
    let conf = parse_conf(conf)?;
    let logical_date = parse_when(logical_date.as_deref(), "--logical-date")?;
    let store = connect_migrated().await?;
    let (dag, hash) = dag_from_store(&store, dags_folder, dag_id).await?;
    let mut req = TriggerRequest::manual(conf);
    req.run_id = run_id;
    req.logical_date = logical_date;
    req.triggered_by = Some("cli".into());
    let run = match store.dag_run_trigger(&dag, &hash, &req, Utc::now()).await {
        Ok(run) => run,
        Err(TriggerError::Store(e)) => return Err(e.into()),
        Err(e) => bail!("{e}"),
    };
    println!(
        "created dag run {} of {} (state {})",
        run.run_id, run.dag_id, run.state
    );
    let paused = store.dag_get(dag_id).await?.is_some_and(|d| d.is_paused);
    if paused {
        eprintln!(
            "note: dag `{dag_id}` is paused; the run waits until it is unpaused (`flow dags unpause {dag_id}`)"
        );
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    wait_for_run(&store, dag_id, &run.run_id).await
}

/// Prints task state changes until the run finishes; exit status 1 if it failed.
async fn wait_for_run(store: &Store, dag_id: &str, run_id: &str) -> Result<ExitCode> {
    let mut last: HashMap<(String, i64), TaskInstanceState> = HashMap::new();
    loop {
        for ti in store.ti_list_for_run(dag_id, run_id).await? {
            let key = (ti.key.task_id.clone(), ti.key.map_index);
            if last.get(&key) != Some(&ti.state) {
                println!("{}  {:<30} {}", iso(Utc::now()), ti_label(&ti), ti.state);
                last.insert(key, ti.state);
            }
        }
        let run = store
            .dag_run_get(dag_id, run_id)
            .await?
            .ok_or_else(|| anyhow!("dag run {run_id} disappeared"))?;
        match run.state {
            DagRunState::Success => {
                println!("dag run {run_id}: success");
                return Ok(ExitCode::SUCCESS);
            }
            DagRunState::Failed => {
                println!("dag run {run_id}: failed");
                return Ok(ExitCode::FAILURE);
            }
            _ => tokio::time::sleep(StdDuration::from_millis(100)).await,
        }
    }
}

pub async fn set_paused(dags_folder: &Path, dag_id: &str, paused: bool) -> Result<ExitCode> {
    let store = connect_migrated().await?;
    dag_from_store(&store, dags_folder, dag_id).await?;
    store.dag_set_paused(dag_id, paused).await?;
    println!(
        "dag {dag_id} {}",
        if paused { "paused" } else { "unpaused" }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn runs_list(dag_id: &str, limit: i64) -> Result<ExitCode> {
    let store = connect_migrated().await?;
    let runs = store.dag_run_list(dag_id, limit).await?;
    println!(
        "{:<50} {:<10} {:<9} {:<21} {:<21} {:<21}",
        "run_id", "type", "state", "logical_date", "start_date", "end_date"
    );
    for r in runs {
        println!(
            "{:<50} {:<10} {:<9} {:<21} {:<21} {:<21}",
            r.run_id,
            r.run_type.as_str(),
            r.state.as_str(),
            opt_iso(r.logical_date),
            opt_iso(r.start_date),
            opt_iso(r.end_date)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn task_states(dag_id: &str, run_id: &str) -> Result<ExitCode> {
    let store = connect_migrated().await?;
    if store.dag_run_get(dag_id, run_id).await?.is_none() {
        bail!("dag run `{run_id}` of dag `{dag_id}` not found");
    }
    println!(
        "{:<40} {:<16} {:<5} {:<21} {:<21} label",
        "task_id", "state", "try", "start_date", "end_date"
    );
    for ti in store.ti_list_for_run(dag_id, run_id).await? {
        println!(
            "{:<40} {:<16} {:<5} {:<21} {:<21} {}",
            ti_label(&ti),
            ti.state.as_str(),
            ti.try_number,
            opt_iso(ti.start_date),
            opt_iso(ti.end_date),
            ti.rendered_map_index.as_deref().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `flow tasks explain`: why a task instance is not running (what the REST API's
/// `dependencies` and the task instance page say), or what it is doing instead.
pub async fn task_explain(
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: i64,
) -> Result<ExitCode> {
    let store = connect_migrated().await?;
    let Some(run) = store.dag_run_get(dag_id, run_id).await? else {
        bail!("dag run `{run_id}` of dag `{dag_id}` not found");
    };
    let tis = store.ti_list_for_run(dag_id, run_id).await?;
    let Some(ti) = tis
        .iter()
        .find(|t| t.key.task_id == task_id && t.key.map_index == map_index)
    else {
        let mapped = tis
            .iter()
            .any(|t| t.key.task_id == task_id && t.key.map_index >= 0);
        if mapped && map_index < 0 {
            bail!("`{task_id}` is a mapped task: name an instance with --map-index N");
        }
        let known = tis.iter().map(|t| t.key.task_id.as_str());
        let hint = flow_dag::de::did_you_mean_hint(task_id, known);
        bail!(
            "no task instance `{task_id}` (map index {map_index}) in run `{run_id}` of `{dag_id}`{hint}"
        );
    };
    let dag = match store.serialized_dag_get(dag_id).await? {
        Some((data, _)) => Some(Dag::from_json(&data).context("reading the stored DAG")?),
        None => None,
    };
    let label = ti_label(ti);
    println!("{label}: {} (try {})", ti.state, ti.try_number);
    match ti.state {
        TaskInstanceState::Running => {
            println!(
                "It is running on {} since {}.",
                ti.worker_id.as_deref().unwrap_or(&ti.hostname),
                opt_iso(ti.start_date)
            );
            return Ok(ExitCode::SUCCESS);
        }
        s if s.is_finished() => {
            println!("It has finished: nothing holds it. `flow tasks clear` runs it again.");
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let deps = store
        .ti_dependencies(dag.as_ref(), &run, ti, Utc::now())
        .await?;
    if deps.is_empty() {
        println!("Nothing holds it: the scheduler queues it at its next pass.");
    }
    for d in deps {
        println!("- {}: {}", d.name, d.reason);
    }
    Ok(ExitCode::SUCCESS)
}

/// `task` or, for an instance of a mapped task, `task[map_index]`.
fn ti_label(ti: &flow_store::TiRow) -> String {
    if ti.key.map_index < 0 {
        ti.key.task_id.clone()
    } else {
        format!("{}[{}]", ti.key.task_id, ti.key.map_index)
    }
}

pub async fn task_logs(
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: i64,
    try_number: Option<i64>,
    follow: bool,
) -> Result<ExitCode> {
    let store = connect_migrated().await?;
    let key = TiKey::new(dag_id, run_id, task_id, map_index);
    let ti = match store.ti_get(&key).await? {
        Some(ti) => ti,
        None if map_index < 0 => {
            let mapped = store
                .ti_list_for_run(dag_id, run_id)
                .await?
                .iter()
                .filter(|t| t.key.task_id == task_id && t.key.map_index >= 0)
                .count();
            if mapped > 0 {
                bail!(
                    "{dag_id}/{run_id}/{task_id} is mapped ({mapped} instances): name one with --map-index N"
                );
            }
            bail!("task instance {dag_id}/{run_id}/{task_id} not found");
        }
        None => bail!("task instance {dag_id}/{run_id}/{task_id}[{map_index}] not found"),
    };
    let try_number = try_number.unwrap_or(ti.try_number.max(1));
    let mut after = 0;
    loop {
        let page = store.log_read(&key, try_number, after, 1000).await?;
        for l in &page.lines {
            println!("[{}] {{{}}} {}", iso(l.at), l.stream, l.line);
        }
        after = page.next;
        if page.lines.len() == 1000 {
            continue;
        }
        if !follow {
            break;
        }
        let ti = store.ti_get(&key).await?;
        let still_running = ti.is_some_and(|t| {
            t.try_number == try_number
                && !t.state.is_finished()
                && t.state != TaskInstanceState::UpForRetry
        });
        if !still_running {
            // One last read for lines written just before the end.
            let page = store.log_read(&key, try_number, after, 100_000).await?;
            for l in &page.lines {
                println!("[{}] {{{}}} {}", iso(l.at), l.stream, l.line);
            }
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(250)).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// The dags folder as an absolute path, so that runs started elsewhere find their files.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `flow pools list`.
pub async fn pools_list() -> Result<ExitCode> {
    let store = connect_migrated().await?;
    let mut pools: Vec<(String, i64)> = store.pool_list().await?.into_iter().collect();
    pools.sort();
    println!("{:<32} {:>8}", "pool", "slots");
    for (pool, slots) in pools {
        println!("{pool:<32} {slots:>8}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `flow pools set POOL SLOTS [DESCRIPTION]`.
pub async fn pools_set(pool: &str, slots: i64, description: &str) -> Result<ExitCode> {
    flow_model::PoolId::parse(pool).map_err(|e| anyhow!("pool name `{pool}`: {e}"))?;
    if slots < -1 {
        bail!("slots must be 0 or more (or -1 for unlimited), got {slots}");
    }
    let store = connect_migrated().await?;
    store.pool_set(pool, slots, description).await?;
    println!("pool {pool} has {slots} slot(s)");
    Ok(ExitCode::SUCCESS)
}
