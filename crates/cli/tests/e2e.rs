//! End to end through the real binary: `flow standalone` in the background, `flow dags
//! trigger --wait` and friends against it, on SQLite and on PostgreSQL.
//!
//! Every test gets its own FLOW_HOME, dags folder and database. PostgreSQL is skipped loudly
//! outside CI when unreachable (see `flow_store::testing`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flow_store::testing::TestDb;

mod common;

fn flow_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flow")
}

/// A scratch FLOW_HOME with a dags folder and a database URL.
struct Env {
    home: PathBuf,
    dags: PathBuf,
    db_url: String,
    standalone: Option<Child>,
}

impl Env {
    fn new(db_url: &str) -> Env {
        let home = std::env::temp_dir().join(format!(
            "flow-e2e-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let dags = home.join("dags");
        std::fs::create_dir_all(&dags).unwrap();
        Env {
            home,
            dags,
            db_url: db_url.to_owned(),
            standalone: None,
        }
    }

    fn write_dag(&self, name: &str, yaml: &str) {
        std::fs::write(self.dags.join(name), yaml).unwrap();
    }

    fn copy_examples(&self) {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dags");
        copy_dir(&examples, &self.dags);
    }

    fn command(&self) -> Command {
        let mut c = Command::new(flow_bin());
        c.env("FLOW_HOME", &self.home)
            .env("FLOW__CORE__DAGS_FOLDER", &self.dags)
            .env("FLOW__DATABASE__URL", &self.db_url)
            .env("FLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "false")
            .env("FLOW__LOGGING__LEVEL", "warn")
            // Tests run side by side: let the system pick the web UI's port.
            .env("FLOW__WEBSERVER__WEB_SERVER_PORT", "0")
            .env("TMPDIR", &self.home);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    fn start(&mut self) {
        let child = self
            .command()
            .arg("standalone")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.standalone = Some(child);
    }

    /// `flow dags trigger --wait`, bounded so a hung run fails the test instead of hanging it.
    fn trigger_wait(&self, dag_id: &str, extra: &[&str]) -> (bool, String) {
        let mut args = vec!["dags", "trigger", dag_id, "--wait"];
        args.extend_from_slice(extra);
        let mut child = self
            .command()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                return (status.success(), text);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("dag {dag_id} did not finish within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "flow {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut child) = self.standalone.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The run id printed by `flow dags trigger`.
fn run_id_of(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix("created dag run "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("trigger prints the run id")
        .to_owned()
}

/// `task_id -> state` from `flow tasks states`.
fn states(env: &Env, dag_id: &str, run_id: &str) -> std::collections::HashMap<String, String> {
    env.stdout(&["tasks", "states", dag_id, run_id])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

async fn databases() -> Vec<TestDb> {
    TestDb::all().await.unwrap()
}

/// A scratch environment on `db`. The binary migrates on its own: the test's connections
/// close, and the daemon gets the database through its URL only.
async fn env_on(db: &TestDb) -> Env {
    db.store.close().await;
    Env::new(&db.url)
}

const SCENARIOS: &str = r#"
retry_then_success:
  tasks:
    flaky:
      operator: bash
      retries: 2
      retry_delay: 1s
      bash_command: |
        if [ ! -f "$TMPDIR/flaky-{{ run_id }}" ]; then touch "$TMPDIR/flaky-{{ run_id }}"; echo "first try fails"; exit 1; fi
        echo "second try works"
failing:
  tasks:
    boom:
      operator: bash
      bash_command: echo "about to fail" && exit 3
    after_boom:
      operator: bash
      bash_command: echo never
      dependencies: [boom]
    cleanup:
      operator: empty
      trigger_rule: all_done
      dependencies: [boom]
xcom_pass:
  params: {greeting: hello}
  tasks:
    produce:
      operator: bash
      bash_command: echo "{{ params.greeting }}-{{ dag_run.conf.get('who', 'nobody') }}"
    consume:
      operator: bash
      bash_command: test "{{ ti.xcom_pull(task_ids='produce') }}" = "hello-flow"
      dependencies: [produce]
backfilled:
  schedule: "@daily"
  start_date: 2025-01-01
  catchup: false
  is_paused_upon_creation: true
  tasks:
    day:
      operator: bash
      bash_command: echo "{{ ds }}" >> "$TMPDIR/backfill.txt"
timeout:
  tasks:
    slow:
      operator: bash
      execution_timeout: 2s
      bash_command: sleep 300 & echo $! > "$TMPDIR/timeout-child.pid"; wait
"#;

#[tokio::test]
async fn examples_and_scenarios_run_end_to_end() {
    for db in databases().await {
        eprintln!("backend: {:?}", db.backend());
        let mut env = env_on(&db).await;
        env.copy_examples();
        env.write_dag("scenarios.yaml", SCENARIOS);
        env.start();

        for dag in [
            "etl_daily",
            "fan_out_fan_in",
            "ml_train_validate_deploy",
            "weekday_reports",
        ] {
            let (ok, out) = env.trigger_wait(dag, &[]);
            assert!(ok, "{dag} should succeed:\n{out}");
        }
        // etl_daily's load updated `warehouse://orders`: orders_report ran on it.
        let report = wait_asset_run(&env, "orders_report");
        let log = env.stdout(&["tasks", "logs", "orders_report", &report, "report"]);
        assert!(
            log.contains("warehouse://orders updated at") && log.contains("by etl_daily.load"),
            "{log}"
        );
        // fan-out: exit 99 skipped a partition, the failure branch was skipped.
        let runs = env.stdout(&["runs", "list", "fan_out_fan_in"]);
        let run_id = runs
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        let s = states(&env, "fan_out_fan_in", &run_id);
        assert_eq!(s["partition_d"], "skipped");
        assert_eq!(s["alert"], "skipped");
        assert_eq!(s["report"], "success");
        assert_eq!(s["cleanup"], "success");

        // Dynamic task mapping: one instance per partition the listing returned, each named
        // by its map_index_template; the downstream task gets every result in order.
        let (ok, out) = env.trigger_wait("partitioned_load", &[]);
        assert!(ok, "partitioned_load should succeed:\n{out}");
        let run_id = run_id_of(&out);
        let table = env.stdout(&["tasks", "states", "partitioned_load", &run_id]);
        for (i, name) in ["orders_eu", "orders_us", "orders_apac"].iter().enumerate() {
            let line = table
                .lines()
                .find(|l| l.starts_with(&format!("load_partition[{i}] ")))
                .unwrap_or_else(|| panic!("no load_partition[{i}] in\n{table}"));
            assert!(
                line.contains(" success ") && line.trim_end().ends_with(name),
                "{table}"
            );
        }
        let log = env.stdout(&["tasks", "logs", "partitioned_load", &run_id, "check_totals"]);
        assert!(
            log.contains("3 partitions, 245 rows: [120, 80, 45]"),
            "{log}"
        );
        let log = env.stdout(&[
            "tasks",
            "logs",
            "partitioned_load",
            &run_id,
            "announce",
            "--map-index",
            "0",
        ]);
        assert!(log.contains("245 rows loaded"), "{log}");
        // One map index cleared runs again alone (in every run: the daily schedule made one
        // too).
        let out = env.stdout(&[
            "tasks",
            "clear",
            "partitioned_load",
            "-t",
            "^load_partition$",
            "--map-index",
            "1",
            "--yes",
        ]);
        assert!(
            out.lines()
                .all(|l| !l.contains("load_partition[0]") && !l.contains("load_partition[2]")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{run_id} load_partition[1] (success)")),
            "{out}"
        );
        wait_for(60, "load_partition[1] to run again", || {
            let table = env.stdout(&["tasks", "states", "partitioned_load", &run_id]);
            table
                .lines()
                .any(|l| {
                    l.starts_with("load_partition[1] ")
                        && l.contains(" success ")
                        && l.contains(" 2 ")
                })
                .then_some(())
        });
        let table = env.stdout(&["tasks", "states", "partitioned_load", &run_id]);
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("load_partition[0] ") && l.contains(" 1 ")),
            "only map index 1 ran again:\n{table}"
        );

        let (ok, out) = env.trigger_wait("retry_then_success", &[]);
        assert!(ok, "{out}");
        assert!(
            out.contains("up_for_retry"),
            "the first try should fail:\n{out}"
        );

        let (ok, out) = env.trigger_wait("failing", &[]);
        assert!(!ok, "{out}");
        let run_id = run_id_of(&out);
        let s = states(&env, "failing", &run_id);
        assert_eq!(s["boom"], "failed");
        assert_eq!(s["after_boom"], "upstream_failed");
        assert_eq!(s["cleanup"], "success");
        let log = env.stdout(&["tasks", "logs", "failing", &run_id, "boom"]);
        assert!(log.contains("about to fail"), "{log}");
        assert!(
            log.contains("exit code 3") || log.contains("exited with 3") || log.contains(" 3"),
            "{log}"
        );

        let (ok, out) = env.trigger_wait("xcom_pass", &["--conf", r#"{"who": "flow"}"#]);
        assert!(ok, "{out}");

        let (ok, out) = env.trigger_wait("timeout", &[]);
        assert!(!ok, "{out}");
        let pid: i32 = std::fs::read_to_string(env.home.join("timeout-child.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "the timed-out task's background child {pid} survived"
        );

        // `tasks test` runs one task here, rendering for the given date, recording nothing.
        let out = env.run(&["tasks", "test", "etl_daily", "extract", "2025-03-01"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("extracted 100 rows for 2025-03-01"), "{text}");

        // Clear a finished task: it runs again as try 2.
        let runs = env.stdout(&["runs", "list", "xcom_pass"]);
        let run_id = runs
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        // Without --yes it only lists, and says so with a non-zero exit.
        let listed = env.run(&["tasks", "clear", "xcom_pass", "-t", "^consume$"]);
        assert!(!listed.status.success());
        assert!(String::from_utf8_lossy(&listed.stdout).contains("consume"));
        let cleared = env.stdout(&["tasks", "clear", "xcom_pass", "-t", "^consume$", "--yes"]);
        assert!(cleared.contains("cleared 1 task instance"), "{cleared}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let table = env.stdout(&["tasks", "states", "xcom_pass", &run_id]);
            let consume = table
                .lines()
                .find(|l| l.starts_with("consume"))
                .unwrap()
                .to_owned();
            let cols: Vec<&str> = consume.split_whitespace().collect();
            if cols[1] == "success" && cols[2] == "2" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cleared task did not rerun: {consume}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        // Backfill a paused DAG's three days: the runs are created, and run once unpaused.
        let dry = env.stdout(&[
            "dags",
            "backfill",
            "backfilled",
            "-s",
            "2025-01-01",
            "-e",
            "2025-01-03",
            "--dry-run",
        ]);
        assert!(dry.contains("3 run(s)"), "{dry}");
        assert!(env.run(&["dags", "unpause", "backfilled"]).status.success());
        let out = env.run(&[
            "dags",
            "backfill",
            "backfilled",
            "-s",
            "2025-01-01",
            "-e",
            "2025-01-03",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let days = std::fs::read_to_string(env.home.join("backfill.txt")).unwrap();
        // Unpausing also lets the scheduler create its latest scheduled run (catchup is off).
        let mut days: Vec<&str> = days.lines().filter(|d| d.starts_with("2025")).collect();
        days.sort_unstable();
        assert_eq!(days, ["2025-01-01", "2025-01-02", "2025-01-03"]);
        let runs = env.stdout(&["runs", "list", "backfilled"]);
        assert_eq!(runs.matches("backfill ").count(), 3, "{runs}");

        drop(env);
        // Every transition the daemon recorded was one the model allows.
        db.drop_db().await.unwrap();
    }
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let db = TestDb::sqlite().await.unwrap();
    let env = env_on(&db).await;
    env.write_dag("ok.yaml", "ok_dag:\n  tasks:\n    a: {operator: empty}\n");

    let out = env.run(&["dags", "trigger", "no_such_dag"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dag `no_such_dag` not found"), "{err}");

    let out = env.run(&["dags", "trigger", "ok_dag", "--conf", "{not json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--conf is not valid JSON"), "{err}");

    let out = env.run(&["dags", "trigger", "ok_dag", "--conf", "[1, 2]"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("JSON object"));

    // Typed params are checked when the run is made (Airflow's message), and a manual run
    // may not take a reserved run id.
    env.write_dag(
        "typed.yaml",
        "typed:\n  params:\n    n: {__type__: airflow.sdk.Param, default: 1, type: integer}\n  tasks:\n    a: {operator: empty}\n",
    );
    let out = env.run(&["dags", "trigger", "typed", "--conf", r#"{"n": "1; id"}"#]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Invalid input for param n: '1; id' is not of type 'integer'"),
        "{err}"
    );
    let out = env.run(&[
        "dags",
        "trigger",
        "typed",
        "--run-id",
        "scheduled__2025-01-01T00:00:00+00:00",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reserved for scheduled runs"), "{err}");
    assert!(
        String::from_utf8_lossy(&env.run(&["runs", "list", "typed"]).stdout)
            .lines()
            .count()
            <= 1
    );

    // Paused: the run is created and the command says why it will wait.
    assert!(env.run(&["dags", "pause", "ok_dag"]).status.success());
    let out = env.run(&["dags", "trigger", "ok_dag", "--run-id", "manual_1"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is paused"));
    let out = env.run(&["dags", "trigger", "ok_dag", "--run-id", "manual_1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    drop(env);
    db.drop_db().await.unwrap();
}

/// A named pipe and a link to /etc/passwd dropped into the dags folder: the scheduler does
/// not hang on the pipe (reading one blocks forever) and does not show the file behind the
/// link; both are import errors naming the file, and the other DAGs run.
#[tokio::test]
async fn stray_files_in_the_dags_folder_never_stop_the_scheduler() {
    let db = TestDb::sqlite().await.unwrap();
    let mut env = env_on(&db).await;
    let fifo = env.dags.join("trap.yaml");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::os::unix::fs::symlink("/etc/passwd", env.dags.join("passwd.yaml")).unwrap();
    env.write_dag(
        "ok.yaml",
        "ok_dag:\n  tasks:\n    a: {operator: bash, bash_command: echo fine}\n",
    );
    env.start();
    let (ok, out) = env.trigger_wait("ok_dag", &[]);
    assert!(ok, "{out}");
    // The scheduler recorded both as import errors...
    let listed = env.run(&["dags", "list"]);
    let stored = String::from_utf8_lossy(&listed.stderr);
    assert!(
        stored.contains("2 file(s) have import errors")
            && stored.contains("trap.yaml")
            && stored.contains("passwd.yaml"),
        "{stored}"
    );
    // ...saying why.
    let validated = env.run(&["dags", "validate"]);
    assert!(!validated.status.success());
    let errors = String::from_utf8_lossy(&validated.stderr);
    assert!(
        errors.contains("trap.yaml:1:1: error: not a regular file (a named pipe)"),
        "{errors}"
    );
    assert!(
        errors.contains("passwd.yaml") && errors.contains("leads outside the dags folder"),
        "{errors}"
    );
    assert!(!errors.contains("root:x:0:0"), "{errors}");
    drop(env);
    db.drop_db().await.unwrap();
}

/// `$FLOW_HOME` is the owner's alone: the folder 0700, the SQLite database and its WAL 0600,
/// even where the database file already existed with the umask's mode.
#[tokio::test]
async fn flow_home_and_the_database_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = std::env::temp_dir().join(format!("flow-private-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let home = root.join("home");
    let out = Command::new(flow_bin())
        .env("FLOW_HOME", &home)
        .env_remove("FLOW__DATABASE__URL")
        .args(["db", "migrate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("flow.db")), 0o600);
    for wal in ["flow.db-wal", "flow.db-shm"] {
        let p = home.join(wal);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{wal}");
        }
    }
    // A database file made with the umask's mode (an older flow) is made private.
    let loose = root.join("loose.db");
    std::fs::write(&loose, b"").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(flow_bin())
        .env("FLOW_HOME", &home)
        .env("FLOW__DATABASE__URL", &loose)
        .args(["db", "migrate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&loose), 0o600);
    std::fs::remove_dir_all(&root).unwrap();
}

/// The task instances of `dag_id`'s unfinished runs, one line each, for a failure message.
async fn unfinished_task_instances(url: &str, dag_id: &str) -> String {
    let store = flow_store::Store::connect(url).await.unwrap();
    let mut out = String::new();
    let runs = store.dag_run_list(dag_id, 100).await.unwrap_or_default();
    for run in runs
        .iter()
        .filter(|r| r.state != flow_model::DagRunState::Success)
    {
        for t in store.ti_list_for_run(dag_id, &run.run_id).await.unwrap() {
            out.push_str(&format!(
                "{} {} state={} try={}/{} worker={:?} heartbeat={:?} queued={:?} start={:?} end={:?} retry_at={:?} next_method={:?} updated={}\n",
                run.run_id,
                t.key.task_id,
                t.state,
                t.try_number,
                t.max_tries,
                t.worker_id,
                t.last_heartbeat_at,
                t.queued_dttm,
                t.start_date,
                t.end_date,
                t.next_retry_at,
                t.next_method,
                t.updated_at
            ));
        }
    }
    store.close().await;
    out
}

const LEDGER_DAG: &str = r#"
ledger:
  max_active_runs: 20
  default_args:
    retries: 3
    retry_delay: 1s
  tasks:
"#;

/// `kill -9` the standalone process three times while 20 runs of a 10-task DAG are in
/// flight, restarting it each time: every run finishes, none is created twice, and no task
/// instance ever ran twice at the same time (each try appends start and end marks, with its
/// try number, to a ledger file).
#[tokio::test]
async fn killed_scheduler_loses_nothing_and_never_overlaps_tries() {
    for db in databases().await {
        eprintln!("backend: {:?}", db.backend());
        let mut env = env_on(&db).await;
        let ledger = env.home.join("ledger.txt");
        let mut yaml = LEDGER_DAG.to_owned();
        for i in 0..10 {
            yaml.push_str(&format!(
                "    t{i}:\n      operator: bash\n      bash_command: |\n        echo \"start {{{{ run_id }}}} t{i} {{{{ ti.try_number }}}} $(date +%s%N)\" >> {ledger}\n        sleep 0.2\n        echo \"end {{{{ run_id }}}} t{i} {{{{ ti.try_number }}}} $(date +%s%N)\" >> {ledger}\n",
                ledger = ledger.display()
            ));
            if i > 0 && i % 3 != 0 {
                yaml.push_str(&format!("      dependencies: [t{}]\n", i - 1));
            }
        }
        env.write_dag("ledger.yaml", &yaml);
        // A short zombie threshold so that tries lost with the killed process are retried soon;
        // each try takes 0.2 s, far less, so a retry never meets its predecessor.
        // Each life's warnings, appended to one file, for the failure message.
        let daemon_log = env.home.join("standalone.log");
        let start = |env: &mut Env| {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&daemon_log)
                .unwrap();
            let child = env
                .command()
                .env("FLOW__SCHEDULER__ZOMBIE_THRESHOLD", "3")
                .arg("standalone")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            env.standalone = Some(child);
        };
        start(&mut env);
        for i in 0..20 {
            let out = env.run(&["dags", "trigger", "ledger", "--run-id", &format!("r{i:02}")]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(700));
            let mut child = env.standalone.take().unwrap();
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            start(&mut env);
        }
        // Every run finishes.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let runs = env.stdout(&["runs", "list", "ledger", "--limit", "100"]);
            let rows: Vec<&str> = runs.lines().skip(1).collect();
            assert_eq!(rows.len(), 20, "runs created: {runs}");
            let done = rows.iter().filter(|r| r.contains(" success ")).count();
            if done == 20 {
                break;
            }
            assert!(!runs.contains(" failed "), "{runs}");
            if Instant::now() >= deadline {
                let tis = unfinished_task_instances(&db.url, "ledger").await;
                let log = std::fs::read_to_string(&daemon_log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "runs did not finish after restarts:\n{runs}\n{tis}\nthe daemon's log:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // No two tries of one task instance overlapped in time.
        let text = std::fs::read_to_string(&ledger).unwrap();
        let mut spans: std::collections::HashMap<(String, String), Vec<(u128, u128)>> =
            std::collections::HashMap::new();
        let mut starts: std::collections::HashMap<(String, String, String), u128> =
            std::collections::HashMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (kind, run, task, tri, at) =
                (f[0], f[1], f[2], f[3], f[4].parse::<u128>().unwrap());
            let k = (run.to_owned(), task.to_owned(), tri.to_owned());
            if kind == "start" {
                starts.insert(k, at);
            } else if let Some(s) = starts.get(&k) {
                spans
                    .entry((run.to_owned(), task.to_owned()))
                    .or_default()
                    .push((*s, at));
            }
        }
        for ((run, task), mut v) in spans {
            v.sort_unstable();
            for w in v.windows(2) {
                assert!(w[0].1 <= w[1].0, "{run}/{task}: tries overlapped: {w:?}");
            }
        }
        assert!(text.lines().filter(|l| l.starts_with("end")).count() >= 200);
        drop(env);
        db.drop_db().await.unwrap();
    }
}

/// A task's process, the background job it started and a child that left its process group
/// (`setsid`) die with a `kill -9`ed worker instead of running on as orphans beside the try
/// that replaces them.
#[tokio::test]
async fn task_process_dies_with_its_worker() {
    let db = TestDb::sqlite().await.unwrap();
    let mut env = env_on(&db).await;
    let pidfile = env.home.join("sleeper.pid");
    env.write_dag(
        "sleeper.yaml",
        &format!(
            "sleeper:\n  tasks:\n    sleep:\n      operator: bash\n      bash_command: sleep 300 & a=$!; setsid sleep 301 & echo $$ $a $! > {}.tmp && mv {0}.tmp {0} && wait\n",
            pidfile.display()
        ),
    );
    env.start();
    assert!(env.run(&["dags", "trigger", "sleeper"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let pids: Vec<i32> = loop {
        if let Ok(text) = std::fs::read_to_string(&pidfile) {
            let pids: Vec<i32> = text
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.len() == 3 {
                break pids;
            }
        }
        assert!(Instant::now() < deadline, "the task never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut child = env.standalone.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids {
        loop {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "));
            if !alive {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "task process {pid} outlived its worker"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(env);
    db.drop_db().await.unwrap();
}

/// Polls `check` until it returns `Some`, failing the test with `what` after `secs`.
fn wait_for<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The most recent run id of a DAG, once it has one.
fn latest_run(env: &Env, dag_id: &str) -> Option<String> {
    env.stdout(&["runs", "list", dag_id])
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
}

/// `task start_ns end_ns` lines written by tasks; the most tasks that overlapped in time.
fn max_overlap(ledger: &str) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    for line in ledger.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let start: u128 = parts[1].parse().unwrap();
        let end: u128 = parts[2].parse().unwrap();
        events.push((start, 1));
        events.push((end, -1));
    }
    // Ends sort before starts at the same instant: touching is not overlapping.
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    usize::try_from(most).unwrap()
}

fn semantics_dags(today: chrono::NaiveDate) -> String {
    let mut y = String::from(
        r#"
rules:
  tasks:
    ok: {operator: bash, bash_command: "true"}
    bad: {operator: bash, bash_command: "exit 1"}
    # `skip` ends after `bad`: rules that decide before all upstreams are done (all_success
    # sees a failure or a skip first) then see the same order on every run, as in Airflow.
    skip: {operator: bash, bash_command: "exit 99", dependencies: [bad], trigger_rule: all_done}
"#,
    );
    for rule in [
        "all_success",
        "all_failed",
        "all_done",
        "all_done_min_one_success",
        "all_skipped",
        "one_success",
        "one_failed",
        "one_done",
        "none_failed",
        "none_failed_min_one_success",
        "none_skipped",
        "always",
        "all_done_setup_success",
    ] {
        y.push_str(&format!(
            "    {rule}: {{operator: empty, trigger_rule: {rule}, dependencies: [ok, bad, skip]}}\n"
        ));
    }
    let timed = |name: &str| {
        format!(
            "s=$(date +%s%N); sleep 0.4; echo \"{name} $s $(date +%s%N)\" >> \"$TMPDIR/{{{{ dag.dag_id }}}}.ledger\""
        )
    };
    y.push_str("pooled:\n  tasks:\n");
    for i in 0..6 {
        y.push_str(&format!(
            "    p{i}: {{operator: bash, pool: tiny, bash_command: '{}'}}\n",
            timed(&format!("p{i}"))
        ));
    }
    y.push_str("capped:\n  max_active_tasks: 3\n  tasks:\n");
    for i in 0..8 {
        y.push_str(&format!(
            "    c{i}: {{operator: bash, bash_command: '{}'}}\n",
            timed(&format!("c{i}"))
        ));
    }
    let start = today - chrono::Duration::days(3);
    y.push_str(&format!(
        r#"caught_up:
  schedule: "@daily"
  start_date: {start}
  catchup: true
  tasks:
    day: {{operator: bash, bash_command: 'echo "{{{{ ds }}}}" >> "$TMPDIR/caught_up.txt"'}}
paused_dag:
  is_paused_upon_creation: true
  tasks:
    only: {{operator: empty}}
markme:
  tasks:
    long: {{operator: bash, bash_command: 'echo $$ > "$TMPDIR/markme.pid"; exec sleep 120'}}
    after: {{operator: empty, dependencies: [long]}}
"#
    ));
    y
}

const BREAKS: &str = r#"
breaks:
  tasks:
    first: {operator: bash, bash_command: 'touch "$TMPDIR/breaks.started"; sleep 3'}
    second: {operator: bash, bash_command: 'echo second ran', dependencies: [first]}
"#;

#[tokio::test]
async fn airflow_semantics_on_real_runs() {
    for db in databases().await {
        eprintln!("backend: {:?}", db.backend());
        let url = db.url.clone();
        let mut env = Env::new(&url);
        let today = chrono::Utc::now().date_naive();
        env.write_dag("semantics.yaml", &semantics_dags(today));
        env.write_dag("breaks.yaml", BREAKS);
        // The pool exists before anything is queued into it.
        env.stdout(&["pools", "set", "tiny", "2", "two at a time"]);
        assert!(env.stdout(&["pools", "list"]).contains("tiny"));
        env.start();

        // Every trigger rule downstream of one success, one failure and one skip.
        let (ok, out) = env.trigger_wait("rules", &[]);
        assert!(!ok, "a failed leaf fails the run:\n{out}");
        let s = states(&env, "rules", &run_id_of(&out));
        let expected = [
            ("ok", "success"),
            ("bad", "failed"),
            ("skip", "skipped"),
            ("all_success", "upstream_failed"),
            ("all_failed", "skipped"),
            ("all_done", "success"),
            // Airflow counts a skipped upstream as never done for this rule.
            ("all_done_min_one_success", "skipped"),
            ("all_skipped", "skipped"),
            ("one_success", "success"),
            ("one_failed", "success"),
            ("one_done", "success"),
            ("none_failed", "upstream_failed"),
            ("none_failed_min_one_success", "upstream_failed"),
            ("none_skipped", "skipped"),
            ("always", "success"),
            ("all_done_setup_success", "success"),
        ];
        for (task, state) in expected {
            assert_eq!(s[task], state, "task {task}: {s:?}");
        }

        // Pools and max_active_tasks are never exceeded.
        for (dag, limit, n) in [("pooled", 2, 6), ("capped", 3, 8)] {
            let (ok, out) = env.trigger_wait(dag, &[]);
            assert!(ok, "{out}");
            let ledger = std::fs::read_to_string(env.home.join(format!("{dag}.ledger"))).unwrap();
            assert_eq!(ledger.lines().count(), n, "{ledger}");
            let most = max_overlap(&ledger);
            assert!(
                most <= limit,
                "{dag}: {most} tasks ran at once, limit {limit}"
            );
        }

        // Catchup creates exactly the due runs: the three days before today.
        let days = wait_for(60, "three caught-up days", || {
            let text = std::fs::read_to_string(env.home.join("caught_up.txt")).ok()?;
            let mut days: Vec<String> = text.lines().map(str::to_owned).collect();
            days.sort();
            (days.len() >= 3).then_some(days)
        });
        let want: Vec<String> = (1..=3)
            .rev()
            .map(|d| (today - chrono::Duration::days(d)).to_string())
            .collect();
        assert_eq!(days, want);
        let runs = env.stdout(&["runs", "list", "caught_up"]);
        assert_eq!(runs.matches("scheduled__").count(), 3, "{runs}");

        // Triggering a paused DAG creates a run that waits, and says so.
        let out = env.run(&["dags", "trigger", "paused_dag"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("paused"), "{text}");
        let runs = env.stdout(&["runs", "list", "paused_dag"]);
        assert!(runs.contains("queued"), "{runs}");
        env.stdout(&["dags", "unpause", "paused_dag"]);
        wait_for(60, "the unpaused run to succeed", || {
            env.stdout(&["runs", "list", "paused_dag"])
                .contains("success")
                .then_some(())
        });

        // A DAG file that breaks while its run is active: the run finishes on the last good
        // version, and the import error is reported.
        let out = env.stdout(&["dags", "trigger", "breaks"]);
        let run = run_id_of(&out);
        wait_for(60, "the first task to start", || {
            env.home.join("breaks.started").exists().then_some(())
        });
        env.write_dag("breaks.yaml", "breaks:\n  tasks: [unclosed\n");
        wait_for(60, "the broken DAG's run to succeed", || {
            let s = states(&env, "breaks", &run);
            (s.get("second").map(String::as_str) == Some("success")).then_some(())
        });
        let listed = env.run(&["dags", "list"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&listed.stdout),
            String::from_utf8_lossy(&listed.stderr)
        );
        assert!(text.contains("breaks.yaml"), "{text}");

        // Marking a running task failed stops it; its downstream is upstream_failed.
        let out = env.stdout(&["dags", "trigger", "markme"]);
        let run = run_id_of(&out);
        let pid: i32 = wait_for(60, "the long task to start", || {
            std::fs::read_to_string(env.home.join("markme.pid"))
                .ok()?
                .trim()
                .parse()
                .ok()
        });
        let marked = env.stdout(&[
            "tasks", "mark", "markme", &run, "-t", "^long$", "--state", "failed",
        ]);
        assert!(marked.contains("marked 1 task instance"), "{marked}");
        wait_for(60, "the marked run to fail", || {
            let s = states(&env, "markme", &run);
            (s.get("after").map(String::as_str) == Some("upstream_failed")).then_some(())
        });
        wait_for(30, "the marked task's process to be stopped", || {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "));
            (!alive).then_some(())
        });
        assert_eq!(states(&env, "markme", &run)["long"], "failed");
        wait_for(30, "the run to be failed", || {
            env.stdout(&["runs", "list", "markme"])
                .contains("failed")
                .then_some(())
        });
        drop(env);
        db.drop_db().await.unwrap();
    }
}

/// The database going away (every connection killed, repeatedly) while a run is in flight:
/// the scheduler and worker retry, nothing is lost, the run succeeds. PostgreSQL only: an
/// SQLite file cannot go away like a server.
#[tokio::test]
async fn database_connections_dropping_lose_nothing() {
    let Some(db) = TestDb::postgres().await.unwrap() else {
        return;
    };
    let url = db.url.clone();
    let mut env = Env::new(&url);
    let mut y = String::from("chain:\n  tasks:\n");
    for i in 0..8 {
        y.push_str(&format!(
            "    t{i}: {{operator: bash, bash_command: 'sleep 0.3'"
        ));
        if i > 0 {
            y.push_str(&format!(", dependencies: [t{}]", i - 1));
        }
        y.push_str("}\n");
    }
    env.write_dag("chain.yaml", &y);
    env.start();
    wait_for(60, "the DAG to be parsed", || {
        env.run(&["dags", "trigger", "chain"])
            .status
            .success()
            .then_some(())
    });
    let run = latest_run(&env, "chain").unwrap();
    db.store.close().await;
    let (mut kills, mut killed) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = states(&env, "chain", &run);
        if s.get("t7").map(String::as_str) == Some("success") {
            break;
        }
        assert!(Instant::now() < deadline, "the run did not finish: {s:?}");
        // Kill every connection the daemon holds, a few times over the run.
        if kills < 5 {
            killed += db.terminate_connections().await.unwrap();
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let s = states(&env, "chain", &run);
    assert!(s.values().all(|v| v == "success"), "{s:?}");
    assert!(killed > 0, "no connection was ever killed");
    assert!(
        env.standalone
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "flow standalone exited"
    );
    drop(env);
    db.drop_db().await.unwrap();
}

/// dag-factory's own examples that use `expand` and `partial`, unchanged, through the real
/// daemon (SQLite: the mapping itself is covered on both backends by `partitioned_load`).
#[tokio::test]
async fn dag_factory_mapping_examples_run_end_to_end() {
    let db = TestDb::sqlite().await.unwrap();
    let mut env = env_on(&db).await;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dag_factory");
    copy_dir(&fixtures, &env.dags);
    env.start();
    let line_of = |table: &str, prefix: &str| -> String {
        table
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in\n{table}"))
            .to_owned()
    };

    // `request` returns [[1], [2], [3], [4]]; `process` runs once per element, with the
    // partial `fixed_param`.
    let (ok, out) = env.trigger_wait("dynamic_task_map", &[]);
    assert!(ok, "dynamic_task_map should succeed:\n{out}");
    let run_id = run_id_of(&out);
    let table = env.stdout(&["tasks", "states", "dynamic_task_map", &run_id]);
    for i in 0..4 {
        assert!(
            line_of(&table, &format!("process[{i}] ")).contains(" success "),
            "{table}"
        );
    }
    assert!(!table.contains("process[4]"), "{table}");
    let log = env.stdout(&[
        "tasks",
        "logs",
        "dynamic_task_map",
        &run_id,
        "process",
        "--map-index",
        "2",
    ]);
    assert!(log.contains("test") && log.contains("[3]"), "{log}");

    // TaskFlow: literal lists, `+task` outputs, a cross product of two outputs, partial.
    let (ok, out) = env.trigger_wait("taskflow", &[]);
    assert!(ok, "taskflow should succeed:\n{out}");
    let run_id = run_id_of(&out);
    let table = env.stdout(&["tasks", "states", "taskflow", &run_id]);
    let count = |task: &str| {
        table
            .lines()
            .filter(|l| l.starts_with(&format!("{task}[")) && l.contains(" success "))
            .count()
    };
    assert_eq!(
        count("double_number_with_dynamic_task_mapping_static"),
        3,
        "{table}"
    );
    assert_eq!(
        count("double_number_with_dynamic_task_mapping_taskflow"),
        3,
        "{table}"
    );
    assert_eq!(count("multiply_with_multiple_parameters"), 9, "{table}");
    assert_eq!(
        count("double_number_with_dynamic_task_and_partial"),
        3,
        "{table}"
    );
    let log = env.stdout(&[
        "tasks",
        "logs",
        "taskflow",
        &run_id,
        "double_number_with_dynamic_task_and_partial",
        "--map-index",
        "1",
    ]);
    assert!(log.contains("8 is odd"), "{log}");

    // map_index_template names each instance from what the callable put in its context.
    let (ok, out) = env.trigger_wait("example_map_index_template", &[]);
    assert!(ok, "example_map_index_template should succeed:\n{out}");
    let run_id = run_id_of(&out);
    let table = env.stdout(&["tasks", "states", "example_map_index_template", &run_id]);
    for (i, name) in ["Lucy", "Vera", "Marks"].iter().enumerate() {
        let line = line_of(&table, &format!("dynamic_task_with_named_mapping[{i}] "));
        assert!(
            line.contains(" success ") && line.trim_end().ends_with(name),
            "{table}"
        );
    }
    drop(env);
    db.drop_db().await.unwrap();
}

/// Variables set with the CLI reach a task's templates (`var.value`, `var.value.get` with a
/// fallback, `var.json`), the worker's `FLOW_VAR_` environment overrides them, a secret one
/// is masked in the log, and export/import round-trips Airflow's file format.
#[tokio::test]
async fn variables_reach_templates_and_secrets_stay_masked() {
    let db = TestDb::sqlite().await.unwrap();
    let mut env = env_on(&db).await;
    env.write_dag(
        "vars.yaml",
        "vars:\n  tasks:\n    show:\n      operator: bash\n      bash_command: \"echo {{ var.value.region }} {{ var.json.cfg.batch }} {{ var.value.get('missing', 'fb') }} {{ var.value.env_only }} {{ var.value.overridden }}; echo secret={{ var.value.api_token }}\"\n    db:\n      operator: bash\n      bash_command: \"echo {{ conn.my_db.host }} {{ conn.my_db.port }} {{ conn.my_db.schema }} {{ conn.my_db.login }} {{ conn.my_db.extra_dejson.sslmode }} {{ conn.get('my_db').conn_type }} pw={{ conn.my_db.password }}\"\n    py:\n      operator: python\n      python_callable_file: $CONFIG_ROOT_DIR/vars_steps.py\n      python_callable_name: show\nno_conn:\n  tasks:\n    t:\n      operator: bash\n      bash_command: \"echo {{ conn.nope.host }}\"\n",
    );
    env.write_dag(
        "vars_steps.py",
        "from airflow.sdk import Variable\nfrom airflow.models import Variable as Old\n\ndef show():\n    print('py', Variable.get('region'), Old.get('cfg', deserialize_json=True)['batch'], Variable.get('nope', default='dflt'), Old.get('nope', default_var='dv'), Variable.get('env_only'))\n    print('pysecret=' + Variable.get('api_token'))\n",
    );
    env.stdout(&[
        "connections",
        "add",
        "my_db",
        "--conn-uri",
        "postgres://svc:pw-conn-secret-55@dbhost:5433/analytics?sslmode=require",
    ]);
    for args in [
        &["variables", "set", "region", "eu-west-1"][..],
        &[
            "variables",
            "set",
            "cfg",
            r#"{"batch": 500}"#,
            "--serialize-json",
        ],
        &["variables", "set", "overridden", "from-db"],
        &["variables", "set", "api_token", "s3cr3t-value-123"],
    ] {
        env.stdout(args);
    }
    assert!(
        !env.run(&["variables", "set", "cfg", "{not json", "-j"])
            .status
            .success(),
        "a value that is not JSON is refused with -j"
    );
    assert_eq!(
        env.stdout(&["variables", "get", "region"]).trim(),
        "eu-west-1"
    );
    let missing = env.run(&["variables", "get", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("Variable nope does not exist"));
    assert_eq!(
        env.stdout(&["variables", "get", "nope", "--default", "d"])
            .trim(),
        "d"
    );

    let child = env
        .command()
        .env("FLOW_VAR_ENV_ONLY", "from-env")
        .env("AIRFLOW_VAR_OVERRIDDEN", "from-airflow-env")
        .arg("standalone")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    env.standalone = Some(child);
    let (ok, out) = env.trigger_wait("vars", &[]);
    assert!(ok, "{out}");
    let run_id = run_id_of(&out);
    let log = env.stdout(&["tasks", "logs", "vars", &run_id, "show"]);
    assert!(
        log.contains("eu-west-1 500 fb from-env from-airflow-env"),
        "{log}"
    );
    assert!(log.contains("secret=***"), "{log}");
    assert!(
        !log.contains("s3cr3t-value-123"),
        "the secret leaked: {log}"
    );
    // The same variables through `Variable.get` in a Python callable.
    let log = env.stdout(&["tasks", "logs", "vars", &run_id, "py"]);
    assert!(log.contains("py eu-west-1 500 dflt dv from-env"), "{log}");
    assert!(log.contains("pysecret=***"), "{log}");
    assert!(
        !log.contains("s3cr3t-value-123"),
        "the secret leaked: {log}"
    );
    // Connections in templates, their password masked; an unknown one fails the try and says
    // which.
    let log = env.stdout(&["tasks", "logs", "vars", &run_id, "db"]);
    assert!(
        log.contains("dbhost 5433 analytics svc require postgres pw=***"),
        "{log}"
    );
    assert!(
        !log.contains("pw-conn-secret-55"),
        "the password leaked: {log}"
    );
    let (ok, out) = env.trigger_wait("no_conn", &[]);
    assert!(!ok, "a template naming an unknown connection fails: {out}");
    let log = env.stdout(&["tasks", "logs", "no_conn", &run_id_of(&out), "t"]);
    assert!(log.contains("connection `nope` not found"), "{log}");

    // Export, delete, import: the same variables come back.
    let file = env.home.join("vars.json");
    env.stdout(&["variables", "export", file.to_str().unwrap()]);
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        exported["cfg"],
        serde_json::json!({"batch": 500}),
        "{exported}"
    );
    for key in ["region", "cfg", "overridden", "api_token"] {
        env.stdout(&["variables", "delete", key]);
    }
    env.stdout(&["variables", "import", file.to_str().unwrap()]);
    let listed = env.stdout(&["variables", "list"]);
    for key in ["region", "cfg", "overridden", "api_token"] {
        assert!(listed.contains(key), "{key} missing after import: {listed}");
    }
    assert_eq!(
        env.stdout(&["variables", "get", "api_token"]).trim(),
        "s3cr3t-value-123"
    );

    // Connections: exported in Airflow's JSON and .env forms (owner-only files), deleted,
    // imported back.
    for name in ["conns.json", "conns.env"] {
        let file = env.home.join(name);
        let path = file.to_str().unwrap();
        env.stdout(&["connections", "export", path]);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
        env.stdout(&["connections", "delete", "my_db"]);
        env.stdout(&["connections", "import", path]);
        let got = env.stdout(&["connections", "get", "my_db", "-o", "json"]);
        assert!(
            got.contains("dbhost") && got.contains("5433"),
            "{name}: {got}"
        );
        // Importing again skips it, unless told to overwrite.
        let again = env.stdout(&["connections", "import", path]);
        assert!(again.contains("skipped 1"), "{again}");
        let forced = env.stdout(&["connections", "import", path, "--overwrite"]);
        assert!(forced.contains("replaced 1"), "{forced}");
    }
    // `connections test`: refused while testing is off (Airflow's default); on, a real
    // PostgreSQL answers, a closed port fails with exit 1 and says why, never the password.
    let off = env.run(&["connections", "test", "my_db"]);
    assert!(!off.status.success());
    assert!(
        String::from_utf8_lossy(&off.stderr).contains("Testing connections is disabled"),
        "{}",
        String::from_utf8_lossy(&off.stderr)
    );
    env.stdout(&[
        "connections",
        "add",
        "local_pg",
        "--conn-uri",
        "postgres://postgres:pw-local-77@127.0.0.1:5432/postgres",
    ]);
    env.stdout(&[
        "connections",
        "add",
        "closed_pg",
        "--conn-uri",
        "postgres://postgres:pw-closed-88@127.0.0.1:1/postgres",
    ]);
    let test = |conn: &str| {
        env.command()
            .env("FLOW__CORE__TEST_CONNECTION", "Enabled")
            .args(["connections", "test", conn])
            .output()
            .unwrap()
    };
    let ok = test("local_pg");
    let ok_text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{ok_text}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(ok_text.contains("Connection success!"), "{ok_text}");
    let failed = test("closed_pg");
    let failed_text = String::from_utf8_lossy(&failed.stdout);
    assert!(!failed.status.success());
    assert!(failed_text.contains("Connection failed!"), "{failed_text}");
    assert!(!failed_text.contains("pw-closed-88") && !ok_text.contains("pw-local-77"));
    assert!(!test("nope").status.success(), "an unknown connection");

    let bad = env.home.join("bad.env");
    std::fs::write(&bad, "ok_one=postgres://h/db\nbroken line\n").unwrap();
    let out = env.run(&["connections", "import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.env:2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(env);
    db.drop_db().await.unwrap();
}

/// The sql operator and SqlSensor on the machine's real PostgreSQL and MariaDB and on a
/// SQLite file, under every Airflow class path: parameters in each driver's style, a `.sql`
/// file beside the DAG, split statements, the rows as the XCom, a sensor waiting on a count.
/// Bad input fails the try with a line naming the connection: an unknown connection, one of
/// the wrong type, a SQL error.
#[tokio::test]
async fn sql_operators_on_postgres_mariadb_and_sqlite() {
    for db in databases().await {
        let target = TestDb::postgres()
            .await
            .unwrap()
            .expect("PostgreSQL for the sql operator's target database");
        target.store.close().await;
        let mut env = env_on(&db).await;
        let mdb = format!(
            "flow_sqlop_{}_{}",
            std::process::id(),
            chrono::Utc::now().timestamp_subsec_nanos()
        );
        env.write_dag(
            "query.sql",
            "select id, name, amount, at, tags, doc from t where id >= %s order by id\n",
        );
        env.write_dag(
            "sql_ops.yaml",
            &format!(
                r#"sql_ops:
  params:
    who: "O'Brien"
    mdb: {mdb}
  tasks:
    pg_setup:
      operator: SQLExecuteQueryOperator
      conn_id: pg_data
      sql: "create table t (id int, name text, amount numeric(10,2), at timestamptz default '2024-01-02T03:04:05Z', tags text[] default '{{a,b}}', doc jsonb default '{{\"k\": 1}}'); insert into t (id, name, amount) values (1, %(who)s, 12.50), (2, 'b', 0.10); create table done (n int)"
      parameters: {{who: "{{{{ params.who }}}}"}}
    pg_query:
      operator: airflow.providers.postgres.operators.postgres.PostgresOperator
      postgres_conn_id: pg_data
      sql: query.sql
      parameters: [1]
      show_return_value_in_logs: true
      dependencies: [pg_setup]
    pg_late:
      operator: sql
      conn_id: pg_data
      sql: "select pg_sleep(2); insert into done values (1)"
      dependencies: [pg_setup]
    wait_pg:
      operator: SqlSensor
      conn_id: pg_data
      sql: "select count(*) from done"
      mode: reschedule
      poke_interval: 1
      timeout: 120
      dependencies: [pg_setup]
    my_setup:
      operator: sql
      conn_id: maria
      sql: ["CREATE DATABASE IF NOT EXISTS {{{{ params.mdb }}}}"]
    my_tables:
      operator: airflow.providers.mysql.operators.mysql.MySqlOperator
      mysql_conn_id: maria
      database: "{{{{ params.mdb }}}}"
      sql: "create table t (id int, name varchar(20), price decimal(8,2), d date); insert into t values (1, %s, 3.25, '2024-05-06')"
      parameters: ["{{{{ params.who }}}}"]
      split_statements: true
      return_last: false
      dependencies: [my_setup]
    my_query:
      operator: sql
      conn_id: maria
      database: "{{{{ params.mdb }}}}"
      sql: "select id, name, price, d from t where name = %(who)s"
      parameters: {{who: "{{{{ params.who }}}}"}}
      dependencies: [my_tables]
    lite:
      operator: SqliteOperator
      sqlite_conn_id: lite
      sql: "create table if not exists t (a integer, b text); insert into t values (:n, :s); select a, b, 1.5 from t"
      parameters: {{n: 7, s: "x;y"}}
      split_statements: true
    show:
      operator: bash
      env:
        PG: "{{{{ ti.xcom_pull('pg_query') | tojson }}}}"
        MY: "{{{{ ti.xcom_pull('my_query') | tojson }}}}"
        TABLES: "{{{{ ti.xcom_pull('my_tables') | tojson }}}}"
        LITE: "{{{{ ti.xcom_pull('lite') | tojson }}}}"
      bash_command: 'echo "PG=$PG"; echo "MY=$MY"; echo "TABLES=$TABLES"; echo "LITE=$LITE"'
      dependencies: [pg_query, my_query, lite, wait_pg]
    my_cleanup:
      operator: sql
      conn_id: maria
      sql: "DROP DATABASE IF EXISTS {{{{ params.mdb }}}}"
      trigger_rule: all_done
      dependencies: [show, my_query]
sql_bad:
  tasks:
    unknown_conn:
      operator: sql
      conn_id: nope
      sql: select 1
    wrong_type:
      operator: sql
      conn_id: web
      sql: select 1
    bad_sql:
      operator: sql
      conn_id: pg_data
      sql: select * from missing_table
    atomic:
      operator: sql
      conn_id: pg_data
      split_statements: true
      sql: "insert into t (id, name) values (100, 'kept?'); insert into missing_table values (1)"
    committed_each:
      operator: sql
      conn_id: pg_data
      split_statements: true
      autocommit: true
      sql: "insert into t (id, name) values (101, 'kept'); insert into missing_table values (1)"
sql_check:
  tasks:
    late_rows:
      operator: sql
      conn_id: pg_data
      sql: select id from t where id >= 100 order by id
      show_return_value_in_logs: true
"#
            ),
        );
        let lite = env.home.join("lite.db");
        for args in [
            vec![
                "connections".to_owned(),
                "add".into(),
                "pg_data".into(),
                "--conn-uri".into(),
                target.url.clone(),
            ],
            vec![
                "connections".into(),
                "add".into(),
                "maria".into(),
                "--conn-uri".into(),
                "mysql://root@127.0.0.1:3306".into(),
            ],
            vec![
                "connections".into(),
                "add".into(),
                "lite".into(),
                "--conn-type".into(),
                "sqlite".into(),
                "--conn-host".into(),
                lite.to_string_lossy().into_owned(),
            ],
            vec![
                "connections".into(),
                "add".into(),
                "web".into(),
                "--conn-uri".into(),
                "http://example.invalid".into(),
            ],
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            env.stdout(&args);
        }
        env.start();
        let (ok, out) = env.trigger_wait("sql_ops", &[]);
        let run_id = run_id_of(&out);
        let log = env.stdout(&["tasks", "logs", "sql_ops", &run_id, "show"]);
        let run_states = states(&env, "sql_ops", &run_id);
        if run_states.values().any(|s| s != "success") {
            let logs: Vec<String> = run_states
                .keys()
                .map(|t| env.stdout(&["tasks", "logs", "sql_ops", &run_id, t]))
                .collect();
            panic!("{run_states:?}\n{}", logs.join("\n"));
        }
        assert!(ok, "{out}");
        assert!(
            log.contains(
                r#"PG=[[1, "O\u0027Brien", 12.5, "2024-01-02T03:04:05+00:00", ["a", "b"], {"k": 1}], [2, "b", 0.1, "2024-01-02T03:04:05+00:00", ["a", "b"], {"k": 1}]]"#
            ),
            "{out}\n{log}\n{:?}",
            states(&env, "sql_ops", &run_id)
        );
        assert!(
            log.contains(r#"MY=[[1, "O\u0027Brien", 3.25, "2024-05-06"]]"#),
            "{log}"
        );
        // split_statements with return_last: false: one result per statement.
        assert!(log.contains("TABLES=[null, null]"), "{log}");
        assert!(log.contains(r#"LITE=[[7, "x;y", 1.5]]"#), "{log}");
        // The sensor saw an empty table before the late insert.
        let wait_log = env.stdout(&["tasks", "logs", "sql_ops", &run_id, "wait_pg"]);
        assert!(wait_log.contains("first_cell = 0: not yet"), "{wait_log}");
        assert!(wait_log.contains("first_cell = 1: done"), "{wait_log}");
        let query_log = env.stdout(&["tasks", "logs", "sql_ops", &run_id, "pg_query"]);
        assert!(
            query_log.contains("Running statement: select id, name"),
            "{query_log}"
        );
        assert!(
            query_log.contains("Done. Returned value was:"),
            "{query_log}"
        );

        let (ok, out) = env.trigger_wait("sql_bad", &[]);
        assert!(!ok, "{out}");
        let bad_run = run_id_of(&out);
        for (task, expected) in [
            ("unknown_conn", "connection `nope` not found"),
            ("wrong_type", "connection `web` is of type `http`"),
            ("bad_sql", "relation \"missing_table\" does not exist"),
        ] {
            let log = env.stdout(&["tasks", "logs", "sql_bad", &bad_run, task]);
            assert!(log.contains(expected), "{task}: {log}");
        }
        let bad_states = states(&env, "sql_bad", &bad_run);
        assert!(bad_states.values().all(|s| s == "failed"), "{bad_states:?}");
        // Without autocommit the split statements are one transaction: the failed second one
        // takes the first with it; with autocommit the first stays.
        let (ok, out) = env.trigger_wait("sql_check", &[]);
        assert!(ok, "{out}");
        let log = env.stdout(&["tasks", "logs", "sql_check", &run_id_of(&out), "late_rows"]);
        assert!(log.contains("Done. Returned value was: [[101]]"), "{log}");
    }
}

/// An HTTP server for a test: `tests/fixtures/http_server.py`, killed on drop.
struct HttpServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl HttpServer {
    fn start(dir: &Path) -> HttpServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/http_server.py");
        let port_file = dir.join("http.port");
        let log = dir.join("http.requests");
        let child = Command::new("python3")
            .arg(script)
            .arg(&port_file)
            .arg(&log)
            // The slow webhook outlives the run it reports on.
            .env("HOOK_SLOW_SECS", "20")
            .spawn()
            .expect("python3 runs the test HTTP server");
        let port = port_from(&port_file, "the test HTTP server");
        HttpServer { child, port, log }
    }

    /// Every request so far, oldest first.
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The http operator and HttpSensor against a real HTTP server: dag-factory's two HTTP
/// examples unchanged, a JSON POST checked and filtered by expressions, GET query
/// parameters, basic auth and headers from the connection (the password never logged), a
/// sensor in reschedule and in deferrable mode that sees 404 twice before 200, and the
/// failures: a 500, a refused connection (retried), a failing `response_check`.
#[tokio::test]
async fn http_operators_against_a_real_server() {
    for db in databases().await {
        let mut env = env_on(&db).await;
        let server = HttpServer::start(&env.home);
        let fixtures =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dag_factory_http");
        copy_dir(&fixtures, &env.dags);
        let dead_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        env.write_dag(
            "http_ops.yaml",
            r#"http_ops:
  params:
    q: "a b&c"
  tasks:
    post_json:
      operator: HttpOperator
      http_conn_id: api
      endpoint: run_test
      data:
        run: "{{ run_id }}"
        n: 3
      response_check: "response.json()['status'] == 'ok' and response.status_code == 200"
      response_filter: "response.json()['content_type']"
    get_query:
      operator: http
      http_conn_id: api
      method: GET
      endpoint: /query
      data: {q: "{{ params.q }}"}
      response_filter: "response.json()['query']['q']"
    wait_resched:
      operator: HttpSensor
      http_conn_id: api
      endpoint: status/resched-{{ run_id }}
      response_check: "response.json()['ready']"
      mode: reschedule
      poke_interval: 1
      timeout: 120
    wait_deferred:
      operator: airflow.providers.http.sensors.http.HttpSensor
      http_conn_id: api
      endpoint: status/defer-{{ run_id }}
      response_check_lambda: "lambda response: response.json()['ready']"
      deferrable: true
      poke_interval: 1
      timeout: 120
    show:
      operator: bash
      env:
        CT: "{{ ti.xcom_pull('post_json') }}"
        Q: "{{ ti.xcom_pull('get_query') }}"
      bash_command: 'echo "CT=$CT Q=$Q"'
      dependencies: [post_json, get_query, wait_resched, wait_deferred]
http_bad:
  tasks:
    status_500:
      operator: http
      http_conn_id: api
      method: GET
      endpoint: fail
    refused:
      operator: http
      http_conn_id: dead
      endpoint: run_test
      retry_attempts: 2
    check_false:
      operator: http
      http_conn_id: api
      endpoint: run_test
      response_check: "response.json()['status'] == 'nope'"
"#,
        );
        let base = format!("http://127.0.0.1:{}", server.port);
        for (id, uri) in [
            ("example_host", base.clone()),
            ("dead", format!("http://127.0.0.1:{dead_port}")),
        ] {
            env.stdout(&["connections", "add", id, "--conn-uri", &uri]);
        }
        let api = serde_json::json!({
            "conn_type": "http", "host": "127.0.0.1", "port": server.port, "login": "svc",
            "password": "pw-http-secret-77", "extra": {"X-Team": "data"}
        });
        env.stdout(&["connections", "add", "api", "--conn-json", &api.to_string()]);
        env.start();
        let (ok, out) = env.trigger_wait("http_ops", &[]);
        let run_id = run_id_of(&out);
        let log = env.stdout(&["tasks", "logs", "http_ops", &run_id, "show"]);
        assert!(ok, "{out}\n{log}\n{:?}", states(&env, "http_ops", &run_id));
        assert!(log.contains("CT=application/json Q=a b&c"), "{log}");
        let requests = server.requests();
        let post = requests
            .iter()
            .find(|r| {
                r["path"] == "/run_test" && r["body"].as_str().is_some_and(|b| b.contains(&run_id))
            })
            .expect("the POST reached the server");
        let body: serde_json::Value = serde_json::from_str(post["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["run"], serde_json::json!(run_id), "{post}");
        assert_eq!(body["n"], serde_json::json!(3), "{post}");
        // Basic auth from the connection's login, headers from its extra.
        assert_eq!(
            post["authorization"],
            serde_json::json!(format!("Basic {}", base64_encode("svc:pw-http-secret-77")))
        );
        assert_eq!(post["x_team"], serde_json::json!("data"));
        for task in ["post_json", "wait_resched", "wait_deferred"] {
            let log = env.stdout(&["tasks", "logs", "http_ops", &run_id, task]);
            assert!(!log.contains("pw-http-secret-77"), "{task}: {log}");
        }
        let log = env.stdout(&["tasks", "logs", "http_ops", &run_id, "wait_deferred"]);
        assert!(log.contains("Deferring to the triggerer"), "{log}");
        let log = env.stdout(&["tasks", "logs", "http_ops", &run_id, "wait_resched"]);
        assert!(log.contains("404 Not Found: not yet"), "{log}");
        assert!(log.contains("Not yet: rescheduled"), "{log}");
        // Both sensors saw two 404s before the 200.
        for key in ["resched", "defer"] {
            let path = format!("/status/{key}-{run_id}");
            let n = requests
                .iter()
                .filter(|r| r["path"] == path.as_str())
                .count();
            assert!(n >= 3, "{key}: {n} pokes");
        }

        // dag-factory's examples, unchanged, against the same server.
        for dag in ["http_operator", "http_operator_example_dag"] {
            env.stdout(&["dags", "unpause", dag]);
            let (ok, out) = env.trigger_wait(dag, &[]);
            assert!(ok, "{dag}: {out}");
        }
        let requests = server.requests();
        let json_posts = requests
            .iter()
            .filter(|r| r["content_type"] == "application/json" && r["path"] == "/run_test")
            .filter(|r| r["body"].as_str().is_some_and(|b| b.contains("fake_data")))
            .count();
        assert!(json_posts >= 2, "{requests:?}");
        // With `Content-Type: text/plain` the mapping goes as form fields, as requests sends it.
        assert!(
            requests.iter().any(|r| r["content_type"] == "text/plain"
                && r["body"] == "data=fake_data&test=plain_text"),
            "{requests:?}"
        );

        let (ok, out) = env.trigger_wait("http_bad", &[]);
        assert!(!ok, "{out}");
        let bad_run = run_id_of(&out);
        for (task, expected) in [
            ("status_500", "500:Internal Server Error"),
            ("refused", "cannot connect"),
            ("check_false", "Response check returned False"),
        ] {
            let log = env.stdout(&["tasks", "logs", "http_bad", &bad_run, task]);
            assert!(log.contains(expected), "{task}: {log}");
        }
        let log = env.stdout(&["tasks", "logs", "http_bad", &bad_run, "refused"]);
        assert!(log.contains("retrying in 1 s"), "{log}");

        // The example in dags/: HTTP into SQLite, a branch on volume, two variables.
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dags/warehouse_sync.yaml");
        std::fs::copy(&example, env.dags.join("warehouse_sync.yaml")).unwrap();
        let warehouse = env.home.join("warehouse.db");
        env.stdout(&["connections", "add", "orders_api", "--conn-uri", &base]);
        env.stdout(&[
            "connections",
            "add",
            "warehouse",
            "--conn-type",
            "sqlite",
            "--conn-host",
            warehouse.to_str().unwrap(),
        ]);
        env.stdout(&["variables", "set", "orders_region", "apac"]);
        let (ok, out) = env.trigger_wait("warehouse_sync", &[]);
        let run_id = run_id_of(&out);
        let got = states(&env, "warehouse_sync", &run_id);
        assert!(ok, "{out}\n{got:?}");
        assert_eq!(got["refresh_summary"], "success", "{got:?}");
        assert_eq!(got["log_quiet_day"], "skipped", "{got:?}");
        let requests = server.requests();
        assert!(
            requests.iter().any(|r| r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/orders?") && p.contains("region=apac"))),
            "{requests:?}"
        );
        // A threshold above the day's three orders takes the other branch.
        env.stdout(&["variables", "set", "busy_threshold", "10"]);
        let (ok, out) = env.trigger_wait("warehouse_sync", &[]);
        let second = run_id_of(&out);
        let got = states(&env, "warehouse_sync", &second);
        let why = env.stdout(&["tasks", "logs", "warehouse_sync", &second, "busy_or_quiet"]);
        assert!(ok, "{out}\n{got:?}\n{why}");
        assert!(why.contains("Following branch [log_quiet_day]"), "{why}");
        assert_eq!(got["refresh_summary"], "skipped", "{got:?}");
        assert_eq!(got["log_quiet_day"], "success", "{got:?}");
    }
}

fn base64_encode(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Branching as Airflow does it, on both backends: BranchPythonOperator (conf picks the
/// branch), `@task.branch`, branch_bash, ShortCircuitOperator with and without
/// `ignore_downstream_trigger_rules`, BranchDayOfWeekOperator, BranchDateTimeOperator and
/// LatestOnlyOperator; unfollowed tasks skipped, the skip carried by trigger rules, a join
/// with `none_failed_min_one_success`; a branch naming a task that is not downstream fails.
#[tokio::test]
async fn branching_and_short_circuits_skip_as_airflow() {
    for db in databases().await {
        let mut env = env_on(&db).await;
        env.write_dag(
            "branch_steps.py",
            "def pick(which):\n    return which\n\ndef never():\n    return False\n\ndef group_pick():\n    return ['g1']\n\ndef elsewhere():\n    return 'not_downstream'\n\ndef push(ti):\n    ti.xcom_push(key='picked', value={'n': 3})\n    return 'done'\n",
        );
        env.write_dag(
            "branches.yaml",
            r#"branch_ops:
  params:
    which: left
  tasks:
    pick:
      operator: BranchPythonOperator
      python_callable_file: $CONFIG_ROOT_DIR/branch_steps.py
      python_callable_name: pick
      op_kwargs: {which: "{{ params.which }}"}
    left: {operator: bash, bash_command: "echo left", dependencies: [pick]}
    right: {operator: bash, bash_command: "echo right", dependencies: [pick]}
    after_right: {operator: bash, bash_command: "echo after", dependencies: [right]}
    join: {operator: empty, trigger_rule: none_failed_min_one_success, dependencies: [left, after_right]}
    deco:
      decorator: airflow.sdk.task.branch
      python_callable_file: $CONFIG_ROOT_DIR/branch_steps.py
      python_callable_name: group_pick
    g1: {operator: empty, dependencies: [deco]}
    g2: {operator: empty, dependencies: [deco]}
    pick_bash:
      operator: branch_bash
      bash_command: "echo thinking; echo b1"
    b1: {operator: empty, dependencies: [pick_bash]}
    b2: {operator: empty, dependencies: [pick_bash]}
    pick_join:
      operator: branch_bash
      bash_command: "echo a2"
    a2: {operator: empty, dependencies: [pick_join]}
    join2: {operator: empty, dependencies: [pick_join, a2]}
    short:
      operator: airflow.operators.python.ShortCircuitOperator
      python_callable_file: $CONFIG_ROOT_DIR/branch_steps.py
      python_callable_name: never
    s1: {operator: empty, dependencies: [short]}
    s2: {operator: empty, trigger_rule: all_done, dependencies: [s1]}
    short_keep:
      operator: short_circuit
      bash_command: "echo false"
      ignore_downstream_trigger_rules: false
    k1: {operator: empty, dependencies: [short_keep]}
    k2: {operator: empty, trigger_rule: all_done, dependencies: [k1]}
    weekday:
      operator: BranchDayOfWeekOperator
      week_day: [Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday]
      follow_task_ids_if_true: wd_yes
      follow_task_ids_if_false: [wd_no]
    wd_yes: {operator: empty, dependencies: [weekday]}
    wd_no: {operator: empty, dependencies: [weekday]}
    window:
      operator: airflow.providers.standard.operators.datetime.BranchDateTimeOperator
      target_lower: "2000-01-01T00:00:00"
      target_upper: "2999-01-01T00:00:00"
      follow_task_ids_if_true: dt_in
      follow_task_ids_if_false: dt_out
    dt_in: {operator: empty, dependencies: [window]}
    dt_out: {operator: empty, dependencies: [window]}
    pusher:
      operator: python
      python_callable_file: $CONFIG_ROOT_DIR/branch_steps.py
      python_callable_name: push
    read_push:
      operator: bash
      bash_command: "echo picked={{ ti.xcom_pull(task_ids='pusher', key='picked')['n'] }}"
      dependencies: [pusher]
    latest:
      operator: LatestOnlyOperator
    after_latest: {operator: empty, dependencies: [latest]}
branch_bad:
  tasks:
    pick:
      operator: branch_python
      python_callable_file: $CONFIG_ROOT_DIR/branch_steps.py
      python_callable_name: elsewhere
    x: {operator: empty, dependencies: [pick]}
"#,
        );
        env.start();
        let (ok, out) = env.trigger_wait("branch_ops", &[]);
        let run_id = run_id_of(&out);
        let got = states(&env, "branch_ops", &run_id);
        let why = env.stdout(&["tasks", "logs", "branch_ops", &run_id, "pusher"]);
        assert!(ok, "{out}\n{got:?}\n{why}");
        let expect = [
            ("pick", "success"),
            ("left", "success"),
            ("right", "skipped"),
            ("after_right", "skipped"),
            ("join", "success"),
            ("deco", "success"),
            ("g1", "success"),
            ("g2", "skipped"),
            ("pick_bash", "success"),
            ("b1", "success"),
            ("b2", "skipped"),
            // Directly downstream of the branch but also of the followed task: not skipped.
            ("a2", "success"),
            ("join2", "success"),
            ("short", "success"),
            ("s1", "skipped"),
            ("s2", "skipped"),
            ("short_keep", "success"),
            ("k1", "skipped"),
            ("k2", "success"),
            ("wd_yes", "success"),
            ("wd_no", "skipped"),
            ("dt_in", "success"),
            ("dt_out", "skipped"),
            ("after_latest", "success"),
        ];
        for (task, state) in expect {
            assert_eq!(
                got.get(task).map(String::as_str),
                Some(state),
                "{task}: {got:?}"
            );
        }
        let log = env.stdout(&["tasks", "logs", "branch_ops", &run_id, "pick"]);
        assert!(
            log.contains("Following branch [left]; skipping [right]"),
            "{log}"
        );
        // `ti.xcom_push` from a Python callable, pulled by key downstream.
        let log = env.stdout(&["tasks", "logs", "branch_ops", &run_id, "read_push"]);
        assert!(log.contains("picked=3"), "{log}");

        // The other branch, chosen by conf.
        let (ok, out) = env.trigger_wait("branch_ops", &["--conf", r#"{"which": "right"}"#]);
        let run_id = run_id_of(&out);
        let got = states(&env, "branch_ops", &run_id);
        assert!(ok, "{out}\n{got:?}");
        for (task, state) in [
            ("left", "skipped"),
            ("right", "success"),
            ("after_right", "success"),
            ("join", "success"),
        ] {
            assert_eq!(
                got.get(task).map(String::as_str),
                Some(state),
                "{task}: {got:?}"
            );
        }

        let (ok, out) = env.trigger_wait("branch_bad", &[]);
        assert!(!ok, "{out}");
        let log = env.stdout(&["tasks", "logs", "branch_bad", &run_id_of(&out), "pick"]);
        assert!(
            log.contains("the branch returned `not_downstream`, which is not a task downstream of `pick` (directly downstream: x)"),
            "{log}"
        );
    }
}

/// Cross-DAG dependencies on both backends: TriggerDagRunOperator with templated conf and run
/// id, waiting for completion in a worker and in the triggerer (deferrable), failing when the
/// triggered run fails or the DAG does not exist; ExternalTaskSensor in poke, reschedule and
/// deferrable modes, with `execution_delta`, dag-factory's `execution_date_fn`,
/// `failed_states` and `soft_fail`; dag-factory's `external_task_sensor.yml` unchanged; an
/// ExternalTaskMarker whose clear reaches into the other DAG.
#[tokio::test]
async fn cross_dag_triggers_sensors_and_markers() {
    for db in databases().await {
        let mut env = env_on(&db).await;
        let fixtures =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dag_factory_cross_dag");
        copy_dir(&fixtures, &env.dags);
        env.write_dag(
            "cross.yaml",
            r#"parent:
  params: {n: 7}
  tasks:
    kick:
      operator: TriggerDagRunOperator
      trigger_dag_id: child
      trigger_run_id: "from_parent__{{ run_id }}"
      conf: {n: "{{ params.n }}", src: "{{ dag_run.run_id }}"}
      wait_for_completion: true
      poke_interval: 1
    kick_deferred:
      operator: trigger_dagrun
      trigger_dag_id: child
      trigger_run_id: "deferred__{{ run_id }}"
      wait_for_completion: true
      deferrable: true
      poke_interval: 1
    after:
      operator: bash
      bash_command: "echo got {{ ti.xcom_pull('kick') }} key={{ ti.xcom_pull(task_ids='kick', key='trigger_run_id') }}"
      dependencies: [kick, kick_deferred]
child:
  tasks:
    work: {operator: bash, bash_command: "echo n={{ dag_run.conf.get('n') }}"}
parent_fail:
  tasks:
    kick: {operator: trigger_dagrun, trigger_dag_id: failing_child, wait_for_completion: true, poke_interval: 1}
    missing: {operator: trigger_dagrun, trigger_dag_id: nope_dag}
failing_child:
  tasks:
    boom: {operator: bash, bash_command: "exit 1"}
example_external_task_sensor_dag_factory_producer:
  tasks:
    producer_task: {operator: bash, bash_command: "echo produced"}
    mark:
      operator: ExternalTaskMarker
      external_dag_id: watcher
      external_task_id: wait_poke
      dependencies: [producer_task]
watcher:
  tasks:
    wait_poke:
      operator: ExternalTaskSensor
      external_dag_id: example_external_task_sensor_dag_factory_producer
      external_task_id: producer_task
      poke_interval: 1
    wait_resched:
      operator: external_task_sensor
      external_dag_id: example_external_task_sensor_dag_factory_producer
      external_task_ids: [producer_task, mark]
      mode: reschedule
      poke_interval: 1
    wait_deferred:
      operator: ExternalTaskSensorAsync
      external_dag_id: example_external_task_sensor_dag_factory_producer
      poke_interval: 1
    wait_missing_day:
      operator: external_task_sensor
      external_dag_id: example_external_task_sensor_dag_factory_producer
      external_task_id: producer_task
      execution_delta: 1d
      poke_interval: 1
      timeout: 3
      soft_fail: true
    after_wait: {operator: bash, bash_command: "echo watched", dependencies: [wait_poke]}
watcher_failed:
  tasks:
    wait:
      operator: external_task_sensor
      external_dag_id: failing_child
      external_task_id: boom
      failed_states: [failed, upstream_failed]
      poke_interval: 1
"#,
        );
        env.start();
        // The DAG with a task id Airflow refuses (`wait_for_producer_task:`) is reported; the
        // file's other DAGs load.
        let errors = env.run(&["dags", "validate"]);
        let text = String::from_utf8_lossy(&errors.stdout).into_owned()
            + &String::from_utf8_lossy(&errors.stderr);
        assert!(text.contains("external_task_sensor.yml"), "{text}");
        assert!(text.contains("wait_for_producer_task:"), "{text}");

        // Trigger, twice, and wait: once in a worker, once in the triggerer.
        let (ok, out) = env.trigger_wait("parent", &[]);
        let run_id = run_id_of(&out);
        let got = states(&env, "parent", &run_id);
        let why = env.stdout(&["tasks", "logs", "parent", &run_id, "kick_deferred"]);
        assert!(ok, "{out}\n{got:?}\n{why}");
        let child_run = format!("from_parent__{run_id}");
        let log = env.stdout(&["tasks", "logs", "child", &child_run, "work"]);
        assert!(log.contains("n=7"), "{log}");
        let log = env.stdout(&["tasks", "logs", "parent", &run_id, "after"]);
        assert!(
            log.contains(&format!("got {child_run} key={child_run}")),
            "{log}"
        );
        let log = env.stdout(&["tasks", "logs", "parent", &run_id, "kick_deferred"]);
        assert!(log.contains("Deferring"), "{log}");
        let runs = env.stdout(&["runs", "list", "child"]);
        assert!(runs.contains(&format!("deferred__{run_id}")), "{runs}");

        let (ok, out) = env.trigger_wait("parent_fail", &[]);
        assert!(!ok, "{out}");
        let bad = run_id_of(&out);
        let log = env.stdout(&["tasks", "logs", "parent_fail", &bad, "kick"]);
        assert!(log.contains("ended failed"), "{log}");
        let log = env.stdout(&["tasks", "logs", "parent_fail", &bad, "missing"]);
        assert!(
            log.contains("`trigger_dag_id`: DAG `nope_dag` does not exist"),
            "{log}"
        );

        // External task sensors: the producer ran at a logical date, the watcher runs at the
        // same one.
        let day = "2024-03-05T00:00:00+00:00";
        let (ok, out) = env.trigger_wait(
            "example_external_task_sensor_dag_factory_producer",
            &["--logical-date", day],
        );
        assert!(ok, "{out}");
        let producer_run = run_id_of(&out);
        let (ok, out) = env.trigger_wait("watcher", &["--logical-date", day]);
        let watcher_run = run_id_of(&out);
        let got = states(&env, "watcher", &watcher_run);
        assert!(ok, "{out}\n{got:?}");
        for (task, state) in [
            ("wait_poke", "success"),
            ("wait_resched", "success"),
            ("wait_deferred", "success"),
            ("wait_missing_day", "skipped"),
            ("after_wait", "success"),
        ] {
            assert_eq!(
                got.get(task).map(String::as_str),
                Some(state),
                "{task}: {got:?}"
            );
        }
        // dag-factory's consumers: the same day, and the next day with one_day_ago.
        let (ok, out) = env.trigger_wait(
            "example_external_task_sensor_dag_factory_consumer",
            &["--logical-date", day],
        );
        assert!(ok, "{out}");
        let (ok, out) = env.trigger_wait(
            "example_external_task_sensor_dag_factory_consumer2",
            &["--logical-date", "2024-03-06T00:00:00+00:00"],
        );
        assert!(ok, "{out}");
        // A failed external task fails the sensor.
        let (_, out) = env.trigger_wait("failing_child", &["--logical-date", day]);
        assert!(out.contains("failed"), "{out}");
        let (ok, out) = env.trigger_wait("watcher_failed", &["--logical-date", day]);
        assert!(!ok, "{out}");
        let log = env.stdout(&["tasks", "logs", "watcher_failed", &run_id_of(&out), "wait"]);
        assert!(log.contains("is failed (failed_states)"), "{log}");

        // Clearing the marker clears the watcher's sensor too (and its downstream).
        let cleared = env.stdout(&[
            "tasks",
            "clear",
            "example_external_task_sensor_dag_factory_producer",
            "-t",
            "^mark$",
            "--start-date",
            day,
            "--end-date",
            day,
            "--yes",
        ]);
        assert!(
            cleared.contains("through an ExternalTaskMarker"),
            "{cleared}"
        );
        assert!(cleared.contains("after_wait"), "{cleared}");
        let _ = producer_run;
    }
}

/// FileSensor, PythonSensor and BashSensor on both backends, in poke, reschedule and (for
/// files) deferrable modes, with `exponential_backoff`/`max_wait`, a `PokeReturnValue` XCom,
/// an `fs` connection's base path, and the endings: a soft-failed timeout is skipped, a bash
/// exit code other than `retry_exit_code` fails at once, a Python sensor that never holds
/// times out.
#[tokio::test]
async fn file_python_and_bash_sensors() {
    for db in databases().await {
        let mut env = env_on(&db).await;
        let landing = env.home.join("landing");
        let dir = landing.to_string_lossy().into_owned();
        env.write_dag(
            "sense.py",
            "import os\nfrom airflow.sdk import PokeReturnValue\n\ndef exists(path):\n    return os.path.isdir(path) and len(os.listdir(path)) > 0\n\ndef with_value(path):\n    if not os.path.isdir(path):\n        return PokeReturnValue(is_done=False)\n    return PokeReturnValue(is_done=True, xcom_value=sorted(os.listdir(path)))\n\ndef never():\n    return False\n\ndef give_up():\n    from airflow.exceptions import AirflowFailException\n    raise AirflowFailException('no point retrying')\n",
        );
        env.write_dag(
            "sensors.yaml",
            &format!(
                r#"sensors_ops:
  params:
    dir: {dir}
  tasks:
    make_file:
      operator: bash
      bash_command: "sleep 2; mkdir -p {{{{ params.dir }}}}/sub; touch {{{{ params.dir }}}}/sub/data_{{{{ ds_nodash }}}}.csv"
    file_poke:
      operator: FileSensor
      filepath: "{{{{ params.dir }}}}/sub/data_*.csv"
      poke_interval: 1
      timeout: 60
    file_resched:
      operator: file_sensor
      fs_conn_id: fs_dir
      filepath: "**/*.csv"
      recursive: true
      mode: reschedule
      poke_interval: 1
      exponential_backoff: true
      max_wait: 2
      timeout: 60
    file_deferred:
      operator: airflow.providers.standard.sensors.filesystem.FileSensor
      filepath: "{{{{ params.dir }}}}/sub"
      deferrable: true
      poke_interval: 1
    py_bool:
      operator: PythonSensor
      python_callable_file: $CONFIG_ROOT_DIR/sense.py
      python_callable_name: exists
      op_kwargs: {{path: "{{{{ params.dir }}}}/sub"}}
      poke_interval: 1
    py_value:
      operator: python_sensor
      python_callable_file: $CONFIG_ROOT_DIR/sense.py
      python_callable_name: with_value
      op_kwargs: {{path: "{{{{ params.dir }}}}/sub"}}
      mode: reschedule
      poke_interval: 1
    bash_sense:
      operator: BashSensor
      bash_command: "ls {{{{ params.dir }}}}/sub/*.csv"
      poke_interval: 1
    show:
      operator: bash
      bash_command: "echo value={{{{ ti.xcom_pull('py_value') | tojson }}}}"
      dependencies: [py_value]
sensors_bad:
  tasks:
    never:
      operator: bash_sensor
      bash_command: "exit 1"
      poke_interval: 1
      timeout: 2
      soft_fail: true
    broken:
      operator: bash_sensor
      bash_command: "exit 3"
      retry_exit_code: 1
      poke_interval: 1
      retries: 1
      retry_delay: 1h
    give_up:
      operator: python
      python_callable_file: $CONFIG_ROOT_DIR/sense.py
      python_callable_name: give_up
      retries: 1
      retry_delay: 1h
    py_timeout:
      operator: python_sensor
      python_callable_file: $CONFIG_ROOT_DIR/sense.py
      python_callable_name: never
      poke_interval: 1
      timeout: 2
"#
            ),
        );
        let extra = serde_json::json!({"path": dir}).to_string();
        env.stdout(&[
            "connections",
            "add",
            "fs_dir",
            "--conn-type",
            "fs",
            "--conn-extra",
            &extra,
        ]);
        env.start();
        let (ok, out) = env.trigger_wait("sensors_ops", &[]);
        let run_id = run_id_of(&out);
        let got = states(&env, "sensors_ops", &run_id);
        let why = env.stdout(&["tasks", "logs", "sensors_ops", &run_id, "py_bool"]);
        assert!(ok, "{out}\n{got:?}\n{why}");
        assert!(got.values().all(|s| s == "success"), "{got:?}");
        let log = env.stdout(&["tasks", "logs", "sensors_ops", &run_id, "show"]);
        assert!(log.contains("value=[\""), "{log}");
        for (task, seen) in [
            ("file_poke", "Poking for file"),
            ("file_resched", "Not yet: rescheduled"),
            ("file_deferred", "Deferring to the triggerer"),
        ] {
            let log = env.stdout(&["tasks", "logs", "sensors_ops", &run_id, task]);
            assert!(log.contains(seen), "{task}: {log}");
        }

        let (ok, out) = env.trigger_wait("sensors_bad", &[]);
        assert!(!ok, "{out}");
        let bad = run_id_of(&out);
        let got = states(&env, "sensors_bad", &bad);
        assert_eq!(
            got.get("never").map(String::as_str),
            Some("skipped"),
            "{got:?}"
        );
        assert_eq!(
            got.get("broken").map(String::as_str),
            Some("failed"),
            "{got:?}"
        );
        assert_eq!(
            got.get("py_timeout").map(String::as_str),
            Some("failed"),
            "{got:?}"
        );
        // Failed for good despite `retries: 1` (a retry would wait an hour, and this run would
        // not have ended).
        assert_eq!(
            got.get("give_up").map(String::as_str),
            Some("failed"),
            "{got:?}"
        );
        let log = env.stdout(&["tasks", "logs", "sensors_bad", &bad, "broken"]);
        assert!(log.contains("non-zero exit code 3"), "{log}");
        let log = env.stdout(&["tasks", "logs", "sensors_bad", &bad, "py_timeout"]);
        assert!(log.contains("Sensor timed out"), "{log}");
    }
}

/// EmailOperator against a real SMTP server (aiosmtpd): through an `smtp` connection with a
/// login (recipients split as Airflow splits them, cc and bcc, an attachment, the password
/// never logged) and through the `FLOW__SMTP__*` settings; a refused server and a wrong
/// password fail the try naming the connection.
#[tokio::test]
async fn email_over_a_real_smtp_server() {
    let Some(python) = common::python_with("aiosmtpd", "aiosmtpd") else {
        return;
    };
    for db in databases().await {
        let mut env = env_on(&db).await;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp_server.py");
        let port_file = env.home.join("smtp.port");
        let log_file = env.home.join("smtp.messages");
        let _server = KillOnDrop(
            Command::new(&python)
                .arg(&script)
                .arg(&port_file)
                .arg(&log_file)
                .spawn()
                .unwrap(),
        );
        let port = port_from(&port_file, "the SMTP server");
        let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = env.home.to_string_lossy().into_owned();
        env.write_dag(
            "mail.yaml",
            &format!(
                r#"mail_ops:
  params:
    dir: {dir}
  tasks:
    report:
      operator: bash
      bash_command: "echo 'a,b' > {{{{ params.dir }}}}/report.csv"
    send_conn:
      operator: EmailOperator
      conn_id: smtp_test
      to: "ops@example.com; lead@example.com"
      cc: [cc@example.com]
      bcc: hidden@example.com
      subject: "Run {{{{ run_id }}}} done"
      html_content: "<h1>Loaded {{{{ ds }}}}</h1>"
      files: ["{{{{ params.dir }}}}/report.csv"]
      from_email: flow@example.com
      dependencies: [report]
    send_settings:
      operator: airflow.providers.smtp.operators.smtp.EmailOperator
      to: ops@example.com
      subject: from settings
      html_content: hello
mail_bad:
  tasks:
    refused:
      operator: email
      conn_id: smtp_dead
      to: x@example.com
      subject: s
      html_content: c
      from_email: f@example.com
    bad_login:
      operator: email
      conn_id: smtp_wrong
      to: x@example.com
      subject: s
      html_content: c
      from_email: f@example.com
"#
            ),
        );
        for (id, login, password, p) in [
            ("smtp_test", "mailer", "pw-smtp-secret-99", port),
            ("smtp_wrong", "mailer", "not-the-password", port),
            ("smtp_dead", "mailer", "x", dead_port),
        ] {
            let conn = serde_json::json!({
                "conn_type": "smtp", "host": "127.0.0.1", "port": p, "login": login,
                "password": password, "extra": {"disable_tls": true, "disable_ssl": true}
            });
            env.stdout(&["connections", "add", id, "--conn-json", &conn.to_string()]);
        }
        let child = env
            .command()
            .env("FLOW__SMTP__SMTP_HOST", "127.0.0.1")
            .env("FLOW__SMTP__SMTP_PORT", port.to_string())
            .env("FLOW__SMTP__SMTP_STARTTLS", "false")
            .env("FLOW__SMTP__SMTP_MAIL_FROM", "settings@example.com")
            .arg("standalone")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        env.standalone = Some(child);
        let (ok, out) = env.trigger_wait("mail_ops", &[]);
        let run_id = run_id_of(&out);
        let log = env.stdout(&["tasks", "logs", "mail_ops", &run_id, "send_conn"]);
        assert!(ok, "{out}\n{log}");
        assert!(!log.contains("pw-smtp-secret-99"), "{log}");
        let messages: Vec<serde_json::Value> = std::fs::read_to_string(&log_file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let with_conn = messages
            .iter()
            .find(|m| {
                m["data"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("Run {run_id} done"))
            })
            .expect("the connection's message arrived");
        assert_eq!(with_conn["login"], "mailer", "{with_conn}");
        assert_eq!(with_conn["from"], "flow@example.com");
        let mut rcpt: Vec<&str> = with_conn["to"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        rcpt.sort_unstable();
        assert_eq!(
            rcpt,
            [
                "cc@example.com",
                "hidden@example.com",
                "lead@example.com",
                "ops@example.com"
            ]
        );
        let data = with_conn["data"].as_str().unwrap();
        assert!(data.contains("report.csv"), "the attachment: {data}");
        assert!(
            !data.to_ascii_lowercase().contains("bcc:"),
            "bcc stays hidden: {data}"
        );
        let via_settings = messages
            .iter()
            .find(|m| m["data"].as_str().unwrap().contains("from settings"))
            .expect("the settings' message arrived");
        assert_eq!(via_settings["from"], "settings@example.com");

        let (ok, out) = env.trigger_wait("mail_bad", &[]);
        assert!(!ok, "{out}");
        let bad = run_id_of(&out);
        let log = env.stdout(&["tasks", "logs", "mail_bad", &bad, "refused"]);
        assert!(log.contains("SMTP (connection `smtp_dead`"), "{log}");
        let log = env.stdout(&["tasks", "logs", "mail_bad", &bad, "bad_login"]);
        assert!(log.contains("SMTP (connection `smtp_wrong`"), "{log}");
        assert!(!log.contains("not-the-password"), "{log}");
    }
}

/// The port a helper server wrote to `file` once listening (it renames the file into place,
/// so a read never sees half a number).
fn port_from(file: &Path, what: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            return text.trim().parse().expect("a port number");
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A helper process killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A REST call with the standalone admin's basic credentials; the JSON answer (or `null`).
fn api(
    port: &str,
    password: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> serde_json::Value {
    let mut args = vec![
        "-s".to_owned(),
        "-X".to_owned(),
        method.to_owned(),
        "-u".to_owned(),
        format!("admin:{password}"),
        "-H".to_owned(),
        "Content-Type: application/json".to_owned(),
    ];
    if let Some(b) = body {
        args.push("-d".to_owned());
        args.push(b.to_owned());
    }
    args.push(format!("http://127.0.0.1:{port}{path}"));
    let out = Command::new("curl").args(&args).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The asset-triggered runs of a DAG: (run_id, state).
fn asset_runs(env: &Env, dag_id: &str) -> Vec<(String, String)> {
    env.stdout(&["runs", "list", dag_id])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (run_id, run_type, state) = (parts.next()?, parts.next()?, parts.next()?);
            (run_type == "asset_triggered").then(|| (run_id.to_owned(), state.to_owned()))
        })
        .collect()
}

/// Waits for a successful asset-triggered run of `dag_id` and returns its run id.
fn wait_asset_run(env: &Env, dag_id: &str) -> String {
    wait_for(90, &format!("an asset-triggered run of {dag_id}"), || {
        asset_runs(env, dag_id)
            .into_iter()
            .find(|(_, s)| s == "success")
            .map(|(r, _)| r)
    })
}

/// The events a run consumed, through the REST API: (uri, source_dag_id).
fn upstream_events(
    port: &str,
    password: &str,
    dag_id: &str,
    run_id: &str,
) -> Vec<(String, String)> {
    let path = format!(
        "/api/v2/dags/{dag_id}/dagRuns/{}/upstreamAssetEvents",
        run_id.replace('+', "%2B")
    );
    api(port, password, "GET", &path, None)["asset_events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["uri"].as_str().unwrap_or("").to_owned(),
                e["source_dag_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn asset_id(port: &str, password: &str, uri: &str) -> i64 {
    let answer = api(
        port,
        password,
        "GET",
        &format!("/api/v2/assets?uri_pattern={uri}&limit=100"),
        None,
    );
    answer["assets"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["uri"] == uri))
        .and_then(|x| x["id"].as_i64())
        .unwrap_or_else(|| panic!("no asset {uri} in {answer}"))
}

const ASSET_DAGS: &str = r#"
x_producer:
  tasks:
    write:
      operator: bash
      bash_command: 'echo "{\"rows\": 3}"'
      outlets: [{uri: "s3://flow-test/x", extra_from_xcom: true}]
both_consumer:
  schedule: ["s3://flow-test/x", "s3://flow-test/y"]
  tasks:
    show:
      operator: bash
      bash_command: >-
        test "{{ triggering_asset_events['s3://flow-test/x'][-1].extra.rows }}" = 3 &&
        test "{{ triggering_asset_events['s3://flow-test/y'][-1].extra.from_rest_api }}" = True
    show_py:
      operator: python
      python_callable_name: show
      python_callable_file: assets_cb.py
beacon:
  schedule: {datasets: "s3://flow-test/beacon"}
  tasks:
    t: {operator: empty}
"#;

const ASSET_CALLABLES: &str = r#"
from airflow.sdk import Asset

def show(triggering_asset_events):
    events = triggering_asset_events[Asset("s3://flow-test/x")]
    assert events[-1].source_dag_id == "x_producer", events
    assert events[-1].extra == {"rows": 3}, events
    print("PY-EVENTS", sorted(triggering_asset_events))
"#;

/// Assets end to end through `flow standalone`: dag-factory's asset examples (producer ->
/// event -> consumer, names from a dataset file, `&`/`|` conditions as strings and as YAML,
/// cron-or-assets), an external event posted through the REST API triggering a run, an `&`
/// condition that waits for both assets, and the events each run consumed, in its templates,
/// its Python context and the API.
#[tokio::test]
async fn assets_trigger_runs_end_to_end() {
    for db in databases().await {
        let env = env_on(&db).await;
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        copy_dir(&fixtures.join("dag_factory_assets"), &env.dags);
        env.write_dag("assets.yaml", ASSET_DAGS);
        std::fs::write(env.dags.join("assets_cb.py"), ASSET_CALLABLES).unwrap();
        // The dataset definitions file is not a broken DAG file; the others load whole.
        let validate = env.run(&["dags", "validate"]);
        let text = String::from_utf8_lossy(&validate.stdout).into_owned()
            + &String::from_utf8_lossy(&validate.stderr);
        assert!(validate.status.success(), "{text}");
        let mut cmd = env.command();
        cmd.env("AIRFLOW_HONE", &env.home);
        let standalone = common::Standalone::start(cmd);
        let port = standalone.port.clone();
        let password = std::fs::read_to_string(env.home.join("standalone_admin_password.txt"))
            .unwrap()
            .trim()
            .to_owned();

        // asset_triggered_dags.yml: the producer's PythonOperator writes the file and its
        // outlet triggers the consumer.
        let (ok, out) = env.trigger_wait("producer_dag", &[]);
        assert!(ok, "{out}");
        assert!(env.home.join("data.csv").exists());
        let run = wait_asset_run(&env, "consumer_dag");
        let events = upstream_events(&port, &password, "consumer_dag", &run);
        assert!(
            events
                .iter()
                .any(|(u, s)| u == "file:///$AIRFLOW_HONE/data.csv" && s == "producer_dag"),
            "{events:?}"
        );

        // example_dag_datasets.yml: plain URIs, names from example_config_datasets.yml, and
        // conditions as a string and as `__or__`/`__and__`.
        for producer in [
            "example_simple_dataset_producer_dag",
            "example_custom_config_dataset_producer_dag",
            "example_simple_dataset_alias_dag",
        ] {
            let (ok, out) = env.trigger_wait(producer, &[]);
            assert!(ok, "{producer}: {out}");
        }
        for consumer in [
            "example_simple_dataset_consumer_dag",
            "example_custom_config_dataset_consumer_dag",
            "example_custom_config_condition_dataset_consumer_dag",
            "example_without_custom_config_condition_dataset_consumer_dag",
        ] {
            let run = wait_asset_run(&env, consumer);
            assert!(!upstream_events(&port, &password, consumer, &run).is_empty());
        }

        // An `&` condition waits for both assets: x alone queues, y through the API
        // completes it. `beacon` (triggered after x's event was queued) proves the scheduler
        // has looked at the queue in between.
        let (ok, out) = env.trigger_wait("x_producer", &[]);
        assert!(ok, "{out}");
        let beacon = asset_id(&port, &password, "s3://flow-test/beacon");
        let posted = api(
            &port,
            &password,
            "POST",
            "/api/v2/assets/events",
            Some(&format!(r#"{{"asset_id": {beacon}}}"#)),
        );
        assert_eq!(posted["extra"]["from_rest_api"], true, "{posted}");
        wait_asset_run(&env, "beacon");
        assert!(asset_runs(&env, "both_consumer").is_empty());
        let queued = api(
            &port,
            &password,
            "GET",
            "/api/v2/dags/both_consumer/assets/queuedEvents",
            None,
        );
        assert_eq!(queued["total_entries"], 1, "{queued}");
        let y = asset_id(&port, &password, "s3://flow-test/y");
        let posted = api(
            &port,
            &password,
            "POST",
            "/api/v2/assets/events",
            Some(&format!(r#"{{"asset_id": {y}, "extra": {{"k": "v"}}}}"#)),
        );
        assert_eq!(posted["uri"], "s3://flow-test/y", "{posted}");
        let run = wait_asset_run(&env, "both_consumer");
        let mut events = upstream_events(&port, &password, "both_consumer", &run);
        events.sort();
        assert_eq!(
            events,
            vec![
                ("s3://flow-test/x".to_owned(), "x_producer".to_owned()),
                ("s3://flow-test/y".to_owned(), String::new()),
            ]
        );
        let log = env.stdout(&["tasks", "logs", "both_consumer", &run, "show_py"]);
        assert!(
            log.contains("PY-EVENTS ['s3://flow-test/x', 's3://flow-test/y']"),
            "{log}"
        );
        // Consumed: nothing waits any more, and the event lists the run it triggered.
        let queued = api(
            &port,
            &password,
            "GET",
            "/api/v2/dags/both_consumer/assets/queuedEvents",
            None,
        );
        assert_eq!(queued["total_entries"], 0, "{queued}");
        let listed = api(
            &port,
            &password,
            "GET",
            &format!("/api/v2/assets/events?asset_id={y}"),
            None,
        );
        assert_eq!(
            listed["asset_events"][0]["created_dagruns"][0]["run_id"], run,
            "{listed}"
        );
        // An unknown asset and an extra that is not an object are refused.
        let missing = api(
            &port,
            &password,
            "POST",
            "/api/v2/assets/events",
            Some(r#"{"asset_id": 999999}"#),
        );
        assert!(
            missing["detail"].as_str().unwrap_or("").contains("999999"),
            "{missing}"
        );
        let bad = api(
            &port,
            &password,
            "POST",
            "/api/v2/assets/events",
            Some(&format!(r#"{{"asset_id": {y}, "extra": [1]}}"#)),
        );
        assert!(bad["detail"].to_string().contains("extra"), "{bad}");

        // example_dataset_or_timetable_schedule.yml: cron or assets; an external event on
        // dataset_uri_3 alone satisfies `(1 & 2) | 3`.
        let third = asset_id(&port, &password, "dataset_uri_3");
        api(
            &port,
            &password,
            "POST",
            "/api/v2/assets/events",
            Some(&format!(r#"{{"asset_id": {third}}}"#)),
        );
        wait_asset_run(&env, "consumer_time_schedule_dag");

        // The files whose DAG ids clash with asset_triggered_dags.yml's, one deployment at a
        // time.
        let phases = fixtures.join("dag_factory_assets_phases");
        std::fs::remove_file(env.dags.join("asset_triggered_dags.yml")).unwrap();
        let mut previous: Option<PathBuf> = None;
        for (file, producer, trigger_uri) in [
            (
                "example_dag_datasets_outlet_inlet.yml",
                Some("producer_dag"),
                None,
            ),
            (
                "example_dataset_condition_string.yml",
                None,
                Some("s3://bucket-cjmm/raw/dataset_custom_3"),
            ),
            (
                "example_dataset_yaml_syntax.yml",
                None,
                Some("s3://bucket-cjmm/raw/dataset_custom_3"),
            ),
        ] {
            if let Some(p) = previous.take() {
                std::fs::remove_file(p).unwrap();
            }
            let target = env.dags.join("datasets").join(file);
            std::fs::copy(phases.join(file), &target).unwrap();
            previous = Some(target);
            let before = asset_runs(&env, "consumer_dag").len();
            // The new file's consumer_dag is in place once the store says it comes from it.
            wait_for(
                60,
                &format!("consumer_dag from {file} in the store"),
                || {
                    let dag = api(&port, &password, "GET", "/api/v2/dags/consumer_dag", None);
                    (dag["fileloc"].as_str().is_some_and(|f| f.ends_with(file))
                        && dag["is_active"] != false)
                        .then_some(())
                },
            );
            match (producer, trigger_uri) {
                (Some(p), _) => {
                    let (ok, out) = env.trigger_wait(p, &[]);
                    assert!(ok, "{file}: {out}");
                }
                (None, Some(uri)) => {
                    let id = asset_id(&port, &password, uri);
                    api(
                        &port,
                        &password,
                        "POST",
                        "/api/v2/assets/events",
                        Some(&format!(r#"{{"asset_id": {id}}}"#)),
                    );
                }
                (None, None) => unreachable!(),
            }
            wait_for(90, &format!("consumer_dag of {file} runs"), || {
                let runs = asset_runs(&env, "consumer_dag");
                (runs.len() > before && runs.iter().all(|(_, s)| s == "success")).then_some(())
            });
        }
        drop(standalone);
        drop(env);
        db.drop_db().await.unwrap();
    }
}

/// The callback requests of a run, through the store: (task_id, event, status, attempts).
async fn callback_rows(
    url: &str,
    dag_id: &str,
    run_id: &str,
) -> Vec<(String, String, String, i64)> {
    let store = flow_store::Store::connect(url).await.unwrap();
    let rows = store
        .callback_list_for_run(dag_id, run_id, true)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            (
                c.target.task_id.unwrap_or_default(),
                c.event,
                c.status,
                c.attempts,
            )
        })
        .collect();
    store.close().await;
    rows
}

async fn wait_callbacks(
    url: &str,
    dag_id: &str,
    run_id: &str,
    what: &str,
    done: impl Fn(&[(String, String, String, i64)]) -> bool,
) -> Vec<(String, String, String, i64)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = callback_rows(url, dag_id, run_id).await;
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Callbacks and notifiers through `flow standalone`: dag-factory's `example_callbacks.yml`
/// unchanged (callables by path and by file, with parameters, from task groups' and the DAG's
/// settings), and a failing task that fires its webhooks (received by a test server: one
/// answering 500 retried and recorded, one failing once then succeeding), its DAG's webhook
/// once per run, and Airflow's `email_on_failure` / `email_on_retry` (received by aiosmtpd).
/// A webhook that takes 20 s never holds up the run, and no callback changes a state.
#[tokio::test]
async fn callbacks_and_notifiers_fire_without_touching_states() {
    let Some(python) = common::python_with("aiosmtpd", "aiosmtpd") else {
        return;
    };
    for db in databases().await {
        let env = env_on(&db).await;
        let url = db.url.clone();
        let http = HttpServer::start(&env.home);
        let smtp_script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp_server.py");
        let smtp_port_file = env.home.join("smtp.port");
        let smtp_log = env.home.join("smtp.messages");
        let _smtp = KillOnDrop(
            Command::new(&python)
                .arg(&smtp_script)
                .arg(&smtp_port_file)
                .arg(&smtp_log)
                .spawn()
                .unwrap(),
        );
        let smtp_port = port_from(&smtp_port_file, "the SMTP server");
        let fixtures =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dag_factory_callbacks");
        copy_dir(&fixtures, &env.dags);
        let hook = format!("http://127.0.0.1:{}", http.port);
        env.write_dag(
            "alerts.yaml",
            &format!(
                r#"alerts:
  on_failure_callback:
    callback: webhook
    url: {hook}/hook
    text: "run {{{{ run_id }}}} of {{{{ dag.dag_id }}}} failed"
  default_args:
    email: oncall@example.com
    retries: 1
    retry_delay: 1s
    on_failure_callback:
      - {{callback: webhook, url: "{hook}/hook", text: "{{{{ ti.task_id }}}} failed in {{{{ dag.dag_id }}}}"}}
      - {{callback: webhook, url: "{hook}/hook_500"}}
      - {{bash_command: "echo bash-callback {{{{ ti.task_id }}}}"}}
    on_retry_callback: {{callback: webhook, url: "{hook}/hook_flaky/retry"}}
  tasks:
    boom: {{operator: bash, bash_command: "exit 3"}}
    slow_hook:
      operator: bash
      bash_command: echo ok
      email_on_failure: false
      on_success_callback: {{callback: webhook, url: "{hook}/hook_slow", timeout: 40}}
    after_slow: {{operator: bash, bash_command: "echo after", dependencies: [slow_hook]}}
"#
            ),
        );
        let slack = serde_json::json!({
            "conn_type": "slackwebhook", "host": hook, "password": "hook"
        });
        let mut cmd = env.command();
        cmd.env("FLOW__SMTP__SMTP_HOST", "127.0.0.1")
            .env("FLOW__SMTP__SMTP_PORT", smtp_port.to_string())
            .env("FLOW__SMTP__SMTP_STARTTLS", "false")
            .env("FLOW__SMTP__SMTP_MAIL_FROM", "flow@example.com")
            .env("FLOW_CONN_SLACK_CONN_ID", slack.to_string());
        let standalone = common::Standalone::start(cmd);

        // dag-factory's example: every success callback ran, with its parameters.
        let (ok, out) = env.trigger_wait("callbacks", &[]);
        assert!(ok, "{out}");
        let run = run_id_of(&out);
        let rows = wait_callbacks(&url, "callbacks", &run, "the example's callbacks", |rows| {
            rows.len() >= 5 && rows.iter().all(|r| r.2 == "success")
        })
        .await;
        let with_callbacks: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        for task in ["start", "task_1", "task_2", "task_group_1.task_3", ""] {
            assert!(with_callbacks.contains(&task), "{task}: {rows:?}");
        }
        let log = env.stdout(&["tasks", "logs", "callbacks", &run, "task_1"]);
        assert!(log.contains("param1 ---------- param2"), "{log}");
        let log = env.stdout(&["tasks", "logs", "callbacks", &run, "task_group_1.task_3"]);
        assert!(log.contains("hello from callback"), "{log}");

        // A failing task: a retry, then the failure; the slow webhook did not hold the run.
        let started = Instant::now();
        let (ok, out) = env.trigger_wait("alerts", &[]);
        assert!(!ok, "{out}");
        let run = run_id_of(&out);
        let s = states(&env, "alerts", &run);
        assert_eq!(s["boom"], "failed");
        assert_eq!(s["after_slow"], "success");
        let slow_pending = callback_rows(&url, "alerts", &run)
            .await
            .into_iter()
            .any(|r| r.0 == "slow_hook" && r.2 != "success");
        assert!(
            slow_pending && started.elapsed() < Duration::from_secs(20),
            "the run waited for the slow webhook ({:?})",
            started.elapsed()
        );
        let rows = wait_callbacks(&url, "alerts", &run, "the alerts' callbacks", |rows| {
            let done = |task: &str, event: &str| {
                rows.iter()
                    .filter(|r| r.0 == task && r.1 == event)
                    .all(|r| r.2 == "success" || r.2 == "failed" || r.3 >= 1)
            };
            rows.iter()
                .any(|r| r.1 == "on_retry_callback" && r.2 == "success" && r.3 == 2)
                && done("boom", "on_failure_callback")
                && rows.iter().any(|r| r.0.is_empty() && r.2 == "success")
                && rows.iter().any(|r| r.0 == "slow_hook" && r.2 == "success")
        })
        .await;
        // The webhook answering 500 was tried and recorded, and is retried; states stay.
        let failing = rows.iter().find(|r| {
            r.0 == "boom" && r.1 == "on_failure_callback" && r.3 >= 1 && r.2 != "success"
        });
        assert!(failing.is_some(), "{rows:?}");
        let s = states(&env, "alerts", &run);
        assert_eq!(
            (s["boom"].as_str(), s["after_slow"].as_str()),
            ("failed", "success")
        );
        let log = env.stdout(&["tasks", "logs", "alerts", &run, "boom", "--try", "2"]);
        assert!(log.contains("answered 500 Internal Server Error"), "{log}");
        assert!(log.contains("bash-callback boom"), "{log}");
        let requests = http.requests();
        let texts: Vec<String> = requests
            .iter()
            .filter(|r| r["path"] == "/hook")
            .filter_map(|r| serde_json::from_str::<serde_json::Value>(r["body"].as_str()?).ok())
            .map(|b| b["text"].as_str().unwrap_or("").to_owned())
            .collect();
        assert!(
            texts.contains(&"boom failed in alerts".to_owned()),
            "{texts:?}"
        );
        assert_eq!(
            texts
                .iter()
                .filter(|t| **t == format!("run {run} of alerts failed"))
                .count(),
            1,
            "the DAG's callback fires once per run: {texts:?}"
        );
        let body: serde_json::Value = requests
            .iter()
            .find(|r| r["path"] == "/hook_500")
            .and_then(|r| serde_json::from_str(r["body"].as_str()?).ok())
            .unwrap();
        assert_eq!(body["task_id"], "boom");
        assert_eq!(body["state"], "failed");
        assert_eq!(body["try_number"], 2);
        assert!(
            body["log_url"].as_str().unwrap().contains("/tasks/boom"),
            "{body}"
        );
        // email_on_retry and email_on_failure (Airflow's defaults once `email` is set).
        let mails = wait_for(60, "two emails", || {
            let text = std::fs::read_to_string(&smtp_log).unwrap_or_default();
            let subjects: Vec<String> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|m| m["to"][0] == "oncall@example.com")
                .map(|m| m["data"].as_str().unwrap_or("").to_owned())
                .collect();
            (subjects.len() >= 2).then_some(subjects)
        });
        assert!(
            mails
                .iter()
                .any(|m| m.contains("alerts.boom up for retry (try 1)")),
            "{mails:?}"
        );
        assert!(
            mails
                .iter()
                .any(|m| m.contains("alerts.boom failed (try 2)")),
            "{mails:?}"
        );
        drop(standalone);
        drop(env);
        db.drop_db().await.unwrap();
    }
}

/// Backfills through the REST API as Airflow 3's: a dry run lists the due dates, the backfill
/// makes exactly those runs (existing ones kept or reprocessed as asked), runs them within
/// its own `max_active_runs`, refuses a second one while it runs, completes; another is
/// paused (its runs wait), then cancelled (its queued runs fail). `flow dags backfill` makes
/// the same kind of backfill.
#[tokio::test]
async fn backfills_through_the_api_create_exactly_the_due_runs() {
    for db in databases().await {
        let env = env_on(&db).await;
        let ledger = env.home.join("ledger.txt");
        env.write_dag(
            "bf.yaml",
            &format!(
                r#"daily:
  schedule: "@daily"
  start_date: 2025-01-01
  catchup: false
  max_active_runs: 1
  is_paused_upon_creation: true
  tasks:
    work:
      operator: bash
      bash_command: 'echo "start {{{{ ds }}}} $(date +%s%N)" >> {ledger}; sleep 0.3; echo "end {{{{ ds }}}} $(date +%s%N)" >> {ledger}'
slow:
  schedule: "@daily"
  start_date: 2025-01-01
  catchup: false
  tasks:
    work: {{operator: bash, bash_command: "sleep 30"}}
"#,
                ledger = ledger.display()
            ),
        );
        let standalone = common::Standalone::start(env.command());
        let port = standalone.port.clone();
        let password = std::fs::read_to_string(env.home.join("standalone_admin_password.txt"))
            .unwrap()
            .trim()
            .to_owned();
        wait_for(60, "daily parsed", || {
            let d = api(&port, &password, "GET", "/api/v2/dags/daily", None);
            (d["dag_id"] == "daily").then_some(())
        });
        env.stdout(&["dags", "unpause", "daily"]);
        // A run the backfill finds in place (2025-01-02): kept with reprocess_behavior none.
        let (ok, out) = env.trigger_wait("daily", &["--logical-date", "2025-01-02T00:00:00Z"]);
        assert!(ok, "{out}");
        env.stdout(&["dags", "pause", "daily"]);
        let body = r#"{"dag_id": "daily", "from_date": "2025-01-01T00:00:00Z", "to_date": "2025-01-05T00:00:00Z", "max_active_runs": 2, "dag_run_conf": {"k": 1}}"#;
        let dry = api(
            &port,
            &password,
            "POST",
            "/api/v2/backfills/dry_run",
            Some(body),
        );
        let dates: Vec<String> = dry["backfills"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| b["logical_date"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(dates.len(), 4, "{dry}");
        assert!(!dates.iter().any(|d| d.starts_with("2025-01-02")), "{dry}");
        let created = api(&port, &password, "POST", "/api/v2/backfills", Some(body));
        let id = created["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("{created}"));
        assert_eq!(created["max_active_runs"], 2);
        assert_eq!(created["reprocess_behavior"], "none");
        // The DAG is paused: the backfill's runs wait, so it is still running here.
        let again = api(&port, &password, "POST", "/api/v2/backfills", Some(body));
        assert!(
            again["detail"]
                .as_str()
                .unwrap_or("")
                .contains("backfill running already"),
            "{again}"
        );
        env.stdout(&["dags", "unpause", "daily"]);
        let done = wait_for(120, "the backfill to complete", || {
            let b = api(
                &port,
                &password,
                "GET",
                &format!("/api/v2/backfills/{id}"),
                None,
            );
            (!b["completed_at"].is_null()).then_some(b)
        });
        assert_eq!(done["dag_id"], "daily");
        let runs = env.stdout(&["runs", "list", "daily"]);
        let backfill_runs: Vec<&str> = runs
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("backfill"))
            .collect();
        assert_eq!(backfill_runs.len(), 4, "{runs}");
        assert!(
            backfill_runs.iter().all(|l| l.contains(" success ")),
            "{runs}"
        );
        // Two at a time: the backfill's limit, not the DAG's max_active_runs of 1.
        let text = std::fs::read_to_string(&ledger).unwrap();
        let mut events: Vec<(u128, i32)> = text
            .lines()
            .filter_map(|l| {
                let mut p = l.split_whitespace();
                let kind = p.next()?;
                let _ds = p.next()?;
                let at: u128 = p.next()?.parse().ok()?;
                Some((at, if kind == "start" { 1 } else { -1 }))
            })
            .collect();
        events.sort();
        let (mut now, mut most) = (0, 0);
        for (_, d) in events {
            now += d;
            most = most.max(now);
        }
        assert!(most <= 2, "{most} backfill tries at once");
        // Reprocess failed ones: none failed, so nothing to do (Airflow's 422-style refusal).
        let none = api(
            &port,
            &password,
            "POST",
            "/api/v2/backfills",
            Some(
                r#"{"dag_id": "daily", "from_date": "2025-01-01T00:00:00Z", "to_date": "2025-01-05T00:00:00Z", "reprocess_behavior": "failed"}"#,
            ),
        );
        assert!(
            none["detail"].to_string().contains("no run to create"),
            "{none}"
        );
        // Pause holds a backfill's runs; cancel fails its queued ones and completes it. One
        // at a time and 30 s each: when it is cancelled, two of its runs are still queued.
        let later = api(
            &port,
            &password,
            "POST",
            "/api/v2/backfills",
            Some(
                r#"{"dag_id": "slow", "from_date": "2025-02-01T00:00:00Z", "to_date": "2025-02-03T00:00:00Z", "run_backwards": true, "max_active_runs": 1}"#,
            ),
        );
        let later_id = later["id"].as_i64().unwrap_or_else(|| panic!("{later}"));
        let paused = api(
            &port,
            &password,
            "PUT",
            &format!("/api/v2/backfills/{later_id}/pause"),
            None,
        );
        assert_eq!(paused["is_paused"], true, "{paused}");
        let cancelled = api(
            &port,
            &password,
            "PUT",
            &format!("/api/v2/backfills/{later_id}/cancel"),
            None,
        );
        assert!(!cancelled["completed_at"].is_null(), "{cancelled}");
        let runs = env.stdout(&["runs", "list", "slow"]);
        let february: Vec<&str> = runs.lines().filter(|l| l.contains("2025-02-0")).collect();
        assert_eq!(february.len(), 3, "{runs}");
        let failed = february.iter().filter(|l| l.contains(" failed ")).count();
        assert!(failed >= 2, "the queued runs fail: {runs}");
        let listed = api(
            &port,
            &password,
            "GET",
            "/api/v2/backfills?dag_id=daily",
            None,
        );
        assert_eq!(listed["total_entries"], 1, "{listed}");
        // The CLI makes a backfill too, and follows it.
        let out = env.run(&[
            "dags",
            "backfill",
            "daily",
            "-s",
            "2025-03-01",
            "-e",
            "2025-03-02",
            "--max-active-runs",
            "1",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("2 run(s)"), "{text}");
        let listed = api(
            &port,
            &password,
            "GET",
            "/api/v2/backfills?dag_id=daily",
            None,
        );
        assert_eq!(listed["total_entries"], 2, "{listed}");
        drop(standalone);
        drop(env);
        db.drop_db().await.unwrap();
    }
}

const METERED_DAG: &str = r#"
metered:
  tasks:
    first:
      operator: bash
      bash_command: sleep 2
    second:
      operator: bash
      bash_command: echo done
      dependencies: [first]
"#;

/// `/metrics`, parsed by an independent Prometheus text-format parser.
fn scrape(port: &str) -> prometheus_parse::Scrape {
    let out = Command::new("curl")
        .args(["-s", "-f", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET /metrics on port {port} failed");
    let text = String::from_utf8(out.stdout).unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `name` with (at least) `labels`, if there is one.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// Scraping `/metrics` of a real `flow standalone` during a run: the running task shows in
/// the gauges, and once the run ends the counters and each hand-off's histogram have moved;
/// `flow triggerer --metrics-port` serves its own.
#[tokio::test]
async fn metrics_move_during_a_run() {
    for db in databases().await {
        let env = env_on(&db).await;
        env.write_dag("metered.yaml", METERED_DAG);
        let standalone = common::Standalone::start(env.command());
        let port = standalone.port.clone();
        let before = scrape(&port);
        assert_eq!(sample(&before, "flow_metadata_db_up", &[]), Some(1.0));
        let out = env.run(&["dags", "trigger", "metered", "--run-id", "m1"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(60, "a running task instance in /metrics", || {
            let s = scrape(&port);
            let running = sample(&s, "flow_task_instances", &[("state", "running")])?;
            (running >= 1.0).then_some(())
        });
        wait_for(60, "the run to succeed", || {
            let runs = env.stdout(&["runs", "list", "metered"]);
            runs.lines().any(|l| l.contains(" success ")).then_some(())
        });
        let after = scrape(&port);
        for task in ["first", "second"] {
            assert_eq!(
                sample(
                    &after,
                    "flow_ti_finish_total",
                    &[
                        ("dag_id", "metered"),
                        ("task_id", task),
                        ("state", "success")
                    ]
                ),
                Some(1.0),
                "{task}"
            );
        }
        for handoff in [
            "run_queued_to_running",
            "ti_scheduled_to_queued",
            "ti_queued_to_running",
            "ti_running_to_finished",
            "ti_upstream_finished_to_scheduled",
        ] {
            let n = sample(
                &after,
                "flow_handoff_seconds_count",
                &[("handoff", handoff)],
            );
            assert!(n.is_some_and(|n| n >= 1.0), "{handoff}: {n:?}");
        }
        let first_took = sample(
            &after,
            "flow_handoff_seconds_sum",
            &[("handoff", "ti_running_to_finished")],
        )
        .unwrap();
        assert!(
            first_took >= 2.0,
            "the 2-second task is in the sum: {first_took}"
        );
        assert_eq!(
            sample(
                &after,
                "flow_dagrun_duration_seconds_count",
                &[("dag_id", "metered"), ("state", "success")]
            ),
            Some(1.0)
        );
        let beats = |s: &prometheus_parse::Scrape| {
            sample(s, "flow_scheduler_heartbeat_total", &[]).unwrap_or(0.0)
        };
        assert!(beats(&after) > beats(&before));
        assert!(
            sample(&after, "flow_pool_open_slots", &[("pool", "default_pool")]).is_some(),
            "pools are read at scrape time"
        );
        assert!(
            sample(
                &after,
                "flow_dag_processing_last_duration_seconds",
                &[("file", "metered.yaml")]
            )
            .is_some()
        );
        assert_eq!(sample(&after, "flow_dagbag_size", &[]), Some(1.0));

        // A component's own port.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics_port = free.local_addr().unwrap().port().to_string();
        drop(free);
        let _triggerer = KillOnDrop(
            env.command()
                .args(["triggerer", "--metrics-port", &metrics_port])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let s = wait_for(30, "the triggerer's /metrics", || {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "-f",
                    &format!("http://127.0.0.1:{metrics_port}/metrics"),
                ])
                .output()
                .ok()?;
            out.status.success().then(|| scrape(&metrics_port))
        });
        assert_eq!(sample(&s, "flow_triggers_running", &[]), Some(0.0));
        assert_eq!(sample(&s, "flow_metadata_db_up", &[]), Some(1.0));
    }
}

const EXPLAINED_DAG: &str = r#"
explained:
  tasks:
    on_gpu:
      operator: bash
      bash_command: echo hi
      queue: gpu
    after:
      operator: bash
      bash_command: echo after
      dependencies: [on_gpu]
"#;

/// `flow tasks explain` against a real standalone: a task queued on a queue no worker serves
/// says so and how to fix it, its downstream names its trigger rule with the upstream counts.
#[tokio::test]
async fn tasks_explain_says_why_a_task_waits() {
    for db in databases().await {
        let mut env = env_on(&db).await;
        env.write_dag("explained.yaml", EXPLAINED_DAG);
        env.start();
        let out = env.run(&["dags", "trigger", "explained", "--run-id", "e1"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(60, "on_gpu to be queued", || {
            let states = env.stdout(&["tasks", "states", "explained", "e1"]);
            states
                .lines()
                .any(|l| l.starts_with("on_gpu") && l.contains(" queued "))
                .then_some(())
        });
        let text = env.stdout(&["tasks", "explain", "explained", "e1", "on_gpu"]);
        assert!(text.contains("on_gpu: queued"), "{text}");
        assert!(
            text.contains("Worker Serving Queue") && text.contains("flow worker --queues gpu"),
            "{text}"
        );
        assert!(text.contains("live workers serve default"), "{text}");
        let text = env.stdout(&["tasks", "explain", "explained", "e1", "after"]);
        assert!(
            text.contains("Trigger Rule") && text.contains("0 of 1 upstream"),
            "{text}"
        );
        let out = env.run(&["tasks", "explain", "explained", "e1", "aftr"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("after"), "{err}");
    }
}

const POOLED_DAG: &str = r#"
pooled:
  tasks:
    train:
      operator: bash
      bash_command: echo train
      pool: gpu_pool
"#;

/// DAG warnings as a fresh standalone meets them: the example `orders_stream` without its
/// `kafka_default` connection is reported once (a DAG warning and one log line, not a line
/// every few seconds), and a task naming a pool that does not exist is Airflow's
/// "non-existent pool" warning, gone once the pool is made.
#[tokio::test]
async fn dag_warnings_name_missing_pools_and_connections_once() {
    for db in databases().await {
        let mut env = env_on(&db).await;
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::copy(
            repo.join("dags/orders_stream.yaml"),
            env.dags.join("orders_stream.yaml"),
        )
        .unwrap();
        env.write_dag("pooled.yaml", POOLED_DAG);
        let log_path = env.home.join("standalone.log");
        let log = std::fs::File::create(&log_path).unwrap();
        env.standalone = Some(
            env.command()
                .args(["standalone", "-p", "0"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let port = wait_for(60, "the web UI", || {
            let text = std::fs::read_to_string(&log_path).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("flow: web UI at http://localhost:"))
                .map(|p| p.trim().to_owned())
        });
        let password = std::fs::read_to_string(env.home.join("standalone_admin_password.txt"))
            .unwrap()
            .trim()
            .to_owned();
        let warnings = |query: &str| {
            api(
                &port,
                &password,
                "GET",
                &format!("/api/v2/dagWarnings{query}"),
                None,
            )
        };
        let connection = wait_for(60, "the missing connection warning", || {
            let j = warnings("?warning_type=missing%20connection");
            j["dag_warnings"]
                .as_array()?
                .iter()
                .find(|w| w["dag_id"] == "orders_stream")
                .cloned()
        });
        assert!(
            connection["message"]
                .as_str()
                .unwrap()
                .contains("connection `kafka_default` not found"),
            "{connection}"
        );
        let pool = wait_for(60, "the non-existent pool warning", || {
            let j = warnings("");
            j["dag_warnings"]
                .as_array()?
                .iter()
                .find(|w| w["dag_id"] == "pooled")
                .cloned()
        });
        assert_eq!(pool["warning_type"], "non-existent pool");
        assert_eq!(
            pool["message"],
            "Dag 'pooled' references non-existent pools: ['gpu_pool']"
        );
        let out = env.run(&["pools", "set", "gpu_pool", "2"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(90, "the pool warning to go", || {
            let j = warnings("");
            (j["total_entries"] == 0).then_some(())
        });
        // The consumer has retried several times by now (200 ms doubling); one line said it.
        let text = std::fs::read_to_string(&log_path).unwrap();
        let said = text
            .lines()
            .filter(|l| l.contains("kafka trigger consumer cannot start"))
            .count();
        assert_eq!(said, 1, "{text}");
    }
}
