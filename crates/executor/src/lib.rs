//! flow-executor: turns a claimed task instance into a finished try, minus the database.
//!
//! Two steps, both usable on their own: [`render_task`] renders a task's templated fields
//! with Airflow's template context ([`RunContext`]), and [`run`] executes the result as real
//! processes (bash in its own process group, Python through a small bootstrap), streaming
//! log lines and returning an [`Outcome`]. Claiming, heartbeats, storing logs and outcomes
//! belong to the worker loop that calls these; nothing here touches the database.

mod io_ops;
mod jinja;
mod mask;
mod params;
mod process;
mod render;
mod runner;
pub mod triggerer;
pub mod worker;
mod xcom;

pub use io_ops::{TRIGGER_KAFKA, TRIGGER_TIME, with_context};
pub use mask::{Masker, is_sensitive_name};
pub use params::{ParamError, merge_params};
pub use render::{RenderError, RenderedTask, RunContext, SensorWait, TryOf, render_task};
pub use runner::{
    DEFAULT_KILL_GRACE, DEFAULT_SKIP_EXIT_CODE, KafkaSettings, LogLine, Outcome, Resume, RunSpec,
    Stream, context_env, python_context, run,
};
pub use xcom::{MapIndexes, RETURN_VALUE, TaskIds, XcomMap};
