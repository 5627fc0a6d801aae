//! The triggerer: runs the waits of deferred task instances as async tasks, so thousands of
//! them cost a few kilobytes each instead of a worker slot or a process.
//!
//! Each loop it heartbeats its triggers, claims unowned (or stale) ones from the store, starts
//! a task per new trigger, and drops the tasks of triggers that are gone (fired by another
//! triggerer after a takeover, or cleaned up after a clear). Firing goes through
//! `Store::trigger_fire`, guarded by `state = 'deferred'`, so a trigger that fires twice
//! resumes its task instance once.
//!
//! Kafka triggers with the same (connection, topics, group) share one consumer: each message
//! is offered to the waiting triggers in order, the first whose filter matches fires, and the
//! batch's offsets are committed after the firing transactions committed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flow_kafka::{Consumer, Filter};
use flow_store::{ConnectionSource, Store, TriggerRow};
use serde_json::{Value as Json, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::io_ops::{
    TRIGGER_DAG_RUN, TRIGGER_EXTERNAL, TRIGGER_FILE, TRIGGER_HTTP, TRIGGER_KAFKA, TRIGGER_TIME,
    with_context,
};

/// How often a Kafka consumer's lag is measured for `flow_kafka_trigger_consumer_lag`.
const LAG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct TriggererConfig {
    pub triggerer_id: String,
    /// This host's name (the job row, static Kafka group members).
    pub hostname: String,
    /// Triggers run at once by this triggerer.
    pub capacity: i64,
    /// How often it heartbeats, claims and reaps.
    pub poll_interval: Duration,
    /// Another triggerer's triggers are taken over after this long without its heartbeat.
    pub stale_after: Duration,
    pub connections: Option<ConnectionSource>,
    /// Notified when a task deferred (by a worker in this process, or through PostgreSQL's
    /// NOTIFY): the triggerer claims at once instead of at its next poll.
    pub wake: Arc<tokio::sync::Notify>,
}

impl Default for TriggererConfig {
    fn default() -> Self {
        // The binary sets the real host name; libraries never read the environment.
        let hostname = "localhost".to_owned();
        TriggererConfig {
            triggerer_id: format!("triggerer-{hostname}-{}", std::process::id()),
            hostname,
            capacity: 10_000,
            poll_interval: Duration::from_secs(1),
            stale_after: Duration::from_secs(30),
            connections: None,
            wake: Arc::default(),
        }
    }
}

/// Consumers shared by Kafka triggers: (conn_id, topics, group_id) -> waiting triggers.
type KafkaKey = (String, Vec<String>, String);

struct Waiter {
    trigger_id: i64,
    filter: Filter,
    context: Json,
}

type Waiters = Arc<Mutex<HashMap<KafkaKey, Vec<Waiter>>>>;

pub struct Triggerer {
    store: Store,
    config: TriggererConfig,
    tasks: HashMap<i64, JoinHandle<()>>,
    waiters: Waiters,
    consumers: HashMap<KafkaKey, JoinHandle<()>>,
}

impl std::fmt::Debug for Triggerer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triggerer")
            .field("triggerer_id", &self.config.triggerer_id)
            .field("running", &self.tasks.len())
            .finish()
    }
}

impl Triggerer {
    pub fn new(store: Store, config: TriggererConfig) -> Self {
        Triggerer {
            store,
            config,
            tasks: HashMap::new(),
            waiters: Arc::new(Mutex::new(HashMap::new())),
            consumers: HashMap::new(),
        }
    }

    /// Runs until `shutdown` turns true. Its triggers are left in the store; another (or the
    /// restarted) triggerer takes them over.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        info!(triggerer_id = %self.config.triggerer_id, "triggerer started");
        let job = self
            .store
            .job_start(
                &flow_store::JobStart {
                    instance: Some(self.config.triggerer_id.clone()),
                    ..flow_store::JobStart::this_process("TriggererJob", &self.config.hostname)
                },
                Utc::now(),
            )
            .await
            .ok();
        let mut last_cleanup = Utc::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = self.tick().await {
                warn!(error = %e, "triggerer pass failed; retrying");
            }
            flow_metrics::metrics()
                .triggers_running
                .set(i64::try_from(self.tasks.len()).unwrap_or(i64::MAX));
            if let Some(id) = job
                && let Err(e) = self.store.job_heartbeat(id, Utc::now()).await
            {
                warn!(error = %e, "triggerer heartbeat failed");
            }
            let now = Utc::now();
            if now - last_cleanup > chrono::Duration::seconds(10) {
                last_cleanup = now;
                if let Err(e) = self.store.trigger_cleanup().await {
                    warn!(error = %e, "trigger cleanup failed");
                }
            }
            let wake = self.config.wake.clone();
            tokio::select! {
                () = tokio::time::sleep(self.config.poll_interval) => {}
                () = wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        for (_, t) in self.tasks.drain() {
            t.abort();
        }
        for (_, c) in self.consumers.drain() {
            c.abort();
        }
        if let Some(id) = job {
            let _ = self.store.job_end(id, Utc::now()).await;
        }
    }

    async fn tick(&mut self) -> flow_store::Result<()> {
        let now = Utc::now();
        self.store
            .trigger_heartbeat(&self.config.triggerer_id, now)
            .await?;
        let stale = now - chrono::Duration::from_std(self.config.stale_after).unwrap_or_default();
        let mine = self
            .store
            .trigger_claim(&self.config.triggerer_id, self.config.capacity, stale, now)
            .await?;
        let ids: HashSet<i64> = mine.iter().map(|t| t.id).collect();
        // Triggers that are no longer ours: stop waiting on them.
        self.tasks.retain(|id, handle| {
            let keep = ids.contains(id) && !handle.is_finished();
            if !keep {
                handle.abort();
            }
            keep
        });
        if let Ok(mut waiters) = self.waiters.lock() {
            for list in waiters.values_mut() {
                list.retain(|w| ids.contains(&w.trigger_id));
            }
        }
        self.consumers.retain(|_, h| !h.is_finished());
        for trigger in mine {
            if self.tasks.contains_key(&trigger.id) || self.is_waiting(trigger.id) {
                continue;
            }
            self.start(trigger).await;
        }
        // Every key with waiters has a live consumer (one that stopped, or was closing when a
        // waiter arrived, is replaced).
        let keys: Vec<KafkaKey> = self
            .waiters
            .lock()
            .map(|w| {
                w.iter()
                    .filter(|(_, l)| !l.is_empty())
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        for key in keys {
            if !self.consumers.contains_key(&key) {
                self.spawn_consumer(key);
            }
        }
        Ok(())
    }

    fn is_waiting(&self, id: i64) -> bool {
        self.waiters
            .lock()
            .map(|w| w.values().any(|l| l.iter().any(|x| x.trigger_id == id)))
            .unwrap_or(false)
    }

    async fn start(&mut self, trigger: TriggerRow) {
        let store = self.store.clone();
        let id = trigger.id;
        match trigger.classpath.as_str() {
            TRIGGER_TIME => {
                let moment = trigger
                    .kwargs
                    .get("moment")
                    .and_then(Json::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
                let Some(moment) = moment else {
                    fail(&store, id, "time trigger without a valid `moment`").await;
                    return;
                };
                let handle = tokio::spawn(async move {
                    let wait = (moment - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(wait).await;
                    // Fired again after a takeover if this fails (the task then ends and the
                    // trigger row stays).
                    fire(&store, id, json!({"moment": moment.to_rfc3339()})).await;
                });
                self.tasks.insert(id, handle);
            }
            TRIGGER_KAFKA => {
                if let Err(e) = self.start_kafka(&trigger) {
                    fail(&store, id, &e).await;
                }
            }
            TRIGGER_HTTP => {
                let source = self.config.connections.clone();
                let kwargs = trigger.kwargs.clone();
                let handle = tokio::spawn(async move {
                    match poke_http(&store, source, &kwargs).await {
                        Ok(()) => {
                            fire(&store, id, json!({"status": "success"})).await;
                        }
                        Err(e) => fail(&store, id, &e).await,
                    }
                });
                self.tasks.insert(id, handle);
            }
            TRIGGER_FILE => {
                let kwargs = trigger.kwargs.clone();
                let handle = tokio::spawn(async move {
                    let interval = poke_interval(&kwargs);
                    loop {
                        match crate::operators::sensors::file_trigger_poll(&kwargs).await {
                            Ok(true) => {
                                if fire(&store, id, json!({"status": "success"})).await {
                                    return;
                                }
                            }
                            Ok(false) => {}
                            Err(e) => {
                                fail(&store, id, &e).await;
                                return;
                            }
                        }
                        tokio::time::sleep(interval).await;
                    }
                });
                self.tasks.insert(id, handle);
            }
            kind @ (TRIGGER_DAG_RUN | TRIGGER_EXTERNAL) => {
                let kwargs = trigger.kwargs.clone();
                let external = kind == TRIGGER_EXTERNAL;
                let handle = tokio::spawn(async move {
                    poll_store(&store, id, &kwargs, external).await;
                });
                self.tasks.insert(id, handle);
            }
            other => fail(&store, id, &format!("unknown trigger kind `{other}`")).await,
        }
    }

    fn start_kafka(&mut self, trigger: &TriggerRow) -> Result<(), String> {
        let k = &trigger.kwargs;
        let text = |key: &str| {
            k.get(key)
                .and_then(Json::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("kafka trigger without `{key}`"))
        };
        let conn_id = text("conn_id")?;
        let group_id = text("group_id")?;
        let filter = Filter::compile(&text("filter")?).map_err(|e| e.to_string())?;
        let topics: Vec<String> = k
            .get("topics")
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Json::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let key: KafkaKey = (conn_id.clone(), topics.clone(), group_id.clone());
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.entry(key.clone()).or_default().push(Waiter {
                trigger_id: trigger.id,
                filter,
                context: k.get("context").cloned().unwrap_or(Json::Null),
            });
        }
        if self.consumers.get(&key).is_none_or(|h| h.is_finished()) {
            self.spawn_consumer(key);
        }
        Ok(())
    }

    fn spawn_consumer(&mut self, key: KafkaKey) {
        let store = self.store.clone();
        let waiters = self.waiters.clone();
        let source = self.config.connections.clone();
        // Static membership by host: a restarted triggerer takes its partitions back at once.
        // (Two triggerers on one host would fence each other; run one per host.)
        let member = format!("{}-triggerer-{}", self.config.hostname, key.2);
        let k = key.clone();
        let handle = tokio::spawn(async move {
            watch_topic(store, source, k, waiters, member).await;
        });
        self.consumers.insert(key, handle);
    }
}

/// A polling trigger's `poke_interval_ms` (a minute by default, at least 100 ms).
fn poke_interval(kwargs: &Json) -> Duration {
    Duration::from_millis(
        kwargs
            .get("poke_interval_ms")
            .and_then(Json::as_u64)
            .unwrap_or(60_000)
            .max(100),
    )
}

/// Polls the database every `poke_interval_ms` for another DAG's run (TriggerDagRunOperator)
/// or tasks (ExternalTaskSensor) until they are where the trigger waits for them.
async fn poll_store(store: &Store, id: i64, kwargs: &Json, external: bool) {
    let interval = poke_interval(kwargs);
    loop {
        let polled = if external {
            crate::operators::cross_dag::external_poll(store, kwargs).await
        } else {
            crate::operators::cross_dag::trigger_poll(store, kwargs).await
        };
        match polled {
            Ok(Some(event)) => {
                if fire(store, id, event).await {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                fail(store, id, &e).await;
                return;
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Pokes a deferred HTTP sensor's endpoint every `poke_interval` until it answers as its
/// check wants; the trigger's timeout (the sensor's) is the store's to enforce.
async fn poke_http(
    store: &Store,
    source: Option<ConnectionSource>,
    kwargs: &Json,
) -> Result<(), String> {
    let (check, interval) = crate::operators::http::from_trigger_kwargs(kwargs)?;
    let source = source.ok_or("this triggerer has no connection source")?;
    let conn = store
        .connection_resolve(&check.call.conn_id, &source)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("connection `{}` not found", check.call.conn_id))?;
    // Lines go nowhere: the task's log shows the deferral and its outcome.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(rx);
    let sink = crate::process::LogSink::new(tx, crate::Masker::default());
    loop {
        if let crate::io_ops::Poked::Done(_) =
            crate::operators::http::poke(Some(&conn), &check, &sink).await?
        {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}

/// Fires a trigger; false if the database could not record it (the caller keeps waiting).
async fn fire(store: &Store, id: i64, event: Json) -> bool {
    match store.trigger_fire(id, &event, Utc::now()).await {
        Ok(n) => {
            info!(trigger_id = id, resumed = n, "trigger fired");
            true
        }
        Err(e) => {
            warn!(trigger_id = id, error = %e, "could not fire trigger; the message will be read again");
            false
        }
    }
}

async fn fail(store: &Store, id: i64, error: &str) {
    warn!(trigger_id = id, error, "trigger failed");
    if let Err(e) = store.trigger_fail(id, error, Utc::now()).await {
        warn!(trigger_id = id, error = %e, "could not record the trigger's failure");
    }
}

/// One consumer for every trigger waiting on (connection, topics, group); ends when none wait.
async fn watch_topic(
    store: Store,
    source: Option<ConnectionSource>,
    key: KafkaKey,
    waiters: Waiters,
    member: String,
) {
    let (conn_id, topics, group_id) = &key;
    let fail_all = |error: String| {
        let store = store.clone();
        let waiters = waiters.clone();
        let key = key.clone();
        async move {
            let ids: Vec<i64> = waiters
                .lock()
                .map(|mut w| w.remove(&key).unwrap_or_default())
                .unwrap_or_default()
                .into_iter()
                .map(|w| w.trigger_id)
                .collect();
            for id in ids {
                fail(&store, id, &error).await;
            }
        }
    };
    let Some(source) = source else {
        fail_all("this triggerer has no connection source".into()).await;
        return;
    };
    let conn = match store.connection_resolve(conn_id, &source).await {
        Ok(Some(c)) => c,
        Ok(None) => return fail_all(format!("connection `{conn_id}` not found")).await,
        Err(e) => return fail_all(e.to_string()).await,
    };
    let consumer = match flow_kafka::client_settings(&conn).and_then(|mut s| {
        // Polls without pause: a short rebalance timeout lets a restarted triggerer rejoin.
        s.entry("max.poll.interval.ms".into())
            .or_insert_with(|| "10000".into());
        Consumer::new(&s, group_id, topics, Some(&member))
    }) {
        Ok(c) => c,
        Err(e) => return fail_all(e.to_string()).await,
    };
    let mut lag_at = std::time::Instant::now();
    loop {
        // Checked and removed under one lock: a waiter added later finds no entry and the
        // triggerer starts a new consumer for it.
        let done = waiters.lock().map_or(true, |mut w| {
            let empty = w.get(&key).is_none_or(Vec::is_empty);
            if empty {
                w.remove(&key);
            }
            empty
        });
        if done {
            return;
        }
        let batch = match consumer.poll_batch(500, Duration::from_millis(500)).await {
            Ok(b) => b,
            Err(e) => {
                // librdkafka reconnects by itself: pause briefly, no growing backoff.
                warn!(error = %e, group_id, "trigger consumer: broker error (reconnecting)");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if lag_at.elapsed() >= LAG_EVERY {
            lag_at = std::time::Instant::now();
            flow_metrics::metrics().set_kafka_lag(&consumer.lag());
        }
        let mut handled = Vec::with_capacity(batch.len());
        for m in batch {
            let message = m.to_json();
            let matched = waiters.lock().ok().and_then(|mut w| {
                let list = w.get_mut(&key)?;
                let pos = list.iter().position(|x| {
                    x.filter
                        .matches(&with_context(message.clone(), &x.context))
                        .unwrap_or(false)
                })?;
                Some(list.remove(pos))
            });
            if let Some(waiter) = matched
                && !fire(&store, waiter.trigger_id, json!({ "message": message })).await
            {
                // Not recorded: keep waiting, commit only what came before, and let a new
                // consumer read this message again from the committed offset.
                if let Ok(mut w) = waiters.lock() {
                    w.entry(key.clone()).or_default().push(waiter);
                }
                if let Err(e) = consumer.commit(&handled).await {
                    warn!(error = %e, group_id, "trigger consumer commit failed");
                }
                return;
            }
            handled.push(m);
        }
        // After the firing transactions: a crash before this re-reads the batch, and the
        // guarded fire makes a second firing a no-op.
        if let Err(e) = consumer.commit(&handled).await {
            warn!(error = %e, group_id, "trigger consumer commit failed");
        }
    }
}
