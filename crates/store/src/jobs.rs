//! Jobs: every long-running process (scheduler, worker, triggerer, web server, dag processor,
//! Kafka trigger consumers) keeps a row with who and where it is and a heartbeat, so that
//! `/health`, `flow jobs check` and `GET /api/v2/jobs` can tell what is alive.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::{Backend, Result, Store, from_micros, opt_from_micros, to_micros};

/// `pg_advisory_xact_lock` key serializing job registration ("flowjobs").
const JOB_LOCK_KEY: i64 = 0x666c_6f77_6a6f_6273;

/// A process starting: what its job row says about it.
#[derive(Debug, Clone)]
pub struct JobStart {
    /// Airflow's names: `SchedulerJob`, `TriggererJob`, `DagProcessorJob`; flow adds
    /// `WorkerJob`, `WebserverJob` and `KafkaTriggerJob`.
    pub job_type: String,
    pub hostname: String,
    pub unixname: Option<String>,
    pub pid: i64,
    pub version: String,
    /// An id that must be unique among live jobs of this type (a worker's id).
    pub instance: Option<String>,
    /// A worker's queues.
    pub queues: Vec<String>,
}

impl JobStart {
    /// This process, as `job_type` on `hostname`.
    pub fn this_process(job_type: &str, hostname: &str) -> JobStart {
        JobStart {
            job_type: job_type.to_owned(),
            hostname: hostname.to_owned(),
            unixname: Some(unixname()),
            pid: i64::from(std::process::id()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            instance: None,
            queues: Vec::new(),
        }
    }
}

/// Who this process runs as, as Python's `getpass.getuser` (Airflow's `unixname`) finds it:
/// the login variables, else the numeric user id (a container's user often has no name).
fn unixname() -> String {
    ["LOGNAME", "USER", "LNAME", "USERNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| {
            use std::os::unix::fs::MetadataExt as _;
            // /proc/self belongs to this process's user.
            std::fs::metadata("/proc/self").map_or_else(|_| String::new(), |m| m.uid().to_string())
        })
}

/// A job row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: i64,
    pub job_type: String,
    pub state: String,
    pub hostname: String,
    pub unixname: Option<String>,
    pub pid: Option<i64>,
    pub version: Option<String>,
    pub instance: Option<String>,
    pub queues: Vec<String>,
    pub start_date: DateTime<Utc>,
    pub end_date: Option<DateTime<Utc>>,
    pub latest_heartbeat: DateTime<Utc>,
}

/// Filters of [`Store::job_list`].
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    pub job_type: Option<String>,
    pub state: Option<String>,
    pub hostname: Option<String>,
    /// `(true, since)`: only running jobs whose heartbeat is newer than `since`; `(false,
    /// since)`: only the others.
    pub alive: Option<(bool, DateTime<Utc>)>,
    pub limit: i64,
    pub offset: i64,
}

const JOB_COLUMNS: &str = "id, job_type, state, hostname, unixname, pid, version, instance, \
    queues, start_date, end_date, latest_heartbeat";

fn job_row(r: &sqlx::any::AnyRow) -> Result<JobRow> {
    Ok(JobRow {
        id: r.try_get("id")?,
        job_type: r.try_get("job_type")?,
        state: r.try_get("state")?,
        hostname: r.try_get("hostname")?,
        unixname: r.try_get("unixname")?,
        pid: r.try_get("pid")?,
        version: r.try_get("version")?,
        instance: r.try_get("instance")?,
        queues: r
            .try_get::<Option<String>, _>("queues")?
            .map(|q| q.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        start_date: from_micros(r.try_get("start_date")?),
        end_date: opt_from_micros(r.try_get("end_date")?),
        latest_heartbeat: from_micros(r.try_get("latest_heartbeat")?),
    })
}

impl Store {
    /// Starts a job row in state `running`; returns its id.
    pub async fn job_start(&self, job: &JobStart, now: DateTime<Utc>) -> Result<i64> {
        let mut tx = self.begin().await?;
        let id = insert_job(&mut tx, job, now).await?;
        self.commit(tx).await?;
        Ok(id)
    }

    /// Starts a job whose `instance` must be unique among live jobs of its type: if a running
    /// one with the same instance heartbeat after `stale_before`, nothing is written and that
    /// job is returned as the conflict. Unfinished rows of the same instance that stopped
    /// heartbeating (a killed process) are ended as `failed` first.
    pub async fn job_start_unique(
        &self,
        job: &JobStart,
        stale_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<i64, JobRow>> {
        let mut tx = self.begin().await?;
        if self.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(JOB_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
        }
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM job WHERE job_type = $1 AND instance = $2 \
             AND end_date IS NULL"
        ))
        .bind(&job.job_type)
        .bind(&job.instance)
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            let other = job_row(r)?;
            if other.state == "running" && other.latest_heartbeat >= stale_before {
                tx.rollback().await?;
                return Ok(Err(other));
            }
        }
        sqlx::query(
            "UPDATE job SET state = 'failed', end_date = $1 WHERE job_type = $2 \
             AND instance = $3 AND end_date IS NULL",
        )
        .bind(to_micros(now))
        .bind(&job.job_type)
        .bind(&job.instance)
        .execute(&mut *tx)
        .await?;
        let id = insert_job(&mut tx, job, now).await?;
        self.commit(tx).await?;
        Ok(Ok(id))
    }

    /// Jobs, newest first, and how many match.
    pub async fn job_list(&self, q: &JobQuery) -> Result<(Vec<JobRow>, i64)> {
        let mut conditions: Vec<String> = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let mut text = |column: &str, value: &Option<String>| {
            if let Some(v) = value {
                binds.push(v.clone());
                conditions.push(format!("{column} = ${}", binds.len()));
            }
        };
        text("job_type", &q.job_type);
        text("state", &q.state);
        text("hostname", &q.hostname);
        if let Some((alive, since)) = q.alive {
            let live = format!(
                "(state = 'running' AND end_date IS NULL AND latest_heartbeat >= {})",
                to_micros(since)
            );
            conditions.push(if alive { live } else { format!("NOT {live}") });
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let count_sql = format!("SELECT COUNT(*) AS n FROM job{filter}");
        let mut count = sqlx::query(&count_sql);
        for b in &binds {
            count = count.bind(b);
        }
        let total: i64 = count.fetch_one(self.read_pool()).await?.try_get("n")?;
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM job{filter} ORDER BY id DESC LIMIT {} OFFSET {}",
            q.limit.max(0),
            q.offset.max(0)
        );
        let mut rows = sqlx::query(&sql);
        for b in &binds {
            rows = rows.bind(b);
        }
        let rows = rows.fetch_all(self.read_pool()).await?;
        let jobs = rows.iter().map(job_row).collect::<Result<Vec<_>>>()?;
        Ok((jobs, total))
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

    /// Ends a job that died without saying so (its process is gone).
    pub async fn job_end_failed(&self, id: i64, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE job SET state = 'failed', end_date = $1 WHERE id = $2 AND end_date IS NULL",
        )
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

    /// The queues live workers serve (running `WorkerJob`s heartbeating since `since`).
    pub async fn served_queues(
        &self,
        since: DateTime<Utc>,
    ) -> Result<std::collections::HashSet<String>> {
        let rows: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT queues FROM job WHERE job_type = 'WorkerJob' AND state = 'running' \
             AND end_date IS NULL AND latest_heartbeat >= $1",
        )
        .bind(to_micros(since))
        .fetch_all(self.read_pool())
        .await?;
        Ok(rows
            .into_iter()
            .flatten()
            .flat_map(|q| q.split(',').map(str::to_owned).collect::<Vec<_>>())
            .collect())
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
                from_micros(r.try_get("latest_heartbeat")?),
            ))
        })
        .transpose()
    }
}

async fn insert_job(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    job: &JobStart,
    now: DateTime<Utc>,
) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO job (job_type, hostname, state, start_date, latest_heartbeat, unixname, \
         pid, version, instance, queues) VALUES ($1, $2, 'running', $3, $3, $4, $5, $6, $7, $8) \
         RETURNING id",
    )
    .bind(&job.job_type)
    .bind(&job.hostname)
    .bind(to_micros(now))
    .bind(&job.unixname)
    .bind(job.pid)
    .bind(&job.version)
    .bind(&job.instance)
    .bind((!job.queues.is_empty()).then(|| job.queues.join(",")))
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.try_get("id")?)
}
