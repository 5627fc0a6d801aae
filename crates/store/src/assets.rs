//! Assets: the references DAGs make to them (written with each parse), their events (a task's
//! success, the REST API), the queue of events waiting for the DAGs scheduled on them, and the
//! consumption of that queue by the run it triggers.
//!
//! Exactly once: an event joins the queue of every active, unpaused DAG scheduled on its asset
//! in the transaction that records it (the task's success, or the API call); the transaction
//! that creates the asset-triggered run deletes the DAG's queue rows and creates the run only
//! if the rows it deleted meet the DAG's condition. A second scheduler doing the same waits
//! for the first's row locks (PostgreSQL) or its write lock (SQLite), then deletes nothing and
//! creates nothing.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use flow_dag::assets::AssetCondition;
use serde_json::Value as Json;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::dag_runs::{DagRunRow, NewDagRun, RUN_COLUMNS, run_row};
use crate::task_instances::NewTaskInstance;
use crate::{Result, Store, StoreError, from_micros, placeholders, to_micros};

/// A DAG's reference to an asset, as the processor hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetUse {
    pub uri: String,
    pub name: String,
    pub group: String,
    pub extra: Json,
    /// `schedule`, `outlet` or `inlet`.
    pub kind: &'static str,
    /// Empty for `schedule`.
    pub task_id: String,
}

/// An event to record: which asset, and its extra.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAssetEvent {
    pub uri: String,
    pub name: String,
    pub extra: Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AssetRow {
    pub id: i64,
    pub uri: String,
    pub name: String,
    pub group: String,
    pub extra: Json,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AssetReference {
    pub asset_id: i64,
    pub dag_id: String,
    pub task_id: String,
    pub kind: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AssetEventRow {
    pub id: i64,
    pub asset_id: i64,
    pub uri: String,
    pub name: String,
    pub group: String,
    pub extra: Json,
    pub source_dag_id: Option<String>,
    pub source_task_id: Option<String>,
    pub source_run_id: Option<String>,
    pub source_map_index: i64,
    pub timestamp: DateTime<Utc>,
}

/// Events waiting for a DAG, per asset (Airflow's `QueuedEventResponse`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedEvent {
    pub dag_id: String,
    pub asset_id: i64,
    pub uri: String,
    /// The oldest waiting event's time.
    pub created_at: DateTime<Utc>,
    pub events: i64,
}

/// A page of assets.
#[derive(Debug, Clone, Default)]
pub struct AssetQuery {
    /// Substring of the URI, case-insensitive.
    pub uri_pattern: Option<String>,
    /// Substring of the name, case-insensitive.
    pub name_pattern: Option<String>,
    /// Only assets these DAGs refer to (empty: all).
    pub dag_ids: Vec<String>,
    pub order_by: Option<(String, bool)>,
    pub limit: i64,
    pub offset: i64,
}

impl AssetQuery {
    pub const ORDER_COLUMNS: [&str; 5] = ["id", "uri", "name", "created_at", "updated_at"];
}

/// A page of asset events.
#[derive(Debug, Clone, Default)]
pub struct AssetEventQuery {
    pub asset_id: Option<i64>,
    pub source_dag_id: Option<String>,
    pub source_task_id: Option<String>,
    pub source_run_id: Option<String>,
    pub source_map_index: Option<i64>,
    pub timestamp_gte: Option<DateTime<Utc>>,
    pub timestamp_lte: Option<DateTime<Utc>>,
    pub order_by: Option<(String, bool)>,
    pub limit: i64,
    pub offset: i64,
}

impl AssetEventQuery {
    pub const ORDER_COLUMNS: [&str; 6] = [
        "id",
        "timestamp",
        "asset_id",
        "source_dag_id",
        "source_task_id",
        "source_run_id",
    ];
}

/// Where an event came from: a task instance's successful try.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventSource<'a> {
    pub dag_id: &'a str,
    pub task_id: &'a str,
    pub run_id: &'a str,
    pub map_index: i64,
}

enum Bind {
    Text(String),
    Int(i64),
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    binds: &'q [Bind],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(s.as_str()),
            Bind::Int(i) => q.bind(*i),
        };
    }
    q
}

fn json_column(r: &AnyRow, column: &str) -> Result<Json> {
    let text: String = r.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

const ASSET_COLUMNS: &str = "id, uri, name, asset_group, extra, created_at, updated_at";

fn asset_row(r: &AnyRow) -> Result<AssetRow> {
    Ok(AssetRow {
        id: r.try_get("id")?,
        uri: r.try_get("uri")?,
        name: r.try_get("name")?,
        group: r.try_get("asset_group")?,
        extra: json_column(r, "extra")?,
        created_at: from_micros(r.try_get("created_at")?),
        updated_at: from_micros(r.try_get("updated_at")?),
    })
}

const EVENT_COLUMNS: &str = "e.id, e.asset_id, a.uri, a.name, a.asset_group, e.extra, \
    e.source_dag_id, e.source_task_id, e.source_run_id, e.source_map_index, e.timestamp";

fn event_row(r: &AnyRow) -> Result<AssetEventRow> {
    Ok(AssetEventRow {
        id: r.try_get("id")?,
        asset_id: r.try_get("asset_id")?,
        uri: r.try_get("uri")?,
        name: r.try_get("name")?,
        group: r.try_get("asset_group")?,
        extra: json_column(r, "extra")?,
        source_dag_id: r.try_get("source_dag_id")?,
        source_task_id: r.try_get("source_task_id")?,
        source_run_id: r.try_get("source_run_id")?,
        source_map_index: r.try_get("source_map_index")?,
        timestamp: from_micros(r.try_get("timestamp")?),
    })
}

async fn asset_id_in(tx: &mut sqlx::Transaction<'static, sqlx::Any>, uri: &str) -> Result<i64> {
    let row = sqlx::query("SELECT id FROM asset WHERE uri = $1")
        .bind(uri)
        .fetch_one(&mut **tx)
        .await?;
    Ok(row.try_get("id")?)
}

/// The asset's id, made if it is new. A name, group or extra given by a DAG replaces the
/// stored one (the last parse wins, as for every other DAG attribute).
async fn upsert_asset(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    uri: &str,
    name: &str,
    group: &str,
    extra: &Json,
    now_us: i64,
) -> Result<i64> {
    sqlx::query(
        "INSERT INTO asset (uri, name, asset_group, extra, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (uri) DO UPDATE SET \
         name = excluded.name, asset_group = excluded.asset_group, extra = excluded.extra, \
         updated_at = excluded.updated_at \
         WHERE asset.name <> excluded.name OR asset.asset_group <> excluded.asset_group \
         OR asset.extra <> excluded.extra",
    )
    .bind(uri)
    .bind(name)
    .bind(group)
    .bind(extra.to_string())
    .bind(now_us)
    .execute(&mut **tx)
    .await?;
    asset_id_in(tx, uri).await
}

/// Replaces a DAG's asset references with what its latest parse says.
pub(crate) async fn sync_references_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    dag_id: &str,
    uses: &[AssetUse],
    now_us: i64,
) -> Result<()> {
    sqlx::query("DELETE FROM asset_reference WHERE dag_id = $1")
        .bind(dag_id)
        .execute(&mut **tx)
        .await?;
    // In URI order: two processors writing files that share assets lock the rows in the same
    // order, so they cannot deadlock.
    let mut uses: Vec<&AssetUse> = uses.iter().collect();
    uses.sort_by(|a, b| a.uri.cmp(&b.uri));
    let mut seen = HashSet::new();
    for u in uses {
        let declared = u.name != u.uri
            || u.group != flow_dag::assets::DEFAULT_GROUP
            || u.extra.as_object().is_some_and(|m| !m.is_empty());
        let id = if declared {
            upsert_asset(tx, &u.uri, &u.name, &u.group, &u.extra, now_us).await?
        } else {
            // A bare URI names the asset without describing it: what another DAG declared
            // (its name, group, extra) stays.
            ensure_asset(tx, &u.uri, now_us).await?
        };
        if !seen.insert((id, u.task_id.as_str(), u.kind)) {
            continue;
        }
        sqlx::query(
            "INSERT INTO asset_reference (asset_id, dag_id, task_id, kind, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(dag_id)
        .bind(&u.task_id)
        .bind(u.kind)
        .bind(now_us)
        .execute(&mut **tx)
        .await?;
    }
    // Events queued for assets the DAG is no longer scheduled on (or for a DAG no longer
    // scheduled on assets) would trigger it with stale events: dropped.
    sqlx::query(
        "DELETE FROM asset_dag_run_queue WHERE target_dag_id = $1 AND asset_id NOT IN \
         (SELECT asset_id FROM asset_reference WHERE dag_id = $1 AND kind = 'schedule')",
    )
    .bind(dag_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The asset's id, made (named by its URI) if it is new; an existing one is left as is.
async fn ensure_asset(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    uri: &str,
    now_us: i64,
) -> Result<i64> {
    sqlx::query(
        "INSERT INTO asset (uri, name, asset_group, extra, created_at, updated_at) \
         VALUES ($1, $1, $2, '{}', $3, $3) ON CONFLICT (uri) DO NOTHING",
    )
    .bind(uri)
    .bind(flow_dag::assets::DEFAULT_GROUP)
    .bind(now_us)
    .execute(&mut **tx)
    .await?;
    asset_id_in(tx, uri).await
}

/// Records events and queues each for the active, unpaused DAGs scheduled on its asset.
/// Returns the new events' ids and whether any DAG was queued for (the scheduler is then
/// woken at commit).
pub(crate) async fn record_events_in(
    store: &Store,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    events: &[(&NewAssetEvent, Option<EventSource<'_>>)],
    now_us: i64,
) -> Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(events.len());
    let mut queued = false;
    for (event, source) in events {
        // An asset no DAG declared (an alias resolved at run time) is made on first use.
        let asset_id = match sqlx::query("SELECT id FROM asset WHERE uri = $1")
            .bind(&event.uri)
            .fetch_optional(&mut **tx)
            .await?
        {
            Some(r) => r.try_get("id")?,
            None => ensure_asset(tx, &event.uri, now_us).await?,
        };
        let extra = match &event.extra {
            Json::Null => "{}".to_owned(),
            e => e.to_string(),
        };
        let row = sqlx::query(
            "INSERT INTO asset_event (asset_id, extra, source_dag_id, source_task_id, \
             source_run_id, source_map_index, timestamp) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             RETURNING id",
        )
        .bind(asset_id)
        .bind(extra)
        .bind(source.map(|s| s.dag_id))
        .bind(source.map(|s| s.task_id))
        .bind(source.map(|s| s.run_id))
        .bind(source.map_or(-1, |s| s.map_index))
        .bind(now_us)
        .fetch_one(&mut **tx)
        .await?;
        let event_id: i64 = row.try_get("id")?;
        flow_metrics::metrics().asset_events.inc();
        let n = sqlx::query(
            "INSERT INTO asset_dag_run_queue (target_dag_id, event_id, asset_id, created_at) \
             SELECT r.dag_id, $1, r.asset_id, $2 FROM asset_reference r \
             JOIN dag d ON d.dag_id = r.dag_id \
             WHERE r.asset_id = $3 AND r.kind = 'schedule' AND d.is_active = 1 AND d.is_paused = 0",
        )
        .bind(event_id)
        .bind(now_us)
        .bind(asset_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        queued |= n > 0;
        ids.push(event_id);
    }
    if queued {
        crate::wake::notify_in(store, tx, crate::WAKE_SCHEDULER).await?;
    }
    Ok(ids)
}

impl Store {
    /// Records an event of an existing asset from outside any task (the REST API) and queues
    /// it for the DAGs scheduled on the asset. `None` if there is no such asset.
    pub async fn asset_event_create(
        &self,
        asset_id: i64,
        extra: &Json,
        now: DateTime<Utc>,
    ) -> Result<Option<AssetEventRow>> {
        let mut tx = self.begin().await?;
        let Some(asset) = sqlx::query("SELECT uri, name FROM asset WHERE id = $1")
            .bind(asset_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.rollback().await?;
            return Ok(None);
        };
        let event = NewAssetEvent {
            uri: asset.try_get("uri")?,
            name: asset.try_get("name")?,
            extra: extra.clone(),
        };
        let ids = record_events_in(self, &mut tx, &[(&event, None)], to_micros(now)).await?;
        self.commit(tx).await?;
        let Some(id) = ids.first() else {
            return Ok(None);
        };
        self.asset_event_get(*id).await
    }

    pub async fn asset_event_get(&self, id: i64) -> Result<Option<AssetEventRow>> {
        let row = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM asset_event e JOIN asset a ON a.id = e.asset_id \
             WHERE e.id = $1"
        ))
        .bind(id)
        .fetch_optional(self.read_pool())
        .await?;
        row.as_ref().map(event_row).transpose()
    }

    /// What waits, per DAG: the URIs of the assets with queued events. What the scheduler
    /// reads each pass (the table holds only what no run consumed yet).
    pub async fn asset_queue(&self) -> Result<HashMap<String, HashSet<String>>> {
        let rows = sqlx::query(
            "SELECT DISTINCT q.target_dag_id, a.uri FROM asset_dag_run_queue q \
             JOIN asset a ON a.id = q.asset_id",
        )
        .fetch_all(self.read_pool())
        .await?;
        let mut out: HashMap<String, HashSet<String>> = HashMap::new();
        for r in rows {
            out.entry(r.try_get("target_dag_id")?)
                .or_default()
                .insert(r.try_get("uri")?);
        }
        Ok(out)
    }

    /// Creates an asset-triggered run from the events queued for its DAG, if they meet
    /// `condition`, consuming them in the same transaction; `None` (nothing changed) if they
    /// do not, which is also what a second scheduler racing the first gets. The run's data
    /// interval spans the consumed events.
    pub async fn asset_run_create(
        &self,
        run: &NewDagRun,
        task_instances: &[NewTaskInstance],
        condition: &AssetCondition,
        now: DateTime<Utc>,
    ) -> Result<Option<DagRunRow>> {
        let now_us = to_micros(now);
        let mut tx = self.begin().await?;
        let consumed = sqlx::query(
            "DELETE FROM asset_dag_run_queue WHERE target_dag_id = $1 \
             RETURNING event_id, asset_id, created_at",
        )
        .bind(&run.dag_id)
        .fetch_all(&mut *tx)
        .await?;
        if consumed.is_empty() {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut event_ids = Vec::with_capacity(consumed.len());
        let mut asset_ids = HashSet::new();
        // A queue row is made with its event: its time is the event's.
        let (mut first, mut last): (Option<i64>, Option<i64>) = (None, None);
        for r in &consumed {
            event_ids.push(r.try_get::<i64, _>("event_id")?);
            asset_ids.insert(r.try_get::<i64, _>("asset_id")?);
            let at: i64 = r.try_get("created_at")?;
            first = Some(first.map_or(at, |f| f.min(at)));
            last = Some(last.map_or(at, |l| l.max(at)));
        }
        let asset_ids: Vec<i64> = asset_ids.into_iter().collect();
        let sql = format!(
            "SELECT uri FROM asset WHERE id IN ({})",
            placeholders(1, asset_ids.len())
        );
        let mut q = sqlx::query(&sql);
        for id in &asset_ids {
            q = q.bind(*id);
        }
        let updated: HashSet<String> = q
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("uri"))
            .collect::<std::result::Result<_, _>>()?;
        if !condition.is_met(&|uri| updated.contains(uri)) {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut run = run.clone();
        run.data_interval_start = first.map(from_micros).or(run.data_interval_start);
        run.data_interval_end = last.map(from_micros).or(run.data_interval_end);
        let Some(row) = crate::dag_runs::create_in(&mut tx, &run, task_instances, now_us).await?
        else {
            tx.rollback().await?;
            return Ok(None);
        };
        for id in &event_ids {
            sqlx::query(
                "INSERT INTO dag_run_asset_event (dag_id, run_id, event_id) VALUES ($1, $2, $3)",
            )
            .bind(&row.dag_id)
            .bind(&row.run_id)
            .bind(*id)
            .execute(&mut *tx)
            .await?;
        }
        crate::wake::notify_in(self, &mut tx, crate::WAKE_SCHEDULER).await?;
        self.commit(tx).await?;
        Ok(Some(row))
    }

    /// The events an asset-triggered run consumed, oldest first.
    pub async fn asset_events_for_run(
        &self,
        dag_id: &str,
        run_id: &str,
    ) -> Result<Vec<AssetEventRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM dag_run_asset_event l \
             JOIN asset_event e ON e.id = l.event_id JOIN asset a ON a.id = e.asset_id \
             WHERE l.dag_id = $1 AND l.run_id = $2 ORDER BY e.id"
        ))
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(event_row).collect()
    }

    /// The runs each event triggered.
    pub async fn asset_event_runs(
        &self,
        event_ids: &[i64],
    ) -> Result<HashMap<i64, Vec<DagRunRow>>> {
        let mut out: HashMap<i64, Vec<DagRunRow>> = HashMap::new();
        if event_ids.is_empty() {
            return Ok(out);
        }
        let columns: String = RUN_COLUMNS
            .split(", ")
            .map(|c| format!("r.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT l.event_id AS link_event_id, {columns} FROM dag_run_asset_event l \
             JOIN dag_run r ON r.dag_id = l.dag_id AND r.run_id = l.run_id \
             WHERE l.event_id IN ({}) ORDER BY r.id",
            placeholders(1, event_ids.len())
        );
        let mut q = sqlx::query(&sql);
        for id in event_ids {
            q = q.bind(*id);
        }
        for r in q.fetch_all(self.read_pool()).await? {
            let event_id: i64 = r.try_get("link_event_id")?;
            out.entry(event_id).or_default().push(run_row(&r)?);
        }
        Ok(out)
    }

    pub async fn asset_get(&self, id: i64) -> Result<Option<AssetRow>> {
        let row = sqlx::query(&format!("SELECT {ASSET_COLUMNS} FROM asset WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.read_pool())
            .await?;
        row.as_ref().map(asset_row).transpose()
    }

    /// One page of assets and how many match in all.
    pub async fn asset_query(&self, q: &AssetQuery) -> Result<(Vec<AssetRow>, i64)> {
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        if let Some(p) = &q.uri_pattern {
            binds.push(Bind::Text(format!("%{}%", p.to_lowercase())));
            conditions.push(format!("LOWER(uri) LIKE ${}", binds.len()));
        }
        if let Some(p) = &q.name_pattern {
            binds.push(Bind::Text(format!("%{}%", p.to_lowercase())));
            conditions.push(format!("LOWER(name) LIKE ${}", binds.len()));
        }
        if !q.dag_ids.is_empty() {
            let first = binds.len() + 1;
            binds.extend(q.dag_ids.iter().cloned().map(Bind::Text));
            conditions.push(format!(
                "id IN (SELECT asset_id FROM asset_reference WHERE dag_id IN ({}))",
                placeholders(first, q.dag_ids.len())
            ));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let (column, desc) = q.order_by.clone().unwrap_or_else(|| ("id".into(), false));
        let column = AssetQuery::ORDER_COLUMNS
            .iter()
            .find(|c| **c == column)
            .ok_or_else(|| StoreError::Corrupt(format!("cannot order assets by `{column}`")))?;
        let dir = if desc { "DESC" } else { "ASC" };
        let total: i64 = bind_all(
            sqlx::query(&format!("SELECT COUNT(*) AS n FROM asset {filter}")),
            &binds,
        )
        .fetch_one(self.read_pool())
        .await?
        .try_get("n")?;
        let page_sql = format!(
            "SELECT {ASSET_COLUMNS} FROM asset {filter} ORDER BY {column} {dir}, id {dir} \
             LIMIT {} OFFSET {}",
            q.limit.max(0),
            q.offset.max(0)
        );
        let rows = bind_all(sqlx::query(&page_sql), &binds)
            .fetch_all(self.read_pool())
            .await?;
        Ok((rows.iter().map(asset_row).collect::<Result<_>>()?, total))
    }

    /// The references to these assets, by asset id.
    pub async fn asset_references(
        &self,
        asset_ids: &[i64],
    ) -> Result<HashMap<i64, Vec<AssetReference>>> {
        let mut out: HashMap<i64, Vec<AssetReference>> = HashMap::new();
        if asset_ids.is_empty() {
            return Ok(out);
        }
        // Only active DAGs: a deleted file's DAGs no longer produce or consume anything.
        let sql = format!(
            "SELECT r.asset_id, r.dag_id, r.task_id, r.kind, r.created_at FROM asset_reference r \
             JOIN dag d ON d.dag_id = r.dag_id AND d.is_active = 1 \
             WHERE r.asset_id IN ({}) ORDER BY r.dag_id, r.task_id",
            placeholders(1, asset_ids.len())
        );
        let mut q = sqlx::query(&sql);
        for id in asset_ids {
            q = q.bind(*id);
        }
        for r in q.fetch_all(self.read_pool()).await? {
            let asset_id: i64 = r.try_get("asset_id")?;
            out.entry(asset_id).or_default().push(AssetReference {
                asset_id,
                dag_id: r.try_get("dag_id")?,
                task_id: r.try_get("task_id")?,
                kind: r.try_get("kind")?,
                created_at: from_micros(r.try_get("created_at")?),
            });
        }
        Ok(out)
    }

    /// The latest event of each of these assets: (event id, time).
    pub async fn asset_last_events(
        &self,
        asset_ids: &[i64],
    ) -> Result<HashMap<i64, (i64, DateTime<Utc>)>> {
        let mut out = HashMap::new();
        if asset_ids.is_empty() {
            return Ok(out);
        }
        let sql = format!(
            "SELECT e.asset_id, e.id, e.timestamp FROM asset_event e \
             JOIN (SELECT asset_id, MAX(id) AS id FROM asset_event WHERE asset_id IN ({}) \
             GROUP BY asset_id) m ON m.id = e.id",
            placeholders(1, asset_ids.len())
        );
        let mut q = sqlx::query(&sql);
        for id in asset_ids {
            q = q.bind(*id);
        }
        for r in q.fetch_all(self.read_pool()).await? {
            out.insert(
                r.try_get::<i64, _>("asset_id")?,
                (
                    r.try_get::<i64, _>("id")?,
                    from_micros(r.try_get("timestamp")?),
                ),
            );
        }
        Ok(out)
    }

    /// One page of asset events and how many match in all.
    pub async fn asset_event_query(
        &self,
        q: &AssetEventQuery,
    ) -> Result<(Vec<AssetEventRow>, i64)> {
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        let mut push = |cond: &str, b: Bind, binds: &mut Vec<Bind>| {
            binds.push(b);
            conditions.push(format!("{cond} ${}", binds.len()));
        };
        if let Some(v) = q.asset_id {
            push("e.asset_id =", Bind::Int(v), &mut binds);
        }
        if let Some(v) = &q.source_dag_id {
            push("e.source_dag_id =", Bind::Text(v.clone()), &mut binds);
        }
        if let Some(v) = &q.source_task_id {
            push("e.source_task_id =", Bind::Text(v.clone()), &mut binds);
        }
        if let Some(v) = &q.source_run_id {
            push("e.source_run_id =", Bind::Text(v.clone()), &mut binds);
        }
        if let Some(v) = q.source_map_index {
            push("e.source_map_index =", Bind::Int(v), &mut binds);
        }
        if let Some(v) = q.timestamp_gte {
            push("e.timestamp >=", Bind::Int(to_micros(v)), &mut binds);
        }
        if let Some(v) = q.timestamp_lte {
            push("e.timestamp <=", Bind::Int(to_micros(v)), &mut binds);
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let (column, desc) = q
            .order_by
            .clone()
            .unwrap_or_else(|| ("timestamp".into(), false));
        let column = AssetEventQuery::ORDER_COLUMNS
            .iter()
            .find(|c| **c == column)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("cannot order asset events by `{column}`"))
            })?;
        let dir = if desc { "DESC" } else { "ASC" };
        let total: i64 = bind_all(
            sqlx::query(&format!("SELECT COUNT(*) AS n FROM asset_event e {filter}")),
            &binds,
        )
        .fetch_one(self.read_pool())
        .await?
        .try_get("n")?;
        let page_sql = format!(
            "SELECT {EVENT_COLUMNS} FROM asset_event e JOIN asset a ON a.id = e.asset_id \
             {filter} ORDER BY e.{column} {dir}, e.id {dir} LIMIT {} OFFSET {}",
            q.limit.max(0),
            q.offset.max(0)
        );
        let rows = bind_all(sqlx::query(&page_sql), &binds)
            .fetch_all(self.read_pool())
            .await?;
        Ok((rows.iter().map(event_row).collect::<Result<_>>()?, total))
    }

    /// Events waiting for DAGs, per DAG and asset, optionally for one DAG or one asset.
    pub async fn asset_queued_events(
        &self,
        dag_id: Option<&str>,
        asset_id: Option<i64>,
    ) -> Result<Vec<QueuedEvent>> {
        let rows = sqlx::query(
            "SELECT q.target_dag_id, q.asset_id, a.uri, MIN(q.created_at) AS created_at, \
             COUNT(*) AS events FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id \
             WHERE ($1 IS NULL OR q.target_dag_id = $1) AND ($2 IS NULL OR q.asset_id = $2) \
             GROUP BY q.target_dag_id, q.asset_id, a.uri ORDER BY q.target_dag_id, q.asset_id",
        )
        .bind(dag_id)
        .bind(asset_id)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QueuedEvent {
                    dag_id: r.try_get("target_dag_id")?,
                    asset_id: r.try_get("asset_id")?,
                    uri: r.try_get("uri")?,
                    created_at: from_micros(r.try_get("created_at")?),
                    events: r.try_get("events")?,
                })
            })
            .collect()
    }

    /// Drops waiting events (of one DAG, one asset, or both; only those queued before
    /// `before` if given). Returns how many were dropped.
    pub async fn asset_queued_delete(
        &self,
        dag_id: Option<&str>,
        asset_id: Option<i64>,
        before: Option<DateTime<Utc>>,
    ) -> Result<u64> {
        let n = sqlx::query(
            "DELETE FROM asset_dag_run_queue WHERE ($1 IS NULL OR target_dag_id = $1) \
             AND ($2 IS NULL OR asset_id = $2) AND ($3 IS NULL OR created_at < $3)",
        )
        .bind(dag_id)
        .bind(asset_id)
        .bind(before.map(to_micros))
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n)
    }
}
