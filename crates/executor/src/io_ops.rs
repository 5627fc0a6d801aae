//! Operators that wait on I/O rather than run a program: Kafka produce and consume, and the
//! sensors (Kafka message, time). They run as async tasks in the worker, so a wait costs no
//! process; only `apply` and `command` start a bash process.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flow_dag::{Sensor, SensorMode};
use flow_kafka::{Consumer, Filter, Message, OutMessage, Producer};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::watch;

use crate::process::{LogSink, cancelled};
use crate::render::SensorWait;
use crate::runner::{Outcome, Resume, RunSpec, Stream};

/// The kind of a trigger that waits for a moment.
pub const TRIGGER_TIME: &str = "flow.triggers.DateTimeTrigger";
/// The trigger of a deferred HTTP sensor: pokes the endpoint from the triggerer.
pub const TRIGGER_HTTP: &str = "airflow.providers.http.triggers.http.HttpSensorTrigger";
/// A deferred TriggerDagRunOperator waiting for its run to end.
pub const TRIGGER_DAG_RUN: &str =
    "airflow.providers.standard.triggers.external_task.DagStateTrigger";
/// A deferred ExternalTaskSensor.
pub const TRIGGER_EXTERNAL: &str =
    "airflow.providers.standard.triggers.external_task.WorkflowTrigger";
/// A deferred FileSensor.
pub const TRIGGER_FILE: &str = "airflow.providers.standard.triggers.file.FileTrigger";
/// The kind of a trigger that waits for a Kafka message.
pub const TRIGGER_KAFKA: &str = "flow.triggers.KafkaMessageTrigger";

fn settings(spec: &RunSpec) -> Result<&BTreeMap<String, String>, Outcome> {
    spec.kafka
        .as_ref()
        .map(|k| &k.0)
        .ok_or_else(|| Outcome::Failed {
            reason: "the task's kafka connection was not resolved".into(),
        })
}

pub(crate) async fn produce(
    spec: &RunSpec,
    topic: &str,
    messages: &Result<Vec<Json>, String>,
    delivery_timeout: Duration,
    logs: &LogSink,
    cancel: &mut watch::Receiver<bool>,
) -> Outcome {
    let settings = match settings(spec) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let out: Vec<OutMessage> = match messages {
        Ok(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match OutMessage::from_json(item) {
                    Ok(m) => out.push(m),
                    Err(e) => {
                        return Outcome::Failed {
                            reason: format!("messages[{i}]: {e}"),
                        };
                    }
                }
            }
            out
        }
        Err(command) => {
            logs.system(&format!("Running command: {command}")).await;
            let stdout = match command_io(spec, command, None, logs, cancel).await {
                Ok(s) => s,
                Err(o) => return o,
            };
            stdout
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| OutMessage {
                    value: Some(l.to_owned()),
                    ..Default::default()
                })
                .collect()
        }
    };
    let producer = match Producer::new(settings, delivery_timeout) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::Failed {
                reason: e.to_string(),
            };
        }
    };
    logs.system(&format!("Producing {} message(s) to `{topic}`", out.len()))
        .await;
    let sent = tokio::select! {
        r = producer.send_all(topic, &out) => r,
        () = cancelled(cancel) => return Outcome::Cancelled,
    };
    match sent {
        Ok(delivered) => {
            let mut per_partition: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
            for d in &delivered {
                let e = per_partition
                    .entry(d.partition)
                    .or_insert((d.offset, d.offset));
                e.0 = e.0.min(d.offset);
                e.1 = e.1.max(d.offset);
            }
            for (p, (lo, hi)) in &per_partition {
                logs.system(&format!(
                    "Delivered to `{topic}` partition {p}, offsets {lo}..={hi}"
                ))
                .await;
            }
            let offsets: Vec<Json> = delivered
                .iter()
                .map(|d| json!({"partition": d.partition, "offset": d.offset}))
                .collect();
            Outcome::Success {
                xcom: spec
                    .do_xcom_push
                    .then(|| json!({"topic": topic, "count": delivered.len(), "offsets": offsets})),
            }
        }
        Err(e) => Outcome::Failed {
            reason: format!("producing to `{topic}`: {e}"),
        },
    }
}

pub(crate) struct ConsumeArgs<'a> {
    pub topics: &'a [String],
    pub group_id: &'a str,
    pub max_messages: u64,
    pub max_batch_size: u64,
    pub poll_timeout: Duration,
    pub apply: Option<&'a str>,
    pub push_to_xcom: bool,
    pub xcom_max_messages: u64,
}

pub(crate) async fn consume(
    spec: &RunSpec,
    args: ConsumeArgs<'_>,
    logs: &LogSink,
    cancel: &mut watch::Receiver<bool>,
) -> Outcome {
    let settings = match settings(spec) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let consumer = match Consumer::new(settings, args.group_id, args.topics, Some(&member_id(spec)))
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed {
                reason: e.to_string(),
            };
        }
    };
    logs.system(&format!(
        "Consuming from {} as group `{}` (at most {} message(s), batches of {})",
        args.topics.join(", "),
        args.group_id,
        args.max_messages,
        args.max_batch_size
    ))
    .await;
    let mut total: u64 = 0;
    let mut kept: Vec<Json> = Vec::new();
    // Without `apply`, a batch is handled once it is in the XCom, which is written with the
    // outcome: those offsets are committed at the end, so a failed try re-reads them.
    let mut uncommitted: Vec<Message> = Vec::new();
    while total < args.max_messages {
        let want = args.max_batch_size.min(args.max_messages - total);
        let batch = tokio::select! {
            r = consumer.poll_batch(usize::try_from(want).unwrap_or(usize::MAX), args.poll_timeout) => r,
            () = cancelled(cancel) => return Outcome::Cancelled,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Failed {
                    reason: format!("consuming: {e}"),
                };
            }
        };
        if batch.is_empty() {
            logs.system(&format!(
                "No message for {:?}: done after {total} message(s)",
                args.poll_timeout
            ))
            .await;
            break;
        }
        total += batch.len() as u64;
        if args.push_to_xcom {
            if total > args.xcom_max_messages {
                return Outcome::Failed {
                    reason: format!(
                        "more than xcom_max_messages ({}) messages to push to XCom; raise \
                         `xcom_max_messages`, lower `max_messages`, or handle them with `apply` \
                         and `push_to_xcom: false` (nothing of this try was committed)",
                        args.xcom_max_messages
                    ),
                };
            }
            kept.extend(batch.iter().map(Message::to_json));
        }
        if let Some(apply) = args.apply {
            let mut stdin = String::new();
            for m in &batch {
                stdin.push_str(&m.to_json().to_string());
                stdin.push('\n');
            }
            if let Err(o) = command_io(spec, apply, Some(stdin), logs, cancel).await {
                return o;
            }
            if !args.push_to_xcom {
                if let Err(e) = consumer.commit(&batch).await {
                    return Outcome::Failed {
                        reason: format!("committing offsets: {e}"),
                    };
                }
                logs.system(&format!("Handled and committed {} message(s)", batch.len()))
                    .await;
                continue;
            }
        }
        uncommitted.extend(batch);
    }
    if let Err(e) = consumer.commit(&uncommitted).await {
        return Outcome::Failed {
            reason: format!("committing offsets: {e}"),
        };
    }
    logs.system(&format!("Consumed {total} message(s)")).await;
    Outcome::Success {
        xcom: (spec.do_xcom_push && args.push_to_xcom).then_some(Json::Array(kept)),
    }
}

/// A bash command with optional stdin; its stderr goes to the log, its stdout is returned.
async fn command_io(
    spec: &RunSpec,
    command: &str,
    stdin: Option<String>,
    logs: &LogSink,
    cancel: &mut watch::Receiver<bool>,
) -> Result<String, Outcome> {
    let mut cmd = crate::process::task_command("bash");
    cmd.arg("-c")
        .arg(command)
        .current_dir(&spec.dags_folder)
        .envs(spec.context_env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| Outcome::Failed {
        reason: format!("cannot start bash: {e}"),
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        tokio::spawn(async move {
            // A command that stops reading early is its own business.
            let _ = pipe.write_all(text.as_bytes()).await;
        });
    }
    let stderr = child.stderr.take();
    let log = logs.clone();
    let pump = tokio::spawn(async move {
        if let Some(err) = stderr {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log.send(Stream::Stderr, &line).await;
            }
        }
    });
    let mut out = String::new();
    let mut stdout = child.stdout.take();
    let read = async {
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_string(&mut out).await;
        }
        child.wait().await
    };
    let status = tokio::select! {
        s = read => s,
        () = cancelled(cancel) => return Err(Outcome::Cancelled),
    };
    let _ = pump.await;
    match status {
        Ok(s) if s.success() => Ok(out),
        Ok(s) => Err(Outcome::Failed {
            reason: format!("command failed: {s}"),
        }),
        Err(e) => Err(Outcome::Failed {
            reason: format!("waiting for bash: {e}"),
        }),
    }
}

/// A sensor's try: resumes after a deferral, or pokes (once in reschedule mode, until done in
/// poke mode), or hands the wait to the triggerer.
pub(crate) async fn sense(
    spec: &RunSpec,
    wait: &SensorWait,
    sensor: &Sensor,
    logs: &LogSink,
    cancel: &mut watch::Receiver<bool>,
) -> Outcome {
    let now = Utc::now();
    match &spec.resume {
        Some(Resume::Event(event))
            if event.get("status").and_then(Json::as_str) == Some("skipped") =>
        {
            let reason = event
                .get("reason")
                .and_then(Json::as_str)
                .unwrap_or("skipped by the trigger")
                .to_owned();
            logs.system(&reason).await;
            return Outcome::Skipped { reason };
        }
        Some(Resume::Event(event)) => {
            logs.system("Resumed after the trigger fired").await;
            return Outcome::Success {
                xcom: spec
                    .do_xcom_push
                    .then(|| event.get("message").cloned())
                    .flatten(),
            };
        }
        Some(Resume::TimedOut(reason)) => return timed_out(sensor, reason, logs).await,
        Some(Resume::Failed(reason)) => {
            logs.system(&format!("The trigger failed: {reason}")).await;
            return Outcome::Failed {
                reason: format!("trigger failed: {reason}"),
            };
        }
        _ => {}
    }
    let started = match &spec.resume {
        Some(Resume::Poke { started_at }) => *started_at,
        _ => now,
    };
    let deadline = started + chrono::Duration::from_std(sensor_timeout(sensor)).unwrap_or_default();
    if sensor.mode == SensorMode::Deferrable {
        let (kind, kwargs) = match wait {
            SensorWait::Until(at) => {
                if *at <= now {
                    logs.system(&format!("{} has passed", at.to_rfc3339()))
                        .await;
                    return Outcome::Success { xcom: None };
                }
                (TRIGGER_TIME, json!({"moment": at.to_rfc3339()}))
            }
            SensorWait::KafkaMessage {
                conn_id,
                topics,
                group_id,
                filter,
                context,
            } => (
                TRIGGER_KAFKA,
                json!({"conn_id": conn_id, "topics": topics, "group_id": group_id,
                       "filter": filter, "context": context}),
            ),
            SensorWait::Http(check) => {
                let kwargs = crate::operators::http::trigger_kwargs(check, sensor);
                // Trigger rows are stored as they are: a request carrying a secret (a token
                // from a variable in a header, say) is poked here instead.
                let text = kwargs.to_string();
                if spec.masker.mask(&text) != text {
                    logs.system(
                        "The request carries a secret, which a trigger row would store: poking in the worker instead of deferring",
                    )
                    .await;
                    return Box::pin(sense(spec, wait, &poking(sensor), logs, cancel)).await;
                }
                (TRIGGER_HTTP, kwargs)
            }
            SensorWait::File(check) => (
                TRIGGER_FILE,
                crate::operators::sensors::file_trigger_kwargs(
                    spec.connection.as_ref(),
                    check,
                    sensor,
                ),
            ),
            SensorWait::Process(_) => {
                return Outcome::Failed {
                    reason:
                        "a Python or bash sensor cannot be deferred; use mode poke or reschedule"
                            .into(),
                };
            }
            SensorWait::External(check) => {
                match crate::operators::cross_dag::defer_kwargs(spec, check, sensor).await {
                    Ok(kwargs) => (TRIGGER_EXTERNAL, kwargs),
                    Err(reason) => return Outcome::Failed { reason },
                }
            }
            SensorWait::Sql(_) => {
                return Outcome::Failed {
                    reason: "a SQL sensor cannot be deferred; use mode poke or reschedule".into(),
                };
            }
        };
        logs.system(&format!(
            "Deferring to the triggerer ({kind}); times out at {}",
            deadline.to_rfc3339()
        ))
        .await;
        return Outcome::Defer {
            kind: kind.to_owned(),
            kwargs,
            timeout_at: deadline,
        };
    }
    let once = sensor.mode == SensorMode::Reschedule;
    let poke_interval = sensor
        .poke_interval
        .to_std()
        .unwrap_or(Duration::from_secs(60));
    let pokes = Pokes {
        sensor,
        started,
        deadline,
        reschedule: once,
        seed: jitter_seed(spec),
    };
    match wait {
        SensorWait::Http(check) => {
            pokes
                .run(logs, cancel, || {
                    crate::operators::http::poke(spec.connection.as_ref(), check, logs)
                })
                .await
        }
        SensorWait::File(check) => {
            pokes
                .run(logs, cancel, || {
                    crate::operators::sensors::poke_file(spec.connection.as_ref(), check, logs)
                })
                .await
        }
        SensorWait::Process(check) => {
            let poke_cancel = cancel.clone();
            pokes
                .run(logs, cancel, || {
                    crate::operators::sensors::poke_process(spec, check, logs, poke_cancel.clone())
                })
                .await
        }
        SensorWait::External(check) => {
            pokes
                .run(logs, cancel, || {
                    crate::operators::cross_dag::poke(spec, spec.store.as_ref(), check, logs)
                })
                .await
        }
        SensorWait::Sql(check) => {
            pokes
                .run(logs, cancel, || {
                    crate::operators::sql::poke(spec, check, logs)
                })
                .await
        }
        SensorWait::Until(at) => {
            let target = *at;
            if target <= now {
                logs.system(&format!("{} has passed", target.to_rfc3339()))
                    .await;
                return Outcome::Success { xcom: None };
            }
            if now >= deadline {
                return timed_out(sensor, "sensor timeout reached", logs).await;
            }
            if once {
                let next = (now + chrono::Duration::from_std(poke_interval).unwrap_or_default())
                    .min(target)
                    .min(deadline);
                return reschedule(next, started, logs).await;
            }
            let until = target.min(deadline);
            logs.system(&format!("Waiting until {}", until.to_rfc3339()))
                .await;
            let sleep = (until - now).to_std().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = cancelled(cancel) => return Outcome::Cancelled,
            }
            if Utc::now() >= target {
                Outcome::Success { xcom: None }
            } else {
                timed_out(sensor, "sensor timeout reached", logs).await
            }
        }
        SensorWait::KafkaMessage {
            topics,
            group_id,
            filter,
            context,
            ..
        } => {
            let settings = match settings(spec) {
                Ok(s) => s,
                Err(o) => return o,
            };
            let filter = match Filter::compile(filter) {
                Ok(f) => f,
                Err(e) => {
                    return Outcome::Failed {
                        reason: e.to_string(),
                    };
                }
            };
            let consumer = match Consumer::new(settings, group_id, topics, Some(&member_id(spec))) {
                Ok(c) => c,
                Err(e) => {
                    return Outcome::Failed {
                        reason: e.to_string(),
                    };
                }
            };
            logs.system(&format!(
                "Waiting for a message on {} matching `{}` (group `{group_id}`)",
                topics.join(", "),
                filter.source()
            ))
            .await;
            // Reschedule mode pokes for one poke_interval (capped at 5 s) per slot.
            let poke_until = if once {
                now + chrono::Duration::from_std(poke_interval.min(Duration::from_secs(5)))
                    .unwrap_or_default()
            } else {
                deadline
            };
            loop {
                let now = Utc::now();
                if now >= deadline {
                    return timed_out(sensor, "sensor timeout reached", logs).await;
                }
                if now >= poke_until {
                    let next = (now
                        + chrono::Duration::from_std(poke_interval).unwrap_or_default())
                    .min(deadline);
                    return reschedule(next, started, logs).await;
                }
                let wait = (poke_until.min(deadline) - now)
                    .to_std()
                    .unwrap_or_default()
                    .min(Duration::from_secs(1));
                let batch = tokio::select! {
                    r = consumer.poll_batch(100, wait) => r,
                    () = cancelled(cancel) => return Outcome::Cancelled,
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        logs.system(&format!("poll failed, retrying: {e}")).await;
                        continue;
                    }
                };
                let mut seen = Vec::new();
                for m in batch {
                    let value = with_context(m.to_json(), context);
                    let matched = match filter.matches(&value) {
                        Ok(b) => b,
                        Err(e) => {
                            logs.system(&format!(
                                "message {}[{}]@{} skipped: {e}",
                                m.topic, m.partition, m.offset
                            ))
                            .await;
                            false
                        }
                    };
                    seen.push(m.clone());
                    if matched {
                        if let Err(e) = consumer.commit(&seen).await {
                            return Outcome::Failed {
                                reason: format!("committing offsets: {e}"),
                            };
                        }
                        logs.system(&format!(
                            "Matched message {}[{}]@{}",
                            m.topic, m.partition, m.offset
                        ))
                        .await;
                        return Outcome::Success {
                            xcom: spec.do_xcom_push.then(|| m.to_json()),
                        };
                    }
                }
                // Messages that matched nothing are consumed: the group moves past them.
                if let Err(e) = consumer.commit(&seen).await {
                    logs.system(&format!("committing offsets failed: {e}"))
                        .await;
                }
            }
        }
    }
}

/// The static group member id of a task instance's consumer: a retry after a killed worker
/// takes the dead try's partitions at once.
fn member_id(spec: &RunSpec) -> String {
    let get = |name: &str| {
        spec.context_env
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    format!(
        "{}.{}.{}.{}",
        get("FLOW_CTX_DAG_ID"),
        get("FLOW_CTX_TASK_ID"),
        get("FLOW_CTX_RUN_ID"),
        get("FLOW_CTX_MAP_INDEX")
    )
}

/// The message's fields plus the run's `params`, `conf` and `run_id`, for filters.
pub fn with_context(mut message: Json, context: &Json) -> Json {
    if let (Json::Object(m), Json::Object(c)) = (&mut message, context) {
        for (k, v) in c {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    message
}

fn sensor_timeout(sensor: &Sensor) -> Duration {
    sensor
        .timeout
        .to_std()
        .unwrap_or(Duration::from_secs(7 * 86_400))
}

/// The same sensor in poke mode.
fn poking(sensor: &Sensor) -> Sensor {
    Sensor {
        mode: SensorMode::Poke,
        ..sensor.clone()
    }
}

/// What a poke found.
pub(crate) enum Poked {
    NotYet,
    /// The task is to be skipped (an external task in `skipped_states`).
    Skip(String),
    /// The task fails without retries (a bash sensor's exit code other than
    /// `retry_exit_code`, a callable's AirflowFailException).
    Fail(String),
    /// Done, with the XCom to push (a `PokeReturnValue`'s `xcom_value`).
    Done(Option<Json>),
}

impl From<bool> for Poked {
    fn from(done: bool) -> Self {
        if done {
            Poked::Done(None)
        } else {
            Poked::NotYet
        }
    }
}

/// The waiting every poking sensor shares (Airflow's `BaseSensorOperator.execute`): poke; when
/// not yet, time out past the deadline, else hand the slot back (reschedule) or sleep
/// `poke_interval` and poke again.
struct Pokes<'a> {
    sensor: &'a Sensor,
    started: DateTime<Utc>,
    deadline: DateTime<Utc>,
    reschedule: bool,
    /// Spreads the backoff of different task instances apart (Airflow hashes the same ids).
    seed: u64,
}

/// A seed from the task instance's identity, stable across its pokes and reschedules.
fn jitter_seed(spec: &RunSpec) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (k, v) in &spec.context_env {
        if k.starts_with("AIRFLOW_CTX_") {
            (k, v).hash(&mut h);
        }
    }
    h.finish()
}

impl Pokes<'_> {
    async fn run<F, Fut, P>(
        &self,
        logs: &LogSink,
        cancel: &mut watch::Receiver<bool>,
        mut poke: F,
    ) -> Outcome
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<P, String>>,
        P: Into<Poked>,
    {
        let mut pokes: u32 = 0;
        loop {
            pokes += 1;
            let poked = tokio::select! {
                r = poke() => r,
                () = cancelled(cancel) => return Outcome::Cancelled,
            };
            match poked.map(Into::into) {
                Ok(Poked::Done(xcom)) => return Outcome::Success { xcom },
                Ok(Poked::Skip(reason)) => {
                    logs.system(&reason).await;
                    return Outcome::Skipped { reason };
                }
                Ok(Poked::Fail(reason)) => {
                    logs.system(&reason).await;
                    return Outcome::FailedNoRetry { reason };
                }
                Ok(Poked::NotYet) => {}
                Err(reason) => {
                    logs.system(&reason).await;
                    return Outcome::Failed { reason };
                }
            }
            let now = Utc::now();
            if now >= self.deadline {
                return timed_out(self.sensor, "sensor timeout reached", logs).await;
            }
            // A rescheduled sensor starts each try afresh: how many pokes came before is read
            // from the time since the first one.
            let count = if self.reschedule {
                let elapsed = (now - self.started).num_milliseconds().max(0);
                let base = self.sensor.poke_interval.num_milliseconds().max(1);
                1 + (elapsed / base + 1).ilog2()
            } else {
                pokes
            };
            let next = (now + self.sensor.next_interval(count, self.seed)).min(self.deadline);
            if self.reschedule {
                return reschedule(next, self.started, logs).await;
            }
            let sleep = (next - now).to_std().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = cancelled(cancel) => return Outcome::Cancelled,
            }
        }
    }
}

async fn reschedule(at: DateTime<Utc>, started_at: DateTime<Utc>, logs: &LogSink) -> Outcome {
    logs.system(&format!("Not yet: rescheduled for {}", at.to_rfc3339()))
        .await;
    Outcome::Reschedule { at, started_at }
}

/// Airflow's AirflowFailedNoRetry: failed without retries, or skipped with `soft_fail`.
async fn timed_out(sensor: &Sensor, reason: &str, logs: &LogSink) -> Outcome {
    logs.system(&format!("Sensor timed out: {reason}")).await;
    if sensor.soft_fail {
        Outcome::Skipped {
            reason: format!("sensor timed out ({reason}); soft_fail"),
        }
    } else {
        Outcome::FailedNoRetry {
            reason: format!("sensor timed out: {reason}"),
        }
    }
}
