//! `trigger_dagrun`, `external_task_sensor` and `external_task_marker` at run time: they read
//! and write other DAGs' runs through the store, the same code paths the CLI and the API use.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flow_dag::{ExternalTarget, ExternalTaskSensor, Task, TriggerDagRunOperator};
use flow_model::DagRunState;
use flow_store::{Store, TiKey, TriggerError, TriggerRequest};
use serde_json::{Value as Json, json};

use crate::io_ops::Poked;
use crate::process::LogSink;
use crate::render::{RenderError, RenderedTask, Renderer, RunContext, SensorWait, parse_datetime};
use crate::runner::{Outcome, Resume, RunSpec};

/// A trigger, rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerRun {
    pub dag_id: String,
    pub run_id: Option<String>,
    pub conf: Json,
    pub logical_date: Option<DateTime<Utc>>,
    pub op: TriggerDagRunOperator,
    /// Who triggers: `dag_id.task_id` of this task.
    pub triggered_by: String,
}

/// An external task sensor's check, rendered.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExternalPoke {
    pub dag_id: String,
    pub target: ExternalTarget,
    /// `None` until `execution_date_fn` has been called (at the first poke).
    pub logical_date: Option<DateTime<Utc>>,
    pub execution_date_fn: Option<String>,
    pub run_logical_date: Option<DateTime<Utc>>,
    pub allowed_states: Vec<String>,
    pub failed_states: Vec<String>,
    pub skipped_states: Vec<String>,
    pub check_existence: bool,
    /// A failed external task skips this one instead (Airflow's `soft_fail`).
    pub soft_fail: bool,
}

pub(crate) fn render_trigger(
    task: &Task,
    op: &TriggerDagRunOperator,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let r = Renderer::new(task, ctx);
    let dag_id = r.string("trigger_dag_id", &op.trigger_dag_id)?;
    let run_id = op
        .trigger_run_id
        .as_deref()
        .map(|id| r.string("trigger_run_id", id))
        .transpose()?
        .filter(|id| !id.trim().is_empty());
    let logical_date = match &op.logical_date {
        Some(text) => {
            let t = r.string("logical_date", text)?;
            Some(parse_datetime(t.trim()).ok_or_else(|| {
                RenderError::new(
                    "logical_date",
                    format!("`{t}` is not an ISO 8601 date-time"),
                )
            })?)
        }
        None => None,
    };
    let conf = match r.json("conf", &op.conf)? {
        Json::Null => json!({}),
        Json::String(s) => serde_json::from_str::<Json>(&s)
            .ok()
            .filter(Json::is_object)
            .ok_or_else(|| RenderError::new("conf", format!("`{s}` is not a JSON object")))?,
        v @ Json::Object(_) => v,
        other => {
            return Err(RenderError::new(
                "conf",
                format!("expected a mapping, got {other}"),
            ));
        }
    };
    Ok(RenderedTask::TriggerDagRun(TriggerRun {
        dag_id,
        run_id,
        conf,
        logical_date,
        op: op.clone(),
        triggered_by: format!("operator:{}.{}", ctx.dag_id, ctx.task_id),
    }))
}

pub(crate) fn render_sensor(
    task: &Task,
    op: &ExternalTaskSensor,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let r = Renderer::new(task, ctx);
    let dag_id = r.string("external_dag_id", &op.external_dag_id)?;
    let target = match &op.target {
        ExternalTarget::Run => ExternalTarget::Run,
        ExternalTarget::Tasks { task_ids } => ExternalTarget::Tasks {
            task_ids: task_ids
                .iter()
                .map(|t| r.string("external_task_ids", t))
                .collect::<Result<_, _>>()?,
        },
        ExternalTarget::Group { group_id } => ExternalTarget::Group {
            group_id: r.string("external_task_group_id", group_id)?,
        },
    };
    let base = ctx.logical_date.unwrap_or(ctx.run_after);
    let logical_date = match (&op.execution_delta, &op.execution_date_fn) {
        (_, Some(_)) => None,
        (Some(delta), None) => Some(base - *delta),
        (None, None) => Some(base),
    };
    Ok(RenderedTask::Sensor {
        wait: SensorWait::External(ExternalPoke {
            dag_id,
            target,
            logical_date,
            execution_date_fn: op.execution_date_fn.clone(),
            run_logical_date: Some(base),
            allowed_states: op.allowed_states.clone(),
            failed_states: op.failed_states.clone(),
            skipped_states: op.skipped_states.clone(),
            check_existence: op.check_existence,
            soft_fail: op.sensor.soft_fail,
        }),
        sensor: op.sensor.clone(),
    })
}

fn store_of(spec: &RunSpec) -> Result<&Store, String> {
    spec.store.as_ref().ok_or_else(|| {
        "this operator needs the metadata database, which this run has not".to_owned()
    })
}

/// Triggers the run; with `wait_for_completion`, waits for it (here, or in the triggerer when
/// deferrable).
pub(crate) async fn trigger(spec: &RunSpec, t: &TriggerRun, logs: &LogSink) -> Outcome {
    let store = match store_of(spec) {
        Ok(s) => s,
        Err(reason) => return Outcome::Failed { reason },
    };
    // Resumed from the triggerer: the run ended, the wait timed out, or the trigger failed.
    // Never trigger again on resume.
    match &spec.resume {
        Some(Resume::Event(event)) => {
            let run_id = event
                .get("run_id")
                .and_then(Json::as_str)
                .unwrap_or_default();
            let state = event
                .get("state")
                .and_then(Json::as_str)
                .unwrap_or_default();
            return ended(t, run_id, state, logs).await;
        }
        Some(Resume::TimedOut(reason) | Resume::Failed(reason)) => {
            return Outcome::Failed {
                reason: format!("waiting for the triggered run: {reason}"),
            };
        }
        Some(Resume::Poke { .. }) | None => {}
    }
    let run_id = match trigger_once(store, t, logs).await {
        Ok(Some(run_id)) => run_id,
        Ok(None) => {
            return Outcome::Skipped {
                reason: "the run already exists (skip_when_already_exists)".into(),
            };
        }
        Err(reason) => return Outcome::Failed { reason },
    };
    // Airflow's keys, for `ti.xcom_pull(task_ids=..., key='trigger_run_id')`.
    spec.push_xcom("trigger_run_id", Json::from(run_id.clone()));
    if let Ok(Some(run)) = store.dag_run_get(&t.dag_id, &run_id).await
        && let Some(at) = run.logical_date
    {
        spec.push_xcom("trigger_logical_date", Json::from(at.to_rfc3339()));
    }
    if t.op.wait_for_completion {
        return wait(store, spec, t, &run_id, logs).await;
    }
    Outcome::Success {
        xcom: Some(Json::from(run_id)),
    }
}

/// Creates the run (or resets an existing one); `None` when it exists and is to be skipped.
async fn trigger_once(
    store: &Store,
    t: &TriggerRun,
    logs: &LogSink,
) -> Result<Option<String>, String> {
    let Some((data, hash)) = store
        .serialized_dag_get(&t.dag_id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Err(format!(
            "`trigger_dag_id`: DAG `{}` does not exist",
            t.dag_id
        ));
    };
    let dag = flow_dag::Dag::from_json(&data).map_err(|e| e.to_string())?;
    if t.op.fail_when_dag_is_paused
        && store
            .dag_get(&t.dag_id)
            .await
            .map_err(|e| e.to_string())?
            .is_some_and(|d| d.is_paused)
    {
        return Err(format!(
            "DAG `{}` is paused (fail_when_dag_is_paused)",
            t.dag_id
        ));
    }
    let mut request = TriggerRequest::manual(t.conf.clone());
    request.run_id = t.run_id.clone();
    request.logical_date = t.logical_date;
    request.note = t.op.note.clone();
    request.triggered_by = Some(t.triggered_by.clone());
    match store
        .dag_run_trigger(&dag, &hash, &request, Utc::now())
        .await
    {
        Ok(run) => {
            logs.system(&format!(
                "Triggered DAG `{}`: run `{}`",
                t.dag_id, run.run_id
            ))
            .await;
            Ok(Some(run.run_id))
        }
        Err(TriggerError::Duplicate { run_id, .. }) => {
            // Airflow's order: reset wins over skip.
            if t.op.skip_when_already_exists && !t.op.reset_dag_run {
                logs.system(&format!(
                    "Run `{run_id}` of `{}` already exists; skipping",
                    t.dag_id
                ))
                .await;
                return Ok(None);
            }
            if !t.op.reset_dag_run {
                return Err(format!(
                    "a run `{run_id}` of DAG `{}` already exists (set reset_dag_run to clear it, or skip_when_already_exists)",
                    t.dag_id
                ));
            }
            let tis = store
                .ti_list_for_run(&t.dag_id, &run_id)
                .await
                .map_err(|e| e.to_string())?;
            let keys: Vec<(TiKey, i64)> = tis
                .iter()
                .map(|ti| {
                    let retries = dag
                        .tasks
                        .iter()
                        .find(|task| task.task_id.as_str() == ti.key.task_id)
                        .map_or(0, |task| i64::from(task.retries));
                    (ti.key.clone(), retries)
                })
                .collect();
            store
                .ti_clear(&keys, Utc::now())
                .await
                .map_err(|e| e.to_string())?;
            logs.system(&format!(
                "Cleared the existing run `{run_id}` of `{}` (reset_dag_run)",
                t.dag_id
            ))
            .await;
            Ok(Some(run_id))
        }
        Err(e) => Err(format!("`trigger_dag_id` `{}`: {e}", t.dag_id)),
    }
}

async fn ended(t: &TriggerRun, run_id: &str, state: &str, logs: &LogSink) -> Outcome {
    let failed = t.op.failed_states.iter().any(|s| s.as_str() == state);
    logs.system(&format!("Run `{run_id}` of `{}` ended {state}", t.dag_id))
        .await;
    if failed {
        return Outcome::Failed {
            reason: format!(
                "the triggered run `{run_id}` of `{}` ended {state}",
                t.dag_id
            ),
        };
    }
    Outcome::Success {
        xcom: Some(Json::from(run_id)),
    }
}

async fn wait(
    store: &Store,
    spec: &RunSpec,
    t: &TriggerRun,
    run_id: &str,
    logs: &LogSink,
) -> Outcome {
    let interval =
        t.op.poke_interval
            .to_std()
            .unwrap_or(Duration::from_secs(60));
    if t.op.deferrable {
        logs.system(&format!(
            "Deferring: waiting for run `{run_id}` in the triggerer"
        ))
        .await;
        return Outcome::Defer {
            kind: crate::io_ops::TRIGGER_DAG_RUN.to_owned(),
            kwargs: json!({
                "dag_id": t.dag_id,
                "run_id": run_id,
                "states": t.op.allowed_states.iter().chain(&t.op.failed_states).map(|s| s.as_str()).collect::<Vec<_>>(),
                "poke_interval_ms": interval.as_millis() as u64,
            }),
            // The task's execution_timeout bounds the wait; without one, a week (Airflow's
            // sensor default).
            timeout_at: Utc::now()
                + chrono::Duration::from_std(
                    spec.timeout.unwrap_or(Duration::from_secs(7 * 86_400)),
                )
                .unwrap_or_default(),
        };
    }
    loop {
        match run_state(store, &t.dag_id, run_id).await {
            Ok(Some(state))
                if t.op.allowed_states.contains(&state) || t.op.failed_states.contains(&state) =>
            {
                return ended(t, run_id, state.as_str(), logs).await;
            }
            Ok(Some(state)) => {
                logs.system(&format!(
                    "Run `{run_id}` of `{}` is {state}; waiting",
                    t.dag_id
                ))
                .await;
            }
            Ok(None) => {
                return Outcome::Failed {
                    reason: format!("the triggered run `{run_id}` of `{}` was deleted", t.dag_id),
                };
            }
            Err(e) => {
                logs.system(&format!("cannot read the run's state ({e}); retrying"))
                    .await
            }
        }
        tokio::time::sleep(interval).await;
    }
}

pub(crate) async fn run_state(
    store: &Store,
    dag_id: &str,
    run_id: &str,
) -> Result<Option<DagRunState>, String> {
    Ok(store
        .dag_run_get(dag_id, run_id)
        .await
        .map_err(|e| e.to_string())?
        .map(|r| r.state))
}

/// The logical date(s) an external task sensor looks at: `execution_date_fn` is called with
/// this run's logical date in a Python process, as Airflow calls it.
async fn target_dates(spec: &RunSpec, check: &ExternalPoke) -> Result<Vec<DateTime<Utc>>, String> {
    if let Some(at) = check.logical_date {
        return Ok(vec![at]);
    }
    let Some(function) = &check.execution_date_fn else {
        return Ok(Vec::new());
    };
    let (module, name) = function
        .rsplit_once('.')
        .ok_or_else(|| format!("`execution_date_fn`: `{function}` is not module.function"))?;
    let base = check.run_logical_date.unwrap_or_else(Utc::now);
    let prelude = crate::runner::python_prelude();
    if prelude.is_empty() {
        return Err("flow bug: the Python bootstrap has no prelude".to_owned());
    }
    let script = format!(
        "{prelude}\n\
         sys.path.insert(0, sys.argv[1])\n\
         _install_airflow_shim()\n\
         fn = getattr(importlib.import_module(sys.argv[2]), sys.argv[3])\n\
         at = datetime.datetime.fromisoformat(sys.argv[4])\n\
         out = fn(at)\n\
         out = out if isinstance(out, (list, tuple)) else [out]\n\
         print(json.dumps([d.isoformat() for d in out]))\n"
    );
    let output = tokio::process::Command::new(&spec.python)
        .arg("-c")
        .arg(&script)
        .arg(&spec.dags_folder)
        .arg(module)
        .arg(name)
        .arg(base.to_rfc3339())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("`execution_date_fn`: cannot start {}: {e}", spec.python))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let last = err.lines().last().unwrap_or("").to_owned();
        return Err(format!("`execution_date_fn` `{function}` failed: {last}"));
    }
    let dates: Vec<String> = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("`execution_date_fn` `{function}`: unreadable result: {e}"))?;
    dates
        .iter()
        .map(|d| {
            parse_datetime(d)
                .ok_or_else(|| format!("`execution_date_fn` returned `{d}`, not a date-time"))
        })
        .collect()
}

/// One poke of an external task sensor (Airflow's counting: any failed state fails, any
/// skipped state skips, done when every watched task instance is in an allowed state).
pub(crate) async fn poke(
    spec: &RunSpec,
    store: Option<&Store>,
    check: &ExternalPoke,
    logs: &LogSink,
) -> Result<Poked, String> {
    let store = store.ok_or("this sensor needs the metadata database")?;
    let dates = target_dates(spec, check).await?;
    let mut done = 0;
    for at in &dates {
        match poke_one(store, check, *at).await? {
            Verdict::Done => done += 1,
            Verdict::Waiting(why) => {
                logs.system(&format!(
                    "Poking for {} at {}: {why}",
                    describe(check),
                    at.to_rfc3339()
                ))
                .await;
            }
            Verdict::Failed(why) if check.soft_fail => return Ok(Poked::Skip(why)),
            Verdict::Failed(why) => return Err(why),
            Verdict::Skipped(why) => return Ok(Poked::Skip(why)),
        }
    }
    Ok(if done == dates.len() {
        Poked::Done(None)
    } else {
        Poked::NotYet
    })
}

fn describe(check: &ExternalPoke) -> String {
    match &check.target {
        ExternalTarget::Run => format!("DAG `{}`", check.dag_id),
        ExternalTarget::Tasks { task_ids } => format!("`{}`.{:?}", check.dag_id, task_ids),
        ExternalTarget::Group { group_id } => format!("group `{}.{group_id}`", check.dag_id),
    }
}

enum Verdict {
    Done,
    Waiting(String),
    Failed(String),
    Skipped(String),
}

async fn poke_one(
    store: &Store,
    check: &ExternalPoke,
    at: DateTime<Utc>,
) -> Result<Verdict, String> {
    let dag = store
        .dag_get(&check.dag_id)
        .await
        .map_err(|e| e.to_string())?;
    if dag.is_none() && check.check_existence {
        return Ok(Verdict::Failed(format!(
            "the external DAG `{}` does not exist",
            check.dag_id
        )));
    }
    let Some(run) = store
        .dag_run_at(&check.dag_id, at)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(Verdict::Waiting("no run at that logical date yet".into()));
    };
    let states: Vec<String> = match &check.target {
        ExternalTarget::Run => vec![run.state.as_str().to_owned()],
        target => {
            let tis = store
                .ti_list_for_run(&check.dag_id, &run.run_id)
                .await
                .map_err(|e| e.to_string())?;
            let watched: Vec<&flow_store::TiRow> = tis
                .iter()
                .filter(|ti| match target {
                    ExternalTarget::Tasks { task_ids } => task_ids.contains(&ti.key.task_id),
                    ExternalTarget::Group { group_id } => {
                        ti.key.task_id.starts_with(&format!("{group_id}."))
                    }
                    ExternalTarget::Run => false,
                })
                .collect();
            if let ExternalTarget::Tasks { task_ids } = target {
                let missing: Vec<&String> = task_ids
                    .iter()
                    .filter(|id| !watched.iter().any(|ti| &ti.key.task_id == *id))
                    .collect();
                if !missing.is_empty() && check.check_existence {
                    return Ok(Verdict::Failed(format!(
                        "the external DAG `{}` has no task {}",
                        check.dag_id,
                        missing
                            .iter()
                            .map(|m| format!("`{m}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                if !missing.is_empty() {
                    return Ok(Verdict::Waiting(format!(
                        "no task instance for {missing:?}"
                    )));
                }
            }
            if watched.is_empty() {
                return Ok(Verdict::Waiting("no task instance in that group".into()));
            }
            watched
                .iter()
                .map(|ti| ti.state.as_str().to_owned())
                .collect()
        }
    };
    if let Some(s) = states.iter().find(|s| check.failed_states.contains(s)) {
        return Ok(Verdict::Failed(format!(
            "{} at {} is {s} (failed_states)",
            describe(check),
            at.to_rfc3339()
        )));
    }
    if let Some(s) = states.iter().find(|s| check.skipped_states.contains(s)) {
        return Ok(Verdict::Skipped(format!(
            "{} at {} is {s} (skipped_states)",
            describe(check),
            at.to_rfc3339()
        )));
    }
    let allowed = states
        .iter()
        .filter(|s| check.allowed_states.contains(s))
        .count();
    if allowed == states.len() {
        Ok(Verdict::Done)
    } else {
        Ok(Verdict::Waiting(format!(
            "{allowed} of {} in {:?}",
            states.len(),
            check.allowed_states
        )))
    }
}

/// The kwargs of a deferred external task sensor: the check with its dates resolved.
pub(crate) async fn defer_kwargs(
    spec: &RunSpec,
    check: &ExternalPoke,
    sensor: &flow_dag::Sensor,
) -> Result<Json, String> {
    let dates = target_dates(spec, check).await?;
    let mut resolved = check.clone();
    resolved.execution_date_fn = None;
    Ok(json!({
        "check": resolved,
        "dates": dates.iter().map(|d| d.to_rfc3339()).collect::<Vec<_>>(),
        "poke_interval_ms": sensor.poke_interval.num_milliseconds().max(1),
    }))
}

/// One poll of a deferred external task sensor: the event when done (or skipped), `None` to
/// keep waiting.
pub(crate) async fn external_poll(store: &Store, kwargs: &Json) -> Result<Option<Json>, String> {
    let check: ExternalPoke =
        serde_json::from_value(kwargs.get("check").cloned().unwrap_or(Json::Null))
            .map_err(|e| format!("external task trigger: {e}"))?;
    let dates: Vec<DateTime<Utc>> = kwargs
        .get("dates")
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Json::as_str)
                .filter_map(parse_datetime)
                .collect()
        })
        .unwrap_or_default();
    let mut done = 0;
    for at in &dates {
        match poke_one(store, &check, *at).await? {
            Verdict::Done => done += 1,
            Verdict::Waiting(_) => {}
            Verdict::Failed(why) if check.soft_fail => {
                return Ok(Some(json!({"status": "skipped", "reason": why})));
            }
            Verdict::Failed(why) => return Err(why),
            Verdict::Skipped(why) => return Ok(Some(json!({"status": "skipped", "reason": why}))),
        }
    }
    Ok((done == dates.len()).then(|| json!({"status": "success"})))
}

/// The run this trigger waits for has one of `states`: the event, or `None` to keep waiting.
pub(crate) async fn trigger_poll(store: &Store, kwargs: &Json) -> Result<Option<Json>, String> {
    let text = |k: &str| {
        kwargs
            .get(k)
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("dag run trigger without `{k}`"))
    };
    let (dag_id, run_id) = (text("dag_id")?, text("run_id")?);
    let states: Vec<String> = kwargs
        .get("states")
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Json::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    match run_state(store, &dag_id, &run_id).await? {
        Some(state) if states.iter().any(|s| s == state.as_str()) => {
            Ok(Some(json!({"run_id": run_id, "state": state.as_str()})))
        }
        Some(_) => Ok(None),
        None => Err(format!("the run `{run_id}` of `{dag_id}` was deleted")),
    }
}
