//! Lifecycle events: every task instance transition (`ti_transition`) and dag run state change
//! (`dag_run_transition`) as JSON, read in id order by the event publisher.

use serde_json::{Value as Json, json};
use sqlx::Row;

use crate::{Result, Store, from_micros};

/// Where a reader of the event tables is: the last id it has of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventCursor {
    pub task_instance: i64,
    pub dag_run: i64,
}

impl Store {
    /// The newest ids: a reader starting now begins after them.
    pub async fn event_cursor_now(&self) -> Result<EventCursor> {
        let ti: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM ti_transition")
            .fetch_one(self.read_pool())
            .await?;
        let run: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM dag_run_transition")
            .fetch_one(self.read_pool())
            .await?;
        Ok(EventCursor {
            task_instance: ti.unwrap_or(0),
            dag_run: run.unwrap_or(0),
        })
    }

    /// Up to `limit` events of each kind after `cursor`, as `(key, JSON)` pairs (the key is
    /// `dag_id/run_id[/task_id]`, for partitioning), and the cursor after them.
    pub async fn events_after(
        &self,
        cursor: EventCursor,
        limit: i64,
    ) -> Result<(Vec<(String, Json)>, EventCursor)> {
        let mut out = Vec::new();
        let mut next = cursor;
        let rows = sqlx::query(
            "SELECT id, dag_id, run_id, task_id, map_index, try_number, from_state, to_state, \
             actor, reason, at FROM ti_transition WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(cursor.task_instance)
        .bind(limit)
        .fetch_all(self.read_pool())
        .await?;
        for r in &rows {
            let dag_id: String = r.try_get("dag_id")?;
            let run_id: String = r.try_get("run_id")?;
            let task_id: String = r.try_get("task_id")?;
            next.task_instance = r.try_get("id")?;
            out.push((
                format!("{dag_id}/{run_id}/{task_id}"),
                json!({
                    "event": "task_instance.state_changed",
                    "dag_id": dag_id,
                    "run_id": run_id,
                    "task_id": task_id,
                    "map_index": r.try_get::<i64, _>("map_index")?,
                    "try_number": r.try_get::<i64, _>("try_number")?,
                    "previous_state": r.try_get::<String, _>("from_state")?,
                    "state": r.try_get::<String, _>("to_state")?,
                    "actor": r.try_get::<String, _>("actor")?,
                    "reason": r.try_get::<Option<String>, _>("reason")?,
                    "at": from_micros(r.try_get("at")?).to_rfc3339(),
                }),
            ));
        }
        let rows = sqlx::query(
            "SELECT id, dag_id, run_id, run_type, to_state, at FROM dag_run_transition \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(cursor.dag_run)
        .bind(limit)
        .fetch_all(self.read_pool())
        .await?;
        for r in &rows {
            let dag_id: String = r.try_get("dag_id")?;
            let run_id: String = r.try_get("run_id")?;
            next.dag_run = r.try_get("id")?;
            out.push((
                format!("{dag_id}/{run_id}"),
                json!({
                    "event": "dag_run.state_changed",
                    "dag_id": dag_id,
                    "run_id": run_id,
                    "run_type": r.try_get::<String, _>("run_type")?,
                    "state": r.try_get::<String, _>("to_state")?,
                    "at": from_micros(r.try_get("at")?).to_rfc3339(),
                }),
            ));
        }
        Ok((out, next))
    }
}
