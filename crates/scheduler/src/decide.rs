//! Pure scheduling decisions: given a DAG, one run's task instances and `now`, which task
//! instances change state and whether the run is finished. No I/O, so every rule is tested
//! with plain values.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flow_dag::Dag;
use flow_model::{
    DagRunState, TaskInstanceState as S, TriggerDecision, UpstreamStates, decide_dag_run_state,
};
use flow_store::{StateChange, TiRow};

/// What the scheduler should do with one run.
#[derive(Debug, Default)]
pub struct RunDecision {
    pub changes: Vec<StateChange>,
    /// Set when the run is finished (or deadlocked).
    pub run_state: Option<DagRunState>,
    /// Why the run finished as it did, when it is worth saying (deadlock, timeout).
    pub reason: Option<String>,
    /// The earliest retry time among task instances waiting for one.
    pub next_wakeup: Option<DateTime<Utc>>,
    /// Tasks of the DAG that have no task instance in this run (added to the DAG after the
    /// run was created): the scheduler creates them, as Airflow's `verify_integrity` does.
    pub missing_tasks: Vec<String>,
}

/// What `decide_run` needs to know about the run before this one, for `depends_on_past` and
/// `wait_for_downstream`: task id -> state there. Empty when there is no previous run.
pub type PreviousRun = HashMap<String, S>;

fn change(ti: &TiRow, to: S, reason: Option<String>) -> StateChange {
    StateChange {
        key: ti.key.clone(),
        from: vec![ti.state],
        to,
        reason,
        next_retry_at: None,
    }
}

/// Evaluates one run. `previous` gives, for `depends_on_past` tasks, the state of the same
/// task in the previous run (None when there is no previous run).
pub fn decide_run(
    dag: &Dag,
    tis: &[TiRow],
    previous: &PreviousRun,
    now: DateTime<Utc>,
) -> RunDecision {
    let mut decision = RunDecision::default();
    let reconciled = reconcile_with_dag(dag, tis, &mut decision);
    // States after the decisions taken so far in this pass, so that a skip propagates down a
    // chain in one evaluation (as Airflow's mini-scheduler does).
    let mut state: HashMap<&str, S> = tis
        .iter()
        .filter(|t| t.key.map_index == -1)
        .map(|t| (t.key.task_id.as_str(), t.state))
        .collect();
    for (task_id, to) in reconciled {
        state.insert(task_id, to);
    }
    let by_id: HashMap<&str, &TiRow> = tis.iter().map(|t| (t.key.task_id.as_str(), t)).collect();

    // Tasks are in topological order, so upstream decisions are known before downstream ones.
    for task in &dag.tasks {
        let Some(ti) = by_id.get(task.task_id.as_str()) else {
            continue;
        };
        match ti.state {
            S::NoStatus => {}
            S::UpForRetry | S::UpForReschedule => {
                match ti.next_retry_at {
                    Some(at) if at > now => {
                        decision.next_wakeup = Some(
                            decision
                                .next_wakeup
                                .map_or(at, |w: DateTime<Utc>| w.min(at)),
                        );
                    }
                    _ => decision.changes.push(change(
                        ti,
                        S::Scheduled,
                        Some(if ti.state == S::UpForRetry {
                            "retry delay elapsed".into()
                        } else {
                            "reschedule date reached".into()
                        }),
                    )),
                }
                continue;
            }
            _ => continue,
        }
        let upstream = UpstreamStates::from_states(
            task.upstream
                .iter()
                .filter_map(|u| state.get(u.as_str()).copied()),
        );
        let verdict = task.trigger_rule.evaluate(&upstream);
        let to = match verdict {
            TriggerDecision::Wait => continue,
            TriggerDecision::Skip => S::Skipped,
            TriggerDecision::UpstreamFailed => S::UpstreamFailed,
            TriggerDecision::Schedule => {
                if task.depends_on_past
                    && let Some(prev) = previous.get(task.task_id.as_str())
                    && !matches!(prev, S::Success | S::Skipped)
                {
                    continue;
                }
                // wait_for_downstream: the previous run's instances of this task's direct
                // downstream tasks must have finished well too (Airflow's prev_dagrun_dep).
                if task.wait_for_downstream
                    && !previous.is_empty()
                    && task.downstream.iter().any(|d| {
                        previous
                            .get(d.as_str())
                            .is_some_and(|s| !matches!(s, S::Success | S::Skipped))
                    })
                {
                    continue;
                }
                S::Scheduled
            }
        };
        let reason = match to {
            S::Skipped | S::UpstreamFailed => Some(format!(
                "trigger rule {} with upstream {upstream:?}",
                task.trigger_rule.as_str()
            )),
            _ => None,
        };
        state.insert(task.task_id.as_str(), to);
        decision.changes.push(change(ti, to, reason));
    }

    // The run's outcome from the states it will have after these changes.
    let leaves: std::collections::HashSet<&str> =
        dag.leaves().map(|t| t.task_id.as_str()).collect();
    let after: Vec<(S, bool)> = tis
        .iter()
        .map(|t| {
            let s = state
                .get(t.key.task_id.as_str())
                .copied()
                .unwrap_or(t.state);
            (s, leaves.contains(t.key.task_id.as_str()))
        })
        .collect();
    if !decision.missing_tasks.is_empty() {
        return decision; // decided once the new task instances exist
    }
    decision.run_state = decide_dag_run_state(&after);
    // As in Airflow, a run blocked by depends_on_past waits (for the previous run to be
    // cleared or marked) rather than fail as deadlocked.
    let waits_on_past = dag
        .tasks
        .iter()
        .any(|t| t.depends_on_past && state.get(t.task_id.as_str()) == Some(&S::NoStatus));
    if decision.run_state.is_none() && !waits_on_past && is_deadlocked(&after, &decision) {
        decision.run_state = Some(DagRunState::Failed);
        decision.reason = Some("deadlock: no task instance can make progress".into());
    }
    decision
}

/// Task instances whose task left the DAG become `removed` (unless running: a running try
/// ends on its own); `removed` ones whose task came back start over from no state; tasks
/// without a task instance are reported as missing.
fn reconcile_with_dag<'a>(
    dag: &Dag,
    tis: &'a [TiRow],
    decision: &mut RunDecision,
) -> Vec<(&'a str, S)> {
    let mut reconciled = Vec::new();
    let in_dag: std::collections::HashSet<&str> =
        dag.tasks.iter().map(|t| t.task_id.as_str()).collect();
    for ti in tis {
        let present = in_dag.contains(ti.key.task_id.as_str());
        let removable = matches!(
            ti.state,
            S::NoStatus | S::Scheduled | S::Queued | S::UpForRetry | S::UpForReschedule
        );
        if !present && removable {
            reconciled.push((ti.key.task_id.as_str(), S::Removed));
            decision.changes.push(change(
                ti,
                S::Removed,
                Some("task is no longer in the DAG".into()),
            ));
        } else if present && ti.state == S::Removed {
            reconciled.push((ti.key.task_id.as_str(), S::NoStatus));
            decision.changes.push(change(
                ti,
                S::NoStatus,
                Some("task is back in the DAG".into()),
            ));
        }
    }
    let have: std::collections::HashSet<&str> =
        tis.iter().map(|t| t.key.task_id.as_str()).collect();
    decision.missing_tasks = dag
        .tasks
        .iter()
        .filter(|t| !have.contains(t.task_id.as_str()))
        .map(|t| t.task_id.to_string())
        .collect();
    reconciled
}

/// A run is stuck when nothing is running or waiting to run and no decision was taken, yet
/// some task instances are unfinished (they wait on a condition that can never hold).
fn is_deadlocked(after: &[(S, bool)], decision: &RunDecision) -> bool {
    if !decision.changes.is_empty() || decision.next_wakeup.is_some() {
        return false;
    }
    let progressing = after.iter().any(|(s, _)| {
        matches!(
            s,
            S::Scheduled
                | S::Queued
                | S::Running
                | S::Restarting
                | S::UpForRetry
                | S::UpForReschedule
                | S::Deferred
                | S::Shutdown
        )
    });
    let unfinished = after.iter().any(|(s, _)| *s == S::NoStatus);
    unfinished && !progressing
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use flow_dag::LoadOptions;
    use flow_store::TiKey;

    use super::*;

    fn dag(yaml: &str) -> Dag {
        // Tests run in parallel threads: each needs its own directory.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("flow-decide-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.yaml");
        std::fs::write(&path, yaml).unwrap();
        let file = flow_dag::load_file(&path, &dir, &LoadOptions::default());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!file.has_errors(), "{:?}", file.diagnostics);
        file.dags.into_iter().next().unwrap()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
    }

    fn ti(task: &str, state: S) -> TiRow {
        TiRow {
            key: TiKey::new("d", "r", task, -1),
            state,
            try_number: 1,
            max_tries: 0,
            operator: String::new(),
            queue: "default".into(),
            pool: "default_pool".into(),
            pool_slots: 1,
            priority_weight: 1,
            start_date: None,
            end_date: None,
            duration: None,
            scheduled_dttm: None,
            queued_dttm: None,
            next_retry_at: None,
            hostname: String::new(),
            worker_id: None,
            last_heartbeat_at: None,
            updated_at: now(),
            next_method: None,
            next_kwargs: None,
        }
    }

    fn changes(d: &RunDecision) -> Vec<(String, S)> {
        d.changes
            .iter()
            .map(|c| (c.key.task_id.clone(), c.to))
            .collect()
    }

    const CHAIN: &str = "d:\n  tasks:\n    a: {operator: empty}\n    b: {operator: empty, dependencies: [a]}\n    c: {operator: empty, dependencies: [b]}\n    z: {operator: empty, trigger_rule: all_done, dependencies: [c]}\n";

    #[test]
    fn schedules_roots_then_downstream() {
        let d = dag(CHAIN);
        let tis = [
            ti("a", S::NoStatus),
            ti("b", S::NoStatus),
            ti("c", S::NoStatus),
            ti("z", S::NoStatus),
        ];
        let decision = decide_run(&d, &tis, &HashMap::new(), now());
        assert_eq!(changes(&decision), vec![("a".into(), S::Scheduled)]);
        assert_eq!(decision.run_state, None);

        let tis = [
            ti("a", S::Success),
            ti("b", S::NoStatus),
            ti("c", S::NoStatus),
            ti("z", S::NoStatus),
        ];
        let decision = decide_run(&d, &tis, &HashMap::new(), now());
        assert_eq!(changes(&decision), vec![("b".into(), S::Scheduled)]);
    }

    #[test]
    fn failure_propagates_down_the_chain_in_one_pass() {
        let d = dag(CHAIN);
        let tis = [
            ti("a", S::Failed),
            ti("b", S::NoStatus),
            ti("c", S::NoStatus),
            ti("z", S::NoStatus),
        ];
        let decision = decide_run(&d, &tis, &HashMap::new(), now());
        assert_eq!(
            changes(&decision),
            vec![
                ("b".into(), S::UpstreamFailed),
                ("c".into(), S::UpstreamFailed),
                ("z".into(), S::Scheduled)
            ]
        );
        // The all_done leaf decides: once it succeeds, the run succeeds (as in Airflow).
        let tis = [
            ti("a", S::Failed),
            ti("b", S::UpstreamFailed),
            ti("c", S::UpstreamFailed),
            ti("z", S::Success),
        ];
        assert_eq!(
            decide_run(&d, &tis, &HashMap::new(), now()).run_state,
            Some(DagRunState::Success)
        );
    }

    #[test]
    fn retries_wait_for_their_delay() {
        let d = dag(CHAIN);
        let mut a = ti("a", S::UpForRetry);
        a.next_retry_at = Some(now() + chrono::Duration::seconds(30));
        let tis = [
            a.clone(),
            ti("b", S::NoStatus),
            ti("c", S::NoStatus),
            ti("z", S::NoStatus),
        ];
        let decision = decide_run(&d, &tis, &HashMap::new(), now());
        assert!(decision.changes.is_empty());
        assert_eq!(decision.next_wakeup, a.next_retry_at);
        assert_eq!(
            decision.run_state, None,
            "waiting for a retry is not a deadlock"
        );
        let decision = decide_run(
            &d,
            &tis,
            &HashMap::new(),
            now() + chrono::Duration::seconds(31),
        );
        assert_eq!(changes(&decision), vec![("a".into(), S::Scheduled)]);
    }

    #[test]
    fn finished_runs_and_failed_leaves() {
        let d = dag(
            "d:\n  tasks:\n    a: {operator: empty}\n    b: {operator: empty, dependencies: [a]}\n",
        );
        let tis = [ti("a", S::Success), ti("b", S::Success)];
        assert_eq!(
            decide_run(&d, &tis, &HashMap::new(), now()).run_state,
            Some(DagRunState::Success)
        );
        let tis = [ti("a", S::Success), ti("b", S::Failed)];
        assert_eq!(
            decide_run(&d, &tis, &HashMap::new(), now()).run_state,
            Some(DagRunState::Failed)
        );
    }

    #[test]
    fn depends_on_past_waits_for_the_previous_run() {
        let d = dag("d:\n  tasks:\n    a: {operator: empty, depends_on_past: true}\n");
        let tis = [ti("a", S::NoStatus)];
        let previous = HashMap::from([("a".to_owned(), S::Failed)]);
        let decision = decide_run(&d, &tis, &previous, now());
        assert!(decision.changes.is_empty());
        assert_eq!(
            decision.run_state, None,
            "the run waits for the previous one to be fixed, as in Airflow"
        );
        let previous = HashMap::from([("a".to_owned(), S::Success)]);
        assert_eq!(
            changes(&decide_run(&d, &tis, &previous, now())),
            vec![("a".into(), S::Scheduled)]
        );
    }

    #[test]
    fn wait_for_downstream_waits_for_the_previous_runs_downstream() {
        let d = dag("d:
  tasks:
    a: {operator: empty, wait_for_downstream: true}
    \
             b: {operator: empty, dependencies: [a]}
");
        assert!(
            d.task("a").unwrap().depends_on_past,
            "implied, as in Airflow"
        );
        let tis = [ti("a", S::NoStatus), ti("b", S::NoStatus)];
        let previous = HashMap::from([("a".to_owned(), S::Success), ("b".to_owned(), S::Running)]);
        assert!(decide_run(&d, &tis, &previous, now()).changes.is_empty());
        let previous = HashMap::from([("a".to_owned(), S::Success), ("b".to_owned(), S::Skipped)]);
        assert_eq!(
            changes(&decide_run(&d, &tis, &previous, now())),
            vec![("a".into(), S::Scheduled)]
        );
        // The first run has no previous run and does not wait.
        assert_eq!(
            changes(&decide_run(&d, &tis, &HashMap::new(), now())),
            vec![("a".into(), S::Scheduled)]
        );
    }

    #[test]
    fn removed_restored_and_added_tasks() {
        let d = dag("d:\n  tasks:\n    a: {operator: empty}\n    new: {operator: empty}\n");
        let tis = [
            ti("a", S::Success),
            ti("gone", S::NoStatus),
            ti("gone_running", S::Running),
        ];
        let decision = decide_run(&d, &tis, &HashMap::new(), now());
        assert_eq!(changes(&decision), vec![("gone".into(), S::Removed)]);
        assert_eq!(decision.missing_tasks, vec!["new".to_owned()]);
        assert_eq!(decision.run_state, None, "not before `new` has run");

        let tis = [ti("a", S::Success), ti("new", S::Removed)];
        let decision = decide_run(&d, &tis, &HashMap::new(), now());
        assert_eq!(changes(&decision), vec![("new".into(), S::NoStatus)]);
        assert_eq!(decision.run_state, None);

        let tis = [
            ti("a", S::Success),
            ti("new", S::Success),
            ti("gone", S::Removed),
        ];
        assert_eq!(
            decide_run(&d, &tis, &HashMap::new(), now()).run_state,
            Some(DagRunState::Success)
        );
    }
}
