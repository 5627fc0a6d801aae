//! Retention: deleting old history, for `flow db clean` (Airflow's `airflow db clean`), the
//! scheduler's `[core] max_runs_kept_per_dag` and `[logging] retention_days`.
//!
//! Everything goes in batches, each its own short transaction, so that the scheduler's and
//! the workers' transactions interleave with a long clean (on SQLite a transaction holds the
//! one write lock). A run goes with all its rows (task instances, their history,
//! transitions, XComs, logs, callbacks, consumed asset events) in one transaction, so the
//! database never holds half a run.
//!
//! What is never deleted, whatever the date: a run that is queued or running, a finished run
//! that still has task instances in flight or callbacks waiting, and for each DAG the run
//! Airflow keeps (its latest non-manual run by start) and the latest scheduled or backfill
//! run by logical date, which the scheduler's next-run maths starts from (without it a DAG
//! with catchup would make the deleted runs again).
//!
//! Deleting transition rows cannot confuse the scheduler's view or the event publisher: they
//! tail the tables by id after a cursor, ids never come back (sequences on PostgreSQL,
//! `AUTOINCREMENT` on SQLite), and the rows deleted belong to finished runs the view no
//! longer holds.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flow_model::TaskInstanceState;
use sqlx::Row;

use crate::{Backend, Result, Store, StoreError, placeholders, to_micros};

/// A table `flow db clean --tables` names: Airflow's names where Airflow has the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CleanTable {
    DagRun,
    TaskInstance,
    TaskInstanceHistory,
    TiTransition,
    DagRunTransition,
    /// Task logs (`log_chunk`).
    LogChunk,
    Xcom,
    DagRunAssetEvent,
    CallbackRequest,
    /// The audit log: Airflow's `log`, flow's `audit_log`.
    Log,
    Job,
    Trigger,
    AssetEvent,
}

impl CleanTable {
    /// Every table, in the order a clean visits them: runs first, so that the asset events
    /// their runs consumed can go in the same clean.
    pub const ALL: [CleanTable; 13] = [
        CleanTable::DagRun,
        CleanTable::TaskInstance,
        CleanTable::TaskInstanceHistory,
        CleanTable::TiTransition,
        CleanTable::DagRunTransition,
        CleanTable::LogChunk,
        CleanTable::Xcom,
        CleanTable::DagRunAssetEvent,
        CleanTable::CallbackRequest,
        CleanTable::Log,
        CleanTable::Job,
        CleanTable::Trigger,
        CleanTable::AssetEvent,
    ];

    /// The name `--tables` takes.
    pub const fn name(self) -> &'static str {
        match self {
            CleanTable::DagRun => "dag_run",
            CleanTable::TaskInstance => "task_instance",
            CleanTable::TaskInstanceHistory => "task_instance_history",
            CleanTable::TiTransition => "ti_transition",
            CleanTable::DagRunTransition => "dag_run_transition",
            CleanTable::LogChunk => "log_chunk",
            CleanTable::Xcom => "xcom",
            CleanTable::DagRunAssetEvent => "dag_run_asset_event",
            CleanTable::CallbackRequest => "callback_request",
            CleanTable::Log => "log",
            CleanTable::Job => "job",
            CleanTable::Trigger => "trigger",
            CleanTable::AssetEvent => "asset_event",
        }
    }

    /// A table by its `--tables` name, or flow's own name for the same table (`audit_log`).
    pub fn parse(name: &str) -> Option<CleanTable> {
        if name == "audit_log" {
            return Some(CleanTable::Log);
        }
        CleanTable::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The table in the database.
    const fn sql_table(self) -> &'static str {
        match self {
            CleanTable::Log => "audit_log",
            other => other.name(),
        }
    }

    /// Whether the table's rows belong to a run (keyed by `dag_id, run_id`): they are aged
    /// and kept by their run, so that a run is never left half cleaned.
    pub const fn belongs_to_run(self) -> bool {
        !matches!(
            self,
            CleanTable::Log | CleanTable::Job | CleanTable::Trigger | CleanTable::AssetEvent
        )
    }

    /// The tables a clean of `asked` covers: a run's rows go with it (as Airflow's dependent
    /// tables), so asking for `dag_run` brings every table of a run. In visiting order.
    pub fn effective(asked: &[CleanTable]) -> Vec<CleanTable> {
        let runs = asked.contains(&CleanTable::DagRun);
        CleanTable::ALL
            .into_iter()
            .filter(|t| asked.contains(t) || (runs && t.belongs_to_run()))
            .collect()
    }

    /// The condition on a row of this table (alias `x`) older than `$1`, for the tables that
    /// do not belong to a run. Rows something still needs are kept: a trigger a task instance
    /// waits on, an asset event a DAG has yet to consume or a run consumed. `going` is the
    /// condition on `dag_run r` of the runs the same clean deletes (with their task
    /// instances and consumed events) before it comes to this table: a dry run counts their
    /// references as gone, as they will be.
    fn standalone_condition(self, going: Option<&str>) -> Option<String> {
        let still = |column: &str| match going {
            Some(runs) => format!(
                " AND ({column}) NOT IN (SELECT r.dag_id, r.run_id FROM dag_run r WHERE {runs})"
            ),
            None => String::new(),
        };
        Some(match self {
            CleanTable::Log => "x.at < $1".to_owned(),
            CleanTable::Job => "x.latest_heartbeat < $1".to_owned(),
            CleanTable::Trigger => format!(
                "x.created_date < $1 AND NOT EXISTS (SELECT 1 FROM task_instance ti \
                 WHERE ti.trigger_id = x.id{})",
                still("ti.dag_id, ti.run_id")
            ),
            CleanTable::AssetEvent => format!(
                "x.timestamp < $1 \
                 AND NOT EXISTS (SELECT 1 FROM asset_dag_run_queue q WHERE q.event_id = x.id) \
                 AND NOT EXISTS (SELECT 1 FROM dag_run_asset_event d WHERE d.event_id = x.id{})",
                still("d.dag_id, d.run_id")
            ),
            _ => return None,
        })
    }
}

/// Which runs a clean deletes (besides the ones always kept, see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunSelection {
    /// Finished runs that started before this instant (a run that never started: that was
    /// queued before it). `flow db clean --clean-before-timestamp`; the tables that do not
    /// belong to runs use the same instant on their own date column.
    StartedBefore(DateTime<Utc>),
    /// Each DAG's finished runs beyond its newest `n` by `run_after`: `max_runs_kept_per_dag`.
    BeyondNewest(u32),
}

/// A clean: which runs, which tables, how much per transaction.
#[derive(Debug, Clone)]
pub struct CleanRequest {
    pub runs: RunSelection,
    /// As asked; see [`CleanTable::effective`].
    pub tables: Vec<CleanTable>,
    /// Runs per transaction for the tables of runs, rows per transaction for the others.
    pub batch_size: usize,
}

/// What a clean would delete now: the runs it selects and, per table, the rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanCounts {
    /// Runs whose rows go (and which go themselves when `dag_run` is cleaned).
    pub runs: u64,
    pub tables: Vec<(CleanTable, u64)>,
}

/// How far a clean got, after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanProgress {
    /// `dag_run` for a batch of runs, whichever of their tables are cleaned.
    pub table: CleanTable,
    /// Runs (for the tables of runs) or rows this batch covered.
    pub done: u64,
}

/// What a clean deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// Runs whose rows went.
    pub runs: u64,
    pub tables: Vec<(CleanTable, u64)>,
    pub batches: u64,
    /// The longest single transaction: how long the clean held the scheduler out at most.
    pub longest_batch: Duration,
    last_batch: Duration,
}

impl CleanReport {
    fn add(&mut self, table: CleanTable, n: u64) {
        match self.tables.iter_mut().find(|(t, _)| *t == table) {
            Some((_, total)) => *total += n,
            None => self.tables.push((table, n)),
        }
    }

    fn batch_took(&mut self, took: Duration) {
        self.batches += 1;
        self.longest_batch = self.longest_batch.max(took);
        self.last_batch = took;
    }

    /// Rows deleted in all.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// The instant a run is aged by (Airflow's `start_date`; a run that never started, by when it
/// was queued, so that a run marked failed while queued is not kept forever).
fn recency(alias: &str) -> String {
    format!("COALESCE({alias}.start_date, {alias}.queued_at, {alias}.run_after)")
}

/// Task instance states something may still act on (a worker, the triggerer, the scheduler
/// after a delay): a finished run holding one is left alone. `none` is not among them.
fn busy_ti_states() -> String {
    TaskInstanceState::ALL
        .into_iter()
        .filter(|s| s.is_unfinished() && *s != TaskInstanceState::NoStatus)
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The conditions that keep a run (alias `r`) whatever the selection: unfinished, in
/// flight, callbacks waiting.
fn guards() -> String {
    format!(
        "r.state NOT IN ('queued', 'running') \
         AND NOT EXISTS (SELECT 1 FROM task_instance ti WHERE ti.dag_id = r.dag_id \
           AND ti.run_id = r.run_id AND ti.state IN ({busy})) \
         AND NOT EXISTS (SELECT 1 FROM callback_request c WHERE c.dag_id = r.dag_id \
           AND c.run_id = r.run_id AND c.status IN ('pending', 'running'))",
        busy = busy_ti_states()
    )
}

/// The runs each DAG keeps (alias `r`): Airflow's `keep_last` (the latest non-manual run by
/// start) and the latest scheduled or backfill run by logical date (unique per DAG).
fn kept() -> String {
    format!(
        "(r.dag_id, {rec}) NOT IN (SELECT k.dag_id, MAX({krec}) FROM dag_run k \
           WHERE k.run_type <> 'manual' GROUP BY k.dag_id) \
         AND NOT (r.run_type IN ('scheduled', 'backfill') AND r.logical_date IS NOT NULL \
           AND (r.dag_id, r.logical_date) IN (SELECT a.dag_id, MAX(a.logical_date) \
             FROM dag_run a WHERE a.run_type IN ('scheduled', 'backfill') \
             AND a.logical_date IS NOT NULL GROUP BY a.dag_id))",
        rec = recency("r"),
        krec = recency("k")
    )
}

/// The `WHERE` condition on `dag_run r` of the runs `selection` deletes, and its one bound
/// value (`$1`).
fn selected_runs(selection: RunSelection) -> (String, i64) {
    let (chosen, value) = match selection {
        RunSelection::StartedBefore(t) => (format!("{} < $1", recency("r")), to_micros(t)),
        RunSelection::BeyondNewest(n) => (
            "r.id IN (SELECT ranked.id FROM (SELECT n.id, ROW_NUMBER() OVER ( \
               PARTITION BY n.dag_id ORDER BY n.run_after DESC, n.id DESC) AS rn \
               FROM dag_run n) ranked WHERE ranked.rn > $1)"
                .to_owned(),
            i64::from(n),
        ),
    };
    (format!("{chosen} AND {} AND {}", guards(), kept()), value)
}

impl Store {
    /// What [`Store::clean`] would delete now, per table (`flow db clean --dry-run`).
    pub async fn clean_count(&self, req: &CleanRequest) -> Result<CleanCounts> {
        let tables = CleanTable::effective(&req.tables);
        let (runs_sql, value) = selected_runs(req.runs);
        let runs: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM dag_run r WHERE {runs_sql}"))
                .bind(value)
                .fetch_one(self.read_pool())
                .await?;
        let mut counts = CleanCounts {
            runs: u64::try_from(runs).unwrap_or(0),
            tables: Vec::new(),
        };
        for table in tables.iter().copied() {
            // The references the same clean deletes first (see `standalone_condition`).
            let going = match table {
                CleanTable::Trigger if tables.contains(&CleanTable::TaskInstance) => {
                    Some(runs_sql.as_str())
                }
                CleanTable::AssetEvent if tables.contains(&CleanTable::DagRunAssetEvent) => {
                    Some(runs_sql.as_str())
                }
                _ => None,
            };
            let n = match (table, table.standalone_condition(going)) {
                (CleanTable::DagRun, _) => runs,
                (_, None) => {
                    // Table names are the constants of `CleanTable`, never input.
                    sqlx::query_scalar(&format!(
                        "SELECT COUNT(*) FROM {t} WHERE (dag_id, run_id) IN \
                         (SELECT r.dag_id, r.run_id FROM dag_run r WHERE {runs_sql})",
                        t = table.sql_table()
                    ))
                    .bind(value)
                    .fetch_one(self.read_pool())
                    .await?
                }
                (_, Some(condition)) => {
                    // The same instant as the runs' `$1` (a clean by date has one).
                    let before = standalone_before(req.runs)?;
                    sqlx::query_scalar(&format!(
                        "SELECT COUNT(*) FROM {t} x WHERE {condition}",
                        t = table.sql_table()
                    ))
                    .bind(before)
                    .fetch_one(self.read_pool())
                    .await?
                }
            };
            counts.tables.push((table, u64::try_from(n).unwrap_or(0)));
        }
        Ok(counts)
    }

    /// Deletes what `req` selects, in batches of `req.batch_size` runs (for the tables of
    /// runs) or rows (for the others), each its own transaction; `progress` hears of each.
    pub async fn clean(
        &self,
        req: &CleanRequest,
        progress: &mut (dyn FnMut(CleanProgress) + Send),
    ) -> Result<CleanReport> {
        let tables = CleanTable::effective(&req.tables);
        let batch = req.batch_size.max(1);
        let mut report = CleanReport::default();
        let of_runs: Vec<CleanTable> = tables
            .iter()
            .copied()
            .filter(|t| t.belongs_to_run())
            .collect();
        if !of_runs.is_empty() {
            self.clean_runs(req.runs, &of_runs, batch, &mut report, progress)
                .await?;
        }
        for table in tables.into_iter().filter(|t| !t.belongs_to_run()) {
            let before = standalone_before(req.runs)?;
            self.clean_standalone(table, before, batch, &mut report, progress)
                .await?;
        }
        // In visiting order, as [`Store::clean_count`] lists them.
        report.tables.sort_by_key(|(t, _)| *t);
        Ok(report)
    }

    /// The runs' ids first (one read), then each batch re-checks them under its own
    /// transaction, so that a run cleared back to queued since is left alone.
    async fn clean_runs(
        &self,
        selection: RunSelection,
        tables: &[CleanTable],
        batch: usize,
        report: &mut CleanReport,
        progress: &mut (dyn FnMut(CleanProgress) + Send),
    ) -> Result<()> {
        let (runs_sql, value) = selected_runs(selection);
        let ids: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT r.id FROM dag_run r WHERE {runs_sql} ORDER BY r.id"
        ))
        .bind(value)
        .fetch_all(self.read_pool())
        .await?;
        for (i, chunk) in ids.chunks(batch).enumerate() {
            if i > 0 {
                self.let_others_write(report.last_batch).await;
            }
            let started = Instant::now();
            let mut tx = self.begin().await?;
            let mut deleted: Vec<(CleanTable, u64)> = Vec::new();
            let mut runs = 0;
            for ids in chunk.chunks(self.ids_per_statement()) {
                let kept = lock_cleanable(&mut tx, self.backend(), ids).await?;
                runs += kept.len() as u64;
                delete_runs_rows(&mut tx, tables, &kept, &mut deleted).await?;
            }
            self.commit(tx).await?;
            report.batch_took(started.elapsed());
            report.runs += runs;
            for (table, n) in deleted {
                report.add(table, n);
            }
            progress(CleanProgress {
                table: CleanTable::DagRun,
                done: chunk.len() as u64,
            });
        }
        Ok(())
    }

    async fn clean_standalone(
        &self,
        table: CleanTable,
        before: i64,
        batch: usize,
        report: &mut CleanReport,
        progress: &mut (dyn FnMut(CleanProgress) + Send),
    ) -> Result<()> {
        // The runs of this clean are gone already: references are counted as they are.
        let Some(condition) = table.standalone_condition(None) else {
            return Ok(());
        };
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        // Table names are the constants of `CleanTable`, never input.
        let sql = format!(
            "DELETE FROM {t} WHERE id IN (SELECT x.id FROM {t} x WHERE {condition} \
             ORDER BY x.id LIMIT $2)",
            t = table.sql_table()
        );
        for i in 0.. {
            if i > 0 {
                self.let_others_write(report.last_batch).await;
            }
            let started = Instant::now();
            let mut tx = self.begin().await?;
            let n = sqlx::query(&sql)
                .bind(before)
                .bind(limit)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            self.commit(tx).await?;
            report.batch_took(started.elapsed());
            report.add(table, n);
            if n == 0 {
                return Ok(());
            }
            progress(CleanProgress { table, done: n });
        }
        Ok(())
    }

    /// Waits between two batches on SQLite. Other processes wait for its one write lock in
    /// the busy handler's sleeps, up to 100 ms each: a clean that began its next
    /// transaction at once would take the lock again before they woke, and keep them out
    /// for the whole clean (a writer was measured waiting 4 s behind batches of 0.3 s).
    /// PostgreSQL locks only the rows deleted, which nobody else writes.
    async fn let_others_write(&self, last: Duration) {
        if self.backend() != Backend::Sqlite {
            return;
        }
        let pause = last.clamp(Duration::from_millis(110), Duration::from_secs(1));
        tokio::time::sleep(pause).await;
    }

    /// Deletes the log lines of tries that ended before `ended_before` (`[logging]
    /// retention_days`), in batches of `batch_size` lines read; never a try still in flight.
    /// Returns the lines deleted.
    ///
    /// Lines are read from the oldest id up, so the scan stops at the first line written
    /// after the cutoff instead of reading the whole table; the lines of a try that ended
    /// later, or is still running, are passed over and read again next time.
    pub async fn logs_expire(&self, ended_before: DateTime<Utc>, batch_size: usize) -> Result<u64> {
        let cutoff = to_micros(ended_before);
        let limit = i64::try_from(batch_size.max(1)).unwrap_or(i64::MAX);
        let mut after = 0i64;
        let mut deleted = 0;
        loop {
            let rows = sqlx::query(
                "SELECT id, dag_id, run_id, task_id, map_index, try_number, at FROM log_chunk \
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(self.read_pool())
            .await?;
            let Some(last) = rows.last() else {
                return Ok(deleted);
            };
            after = last.try_get("id")?;
            let mut tries: Vec<TryKey> = Vec::new();
            let mut reached_cutoff = false;
            for r in &rows {
                if r.try_get::<i64, _>("at")? >= cutoff {
                    reached_cutoff = true;
                    continue;
                }
                let key = TryKey {
                    dag_id: r.try_get("dag_id")?,
                    run_id: r.try_get("run_id")?,
                    task_id: r.try_get("task_id")?,
                    map_index: r.try_get("map_index")?,
                    try_number: r.try_get("try_number")?,
                };
                if !tries.contains(&key) {
                    tries.push(key);
                }
            }
            deleted += self.delete_ended_tries_logs(&tries, cutoff).await?;
            if reached_cutoff {
                return Ok(deleted);
            }
        }
    }

    /// Deletes the lines of those of `tries` that ended before `cutoff`, in one transaction.
    async fn delete_ended_tries_logs(&self, tries: &[TryKey], cutoff: i64) -> Result<u64> {
        if tries.is_empty() {
            return Ok(0);
        }
        const COLS: usize = 5;
        let per_statement = match self.backend() {
            // SQLite finds each `$n` by a linear scan: stay near 128 parameters.
            Backend::Sqlite => 128 / COLS,
            Backend::Postgres => 500,
        };
        let busy = busy_ti_states();
        let mut tx = self.begin().await?;
        let mut deleted = 0;
        for chunk in tries.chunks(per_statement) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", placeholders(i * COLS + 2, COLS)))
                .collect();
            // A try ended when its history row says so; one the task instance is still at
            // and busy with has not. A try with neither (its rows deleted) has no owner left.
            // VALUES columns are named column1.. on both PostgreSQL and SQLite.
            let sql = format!(
                "DELETE FROM log_chunk WHERE (dag_id, run_id, task_id, map_index, try_number) IN \
                 (SELECT v.column1, v.column2, v.column3, v.column4, v.column5 \
                  FROM (VALUES {values}) v \
                  WHERE NOT EXISTS (SELECT 1 FROM task_instance ti WHERE ti.dag_id = v.column1 \
                    AND ti.run_id = v.column2 AND ti.task_id = v.column3 \
                    AND ti.map_index = v.column4 AND ti.try_number = v.column5 \
                    AND ti.state IN ({busy})) \
                  AND COALESCE((SELECT MAX(h.end_date) FROM task_instance_history h \
                    WHERE h.dag_id = v.column1 AND h.run_id = v.column2 \
                    AND h.task_id = v.column3 AND h.map_index = v.column4 \
                    AND h.try_number = v.column5), 0) < $1)",
                values = values.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(cutoff);
            for t in chunk {
                q = q
                    .bind(&t.dag_id)
                    .bind(&t.run_id)
                    .bind(&t.task_id)
                    .bind(t.map_index)
                    .bind(t.try_number);
            }
            deleted += q.execute(&mut *tx).await?.rows_affected();
        }
        self.commit(tx).await?;
        Ok(deleted)
    }

    /// Run ids bound in one statement.
    fn ids_per_statement(&self) -> usize {
        match self.backend() {
            Backend::Postgres => 500,
            Backend::Sqlite => 100,
        }
    }
}

/// One try of a task instance, as its log lines name it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TryKey {
    dag_id: String,
    run_id: String,
    task_id: String,
    map_index: i64,
    try_number: i64,
}

/// The instant the tables that do not belong to runs are cleaned before: only a clean by
/// date has one.
fn standalone_before(selection: RunSelection) -> Result<i64> {
    match selection {
        RunSelection::StartedBefore(t) => Ok(to_micros(t)),
        RunSelection::BeyondNewest(_) => Err(StoreError::Invalid(
            "only a clean by date cleans tables that do not belong to runs".into(),
        )),
    }
}

/// Those of `ids` whose runs may still go, checked and (on PostgreSQL) locked inside the
/// batch's transaction: a run cleared back to queued, or a task instance of it resumed, since
/// the ids were read is left alone.
async fn lock_cleanable(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    ids: &[i64],
) -> Result<Vec<i64>> {
    // SQLite's write lock, taken by `BEGIN IMMEDIATE`, already keeps everyone else out.
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let sql = format!(
        "SELECT r.id FROM dag_run r WHERE r.id IN ({}) AND {}{lock}",
        placeholders(1, ids.len()),
        guards()
    );
    let mut q = sqlx::query_scalar(&sql);
    for id in ids {
        q = q.bind(*id);
    }
    Ok(q.fetch_all(&mut **tx).await?)
}

/// Deletes the rows of `tables` that belong to the runs `ids`, the runs themselves last when
/// `dag_run` is among them, adding what went to `deleted`.
async fn delete_runs_rows(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    tables: &[CleanTable],
    ids: &[i64],
    deleted: &mut Vec<(CleanTable, u64)>,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let in_ids = placeholders(1, ids.len());
    for table in tables.iter().filter(|t| **t != CleanTable::DagRun) {
        // Table names are the constants of `CleanTable`, never input.
        let sql = format!(
            "DELETE FROM {t} WHERE (dag_id, run_id) IN \
             (SELECT r.dag_id, r.run_id FROM dag_run r WHERE r.id IN ({in_ids}))",
            t = table.sql_table()
        );
        let n = bind_ids(sqlx::query(&sql), ids)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        deleted.push((*table, n));
    }
    if tables.contains(&CleanTable::DagRun) {
        let sql = format!("DELETE FROM dag_run WHERE id IN ({in_ids})");
        let n = bind_ids(sqlx::query(&sql), ids)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        deleted.push((CleanTable::DagRun, n));
    }
    Ok(())
}

fn bind_ids<'q>(
    mut q: crate::dag_runs::AnyQuery<'q>,
    ids: &'q [i64],
) -> crate::dag_runs::AnyQuery<'q> {
    for id in ids {
        q = q.bind(*id);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dag_run_brings_every_table_of_a_run() {
        let all = CleanTable::effective(&[CleanTable::DagRun]);
        assert!(all.iter().all(|t| t.belongs_to_run()));
        assert_eq!(all.len(), 9);
        assert_eq!(
            CleanTable::effective(&[CleanTable::Log, CleanTable::Xcom]),
            [CleanTable::Xcom, CleanTable::Log]
        );
    }

    #[test]
    fn names_round_trip_and_audit_log_is_log() {
        for t in CleanTable::ALL {
            assert_eq!(CleanTable::parse(t.name()), Some(t));
        }
        assert_eq!(CleanTable::parse("audit_log"), Some(CleanTable::Log));
        assert_eq!(CleanTable::Log.sql_table(), "audit_log");
        assert_eq!(CleanTable::parse("dagrun"), None);
    }

    #[test]
    fn busy_states_are_the_unfinished_ones_but_none() {
        let busy = busy_ti_states();
        for s in [
            "'queued'",
            "'running'",
            "'deferred'",
            "'up_for_retry'",
            "'scheduled'",
        ] {
            assert!(busy.contains(s), "{s} in {busy}");
        }
        for s in ["'none'", "'success'", "'failed'", "'skipped'", "'removed'"] {
            assert!(!busy.contains(s), "{s} in {busy}");
        }
    }
}
