//! `flow bench scale`: the cluster mode at scale on PostgreSQL. Two measurements:
//!
//! 1. The scheduler pass with few and with many active task instances (an in-process
//!    scheduler, no workers, nothing changing between passes): what a pass costs as the
//!    number of active task instances grows.
//! 2. Throughput through real processes: `--schedulers` x `flow scheduler --no-worker` and
//!    `--workers` x `flow worker --concurrency --slots` on the database, `--dags` DAGs of
//!    `--tasks` independent `true` tasks triggered at once from this process (the store's
//!    trigger path, as the CLI and the API use it): tasks/s, and the schedulers' CPU per
//!    1,000 task instances.
//!
//! The database is dropped and recreated. Figures are reported, never asserted.

use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use flow_dag::Dag;
use flow_model::DagRunState;
use flow_scheduler::{Scheduler, SchedulerConfig, Wakeups};
use flow_store::{Store, TriggerRequest};

#[derive(Debug, clap::Args)]
pub struct ScaleBench {
    /// A PostgreSQL database (dropped and recreated!).
    #[arg(long)]
    pub database_url: String,
    #[arg(long, default_value_t = 1000)]
    pub dags: usize,
    #[arg(long, default_value_t = 10)]
    pub tasks: usize,
    #[arg(long, default_value_t = 2)]
    pub schedulers: usize,
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Slots per worker.
    #[arg(long, default_value_t = 16)]
    pub slots: usize,
    /// Database connections per pool of each process (FLOW__DATABASE__POOL_SIZE): each
    /// process opens up to 2 x this + 1, and PostgreSQL allows 100 by default.
    #[arg(long, default_value_t = 4)]
    pub pool_size: usize,
}

fn dag_yaml(i: usize, tasks: usize) -> String {
    let mut s = format!(
        "scale_{i:05}:\n  schedule: null\n  start_date: 2025-01-01\n  is_paused_upon_creation: false\n  max_active_tasks: {tasks}\n  tasks:\n"
    );
    for t in 0..tasks {
        s.push_str(&format!(
            "    t{t}: {{operator: bash, bash_command: 'true'}}\n"
        ));
    }
    s
}

/// The DAG as stored, for triggering.
async fn stored_dag(store: &Store, dag_id: &str) -> Result<(Dag, String)> {
    let (data, hash) = store
        .serialized_dag_get(dag_id)
        .await?
        .with_context(|| format!("{dag_id} is not parsed"))?;
    Ok((Dag::from_json(&data)?, hash))
}

/// Triggers one run of each DAG, from 8 clients at once (as many users or an API gateway
/// would), through the store's trigger path as the CLI and the API use it.
async fn trigger_all(store: &Store, dag_ids: &[String]) -> Result<()> {
    let mut clients = tokio::task::JoinSet::new();
    for chunk in dag_ids.chunks(dag_ids.len().div_ceil(8).max(1)) {
        let (store, chunk) = (store.clone(), chunk.to_vec());
        clients.spawn(async move {
            for dag_id in chunk {
                let (dag, hash) = stored_dag(&store, &dag_id).await?;
                store
                    .dag_run_trigger(
                        &dag,
                        &hash,
                        &TriggerRequest::manual(serde_json::json!({})),
                        Utc::now(),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = clients.join_next().await {
        done??;
    }
    Ok(())
}

async fn wait_parsed(store: &Store, n: usize, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if store.dag_list().await?.len() >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the DAGs were not parsed within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Median duration of `n` passes of `scheduler` (in ms).
async fn pass_ms(scheduler: &mut Scheduler, n: usize) -> Result<(f64, f64)> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        scheduler.pass(Utc::now()).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[times.len() - 1]))
}

/// The machine's (busy, total) CPU ticks so far, from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn cpu_ticks(pid: u32) -> u64 {
    crate::bench::proc_usage(pid).map_or(0, |(cpu, _)| cpu)
}

pub async fn scale(b: ScaleBench) -> Result<ExitCode> {
    if !b.database_url.starts_with("postgres") {
        bail!("`flow bench scale` measures the cluster mode: give a PostgreSQL --database-url");
    }
    let dir = crate::bench::scratch_dir();
    let folder = dir.join("dags");
    std::fs::create_dir_all(&folder)?;
    for i in 0..b.dags {
        std::fs::write(
            folder.join(format!("scale_{i:05}.yaml")),
            dag_yaml(i, b.tasks),
        )?;
    }
    let dag_ids: Vec<String> = (0..b.dags).map(|i| format!("scale_{i:05}")).collect();
    let result = run(&b, &dir, &folder, &dag_ids).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(b: &ScaleBench, dir: &Path, folder: &Path, dag_ids: &[String]) -> Result<ExitCode> {
    let parallelism = i64::try_from(b.workers * b.slots * 2).unwrap_or(128);
    // 1. Pass cost as active task instances grow (in process, no workers).
    let store = crate::bench::fresh_store(&b.database_url).await?;
    println!(
        "backend: PostgreSQL ({}); {} DAGs x {} tasks",
        store.redacted_url(),
        b.dags,
        b.tasks
    );
    let mut scheduler = Scheduler::new(
        store.clone(),
        SchedulerConfig {
            dags_folder: folder.to_path_buf(),
            parallelism,
            dags_are_paused_at_creation: false,
            ..SchedulerConfig::default()
        },
        Wakeups::default(),
    );
    let parse = Instant::now();
    while store.dag_list().await?.len() < b.dags {
        scheduler.pass(Utc::now()).await?;
        if parse.elapsed() > Duration::from_secs(300) {
            bail!("the DAGs were not parsed within 300 s");
        }
    }
    let few = (100 / b.tasks.max(1)).clamp(1, b.dags);
    trigger_all(&store, &dag_ids[..few]).await?;
    pass_ms(&mut scheduler, 3).await?; // schedule and queue what can be
    let (p_few, p_few_max) = pass_ms(&mut scheduler, 20).await?;
    trigger_all(&store, &dag_ids[few..]).await?;
    pass_ms(&mut scheduler, 3).await?;
    let (p_many, p_many_max) = pass_ms(&mut scheduler, 20).await?;
    println!(
        "(1) scheduler pass, nothing changing: {:.1} ms median ({:.1} max) with {} active task instances; {:.1} ms median ({:.1} max) with {}",
        p_few,
        p_few_max,
        few * b.tasks,
        p_many,
        p_many_max,
        b.dags * b.tasks
    );
    drop(scheduler);
    store.close().await;

    // 2. Throughput through processes.
    let store = crate::bench::fresh_store(&b.database_url).await?;
    let key = flow_store::Cipher::generate_key();
    let spawn = |name: &str, args: &[String]| -> Result<Child> {
        let home = dir.join(name);
        std::fs::create_dir_all(&home)?;
        Ok(Command::new(std::env::current_exe()?)
            .args(args)
            .env("FLOW_HOME", &home)
            .env("FLOW__DATABASE__URL", &b.database_url)
            .env("FLOW__CORE__FERNET_KEY", &key)
            .env("FLOW__CORE__DAGS_FOLDER", folder)
            .env("FLOW__CORE__PARALLELISM", parallelism.to_string())
            .env("FLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "false")
            .env("FLOW__LOGGING__LEVEL", "warn")
            .env("FLOW__DATABASE__POOL_SIZE", b.pool_size.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?)
    };
    let mut schedulers = Vec::new();
    let mut workers = Vec::new();
    let result = async {
        for s in 0..b.schedulers {
            schedulers.push(spawn(
                &format!("scheduler{s}"),
                &["scheduler".into(), "--no-worker".into()],
            )?);
        }
        for w in 0..b.workers {
            workers.push(spawn(
                &format!("worker{w}"),
                &[
                    "worker".into(),
                    "--concurrency".into(),
                    b.slots.to_string(),
                ],
            )?);
        }
        wait_parsed(&store, b.dags, Duration::from_secs(300)).await?;
        // Let the DAG rows settle (the schedulers re-read them when their version moves).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu_before: u64 = schedulers.iter().map(|c| cpu_ticks(c.id())).sum();
        let worker_cpu_before: u64 = workers.iter().map(|c| cpu_ticks(c.id())).sum();
        let machine_before = machine_ticks();
        let started = Instant::now();
        trigger_all(&store, dag_ids).await?;
        let triggered = started.elapsed();
        loop {
            let (active, _) = store
                .dag_run_list_in_states(&[DagRunState::Queued, DagRunState::Running])
                .await?;
            if active.is_empty() {
                break;
            }
            if started.elapsed() > Duration::from_secs(1800) {
                bail!("{} runs still active after 30 minutes", active.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = started.elapsed();
        let machine_after = machine_ticks();
        let busy = (machine_after.0 - machine_before.0) as f64
            / (machine_after.1 - machine_before.1).max(1) as f64;
        let ticks = 100.0; // USER_HZ
        let cpu =
            (schedulers.iter().map(|c| cpu_ticks(c.id())).sum::<u64>() - cpu_before) as f64 / ticks;
        let worker_cpu = (workers.iter().map(|c| cpu_ticks(c.id())).sum::<u64>()
            - worker_cpu_before) as f64
            / ticks;
        let tis = (b.dags * b.tasks) as f64;
        let (failed, _) = store
            .dag_run_list_in_states(&[DagRunState::Failed])
            .await?;
        println!(
            "(2) {} runs x {} tasks through {} schedulers and {} workers x {} slots: {:.1} s ({:.1} s to trigger), {:.0} tasks/s; schedulers' CPU {:.2} s per 1,000 task instances, workers' {:.2} s; machine {:.0} % busy; {} runs failed",
            b.dags,
            b.tasks,
            b.schedulers,
            b.workers,
            b.slots,
            took.as_secs_f64(),
            triggered.as_secs_f64(),
            tis / took.as_secs_f64(),
            cpu / (tis / 1000.0),
            worker_cpu / (tis / 1000.0),
            busy * 100.0,
            failed.len()
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    for mut c in schedulers.into_iter().chain(workers) {
        let _ = c.kill();
        let _ = c.wait();
    }
    store.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}
