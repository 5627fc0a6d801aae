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
        // The binary migrates on its own; hand it the database through the URL only.
        let url = db.url.clone();
        db.store.close().await;
        let mut env = Env::new(&url);
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

        drop(env);
        let cleanup = if url.starts_with("postgres") {
            TestDb::postgres().await.ok().flatten()
        } else {
            None
        };
        drop(cleanup);
    }
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let db = TestDb::sqlite().await.unwrap();
    let url = db.url.clone();
    db.store.close().await;
    let env = Env::new(&url);
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

    // Paused: the run is created and the command says why it will wait.
    assert!(env.run(&["dags", "pause", "ok_dag"]).status.success());
    let out = env.run(&["dags", "trigger", "ok_dag", "--run-id", "manual_1"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is paused"));
    let out = env.run(&["dags", "trigger", "ok_dag", "--run-id", "manual_1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}
