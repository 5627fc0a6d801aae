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
        #[arg(long, default_value_t = 100)]
        latency_runs: usize,
    },
}

pub async fn run(command: BenchCommand) -> Result<ExitCode> {
    match command {
        BenchCommand::Engine {
            database_url,
            chain,
            fanout,
            latency_runs,
        } => crate::bench_engine::engine(database_url, chain, fanout, latency_runs).await,
        BenchCommand::Parse {
            files,
            tasks,
            runs,
            threads,
        } => parse(files, tasks, runs.max(1), threads),
    }
}

/// One generated DAG file, shaped like a typical dag-factory ETL file.
fn dag_file(i: usize, tasks: usize) -> String {
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

fn scratch_dir() -> PathBuf {
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
