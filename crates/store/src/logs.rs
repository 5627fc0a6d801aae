//! Task logs, stored as lines per try so that the webserver can serve the log of a task that
//! ran on any machine, and follow it while it runs.

use chrono::{DateTime, Utc};
use sqlx::{Any, Row, Transaction};

use crate::task_instances::TiKey;
use crate::{Result, Store, from_micros, placeholders, to_micros};

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    /// `stdout`, `stderr` or `flow` (lines written by flow itself).
    pub stream: String,
    pub line: String,
}

/// A page of a log: lines after a position, and the position to continue from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRead {
    pub lines: Vec<LogLine>,
    /// Pass back as `after` to read only newer lines (live tail).
    pub next: i64,
}

/// Appends lines inside a caller's transaction, in multi-row statements.
pub(crate) async fn append_in(
    tx: &mut Transaction<'static, Any>,
    ti: &TiKey,
    try_number: i64,
    lines: &[LogLine],
) -> Result<()> {
    let rows: Vec<(&TiKey, i64, &LogLine)> = lines.iter().map(|l| (ti, try_number, l)).collect();
    append_many_in(tx, &rows).await
}

/// Appends the lines of several tries in as few statements as the backend allows.
pub(crate) async fn append_many_in(
    tx: &mut Transaction<'static, Any>,
    rows: &[(&TiKey, i64, &LogLine)],
) -> Result<()> {
    const COLS: usize = 8;
    for chunk in rows.chunks(crate::rows_per_statement(tx, COLS)) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", placeholders(i * COLS + 1, COLS)))
            .collect();
        let sql = format!(
            "INSERT INTO log_chunk (dag_id, run_id, task_id, map_index, try_number, at, \
             stream, line) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (ti, try_number, l) in chunk {
            q = q
                .bind(&ti.dag_id)
                .bind(&ti.run_id)
                .bind(&ti.task_id)
                .bind(ti.map_index)
                .bind(*try_number)
                .bind(to_micros(l.at))
                .bind(&l.stream)
                .bind(&l.line);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

impl Store {
    /// Appends lines to a try's log.
    pub async fn log_append(&self, ti: &TiKey, try_number: i64, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        append_in(&mut tx, ti, try_number, lines).await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Lines of a try's log after position `after` (0 for the start), at most `limit`.
    pub async fn log_read(
        &self,
        ti: &TiKey,
        try_number: i64,
        after: i64,
        limit: i64,
    ) -> Result<LogRead> {
        let rows = sqlx::query(
            "SELECT id, at, stream, line FROM log_chunk WHERE dag_id = $1 AND run_id = $2 \
             AND task_id = $3 AND map_index = $4 AND try_number = $5 AND id > $6 \
             ORDER BY id LIMIT $7",
        )
        .bind(&ti.dag_id)
        .bind(&ti.run_id)
        .bind(&ti.task_id)
        .bind(ti.map_index)
        .bind(try_number)
        .bind(after)
        .bind(limit)
        .fetch_all(self.read_pool())
        .await?;
        let mut next = after;
        let mut lines = Vec::with_capacity(rows.len());
        for r in rows {
            next = r.try_get("id")?;
            lines.push(LogLine {
                at: from_micros(r.try_get("at")?),
                stream: r.try_get("stream")?,
                line: r.try_get("line")?,
            });
        }
        Ok(LogRead { lines, next })
    }
}

impl Store {
    /// The last `n` lines of a try's log, oldest first (the dashboard's failure excerpts).
    pub async fn log_tail(&self, ti: &TiKey, try_number: i64, n: i64) -> Result<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT at, stream, line FROM log_chunk WHERE dag_id = $1 AND run_id = $2 \
             AND task_id = $3 AND map_index = $4 AND try_number = $5 ORDER BY id DESC LIMIT $6",
        )
        .bind(&ti.dag_id)
        .bind(&ti.run_id)
        .bind(&ti.task_id)
        .bind(ti.map_index)
        .bind(try_number)
        .bind(n)
        .fetch_all(self.read_pool())
        .await?;
        let mut lines = rows
            .iter()
            .map(|r| {
                Ok(LogLine {
                    at: from_micros(r.try_get("at")?),
                    stream: r.try_get("stream")?,
                    line: r.try_get("line")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        lines.reverse();
        Ok(lines)
    }
}
