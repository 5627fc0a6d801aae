//! The scheduler's background retention (`[core] max_runs_kept_per_dag`, `[logging]
//! retention_days`) on both backends: a DAG with catchup run by `Scheduler::pass` with the
//! test's clock and a fake worker, trimmed by `retention::pass`, then scheduled again to show
//! the trim never makes the scheduler re-create what it deleted; and `Scheduler::run` starting
//! the job.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone, Utc};
use flow_model::{DagRunType, TaskInstanceState as S};
use flow_scheduler::{RetentionConfig, Scheduler, SchedulerConfig, Wakeups, retention};
use flow_store::testing::TestDb;
use flow_store::{LogLine, Store, TiFinish, TiKey, TriggerRequest};

/// Daily from 2025-01-03 with catchup, one run at a time, so that each run starts at its own
/// instant.
const YAML: &str = "daily:\n  schedule: '@daily'\n  start_date: 2025-01-03\n  catchup: true\n  max_active_runs: 1\n  tasks:\n    t: {operator: empty}\n";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 8, 12, 0, 0).unwrap()
}

static NEXT_DIR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn dags_folder() -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("flow-retention-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dags.yaml"), YAML).unwrap();
    dir
}

fn config(dir: &std::path::Path) -> SchedulerConfig {
    SchedulerConfig {
        dags_folder: dir.to_path_buf(),
        dags_are_paused_at_creation: false,
        ..SchedulerConfig::default()
    }
}

/// Claims what is queued and ends it with success and a log line, as a worker would.
async fn work(store: &Store, now: DateTime<Utc>) -> usize {
    let claimed = store
        .ti_claim("w1", "host", &["default".to_owned()], 100, now)
        .await
        .unwrap();
    for ti in &claimed {
        let finish = TiFinish {
            worker_id: None,
            key: ti.key.clone(),
            try_number: ti.try_number,
            state: S::Success,
            reason: None,
            next_retry_at: None,
            xcom: None,
            rendered_fields: None,
            rendered_map_index: None,
            logs: vec![LogLine {
                at: now,
                stream: "stdout".into(),
                line: "done".into(),
            }],
            skip: Vec::new(),
            xcoms: Vec::new(),
            asset_events: Vec::new(),
            callbacks: Vec::new(),
        };
        assert!(store.ti_finish(&finish, now).await.unwrap());
    }
    claimed.len()
}

async fn run_ids(store: &Store) -> Vec<String> {
    store
        .dag_run_list("daily", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect()
}

async fn log_lines(store: &Store, run_id: &str) -> usize {
    store
        .log_read(&TiKey::new("daily", run_id, "t", -1), 1, 0, 100)
        .await
        .unwrap()
        .lines
        .len()
}

#[tokio::test]
async fn max_runs_kept_per_dag_trims_finished_runs_and_the_schedule_goes_on() {
    for db in TestDb::all().await.unwrap() {
        let dir = dags_folder();
        let store = db.store.clone();
        let mut sched = Scheduler::new(store.clone(), config(&dir), Wakeups::default());
        let mut now = t0();
        // The catchup runs 01-03 .. 01-07, one at a time, a minute apart.
        for _ in 0..30 {
            sched.pass(now).await.unwrap();
            work(&store, now).await;
            now += Duration::seconds(60);
        }
        sched.pass(now).await.unwrap();
        let scheduled = run_ids(&store).await;
        assert_eq!(scheduled.len(), 5, "{scheduled:?}");
        // Then a backfill of 01-01 (the latest non-manual run to start, which Airflow's
        // rule keeps) and two manual runs, newer than all of them.
        let (data, hash) = store.serialized_dag_get("daily").await.unwrap().unwrap();
        let dag = flow_dag::Dag::from_json(&data).unwrap();
        let day = |d: u32| Utc.with_ymd_and_hms(2025, 1, d, 0, 0, 0).unwrap();
        let backfill = TriggerRequest {
            run_id: Some("backfill_1".into()),
            run_type: DagRunType::Backfill,
            logical_date: Some(day(1)),
            data_interval: Some((day(1), day(2))),
            run_after: Some(day(2)),
            conf: serde_json::json!({}),
            note: None,
            triggered_by: Some("test".into()),
        };
        let manual = |id: &str| {
            let mut req = TriggerRequest::manual(serde_json::json!({}));
            req.run_id = Some(id.to_owned());
            req
        };
        for req in [backfill, manual("manual_1"), manual("manual_2")] {
            store.dag_run_trigger(&dag, &hash, &req, now).await.unwrap();
            for _ in 0..4 {
                sched.pass(now).await.unwrap();
                work(&store, now).await;
                now += Duration::seconds(60);
            }
        }
        let all = run_ids(&store).await;
        assert_eq!(all.len(), 8, "{all:?}");
        for r in store.dag_run_list("daily", 100).await.unwrap() {
            assert_eq!(r.state, flow_model::DagRunState::Success, "{}", r.run_id);
        }

        let keep_two = RetentionConfig {
            max_runs_kept_per_dag: Some(2),
            log_retention_days: None,
        };
        let report = retention::pass(&store, keep_two, now).await.unwrap();
        assert_eq!(report.runs, 4);
        // The newest two are kept, the backfill (Airflow's rule) and the latest scheduled
        // run, which the next run is computed from: without it, the scheduler would compute
        // from the backfill's 01-01 and make 01-02 .. 01-07 again.
        let latest_scheduled = "scheduled__2025-01-07T00:00:00+00:00";
        assert_eq!(
            run_ids(&store).await,
            ["manual_2", "manual_1", latest_scheduled, "backfill_1"]
        );
        // Scheduling goes on from there: nothing deleted comes back, the next day comes.
        for _ in 0..3 {
            sched.pass(now).await.unwrap();
            work(&store, now).await;
            now += Duration::seconds(60);
        }
        assert_eq!(run_ids(&store).await.len(), 4);
        now = Utc.with_ymd_and_hms(2025, 1, 9, 0, 0, 30).unwrap();
        for _ in 0..3 {
            sched.pass(now).await.unwrap();
            work(&store, now).await;
            now += Duration::seconds(60);
        }
        let runs = run_ids(&store).await;
        assert_eq!(runs.len(), 5, "{runs:?}");
        assert!(runs.contains(&"scheduled__2025-01-08T00:00:00+00:00".to_owned()));
        // The new run pushes manual_1 out, and it is the latest scheduled run and the latest
        // to start: 01-07 and the backfill go too.
        assert_eq!(
            retention::pass(&store, keep_two, now).await.unwrap().runs,
            3
        );
        let the_8th = "scheduled__2025-01-08T00:00:00+00:00";
        assert_eq!(run_ids(&store).await, [the_8th, "manual_2"]);

        // Logs: the tries that ended over a day ago (manual_2's, on 01-08 at noon) lose their
        // lines; the one that ended on 01-09 keeps its.
        assert_eq!(log_lines(&store, "manual_2").await, 1);
        let logs_one_day = RetentionConfig {
            max_runs_kept_per_dag: None,
            log_retention_days: Some(1),
        };
        let later = Utc.with_ymd_and_hms(2025, 1, 10, 0, 0, 0).unwrap();
        let report = retention::pass(&store, logs_one_day, later).await.unwrap();
        assert_eq!(report.log_lines, 1, "{report:?}");
        assert_eq!(log_lines(&store, "manual_2").await, 0);
        assert_eq!(log_lines(&store, the_8th).await, 1);

        let _ = std::fs::remove_dir_all(&dir);
        db.drop_db().await.unwrap();
    }
}

#[tokio::test]
async fn the_running_scheduler_starts_the_retention_job() {
    for db in TestDb::all().await.unwrap() {
        let dir = dags_folder();
        let store = db.store.clone();
        let mut sched = Scheduler::new(store.clone(), config(&dir), Wakeups::default());
        let mut now = t0();
        for _ in 0..30 {
            sched.pass(now).await.unwrap();
            work(&store, now).await;
            now += Duration::seconds(60);
        }
        assert_eq!(run_ids(&store).await.len(), 5);
        // Paused, so that the real clock's passes add no runs.
        store.dag_set_paused("daily", true).await.unwrap();
        let cfg = SchedulerConfig {
            retention: RetentionConfig {
                max_runs_kept_per_dag: Some(3),
                log_retention_days: None,
            },
            ..config(&dir)
        };
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let running =
            tokio::spawn(Scheduler::new(store.clone(), cfg, Wakeups::default()).run(shutdown));
        // The job's first pass runs as the scheduler starts.
        let deadline = std::time::Instant::now() + StdDuration::from_secs(60);
        while run_ids(&store).await.len() > 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the retention job never trimmed the runs"
            );
            tokio::time::sleep(StdDuration::from_millis(50)).await;
        }
        stop.send(true).unwrap();
        running.await.unwrap();
        assert_eq!(run_ids(&store).await.len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
        db.drop_db().await.unwrap();
    }
}
