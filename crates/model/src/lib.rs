//! The pure vocabulary of flow: validated ids, task instance and dag run states, run types,
//! trigger rules, the legal state transitions and trigger-rule evaluation.
//!
//! This crate does no I/O and has no async: everything here is a pure function of its inputs,
//! so the scheduler, the executor and the web layer agree on the rules by construction.

pub mod ids;
pub mod state;
pub mod trigger_rule;

pub use ids::{DagId, IdError, PoolId, RunId, TaskId};
pub use state::{DagRunState, DagRunType, TaskInstanceState};
pub use trigger_rule::TriggerRule;
