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

/// Runs `flow args` with the cluster's environment plus `extra`, expecting a refusal: a
/// non-zero exit and one clear line on stderr naming `setting`.
fn refused(cluster: &Cluster, home: &str, extra: &[(&str, &str)], args: &[&str], setting: &str) {
    let mut c = cluster.command(home);
    if args.first() == Some(&"scheduler") || args.first() == Some(&"standalone") {
        c.env("FLOW__CORE__DAGS_FOLDER", &cluster.dags);
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    let mut child = c
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("flow {args:?} was not refused: it kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "flow {args:?} started: {stderr}");
    eprintln!("refused: flow {}: {}", args.join(" "), stderr.trim());
    assert!(
        stderr.contains(setting),
        "flow {args:?}: the refusal does not name {setting}: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "flow {args:?} panicked: {stderr}"
    );
}

/// Waits until `flow jobs check` finds `n` live jobs of `job_type`.
fn wait_for_jobs(cluster: &Cluster, job_type: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cluster.run(&[
            "jobs",
            "check",
            "--job-type",
            job_type,
            "--limit",
            "100",
            "--allow-multiple",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let found = if text.contains("Found one alive job.") {
            1
        } else {
            text.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        if out.status.success() && found >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{job_type}: {found} of {n} jobs alive"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bad starts get one clear line naming the setting, exit non-zero, and change nothing
/// stored: a second scheduler or a worker on SQLite, two workers with one id, a worker whose
/// Fernet key differs, any process on a database a newer flow migrated.
#[tokio::test]
async fn refused_starts_say_why_and_change_nothing() {
    // SQLite: one scheduler process at a time.
    let sqlite = TestDb::sqlite().await.unwrap();
    sqlite.store.close().await;
    let mut cluster = Cluster::new(&sqlite.url);
    std::fs::write(
        cluster.dags.join("hello.yaml"),
        "hello:\n  tasks:\n    hi: {operator: bash, bash_command: 'echo hi'}\n",
    )
    .unwrap();
    cluster.start("scheduler0", &["scheduler"]);
    wait_for_jobs(&cluster, "SchedulerJob", 1);
    let before = cluster.stdout(&["jobs", "list"]).lines().count();
    for args in [&["scheduler"][..], &["standalone", "-p", "0"][..]] {
        refused(
            &cluster,
            "second",
            &[],
            args,
            "SQLite is the one-process embedded mode",
        );
    }
    refused(&cluster, "w", &[], &["worker"], "FLOW__DATABASE__URL");
    let jobs = cluster.stdout(&["jobs", "list"]);
    assert_eq!(
        jobs.lines().count(),
        before,
        "a refused start wrote a job row: {jobs}"
    );
    cluster.assert_alive();
    drop(cluster);
    sqlite.drop_db().await.unwrap();

    let Some(db) = TestDb::postgres().await.unwrap() else {
        return;
    };
    db.store.close().await;
    let mut cluster = Cluster::new(&db.url);
    assert!(cluster.run(&["db", "migrate"]).status.success());
    cluster.start("w1", &["worker", "--worker-id", "w1"]);
    wait_for_jobs(&cluster, "WorkerJob", 1);
    let before = cluster.stdout(&["jobs", "list"]);
    refused(
        &cluster,
        "w1-again",
        &[],
        &["worker", "--worker-id", "w1"],
        "FLOW__WORKER__ID",
    );
    refused(
        &cluster,
        "other-key",
        &[(
            "FLOW__CORE__FERNET_KEY",
            "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=",
        )],
        &["worker", "--worker-id", "w2"],
        "FLOW__CORE__FERNET_KEY",
    );
    // The key each process would generate for itself differs too.
    let mut no_key = cluster.command("no-key");
    no_key.env_remove("FLOW__CORE__FERNET_KEY");
    let out = no_key.args(["webserver", "-p", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("FLOW__CORE__FERNET_KEY"));
    cluster.assert_alive();
    assert_eq!(
        cluster.stdout(&["jobs", "list"]).lines().count(),
        before.lines().count(),
        "a refused start wrote a job row"
    );

    // The same id restarted on the same host after a crash is not a second live worker.
    cluster.kill("w1");
    cluster.start("w1", &["worker", "--worker-id", "w1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster
        .stdout(&["jobs", "list", "--alive"])
        .lines()
        .any(|l| l.contains("WorkerJob") && l.ends_with(" w1"))
        || cluster
            .stdout(&["jobs", "list", "--alive"])
            .lines()
            .filter(|l| l.contains("WorkerJob"))
            .count()
            != 1
    {
        assert!(
            Instant::now() < deadline,
            "the restarted worker never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.assert_alive();
    // A database a newer flow migrated: refused before anything is migrated or written.
    cluster.kill("w1");
    let before = cluster.stdout(&["jobs", "list"]);
    let raw = flow_store::Store::connect(&db.url).await.unwrap();
    raw.execute_raw(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, '\\x00'::bytea, 0)",
    )
    .await
    .unwrap();
    for args in [
        &["scheduler", "--no-worker"][..],
        &["worker"][..],
        &["webserver", "-p", "0"][..],
        &["jobs", "list"][..],
    ] {
        refused(&cluster, "old", &[], args, "FLOW__DATABASE__URL");
    }
    raw.execute_raw("DELETE FROM _sqlx_migrations WHERE version = 9999")
        .await
        .unwrap();
    raw.close().await;
    assert_eq!(
        cluster.stdout(&["jobs", "list"]).lines().count(),
        before.lines().count(),
        "a refused start wrote a job row"
    );
    drop(cluster);
    db.drop_db().await.unwrap();
}

/// A TCP proxy to PostgreSQL that can cut the line: while cut, it forwards nothing either way
/// (a partition: sends vanish, answers never come); healing closes every connection it
/// carried, as a partition that outlived TCP's patience would, and forwards again.
struct Proxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Down: connections are refused, as by a database that is restarting.
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(target: &'static str) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cut2, down2, conns2) = (cut.clone(), down.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if down2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                // Cut: the connection is accepted and then hears nothing.
                while cut2.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                for s in [&client, &server] {
                    conns2.lock().unwrap().push(s.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let cut = cut2.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read as _, Write as _};
                        let mut buf = [0u8; 16384];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            // While cut, bytes are swallowed: they never arrive.
                            if cut.load(Ordering::SeqCst) {
                                continue;
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            port,
            cut,
            down,
            conns,
        }
    }

    /// Every connection closed and new ones refused, as while PostgreSQL restarts.
    fn go_down(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn come_up(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn heal(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// `url` with its host and port replaced by this proxy's.
    fn url(&self, url: &str) -> String {
        url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", self.port))
            .replace("localhost:5432", &format!("127.0.0.1:{}", self.port))
    }
}

/// The `start ... pid` line of a try: its pid.
fn pid_of_try(ledger: &std::path::Path, try_number: u32) -> Option<i32> {
    let text = std::fs::read_to_string(ledger).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&"pid") && f.get(1) == Some(&try_number.to_string().as_str()))
            .then(|| f.get(2)?.parse().ok())
            .flatten()
    })
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A one-task DAG whose first try runs long (and records its pid and its background job's
/// pid), and whose later tries are quick. No retries: a try that comes back must not cost one.
fn long_first_try_dag(dag_id: &str, ledger: &std::path::Path, retries: u32) -> String {
    format!(
        "{dag_id}:\n  default_args:\n    retries: {retries}\n    retry_delay: 1s\n  tasks:\n    work:\n      operator: bash\n      bash_command: |\n        echo \"start {{{{ run_id }}}} work {{{{ ti.try_number }}}} default_pool $(date +%s%N)\" >> {ledger}\n        if [ {{{{ ti.try_number }}}} -eq 1 ]; then\n          sleep 300 &\n          echo \"pid 1 $$ $!\" >> {ledger}\n          wait\n        fi\n        echo \"end {{{{ run_id }}}} work {{{{ ti.try_number }}}} default_pool $(date +%s%N)\" >> {ledger}\n",
        ledger = ledger.display()
    )
}

fn ledger_spans(ledger: &std::path::Path) -> Vec<Span> {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let lines: String = text
        .lines()
        .filter(|l| !l.starts_with("pid "))
        .map(|l| format!("{l}\n"))
        .collect();
    read_ledger(&lines)
}

/// The background job of try 1 (the `pid 1 BASH CHILD` line).
fn child_of_try1(ledger: &std::path::Path) -> Option<i32> {
    let text = std::fs::read_to_string(ledger).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&"pid") && f.get(1) == Some(&"1"))
            .then(|| f.get(3)?.parse().ok())
            .flatten()
    })
}

/// A worker cut off from PostgreSQL for longer than the heartbeat timeout: it kills its try
/// (and the try's background job) before the scheduler rescues it, the try is retried on
/// another worker, and when the line heals the cut-off worker writes nothing over the new try
/// and goes back to work.
#[tokio::test]
async fn a_worker_cut_off_from_the_database_fences_itself() {
    let Some(db) = TestDb::postgres().await.unwrap() else {
        return;
    };
    db.store.close().await;
    let proxy = Proxy::start("127.0.0.1:5432");
    let mut cluster = Cluster::new(&db.url);
    let ledger = cluster.home.join("ledger.txt");
    std::fs::write(
        cluster.dags.join("fence.yaml"),
        long_first_try_dag("fence", &ledger, 1),
    )
    .unwrap();
    cluster.set("FLOW__WORKER__HEARTBEAT_INTERVAL", "1");
    cluster.set("FLOW__SCHEDULER__ZOMBIE_THRESHOLD", "6");
    assert!(cluster.run(&["db", "migrate"]).status.success());
    cluster.start("scheduler", &["scheduler", "--no-worker"]);
    // The worker that will be cut off reaches the database through the proxy only.
    let mut cut_off = cluster.command("cut-off");
    cut_off
        .env("FLOW__DATABASE__URL", proxy.url(&db.url))
        .env("FLOW__CORE__DAGS_FOLDER", cluster.home.join("none"))
        .args(["worker", "--worker-id", "cut-off"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cluster
        .procs
        .insert("cut-off".into(), cut_off.spawn().unwrap());
    wait_for_jobs(&cluster, "WorkerJob", 1);
    wait_for_jobs(&cluster, "SchedulerJob", 1);
    let trigger = cluster.run(&["dags", "trigger", "fence", "--run-id", "r1"]);
    assert!(
        trigger.status.success(),
        "{}",
        String::from_utf8_lossy(&trigger.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (pid, child) = loop {
        if let (Some(p), Some(c)) = (pid_of_try(&ledger, 1), child_of_try1(&ledger)) {
            break (p, c);
        }
        assert!(Instant::now() < deadline, "try 1 never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    cluster.start("healthy", &["worker", "--worker-id", "healthy"]);
    proxy.cut();
    let cut_at = Instant::now();
    // The cut-off worker kills its try and the try's background job.
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) || alive(child) {
        assert!(
            Instant::now() < deadline,
            "the cut-off worker's try still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dead_at = now_ns();
    let fenced_after = cut_at.elapsed();
    // Try 2 runs on the healthy worker, after the first one died.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans = ledger_spans(&ledger);
        if spans.iter().any(|s| s.try_number == 2 && s.end.is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "try 2 never finished: {spans:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let spans = ledger_spans(&ledger);
    let try2 = spans.iter().find(|s| s.try_number == 2).unwrap();
    assert!(
        try2.start > dead_at,
        "try 2 started before try 1 was killed"
    );
    assert!(spans.iter().all(|s| s.try_number != 1 || s.end.is_none()));
    // Heal; the cut-off worker comes back and changes nothing.
    proxy.heal();
    let states = cluster.stdout(&["tasks", "states", "fence", "r1"]);
    assert!(states.contains("success"), "{states}");
    wait_for_jobs(&cluster, "WorkerJob", 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The run finished and stays so, with try 2's outcome from the healthy worker.
        let states = cluster.stdout(&["tasks", "states", "fence", "r1"]);
        let runs = runs(&cluster, "fence");
        if runs.iter().any(|(_, s)| s == "success") {
            assert!(states.contains("success"), "{states}");
            break;
        }
        assert!(Instant::now() < deadline, "{runs:?} {states}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let spans = ledger_spans(&ledger);
    assert_eq!(spans.len(), 2, "{spans:?}");
    cluster.assert_alive();
    eprintln!(
        "fencing: the cut-off worker killed its try {:.1} s after the cut (heartbeat timeout 6 s); try 2 started {:.1} s after that",
        fenced_after.as_secs_f64(),
        (try2.start - dead_at) as f64 / 1e9
    );
    drop(cluster);
    db.drop_db().await.unwrap();
}

/// SIGTERM on a worker: no new claims, running tries get `FLOW__WORKER__SHUTDOWN_TIMEOUT`,
/// then they are killed (with their background jobs) and handed back, and run again at
/// once on another worker without costing a retry (the task has none).
#[tokio::test]
async fn a_stopped_worker_hands_back_what_it_could_not_finish() {
    let Some(db) = TestDb::postgres().await.unwrap() else {
        return;
    };
    db.store.close().await;
    let mut cluster = Cluster::new(&db.url);
    let ledger = cluster.home.join("ledger.txt");
    std::fs::write(
        cluster.dags.join("handback.yaml"),
        long_first_try_dag("handback", &ledger, 0),
    )
    .unwrap();
    cluster.set("FLOW__WORKER__SHUTDOWN_TIMEOUT", "2");
    assert!(cluster.run(&["db", "migrate"]).status.success());
    cluster.start("scheduler", &["scheduler", "--no-worker"]);
    cluster.start("first", &["worker", "--worker-id", "first"]);
    wait_for_jobs(&cluster, "WorkerJob", 1);
    wait_for_jobs(&cluster, "SchedulerJob", 1);
    assert!(
        cluster
            .run(&["dags", "trigger", "handback", "--run-id", "r1"])
            .status
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (pid, child) = loop {
        if let (Some(p), Some(c)) = (pid_of_try(&ledger, 1), child_of_try1(&ledger)) {
            break (p, c);
        }
        assert!(Instant::now() < deadline, "try 1 never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    cluster.start("second", &["worker", "--worker-id", "second"]);
    wait_for_jobs(&cluster, "WorkerJob", 2);
    let mut first = cluster.procs.remove("first").unwrap();
    let term = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let stopped_at = Instant::now();
    let status = first.wait().unwrap();
    assert!(status.success(), "the worker's stop: {status}");
    let stop_took = stopped_at.elapsed();
    assert!(
        !alive(pid) && !alive(child),
        "the handed-back try still runs"
    );
    let dead_at = now_ns();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if runs(&cluster, "handback")
            .iter()
            .any(|(_, s)| s == "success")
        {
            break;
        }
        let spans = ledger_spans(&ledger);
        assert!(
            Instant::now() < deadline,
            "the run did not succeed: {spans:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let spans = ledger_spans(&ledger);
    let try2 = spans.iter().find(|s| s.try_number == 2).expect("try 2 ran");
    assert!(
        try2.start > dead_at,
        "try 2 started before try 1 was killed"
    );
    assert!(try2.end.is_some());
    cluster.assert_alive();
    eprintln!(
        "hand-back: the worker stopped {:.1} s after SIGTERM (shutdown timeout 2 s); try 2 started {:.2} s after try 1 died",
        stop_took.as_secs_f64(),
        (try2.start - dead_at) as f64 / 1e9
    );
    drop(cluster);
    db.drop_db().await.unwrap();
}

/// `flow dags trigger --wait` against the cluster, bounded.
fn trigger_wait(cluster: &Cluster, dag_id: &str, run_id: &str) -> (bool, String) {
    let mut child = cluster
        .command("cli")
        .args(["dags", "trigger", dag_id, "--run-id", run_id, "--wait"])
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
            panic!("{dag_id} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A remote worker needs no dags folder: the python modules beside the DAG files
/// (`ml_steps.train`), `python_callable_file`s, and every other file of the folder come from
/// the database as a bundle, fetched once per version; an edited helper reaches the worker.
#[tokio::test]
async fn remote_workers_get_the_dags_folder_from_the_database() {
    let Some(db) = TestDb::postgres().await.unwrap() else {
        return;
    };
    db.store.close().await;
    let mut cluster = Cluster::new(&db.url);
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dags");
    for name in [
        "ml_pipeline.yaml",
        "ml_steps.py",
        "partitioned_load.yaml",
        "partition_steps.py",
    ] {
        std::fs::copy(examples.join(name), cluster.dags.join(name)).unwrap();
    }
    std::fs::create_dir_all(cluster.dags.join("helpers")).unwrap();
    let probe = cluster.dags.join("helpers/probe.py");
    std::fs::write(
        &probe,
        "import os\n\ndef probe():\n    open(os.environ['TMPDIR'] + '/probe.txt', 'a').write('v1\\n')\n",
    )
    .unwrap();
    std::fs::write(
        cluster.dags.join("probe.yaml"),
        "probe:\n  tasks:\n    p:\n      operator: python\n      python_callable_name: probe\n      python_callable_file: helpers/probe.py\n",
    )
    .unwrap();
    assert!(cluster.run(&["db", "migrate"]).status.success());
    cluster.start("scheduler", &["scheduler", "--no-worker"]);
    cluster.start("worker", &["worker"]);
    wait_for_jobs(&cluster, "WorkerJob", 1);
    for (dag, run) in [
        ("ml_train_validate_deploy", "r1"),
        ("partitioned_load", "r1"),
        ("probe", "r1"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (ok, out) = loop {
            let (ok, out) = trigger_wait(&cluster, dag, run);
            // Until the scheduler has parsed the folder, the DAG is unknown.
            if ok || !out.contains("not found") || Instant::now() > deadline {
                break (ok, out);
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(ok, "{dag} on a worker without files: {out}");
    }
    let text = std::fs::read_to_string(cluster.home.join("probe.txt")).unwrap();
    assert_eq!(text, "v1\n");
    // An edited helper becomes a new bundle; the next try runs it.
    std::fs::write(
        &probe,
        "import os\n\ndef probe():\n    open(os.environ['TMPDIR'] + '/probe.txt', 'a').write('v2\\n')\n",
    )
    .unwrap();
    let bundles = cluster.home.join("worker/bundles");
    let before = std::fs::read_dir(&bundles).unwrap().count();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 2;
    loop {
        let (ok, out) = trigger_wait(&cluster, "probe", &format!("r{n}"));
        assert!(ok, "{out}");
        let text = std::fs::read_to_string(cluster.home.join("probe.txt")).unwrap();
        if text.ends_with("v2\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edit never reached the worker: {text}"
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(std::fs::read_dir(&bundles).unwrap().count() > before);
    cluster.assert_alive();
    drop(cluster);
    db.drop_db().await.unwrap();
}

/// PostgreSQL away for 15 s (every connection closed, new ones refused) in the middle of
/// runs with 2 schedulers and 2 workers: nothing is lost, no try overlaps another, and every
/// component reports healthy again.
#[tokio::test]
async fn the_database_going_away_for_15_seconds_loses_nothing() {
    let Some(db) = TestDb::postgres().await.unwrap() else {
        return;
    };
    db.store.close().await;
    let proxy = Proxy::start("127.0.0.1:5432");
    let mut cluster = Cluster::new(&db.url);
    let ledger = cluster.home.join("ledger.txt");
    let mut y = String::from(
        "outage:\n  max_active_runs: 3\n  default_args: {retries: 2, retry_delay: 1s}\n  tasks:\n",
    );
    for i in 0..8 {
        y.push_str(&format!(
            "    t{i}:\n      operator: bash\n      bash_command: |\n        echo \"start {{{{ run_id }}}} t{i} {{{{ ti.try_number }}}} default_pool $(date +%s%N)\" >> {ledger}\n        sleep 0.5\n        echo \"end {{{{ run_id }}}} t{i} {{{{ ti.try_number }}}} default_pool $(date +%s%N)\" >> {ledger}\n",
            ledger = ledger.display()
        ));
        if i > 0 {
            y.push_str(&format!("      dependencies: [t{}]\n", i - 1));
        }
    }
    std::fs::write(cluster.dags.join("outage.yaml"), y).unwrap();
    assert!(cluster.run(&["db", "migrate"]).status.success());
    // Every component reaches the database through the proxy; the test's CLI goes direct.
    let via_proxy = proxy.url(&db.url);
    for (name, args) in [
        ("scheduler0", &["scheduler", "--no-worker"][..]),
        ("scheduler1", &["scheduler", "--no-worker"][..]),
        ("worker0", &["worker", "--worker-id", "w0"][..]),
        ("worker1", &["worker", "--worker-id", "w1"][..]),
    ] {
        let mut c = cluster.command(name);
        c.env("FLOW__DATABASE__URL", &via_proxy);
        if name.starts_with("scheduler") {
            c.env("FLOW__CORE__DAGS_FOLDER", &cluster.dags);
        } else {
            c.env("FLOW__CORE__DAGS_FOLDER", cluster.home.join("none"));
        }
        let child = c
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        cluster.procs.insert(name.into(), child);
    }
    wait_for_jobs(&cluster, "SchedulerJob", 2);
    wait_for_jobs(&cluster, "WorkerJob", 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    for r in 0..3 {
        loop {
            let out = cluster.run(&["dags", "trigger", "outage", "--run-id", &format!("r{r}")]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Down once some tries have ended, for 15 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger_spans(&ledger)
        .iter()
        .filter(|s| s.end.is_some())
        .count()
        < 4
    {
        assert!(Instant::now() < deadline, "no progress before the outage");
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.go_down();
    std::thread::sleep(Duration::from_secs(15));
    proxy.come_up();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = runs(&cluster, "outage");
        assert!(!all.iter().any(|(_, s)| s == "failed"), "{all:?}");
        if all.iter().filter(|(_, s)| s == "success").count() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runs did not finish after the outage: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let spans = ledger_spans(&ledger);
    assert_no_overlapping_tries(&spans);
    let finished = spans.iter().filter(|s| s.end.is_some()).count();
    assert!(finished >= 24, "{finished} tries finished");
    // Every component is healthy again.
    wait_for_jobs(&cluster, "SchedulerJob", 2);
    wait_for_jobs(&cluster, "WorkerJob", 2);
    cluster.assert_alive();
    eprintln!(
        "outage: 3 runs of 8 tasks through a 15 s database outage: {} tries ({finished} finished), all runs succeeded, every component healthy again",
        spans.len()
    );
    drop(cluster);
    db.drop_db().await.unwrap();
}

/// `queue:` (here from `default_args`, overridden by one task) routes a task to the workers
/// started with `--queues`; while no live worker serves its queue, the transition to queued
/// says so.
#[tokio::test]
async fn queues_route_tasks_to_their_workers() {
    let Some(db) = TestDb::postgres().await.unwrap() else {
        return;
    };
    db.store.close().await;
    let mut cluster = Cluster::new(&db.url);
    std::fs::write(
        cluster.dags.join("routed.yaml"),
        "routed:\n  default_args: {queue: gpu}\n  tasks:\n    train: {operator: bash, bash_command: 'echo training'}\n    fetch: {operator: bash, bash_command: 'echo fetching', queue: default}\n",
    )
    .unwrap();
    assert!(cluster.run(&["db", "migrate"]).status.success());
    cluster.start("cpu", &["worker", "--worker-id", "cpu"]);
    wait_for_jobs(&cluster, "WorkerJob", 1);
    cluster.start("scheduler", &["scheduler", "--no-worker"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster
        .run(&["dags", "trigger", "routed", "--run-id", "r1"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the DAG was never parsed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let store = flow_store::Store::connect(&db.url).await.unwrap();
    let fetch = flow_store::TiKey::new("routed", "r1", "fetch", -1);
    let train = flow_store::TiKey::new("routed", "r1", "train", -1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let f = store.ti_get(&fetch).await.unwrap().unwrap();
        let t = store.ti_get(&train).await.unwrap().unwrap();
        if f.state.as_str() == "success" && t.state.as_str() == "queued" {
            assert_eq!(f.worker_id.as_deref(), Some("cpu"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fetch {} train {}",
            f.state,
            t.state
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let why: Vec<String> = store
        .ti_transitions(&train)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|t| t.4)
        .collect();
    assert!(
        why.iter()
            .any(|r| r.contains("queue `gpu` has no live worker (workers serve: default)")),
        "{why:?}"
    );
    cluster.start("gpu", &["worker", "--worker-id", "gpu", "--queues", "gpu"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = store.ti_get(&train).await.unwrap().unwrap();
        if t.state.as_str() == "success" {
            assert_eq!(t.worker_id.as_deref(), Some("gpu"));
            break;
        }
        assert!(Instant::now() < deadline, "train {}", t.state);
        std::thread::sleep(Duration::from_millis(100));
    }
    store.close().await;
    cluster.assert_alive();
    drop(cluster);
    db.drop_db().await.unwrap();
}

/// A claim whose answer never reached its worker (it timed out after the commit, or the
/// worker died and came back with the same id) leaves a try recorded as that worker's: the
/// worker hands it back at its next heartbeat instead of leaving it to the zombie rescue,
/// and the task runs without costing a retry (it has none).
#[tokio::test]
async fn a_worker_hands_back_tries_it_does_not_know() {
    let Some(db) = TestDb::postgres().await.unwrap() else {
        return;
    };
    db.store.close().await;
    let mut cluster = Cluster::new(&db.url);
    std::fs::write(
        cluster.dags.join("lost.yaml"),
        "lost:\n  tasks:\n    only: {operator: bash, bash_command: 'echo ran'}\n",
    )
    .unwrap();
    cluster.set("FLOW__WORKER__HEARTBEAT_INTERVAL", "1");
    assert!(cluster.run(&["db", "migrate"]).status.success());
    cluster.start("scheduler", &["scheduler", "--no-worker"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster
        .run(&["dags", "trigger", "lost", "--run-id", "r1"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the DAG was never parsed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let store = flow_store::Store::connect(&db.url).await.unwrap();
    let key = flow_store::TiKey::new("lost", "r1", "only", -1);
    // The claim whose answer was lost: made by worker `w` before it knew.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let claimed = store
            .ti_claim("w", "elsewhere", &["default".into()], 1, chrono::Utc::now())
            .await
            .unwrap();
        if !claimed.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never queued");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.start("w", &["worker", "--worker-id", "w"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let row = loop {
        let row = store.ti_get(&key).await.unwrap().unwrap();
        if row.state.as_str() == "success" {
            break row;
        }
        assert!(Instant::now() < deadline, "state {}", row.state);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(row.try_number, 2, "the lost claim was try 1");
    let reasons: Vec<String> = store
        .ti_transitions(&key)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|t| t.4)
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("handed back")),
        "{reasons:?}"
    );
    store.close().await;
    cluster.assert_alive();
    drop(cluster);
    db.drop_db().await.unwrap();
}

/// Three schedulers on one PostgreSQL database race for every asset event: 40 mapped tries
/// of one task each record an event of the asset a consumer DAG is scheduled on. Every event
/// is consumed by exactly one consumer run, whichever scheduler made it.
#[tokio::test]
async fn three_schedulers_consume_each_asset_event_once() {
    let Some(db) = TestDb::postgres().await.unwrap() else {
        return;
    };
    db.store.close().await;
    let mut cluster = Cluster::new(&db.url);
    std::fs::write(
        cluster.dags.join("assets.yaml"),
        r#"
race_producer:
  tasks:
    write:
      operator: bash
      expand: {bash_command: ["echo 0", "echo 1", "echo 2", "echo 3", "echo 4", "echo 5", "echo 6", "echo 7", "echo 8", "echo 9", "echo 10", "echo 11", "echo 12", "echo 13", "echo 14", "echo 15", "echo 16", "echo 17", "echo 18", "echo 19", "echo 20", "echo 21", "echo 22", "echo 23", "echo 24", "echo 25", "echo 26", "echo 27", "echo 28", "echo 29", "echo 30", "echo 31", "echo 32", "echo 33", "echo 34", "echo 35", "echo 36", "echo 37", "echo 38", "echo 39"]}
      outlets: ["s3://race/x"]
race_consumer:
  schedule: ["s3://race/x"]
  tasks:
    read: {operator: bash, bash_command: "echo read"}
"#,
    )
    .unwrap();
    assert!(cluster.run(&["db", "migrate"]).status.success());
    for s in 0..3 {
        cluster.start(&format!("scheduler{s}"), &["scheduler", "--no-worker"]);
    }
    cluster.start("worker0", &["worker", "--concurrency", "8"]);
    let store = flow_store::Store::connect(&db.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while store.dag_get("race_consumer").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "race_consumer never parsed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cluster.stdout(&["dags", "trigger", "race_producer"]);
    let run_id = out
        .lines()
        .find_map(|l| l.strip_prefix("created dag run "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    // Done when the producer succeeded, nothing waits, and every consumer run finished.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let producer = store.dag_run_get("race_producer", &run_id).await.unwrap();
        let producer_done = producer.is_some_and(|r| r.state == flow_model::DagRunState::Success);
        let waiting = store.asset_queue().await.unwrap();
        let consumers = runs(&cluster, "race_consumer");
        if producer_done
            && waiting.is_empty()
            && !consumers.is_empty()
            && consumers.iter().all(|(_, s)| s == "success")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "producer done: {producer_done}, waiting: {waiting:?}, consumer runs: {consumers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.assert_alive();
    let (events, total) = store
        .asset_event_query(&flow_store::AssetEventQuery {
            source_dag_id: Some("race_producer".into()),
            limit: 100,
            ..flow_store::AssetEventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(total, 40, "one event per successful mapped try");
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    let triggered = store.asset_event_runs(&ids).await.unwrap();
    for id in &ids {
        let runs = triggered.get(id).map(Vec::len).unwrap_or(0);
        assert_eq!(runs, 1, "event {id} was consumed by {runs} runs");
    }
    let consumer_runs = runs(&cluster, "race_consumer");
    eprintln!(
        "assets race: 40 events consumed once each by {} consumer runs made by 3 schedulers",
        consumer_runs.len()
    );
    store.close().await;
    drop(cluster);
    db.drop_db().await.unwrap();
}
