//! flow-kafka: Kafka for flow's operators, sensors, event-triggered runs and lifecycle events.
//!
//! - [`client_settings`]: librdkafka settings from a `kafka` connection.
//! - [`Producer`]: an idempotent producer that returns only once every message is confirmed.
//! - [`Consumer`]: a consumer-group member that reads batches and commits offsets only when
//!   asked, after the caller has handled them (at-least-once handling, never a skipped message).
//! - [`Message`]: a consumed message as the JSON that filters, XCom and run conf see.
//! - [`Filter`]: a minijinja expression over a message.
//!
//! No database and no scheduling here: callers decide what a message means.

mod filter;

use std::collections::BTreeMap;
use std::time::Duration;

use flow_model::Connection;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Map, Value as Json, json};

pub use filter::Filter;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka connection `{conn_id}`: {reason}")]
    Config { conn_id: String, reason: String },
    #[error("kafka: {0}")]
    Client(String),
    #[error("{0}")]
    Filter(String),
}

impl From<rdkafka::error::KafkaError> for KafkaError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        KafkaError::Client(e.to_string())
    }
}

pub type Result<T, E = KafkaError> = std::result::Result<T, E>;

/// librdkafka settings from a connection: every key of `extra` (Airflow's Kafka provider
/// passes its extra to the client the same way), with `bootstrap.servers` taken from
/// `host[:port]` when the extra does not set it.
pub fn client_settings(conn: &Connection) -> Result<BTreeMap<String, String>> {
    let bad = |reason: String| KafkaError::Config {
        conn_id: conn.conn_id.clone(),
        reason,
    };
    if conn.conn_type != "kafka" {
        return Err(bad(format!(
            "has conn_type `{}`; a kafka connection is needed",
            conn.conn_type
        )));
    }
    let mut settings = BTreeMap::new();
    if let Some(extra) = &conn.extra {
        let parsed: Map<String, Json> = serde_json::from_str(extra)
            .map_err(|e| bad(format!("`extra` is not a JSON object: {e}")))?;
        for (k, v) in parsed {
            let v = match v {
                Json::String(s) => s,
                Json::Null => continue,
                other => other.to_string(),
            };
            settings.insert(k, v);
        }
    }
    if !settings.contains_key("bootstrap.servers") {
        let host = conn.host.clone().ok_or_else(|| {
            bad("set `bootstrap.servers` in `extra` (or a host and port)".to_owned())
        })?;
        let servers = match conn.port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        };
        settings.insert("bootstrap.servers".into(), servers);
    }
    // Connection logins map to SASL, as the provider's users expect.
    if let (Some(login), false) = (&conn.login, settings.contains_key("sasl.username")) {
        settings.insert("sasl.username".into(), login.clone());
    }
    if let (Some(password), false) = (&conn.password, settings.contains_key("sasl.password")) {
        settings.insert("sasl.password".into(), password.clone());
    }
    Ok(settings)
}

/// Asks the cluster for its brokers and topics within `timeout`: whether the settings reach
/// a broker and are accepted (a connection test). Blocks; call it from a blocking thread.
/// Returns the number of brokers and of topics.
pub fn fetch_metadata(
    settings: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(usize, usize)> {
    let consumer: rdkafka::consumer::BaseConsumer = config(settings).create()?;
    let metadata = consumer.fetch_metadata(None, timeout)?;
    Ok((metadata.brokers().len(), metadata.topics().len()))
}

fn config(settings: &BTreeMap<String, String>) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    for (k, v) in settings {
        cfg.set(k, v);
    }
    cfg
}

/// A message to produce. Values that are not strings are sent as their JSON text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutMessage {
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl OutMessage {
    /// From `{key, value, headers}` (any of them optional) or a bare value.
    pub fn from_json(item: &Json) -> Result<OutMessage, String> {
        let text = |v: &Json| match v {
            Json::String(s) => Some(s.clone()),
            Json::Null => None,
            other => Some(other.to_string()),
        };
        let Json::Object(map) = item else {
            return Ok(OutMessage {
                value: text(item),
                ..Default::default()
            });
        };
        if let Some(unknown) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "key" | "value" | "headers"))
        {
            // A plain object without those keys is a value in its own right.
            if !map.contains_key("value") && !map.contains_key("key") {
                return Ok(OutMessage {
                    value: Some(item.to_string()),
                    ..Default::default()
                });
            }
            return Err(format!(
                "unknown message key `{unknown}`: a message is {{key, value, headers}}"
            ));
        }
        let headers = match map.get("headers") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Object(h)) => h
                .iter()
                .map(|(k, v)| (k.clone(), text(v).unwrap_or_default()))
                .collect(),
            Some(Json::Array(pairs)) => pairs
                .iter()
                .map(|p| match p {
                    Json::Array(kv) if kv.len() == 2 => Ok((
                        text(&kv[0]).unwrap_or_default(),
                        text(&kv[1]).unwrap_or_default(),
                    )),
                    other => Err(format!("a header must be [name, value], got {other}")),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(format!(
                    "`headers` must be a mapping or a list of pairs, got {other}"
                ));
            }
        };
        Ok(OutMessage {
            key: map.get("key").and_then(text),
            value: map.get("value").and_then(text),
            headers,
        })
    }
}

/// Where a produced message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotent producer (`enable.idempotence=true`, `acks=all`): retries inside librdkafka
/// cannot duplicate or reorder a message.
pub struct Producer {
    inner: FutureProducer,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Producer")
    }
}

impl Producer {
    pub fn new(settings: &BTreeMap<String, String>, delivery_timeout: Duration) -> Result<Self> {
        let mut cfg = config(settings);
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            );
        Ok(Producer {
            inner: cfg.create()?,
        })
    }

    /// A producer for fire-and-forget use (lifecycle events): not idempotent, bounded queue.
    pub fn best_effort(settings: &BTreeMap<String, String>, queue_messages: usize) -> Result<Self> {
        let mut cfg = config(settings);
        cfg.set("queue.buffering.max.messages", queue_messages.to_string())
            .set("message.timeout.ms", "10000");
        Ok(Producer {
            inner: cfg.create()?,
        })
    }

    /// Sends every message and waits for all their confirmations. Fails with the first error;
    /// messages confirmed before it stay produced (the idempotent producer never doubles them
    /// within one call, and a task retry produces the batch again, as Airflow's would).
    pub async fn send_all(&self, topic: &str, messages: &[OutMessage]) -> Result<Vec<Delivered>> {
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
            for (k, v) in &m.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic).headers(headers);
            if let Some(k) = &m.key {
                record = record.key(k);
            }
            if let Some(v) = &m.value {
                record = record.payload(v);
            }
            // Waits (does not fail) while librdkafka's local queue is full.
            let future = loop {
                match self.inner.send_result(record) {
                    Ok(f) => break f,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        r,
                    )) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            };
            pending.push(future);
        }
        let mut out = Vec::with_capacity(pending.len());
        for f in pending {
            match f.await {
                Ok(Ok(d)) => out.push(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_) => return Err(KafkaError::Client("producer shut down".into())),
            }
        }
        Ok(out)
    }

    /// Queues one message without waiting; false if the local queue is full.
    pub fn try_send(&self, topic: &str, key: &str, value: &str) -> bool {
        let record: FutureRecord<'_, str, str> = FutureRecord::to(topic).key(key).payload(value);
        // The delivery future is dropped: delivery reports are not awaited.
        self.inner.send_result(record).is_ok()
    }

    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner.flush(timeout)?;
        Ok(())
    }
}

/// A consumed message, detached from the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: Vec<(String, Option<String>)>,
    /// Milliseconds since the epoch, when the broker gave one.
    pub timestamp: Option<i64>,
}

impl Message {
    fn from_borrowed(m: &BorrowedMessage<'_>) -> Self {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|hd| (hd.key.to_owned(), hd.value.map(text)))
                    .collect()
            })
            .unwrap_or_default();
        Message {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(text),
            value: m.payload().map(text),
            headers,
            timestamp: m.timestamp().to_millis(),
        }
    }

    /// The value parsed as JSON when it is JSON, else the text (or null).
    pub fn value_json(&self) -> Json {
        match &self.value {
            None => Json::Null,
            Some(v) => serde_json::from_str(v).unwrap_or_else(|_| Json::String(v.clone())),
        }
    }

    /// What filters, XCom and a triggered run's conf see: `{topic, partition, offset, key,
    /// value, headers, timestamp}`, the value parsed when it is JSON, headers as a mapping.
    pub fn to_json(&self) -> Json {
        let headers: Map<String, Json> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().map_or(Json::Null, Json::String)))
            .collect();
        json!({
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "value": self.value_json(),
            "headers": headers,
            "timestamp": self.timestamp,
        })
    }
}

fn multi_threaded() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Kafka limits ids to 249 characters of `[A-Za-z0-9._-]`: longer or stranger ids are
/// shortened with a hash so that they stay stable and distinct.
fn static_id(id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.len() <= 200 {
        return clean;
    }
    // FNV-1a: stable across processes and versions, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}-{h:016x}", &clean[..180])
}

fn is_unknown_topic(e: &rdkafka::error::KafkaError) -> bool {
    e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)
        || e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopic)
}

/// A member of a consumer group with automatic commits off: offsets move only through
/// [`Consumer::commit`], after the caller has handled what it read.
pub struct Consumer {
    /// Always `Some` until dropped (see the `Drop` impl).
    inner: Option<StreamConsumer>,
    topics: Vec<String>,
}

/// Closing a consumer leaves its group, a blocking round trip: it happens on a blocking thread
/// so that the async runtime's few threads keep running.
impl Drop for Consumer {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(move || drop(inner));
            }
            Err(_) => drop(inner),
        }
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Consumer")
    }
}

impl Consumer {
    /// Subscribes `group_id` to `topics`. `auto.offset.reset` defaults to `earliest` (a new
    /// group reads what is already there) unless the connection's settings say otherwise.
    ///
    /// `instance_id` makes the member static (`group.instance.id`): a restarted process with
    /// the same id takes its predecessor's partitions at once instead of waiting for the
    /// broker to give up on the killed member; two live members with one id fence each other.
    pub fn new(
        settings: &BTreeMap<String, String>,
        group_id: &str,
        topics: &[String],
        instance_id: Option<&str>,
    ) -> Result<Self> {
        let mut cfg = config(settings);
        if let Some(id) = instance_id
            && !settings.contains_key("group.instance.id")
        {
            cfg.set("group.instance.id", static_id(id));
        }
        cfg.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        if !settings.contains_key("auto.offset.reset") {
            cfg.set("auto.offset.reset", "earliest");
        }
        if !settings.contains_key("session.timeout.ms") {
            cfg.set("session.timeout.ms", "6000");
        }
        // A topic created after the subscription is found within seconds, not librdkafka's
        // default five minutes.
        if !settings.contains_key("topic.metadata.refresh.interval.ms") {
            cfg.set("topic.metadata.refresh.interval.ms", "2000");
        }
        let inner: StreamConsumer = cfg.create()?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        inner.subscribe(&names)?;
        Ok(Consumer {
            inner: Some(inner),
            topics: topics.to_vec(),
        })
    }

    /// Waits up to `wait` for a first message, then takes whatever else is already there, up to
    /// `max` messages in all. An empty batch means nothing arrived in time.
    pub async fn poll_batch(&self, max: usize, wait: Duration) -> Result<Vec<Message>> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        match tokio::time::timeout(wait, self.consumer().recv()).await {
            Err(_) => return Ok(out),
            Ok(Err(e)) if is_unknown_topic(&e) => {
                // Subscribed before the topic existed: subscribing again makes the group
                // pick it up once it does (otherwise that waits for a rebalance).
                self.resubscribe()?;
                tokio::time::sleep(wait.min(Duration::from_millis(500))).await;
                return Ok(out);
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(m)) => out.push(Message::from_borrowed(&m)),
        }
        while out.len() < max {
            match tokio::time::timeout(Duration::from_millis(5), self.consumer().recv()).await {
                Err(_) => break,
                // The messages already read are past the consumer's position: hand them over
                // (an error that persists comes back on the next call).
                Ok(Err(_)) => break,
                Ok(Ok(m)) => out.push(Message::from_borrowed(&m)),
            }
        }
        Ok(out)
    }

    /// Per assigned partition whose position is known, the messages not read yet: the
    /// partition's high watermark minus this consumer's position. Asks the broker for the
    /// watermarks (up to 500 ms per partition, blocking in place on a multi-threaded runtime),
    /// so call it every few seconds, not after every batch.
    pub fn lag(&self) -> Vec<(String, i32, i64)> {
        let c = self.consumer();
        let Ok(positions) = c.position() else {
            return Vec::new();
        };
        let fetch = || {
            positions
                .elements()
                .iter()
                .filter_map(|e| {
                    let Offset::Offset(at) = e.offset() else {
                        return None;
                    };
                    let (_, high) = c
                        .fetch_watermarks(e.topic(), e.partition(), Duration::from_millis(500))
                        .ok()?;
                    Some((e.topic().to_owned(), e.partition(), (high - at).max(0)))
                })
                .collect()
        };
        if multi_threaded() {
            tokio::task::block_in_place(fetch)
        } else {
            fetch()
        }
    }

    fn consumer(&self) -> &StreamConsumer {
        // `inner` is only taken in `drop`.
        self.inner
            .as_ref()
            .unwrap_or_else(|| unreachable!("consumer used after drop"))
    }

    fn resubscribe(&self) -> Result<()> {
        self.consumer().unsubscribe();
        let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer().subscribe(&names)?;
        Ok(())
    }

    /// Commits, per partition, the offset after the last of `messages` (synchronously: it is
    /// on the broker when this returns). The wait blocks in place on a multi-threaded runtime,
    /// so other tasks keep running meanwhile.
    pub async fn commit(&self, messages: &[Message]) -> Result<()> {
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi {
            tokio::task::block_in_place(|| self.commit_now(messages))
        } else {
            self.commit_now(messages)
        }
    }

    fn commit_now(&self, messages: &[Message]) -> Result<()> {
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in messages {
            let e = next.entry((m.topic.clone(), m.partition)).or_insert(0);
            *e = (*e).max(m.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        self.consumer().commit(&tpl, CommitMode::Sync)?;
        Ok(())
    }

    /// Rewinds a partition so that `offset` is read again (after a failure to handle it).
    /// Blocks in place (up to 5 s) on a multi-threaded runtime.
    pub async fn seek(&self, topic: &str, partition: i32, offset: i64) -> Result<()> {
        let seek = || {
            self.consumer().seek(
                topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            )
        };
        if multi_threaded() {
            tokio::task::block_in_place(seek)?;
        } else {
            seek()?;
        }
        Ok(())
    }
}

/// The values of the last `per_partition` messages of every partition of `topic` (blocking:
/// call it from a blocking thread). A topic that does not exist yet has none. For a producer
/// taking over from one that died: what did its predecessor already deliver?
pub fn tail_values(
    settings: &BTreeMap<String, String>,
    topic: &str,
    per_partition: i64,
    timeout: Duration,
) -> Result<Vec<String>> {
    use rdkafka::consumer::BaseConsumer;
    let mut cfg = config(settings);
    cfg.set("group.id", "flow-tail-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = cfg.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(Vec::new());
    };
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0usize;
    for p in meta.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
        if high <= low {
            continue;
        }
        let start = (high - per_partition.max(1)).max(low);
        assignment.add_partition_offset(topic, p.id(), Offset::Offset(start))?;
        remaining += 1;
    }
    if remaining == 0 {
        return Ok(Vec::new());
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + timeout;
    let mut values = Vec::new();
    while remaining > 0 && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => remaining -= 1,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                if let Some(v) = m.payload_view::<str>().and_then(std::result::Result::ok) {
                    values.push(v.to_owned());
                }
            }
        }
    }
    if remaining > 0 {
        return Err(KafkaError::Client(format!(
            "reading the end of `{topic}` timed out"
        )));
    }
    Ok(values)
}
