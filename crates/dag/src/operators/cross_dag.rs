//! Cross-DAG dependencies: `trigger_dagrun` starts a run of another DAG (and may wait for
//! it), `external_task_sensor` waits for tasks (or a whole run) of another DAG at a logical
//! date, `external_task_marker` names the task a clear of this one also clears.

use chrono::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{OperatorKind, ReadOp};
use crate::build::{Ctx, check_template, check_templates_in, read_duration};
use crate::dag::{Operator, Sensor, millis, millis_opt};
use crate::de::to_json;
use crate::spec::{AnyValue, DurationSpec, Raw};
use flow_model::{DagRunState, TaskInstanceState};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerDagRunSpec {
    /// The DAG to trigger (templated).
    pub trigger_dag_id: String,
    /// The new run's id (templated; default `manual__<logical date>`).
    pub trigger_run_id: Option<String>,
    /// The new run's conf (templated).
    #[schemars(with = "Option<serde_json::Value>")]
    pub conf: Option<Raw<AnyValue>>,
    /// The new run's logical date (templated ISO 8601; default now).
    pub logical_date: Option<String>,
    /// Airflow 2's name for `logical_date`.
    pub execution_date: Option<String>,
    /// When a run with that id exists: clear it and run it again (default false: fail).
    pub reset_dag_run: Option<bool>,
    /// When a run with that id exists: skip this task (default false).
    pub skip_when_already_exists: Option<bool>,
    /// Fail if the DAG is paused (default false: the run waits until it is unpaused).
    pub fail_when_dag_is_paused: Option<bool>,
    /// Wait until the run ends (default false).
    pub wait_for_completion: Option<bool>,
    #[schemars(with = "Option<serde_json::Value>")]
    pub poke_interval: Option<Raw<DurationSpec>>,
    /// Run states that end the wait successfully (default `[success]`).
    pub allowed_states: Option<Vec<String>>,
    /// Run states that fail this task (default `[failed]`).
    pub failed_states: Option<Vec<String>>,
    /// Wait in the triggerer instead of a worker slot.
    pub deferrable: Option<bool>,
    /// A note on the new run.
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerDagRunOperator {
    pub trigger_dag_id: String,
    pub trigger_run_id: Option<String>,
    /// Every string templated.
    pub conf: Json,
    pub logical_date: Option<String>,
    pub reset_dag_run: bool,
    pub skip_when_already_exists: bool,
    pub fail_when_dag_is_paused: bool,
    pub wait_for_completion: bool,
    #[serde(with = "millis")]
    pub poke_interval: Duration,
    pub allowed_states: Vec<DagRunState>,
    pub failed_states: Vec<DagRunState>,
    pub deferrable: bool,
    pub note: Option<String>,
}

fn run_states(
    ctx: &mut Ctx<'_>,
    read: &ReadOp<'_>,
    key: &str,
    given: Option<Vec<String>>,
    default: &[DagRunState],
) -> Vec<DagRunState> {
    let Some(given) = given else {
        return default.to_vec();
    };
    given
        .iter()
        .filter_map(|s| match DagRunState::parse(s) {
            Ok(state) => Some(state),
            Err(_) => {
                ctx.error(
                    read.span_of(key),
                    format!("`{key}`: `{s}` is not a run state (queued, running, success, failed)"),
                );
                None
            }
        })
        .collect()
}

pub(crate) struct TriggerDagRun;

impl OperatorKind for TriggerDagRun {
    const NAME: &'static str = "trigger_dagrun";
    const ALIASES: &'static [&'static str] = &[
        "TriggerDagRunOperator",
        "airflow.operators.trigger_dagrun.TriggerDagRunOperator",
        "airflow.operators.dagrun_operator.TriggerDagRunOperator",
        "airflow.providers.standard.operators.trigger_dagrun.TriggerDagRunOperator",
    ];
    const MODULE: &'static str = "airflow.providers.standard.operators.trigger_dagrun";
    const CLASS: &'static str = "TriggerDagRunOperator";
    const TEMPLATE_FIELDS: &'static [&'static str] =
        &["trigger_dag_id", "trigger_run_id", "logical_date", "conf"];
    const UI_COLOR: &'static str = "#ffefeb";
    type Spec = TriggerDagRunSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        check_template(
            ctx,
            "trigger_dag_id",
            &spec.trigger_dag_id,
            read.span_of("trigger_dag_id"),
        );
        if !crate::template::has_markup(&spec.trigger_dag_id)
            && let Err(e) = flow_model::ids::validate_id("dag_id", &spec.trigger_dag_id)
        {
            ctx.error(
                read.span_of("trigger_dag_id"),
                format!("`trigger_dag_id`: {e}"),
            );
        }
        for (key, value) in [
            ("trigger_run_id", &spec.trigger_run_id),
            ("logical_date", &spec.logical_date),
            ("execution_date", &spec.execution_date),
        ] {
            if let Some(v) = value {
                check_template(ctx, key, v, read.span_of(key));
            }
        }
        let conf = match &spec.conf {
            Some(raw) => {
                check_templates_in(ctx, "conf", &raw.node);
                match to_json(&raw.node) {
                    v @ (Json::Object(_) | Json::Null) => v,
                    Json::String(s) if crate::template::has_markup(&s) => Json::String(s),
                    other => {
                        ctx.error(
                            raw.node.span,
                            format!("`conf`: expected a mapping, found `{other}`"),
                        );
                        Json::Null
                    }
                }
            }
            None => Json::Null,
        };
        let poke_interval = match &spec.poke_interval {
            Some(raw) => read_duration(ctx, &raw.node, "poke_interval")?,
            None => Duration::seconds(60),
        };
        if poke_interval <= Duration::zero() {
            ctx.error(
                read.span_of("poke_interval"),
                "`poke_interval` must be longer than zero",
            );
        }
        let allowed_states = run_states(
            ctx,
            read,
            "allowed_states",
            spec.allowed_states,
            &[DagRunState::Success],
        );
        let failed_states = run_states(
            ctx,
            read,
            "failed_states",
            spec.failed_states,
            &[DagRunState::Failed],
        );
        Some(Operator::TriggerDagRun(TriggerDagRunOperator {
            trigger_dag_id: spec.trigger_dag_id,
            trigger_run_id: spec.trigger_run_id,
            conf,
            logical_date: spec.logical_date.or(spec.execution_date),
            reset_dag_run: spec.reset_dag_run.unwrap_or(false),
            skip_when_already_exists: spec.skip_when_already_exists.unwrap_or(false),
            fail_when_dag_is_paused: spec.fail_when_dag_is_paused.unwrap_or(false),
            wait_for_completion: spec.wait_for_completion.unwrap_or(false),
            poke_interval,
            allowed_states,
            failed_states,
            deferrable: spec.deferrable.unwrap_or(false),
            note: spec.note,
        }))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalTaskSensorSpec {
    /// The DAG to watch (templated).
    pub external_dag_id: String,
    /// One task (templated); without any task key the sensor waits for the run itself.
    pub external_task_id: Option<String>,
    pub external_task_ids: Option<Vec<String>>,
    /// Every task of this group.
    pub external_task_group_id: Option<String>,
    /// The watched run's logical date is this run's minus this (default: the same).
    #[schemars(with = "Option<serde_json::Value>")]
    pub execution_delta: Option<Raw<DurationSpec>>,
    /// A Python callable `module.function(logical_date) -> datetime` (dag-factory's form).
    pub execution_date_fn: Option<String>,
    /// States that end the wait (default `[success]`).
    pub allowed_states: Option<Vec<String>>,
    /// States that fail this task (default none).
    pub failed_states: Option<Vec<String>>,
    /// States that skip this task (default none).
    pub skipped_states: Option<Vec<String>>,
    /// Fail at once when the DAG or the tasks do not exist (default false).
    pub check_existence: Option<bool>,
}

/// What an external task sensor watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExternalTarget {
    /// The run's own state.
    Run,
    Tasks {
        task_ids: Vec<String>,
    },
    Group {
        group_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalTaskSensor {
    pub external_dag_id: String,
    pub target: ExternalTarget,
    #[serde(with = "millis_opt")]
    pub execution_delta: Option<Duration>,
    /// `module.function`, called with the logical date.
    pub execution_date_fn: Option<String>,
    /// State names: task instance states, or run states when the target is the run.
    pub allowed_states: Vec<String>,
    pub failed_states: Vec<String>,
    pub skipped_states: Vec<String>,
    pub check_existence: bool,
    pub sensor: Sensor,
}

fn state_names(
    ctx: &mut Ctx<'_>,
    read: &ReadOp<'_>,
    key: &str,
    given: Option<Vec<String>>,
    default: &[&str],
    run: bool,
) -> Vec<String> {
    let names = given.unwrap_or_else(|| default.iter().map(|s| (*s).to_owned()).collect());
    for name in &names {
        let ok = if run {
            DagRunState::parse(name).is_ok()
        } else {
            TaskInstanceState::parse(name).is_ok()
        };
        if !ok {
            ctx.error(
                read.span_of(key),
                format!(
                    "`{key}`: `{name}` is not a {} state",
                    if run { "run" } else { "task instance" }
                ),
            );
        }
    }
    names
}

pub(crate) struct ExternalTaskSensorKind;

impl OperatorKind for ExternalTaskSensorKind {
    const NAME: &'static str = "external_task_sensor";
    const ALIASES: &'static [&'static str] = &[
        "ExternalTaskSensor",
        "ExternalTaskSensorAsync",
        "airflow.sensors.external_task.ExternalTaskSensor",
        "airflow.sensors.external_task_sensor.ExternalTaskSensor",
        "airflow.providers.standard.sensors.external_task.ExternalTaskSensor",
    ];
    const MODULE: &'static str = "airflow.providers.standard.sensors.external_task";
    const CLASS: &'static str = "ExternalTaskSensor";
    const TEMPLATE_FIELDS: &'static [&'static str] = &[
        "external_dag_id",
        "external_task_id",
        "external_task_ids",
        "external_task_group_id",
    ];
    const UI_COLOR: &'static str = "#4db7db";
    const SENSOR: bool = true;
    type Spec = ExternalTaskSensorSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        check_template(
            ctx,
            "external_dag_id",
            &spec.external_dag_id,
            read.span_of("external_dag_id"),
        );
        let target = match (
            spec.external_task_id,
            spec.external_task_ids,
            spec.external_task_group_id,
        ) {
            (None, None, None) => ExternalTarget::Run,
            (Some(id), None, None) => ExternalTarget::Tasks { task_ids: vec![id] },
            (None, Some(ids), None) if !ids.is_empty() => ExternalTarget::Tasks { task_ids: ids },
            (None, None, Some(group_id)) => ExternalTarget::Group { group_id },
            (None, Some(_), None) => {
                ctx.error(
                    read.span_of("external_task_ids"),
                    "`external_task_ids` is empty",
                );
                return None;
            }
            _ => {
                ctx.error(
                    read.fallback,
                    "set one of `external_task_id`, `external_task_ids` and `external_task_group_id`",
                );
                return None;
            }
        };
        let execution_delta = match &spec.execution_delta {
            Some(raw) => Some(read_delta(ctx, &raw.node)?),
            None => None,
        };
        if execution_delta.is_some() && spec.execution_date_fn.is_some() {
            ctx.error(
                read.span_of("execution_date_fn"),
                "set `execution_delta` or `execution_date_fn`, not both",
            );
            return None;
        }
        if let Some(f) = &spec.execution_date_fn {
            let ok = f.rsplit_once('.').is_some_and(|(m, func)| {
                !m.is_empty() && func.chars().all(|c| c.is_alphanumeric() || c == '_')
            });
            if !ok {
                ctx.error(
                    read.span_of("execution_date_fn"),
                    format!("`execution_date_fn`: `{f}` is not of the form `module.function`"),
                );
            }
        }
        let run = matches!(target, ExternalTarget::Run);
        let allowed_states = state_names(
            ctx,
            read,
            "allowed_states",
            spec.allowed_states,
            &["success"],
            run,
        );
        let failed_states = state_names(ctx, read, "failed_states", spec.failed_states, &[], run);
        let skipped_states =
            state_names(ctx, read, "skipped_states", spec.skipped_states, &[], run);
        let sensor = read.sensor(ctx)?;
        Some(Operator::ExternalTaskSensor(ExternalTaskSensor {
            external_dag_id: spec.external_dag_id,
            target,
            execution_delta,
            execution_date_fn: spec.execution_date_fn,
            allowed_states,
            failed_states,
            skipped_states,
            check_existence: spec.check_existence.unwrap_or(false),
            sensor,
        }))
    }
}

/// `execution_delta`: a duration, also in Python's `timedelta` text (`1 day, 0:00:00`,
/// `1 days,`) as dag-factory files write it.
fn read_delta(ctx: &mut Ctx<'_>, node: &crate::yaml::Node) -> Option<Duration> {
    if let Some(text) = node.as_str()
        && let Some(d) = python_timedelta(text)
    {
        return Some(d);
    }
    read_duration(ctx, node, "execution_delta")
}

/// `N day(s)[, H:MM:SS]`, Python's `str(timedelta)`.
fn python_timedelta(text: &str) -> Option<Duration> {
    let t = text.trim().trim_end_matches(',');
    let (days_part, rest) = match t.split_once(',') {
        Some((d, r)) => (d.trim(), Some(r.trim())),
        None => (t, None),
    };
    let days: i64 = days_part
        .strip_suffix("days")
        .or_else(|| days_part.strip_suffix("day"))?
        .trim()
        .parse()
        .ok()?;
    let mut total = Duration::days(days);
    if let Some(hms) = rest.filter(|r| !r.is_empty()) {
        let parts: Vec<&str> = hms.split(':').collect();
        let [h, m, s] = parts.as_slice() else {
            return None;
        };
        total += Duration::hours(h.parse().ok()?)
            + Duration::minutes(m.parse().ok()?)
            + Duration::milliseconds((s.parse::<f64>().ok()? * 1000.0) as i64);
    }
    Some(total)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalTaskMarkerSpec {
    pub external_dag_id: String,
    pub external_task_id: String,
    /// The external run's logical date (templated; default this run's).
    pub logical_date: Option<String>,
    /// Airflow 2's name for `logical_date`.
    pub execution_date: Option<String>,
    /// How many markers deep a clear follows (default 10).
    pub recursion_depth: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalTaskMarker {
    pub external_dag_id: String,
    pub external_task_id: String,
    pub logical_date: Option<String>,
    pub recursion_depth: u32,
}

pub(crate) struct ExternalTaskMarkerKind;

impl OperatorKind for ExternalTaskMarkerKind {
    const NAME: &'static str = "external_task_marker";
    const ALIASES: &'static [&'static str] = &[
        "ExternalTaskMarker",
        "airflow.sensors.external_task.ExternalTaskMarker",
        "airflow.sensors.external_task_sensor.ExternalTaskMarker",
        "airflow.providers.standard.sensors.external_task.ExternalTaskMarker",
    ];
    const MODULE: &'static str = "airflow.providers.standard.sensors.external_task";
    const CLASS: &'static str = "ExternalTaskMarker";
    const TEMPLATE_FIELDS: &'static [&'static str] =
        &["external_dag_id", "external_task_id", "logical_date"];
    const UI_COLOR: &'static str = "#4db7db";
    type Spec = ExternalTaskMarkerSpec;

    fn build(ctx: &mut Ctx<'_>, spec: Self::Spec, read: &mut ReadOp<'_>) -> Option<Operator> {
        let recursion_depth = spec.recursion_depth.unwrap_or(10);
        if recursion_depth == 0 {
            ctx.error(
                read.span_of("recursion_depth"),
                "`recursion_depth` must be at least 1",
            );
        }
        let logical_date = spec.logical_date.or(spec.execution_date);
        if let Some(d) = &logical_date {
            check_template(ctx, "logical_date", d, read.span_of("logical_date"));
        }
        Some(Operator::ExternalTaskMarker(ExternalTaskMarker {
            external_dag_id: spec.external_dag_id,
            external_task_id: spec.external_task_id,
            logical_date,
            recursion_depth,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_timedeltas() {
        assert_eq!(python_timedelta("1 days,"), Some(Duration::days(1)));
        assert_eq!(
            python_timedelta("1 day, 2:30:00"),
            Some(Duration::minutes(150) + Duration::days(1))
        );
        assert_eq!(python_timedelta("2h"), None);
    }
}
