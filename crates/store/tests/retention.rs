//! Retention on both backends: `Store::clean` (`flow db clean`, `max_runs_kept_per_dag`) and
//! `Store::logs_expire` (`[logging] retention_days`). Runs are made through the store's own
//! state changes, so `TestDb::drop_db` replays their transitions as for any other test.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use chrono::{DateTime, Duration, TimeZone, Utc};
use flow_model::transition::Actor;
use flow_model::{DagRunState, DagRunType, TaskInstanceState as S};
use flow_store::testing::TestDb;
use flow_store::{
    CleanProgress, CleanRequest, CleanTable, LogLine, NewDagRun, NewTaskInstance, RunFinish,
    RunSelection, StateChange, Store, TiFinish, TiKey,
};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

fn day(n: i64) -> DateTime<Utc> {
    t0() + Duration::days(n)
}

/// Runs `body` once per backend, then checks every recorded transition and drops the
/// database.
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

const TASKS: [&str; 2] = ["a", "b"];

fn tis() -> Vec<NewTaskInstance> {
    TASKS
        .iter()
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

/// What a run should look like when the test starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    /// Created, started at `start`, its tasks run and ended the run with this state.
    Ended(DagRunState),
    /// Created and started at `start`, nothing run yet.
    Running,
}

/// A run of `dag` with logical date `logical` (days after t0), started on day `start`:
/// with `Made::Ended`, both tasks claimed, logged, pushed an XCom and ended on `start`.
async fn run(
    store: &Store,
    dag: &str,
    run_id: &str,
    run_type: DagRunType,
    logical: i64,
    start: i64,
    made: Made,
) {
    let now = day(start);
    let new = NewDagRun {
        dag_id: dag.into(),
        run_id: run_id.into(),
        run_type,
        state: DagRunState::Queued,
        logical_date: Some(day(logical)),
        data_interval_start: Some(day(logical)),
        data_interval_end: Some(day(logical + 1)),
        run_after: day(logical + 1),
        conf: serde_json::json!({}),
        note: None,
        triggered_by: Some("test".into()),
        dag_hash: "h".into(),
    };
    store
        .dag_run_create(&new, &tis(), now)
        .await
        .unwrap()
        .unwrap();
    let started = store
        .dag_run_set_state_if(
            dag,
            run_id,
            &[DagRunState::Queued],
            DagRunState::Running,
            Actor::Scheduler,
            None,
            now,
        )
        .await
        .unwrap();
    assert!(started);
    let Made::Ended(end) = made else {
        return;
    };
    let keys: Vec<TiKey> = TASKS
        .iter()
        .map(|t| TiKey::new(dag, run_id, t, -1))
        .collect();
    let change = |k: &TiKey, from: S, to: S| StateChange {
        key: k.clone(),
        from: vec![from],
        to,
        reason: None,
        next_retry_at: None,
    };
    let changes: Vec<StateChange> = keys
        .iter()
        .map(|k| change(k, S::NoStatus, S::Scheduled))
        .chain(keys.iter().map(|k| change(k, S::Scheduled, S::Queued)))
        .collect();
    store
        .ti_set_states(&changes, Actor::Scheduler, now)
        .await
        .unwrap();
    let claimed = store
        .ti_claim("w1", "host", &["default".into()], 100, now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), TASKS.len());
    let ti_state = if end == DagRunState::Success {
        S::Success
    } else {
        S::Failed
    };
    for c in claimed {
        let finish = TiFinish {
            key: c.key.clone(),
            try_number: c.try_number,
            worker_id: None,
            state: ti_state,
            reason: None,
            next_retry_at: None,
            xcom: Some(serde_json::json!(1)),
            rendered_fields: None,
            rendered_map_index: None,
            logs: vec![line(now, "hello"), line(now, "bye")],
            skip: Vec::new(),
            xcoms: Vec::new(),
            asset_events: Vec::new(),
            callbacks: Vec::new(),
        };
        assert!(store.ti_finish(&finish, now).await.unwrap());
    }
    let finished = store
        .dag_run_finish_many(
            &[RunFinish {
                dag_id: dag.into(),
                run_id: run_id.into(),
                state: end,
                reason: None,
                callbacks: Vec::new(),
            }],
            now,
        )
        .await
        .unwrap();
    assert_eq!(finished, [true]);
}

fn line(at: DateTime<Utc>, text: &str) -> LogLine {
    LogLine {
        at,
        stream: "stdout".into(),
        line: text.into(),
    }
}

/// The tables that hold a run's rows, as the database names them.
const RUN_TABLES: [&str; 9] = [
    "dag_run",
    "task_instance",
    "task_instance_history",
    "ti_transition",
    "dag_run_transition",
    "log_chunk",
    "xcom",
    "dag_run_asset_event",
    "callback_request",
];

/// How many rows of each of a run's tables belong to it.
async fn rows_of(store: &Store, dag: &str, run_id: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for t in RUN_TABLES {
        out.push(
            store
                .count_raw(&format!(
                    "{t} WHERE dag_id = '{dag}' AND run_id = '{run_id}'"
                ))
                .await
                .unwrap(),
        );
    }
    out
}

/// Whether the run is there.
async fn exists(store: &Store, dag: &str, run_id: &str) -> bool {
    store.dag_run_get(dag, run_id).await.unwrap().is_some()
}

fn by_date(before: DateTime<Utc>, tables: &[CleanTable], batch_size: usize) -> CleanRequest {
    CleanRequest {
        runs: RunSelection::StartedBefore(before),
        tables: tables.to_vec(),
        batch_size,
    }
}

/// Three DAGs' runs, old and new, finished and not; asset events, audit rows, jobs and
/// triggers old and new. Returns the runs a clean before day 5 must delete.
async fn history(store: &Store) -> Vec<(&'static str, &'static str)> {
    use DagRunType::{Backfill, Manual, Scheduled};
    let ok = Made::Ended(DagRunState::Success);
    // d: two old scheduled runs and an old manual one go; an old running one stays, and so
    // does the new one (the latest of every kind).
    run(store, "d", "s0", Scheduled, 0, 0, ok).await;
    run(
        store,
        "d",
        "s1",
        Scheduled,
        1,
        1,
        Made::Ended(DagRunState::Failed),
    )
    .await;
    run(store, "d", "m2", Manual, 2, 2, ok).await;
    run(store, "d", "s3", Scheduled, 3, 3, Made::Running).await;
    run(store, "d", "s10", Scheduled, 10, 10, ok).await;
    // e: only old runs. Airflow keeps the latest non-manual one (e1) even though it is old;
    // the newer manual one goes.
    run(store, "e", "e0", Scheduled, 0, 0, ok).await;
    run(store, "e", "e1", Scheduled, 1, 1, ok).await;
    run(store, "e", "m2", Manual, 2, 2, ok).await;
    // f: a backfill of an older date started after the latest scheduled run: Airflow keeps the
    // backfill (latest start), flow also the scheduled one its next-run maths starts from.
    run(store, "f", "f0", Scheduled, 0, 0, ok).await;
    run(store, "f", "f3", Scheduled, 3, 3, ok).await;
    run(store, "f", "b1", Backfill, 1, 4, ok).await;
    // g: an old finished run with a callback still waiting stays; g1 is the one kept.
    run(store, "g", "g0", Scheduled, 0, 0, ok).await;
    run(store, "g", "g1", Scheduled, 1, 1, ok).await;
    let old = day(0).timestamp_micros();
    let new = day(10).timestamp_micros();
    let raw = [
        format!(
            "INSERT INTO callback_request (dag_id, run_id, event, callback_index, state, \
             status, next_attempt_at, created_at, updated_at) VALUES \
             ('g', 'g0', 'on_success_callback', 0, 'success', 'pending', {old}, {old}, {old}), \
             ('d', 's0', 'on_success_callback', 0, 'success', 'success', {old}, {old}, {old})"
        ),
        // Asset events: 1 consumed by d/s0 (goes with it, then itself), 2 waiting in a DAG's
        // queue (stays), 3 old and unused (goes), 4 new (stays).
        format!(
            "INSERT INTO asset_event (id, asset_id, timestamp) VALUES \
             (1, 1, {old}), (2, 1, {old}), (3, 1, {old}), (4, 1, {new})"
        ),
        "INSERT INTO dag_run_asset_event (dag_id, run_id, event_id) VALUES ('d', 's0', 1)".into(),
        format!(
            "INSERT INTO asset_dag_run_queue (target_dag_id, event_id, asset_id, created_at) \
             VALUES ('x', 2, 1, {old})"
        ),
        format!(
            "INSERT INTO audit_log (at, username, event) VALUES ({old}, 'u', 'old'), \
             ({old}, 'u', 'old'), ({new}, 'u', 'new')"
        ),
        format!(
            "INSERT INTO job (job_type, hostname, state, start_date, latest_heartbeat) VALUES \
             ('WorkerJob', 'h', 'running', {old}, {old}), \
             ('WorkerJob', 'h', 'running', {new}, {new})"
        ),
        // Triggers: 7 old and waited on by d/s3's task a (stays), 8 old orphan (goes).
        format!(
            "INSERT INTO trigger (id, classpath, kwargs, created_date) VALUES \
             (7, 'time', '{{}}', {old}), (8, 'time', '{{}}', {old})"
        ),
        "UPDATE task_instance SET trigger_id = 7 WHERE dag_id = 'd' AND run_id = 's3' \
         AND task_id = 'a'"
            .into(),
    ];
    for sql in raw {
        store.execute_raw(&sql).await.unwrap();
    }
    vec![
        ("d", "s0"),
        ("d", "s1"),
        ("d", "m2"),
        ("e", "e0"),
        ("e", "m2"),
        ("f", "f0"),
    ]
}

const ALL_RUNS: [(&str, &str); 13] = [
    ("d", "s0"),
    ("d", "s1"),
    ("d", "m2"),
    ("d", "s3"),
    ("d", "s10"),
    ("e", "e0"),
    ("e", "e1"),
    ("e", "m2"),
    ("f", "f0"),
    ("f", "f3"),
    ("f", "b1"),
    ("g", "g0"),
    ("g", "g1"),
];

#[tokio::test]
async fn clean_by_date_deletes_old_finished_runs_whole_and_keeps_what_airflow_keeps() {
    each_backend(|store| async move {
        let doomed = history(&store).await;
        let mut before = Vec::new();
        for (dag, run_id) in ALL_RUNS {
            before.push(rows_of(&store, dag, run_id).await);
        }
        // A finished run's rows are all there to be deleted.
        assert_eq!(before[0], [1, 2, 2, 8, 3, 4, 2, 1, 1]);

        let req = by_date(day(5), &[], 2);
        let req = CleanRequest {
            tables: CleanTable::ALL.to_vec(),
            ..req
        };
        let counts = store.clean_count(&req).await.unwrap();
        assert_eq!(counts.runs, doomed.len() as u64);
        let mut progress = Vec::new();
        let report = store
            .clean(&req, &mut |p: CleanProgress| progress.push(p))
            .await
            .unwrap();
        // The dry run's counts are what the clean deleted, table by table.
        assert_eq!(report.tables, counts.tables, "{report:?}");
        assert_eq!(report.runs, counts.runs);
        let count = |t: CleanTable| {
            report
                .tables
                .iter()
                .find(|(x, _)| *x == t)
                .map_or(0, |(_, n)| *n)
        };
        assert_eq!(count(CleanTable::DagRun), 6);
        assert_eq!(count(CleanTable::TaskInstance), 12);
        assert_eq!(count(CleanTable::LogChunk), 24);
        assert_eq!(count(CleanTable::DagRunAssetEvent), 1);
        assert_eq!(count(CleanTable::CallbackRequest), 1);
        assert_eq!(count(CleanTable::Log), 2);
        assert_eq!(count(CleanTable::Job), 1);
        assert_eq!(count(CleanTable::Trigger), 1);
        assert_eq!(count(CleanTable::AssetEvent), 2);
        // Six runs in batches of two: three transactions of runs, reported as they went.
        let run_batches: Vec<u64> = progress
            .iter()
            .filter(|p| p.table == CleanTable::DagRun)
            .map(|p| p.done)
            .collect();
        assert_eq!(run_batches, [2, 2, 2]);

        for ((dag, run_id), rows) in ALL_RUNS.into_iter().zip(before) {
            let after = rows_of(&store, dag, run_id).await;
            if doomed.contains(&(dag, run_id)) {
                assert_eq!(after, [0; 9], "{dag}/{run_id} left rows behind");
            } else {
                assert_eq!(after, rows, "{dag}/{run_id} lost rows");
            }
        }
        assert_eq!(store.count_raw("asset_event").await.unwrap(), 2);
        assert_eq!(
            store
                .count_raw("asset_event WHERE id IN (2, 4)")
                .await
                .unwrap(),
            2
        );
        assert_eq!(store.count_raw("trigger WHERE id = 7").await.unwrap(), 1);
        assert_eq!(store.count_raw("audit_log").await.unwrap(), 1);
        assert_eq!(store.count_raw("job").await.unwrap(), 1);

        // Nothing is left to delete.
        let again = store.clean_count(&req).await.unwrap();
        assert!(again.tables.iter().all(|(_, n)| *n == 0), "{again:?}");
    })
    .await;
}

#[tokio::test]
async fn a_table_of_runs_alone_keeps_the_runs_and_a_dry_run_deletes_nothing() {
    each_backend(|store| async move {
        let doomed = history(&store).await;
        let req = by_date(day(5), &[CleanTable::LogChunk, CleanTable::Log], 1000);
        let counts = store.clean_count(&req).await.unwrap();
        assert_eq!(
            counts.tables,
            [(CleanTable::LogChunk, 24), (CleanTable::Log, 2)]
        );
        // Counting deleted nothing: 12 finished runs of 2 tries of 2 lines.
        assert_eq!(store.count_raw("log_chunk").await.unwrap(), 12 * 4);
        let report = store.clean(&req, &mut |_| {}).await.unwrap();
        assert_eq!(report.tables, counts.tables);
        for (dag, run_id) in doomed {
            assert!(exists(&store, dag, run_id).await);
            let rows = rows_of(&store, dag, run_id).await;
            assert_eq!(rows[5], 0, "{dag}/{run_id}: its logs went");
            assert_eq!(rows[1], 2, "{dag}/{run_id}: its task instances stayed");
        }
        assert!(
            !store
                .log_read(&TiKey::new("d", "s10", "a", -1), 1, 0, 10)
                .await
                .unwrap()
                .lines
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn beyond_newest_keeps_n_runs_per_dag_and_the_latest_scheduled_one() {
    each_backend(|store| async move {
        use DagRunType::{Manual, Scheduled};
        let ok = Made::Ended(DagRunState::Success);
        for (i, id) in ["s0", "s1", "s2", "s3", "s4"].into_iter().enumerate() {
            run(&store, "d", id, Scheduled, i as i64, i as i64, ok).await;
        }
        // The newest two are manual: the latest scheduled run (s4) must stay anyway, or the
        // scheduler would make it again.
        run(&store, "d", "m5", Manual, 5, 5, ok).await;
        run(&store, "d", "m6", Manual, 6, 6, ok).await;
        // An old run still running is never trimmed.
        run(&store, "e", "r0", Scheduled, 0, 0, Made::Running).await;
        for (i, id) in ["e1", "e2", "e3"].into_iter().enumerate() {
            run(&store, "e", id, Scheduled, i as i64 + 1, i as i64 + 1, ok).await;
        }
        let req = CleanRequest {
            runs: RunSelection::BeyondNewest(2),
            tables: vec![CleanTable::DagRun],
            batch_size: 3,
        };
        let counts = store.clean_count(&req).await.unwrap();
        let report = store.clean(&req, &mut |_| {}).await.unwrap();
        assert_eq!(report.tables, counts.tables);
        assert_eq!(report.runs, 5);
        assert_eq!(report.batches, 2);
        let left: Vec<String> = store
            .dag_run_list("d", 100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(left, ["m6", "m5", "s4"]);
        let left: Vec<String> = store
            .dag_run_list("e", 100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(left, ["e3", "e2", "r0"]);
        // Standalone tables have no date to go by in a trim.
        let bad = CleanRequest {
            tables: vec![CleanTable::Log],
            ..req
        };
        assert!(store.clean(&bad, &mut |_| {}).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn logs_expire_deletes_the_lines_of_tries_that_ended_before_the_cutoff_only() {
    each_backend(|store| async move {
        use DagRunType::Scheduled;
        // Ended on day 0: its lines go. Ended on day 8: they stay.
        run(
            &store,
            "d",
            "old",
            Scheduled,
            0,
            0,
            Made::Ended(DagRunState::Success),
        )
        .await;
        run(
            &store,
            "d",
            "new",
            Scheduled,
            8,
            8,
            Made::Ended(DagRunState::Success),
        )
        .await;
        // Running since day 0 with lines from day 0: a try in flight keeps them.
        run(&store, "e", "live", Scheduled, 0, 0, Made::Running).await;
        let k = TiKey::new("e", "live", "a", -1);
        let change = |from: S, to: S| StateChange {
            key: k.clone(),
            from: vec![from],
            to,
            reason: None,
            next_retry_at: None,
        };
        store
            .ti_set_states(
                &[
                    change(S::NoStatus, S::Scheduled),
                    change(S::Scheduled, S::Queued),
                ],
                Actor::Scheduler,
                day(0),
            )
            .await
            .unwrap();
        let claimed = store
            .ti_claim("w1", "host", &["default".into()], 1, day(0))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        store
            .log_append(&k, 1, &[line(day(0), "x"), line(day(0), "y")])
            .await
            .unwrap();
        // Lines written after the cutoff stop the scan: with a batch of one line per read,
        // every line is a batch of its own.
        let deleted = store.logs_expire(day(5), 1).await.unwrap();
        assert_eq!(deleted, 4);
        let lines = |dag: &str, run_id: &str| {
            let store = store.clone();
            let key = TiKey::new(dag, run_id, "a", -1);
            async move { store.log_read(&key, 1, 0, 100).await.unwrap().lines.len() }
        };
        assert_eq!(lines("d", "old").await, 0);
        assert_eq!(lines("d", "new").await, 2);
        assert_eq!(lines("e", "live").await, 2);
        // Once the try ends (on day 1), its lines go at the next expiry.
        let finish = TiFinish {
            key: k.clone(),
            try_number: 1,
            worker_id: None,
            state: S::Success,
            reason: None,
            next_retry_at: None,
            xcom: None,
            rendered_fields: None,
            rendered_map_index: None,
            logs: Vec::new(),
            skip: Vec::new(),
            xcoms: Vec::new(),
            asset_events: Vec::new(),
            callbacks: Vec::new(),
        };
        assert!(store.ti_finish(&finish, day(1)).await.unwrap());
        assert_eq!(store.logs_expire(day(5), 1000).await.unwrap(), 2);
        assert_eq!(lines("e", "live").await, 0);
        assert_eq!(lines("d", "new").await, 2);
    })
    .await;
}

/// Figures for the README: `cargo test --release -p flow-store --test retention -- --ignored
/// --nocapture`. 10,000 finished runs of 10 task instances (each with a history row, four
/// transitions, an XCom and two log lines) cleaned in the default batches, while another
/// connection makes a tiny write transaction every 20 ms as the scheduler would: the longest
/// it waited is how long the clean held the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run by hand"]
async fn measure_clean_of_10000_runs() {
    for db in TestDb::all().await.unwrap() {
        let store = db.store.clone();
        let seq = |name: &str, n: i64| {
            format!("{name}(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM {name} WHERE i < {n})")
        };
        let with = format!(
            "WITH RECURSIVE {}, {}, {}",
            seq("n", 10_000),
            seq("m", 10),
            seq("k", 4)
        );
        let loads = [
            "INSERT INTO dag_run (dag_id, run_id, run_type, state, logical_date, run_after, \
             queued_at, start_date, end_date, updated_at) \
             SELECT 'bench', 'r' || i, 'manual', 'success', i, i, i, i, i + 1, i FROM n"
                .to_owned(),
            "INSERT INTO dag_run_transition (dag_id, run_id, run_type, to_state, at) \
             SELECT 'bench', 'r' || n.i, 'manual', 'success', n.i FROM n, k WHERE k.i <= 3"
                .to_owned(),
            "INSERT INTO task_instance (dag_id, run_id, task_id, map_index, state, try_number, \
             updated_at) SELECT 'bench', 'r' || n.i, 't' || m.i, -1, 'success', 1, n.i \
             FROM n, m"
                .to_owned(),
            "INSERT INTO task_instance_history (dag_id, run_id, task_id, map_index, try_number, \
             state, end_date) SELECT 'bench', 'r' || n.i, 't' || m.i, -1, 1, 'success', n.i \
             FROM n, m"
                .to_owned(),
            "INSERT INTO ti_transition (dag_id, run_id, task_id, map_index, try_number, \
             from_state, to_state, actor, at) SELECT 'bench', 'r' || n.i, 't' || m.i, -1, 1, \
             'none', 'scheduled', 'scheduler', n.i FROM n, m, k"
                .to_owned(),
            "INSERT INTO xcom (dag_id, run_id, task_id, map_index, key, value, timestamp) \
             SELECT 'bench', 'r' || n.i, 't' || m.i, -1, 'return_value', '1', n.i FROM n, m"
                .to_owned(),
            "INSERT INTO log_chunk (dag_id, run_id, task_id, map_index, try_number, at, \
             stream, line) SELECT 'bench', 'r' || n.i, 't' || m.i, -1, 1, n.i, 'stdout', \
             'a line of output' FROM n, m, k WHERE k.i <= 2"
                .to_owned(),
        ];
        for sql in loads {
            store.execute_raw(&format!("{with} {sql}")).await.unwrap();
        }
        store.analyze().await.unwrap();
        let rows: i64 = {
            let mut total = 0;
            for t in RUN_TABLES {
                total += store.count_raw(t).await.unwrap();
            }
            total
        };

        // The "scheduler": another pool making a tiny write transaction every 20 ms.
        let probe = Store::connect(&db.url).await.unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let prober = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut worst = std::time::Duration::ZERO;
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = std::time::Instant::now();
                    probe
                        .execute_raw("UPDATE dag_version SET version = version + 1 WHERE id = 1")
                        .await
                        .unwrap();
                    worst = worst.max(started.elapsed());
                    n += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                probe.close().await;
                (worst, n)
            })
        };
        let req = by_date(day(0), &[CleanTable::DagRun], 100);
        let started = std::time::Instant::now();
        let counts = store.clean_count(&req).await.unwrap();
        let counted = started.elapsed();
        let started = std::time::Instant::now();
        let report = store.clean(&req, &mut |_| {}).await.unwrap();
        let took = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (worst, probes) = prober.await.unwrap();
        assert_eq!(report.runs, 10_000);
        assert_eq!(report.rows() as i64, rows);
        assert_eq!(report.tables, counts.tables);
        eprintln!(
            "{:?}: {} runs, {} rows: dry-run count {:.2} s; clean {:.2} s in {} transactions \
             of {} runs, the longest {} ms; a concurrent write waited {} ms at most ({} writes)",
            db.backend(),
            report.runs,
            report.rows(),
            counted.as_secs_f64(),
            took.as_secs_f64(),
            report.batches,
            req.batch_size,
            report.longest_batch.as_millis(),
            worst.as_millis(),
            probes
        );
        db.drop_unchecked().await.unwrap();
    }
}
