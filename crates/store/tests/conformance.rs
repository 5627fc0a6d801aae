//! The store contract, exercised against every backend: a fresh SQLite file and a fresh
//! PostgreSQL database per test (PostgreSQL skipped loudly outside CI when unreachable).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashSet;

use chrono::{Duration, TimeZone, Utc};
use flow_model::transition::Actor;
use flow_model::{DagRunState, DagRunType, TaskInstanceState as S};
use flow_store::testing::TestDb;
use flow_store::{
    DagRecord, FileSync, LogLine, NewDagRun, NewTaskInstance, StateChange, Store, TiFinish, TiKey,
};

fn t0() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

/// Runs `body` once per backend.
async fn each_backend<F, Fut>(body: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    for db in TestDb::all().await.unwrap() {
        eprintln!("backend: {:?}", db.backend());
        body(db.store.clone()).await;
        db.drop_db().await.unwrap();
    }
}

fn record(dag_id: &str) -> DagRecord {
    DagRecord {
        dag_id: dag_id.into(),
        owners: "airflow".into(),
        description: Some("d".into()),
        schedule: "@daily".into(),
        timetable_summary: "@daily".into(),
        tags: vec!["t".into()],
        max_active_runs: 16,
        max_active_tasks: 16,
        paused_on_creation: true,
        data: "{}".into(),
        dag_hash: "h1".into(),
        assets: Vec::new(),
    }
}

fn file(fileloc: &str, dags: Vec<DagRecord>, error: Option<&str>) -> FileSync {
    FileSync {
        fileloc: fileloc.into(),
        relative_fileloc: fileloc.trim_start_matches('/').into(),
        source: "src".into(),
        source_hash: "sh".into(),
        dags,
        import_error: error.map(str::to_owned),
    }
}

fn new_run(dag_id: &str, run_id: &str, run_type: DagRunType, day: i64) -> NewDagRun {
    let logical = t0() + Duration::days(day);
    NewDagRun {
        dag_id: dag_id.into(),
        run_id: run_id.into(),
        run_type,
        state: DagRunState::Queued,
        logical_date: Some(logical),
        data_interval_start: Some(logical),
        data_interval_end: Some(logical + Duration::days(1)),
        run_after: logical + Duration::days(1),
        conf: serde_json::json!({"k": 1}),
        note: None,
        triggered_by: Some("test".into()),
        dag_hash: "h1".into(),
    }
}

fn tis(ids: &[&str]) -> Vec<NewTaskInstance> {
    ids.iter()
        .map(|id| NewTaskInstance {
            task_id: (*id).into(),
            map_index: -1,
            max_tries: 1,
            operator: "BashOperator".into(),
            queue: "default".into(),
            pool: "default_pool".into(),
            pool_slots: 1,
            priority_weight: 1,
        })
        .collect()
}

fn key(run_id: &str, task_id: &str) -> TiKey {
    TiKey::new("d", run_id, task_id, -1)
}

fn change(k: &TiKey, from: &[S], to: S) -> StateChange {
    StateChange {
        key: k.clone(),
        from: from.to_vec(),
        to,
        reason: None,
        next_retry_at: None,
    }
}

/// Schedules and queues task instances in one call, as the scheduler does.
async fn queue(store: &Store, keys: &[TiKey]) {
    let changes: Vec<StateChange> = keys
        .iter()
        .map(|k| change(k, &[S::NoStatus], S::Scheduled))
        .chain(keys.iter().map(|k| change(k, &[S::Scheduled], S::Queued)))
        .collect();
    let applied = store
        .ti_set_states(&changes, Actor::Scheduler, t0())
        .await
        .unwrap();
    assert!(applied.iter().all(|a| *a), "{applied:?}");
}

#[tokio::test]
async fn migrations_apply_once() {
    each_backend(|store| async move {
        assert!(store.pending_migrations().await.unwrap().is_empty());
        store.migrate().await.unwrap();
        store.ping().await.unwrap();
        // `flow db reset` drops every table the migrations made, then migrates again.
        store.reset().await.unwrap();
        store.reset().await.unwrap();
        assert!(store.pending_migrations().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn dag_sync_keeps_pause_state_and_tracks_import_errors() {
    each_backend(|store| async move {
        store
            .dag_sync_file(
                &file("/dags/a.yaml", vec![record("a1"), record("a2")], None),
                t0(),
            )
            .await
            .unwrap();
        let a1 = store.dag_get("a1").await.unwrap().unwrap();
        assert!(a1.is_paused, "new DAGs start paused");
        assert_eq!(a1.tags, vec!["t"]);
        assert!(store.dag_set_paused("a1", false).await.unwrap());
        assert!(!store.dag_set_paused("nope", false).await.unwrap());

        // Re-sync keeps the user's pause choice.
        store
            .dag_sync_file(
                &file("/dags/a.yaml", vec![record("a1"), record("a2")], None),
                t0(),
            )
            .await
            .unwrap();
        assert!(!store.dag_get("a1").await.unwrap().unwrap().is_paused);

        // A broken file: error recorded, nothing deactivated.
        store
            .dag_sync_file(
                &file("/dags/a.yaml", vec![record("a1")], Some("a.yaml:3:1: boom")),
                t0(),
            )
            .await
            .unwrap();
        let errors = store.import_errors().await.unwrap();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].stacktrace.contains("boom"));
        assert!(store.dag_get("a2").await.unwrap().unwrap().is_active);

        // Fixed, and a2 removed from the file: error cleared, a2 deactivated.
        store
            .dag_sync_file(&file("/dags/a.yaml", vec![record("a1")], None), t0())
            .await
            .unwrap();
        assert!(store.import_errors().await.unwrap().is_empty());
        assert!(!store.dag_get("a2").await.unwrap().unwrap().is_active);
        let listed: Vec<String> = store
            .dag_list()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.dag_id)
            .collect();
        assert_eq!(listed, vec!["a1"]);

        // The file disappears.
        assert_eq!(store.dag_deactivate_missing_files(&[]).await.unwrap(), 1);
        assert!(store.dag_list().await.unwrap().is_empty());
        assert!(store.dag_code_hashes().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn dag_runs_are_created_once() {
    each_backend(|store| async move {
        let run = new_run("d", "scheduled__1", DagRunType::Scheduled, 0);
        let created = store
            .dag_run_create(&run, &tis(&["a", "b"]), t0())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(created.state, DagRunState::Queued);
        assert_eq!(created.conf, serde_json::json!({"k": 1}));
        let ti = store.ti_list_for_run("d", "scheduled__1").await.unwrap();
        assert_eq!(ti.len(), 2);
        assert!(
            ti.iter()
                .all(|t| t.state == S::NoStatus && t.try_number == 0)
        );

        // Same run id: nothing created, nothing changed.
        assert!(
            store
                .dag_run_create(&run, &tis(&["x"]), t0())
                .await
                .unwrap()
                .is_none()
        );
        // Another scheduled run with the same logical date: refused.
        let dup = new_run("d", "scheduled__other", DagRunType::Scheduled, 0);
        assert!(
            store
                .dag_run_create(&dup, &tis(&["a"]), t0())
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .ti_list_for_run("d", "scheduled__other")
                .await
                .unwrap()
                .is_empty()
        );
        // A manual run may share the logical date.
        let manual = new_run("d", "manual__1", DagRunType::Manual, 0);
        assert!(
            store
                .dag_run_create(&manual, &tis(&["a"]), t0())
                .await
                .unwrap()
                .is_some()
        );

        assert!(
            store
                .dag_run_set_state_if(
                    "d",
                    "scheduled__1",
                    &[DagRunState::Queued],
                    DagRunState::Running,
                    Actor::Scheduler,
                    None,
                    t0()
                )
                .await
                .unwrap()
        );
        assert!(
            !store
                .dag_run_set_state_if(
                    "d",
                    "scheduled__1",
                    &[DagRunState::Queued],
                    DagRunState::Running,
                    Actor::Scheduler,
                    None,
                    t0()
                )
                .await
                .unwrap()
        );
        let r = store
            .dag_run_get("d", "scheduled__1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.state, DagRunState::Running);
        assert_eq!(r.start_date, Some(t0()));
        let (active, corrupt) = store
            .dag_run_list_in_states(&[DagRunState::Running])
            .await
            .unwrap();
        assert_eq!(active.len(), 1);
        assert!(corrupt.is_empty());
        assert_eq!(store.dag_run_list("d", 10).await.unwrap().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn state_changes_are_guarded_and_recorded() {
    each_backend(|store| async move {
        let run = new_run("d", "r", DagRunType::Manual, 0);
        store
            .dag_run_create(&run, &tis(&["a", "b"]), t0())
            .await
            .unwrap();
        let (a, b) = (key("r", "a"), key("r", "b"));
        let applied = store
            .ti_set_states(
                &[
                    change(&a, &[S::NoStatus], S::Scheduled),
                    change(&b, &[S::Scheduled], S::Queued),
                ],
                Actor::Scheduler,
                t0(),
            )
            .await
            .unwrap();
        assert_eq!(applied, vec![true, false]);
        let a_row = store.ti_get(&a).await.unwrap().unwrap();
        assert_eq!(a_row.state, S::Scheduled);
        assert_eq!(a_row.scheduled_dttm, Some(t0()));
        assert_eq!(store.ti_get(&b).await.unwrap().unwrap().state, S::NoStatus);
        let history = store.ti_transitions(&a).await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(
            (
                history[0].1.as_str(),
                history[0].2.as_str(),
                history[0].3.as_str()
            ),
            ("none", "scheduled", "scheduler")
        );
        assert!(store.ti_transitions(&b).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn concurrent_claims_never_overlap() {
    each_backend(|store| async move {
        let ids: Vec<String> = (0..60).map(|i| format!("t{i:02}")).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        manual_run(&store, &id_refs).await;
        let keys: Vec<TiKey> = ids.iter().map(|t| key("r", t)).collect();
        queue(&store, &keys).await;

        let mut handles = Vec::new();
        for w in 0..6 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = store
                        .ti_claim(&format!("w{w}"), "host", &["default".to_owned()], 4, t0())
                        .await
                        .unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got);
                }
            }));
        }
        let mut seen = HashSet::new();
        for h in handles {
            for ti in h.await.unwrap() {
                assert_eq!(ti.state, S::Running);
                assert_eq!(ti.try_number, 1);
                assert!(
                    seen.insert(ti.key.task_id.clone()),
                    "{} claimed twice",
                    ti.key.task_id
                );
            }
        }
        assert_eq!(seen.len(), 60);
        let usage = store.ti_pool_usage().await.unwrap();
        assert_eq!(usage.total, 60);
        assert_eq!(usage.pools["default_pool"], (128, 60));
        assert_eq!(usage.per_dag["d"], 60);
    })
    .await;
}

#[tokio::test]
async fn finish_is_guarded_by_try_and_records_history_and_xcom() {
    each_backend(|store| async move {
        manual_run(&store, &["a"]).await;
        let a = key("r", "a");
        store
            .ti_set_states(
                &[
                    change(&a, &[S::NoStatus], S::Scheduled),
                    change(&a, &[S::Scheduled], S::Queued),
                ],
                Actor::Scheduler,
                t0(),
            )
            .await
            .unwrap();
        let claimed = store
            .ti_claim("w1", "host", &["default".into()], 10, t0())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);

        // Heartbeat: owned by w1, not by w2.
        assert!(
            store
                .ti_heartbeat("w1", &[(a.clone(), 1)], t0() + Duration::seconds(5))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .ti_heartbeat("w2", &[(a.clone(), 1)], t0())
                .await
                .unwrap(),
            vec![a.clone()]
        );
        let stale = store
            .ti_list_stale_running(t0() + Duration::seconds(4))
            .await
            .unwrap();
        assert!(stale.is_empty());
        let stale = store
            .ti_list_stale_running(t0() + Duration::seconds(6))
            .await
            .unwrap();
        assert_eq!(stale.len(), 1);

        // A finish for the wrong try changes nothing.
        let mut finish = TiFinish {
            key: a.clone(),
            try_number: 2,
            worker_id: Some("w1".into()),
            state: S::Success,
            reason: None,
            next_retry_at: None,
            xcom: Some(serde_json::json!("42")),
            rendered_fields: None,
            rendered_map_index: None,
            logs: vec![LogLine {
                at: t0(),
                stream: "stdout".into(),
                line: "42".into(),
            }],
            skip: Vec::new(),
            xcoms: Vec::new(),
            asset_events: Vec::new(),
            callbacks: Vec::new(),
        };
        assert!(
            !store
                .ti_finish(&finish, t0() + Duration::seconds(10))
                .await
                .unwrap()
        );
        // A finish from a worker that no longer owns the row (fenced off) changes nothing.
        finish.try_number = 1;
        finish.worker_id = Some("w2".into());
        assert!(
            !store
                .ti_finish(&finish, t0() + Duration::seconds(10))
                .await
                .unwrap()
        );
        finish.worker_id = Some("w1".into());
        assert!(
            store
                .ti_finish(&finish, t0() + Duration::seconds(10))
                .await
                .unwrap()
        );
        // Reported twice: the second is a no-op.
        assert!(
            !store
                .ti_finish(&finish, t0() + Duration::seconds(11))
                .await
                .unwrap()
        );
        let row = store.ti_get(&a).await.unwrap().unwrap();
        assert_eq!(row.state, S::Success);
        // Each report's lines are kept, even those of reports that changed nothing.
        assert_eq!(store.log_read(&a, 1, 0, 100).await.unwrap().lines.len(), 3);
        assert_eq!(store.log_read(&a, 2, 0, 100).await.unwrap().lines.len(), 1);
        assert_eq!(row.duration, Some(10.0));
        let xcoms = store.xcom_list_for_run("d", "r").await.unwrap();
        assert_eq!(xcoms.len(), 1);
        assert_eq!(xcoms[0].value, serde_json::json!("42"));
        let transitions: Vec<(String, String)> = store
            .ti_transitions(&a)
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.2, t.3))
            .collect();
        assert_eq!(
            transitions,
            vec![
                ("scheduled".into(), "scheduler".into()),
                ("queued".into(), "scheduler".into()),
                ("running".into(), "worker".into()),
                ("success".into(), "worker".into())
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn logs_append_and_tail() {
    each_backend(|store| async move {
        let a = key("r", "a");
        let line = |i: i64| LogLine {
            at: t0() + Duration::milliseconds(i),
            stream: "stdout".into(),
            line: format!("line {i} <img src=x onerror=alert(1)>"),
        };
        store.log_append(&a, 1, &[line(1), line(2)]).await.unwrap();
        let first = store.log_read(&a, 1, 0, 100).await.unwrap();
        assert_eq!(first.lines, vec![line(1), line(2)]);
        assert!(
            store
                .log_read(&a, 1, first.next, 100)
                .await
                .unwrap()
                .lines
                .is_empty()
        );
        store.log_append(&a, 1, &[line(3)]).await.unwrap();
        store.log_append(&a, 2, &[line(9)]).await.unwrap();
        let tail = store.log_read(&a, 1, first.next, 100).await.unwrap();
        assert_eq!(tail.lines, vec![line(3)]);
        assert_eq!(
            store.log_read(&a, 2, 0, 100).await.unwrap().lines,
            vec![line(9)]
        );
    })
    .await;
}

#[tokio::test]
async fn connections_are_encrypted_at_rest_and_keys_rotate() {
    each_backend(|store| async move {
        let old = flow_store::Cipher::generate_key();
        let new = flow_store::Cipher::generate_key();
        let cipher = flow_store::Cipher::new(&old).unwrap();
        let mut conn = flow_model::Connection::from_uri(
            "kafka_default",
            "kafka://user:pa55word-secret@b1:9092?sasl.password=extra-secret-9",
        )
        .unwrap();
        conn.description = Some("the cluster".into());
        assert!(store.connection_add(&conn, &cipher, t0()).await.unwrap());
        assert!(
            !store.connection_add(&conn, &cipher, t0()).await.unwrap(),
            "ids are unique"
        );
        assert_eq!(
            store
                .connection_get("kafka_default", &cipher)
                .await
                .unwrap(),
            Some(conn.clone())
        );
        // What the database holds is not the secret.
        let raw = store.raw_connection_columns("kafka_default").await.unwrap();
        assert!(
            !raw.contains("pa55word-secret") && !raw.contains("extra-secret-9"),
            "{raw}"
        );

        // A different key cannot read it, and says so.
        let stranger = flow_store::Cipher::new(&new).unwrap();
        let err = store
            .connection_get("kafka_default", &stranger)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("fernet"), "{err}");

        // Rotation: new key first, old key kept for reading; afterwards the new key alone reads.
        let both = flow_store::Cipher::new(&format!("{new},{old}")).unwrap();
        assert_eq!(store.connections_rotate(&both, t0()).await.unwrap(), 1);
        assert_eq!(
            store
                .connection_get("kafka_default", &stranger)
                .await
                .unwrap(),
            Some(conn.clone())
        );
        assert_eq!(store.connection_list(&stranger).await.unwrap(), vec![conn]);
        assert!(store.connection_delete("kafka_default").await.unwrap());
        assert!(!store.connection_delete("kafka_default").await.unwrap());
        assert!(flow_store::Cipher::new("not-a-key").is_err());

        // Variables: a secret one (by key or by description) is a token at rest, rotates
        // with the key, and needs a key to be written; a plain one is stored as it is.
        let old_key = flow_store::Cipher::new(&old).unwrap();
        let secret = flow_store::Variable {
            key: "warehouse_password".into(),
            value: "v-secret-77".into(),
            description: None,
        };
        let described = flow_store::Variable {
            key: "plain".into(),
            value: "tok-abc-99".into(),
            description: Some("the API token".into()),
        };
        let open = flow_store::Variable {
            key: "region".into(),
            value: "eu".into(),
            description: None,
        };
        assert!(
            store
                .variable_set(&secret, None, false, t0())
                .await
                .is_err()
        );
        for v in [&secret, &described, &open] {
            assert!(
                store
                    .variable_set(v, Some(&old_key), true, t0())
                    .await
                    .unwrap()
            );
        }
        assert!(
            !store
                .variable_set(&open, Some(&old_key), true, t0())
                .await
                .unwrap()
        );
        assert_eq!(store.raw_variable_value("region").await.unwrap(), "eu");
        for key in ["warehouse_password", "plain"] {
            let raw = store.raw_variable_value(key).await.unwrap();
            assert!(
                !raw.contains("v-secret") && !raw.contains("tok-abc"),
                "{raw}"
            );
        }
        assert_eq!(store.variables_rotate(&both, t0()).await.unwrap(), 2);
        assert_eq!(
            store.variable_list(Some(&stranger)).await.unwrap(),
            vec![described, open, secret]
        );
        assert!(store.variable_delete("region").await.unwrap());
        assert!(!store.variable_delete("region").await.unwrap());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Every state-changing method, on both backends. `each_backend` ends each with
// `TestDb::drop_db`, which replays every recorded transition through the model's table.

/// A manual run `r` of `d` with these tasks, all without a state.
async fn manual_run(store: &Store, tasks: &[&str]) {
    store
        .dag_run_create(&new_run("d", "r", DagRunType::Manual, 0), &tis(tasks), t0())
        .await
        .unwrap();
}

/// A run `r` of `d` with these tasks, the named ones claimed by worker `w1` (now running).
async fn running(store: &Store, tasks: &[&str], claim: &[&str]) -> Vec<flow_store::ClaimedTi> {
    manual_run(store, tasks).await;
    let keys: Vec<TiKey> = claim.iter().map(|t| key("r", t)).collect();
    queue(store, &keys).await;
    let claimed = store
        .ti_claim("w1", "host", &["default".into()], 100, t0())
        .await
        .unwrap();
    assert_eq!(claimed.len(), claim.len());
    claimed
}

fn finish(k: &TiKey, try_number: i64, state: S, xcom: Option<serde_json::Value>) -> TiFinish {
    TiFinish {
        key: k.clone(),
        try_number,
        worker_id: None,
        state,
        reason: None,
        next_retry_at: None,
        xcom,
        rendered_fields: None,
        rendered_map_index: None,
        logs: Vec::new(),
        skip: Vec::new(),
        xcoms: Vec::new(),
        asset_events: Vec::new(),
        callbacks: Vec::new(),
    }
}

async fn state_of(store: &Store, k: &TiKey) -> S {
    store.ti_get(k).await.unwrap().unwrap().state
}

/// (from, to, actor) of a task instance's recorded transitions.
async fn history(store: &Store, k: &TiKey) -> Vec<(String, String, String)> {
    store
        .ti_transitions(k)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.1, t.2, t.3))
        .collect()
}

fn h(from: &str, to: &str, actor: &str) -> (String, String, String) {
    (from.into(), to.into(), actor.into())
}

#[tokio::test]
async fn illegal_transitions_are_refused_and_change_nothing() {
    each_backend(|store| async move {
        manual_run(&store, &["a"]).await;
        let a = key("r", "a");
        // The scheduler may not queue what it has not scheduled, nor a worker succeed what it
        // has not claimed.
        let err = store
            .ti_set_states(
                &[change(&a, &[S::NoStatus], S::Queued)],
                Actor::Scheduler,
                t0(),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("the scheduler may not move a task instance from `none` to `queued`"),
            "{err}"
        );
        assert!(
            store
                .ti_set_states(
                    &[change(&a, &[S::NoStatus], S::Success)],
                    Actor::Worker,
                    t0()
                )
                .await
                .is_err()
        );
        assert_eq!(state_of(&store, &a).await, S::NoStatus);
        assert!(history(&store, &a).await.is_empty());
        let err = store
            .dag_run_set_state_if(
                "d",
                "r",
                &[DagRunState::Queued],
                DagRunState::Success,
                Actor::Scheduler,
                None,
                t0(),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("may not move a dag run"), "{err}");
    })
    .await;
}

/// Clear: a running try restarts, a finished one starts over without its XCom, the run is
/// queued again; each recorded as what really happened. A try that ends after the clear
/// changes nothing, and its worker takes the task instance back for the next try.
#[tokio::test]
async fn clear_restarts_running_tries_and_resets_finished_ones() {
    each_backend(|store| async move {
        running(&store, &["a", "b", "c"], &["a", "b"]).await;
        let (a, b, c) = (key("r", "a"), key("r", "b"), key("r", "c"));
        assert!(
            store
                .ti_finish(
                    &finish(&b, 1, S::Success, Some(serde_json::json!("B"))),
                    t0()
                )
                .await
                .unwrap()
        );
        store
            .dag_run_mark("d", "r", DagRunState::Success, t0())
            .await
            .unwrap();
        assert_eq!(
            state_of(&store, &a).await,
            S::Success,
            "marked with its run"
        );
        // Put `a` back to running for the clear: a new try, as a worker would make it.
        store.ti_clear(&[(a.clone(), 0)], t0()).await.unwrap();
        queue(&store, std::slice::from_ref(&a)).await;
        let again = store
            .ti_claim("w1", "host", &["default".into()], 10, t0())
            .await
            .unwrap();
        assert_eq!(again[0].try_number, 2);

        let report = store
            .ti_clear(&[(a.clone(), 2), (b.clone(), 2), (c.clone(), 2)], t0())
            .await
            .unwrap();
        assert_eq!((report.restarting, report.cleared), (1, 2));
        assert_eq!(state_of(&store, &a).await, S::Restarting);
        assert_eq!(state_of(&store, &b).await, S::NoStatus);
        let b_row = store.ti_get(&b).await.unwrap().unwrap();
        assert_eq!(b_row.max_tries, 1 + 2, "its retries granted anew");
        assert!(store.xcom_list_for_run("d", "r").await.unwrap().is_empty());
        assert_eq!(
            history(&store, &b).await.last().unwrap(),
            &h("success", "none", "user")
        );
        // The try that was running reports late: nothing changes, no XCom appears.
        assert!(
            !store
                .ti_finish(
                    &finish(&a, 2, S::Success, Some(serde_json::json!("late"))),
                    t0()
                )
                .await
                .unwrap()
        );
        assert!(store.xcom_list_for_run("d", "r").await.unwrap().is_empty());
        // Its worker restarts it (another worker may not).
        assert!(store.ti_restart(&a, "w2", t0()).await.unwrap().is_none());
        let next = store.ti_restart(&a, "w1", t0()).await.unwrap().unwrap();
        assert_eq!((next.state, next.try_number), (S::Running, 3));
        assert_eq!(
            history(&store, &a).await[history(&store, &a).await.len() - 2..],
            [
                h("running", "restarting", "user"),
                h("restarting", "running", "worker")
            ]
        );
    })
    .await;
}

/// Marking by hand, and a whole run in one transaction.
#[tokio::test]
async fn marking_task_instances_and_runs() {
    each_backend(|store| async move {
        running(&store, &["a", "b", "c"], &["a"]).await;
        let (a, b, c) = (key("r", "a"), key("r", "b"), key("r", "c"));
        let marked = store
            .ti_mark(std::slice::from_ref(&b), S::Success, t0())
            .await
            .unwrap();
        assert_eq!(marked, vec![b.clone()]);
        assert!(
            store
                .ti_mark(std::slice::from_ref(&b), S::Success, t0())
                .await
                .unwrap()
                .is_empty(),
            "already success"
        );
        assert!(
            !store
                .dag_run_mark("d", "nope", DagRunState::Failed, t0())
                .await
                .unwrap()
        );
        assert!(
            store
                .dag_run_mark("d", "r", DagRunState::Failed, t0())
                .await
                .unwrap()
        );
        assert_eq!(state_of(&store, &a).await, S::Failed, "running: failed");
        assert_eq!(state_of(&store, &b).await, S::Success, "finished: kept");
        assert_eq!(state_of(&store, &c).await, S::Skipped, "waiting: skipped");
        let run = store.dag_run_get("d", "r").await.unwrap().unwrap();
        assert_eq!(run.state, DagRunState::Failed);
        assert!(run.end_date.is_some());
        assert_eq!(
            history(&store, &a).await.last().unwrap(),
            &h("running", "failed", "user")
        );
    })
    .await;
}

/// Sensors: reschedule and defer free the slot in the same try; a trigger fires once; a
/// deferral past its timeout resumes to fail, recorded with the actor that expired it.
#[tokio::test]
async fn reschedule_defer_fire_and_expire() {
    each_backend(|store| async move {
        running(&store, &["poke", "wait", "late"], &["poke", "wait", "late"]).await;
        let (poke, wait, late) = (key("r", "poke"), key("r", "wait"), key("r", "late"));
        let at = t0() + Duration::seconds(30);
        assert!(
            !store
                .ti_reschedule(&poke, 1, "w2", at, t0(), t0())
                .await
                .unwrap(),
            "another worker's"
        );
        assert!(
            store
                .ti_reschedule(&poke, 1, "w1", at, t0(), t0())
                .await
                .unwrap()
        );
        let row = store.ti_get(&poke).await.unwrap().unwrap();
        assert_eq!(row.state, S::UpForReschedule);
        assert_eq!(row.next_retry_at, Some(at));
        assert_eq!(row.next_method.as_deref(), Some(flow_store::NEXT_POKE));
        store
            .ti_set_states(
                &[
                    change(&poke, &[S::UpForReschedule], S::Scheduled),
                    change(&poke, &[S::Scheduled], S::Queued),
                ],
                Actor::Scheduler,
                at,
            )
            .await
            .unwrap();
        let again = store
            .ti_claim("w1", "host", &["default".into()], 10, at)
            .await
            .unwrap();
        assert_eq!(again[0].try_number, 1, "the same try pokes again");

        let trigger = flow_store::NewTrigger {
            classpath: "flow.triggers.DateTimeTrigger".into(),
            kwargs: serde_json::json!({"at": "x"}),
            timeout_at: t0() + Duration::hours(1),
        };
        assert!(
            store
                .ti_defer(&wait, 1, "w1", &trigger, t0())
                .await
                .unwrap()
        );
        assert!(
            !store
                .ti_defer(&wait, 1, "w1", &trigger, t0())
                .await
                .unwrap(),
            "not running"
        );
        let expiring = flow_store::NewTrigger {
            timeout_at: t0() + Duration::seconds(5),
            ..trigger.clone()
        };
        assert!(
            store
                .ti_defer(&late, 1, "w1", &expiring, t0())
                .await
                .unwrap()
        );
        let claimed = store.trigger_claim("t1", 10, t0(), t0()).await.unwrap();
        assert_eq!(claimed.len(), 2);
        let waiting = store.ti_get(&wait).await.unwrap().unwrap();
        let id = claimed
            .iter()
            .find(|t| t.timeout_at == Some(t0() + Duration::hours(1)))
            .unwrap()
            .id;
        let event = serde_json::json!({"fired": true});
        assert_eq!(store.trigger_fire(id, &event, t0()).await.unwrap(), 1);
        assert_eq!(
            store.trigger_fire(id, &event, t0()).await.unwrap(),
            0,
            "fires once"
        );
        let resumed = store.ti_get(&wait).await.unwrap().unwrap();
        assert_eq!(resumed.state, S::Scheduled);
        assert_eq!(resumed.try_number, waiting.try_number);
        assert_eq!(
            resumed.next_method.as_deref(),
            Some(flow_store::NEXT_EXECUTE_COMPLETE)
        );
        assert_eq!(resumed.next_kwargs.as_deref(), Some(r#"{"fired":true}"#));

        assert_eq!(
            store
                .ti_expire_deferrals(Actor::Scheduler, t0() + Duration::seconds(10))
                .await
                .unwrap(),
            1
        );
        let expired = store.ti_get(&late).await.unwrap().unwrap();
        assert_eq!(expired.state, S::Scheduled);
        assert_eq!(expired.next_method.as_deref(), Some(flow_store::NEXT_FAIL));
        assert_eq!(
            history(&store, &late).await.last().unwrap(),
            &h("deferred", "scheduled", "scheduler")
        );
        assert_eq!(
            history(&store, &wait).await.last().unwrap(),
            &h("deferred", "scheduled", "triggerer")
        );
        assert_eq!(
            store.trigger_cleanup().await.unwrap(),
            1,
            "the expired one's trigger"
        );
    })
    .await;
}

/// Zombie rescue and task_queued_timeout are guarded by what made them due: a heartbeat or a
/// claim that arrives in between wins.
#[tokio::test]
async fn rescues_are_guarded_by_staleness() {
    each_backend(|store| async move {
        running(&store, &["a", "q"], &["a"]).await;
        let (a, q) = (key("r", "a"), key("r", "q"));
        store
            .ti_heartbeat("w1", &[(a.clone(), 1)], t0() + Duration::seconds(50))
            .await
            .unwrap();
        let rescue = StateChange {
            next_retry_at: Some(t0() + Duration::seconds(90)),
            ..change(&a, &[S::Running], S::UpForRetry)
        };
        let applied = store
            .ti_rescue_stale(
                std::slice::from_ref(&rescue),
                t0() + Duration::seconds(10),
                t0() + Duration::seconds(70),
            )
            .await
            .unwrap();
        assert_eq!(
            applied,
            [false],
            "heartbeat at +50s is newer than the cutoff"
        );
        let applied = store
            .ti_rescue_stale(
                &[rescue],
                t0() + Duration::seconds(60),
                t0() + Duration::seconds(70),
            )
            .await
            .unwrap();
        assert_eq!(applied, [true]);
        assert_eq!(state_of(&store, &a).await, S::UpForRetry);

        queue(&store, std::slice::from_ref(&q)).await;
        let stuck = store
            .ti_list_stuck_queued(t0() + Duration::seconds(601))
            .await
            .unwrap();
        assert_eq!(stuck.len(), 1);
        assert_eq!(stuck[0].1, 0, "never requeued yet");
        let release = [change(&q, &[S::Queued], S::Scheduled)];
        // Queued again since: not stuck any more.
        assert_eq!(
            store
                .ti_release_stuck(
                    &release,
                    t0() - Duration::seconds(1),
                    t0() + Duration::seconds(601)
                )
                .await
                .unwrap(),
            [false]
        );
        assert_eq!(
            store
                .ti_release_stuck(
                    &release,
                    t0() + Duration::seconds(1),
                    t0() + Duration::seconds(601)
                )
                .await
                .unwrap(),
            [true]
        );
        assert_eq!(state_of(&store, &q).await, S::Scheduled);
    })
    .await;
}

/// Mapped tasks: the unexpanded instance becomes instance 0, more are made; a cleared task
/// mapped again to fewer removes the rest; nothing to map skips it.
#[tokio::test]
async fn expanding_mapped_tasks() {
    each_backend(|store| async move {
        manual_run(&store, &["m", "e"]).await;
        let template = &tis(&["m"])[0];
        assert_eq!(
            store.ti_expand("d", "r", template, 3, t0()).await.unwrap(),
            [0, 1, 2]
        );
        let rows = store.ti_list_for_run("d", "r").await.unwrap();
        let m: Vec<i64> = rows
            .iter()
            .filter(|t| t.key.task_id == "m")
            .map(|t| t.key.map_index)
            .collect();
        assert_eq!(m, [0, 1, 2]);
        // Again while nothing moved: the same instances.
        assert_eq!(
            store.ti_expand("d", "r", template, 3, t0()).await.unwrap(),
            [0, 1, 2]
        );
        // Mapped again to 2 (a cleared task whose upstream now gives fewer values).
        assert_eq!(
            store.ti_expand("d", "r", template, 2, t0()).await.unwrap(),
            [0, 1]
        );
        assert_eq!(
            state_of(&store, &TiKey::new("d", "r", "m", 2)).await,
            S::Removed
        );
        // Once one has moved on, expansion leaves everything alone.
        queue(&store, &[TiKey::new("d", "r", "m", 0)]).await;
        assert!(
            store
                .ti_expand("d", "r", template, 5, t0())
                .await
                .unwrap()
                .is_empty()
        );
        // Nothing to map over: skipped.
        let e = &tis(&["e"])[0];
        assert!(
            store
                .ti_expand("d", "r", e, 0, t0())
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(state_of(&store, &key("r", "e")).await, S::Skipped);
    })
    .await;
}

/// A row the store cannot read is reported with its run, not an error for every run.
#[tokio::test]
async fn corrupt_rows_are_reported_not_fatal() {
    each_backend(|store| async move {
        for (run, day) in [("r1", 0), ("r2", 1)] {
            let mut r = new_run("d", run, DagRunType::Manual, day);
            r.state = DagRunState::Queued;
            store.dag_run_create(&r, &tis(&["a"]), t0()).await.unwrap();
        }
        store
            .execute_raw("UPDATE task_instance SET state = 'exploded' WHERE run_id = 'r1'")
            .await
            .unwrap();
        store
            .execute_raw("UPDATE dag_run SET conf = 'not json' WHERE run_id = 'r2'")
            .await
            .unwrap();
        let (rows, corrupt) = store.ti_list_active_runs().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].key.run_id, "r2");
        assert_eq!(corrupt.len(), 1);
        assert_eq!(corrupt[0].run_id, "r1");
        assert!(corrupt[0].error.contains("exploded"), "{corrupt:?}");
        let (runs, corrupt) = store
            .dag_run_list_in_states(&[DagRunState::Queued])
            .await
            .unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(corrupt.len(), 1);
        assert_eq!(corrupt[0].run_id, "r2");
    })
    .await;
}

/// A commit through other connections (another process, or the web server's pool) wakes the
/// loop of the channel it notified, and only that one: LISTEN/NOTIFY on PostgreSQL, the
/// `wake_signal` counters and the file watch on SQLite.
#[tokio::test]
async fn commits_elsewhere_wake_the_listening_loops() {
    use std::sync::Arc;
    use tokio::sync::Notify;

    async fn within(n: &Notify, what: &str) {
        tokio::time::timeout(std::time::Duration::from_secs(20), n.notified())
            .await
            .unwrap_or_else(|_| panic!("{what}: no wake-up"));
    }
    fn pending(n: &Notify) -> bool {
        use std::future::Future;
        let mut fut = std::pin::pin!(n.notified());
        let waker = std::task::Waker::noop();
        fut.as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
            .is_ready()
    }

    for db in TestDb::all().await.unwrap() {
        eprintln!("backend: {:?}", db.backend());
        let scheduler = Arc::new(Notify::new());
        let workers = Arc::new(Notify::new());
        db.store.spawn_wake_listener(vec![
            (flow_store::WAKE_SCHEDULER, scheduler.clone()),
            (flow_store::WAKE_WORKERS, workers.clone()),
        ]);
        // A listener that starts (or reconnects) may have missed something: it wakes everyone.
        within(&scheduler, "start, scheduler").await;
        within(&workers, "start, workers").await;

        let other = Store::connect(&db.url).await.unwrap();
        other
            .dag_run_create(
                &new_run("d", "r1", DagRunType::Manual, 0),
                &tis(&["a"]),
                t0(),
            )
            .await
            .unwrap()
            .unwrap();
        within(&scheduler, "a run created elsewhere").await;
        assert!(!pending(&workers), "a new run is the scheduler's business");

        queue(&other, &[key("r1", "a")]).await;
        within(&workers, "a task instance queued elsewhere").await;
        assert!(
            !pending(&scheduler),
            "the scheduler does not wake itself for what it queued"
        );
        other.close().await;

        // This process's own commits (the web server's trigger in `flow standalone`) wake its
        // loops too.
        db.store
            .dag_run_create(
                &new_run("d", "r2", DagRunType::Manual, 1),
                &tis(&["a"]),
                t0(),
            )
            .await
            .unwrap()
            .unwrap();
        within(&scheduler, "a run created here").await;
        db.drop_db().await.unwrap();
    }
}

fn queue_request(k: &TiKey, pool: &str) -> flow_store::QueueRequest {
    flow_store::QueueRequest {
        key: k.clone(),
        pool: pool.into(),
        pool_slots: 1,
        max_active_tasks: 100,
        max_active_tis_per_dag: None,
        max_active_tis_per_dagrun: None,
        reason: None,
    }
}

/// Two schedulers that both saw a free pool cannot both fill it: the store decides again
/// under the queueing lock, over what is queued and running then. Sequentially (the second
/// scheduler's view is stale) and concurrently (PostgreSQL: eight at once).
#[tokio::test]
async fn queueing_limits_hold_across_schedulers() {
    each_backend(|store| async move {
        store.pool_set("p3", 3, "three slots").await.unwrap();
        let ids: Vec<String> = (0..24).map(|i| format!("t{i:02}")).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let rows: Vec<NewTaskInstance> = tis(&id_refs)
            .into_iter()
            .map(|t| NewTaskInstance {
                pool: "p3".into(),
                ..t
            })
            .collect();
        store
            .dag_run_create(&new_run("d", "r", DagRunType::Manual, 0), &rows, t0())
            .await
            .unwrap();
        let keys: Vec<TiKey> = ids.iter().map(|t| key("r", t)).collect();
        let schedule: Vec<StateChange> = keys
            .iter()
            .map(|k| change(k, &[S::NoStatus], S::Scheduled))
            .collect();
        store
            .ti_set_states(&schedule, Actor::Scheduler, t0())
            .await
            .unwrap();

        // Scheduler A and then scheduler B, each having seen the pool empty.
        let a: Vec<_> = keys[0..3].iter().map(|k| queue_request(k, "p3")).collect();
        let b: Vec<_> = keys[3..6].iter().map(|k| queue_request(k, "p3")).collect();
        let got_a = store
            .ti_schedule_and_queue(&[], &a, 32, t0())
            .await
            .unwrap();
        assert_eq!(got_a.queued.len(), 3);
        let got_b = store
            .ti_schedule_and_queue(&[], &b, 32, t0())
            .await
            .unwrap();
        assert!(got_b.queued.is_empty(), "{:?}", got_b.queued);
        // Candidates already queued by another scheduler are not queued twice.
        let again = store
            .ti_schedule_and_queue(&[], &a, 32, t0())
            .await
            .unwrap();
        assert!(again.queued.is_empty());
        // A claimed (running) instance still holds its slot; a finished one frees it.
        let claimed = store
            .ti_claim("w1", "host", &["default".into()], 1, t0())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let got_b = store
            .ti_schedule_and_queue(&[], &b, 32, t0())
            .await
            .unwrap();
        assert!(got_b.queued.is_empty());
        assert!(
            store
                .ti_finish(&finish(&claimed[0].key, 1, S::Success, None), t0())
                .await
                .unwrap()
        );
        let got_b = store
            .ti_schedule_and_queue(&[], &b, 32, t0())
            .await
            .unwrap();
        assert_eq!(got_b.queued.len(), 1);

        // The other limits, each against fresh occupancy, with a pool large enough not to
        // be the reason: parallelism, max_active_tasks, max_active_tis_per_dag / per_dagrun.
        store.pool_set("p3", 100, "roomy").await.unwrap();
        let used = store.ti_pool_usage().await.unwrap().total;
        assert_eq!(used, 3);
        let rest = &keys[6..];
        let base = queue_request(&rest[0], "p3");
        let tight = [
            ("parallelism", base.clone(), used),
            (
                "max_active_tasks",
                flow_store::QueueRequest {
                    max_active_tasks: used,
                    ..base.clone()
                },
                32,
            ),
            (
                "max_active_tis_per_dagrun",
                flow_store::QueueRequest {
                    max_active_tis_per_dagrun: Some(0),
                    ..base.clone()
                },
                32,
            ),
        ];
        for (limit, request, parallelism) in tight {
            let got = store
                .ti_schedule_and_queue(&[], std::slice::from_ref(&request), parallelism, t0())
                .await
                .unwrap();
            assert!(got.queued.is_empty(), "{limit}");
        }
        let per_dag = flow_store::QueueRequest {
            max_active_tis_per_dag: Some(1),
            ..base.clone()
        };
        let got = store
            .ti_schedule_and_queue(&[], std::slice::from_ref(&per_dag), 32, t0())
            .await
            .unwrap();
        assert_eq!(got.queued.len(), 1, "within every limit");
        store.ti_mark(&got.queued, S::Success, t0()).await.unwrap();
        store.pool_set("p3", 3, "three slots").await.unwrap();
        let rest = &keys[7..];

        // Concurrent schedulers, each proposing two of the remaining instances for a 3-slot
        // pool freed by marking what holds it.
        let busy: Vec<TiKey> = store
            .ti_list_for_run("d", "r")
            .await
            .unwrap()
            .into_iter()
            .filter(|t| matches!(t.state, S::Queued | S::Running))
            .map(|t| t.key)
            .collect();
        store.ti_mark(&busy, S::Success, t0()).await.unwrap();
        let mut handles = Vec::new();
        for pair in rest.chunks(2) {
            let store = store.clone();
            let requests: Vec<_> = pair.iter().map(|k| queue_request(k, "p3")).collect();
            handles.push(tokio::spawn(async move {
                store
                    .ti_schedule_and_queue(&[], &requests, 32, t0())
                    .await
                    .unwrap()
                    .queued
                    .len()
            }));
        }
        let mut total = 0;
        for h in handles {
            total += h.await.unwrap();
        }
        assert_eq!(total, 3, "the pool's three slots, filled once");
        let usage = store.ti_pool_usage().await.unwrap();
        assert_eq!(usage.pools["p3"], (3, 3));
    })
    .await;
}

/// `max_active_runs` holds when two schedulers start queued runs at once.
#[tokio::test]
async fn max_active_runs_holds_across_schedulers() {
    each_backend(|store| async move {
        for (i, run_id) in ["r1", "r2", "r3"].iter().enumerate() {
            store
                .dag_run_create(
                    &new_run("d", run_id, DagRunType::Manual, i as i64),
                    &tis(&["a"]),
                    t0(),
                )
                .await
                .unwrap();
        }
        let start = |run_id: &str| flow_store::RunStart {
            dag_id: "d".into(),
            run_id: run_id.into(),
            max_active_runs: 1,
            backfill_id: None,
        };
        let mut handles = Vec::new();
        for run_id in ["r1", "r2", "r3"] {
            let store = store.clone();
            let c = vec![start(run_id)];
            handles.push(tokio::spawn(async move {
                store.dag_run_start_queued(&c, t0()).await.unwrap().len()
            }));
        }
        let mut total = 0;
        for h in handles {
            total += h.await.unwrap();
        }
        assert_eq!(total, 1);
        let running = store
            .dag_run_list_in_states(&[DagRunState::Running])
            .await
            .unwrap()
            .0;
        assert_eq!(running.len(), 1);
    })
    .await;
}

/// Several processors (schedulers, dag processors) syncing the same file at once store one
/// version of each DAG, and the same bundle twice is one bundle.
#[tokio::test]
async fn concurrent_processors_store_one_version() {
    each_backend(|store| async move {
        let mut handles = Vec::new();
        for _ in 0..6 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                store
                    .dag_sync_file(
                        &file("/dags/a.yaml", vec![record("a1"), record("a2")], None),
                        t0(),
                    )
                    .await
            }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        let dags = store.dag_list().await.unwrap();
        assert_eq!(dags.len(), 2);
        assert!(dags.iter().all(|d| d.dag_hash == "h1"));

        let files = vec![flow_store::BundleFile {
            path: "helpers/x.py".into(),
            blob_hash: "b1".into(),
            executable: false,
        }];
        let blobs = vec![("b1".to_owned(), b"print(1)\n".to_vec())];
        let mut handles = Vec::new();
        for _ in 0..4 {
            let (store, files, blobs) = (store.clone(), files.clone(), blobs.clone());
            handles.push(tokio::spawn(async move {
                store.bundle_store("k1", &files, &blobs, "/dags/").await
            }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        assert_eq!(
            store.bundle_of_dag("a1").await.unwrap().as_deref(),
            Some("k1")
        );
        let got = store.bundle_files("k1").await.unwrap();
        assert_eq!(
            got,
            vec![("helpers/x.py".to_owned(), false, b"print(1)\n".to_vec())]
        );
        // A new bundle replaces the old one, whose files nobody uses any more.
        store.bundle_store("k2", &[], &[], "/dags/").await.unwrap();
        assert!(!store.bundle_exists("k1").await.unwrap());
        assert_eq!(
            store.bundle_missing_blobs(&["b1".into()]).await.unwrap(),
            vec!["b1"]
        );
    })
    .await;
}

fn asset(uri: &str) -> flow_dag::assets::Asset {
    flow_dag::assets::Asset {
        uri: uri.into(),
        name: uri.into(),
        group: "asset".into(),
        extra: serde_json::Map::new(),
    }
}

fn schedule_use(uri: &str) -> flow_store::AssetUse {
    flow_store::AssetUse {
        uri: uri.into(),
        name: uri.into(),
        group: "asset".into(),
        extra: serde_json::json!({}),
        kind: "schedule",
        task_id: String::new(),
    }
}

async fn asset_id_of(store: &Store, uri: &str) -> i64 {
    let (assets, _) = store
        .asset_query(&flow_store::AssetQuery {
            uri_pattern: Some(uri.into()),
            limit: 10,
            ..flow_store::AssetQuery::default()
        })
        .await
        .unwrap();
    assets.iter().find(|a| a.uri == uri).unwrap().id
}

/// Events queue for the active, unpaused DAGs scheduled on their asset; a run is made only
/// when the queued events meet the condition, and the events are consumed by exactly one of
/// many schedulers racing to make it.
#[tokio::test]
async fn asset_events_are_consumed_once() {
    use flow_dag::assets::AssetCondition;
    each_backend(|store| async move {
        let mut consumer = record("consumer");
        consumer.assets = vec![schedule_use("s3://x"), schedule_use("s3://y")];
        let mut paused = record("paused_consumer");
        paused.assets = vec![schedule_use("s3://x")];
        store
            .dag_sync_file(&file("/dags/a.yaml", vec![consumer, paused], None), t0())
            .await
            .unwrap();
        store.dag_set_paused("consumer", false).await.unwrap();
        let (x, y) = (
            asset_id_of(&store, "s3://x").await,
            asset_id_of(&store, "s3://y").await,
        );
        let both = AssetCondition::All(vec![
            AssetCondition::Asset(asset("s3://x")),
            AssetCondition::Asset(asset("s3://y")),
        ]);
        let event = store
            .asset_event_create(x, &serde_json::json!({"n": 1}), t0())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.uri, "s3://x");
        assert!(
            store
                .asset_event_create(999_999, &serde_json::json!({}), t0())
                .await
                .unwrap()
                .is_none()
        );
        let queue = store.asset_queue().await.unwrap();
        assert_eq!(queue.len(), 1, "a paused DAG gets nothing: {queue:?}");
        assert_eq!(queue["consumer"].len(), 1);
        let mut run = new_run(
            "consumer",
            "asset_triggered__1",
            DagRunType::AssetTriggered,
            0,
        );
        // `x` alone does not meet `x & y`: nothing is made and nothing consumed.
        let made = store
            .asset_run_create(&run, &tis(&["t"]), &both, t0())
            .await
            .unwrap();
        assert!(made.is_none());
        assert_eq!(store.asset_queue().await.unwrap()["consumer"].len(), 1);
        store
            .asset_event_create(y, &serde_json::json!({}), t0() + Duration::seconds(5))
            .await
            .unwrap();
        let mut racers = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            run.run_id = format!("asset_triggered__race{i}");
            let (run, both) = (run.clone(), both.clone());
            racers.push(tokio::spawn(async move {
                store
                    .asset_run_create(&run, &tis(&["t"]), &both, t0())
                    .await
                    .unwrap()
            }));
        }
        let mut made = Vec::new();
        for r in racers {
            made.extend(r.await.unwrap());
        }
        assert_eq!(made.len(), 1, "exactly one scheduler makes the run");
        let won = &made[0];
        assert!(store.asset_queue().await.unwrap().is_empty());
        let consumed = store
            .asset_events_for_run("consumer", &won.run_id)
            .await
            .unwrap();
        let uris: Vec<&str> = consumed.iter().map(|e| e.uri.as_str()).collect();
        assert_eq!(uris, ["s3://x", "s3://y"]);
        // The run's data interval spans its events.
        assert_eq!(won.data_interval_start, Some(t0()));
        assert_eq!(won.data_interval_end, Some(t0() + Duration::seconds(5)));
        let runs = store.asset_event_runs(&[event.id]).await.unwrap();
        assert_eq!(runs[&event.id].len(), 1);
    })
    .await;
}

/// Callback requests: claimed by one runner at a time, retried after a backoff up to the
/// last attempt, taken over when a runner's lease runs out, and every attempt's log kept.
#[tokio::test]
async fn callbacks_are_claimed_once_and_retried() {
    each_backend(|store| async move {
        let target = flow_store::CallbackTarget {
            dag_id: "d".into(),
            run_id: "r".into(),
            task_id: Some("t".into()),
            map_index: -1,
            try_number: 1,
        };
        let callback = flow_store::NewCallback {
            event: "on_failure_callback".into(),
            index: 0,
            description: "webhook".into(),
            state: "failed".into(),
            reason: Some("boom".into()),
        };
        store
            .callback_enqueue(&target, &[callback.clone(), callback], t0())
            .await
            .unwrap();
        let (a, b) = tokio::join!(
            store.callback_claim("a", 10, t0()),
            store.callback_claim("b", 10, t0())
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.len() + b.len(), 2, "each claimed once: {a:?} {b:?}");
        let mine = if a.is_empty() { ("b", b) } else { ("a", a) };
        let (runner, rows) = (mine.0, mine.1);
        assert!(
            rows.iter()
                .all(|r| r.attempts == 1 && r.status == "running")
        );
        // Another runner's report is refused; the owner's failure is retried later.
        let other = if runner == "a" { "b" } else { "a" };
        assert_eq!(
            store
                .callback_attempt_done(&rows[0], other, true, "x", t0())
                .await
                .unwrap(),
            None
        );
        let status = store
            .callback_attempt_done(&rows[0], runner, false, "attempt 1 failed\n", t0())
            .await
            .unwrap();
        assert_eq!(status.as_deref(), Some("pending"));
        assert!(
            store
                .callback_claim("c", 10, t0())
                .await
                .unwrap()
                .is_empty()
        );
        let later = t0() + Duration::seconds(6);
        let again = store.callback_claim("c", 10, later).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 2);
        store
            .callback_attempt_done(&again[0], "c", true, "attempt 2 done\n", later)
            .await
            .unwrap();
        // The second row's runner died: its lease runs out and another takes it over.
        let taken = store
            .callback_claim("d", 10, t0() + Duration::minutes(6))
            .await
            .unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].id, rows[1].id);
        let listed = store.callback_list_for_ti("d", "r", "t", -1).await.unwrap();
        let first = listed.iter().find(|r| r.id == rows[0].id).unwrap();
        assert_eq!(first.status, "success");
        assert_eq!(first.log, "attempt 1 failed\nattempt 2 done\n");
    })
    .await;
}
