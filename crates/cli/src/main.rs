//! The `flow` binary: parses the command line, reads configuration from flags,
//! `FLOW__SECTION__KEY` environment variables and `$FLOW_HOME/flow.toml`, and dispatches to
//! the library crates.
//! It is the only crate that reads the environment or prints.

mod alloc;
mod bench;
mod bench_api;
mod bench_engine;
mod bench_kafka;
mod bench_scale;
mod bench_web;
mod config;
mod connections;
mod dags;
mod db_clean;
mod jobs;
mod log_fields;
mod ops;
mod settings;
mod tasks;
mod variables;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "flow",
    version,
    about = "flow: an Airflow-compatible workflow orchestrator"
)]
struct Cli {
    /// The folder DAG files are read from [default: FLOW__CORE__DAGS_FOLDER, else
    /// `dags_folder` under `[core]` in flow.toml, else `dags`].
    #[arg(long, global = true)]
    dags_folder: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// DAG operations: validate, list, show, next-runs, schema.
    Dags {
        #[command(subcommand)]
        command: dags::DagsCommand,
    },
    /// Metadata database: migrate, check, reset, clean.
    Db {
        #[command(subcommand)]
        command: ops::DbCommand,
    },
    /// Scheduler and an embedded worker in one process (SQLite unless FLOW__DATABASE__URL is set).
    Standalone {
        /// Web UI port [default: FLOW__WEBSERVER__WEB_SERVER_PORT, else flow.toml, else 8080].
        #[arg(short, long)]
        port: Option<u16>,
    },
    /// The web UI alone (on the same metadata database as the scheduler).
    Webserver {
        /// Web UI port [default: FLOW__WEBSERVER__WEB_SERVER_PORT, else flow.toml, else 8080].
        #[arg(short, long)]
        port: Option<u16>,
    },
    /// Users of the web UI and API.
    Users {
        #[command(subcommand)]
        command: web::UsersCommand,
    },
    /// The scheduler: parses DAGs, creates runs, queues task instances. Runs an embedded
    /// worker unless --no-worker.
    Scheduler {
        #[arg(long)]
        no_worker: bool,
        /// Leave parsing the dags folder to a `flow dag-processor`.
        #[arg(long)]
        no_processor: bool,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics.
        #[arg(long, value_name = "PORT")]
        metrics_port: Option<u16>,
    },
    /// The DAG processor alone (Airflow 3's `airflow dag-processor`): parses the dags folder
    /// into the database for schedulers started with `--no-processor`.
    DagProcessor {
        /// Serve Prometheus metrics at http://HOST:PORT/metrics.
        #[arg(long, value_name = "PORT")]
        metrics_port: Option<u16>,
    },
    /// A worker: claims queued task instances and runs them (PostgreSQL only).
    Worker {
        /// This worker's id, unique among live workers (default: host name and pid).
        #[arg(long)]
        worker_id: Option<String>,
        /// Comma-separated queues to take work from.
        #[arg(short, long, value_delimiter = ',')]
        queues: Option<Vec<String>>,
        /// Task instances run at once.
        #[arg(short, long)]
        concurrency: Option<usize>,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics.
        #[arg(long, value_name = "PORT")]
        metrics_port: Option<u16>,
    },
    /// The triggerer: runs the waits of deferred task instances (`flow standalone` and
    /// `flow scheduler` run one beside their embedded worker).
    Triggerer {
        /// Serve Prometheus metrics at http://HOST:PORT/metrics.
        #[arg(long, value_name = "PORT")]
        metrics_port: Option<u16>,
    },
    /// Jobs: the schedulers, workers, triggerers and web servers of the deployment.
    Jobs {
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// Dag runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Connections to external systems (Kafka clusters, databases); secrets encrypted at rest.
    Connections {
        #[command(subcommand)]
        command: connections::ConnectionsCommand,
    },
    /// Variables: key/value settings for templates (`{{ var.value.key }}`); secrets encrypted.
    Variables {
        #[command(subcommand)]
        command: variables::VariablesCommand,
    },
    /// Re-encrypt connection secrets and secret variables with the first key of
    /// FLOW__CORE__FERNET_KEY (`new,old`).
    RotateFernetKey,
    /// Pools: named slot limits shared by tasks (`pool:` and `pool_slots:` in a task).
    Pools {
        #[command(subcommand)]
        command: PoolsCommand,
    },
    /// Task instances.
    Tasks {
        #[command(subcommand)]
        command: TasksCommand,
    },
    /// Benchmarks (not tests): measure flow on this machine.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Settings: `list` (secrets masked, with where each value comes from), `get-value`.
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Print the version.
    Version,
    /// Internal: a worker's reaper process (kills its tasks' process groups if the worker
    /// dies without doing so).
    #[command(name = "__reap", hide = true)]
    Reap {
        /// The tag the worker's task processes carry.
        #[arg(default_value = "")]
        tag: String,
    },
}

#[derive(Debug, Subcommand)]
enum PoolsCommand {
    /// Every pool with its slots.
    List,
    /// Create a pool or change its slots.
    Set {
        pool: String,
        /// -1 for unlimited.
        #[arg(allow_negative_numbers = true)]
        slots: i64,
        #[arg(default_value = "")]
        description: String,
    },
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// A DAG's most recent runs.
    List {
        dag_id: String,
        #[arg(short, long, default_value_t = 25)]
        limit: i64,
    },
    /// Mark a run success (its unfinished tasks succeed) or failed (running tasks fail and
    /// are stopped, the other unfinished ones are skipped).
    Mark {
        dag_id: String,
        run_id: String,
        /// success or failed.
        #[arg(long)]
        state: String,
    },
}

#[derive(Debug, Subcommand)]
enum TasksCommand {
    /// Run one task here without recording anything (Airflow's `tasks test`).
    Test {
        dag_id: String,
        task_id: String,
        /// The logical date to render templates for (default: now).
        date: Option<String>,
        /// `dag_run.conf` for the test, a JSON object.
        #[arg(short, long)]
        conf: Option<String>,
    },
    /// Clear task instances so that they run again.
    Clear {
        dag_id: String,
        /// Only tasks whose id matches this regular expression.
        #[arg(short = 't', long = "task-regex")]
        task_regex: Option<String>,
        /// Also clear everything downstream of the matched tasks.
        #[arg(short = 'd', long)]
        downstream: bool,
        /// Also clear everything upstream of the matched tasks.
        #[arg(short = 'u', long)]
        upstream: bool,
        /// Only runs with a logical date on or after this.
        #[arg(short = 's', long)]
        start_date: Option<String>,
        /// Only runs with a logical date on or before this.
        #[arg(short = 'e', long)]
        end_date: Option<String>,
        /// Only failed and upstream_failed task instances.
        #[arg(short = 'f', long)]
        only_failed: bool,
        /// Only these instances of mapped tasks (repeat for several).
        #[arg(long = "map-index")]
        map_indexes: Vec<i64>,
        /// Do it (without this, only list what would be cleared).
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Mark task instances of a run success, failed or skipped by hand (a running one is
    /// stopped by its worker).
    Mark {
        dag_id: String,
        run_id: String,
        /// Tasks whose id matches this regular expression.
        #[arg(short = 't', long = "task-regex")]
        task_regex: String,
        /// success, failed or skipped.
        #[arg(long)]
        state: String,
        /// Also mark everything downstream of the matched tasks.
        #[arg(short = 'd', long)]
        downstream: bool,
        /// Also mark everything upstream of the matched tasks.
        #[arg(short = 'u', long)]
        upstream: bool,
        /// Only these instances of mapped tasks (repeat for several).
        #[arg(long = "map-index")]
        map_indexes: Vec<i64>,
    },
    /// The task instances of a run and their states.
    States { dag_id: String, run_id: String },
    /// Why a task instance is not running: trigger rule, pool, limits, retry time, paused
    /// DAG, no worker serving its queue, the trigger it waits on.
    Explain {
        dag_id: String,
        run_id: String,
        task_id: String,
        /// Which instance of a mapped task.
        #[arg(long = "map-index", default_value_t = -1)]
        map_index: i64,
    },
    /// A task instance's log.
    Logs {
        dag_id: String,
        run_id: String,
        task_id: String,
        /// Which instance of a mapped task.
        #[arg(long = "map-index", default_value_t = -1)]
        map_index: i64,
        /// Which try (default: the latest).
        #[arg(long = "try")]
        try_number: Option<i64>,
        /// Keep printing new lines until the try ends.
        #[arg(short, long)]
        follow: bool,
    },
}

impl Command {
    /// Whether the command is a daemon (or benchmark) with a log of its own (`init_tracing`).
    fn logs(&self) -> bool {
        matches!(
            self,
            Command::Standalone { .. }
                | Command::Webserver { .. }
                | Command::Scheduler { .. }
                | Command::DagProcessor { .. }
                | Command::Worker { .. }
                | Command::Triggerer { .. }
                | Command::Bench { .. }
        )
    }
}

/// The daemon's log on stderr, as `[logging] format` says; then the configuration warnings,
/// so that they are log lines too.
fn init_tracing() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::new(config::log_filter()?);
    let format = config::log_format()?;
    use std::io::IsTerminal as _;
    let _ = match format {
        config::LogFormat::Text => tracing_subscriber::fmt()
            .fmt_fields(log_fields::EscapedFields)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
        config::LogFormat::Json => {
            log_fields::set_json_log();
            tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_writer(|| log_fields::JsonEscaper(std::io::stderr()))
                .try_init()
        }
    };
    for warning in config::take_warnings() {
        tracing::warn!("{warning}");
    }
    Ok(())
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let dags_folder_arg = config::dags_folder(cli.dags_folder)?;
    let dags_folder = ops::absolute(&dags_folder_arg);
    match cli.command {
        Command::Dags { command } => match command {
            dags::DagsCommand::Trigger {
                dag_id,
                conf,
                run_id,
                logical_date,
                wait,
            } => {
                ops::trigger(
                    &dags_folder,
                    &dag_id,
                    conf.as_deref(),
                    run_id,
                    logical_date,
                    wait,
                )
                .await
            }
            dags::DagsCommand::Pause { dag_id } => {
                ops::set_paused(&dags_folder, &dag_id, true).await
            }
            dags::DagsCommand::Backfill {
                dag_id,
                start_date,
                end_date,
                reset_dagruns,
                reprocess_behavior,
                max_active_runs,
                run_backwards,
                dry_run,
                conf,
            } => {
                tasks::backfill(
                    &dags_folder,
                    tasks::BackfillArgs {
                        dag_id: &dag_id,
                        start_date: &start_date,
                        end_date: &end_date,
                        reset_dagruns,
                        reprocess_behavior: reprocess_behavior.as_deref(),
                        max_active_runs,
                        run_backwards,
                        dry_run,
                        conf: conf.as_deref(),
                    },
                )
                .await
            }
            dags::DagsCommand::Unpause { dag_id } => {
                ops::set_paused(&dags_folder, &dag_id, false).await
            }
            other => dags::run(other, &dags_folder_arg),
        },
        Command::Db { command } => ops::db(command).await,
        Command::Standalone { port } => {
            init_tracing()?;
            let port = config::web_server_port(port)?;
            ops::serve_with(
                &dags_folder,
                ops::Serve {
                    with_worker: true,
                    process_dags: true,
                    web_port: Some(port),
                    ..ops::Serve::default()
                },
            )
            .await
        }
        Command::Webserver { port } => {
            init_tracing()?;
            let port = config::web_server_port(port)?;
            web::webserver(port).await
        }
        Command::Users { command } => web::users(command).await,
        Command::Scheduler {
            no_worker,
            no_processor,
            metrics_port,
        } => {
            init_tracing()?;
            ops::serve_with(
                &dags_folder,
                ops::Serve {
                    with_worker: !no_worker,
                    process_dags: !no_processor,
                    metrics_port,
                    ..ops::Serve::default()
                },
            )
            .await
        }
        Command::DagProcessor { metrics_port } => {
            init_tracing()?;
            ops::dag_processor(&dags_folder, metrics_port).await
        }
        Command::Worker {
            worker_id,
            queues,
            concurrency,
            metrics_port,
        } => {
            init_tracing()?;
            let config = ops::worker_config(&dags_folder, worker_id, queues, concurrency)?;
            ops::worker(config, metrics_port).await
        }
        Command::Connections { command } => connections::run(command).await,
        Command::Variables { command } => variables::run(command).await,
        Command::Jobs { command } => jobs::run(command).await,
        Command::Reap { tag } => {
            flow_executor::reaper::serve(&tag);
            Ok(ExitCode::SUCCESS)
        }
        Command::Triggerer { metrics_port } => {
            init_tracing()?;
            ops::triggerer(metrics_port).await
        }
        Command::RotateFernetKey => connections::rotate().await,
        Command::Pools { command } => match command {
            PoolsCommand::List => ops::pools_list().await,
            PoolsCommand::Set {
                pool,
                slots,
                description,
            } => ops::pools_set(&pool, slots, &description).await,
        },
        Command::Runs {
            command: RunsCommand::List { dag_id, limit },
        } => ops::runs_list(&dag_id, limit).await,
        Command::Runs {
            command:
                RunsCommand::Mark {
                    dag_id,
                    run_id,
                    state,
                },
        } => tasks::mark_run(&dag_id, &run_id, &state).await,
        Command::Tasks { command } => match command {
            TasksCommand::Test {
                dag_id,
                task_id,
                date,
                conf,
            } => {
                tasks::test(
                    &dags_folder,
                    &dag_id,
                    &task_id,
                    date.as_deref(),
                    conf.as_deref(),
                )
                .await
            }
            TasksCommand::Clear {
                dag_id,
                task_regex,
                downstream,
                upstream,
                start_date,
                end_date,
                only_failed,
                map_indexes,
                yes,
            } => {
                tasks::clear(
                    &dags_folder,
                    tasks::ClearArgs {
                        dag_id: &dag_id,
                        task_regex: task_regex.as_deref(),
                        downstream,
                        upstream,
                        start_date: start_date.as_deref(),
                        end_date: end_date.as_deref(),
                        only_failed,
                        map_indexes: &map_indexes,
                        yes,
                    },
                )
                .await
            }
            TasksCommand::Mark {
                dag_id,
                run_id,
                task_regex,
                state,
                downstream,
                upstream,
                map_indexes,
            } => {
                tasks::mark(
                    &dags_folder,
                    tasks::MarkArgs {
                        dag_id: &dag_id,
                        run_id: &run_id,
                        task_regex: &task_regex,
                        state: &state,
                        downstream,
                        upstream,
                        map_indexes: &map_indexes,
                    },
                )
                .await
            }
            TasksCommand::States { dag_id, run_id } => ops::task_states(&dag_id, &run_id).await,
            TasksCommand::Explain {
                dag_id,
                run_id,
                task_id,
                map_index,
            } => ops::task_explain(&dag_id, &run_id, &task_id, map_index).await,
            TasksCommand::Logs {
                dag_id,
                run_id,
                task_id,
                map_index,
                try_number,
                follow,
            } => ops::task_logs(&dag_id, &run_id, &task_id, map_index, try_number, follow).await,
        },
        Command::Bench { command } => {
            init_tracing()?;
            bench::run(command).await
        }
        Command::Config { command } => config::run(command),
        Command::Version => {
            println!("flow {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // flow.toml is read before anything looks a setting up; a malformed one stops here. (Not
    // in a worker's reaper: it reads no setting, and its worker already warned.)
    let reaper = matches!(cli.command, Command::Reap { .. });
    if !reaper && let Err(e) = config::load() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    // Daemons log these once their log is set up; other commands print them now.
    if !cli.command.logs() {
        for warning in config::take_warnings() {
            eprintln!("flow: warning: {warning}");
        }
    }
    let result = runtime.block_on(dispatch(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[global_allocator]
pub static ALLOC: alloc::Counting = alloc::Counting::new();
