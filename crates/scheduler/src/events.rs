//! Lifecycle events to Kafka (`[events] kafka_conn_id`, `kafka_topic`): every task instance
//! and dag run state change, as JSON, keyed by `dag_id/run_id[/task_id]` so one run's events
//! stay in order on one partition.
//!
//! The publisher tails the transition tables the store already writes, in its own task: the
//! scheduler never waits for it. While the broker is down the publisher stops advancing and
//! the backlog stays in the database; it catches up when the broker returns. A backlog beyond
//! `max_backlog` events is skipped and counted as lost, so a long outage cannot leave it
//! forever behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flow_kafka::{OutMessage, Producer};
use flow_store::{ConnectionSource, EventCursor, EventTable, LifecycleEvent, Store};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct EventsConfig {
    pub conn_id: String,
    pub topic: String,
    pub poll_interval: Duration,
    pub batch: i64,
    /// Events further behind than this are skipped (and counted) after an outage.
    pub max_backlog: i64,
    /// This publisher's name in the lease (host and pid).
    pub holder: String,
    /// How long a lease lasts without renewal: a publisher that died is replaced after this.
    pub lease_ttl: Duration,
}

#[derive(Debug, Default)]
pub struct EventStats {
    pub published: AtomicU64,
    pub lost: AtomicU64,
    pub failed_sends: AtomicU64,
}

#[derive(Debug)]
pub struct EventPublisher {
    store: Store,
    connections: ConnectionSource,
    config: EventsConfig,
    stats: Arc<EventStats>,
}

impl EventPublisher {
    pub fn new(store: Store, connections: ConnectionSource, config: EventsConfig) -> Self {
        EventPublisher {
            store,
            connections,
            config,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<EventStats> {
        self.stats.clone()
    }

    /// Publishes while it holds the lease (one publisher per database, whatever the number of
    /// schedulers), from the persisted cursor, so that events made while no publisher ran
    /// are published when one starts; stands by while another holds it.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        let ttl = self.config.lease_ttl;
        let mut lease_until: Option<std::time::Instant> = None;
        let mut cursor = EventCursor::default();
        let mut producer: Option<Producer> = None;
        let mut gaps = Gaps::default();
        // After a takeover: events the predecessor delivered past its recorded cursor.
        let mut delivered: Option<std::collections::HashSet<String>> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = std::time::Instant::now();
            if lease_until.is_none_or(|u| u.saturating_duration_since(now) < ttl / 2) {
                let chrono_ttl = chrono::Duration::from_std(ttl).unwrap_or_default();
                let at = chrono::Utc::now();
                match self
                    .store
                    .events_lease(&self.config.holder, at + chrono_ttl, at)
                    .await
                {
                    Ok(Some((persisted, open))) => {
                        if lease_until.is_none() {
                            info!(topic = %self.config.topic, cursor = ?persisted, gaps = open.len(), "events: this scheduler publishes lifecycle events");
                            cursor = persisted;
                            gaps = Gaps::restore(&open, std::time::Instant::now());
                            delivered = None;
                        }
                        lease_until = Some(now + ttl);
                    }
                    Ok(None) => {
                        if lease_until.take().is_some() {
                            info!("events: another publisher holds the lease; standing by");
                        }
                        if sleep_or_stop(&mut shutdown, ttl / 3).await {
                            break;
                        }
                        continue;
                    }
                    Err(e) => warn!(error = %e, "events: cannot renew the lease"),
                }
            }
            // Publish only well within the lease: past it, another publisher may have started.
            if lease_until.is_none_or(|u| u.saturating_duration_since(now) < ttl / 4) {
                lease_until = None;
                if sleep_or_stop(&mut shutdown, backoff).await {
                    break;
                }
                continue;
            }
            if producer.is_none() {
                producer = match self.producer().await {
                    Ok(p) => Some(p),
                    Err(e) => {
                        warn!(error = %e, "events: cannot create the producer; retrying");
                        if sleep_or_stop(&mut shutdown, backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue;
                    }
                };
            }
            if delivered.is_none() {
                match self.delivered_at_the_end().await {
                    Ok(ids) => delivered = Some(ids),
                    Err(e) => {
                        // Unknown: wait rather than risk sending an event twice.
                        warn!(error = %e, "events: cannot read the end of the topic; retrying");
                        if sleep_or_stop(&mut shutdown, backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue;
                    }
                }
            }
            cursor = self.skip_backlog(cursor).await;
            let (mut events, next) = match self.store.events_after(cursor, self.config.batch).await
            {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "events: reading transitions failed");
                    if sleep_or_stop(&mut shutdown, backoff).await {
                        break;
                    }
                    continue;
                }
            };
            // Ids skipped over (not yet committed when read) are looked for again for a while.
            let now = std::time::Instant::now();
            gaps.note(cursor, &events, now);
            let late = match gaps.fetch(&self.store, now).await {
                Ok(late) => late,
                Err(e) => {
                    warn!(error = %e, "events: reading late transitions failed");
                    Vec::new()
                }
            };
            events.extend(late);
            if events.is_empty() {
                if sleep_or_stop(&mut shutdown, self.config.poll_interval).await {
                    break;
                }
                continue;
            }
            let messages: Vec<OutMessage> = events
                .iter()
                .filter(|e| {
                    let id = e.json["event_id"].as_str().unwrap_or_default();
                    delivered.as_ref().is_none_or(|d| !d.contains(id))
                })
                .map(|e| OutMessage {
                    key: Some(e.key.clone()),
                    value: Some(e.json.to_string()),
                    headers: Vec::new(),
                })
                .collect();
            let Some(p) = &producer else { continue };
            match p.send_all(&self.config.topic, &messages).await {
                Ok(_) => {
                    self.stats
                        .published
                        .fetch_add(messages.len() as u64, Ordering::Relaxed);
                    gaps.published(&events);
                    cursor = next;
                    backoff = Duration::from_millis(200);
                    match self
                        .store
                        .events_advance(&self.config.holder, cursor, &gaps.open_ids())
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => {
                            warn!("events: the lease was taken over; standing by");
                            lease_until = None;
                        }
                        // Published but not recorded: a successor may publish this batch
                        // again (each event carries its `event_id`).
                        Err(e) => warn!(error = %e, "events: cannot record the cursor"),
                    }
                }
                Err(e) => {
                    // Not advanced: the same events go again once the broker answers.
                    self.stats.failed_sends.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "events: publishing failed; will retry");
                    if sleep_or_stop(&mut shutdown, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        if lease_until.is_some()
            && let Err(e) = self.store.events_release(&self.config.holder).await
        {
            warn!(error = %e, "events: could not release the lease");
        }
    }

    async fn settings(&self) -> Result<std::collections::BTreeMap<String, String>, String> {
        let conn = self
            .store
            .connection_resolve(&self.config.conn_id, &self.connections)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("connection `{}` not found", self.config.conn_id))?;
        flow_kafka::client_settings(&conn).map_err(|e| e.to_string())
    }

    async fn producer(&self) -> Result<Producer, String> {
        let settings = self.settings().await?;
        Producer::new(&settings, Duration::from_secs(10)).map_err(|e| e.to_string())
    }

    /// The `event_id`s at the end of the topic: what a predecessor that died between the
    /// broker's ack and recording its cursor already delivered, so that it is not sent twice.
    async fn delivered_at_the_end(&self) -> Result<std::collections::HashSet<String>, String> {
        let settings = self.settings().await?;
        let topic = self.config.topic.clone();
        let per_partition = self.config.batch.max(1) * 2;
        let values = tokio::task::spawn_blocking(move || {
            flow_kafka::tail_values(&settings, &topic, per_partition, Duration::from_secs(10))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        Ok(values
            .iter()
            .filter_map(|v| serde_json::from_str::<serde_json::Value>(v).ok())
            .filter_map(|j| j["event_id"].as_str().map(str::to_owned))
            .collect())
    }

    /// After a long outage, jumps to `max_backlog` events behind the newest and counts the
    /// skipped ones as lost.
    async fn skip_backlog(&self, cursor: EventCursor) -> EventCursor {
        let Ok(now) = self.store.event_cursor_now().await else {
            return cursor;
        };
        let mut next = cursor;
        let max = self.config.max_backlog;
        let mut lost = 0;
        if now.task_instance - cursor.task_instance > max {
            lost += now.task_instance - max - cursor.task_instance;
            next.task_instance = now.task_instance - max;
        }
        if now.dag_run - cursor.dag_run > max {
            lost += now.dag_run - max - cursor.dag_run;
            next.dag_run = now.dag_run - max;
        }
        if lost > 0 {
            self.stats
                .lost
                .fetch_add(u64::try_from(lost).unwrap_or(0), Ordering::Relaxed);
            warn!(
                lost,
                "events: backlog over the bound; oldest events skipped"
            );
        }
        next
    }
}

/// Sleeps; true if shutdown came first.
async fn sleep_or_stop(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// How long a skipped id is looked for: longer than any transaction that writes transitions.
const GAP_WINDOW: Duration = Duration::from_secs(30);

/// Ids below the cursor that were not there when the cursor passed them.
#[derive(Debug, Default)]
struct Gaps {
    open: std::collections::BTreeMap<(EventTable, i64), std::time::Instant>,
}

impl Gaps {
    /// Gaps a previous publisher was still looking for.
    fn restore(open: &[(EventTable, i64)], now: std::time::Instant) -> Self {
        Gaps {
            open: open.iter().map(|k| (*k, now)).collect(),
        }
    }

    fn open_ids(&self) -> Vec<(EventTable, i64)> {
        self.open.keys().copied().collect()
    }

    fn note(&mut self, cursor: EventCursor, events: &[LifecycleEvent], now: std::time::Instant) {
        for (table, from) in [
            (EventTable::TaskInstance, cursor.task_instance),
            (EventTable::DagRun, cursor.dag_run),
        ] {
            let ids: std::collections::BTreeSet<i64> = events
                .iter()
                .filter(|e| e.table == table)
                .map(|e| e.id)
                .collect();
            let Some(&max) = ids.last() else { continue };
            // A huge jump (a sequence cache, a restored database) is not worth chasing.
            if max - from > 10_000 {
                continue;
            }
            for id in from + 1..max {
                if !ids.contains(&id) {
                    self.open.entry((table, id)).or_insert(now);
                }
            }
        }
        // Ids still missing after the window were rolled back: nothing to publish.
        self.open
            .retain(|_, seen| now.duration_since(*seen) < GAP_WINDOW);
    }

    async fn fetch(
        &self,
        store: &Store,
        now: std::time::Instant,
    ) -> flow_store::Result<Vec<LifecycleEvent>> {
        let due = |t: EventTable| -> Vec<i64> {
            self.open
                .iter()
                .filter(|((table, _), seen)| {
                    *table == t && now.duration_since(**seen) > Duration::ZERO
                })
                .map(|((_, id), _)| *id)
                .take(500)
                .collect()
        };
        let (ti, run) = (due(EventTable::TaskInstance), due(EventTable::DagRun));
        if ti.is_empty() && run.is_empty() {
            return Ok(Vec::new());
        }
        store.events_by_id(&ti, &run).await
    }

    fn published(&mut self, events: &[LifecycleEvent]) {
        for e in events {
            self.open.remove(&(e.table, e.id));
        }
    }
}
