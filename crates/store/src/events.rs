//! Lifecycle events: every task instance transition (`ti_transition`) and dag run state change
//! (`dag_run_transition`) as JSON, read in id order by the event publisher.

use serde_json::{Value as Json, json};
use sqlx::Row;

use crate::{Result, Store, from_micros};

/// Which table an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventTable {
    TaskInstance,
    DagRun,
}

/// One lifecycle event: its row, a key (`dag_id/run_id[/task_id]`, for partitioning) and JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleEvent {
    pub table: EventTable,
    pub id: i64,
    pub key: String,
    pub json: Json,
}

/// Where a reader of the event tables is: the last id it has of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventCursor {
    pub task_instance: i64,
    pub dag_run: i64,
}

/// Ids below a cursor that were not committed yet when the cursor passed them (PostgreSQL
/// hands ids out before commit): persisted with the cursor so that a publisher taking over
/// still looks for them.
pub type EventGaps = Vec<(EventTable, i64)>;

/// `flow_meta` keys of the publisher's lease (`holder expires_us`) and cursor (`ti run`).
const LEASE_KEY: &str = "events_lease";
const CURSOR_KEY: &str = "events_cursor";
const GAPS_KEY: &str = "events_gaps";

impl Store {
    /// Takes or renews the event publisher's lease for `holder` until `until`, if it is free,
    /// expired or already `holder`'s. Returns the persisted cursor and open gaps when
    /// `holder` holds the lease (the start, on a database no publisher ever ran on), `None`
    /// when another publisher does.
    pub async fn events_lease(
        &self,
        holder: &str,
        until: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(EventCursor, EventGaps)>> {
        let mut tx = self.begin().await?;
        // The row exists before anyone locks it: two first publishers starting at once must
        // not both find no row, and both take the lease.
        sqlx::query(
            "INSERT INTO flow_meta (key, value) VALUES ($1, ' 0') ON CONFLICT (key) DO NOTHING",
        )
        .bind(LEASE_KEY)
        .execute(&mut *tx)
        .await?;
        let lock = match self.backend() {
            crate::Backend::Postgres => " FOR UPDATE",
            crate::Backend::Sqlite => "",
        };
        let current: Option<String> =
            sqlx::query_scalar(&format!("SELECT value FROM flow_meta WHERE key = $1{lock}"))
                .bind(LEASE_KEY)
                .fetch_optional(&mut *tx)
                .await?;
        let taken_by_other = current.as_deref().is_some_and(|v| {
            let mut parts = v.splitn(2, ' ');
            let (who, expires) = (parts.next().unwrap_or(""), parts.next().unwrap_or("0"));
            who != holder && expires.parse::<i64>().unwrap_or(0) > crate::to_micros(now)
        });
        if taken_by_other {
            tx.rollback().await?;
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO flow_meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(LEASE_KEY)
        .bind(format!("{holder} {}", crate::to_micros(until)))
        .execute(&mut *tx)
        .await?;
        let stored: Option<String> =
            sqlx::query_scalar("SELECT value FROM flow_meta WHERE key = $1")
                .bind(CURSOR_KEY)
                .fetch_optional(&mut *tx)
                .await?;
        // The first publisher ever starts from the beginning: events made before any
        // publisher ran are published too (a long history is cut to `max_backlog` by the
        // publisher, which says so).
        let cursor = stored.as_deref().and_then(parse_cursor).unwrap_or_default();
        let gaps: Option<String> = sqlx::query_scalar("SELECT value FROM flow_meta WHERE key = $1")
            .bind(GAPS_KEY)
            .fetch_optional(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(Some((
            cursor,
            gaps.as_deref().map(parse_gaps).unwrap_or_default(),
        )))
    }

    /// Records that events up to `cursor` are published, if `holder` still holds the lease.
    /// Returns false when it does not (another publisher took over; this one must stop).
    pub async fn events_advance(
        &self,
        holder: &str,
        cursor: EventCursor,
        gaps: &[(EventTable, i64)],
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let current: Option<String> =
            sqlx::query_scalar("SELECT value FROM flow_meta WHERE key = $1")
                .bind(LEASE_KEY)
                .fetch_optional(&mut *tx)
                .await?;
        if current.as_deref().and_then(|v| v.split(' ').next()) != Some(holder) {
            tx.rollback().await?;
            return Ok(false);
        }
        write_cursor(&mut tx, cursor, gaps).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    /// Gives the lease up (a clean stop), so another publisher takes over at once.
    pub async fn events_release(&self, holder: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM flow_meta WHERE key = $1 AND value LIKE $2")
            .bind(LEASE_KEY)
            .bind(format!("{holder} %"))
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(())
    }

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

    /// Up to `limit` events of each kind after `cursor`, and the cursor after them.
    pub async fn events_after(
        &self,
        cursor: EventCursor,
        limit: i64,
    ) -> Result<(Vec<LifecycleEvent>, EventCursor)> {
        let ti = self
            .ti_events(
                &format!("id > $1 ORDER BY id LIMIT {limit}"),
                &[cursor.task_instance],
            )
            .await?;
        let run = self
            .run_events(
                &format!("id > $1 ORDER BY id LIMIT {limit}"),
                &[cursor.dag_run],
            )
            .await?;
        let next = EventCursor {
            task_instance: ti.last().map_or(cursor.task_instance, |e| e.id),
            dag_run: run.last().map_or(cursor.dag_run, |e| e.id),
        };
        Ok((ti.into_iter().chain(run).collect(), next))
    }

    /// The events with these ids (ids a reader skipped because their transaction had not
    /// committed yet: PostgreSQL hands out ids before commit, so they can appear late).
    pub async fn events_by_id(
        &self,
        ti_ids: &[i64],
        run_ids: &[i64],
    ) -> Result<Vec<LifecycleEvent>> {
        let list = |ids: &[i64]| {
            (1..=ids.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = Vec::new();
        if !ti_ids.is_empty() {
            out.extend(
                self.ti_events(&format!("id IN ({}) ORDER BY id", list(ti_ids)), ti_ids)
                    .await?,
            );
        }
        if !run_ids.is_empty() {
            out.extend(
                self.run_events(&format!("id IN ({}) ORDER BY id", list(run_ids)), run_ids)
                    .await?,
            );
        }
        Ok(out)
    }

    async fn ti_events(&self, filter: &str, binds: &[i64]) -> Result<Vec<LifecycleEvent>> {
        let sql = format!(
            "SELECT id, dag_id, run_id, task_id, map_index, try_number, from_state, to_state, \
             actor, reason, at FROM ti_transition WHERE {filter}"
        );
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(*b);
        }
        let rows = q.fetch_all(self.read_pool()).await?;
        rows.iter()
            .map(|r| {
                let dag_id: String = r.try_get("dag_id")?;
                let run_id: String = r.try_get("run_id")?;
                let task_id: String = r.try_get("task_id")?;
                Ok(LifecycleEvent {
                    table: EventTable::TaskInstance,
                    id: r.try_get("id")?,
                    key: format!("{dag_id}/{run_id}/{task_id}"),
                    json: json!({
                        "event": "task_instance.state_changed",
                        // Unique per event: a consumer can drop the rare repeat (a publisher
                        // that died between the broker's ack and recording its cursor).
                        "event_id": format!("ti-{}", r.try_get::<i64, _>("id")?),
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
                })
            })
            .collect()
    }

    async fn run_events(&self, filter: &str, binds: &[i64]) -> Result<Vec<LifecycleEvent>> {
        let sql = format!(
            "SELECT id, dag_id, run_id, run_type, from_state, to_state, actor, reason, at \
             FROM dag_run_transition WHERE {filter}"
        );
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(*b);
        }
        let rows = q.fetch_all(self.read_pool()).await?;
        rows.iter()
            .map(|r| {
                let dag_id: String = r.try_get("dag_id")?;
                let run_id: String = r.try_get("run_id")?;
                Ok(LifecycleEvent {
                    table: EventTable::DagRun,
                    id: r.try_get("id")?,
                    key: format!("{dag_id}/{run_id}"),
                    json: json!({
                        "event": "dag_run.state_changed",
                        "event_id": format!("run-{}", r.try_get::<i64, _>("id")?),
                        "dag_id": dag_id,
                        "run_id": run_id,
                        "run_type": r.try_get::<String, _>("run_type")?,
                        "previous_state": r.try_get::<Option<String>, _>("from_state")?,
                        "state": r.try_get::<String, _>("to_state")?,
                        "actor": r.try_get::<String, _>("actor")?,
                        "reason": r.try_get::<Option<String>, _>("reason")?,
                        "at": from_micros(r.try_get("at")?).to_rfc3339(),
                    }),
                })
            })
            .collect()
    }
}

fn parse_cursor(v: &str) -> Option<EventCursor> {
    let (ti, run) = v.split_once(' ')?;
    Some(EventCursor {
        task_instance: ti.parse().ok()?,
        dag_run: run.parse().ok()?,
    })
}

async fn write_cursor(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    c: EventCursor,
    gaps: &[(EventTable, i64)],
) -> Result<()> {
    let gaps: Vec<String> = gaps
        .iter()
        .map(|(t, id)| match t {
            EventTable::TaskInstance => format!("ti:{id}"),
            EventTable::DagRun => format!("run:{id}"),
        })
        .collect();
    for (key, value) in [
        (CURSOR_KEY, format!("{} {}", c.task_instance, c.dag_run)),
        (GAPS_KEY, gaps.join(",")),
    ] {
        sqlx::query(
            "INSERT INTO flow_meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn parse_gaps(v: &str) -> EventGaps {
    v.split(',')
        .filter_map(|g| {
            let (t, id) = g.split_once(':')?;
            let table = match t {
                "ti" => EventTable::TaskInstance,
                "run" => EventTable::DagRun,
                _ => return None,
            };
            Some((table, id.parse().ok()?))
        })
        .collect()
}
