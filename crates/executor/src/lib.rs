//! flow-executor: turns a claimed task instance into a finished try, minus the database.
//!
//! Two steps, both usable on their own: [`render_task`] renders a task's templated fields
//! with Airflow's template context ([`RunContext`]), and [`run`] executes the result as real
//! processes (bash in its own process group, Python through a small bootstrap), streaming
//! log lines and returning an [`Outcome`]. Claiming, heartbeats, storing logs and outcomes
//! belong to the worker loop that calls these; nothing here touches the database.

mod assets;
mod bundle;
pub mod connection_test;
mod io_ops;
mod jinja;
mod mask;
mod operators;
mod process;
pub mod reaper;
mod render;
mod runner;
pub mod triggerer;
mod variables;
pub mod worker;
mod xcom;

pub use connection_test::test_connection;
pub use flow_dag::params::{ParamError, merge_params};
pub use io_ops::{TRIGGER_KAFKA, TRIGGER_TIME, with_context};
pub use mask::{Masker, is_sensitive_name};
pub use operators::{branch, email, render_task};
pub use render::{
    RenderError, RenderedTask, RunContext, SensorWait, TryOf, cross_product_position, python_type,
    render_map_index,
};
pub use runner::{
    DEFAULT_KILL_GRACE, DEFAULT_MAX_XCOM_SIZE, DEFAULT_SKIP_EXIT_CODE, KafkaSettings, LogLine,
    Outcome, Resume, RunSpec, Stream, context_env, python_context, run,
};
pub use variables::variables_with_env;
pub use xcom::{MapIndexes, RETURN_VALUE, TaskIds, XcomMap};

/// Why a worker could not prepare a try. The distinction decides who pays: the database's
/// trouble is waited out and never costs the task a try; the task's own trouble fails it.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The metadata database failed (unreachable, busy, or refusing the statement).
    #[error(transparent)]
    Store(#[from] flow_store::StoreError),
    /// The try cannot run as it is: its DAG, task or run is gone, a template does not
    /// render, a connection is missing.
    #[error("{0}")]
    Task(String),
}

impl ExecutorError {
    pub(crate) fn task(message: impl Into<String>) -> Self {
        ExecutorError::Task(message.into())
    }
}

/// A path the scheduler made absolute under the dags folder it parsed from (`source_root`),
/// moved into this worker's copy of that folder (`dags_folder`, a DAG bundle). Other paths,
/// and every path where the two folders are the same, stay as they are.
pub(crate) fn relocate(
    source_root: &std::path::Path,
    dags_folder: &std::path::Path,
    p: &std::path::Path,
) -> std::path::PathBuf {
    if source_root == dags_folder {
        return p.to_path_buf();
    }
    match p.strip_prefix(source_root) {
        Ok(rel) => dags_folder.join(rel),
        Err(_) => p.to_path_buf(),
    }
}
