//! Branching: what a branch, short-circuit or calendar operator decided, turned into the list
//! of downstream tasks to skip. The callable or command runs as a `python`/`bash` task; this
//! reads its result after the try (`after_run`), so that the skip is recorded with the
//! success, in one transaction.

use chrono::{DateTime, Datelike, Duration, NaiveDateTime, Utc};
use flow_dag::{
    BranchDateTimeOperator, BranchDayOfWeekOperator, Condition, Dag, DateTimeBound, Operator, Task,
};
use serde_json::Value as Json;

use crate::render::{RenderError, RenderedTask, RunContext};
use crate::runner::Outcome;

/// A try's outcome after branching: the downstream tasks to skip, and a line for the log.
#[derive(Debug)]
pub struct Branched {
    pub outcome: Outcome,
    pub skip: Vec<String>,
    pub message: Option<String>,
}

impl Branched {
    fn unchanged(outcome: Outcome) -> Self {
        Branched {
            outcome,
            skip: Vec::new(),
            message: None,
        }
    }

    fn failed(reason: String) -> Self {
        Branched::unchanged(Outcome::Failed { reason })
    }
}

/// Whether the operator branches (its XCom is pushed whatever `do_xcom_push` says: the
/// branch reads it).
pub fn is_branching(op: &Operator) -> bool {
    matches!(
        op,
        Operator::BranchPython(_)
            | Operator::BranchBash(_)
            | Operator::ShortCircuit(_)
            | Operator::BranchDayOfWeek(_)
            | Operator::BranchDateTime(_)
            | Operator::LatestOnly
    )
}

/// The calendar operators run nothing: their decision is made after the (empty) try.
pub(crate) fn render_calendar(_task: &Task) -> Result<RenderedTask, RenderError> {
    Ok(RenderedTask::Empty)
}

/// Reads a branching task's decision from its successful try; other outcomes and other
/// operators pass through.
pub fn after_run(
    dag: &Dag,
    task: &Task,
    ctx: &RunContext,
    outcome: Outcome,
    now: DateTime<Utc>,
) -> Branched {
    let Outcome::Success { xcom } = &outcome else {
        return Branched::unchanged(outcome);
    };
    let followed: Vec<String> = match &task.operator {
        Operator::BranchPython(_) => match ids_from_value(xcom.as_ref()) {
            Ok(ids) => ids,
            Err(e) => return Branched::failed(e),
        },
        Operator::BranchBash(_) => ids_from_line(xcom.as_ref()),
        Operator::ShortCircuit(op) => {
            let value = xcom.clone().unwrap_or(Json::Null);
            let holds = match &op.condition {
                Condition::Python(_) => crate::jinja::py_truthy(&value),
                Condition::Bash(_) => line_truthy(&value),
            };
            if holds {
                return Branched {
                    outcome: Outcome::Success { xcom: Some(value) },
                    skip: Vec::new(),
                    message: Some("Condition is true: proceeding with downstream tasks".into()),
                };
            }
            let skip = if op.ignore_downstream_trigger_rules {
                dag.all_downstream(task.task_id.as_str())
            } else {
                task.downstream.iter().map(ToString::to_string).collect()
            };
            let message = format!(
                "Condition is false: skipping {} downstream task(s): {}",
                skip.len(),
                skip.join(", ")
            );
            return Branched {
                outcome: Outcome::Success { xcom: Some(value) },
                skip,
                message: Some(message),
            };
        }
        Operator::BranchDayOfWeek(op) => day_of_week(op, dag, ctx, now),
        Operator::BranchDateTime(op) => date_time(op, dag, ctx, now),
        Operator::LatestOnly => {
            if latest(dag, ctx, now) {
                task.downstream.iter().map(ToString::to_string).collect()
            } else {
                Vec::new()
            }
        }
        _ => return Branched::unchanged(outcome),
    };
    follow(dag, task, followed)
}

/// Skips the direct downstream tasks not followed, as Airflow's `skip_all_except`: a
/// followed task group stands for its tasks, and a direct downstream task that is also
/// downstream of a followed one (a join) is left to its trigger rule. A followed id must be
/// downstream of the branch.
fn follow(dag: &Dag, task: &Task, followed: Vec<String>) -> Branched {
    let direct: Vec<String> = task.downstream.iter().map(ToString::to_string).collect();
    let reach = dag.all_downstream(task.task_id.as_str());
    let mut kept: Vec<String> = Vec::new();
    for id in &followed {
        let members: Vec<&String> = reach
            .iter()
            .filter(|d| *d == id || d.starts_with(&format!("{id}.")))
            .collect();
        if members.is_empty() {
            return Branched::failed(format!(
                "the branch returned `{id}`, which is not a task downstream of `{}` \
                 (directly downstream: {})",
                task.task_id,
                if direct.is_empty() {
                    "none".to_owned()
                } else {
                    direct.join(", ")
                }
            ));
        }
        for m in members {
            kept.push(m.clone());
            kept.extend(dag.all_downstream(m));
        }
    }
    let skip: Vec<String> = direct
        .iter()
        .filter(|d| !kept.contains(d))
        .cloned()
        .collect();
    let message = format!(
        "Following branch {}; skipping {}",
        list_or_none(&followed),
        list_or_none(&skip)
    );
    Branched {
        outcome: Outcome::Success {
            xcom: Some(Json::from(followed)),
        },
        skip,
        message: Some(message),
    }
}

fn list_or_none(ids: &[String]) -> String {
    if ids.is_empty() {
        "nothing".to_owned()
    } else {
        format!("[{}]", ids.join(", "))
    }
}

/// A callable's return value: a task id, a list of them, or `None` (follow nothing).
fn ids_from_value(value: Option<&Json>) -> Result<Vec<String>, String> {
    match value {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::String(s)) => Ok(vec![s.clone()]),
        Some(Json::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("the branch returned `{i}`, which is not a task id"))
            })
            .collect(),
        Some(other) => Err(format!(
            "the branch must return a task id or a list of task ids, not `{other}`"
        )),
    }
}

/// A command's last output line: ids separated by commas or spaces, or a JSON list.
fn ids_from_line(value: Option<&Json>) -> Vec<String> {
    let line = match value {
        Some(Json::String(s)) => s.trim().to_owned(),
        _ => return Vec::new(),
    };
    if let Ok(Json::Array(items)) = serde_json::from_str::<Json>(&line) {
        return items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect();
    }
    line.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A command's last line as a condition: empty, `0`, `false`, `no`, `none` are false.
fn line_truthy(v: &Json) -> bool {
    match v {
        Json::String(s) => !matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "none" | "null"
        ),
        other => crate::jinja::py_truthy(other),
    }
}

/// The moment a calendar branch compares: the run's logical date, or now, in the DAG's time
/// zone (as Airflow's operators compare naive local times).
fn local_now(dag: &Dag, ctx: &RunContext, now: DateTime<Utc>, logical: bool) -> NaiveDateTime {
    let at = if logical {
        ctx.logical_date.unwrap_or(ctx.run_after)
    } else {
        now
    };
    at.with_timezone(&dag.timetable.timezone).naive_local()
}

fn day_of_week(
    op: &BranchDayOfWeekOperator,
    dag: &Dag,
    ctx: &RunContext,
    now: DateTime<Utc>,
) -> Vec<String> {
    let day = local_now(dag, ctx, now, op.use_task_logical_date)
        .weekday()
        .num_days_from_monday();
    if op.week_days.iter().any(|d| u32::from(*d) == day) {
        op.follow_if_true.clone()
    } else {
        op.follow_if_false.clone()
    }
}

fn date_time(
    op: &BranchDateTimeOperator,
    dag: &Dag,
    ctx: &RunContext,
    now: DateTime<Utc>,
) -> Vec<String> {
    let at = local_now(dag, ctx, now, op.use_task_logical_date);
    let on_day = |b: &DateTimeBound| match b {
        DateTimeBound::Time(t) => at.date().and_time(*t),
        DateTimeBound::DateTime(d) => *d,
    };
    let mut lower = op.target_lower.as_ref().map(on_day);
    let mut upper = op.target_upper.as_ref().map(on_day);
    // Two times of day with the upper one earlier: the window spans midnight (Airflow's
    // `target_times_as_dates`).
    if let (Some(DateTimeBound::Time(_)), Some(DateTimeBound::Time(_)), Some(l), Some(u)) =
        (&op.target_lower, &op.target_upper, lower, upper)
        && u < l
    {
        if at >= l {
            upper = Some(u + Duration::days(1));
        } else {
            lower = Some(l - Duration::days(1));
        }
    }
    let inside = lower.is_none_or(|l| l <= at) && upper.is_none_or(|u| at <= u);
    if inside {
        op.follow_if_true.clone()
    } else {
        op.follow_if_false.clone()
    }
}

/// Airflow's LatestOnlyOperator: a manual run always proceeds; another run proceeds only while
/// now lies within the next run's data interval `(start, end]`.
fn latest(dag: &Dag, ctx: &RunContext, now: DateTime<Utc>) -> bool {
    if ctx.run_type == "manual" {
        return true;
    }
    let (Some(start), Some(end)) = (ctx.data_interval_start, ctx.data_interval_end) else {
        return true;
    };
    let restriction = flow_dag::schedule::TimeRestriction {
        earliest: None,
        latest: None,
        catchup: true,
    };
    let interval = flow_dag::schedule::DataInterval { start, end };
    match dag
        .timetable
        .next_dagrun_info(Some(interval), &restriction, now)
    {
        Some(next) => next.data_interval.start < now && now <= next.data_interval.end,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_lines_and_values() {
        assert_eq!(
            ids_from_line(Some(&Json::from("a, b c"))),
            vec!["a", "b", "c"]
        );
        assert_eq!(ids_from_line(Some(&Json::from(r#"["x"]"#))), vec!["x"]);
        assert_eq!(
            ids_from_value(Some(&serde_json::json!(["a", "b"]))).unwrap(),
            vec!["a", "b"]
        );
        assert!(ids_from_value(Some(&serde_json::json!(3))).is_err());
        assert!(!line_truthy(&Json::from("False")));
        assert!(line_truthy(&Json::from("yes")));
    }
}
