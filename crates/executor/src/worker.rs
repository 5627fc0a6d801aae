//! The worker loop: claim queued task instances, run them, stream their logs to the store,
//! heartbeat, and report each try's outcome.
//!
//! A worker owns a try from its claim (`queued -> running`, try number bumped) until it
//! reports the outcome. Heartbeats prove the ownership; if a heartbeat finds the task
//! instance no longer ours (cleared, marked, rescued as a zombie), the process group is killed
//! and nothing is reported, so a try never runs twice at the same time and a stale report
//! never overwrites a newer state. Outcomes are reported with the try number as a guard.

mod callbacks;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use flow_dag::{Dag, Task};
use flow_model::TaskInstanceState as S;
use flow_store::{ClaimedTi, DagRunRow, Store, TiFinish, TiKey};
use tokio::sync::{Notify, OnceCell, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::{ExecutorError, LogLine, Outcome, RenderedTask, RunContext, RunSpec, TryOf, XcomMap};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub worker_id: String,
    pub hostname: String,
    pub queues: Vec<String>,
    /// Task instances run at once.
    pub concurrency: usize,
    pub heartbeat_interval: StdDuration,
    /// Longest wait between claims when nothing wakes the worker.
    pub max_sleep: StdDuration,
    pub dags_folder: PathBuf,
    pub python: String,
    /// Where tasks' connections come from (environment overrides, then the database); tasks
    /// that need a connection fail without it.
    pub connections: Option<flow_store::ConnectionSource>,
    /// Airflow's `[core] max_map_length`: the most elements a task may push to a task that
    /// maps over its output.
    pub max_map_length: usize,
    /// The largest XCom an operator may push (`FLOW__CORE__MAX_XCOM_SIZE`).
    pub max_xcom_size: usize,
    /// `FLOW__SMTP__*`, for email tasks without a connection.
    pub smtp: Option<crate::operators::email::SmtpSettings>,
    /// This worker's row in `job` (`WorkerJob`), heartbeated with its tries and ended at a
    /// clean stop.
    pub job_id: Option<i64>,
    /// How long the scheduler waits for a heartbeat before it rescues a try (its
    /// `zombie_threshold`). A worker cut off from the database longer than this less two
    /// heartbeats kills its tries first: they are about to run elsewhere.
    pub heartbeat_timeout: StdDuration,
    /// After a stop request, how long running tries may finish before they are killed and
    /// handed back (`FLOW__WORKER__SHUTDOWN_TIMEOUT`).
    pub shutdown_timeout: StdDuration,
    /// Where a remote worker keeps the DAG bundles it fetched from the database (one folder
    /// per bundle hash); tasks run against those instead of `dags_folder`. `None` for a
    /// worker beside its scheduler, which uses the dags folder itself.
    pub bundle_dir: Option<PathBuf>,
    /// The web UI's address, for the log links callbacks send (`FLOW__WEBSERVER__BASE_URL`).
    pub base_url: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        // The binary sets the real host name; libraries never read the environment.
        let hostname = "localhost".to_owned();
        WorkerConfig {
            worker_id: format!("{hostname}-{}", std::process::id()),
            hostname,
            queues: vec!["default".into()],
            concurrency: 16,
            heartbeat_interval: StdDuration::from_secs(5),
            max_sleep: StdDuration::from_secs(1),
            dags_folder: PathBuf::from("dags"),
            python: "python3".into(),
            connections: None,
            max_map_length: flow_dag::dag::DEFAULT_MAX_MAP_LENGTH,
            max_xcom_size: crate::runner::DEFAULT_MAX_XCOM_SIZE,
            smtp: None,
            job_id: None,
            heartbeat_timeout: StdDuration::from_secs(60),
            shutdown_timeout: StdDuration::from_secs(60),
            bundle_dir: None,
            base_url: "http://localhost:8080".into(),
        }
    }
}

/// Wake-up hints for the worker. What the worker's own writes mean for other loops (a try
/// ended, a task deferred) reaches them through the store's wake-ups
/// ([`Store::spawn_wake_listener`]), in this process or another.
#[derive(Debug, Clone, Default)]
pub struct WorkerWakeups {
    /// Notified when work may have been queued.
    pub work: Arc<Notify>,
}

/// Tries whose outcome is on its way to the store (handed to the reporter, not yet written):
/// still `running` there, and not orphans.
type Unwritten = Arc<Mutex<std::collections::HashSet<(TiKey, i64)>>>;

/// dag_id -> (serialized hash, parsed DAG), shared by the tries of one worker.
type DagCache = Arc<Mutex<HashMap<String, (String, Arc<Dag>)>>>;

#[derive(Debug)]
pub struct Worker {
    store: Store,
    config: WorkerConfig,
    wakeups: WorkerWakeups,
    dags: DagCache,
    /// Held while a DAG bundle is fetched and written.
    bundles: Arc<tokio::sync::Mutex<()>>,
    unwritten: Unwritten,
    reports: Option<mpsc::Sender<TiFinish>>,
}

struct Running {
    key: TiKey,
    try_number: i64,
    cancel: watch::Sender<bool>,
}

/// When the worker last reached the database, and whether it has killed its tries for
/// having been cut off since.
struct Contact {
    last_ok: tokio::time::Instant,
    fenced: bool,
    /// Tries the store said were this worker's and it did not know, at the last heartbeat.
    suspects: std::collections::HashSet<(TiKey, i64)>,
}

impl Contact {
    fn new() -> Self {
        Contact {
            last_ok: tokio::time::Instant::now(),
            fenced: false,
            suspects: std::collections::HashSet::new(),
        }
    }
}

impl Worker {
    pub fn new(store: Store, config: WorkerConfig, wakeups: WorkerWakeups) -> Self {
        Worker {
            store,
            config,
            wakeups,
            dags: Arc::new(Mutex::new(HashMap::new())),
            bundles: Arc::default(),
            unwritten: Arc::default(),
            reports: None,
        }
    }

    /// How long without a successful heartbeat before this worker kills its tries (fencing):
    /// two heartbeats before the scheduler may rescue them, at least one heartbeat.
    fn fence_after(&self) -> StdDuration {
        let beat = self.config.heartbeat_interval;
        self.config
            .heartbeat_timeout
            .saturating_sub(beat * 2)
            .max(beat)
    }

    /// Tries the store says this worker runs and it does not: a claim whose answer was lost
    /// (it timed out after the commit), or an earlier life of this worker id. Handed back at
    /// once, without costing a retry, rather than left for the zombie rescue.
    async fn hand_back_orphans(
        &self,
        running: &HashMap<TiKey, Running>,
        suspects: &mut std::collections::HashSet<(TiKey, i64)>,
    ) {
        // What this worker runs or reports, taken before the store is asked: a try that ends
        // (or restarts) meanwhile must not look like an orphan.
        let known: std::collections::HashSet<(TiKey, i64)> = running
            .values()
            .map(|r| (r.key.clone(), r.try_number))
            .chain(self.unwritten.lock().map(|u| u.clone()).unwrap_or_default())
            .collect();
        let Ok(Ok(ours)) = tokio::time::timeout(
            self.config.heartbeat_interval,
            self.store.ti_running_of_worker(&self.config.worker_id),
        )
        .await
        else {
            return;
        };
        // An orphan is one seen at two heartbeats in a row: a try claimed or restarted around
        // the query is known by the next heartbeat.
        let candidates: std::collections::HashSet<(TiKey, i64)> =
            ours.into_iter().filter(|k| !known.contains(k)).collect();
        let orphans: Vec<(TiKey, i64)> = candidates.intersection(suspects).cloned().collect();
        *suspects = candidates;
        if orphans.is_empty() {
            return;
        }
        warn!(
            tries = orphans.len(),
            "tries recorded as this worker's that it does not run: handing them back"
        );
        if let Err(e) = self
            .store
            .ti_hand_back(&orphans, &self.config.worker_id, Utc::now())
            .await
        {
            warn!(error = %e, "could not hand back the orphaned tries");
        }
    }

    /// Whether tries are running and the database has been out of reach too long for them.
    fn must_fence(&self, running: &HashMap<TiKey, Running>, contact: &Contact) -> bool {
        !running.is_empty() && !contact.fenced && contact.last_ok.elapsed() >= self.fence_after()
    }

    /// How long a call to the database may take: never past the moment this worker must
    /// fence itself.
    fn call_deadline(
        &self,
        running: &HashMap<TiKey, Running>,
        contact: &Contact,
    ) -> tokio::time::Instant {
        // Generous while nothing is at stake: a busy database answering slowly is not a lost
        // one (a claim given up after its commit leaves tries to hand back).
        let patient = tokio::time::Instant::now() + StdDuration::from_secs(60);
        if running.is_empty() || contact.fenced {
            return patient;
        }
        patient.min(contact.last_ok + self.fence_after())
    }

    /// Runs until `shutdown` turns true, then stops claiming, lets running tries finish
    /// within `shutdown_timeout`, and kills and hands back the rest.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (reports, reports_rx) = mpsc::channel::<TiFinish>(4096);
        self.reports = Some(reports);
        let reporter = tokio::spawn(report_outcomes(
            self.store.clone(),
            reports_rx,
            self.unwritten.clone(),
        ));
        info!(worker_id = %self.config.worker_id, queues = ?self.config.queues, concurrency = self.config.concurrency, "worker started");
        // The callback runner reports nothing through the outcome channel: it must not keep
        // the reporter alive at shutdown.
        let callback_job = Job {
            reports: None,
            ..self.job()
        };
        let callback_runner =
            tokio::spawn(callbacks::run(Arc::new(callback_job), shutdown.clone()));
        // Each job ends with its key and, if it was cleared while running, its next try.
        let mut tasks: JoinSet<(TiKey, Option<ClaimedTi>)> = JoinSet::new();
        let mut running: HashMap<TiKey, Running> = HashMap::new();
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut contact = Contact::new();
        let mut backoff = StdDuration::from_millis(100);
        let mut claim_after = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if self.must_fence(&running, &contact) {
                self.fence(&running, &mut contact);
            }
            let free = self.config.concurrency.saturating_sub(running.len());
            let metrics = flow_metrics::metrics();
            metrics
                .executor_open_slots
                .set(i64::try_from(free).unwrap_or(i64::MAX));
            metrics
                .executor_running_tasks
                .set(i64::try_from(running.len()).unwrap_or(i64::MAX));
            let mut claimed_any = false;
            if free > 0 && tokio::time::Instant::now() >= claim_after {
                let started = std::time::Instant::now();
                // Bounded, so that a database that stopped answering never holds up the
                // heartbeat or the fence.
                let until = self.call_deadline(&running, &contact);
                let claim = tokio::time::timeout_at(until, self.claim(free)).await;
                tracing::debug!(
                    free,
                    claimed = claim.as_ref().map_or(0, |c| c.as_ref().map_or(0, Vec::len)),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "claim"
                );
                match claim {
                    Ok(Ok(claimed)) => {
                        backoff = StdDuration::from_millis(100);
                        claimed_any = !claimed.is_empty();
                        let shared = Arc::new(ClaimShared::of(&claimed));
                        for ti in claimed {
                            self.spawn_job(ti, Some(shared.clone()), &mut tasks, &mut running);
                        }
                    }
                    failed => {
                        match failed {
                            Ok(Err(e)) => warn!(error = %e, "claim failed; retrying"),
                            _ => warn!("claim timed out; retrying"),
                        }
                        claim_after = tokio::time::Instant::now() + backoff;
                        // Capped low: a database back after an outage is used within seconds.
                        backoff = (backoff * 2).min(StdDuration::from_secs(5));
                    }
                }
            }
            if claimed_any && running.len() < self.config.concurrency {
                // More may be waiting; claim again before sleeping.
                continue;
            }
            let fence_at = contact.last_ok + self.fence_after();
            tokio::select! {
                () = self.wakeups.work.notified() => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    self.collect(Some(done), &mut tasks, &mut running, true);
                }
                _ = heartbeat.tick() => self.heartbeat(&running, &mut contact).await,
                () = tokio::time::sleep_until(fence_at), if !running.is_empty() && !contact.fenced => {
                    self.fence(&running, &mut contact);
                }
                () = tokio::time::sleep(self.config.max_sleep) => {}
                _ = shutdown.changed() => {}
            }
        }
        self.drain(&mut tasks, &mut running, &mut heartbeat, &mut contact)
            .await;
        if let Some(id) = self.config.job_id
            && let Err(e) = self.store.job_end(id, Utc::now()).await
        {
            warn!(error = %e, "could not record the worker's end");
        }
        // Every job has handed over its outcome; let the reporter write the last ones.
        self.reports = None;
        let _ = reporter.await;
        let _ = callback_runner.await;
        info!("worker stopped");
    }

    /// Removes every job that has ended (`first` and any other ready one), so that the next
    /// claim asks for all the free slots at once: one commit per batch, not per task. A
    /// cleared try is run again unless the worker is stopping.
    fn collect(
        &self,
        first: Option<Result<(TiKey, Option<ClaimedTi>), tokio::task::JoinError>>,
        tasks: &mut JoinSet<(TiKey, Option<ClaimedTi>)>,
        running: &mut HashMap<TiKey, Running>,
        restart: bool,
    ) {
        let mut done = first;
        while let Some(result) = done.take().or_else(|| tasks.try_join_next()) {
            if let Ok((key, next)) = result {
                running.remove(&key);
                if let Some(ti) = next.filter(|_| restart) {
                    self.spawn_job(ti, None, tasks, running);
                }
            }
        }
    }

    /// Stopping: no new claims; running tries may finish within `shutdown_timeout` (still
    /// heartbeating), then the rest are killed and handed back so they retry at once elsewhere
    /// without counting against their retries.
    async fn drain(
        &self,
        tasks: &mut JoinSet<(TiKey, Option<ClaimedTi>)>,
        running: &mut HashMap<TiKey, Running>,
        heartbeat: &mut tokio::time::Interval,
        contact: &mut Contact,
    ) {
        info!(
            running = running.len(),
            timeout_s = self.config.shutdown_timeout.as_secs(),
            "worker stopping: no new claims; waiting for running tries"
        );
        let deadline = tokio::time::sleep(self.config.shutdown_timeout);
        tokio::pin!(deadline);
        loop {
            if tasks.is_empty() {
                return;
            }
            tokio::select! {
                // A task cleared during shutdown is not restarted here; its `restarting`
                // state is picked up as a zombie.
                Some(done) = tasks.join_next() => self.collect(Some(done), tasks, running, false),
                _ = heartbeat.tick() => self.heartbeat(running, contact).await,
                () = &mut deadline => break,
            }
        }
        // Kill first, then hand back: the next try must never meet this one.
        let handed: Vec<(TiKey, i64)> = running
            .values()
            .filter(|r| !r.cancel.is_closed())
            .map(|r| (r.key.clone(), r.try_number))
            .collect();
        warn!(
            tries = handed.len(),
            "shutdown timeout passed: killing the running tries and handing them back"
        );
        for r in running.values() {
            let _ = r.cancel.send(true);
        }
        while let Some(done) = tasks.join_next().await {
            self.collect(Some(done), tasks, running, false);
        }
        if handed.is_empty() {
            return;
        }
        let mut backoff = StdDuration::from_millis(100);
        for _ in 0..5 {
            match self
                .store
                .ti_hand_back(&handed, &self.config.worker_id, Utc::now())
                .await
            {
                Ok(n) => {
                    info!(handed_back = n, "tries handed back for a retry elsewhere");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "could not hand back the killed tries; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
        warn!("the killed tries were not handed back; the scheduler rescues them as zombies");
    }

    /// Cut off from the database for longer than is safe: the scheduler is about to rescue
    /// every try of this worker and run it elsewhere, so kill them all now. Their outcomes
    /// are never reported (each job sees its cancel), and any late write is refused by the
    /// store's guards on the try number and this worker's id.
    fn fence(&self, running: &HashMap<TiKey, Running>, contact: &mut Contact) {
        warn!(
            tries = running.len(),
            cut_off_s = contact.last_ok.elapsed().as_secs(),
            "no contact with the database for too long: killing every running try before it is rescued elsewhere"
        );
        for r in running.values() {
            let _ = r.cancel.send(true);
        }
        contact.fenced = true;
    }

    fn spawn_job(
        &self,
        ti: ClaimedTi,
        shared: Option<Arc<ClaimShared>>,
        tasks: &mut JoinSet<(TiKey, Option<ClaimedTi>)>,
        running: &mut HashMap<TiKey, Running>,
    ) {
        let (cancel, cancel_rx) = watch::channel(false);
        running.insert(
            ti.key.clone(),
            Running {
                key: ti.key.clone(),
                try_number: ti.try_number,
                cancel,
            },
        );
        let job = Job {
            shared,
            ..self.job()
        };
        tasks.spawn(async move {
            let key = ti.key.clone();
            // A panic in a try (a bug) must not cost the worker its slot: the job runs in a
            // task of its own, and its key comes back either way. The try, no longer
            // heartbeated, is rescued by the scheduler as a zombie.
            let restart = match tokio::spawn(async move { job.execute(ti, cancel_rx).await }).await
            {
                Ok(restart) => restart,
                Err(e) => {
                    warn!(task_id = %key.task_id, error = %e, "a try panicked; the scheduler will rescue it");
                    None
                }
            };
            (key, restart)
        });
    }

    async fn claim(&self, n: usize) -> flow_store::Result<Vec<ClaimedTi>> {
        self.store
            .ti_claim(
                &self.config.worker_id,
                &self.config.hostname,
                &self.config.queues,
                i64::try_from(n).unwrap_or(i64::MAX),
                Utc::now(),
            )
            .await
    }

    /// Heartbeats this worker's job row and its running tries, each call bounded by the
    /// heartbeat interval. A try the store says is no longer ours (cleared, marked, rescued)
    /// is stopped. Contact counts from when a successful heartbeat was sent.
    async fn heartbeat(&self, running: &HashMap<TiKey, Running>, contact: &mut Contact) {
        let sent = tokio::time::Instant::now();
        let until = self.call_deadline(running, contact);
        let mut ok = true;
        if let Some(id) = self.config.job_id {
            match tokio::time::timeout_at(until, self.store.job_heartbeat(id, Utc::now())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "worker heartbeat failed");
                    ok = false;
                }
                Err(_) => {
                    warn!("worker heartbeat timed out");
                    ok = false;
                }
            }
        }
        // A job that already handed over its outcome has dropped its cancel receiver; its
        // task instance may be finished in the store by now, which is not a loss.
        // Not the tries whose outcome is on its way: the reporter writes those rows, and two
        // transactions locking the same rows in different orders deadlock. Sorted, so that
        // every heartbeat locks in one order.
        let unwritten = self.unwritten.lock().map(|u| u.clone()).unwrap_or_default();
        let mut keys: Vec<(TiKey, i64)> = running
            .values()
            .filter(|r| !r.cancel.is_closed())
            .map(|r| (r.key.clone(), r.try_number))
            .filter(|k| !unwritten.contains(k))
            .collect();
        keys.sort();
        if ok && !keys.is_empty() {
            let beat = self
                .store
                .ti_heartbeat(&self.config.worker_id, &keys, Utc::now());
            match tokio::time::timeout_at(until, beat).await {
                Ok(Ok(lost)) => {
                    for key in lost {
                        // A try that ended meanwhile (its outcome just written) is not lost.
                        if let Some(r) = running.get(&key)
                            && !r.cancel.is_closed()
                        {
                            warn!(task_id = %key.task_id, run_id = %key.run_id, "task instance is no longer ours; stopping it");
                            let _ = r.cancel.send(true);
                        }
                    }
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "heartbeat failed");
                    ok = false;
                }
                Err(_) => {
                    warn!("heartbeat timed out");
                    ok = false;
                }
            }
        }
        if ok {
            if contact.fenced {
                info!("in contact with the database again");
            }
            contact.last_ok = sent;
            contact.fenced = false;
            self.hand_back_orphans(running, &mut contact.suspects).await;
        } else if self.must_fence(running, contact) {
            self.fence(running, contact);
        }
    }

    fn job(&self) -> Job {
        Job {
            store: self.store.clone(),
            config: self.config.clone(),
            dags: self.dags.clone(),
            bundles: self.bundles.clone(),
            unwritten: self.unwritten.clone(),
            reports: self.reports.clone(),
            shared: None,
        }
    }
}

/// Everything one try needs, detached from the loop.
struct Job {
    store: Store,
    config: WorkerConfig,
    dags: DagCache,
    bundles: Arc<tokio::sync::Mutex<()>>,
    unwritten: Unwritten,
    reports: Option<mpsc::Sender<TiFinish>>,
    shared: Option<Arc<ClaimShared>>,
}

/// A DAG's serialized hash and its bundle's hash.
type DagVersion = (String, Option<String>);

/// What the tries of one claim read alike, read once: each DAG's version (serialized and
/// bundle hashes) and parsed DAG, and each run's row. A claim of a wide fan-out is dozens of
/// tries of one run; each reading for itself made the database the bottleneck. The first
/// try to ask reads, the others wait for its answer; a read that fails is not kept, so the
/// next try reads again.
#[derive(Debug, Default)]
struct ClaimShared {
    versions: HashMap<String, OnceCell<Option<DagVersion>>>,
    dags: HashMap<String, OnceCell<Arc<Dag>>>,
    runs: HashMap<(String, String), OnceCell<Option<DagRunRow>>>,
}

impl ClaimShared {
    fn of(claimed: &[ClaimedTi]) -> Self {
        let mut shared = ClaimShared::default();
        for ti in claimed {
            shared.versions.entry(ti.key.dag_id.clone()).or_default();
            shared.dags.entry(ti.key.dag_id.clone()).or_default();
            shared
                .runs
                .entry((ti.key.dag_id.clone(), ti.key.run_id.clone()))
                .or_default();
        }
        shared
    }
}

/// How often a running try's new log lines are written (live tail granularity). Lines of a try
/// that ends sooner go to the store with its outcome, in the same commit.
const LOG_FLUSH_INTERVAL: StdDuration = StdDuration::from_secs(1);

/// Buffers a try's log lines and writes them every [`LOG_FLUSH_INTERVAL`]; returns the lines
/// not yet written when the try's output ends.
async fn forward_logs(
    store: Store,
    key: TiKey,
    try_number: i64,
    mut rx: mpsc::Receiver<LogLine>,
) -> Vec<flow_store::LogLine> {
    let mut buffer: Vec<flow_store::LogLine> = Vec::new();
    let mut flush = tokio::time::interval(LOG_FLUSH_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.tick().await;
    loop {
        tokio::select! {
            line = rx.recv() => match line {
                Some(line) => buffer.push(to_store_line(line)),
                None => return buffer,
            },
            _ = flush.tick() => {
                if buffer.is_empty() {
                    continue;
                }
                match store.log_append(&key, try_number, &buffer).await {
                    Ok(()) => buffer.clear(),
                    // Kept and retried at the next tick or with the outcome.
                    Err(e) => warn!(error = %e, "could not store log lines"),
                }
            }
        }
    }
}

/// Writes finished tries to the store, as many per transaction as have piled up: under load
/// one commit reports many tries. Retries while the database is unreachable, since an outcome
/// must not be lost.
async fn report_outcomes(store: Store, mut rx: mpsc::Receiver<TiFinish>, unwritten: Unwritten) {
    let mut batch: Vec<TiFinish> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let mut backoff = StdDuration::from_millis(100);
        loop {
            match store.ti_finish_many(&batch, Utc::now()).await {
                Ok(_) => {
                    if let Ok(mut unwritten) = unwritten.lock() {
                        for f in &batch {
                            unwritten.remove(&(f.key.clone(), f.try_number));
                        }
                    }
                    break;
                }
                Err(e) => {
                    warn!(error = %e, tries = batch.len(), "could not record outcomes; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(StdDuration::from_secs(5));
                }
            }
        }
        batch.clear();
    }
}

fn to_store_line(l: LogLine) -> flow_store::LogLine {
    flow_store::LogLine {
        at: l.at,
        stream: l.stream.as_str().to_owned(),
        line: l.text,
    }
}

fn system_line(text: impl Into<String>) -> LogLine {
    LogLine {
        at: Utc::now(),
        stream: crate::Stream::System,
        text: text.into(),
    }
}

impl Job {
    /// The run's DAG from the worker's cache, re-read only when its hash changed. The tries
    /// of one claim share one read: a claim often holds several tries of one DAG.
    async fn dag(&self, dag_id: &str) -> Result<Arc<Dag>, ExecutorError> {
        match self.shared.as_ref().and_then(|s| s.dags.get(dag_id)) {
            Some(cell) => cell
                .get_or_try_init(|| self.load_dag(dag_id))
                .await
                .cloned(),
            None => self.load_dag(dag_id).await,
        }
    }

    /// The DAG's serialized hash and bundle hash, read once per claim.
    async fn version(&self, dag_id: &str) -> Result<DagVersion, ExecutorError> {
        let read = || self.store.serialized_dag_version(dag_id);
        let version = match self.shared.as_ref().and_then(|s| s.versions.get(dag_id)) {
            Some(cell) => cell.get_or_try_init(read).await?.clone(),
            None => read().await?,
        };
        version.ok_or_else(|| ExecutorError::task(format!("dag `{dag_id}` is not in the database")))
    }

    async fn load_dag(&self, dag_id: &str) -> Result<Arc<Dag>, ExecutorError> {
        let (hash, _) = self.version(dag_id).await?;
        if let Ok(cache) = self.dags.lock()
            && let Some((h, dag)) = cache.get(dag_id)
            && *h == hash
        {
            return Ok(dag.clone());
        }
        let (data, hash) = self
            .store
            .serialized_dag_get(dag_id)
            .await?
            .ok_or_else(|| ExecutorError::task(format!("dag `{dag_id}` is not in the database")))?;
        let dag = Arc::new(
            Dag::from_json(&data)
                .map_err(|e| ExecutorError::task(format!("serialized dag: {e}")))?,
        );
        if let Ok(mut cache) = self.dags.lock() {
            cache.insert(dag_id.to_owned(), (hash, dag.clone()));
        }
        Ok(dag)
    }

    /// This worker's copy of the DAG's bundle (the dags folder's files as the database holds
    /// them), fetched once per bundle hash and kept under `dir/<hash>`. A DAG without a
    /// bundle runs against the configured dags folder.
    async fn bundle(&self, dir: &std::path::Path, dag_id: &str) -> Result<PathBuf, ExecutorError> {
        let Some(hash) = self.version(dag_id).await?.1 else {
            return Ok(self.config.dags_folder.clone());
        };
        if hash.is_empty() || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ExecutorError::task(format!(
                "dag `{dag_id}` names a malformed bundle `{hash}`"
            )));
        }
        let target = dir.join(&hash);
        if target.is_dir() {
            return Ok(target);
        }
        // One fetch per bundle at a time: the tries of a claim usually share one.
        let _one = self.bundles.lock().await;
        if target.is_dir() {
            return Ok(target);
        }
        let files = self.store.bundle_files(&hash).await?;
        if files.is_empty() {
            return Err(ExecutorError::task(format!(
                "the bundle of dag `{dag_id}` is not in the database (replaced meanwhile?)"
            )));
        }
        let written = target.clone();
        tokio::task::spawn_blocking(move || crate::bundle::write(&written, &files))
            .await
            .map_err(|e| ExecutorError::task(format!("writing the DAG bundle: {e}")))?
            .map_err(|e| ExecutorError::task(format!("writing the DAG bundle: {e}")))?;
        info!(dag_id, bundle = %hash, "fetched the DAG bundle");
        Ok(target)
    }

    /// The variables templates see (the database's, overridden by this worker's environment),
    /// and the values of the sensitive ones.
    async fn fetch_variables(
        &self,
    ) -> Result<(HashMap<String, String>, Vec<String>), ExecutorError> {
        let cipher = self.config.connections.as_ref().map(|c| &c.cipher);
        let stored = self
            .store
            .variable_list(cipher)
            .await
            .map_err(|e| match e {
                // A variable that cannot be decrypted is the task's problem, not an outage.
                flow_store::StoreError::Invalid(message) => ExecutorError::task(message),
                other => ExecutorError::from(other),
            })?;
        let secrets = stored
            .iter()
            .filter(|v| v.is_sensitive())
            .map(|v| v.value.clone())
            .collect();
        let variables = crate::variables_with_env(
            stored.into_iter().map(|v| (v.key, v.value)),
            std::env::vars(),
        );
        Ok((variables, secrets))
    }

    /// The run's XComs, for templates and Python callables that pull them.
    async fn fetch_xcoms(&self, key: &TiKey) -> Result<Arc<XcomMap>, ExecutorError> {
        let mut xcoms = XcomMap::new();
        for x in self
            .store
            .xcom_list_for_run(&key.dag_id, &key.run_id)
            .await?
        {
            xcoms.insert(x.task_id, x.key, x.map_index, x.value);
        }
        Ok(Arc::new(xcoms))
    }

    /// A try's context, with the run's XComs not fetched yet (see [`XcomMap::unfetched`]).
    fn context(
        &self,
        ti: &ClaimedTi,
        dag: &Dag,
        task: &Task,
        run: &DagRunRow,
        dags_folder: &std::path::Path,
    ) -> Result<RunContext, ExecutorError> {
        let run = TryOf {
            run_id: ti.key.run_id.clone(),
            run_type: run.run_type.as_str().to_owned(),
            logical_date: run.logical_date,
            data_interval_start: run.data_interval_start,
            data_interval_end: run.data_interval_end,
            run_after: run.run_after,
            run_start_date: run.start_date,
            conf: run.conf.clone(),
            map_index: ti.key.map_index,
            try_number: u32::try_from(ti.try_number).unwrap_or(1),
            max_tries: u32::try_from(ti.max_tries).unwrap_or(0),
        };
        RunContext::new(dag, task, run, dags_folder, XcomMap::unfetched())
            .map_err(|e| ExecutorError::task(e.to_string()))
    }

    /// Runs one claimed try to its end and reports the outcome. Returns the next try when the
    /// task instance was cleared while running (`restarting`): the worker runs it again.
    async fn execute(self, ti: ClaimedTi, cancel: watch::Receiver<bool>) -> Option<ClaimedTi> {
        let (log_tx, log_rx) = mpsc::channel::<LogLine>(1024);
        let forwarder = tokio::spawn(forward_logs(
            self.store.clone(),
            ti.key.clone(),
            ti.try_number,
            log_rx,
        ));
        let _ = log_tx
            .send(system_line(format!(
                "try {} of {} on {} (worker {})",
                ti.try_number,
                ti.max_tries + 1,
                self.config.hostname,
                self.config.worker_id
            )))
            .await;
        let Some(prepared) = self.prepare_patiently(&ti, &cancel, &log_tx).await else {
            // Stopped (cleared, marked, rescued) while the database was away: nothing to
            // report, and the try was never charged.
            drop(log_tx);
            let logs = forwarder.await.unwrap_or_default();
            if let Err(e) = self.store.log_append(&ti.key, ti.try_number, &logs).await {
                warn!(error = %e, "could not store log lines");
            }
            return None;
        };
        let mut rendered_map_index = None;
        let mut skip = Vec::new();
        let mut pushed: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
        let mut python_outlets: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
        let (outcome, task, rendered_fields) = match prepared {
            Err(reason) => {
                let _ = log_tx
                    .send(system_line(format!("cannot start: {reason}")))
                    .await;
                (Outcome::Failed { reason }, None, None)
            }
            Ok(Prepared {
                dag,
                task,
                spec,
                mut ctx,
            }) => {
                let fields = rendered_fields(&spec.rendered, &spec.masker);
                let added = spec.context_out.clone();
                pushed = spec.xcom_out.clone();
                python_outlets = spec.outlet_events.clone();
                let on_execute = flow_store::new_callbacks(
                    &task.callbacks,
                    flow_dag::callbacks::CallbackEvent::OnExecute,
                    "running",
                    None,
                );
                if !on_execute.is_empty() {
                    let target = flow_store::CallbackTarget {
                        dag_id: ti.key.dag_id.clone(),
                        run_id: ti.key.run_id.clone(),
                        task_id: Some(ti.key.task_id.clone()),
                        map_index: ti.key.map_index,
                        try_number: ti.try_number,
                    };
                    if let Err(e) = self
                        .store
                        .callback_enqueue(&target, &on_execute, Utc::now())
                        .await
                    {
                        warn!(error = %e, "could not record the on_execute_callback");
                    }
                }
                let outcome = crate::run(spec, log_tx.clone(), cancel.clone()).await;
                let branched =
                    crate::operators::branch::after_run(&dag, &task, &ctx, outcome, Utc::now());
                if let Some(message) = branched.message {
                    let _ = log_tx.send(system_line(message)).await;
                }
                let mut outcome = branched.outcome;
                skip = branched.skip;
                if let Outcome::Success { xcom } = &outcome
                    && let Some(reason) = mapping_source_problem(
                        &dag,
                        &task,
                        xcom.as_ref(),
                        self.config.max_map_length,
                    )
                {
                    outcome = Outcome::Failed { reason };
                }
                if ctx.map_index >= 0 {
                    let added = added.lock().map(|a| a.clone()).unwrap_or_default();
                    let mut label = crate::render_map_index(&task, &ctx, &added);
                    if ctx.xcoms.was_wanted() {
                        match self.fetch_xcoms(&ti.key).await {
                            Ok(xcoms) => {
                                ctx.xcoms = xcoms;
                                label = crate::render_map_index(&task, &ctx, &added);
                            }
                            Err(e) => {
                                label = Some(Err(crate::RenderError {
                                    field: "map_index_template".to_owned(),
                                    message: format!("could not fetch the run's XComs: {e}"),
                                }));
                            }
                        }
                    }
                    match label {
                        None => {}
                        Some(Ok(label)) => rendered_map_index = Some(label),
                        // As Airflow: a label that does not render fails a try that
                        // succeeded; a failed try keeps its own error.
                        Some(Err(e)) => {
                            if let Outcome::Success { .. } = outcome {
                                outcome = Outcome::Failed {
                                    reason: e.to_string(),
                                };
                            }
                        }
                    }
                }
                (outcome, Some(task), fields)
            }
        };
        let lost = *cancel.borrow();
        let summary = match &outcome {
            Outcome::Success { .. } => "success".to_owned(),
            Outcome::Skipped { reason } => format!("skipped: {reason}"),
            Outcome::Failed { reason } => format!("failed: {reason}"),
            Outcome::TimedOut => {
                "failed: execution_timeout exceeded; process group killed".to_owned()
            }
            Outcome::Cancelled => {
                "stopped: the task instance was cleared, marked or rescued elsewhere".to_owned()
            }
            Outcome::FailedNoRetry { reason } => format!("failed: {reason}"),
            Outcome::Reschedule { at, .. } => {
                format!("up_for_reschedule until {}", at.to_rfc3339())
            }
            Outcome::Defer { kind, .. } => format!("deferred ({kind})"),
        };
        let _ = log_tx
            .send(system_line(format!(
                "try {} ended: {summary}",
                ti.try_number
            )))
            .await;
        drop(log_tx);
        let logs = forwarder.await.unwrap_or_default();
        if lost || matches!(outcome, Outcome::Cancelled) {
            // Someone else owns this task instance now: keep the log, report nothing.
            if let Err(e) = self.store.log_append(&ti.key, ti.try_number, &logs).await {
                warn!(error = %e, "could not store log lines");
            }
            return match self
                .store
                .ti_restart(&ti.key, &self.config.worker_id, Utc::now())
                .await
            {
                Ok(next) => next,
                Err(e) => {
                    warn!(error = %e, "could not restart a cleared task instance");
                    None
                }
            };
        }
        let now = Utc::now();
        if let Outcome::Reschedule { .. } | Outcome::Defer { .. } = &outcome {
            self.hand_off(&ti, outcome, &logs, now).await;
            return None;
        }
        let (state, xcom, reason, next_retry_at) = match outcome {
            Outcome::Success { xcom } => (S::Success, xcom, None, None),
            Outcome::FailedNoRetry { reason } => (S::Failed, None, Some(reason), None),
            Outcome::Reschedule { .. } | Outcome::Defer { .. } => return None,
            Outcome::Skipped { reason } => (S::Skipped, None, Some(reason), None),
            Outcome::Failed { reason } => self.failure(&ti, task.as_ref(), reason, now),
            Outcome::TimedOut => {
                self.failure(&ti, task.as_ref(), "execution_timeout exceeded".into(), now)
            }
            Outcome::Cancelled => return None,
        };
        let pushed = pushed.lock().map(|p| p.clone()).unwrap_or_default();
        let asset_events = match (&task, state) {
            (Some(task), S::Success) if !task.outlets.is_empty() => {
                let python = python_outlets.lock().ok().and_then(|p| p.clone());
                crate::assets::outlet_events(task, xcom.as_ref(), &pushed, python.as_ref())
            }
            _ => Vec::new(),
        };
        // A try that could not start (a template, a missing connection) still fires the
        // task's callbacks: look the task up again.
        let task = match task {
            Some(t) => Some(t),
            None => self
                .dag(&ti.key.dag_id)
                .await
                .ok()
                .and_then(|d| d.task(&ti.key.task_id).cloned()),
        };
        let callbacks = match (&task, flow_store::event_for_outcome(state)) {
            (Some(task), Some(event)) => {
                flow_store::new_callbacks(&task.callbacks, event, state.as_str(), reason.as_deref())
            }
            _ => Vec::new(),
        };
        let finish = TiFinish {
            key: ti.key.clone(),
            try_number: ti.try_number,
            worker_id: Some(self.config.worker_id.clone()),
            state,
            reason,
            next_retry_at,
            xcom,
            rendered_fields,
            rendered_map_index,
            logs,
            skip: if state == S::Success {
                skip
            } else {
                Vec::new()
            },
            xcoms: pushed,
            asset_events,
            callbacks,
        };
        let reported = (finish.key.clone(), finish.try_number);
        if let Ok(mut unwritten) = self.unwritten.lock() {
            unwritten.insert(reported);
        }
        if let Some(reports) = &self.reports
            && reports.send(finish).await.is_err()
        {
            warn!(task_id = %ti.key.task_id, "outcome reporter is gone; the scheduler will treat the try as a zombie");
        }
        None
    }

    /// A sensor frees its slot: up_for_reschedule or deferred, with the try's log so far.
    async fn hand_off(
        &self,
        ti: &ClaimedTi,
        outcome: Outcome,
        logs: &[flow_store::LogLine],
        now: DateTime<Utc>,
    ) {
        if let Err(e) = self.store.log_append(&ti.key, ti.try_number, logs).await {
            warn!(error = %e, "could not store log lines");
        }
        let worker = &self.config.worker_id;
        let done = match outcome {
            Outcome::Reschedule { at, started_at } => {
                self.store
                    .ti_reschedule(&ti.key, ti.try_number, worker, at, started_at, now)
                    .await
            }
            Outcome::Defer {
                kind,
                kwargs,
                timeout_at,
            } => {
                let trigger = flow_store::NewTrigger {
                    classpath: kind,
                    kwargs,
                    timeout_at,
                };
                self.store
                    .ti_defer(&ti.key, ti.try_number, worker, &trigger, now)
                    .await
            }
            _ => return,
        };
        match done {
            Ok(true) => {}
            Ok(false) => {
                info!(task_id = %ti.key.task_id, "task instance changed meanwhile; hand-off dropped")
            }
            Err(e) => {
                warn!(error = %e, task_id = %ti.key.task_id, "could not hand off; the try becomes a zombie and is retried")
            }
        }
    }

    fn failure(
        &self,
        ti: &ClaimedTi,
        task: Option<&Task>,
        reason: String,
        now: DateTime<Utc>,
    ) -> (
        S,
        Option<serde_json::Value>,
        Option<String>,
        Option<DateTime<Utc>>,
    ) {
        match task {
            Some(task) => {
                let (state, at) = task.after_failure(ti.try_number, ti.max_tries, now);
                (state, None, Some(reason), at)
            }
            // The task left the DAG: nothing to retry.
            None => (S::Failed, None, Some(reason), None),
        }
    }

    /// [`Job::prepare`], waiting out a database that is unreachable or busy: that is the
    /// platform's problem, not the task's, so it never costs the task a try. The row stays
    /// ours meanwhile (the worker loop keeps heartbeating); if someone else takes it over (a
    /// clear, a mark, a zombie rescue), this gives up and returns `None`. A problem with the
    /// task itself fails the try at once (`Some(Err)`).
    async fn prepare_patiently(
        &self,
        ti: &ClaimedTi,
        cancel: &watch::Receiver<bool>,
        log_tx: &mpsc::Sender<LogLine>,
    ) -> Option<Result<Prepared, String>> {
        let mut cancel = cancel.clone();
        let mut backoff = StdDuration::from_millis(100);
        let mut told = false;
        loop {
            match self.prepare(ti).await {
                Ok(prepared) => return Some(Ok(prepared)),
                Err(ExecutorError::Store(e)) if e.is_transient() => {
                    if !told {
                        told = true;
                        warn!(task_id = %ti.key.task_id, run_id = %ti.key.run_id, error = %e, "database unavailable while preparing a try; retrying");
                        let _ = log_tx
                            .send(system_line(format!(
                                "the database is unavailable ({e}); waiting for it before starting the try"
                            )))
                            .await;
                    }
                }
                Err(e) => return Some(Err(e.to_string())),
            }
            if *cancel.borrow() {
                return None;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = cancel.changed() => {}
            }
            if *cancel.borrow() {
                return None;
            }
            backoff = (backoff * 2).min(StdDuration::from_secs(10));
        }
    }

    /// Everything a try needs before it starts: the DAG, the run, the rendered task, its
    /// connection. A store error here is the database's ([`ExecutorError::Store`]); anything
    /// else is the task's ([`ExecutorError::Task`]).
    async fn prepare(&self, ti: &ClaimedTi) -> Result<Prepared, ExecutorError> {
        #[cfg(test)]
        tests::inject_prepare_failure(&ti.key.dag_id)?;
        let dag = self.dag(&ti.key.dag_id).await?;
        let task = dag.task(&ti.key.task_id).cloned().ok_or_else(|| {
            ExecutorError::task(format!(
                "task `{}` is no longer in dag `{}`",
                ti.key.task_id, ti.key.dag_id
            ))
        })?;
        let read = || self.store.dag_run_get(&ti.key.dag_id, &ti.key.run_id);
        let run_key = (ti.key.dag_id.clone(), ti.key.run_id.clone());
        let run = match self.shared.as_ref().and_then(|s| s.runs.get(&run_key)) {
            Some(cell) => cell.get_or_try_init(read).await?.clone(),
            None => read().await?,
        }
        .ok_or_else(|| ExecutorError::task(format!("dag run `{}` is gone", ti.key.run_id)))?;
        let dags_folder = match &self.config.bundle_dir {
            Some(dir) => self.bundle(dir, &ti.key.dag_id).await?,
            None => self.config.dags_folder.clone(),
        };
        let mut ctx = self.context(ti, &dag, &task, &run, &dags_folder)?;
        if run.run_type == flow_model::DagRunType::AssetTriggered {
            let events = self
                .store
                .asset_events_for_run(&ti.key.dag_id, &ti.key.run_id)
                .await?;
            ctx.triggering_asset_events = crate::assets::triggering_events_json(&events);
        }
        let wanted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        ctx.variables_wanted = Some(wanted.clone());
        let conns_wanted = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        ctx.connections_wanted = Some(conns_wanted.clone());
        // Render first without the run's XComs, variables and connections; fetch what a
        // template or an argument looked for (everything, when a render failed: an error
        // early in a template hides what the rest would have asked for) or what a Python
        // callable may read while it runs, then render again, until nothing new is wanted.
        let mut rendered = crate::render_task(&task, &ctx);
        let (mut have_xcoms, mut have_variables) = (false, false);
        let mut have_conns = std::collections::BTreeSet::new();
        // Values of variables marked secret by their description (their keys say nothing)
        // and connections' secrets: masked in the log like the others.
        let mut variable_secrets = Vec::new();
        let mut conn_secrets = Vec::new();
        // Whether the last render asked for nothing it did not have: then it is the answer
        // (lookups of what was fetched give the same result with or without the tracking).
        let mut settled = false;
        for _ in 0..3 {
            let failed = rendered.is_err();
            let python = rendered.as_ref().is_ok_and(RenderedTask::runs_python);
            let want_xcoms = !have_xcoms && (ctx.xcoms.was_wanted() || python || failed);
            let want_variables = !have_variables
                && (wanted.load(std::sync::atomic::Ordering::Relaxed) || python || failed);
            let new_conns: Vec<String> = conns_wanted
                .lock()
                .map(|w| {
                    w.iter()
                        .filter(|c| !have_conns.contains(*c))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if !want_xcoms && !want_variables && new_conns.is_empty() {
                settled = true;
                break;
            }
            if want_xcoms {
                ctx.xcoms = self.fetch_xcoms(&ti.key).await?;
                have_xcoms = true;
            }
            if want_variables {
                (ctx.variables, variable_secrets) = self.fetch_variables().await?;
                have_variables = true;
            }
            // Connections templates name (`conn.my_db.host`): resolved as the operators' own
            // are, environment overrides first.
            for conn_id in new_conns {
                let conn = self.connection(&conn_id).await?;
                conn_secrets.extend(conn.secrets());
                ctx.connections.insert(conn_id.clone(), conn);
                have_conns.insert(conn_id);
            }
            rendered = crate::render_task(&task, &ctx);
        }
        ctx.variables_wanted = None;
        ctx.connections_wanted = None;
        if !settled {
            // Still wanting after three rounds: render once more without the tracking, so
            // that whatever is missing fails with its own message.
            rendered = crate::render_task(&task, &ctx);
        }
        let rendered = rendered.map_err(|e| ExecutorError::task(e.to_string()))?;
        let conn = match rendered.conn_id() {
            Some(id) => Some(self.connection(id).await?),
            None => None,
        };
        let mut spec = RunSpec::new(&task, rendered, &ctx);
        if !variable_secrets.is_empty() || !conn_secrets.is_empty() {
            spec.masker = spec
                .masker
                .with(variable_secrets.into_iter().chain(conn_secrets));
        }
        spec.python = self.config.python.clone();
        spec.max_xcom_size = self.config.max_xcom_size;
        spec.store = Some(self.store.clone());
        spec.smtp = self.config.smtp.clone();
        spec.resume = resume(ti).map_err(ExecutorError::Task)?;
        if let Some(conn) = conn {
            spec = spec.with_connection(conn).map_err(ExecutorError::task)?;
        }
        Ok(Prepared {
            dag,
            task,
            spec,
            ctx,
        })
    }

    async fn connection(&self, conn_id: &str) -> Result<flow_model::Connection, ExecutorError> {
        let Some(source) = &self.config.connections else {
            return Err(ExecutorError::task(format!(
                "connection `{conn_id}`: this worker has no connection source"
            )));
        };
        self.store
            .connection_resolve(conn_id, source)
            .await?
            .ok_or_else(|| {
                ExecutorError::task(format!(
                    "connection `{conn_id}` not found: add it with `flow connections add {conn_id} ...` \
                     or set FLOW_CONN_{}",
                    conn_id.to_ascii_uppercase()
                ))
            })
    }
}

/// A try ready to run: its DAG and task, what to run, and the context it was rendered with.
struct Prepared {
    dag: Arc<Dag>,
    task: Task,
    spec: RunSpec,
    ctx: RunContext,
}

/// Why a successful try's return value cannot feed the mapped tasks that expand over it
/// (Airflow fails the pushing task, so that the mapped task is upstream_failed rather than
/// failing obscurely later): nothing pushed, a value that is not a list or a mapping, or more
/// elements than `max_map_length`. A mapped task's instances each push one element, so they
/// are not checked.
fn mapping_source_problem(
    dag: &Dag,
    task: &Task,
    xcom: Option<&serde_json::Value>,
    max_map_length: usize,
) -> Option<String> {
    if task.is_mapped() {
        return None;
    }
    let feeds_mapping = dag.tasks.iter().any(|t| {
        t.mapping
            .as_ref()
            .is_some_and(|m| m.sources().any(|s| *s == task.task_id))
    });
    if !feeds_mapping {
        return None;
    }
    let length = match flow_dag::mapped_length(xcom) {
        Ok(length) => length,
        Err(problem) => return Some(problem),
    };
    (length > max_map_length).then(|| {
        format!(
            "UnmappableXComLengthPushed: pushed value is too large to map as a downstream's \
             dependency ({length} values; max_map_length is {max_map_length})"
        )
    })
}

/// What a claimed try continues, from its `next_method` / `next_kwargs`.
fn resume(ti: &ClaimedTi) -> Result<Option<crate::Resume>, String> {
    let Some(method) = ti.next_method.as_deref() else {
        return Ok(None);
    };
    let kwargs: serde_json::Value = match ti.next_kwargs.as_deref() {
        Some(text) => serde_json::from_str(text).map_err(|e| format!("next_kwargs: {e}"))?,
        None => serde_json::Value::Null,
    };
    Ok(Some(match method {
        flow_store::NEXT_POKE => crate::Resume::Poke {
            started_at: kwargs
                .get("started_at")
                .and_then(|v| v.as_str())
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map_or_else(Utc::now, |t| t.with_timezone(&Utc)),
        },
        flow_store::NEXT_FAIL => {
            let error = kwargs
                .get("error")
                .and_then(|v| v.as_str())
                .unwrap_or("the trigger failed")
                .to_owned();
            if kwargs.get("timeout").and_then(serde_json::Value::as_bool) == Some(true) {
                crate::Resume::TimedOut(error)
            } else {
                crate::Resume::Failed(error)
            }
        }
        _ => crate::Resume::Event(kwargs),
    }))
}

/// Rendered template fields as JSON, for the UI's rendered-template view.
/// Secrets (connection passwords, sensitive variables and env values) are masked, as in logs.
fn rendered_fields(rendered: &RenderedTask, masker: &crate::Masker) -> Option<String> {
    let fields: serde_json::Map<String, serde_json::Value> = rendered
        .fields()
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(masker.mask(&v).into_owned())))
        .collect();
    serde_json::to_string(&fields).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::collections::HashMap;
    use std::sync::Mutex;

    use chrono::Utc;
    use flow_dag::LoadOptions;
    use flow_model::{Actor, TaskInstanceState as S};
    use flow_store::testing::TestDb;
    use flow_store::{DagRecord, FileSync, StateChange, StoreError, TiKey, TriggerRequest};
    use tokio::sync::watch;

    use super::*;

    /// dag_id -> transient database failures `prepare` still reports before it works.
    static PREPARE_FAILURES: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

    /// A failure point: the database "fails" while a try of `dag_id` is being prepared.
    pub(super) fn inject_prepare_failure(dag_id: &str) -> Result<(), ExecutorError> {
        let mut failures = PREPARE_FAILURES.lock().unwrap();
        if let Some(left) = failures.get_or_insert_with(HashMap::new).get_mut(dag_id)
            && *left > 0
        {
            *left -= 1;
            return Err(ExecutorError::Store(StoreError::Database(
                sqlx::Error::PoolTimedOut,
            )));
        }
        Ok(())
    }

    /// The database goes away three times while the worker prepares a try: the worker waits
    /// it out and runs the try, which succeeds as try 1 of 1. Before the error enum, the
    /// store error failed the try (and used up a retry).
    #[tokio::test]
    async fn a_database_outage_while_preparing_costs_no_try() {
        let db = TestDb::sqlite().await.unwrap();
        let store = db.store.clone();
        let dir = std::env::temp_dir().join(format!("flow-worker-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.yaml");
        std::fs::write(
            &path,
            "outage:\n  tasks:\n    t: {operator: bash, bash_command: 'echo ran', retries: 0}\n",
        )
        .unwrap();
        let dag = flow_dag::load_file(&path, &dir, &LoadOptions::default())
            .dags
            .remove(0);
        let data = dag.to_json().unwrap();
        store
            .dag_sync_file(
                &FileSync {
                    fileloc: path.display().to_string(),
                    relative_fileloc: "d.yaml".into(),
                    source: String::new(),
                    source_hash: "s".into(),
                    dags: vec![DagRecord {
                        dag_id: "outage".into(),
                        owners: "airflow".into(),
                        description: None,
                        schedule: "None".into(),
                        timetable_summary: "None".into(),
                        tags: Vec::new(),
                        max_active_runs: 16,
                        max_active_tasks: 16,
                        paused_on_creation: false,
                        data,
                        dag_hash: "h".into(),
                        assets: Vec::new(),
                    }],
                    import_error: None,
                },
                Utc::now(),
            )
            .await
            .unwrap();
        let run = store
            .dag_run_trigger(
                &dag,
                "h",
                &TriggerRequest::manual(serde_json::json!({})),
                Utc::now(),
            )
            .await
            .unwrap();
        let key = TiKey::new("outage", &run.run_id, "t", -1);
        let change = |from, to| StateChange {
            key: key.clone(),
            from: vec![from],
            to,
            reason: None,
            next_retry_at: None,
        };
        store
            .ti_set_states(
                &[
                    change(S::NoStatus, S::Scheduled),
                    change(S::Scheduled, S::Queued),
                ],
                Actor::Scheduler,
                Utc::now(),
            )
            .await
            .unwrap();
        PREPARE_FAILURES
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert("outage".into(), 3);

        let (stop, stopped) = watch::channel(false);
        let worker = Worker::new(
            store.clone(),
            WorkerConfig {
                dags_folder: dir.clone(),
                ..WorkerConfig::default()
            },
            WorkerWakeups::default(),
        );
        let handle = tokio::spawn(worker.run(stopped));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let ti = loop {
            let ti = store.ti_get(&key).await.unwrap().unwrap();
            if ti.state.is_finished() {
                break ti;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the try never ended: {ti:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        stop.send(true).unwrap();
        handle.await.unwrap();
        assert_eq!(ti.state, S::Success);
        assert_eq!(ti.try_number, 1, "the outage cost no try");
        let log: Vec<String> = store
            .log_read(&key, 1, 0, 100)
            .await
            .unwrap()
            .lines
            .into_iter()
            .map(|l| l.line)
            .collect();
        assert!(
            log.iter()
                .any(|l| l.contains("the database is unavailable")),
            "{log:?}"
        );
        assert!(log.iter().any(|l| l == "ran"), "{log:?}");
        let _ = std::fs::remove_dir_all(&dir);
        db.drop_db().await.unwrap();
    }
}
