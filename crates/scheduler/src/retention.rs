//! Retention in the background: every few minutes, each DAG's finished runs beyond its newest
//! `max_runs_kept_per_dag` go (with all their rows, through the same store code as `flow db
//! clean`), and the log lines of tries that ended more than `log_retention_days` ago.
//!
//! A task of its own beside the scheduling loop, never inside a pass: its batches are short
//! transactions of their own, so a pass waits for one batch at most, not for the whole job.
//! Several schedulers may run it at once: a run two of them delete goes once, the second
//! finds nothing.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use flow_store::{CleanRequest, CleanTable, RunSelection, Store, StoreError};
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the job runs.
const INTERVAL: StdDuration = StdDuration::from_secs(300);

/// Runs per transaction, and log lines per read.
const BATCH: usize = 100;

/// What the job keeps; `None` keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionConfig {
    /// `[core] max_runs_kept_per_dag`.
    pub max_runs_kept_per_dag: Option<u32>,
    /// `[logging] retention_days`.
    pub log_retention_days: Option<u32>,
}

impl RetentionConfig {
    fn is_off(&self) -> bool {
        self.max_runs_kept_per_dag.is_none() && self.log_retention_days.is_none()
    }
}

/// What one pass of the job deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub runs: u64,
    pub log_lines: u64,
}

/// One pass of the job at `now`.
pub async fn pass(
    store: &Store,
    config: RetentionConfig,
    now: DateTime<Utc>,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    if let Some(n) = config.max_runs_kept_per_dag {
        let req = CleanRequest {
            runs: RunSelection::BeyondNewest(n),
            tables: vec![CleanTable::DagRun],
            batch_size: BATCH,
        };
        report.runs = store.clean(&req, &mut |_| {}).await?.runs;
    }
    if let Some(days) = config.log_retention_days {
        let cutoff = now - Duration::days(i64::from(days));
        report.log_lines = store.logs_expire(cutoff, BATCH * 10).await?;
    }
    Ok(report)
}

/// Starts the job unless `config` keeps everything; it stops when `shutdown` turns true.
pub(crate) fn spawn(store: Store, config: RetentionConfig, mut shutdown: watch::Receiver<bool>) {
    if config.is_off() {
        return;
    }
    tokio::spawn(async move {
        loop {
            let started = std::time::Instant::now();
            match pass(&store, config, Utc::now()).await {
                Ok(r) if r.runs > 0 || r.log_lines > 0 => info!(
                    runs = r.runs,
                    log_lines = r.log_lines,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "retention: deleted old runs and logs"
                ),
                Ok(_) => {}
                // Tried again at the next interval; a deadlock with another scheduler's
                // job or a clear is one of the transient errors.
                Err(e) => warn!(error = %e, "retention pass failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(INTERVAL) => {}
                changed = shutdown.changed() => {
                    // A dropped sender ends the job too (it would return at once forever).
                    if changed.is_err() {
                        return;
                    }
                }
            }
            if *shutdown.borrow() {
                return;
            }
        }
    });
}
