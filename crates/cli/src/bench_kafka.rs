//! `flow bench kafka`: Kafka-triggered runs against a real broker. (a) A backlog of messages
//! turned into runs (the trigger consumer alone): runs created per second. (b) Messages sent
//! one by one at a steady rate to a DAG whose first task is `true`, with the scheduler and a
//! worker running: message (its producer timestamp) to first task running. Figures for the
//! issue notes, not tests.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use flow_executor::worker::{Worker, WorkerConfig, WorkerWakeups};
use flow_kafka::{OutMessage, Producer};
use flow_model::Connection;
use flow_scheduler::{
    DagProcessor, KafkaTriggerConfig, KafkaTriggers, Scheduler, SchedulerConfig, Wakeups,
};
use flow_store::{ConnectionSource, Store, TiKey};
use tokio::sync::watch;

use crate::bench_engine::percentile;

#[derive(Debug, clap::Args)]
pub struct KafkaBench {
    /// The broker (`host:port`).
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    bootstrap: String,
    /// Database to benchmark (dropped and recreated!); default: a temporary SQLite file.
    #[arg(long)]
    database_url: Option<String>,
    /// Backlog turned into runs in (a).
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Messages sent one by one in (b).
    #[arg(long, default_value_t = 200)]
    latency_messages: usize,
    /// Messages per second in (b).
    #[arg(long, default_value_t = 20)]
    rate: u32,
}

pub async fn kafka(b: KafkaBench) -> Result<ExitCode> {
    let dir = crate::bench::scratch_dir();
    let dags = dir.join("dags");
    std::fs::create_dir_all(&dags)?;
    let stamp = Utc::now().timestamp_millis();
    let (burst_topic, latency_topic) = (
        format!("bench_burst_{stamp}"),
        format!("bench_latency_{stamp}"),
    );
    std::fs::write(
        dags.join("kafka.yaml"),
        format!(
            "bench_burst:\n  max_active_runs: 1000000\n  schedule:\n    kafka:\n      topics: [{burst_topic}]\n  tasks:\n    noop:\n      operator: empty\n\
             bench_latency:\n  max_active_runs: 1000\n  schedule:\n    kafka:\n      topics: [{latency_topic}]\n  tasks:\n    first:\n      operator: bash\n      bash_command: \"true\"\n"
        ),
    )?;
    let url = b
        .database_url
        .clone()
        .unwrap_or_else(|| dir.join("bench.db").display().to_string());
    let store = crate::bench::fresh_store(&url).await?;
    println!(
        "backend: {:?} ({}), broker {}",
        store.backend(),
        store.redacted_url(),
        b.bootstrap
    );
    DagProcessor::new(store.clone(), dags.clone(), false)
        .run_once(Utc::now())
        .await?;

    let mut conn = Connection::new("kafka_default", "kafka")?;
    conn.extra = Some(serde_json::json!({"bootstrap.servers": b.bootstrap}).to_string());
    let settings = flow_kafka::client_settings(&conn)?;
    let mut source = ConnectionSource::new(crate::config::fernet_cipher()?);
    source.overrides.insert("kafka_default".into(), conn);
    let producer = Producer::new(&settings, Duration::from_secs(30))?;

    // (a) A backlog, then the trigger consumer alone.
    let batch: Vec<OutMessage> = (0..b.messages)
        .map(|i| OutMessage {
            key: Some(i.to_string()),
            value: Some(serde_json::json!({"n": i}).to_string()),
            headers: Vec::new(),
        })
        .collect();
    producer.send_all(&burst_topic, &batch).await?;
    let (shutdown, rx) = watch::channel(false);
    let wakeups = Wakeups::default();
    let triggers = KafkaTriggers::new(
        store.clone(),
        source.clone(),
        KafkaTriggerConfig {
            refresh: Duration::from_secs(2),
            ..KafkaTriggerConfig::default()
        },
    );
    let trigger_task = tokio::spawn(triggers.run(rx.clone()));
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let target = i64::try_from(b.messages)?;
    loop {
        let n = store.dag_run_count("bench_burst").await?;
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if n >= target {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("only {n} of {target} runs after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all = start.elapsed();
    let since_first = first.map_or(all, |f| f.elapsed());
    println!(
        "(a) {} messages -> {} event runs: {:.0} runs/s from the first run ({:.2} s), {:.2} s from consumer start (group join included)",
        b.messages,
        target,
        b.messages as f64 / since_first.as_secs_f64(),
        since_first.as_secs_f64(),
        all.as_secs_f64()
    );

    // (b) The whole path: message -> run -> first task running. The backlog's runs go first,
    // so that the scheduler is not busy running them meanwhile.
    store.dag_delete("bench_burst").await?;
    // Its file goes too, so that its consumer stops (the test broker answers empty fetches at
    // once, so an idle consumer costs CPU against it).
    std::fs::write(
        dags.join("kafka.yaml"),
        format!(
            "bench_latency:\n  max_active_runs: 1000\n  schedule:\n    kafka:\n      topics: [{latency_topic}]\n  tasks:\n    first:\n      operator: bash\n      bash_command: \"true\"\n"
        ),
    )?;
    let scheduler = Scheduler::new(
        store.clone(),
        SchedulerConfig {
            dags_folder: dags.clone(),
            dags_are_paused_at_creation: false,
            ..SchedulerConfig::default()
        },
        wakeups.clone(),
    );
    let worker = Worker::new(
        store.clone(),
        WorkerConfig {
            concurrency: 32,
            dags_folder: dags.clone(),
            ..WorkerConfig::default()
        },
        WorkerWakeups {
            work: wakeups.workers.clone(),
        },
    );
    store.spawn_wake_listener(vec![
        (flow_store::WAKE_SCHEDULER, wakeups.scheduler.clone()),
        (flow_store::WAKE_WORKERS, wakeups.workers.clone()),
        (flow_store::WAKE_TRIGGERER, wakeups.triggerer.clone()),
    ]);
    let sched_task = tokio::spawn(scheduler.run(rx.clone()));
    let worker_task = tokio::spawn(worker.run(rx.clone()));
    // Warm-up: one message, so the consumer has joined before the clock runs.
    producer
        .send_all(
            &latency_topic,
            &[OutMessage {
                value: Some("{}".into()),
                ..Default::default()
            }],
        )
        .await?;
    wait_runs(&store, "bench_latency", 1).await?;
    let gap = Duration::from_secs_f64(1.0 / f64::from(b.rate.max(1)));
    let mut sent = BTreeMap::new();
    let tick = Instant::now();
    for i in 0..b.latency_messages {
        // Open loop: each message leaves at its slot whatever happened to the previous one.
        let due = tick + gap * u32::try_from(i)?;
        tokio::time::sleep_until(due.into()).await;
        let d = producer
            .send_all(
                &latency_topic,
                &[OutMessage {
                    value: Some(format!("{{\"i\": {i}}}")),
                    ..Default::default()
                }],
            )
            .await?;
        if let Some(d) = d.first() {
            sent.insert(d.offset, i);
        }
    }
    wait_runs(
        &store,
        "bench_latency",
        i64::try_from(b.latency_messages + 1)?,
    )
    .await?;
    let mut latencies = Vec::new();
    for offset in sent.keys() {
        let run_id = format!("event__{latency_topic}:0:{offset}");
        let run = store
            .dag_run_get("bench_latency", &run_id)
            .await?
            .context("run missing")?;
        let produced = run.conf["timestamp"].as_i64().context("no timestamp")?;
        let key = TiKey::new("bench_latency", &run_id, "first", -1);
        let started = loop {
            if let Some(s) = store.ti_get(&key).await?.and_then(|t| t.start_date) {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if std::env::var_os("FLOW_BENCH_VERBOSE").is_some() {
            let ti = store.ti_get(&key).await?;
            let ms = |t: Option<chrono::DateTime<Utc>>| {
                t.map_or(-1, |t| t.timestamp_millis() - produced)
            };
            println!(
                "{run_id}: run queued +{} ms, ti scheduled +{} ms, queued +{} ms, running +{} ms",
                ms(run.queued_at),
                ms(ti.as_ref().and_then(|t| t.scheduled_dttm)),
                ms(ti.as_ref().and_then(|t| t.queued_dttm)),
                ms(Some(started))
            );
        }
        latencies.push((started.timestamp_micros() - produced * 1000) as f64 / 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "(b) message to first task running, {} messages at {}/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        b.rate,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    let _ = shutdown.send(true);
    for t in [trigger_task, sched_task, worker_task] {
        let _ = t.await;
    }
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}

async fn wait_runs(store: &Store, dag_id: &str, n: i64) -> Result<()> {
    let start = Instant::now();
    while store.dag_run_count(dag_id).await? < n {
        if start.elapsed() > Duration::from_secs(300) {
            bail!("{dag_id}: fewer than {n} runs after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
