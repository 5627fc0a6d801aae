//! `flow bench ...`: benchmarks that report figures for the issue notes. They are measurements,
//! not tests: nothing here asserts a time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use flow_dag::{LoadOptions, load_dags};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Parse and validate generated DAG files (default: 1,000 files of 10 chained, templated
    /// bash tasks) and report time and memory.
    Parse {
        #[arg(long, default_value_t = 1000)]
        files: usize,
        #[arg(long, default_value_t = 10)]
        tasks: usize,
        /// Timed repetitions; the best and the median are reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Parser threads (0 = one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Scheduler + embedded worker on a fresh database: chain, fan-out and trigger latency.
    Engine {
        /// Database to benchmark (dropped and recreated!); default: a temporary SQLite file.
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long, default_value_t = 100)]
        chain: usize,
        #[arg(long, default_value_t = 1000)]
        fanout: usize,
        /// How many times the fan-out runs (`flow bench api` keeps it going as a load).
        #[arg(long, default_value_t = 1)]
        fanout_rounds: usize,
        #[arg(long, default_value_t = 100)]
        latency_runs: usize,
    },
    /// Web UI server time: the DAG list with 1,000 DAGs and the grid of a 200-task DAG with
    /// 100 runs, on a fresh database (dropped and recreated!).
    Web {
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long, default_value_t = 1000)]
        dags: usize,
        #[arg(long, default_value_t = 100)]
        runs: usize,
        #[arg(long, default_value_t = 200)]
        tasks: usize,
        /// Keep the database (and print how to serve it) to time the same pages through a
        /// real `flow webserver` afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// REST API latency at a steady request rate over loopback: the DAG list and a 200-task
    /// run's task instances, with 1,000 DAGs and 100,000 task instances, scheduler idle and
    /// then while the 1,000-task fan-out runs. The database (and `<name>_fanout` beside it)
    /// is dropped and recreated!
    Api(crate::bench_api::ApiBench),
    /// Kafka-triggered runs against a real broker: a backlog turned into runs (runs/s), and
    /// message to first task running at a steady rate. The database is dropped and recreated!
    Kafka(crate::bench_kafka::KafkaBench),
    /// The cluster mode at scale on PostgreSQL: the scheduler pass with 100 and with 10,000
    /// active task instances, then 1,000 DAGs of 10 tasks triggered at once through 2
    /// `flow scheduler` and 4 `flow worker` processes. The database is dropped and recreated!
    Scale(crate::bench_scale::ScaleBench),
    /// `flow standalone` (a child process, SQLite) idle with generated DAGs: resident memory,
    /// CPU, and how soon an edited DAG file is live.
    Idle {
        #[arg(long, default_value_t = 1000)]
        dags: usize,
        #[arg(long, default_value_t = 10)]
        tasks: usize,
        /// Seconds of idle CPU measured.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

pub async fn run(command: BenchCommand) -> Result<ExitCode> {
    match command {
        BenchCommand::Engine {
            database_url,
            chain,
            fanout,
            fanout_rounds,
            latency_runs,
        } => {
            crate::bench_engine::engine(database_url, chain, fanout, fanout_rounds, latency_runs)
                .await
        }
        BenchCommand::Web {
            database_url,
            dags,
            runs,
            tasks,
            keep,
        } => crate::bench_web::web(database_url, dags, runs, tasks, keep).await,
        BenchCommand::Idle {
            dags,
            tasks,
            seconds,
        } => idle(dags, tasks, seconds).await,
        BenchCommand::Api(bench) => crate::bench_api::api(bench).await,
        BenchCommand::Kafka(bench) => crate::bench_kafka::kafka(bench).await,
        BenchCommand::Scale(bench) => crate::bench_scale::scale(bench).await,
        BenchCommand::Parse {
            files,
            tasks,
            runs,
            threads,
        } => parse(files, tasks, runs.max(1), threads),
    }
}

/// One generated DAG file, shaped like a typical dag-factory ETL file.
pub fn dag_file(i: usize, tasks: usize) -> String {
    let mut s = format!(
        "default:\n  default_args:\n    owner: bench\n    retries: 2\n    retry_delay: 5m\n\
         bench_dag_{i:05}:\n  description: Generated DAG {i}\n  schedule: \"{} {} * * *\"\n  \
         start_date: 2025-01-01\n  catchup: false\n  tags: [bench, generated]\n  \
         params: {{region: eu, batch: {i}}}\n  tasks:\n",
        i % 60,
        i % 24
    );
    for t in 0..tasks {
        s.push_str(&format!(
            "    - task_id: step_{t:03}\n      operator: bash\n      \
             bash_command: \"echo step {t} for {{{{ ds }}}} region {{{{ params.region }}}} run {{{{ run_id }}}}\"\n"
        ));
        if t > 0 {
            s.push_str(&format!("      dependencies: [step_{:03}]\n", t - 1));
        }
    }
    s
}

pub fn scratch_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!("flow-bench-{}-{nanos}", std::process::id()))
}

/// Resident set size in bytes, from /proc (Linux only; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    let Ok(statm) = fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The benchmark's database, emptied: created first when it is a PostgreSQL database the
/// server does not have yet, then every table dropped and migrated again.
pub(crate) async fn fresh_store(url: &str) -> Result<flow_store::Store> {
    flow_store::create_database_if_missing(url)
        .await
        .with_context(|| format!("creating {}", flow_store::redact_url(url)))?;
    let store = flow_store::Store::connect(url).await?;
    store.reset().await?;
    Ok(store)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn parse(files: usize, tasks: usize, runs: usize, threads: usize) -> Result<ExitCode> {
    let dir = scratch_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = parse_in(&dir, files, tasks, runs, threads);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn parse_in(
    dir: &Path,
    files: usize,
    tasks: usize,
    runs: usize,
    threads: usize,
) -> Result<ExitCode> {
    let mut bytes = 0usize;
    for i in 0..files {
        let text = dag_file(i, tasks);
        bytes += text.len();
        fs::write(dir.join(format!("dag_{i:05}.yaml")), text)?;
    }
    let options = LoadOptions {
        threads,
        ..LoadOptions::default()
    };
    // The first load measures memory (before the allocator holds freed memory from earlier
    // loads) and warms the page cache, so the timed runs measure parsing, not the disk.
    let before = rss_bytes();
    crate::ALLOC.start_counting();
    let held = load_dags(dir, &options)?;
    let heap_dags = crate::ALLOC.live_bytes();
    crate::ALLOC.stop_counting();
    let after = rss_bytes();
    let heap_source: usize = held.files.iter().map(|f| f.source.capacity()).sum();
    drop(held);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let bag = load_dags(dir, &options)?;
        times.push(start.elapsed());
        if bag.error_count() > 0 {
            bail!(
                "generated DAGs failed to validate: {:?}",
                bag.diagnostics().next()
            );
        }
        if bag.dags().count() != files {
            bail!("expected {files} DAGs, loaded {}", bag.dags().count());
        }
    }
    times.sort();
    let bag = load_dags(dir, &options)?;
    let loaded_tasks: usize = bag.dags().map(|d| d.tasks.len()).sum();
    println!(
        "parse+validate {files} files x {tasks} tasks ({:.1} MiB of YAML, {loaded_tasks} tasks):",
        bytes as f64 / 1_048_576.0
    );
    println!(
        "  best {:.1} ms, median {:.1} ms over {runs} runs ({} thread(s))",
        ms(times[0]),
        ms(times[times.len() / 2]),
        if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        }
    );
    println!(
        "  heap held by the loaded DAGs: {:.1} MiB (plus {:.1} MiB of YAML source kept for display)",
        heap_dags.saturating_sub(heap_source) as f64 / 1_048_576.0,
        heap_source as f64 / 1_048_576.0
    );
    println!(
        "  RSS growth on the first load (DAGs held, allocator slack included): {:.1} MiB; process RSS {:.1} MiB",
        after.saturating_sub(before) as f64 / 1_048_576.0,
        after as f64 / 1_048_576.0
    );
    drop(bag);
    Ok(ExitCode::SUCCESS)
}

/// CPU time (user + system, in clock ticks) and resident bytes of a process, from /proc.
pub(crate) fn proc_usage(pid: u32) -> Result<(u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu = ticks(11) + ticks(12);
    let statm = fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((cpu, pages * 4096))
}

async fn idle(dags: usize, tasks: usize, seconds: u64) -> Result<ExitCode> {
    let dir = scratch_dir();
    let folder = dir.join("dags");
    fs::create_dir_all(&folder)?;
    for i in 0..dags {
        fs::write(folder.join(format!("dag_{i:05}.yaml")), dag_file(i, tasks))?;
    }
    let home = dir.join("home");
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("standalone")
        .env("FLOW_HOME", &home)
        .env("FLOW__CORE__DAGS_FOLDER", &folder)
        .env_remove("FLOW__DATABASE__URL")
        .env("FLOW__LOGGING__LEVEL", "warn")
        .env("FLOW__WEBSERVER__WEB_SERVER_PORT", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let result = idle_measure(&child, &home, &folder, dags, seconds).await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = fs::remove_dir_all(&dir);
    result
}

async fn idle_measure(
    child: &std::process::Child,
    home: &Path,
    folder: &Path,
    dags: usize,
    seconds: u64,
) -> Result<ExitCode> {
    let pid = child.id();
    let started = Instant::now();
    let db = home.join("flow.db");
    while !db.exists() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("flow standalone did not create {}", db.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = flow_store::Store::connect(&db.display().to_string()).await?;
    loop {
        if store.dag_list().await.map_or(0, |l| l.len()) >= dags {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("flow standalone did not load {dags} DAGs in 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let loaded = started.elapsed();
    // Let start-up work (first parse, page cache, allocator) settle before measuring.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let (cpu0, _) = proc_usage(pid)?;
    let t0 = Instant::now();
    let mut rss_max = 0;
    while t0.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(proc_usage(pid)?.1);
    }
    let (cpu1, rss) = proc_usage(pid)?;
    let cpu_pct = (cpu1 - cpu0) as f64 / ticks_per_sec / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "idle flow standalone with {dags} DAGs (loaded in {:.1} s): RSS {:.1} MiB (max {:.1} MiB over {seconds} s), CPU {cpu_pct:.2} %",
        loaded.as_secs_f64(),
        rss as f64 / 1_048_576.0,
        rss_max as f64 / 1_048_576.0
    );
    // Edit one DAG's description and wait for the new text in the database.
    let mut edits = Vec::new();
    for n in 0..5 {
        let path = folder.join("dag_00007.yaml");
        let text = fs::read_to_string(&path)?;
        let marker = format!("edited {n}");
        let edited = text
            .replacen(
                "description: Generated DAG 7",
                &format!("description: {marker}"),
                1,
            )
            .replacen(
                "description: edited ",
                &format!("description: {marker} was "),
                1,
            );
        let t = Instant::now();
        fs::write(&path, edited)?;
        loop {
            let row = store.dag_get("bench_dag_00007").await?;
            if row
                .and_then(|r| r.description)
                .is_some_and(|d| d.starts_with(&marker))
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("edit {n} was not live after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        edits.push(ms(t.elapsed()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    edits.sort_by(f64::total_cmp);
    println!(
        "edited DAG file live after: median {:.1} ms, max {:.1} ms over {} edits",
        edits[edits.len() / 2],
        edits[edits.len() - 1],
        edits.len()
    );
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
