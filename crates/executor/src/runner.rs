//! Running a rendered task as real processes: `bash -c` for bash, a `python3` bootstrap for
//! python, nothing for empty. Output is streamed line by line to a channel; the outcome is a
//! value, never an error: a failed task is a state change, not a Rust error.
//!
//! This module does not know about the database: the worker persists log lines and the
//! outcome, heartbeats, and decides about retries.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flow_dag::{PythonCallable, Task};
use nix::sys::signal::Signal;
use serde_json::{Value as Json, json};
use tokio::sync::{mpsc, watch};

use crate::jinja::PyDateTime;
use crate::mask::Masker;
use crate::process::{Ended, Limits, LogSink, supervise};
use crate::render::{RenderedTask, RunContext};

/// Airflow's default `skip_on_exit_code`.
pub const DEFAULT_SKIP_EXIT_CODE: i32 = 99;

/// Time between SIGTERM and SIGKILL when a task is stopped.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// The Python task bootstrap (see `bootstrap.py`).
const PYTHON_BOOTSTRAP: &str = include_str!("bootstrap.py");

/// The bootstrap's definitions without its entry point: a prelude for other small Python
/// programs that import DAG-folder modules written for Airflow (`_install_airflow_shim()`).
pub(crate) fn python_prelude() -> &'static str {
    PYTHON_BOOTSTRAP
        .trim_end()
        .strip_suffix("_flow_main()")
        .unwrap_or("")
}

/// Everything needed to run one try of a task.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub rendered: RenderedTask,
    /// The task's `execution_timeout`.
    pub timeout: Option<Duration>,
    /// Environment variables describing the run (see [`context_env`]); added on top of the
    /// task's own environment, as Airflow does.
    pub context_env: Vec<(String, String)>,
    /// Put first on Python's `sys.path`; relative bash `cwd`s are resolved against it.
    pub dags_folder: PathBuf,
    /// Where the DAG was parsed from; absolute paths under it are moved under `dags_folder`.
    pub source_root: PathBuf,
    /// The Python interpreter, `python3` by default.
    pub python: String,
    pub do_xcom_push: bool,
    /// Between SIGTERM and SIGKILL on timeout or cancellation.
    pub kill_grace: Duration,
    /// Where per-run temporary directories are made (the bash default cwd, Python's files).
    pub temp_root: PathBuf,
    /// The task context handed to Python callables (see [`python_context`]).
    pub python_context: Json,
    /// Applied to every log line.
    pub masker: Masker,
    /// librdkafka settings from the task's connection, resolved by the worker.
    pub kafka: Option<KafkaSettings>,
    /// The connection the operator names (`RenderedTask::conn_id`), resolved by the worker.
    pub connection: Option<flow_model::Connection>,
    /// Airflow's `[smtp]` settings, for email without a connection.
    pub smtp: Option<crate::operators::email::SmtpSettings>,
    /// XComs pushed under their own keys during the try (`ti.xcom_push`, TriggerDagRun's
    /// `trigger_run_id`), stored with its outcome.
    pub xcom_out: Arc<Mutex<Vec<(String, Json)>>>,
    /// The metadata database, for operators that read or start other DAGs' runs.
    pub store: Option<flow_store::Store>,
    /// The largest XCom an operator may push, in bytes of JSON (`FLOW__CORE__MAX_XCOM_SIZE`).
    pub max_xcom_size: usize,
    /// Set when the try continues a rescheduled or deferred sensor.
    pub resume: Option<Resume>,
    /// Names a Python callable added to its context (`get_current_context()[k] = v`), as
    /// JSON, filled in when the try ends: a mapped task's `map_index_template` may use them.
    pub context_out: Arc<Mutex<serde_json::Map<String, Json>>>,
    /// What a Python callable wrote to `outlet_events` (extras by asset, assets added to
    /// aliases), filled in when the try ends.
    pub outlet_events: Arc<Mutex<Option<Json>>>,
}

/// The default of `FLOW__CORE__MAX_XCOM_SIZE`: 1 MiB of JSON.
pub const DEFAULT_MAX_XCOM_SIZE: usize = 1 << 20;

impl RunSpec {
    /// Pushes an XCom under `key` (a later push of the same key wins).
    pub(crate) fn push_xcom(&self, key: &str, value: Json) {
        if let Ok(mut out) = self.xcom_out.lock() {
            out.retain(|(k, _)| k != key);
            out.push((key.to_owned(), value));
        }
    }

    /// Gives the try the connection its operator names: its secrets are masked in the log,
    /// and a Kafka operator gets its librdkafka settings from it.
    pub fn with_connection(mut self, conn: flow_model::Connection) -> Result<Self, String> {
        self.masker = self.masker.with(conn.secrets());
        if self.rendered.is_kafka() {
            self.kafka = Some(KafkaSettings(
                flow_kafka::client_settings(&conn).map_err(|e| e.to_string())?,
            ));
        }
        self.connection = Some(conn);
        Ok(self)
    }
}

/// librdkafka settings; they may hold secrets, so Debug shows the keys only.
#[derive(Clone)]
pub struct KafkaSettings(pub std::collections::BTreeMap<String, String>);

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// How a try continues an earlier part of itself (Airflow's `next_method`).
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Reschedule mode: the next poke; the sensor's timeout counts from `started_at`.
    Poke { started_at: DateTime<Utc> },
    /// The trigger fired with this event.
    Event(Json),
    /// The deferral timed out (a sensor timeout: no retries).
    TimedOut(String),
    /// The trigger failed (a missing connection, say): an ordinary failure, retried.
    Failed(String),
}

impl RunSpec {
    /// A spec with the task's timeout and XCom setting and the run's context.
    pub fn new(task: &Task, rendered: RenderedTask, ctx: &RunContext) -> Self {
        let masker = Masker::for_run(ctx, &rendered);
        let python_context = if rendered.runs_python() {
            python_context(ctx)
        } else {
            Json::Null
        };
        RunSpec {
            rendered,
            timeout: task.execution_timeout.and_then(|d| d.to_std().ok()),
            context_env: context_env(ctx),
            dags_folder: ctx.dags_folder.clone(),
            source_root: ctx.source_root.clone(),
            python: "python3".to_owned(),
            // A branch reads its own result, so it is pushed whatever the task says.
            do_xcom_push: task.do_xcom_push
                || crate::operators::branch::is_branching(&task.operator)
                || matches!(task.operator, flow_dag::Operator::PythonSensor(_)),
            kill_grace: DEFAULT_KILL_GRACE,
            temp_root: std::env::temp_dir(),
            python_context,
            masker,
            kafka: None,
            connection: None,
            store: None,
            xcom_out: Arc::default(),
            smtp: None,
            max_xcom_size: DEFAULT_MAX_XCOM_SIZE,
            resume: None,
            context_out: Arc::default(),
            outlet_events: Arc::default(),
        }
    }
}

/// Which stream a log line came from; `System` lines are flow's own (timeouts, exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
    System,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        }
    }
}

/// One line of a task's output, stamped when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    pub stream: Stream,
    pub text: String,
}

/// How a try ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `xcom` is the `return_value` XCom to push, if any.
    Success {
        xcom: Option<Json>,
    },
    Skipped {
        reason: String,
    },
    Failed {
        reason: String,
    },
    TimedOut,
    Cancelled,
    /// A sensor's timeout: failed without retries (Airflow's AirflowFailedNoRetry).
    FailedNoRetry {
        reason: String,
    },
    /// Reschedule mode: poke again at `at`, freeing the slot meanwhile.
    Reschedule {
        at: DateTime<Utc>,
        started_at: DateTime<Utc>,
    },
    /// Deferrable mode: the triggerer waits (trigger `kind` with `kwargs`) until an event or
    /// `timeout_at`.
    Defer {
        kind: String,
        kwargs: Json,
        timeout_at: DateTime<Utc>,
    },
}

/// The run's identity as environment variables, under flow's names and Airflow's
/// (`AIRFLOW_CTX_*`, as `context_to_airflow_vars` sets them), so existing scripts keep working.
pub fn context_env(ctx: &RunContext) -> Vec<(String, String)> {
    let logical_date = ctx.logical_date.map(|d| PyDateTime::utc(d).isoformat());
    let mut env = Vec::with_capacity(16);
    let mut both = |flow: &str, airflow: &[&str], value: &str| {
        env.push((format!("FLOW_CTX_{flow}"), value.to_owned()));
        for name in airflow {
            env.push((format!("AIRFLOW_CTX_{name}"), value.to_owned()));
        }
    };
    both("DAG_ID", &["DAG_ID"], &ctx.dag_id);
    both("TASK_ID", &["TASK_ID"], &ctx.task_id);
    both("RUN_ID", &["DAG_RUN_ID"], &ctx.run_id);
    both("TRY_NUMBER", &["TRY_NUMBER"], &ctx.try_number.to_string());
    both("DAG_OWNER", &["DAG_OWNER"], &ctx.owner);
    if let Some(ld) = &logical_date {
        both("LOGICAL_DATE", &["LOGICAL_DATE", "EXECUTION_DATE"], ld);
    }
    env.push(("FLOW_CTX_MAP_INDEX".to_owned(), ctx.map_index.to_string()));
    env.push(("FLOW_CTX_RUN_TYPE".to_owned(), ctx.run_type.clone()));
    env
}

/// The task context a Python callable receives (as JSON; the bootstrap turns dates back into
/// `datetime`s and builds `ti`, `dag_run`, ...), including the run's XComs for `ti.xcom_pull`.
pub fn python_context(ctx: &RunContext) -> Json {
    let iso = |d: Option<DateTime<Utc>>| d.map(|d| PyDateTime::utc(d).isoformat());
    let mut c = json!({
        "dag_id": ctx.dag_id,
        "task_id": ctx.task_id,
        "run_id": ctx.run_id,
        "map_index": ctx.map_index,
        "try_number": ctx.try_number,
        "max_tries": ctx.max_tries,
        "run_type": ctx.run_type,
        "owner": ctx.owner,
        "logical_date": iso(ctx.logical_date),
        "data_interval_start": iso(ctx.data_interval_start),
        "data_interval_end": iso(ctx.data_interval_end),
        "run_after": iso(Some(ctx.run_after)),
        "dag_run_start_date": iso(ctx.dag_run_start_date),
        "conf": ctx.conf,
        "params": ctx.params,
        "xcoms": ctx.xcoms.iter().map(|(t, k, m, v)| json!([t, k, m, v])).collect::<Vec<_>>(),
        // For `Variable.get` in the callable (read by the worker for every Python task).
        "variables": ctx.variables,
        "triggering_asset_events": ctx.triggering_asset_events,
    });
    if let (Some(ld), Json::Object(map)) = (ctx.logical_date, &mut c) {
        let ld = PyDateTime::utc(ld);
        let ds_nodash = ld.0.format("%Y%m%d").to_string();
        map.insert("ds".into(), json!(ld.0.format("%Y-%m-%d").to_string()));
        map.insert("ts".into(), json!(ld.isoformat()));
        map.insert("ts_nodash".into(), json!(ld.ts_nodash()));
        map.insert("ts_nodash_with_tz".into(), json!(ld.ts_nodash_with_tz()));
        map.insert(
            "task_instance_key_str".into(),
            json!(format!("{}__{}__{}", ctx.dag_id, ctx.task_id, ds_nodash)),
        );
        map.insert("ds_nodash".into(), json!(ds_nodash));
    }
    c
}

/// Runs one try. Log lines go to `logs` as they are produced (a full channel slows the task
/// down rather than buffering without bound). Setting `cancel` to `true` stops the task
/// (SIGTERM, then SIGKILL after `kill_grace`); dropping its sender does not.
pub async fn run(
    spec: RunSpec,
    logs: mpsc::Sender<LogLine>,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let sink = LogSink::new(logs, spec.masker.clone());
    if *cancel.borrow() {
        return Outcome::Cancelled;
    }
    let timeout = spec.timeout;
    let io = crate::operators::execute(&spec, &sink, &mut cancel);
    // I/O operators are async tasks: their execution_timeout drops the future (and with it
    // any bash process it started, killed on drop).
    let io_outcome = match timeout {
        Some(t) => match tokio::time::timeout(t, io).await {
            Ok(o) => o,
            Err(_) => Some(Outcome::TimedOut),
        },
        None => io.await,
    };
    if let Some(outcome) = io_outcome {
        return outcome;
    }
    run_process(&spec, &spec.rendered, &sink, &mut cancel)
        .await
        .0
}

/// Runs a process task (`bash` or `python`, or the callable or command of a branch or a
/// sensor) as `rendered` describes; for bash also the exit code.
pub(crate) async fn run_process(
    spec: &RunSpec,
    rendered: &RenderedTask,
    sink: &LogSink,
    cancel: &mut watch::Receiver<bool>,
) -> (Outcome, Option<i32>) {
    match rendered {
        RenderedTask::Empty => (Outcome::Success { xcom: None }, None),
        RenderedTask::Bash {
            command,
            env,
            append_env,
            cwd,
            skip_on_exit_code,
        } => {
            let bash = BashRun {
                command,
                env: env.as_ref(),
                append_env: *append_env,
                cwd: cwd.as_deref(),
                skip_on_exit_code,
            };
            run_bash(spec, bash, sink, cancel).await
        }
        RenderedTask::Python {
            callable,
            op_args,
            op_kwargs,
            templates_dict,
            show_return_value_in_logs,
        } => {
            let input = json!({
                "callable": match callable {
                    PythonCallable::Module { module, function } =>
                        json!({"kind": "module", "module": module, "function": function}),
                    PythonCallable::File { path, function } => json!({
                        "kind": "file",
                        "path": crate::relocate(&spec.source_root, &spec.dags_folder, path),
                        "function": function,
                    }),
                },
                "op_args": op_args,
                "op_kwargs": op_kwargs,
                "templates_dict": templates_dict,
                "context": spec.python_context,
                "dags_folder": spec.dags_folder,
                "do_xcom_push": spec.do_xcom_push,
            });
            let outcome = run_python(spec, input, sink, cancel).await;
            if *show_return_value_in_logs && let Outcome::Success { xcom: Some(v) } = &outcome {
                sink.system(&format!("Done. Returned value was: {v}")).await;
            }
            (outcome, None)
        }
        other => (
            Outcome::Failed {
                reason: format!("flow bug: {other:?} is neither a process nor an I/O operator"),
            },
            None,
        ),
    }
}

struct BashRun<'a> {
    command: &'a str,
    env: Option<&'a indexmap::IndexMap<String, String>>,
    append_env: bool,
    cwd: Option<&'a str>,
    skip_on_exit_code: &'a [i32],
}

async fn run_bash(
    spec: &RunSpec,
    bash: BashRun<'_>,
    logs: &LogSink,
    cancel: &mut watch::Receiver<bool>,
) -> (Outcome, Option<i32>) {
    // Airflow runs in a fresh temporary directory unless `cwd` is given.
    let (dir, temp) = match bash.cwd {
        Some(cwd) => {
            let dir = spec.dags_folder.join(cwd);
            if !dir.is_dir() {
                let reason = format!("cwd `{}` is not a directory", dir.display());
                return (Outcome::Failed { reason }, None);
            }
            (dir, None)
        }
        None => match TempDir::create(&spec.temp_root) {
            Ok(t) => (t.path.clone(), Some(t)),
            Err(e) => return (Outcome::Failed { reason: e }, None),
        },
    };
    let mut cmd = crate::process::task_command("bash");
    cmd.arg("-c").arg(bash.command).current_dir(&dir);
    match (bash.env, bash.append_env) {
        (None, _) => {}
        (Some(env), true) => {
            cmd.envs(env);
        }
        (Some(env), false) => {
            cmd.env_clear().envs(env);
        }
    }
    cmd.envs(spec.context_env.iter().map(|(k, v)| (k, v)));

    logs.system(&format!("Running command: {}", bash.command))
        .await;
    let limits = Limits {
        timeout: spec.timeout,
        kill_grace: spec.kill_grace,
    };
    let supervised = supervise(cmd, &limits, logs, cancel).await;
    if let Some(t) = temp {
        t.remove().await;
    }
    let supervised = match supervised {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("cannot start bash: {e}");
            return (Outcome::Failed { reason }, None);
        }
    };
    match supervised.ended {
        Ended::TimedOut => (Outcome::TimedOut, None),
        Ended::Cancelled => (Outcome::Cancelled, None),
        Ended::Exited(status) => {
            use std::os::unix::process::ExitStatusExt;
            let outcome = match (status.code(), status.signal()) {
                // Skip codes come first, as in Airflow: `skip_on_exit_code: [0]` skips.
                (Some(code), _) if bash.skip_on_exit_code.contains(&code) => {
                    logs.system(&format!("Command exited with return code {code}: skipping"))
                        .await;
                    Outcome::Skipped {
                        reason: format!("bash command exited with code {code}"),
                    }
                }
                (Some(0), _) => {
                    logs.system("Command exited with return code 0").await;
                    Outcome::Success {
                        xcom: supervised
                            .last_stdout
                            .filter(|_| spec.do_xcom_push)
                            .map(Json::String),
                    }
                }
                (Some(code), _) => {
                    logs.system(&format!("Command exited with return code {code}"))
                        .await;
                    Outcome::Failed {
                        reason: format!(
                            "Bash command failed. The command returned a non-zero exit code {code}."
                        ),
                    }
                }
                (None, signal) => Outcome::Failed {
                    reason: format!("bash command was killed by {}", signal_name(signal)),
                },
            };
            (outcome, status.code())
        }
    }
}

async fn run_python(
    spec: &RunSpec,
    input: Json,
    logs: &LogSink,
    cancel: &mut watch::Receiver<bool>,
) -> Outcome {
    let temp = match TempDir::create(&spec.temp_root) {
        Ok(t) => t,
        Err(e) => return Outcome::Failed { reason: e },
    };
    let outcome = run_python_in(spec, &input, &temp.path, logs, cancel).await;
    temp.remove().await;
    outcome
}

async fn run_python_in(
    spec: &RunSpec,
    input: &Json,
    dir: &Path,
    logs: &LogSink,
    cancel: &mut watch::Receiver<bool>,
) -> Outcome {
    let input_path = dir.join("input.json");
    let result_path = dir.join("result.json");
    if let Err(e) = tokio::fs::write(&input_path, input.to_string()).await {
        return Outcome::Failed {
            reason: format!("cannot write {}: {e}", input_path.display()),
        };
    }
    let mut cmd = crate::process::task_command(&spec.python);
    cmd.arg("-c")
        .arg(PYTHON_BOOTSTRAP)
        .arg(&input_path)
        .arg(&result_path)
        .current_dir(dir)
        .env("PYTHONUNBUFFERED", "1")
        .envs(spec.context_env.iter().map(|(k, v)| (k, v)));
    let limits = Limits {
        timeout: spec.timeout,
        kill_grace: spec.kill_grace,
    };
    let supervised = match supervise(cmd, &limits, logs, cancel).await {
        Ok(s) => s,
        Err(e) => {
            return Outcome::Failed {
                reason: format!("cannot start {}: {e}", spec.python),
            };
        }
    };
    let status = match supervised.ended {
        Ended::TimedOut => return Outcome::TimedOut,
        Ended::Cancelled => return Outcome::Cancelled,
        Ended::Exited(status) => status,
    };
    let result = tokio::fs::read_to_string(&result_path)
        .await
        .ok()
        .and_then(|text| serde_json::from_str::<Json>(&text).ok());
    if let Some(Json::Object(r)) = &result
        && let Some(Json::Object(added)) = r.get("context")
        && let Ok(mut out) = spec.context_out.lock()
    {
        out.extend(added.clone());
    }
    if let Some(Json::Object(r)) = &result
        && let Some(events) = r.get("outlet_events")
        && let Ok(mut out) = spec.outlet_events.lock()
    {
        *out = Some(events.clone());
    }
    if let Some(Json::Object(r)) = &result
        && let Some(Json::Object(pushed)) = r.get("xcoms")
    {
        for (key, value) in pushed {
            spec.push_xcom(key, value.clone());
        }
    }
    match result {
        Some(Json::Object(mut r)) => {
            if let Some(Json::String(error)) = r.remove("error") {
                Outcome::Failed { reason: error }
            } else if let Some(Json::String(reason)) = r.remove("skip") {
                Outcome::Skipped { reason }
            } else if let Some(Json::String(reason)) = r.remove("fail") {
                Outcome::FailedNoRetry { reason }
            } else if status.success() {
                let value = r.remove("value").unwrap_or(Json::Null);
                Outcome::Success {
                    xcom: (!value.is_null()).then_some(value),
                }
            } else {
                Outcome::Failed {
                    reason: format!("python {}", describe_exit(status)),
                }
            }
        }
        _ => Outcome::Failed {
            reason: format!("python {} before returning", describe_exit(status)),
        },
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, signal) => format!("was killed by {}", signal_name(signal)),
    }
}

fn signal_name(signal: Option<i32>) -> String {
    match signal.map(Signal::try_from) {
        Some(Ok(s)) => s.as_str().to_owned(),
        Some(Err(_)) => format!("signal {}", signal.unwrap_or_default()),
        None => "an unknown signal".to_owned(),
    }
}

/// A per-run temporary directory: empty when the run starts, private to it, and gone (or
/// back in the pool, empty) when it ends.
///
/// Creating and deleting a directory per task was a fifth of a busy worker's CPU on ext4
/// (inode allocation scans recently deleted inodes, under the parent directory's lock). So a
/// directory the run left empty, with the permissions it was made with, is kept in a small
/// pool and handed to a later run; anything else is removed as before.
struct TempDir {
    path: PathBuf,
    root: PathBuf,
    removed: bool,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Empty directories ready for reuse, with the root they were made in.
static TEMP_POOL: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());
/// At most this many kept (about a worker's concurrency).
const TEMP_POOL_MAX: usize = 64;
/// The mode a fresh directory has before the umask; reused only when unchanged.
const TEMP_MODE: u32 = 0o700;

impl TempDir {
    fn create(root: &Path) -> Result<TempDir, String> {
        if let Some(path) = Self::reuse(root) {
            return Ok(TempDir {
                path,
                root: root.to_path_buf(),
                removed: false,
            });
        }
        let pid = std::process::id();
        let nanos = Utc::now().timestamp_subsec_nanos();
        for _ in 0..100 {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = root.join(format!("flow-task-{pid}-{nanos:x}-{n}"));
            let made = {
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new().mode(TEMP_MODE).create(&path)
            };
            match made {
                Ok(()) => {
                    return Ok(TempDir {
                        path,
                        root: root.to_path_buf(),
                        removed: false,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(format!(
                        "cannot create a temporary directory in {}: {e}",
                        root.display()
                    ));
                }
            }
        }
        Err(format!(
            "cannot create a temporary directory in {}",
            root.display()
        ))
    }

    /// A pooled directory of `root` that is still there, empty and private.
    fn reuse(root: &Path) -> Option<PathBuf> {
        loop {
            let path = {
                let mut pool = TEMP_POOL.lock().ok()?;
                let at = pool.iter().position(|(r, _)| r == root)?;
                pool.swap_remove(at).1
            };
            if is_clean(&path) {
                return Some(path);
            }
            let _ = std::fs::remove_dir_all(&path);
        }
    }

    async fn remove(mut self) {
        let (path, root) = (self.path.clone(), self.root.clone());
        self.removed = true;
        let kept = tokio::task::spawn_blocking(move || {
            if !is_clean(&path) {
                let _ = std::fs::remove_dir_all(&path);
                return;
            }
            let rest = match TEMP_POOL.lock() {
                Ok(mut pool) if pool.len() < TEMP_POOL_MAX => {
                    pool.push((root, path));
                    None
                }
                _ => Some(path),
            };
            if let Some(path) = rest {
                let _ = std::fs::remove_dir(&path);
            }
        })
        .await;
        drop(kept);
    }
}

/// Whether `path` is a directory (not a link to one), empty, with the mode it was made with.
fn is_clean(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_dir() || meta.permissions().mode() & 0o7777 != TEMP_MODE {
        return false;
    }
    std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none())
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.removed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
