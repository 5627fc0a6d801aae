//! Each operator's run-time half, one module per operator (the YAML half is flow-dag's
//! `operators` module of the same name): rendering its templated fields into a
//! [`RenderedTask`] and, for operators that are not processes, running it. Processes (bash,
//! python, and the commands other operators start) share `runner.rs`.

mod bash;
pub mod branch;
pub(crate) mod cross_dag;
mod date_time;
pub mod email;
pub(crate) mod http;
mod kafka_await_message;
mod kafka_consume;
mod kafka_produce;
mod python;
pub(crate) mod sensors;
pub(crate) mod sql;
mod time_delta;

use std::future::Future;

use flow_dag::{Operator, Task};
use tokio::sync::watch;

use crate::process::LogSink;
use crate::render::{RenderError, RenderedTask, RunContext};
use crate::runner::{Outcome, RunSpec};

/// Renders the task's templated fields: `bash_command`, `env` values and `cwd` for bash;
/// `op_args`, `op_kwargs` and `templates_dict` (every string, recursively) for python; each
/// operator's `template_fields`. A mapped task (`expand`) gets the element at `ctx.map_index`
/// of each expanded argument, and its `partial` arguments.
pub fn render_task(task: &Task, ctx: &RunContext) -> Result<RenderedTask, RenderError> {
    match &task.operator {
        Operator::Empty => Ok(RenderedTask::Empty),
        Operator::Bash(op) => bash::render(task, op, ctx),
        Operator::Python(op) => python::render(task, op, ctx),
        Operator::KafkaProduce(op) => kafka_produce::render(task, op, ctx),
        Operator::KafkaConsume(op) => kafka_consume::render(task, op, ctx),
        Operator::KafkaAwaitMessage(op) => kafka_await_message::render(task, op, ctx),
        Operator::TimeDelta(op) => time_delta::render(task, op, ctx),
        Operator::DateTime(op) => date_time::render(task, op, ctx),
        Operator::Sql(op) => sql::render(task, op, ctx),
        Operator::SqlSensor(op) => sql::render_sensor(task, op, ctx),
        Operator::Http(op) => http::render(task, op, ctx),
        Operator::HttpSensor(op) => http::render_sensor(task, op, ctx),
        Operator::BranchPython(op) => python::render(task, op, ctx),
        Operator::BranchBash(op) => bash::render(task, op, ctx),
        Operator::ShortCircuit(op) => match &op.condition {
            flow_dag::Condition::Python(p) => python::render(task, p, ctx),
            flow_dag::Condition::Bash(b) => bash::render(task, b, ctx),
        },
        Operator::TriggerDagRun(op) => cross_dag::render_trigger(task, op, ctx),
        Operator::ExternalTaskSensor(op) => cross_dag::render_sensor(task, op, ctx),
        Operator::Email(op) => email::render(task, op, ctx),
        Operator::FileSensor(op) => sensors::render_file(task, op, ctx),
        Operator::PythonSensor(op) => sensors::render_python(task, op, ctx),
        Operator::BashSensor(op) => sensors::render_bash(task, op, ctx),
        // A marker runs as an empty task; clears follow it to the external task.
        Operator::ExternalTaskMarker(_) => Ok(RenderedTask::Empty),
        Operator::BranchDayOfWeek(_) | Operator::BranchDateTime(_) | Operator::LatestOnly => {
            branch::render_calendar(task)
        }
    }
}

/// Runs the operators that are async tasks rather than processes (Kafka, sensors); `None`
/// for processes, which `runner::run` starts.
pub(crate) async fn execute(
    spec: &RunSpec,
    sink: &LogSink,
    cancel: &mut watch::Receiver<bool>,
) -> Option<Outcome> {
    match &spec.rendered {
        RenderedTask::KafkaProduce {
            topic,
            messages,
            delivery_timeout,
            ..
        } => Some(
            crate::io_ops::produce(spec, topic, messages, *delivery_timeout, sink, cancel).await,
        ),
        RenderedTask::KafkaConsume {
            topics,
            group_id,
            max_messages,
            max_batch_size,
            poll_timeout,
            apply,
            push_to_xcom,
            xcom_max_messages,
            ..
        } => {
            let args = crate::io_ops::ConsumeArgs {
                topics,
                group_id,
                max_messages: *max_messages,
                max_batch_size: *max_batch_size,
                poll_timeout: *poll_timeout,
                apply: apply.as_deref(),
                push_to_xcom: *push_to_xcom,
                xcom_max_messages: *xcom_max_messages,
            };
            Some(crate::io_ops::consume(spec, args, sink, cancel).await)
        }
        RenderedTask::Sensor { wait, sensor } => {
            Some(crate::io_ops::sense(spec, wait, sensor, sink, cancel).await)
        }
        RenderedTask::Sql(run) => Some(stoppable(sql::run(spec, run, sink), cancel).await),
        RenderedTask::Http(run) => Some(stoppable(http::run(spec, run, sink), cancel).await),
        RenderedTask::TriggerDagRun(t) => {
            Some(stoppable(cross_dag::trigger(spec, t, sink), cancel).await)
        }
        RenderedTask::Email(e) => Some(stoppable(email::send(spec, e, sink), cancel).await),
        _ => None,
    }
}

/// Runs `work` until it ends or the try is stopped (marked, cleared, fenced, shut down):
/// dropping it closes its connection, and the try reports nothing.
async fn stoppable(
    work: impl Future<Output = Outcome>,
    cancel: &mut watch::Receiver<bool>,
) -> Outcome {
    tokio::select! {
        outcome = work => outcome,
        () = crate::process::cancelled(cancel) => Outcome::Cancelled,
    }
}
