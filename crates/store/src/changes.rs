//! What changed since a cursor, for the scheduler's view of active runs: each pass reads the
//! transitions recorded after the last one it saw and re-reads only the runs they touched, so
//! that a pass costs in proportion to what changed, not to everything active.
//!
//! Transitions are tailed by id. PostgreSQL hands ids out before commit, so a lower id can
//! appear after a higher one: the reader keeps the ids it skipped ("gaps") and asks for them
//! again until they appear or are old enough to have been rolled back.

use sqlx::Row;

use crate::dag_runs::{DagRunRow, RUN_COLUMNS, run_row};
use crate::task_instances::{CorruptRow, TiRow, lean_ti_row};
use crate::{Backend, EventCursor, EventTable, Result, Store, placeholders};

/// A transition's id and the run it touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTouch {
    pub table: EventTable,
    pub id: i64,
    pub dag_id: String,
    pub run_id: String,
}

/// A run's key: (dag_id, run_id).
pub type RunKey = (String, String);

fn table_name(table: EventTable) -> &'static str {
    match table {
        EventTable::TaskInstance => "ti_transition",
        EventTable::DagRun => "dag_run_transition",
    }
}

impl Store {
    /// The transitions of both tables after `cursor` (at most `limit` of each, in id order)
    /// and those whose ids are in `gaps`.
    pub async fn runs_touched(
        &self,
        cursor: EventCursor,
        gaps: &[(EventTable, i64)],
        limit: i64,
    ) -> Result<Vec<RunTouch>> {
        let mut out = Vec::new();
        for (table, after) in [
            (EventTable::TaskInstance, cursor.task_instance),
            (EventTable::DagRun, cursor.dag_run),
        ] {
            let name = table_name(table);
            // The upper bound is never reached; as a range it makes PostgreSQL estimate few
            // rows even before the table has statistics, so it stays on the id index.
            let rows = sqlx::query(&format!(
                "SELECT id, dag_id, run_id FROM {name} WHERE id > $1 AND id <= $2 \
                 ORDER BY id LIMIT {limit}"
            ))
            .bind(after)
            .bind(after.saturating_add(1 << 40))
            .persistent(self.keep_statement())
            .fetch_all(self.read_pool())
            .await?;
            out.extend(touches(table, &rows)?);
            let ids: Vec<i64> = gaps
                .iter()
                .filter(|(t, _)| *t == table)
                .map(|(_, id)| *id)
                .collect();
            for chunk in ids.chunks(self.keys_per_statement(1)) {
                let sql = format!(
                    "SELECT id, dag_id, run_id FROM {name} WHERE id IN ({})",
                    placeholders(1, chunk.len())
                );
                let mut q = sqlx::query(&sql);
                for id in chunk {
                    q = q.bind(*id);
                }
                out.extend(touches(table, &q.fetch_all(self.read_pool()).await?)?);
            }
        }
        Ok(out)
    }

    /// The first `limit` ids of `table` above `after`, ascending: with the newest id, they
    /// tell a reader starting now which ids below it are still uncommitted.
    pub async fn transition_ids_after(
        &self,
        table: EventTable,
        after: i64,
        limit: i64,
    ) -> Result<Vec<i64>> {
        let name = table_name(table);
        Ok(sqlx::query_scalar(&format!(
            "SELECT id FROM {name} WHERE id > $1 ORDER BY id LIMIT {limit}"
        ))
        .bind(after)
        .fetch_all(self.read_pool())
        .await?)
    }

    /// These runs, those that exist, and the keys of rows that cannot be read.
    pub async fn dag_runs_get(&self, keys: &[RunKey]) -> Result<(Vec<DagRunRow>, Vec<CorruptRow>)> {
        let mut out = Vec::with_capacity(keys.len());
        let mut corrupt = Vec::new();
        for chunk in keys.chunks(self.keys_per_statement(2)) {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM dag_run WHERE (dag_id, run_id) IN ({})",
                pairs(chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for (dag_id, run_id) in chunk {
                q = q.bind(dag_id).bind(run_id);
            }
            for r in &q.fetch_all(self.read_pool()).await? {
                match run_row(r) {
                    Ok(run) => out.push(run),
                    Err(e) => corrupt.push(CorruptRow::of(r, e)),
                }
            }
        }
        Ok((out, corrupt))
    }

    /// The task instances of these runs, with what scheduling needs (as
    /// [`Store::ti_list_active_runs`]), and the rows that cannot be read.
    pub async fn ti_list_runs(&self, keys: &[RunKey]) -> Result<(Vec<TiRow>, Vec<CorruptRow>)> {
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        for chunk in keys.chunks(self.keys_per_statement(2)) {
            let sql = format!(
                "SELECT dag_id, run_id, task_id, map_index, state, try_number, max_tries, pool, \
                 pool_slots, priority_weight, scheduled_dttm, next_retry_at, end_date FROM task_instance \
                 WHERE (dag_id, run_id) IN ({})",
                pairs(chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for (dag_id, run_id) in chunk {
                q = q.bind(dag_id).bind(run_id);
            }
            for r in &q.fetch_all(self.read_pool()).await? {
                match lean_ti_row(r) {
                    Ok(ti) => out.push(ti),
                    Err(e) => corrupt.push(CorruptRow::of(r, e)),
                }
            }
        }
        Ok((out, corrupt))
    }

    /// How many keys of `cols` values one statement binds: SQLite's builds allow few
    /// parameters.
    fn keys_per_statement(&self, cols: usize) -> usize {
        match self.backend() {
            Backend::Postgres => 500,
            Backend::Sqlite => (256 / cols.max(1)).max(1),
        }
    }
}

/// `($1, $2), ($3, $4), ...` for `n` pairs.
fn pairs(n: usize) -> String {
    (0..n)
        .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
        .collect::<Vec<_>>()
        .join(", ")
}

fn touches(table: EventTable, rows: &[sqlx::any::AnyRow]) -> Result<Vec<RunTouch>> {
    rows.iter()
        .map(|r| {
            Ok(RunTouch {
                table,
                id: r.try_get("id")?,
                dag_id: r.try_get("dag_id")?,
                run_id: r.try_get("run_id")?,
            })
        })
        .collect()
}
