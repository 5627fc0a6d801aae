//! `flow bench engine`: the scheduler and an embedded worker in this process, against a fresh
//! database, measuring the hand-off path. Figures for the issue notes, not tests.
//!
//! Workloads: (a) a chain of 100 `true` tasks, trigger to success; (b) a fan-out of 1,000
//! `true` tasks with 32 worker slots; (c) trigger to first task running, many times. The
//! per-phase breakdown comes from the recorded state transitions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use flow_dag::Dag;
use flow_executor::worker::{Worker, WorkerConfig, WorkerWakeups};
use flow_model::DagRunState;
use flow_scheduler::{Scheduler, SchedulerConfig, Wakeups};
use flow_store::{Store, TiKey, TriggerRequest};
use tokio::sync::watch;

fn chain_yaml(n: usize) -> String {
    let mut s = String::from("bench_chain:\n  tasks:\n");
    for i in 0..n {
        s.push_str(&format!(
            "    t{i:03}:\n      operator: bash\n      bash_command: \"true\"\n"
        ));
        if i > 0 {
            s.push_str(&format!("      dependencies: [t{:03}]\n", i - 1));
        }
    }
    s
}

fn fanout_yaml(n: usize) -> String {
    let mut s = String::from("bench_fanout:\n  max_active_tasks: 1000000\n  tasks:\n");
    for i in 0..n {
        s.push_str(&format!(
            "    t{i:04}:\n      operator: bash\n      bash_command: \"true\"\n"
        ));
    }
    s
}

const SINGLE_YAML: &str =
    "bench_single:\n  tasks:\n    only:\n      operator: bash\n      bash_command: \"true\"\n";

struct Engine {
    store: Store,
    shutdown: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

async fn start(store: &Store, dags: &Path, slots: usize) -> Engine {
    // Tasks run as a real worker's do: tagged for a reaper (see `flow_executor::reaper`).
    if let Ok(exe) = std::env::current_exe()
        && let Err(e) = flow_executor::reaper::start(&exe, &["__reap"])
    {
        eprintln!("no reaper ({e}): tasks get a parent-death signal instead");
    }
    let (shutdown, rx) = watch::channel(false);
    let wakeups = Wakeups::default();
    store.spawn_wake_listener(vec![
        (flow_store::WAKE_SCHEDULER, wakeups.scheduler.clone()),
        (flow_store::WAKE_WORKERS, wakeups.workers.clone()),
        (flow_store::WAKE_TRIGGERER, wakeups.triggerer.clone()),
    ]);
    // Parallelism above the worker's slots keeps a few task instances queued, so a worker
    // that finishes one claims the next without waiting for a scheduler pass.
    let config = SchedulerConfig {
        dags_folder: dags.to_path_buf(),
        parallelism: i64::try_from(slots * 4).unwrap_or(128),
        dags_are_paused_at_creation: false,
        ..SchedulerConfig::default()
    };
    let scheduler = Scheduler::new(store.clone(), config, wakeups.clone());
    let worker = Worker::new(
        store.clone(),
        WorkerConfig {
            concurrency: slots,
            dags_folder: dags.to_path_buf(),
            ..WorkerConfig::default()
        },
        WorkerWakeups {
            work: wakeups.workers.clone(),
        },
    );
    let handles = vec![
        tokio::spawn(scheduler.run(rx.clone())),
        tokio::spawn(worker.run(rx)),
    ];
    Engine {
        store: store.clone(),
        shutdown,
        handles,
    }
}

impl Engine {
    async fn stop(self) {
        let _ = self.shutdown.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }

    async fn dag(&self, dag_id: &str) -> Result<(Dag, String)> {
        for _ in 0..500 {
            if let Some((data, hash)) = self.store.serialized_dag_get(dag_id).await? {
                return Ok((Dag::from_json(&data)?, hash));
            }
            tokio::time::sleep(StdDuration::from_millis(10)).await;
        }
        bail!("dag {dag_id} never appeared in the database")
    }

    /// Triggers a run and waits for it to finish; returns the run id and the wall time.
    async fn run_once(&self, dag: &Dag, hash: &str) -> Result<(String, StdDuration)> {
        let start = Instant::now();
        let run = self
            .store
            .dag_run_trigger(
                dag,
                hash,
                &TriggerRequest::manual(serde_json::json!({})),
                Utc::now(),
            )
            .await?;
        // The store wakes the scheduler, as it does for a trigger from the API.
        loop {
            let r = self
                .store
                .dag_run_get(&run.dag_id, &run.run_id)
                .await?
                .context("run vanished")?;
            match r.state {
                DagRunState::Success => return Ok((run.run_id, start.elapsed())),
                DagRunState::Failed => bail!("benchmark run {} failed", run.run_id),
                _ => tokio::time::sleep(StdDuration::from_millis(2)).await,
            }
        }
    }
}

/// Mean time spent in each state over a run's task instances, from `ti_transition`.
async fn phases(store: &Store, dag: &Dag, run_id: &str) -> Result<Vec<(String, f64)>> {
    let mut sums: HashMap<String, (f64, usize)> = HashMap::new();
    for task in &dag.tasks {
        let key = TiKey::new(dag.dag_id.as_str(), run_id, task.task_id.as_str(), -1);
        let transitions = store.ti_transitions(&key).await?;
        let mut prev: Option<(String, DateTime<Utc>)> = None;
        for (_, _from, to, _actor, _reason, at) in transitions {
            if let Some((state, since)) = prev.take() {
                let ms = (at - since).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                let e = sums.entry(state).or_default();
                e.0 += ms;
                e.1 += 1;
            }
            prev = Some((to, at));
        }
    }
    let mut out: Vec<(String, f64)> = sums
        .into_iter()
        .map(|(k, (sum, n))| (k, sum / n.max(1) as f64))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn print_phases(label: &str, phases: &[(String, f64)]) {
    let text: Vec<String> = phases
        .iter()
        .map(|(state, ms)| format!("in {state} {ms:.2} ms"))
        .collect();
    println!("  {label} mean per task instance: {}", text.join(", "));
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub async fn engine(
    database_url: Option<String>,
    chain: usize,
    fanout: usize,
    fanout_rounds: usize,
    latency_runs: usize,
) -> Result<ExitCode> {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("flow-bench-engine-{}", std::process::id()));
    let dags = dir.join("dags");
    std::fs::create_dir_all(&dags)?;
    std::fs::write(dags.join("chain.yaml"), chain_yaml(chain))?;
    std::fs::write(dags.join("fanout.yaml"), fanout_yaml(fanout))?;
    std::fs::write(dags.join("single.yaml"), SINGLE_YAML)?;
    let url = database_url.unwrap_or_else(|| dir.join("bench.db").display().to_string());
    let store = crate::bench::fresh_store(&url).await?;
    println!("backend: {:?} ({})", store.backend(), store.redacted_url());

    // (a) chain, 32 slots (only one task is ever runnable).
    let engine = start(&store, &dags, 32).await;
    let (dag, hash) = engine.dag("bench_chain").await?;
    let _ = engine.run_once(&dag, &hash).await?; // warm-up: caches, page cache, binaries
    let (run_id, took) = engine.run_once(&dag, &hash).await?;
    println!(
        "(a) chain of {chain} `true` tasks: {:.0} ms trigger to success, {:.2} ms per task",
        took.as_secs_f64() * 1000.0,
        took.as_secs_f64() * 1000.0 / chain as f64
    );
    print_phases("(a)", &phases(&store, &dag, &run_id).await?);

    // (b) fan-out with 32 worker slots.
    let (dag, hash) = engine.dag("bench_fanout").await?;
    for _ in 0..fanout_rounds.max(1) {
        let (run_id, took) = engine.run_once(&dag, &hash).await?;
        println!(
            "(b) fan-out of {fanout} `true` tasks, 32 slots: {:.0} ms, {:.0} tasks/s",
            took.as_secs_f64() * 1000.0,
            fanout as f64 / took.as_secs_f64()
        );
        print_phases("(b)", &phases(&store, &dag, &run_id).await?);
    }

    // (c) trigger to first task running.
    let (dag, hash) = engine.dag("bench_single").await?;
    let mut latencies = Vec::with_capacity(latency_runs);
    for _ in 0..latency_runs {
        let triggered = Utc::now();
        let (run_id, _) = engine.run_once(&dag, &hash).await?;
        let key = TiKey::new("bench_single", &run_id, "only", -1);
        let started = engine
            .store
            .ti_get(&key)
            .await?
            .and_then(|t| t.start_date)
            .context("task never started")?;
        latencies.push((started - triggered).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "(c) trigger to first task running over {latency_runs} runs: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    engine.stop().await;
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = Arc::new(());
    Ok(ExitCode::SUCCESS)
}
