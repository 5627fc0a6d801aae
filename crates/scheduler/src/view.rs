//! The scheduler's view of the active (queued and running) runs and their task instances,
//! kept in memory between passes (DESIGN section 7), so that a pass costs in proportion to
//! what changed and not to everything active.
//!
//! The database stays the truth. Every state change of a task instance or a run is recorded
//! in a transition table (`ti_transition`, `dag_run_transition`; a new run records its first
//! one), by whichever process made it. Each pass reads the transitions after the last one it
//! saw and re-reads the runs they touched, whole: this scheduler's own writes come back the
//! same way, so the view never guesses what a write did. Ids skipped because their
//! transaction had not committed yet are asked for again until they appear (see
//! `flow_store::changes`). What transitions do not tell (a run deleted, a row edited by
//! hand) is caught by a full re-read every `resync` and after any failed pass.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use flow_model::{DagRunState, TaskInstanceState};
use flow_store::{
    CorruptRow, DagRunRow, EventCursor, EventTable, RunKey, RunTouch, Store, StoreError, TiRow,
};
use tracing::debug;

/// How long (s) a skipped id is looked for: a transaction holding an id longer than this rolled
/// back (or the next full re-read finds what it did).
const GAP_WINDOW_SECS: i64 = 10;
/// Transitions read per table and query.
const TAIL_PAGE: i64 = 1_000;
/// Pages read in one pass; more means a long pause: every active run is read instead.
const TAIL_PAGES: usize = 20;
/// At a full read, ids this far below the newest are checked for ones still uncommitted.
const RECENT_IDS: i64 = 2_000;

/// One active run as this scheduler last read it.
#[derive(Debug)]
pub(crate) struct RunEntry {
    pub run: DagRunRow,
    pub tis: Vec<TiRow>,
    /// A row of the run cannot be read: the run is left alone until it is fixed.
    pub held: bool,
    /// Evaluate in the next pass: it was (re-)read since its last evaluation.
    pub dirty: bool,
    /// When to evaluate it again though nothing changed (a retry delay, `dagrun_timeout`).
    pub wakeup: Option<DateTime<Utc>>,
    /// How many of `tis` are queued or running (occupying slots), and how many scheduled
    /// (waiting for one): a pass looks only at the runs that have some.
    pub busy: usize,
    pub waiting: usize,
}

impl RunEntry {
    /// Whether a pass at `now` evaluates this run.
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        self.run.state == DagRunState::Running
            && !self.held
            && (self.dirty || self.wakeup.is_some_and(|w| w <= now))
    }
}

/// What one refresh read.
#[derive(Debug, Default)]
pub(crate) struct Refresh {
    /// Everything was read again (the first pass, a resync, after a failure).
    pub full: bool,
    /// The runs re-read (every active run after a full read).
    pub touched: Vec<RunKey>,
    /// Rows that cannot be read.
    pub corrupt: Vec<CorruptRow>,
}

#[derive(Debug)]
pub(crate) struct ActiveView {
    pub runs: HashMap<RunKey, RunEntry>,
    cursor: EventCursor,
    /// Ids below the cursor not seen yet, with when they were first missed.
    gaps: BTreeMap<(EventTable, i64), DateTime<Utc>>,
    synced: Option<DateTime<Utc>>,
    resync: Duration,
    /// Runs to read again in the next refresh whatever the transitions say.
    extra: HashSet<RunKey>,
}

impl Default for ActiveView {
    fn default() -> Self {
        ActiveView::new(Duration::seconds(30))
    }
}

impl ActiveView {
    pub fn new(resync: Duration) -> Self {
        ActiveView {
            runs: HashMap::new(),
            cursor: EventCursor::default(),
            gaps: BTreeMap::new(),
            synced: None,
            resync,
            extra: HashSet::new(),
        }
    }

    /// Brings the view up to date: the runs touched since the last refresh, or everything
    /// when a full read is due.
    pub async fn refresh(
        &mut self,
        store: &Store,
        now: DateTime<Utc>,
    ) -> Result<Refresh, StoreError> {
        if self
            .synced
            .is_none_or(|t| now - t >= self.resync || now < t)
        {
            return self.read_all(store, now).await;
        }
        let mut asked: Vec<(EventTable, i64)> = self.gaps.keys().copied().take(500).collect();
        let mut touches = Vec::new();
        // Read in pages: a small LIMIT keeps PostgreSQL on the id index whatever plan it
        // caches for the statement (with a large one it scanned the whole table).
        for page in 0.. {
            if page == TAIL_PAGES {
                debug!("more changes than a pass reads: reading every active run again");
                return self.read_all(store, now).await;
            }
            let read = store.runs_touched(self.cursor, &asked, TAIL_PAGE).await?;
            let gap_set: HashSet<&(EventTable, i64)> = asked.iter().collect();
            let full_page = [EventTable::TaskInstance, EventTable::DagRun]
                .into_iter()
                .any(|t| {
                    read.iter()
                        .filter(|x| x.table == t && !gap_set.contains(&(t, x.id)))
                        .count() as i64
                        >= TAIL_PAGE
                });
            drop(gap_set);
            self.note(&read, now);
            touches.extend(read);
            asked.clear();
            if !full_page {
                break;
            }
        }
        let mut keys: Vec<RunKey> = touches
            .into_iter()
            .map(|t| (t.dag_id, t.run_id))
            .chain(self.extra.drain())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        keys.sort_unstable();
        let corrupt = self.reload(store, &keys).await?;
        Ok(Refresh {
            full: false,
            touched: keys,
            corrupt,
        })
    }

    /// Forgets everything: the next refresh reads every active run again.
    pub fn invalidate(&mut self) {
        self.synced = None;
    }

    /// Marks every run of these DAGs for evaluation (their definition changed, or their
    /// runs depend on each other).
    pub fn mark_dags(&mut self, dag_ids: &HashSet<String>) {
        for ((dag_id, _), entry) in &mut self.runs {
            if dag_ids.contains(dag_id) {
                entry.dirty = true;
            }
        }
    }

    /// Makes the next refresh read this run again (rows were added without a transition).
    pub fn reread(&mut self, key: &RunKey) {
        self.extra.insert(key.clone());
    }

    /// Marks every run for evaluation.
    pub fn mark_all(&mut self) {
        for entry in self.runs.values_mut() {
            entry.dirty = true;
        }
    }

    /// Moves the cursor past `touches` and records the ids they skipped.
    fn note(&mut self, touches: &[RunTouch], now: DateTime<Utc>) {
        for t in touches {
            self.gaps.remove(&(t.table, t.id));
        }
        for table in [EventTable::TaskInstance, EventTable::DagRun] {
            let from = match table {
                EventTable::TaskInstance => self.cursor.task_instance,
                EventTable::DagRun => self.cursor.dag_run,
            };
            let ids: std::collections::BTreeSet<i64> = touches
                .iter()
                .filter(|t| t.table == table && t.id > from)
                .map(|t| t.id)
                .collect();
            let Some(&max) = ids.last() else { continue };
            // A huge jump (a restored database) is not worth chasing id by id.
            if max - from <= TAIL_PAGE * TAIL_PAGES as i64 {
                for id in from + 1..max {
                    if !ids.contains(&id) {
                        self.gaps.entry((table, id)).or_insert(now);
                    }
                }
            }
            match table {
                EventTable::TaskInstance => self.cursor.task_instance = max,
                EventTable::DagRun => self.cursor.dag_run = max,
            }
        }
        self.gaps
            .retain(|_, seen| now - *seen < Duration::seconds(GAP_WINDOW_SECS));
    }

    /// Re-reads these runs: active ones replace their entry (to be evaluated), the others
    /// leave the view.
    async fn reload(
        &mut self,
        store: &Store,
        keys: &[RunKey],
    ) -> Result<Vec<CorruptRow>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (runs, mut corrupt) = store.dag_runs_get(keys).await?;
        for key in keys {
            self.runs.remove(key);
        }
        self.insert_runs(store, runs, &mut corrupt).await?;
        Ok(corrupt)
    }

    /// Adds the active ones of `runs` with their task instances.
    async fn insert_runs(
        &mut self,
        store: &Store,
        runs: Vec<DagRunRow>,
        corrupt: &mut Vec<CorruptRow>,
    ) -> Result<(), StoreError> {
        let active: Vec<DagRunRow> = runs
            .into_iter()
            .filter(|r| matches!(r.state, DagRunState::Queued | DagRunState::Running))
            .collect();
        let keys: Vec<RunKey> = active
            .iter()
            .map(|r| (r.dag_id.clone(), r.run_id.clone()))
            .collect();
        let (tis, bad) = store.ti_list_runs(&keys).await?;
        let held: HashSet<(&str, &str)> = bad
            .iter()
            .chain(corrupt.iter())
            .map(|c| (c.dag_id.as_str(), c.run_id.as_str()))
            .collect();
        let mut by_run: HashMap<RunKey, Vec<TiRow>> = HashMap::with_capacity(keys.len());
        for ti in tis {
            // Clones the two strings once per task instance; the key is shared by the run's.
            match by_run.get_mut(&(ti.key.dag_id.clone(), ti.key.run_id.clone())) {
                Some(list) => list.push(ti),
                None => {
                    by_run.insert((ti.key.dag_id.clone(), ti.key.run_id.clone()), vec![ti]);
                }
            }
        }
        let mut entries = Vec::with_capacity(active.len());
        for (run, key) in active.into_iter().zip(keys) {
            let is_held = held.contains(&(key.0.as_str(), key.1.as_str()));
            let tis = by_run.remove(&key).unwrap_or_default();
            let count =
                |f: fn(TaskInstanceState) -> bool| tis.iter().filter(|t| f(t.state)).count();
            let busy =
                count(|s| matches!(s, TaskInstanceState::Queued | TaskInstanceState::Running));
            let waiting = count(|s| s == TaskInstanceState::Scheduled);
            entries.push((
                key,
                RunEntry {
                    run,
                    tis,
                    held: is_held,
                    dirty: true,
                    wakeup: None,
                    busy,
                    waiting,
                },
            ));
        }
        self.runs.extend(entries);
        corrupt.extend(bad);
        Ok(())
    }

    /// Reads every active run again, after taking the cursor (changes made during the read
    /// come back in the next refresh, which re-reads what they touched).
    async fn read_all(&mut self, store: &Store, now: DateTime<Utc>) -> Result<Refresh, StoreError> {
        let started = std::time::Instant::now();
        let cursor = store.event_cursor_now().await?;
        let mut gaps = BTreeMap::new();
        for (table, max) in [
            (EventTable::TaskInstance, cursor.task_instance),
            (EventTable::DagRun, cursor.dag_run),
        ] {
            let from = (max - RECENT_IDS).max(0);
            let present: HashSet<i64> = store
                .transition_ids_after(table, from, RECENT_IDS)
                .await?
                .into_iter()
                .collect();
            for id in from + 1..max {
                if !present.contains(&id) {
                    gaps.insert((table, id), now);
                }
            }
        }
        let (runs, mut corrupt) = store
            .dag_run_list_in_states(&[DagRunState::Queued, DagRunState::Running])
            .await?;
        self.runs.clear();
        self.extra.clear();
        self.insert_runs(store, runs, &mut corrupt).await?;
        self.cursor = cursor;
        self.gaps = gaps;
        self.synced = Some(now);
        let mut touched: Vec<RunKey> = self.runs.keys().cloned().collect();
        touched.sort_unstable();
        debug!(
            runs = self.runs.len(),
            task_instances = self.runs.values().map(|r| r.tis.len()).sum::<usize>(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "read every active run"
        );
        Ok(Refresh {
            full: true,
            touched,
            corrupt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_dag::Dag;
    use flow_store::TriggerRequest;
    use flow_store::testing::TestDb;
    use sqlx::Connection as _;

    async fn trigger(store: &Store, run_id: &str, now: DateTime<Utc>) {
        let (data, hash) = store.serialized_dag_get("d").await.unwrap().unwrap();
        let dag = Dag::from_json(&data).unwrap();
        let mut req = TriggerRequest::manual(serde_json::json!({}));
        req.run_id = Some(run_id.to_owned());
        store.dag_run_trigger(&dag, &hash, &req, now).await.unwrap();
    }

    /// SQL that schedules the task instance of `run_id` and records its transition, as any
    /// process's change would.
    fn schedule_sql(run_id: &str) -> [String; 2] {
        [
            format!(
                "UPDATE task_instance SET state = 'scheduled' WHERE dag_id = 'd' AND run_id = '{run_id}'"
            ),
            format!(
                "INSERT INTO ti_transition (dag_id, run_id, task_id, map_index, try_number, \
                 from_state, to_state, actor, at) VALUES ('d', '{run_id}', 't', -1, 0, 'none', \
                 'scheduled', 'scheduler', 0)"
            ),
        ]
    }

    fn state_of(view: &ActiveView, run_id: &str) -> TaskInstanceState {
        view.runs[&("d".to_owned(), run_id.to_owned())].tis[0].state
    }

    /// A change committed after a later one (PostgreSQL hands out ids before commit) is still
    /// seen: the view asks again for the id it skipped.
    #[tokio::test]
    async fn a_change_committed_out_of_id_order_is_not_missed() {
        let Some(db) = TestDb::postgres().await.unwrap() else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("flow-view-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("d.yaml"),
            "d:\n  tasks:\n    t: {operator: empty}\n",
        )
        .unwrap();
        let now = Utc::now();
        let mut scheduler = crate::Scheduler::new(
            db.store.clone(),
            crate::SchedulerConfig {
                dags_folder: dir.clone(),
                ..crate::SchedulerConfig::default()
            },
            crate::Wakeups::default(),
        );
        scheduler.pass(now).await.unwrap();
        trigger(&db.store, "r1", now).await;
        trigger(&db.store, "r2", now).await;

        let mut view = ActiveView::default();
        let first = view.refresh(&db.store, now).await.unwrap();
        assert!(first.full);
        assert_eq!(view.runs.len(), 2);

        // r1's change takes its id first and commits last.
        let mut slow = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut slow).await.unwrap();
        for sql in schedule_sql("r1") {
            sqlx::query(&sql).execute(&mut slow).await.unwrap();
        }
        for sql in schedule_sql("r2") {
            db.store.execute_raw(&sql).await.unwrap();
        }
        let seen = view.refresh(&db.store, now).await.unwrap();
        assert_eq!(seen.touched, vec![("d".to_owned(), "r2".to_owned())]);
        assert_eq!(state_of(&view, "r2"), TaskInstanceState::Scheduled);
        assert_eq!(state_of(&view, "r1"), TaskInstanceState::NoStatus);

        sqlx::query("COMMIT").execute(&mut slow).await.unwrap();
        let late = view.refresh(&db.store, now).await.unwrap();
        assert_eq!(late.touched, vec![("d".to_owned(), "r1".to_owned())]);
        assert_eq!(state_of(&view, "r1"), TaskInstanceState::Scheduled);

        drop(slow);
        drop(scheduler);
        let _ = std::fs::remove_dir_all(&dir);
        db.drop_db().await.unwrap();
    }
}
