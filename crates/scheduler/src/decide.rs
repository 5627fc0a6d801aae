//! Pure scheduling decisions: given a DAG, one run's task instances and `now`, which task
//! instances change state and whether the run is finished. No I/O, so every rule is tested
//! with plain values.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flow_dag::Dag;
use flow_model::{
    DagRunState, TaskInstanceState as S, TriggerDecision, UpstreamStates, decide_dag_run_state,
};
use flow_store::{StateChange, TiKey, TiRow};

/// What the scheduler should do with one run.
#[derive(Debug, Default)]
pub struct RunDecision {
    pub changes: Vec<StateChange>,
    /// Mapped tasks to expand before `changes` apply (their new instances are scheduled by
    /// `changes`).
    pub expansions: Vec<Expansion>,
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

/// A mapped task whose upstream tasks are done: it gets `length` instances (none: skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    pub task_id: String,
    pub length: usize,
}

/// What `decide_run` needs to know about the run before this one, for `depends_on_past` and
/// `wait_for_downstream`: (task id, map index) -> state there. Empty when there is no
/// previous run.
pub type PreviousRun = HashMap<(String, i64), S>;

/// How many instances each mapped task ready to expand gets, worked out by the scheduler from
/// the DAG's literal lists and the upstream tasks' XComs: task id -> length, or why it cannot
/// be expanded. Tasks not in it are not ready.
pub type MapLengths = HashMap<String, Result<usize, String>>;

/// How many instances a mapping makes, from its literal lists and the `return_value` XComs of
/// the run (`(task id, map index) -> value`): the product of its `expand` lengths (a mapping's
/// length is its number of entries), or the length of `expand_kwargs`. An upstream that is
/// itself mapped contributes one element per instance. Airflow's messages when that cannot be.
pub fn map_length(
    mapping: &flow_dag::Mapping,
    xcoms: &HashMap<(String, i64), serde_json::Value>,
    max_map_length: usize,
) -> Result<usize, String> {
    use flow_dag::Arg;
    let length_of = |arg: &Arg| -> Result<usize, String> {
        let task = match arg {
            Arg::Value(v) => return flow_dag::mapped_length(Some(v)),
            Arg::Output(task) => task.as_str(),
        };
        if let Some(v) = xcoms.get(&(task.to_owned(), -1)) {
            return flow_dag::mapped_length(Some(v));
        }
        // A mapped upstream: one element per instance that pushed.
        match xcoms.keys().filter(|(t, m)| t == task && *m >= 0).count() {
            0 => Err(format!(
                "XComForMappingNotPushed: task `{task}` did not push XCom for task mapping"
            )),
            mapped => Ok(mapped),
        }
    };
    let length = match &mapping.kwargs {
        Some(kwargs) => length_of(kwargs)?,
        None => mapping.expand.values().try_fold(1usize, |acc, arg| {
            Ok::<usize, String>(acc.saturating_mul(length_of(arg)?))
        })?,
    };
    if length > max_map_length {
        return Err(format!(
            "the task would map to {length} instances, more than max_map_length ({max_map_length})"
        ));
    }
    Ok(length)
}

/// A change of an instance that waits for its trigger rule: from no state, whatever it was
/// when read (a removed task back in the DAG is without state by now, in the same pass).
fn waiting_change(ti: &TiRow, to: S, reason: Option<String>) -> StateChange {
    StateChange {
        key: ti.key.clone(),
        from: vec![S::NoStatus],
        to,
        reason,
        next_retry_at: None,
    }
}

fn change(ti: &TiRow, to: S, reason: Option<String>) -> StateChange {
    StateChange {
        key: ti.key.clone(),
        from: vec![ti.state],
        to,
        reason,
        next_retry_at: None,
    }
}

/// Whether a mapped task's instances are all waiting to be made or remade: the unexpanded
/// instance, or instances all without state (or removed) after a clear.
pub fn awaits_expansion(rows: &[&TiRow], state: impl Fn(&TiRow) -> S) -> bool {
    !rows.is_empty()
        && rows
            .iter()
            .all(|t| matches!(state(t), S::NoStatus | S::Removed))
        && rows.iter().any(|t| state(t) == S::NoStatus)
}

/// Evaluates one run. `previous` gives, for `depends_on_past` tasks, the states in the
/// previous run; `lengths` the sizes of mapped tasks ready to expand.
pub fn decide_run(
    dag: &Dag,
    tis: &[TiRow],
    previous: &PreviousRun,
    lengths: &MapLengths,
    now: DateTime<Utc>,
) -> RunDecision {
    let mut decision = RunDecision::default();
    let reconciled = reconcile_with_dag(dag, tis, &mut decision);
    // States after the decisions taken so far in this pass, so that a skip propagates down a
    // chain in one evaluation (as Airflow's mini-scheduler does).
    let mut state: HashMap<&TiKey, S> = tis.iter().map(|t| (&t.key, t.state)).collect();
    for (key, to) in reconciled {
        state.insert(key, to);
    }
    let mut by_task: HashMap<&str, Vec<&TiRow>> = HashMap::new();
    for ti in tis {
        by_task.entry(ti.key.task_id.as_str()).or_default().push(ti);
    }
    for rows in by_task.values_mut() {
        rows.sort_by_key(|t| t.key.map_index);
    }
    // Mapped tasks expanded in this pass: the states their instances will have.
    let mut expanded: HashMap<&str, Vec<S>> = HashMap::new();

    // Tasks are in topological order, so upstream decisions are known before downstream ones.
    for task in &dag.tasks {
        let Some(rows) = by_task.get(task.task_id.as_str()) else {
            continue;
        };
        for ti in rows {
            if matches!(state[&ti.key], S::UpForRetry | S::UpForReschedule) {
                retry_if_due(ti, now, &mut decision);
            }
        }
        let waiting: Vec<&TiRow> = rows
            .iter()
            .copied()
            .filter(|t| state[&t.key] == S::NoStatus)
            .collect();
        if waiting.is_empty() {
            continue;
        }
        // A mapped upstream counts with every one of its instances.
        let upstream = UpstreamStates::from_states(task.upstream.iter().flat_map(|u| {
            let u = u.as_str();
            match expanded.get(u) {
                Some(states) => states.clone(),
                None => by_task
                    .get(u)
                    .map(|rows| rows.iter().map(|t| state[&t.key]).collect())
                    .unwrap_or_default(),
            }
        }));
        let to = match task.trigger_rule.evaluate(&upstream) {
            TriggerDecision::Wait => continue,
            TriggerDecision::Skip => S::Skipped,
            TriggerDecision::UpstreamFailed => S::UpstreamFailed,
            TriggerDecision::Schedule => S::Scheduled,
        };
        if to == S::Scheduled && task.is_mapped() && awaits_expansion(rows, |t| state[&t.key]) {
            match lengths.get(task.task_id.as_str()) {
                // Not worked out this pass: decided on the next.
                None => {}
                Some(Err(why)) => {
                    for ti in &waiting {
                        state.insert(&ti.key, S::UpstreamFailed);
                        decision.changes.push(waiting_change(
                            ti,
                            S::UpstreamFailed,
                            Some(why.clone()),
                        ));
                    }
                }
                Some(Ok(length)) => {
                    expand(task, rows[0], *length, &mut decision, &mut expanded);
                }
            }
            continue;
        }
        let reason = match to {
            S::Skipped | S::UpstreamFailed => Some(format!(
                "trigger rule {} with upstream {upstream:?}",
                task.trigger_rule.as_str()
            )),
            _ => None,
        };
        for ti in waiting {
            if to == S::Scheduled && !past_allows(task, ti, previous) {
                continue;
            }
            state.insert(&ti.key, to);
            decision
                .changes
                .push(waiting_change(ti, to, reason.clone()));
        }
    }

    if !decision.missing_tasks.is_empty() {
        return decision; // decided once the new task instances exist
    }
    // The run's outcome from the states it will have after these changes.
    let leaves: std::collections::HashSet<&str> =
        dag.leaves().map(|t| t.task_id.as_str()).collect();
    let mut after: Vec<(S, bool)> = Vec::with_capacity(tis.len());
    for ti in tis {
        let task_id = ti.key.task_id.as_str();
        if expanded.contains_key(task_id) {
            continue;
        }
        after.push((state[&ti.key], leaves.contains(task_id)));
    }
    for (task_id, states) in &expanded {
        let leaf = leaves.contains(task_id);
        after.extend(states.iter().map(|s| (*s, leaf)));
    }
    decision.run_state = decide_dag_run_state(&after);
    // As in Airflow, a run blocked by depends_on_past waits (for the previous run to be
    // cleared or marked) rather than fail as deadlocked; so does a mapped task whose length
    // is not worked out yet.
    let past_bound: std::collections::HashSet<&str> = dag
        .tasks
        .iter()
        .filter(|t| t.depends_on_past)
        .map(|t| t.task_id.as_str())
        .collect();
    let waits_on_past = !past_bound.is_empty()
        && tis
            .iter()
            .any(|t| state[&t.key] == S::NoStatus && past_bound.contains(t.key.task_id.as_str()));
    let waits_on_length = dag.tasks.iter().any(|t| {
        t.is_mapped()
            && !expanded.contains_key(t.task_id.as_str())
            && by_task
                .get(t.task_id.as_str())
                .is_some_and(|rows| awaits_expansion(rows, |r| state[&r.key]))
            && !lengths.contains_key(t.task_id.as_str())
    });
    if decision.run_state.is_none()
        && !waits_on_past
        && !waits_on_length
        && is_deadlocked(&after, &decision)
    {
        decision.run_state = Some(DagRunState::Failed);
        decision.reason = Some("deadlock: no task instance can make progress".into());
    }
    decision
}

/// A retry or reschedule whose time has come goes back to `scheduled`; one still waiting sets
/// the next wake-up.
fn retry_if_due(ti: &TiRow, now: DateTime<Utc>, decision: &mut RunDecision) {
    match ti.next_retry_at {
        Some(at) if at > now => {
            decision.next_wakeup = Some(decision.next_wakeup.map_or(at, |w| w.min(at)));
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
}

/// Expands a mapped task (Airflow's `expand_mapped_task`): `length` instances, each scheduled
/// at once (they share the task's upstream, whose rule is met), or the task skipped when there
/// is nothing to map over.
fn expand<'a>(
    task: &'a flow_dag::Task,
    first: &TiRow,
    length: usize,
    decision: &mut RunDecision,
    expanded: &mut HashMap<&'a str, Vec<S>>,
) {
    decision.expansions.push(Expansion {
        task_id: task.task_id.to_string(),
        length,
    });
    if length == 0 {
        expanded.insert(task.task_id.as_str(), vec![S::Skipped]);
        return;
    }
    for i in 0..length {
        decision.changes.push(StateChange {
            key: TiKey::new(
                &first.key.dag_id,
                &first.key.run_id,
                task.task_id.as_str(),
                i64::try_from(i).unwrap_or(i64::MAX),
            ),
            from: vec![S::NoStatus],
            to: S::Scheduled,
            reason: None,
            next_retry_at: None,
        });
    }
    expanded.insert(task.task_id.as_str(), vec![S::Scheduled; length]);
}

/// `depends_on_past` (the same task, and map index, in the previous run finished well) and
/// `wait_for_downstream` (so did that run's instances of its direct downstream tasks).
fn past_allows(task: &flow_dag::Task, ti: &TiRow, previous: &PreviousRun) -> bool {
    let good = |s: &S| matches!(s, S::Success | S::Skipped);
    if task.depends_on_past
        && let Some(prev) = previous.get(&(task.task_id.to_string(), ti.key.map_index))
        && !good(prev)
    {
        return false;
    }
    if task.wait_for_downstream
        && !previous.is_empty()
        && task.downstream.iter().any(|d| {
            previous
                .iter()
                .any(|((t, _), s)| t == d.as_str() && !good(s))
        })
    {
        return false;
    }
    true
}

/// Task instances whose task left the DAG become `removed` (unless running: a running try
/// ends on its own); `removed` ones whose task came back start over from no state; tasks
/// without a task instance are reported as missing.
fn reconcile_with_dag<'a>(
    dag: &Dag,
    tis: &'a [TiRow],
    decision: &mut RunDecision,
) -> Vec<(&'a TiKey, S)> {
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
            reconciled.push((&ti.key, S::Removed));
            decision.changes.push(change(
                ti,
                S::Removed,
                Some("task is no longer in the DAG".into()),
            ));
        } else if present && ti.state == S::Removed && restorable(dag, ti) {
            reconciled.push((&ti.key, S::NoStatus));
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

/// A removed instance comes back with its task, except a mapped task's instance removed
/// because the task maps over fewer elements now (those come back by expansion).
fn restorable(dag: &Dag, ti: &TiRow) -> bool {
    ti.key.map_index < 0 || dag.task(&ti.key.task_id).is_some_and(|t| !t.is_mapped())
}

/// A run is stuck when nothing is running or waiting to run and no decision was taken, yet
/// some task instances are unfinished (they wait on a condition that can never hold).
fn is_deadlocked(after: &[(S, bool)], decision: &RunDecision) -> bool {
    if !decision.changes.is_empty()
        || !decision.expansions.is_empty()
        || decision.next_wakeup.is_some()
    {
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
            try_number: 1,
            queue: "default".into(),
            pool: "default_pool".into(),
            updated_at: now(),
            ..TiRow::new(TiKey::new("d", "r", task, -1), state)
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
        let decision = decide_run(&d, &tis, &HashMap::new(), &MapLengths::new(), now());
        assert_eq!(changes(&decision), vec![("a".into(), S::Scheduled)]);
        assert_eq!(decision.run_state, None);

        let tis = [
            ti("a", S::Success),
            ti("b", S::NoStatus),
            ti("c", S::NoStatus),
            ti("z", S::NoStatus),
        ];
        let decision = decide_run(&d, &tis, &HashMap::new(), &MapLengths::new(), now());
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
        let decision = decide_run(&d, &tis, &HashMap::new(), &MapLengths::new(), now());
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
            decide_run(&d, &tis, &HashMap::new(), &MapLengths::new(), now()).run_state,
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
        let decision = decide_run(&d, &tis, &HashMap::new(), &MapLengths::new(), now());
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
            &MapLengths::new(),
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
            decide_run(&d, &tis, &HashMap::new(), &MapLengths::new(), now()).run_state,
            Some(DagRunState::Success)
        );
        let tis = [ti("a", S::Success), ti("b", S::Failed)];
        assert_eq!(
            decide_run(&d, &tis, &HashMap::new(), &MapLengths::new(), now()).run_state,
            Some(DagRunState::Failed)
        );
    }

    #[test]
    fn depends_on_past_waits_for_the_previous_run() {
        let d = dag("d:\n  tasks:\n    a: {operator: empty, depends_on_past: true}\n");
        let tis = [ti("a", S::NoStatus)];
        let previous = HashMap::from([(("a".to_owned(), -1), S::Failed)]);
        let decision = decide_run(&d, &tis, &previous, &MapLengths::new(), now());
        assert!(decision.changes.is_empty());
        assert_eq!(
            decision.run_state, None,
            "the run waits for the previous one to be fixed, as in Airflow"
        );
        let previous = HashMap::from([(("a".to_owned(), -1), S::Success)]);
        assert_eq!(
            changes(&decide_run(&d, &tis, &previous, &MapLengths::new(), now())),
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
        let previous = HashMap::from([
            (("a".to_owned(), -1), S::Success),
            (("b".to_owned(), -1), S::Running),
        ]);
        assert!(
            decide_run(&d, &tis, &previous, &MapLengths::new(), now())
                .changes
                .is_empty()
        );
        let previous = HashMap::from([
            (("a".to_owned(), -1), S::Success),
            (("b".to_owned(), -1), S::Skipped),
        ]);
        assert_eq!(
            changes(&decide_run(&d, &tis, &previous, &MapLengths::new(), now())),
            vec![("a".into(), S::Scheduled)]
        );
        // The first run has no previous run and does not wait.
        assert_eq!(
            changes(&decide_run(
                &d,
                &tis,
                &HashMap::new(),
                &MapLengths::new(),
                now()
            )),
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
        let decision = decide_run(&d, &tis, &HashMap::new(), &MapLengths::new(), now());
        assert_eq!(changes(&decision), vec![("gone".into(), S::Removed)]);
        assert_eq!(decision.missing_tasks, vec!["new".to_owned()]);
        assert_eq!(decision.run_state, None, "not before `new` has run");

        let tis = [ti("a", S::Success), ti("new", S::Removed)];
        let decision = decide_run(&d, &tis, &HashMap::new(), &MapLengths::new(), now());
        // Restored, then scheduled in the same pass (the changes apply in this order).
        assert_eq!(
            changes(&decision),
            vec![("new".into(), S::NoStatus), ("new".into(), S::Scheduled)]
        );
        assert_eq!(decision.changes[1].from, vec![S::NoStatus]);
        assert_eq!(decision.run_state, None);

        let tis = [
            ti("a", S::Success),
            ti("new", S::Success),
            ti("gone", S::Removed),
        ];
        assert_eq!(
            decide_run(&d, &tis, &HashMap::new(), &MapLengths::new(), now()).run_state,
            Some(DagRunState::Success)
        );
    }
}
