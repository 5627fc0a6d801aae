//! `flow db clean` and the scheduler's retention settings through the real binary: runs made
//! through the store with dates in the past, then the command (or a `flow standalone` with
//! `FLOW__CORE__MAX_RUNS_KEPT_PER_DAG`) on the same database.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use flow_model::{DagRunState, DagRunType};
use flow_store::testing::TestDb;
use flow_store::{NewDagRun, NewTaskInstance, Store};

/// A scratch FLOW_HOME and dags folder on the test's database.
struct Env {
    home: PathBuf,
    url: String,
}

impl Env {
    fn new(url: &str) -> Env {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let home = std::env::temp_dir().join(format!("flow-clean-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(home.join("dags")).unwrap();
        Env {
            home,
            url: url.to_owned(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flow"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("FLOW_HOME", &self.home)
            .env("FLOW__CORE__DAGS_FOLDER", self.home.join("dags"))
            .env("FLOW__DATABASE__URL", &self.url)
            .env("FLOW__LOGGING__LEVEL", "warn")
            .env("FLOW__WEBSERVER__WEB_SERVER_PORT", "0")
            .stdin(Stdio::null());
        c
    }

    /// Runs `flow ARGS` with stdin not a terminal; returns (success, stdout, stderr).
    fn flow(&self, args: &[&str]) -> (bool, String, String) {
        let out: Output = self.command().args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A run of `dag` queued `days_ago` days ago with two task instances; ended by hand (as
/// `flow dags ... mark` would) unless `end` is `None`.
async fn run(
    store: &Store,
    dag: &str,
    run_id: &str,
    run_type: DagRunType,
    days_ago: i64,
    end: Option<DagRunState>,
) {
    let at = Utc::now() - Duration::days(days_ago);
    let tis: Vec<NewTaskInstance> = ["a", "b"]
        .iter()
        .map(|t| NewTaskInstance {
            task_id: (*t).into(),
            map_index: -1,
            max_tries: 1,
            operator: "BashOperator".into(),
            queue: "default".into(),
            pool: "default_pool".into(),
            pool_slots: 1,
            priority_weight: 1,
        })
        .collect();
    let new = NewDagRun {
        dag_id: dag.into(),
        run_id: run_id.into(),
        run_type,
        state: DagRunState::Queued,
        logical_date: Some(at),
        data_interval_start: Some(at),
        data_interval_end: Some(at),
        run_after: at,
        conf: serde_json::json!({}),
        note: None,
        triggered_by: Some("test".into()),
        dag_hash: "h".into(),
    };
    store.dag_run_create(&new, &tis, at).await.unwrap().unwrap();
    if let Some(state) = end {
        assert!(store.dag_run_mark(dag, run_id, state, at).await.unwrap());
    }
}

async fn runs_left(store: &Store, dag: &str) -> Vec<String> {
    let mut ids: Vec<String> = store
        .dag_run_list(dag, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    ids.sort();
    ids
}

/// The row of `table` in the command's table of counts.
fn count_of(stdout: &str, table: &str) -> Option<u64> {
    stdout.lines().find_map(|l| {
        let mut cells = l.split_whitespace();
        (cells.next() == Some(table))
            .then(|| cells.next()?.parse().ok())
            .flatten()
    })
}

#[tokio::test]
async fn db_clean_deletes_old_finished_runs_refuses_bad_input_and_dry_runs() {
    for db in TestDb::all().await.unwrap() {
        eprintln!("backend: {:?}", db.backend());
        let store = db.store.clone();
        use DagRunType::{Manual, Scheduled};
        let ok = Some(DagRunState::Success);
        run(&store, "d", "old_manual_1", Manual, 30, ok).await;
        run(
            &store,
            "d",
            "old_manual_2",
            Manual,
            20,
            Some(DagRunState::Failed),
        )
        .await;
        run(&store, "d", "old_scheduled_1", Scheduled, 40, ok).await;
        // The DAG's latest non-manual run: kept, as Airflow keeps it.
        run(&store, "d", "old_scheduled_2", Scheduled, 35, ok).await;
        // Never finished: kept whatever its age.
        run(&store, "d", "old_queued", Manual, 30, None).await;
        run(&store, "d", "new_manual", Manual, 1, ok).await;
        let all = runs_left(&store, "d").await;
        let env = Env::new(&db.url);
        let before = iso(Utc::now() - Duration::days(10));

        // A dry run says what would go, and deletes nothing.
        let (ok_, out, err) = env.flow(&[
            "db",
            "clean",
            "--clean-before-timestamp",
            &before,
            "--dry-run",
        ]);
        assert!(ok_, "{err}");
        eprintln!("{out}");
        assert_eq!(count_of(&out, "dag_run"), Some(3), "{out}");
        assert_eq!(count_of(&out, "task_instance"), Some(6), "{out}");
        assert!(out.contains("Performing dry run"), "{out}");
        assert_eq!(runs_left(&store, "d").await, all);

        // No terminal to confirm on, no --yes: refused, nothing deleted.
        let (ok_, _, err) = env.flow(&["db", "clean", "--clean-before-timestamp", &before]);
        assert!(!ok_);
        assert!(err.contains("stdin is not a terminal. Pass --yes"), "{err}");
        assert_eq!(runs_left(&store, "d").await, all);

        // A timestamp in the future needs --yes and --allow-future.
        let future = iso(Utc::now() + Duration::days(1));
        for extra in [&["--yes"][..], &["--allow-future"][..]] {
            let mut args = vec!["db", "clean", "--clean-before-timestamp", &future];
            args.extend_from_slice(extra);
            let (ok_, _, err) = env.flow(&args);
            assert!(!ok_, "{extra:?}");
            assert!(err.contains("is in the future"), "{err}");
            assert!(err.contains("Pass --yes --allow-future"), "{err}");
        }
        let (ok_, out, err) = env.flow(&[
            "db",
            "clean",
            "--clean-before-timestamp",
            &future,
            "--yes",
            "--allow-future",
            "--tables",
            "job",
        ]);
        assert!(ok_, "{err}");
        assert!(out.contains("Nothing to delete"), "{out}");

        // A timestamp that does not parse, an unknown table: clear errors.
        let (ok_, _, err) = env.flow(&["db", "clean", "--clean-before-timestamp", "last tuesday"]);
        assert!(!ok_);
        assert!(
            err.contains("--clean-before-timestamp: invalid date `last tuesday`")
                && err.contains("for example --clean-before-timestamp '2025-01-01 00:00:00+01:00'"),
            "{err}"
        );
        let (ok_, _, err) = env.flow(&[
            "db",
            "clean",
            "--clean-before-timestamp",
            &before,
            "--tables",
            "xcom,dagrun",
            "--yes",
        ]);
        assert!(!ok_);
        assert!(
            err.contains("unknown table `dagrun` (did you mean `dag_run`?)")
                && err.contains("valid tables: dag_run, task_instance, task_instance_history"),
            "{err}"
        );
        assert_eq!(runs_left(&store, "d").await, all);

        // The real thing, in batches of one run.
        let (ok_, out, err) = env.flow(&[
            "db",
            "clean",
            "--clean-before-timestamp",
            &before,
            "--yes",
            "--batch-size",
            "1",
        ]);
        assert!(ok_, "{err}");
        eprintln!("{out}");
        assert!(out.contains("Deleted:"), "{out}");
        assert_eq!(count_of(&out, "dag_run"), Some(3), "{out}");
        assert!(out.contains(" transactions, the longest "), "{out}");
        assert_eq!(
            runs_left(&store, "d").await,
            ["new_manual", "old_queued", "old_scheduled_2"]
        );
        assert_eq!(
            store
                .count_raw("task_instance WHERE run_id LIKE 'old_manual%'")
                .await
                .unwrap(),
            0
        );
        drop(env);
        db.drop_db().await.unwrap();
    }
}

/// `flow standalone` with FLOW__CORE__MAX_RUNS_KEPT_PER_DAG trims old runs as it starts; a
/// value that is not a count stops it with the setting's name.
#[tokio::test]
async fn standalone_applies_max_runs_kept_per_dag() {
    let db = TestDb::sqlite().await.unwrap();
    let store = db.store.clone();
    for (i, id) in ["w1", "w2", "w3", "w4"].into_iter().enumerate() {
        run(
            &store,
            "w",
            id,
            DagRunType::Manual,
            10 - i as i64,
            Some(DagRunState::Success),
        )
        .await;
    }
    let env = Env::new(&db.url);

    let mut bad = env.command();
    bad.env("FLOW__CORE__MAX_RUNS_KEPT_PER_DAG", "0");
    let out = bad.arg("standalone").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FLOW__CORE__MAX_RUNS_KEPT_PER_DAG must be a whole number of at least 1"),
        "{err}"
    );

    let mut cmd = env.command();
    cmd.env("FLOW__CORE__MAX_RUNS_KEPT_PER_DAG", "2")
        .env("FLOW__LOGGING__RETENTION_DAYS", "7")
        .arg("standalone")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + StdDuration::from_secs(60);
    while runs_left(&store, "w").await.len() > 2 {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("the standalone never trimmed the runs");
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(runs_left(&store, "w").await, ["w3", "w4"]);
    drop(env);
    db.drop_db().await.unwrap();
}
