//! Kafka-triggered DAG runs (`schedule: {kafka: {...}}`): every matching message creates one
//! run of type `event` whose conf is the message.
//!
//! **Exactly once per message.** The run id derives from the message's place in the log
//! (`event__<topic>:<partition>:<offset>`), and (dag_id, run_id) is unique, so creating a run
//! for a message that already has one is a no-op. Offsets are committed to the broker only
//! after every run of a batch is committed in the database: a crash between the two re-reads
//! the batch, and the re-read creates nothing twice. Nothing is lost either, since an offset is
//! never committed ahead of its run.
//!
//! One consumer per (connection, topics, group) serves every DAG that watches those topics;
//! each message is offered to each such DAG's filter. A filter that cannot be evaluated counts
//! the message as a failure, logs it, copies it to the DAG's dead-letter topic if it has one,
//! and the consumer goes on. Runs are created `queued`: a DAG at `max_active_runs` keeps them
//! queued rather than dropping them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use flow_dag::{Dag, KafkaTrigger};
use flow_kafka::{Consumer, Filter, Message, OutMessage, Producer};
use flow_model::DagRunType;
use flow_store::{
    ConnectionSource, Store, TriggerError, TriggerRequest, new_dag_run, new_task_instances,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// How often a Kafka consumer's lag is measured for `flow_kafka_trigger_consumer_lag`.
const LAG_EVERY: Duration = Duration::from_secs(10);

/// The job type of the Kafka trigger consumers in `/health`.
pub const JOB_TYPE: &str = "KafkaTriggerJob";

/// (conn_id, topics, group_id): what one consumer serves.
type ConsumerKey = (String, Vec<String>, String);

/// A DAG's hash and, if it declares one, its trigger.
type Known = (String, Option<(Arc<Dag>, KafkaTrigger)>);

/// A DAG watching a consumer's topics.
#[derive(Clone)]
struct Subscriber {
    dag: Arc<Dag>,
    dag_hash: String,
    filter: Option<Arc<Filter>>,
    dead_letter_topic: Option<String>,
}

/// Counters, shared with whoever reports health.
#[derive(Debug, Default)]
pub struct KafkaTriggerStats {
    /// Runs created from messages.
    pub runs_created: AtomicU64,
    /// Messages that already had their run (redelivery after a crash).
    pub duplicates: AtomicU64,
    /// Messages a filter could not evaluate.
    pub filter_errors: AtomicU64,
    /// When a consumer last reported an error (ms since the epoch; 0: never).
    pub last_error_ms: AtomicI64,
}

impl KafkaTriggerStats {
    fn error(&self) {
        self.last_error_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Healthy unless a consumer reported an error in the last 15 s (librdkafka repeats its
    /// transport errors every few seconds while a broker is unreachable).
    pub fn degraded(&self) -> bool {
        let last = self.last_error_ms.load(Ordering::Relaxed);
        last > 0 && Utc::now().timestamp_millis() - last < 15_000
    }
}

#[derive(Debug, Clone)]
pub struct KafkaTriggerConfig {
    /// How often the DAGs' triggers are re-read.
    pub refresh: Duration,
    /// Messages read per batch (one offset commit per batch).
    pub batch_size: usize,
    /// This host's name: the job row, and static group members (a restarted scheduler takes
    /// its partitions back at once).
    pub hostname: String,
}

impl Default for KafkaTriggerConfig {
    fn default() -> Self {
        KafkaTriggerConfig {
            refresh: Duration::from_secs(2),
            batch_size: 500,
            hostname: "localhost".to_owned(),
        }
    }
}

pub struct KafkaTriggers {
    store: Store,
    connections: ConnectionSource,
    config: KafkaTriggerConfig,
    stats: Arc<KafkaTriggerStats>,
    consumers: HashMap<ConsumerKey, (watch::Sender<Vec<Subscriber>>, JoinHandle<()>)>,
    /// dag_id -> (dag_hash, parsed trigger), to re-read a DAG only when it changed.
    known: HashMap<String, Known>,
}

impl std::fmt::Debug for KafkaTriggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTriggers")
            .field("consumers", &self.consumers.len())
            .finish()
    }
}

impl KafkaTriggers {
    pub fn new(store: Store, connections: ConnectionSource, config: KafkaTriggerConfig) -> Self {
        KafkaTriggers {
            store,
            connections,
            config,
            stats: Arc::default(),
            consumers: HashMap::new(),
            known: HashMap::new(),
        }
    }

    pub fn stats(&self) -> Arc<KafkaTriggerStats> {
        self.stats.clone()
    }

    /// Keeps one consumer per watched (connection, topics, group) until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // A job row so that /health can tell whether the consumers reach their brokers.
        let job = self
            .store
            .job_start(
                &flow_store::JobStart::this_process(JOB_TYPE, &self.config.hostname),
                Utc::now(),
            )
            .await
            .ok();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = self.refresh().await {
                warn!(error = %e, "reading the DAGs' kafka triggers failed; retrying");
            }
            if let Some(id) = job {
                let state = if self.stats.degraded() {
                    "degraded"
                } else {
                    "running"
                };
                if let Err(e) = self.store.job_heartbeat_state(id, state, Utc::now()).await {
                    warn!(error = %e, "kafka trigger heartbeat failed");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.refresh) => {}
                _ = shutdown.changed() => {}
            }
        }
        for (_, (tx, handle)) in self.consumers.drain() {
            drop(tx);
            // A consumer in the middle of a batch finishes it (commit after runs).
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
        if let Some(id) = job {
            let _ = self.store.job_end(id, Utc::now()).await;
        }
    }

    async fn refresh(&mut self) -> flow_store::Result<()> {
        let rows = self.store.dag_list().await?;
        let mut wanted: BTreeMap<ConsumerKey, Vec<Subscriber>> = BTreeMap::new();
        let mut seen = Vec::new();
        for row in rows {
            if !row.is_active || row.is_paused || !row.schedule.contains("kafka:") {
                continue;
            }
            seen.push(row.dag_id.clone());
            let stale = self
                .known
                .get(&row.dag_id)
                .is_none_or(|(hash, _)| *hash != row.dag_hash);
            if stale {
                let parsed = match self.store.serialized_dag_get(&row.dag_id).await? {
                    Some((data, hash)) => match Dag::from_json(&data) {
                        Ok(dag) => dag
                            .kafka_trigger
                            .clone()
                            .map(|t| (Arc::new(dag), t))
                            .map(|p| (hash, p)),
                        Err(e) => {
                            warn!(dag_id = %row.dag_id, error = %e, "serialized dag unreadable");
                            None
                        }
                    },
                    None => None,
                };
                let entry = match parsed {
                    Some((hash, p)) => (hash, Some(p)),
                    None => (row.dag_hash.clone(), None),
                };
                self.known.insert(row.dag_id.clone(), entry);
            }
            let Some((_, Some((dag, trigger)))) = self.known.get(&row.dag_id) else {
                continue;
            };
            let filter = match &trigger.filter {
                None => None,
                Some(f) => match Filter::compile(f) {
                    Ok(f) => Some(Arc::new(f)),
                    Err(e) => {
                        warn!(dag_id = %row.dag_id, error = %e, "kafka trigger filter does not compile");
                        continue;
                    }
                },
            };
            let mut topics = trigger.topics.clone();
            topics.sort();
            let key = (trigger.conn_id.clone(), topics, trigger.group_id.clone());
            wanted.entry(key).or_default().push(Subscriber {
                dag: dag.clone(),
                dag_hash: self
                    .known
                    .get(&row.dag_id)
                    .map(|(h, _)| h.clone())
                    .unwrap_or_default(),
                filter,
                dead_letter_topic: trigger.dead_letter_topic.clone(),
            });
        }
        self.known.retain(|id, _| seen.contains(id));
        // Consumers nobody needs any more stop; changed subscriber lists are handed over.
        self.consumers.retain(|key, (_, handle)| {
            let keep = wanted.contains_key(key) && !handle.is_finished();
            if !keep {
                handle.abort();
            }
            keep
        });
        for (key, subs) in wanted {
            if let Some((tx, _)) = self.consumers.get(&key) {
                let _ = tx.send(subs);
                continue;
            }
            info!(conn_id = %key.0, topics = ?key.1, group_id = %key.2, dags = subs.len(), "starting kafka trigger consumer");
            let (tx, rx) = watch::channel(subs);
            let handle = tokio::spawn(consume(
                self.store.clone(),
                self.connections.clone(),
                key.clone(),
                rx,
                self.config.clone(),
                self.stats.clone(),
            ));
            self.consumers.insert(key, (tx, handle));
        }
        Ok(())
    }
}

/// Records `message` as a "missing connection" warning of every subscribing DAG, or clears
/// it (`None`) once the consumer started. Returns whether any warning is new or changed.
async fn set_warnings(
    store: &Store,
    subscribers: &watch::Receiver<Vec<Subscriber>>,
    message: Option<&str>,
) -> bool {
    let dag_ids: Vec<String> = subscribers
        .borrow()
        .iter()
        .map(|s| s.dag.dag_id.to_string())
        .collect();
    let mut changed = false;
    for dag_id in dag_ids {
        let done = match message {
            Some(m) => {
                store
                    .dag_warning_set(&dag_id, flow_store::WARNING_CONNECTION, m, Utc::now())
                    .await
            }
            None => {
                store
                    .dag_warning_clear(&dag_id, flow_store::WARNING_CONNECTION)
                    .await
            }
        };
        match done {
            Ok(c) => changed |= c,
            // The warning is a courtesy: the consumer retries whatever happens to it.
            Err(e) => tracing::debug!(dag_id, error = %e, "could not record a DAG warning"),
        }
    }
    changed
}

/// One consumer's life: connect (with backoff), then batches until its subscribers go.
async fn consume(
    store: Store,
    connections: ConnectionSource,
    key: ConsumerKey,
    subscribers: watch::Receiver<Vec<Subscriber>>,
    config: KafkaTriggerConfig,
    stats: Arc<KafkaTriggerStats>,
) {
    let (conn_id, topics, group_id) = &key;
    let mut backoff = Duration::from_millis(200);
    loop {
        if subscribers.has_changed().is_err() {
            return; // the sender is gone: nobody watches these topics any more
        }
        let settings = match store.connection_resolve(conn_id, &connections).await {
            Ok(Some(conn)) => flow_kafka::client_settings(&conn)
                .map(|mut s| {
                    // This consumer polls without pause, so a short rebalance timeout is
                    // safe, and a restarted scheduler rejoins in seconds: the broker waits up
                    // to this long for a killed member before handing its partitions over.
                    s.entry("max.poll.interval.ms".into())
                        .or_insert_with(|| "10000".into());
                    s
                })
                .map_err(|e| e.to_string()),
            Ok(None) => Err(format!("connection `{conn_id}` not found")),
            Err(e) => Err(e.to_string()),
        };
        let consumer = settings.and_then(|s| {
            let producer = Producer::best_effort(&s, 10_000).ok();
            Consumer::new(
                &s,
                group_id,
                topics,
                Some(&format!("{}-{group_id}", config.hostname)),
            )
            .map(|c| (c, producer))
            .map_err(|e| e.to_string())
        });
        let (consumer, dead_letters) = match consumer {
            Ok(c) => {
                set_warnings(&store, &subscribers, None).await;
                c
            }
            Err(e) => {
                let message = format!(
                    "The Kafka trigger on {} cannot start: {e}. flow retries quietly until it can.",
                    topics.join(", ")
                );
                // Said once (and kept as a DAG warning), not at every retry.
                if set_warnings(&store, &subscribers, Some(&message)).await {
                    warn!(conn_id, error = %e, "kafka trigger consumer cannot start; retrying quietly (see the DAG warnings)");
                } else {
                    tracing::debug!(conn_id, error = %e, "kafka trigger consumer cannot start; retrying");
                }
                stats.error();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let mut lag_at = std::time::Instant::now();
        'batches: loop {
            if subscribers.has_changed().is_err() {
                return;
            }
            let batch = match consumer
                .poll_batch(config.batch_size, Duration::from_millis(500))
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    // librdkafka reconnects by itself; its errors are reports, queued while
                    // the broker is away. A short pause, not a long backoff, or the stale
                    // ones would delay the recovery.
                    warn!(group_id, error = %e, "kafka trigger consumer: broker error (reconnecting)");
                    stats.error();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if lag_at.elapsed() >= LAG_EVERY {
                lag_at = std::time::Instant::now();
                flow_metrics::metrics().set_kafka_lag(&consumer.lag());
            }
            if batch.is_empty() {
                continue;
            }
            let subs = subscribers.borrow().clone();
            match create_runs(&store, &subs, &batch, dead_letters.as_ref(), &stats).await {
                // The store wakes the scheduler for the runs it created.
                Ok(_created) => {
                    backoff = Duration::from_millis(200);
                    // Only now: every run of the batch is in the database.
                    if let Err(e) = consumer.commit(&batch).await {
                        warn!(group_id, error = %e, "offset commit failed; the batch will be read again (no run is created twice)");
                    }
                }
                Err(e) => {
                    // Nothing committed: rewind so the batch is read again.
                    warn!(group_id, error = %e, "creating runs failed; re-reading the batch");
                    let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
                    for m in &batch {
                        let e = first
                            .entry((m.topic.clone(), m.partition))
                            .or_insert(m.offset);
                        *e = (*e).min(m.offset);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    for ((topic, partition), offset) in first {
                        if let Err(e) = consumer.seek(&topic, partition, offset).await {
                            // A new consumer resumes from the committed offsets instead.
                            warn!(error = %e, "seek failed; restarting the consumer");
                            break 'batches;
                        }
                    }
                }
            }
        }
    }
}

/// The run id of a message: its place in the log.
pub fn event_run_id(m: &Message) -> String {
    format!("event__{}:{}:{}", m.topic, m.partition, m.offset)
}

/// Creates the batch's runs in one transaction; returns how many are new. An error leaves
/// the batch to be read again (nothing of it was created; the re-read creates it once).
async fn create_runs(
    store: &Store,
    subs: &[Subscriber],
    batch: &[Message],
    dead_letters: Option<&Producer>,
    stats: &KafkaTriggerStats,
) -> Result<usize, TriggerError> {
    let now = Utc::now();
    let mut runs = Vec::new();
    for m in batch {
        let message = m.to_json();
        for sub in subs {
            if let Some(filter) = &sub.filter {
                match filter.matches(&message) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        stats.filter_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(dag_id = %sub.dag.dag_id, topic = %m.topic, partition = m.partition, offset = m.offset, error = %e, "message skipped: the filter cannot evaluate it");
                        if let (Some(p), Some(topic)) = (dead_letters, &sub.dead_letter_topic) {
                            dead_letter(p, topic, m, sub.dag.dag_id.as_str(), &e.to_string()).await;
                        }
                        continue;
                    }
                }
            }
            let req = TriggerRequest {
                run_id: Some(event_run_id(m)),
                run_type: DagRunType::Event,
                logical_date: None,
                data_interval: None,
                run_after: None,
                conf: message.clone(),
                note: None,
                triggered_by: Some(format!("kafka:{}", m.topic)),
            };
            match new_dag_run(&sub.dag, &sub.dag_hash, &req, now) {
                Ok(run) => runs.push((run, new_task_instances(&sub.dag))),
                // One bad message must not block the others behind it.
                Err(e) => {
                    stats.filter_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(dag_id = %sub.dag.dag_id, topic = %m.topic, offset = m.offset, error = %e, "message skipped: no run can be made of it");
                }
            }
        }
    }
    let created = store
        .dag_run_create_many(&runs, now)
        .await?
        .into_iter()
        .filter(|c| *c)
        .count();
    stats
        .runs_created
        .fetch_add(created as u64, Ordering::Relaxed);
    stats
        .duplicates
        .fetch_add((runs.len() - created) as u64, Ordering::Relaxed);
    Ok(created)
}

async fn dead_letter(p: &Producer, topic: &str, m: &Message, dag_id: &str, error: &str) {
    let mut headers: Vec<(String, String)> = m
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
        .collect();
    headers.push(("flow.dag_id".into(), dag_id.to_owned()));
    headers.push(("flow.error".into(), error.to_owned()));
    headers.push((
        "flow.source".into(),
        format!("{}:{}:{}", m.topic, m.partition, m.offset),
    ));
    let out = OutMessage {
        key: m.key.clone(),
        value: m.value.clone(),
        headers,
    };
    if let Err(e) = p.send_all(topic, &[out]).await {
        warn!(topic, error = %e, "could not write to the dead-letter topic");
    }
}
