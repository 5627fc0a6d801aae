//! What `/metrics` reads from the database at scrape time: small counts on indexed columns,
//! so that a scrape every few seconds costs next to nothing.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::pools::PoolRow;
use crate::{Result, Store};

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
