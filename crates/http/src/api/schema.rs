//! The REST API's response and error bodies, named and shaped as Airflow's (`DAGResponse`,
//! `DAGRunResponse`, ...). Handlers build these types, and the OpenAPI spec is derived from the
//! same types, so what the spec promises is what the handlers send.
//!
//! Every field is always present; absent values are `null` (Airflow's "required and
//! nullable"), because clients generated from Airflow's spec expect the keys.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// Airflow's error body: `detail` is a message, an object (409 on a duplicate) or FastAPI's
/// list of validation errors (422).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = HTTPExceptionResponse)]
pub struct ErrorBody {
    #[schema(value_type = Value)]
    pub detail: Value,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DagTagResponse)]
pub struct DagTag {
    pub name: String,
    pub dag_id: String,
    pub dag_display_name: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DAGResponse)]
pub struct DagResponse {
    pub dag_id: String,
    pub dag_display_name: String,
    pub is_paused: bool,
    pub is_stale: bool,
    #[schema(format = DateTime)]
    pub last_parsed_time: Option<String>,
    pub last_parse_duration: Option<f64>,
    #[schema(format = DateTime)]
    pub last_expired: Option<String>,
    pub bundle_name: Option<String>,
    pub bundle_version: Option<String>,
    pub relative_fileloc: Option<String>,
    pub fileloc: String,
    pub description: Option<String>,
    pub timetable_summary: Option<String>,
    pub timetable_description: Option<String>,
    pub timetable_partitioned: bool,
    pub timetable_periodic: bool,
    pub is_backfillable: bool,
    pub tags: Vec<DagTag>,
    pub max_active_tasks: i64,
    pub max_active_runs: Option<i64>,
    pub max_consecutive_failed_dag_runs: i64,
    pub has_task_concurrency_limits: bool,
    pub has_import_errors: bool,
    #[schema(format = DateTime)]
    pub next_dagrun_logical_date: Option<String>,
    #[schema(format = DateTime)]
    pub next_dagrun_data_interval_start: Option<String>,
    #[schema(format = DateTime)]
    pub next_dagrun_data_interval_end: Option<String>,
    #[schema(format = DateTime)]
    pub next_dagrun_run_after: Option<String>,
    pub owners: Vec<String>,
    pub allowed_run_types: Option<Vec<String>>,
    pub file_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DAGCollectionResponse)]
pub struct DagCollection {
    pub dags: Vec<DagResponse>,
    pub total_entries: usize,
}

/// `GET /dags/{dag_id}/details`: the DAG plus what its definition says.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DAGDetailsResponse)]
pub struct DagDetails {
    #[serde(flatten)]
    pub dag: DagResponse,
    pub catchup: bool,
    /// ISO 8601 duration (`PT1H`), as pydantic prints a timedelta.
    pub dag_run_timeout: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub asset_expression: Option<Value>,
    pub doc_md: Option<String>,
    #[schema(format = DateTime)]
    pub start_date: Option<String>,
    #[schema(format = DateTime)]
    pub end_date: Option<String>,
    pub is_paused_upon_creation: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    pub render_template_as_native_obj: bool,
    pub template_search_path: Option<Vec<String>>,
    pub timezone: Option<String>,
    #[schema(format = DateTime)]
    pub last_parsed: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub default_args: Option<Value>,
    pub owner_links: Option<std::collections::BTreeMap<String, String>>,
    pub is_favorite: bool,
    pub active_runs_count: i64,
    #[schema(value_type = Option<Object>)]
    pub latest_dag_version: Option<Value>,
    pub concurrency: i64,
}

/// Airflow's serialised `timedelta` in task responses.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TimeDelta)]
pub struct TimeDelta {
    #[serde(rename = "__type")]
    pub kind: String,
    pub days: i64,
    pub seconds: i64,
    pub microseconds: i64,
}

impl TimeDelta {
    pub fn from_duration(d: chrono::TimeDelta) -> Self {
        let secs = d.num_seconds();
        TimeDelta {
            kind: "TimeDelta".into(),
            days: secs.div_euclid(86_400),
            seconds: secs.rem_euclid(86_400),
            microseconds: i64::from(d.subsec_nanos() / 1000),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TaskResponse)]
pub struct TaskResponse {
    pub task_id: String,
    pub task_display_name: String,
    pub owner: Option<String>,
    #[schema(format = DateTime)]
    pub start_date: Option<String>,
    #[schema(format = DateTime)]
    pub end_date: Option<String>,
    pub trigger_rule: Option<String>,
    pub depends_on_past: bool,
    pub wait_for_downstream: bool,
    pub retries: Option<f64>,
    pub queue: Option<String>,
    pub pool: Option<String>,
    pub pool_slots: Option<f64>,
    pub execution_timeout: Option<TimeDelta>,
    pub retry_delay: Option<TimeDelta>,
    /// A number since Airflow 3.2 (1.0 or 0.0), which the 3.2 client insists on.
    pub retry_exponential_backoff: f64,
    pub priority_weight: Option<f64>,
    pub weight_rule: Option<String>,
    pub ui_color: Option<String>,
    pub ui_fgcolor: Option<String>,
    pub template_fields: Option<Vec<String>>,
    pub downstream_task_ids: Option<Vec<String>>,
    pub doc_md: Option<String>,
    pub operator_name: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub class_ref: Option<Value>,
    pub is_mapped: Option<bool>,
    pub extra_links: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TaskCollectionResponse)]
pub struct TaskCollection {
    pub tasks: Vec<TaskResponse>,
    pub total_entries: usize,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DAGRunResponse)]
pub struct DagRunResponse {
    pub dag_run_id: String,
    pub dag_id: String,
    #[schema(format = DateTime)]
    pub logical_date: Option<String>,
    #[schema(format = DateTime)]
    pub queued_at: Option<String>,
    #[schema(format = DateTime)]
    pub start_date: Option<String>,
    #[schema(format = DateTime)]
    pub end_date: Option<String>,
    pub duration: Option<f64>,
    #[schema(format = DateTime)]
    pub data_interval_start: Option<String>,
    #[schema(format = DateTime)]
    pub data_interval_end: Option<String>,
    #[schema(format = DateTime)]
    pub run_after: Option<String>,
    #[schema(format = DateTime)]
    pub last_scheduling_decision: Option<String>,
    /// `scheduled`, `manual`, `backfill` or `asset_triggered` (flow's event runs).
    pub run_type: String,
    /// `queued`, `running`, `success` or `failed`.
    pub state: String,
    pub triggered_by: Option<String>,
    pub triggering_user_name: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub conf: Option<Value>,
    pub note: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub dag_versions: Vec<Value>,
    pub bundle_version: Option<String>,
    pub dag_display_name: String,
    pub partition_key: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DAGRunCollectionResponse)]
pub struct DagRunCollection {
    pub dag_runs: Vec<DagRunResponse>,
    pub total_entries: i64,
}

/// A task instance: one try's fields plus what only the current instance has.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TaskInstanceResponse)]
pub struct TaskInstanceResponse {
    #[schema(format = "uuid")]
    pub id: String,
    #[serde(flatten)]
    pub instance: TaskInstanceHistory,
    #[schema(format = DateTime)]
    pub logical_date: Option<String>,
    #[schema(format = DateTime)]
    pub run_after: Option<String>,
    pub note: Option<String>,
    pub rendered_map_index: Option<String>,
    #[schema(value_type = Object)]
    pub rendered_fields: Value,
    #[schema(value_type = Option<Object>)]
    pub trigger: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub triggerer_job: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TaskInstanceCollectionResponse)]
pub struct TaskInstanceCollection {
    pub task_instances: Vec<TaskInstanceResponse>,
    pub total_entries: usize,
}

/// One try of a task instance (Airflow's `TaskInstanceHistoryResponse`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TaskInstanceHistoryResponse)]
pub struct TaskInstanceHistory {
    pub task_id: String,
    pub dag_id: String,
    pub dag_run_id: String,
    pub map_index: i64,
    #[schema(format = DateTime)]
    pub start_date: Option<String>,
    #[schema(format = DateTime)]
    pub end_date: Option<String>,
    pub duration: Option<f64>,
    /// Airflow's task instance state; `null` for no state yet.
    pub state: Option<String>,
    pub try_number: i64,
    pub max_tries: i64,
    pub task_display_name: String,
    pub dag_display_name: String,
    pub hostname: Option<String>,
    pub unixname: Option<String>,
    pub pool: String,
    pub pool_slots: i64,
    pub queue: Option<String>,
    pub priority_weight: Option<i64>,
    pub operator: Option<String>,
    pub operator_name: Option<String>,
    #[schema(format = DateTime)]
    pub queued_when: Option<String>,
    #[schema(format = DateTime)]
    pub scheduled_when: Option<String>,
    pub pid: Option<i64>,
    pub executor: Option<String>,
    pub executor_config: String,
    #[schema(value_type = Option<Object>)]
    pub dag_version: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TaskInstanceHistoryCollectionResponse)]
pub struct TaskInstanceHistoryCollection {
    pub task_instances: Vec<TaskInstanceHistory>,
    pub total_entries: usize,
}

/// One log line.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = StructuredLogMessage)]
pub struct LogMessage {
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
    pub event: String,
    /// `stdout`, `stderr` or `flow` (lines flow itself wrote).
    pub stream: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TaskInstancesLogResponse)]
pub struct LogResponse {
    pub content: Vec<LogMessage>,
    /// Pass back as `token` to read the lines after these; `null` when the try is over and
    /// everything was returned.
    pub continuation_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = XComResponse)]
pub struct XcomEntry {
    pub key: String,
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
    #[schema(format = DateTime)]
    pub logical_date: Option<String>,
    pub map_index: i64,
    pub task_id: String,
    pub dag_id: String,
    pub run_id: String,
    pub dag_display_name: String,
    pub task_display_name: String,
    #[schema(format = DateTime)]
    pub run_after: Option<String>,
}

/// An XCom with its value: any JSON, or a string with `stringify=true`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = XComResponseNative)]
pub struct XcomValue {
    #[serde(flatten)]
    pub entry: XcomEntry,
    #[schema(value_type = Value)]
    pub value: Value,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = XComCollectionResponse)]
pub struct XcomCollection {
    pub xcom_entries: Vec<XcomEntry>,
    pub total_entries: usize,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ImportErrorResponse)]
pub struct ImportError {
    pub import_error_id: i64,
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
    pub filename: String,
    pub bundle_name: Option<String>,
    pub stack_trace: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobCollectionResponse)]
pub struct JobCollection {
    pub jobs: Vec<Job>,
    pub total_entries: i64,
}

/// Airflow's JobResponse: a scheduler, worker, triggerer, web server or dag processor.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobResponse)]
pub struct Job {
    pub id: i64,
    pub dag_id: Option<String>,
    pub state: Option<String>,
    pub job_type: Option<String>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub latest_heartbeat: Option<String>,
    pub executor_class: Option<String>,
    pub hostname: Option<String>,
    pub unixname: Option<String>,
    pub dag_display_name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ImportErrorCollectionResponse)]
pub struct ImportErrorCollection {
    pub import_errors: Vec<ImportError>,
    pub total_entries: usize,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EventLogResponse)]
pub struct EventLog {
    pub event_log_id: i64,
    #[schema(format = DateTime)]
    pub when: Option<String>,
    pub dag_id: Option<String>,
    pub task_id: Option<String>,
    pub run_id: Option<String>,
    pub map_index: Option<i64>,
    pub try_number: Option<i64>,
    pub event: String,
    #[schema(format = DateTime)]
    pub logical_date: Option<String>,
    pub owner: Option<String>,
    pub extra: Option<String>,
    pub dag_display_name: Option<String>,
    pub task_display_name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EventLogCollectionResponse)]
pub struct EventLogCollection {
    pub event_logs: Vec<EventLog>,
    pub total_entries: usize,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DAGSourceResponse)]
pub struct DagSource {
    pub content: Option<String>,
    pub dag_id: String,
    pub version_number: Option<i64>,
    pub dag_display_name: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DAGTagCollectionResponse)]
pub struct DagTagCollection {
    pub tags: Vec<String>,
    pub total_entries: usize,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = VersionInfo)]
pub struct VersionInfo {
    pub version: String,
    pub git_version: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = BaseInfoResponse)]
pub struct ComponentHealth {
    /// `healthy` or `unhealthy`; `null` for components flow does not run.
    pub status: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SchedulerInfoResponse)]
pub struct SchedulerHealth {
    pub status: Option<String>,
    pub latest_scheduler_heartbeat: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TriggererInfoResponse)]
pub struct TriggererHealth {
    pub status: Option<String>,
    pub latest_triggerer_heartbeat: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DagProcessorInfoResponse)]
pub struct DagProcessorHealth {
    pub status: Option<String>,
    pub latest_dag_processor_heartbeat: Option<String>,
}

/// Airflow's `ConnectionResponse`; `password` and sensitive extra values are `***`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionResponse {
    pub connection_id: String,
    pub conn_type: String,
    pub description: Option<String>,
    pub host: Option<String>,
    pub login: Option<String>,
    pub schema: Option<String>,
    pub port: Option<u16>,
    pub password: Option<String>,
    pub extra: Option<String>,
}

/// Airflow's `ConnectionTestResponse`: whether the test passed, and what it said.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionTestResponse {
    pub status: bool,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ConnectionCollectionResponse)]
pub struct ConnectionCollection {
    pub connections: Vec<ConnectionResponse>,
    pub total_entries: usize,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = HealthInfoResponse)]
pub struct HealthInfo {
    pub metadatabase: ComponentHealth,
    pub scheduler: SchedulerHealth,
    pub triggerer: TriggererHealth,
    pub dag_processor: DagProcessorHealth,
    /// flow's addition: whether the consumers of Kafka-triggered DAGs reach their brokers
    /// (`degraded` while they reconnect).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_triggers: Option<KafkaTriggerHealth>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KafkaTriggerHealth {
    pub status: Option<String>,
    /// `running` or `degraded`.
    pub state: String,
    pub latest_heartbeat: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = LoginResponse)]
pub struct TokenResponse {
    pub access_token: String,
}
