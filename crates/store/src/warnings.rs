//! DAG warnings (Airflow's `dag_warning`), favourite DAGs, and run counts per DAG and state
//! (`dagStats`).

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::{Result, Store, from_micros, to_micros};

/// Airflow's warning for a task naming a pool that does not exist.
pub const WARNING_NONEXISTENT_POOL: &str = "non-existent pool";
/// flow's warning for a connection a DAG's Kafka trigger needs and cannot use.
pub const WARNING_CONNECTION: &str = "missing connection";

/// One standing problem with a DAG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagWarningRow {
    pub dag_id: String,
    pub warning_type: String,
    pub message: String,
    pub timestamp: DateTime<Utc>,
}

impl Store {
    /// Records (or updates) a warning; returns whether it is new or its message changed, so
    /// that the caller logs a problem once, not at every retry.
    pub async fn dag_warning_set(
        &self,
        dag_id: &str,
        warning_type: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let current: Option<String> = sqlx::query_scalar(
            "SELECT message FROM dag_warning WHERE dag_id = $1 AND warning_type = $2",
        )
        .bind(dag_id)
        .bind(warning_type)
        .fetch_optional(self.read_pool())
        .await?;
        if current.as_deref() == Some(message) {
            return Ok(false);
        }
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO dag_warning (dag_id, warning_type, message, timestamp) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (dag_id, warning_type) \
             DO UPDATE SET message = excluded.message, timestamp = excluded.timestamp",
        )
        .bind(dag_id)
        .bind(warning_type)
        .bind(message)
        .bind(to_micros(now))
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(true)
    }

    /// Removes a warning once its cause is gone; returns whether there was one.
    pub async fn dag_warning_clear(&self, dag_id: &str, warning_type: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM dag_warning WHERE dag_id = $1 AND warning_type = $2")
            .bind(dag_id)
            .bind(warning_type)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(n > 0)
    }

    /// Makes `(dag_id, message)` the only warnings of `warning_type`, in one transaction,
    /// writing only what changed.
    pub async fn dag_warnings_sync(
        &self,
        warning_type: &str,
        warnings: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let current = self.dag_warnings(None, Some(warning_type)).await?;
        let same = current.len() == warnings.len()
            && current.iter().all(|c| {
                warnings
                    .iter()
                    .any(|(d, m)| *d == c.dag_id && *m == c.message)
            });
        if same {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM dag_warning WHERE warning_type = $1")
            .bind(warning_type)
            .execute(&mut *tx)
            .await?;
        for (dag_id, message) in warnings {
            let kept = current
                .iter()
                .find(|c| c.dag_id == *dag_id && c.message == *message)
                .map_or(now, |c| c.timestamp);
            sqlx::query(
                "INSERT INTO dag_warning (dag_id, warning_type, message, timestamp) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(dag_id)
            .bind(warning_type)
            .bind(message)
            .bind(to_micros(kept))
            .execute(&mut *tx)
            .await?;
        }
        self.commit(tx).await
    }

    /// Warnings, optionally of one DAG and one type, by DAG then type.
    pub async fn dag_warnings(
        &self,
        dag_id: Option<&str>,
        warning_type: Option<&str>,
    ) -> Result<Vec<DagWarningRow>> {
        let rows = sqlx::query(
            "SELECT dag_id, warning_type, message, timestamp FROM dag_warning \
             WHERE ($1 IS NULL OR dag_id = $1) AND ($2 IS NULL OR warning_type = $2) \
             ORDER BY dag_id, warning_type",
        )
        .bind(dag_id)
        .bind(warning_type)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DagWarningRow {
                    dag_id: r.try_get("dag_id")?,
                    warning_type: r.try_get("warning_type")?,
                    message: r.try_get("message")?,
                    timestamp: from_micros(r.try_get("timestamp")?),
                })
            })
            .collect()
    }

    /// Marks or unmarks a DAG as one of `username`'s favourites; returns whether that changed
    /// anything.
    pub async fn dag_favorite_set(&self, username: &str, dag_id: &str, on: bool) -> Result<bool> {
        let sql = if on {
            "INSERT INTO dag_favorite (username, dag_id) VALUES ($1, $2) \
             ON CONFLICT (username, dag_id) DO NOTHING"
        } else {
            "DELETE FROM dag_favorite WHERE username = $1 AND dag_id = $2"
        };
        let mut tx = self.begin().await?;
        let n = sqlx::query(sql)
            .bind(username)
            .bind(dag_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(n > 0)
    }

    /// `username`'s favourite DAGs.
    pub async fn dag_favorites(&self, username: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT dag_id FROM dag_favorite WHERE username = $1 ORDER BY dag_id",
        )
        .bind(username)
        .fetch_all(self.read_pool())
        .await?)
    }

    /// How many runs each DAG has in each state: `(dag_id, state, count)`.
    pub async fn dag_run_state_counts(&self) -> Result<Vec<(String, String, i64)>> {
        let rows =
            sqlx::query("SELECT dag_id, state, COUNT(*) AS n FROM dag_run GROUP BY dag_id, state")
                .fetch_all(self.read_pool())
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("dag_id")?, r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }
}
