//! Kafka end to end through the real binary and a real Kafka-protocol broker: connections,
//! the produce and consume operators, the message sensor in its three modes (deferral frees
//! the worker slot), runs triggered by messages with their conf, the dead-letter topic, and
//! exactly-once run creation across `kill -9`s of the scheduler.
//!
//! The broker comes from `KAFKA_BOOTSTRAP` (`.ci/run` starts one) or `target/noida`; the
//! independent producer is Python's `confluent_kafka` (see `common`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flow_store::testing::TestDb;

struct Env {
    home: PathBuf,
    dags: PathBuf,
    db_url: String,
    bootstrap: String,
    daemon: Option<Child>,
}

impl Env {
    fn new(db_url: &str, bootstrap: &str) -> Env {
        let home = std::env::temp_dir().join(format!(
            "flow-kafka-{}-{}",
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
            bootstrap: bootstrap.to_owned(),
            daemon: None,
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flow"));
        c.env("FLOW_HOME", &self.home)
            .env("FLOW__CORE__DAGS_FOLDER", &self.dags)
            .env("FLOW__DATABASE__URL", &self.db_url)
            .env("FLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "false")
            .env("FLOW__LOGGING__LEVEL", "warn")
            .env("FLOW__WEBSERVER__WEB_SERVER_PORT", "0")
            .env("TMPDIR", &self.home)
            // The connection tasks and triggers use, from the environment as AIRFLOW_CONN_*.
            .env(
                "FLOW_CONN_KAFKA_DEFAULT",
                format!(
                    // The SASL password is unused by the plaintext broker: a secret that must never show.
                    r#"{{"conn_type": "kafka", "extra": {{"bootstrap.servers": "{}", "sasl.password": "s3cr3t-sasl-value"}}}}"#,
                    self.bootstrap
                ),
            );
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
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

    fn start(&mut self, extra_env: &[(&str, &str)]) {
        let mut c = self.command();
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let child = c
            .arg("standalone")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    /// `flow tasks states`: task -> (state, try, start, end).
    fn states(&self, dag_id: &str, run_id: &str) -> HashMap<String, Vec<String>> {
        self.stdout(&["tasks", "states", dag_id, run_id])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let parts: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
                Some((parts.first()?.clone(), parts[1..].to_vec()))
            })
            .collect()
    }

    fn runs(&self, dag_id: &str) -> Vec<(String, String)> {
        self.stdout(&["runs", "list", dag_id, "--limit", "5000"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut p = l.split_whitespace();
                Some((p.next()?.to_owned(), p.nth(1)?.to_owned()))
            })
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn wait_for<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    )
}

/// Produces with the independent client: `count` JSON messages `{"n": i}` keyed by i, plus
/// `garbage` messages whose value is not JSON, spread over `seconds`.
fn python_produce(
    python: &PathBuf,
    bootstrap: &str,
    topic: &str,
    count: usize,
    garbage: usize,
    seconds: f64,
) -> Child {
    let script = format!(
        r#"
import json, time
from confluent_kafka import Producer
p = Producer({{"bootstrap.servers": "{bootstrap}", "enable.idempotence": True}})
count, garbage, seconds = {count}, {garbage}, {seconds}
pause = seconds / max(count // 50, 1)
for i in range(count):
    p.produce("{topic}", key=str(i), value=json.dumps({{"n": i, "item": "widget"}}), headers={{"source": "test"}})
    if i % 50 == 49:
        p.flush()
        time.sleep(pause)
for i in range(garbage):
    p.produce("{topic}", key="g%d" % i, value="not json %d" % i)
left = p.flush(30)
assert left == 0, left
"#
    );
    Command::new(python).args(["-c", &script]).spawn().unwrap()
}

/// Reads a topic from the beginning with the independent client; prints one line per message.
fn python_read_all(python: &PathBuf, bootstrap: &str, topic: &str, expect: usize) -> Vec<String> {
    let script = format!(
        r#"
import time
from confluent_kafka import Consumer
c = Consumer({{"bootstrap.servers": "{bootstrap}", "group.id": "reader-{topic}", "auto.offset.reset": "earliest", "session.timeout.ms": 6000}})
c.subscribe(["{topic}"])
got, deadline = 0, time.time() + 30
while got < {expect} and time.time() < deadline:
    m = c.poll(0.5)
    if m is None or m.error():
        continue
    got += 1
    h = dict(m.headers() or [])
    print(m.value().decode(), "|", h.get("flow.dag_id", b"").decode(), "|", h.get("flow.error", b"").decode()[:40])
c.close()
"#
    );
    let out = Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn connections_are_encrypted_masked_and_overridable() {
    let db = TestDb::sqlite().await.unwrap();
    let env = Env::new(&db.url, "unused:1");
    let out = env.stdout(&[
        "connections",
        "add",
        "warehouse",
        "--conn-uri",
        "postgresql://etl:s3cr3t-pass@db.internal:5432/analytics?sslmode=require",
    ]);
    assert!(!out.contains("s3cr3t-pass"), "{out}");
    env.stdout(&[
        "connections",
        "add",
        "kafka_prod",
        "--conn-type",
        "kafka",
        "--conn-extra",
        r#"{"bootstrap.servers": "b1:9092", "sasl.password": "kafka-secret-77"}"#,
    ]);
    // The key was generated into FLOW_HOME, readable by its owner only.
    let key = env.home.join("fernet_key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let list = env.stdout(&["connections", "list"]);
    assert!(
        list.contains("warehouse") && list.contains("kafka_prod"),
        "{list}"
    );
    assert!(
        !list.contains("s3cr3t-pass") && !list.contains("kafka-secret-77"),
        "{list}"
    );
    assert!(list.contains("***"), "{list}");
    // Stored encrypted: the file does not hold the secrets.
    let raw = db.store.raw_connection_columns("warehouse").await.unwrap();
    assert!(!raw.contains("s3cr3t-pass"), "{raw}");
    let got = env.stdout(&["connections", "get", "warehouse", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v[0]["host"], "db.internal");
    assert_eq!(v[0]["password"], "***");
    // FLOW_CONN_<ID> overrides the database.
    let out = env
        .command()
        .env("FLOW_CONN_WAREHOUSE", "postgres://other@env-host:6543/x")
        .args(["connections", "get", "warehouse", "-o", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["host"], "env-host");
    // A wrong key cannot read them, and says which setting to fix.
    let out = env
        .command()
        .env("FLOW__CORE__FERNET_KEY", flow_store::Cipher::generate_key())
        .args(["connections", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fernet"));
    // Bad input names the problem; nothing is added.
    let out = env.run(&[
        "connections",
        "add",
        "bad",
        "--conn-uri",
        "kafka://u:pw-in-error@h:99999",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("99999") && !err.contains("pw-in-error"),
        "{err}"
    );
    assert!(!env.stdout(&["connections", "list"]).contains("bad"));
    assert!(
        env.stdout(&["connections", "delete", "warehouse"])
            .contains("deleted")
    );
    assert!(
        !env.run(&["connections", "delete", "warehouse"])
            .status
            .success()
    );
    db.drop_db().await.unwrap();
}

fn operators_dag(topic: &str, out_topic: &str) -> String {
    format!(
        r#"
# Groups named after this pass's topic: the test broker stalls a group whose members
# (a killed earlier pass's) subscribed to other topics.
kafka_ops:
  params: {{order: 42}}
  tasks:
    produce:
      operator: kafka_produce
      topic: {topic}
      messages:
        - {{key: "k1", value: {{"order": 41, "run": "{{{{ run_id }}}}"}}}}
        - {{key: "k2", value: {{"order": "{{{{ params.order }}}}"}}, headers: {{origin: flow}}}}
        - {{key: "k3", value: plain text}}
    produce_lines:
      operator: kafka_produce
      topic: {topic}
      command: "printf 'line-a\nline-b\n' # s3cr3t-sasl-value"
      dependencies: [produce]
    consume:
      operator: kafka_consume
      group_id: consume-{topic}
      topics: {topic}
      max_messages: 5
      max_batch_size: 2
      poll_timeout: 3s
      apply: cat >> "$TMPDIR/applied.jsonl"
      push_to_xcom: true
      dependencies: [produce_lines]
    check_consume:
      operator: bash
      bash_command: |
        test "{{{{ ti.xcom_pull(task_ids='consume') | length }}}}" = 5
        test "$(wc -l < "$TMPDIR/applied.jsonl")" -eq 5
      dependencies: [consume]
    poke:
      operator: kafka_await_message
      topics: [{topic}]
      group_id: poker-{topic}
      filter: "value.order == params.order | string"
      poke_interval: 1s
      timeout: 60s
      dependencies: [produce]
    resched:
      operator: time_delta
      delta: 8s
      mode: reschedule
      poke_interval: 1s
    deferred_time:
      operator: DateTimeSensorAsync
      priority_weight: 90
      target_time: "{{{{ dag_run.conf['at'] }}}}"
    # Waits (deferred) for a message the next task sends: with one worker slot this only
    # finishes if the deferral gave the slot back.
    deferred_kafka:
      operator: kafka_await_message
      group_id: deferred_kafka-{topic}
      topics: [{out_topic}]
      filter: "key == 'wake' and value.run == run_id"
      deferrable: true
      timeout: 90s
      priority_weight: 100
    resched_kafka:
      operator: kafka_await_message
      group_id: resched_kafka-{topic}
      topics: [{out_topic}]
      filter: "key == 'late'"
      mode: reschedule
      poke_interval: 1s
      timeout: 90s
    # Sent only after the 8-s `resched` sensor: `resched_kafka` pokes (and reschedules) first.
    late:
      operator: kafka_produce
      topic: {out_topic}
      messages: [{{key: late, value: "1"}}]
      dependencies: [resched]
    never:
      operator: kafka_await_message
      group_id: never-{topic}
      topics: [{out_topic}]
      filter: "false"
      deferrable: true
      timeout: 3s
      soft_fail: true
    wake:
      operator: kafka_produce
      topic: {out_topic}
      messages:
        - {{key: wake, value: {{"run": "{{{{ run_id }}}}"}}}}
    check_deferred:
      operator: bash
      bash_command: test "{{{{ ti.xcom_pull(task_ids='deferred_kafka')['key'] }}}}" = wake
      dependencies: [deferred_kafka]
"#
    )
}

#[tokio::test]
async fn operators_and_sensors_in_all_modes() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    for db in TestDb::all().await.unwrap() {
        eprintln!("backend: {:?}", db.backend());
        let mut env = Env::new(&db.url, &bootstrap);
        let topic = unique("ops");
        let out_topic = unique("wake");
        std::fs::write(env.dags.join("ops.yaml"), operators_dag(&topic, &out_topic)).unwrap();
        // One worker slot: the deferred sensor must give it back for `wake` to run.
        env.start(&[("FLOW__WORKER__CONCURRENCY", "1")]);
        // The date-time sensor waits for a moment 20 s after the trigger.
        let at = (chrono::Utc::now() + chrono::Duration::seconds(20)).to_rfc3339();
        let conf = format!(r#"{{"at": "{at}"}}"#);
        let out = env.stdout(&[
            "dags",
            "trigger",
            "kafka_ops",
            "--run-id",
            "r1",
            "--conf",
            &conf,
        ]);
        assert!(out.contains("r1"), "{out}");
        let states = wait_for(120, "kafka_ops to finish", || {
            let runs = env.runs("kafka_ops");
            let done = runs
                .iter()
                .any(|(id, s)| id == "r1" && (s == "success" || s == "failed"));
            done.then(|| env.states("kafka_ops", "r1"))
        });
        // The deferral that nothing satisfies times out; with soft_fail it is skipped.
        assert_eq!(states["never"][0], "skipped", "{states:?}");
        let failed: Vec<_> = states
            .iter()
            .filter(|(t, v)| v[0] != "success" && t.as_str() != "never")
            .collect();
        if !failed.is_empty() {
            for t in failed.iter().map(|(t, _)| t) {
                eprintln!("{}", env.stdout(&["tasks", "logs", "kafka_ops", "r1", t]));
            }
            panic!("not all tasks succeeded: {states:?}");
        }
        let log = |task: &str| env.stdout(&["tasks", "logs", "kafka_ops", "r1", task]);
        assert!(
            log("produce").contains("Delivered to"),
            "{}",
            log("produce")
        );
        // The connection's secret is masked in the log (the command line is logged).
        let lines = log("produce_lines");
        assert!(
            lines.contains("# ***") && !lines.contains("s3cr3t-sasl-value"),
            "{lines}"
        );
        // Reschedule mode gave the slot back between pokes, in one try.
        for task in ["resched", "resched_kafka"] {
            let l = log(task);
            assert!(l.contains("rescheduled for"), "{task}: {l}");
            assert_eq!(states[task][1], "1", "reschedules keep the try");
        }
        assert!(log("resched_kafka").contains("Matched message"));
        assert!(log("never").contains("timed out"), "{}", log("never"));
        // Deferrable sensors went through the triggerer and resumed, in one try.
        for task in ["deferred_time", "deferred_kafka"] {
            let l = log(task);
            assert!(
                l.contains("Deferring to the triggerer")
                    && l.contains("Resumed after the trigger fired"),
                "{task}: {l}"
            );
            assert_eq!(states[task][1], "1");
        }
        // The deferred sensor started before `wake` and ended after it: with one slot, it
        // was not holding it meanwhile.
        let (sensor_start, sensor_end) =
            (&states["deferred_kafka"][2], &states["deferred_kafka"][3]);
        let (wake_start, wake_end) = (&states["wake"][2], &states["wake"][3]);
        assert!(
            sensor_start <= wake_start && wake_end <= sensor_end,
            "{states:?}"
        );
        assert!(log("poke").contains("Matched message"), "{}", log("poke"));
        env.kill9();
        db.drop_db().await.unwrap();
    }
}

const TRIGGERED_DAG: &str = r#"
on_message:
  max_active_runs: 2
  schedule:
    kafka:
      topics: [TOPIC]
      filter: "value.n % 2 == 0"
      dead_letter_topic: DLQ
  tasks:
    show:
      operator: bash
      bash_command: echo "n={{ dag_run.conf.value.n }} key={{ dag_run.conf.key }} offset={{ dag_run.conf.offset }} source={{ dag_run.conf.headers.source }}"
"#;

/// Matching messages become event runs carrying the message; the filter's failures go to the
/// dead-letter topic; runs beyond max_active_runs queue rather than vanish.
#[tokio::test]
async fn messages_trigger_runs_with_their_message() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    let Some(python) = common::python_with_confluent_kafka() else {
        return;
    };
    for db in TestDb::all().await.unwrap() {
        eprintln!("backend: {:?}", db.backend());
        let mut env = Env::new(&db.url, &bootstrap);
        let topic = unique("orders");
        let dlq = unique("dlq");
        let events_topic = unique("events");
        let yaml = TRIGGERED_DAG.replace("TOPIC", &topic).replace("DLQ", &dlq);
        std::fs::write(env.dags.join("t.yaml"), yaml).unwrap();
        // Lifecycle events go to their own topic.
        env.start(&[
            ("FLOW__EVENTS__KAFKA_CONN_ID", "kafka_default"),
            ("FLOW__EVENTS__KAFKA_TOPIC", &events_topic),
        ]);
        let status = python_produce(&python, &bootstrap, &topic, 10, 3, 0.0)
            .wait()
            .unwrap();
        assert!(status.success());
        let runs = wait_for(90, "5 event runs to succeed", || {
            let runs = env.runs("on_message");
            (runs.iter().filter(|(_, s)| s == "success").count() == 5).then_some(runs)
        });
        assert_eq!(runs.len(), 5, "{runs:?}");
        let mut ns = BTreeSet::new();
        for (run_id, _) in &runs {
            assert!(
                run_id.starts_with(&format!("event__{topic}:0:")),
                "{run_id}"
            );
            let run = db
                .store
                .dag_run_get("on_message", run_id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(run.run_type.as_str(), "event");
            assert_eq!(run.conf["topic"], topic.as_str());
            assert_eq!(run.conf["headers"]["source"], "test");
            let n = run.conf["value"]["n"].as_i64().unwrap();
            assert_eq!(run.conf["key"], n.to_string());
            assert_eq!(run_id, &format!("event__{topic}:0:{}", run.conf["offset"]));
            ns.insert(n);
            let log = env.stdout(&["tasks", "logs", "on_message", run_id, "show"]);
            assert!(log.contains(&format!("n={n} key={n} offset=")), "{log}");
        }
        assert_eq!(ns, BTreeSet::from([0, 2, 4, 6, 8]));
        // The three non-JSON messages could not be filtered: they are in the dead-letter topic.
        let dead = python_read_all(&python, &bootstrap, &dlq, 3);
        assert_eq!(dead.len(), 3, "{dead:?}");
        assert!(
            dead.iter()
                .all(|l| l.starts_with("not json") && l.contains("on_message")),
            "{dead:?}"
        );
        // Every state change of those runs and their task instances was published.
        let events: Vec<serde_json::Value> =
            python_read_all(&python, &bootstrap, &events_topic, 35)
                .iter()
                .map(|l| serde_json::from_str(l.split(" | ").next().unwrap()).unwrap())
                .collect();
        for (run_id, _) in &runs {
            let run_states: BTreeSet<&str> = events
                .iter()
                .filter(|e| e["event"] == "dag_run.state_changed" && e["run_id"] == run_id.as_str())
                .filter_map(|e| e["state"].as_str())
                .collect();
            assert_eq!(
                run_states,
                BTreeSet::from(["queued", "running", "success"]),
                "{run_id}"
            );
            let ti_states: Vec<&str> = events
                .iter()
                .filter(|e| {
                    e["event"] == "task_instance.state_changed" && e["run_id"] == run_id.as_str()
                })
                .filter_map(|e| e["state"].as_str())
                .collect();
            assert_eq!(
                ti_states,
                ["scheduled", "queued", "running", "success"],
                "{run_id}"
            );
        }
        env.kill9();
        db.drop_db().await.unwrap();
    }
}

/// 1,000 messages from an independent producer; the daemon is killed with SIGKILL twice
/// while it turns them into runs, then restarted: exactly 1,000 event runs, one per message.
#[tokio::test]
async fn exactly_one_run_per_message_across_kill_9() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    let Some(python) = common::python_with_confluent_kafka() else {
        return;
    };
    for db in TestDb::all().await.unwrap() {
        eprintln!("backend: {:?}", db.backend());
        let mut env = Env::new(&db.url, &bootstrap);
        let topic = unique("drill");
        let yaml = format!(
            "drill:\n  max_active_runs: 1000\n  schedule:\n    kafka:\n      topics: [{topic}]\n      group_id: drill-{topic}\n  tasks:\n    noop:\n      operator: empty\n"
        );
        std::fs::write(env.dags.join("drill.yaml"), yaml).unwrap();
        env.start(&[]);
        // Let the consumer join before the stream starts, so the kills land mid-stream.
        wait_for(60, "the DAG to be parsed", || {
            env.stdout(&["dags", "list"])
                .contains("drill")
                .then_some(())
        });
        let mut producer = python_produce(&python, &bootstrap, &topic, 1000, 0, 12.0);
        // Killed twice mid-stream: once past 200 runs, once past 500 (the stream takes 12 s).
        for threshold in [200, 500] {
            wait_for(60, "runs to be created", || {
                let n = env.runs("drill").len();
                (n >= threshold).then_some(n)
            });
            let before = env.runs("drill").len();
            eprintln!("kill -9 with {before} runs created");
            assert!(before < 1000, "the stream ended before the kill");
            env.kill9();
            env.start(&[]);
        }
        assert!(producer.wait().unwrap().success());
        let runs = wait_for(120, "1,000 runs", || {
            let runs = env.runs("drill");
            (runs.len() >= 1000).then_some(runs)
        });
        // Give a duplicate, if any were to come, the chance to appear.
        std::thread::sleep(Duration::from_secs(3));
        let runs_after = env.runs("drill");
        assert_eq!(runs_after.len(), 1000, "runs: {}", runs_after.len());
        let offsets: BTreeSet<i64> = runs
            .iter()
            .map(|(id, _)| id.rsplit(':').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(offsets, (0..1000).collect::<BTreeSet<i64>>());
        env.kill9();
        db.drop_db().await.unwrap();
    }
}

/// A broker of its own, on a fixed port and data folder, that the test can stop and start.
struct OwnBroker {
    port: u16,
    data: PathBuf,
    child: Option<Child>,
}

impl OwnBroker {
    fn new() -> Option<OwnBroker> {
        let bin = common::repo_root().join("target/noida/noida_db/noida-db");
        if !bin.exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but {} is missing",
                bin.display()
            );
            eprintln!("SKIPPED: the outage test needs target/noida (it stops its own broker)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = std::env::temp_dir().join(unique("flow-outage-broker"));
        let mut b = OwnBroker {
            port,
            data,
            child: None,
        };
        b.start();
        Some(b)
    }

    fn start(&mut self) {
        let bin = common::repo_root().join("target/noida/noida_db/noida-db");
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(bin)
            .args([
                "start",
                "--only",
                "kafka",
                "--host",
                "127.0.0.1",
                "--kafka-port",
            ])
            .arg(self.port.to_string())
            .arg("--data-dir")
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_for(20, "the broker to listen", || {
            std::net::TcpStream::connect(&addr).ok()
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// The broker goes away and comes back: the trigger consumer reports itself degraded in
/// /health, reconnects on its own, and turns the messages sent after the return into runs;
/// nothing is lost or doubled. A produce task against an unreachable broker fails with a
/// clear error and follows its retries.
#[tokio::test]
async fn broker_outage_loses_nothing() {
    let Some(python) = common::python_with_confluent_kafka() else {
        return;
    };
    let Some(mut broker) = OwnBroker::new() else {
        return;
    };
    let db = TestDb::sqlite().await.unwrap();
    let bootstrap = format!("127.0.0.1:{}", broker.port);
    let env = Env::new(&db.url, &bootstrap);
    let topic = unique("outage");
    let yaml = TRIGGERED_DAG
        .replace("TOPIC", &topic)
        .replace("DLQ", &unique("dlq"))
        + r#"
produce_nowhere:
  tasks:
    send:
      operator: kafka_produce
      kafka_conn_id: nowhere
      topic: t
      delivery_timeout: 2s
      retries: 1
      retry_delay: 1s
      messages: [{value: lost}]
"#;
    std::fs::write(env.dags.join("t.yaml"), yaml).unwrap();
    let mut cmd = env.command();
    cmd.env(
        "FLOW_CONN_NOWHERE",
        r#"{"conn_type": "kafka", "host": "127.0.0.1", "port": 1}"#,
    );
    let standalone = common::Standalone::start(cmd);
    let health = || -> serde_json::Value {
        let out = Command::new("curl")
            .args([
                "-s",
                &format!("http://127.0.0.1:{}/api/v2/monitor/health", standalone.port),
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let status = python_produce(&python, &bootstrap, &topic, 4, 0, 0.0)
        .wait()
        .unwrap();
    assert!(status.success());
    wait_for(60, "2 runs", || {
        (env.runs("on_message").len() == 2).then_some(())
    });
    wait_for(30, "healthy consumers", || {
        (health()["kafka_triggers"]["status"] == "healthy").then_some(())
    });
    assert_eq!(health()["triggerer"]["status"], "healthy");

    broker.stop();
    wait_for(60, "health to report the consumer degraded", || {
        let h = health();
        (h["kafka_triggers"]["state"] == "degraded").then_some(h)
    });
    // Meanwhile a task producing to a broker that is not there fails clearly, twice.
    env.stdout(&["dags", "trigger", "produce_nowhere", "--run-id", "n1"]);
    let states = wait_for(90, "produce_nowhere to fail", || {
        let runs = env.runs("produce_nowhere");
        runs.iter()
            .any(|(_, s)| s == "failed")
            .then(|| env.states("produce_nowhere", "n1"))
    });
    assert_eq!(states["send"][0], "failed");
    assert_eq!(states["send"][1], "2", "one retry: {states:?}");
    let log = env.stdout(&["tasks", "logs", "produce_nowhere", "n1", "send"]);
    assert!(log.contains("producing to `t`"), "{log}");

    broker.start();
    let status = python_produce(&python, &bootstrap, &topic, 8, 0, 0.0)
        .wait()
        .unwrap();
    assert!(status.success());
    // Messages 0..8 again plus the first 4 already there: n = 0, 2, 4, 6 at offsets 0..12.
    let runs = wait_for(90, "the runs of the messages sent after the outage", || {
        let runs = env.runs("on_message");
        (runs.len() >= 6).then_some(runs)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(env.runs("on_message").len(), 6, "{runs:?}");
    let offsets: BTreeSet<i64> = env
        .runs("on_message")
        .iter()
        .map(|(id, _)| id.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(offsets, BTreeSet::from([0, 2, 4, 6, 8, 10]));
    wait_for(60, "healthy consumers again", || {
        (health()["kafka_triggers"]["status"] == "healthy").then_some(())
    });
    drop(standalone);
    db.drop_db().await.unwrap();
}

/// Lifecycle events with several schedulers: one publisher at a time (a lease), and a
/// persisted cursor, so that events made while no scheduler ran, and those a killed publisher
/// had not sent yet, are published by the next one. Every transition the database recorded
/// reaches the topic exactly once (by `event_id`).
#[tokio::test]
async fn one_event_publisher_and_no_event_lost_across_restarts() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    let Some(python) = common::python_with_confluent_kafka() else {
        return;
    };
    let Some(db) = TestDb::postgres().await.unwrap() else {
        return;
    };
    let env = Env::new(&db.url, &bootstrap);
    let topic = unique("lifecycle");
    std::fs::write(
        env.dags.join("ev.yaml"),
        "ev:\n  default_args: {retries: 2, retry_delay: 1s}\n  tasks:\n    a: {operator: bash, bash_command: 'sleep 1'}\n    b: {operator: bash, bash_command: 'true', dependencies: [a]}\n",
    )
    .unwrap();
    /// Killed when dropped, so that a failing test leaves no scheduler behind.
    struct Daemon(Child);
    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let start = |name: &str| {
        let home = env.home.join(name);
        std::fs::create_dir_all(&home).unwrap();
        env.command()
            .env("FLOW__EVENTS__KAFKA_CONN_ID", "kafka_default")
            .env("FLOW__EVENTS__KAFKA_TOPIC", &topic)
            .env("FLOW__WORKER__HEARTBEAT_INTERVAL", "1")
            .env("FLOW__SCHEDULER__ZOMBIE_THRESHOLD", "4")
            .env(
                "FLOW__CORE__FERNET_KEY",
                "x9gBXvdBg5ZsmZCEiyT3JrPxGO5hNb4wVc3mKXG1rWg=",
            )
            .arg("scheduler")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map(Daemon)
            .unwrap()
    };
    let kill = drop::<Daemon>;
    let succeeded = |run: &str| {
        wait_for(90, &format!("run {run} to succeed"), || {
            env.runs("ev")
                .iter()
                .any(|(r, s)| r == run && s == "success")
                .then_some(())
        })
    };
    let (a, b) = (start("a"), start("b"));
    wait_for(60, "the DAG to be parsed", || {
        env.run(&["dags", "trigger", "ev", "--run-id", "r1"])
            .status
            .success()
            .then_some(())
    });
    succeeded("r1");
    kill(a);
    kill(b);
    // Made while no scheduler (so no publisher) runs.
    assert!(
        env.run(&["dags", "trigger", "ev", "--run-id", "r2"])
            .status
            .success()
    );
    let a = start("a");
    succeeded("r2");
    // The publisher dies mid-run; the other scheduler takes its lease over.
    assert!(
        env.run(&["dags", "trigger", "ev", "--run-id", "r3"])
            .status
            .success()
    );
    wait_for(30, "r3 to start", || {
        env.states("ev", "r3")
            .get("a")
            .is_some_and(|s| s[0] == "running")
            .then_some(())
    });
    kill(a);
    let b = start("b");
    succeeded("r3");
    // What the database recorded, against what the topic holds.
    let store = flow_store::Store::connect(&db.url).await.unwrap();
    let (recorded, _) = store
        .events_after(flow_store::EventCursor::default(), 100_000)
        .await
        .unwrap();
    store.close().await;
    let want: BTreeSet<String> = recorded
        .iter()
        .map(|e| e.json["event_id"].as_str().unwrap().to_owned())
        .collect();
    // The reader's group commits what it read: each call returns what came since the last.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut got: Vec<String> = Vec::new();
    let seen_all = |got: &[String]| want.iter().all(|w| got.contains(w));
    while !seen_all(&got) && Instant::now() < deadline {
        got.extend(
            python_read_all(
                &python,
                &bootstrap,
                &topic,
                want.len().saturating_sub(got.len()).max(1),
            )
            .iter()
            .map(|l| {
                let json: serde_json::Value =
                    serde_json::from_str(l.split(" | ").next().unwrap()).unwrap();
                json["event_id"].as_str().unwrap().to_owned()
            }),
        );
    }
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    let missing: Vec<&String> = want.difference(&unique).collect();
    assert!(missing.is_empty(), "events never published: {missing:?}");
    let mut twice: Vec<&String> = got
        .iter()
        .filter(|g| got.iter().filter(|h| h == g).count() > 1)
        .collect();
    twice.dedup();
    assert!(twice.is_empty(), "events published twice: {twice:?}");
    kill(b);
    drop(env);
    db.drop_db().await.unwrap();
}
