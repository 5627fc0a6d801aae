//! A dag run's state, decided from its task instances' states.
//!
//! This is the finishing half of Airflow's `DagRun.update_state`. The other half, failing a run
//! whose unfinished tasks can never be scheduled (a deadlock), needs each task's trigger rule and
//! depends_on_past, so the scheduler does it with `TriggerRule::evaluate`.

use crate::{DagRunState, TaskInstanceState};

/// Decides whether a running dag run has finished, from `(state, is_leaf)` for each of its task
/// instances; `is_leaf` means the task has no downstream tasks in the DAG.
///
/// - `None` while any task instance is unfinished, including those waiting for a retry, a
///   reschedule or a trigger: they can still progress, so the run keeps running.
/// - `Failed` once all are finished and any leaf failed or is upstream_failed.
/// - `Success` once all are finished and every leaf succeeded or was skipped.
///
/// Removed leaves are ignored, as in Airflow: their task is no longer in the DAG. A run with no
/// (non-removed) leaves at all succeeds, as Airflow's `all([])` does.
pub fn decide_dag_run_state(tasks: &[(TaskInstanceState, bool)]) -> Option<DagRunState> {
    if tasks.iter().any(|(state, _)| state.is_unfinished()) {
        return None;
    }
    let mut leaf_states = tasks
        .iter()
        .filter(|(state, is_leaf)| *is_leaf && *state != TaskInstanceState::Removed)
        .map(|(state, _)| *state);
    // With everything finished and removed leaves left out, a leaf is success, skipped, failed
    // or upstream_failed, so "no failed leaf" is the same as Airflow's "all leaves in
    // success_states".
    let any_leaf_failed = leaf_states.any(|state| {
        matches!(
            state,
            TaskInstanceState::Failed | TaskInstanceState::UpstreamFailed
        )
    });
    if any_leaf_failed {
        Some(DagRunState::Failed)
    } else {
        Some(DagRunState::Success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskInstanceState::*;

    const LEAF: bool = true;
    const INNER: bool = false;

    #[test]
    fn runs_while_anything_is_unfinished() {
        for unfinished in TaskInstanceState::ALL
            .into_iter()
            .filter(|s| s.is_unfinished())
        {
            // Even when a leaf has already failed, a task still in flight keeps the run going.
            assert_eq!(
                decide_dag_run_state(&[(Failed, LEAF), (unfinished, INNER)]),
                None,
                "{unfinished}"
            );
            assert_eq!(
                decide_dag_run_state(&[(Success, INNER), (unfinished, LEAF)]),
                None,
                "{unfinished}"
            );
        }
    }

    #[test]
    fn fails_when_a_leaf_failed() {
        assert_eq!(
            decide_dag_run_state(&[(Success, INNER), (Failed, LEAF), (Success, LEAF)]),
            Some(DagRunState::Failed)
        );
        assert_eq!(
            decide_dag_run_state(&[(Failed, INNER), (UpstreamFailed, LEAF)]),
            Some(DagRunState::Failed)
        );
    }

    #[test]
    fn succeeds_when_every_leaf_succeeded_or_skipped() {
        assert_eq!(
            decide_dag_run_state(&[(Success, INNER), (Success, LEAF), (Skipped, LEAF)]),
            Some(DagRunState::Success)
        );
        assert_eq!(
            decide_dag_run_state(&[(Skipped, LEAF)]),
            Some(DagRunState::Success)
        );
    }

    #[test]
    fn only_leaves_decide() {
        // A failure handled downstream (e.g. by an all_done task) does not fail the run.
        assert_eq!(
            decide_dag_run_state(&[(Failed, INNER), (UpstreamFailed, INNER), (Success, LEAF)]),
            Some(DagRunState::Success)
        );
    }

    #[test]
    fn removed_leaves_are_ignored() {
        assert_eq!(
            decide_dag_run_state(&[(Success, LEAF), (Removed, LEAF)]),
            Some(DagRunState::Success)
        );
        assert_eq!(
            decide_dag_run_state(&[(Removed, LEAF), (Failed, LEAF)]),
            Some(DagRunState::Failed)
        );
        assert_eq!(
            decide_dag_run_state(&[(Removed, LEAF)]),
            Some(DagRunState::Success)
        );
    }

    #[test]
    fn an_empty_run_succeeds() {
        assert_eq!(decide_dag_run_state(&[]), Some(DagRunState::Success));
    }
}
