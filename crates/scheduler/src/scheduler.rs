//! The scheduling loop.
//!
//! Each pass: sync the dags folder when due, bring the view of active runs up to date with
//! what changed (`view`), create due scheduled runs, start queued runs within
//! `max_active_runs`, evaluate the runs that changed or reached a deadline (`decide`), queue
//! scheduled task instances within the limits, rescue zombies. Then it sleeps until the next deadline (a run
//! becoming due, a retry delay ending, the next folder check) or until woken: a worker that
//! finishes a task wakes it at once, so no poll interval sits between two tasks.
//!
//! The database is the truth. The loop keeps only caches (parsed DAGs by hash, next-run
//! maths, the active runs), all rebuilt from the store after a restart or a failed pass.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use flow_dag::Dag;
use flow_dag::callbacks::CallbackEvent;
use flow_dag::schedule::{DataInterval, TimeRestriction};
use flow_model::{Actor, DagRunState, DagRunType, TaskInstanceState as S};
use flow_store::{
    DagRow, DagRunRow, NextRun, PoolUsage, QueueRequest, Refusal, RunKey, RunStart, StateChange,
    Store, TiKey, TiRow, TriggerError, TriggerRequest,
};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::SchedulerError;
use crate::decide::{MapLengths, PreviousRun, decide_run};
use crate::dir_watch::{self, DirWatch};
use crate::processor::DagProcessor;
use crate::view::ActiveView;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub dags_folder: PathBuf,
    /// Task instances queued or running at once, across everything (Airflow's `parallelism`).
    pub parallelism: i64,
    /// How often the dags folder is scanned for changes where it cannot be watched, and how
    /// often DAG rows are checked for changes made by other processes.
    pub dag_dir_check_interval: StdDuration,
    /// A running task instance whose heartbeat is older than this is a zombie.
    pub zombie_threshold: StdDuration,
    /// Longest sleep between passes when nothing wakes the loop (picks up changes made by
    /// other processes that cannot notify, e.g. on SQLite).
    pub max_sleep: StdDuration,
    pub dags_are_paused_at_creation: bool,
    /// Whether this scheduler parses the dags folder.
    pub process_dags: bool,
    /// A queued task instance no worker claims within this long is queued again (Airflow's
    /// `task_queued_timeout`), and failed after `num_stuck_in_queued_retries` such requeues.
    pub task_queued_timeout: StdDuration,
    pub num_stuck_in_queued_retries: i64,
    /// This host's name, recorded with the scheduler's heartbeat.
    pub hostname: String,
    /// Airflow's `[core] max_map_length`: the most instances a mapped task may have.
    pub max_map_length: usize,
    /// Whether DAG files may be symbolic links to files outside the dags folder.
    pub allow_external_dag_links: bool,
    /// Old runs and logs deleted in the background (`retention.rs`).
    pub retention: crate::retention::RetentionConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            dags_folder: PathBuf::from("dags"),
            parallelism: 32,
            dag_dir_check_interval: StdDuration::from_secs(1),
            zombie_threshold: StdDuration::from_secs(60),
            max_sleep: StdDuration::from_secs(1),
            dags_are_paused_at_creation: true,
            process_dags: true,
            task_queued_timeout: StdDuration::from_secs(600),
            num_stuck_in_queued_retries: 2,
            hostname: "localhost".to_owned(),
            max_map_length: flow_dag::dag::DEFAULT_MAX_MAP_LENGTH,
            allow_external_dag_links: false,
            retention: crate::retention::RetentionConfig::default(),
        }
    }
}

/// In-process wake-up hints between the scheduler and workers. They only shorten waits; the
/// loops also wake on their own, so a lost hint delays work and never loses it.
#[derive(Debug, Clone, Default)]
pub struct Wakeups {
    /// Something may need scheduling (a task finished, a run was triggered).
    pub scheduler: Arc<Notify>,
    /// Task instances were queued.
    pub workers: Arc<Notify>,
    /// A task deferred to a new trigger.
    pub triggerer: Arc<Notify>,
}

#[derive(Debug)]
pub struct Scheduler {
    store: Store,
    config: SchedulerConfig,
    wakeups: Wakeups,
    processor: DagProcessor,
    /// dag_id -> (hash, parsed DAG)
    dags: HashMap<String, (String, Arc<Dag>)>,
    dag_rows: HashMap<String, DagRow>,
    /// pool -> slots, refreshed with the DAG rows.
    pools: HashMap<String, i64>,
    /// The "non-existent pool" warnings last written, to write only changes.
    pool_warnings: Option<Vec<(String, String)>>,
    /// dag_id -> (dag hash, when its next scheduled run is due). Saves re-reading the latest
    /// run of every DAG on every pass; dropped when a run is created or the DAG changes.
    next_due: HashMap<String, (String, DateTime<Utc>)>,
    /// Changes in the dags folder, where the platform can report them.
    watch: Option<DirWatch>,
    last_dir_scan: Option<DateTime<Utc>>,
    last_dir_check: Option<DateTime<Utc>>,
    last_dag_refresh: Option<DateTime<Utc>>,
    /// [`Store::dag_version`] at the last refresh.
    dag_version: Option<i64>,
    last_zombie_check: Option<DateTime<Utc>>,
    /// This scheduler's row in `job`, once started.
    job_id: Option<i64>,
    /// Scheduled intervals found taken by another row (a backfill, a run with the same id):
    /// dag_id -> the latest such interval. The next run is computed after it, so that a
    /// conflicting row makes the DAG move on instead of retrying the same run forever.
    taken: HashMap<String, DataInterval>,
    /// Unreadable rows already reported, so that each is logged once.
    reported_corrupt: HashSet<(String, String)>,
    /// The queues live workers serve, read with the zombie check.
    served_queues: Option<HashSet<String>>,
    /// The active runs and their task instances, as of the last pass.
    view: ActiveView,
    /// dag_id -> (dag hash, not before): DAGs whose asset-triggered run could not be made,
    /// left alone for a while so that a bad DAG is not retried (and logged) every pass.
    asset_retry: HashMap<String, (String, DateTime<Utc>)>,
}

/// What one pass found out about when to run again.
#[derive(Debug, Default)]
struct PassOutcome {
    next_deadline: Option<DateTime<Utc>>,
    queued: usize,
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Scheduler {
    pub fn new(store: Store, config: SchedulerConfig, wakeups: Wakeups) -> Self {
        let processor = DagProcessor::new(
            store.clone(),
            config.dags_folder.clone(),
            config.dags_are_paused_at_creation,
        )
        .allow_external_links(config.allow_external_dag_links);
        let watch = if config.process_dags {
            dir_watch::start(&config.dags_folder, wakeups.scheduler.clone())
        } else {
            None
        };
        Scheduler {
            store,
            config,
            wakeups,
            processor,
            dags: HashMap::new(),
            dag_rows: HashMap::new(),
            pools: HashMap::new(),
            pool_warnings: None,
            next_due: HashMap::new(),
            watch,
            last_dir_scan: None,
            last_dir_check: None,
            last_dag_refresh: None,
            dag_version: None,
            last_zombie_check: None,
            job_id: None,
            taken: HashMap::new(),
            reported_corrupt: HashSet::new(),
            served_queues: None,
            view: ActiveView::default(),
            asset_retry: HashMap::new(),
        }
    }

    /// Runs until `shutdown` turns true. Store errors (the database going away) are logged
    /// and retried with backoff; they never end the loop.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = StdDuration::from_millis(100);
        info!(dags_folder = %self.config.dags_folder.display(), "scheduler started");
        crate::retention::spawn(self.store.clone(), self.config.retention, shutdown.clone());
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = Utc::now();
            let started = std::time::Instant::now();
            let result = self.pass(now).await;
            let metrics = flow_metrics::metrics();
            metrics.scheduler_heartbeat.inc();
            metrics
                .scheduler_pass_duration
                .observe(started.elapsed().as_secs_f64());
            debug!(
                elapsed_us = started.elapsed().as_micros() as u64,
                queued = result.as_ref().map_or(0, |o| o.queued),
                "scheduler pass"
            );
            let sleep = match result {
                Ok(outcome) => {
                    backoff = StdDuration::from_millis(100);
                    let until = outcome
                        .next_deadline
                        .map(|d| (d - Utc::now()).to_std().unwrap_or_default())
                        .unwrap_or(self.config.max_sleep);
                    until.min(self.config.max_sleep)
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "scheduler pass failed; retrying");
                    let wait = backoff;
                    // Capped low: a database back after an outage is noticed within seconds.
                    backoff = (backoff * 2).min(StdDuration::from_secs(5));
                    wait
                }
            };
            if sleep.is_zero() {
                continue;
            }
            tokio::select! {
                () = self.wakeups.scheduler.notified() => {}
                () = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => {}
            }
        }
        if let Some(id) = self.job_id
            && let Err(e) = self.store.job_end(id, Utc::now()).await
        {
            warn!(error = %e, "could not record the scheduler's end");
        }
        info!("scheduler stopped");
    }

    /// One scheduling pass at `now`. Public so that tests can drive the scheduler step by step.
    pub async fn pass(&mut self, now: DateTime<Utc>) -> Result<PassSummary, SchedulerError> {
        let outcome = self.pass_inner(now).await?;
        Ok(PassSummary {
            next_deadline: outcome.next_deadline,
            queued: outcome.queued,
        })
    }

    async fn pass_inner(&mut self, now: DateTime<Utc>) -> Result<PassOutcome, SchedulerError> {
        // Known before the first queueing decision; refreshed with the zombie check.
        if self.served_queues.is_none() {
            self.refresh_served_queues(now).await?;
        }
        let changed = self.scan_dags_folder(now).await?;
        // Re-read DAG rows when they changed (this process's parse, a pause from the CLI,
        // another scheduler's parse), told by one tiny query: an idle scheduler with a
        // thousand DAGs should cost next to nothing. A full re-read every minute anyway.
        let check_interval =
            Duration::from_std(self.config.dag_dir_check_interval).unwrap_or_default();
        let check_due = self
            .last_dir_check
            .is_none_or(|t| now - t >= check_interval);
        let mut dags_refreshed = false;
        if changed || check_due {
            let version = self.store.dag_version().await?;
            let refresh_due = self
                .last_dag_refresh
                .is_none_or(|t| now - t >= Duration::seconds(60));
            if changed || refresh_due || self.dag_version != Some(version) {
                self.refresh_dags().await?;
                self.last_dag_refresh = Some(now);
                self.dag_version = Some(version);
                dags_refreshed = true;
            }
            self.last_dir_check = Some(now);
        }
        let next_dir_check = [
            self.last_dir_check.map(|t| t + check_interval),
            self.last_dir_scan.map(|t| t + self.scan_interval()),
        ]
        .into_iter()
        .flatten()
        .min();

        // The view is out of `self` while the runs are scheduled; a pass that fails on the
        // way leaves it unsure of what was written, so the next one reads everything again.
        let mut view = std::mem::take(&mut self.view);
        let scheduled = self.schedule(&mut view, dags_refreshed, now).await;
        if scheduled.is_err() {
            view.invalidate();
        }
        self.view = view;
        let mut outcome = scheduled?;
        outcome.next_deadline = earliest(outcome.next_deadline, next_dir_check);

        let zombie_due = self
            .last_zombie_check
            .is_none_or(|t| now - t >= Duration::seconds(5));
        if zombie_due {
            self.rescue_zombies(now).await?;
            self.release_stuck_queued(now).await?;
            self.refresh_served_queues(now).await?;
            // Deferrals past their timeout resume to fail, with or without a triggerer.
            let expired = self
                .store
                .ti_expire_deferrals(Actor::Scheduler, now)
                .await?;
            if expired > 0 {
                info!(expired, "deferred task instances timed out");
            }
            self.heartbeat(now).await?;
            self.last_zombie_check = Some(now);
        }
        Ok(outcome)
    }

    /// The queues live workers serve (a worker is live if it heartbeat in the last 30 s).
    async fn refresh_served_queues(&mut self, now: DateTime<Utc>) -> Result<(), SchedulerError> {
        self.served_queues = Some(
            self.store
                .served_queues(now - Duration::seconds(30))
                .await?,
        );
        Ok(())
    }

    /// Creates due runs, starts queued ones, evaluates the runs that changed and queues what
    /// can run, with `view` brought up to date first.
    async fn schedule(
        &mut self,
        view: &mut ActiveView,
        dags_refreshed: bool,
        now: DateTime<Utc>,
    ) -> Result<PassOutcome, SchedulerError> {
        let mut outcome = PassOutcome::default();
        self.refresh_view(view, now).await?;
        if dags_refreshed {
            // A DAG's tasks may have changed: its running runs gain or lose task instances.
            view.mark_all();
        }
        let mut active_per_dag: HashMap<&str, i64> = HashMap::new();
        for (dag_id, _) in view.runs.keys() {
            *active_per_dag.entry(dag_id.as_str()).or_default() += 1;
        }
        let created_deadline = self.create_scheduled_runs(&active_per_dag, now).await?;
        drop(active_per_dag);
        outcome.next_deadline = earliest(outcome.next_deadline, created_deadline);
        let asset_runs = self.create_asset_runs(now).await?;
        if created_deadline == Some(now) || asset_runs {
            // New runs were created: read them.
            self.refresh_view(view, now).await?;
        }
        self.start_queued_runs(view, now).await?;
        let evaluation = self.evaluate_runs(view, now).await?;
        outcome.next_deadline = earliest(outcome.next_deadline, evaluation.deadline);

        // Decisions and queueing go to the database in one transaction: a task instance made
        // runnable by this pass is queued by the same commit.
        let candidates = self
            .queue_candidates(view, &evaluation.newly_scheduled)
            .await?;
        if !evaluation.changes.is_empty() || !candidates.is_empty() {
            let write_started = std::time::Instant::now();
            let written = self
                .store
                .ti_schedule_and_queue(
                    &evaluation.changes,
                    &candidates,
                    self.config.parallelism,
                    now,
                )
                .await?;
            outcome.queued = written.queued.len();
            debug!(
                changes = evaluation.changes.len(),
                candidates = candidates.len(),
                queued = outcome.queued,
                elapsed_us = write_started.elapsed().as_micros() as u64,
                "wrote task instance changes"
            );
        }
        let mut finished: Vec<flow_store::RunFinish> = Vec::new();
        let mut backfills_touched: Vec<i64> = Vec::new();
        for (run, state, reason) in evaluation.finished {
            if let Some(b) = run.backfill_id
                && !backfills_touched.contains(&b)
            {
                backfills_touched.push(b);
            }
            let event = match state {
                DagRunState::Success => Some(CallbackEvent::OnSuccess),
                DagRunState::Failed => Some(CallbackEvent::OnFailure),
                _ => None,
            };
            let callbacks = match (event, self.dags.get(&run.dag_id)) {
                (Some(e), Some((_, dag))) => {
                    flow_store::new_callbacks(&dag.callbacks, e, state.as_str(), reason.as_deref())
                }
                _ => Vec::new(),
            };
            finished.push(flow_store::RunFinish {
                dag_id: run.dag_id,
                run_id: run.run_id,
                state,
                reason,
                callbacks,
            });
        }
        let moved = self.store.dag_run_finish_many(&finished, now).await?;
        if !backfills_touched.is_empty() {
            self.store
                .backfill_complete_if_done(&backfills_touched, now)
                .await?;
        }
        for (r, moved) in finished.iter().zip(moved) {
            if moved {
                info!(dag_id = %r.dag_id, run_id = %r.run_id, state = %r.state, reason = r.reason.as_deref().unwrap_or(""), "dag run finished");
            }
        }
        Ok(outcome)
    }

    /// Reads what changed into `view`. A run of a DAG whose tasks depend on the previous run
    /// is evaluated again when another run of the DAG changed.
    async fn refresh_view(
        &mut self,
        view: &mut ActiveView,
        now: DateTime<Utc>,
    ) -> Result<(), SchedulerError> {
        let refresh = view.refresh(&self.store, now).await?;
        self.report_corrupt(&refresh.corrupt);
        if refresh.full {
            return Ok(());
        }
        let linked: HashSet<String> = refresh
            .touched
            .iter()
            .map(|(dag_id, _)| dag_id)
            .filter(|dag_id| {
                self.dags.get(dag_id.as_str()).is_some_and(|(_, dag)| {
                    dag.tasks
                        .iter()
                        .any(|t| t.depends_on_past || t.wait_for_downstream)
                })
            })
            .cloned()
            .collect();
        if !linked.is_empty() {
            view.mark_dags(&linked);
        }
        Ok(())
    }

    /// How often the dags folder is scanned: rarely while a watch reports its changes (a
    /// safety net for events a filesystem does not deliver), else every check interval.
    fn scan_interval(&self) -> Duration {
        if self.watch.as_ref().is_some_and(DirWatch::is_live) {
            return Duration::seconds(30);
        }
        Duration::from_std(self.config.dag_dir_check_interval).unwrap_or_default()
    }

    /// Syncs the dags folder into the store when the watch saw a change or a scan is due.
    /// Returns whether DAG rows changed.
    async fn scan_dags_folder(&mut self, now: DateTime<Utc>) -> Result<bool, SchedulerError> {
        if !self.config.process_dags {
            return Ok(false);
        }
        let dirty = self.watch.as_ref().is_some_and(DirWatch::take_dirty);
        let due = self
            .last_dir_scan
            .is_none_or(|t| now - t >= self.scan_interval());
        if !dirty && !due {
            return Ok(false);
        }
        if due {
            self.processor.resync_from_store().await?;
        }
        let report = self.processor.run_once(now).await?;
        self.processor.sync_bundle(report.files_written > 0).await?;
        self.last_dir_scan = Some(now);
        if report.files_written > 0 || report.dags_deactivated > 0 {
            debug!(?report, "dags folder synced");
            return Ok(true);
        }
        Ok(false)
    }

    /// Records that this scheduler is alive (the `job` row `/health` reads), starting the row
    /// on the first call.
    async fn heartbeat(&mut self, now: DateTime<Utc>) -> Result<(), SchedulerError> {
        match self.job_id {
            Some(id) => self.store.job_heartbeat(id, now).await?,
            None => {
                let host = &self.config.hostname;
                let job = flow_store::JobStart::this_process("SchedulerJob", host);
                self.job_id = Some(self.store.job_start(&job, now).await?);
            }
        }
        Ok(())
    }

    /// Logs each unreadable row's run once: the run is left alone until the row is fixed,
    /// and every other run goes on.
    fn report_corrupt(&mut self, rows: &[flow_store::CorruptRow]) {
        for r in rows {
            if self
                .reported_corrupt
                .insert((r.dag_id.clone(), r.run_id.clone()))
            {
                warn!(dag_id = %r.dag_id, run_id = %r.run_id, error = %r.error, "a row of this run cannot be read; the run is left alone until it is fixed");
            }
        }
    }

    /// Reloads DAG rows and re-reads serialized DAGs whose hash changed.
    async fn refresh_dags(&mut self) -> Result<(), SchedulerError> {
        let rows = self.store.dag_list().await?;
        self.dag_rows = rows.into_iter().map(|r| (r.dag_id.clone(), r)).collect();
        self.pools = self.store.pool_list().await?;
        let stale: Vec<String> = self
            .dag_rows
            .values()
            .filter(|r| {
                self.dags
                    .get(&r.dag_id)
                    .is_none_or(|(h, _)| *h != r.dag_hash)
            })
            .map(|r| r.dag_id.clone())
            .collect();
        for dag_id in stale {
            self.load_dag(&dag_id).await?;
        }
        self.sync_pool_warnings().await
    }

    /// Airflow's "non-existent pool" DAG warnings: each active DAG whose tasks name a pool
    /// that does not exist gets one (shown on the DAG list and in `dagWarnings`), and loses
    /// it once the pool is made or the task changed. Written only when the set changed.
    async fn sync_pool_warnings(&mut self) -> Result<(), SchedulerError> {
        let mut warnings: Vec<(String, String)> = Vec::new();
        for (dag_id, row) in &self.dag_rows {
            let Some((_, dag)) = self.dags.get(dag_id).filter(|_| row.is_active) else {
                continue;
            };
            let mut missing: Vec<&str> = dag
                .tasks
                .iter()
                .map(|t| t.pool.as_str())
                .filter(|p| !self.pools.contains_key(*p))
                .collect();
            if missing.is_empty() {
                continue;
            }
            missing.sort_unstable();
            missing.dedup();
            let list: Vec<String> = missing.iter().map(|p| format!("'{p}'")).collect();
            warnings.push((
                dag_id.clone(),
                format!(
                    "Dag '{dag_id}' references non-existent pools: [{}]",
                    list.join(", ")
                ),
            ));
        }
        warnings.sort();
        if self.pool_warnings.as_ref() == Some(&warnings) {
            return Ok(());
        }
        self.store
            .dag_warnings_sync(flow_store::WARNING_NONEXISTENT_POOL, &warnings, Utc::now())
            .await?;
        self.pool_warnings = Some(warnings);
        Ok(())
    }

    /// The parsed DAG for a run, from cache or the store.
    async fn load_dag(&mut self, dag_id: &str) -> Result<Option<Arc<Dag>>, SchedulerError> {
        let Some((data, hash)) = self.store.serialized_dag_get(dag_id).await? else {
            return Ok(None);
        };
        if let Some((h, dag)) = self.dags.get(dag_id)
            && *h == hash
        {
            return Ok(Some(dag.clone()));
        }
        match Dag::from_json(&data) {
            Ok(dag) => {
                let dag = Arc::new(dag);
                self.dags.insert(dag_id.to_owned(), (hash, dag.clone()));
                Ok(Some(dag))
            }
            Err(e) => {
                warn!(dag_id, error = %e, "serialized DAG does not load; was it written by another flow version?");
                Ok(None)
            }
        }
    }

    async fn dag_for(&mut self, dag_id: &str) -> Result<Option<Arc<Dag>>, SchedulerError> {
        if let Some((_, dag)) = self.dags.get(dag_id) {
            return Ok(Some(dag.clone()));
        }
        self.load_dag(dag_id).await
    }

    /// Creates the scheduled runs that are due, within `max_active_runs`. Returns when the
    /// next one becomes due.
    async fn create_scheduled_runs(
        &mut self,
        active_per_dag: &HashMap<&str, i64>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, SchedulerError> {
        let mut next_deadline = None;
        let candidates: Vec<DagRow> = self
            .dag_rows
            .values()
            .filter(|r| !r.is_paused && r.is_active && r.schedule != "None")
            .cloned()
            .collect();
        for row in candidates {
            if let Some((hash, due)) = self.next_due.get(&row.dag_id)
                && *hash == row.dag_hash
                && *due > now
            {
                next_deadline = earliest(next_deadline, Some(*due));
                continue;
            }
            let Some(dag) = self.dag_for(&row.dag_id).await? else {
                continue;
            };
            if matches!(dag.timetable.schedule, flow_dag::schedule::Schedule::None) {
                // Only assets (or Kafka) make its runs: nothing is ever due on the clock.
                if row.next_dagrun.is_some() {
                    self.store.dag_set_next_run(&row.dag_id, None).await?;
                }
                self.next_due.insert(
                    row.dag_id.clone(),
                    (row.dag_hash.clone(), now + Duration::days(1)),
                );
                continue;
            }
            let restriction = TimeRestriction {
                earliest: dag.start_date,
                latest: dag.end_date,
                catchup: dag.catchup,
            };
            let last = self.store.dag_run_latest_automated(&row.dag_id).await?;
            let stored = last.as_ref().and_then(|r| {
                Some(DataInterval {
                    start: r.data_interval_start?,
                    end: r.data_interval_end?,
                })
            });
            let taken = self.taken.get(&row.dag_id).copied();
            let last_interval = match (stored, taken) {
                (Some(a), Some(b)) => Some(if b.end > a.end { b } else { a }),
                (a, b) => a.or(b),
            };
            let Some(info) = dag
                .timetable
                .next_dagrun_info(last_interval, &restriction, now)
            else {
                if row.next_dagrun.is_some() {
                    self.store.dag_set_next_run(&row.dag_id, None).await?;
                }
                continue;
            };
            let next = NextRun {
                logical_date: info.logical_date,
                data_interval_start: info.data_interval.start,
                data_interval_end: info.data_interval.end,
                create_after: info.run_after,
            };
            if info.run_after > now {
                if row.next_dagrun_create_after != Some(info.run_after) {
                    self.store.dag_set_next_run(&row.dag_id, Some(next)).await?;
                }
                self.next_due
                    .insert(row.dag_id.clone(), (row.dag_hash.clone(), info.run_after));
                next_deadline = earliest(next_deadline, Some(info.run_after));
                continue;
            }
            let active_runs = active_per_dag
                .get(row.dag_id.as_str())
                .copied()
                .unwrap_or(0);
            if active_runs >= i64::from(dag.max_active_runs) {
                continue;
            }
            let req = TriggerRequest {
                run_id: None,
                run_type: DagRunType::Scheduled,
                logical_date: Some(info.logical_date),
                data_interval: Some((info.data_interval.start, info.data_interval.end)),
                run_after: Some(info.run_after),
                conf: serde_json::json!({}),
                note: None,
                triggered_by: Some("scheduler".into()),
            };
            match self
                .store
                .dag_run_trigger(&dag, &row.dag_hash, &req, now)
                .await
            {
                Ok(run) => {
                    flow_metrics::metrics()
                        .dagrun_schedule_delay
                        .get_or_create(&[("dag_id", run.dag_id.clone())])
                        .observe(
                            (now - info.run_after)
                                .to_std()
                                .unwrap_or_default()
                                .as_secs_f64(),
                        );
                    info!(dag_id = %run.dag_id, run_id = %run.run_id, "created scheduled run")
                }
                // Another scheduler (or an earlier life of this one) made it, or another row
                // holds its logical date or run id (a backfill, say): this interval is
                // covered, and the next run comes after it. Never retry the same one.
                Err(TriggerError::Duplicate { run_id, .. }) => {
                    debug!(dag_id = %row.dag_id, run_id, "scheduled run exists already; moving on");
                    self.taken.insert(row.dag_id.clone(), info.data_interval);
                }
                Err(TriggerError::Store(e)) => return Err(e.into()),
                Err(e) => {
                    // The DAG cannot make this run (its params refuse their defaults, say):
                    // say so and try again at the next interval check, not at once.
                    warn!(dag_id = %row.dag_id, error = %e, "could not create scheduled run");
                    let retry = now + Duration::seconds(60);
                    self.next_due
                        .insert(row.dag_id.clone(), (row.dag_hash.clone(), retry));
                    next_deadline = earliest(next_deadline, Some(retry));
                    continue;
                }
            }
            // Come back at once: more runs may be due (catchup), and the new run wants work.
            next_deadline = Some(now);
        }
        Ok(next_deadline)
    }

    /// Creates a run (`asset_triggered`) for each active DAG scheduled on assets whose queued
    /// events meet its condition; the store consumes the events with the run's creation, so
    /// that another scheduler cannot use them again. Costs one query of the (small) queue per
    /// pass, and only while some DAG is scheduled on assets. Returns whether a run was made.
    async fn create_asset_runs(&mut self, now: DateTime<Utc>) -> Result<bool, SchedulerError> {
        let any = self.dags.values().any(|(_, d)| d.asset_schedule.is_some());
        if !any {
            return Ok(false);
        }
        let queue = self.store.asset_queue().await?;
        let mut created = false;
        for (dag_id, updated) in queue {
            let Some(row) = self.dag_rows.get(&dag_id).cloned() else {
                continue;
            };
            if row.is_paused || !row.is_active {
                continue;
            }
            if let Some((hash, after)) = self.asset_retry.get(&dag_id)
                && *hash == row.dag_hash
                && *after > now
            {
                continue;
            }
            let Some(dag) = self.dag_for(&dag_id).await? else {
                continue;
            };
            let Some(condition) = &dag.asset_schedule else {
                continue;
            };
            if !condition.is_met(&|uri| updated.contains(uri)) {
                continue;
            }
            let req = TriggerRequest {
                run_id: None,
                run_type: DagRunType::AssetTriggered,
                logical_date: Some(now),
                data_interval: Some((now, now)),
                run_after: Some(now),
                conf: serde_json::json!({}),
                note: None,
                triggered_by: Some("asset".into()),
            };
            let run = match flow_store::new_dag_run(&dag, &row.dag_hash, &req, now) {
                Ok(run) => run,
                Err(e) => {
                    // Said once a minute, not every pass: the DAG must change first.
                    warn!(%dag_id, error = %e, "could not create an asset-triggered run; its events stay queued");
                    self.asset_retry.insert(
                        dag_id.clone(),
                        (row.dag_hash.clone(), now + Duration::seconds(60)),
                    );
                    continue;
                }
            };
            let tis = flow_store::new_task_instances(&dag);
            // One DAG's failure (a run id taken, a database error on its rows) must not hold
            // up the others, nor the rest of the pass.
            match self
                .store
                .asset_run_create(&run, &tis, condition, now)
                .await
            {
                Ok(Some(run)) => {
                    info!(dag_id = %run.dag_id, run_id = %run.run_id, "created asset-triggered run");
                    created = true;
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(%dag_id, error = %e, "could not create an asset-triggered run; retrying in 5 s");
                    self.asset_retry.insert(
                        dag_id.clone(),
                        (row.dag_hash.clone(), now + Duration::seconds(5)),
                    );
                }
            }
        }
        Ok(created)
    }

    /// Moves queued runs to running, oldest first, within each DAG's `max_active_runs`
    /// (decided again by the store under the queueing lock).
    async fn start_queued_runs(
        &mut self,
        view: &mut ActiveView,
        now: DateTime<Utc>,
    ) -> Result<(), SchedulerError> {
        // A backfill's runs count toward its own `max_active_runs`, the others toward the
        // DAG's.
        let mut running: HashMap<(&str, Option<i64>), i64> = HashMap::new();
        let mut queued: Vec<&DagRunRow> = Vec::new();
        for entry in view.runs.values() {
            match entry.run.state {
                DagRunState::Running => {
                    *running
                        .entry((entry.run.dag_id.as_str(), entry.run.backfill_id))
                        .or_default() += 1;
                }
                DagRunState::Queued => queued.push(&entry.run),
                _ => {}
            }
        }
        if queued.is_empty() {
            return Ok(());
        }
        // A backfill's runs start in the order it made them (backwards when it runs
        // backwards); the others oldest first.
        queued.sort_by_key(|r| match r.backfill_id {
            Some(b) => (1, DateTime::<Utc>::MIN_UTC, b, r.id),
            None => (0, r.run_after, 0, r.id),
        });
        let backfills = if queued.iter().any(|r| r.backfill_id.is_some()) {
            self.store.backfill_active().await?
        } else {
            HashMap::new()
        };
        let mut candidates = Vec::new();
        for r in queued {
            let Some(row) = self.dag_rows.get(&r.dag_id) else {
                continue;
            };
            // A paused DAG's runs wait (Airflow: paused DAGs schedule nothing).
            if row.is_paused {
                continue;
            }
            let max_active_runs = match r.backfill_id {
                None => row.max_active_runs,
                Some(b) => match backfills.get(&b) {
                    // A paused backfill holds its runs; a completed (cancelled) one has none
                    // left to start.
                    Some(bf) if !bf.is_paused => bf.max_active_runs,
                    _ => continue,
                },
            };
            let n = running
                .entry((r.dag_id.as_str(), r.backfill_id))
                .or_default();
            if *n >= max_active_runs {
                continue;
            }
            *n += 1;
            candidates.push(RunStart {
                dag_id: r.dag_id.clone(),
                run_id: r.run_id.clone(),
                max_active_runs,
                backfill_id: r.backfill_id,
            });
        }
        if candidates.is_empty() {
            return Ok(());
        }
        let started = self.store.dag_run_start_queued(&candidates, now).await?;
        for key in started {
            if let Some(entry) = view.runs.get_mut(&key) {
                entry.run.state = DagRunState::Running;
                entry.run.start_date.get_or_insert(now);
                entry.dirty = true;
            }
        }
        Ok(())
    }

    /// Evaluates the running runs that changed since their last evaluation or reached a
    /// deadline: which task instances to schedule, skip or fail, which runs are finished
    /// (including by `dagrun_timeout`). Nothing is written here.
    async fn evaluate_runs(
        &mut self,
        view: &mut ActiveView,
        now: DateTime<Utc>,
    ) -> Result<Evaluation, SchedulerError> {
        let mut evaluation = Evaluation::default();
        let mut due: Vec<RunKey> = view
            .runs
            .iter()
            .filter(|(_, e)| e.due(now))
            .map(|(k, _)| k.clone())
            .collect();
        due.sort_unstable();
        for key in due {
            let dag = self.dag_for(&key.0).await?;
            let Some(entry) = view.runs.get_mut(&key) else {
                continue;
            };
            entry.dirty = false;
            entry.wakeup = None;
            // A DAG that is gone or does not load: its runs wait (refreshed DAGs mark every
            // run for evaluation again).
            let Some(dag) = dag else {
                continue;
            };
            let run = &entry.run;
            let tis: &[TiRow] = &entry.tis;
            if let (Some(timeout), Some(started)) = (dag.dagrun_timeout, run.start_date) {
                if now - started > timeout {
                    for ti in tis.iter().filter(|t| !t.state.is_finished()) {
                        evaluation.changes.push(StateChange {
                            key: ti.key.clone(),
                            from: vec![ti.state],
                            to: S::Skipped,
                            reason: Some("dagrun_timeout exceeded".into()),
                            next_retry_at: None,
                        });
                    }
                    evaluation.finished.push((
                        run.clone(),
                        DagRunState::Failed,
                        Some("dagrun_timeout exceeded".into()),
                    ));
                    continue;
                }
                entry.wakeup = Some(started + timeout);
            }
            let previous = if dag
                .tasks
                .iter()
                .any(|t| t.depends_on_past || t.wait_for_downstream)
            {
                self.previous_states(run).await?
            } else {
                HashMap::new()
            };
            let lengths = self.map_lengths(&dag, run, tis).await?;
            let decision = decide_run(&dag, tis, &previous, &lengths, now);
            // New rows are made only for expansions and tasks added to the DAG (new mapped
            // instances are scheduled below from the same templates); most passes make none.
            let templates = if decision.expansions.is_empty() && decision.missing_tasks.is_empty() {
                Vec::new()
            } else {
                flow_store::new_task_instances(&dag)
            };
            for e in &decision.expansions {
                let Some(template) = templates.iter().find(|t| t.task_id == e.task_id) else {
                    continue;
                };
                let ready = self
                    .store
                    .ti_expand(&run.dag_id, &run.run_id, template, e.length, now)
                    .await?;
                debug!(dag_id = %run.dag_id, run_id = %run.run_id, task_id = %e.task_id, length = e.length, ready = ready.len(), "expanded mapped task");
            }
            // Rows made without a transition: the run is read again in the next pass.
            let mut added = !decision.expansions.is_empty();
            if !decision.missing_tasks.is_empty() {
                let missing: Vec<_> = templates
                    .iter()
                    .filter(|t| decision.missing_tasks.contains(&t.task_id))
                    .cloned()
                    .collect();
                info!(dag_id = %run.dag_id, run_id = %run.run_id, tasks = ?decision.missing_tasks, "tasks added to the DAG join the running run");
                self.store
                    .ti_create_missing(&run.dag_id, &run.run_id, &missing, now)
                    .await?;
                added = true;
                evaluation.deadline = Some(now);
            }
            let wakeup = earliest(entry.wakeup, decision.next_wakeup);
            let index: HashMap<&TiKey, &TiRow> = tis.iter().map(|t| (&t.key, t)).collect();
            for change in &decision.changes {
                if change.to != S::Scheduled {
                    continue;
                }
                // A new instance of a mapped task takes its task's settings.
                let mut ti = match index.get(&change.key) {
                    Some(ti) => (*ti).clone(),
                    None => match templates.iter().find(|t| t.task_id == change.key.task_id) {
                        Some(t) => new_row(change.key.clone(), t),
                        None => continue,
                    },
                };
                ti.state = S::Scheduled;
                ti.scheduled_dttm = Some(now);
                observe_upstream_handoff(&dag, tis, &change.key.task_id, now);
                evaluation.newly_scheduled.push(ti);
            }
            evaluation.changes.extend(decision.changes);
            if let Some(state) = decision.run_state {
                evaluation
                    .finished
                    .push((run.clone(), state, decision.reason));
            }
            entry.wakeup = wakeup;
            if added {
                view.reread(&key);
            }
        }
        // Runs evaluated earlier wait for their own deadlines.
        let wakeups = view.runs.values().filter_map(|e| e.wakeup).min();
        evaluation.deadline = earliest(evaluation.deadline, wakeups);
        Ok(evaluation)
    }

    /// How many instances each mapped task of `run` that is ready to expand gets: its literal
    /// lists, or the upstream XComs it maps over, once those upstream tasks are done. Only
    /// tasks whose instances all wait for expansion are looked at, so a run without mapped
    /// tasks (or with its mapped tasks expanded) reads nothing.
    async fn map_lengths(
        &self,
        dag: &Dag,
        run: &DagRunRow,
        tis: &[TiRow],
    ) -> Result<MapLengths, SchedulerError> {
        let mut lengths = MapLengths::new();
        let rows_of = |task_id: &str| -> Vec<&TiRow> {
            tis.iter().filter(|t| t.key.task_id == task_id).collect()
        };
        let ready: Vec<&flow_dag::Task> = dag
            .tasks
            .iter()
            .filter(|t| t.is_mapped())
            .filter(|t| crate::decide::awaits_expansion(&rows_of(t.task_id.as_str()), |r| r.state))
            .filter(|t| {
                t.upstream.iter().all(|u| {
                    let rows = rows_of(u.as_str());
                    !rows.is_empty() && rows.iter().all(|r| r.state.is_finished())
                })
            })
            .collect();
        if ready.is_empty() {
            return Ok(lengths);
        }
        let needs_xcom = ready.iter().any(|t| {
            t.mapping
                .as_ref()
                .is_some_and(|m| m.sources().next().is_some())
        });
        let mut xcoms: HashMap<(String, i64), serde_json::Value> = HashMap::new();
        if needs_xcom {
            for x in self
                .store
                .xcom_list_for_run(&run.dag_id, &run.run_id)
                .await?
            {
                if x.key == "return_value" {
                    xcoms.insert((x.task_id, x.map_index), x.value);
                }
            }
        }
        for task in ready {
            let Some(mapping) = &task.mapping else {
                continue;
            };
            let length = crate::decide::map_length(mapping, &xcoms, self.config.max_map_length);
            lengths.insert(task.task_id.to_string(), length);
        }
        Ok(lengths)
    }

    /// Task states of the run before `run` (by logical date), for `depends_on_past`.
    async fn previous_states(&self, run: &DagRunRow) -> Result<PreviousRun, SchedulerError> {
        let Some(logical) = run.logical_date else {
            return Ok(HashMap::new());
        };
        let runs = self.store.dag_run_list(&run.dag_id, 1000).await?;
        let prev = runs
            .iter()
            .filter(|r| r.logical_date.is_some_and(|l| l < logical))
            .max_by_key(|r| r.logical_date);
        let Some(prev) = prev else {
            return Ok(HashMap::new());
        };
        Ok(self
            .store
            .ti_list_for_run(&prev.dag_id, &prev.run_id)
            .await?
            .into_iter()
            .map(|t| ((t.key.task_id, t.key.map_index), t.state))
            .collect())
    }

    /// Chooses scheduled task instances to queue, highest priority first, within parallelism,
    /// pool slots, each DAG's `max_active_tasks` and each task's `max_active_tis_per_dag` and
    /// `max_active_tis_per_dagrun`, as this pass sees them. Instances of one mapped task go in
    /// map index order. The store decides again under the queueing lock
    /// ([`Store::ti_schedule_and_queue`]): another scheduler may have queued meanwhile.
    async fn queue_candidates(
        &mut self,
        view: &ActiveView,
        newly_scheduled: &[TiRow],
    ) -> Result<Vec<QueueRequest>, SchedulerError> {
        // Occupancy from the task instances of the active runs: every queued or running task
        // instance belongs to one. Only runs with such instances are looked at.
        let mut usage = PoolUsage::default();
        for (pool, slots) in &self.pools {
            usage.pools.insert(pool.clone(), (*slots, 0));
        }
        let busy = view
            .runs
            .values()
            .filter(|e| e.busy > 0)
            .flat_map(|e| e.tis.iter());
        for ti in busy.filter(|t| matches!(t.state, S::Queued | S::Running)) {
            usage.add(&ti.key, &ti.pool, ti.pool_slots);
        }
        if usage.total >= self.config.parallelism {
            return Ok(Vec::new());
        }
        // Already scheduled (waiting on a limit) plus those this pass makes runnable, highest
        // priority first.
        let mut candidates: Vec<&TiRow> = view
            .runs
            .values()
            .filter(|e| e.waiting > 0)
            .flat_map(|e| e.tis.iter())
            .filter(|t| t.state == S::Scheduled)
            .chain(newly_scheduled)
            .collect();
        let order = |a: &&TiRow, b: &&TiRow| {
            b.priority_weight
                .cmp(&a.priority_weight)
                .then(a.scheduled_dttm.cmp(&b.scheduled_dttm))
                .then(a.key.map_index.cmp(&b.key.map_index))
        };
        // Thousands may wait for a few free slots: order the first few only, unless limits
        // turn those down and the rest is needed (sorted then).
        let free = usize::try_from(self.config.parallelism - usage.total).unwrap_or(0);
        let head = free.saturating_mul(4).saturating_add(64);
        if candidates.len() > head {
            candidates.select_nth_unstable_by(head, order);
            candidates[..head].sort_by(order);
        } else {
            candidates.sort_by(order);
        }
        let mut sorted_all = candidates.len() <= head;
        let mut requests = Vec::new();
        let mut i = 0;
        while i < candidates.len() {
            if usage.total >= self.config.parallelism {
                break;
            }
            if i == head && !sorted_all {
                candidates[head..].sort_by(order);
                sorted_all = true;
            }
            let ti = candidates[i];
            i += 1;
            let Some(dag) = self.dag_for(&ti.key.dag_id).await? else {
                continue;
            };
            let Some(task) = dag.task(&ti.key.task_id) else {
                continue;
            };
            let request = QueueRequest {
                key: ti.key.clone(),
                pool: ti.pool.clone(),
                pool_slots: ti.pool_slots,
                max_active_tasks: i64::from(dag.max_active_tasks),
                max_active_tis_per_dag: task.max_active_tis_per_dag.map(i64::from),
                max_active_tis_per_dagrun: task.max_active_tis_per_dagrun.map(i64::from),
                // The task's queue: the lean rows of a pass do not carry it.
                reason: self.unserved_queue(&task.queue),
            };
            match usage.admit(&request, self.config.parallelism) {
                Ok(()) => requests.push(request),
                Err(Refusal::Pool) if !self.pools.contains_key(&ti.pool) => {
                    debug!(pool = %ti.pool, task = %ti.key.task_id, "task waits on a pool that does not exist");
                }
                Err(_) => {}
            }
        }
        Ok(requests)
    }

    /// Why a task queued in `queue` may wait: live workers exist and none serves it (none at
    /// all is a deployment still starting, or the tests' own worker).
    fn unserved_queue(&self, queue: &str) -> Option<String> {
        let served = self.served_queues.as_ref()?;
        if served.is_empty() || served.contains(queue) {
            return None;
        }
        let mut names: Vec<&str> = served.iter().map(String::as_str).collect();
        names.sort_unstable();
        Some(format!(
            "queue `{queue}` has no live worker (workers serve: {}); it waits until one starts with --queues {queue}, or task_queued_timeout",
            names.join(", ")
        ))
    }

    /// Task instances whose worker stopped heartbeating (Airflow's zombies): a running or
    /// stopping try is over, retried if tries remain and failed otherwise; a try that was
    /// being restarted after a clear goes back to no state, finishing the clear. Each change is
    /// guarded by the heartbeat still being stale, so a worker that was only slow wins.
    async fn rescue_zombies(&mut self, now: DateTime<Utc>) -> Result<(), SchedulerError> {
        let threshold =
            Duration::from_std(self.config.zombie_threshold).unwrap_or(Duration::seconds(60));
        let cutoff = now - threshold;
        let zombies = self.store.ti_list_stale_running(cutoff).await?;
        if zombies.is_empty() {
            return Ok(());
        }
        let mut changes = Vec::new();
        let mut tries: HashMap<TiKey, i64> = HashMap::new();
        for z in zombies {
            tries.insert(z.key.clone(), z.try_number);
            let worker = z.worker_id.as_deref().unwrap_or("?");
            warn!(dag_id = %z.key.dag_id, run_id = %z.key.run_id, task_id = %z.key.task_id, map_index = z.key.map_index, try_number = z.try_number, state = %z.state, "zombie task instance: no heartbeat");
            if z.state == S::Restarting {
                changes.push(StateChange {
                    key: z.key.clone(),
                    from: vec![S::Restarting],
                    to: S::NoStatus,
                    reason: Some(format!(
                        "zombie: worker {worker} died while restarting the cleared try; no heartbeat for over {}s",
                        threshold.num_seconds()
                    )),
                    next_retry_at: None,
                });
                continue;
            }
            let dag = self.dag_for(&z.key.dag_id).await?;
            let task = dag.as_ref().and_then(|d| d.task(&z.key.task_id));
            let retry = z.try_number <= z.max_tries;
            let delay = task.map_or(Duration::seconds(300), |t| {
                t.retry_delay_after(z.try_number)
            });
            changes.push(StateChange {
                key: z.key.clone(),
                from: vec![z.state],
                to: if retry { S::UpForRetry } else { S::Failed },
                reason: Some(format!(
                    "zombie: no heartbeat from worker {worker} for over {}s",
                    threshold.num_seconds()
                )),
                next_retry_at: retry.then(|| now + delay),
            });
        }
        let applied = self.store.ti_rescue_stale(&changes, cutoff, now).await?;
        let rescued = applied.iter().filter(|a| **a).count();
        flow_metrics::metrics()
            .zombies_killed
            .inc_by(u64::try_from(rescued).unwrap_or(0));
        // A try failed (or up for retry) by the rescue fires its task's callbacks, as
        // Airflow's zombie handling does. Recorded after the rescue: a scheduler that dies in
        // between loses these callbacks, never the rescue.
        for (change, applied) in changes.iter().zip(applied) {
            let Some(event) = flow_store::event_for_outcome(change.to).filter(|_| applied) else {
                continue;
            };
            let Some(dag) = self.dag_for(&change.key.dag_id).await? else {
                continue;
            };
            let Some(task) = dag.task(&change.key.task_id) else {
                continue;
            };
            let callbacks = flow_store::new_callbacks(
                &task.callbacks,
                event,
                change.to.as_str(),
                change.reason.as_deref(),
            );
            if callbacks.is_empty() {
                continue;
            }
            let target = flow_store::CallbackTarget {
                dag_id: change.key.dag_id.clone(),
                run_id: change.key.run_id.clone(),
                task_id: Some(change.key.task_id.clone()),
                map_index: change.key.map_index,
                try_number: tries.get(&change.key).copied().unwrap_or(0),
            };
            // The rescue is done; a callback that cannot be recorded is said, and must not
            // cost the rest of the pass.
            if let Err(e) = self.store.callback_enqueue(&target, &callbacks, now).await {
                warn!(dag_id = %change.key.dag_id, task_id = %change.key.task_id, error = %e, "could not record a rescued try's callbacks");
            }
        }
        Ok(())
    }
}

impl Scheduler {
    /// Queued task instances no worker claimed within `task_queued_timeout` (none serves their
    /// queue, or they were lost): queued again up to `num_stuck_in_queued_retries` times, then
    /// failed, each time with the reason recorded (Airflow's `_handle_tasks_stuck_in_queued`).
    async fn release_stuck_queued(&mut self, now: DateTime<Utc>) -> Result<(), SchedulerError> {
        let timeout =
            Duration::from_std(self.config.task_queued_timeout).unwrap_or(Duration::seconds(600));
        let cutoff = now - timeout;
        let stuck = self.store.ti_list_stuck_queued(cutoff).await?;
        if stuck.is_empty() {
            return Ok(());
        }
        let max = self.config.num_stuck_in_queued_retries;
        let changes: Vec<StateChange> = stuck
            .into_iter()
            .map(|(ti, requeues)| {
                let why = format!(
                    "stuck in queued: no worker claimed it from queue `{}` within {}s",
                    ti.queue,
                    timeout.num_seconds()
                );
                warn!(dag_id = %ti.key.dag_id, run_id = %ti.key.run_id, task_id = %ti.key.task_id, map_index = ti.key.map_index, requeues, "{why}");
                let (to, reason) = if requeues < max {
                    (S::Scheduled, format!("{why}; queued again ({} of {max})", requeues + 1))
                } else {
                    (S::Failed, format!("{why}; failed after {max} requeues"))
                };
                StateChange {
                    key: ti.key,
                    from: vec![S::Queued],
                    to,
                    reason: Some(reason),
                    next_retry_at: None,
                }
            })
            .collect();
        self.store.ti_release_stuck(&changes, cutoff, now).await?;
        Ok(())
    }
}

/// The row a new instance of a mapped task will have, for queueing in the pass that makes it.
fn new_row(key: TiKey, t: &flow_store::NewTaskInstance) -> TiRow {
    TiRow {
        max_tries: t.max_tries,
        operator: t.operator.clone(),
        queue: t.queue.clone(),
        pool: t.pool.clone(),
        pool_slots: t.pool_slots,
        priority_weight: t.priority_weight,
        ..TiRow::new(key, S::NoStatus)
    }
}

/// What evaluating the running runs decided.
#[derive(Debug, Default)]
struct Evaluation {
    changes: Vec<StateChange>,
    /// Task instances `changes` moves to scheduled, as they will be.
    newly_scheduled: Vec<TiRow>,
    finished: Vec<(DagRunRow, DagRunState, Option<String>)>,
    deadline: Option<DateTime<Utc>>,
}

/// The result of [`Scheduler::pass`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub next_deadline: Option<DateTime<Utc>>,
    pub queued: usize,
}

/// Records how long after its last upstream's outcome a task instance was scheduled (a task
/// without upstream tasks has no such hand-off).
fn observe_upstream_handoff(dag: &Dag, tis: &[TiRow], task_id: &str, now: DateTime<Utc>) {
    let Some(task) = dag.task(task_id) else {
        return;
    };
    let last = tis
        .iter()
        .filter(|t| task.upstream.iter().any(|u| u.as_str() == t.key.task_id))
        .filter_map(|t| t.end_date)
        .max();
    if let Some(end) = last {
        flow_metrics::metrics().observe_handoff(
            flow_metrics::Handoff::TiUpstreamFinishedToScheduled,
            (now - end).to_std().unwrap_or_default(),
        );
    }
}
