//! Creating a run of a DAG: the one code path behind `flow dags trigger`, the REST API and the
//! web UI's trigger button, and (with `run_type: scheduled`) the scheduler.

use chrono::{DateTime, SecondsFormat, Utc};
use flow_dag::Dag;
use flow_model::{DagRunState, DagRunType, RunId};

use crate::{DagRunRow, NewDagRun, NewTaskInstance, Store, StoreError};

/// What a caller asks for; everything optional has Airflow's default.
#[derive(Debug, Clone)]
pub struct TriggerRequest {
    pub run_id: Option<String>,
    pub run_type: DagRunType,
    /// Defaults to the trigger time for manual runs.
    pub logical_date: Option<DateTime<Utc>>,
    /// For scheduled and backfill runs: the timetable's data interval.
    pub data_interval: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub run_after: Option<DateTime<Utc>>,
    pub conf: serde_json::Value,
    pub note: Option<String>,
    pub triggered_by: Option<String>,
}

impl TriggerRequest {
    pub fn manual(conf: serde_json::Value) -> Self {
        TriggerRequest {
            run_id: None,
            run_type: DagRunType::Manual,
            logical_date: None,
            data_interval: None,
            run_after: None,
            conf,
            note: None,
            triggered_by: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("invalid run id: {0}")]
    InvalidRunId(String),
    /// A run id chosen by hand that looks like one flow (or Airflow) generates for another
    /// kind of run: it could take the place of that run.
    #[error(
        "A manual DAG run cannot use ID '{run_id}' since it is reserved for {kind} runs \
         (run ids starting with `{prefix}`)"
    )]
    ReservedRunId {
        run_id: String,
        prefix: &'static str,
        kind: &'static str,
    },
    #[error("`conf` must be a JSON object, got {0}")]
    InvalidConf(String),
    /// The conf gives a param a value its schema refuses (or none where it has no default):
    /// Airflow's 400, before any run exists.
    #[error(transparent)]
    InvalidParams(#[from] flow_dag::params::ParamError),
    #[error("dag run `{run_id}` of dag `{dag_id}` already exists")]
    Duplicate { dag_id: String, run_id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The run a trigger request makes (validated, defaults filled in), before it is stored.
pub fn new_dag_run(
    dag: &Dag,
    dag_hash: &str,
    req: &TriggerRequest,
    now: DateTime<Utc>,
) -> Result<NewDagRun, TriggerError> {
    if !req.conf.is_object() {
        return Err(TriggerError::InvalidConf(req.conf.to_string()));
    }
    // Params are checked here, where every kind of run is made, so that a value its schema
    // refuses never reaches a template (or a shell).
    flow_dag::params::validate_conf(&dag.params, &req.conf)?;
    let logical_date = req.logical_date.unwrap_or(now);
    let run_id = match &req.run_id {
        Some(id) => {
            check_reserved_prefix(id, req.run_type)?;
            RunId::parse(id.clone())
                .map_err(|e| TriggerError::InvalidRunId(e.to_string()))?
                .to_string()
        }
        None => req
            .run_type
            .generate_run_id(&run_id_timestamp(logical_date)),
    };
    let (start, end) = req.data_interval.unwrap_or_else(|| {
        let i = dag.timetable.infer_manual_data_interval(logical_date);
        (i.start, i.end)
    });
    Ok(NewDagRun {
        dag_id: dag.dag_id.to_string(),
        run_id,
        run_type: req.run_type,
        state: DagRunState::Queued,
        logical_date: Some(logical_date),
        data_interval_start: Some(start),
        data_interval_end: Some(end),
        run_after: req.run_after.unwrap_or(now),
        conf: req.conf.clone(),
        note: req.note.clone(),
        triggered_by: req.triggered_by.clone(),
        dag_hash: dag_hash.to_owned(),
    })
}

/// Run id prefixes that name a kind of run: flow's own and Airflow's, so that a run id chosen
/// by hand can neither collide with a run the scheduler will create nor pass for another kind.
const RESERVED_PREFIXES: [(&str, &str); 6] = [
    ("scheduled__", "scheduled"),
    ("backfill__", "backfill"),
    ("event__", "event"),
    ("manual__", "manual"),
    ("asset_triggered__", "asset_triggered"),
    ("dataset_triggered__", "dataset_triggered"),
];

/// Refuses a chosen run id whose prefix belongs to another kind of run than `run_type`.
fn check_reserved_prefix(run_id: &str, run_type: DagRunType) -> Result<(), TriggerError> {
    for (prefix, kind) in RESERVED_PREFIXES {
        if run_id.starts_with(prefix) && prefix != run_type.run_id_prefix() {
            return Err(TriggerError::ReservedRunId {
                run_id: run_id.to_owned(),
                prefix,
                kind,
            });
        }
    }
    Ok(())
}

/// The task instances a new run of `dag` starts with: one per task, no state yet.
pub fn new_task_instances(dag: &Dag) -> Vec<NewTaskInstance> {
    let weights = dag.priority_weights();
    dag.tasks
        .iter()
        .map(|t| NewTaskInstance {
            task_id: t.task_id.to_string(),
            map_index: -1,
            max_tries: i64::from(t.retries),
            operator: t.operator.class_name().to_owned(),
            queue: t.queue.clone(),
            pool: t.pool.to_string(),
            pool_slots: i64::from(t.pool_slots),
            priority_weight: weights.get(t.task_id.as_str()).copied().unwrap_or(1),
        })
        .collect()
}

/// Airflow's timestamp form in run ids: `2025-01-01T00:00:00+00:00`, with microseconds when
/// the instant has them (`manual__2025-01-01T10:00:00.123456+00:00`).
pub fn run_id_timestamp(t: DateTime<Utc>) -> String {
    let format = if t.timestamp_subsec_micros() == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Micros
    };
    t.to_rfc3339_opts(format, false)
}

impl Store {
    /// Creates a run of `dag` with its task instances; the scheduler picks it up.
    pub async fn dag_run_trigger(
        &self,
        dag: &Dag,
        dag_hash: &str,
        req: &TriggerRequest,
        now: DateTime<Utc>,
    ) -> Result<DagRunRow, TriggerError> {
        let run = new_dag_run(dag, dag_hash, req, now)?;
        let run_id = run.run_id.clone();
        self.dag_run_create(&run, &new_task_instances(dag), now)
            .await?
            .ok_or(TriggerError::Duplicate {
                dag_id: dag.dag_id.to_string(),
                run_id,
            })
    }
}
