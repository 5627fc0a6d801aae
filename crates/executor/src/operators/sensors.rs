//! `file_sensor`, `python_sensor` and `bash_sensor`: each poke looks at the file system, calls
//! the Python callable, or runs the command (in the worker; a deferred file sensor polls from
//! the triggerer).

use std::path::{Path, PathBuf};

use flow_dag::{BashSensor, FileSensor, PythonSensor, Task};
use flow_model::Connection;
use serde_json::{Value as Json, json};
use tokio::sync::watch;

use super::{bash, python};
use crate::io_ops::Poked;
use crate::process::LogSink;
use crate::render::{RenderError, RenderedTask, Renderer, RunContext, SensorWait};
use crate::runner::{Outcome, RunSpec, run_process};

/// A file sensor's check, rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePoke {
    pub filepath: String,
    pub fs_conn_id: String,
    pub recursive: bool,
}

/// What a process sensor runs each poke, and how it reads the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessPoke {
    /// A rendered `Python` or `Bash` task.
    pub run: Box<RenderedTask>,
    /// For bash: the exit code meaning "not yet" (`None`: any non-zero code).
    pub retry_exit_code: Option<i32>,
}

pub(crate) fn render_file(
    task: &Task,
    op: &FileSensor,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let r = Renderer::new(task, ctx);
    Ok(RenderedTask::Sensor {
        wait: SensorWait::File(FilePoke {
            filepath: r.string("filepath", &op.filepath)?,
            fs_conn_id: op.fs_conn_id.clone(),
            recursive: op.recursive,
        }),
        sensor: op.sensor.clone(),
    })
}

pub(crate) fn render_python(
    task: &Task,
    op: &PythonSensor,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    Ok(RenderedTask::Sensor {
        wait: SensorWait::Process(ProcessPoke {
            run: Box::new(python::render(task, &op.python, ctx)?),
            retry_exit_code: None,
        }),
        sensor: op.sensor.clone(),
    })
}

pub(crate) fn render_bash(
    task: &Task,
    op: &BashSensor,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    Ok(RenderedTask::Sensor {
        wait: SensorWait::Process(ProcessPoke {
            run: Box::new(bash::render(task, &op.bash, ctx)?),
            retry_exit_code: op.retry_exit_code,
        }),
        sensor: op.sensor.clone(),
    })
}

/// The connection a file sensor names, if not the default one (which is `/`, as Airflow's).
pub(crate) fn file_conn_id(check: &FilePoke) -> Option<&str> {
    (check.fs_conn_id != flow_dag::dag::DEFAULT_FS_CONN_ID).then_some(check.fs_conn_id.as_str())
}

/// The pattern a file sensor matches: relative paths under the connection's `path` extra.
fn full_pattern(check: &FilePoke, conn: Option<&Connection>) -> String {
    if Path::new(&check.filepath).is_absolute() {
        return check.filepath.clone();
    }
    let base = conn
        .and_then(|c| c.extra.as_deref())
        .and_then(|e| serde_json::from_str::<Json>(e).ok())
        .and_then(|e| e.get("path").and_then(Json::as_str).map(str::to_owned))
        .unwrap_or_else(|| "/".to_owned());
    Path::new(&base)
        .join(&check.filepath)
        .to_string_lossy()
        .into_owned()
}

/// Whether a file matches: a matching file counts, and a matching directory when it holds a
/// file somewhere below (as Airflow's FileSensor walks it). Python's glob rules: `*` stops at
/// `/` and skips dotfiles; `**` crosses directories only with `recursive`. Links are not
/// followed below a match, and the search stops at the first hit. Blocking: call it from
/// `spawn_blocking`.
fn any_match(pattern: &str, recursive: bool) -> Result<Option<PathBuf>, String> {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let pattern = if recursive {
        pattern.to_owned()
    } else {
        pattern.replace("**", "*")
    };
    let paths = glob::glob_with(&pattern, options)
        .map_err(|e| format!("`filepath`: `{pattern}` is not a valid glob: {e}"))?;
    Ok(paths
        .filter_map(Result::ok)
        .find(|p| p.is_file() || (p.is_dir() && has_file_below(p, 0))))
}

fn has_file_below(dir: &Path, depth: usize) -> bool {
    if depth > 64 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| match e.file_type() {
        Ok(t) if t.is_file() => true,
        Ok(t) if t.is_dir() => has_file_below(&e.path(), depth + 1),
        _ => false,
    })
}

async fn matching(pattern: String, recursive: bool) -> Result<Option<PathBuf>, String> {
    tokio::task::spawn_blocking(move || any_match(&pattern, recursive))
        .await
        .map_err(|e| format!("looking for files: {e}"))?
}

pub(crate) async fn poke_file(
    conn: Option<&Connection>,
    check: &FilePoke,
    logs: &LogSink,
) -> Result<Poked, String> {
    let pattern = full_pattern(check, conn);
    match matching(pattern.clone(), check.recursive).await? {
        Some(found) => {
            logs.system(&format!("Found {}", found.display())).await;
            Ok(Poked::Done(None))
        }
        None => {
            logs.system(&format!("Poking for file {pattern}")).await;
            Ok(Poked::NotYet)
        }
    }
}

/// The kwargs of a deferred file sensor: the resolved pattern and how often to look.
pub(crate) fn file_trigger_kwargs(
    conn: Option<&Connection>,
    check: &FilePoke,
    sensor: &flow_dag::Sensor,
) -> Json {
    json!({
        "filepath": full_pattern(check, conn),
        "recursive": check.recursive,
        "poke_interval_ms": sensor.poke_interval.num_milliseconds().max(1),
    })
}

/// One poll of a deferred file sensor.
pub(crate) async fn file_trigger_poll(kwargs: &Json) -> Result<bool, String> {
    let pattern = kwargs
        .get("filepath")
        .and_then(Json::as_str)
        .ok_or("file trigger without `filepath`")?;
    let recursive = kwargs
        .get("recursive")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    Ok(matching(pattern.to_owned(), recursive).await?.is_some())
}

/// One poke of a Python or bash sensor: runs the callable or command in a process of its own.
pub(crate) async fn poke_process(
    spec: &RunSpec,
    check: &ProcessPoke,
    logs: &LogSink,
    mut cancel: watch::Receiver<bool>,
) -> Result<Poked, String> {
    let (outcome, code) = run_process(spec, &check.run, logs, &mut cancel).await;
    if let RenderedTask::Bash { .. } = check.run.as_ref() {
        return match (outcome, code) {
            (Outcome::Success { .. }, _) => Ok(Poked::Done(None)),
            (Outcome::Skipped { reason }, _) => Ok(Poked::Skip(reason)),
            (_, Some(c)) if check.retry_exit_code.is_none_or(|r| r == c) => Ok(Poked::NotYet),
            // With `retry_exit_code`, any other code fails for good (AirflowFailException).
            (Outcome::Failed { reason }, Some(_)) => Ok(Poked::Fail(reason)),
            (Outcome::Failed { reason }, None) => Err(reason),
            (other, _) => Err(format!("the command ended: {other:?}")),
        };
    }
    match outcome {
        Outcome::Success { xcom } => Ok(poked_from_value(xcom.unwrap_or(Json::Null))),
        Outcome::Skipped { reason } => Ok(Poked::Skip(reason)),
        Outcome::FailedNoRetry { reason } => Ok(Poked::Fail(reason)),
        Outcome::Failed { reason } => Err(reason),
        Outcome::TimedOut => Err("the callable timed out".into()),
        other => Err(format!("the callable ended: {other:?}")),
    }
}

/// A callable's answer: a `PokeReturnValue` (done, with the XCom to push) or a value read as
/// Python reads truth.
fn poked_from_value(value: Json) -> Poked {
    if let Json::Object(map) = &value
        && let Some(Json::Bool(done)) = map.get("__flow_poke__")
    {
        return if *done {
            Poked::Done(map.get("xcom_value").cloned().filter(|v| !v.is_null()))
        } else {
            Poked::NotYet
        };
    }
    let done = crate::jinja::py_truthy(&value);
    if done {
        Poked::Done(None)
    } else {
        Poked::NotYet
    }
}
