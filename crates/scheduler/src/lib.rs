//! flow-scheduler: turns DAGs into runs and runs into queued task instances.
//!
//! It parses the dags folder into the store (`processor`), creates scheduled runs from each
//! DAG's timetable, evaluates trigger rules to schedule task instances (`decide`), queues them
//! within parallelism, pool, DAG and task limits, retries, times out runs, and rescues task
//! instances whose worker stopped heartbeating. It never runs tasks and never talks to workers
//! or the webserver: everything goes through the store, so any process can die and a restarted
//! scheduler carries on from the database.

mod bundle;
pub mod decide;
mod dir_watch;
pub mod events;
pub mod kafka_triggers;
pub mod processor;
pub mod retention;
mod scheduler;
mod view;

pub use events::{EventPublisher, EventStats, EventsConfig};
pub use kafka_triggers::{KafkaTriggerConfig, KafkaTriggerStats, KafkaTriggers};
pub use processor::{DagProcessor, ProcessReport};
pub use retention::{RetentionConfig, RetentionReport};
pub use scheduler::{PassSummary, Scheduler, SchedulerConfig, Wakeups};

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Store(#[from] flow_store::StoreError),
    #[error("cannot read dags folder `{path}`: {reason}")]
    DagsFolder { path: String, reason: String },
    #[error("cannot serialize DAG: {0}")]
    Serialize(String),
    #[error("internal error: {0}")]
    Internal(String),
}
