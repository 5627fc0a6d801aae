//! The legal state transitions of task instances and dag runs: which actor may move one from
//! which state to which, and why.
//!
//! Every state change in flow is a guarded compare-and-set, `UPDATE ... SET state = $to WHERE
//! state = ANY($allowed_from)`, built from [`allowed_from`]; zero rows updated means another
//! actor got there first. [`check_transition`] answers the same question for one known `from`
//! state, for in-memory checks and error messages. Both read the same rules, below.
//!
//! The rules are DESIGN.md section 4's table, plus the transitions Airflow makes that the table
//! leaves out; each rule says who makes it and why. This module does not decide *when* a
//! transition should happen (trigger rules, retries, timeouts); its callers do.
//!
//! A state never moves to itself: setting the state a task instance already has is the caller's
//! no-op, not a transition, and is never recorded in the history.

use crate::string_enum::string_enum;
use crate::{DagRunState, TaskInstanceState};

string_enum! {
    /// Who changes a task instance's state; recorded with every transition in the history.
    pub enum Actor as "actor" {
        /// The scheduling loop: dependencies, queueing, retries, zombies, timeouts.
        Scheduler => "scheduler",
        /// The process that claimed the task instance and runs it.
        Worker => "worker",
        /// The process that waits on deferred tasks' triggers.
        Triggerer => "triggerer",
        /// A person, through the UI, the REST API or the CLI.
        User => "user",
    }
}

/// A transition the rules do not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {actor} may not move a task instance from `{from}` to `{to}`")]
pub struct IllegalTransition {
    pub from: TaskInstanceState,
    pub to: TaskInstanceState,
    pub actor: Actor,
}

/// Checks that `actor` may move a task instance from `from` to `to`.
pub fn check_transition(
    from: TaskInstanceState,
    to: TaskInstanceState,
    actor: Actor,
) -> Result<(), IllegalTransition> {
    if is_allowed(from, to, actor) {
        Ok(())
    } else {
        Err(IllegalTransition { from, to, actor })
    }
}

/// Every state from which `actor` may move a task instance to `to`, in
/// [`TaskInstanceState::ALL`] order: the `WHERE state = ANY(...)` of a guarded update.
pub fn allowed_from(to: TaskInstanceState, actor: Actor) -> Vec<TaskInstanceState> {
    TaskInstanceState::ALL
        .into_iter()
        .filter(|&from| is_allowed(from, to, actor))
        .collect()
}

fn is_allowed(from: TaskInstanceState, to: TaskInstanceState, actor: Actor) -> bool {
    if from == to {
        return false;
    }
    match actor {
        Actor::Scheduler => scheduler_may(from, to),
        Actor::Worker => worker_may(from, to),
        Actor::Triggerer => triggerer_may(from, to),
        Actor::User => user_may(from, to),
    }
}

fn scheduler_may(from: TaskInstanceState, to: TaskInstanceState) -> bool {
    use TaskInstanceState::*;
    match (from, to) {
        // The trigger rule is met (and depends_on_past); the task waits for a slot.
        (NoStatus, Scheduled) => true,
        // The trigger rule can never be met any more. `Skipped` is covered by the
        // dagrun_timeout rule at the end.
        (NoStatus, UpstreamFailed) => true,
        // A slot is free: parallelism, pool, max_active_tasks, taken in priority order.
        (Scheduled, Queued) => true,
        // retry_delay (with backoff) or the sensor's reschedule time has passed.
        (UpForRetry | UpForReschedule, Scheduled) => true,
        // No worker claimed the task within task_queued_timeout: it is queued again, and failed
        // once that has happened too often (Airflow's `_handle_tasks_stuck_in_queued`).
        (Queued, Scheduled | Failed) => true,
        // The task instance goes back to dependency evaluation because it can no longer be
        // handed out as it is: its dag run is no longer running, or it was orphaned (Airflow's
        // `adopt_or_reset_orphaned_tasks` resets queued task instances to none).
        (Scheduled | Queued, NoStatus) => true,
        // Zombie rescue: the worker's heartbeat stopped while the task was running or being
        // stopped, so the try is over; it is retried if tries are left, else failed.
        (Running | Shutdown, UpForRetry | Failed) => true,
        // The worker's heartbeat stopped while it was restarting a cleared task; finish the
        // clear it was carrying out (Airflow resets orphaned restarting tasks to none).
        (Restarting, NoStatus) => true,
        // trigger_timeout passed: the task is scheduled so that a worker runs its timeout
        // handling. The triggerer does this too, but the scheduler checks (as Airflow's
        // `check_trigger_timeouts` does) so that timeouts fire even with no triggerer running.
        (Deferred, Scheduled) => true,
        // The task was deleted from the DAG. Only task instances with nothing executing are
        // removed; a running or deferred one finishes its try first.
        (NoStatus | Scheduled | Queued | UpForRetry | UpForReschedule, Removed) => true,
        // The task was restored to the DAG.
        (Removed, NoStatus) => true,
        // dagrun_timeout passed: the run is failed and every unfinished task instance skipped,
        // as Airflow does; a worker still running one sees the change and kills it.
        (from, Skipped) => from.is_unfinished(),
        _ => false,
    }
}

fn worker_may(from: TaskInstanceState, to: TaskInstanceState) -> bool {
    use TaskInstanceState::*;
    match (from, to) {
        // The claim: try_number is bumped and the heartbeat starts.
        (Queued, Running) => true,
        // The try's outcome (skip: exit code 99 or the operator's decision); failed with tries
        // left is up_for_retry; a reschedule-mode sensor not yet satisfied; a deferrable
        // operator handing its wait to the triggerer.
        (Running, Success | Failed | Skipped | UpForRetry | UpForReschedule | Deferred) => true,
        // A cleared running task has been killed; the worker runs it again.
        (Restarting, Running) => true,
        // A branch (or short-circuit) task that succeeded skips the downstream tasks it did
        // not follow, in the same transaction (Airflow's SkipMixin); they have not started.
        (NoStatus | Scheduled, Skipped) => true,
        // A stop request has been carried out: the process group was killed.
        (Shutdown, Failed | UpForRetry) => true,
        _ => false,
    }
}

fn triggerer_may(from: TaskInstanceState, to: TaskInstanceState) -> bool {
    use TaskInstanceState::*;
    // The awaited event happened, its trigger failed, or its timeout fired; in every case a
    // worker resumes the task (Airflow sends failures and timeouts through `scheduled` too, with
    // `next_method="__fail__"`), so the triggerer never fails a task itself.
    matches!((from, to), (Deferred, Scheduled))
}

fn user_may(from: TaskInstanceState, to: TaskInstanceState) -> bool {
    use TaskInstanceState::*;
    match (from, to) {
        // Mark success / failed / skipped from the UI, API or CLI, whatever the state. If the
        // task is executing, its worker or triggerer sees the change and stops it.
        (_, Success | Failed | Skipped) => true,
        // Clear a running task: its worker kills it and runs it again.
        (Running, Restarting) => true,
        // Stop a running task: its worker kills the process group. A task that is not running
        // has no process to stop; stopping it is marking it failed.
        (Running, Shutdown) => true,
        // Clear: the task instance goes back to dependency evaluation. Not from running,
        // restarting or shutdown, whose process is still alive (clearing a running task is
        // `restarting`), and not from removed, whose task is not in the DAG.
        (
            Scheduled | Queued | Success | Failed | UpForRetry | UpForReschedule | UpstreamFailed
            | Skipped | Deferred,
            NoStatus,
        ) => true,
        _ => false,
    }
}

/// A dag run transition the rules do not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {actor} may not move a dag run from `{from}` to `{to}`")]
pub struct IllegalRunTransition {
    pub from: DagRunState,
    pub to: DagRunState,
    pub actor: Actor,
}

/// Checks that `actor` may move a dag run from `from` to `to`.
pub fn check_run_transition(
    from: DagRunState,
    to: DagRunState,
    actor: Actor,
) -> Result<(), IllegalRunTransition> {
    if run_is_allowed(from, to, actor) {
        Ok(())
    } else {
        Err(IllegalRunTransition { from, to, actor })
    }
}

/// Every state from which `actor` may move a dag run to `to`, in [`DagRunState::ALL`] order.
pub fn run_allowed_from(to: DagRunState, actor: Actor) -> Vec<DagRunState> {
    DagRunState::ALL
        .into_iter()
        .filter(|&from| run_is_allowed(from, to, actor))
        .collect()
}

fn run_is_allowed(from: DagRunState, to: DagRunState, actor: Actor) -> bool {
    use DagRunState::*;
    if from == to {
        return false;
    }
    match actor {
        Actor::Scheduler => matches!(
            (from, to),
            // A slot under max_active_runs is free (and the DAG is not paused).
            (Queued, Running)
            // The leaves decided, a deadlock was found, or dagrun_timeout passed.
            | (Running, Success | Failed)
        ),
        // Mark success / failed whatever the state; clear (or set back to queued) a run so
        // that it runs again, as Airflow's clear and its REST API's `queued` do.
        Actor::User => true,
        // Workers and triggerers change task instances; the scheduler decides the run.
        Actor::Worker | Actor::Triggerer => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskInstanceState::*;

    /// Every (from, to, actor) triple. One row per `from` state; one cell per `to` state, in
    /// `TaskInstanceState::ALL` order; each cell names the actors allowed, in the order
    /// scheduler, worker, triggerer, user (`S`, `W`, `T`, `U`), `-` for not allowed.
    #[rustfmt::skip]
    const TABLE: [(TaskInstanceState, [&str; 14]); 14] = [
        //                   none    sched   queue   run     succ    restrt  fail    retry   resch   upfail  skip    defer   remove  shutdn
        (NoStatus,        ["----", "S---", "----", "----", "---U", "----", "---U", "----", "----", "S---", "SW-U", "----", "S---", "----"]),
        (Scheduled,       ["S--U", "----", "S---", "----", "---U", "----", "---U", "----", "----", "----", "SW-U", "----", "S---", "----"]),
        (Queued,          ["S--U", "S---", "----", "-W--", "---U", "----", "S--U", "----", "----", "----", "S--U", "----", "S---", "----"]),
        (Running,         ["----", "----", "----", "----", "-W-U", "---U", "SW-U", "SW--", "-W--", "----", "SW-U", "-W--", "----", "---U"]),
        (Success,         ["---U", "----", "----", "----", "----", "----", "---U", "----", "----", "----", "---U", "----", "----", "----"]),
        (Restarting,      ["S---", "----", "----", "-W--", "---U", "----", "---U", "----", "----", "----", "S--U", "----", "----", "----"]),
        (Failed,          ["---U", "----", "----", "----", "---U", "----", "----", "----", "----", "----", "---U", "----", "----", "----"]),
        (UpForRetry,      ["---U", "S---", "----", "----", "---U", "----", "---U", "----", "----", "----", "S--U", "----", "S---", "----"]),
        (UpForReschedule, ["---U", "S---", "----", "----", "---U", "----", "---U", "----", "----", "----", "S--U", "----", "S---", "----"]),
        (UpstreamFailed,  ["---U", "----", "----", "----", "---U", "----", "---U", "----", "----", "----", "---U", "----", "----", "----"]),
        (Skipped,         ["---U", "----", "----", "----", "---U", "----", "---U", "----", "----", "----", "----", "----", "----", "----"]),
        (Deferred,        ["---U", "S-T-", "----", "----", "---U", "----", "---U", "----", "----", "----", "S--U", "----", "----", "----"]),
        (Removed,         ["S---", "----", "----", "----", "---U", "----", "---U", "----", "----", "----", "---U", "----", "----", "----"]),
        (Shutdown,        ["----", "----", "----", "----", "---U", "----", "SW-U", "SW--", "----", "----", "S--U", "----", "----", "----"]),
    ];

    const ACTORS: [(Actor, char); 4] = [
        (Actor::Scheduler, 'S'),
        (Actor::Worker, 'W'),
        (Actor::Triggerer, 'T'),
        (Actor::User, 'U'),
    ];

    /// Expands `TABLE` into (from, to, actor, allowed) for all 14 * 14 * 4 triples.
    fn expected() -> Vec<(TaskInstanceState, TaskInstanceState, Actor, bool)> {
        let mut triples = Vec::new();
        for (row, (from, cells)) in TABLE.into_iter().enumerate() {
            assert_eq!(from, TaskInstanceState::ALL[row], "rows are in ALL order");
            for (to, cell) in TaskInstanceState::ALL.into_iter().zip(cells) {
                assert_eq!(cell.len(), ACTORS.len(), "cell {from} -> {to}");
                for ((actor, letter), mark) in ACTORS.into_iter().zip(cell.chars()) {
                    assert!(mark == letter || mark == '-', "cell {from} -> {to}: {cell}");
                    triples.push((from, to, actor, mark == letter));
                }
            }
        }
        assert_eq!(triples.len(), 14 * 14 * 4);
        triples
    }

    #[test]
    fn every_triple_matches_the_table() {
        let mut wrong = Vec::new();
        for (from, to, actor, allowed) in expected() {
            if check_transition(from, to, actor).is_ok() != allowed {
                wrong.push(format!(
                    "{actor}: {from} -> {to} should be allowed: {allowed}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn allowed_from_agrees_with_check_transition() {
        for to in TaskInstanceState::ALL {
            for (actor, _) in ACTORS {
                let via_check: Vec<_> = TaskInstanceState::ALL
                    .into_iter()
                    .filter(|&from| check_transition(from, to, actor).is_ok())
                    .collect();
                assert_eq!(allowed_from(to, actor), via_check, "{actor} -> {to}");
            }
        }
    }

    #[test]
    fn guarded_updates_for_the_main_paths() {
        assert_eq!(allowed_from(Running, Actor::Worker), [Queued, Restarting]);
        assert_eq!(allowed_from(Queued, Actor::Scheduler), [Scheduled]);
        assert_eq!(
            allowed_from(Scheduled, Actor::Scheduler),
            [NoStatus, Queued, UpForRetry, UpForReschedule, Deferred]
        );
        assert_eq!(allowed_from(Scheduled, Actor::Triggerer), [Deferred]);
        assert_eq!(
            allowed_from(UpForRetry, Actor::Scheduler),
            [Running, Shutdown],
            "zombie rescue"
        );
        assert_eq!(
            allowed_from(NoStatus, Actor::User),
            [
                Scheduled,
                Queued,
                Success,
                Failed,
                UpForRetry,
                UpForReschedule,
                UpstreamFailed,
                Skipped,
                Deferred
            ],
            "clear"
        );
        // Marking: every state but the target itself.
        let all_but_success: Vec<_> = TaskInstanceState::ALL
            .into_iter()
            .filter(|&s| s != Success)
            .collect();
        assert_eq!(allowed_from(Success, Actor::User), all_but_success);
    }

    #[test]
    fn no_state_moves_to_itself() {
        for state in TaskInstanceState::ALL {
            for (actor, _) in ACTORS {
                assert!(
                    check_transition(state, state, actor).is_err(),
                    "{actor} {state}"
                );
            }
        }
    }

    #[test]
    fn error_names_from_to_and_actor() {
        let err = check_transition(Success, Running, Actor::Worker).unwrap_err();
        assert_eq!(
            err,
            IllegalTransition {
                from: Success,
                to: Running,
                actor: Actor::Worker
            }
        );
        assert_eq!(
            err.to_string(),
            "the worker may not move a task instance from `success` to `running`"
        );
    }

    #[test]
    fn actor_strings() {
        let names: Vec<_> = Actor::ALL.into_iter().map(Actor::as_str).collect();
        assert_eq!(names, ["scheduler", "worker", "triggerer", "user"]);
        assert_eq!("user".parse::<Actor>(), Ok(Actor::User));
        assert_eq!(
            serde_json::to_string(&Actor::Triggerer).unwrap(),
            "\"triggerer\""
        );
        assert_eq!(
            "api".parse::<Actor>().unwrap_err().to_string(),
            "unknown actor `api`; expected one of: scheduler, worker, triggerer, user"
        );
    }

    #[test]
    fn dag_run_transitions() {
        use DagRunState::*;
        assert_eq!(run_allowed_from(Running, Actor::Scheduler), [Queued]);
        assert_eq!(run_allowed_from(Success, Actor::Scheduler), [Running]);
        assert_eq!(run_allowed_from(Failed, Actor::Scheduler), [Running]);
        assert!(run_allowed_from(Queued, Actor::Scheduler).is_empty());
        assert_eq!(
            run_allowed_from(Queued, Actor::User),
            [Running, Success, Failed]
        );
        assert_eq!(
            run_allowed_from(Success, Actor::User),
            [Queued, Running, Failed]
        );
        for to in DagRunState::ALL {
            assert!(run_allowed_from(to, Actor::Worker).is_empty());
            assert!(run_allowed_from(to, Actor::Triggerer).is_empty());
            assert!(check_run_transition(to, to, Actor::User).is_err());
        }
        assert_eq!(
            check_run_transition(Success, Running, Actor::Scheduler)
                .unwrap_err()
                .to_string(),
            "the scheduler may not move a dag run from `success` to `running`"
        );
    }
}
