//! What `/metrics` reads from the database at scrape time: small counts on indexed columns,
//! so that a scrape every few seconds costs next to nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::pools::PoolRow;
use crate::{Result, Store, from_micros, to_micros};

/// The deployment's state as the metrics gauges show it.
#[derive(Debug, Clone, Default)]
pub struct MonitorCounts {
    /// Active DAGs (in the dags folder), paused or not.
    pub dags: i64,
    pub import_errors: i64,
    /// Task instances in each unfinished state.
    pub task_instances: BTreeMap<String, i64>,
    pub pools: Vec<PoolRow>,
}

/// Unfinished states, counted through the `task_instance (state, ...)` index.
const UNFINISHED: &str = "'scheduled', 'queued', 'running', 'deferred', 'up_for_retry', \
                          'up_for_reschedule', 'restarting'";

impl Store {
    pub async fn monitor_counts(&self) -> Result<MonitorCounts> {
        let pool = self.read_pool();
        let dags: i64 = sqlx::query("SELECT COUNT(*) AS n FROM dag WHERE is_active = 1")
            .fetch_one(pool)
            .await?
            .try_get("n")?;
        let import_errors: i64 = sqlx::query("SELECT COUNT(*) AS n FROM import_error")
            .fetch_one(pool)
            .await?
            .try_get("n")?;
        let mut task_instances = BTreeMap::new();
        let rows = sqlx::query(&format!(
            "SELECT state, COUNT(*) AS n FROM task_instance WHERE state IN ({UNFINISHED}) \
             GROUP BY state"
        ))
        .fetch_all(pool)
        .await?;
        for r in rows {
            task_instances.insert(r.try_get("state")?, r.try_get("n")?);
        }
        Ok(MonitorCounts {
            dags,
            import_errors,
            task_instances,
            pools: self.pool_rows().await?,
        })
    }
}

/// One hour of the last day: tries that ended and runs that finished, by state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HourStats {
    /// The hour's start.
    pub hour: DateTime<Utc>,
    /// Tries ended in the hour, by state.
    pub tries: BTreeMap<String, i64>,
    /// Runs finished in the hour, by state.
    pub runs: BTreeMap<String, i64>,
    /// Seconds from start to end of the runs that finished in the hour, summed.
    pub run_seconds: f64,
}

/// DAG counts for the home page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DagCounts {
    pub active: i64,
    pub paused: i64,
    /// DAGs with a running run.
    pub running: i64,
    /// DAGs whose latest finished run failed.
    pub failed: i64,
}

const HOUR_US: i64 = 3_600_000_000;

impl Store {
    /// The 24 hours up to `now` (oldest first), with the tries that ended and the runs that
    /// finished in each: two range reads on indexed end dates.
    pub async fn last_day(&self, now: DateTime<Utc>) -> Result<Vec<HourStats>> {
        let end = to_micros(now);
        let first = (end / HOUR_US - 23) * HOUR_US;
        let mut hours: Vec<HourStats> = (0..24)
            .map(|i| HourStats {
                hour: from_micros(first + i * HOUR_US),
                ..HourStats::default()
            })
            .collect();
        let slot = |at: i64| {
            usize::try_from((at - first) / HOUR_US)
                .ok()
                .filter(|i| *i < 24)
        };
        let rows =
            sqlx::query("SELECT end_date, state FROM task_instance_history WHERE end_date >= $1")
                .bind(first)
                .fetch_all(self.read_pool())
                .await?;
        for r in rows {
            let at: i64 = r.try_get("end_date")?;
            if let Some(i) = slot(at) {
                *hours[i].tries.entry(r.try_get("state")?).or_default() += 1;
            }
        }
        let rows = sqlx::query(
            "SELECT end_date, start_date, queued_at, state FROM dag_run WHERE end_date >= $1",
        )
        .bind(first)
        .fetch_all(self.read_pool())
        .await?;
        for r in rows {
            let at: i64 = r.try_get("end_date")?;
            let Some(i) = slot(at) else {
                continue;
            };
            let began: Option<i64> = r.try_get("start_date")?;
            let queued: Option<i64> = r.try_get("queued_at")?;
            *hours[i].runs.entry(r.try_get("state")?).or_default() += 1;
            if let Some(b) = began.or(queued) {
                hours[i].run_seconds += (at - b).max(0) as f64 / 1e6;
            }
        }
        Ok(hours)
    }

    /// Active and paused DAGs, DAGs with a running run, DAGs whose latest finished run
    /// failed.
    pub async fn dag_counts(&self) -> Result<DagCounts> {
        let pool = self.read_pool();
        let row = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN is_paused = 0 THEN 1 ELSE 0 END), 0) AS active, \
             COALESCE(SUM(CASE WHEN is_paused = 1 THEN 1 ELSE 0 END), 0) AS paused \
             FROM dag WHERE is_active = 1",
        )
        .fetch_one(pool)
        .await?;
        let running: i64 =
            sqlx::query("SELECT COUNT(DISTINCT dag_id) AS n FROM dag_run WHERE state = 'running'")
                .fetch_one(pool)
                .await?
                .try_get("n")?;
        // The latest finished run of each DAG by end date, found in one pass over the
        // finished runs (a correlated subquery would read a DAG's runs once per failed run).
        let failed: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM dag_run r JOIN \
             (SELECT dag_id, MAX(end_date) AS last_end FROM dag_run \
              WHERE state IN ('success', 'failed') GROUP BY dag_id) l \
             ON r.dag_id = l.dag_id AND r.end_date = l.last_end WHERE r.state = 'failed'",
        )
        .fetch_one(pool)
        .await?
        .try_get("n")?;
        Ok(DagCounts {
            active: row.try_get("active")?,
            paused: row.try_get("paused")?,
            running,
            failed,
        })
    }
}

/// A try that failed, for a DAG's overview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedTry {
    pub run_id: String,
    pub task_id: String,
    pub map_index: i64,
    pub try_number: i64,
    pub end_date: DateTime<Utc>,
}

impl Store {
    /// A DAG's tries that failed (or went up for retry) since `since`, newest first.
    pub async fn failed_tries(
        &self,
        dag_id: &str,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<FailedTry>> {
        let rows = sqlx::query(
            "SELECT run_id, task_id, map_index, try_number, end_date FROM task_instance_history \
             WHERE end_date >= $1 AND dag_id = $2 AND state IN ('failed', 'up_for_retry') \
             ORDER BY end_date DESC LIMIT $3",
        )
        .bind(to_micros(since))
        .bind(dag_id)
        .bind(limit)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FailedTry {
                    run_id: r.try_get("run_id")?,
                    task_id: r.try_get("task_id")?,
                    map_index: r.try_get("map_index")?,
                    try_number: r.try_get("try_number")?,
                    end_date: from_micros(r.try_get("end_date")?),
                })
            })
            .collect()
    }

    /// How many of a DAG's tries and runs failed since `since`: `(tries, runs)`.
    pub async fn failure_counts(&self, dag_id: &str, since: DateTime<Utc>) -> Result<(i64, i64)> {
        let tries: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM task_instance_history WHERE end_date >= $1 \
             AND dag_id = $2 AND state = 'failed'",
        )
        .bind(to_micros(since))
        .bind(dag_id)
        .fetch_one(self.read_pool())
        .await?
        .try_get("n")?;
        let runs: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM dag_run WHERE end_date >= $1 AND dag_id = $2 \
             AND state = 'failed'",
        )
        .bind(to_micros(since))
        .bind(dag_id)
        .fetch_one(self.read_pool())
        .await?
        .try_get("n")?;
        Ok((tries, runs))
    }

    /// Each day's run states of a DAG since `since` (by run date: the logical date, else
    /// when it was due): `(day, state, count)`.
    pub async fn daily_run_states(
        &self,
        dag_id: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(chrono::NaiveDate, String, i64)>> {
        let rows = sqlx::query(
            "SELECT COALESCE(logical_date, run_after) AS at, state FROM dag_run \
             WHERE dag_id = $1 AND COALESCE(logical_date, run_after) >= $2",
        )
        .bind(dag_id)
        .bind(to_micros(since))
        .fetch_all(self.read_pool())
        .await?;
        let mut days: BTreeMap<(chrono::NaiveDate, String), i64> = BTreeMap::new();
        for r in rows {
            let day = from_micros(r.try_get("at")?).date_naive();
            *days.entry((day, r.try_get("state")?)).or_default() += 1;
        }
        Ok(days.into_iter().map(|((d, s), n)| (d, s, n)).collect())
    }
}
