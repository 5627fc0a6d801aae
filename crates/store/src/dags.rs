//! DAGs, their serialized form and source, and import errors: what the DAG processor writes
//! and everyone else reads.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, from_micros, opt_from_micros, placeholders, to_micros};

/// One DAG as the processor hands it over: display fields plus the serialized DAG.
#[derive(Debug, Clone)]
pub struct DagRecord {
    pub dag_id: String,
    pub owners: String,
    pub description: Option<String>,
    pub schedule: String,
    pub timetable_summary: String,
    pub tags: Vec<String>,
    pub max_active_runs: i64,
    pub max_active_tasks: i64,
    /// Paused state for a DAG seen for the first time.
    pub paused_on_creation: bool,
    /// The serialized DAG (JSON) and a hash of it.
    pub data: String,
    pub dag_hash: String,
    /// The assets it schedules on, and its tasks' outlets and inlets.
    pub assets: Vec<crate::AssetUse>,
}

/// The result of parsing one file.
#[derive(Debug, Clone)]
pub struct FileSync {
    pub fileloc: String,
    pub relative_fileloc: String,
    pub source: String,
    pub source_hash: String,
    pub dags: Vec<DagRecord>,
    /// The file's diagnostics when it has errors; `None` clears a previous import error.
    pub import_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DagRow {
    pub dag_id: String,
    pub fileloc: String,
    pub relative_fileloc: String,
    pub is_paused: bool,
    pub is_active: bool,
    pub owners: String,
    pub description: Option<String>,
    pub schedule: String,
    pub timetable_summary: String,
    pub tags: Vec<String>,
    pub max_active_runs: i64,
    pub max_active_tasks: i64,
    pub dag_hash: String,
    pub next_dagrun: Option<DateTime<Utc>>,
    pub next_dagrun_data_interval_start: Option<DateTime<Utc>>,
    pub next_dagrun_data_interval_end: Option<DateTime<Utc>>,
    pub next_dagrun_create_after: Option<DateTime<Utc>>,
    pub last_parsed_time: DateTime<Utc>,
}

/// The next automated run the scheduler will create for a DAG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextRun {
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub create_after: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportErrorRow {
    pub id: i64,
    pub filename: String,
    pub stacktrace: String,
    pub timestamp: DateTime<Utc>,
}

const DAG_COLUMNS: &str = "dag_id, fileloc, relative_fileloc, is_paused, is_active, owners, \
    description, schedule, timetable_summary, tags, max_active_runs, max_active_tasks, dag_hash, \
    next_dagrun, next_dagrun_data_interval_start, next_dagrun_data_interval_end, \
    next_dagrun_create_after, last_parsed_time";

fn dag_row(r: &AnyRow) -> Result<DagRow> {
    let tags: String = r.try_get("tags")?;
    Ok(DagRow {
        dag_id: r.try_get("dag_id")?,
        fileloc: r.try_get("fileloc")?,
        relative_fileloc: r.try_get("relative_fileloc")?,
        is_paused: r.try_get::<i64, _>("is_paused")? != 0,
        is_active: r.try_get::<i64, _>("is_active")? != 0,
        owners: r.try_get("owners")?,
        description: r.try_get("description")?,
        schedule: r.try_get("schedule")?,
        timetable_summary: r.try_get("timetable_summary")?,
        tags: serde_json::from_str(&tags).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        max_active_runs: r.try_get("max_active_runs")?,
        max_active_tasks: r.try_get("max_active_tasks")?,
        dag_hash: r.try_get("dag_hash")?,
        next_dagrun: opt_from_micros(r.try_get("next_dagrun")?),
        next_dagrun_data_interval_start: opt_from_micros(
            r.try_get("next_dagrun_data_interval_start")?,
        ),
        next_dagrun_data_interval_end: opt_from_micros(r.try_get("next_dagrun_data_interval_end")?),
        next_dagrun_create_after: opt_from_micros(r.try_get("next_dagrun_create_after")?),
        last_parsed_time: from_micros(r.try_get("last_parsed_time")?),
    })
}

impl Store {
    /// Records the result of parsing one file, in one transaction: its DAGs (new ones get
    /// their paused-on-creation state, existing ones keep theirs), their serialized form, the
    /// source, and the file's import error (set or cleared). DAGs that came from this file and
    /// are no longer in it are deactivated, unless the file has errors: then a missing DAG may
    /// just be broken, and its runs continue on the last good version.
    pub async fn dag_sync_file(&self, file: &FileSync, now: DateTime<Utc>) -> Result<()> {
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        for d in &file.dags {
            let tags = serde_json::to_string(&d.tags).unwrap_or_else(|_| "[]".into());
            sqlx::query(
                "INSERT INTO dag (dag_id, fileloc, relative_fileloc, is_paused, is_active, owners, \
                 description, schedule, timetable_summary, tags, max_active_runs, max_active_tasks, \
                 dag_hash, last_parsed_time) \
                 VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (dag_id) DO UPDATE SET fileloc = excluded.fileloc, \
                 relative_fileloc = excluded.relative_fileloc, is_active = 1, \
                 owners = excluded.owners, description = excluded.description, \
                 schedule = excluded.schedule, timetable_summary = excluded.timetable_summary, \
                 tags = excluded.tags, max_active_runs = excluded.max_active_runs, \
                 max_active_tasks = excluded.max_active_tasks, dag_hash = excluded.dag_hash, \
                 last_parsed_time = excluded.last_parsed_time",
            )
            .bind(&d.dag_id)
            .bind(&file.fileloc)
            .bind(&file.relative_fileloc)
            .bind(i64::from(d.paused_on_creation))
            .bind(&d.owners)
            .bind(&d.description)
            .bind(&d.schedule)
            .bind(&d.timetable_summary)
            .bind(tags)
            .bind(d.max_active_runs)
            .bind(d.max_active_tasks)
            .bind(&d.dag_hash)
            .bind(now_us)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO serialized_dag (dag_id, data, dag_hash, fileloc, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (dag_id) DO UPDATE SET \
                 data = excluded.data, dag_hash = excluded.dag_hash, fileloc = excluded.fileloc, \
                 updated_at = excluded.updated_at",
            )
            .bind(&d.dag_id)
            .bind(&d.data)
            .bind(&d.dag_hash)
            .bind(&file.fileloc)
            .bind(now_us)
            .execute(&mut *tx)
            .await?;
            crate::assets::sync_references_in(&mut tx, &d.dag_id, &d.assets, now_us).await?;
            // A new serialized hash is a new version (the same hash again is not; two
            // processors writing the same version make one row).
            sqlx::query(
                "INSERT INTO dag_version_log (dag_id, version_number, dag_hash, fileloc, source, \
                 created_at) SELECT $1, COALESCE(MAX(version_number), 0) + 1, $2, $3, $4, $5 \
                 FROM dag_version_log WHERE dag_id = $1 ON CONFLICT DO NOTHING",
            )
            .bind(&d.dag_id)
            .bind(&d.dag_hash)
            .bind(&file.fileloc)
            .bind(&file.source)
            .bind(now_us)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO dag_code (fileloc, source, source_hash, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (fileloc) DO UPDATE SET source = excluded.source, \
             source_hash = excluded.source_hash, updated_at = excluded.updated_at",
        )
        .bind(&file.fileloc)
        .bind(&file.source)
        .bind(&file.source_hash)
        .bind(now_us)
        .execute(&mut *tx)
        .await?;
        match &file.import_error {
            Some(text) => {
                sqlx::query(
                    "INSERT INTO import_error (filename, stacktrace, timestamp) VALUES ($1, $2, $3) \
                     ON CONFLICT (filename) DO UPDATE SET stacktrace = excluded.stacktrace, \
                     timestamp = excluded.timestamp",
                )
                .bind(&file.fileloc)
                .bind(text)
                .bind(now_us)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM import_error WHERE filename = $1")
                    .bind(&file.fileloc)
                    .execute(&mut *tx)
                    .await?;
                let ids: Vec<&str> = file.dags.iter().map(|d| d.dag_id.as_str()).collect();
                let sql = if ids.is_empty() {
                    "UPDATE dag SET is_active = 0 WHERE fileloc = $1".to_owned()
                } else {
                    format!(
                        "UPDATE dag SET is_active = 0 WHERE fileloc = $1 AND dag_id NOT IN ({})",
                        placeholders(2, ids.len())
                    )
                };
                let mut q = sqlx::query(&sql).bind(&file.fileloc);
                for id in ids {
                    q = q.bind(id);
                }
                q.execute(&mut *tx).await?;
            }
        }
        drop_queues_of_inactive(&mut tx).await?;
        bump_dag_version(&mut tx).await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Deactivates the DAGs of files that no longer exist and forgets those files' import
    /// errors and source. Returns the number of DAGs deactivated.
    pub async fn dag_deactivate_missing_files(&self, present: &[String]) -> Result<u64> {
        let mut tx = self.begin().await?;
        let known: Vec<String> = sqlx::query_scalar(
            "SELECT fileloc FROM dag_code UNION SELECT filename FROM import_error \
             UNION SELECT fileloc FROM dag WHERE is_active = 1",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut deactivated = 0;
        for fileloc in known.iter().filter(|f| !present.contains(f)) {
            deactivated +=
                sqlx::query("UPDATE dag SET is_active = 0 WHERE fileloc = $1 AND is_active = 1")
                    .bind(fileloc)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            sqlx::query("DELETE FROM import_error WHERE filename = $1")
                .bind(fileloc)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM dag_code WHERE fileloc = $1")
                .bind(fileloc)
                .execute(&mut *tx)
                .await?;
        }
        if deactivated > 0 {
            drop_queues_of_inactive(&mut tx).await?;
        }
        bump_dag_version(&mut tx).await?;
        self.commit(tx).await?;
        Ok(deactivated)
    }

    /// `fileloc -> source_hash` of every file the store knows, so unchanged files are skipped.
    pub async fn dag_code_hashes(&self) -> Result<HashMap<String, String>> {
        let rows = sqlx::query("SELECT fileloc, source_hash FROM dag_code")
            .fetch_all(self.read_pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("fileloc")?, r.try_get("source_hash")?)))
            .collect()
    }

    pub async fn dag_code_get(&self, fileloc: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT source FROM dag_code WHERE fileloc = $1")
                .bind(fileloc)
                .fetch_optional(self.read_pool())
                .await?,
        )
    }

    /// Active DAGs, ordered by id.
    pub async fn dag_list(&self) -> Result<Vec<DagRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {DAG_COLUMNS} FROM dag WHERE is_active = 1 ORDER BY dag_id"
        ))
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(dag_row).collect()
    }

    pub async fn dag_get(&self, dag_id: &str) -> Result<Option<DagRow>> {
        let row = sqlx::query(&format!("SELECT {DAG_COLUMNS} FROM dag WHERE dag_id = $1"))
            .bind(dag_id)
            .fetch_optional(self.read_pool())
            .await?;
        row.as_ref().map(dag_row).transpose()
    }

    /// Returns whether the DAG exists.
    pub async fn dag_set_paused(&self, dag_id: &str, paused: bool) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("UPDATE dag SET is_paused = $1 WHERE dag_id = $2")
            .bind(i64::from(paused))
            .bind(dag_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        bump_dag_version(&mut tx).await?;
        self.commit(tx).await?;
        Ok(n > 0)
    }

    pub async fn dag_set_next_run(&self, dag_id: &str, next: Option<NextRun>) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE dag SET next_dagrun = $1, next_dagrun_data_interval_start = $2, \
             next_dagrun_data_interval_end = $3, next_dagrun_create_after = $4 WHERE dag_id = $5",
        )
        .bind(next.map(|n| to_micros(n.logical_date)))
        .bind(next.map(|n| to_micros(n.data_interval_start)))
        .bind(next.map(|n| to_micros(n.data_interval_end)))
        .bind(next.map(|n| to_micros(n.create_after)))
        .bind(dag_id)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// The serialized DAG and its hash.
    pub async fn serialized_dag_get(&self, dag_id: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT data, dag_hash FROM serialized_dag WHERE dag_id = $1")
            .bind(dag_id)
            .fetch_optional(self.read_pool())
            .await?;
        row.map(|r| Ok((r.try_get("data")?, r.try_get("dag_hash")?)))
            .transpose()
    }

    /// The hash of a serialized DAG, to check a cache without reading the DAG.
    /// A DAG's serialized hash and the hash of its bundle (if it has one), in one read.
    pub async fn serialized_dag_version(
        &self,
        dag_id: &str,
    ) -> Result<Option<(String, Option<String>)>> {
        let row = sqlx::query("SELECT dag_hash, bundle_hash FROM serialized_dag WHERE dag_id = $1")
            .bind(dag_id)
            .fetch_optional(self.read_pool())
            .await?;
        row.map(|r| Ok((r.try_get("dag_hash")?, r.try_get("bundle_hash")?)))
            .transpose()
    }

    pub async fn import_errors(&self) -> Result<Vec<ImportErrorRow>> {
        let rows = sqlx::query(
            "SELECT id, filename, stacktrace, timestamp FROM import_error ORDER BY filename",
        )
        .fetch_all(self.read_pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ImportErrorRow {
                    id: r.try_get("id")?,
                    filename: r.try_get("filename")?,
                    stacktrace: r.try_get("stacktrace")?,
                    timestamp: from_micros(r.try_get("timestamp")?),
                })
            })
            .collect()
    }
}

/// Marks DAG rows or pools as changed (see [`Store::dag_version`]).
pub(crate) async fn bump_dag_version(tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<()> {
    sqlx::query("UPDATE dag_version SET version = version + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    /// A number that changes whenever DAG rows or pools change (parse, pause, pool edit): a
    /// scheduler re-reads them only when it moved.
    pub async fn dag_version(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT version FROM dag_version WHERE id = 1")
                .fetch_optional(self.read_pool())
                .await?
                .unwrap_or(0),
        )
    }
}

/// What deleting a DAG's metadata did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DagDelete {
    Deleted,
    NotFound,
    /// Some of its task instances are running or queued; nothing was deleted.
    Running,
}

impl Store {
    /// Deletes a DAG's metadata: its runs, task instances, their history, XComs and logs, and
    /// the DAG's rows; not its file, so the DAG comes back (paused as a new DAG is) when the
    /// DAG processor's next full scan parses the file again, as in Airflow. Refused while any
    /// of its task instances is queued or running.
    pub async fn dag_delete(&self, dag_id: &str) -> Result<DagDelete> {
        let mut tx = self.begin().await?;
        let fileloc: Option<String> = sqlx::query("SELECT fileloc FROM dag WHERE dag_id = $1")
            .bind(dag_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let Some(fileloc) = fileloc else {
            return Ok(DagDelete::NotFound);
        };
        let busy: i64 = sqlx::query(
            "SELECT COUNT(*) FROM task_instance WHERE dag_id = $1 \
             AND state IN ('queued', 'running', 'restarting')",
        )
        .bind(dag_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        if busy > 0 {
            return Ok(DagDelete::Running);
        }
        for table in [
            "log_chunk",
            "xcom",
            "ti_transition",
            "task_instance_history",
            "task_instance",
            "dag_run",
            "serialized_dag",
            "dag",
            "dag_run_asset_event",
            "asset_reference",
            "callback_request",
            "dag_version_log",
        ] {
            // Table names are constants above, never input.
            sqlx::query(&format!("DELETE FROM {table} WHERE dag_id = $1"))
                .bind(dag_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM asset_dag_run_queue WHERE target_dag_id = $1")
            .bind(dag_id)
            .execute(&mut *tx)
            .await?;
        // Invalidate the file's hash (keeping its source), so the DAG processor parses the
        // file again at its next full scan and the DAG comes back, as Airflow's does.
        sqlx::query("UPDATE dag_code SET source_hash = '' WHERE fileloc = $1")
            .bind(&fileloc)
            .execute(&mut *tx)
            .await?;
        bump_dag_version(&mut tx).await?;
        self.commit(tx).await?;
        Ok(DagDelete::Deleted)
    }
}

/// Which active DAGs a paged DAG list shows: what `GET /api/v2/dags` asks of the database,
/// so that a page of 50 reads 50 rows however many DAGs there are.
#[derive(Debug, Clone, Default)]
pub struct DagQuery {
    /// Case-insensitive SQL `LIKE` patterns (already lowercased), any of which may match.
    pub dag_id_like: Vec<String>,
    pub paused: Option<bool>,
    /// Order by `next_dagrun` instead of `dag_id`.
    pub by_next_dagrun: bool,
    pub descending: bool,
    pub limit: i64,
    pub offset: i64,
}

impl Store {
    /// One page of active DAGs and how many match in all.
    pub async fn dag_query(&self, q: &DagQuery) -> Result<(Vec<DagRow>, i64)> {
        let mut conditions = vec!["is_active = 1".to_owned()];
        let mut n = 0;
        if !q.dag_id_like.is_empty() {
            let terms: Vec<String> = q
                .dag_id_like
                .iter()
                .map(|_| {
                    n += 1;
                    format!("LOWER(dag_id) LIKE ${n}")
                })
                .collect();
            conditions.push(format!("({})", terms.join(" OR ")));
        }
        if q.paused.is_some() {
            n += 1;
            conditions.push(format!("is_paused = ${n}"));
        }
        let filter = conditions.join(" AND ");
        let dir = if q.descending { "DESC" } else { "ASC" };
        let order = if q.by_next_dagrun {
            format!("next_dagrun {dir}, dag_id {dir}")
        } else {
            format!("dag_id {dir}")
        };
        let page_sql = format!(
            "SELECT {DAG_COLUMNS}, COUNT(*) OVER () AS total_rows FROM dag WHERE {filter} \
             ORDER BY {order} LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let count_sql = format!("SELECT COUNT(*) FROM dag WHERE {filter}");
        let (rows, total) = crate::dag_runs::page_with_total(
            self.read_pool(),
            bind_dag_filters(sqlx::query(&page_sql), q)
                .bind(q.limit)
                .bind(q.offset),
            bind_dag_filters(sqlx::query(&count_sql), q),
        )
        .await?;
        Ok((rows.iter().map(dag_row).collect::<Result<_>>()?, total))
    }
}

/// Binds a [`DagQuery`]'s filter values in the order its `WHERE` clause names them.
fn bind_dag_filters<'q>(
    mut query: crate::dag_runs::AnyQuery<'q>,
    q: &'q DagQuery,
) -> crate::dag_runs::AnyQuery<'q> {
    for p in &q.dag_id_like {
        query = query.bind(p.as_str());
    }
    if let Some(p) = q.paused {
        query = query.bind(i64::from(p));
    }
    query
}

/// Asset events waiting for DAGs that are gone (deactivated) are dropped: a DAG that comes
/// back starts from the events made while it is active, as a paused one does.
async fn drop_queues_of_inactive(tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<()> {
    sqlx::query(
        "DELETE FROM asset_dag_run_queue WHERE target_dag_id IN \
         (SELECT dag_id FROM dag WHERE is_active = 0)",
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One version of a DAG: what the processor stored when its serialized form changed.
#[derive(Debug, Clone, PartialEq)]
pub struct DagVersionRow {
    pub dag_id: String,
    pub version_number: i64,
    pub dag_hash: String,
    pub fileloc: String,
    pub created_at: DateTime<Utc>,
}

fn version_row(r: &AnyRow) -> Result<DagVersionRow> {
    Ok(DagVersionRow {
        dag_id: r.try_get("dag_id")?,
        version_number: r.try_get("version_number")?,
        dag_hash: r.try_get("dag_hash")?,
        fileloc: r.try_get("fileloc")?,
        created_at: from_micros(r.try_get("created_at")?),
    })
}

impl Store {
    /// A DAG's versions, oldest first (or newest first with `desc`), and how many there are.
    pub async fn dag_versions(
        &self,
        dag_id: &str,
        desc: bool,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<DagVersionRow>, i64)> {
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM dag_version_log WHERE dag_id = $1")
            .bind(dag_id)
            .fetch_one(self.read_pool())
            .await?
            .try_get("n")?;
        let dir = if desc { "DESC" } else { "ASC" };
        let rows = sqlx::query(&format!(
            "SELECT dag_id, version_number, dag_hash, fileloc, created_at FROM dag_version_log \
             WHERE dag_id = $1 ORDER BY version_number {dir} LIMIT $2 OFFSET $3"
        ))
        .bind(dag_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.read_pool())
        .await?;
        Ok((rows.iter().map(version_row).collect::<Result<_>>()?, total))
    }

    /// One version of a DAG and the source of its file then.
    pub async fn dag_version_get(
        &self,
        dag_id: &str,
        version_number: i64,
    ) -> Result<Option<(DagVersionRow, String)>> {
        let row = sqlx::query(
            "SELECT dag_id, version_number, dag_hash, fileloc, created_at, source \
             FROM dag_version_log WHERE dag_id = $1 AND version_number = $2",
        )
        .bind(dag_id)
        .bind(version_number)
        .fetch_optional(self.read_pool())
        .await?;
        row.map(|r| Ok((version_row(&r)?, r.try_get("source")?)))
            .transpose()
    }
}
