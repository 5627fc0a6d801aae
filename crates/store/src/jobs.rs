//! Jobs: each scheduler (and later triggerer, dag processor) records that it is alive, so
//! that `/health` can tell whether anything is scheduling.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::{Result, Store, opt_from_micros, to_micros};

impl Store {
    /// Starts a job row (`SchedulerJob`, ...) in state `running`; returns its id.
    pub async fn job_start(
        &self,
        job_type: &str,
        hostname: &str,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "INSERT INTO job (job_type, hostname, state, start_date, latest_heartbeat) \
             VALUES ($1, $2, 'running', $3, $3) RETURNING id",
        )
        .bind(job_type)
        .bind(hostname)
        .bind(to_micros(now))
        .fetch_one(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(row.try_get("id")?)
    }

    pub async fn job_heartbeat(&self, id: i64, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE job SET latest_heartbeat = $1 WHERE id = $2")
            .bind(to_micros(now))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Marks a job finished (a clean shutdown).
    pub async fn job_end(&self, id: i64, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE job SET state = 'success', end_date = $1 WHERE id = $2")
            .bind(to_micros(now))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// The latest heartbeat of any running job of this type.
    pub async fn job_latest_heartbeat(&self, job_type: &str) -> Result<Option<DateTime<Utc>>> {
        let row = sqlx::query(
            "SELECT MAX(latest_heartbeat) AS hb FROM job WHERE job_type = $1 AND state = 'running'",
        )
        .bind(job_type)
        .fetch_one(self.read_pool())
        .await?;
        Ok(opt_from_micros(row.try_get("hb")?))
    }

    /// Heartbeat with a state: `running`, or `degraded` while the job cannot do its work (a
    /// Kafka consumer that cannot reach its broker).
    pub async fn job_heartbeat_state(
        &self,
        id: i64,
        state: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE job SET latest_heartbeat = $1, state = $2 WHERE id = $3")
            .bind(to_micros(now))
            .bind(state)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// The unfinished job of this type with the newest heartbeat: its state and heartbeat.
    pub async fn job_latest(&self, job_type: &str) -> Result<Option<(String, DateTime<Utc>)>> {
        let row = sqlx::query(
            "SELECT state, latest_heartbeat FROM job WHERE job_type = $1 AND end_date IS NULL \
             ORDER BY latest_heartbeat DESC LIMIT 1",
        )
        .bind(job_type)
        .fetch_optional(self.read_pool())
        .await?;
        row.map(|r| {
            Ok((
                r.try_get("state")?,
                crate::from_micros(r.try_get("latest_heartbeat")?),
            ))
        })
        .transpose()
    }
}
