//! XCom: small JSON values tasks hand to each other, keyed by task instance and key.

use chrono::{DateTime, Utc};
use sqlx::{Any, Row, Transaction};

use crate::task_instances::TiKey;
use crate::{Result, Store, StoreError, from_micros, to_micros};

#[derive(Debug, Clone, PartialEq)]
pub struct XcomRow {
    pub task_id: String,
    pub map_index: i64,
    pub key: String,
    pub value: serde_json::Value,
    pub timestamp: DateTime<Utc>,
}

pub(crate) async fn upsert(
    tx: &mut Transaction<'static, Any>,
    ti: &TiKey,
    key: &str,
    value: &serde_json::Value,
    now_us: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO xcom (dag_id, run_id, task_id, map_index, key, value, timestamp) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (dag_id, run_id, task_id, map_index, key) DO UPDATE SET \
         value = excluded.value, timestamp = excluded.timestamp",
    )
    .bind(&ti.dag_id)
    .bind(&ti.run_id)
    .bind(&ti.task_id)
    .bind(ti.map_index)
    .bind(key)
    .bind(value.to_string())
    .bind(now_us)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts or replaces many task instances' XComs, in as few statements as the backend's
/// parameter limit allows (a batch of finished tries writes its return values at once).
pub(crate) async fn upsert_many(
    tx: &mut Transaction<'static, Any>,
    rows: &[(&TiKey, &str, &serde_json::Value)],
    now_us: i64,
) -> Result<()> {
    const COLS: usize = 7;
    for chunk in rows.chunks(crate::rows_per_statement(tx, COLS)) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", crate::placeholders(i * COLS + 1, COLS)))
            .collect();
        let sql = format!(
            "INSERT INTO xcom (dag_id, run_id, task_id, map_index, key, value, timestamp) \
             VALUES {} ON CONFLICT (dag_id, run_id, task_id, map_index, key) DO UPDATE SET \
             value = excluded.value, timestamp = excluded.timestamp",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (ti, key, value) in chunk {
            q = q
                .bind(&ti.dag_id)
                .bind(&ti.run_id)
                .bind(&ti.task_id)
                .bind(ti.map_index)
                .bind(*key)
                .bind(value.to_string())
                .bind(now_us);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Removes a task instance's XComs (when it is cleared to run again).
pub(crate) async fn delete_in(tx: &mut Transaction<'static, Any>, ti: &TiKey) -> Result<()> {
    sqlx::query(
        "DELETE FROM xcom WHERE dag_id = $1 AND run_id = $2 AND task_id = $3 AND map_index = $4",
    )
    .bind(&ti.dag_id)
    .bind(&ti.run_id)
    .bind(&ti.task_id)
    .bind(ti.map_index)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    pub async fn xcom_push(
        &self,
        ti: &TiKey,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        upsert(&mut tx, ti, key, value, to_micros(now)).await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Deletes one XCom; whether it existed.
    pub async fn xcom_delete(&self, ti: &TiKey, key: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "DELETE FROM xcom WHERE dag_id = $1 AND run_id = $2 AND task_id = $3 \
             AND map_index = $4 AND key = $5",
        )
        .bind(ti.dag_id.as_str())
        .bind(ti.run_id.as_str())
        .bind(ti.task_id.as_str())
        .bind(ti.map_index)
        .bind(key)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        self.commit(tx).await?;
        Ok(n > 0)
    }

    /// Every XCom of a run (templates pull from upstream tasks of the same run).
    pub async fn xcom_list_for_run(&self, dag_id: &str, run_id: &str) -> Result<Vec<XcomRow>> {
        let rows = sqlx::query(
            "SELECT task_id, map_index, key, value, timestamp FROM xcom \
             WHERE dag_id = $1 AND run_id = $2 ORDER BY task_id, map_index, key",
        )
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter()
            .map(|r| {
                let value: String = r.try_get("value")?;
                Ok(XcomRow {
                    task_id: r.try_get("task_id")?,
                    map_index: r.try_get("map_index")?,
                    key: r.try_get("key")?,
                    value: serde_json::from_str(&value)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    timestamp: from_micros(r.try_get("timestamp")?),
                })
            })
            .collect()
    }
}
