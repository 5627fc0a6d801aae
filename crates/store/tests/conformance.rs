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
        store
            .dag_run_create(
                &new_run("d", "r", DagRunType::Manual, 0),
                &tis(&id_refs),
                t0(),
            )
            .await
            .unwrap();
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
        store
            .dag_run_create(
                &new_run("d", "r", DagRunType::Manual, 0),
                &tis(&["a"]),
                t0(),
            )
            .await
            .unwrap();
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
        };
        assert!(
            !store
                .ti_finish(&finish, t0() + Duration::seconds(10))
                .await
                .unwrap()
        );
        finish.try_number = 1;
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
        assert_eq!(store.log_read(&a, 1, 0, 100).await.unwrap().lines.len(), 2);
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
    })
    .await;
}
