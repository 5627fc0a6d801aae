//! The pure vocabulary of flow: validated ids, task instance and dag run states, run types,
//! trigger rules, the legal state transitions, trigger-rule evaluation and the dag run's
//! finishing decision.
//!
//! This crate does no I/O and has no async: everything here is a pure function of its inputs,
//! so the scheduler, the executor, the store and the web layer agree on the rules by
//! construction. Strings (states, trigger rules, run types) are Airflow's, byte for byte.
//!
//! - [`ids`]: `DagId`, `TaskId`, `PoolId`, `RunId`, validated on construction.
//! - [`state`]: `TaskInstanceState`, `DagRunState`, `DagRunType`.
//! - [`transition`]: which [`Actor`] may move a task instance or a dag run between which states.
//! - [`trigger_rule`]: `TriggerRule` and its evaluation against upstream states.
//! - [`dag_run`]: when a dag run has succeeded or failed.
//! - [`connection`]: Airflow's connections and their URI and JSON forms.

mod string_enum;

pub mod connection;
pub mod dag_run;
pub mod ids;
pub mod role;
pub mod state;
pub mod transition;
pub mod trigger_rule;

pub use connection::{Connection, ConnectionError};
pub use dag_run::decide_dag_run_state;
pub use ids::{DagId, IdError, PoolId, RunId, TaskId};
pub use role::{Permission, Role};
pub use state::{DagRunState, DagRunType, TaskInstanceState};
pub use string_enum::ParseEnumError;
pub use transition::{
    Actor, IllegalRunTransition, IllegalTransition, allowed_from, check_run_transition,
    check_transition, run_allowed_from,
};
pub use trigger_rule::{TriggerDecision, TriggerRule, UpstreamStates};
