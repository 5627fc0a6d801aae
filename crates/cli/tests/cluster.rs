//! The distributed mode under faults, through real processes on PostgreSQL: several
//! `flow scheduler --no-worker` and `flow worker` on one database, `kill -9`ed and restarted
//! mid-flight. The tasks write a ledger (start and end marks with nanosecond times) that is
//! checked afterwards: limits never exceeded, no two tries of one task instance overlapping,
//! every run created once and finished.
//!
//! PostgreSQL is skipped loudly outside CI when unreachable (see `flow_store::testing`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flow_store::testing::TestDb;

fn flow_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flow")
}

/// Processes of one cluster sharing a FLOW_HOME-less environment: the database URL, a
/// Fernet key, and (for schedulers only) a dags folder.
struct Cluster {
    home: PathBuf,
    dags: PathBuf,
    db_url: String,
    env: Vec<(String, String)>,
    procs: HashMap<String, Child>,
}

impl Cluster {
    fn new(db_url: &str) -> Cluster {
        let home = std::env::temp_dir().join(format!(
            "flow-cluster-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let dags = home.join("dags");
        std::fs::create_dir_all(&dags).unwrap();
        Cluster {
            home,
            dags,
            db_url: db_url.to_owned(),
            env: vec![
                // One key for every process, as a deployment shares it.
                (
                    "FLOW__CORE__FERNET_KEY".into(),
                    "x9gBXvdBg5ZsmZCEiyT3JrPxGO5hNb4wVc3mKXG1rWg=".into(),
                ),
                (
                    "FLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION".into(),
                    "false".into(),
                ),
                ("FLOW__LOGGING__LEVEL".into(), "warn".into()),
            ],
            procs: HashMap::new(),
        }
    }

    fn set(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    /// A `flow` command with the cluster's environment. Each process gets its own FLOW_HOME:
    /// nothing but the database is shared.
    fn command(&self, home: &str) -> Command {
        let home = self.home.join(home);
        std::fs::create_dir_all(&home).unwrap();
        let mut c = Command::new(flow_bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("FLOW_HOME", &home)
            .env("FLOW__DATABASE__URL", &self.db_url)
            .env("TMPDIR", &self.home);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command("cli").args(args).output().unwrap()
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

    /// Starts (or restarts) the process `name`: `scheduler` processes get the dags folder,
    /// workers do not.
    fn start(&mut self, name: &str, args: &[&str]) {
        let mut c = self.command(name);
        if args.first() == Some(&"scheduler") {
            c.env("FLOW__CORE__DAGS_FOLDER", &self.dags);
        } else {
            // A worker's dags folder does not exist: it must need none.
            c.env("FLOW__CORE__DAGS_FOLDER", self.home.join("no-dags-here"));
        }
        let child = c
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.procs.insert(name.to_owned(), child);
    }

    /// `kill -9`.
    fn kill(&mut self, name: &str) {
        let mut child = self.procs.remove(name).expect("a running process");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn assert_alive(&mut self) {
        for (name, child) in &mut self.procs {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{name} exited on its own"
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.procs.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// One try as the ledger saw it.
#[derive(Debug, Clone)]
struct Span {
    run: String,
    task: String,
    try_number: u32,
    pool: String,
    start: u128,
    end: Option<u128>,
}

/// `start|end RUN TASK TRY POOL NANOS` lines, paired into spans.
fn read_ledger(text: &str) -> Vec<Span> {
    let mut spans: HashMap<(String, String, u32), Span> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 6, "torn ledger line: {line:?}");
        let key = (f[1].to_owned(), f[2].to_owned(), f[3].parse().unwrap());
        let at: u128 = f[5].parse().unwrap();
        match f[0] {
            "start" => {
                let old = spans.insert(
                    key.clone(),
                    Span {
                        run: key.0,
                        task: key.1,
                        try_number: key.2,
                        pool: f[4].to_owned(),
                        start: at,
                        end: None,
                    },
                );
                assert!(old.is_none(), "a try started twice: {line}");
            }
            "end" => {
                let span = spans.get_mut(&key).expect("an end without a start");
                span.end = Some(at);
            }
            other => panic!("ledger line {other:?}"),
        }
    }
    spans.into_values().collect()
}

/// The most finished spans (filtered) open at one instant. A span without an end was killed
/// with its worker at an instant the ledger cannot tell, so it is left out here; it still must
/// not overlap the task instance's next try ([`assert_no_overlapping_tries`]).
fn max_concurrent(spans: &[Span], keep: impl Fn(&Span) -> bool) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    for s in spans.iter().filter(|s| keep(s)) {
        let Some(end) = s.end else { continue };
        events.push((s.start, 1));
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

/// No two tries of one task instance overlap: tries start in try order, and each finished
/// try ends before the next one starts.
fn assert_no_overlapping_tries(spans: &[Span]) {
    let mut by_ti: HashMap<(&str, &str), Vec<&Span>> = HashMap::new();
    for s in spans {
        by_ti.entry((&s.run, &s.task)).or_default().push(s);
    }
    for ((run, task), mut tries) in by_ti {
        tries.sort_by_key(|s| s.try_number);
        for w in tries.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert!(
                a.start < b.start,
                "{run}/{task}: try {} started after try {}",
                a.try_number,
                b.try_number
            );
            if let Some(end) = a.end {
                assert!(
                    end <= b.start,
                    "{run}/{task}: tries {} and {} overlapped",
                    a.try_number,
                    b.try_number
                );
            }
        }
    }
}

/// A DAG of `n` tasks in two chains: even tasks in the 3-slot pool `p3`, odd ones in the
/// default pool, at most `max_active_tasks` of the DAG's instances queued or running.
/// Scheduled hourly from 2025-01-01 over 50 hours with catchup, so the schedulers create
/// the 50 runs themselves, concurrently.
fn drill_dag(ledger: &std::path::Path, n: usize, max_active_tasks: usize) -> String {
    let mut y = format!(
        "drill:\n  schedule: '@hourly'\n  start_date: 2025-01-01T00:00:00\n  end_date: 2025-01-03T01:00:00\n  catchup: true\n  max_active_runs: 50\n  max_active_tasks: {max_active_tasks}\n  default_args:\n    retries: 5\n    retry_delay: 1s\n  tasks:\n"
    );
    for i in 0..n {
        let pool = if i % 2 == 0 { "p3" } else { "default_pool" };
        y.push_str(&format!(
            "    t{i}:\n      operator: bash\n      pool: {pool}\n      bash_command: |\n        echo \"start {{{{ run_id }}}} t{i} {{{{ ti.try_number }}}} {pool} $(date +%s%N)\" >> {ledger}\n        sleep 0.15\n        echo \"end {{{{ run_id }}}} t{i} {{{{ ti.try_number }}}} {pool} $(date +%s%N)\" >> {ledger}\n",
            ledger = ledger.display()
        ));
        if i >= 2 {
            y.push_str(&format!("      dependencies: [t{}]\n", i - 2));
        }
    }
    y
}

/// The runs of `dag_id` as `(run_id, state)`, from `flow runs list`.
fn runs(cluster: &Cluster, dag_id: &str) -> Vec<(String, String)> {
    cluster
        .stdout(&["runs", "list", dag_id, "--limit", "1000"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            // run_id, type, state, ...
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.get(2)?.to_string()))
        })
        .collect()
}

/// 3 schedulers and 3 workers on one PostgreSQL database run 50 scheduled runs of a DAG
/// whose tasks share a 3-slot pool and a `max_active_tasks`; a scheduler and a worker are
/// each `kill -9`ed twice mid-flight and restarted. Every run succeeds, no limit is ever
/// exceeded, no two tries of one task instance overlap, no run is created twice.
#[tokio::test]
async fn schedulers_and_workers_killed_mid_flight_keep_every_limit() {
    let Some(db) = TestDb::postgres().await.unwrap() else {
        return;
    };
    db.store.close().await;
    let mut cluster = Cluster::new(&db.url);
    let ledger = cluster.home.join("ledger.txt");
    let (tasks, max_active_tasks) = (6, 5);
    std::fs::write(
        cluster.dags.join("drill.yaml"),
        drill_dag(&ledger, tasks, max_active_tasks),
    )
    .unwrap();
    // Heartbeats every second, rescue after 4 s without one: a killed worker's tries come
    // back within seconds, and a live try (0.15 s) is never taken for a zombie.
    cluster.set("FLOW__WORKER__HEARTBEAT_INTERVAL", "1");
    cluster.set("FLOW__SCHEDULER__ZOMBIE_THRESHOLD", "4");
    assert!(cluster.run(&["db", "migrate"]).status.success());
    cluster.stdout(&["pools", "set", "p3", "3", "three slots"]);
    for s in 0..3 {
        cluster.start(&format!("scheduler{s}"), &["scheduler", "--no-worker"]);
    }
    for w in 0..3 {
        cluster.start(&format!("worker{w}"), &["worker", "--concurrency", "4"]);
    }
    let started = Instant::now();
    let ends = |min: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&ledger).unwrap_or_default();
            let n = text.lines().filter(|l| l.starts_with("end ")).count();
            if n >= min {
                return;
            }
            assert!(Instant::now() < deadline, "only {n} tries ended");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Kill a scheduler and a worker at 20, 60, 100 and 140 finished tries (of 300).
    for (i, at) in [20, 60, 100, 140].into_iter().enumerate() {
        ends(at);
        let (kind, n) = if i % 2 == 0 {
            ("scheduler", i % 3)
        } else {
            ("worker", i % 3)
        };
        let name = format!("{kind}{n}");
        cluster.kill(&name);
        if kind == "scheduler" {
            cluster.start(&name, &["scheduler", "--no-worker"]);
        } else {
            cluster.start(&name, &["worker", "--concurrency", "4"]);
        }
    }
    for (i, at) in [180, 220].into_iter().enumerate() {
        ends(at);
        let name = if i == 0 { "scheduler2" } else { "worker2" };
        cluster.kill(name);
        if i == 0 {
            cluster.start(name, &["scheduler", "--no-worker"]);
        } else {
            cluster.start(name, &["worker", "--concurrency", "4"]);
        }
    }
    // Every run finishes, each created once.
    let deadline = Instant::now() + Duration::from_secs(240);
    let all = loop {
        let all = runs(&cluster, "drill");
        let done = all.iter().filter(|(_, s)| s == "success").count();
        assert!(
            !all.iter().any(|(_, s)| s == "failed"),
            "a run failed: {all:?}"
        );
        if done == 50 {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of 50 runs finished: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    cluster.assert_alive();
    let elapsed = started.elapsed();
    assert_eq!(all.len(), 50, "runs created: {all:?}");
    let mut ids: Vec<&str> = all.iter().map(|(r, _)| r.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 50, "a run id twice: {all:?}");

    let spans = read_ledger(&std::fs::read_to_string(&ledger).unwrap());
    let finished = spans.iter().filter(|s| s.end.is_some()).count();
    assert!(finished >= 50 * tasks, "{finished} tries finished");
    let in_pool = max_concurrent(&spans, |s| s.pool == "p3");
    assert!(
        in_pool <= 3,
        "{in_pool} tasks of the 3-slot pool ran at once"
    );
    assert_eq!(
        in_pool, 3,
        "the pool was never full: the drill proves nothing"
    );
    let in_dag = max_concurrent(&spans, |_| true);
    assert!(
        in_dag <= max_active_tasks,
        "{in_dag} tasks of the DAG ran at once (max_active_tasks {max_active_tasks})"
    );
    assert_no_overlapping_tries(&spans);
    let killed = spans.iter().filter(|s| s.end.is_none()).count();
    eprintln!(
        "drill: 50 runs, {} tries ({finished} finished, {killed} killed with their worker) in {:.1} s; at most {in_pool} in the pool and {in_dag} in the DAG at once",
        spans.len(),
        elapsed.as_secs_f64()
    );
    drop(cluster);
    db.drop_db().await.unwrap();
}
