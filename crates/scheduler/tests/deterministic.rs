//! Deterministic scheduler tests: `Scheduler::pass(now)` driven with a clock the test
//! controls, and a fake worker whose `step` claims and reports synchronously, on a fresh
//! SQLite file and a fresh PostgreSQL database. After each scenario the whole state (runs, task
//! instances, tries) is compared with a snapshot, which must be the same on both backends, and
//! every recorded transition is replayed through the model's table (`TestDb::drop_db`).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone, Utc};
use flow_dag::Dag;
use flow_model::{DagRunType, TaskInstanceState as S};
use flow_scheduler::{Scheduler, SchedulerConfig, Wakeups};
use flow_store::testing::TestDb;
use flow_store::{ClaimedTi, NewDagRun, Store, TiFinish, TiKey, TriggerRequest};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 5, 12, 0, 0).unwrap()
}

/// How a fake try ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Success,
    Fail,
}

/// One scheduler (or two) on one database, a dags folder, and the test's clock.
struct H {
    db: TestDb,
    store: Store,
    dir: PathBuf,
    sched: Scheduler,
    now: DateTime<Utc>,
}

static NEXT_DIR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn config(dir: &std::path::Path) -> SchedulerConfig {
    SchedulerConfig {
        dags_folder: dir.to_path_buf(),
        parallelism: 32,
        dags_are_paused_at_creation: false,
        zombie_threshold: StdDuration::from_secs(60),
        task_queued_timeout: StdDuration::from_secs(600),
        ..SchedulerConfig::default()
    }
}

impl H {
    async fn new(db: TestDb, yaml: &str, tweak: impl FnOnce(&mut SchedulerConfig)) -> H {
        let n = NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("flow-det-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dags.yaml"), yaml).unwrap();
        let mut cfg = config(&dir);
        tweak(&mut cfg);
        let store = db.store.clone();
        let sched = Scheduler::new(store.clone(), cfg, Wakeups::default());
        H {
            db,
            store,
            dir,
            sched,
            now: t0(),
        }
    }

    /// A second scheduler on the same database and folder.
    fn another_scheduler(&self) -> Scheduler {
        Scheduler::new(self.store.clone(), config(&self.dir), Wakeups::default())
    }

    async fn pass(&mut self) -> flow_scheduler::PassSummary {
        self.sched.pass(self.now).await.unwrap()
    }

    fn advance(&mut self, secs: i64) {
        self.now += Duration::seconds(secs);
    }

    async fn dag(&self, dag_id: &str) -> (Dag, String) {
        let (data, hash) = self
            .store
            .serialized_dag_get(dag_id)
            .await
            .unwrap()
            .unwrap();
        (Dag::from_json(&data).unwrap(), hash)
    }

    async fn trigger(&self, dag_id: &str, run_id: &str) {
        let (dag, hash) = self.dag(dag_id).await;
        let mut req = TriggerRequest::manual(serde_json::json!({}));
        req.run_id = Some(run_id.to_owned());
        req.logical_date = Some(self.now);
        self.store
            .dag_run_trigger(&dag, &hash, &req, self.now)
            .await
            .unwrap();
    }

    /// Claims up to `n` queued task instances, as a worker would.
    async fn claim(&self, n: i64) -> Vec<ClaimedTi> {
        self.store
            .ti_claim("w1", "host", &["default".to_owned()], n, self.now)
            .await
            .unwrap()
    }

    /// Reports how a claimed try ended, as the worker does (a failure is retried after the
    /// task's retry delay while tries are left).
    async fn finish(&self, ti: &ClaimedTi, done: Done) {
        self.finish_with(ti, done, None).await;
    }

    /// [`H::finish`] with a `return_value` XCom.
    async fn finish_with(&self, ti: &ClaimedTi, done: Done, xcom: Option<serde_json::Value>) {
        let (dag, _) = self.dag(&ti.key.dag_id).await;
        let task = dag.task(&ti.key.task_id).unwrap();
        let (state, next_retry_at) = match done {
            Done::Success => (S::Success, None),
            Done::Fail => task.after_failure(ti.try_number, ti.max_tries, self.now),
        };
        let applied = self
            .store
            .ti_finish(
                &TiFinish {
                    worker_id: None,
                    key: ti.key.clone(),
                    try_number: ti.try_number,
                    state,
                    reason: None,
                    next_retry_at,
                    xcom,
                    rendered_fields: None,
                    rendered_map_index: None,
                    logs: Vec::new(),
                    skip: Vec::new(),
                    xcoms: Vec::new(),
                    asset_events: Vec::new(),
                    callbacks: Vec::new(),
                },
                self.now,
            )
            .await
            .unwrap();
        assert!(applied, "{:?} try {}", ti.key, ti.try_number);
    }

    /// The worker's step: claim everything queued, end each try as `f` says. Returns the
    /// claimed task ids in claim order.
    async fn step(&self, f: impl Fn(&ClaimedTi) -> Done) -> Vec<String> {
        let claimed = self.claim(100).await;
        for ti in &claimed {
            self.finish(ti, f(ti)).await;
        }
        claimed.iter().map(label).collect()
    }

    /// Every run and task instance, sorted: what the test compares on both backends.
    async fn snapshot(&self) -> String {
        let mut out = String::new();
        let mut dags: Vec<String> = self
            .store
            .dag_list()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.dag_id)
            .collect();
        dags.sort();
        for dag_id in dags {
            let mut runs = self.store.dag_run_list(&dag_id, 1000).await.unwrap();
            runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
            for run in runs {
                out.push_str(&format!("{dag_id} {} {}\n", run.run_id, run.state));
                for ti in self
                    .store
                    .ti_list_for_run(&dag_id, &run.run_id)
                    .await
                    .unwrap()
                {
                    let retry = ti
                        .next_retry_at
                        .filter(|_| matches!(ti.state, S::UpForRetry | S::UpForReschedule))
                        .map(|at| format!(" retry_in={}s", (at - self.now).num_seconds()))
                        .unwrap_or_default();
                    out.push_str(&format!(
                        "  {} {} try={}{retry}\n",
                        label(&ti),
                        ti.state,
                        ti.try_number
                    ));
                }
            }
        }
        out
    }

    async fn states(&self, state: S) -> Vec<String> {
        let mut out = Vec::new();
        for dag in self.store.dag_list().await.unwrap() {
            for run in self.store.dag_run_list(&dag.dag_id, 1000).await.unwrap() {
                for ti in self
                    .store
                    .ti_list_for_run(&dag.dag_id, &run.run_id)
                    .await
                    .unwrap()
                {
                    if ti.state == state {
                        out.push(format!("{}/{}", run.run_id, label(&ti)));
                    }
                }
            }
        }
        out.sort();
        out
    }

    async fn done(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        self.db.drop_db().await.unwrap();
    }
}

fn label(ti: &ClaimedTi) -> String {
    if ti.key.map_index < 0 {
        ti.key.task_id.clone()
    } else {
        format!("{}[{}]", ti.key.task_id, ti.key.map_index)
    }
}

async fn backends() -> Vec<TestDb> {
    TestDb::all().await.unwrap()
}

fn dedent(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let indent = lines
        .iter()
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| format!("{}\n", &l[indent..]))
        .collect()
}

#[tokio::test]
async fn parallelism_limits_what_is_queued() {
    const YAML: &str = "wide:\n  tasks:\n    a: {operator: empty}\n    b: {operator: empty}\n    c: {operator: empty}\n    d: {operator: empty}\n    e: {operator: empty}\n";
    for db in backends().await {
        let mut h = H::new(db, YAML, |c| c.parallelism = 2).await;
        h.pass().await;
        h.trigger("wide", "r1").await;
        let summary = h.pass().await;
        assert_eq!(summary.queued, 2);
        assert_eq!(h.states(S::Queued).await.len(), 2);
        assert_eq!(h.states(S::Scheduled).await.len(), 3);
        for _ in 0..4 {
            h.step(|_| Done::Success).await;
            h.pass().await;
            assert!(h.states(S::Queued).await.len() <= 2);
        }
        h.pass().await;
        assert_eq!(
            h.snapshot().await,
            dedent(
                "
                wide r1 success
                  a success try=1
                  b success try=1
                  c success try=1
                  d success try=1
                  e success try=1
                "
            )
        );
        h.done().await;
    }
}

#[tokio::test]
async fn priority_order_when_queueing() {
    const YAML: &str = "prio:\n  default_args: {weight_rule: absolute}\n  tasks:\n    low: {operator: empty, priority_weight: 1}\n    high: {operator: empty, priority_weight: 10}\n    mid: {operator: empty, priority_weight: 5}\n";
    for db in backends().await {
        let mut h = H::new(db, YAML, |c| c.parallelism = 1).await;
        h.pass().await;
        h.trigger("prio", "r1").await;
        let mut order = Vec::new();
        for _ in 0..3 {
            h.pass().await;
            order.extend(h.step(|_| Done::Success).await);
        }
        assert_eq!(order, ["high", "mid", "low"]);
        h.done().await;
    }
}

#[tokio::test]
async fn max_active_tis_per_dag_spans_runs() {
    const YAML: &str =
        "one_at_a_time:\n  tasks:\n    t: {operator: empty, max_active_tis_per_dag: 1}\n";
    for db in backends().await {
        let mut h = H::new(db, YAML, |_| {}).await;
        h.pass().await;
        for r in ["r1", "r2", "r3"] {
            h.trigger("one_at_a_time", r).await;
        }
        for _ in 0..3 {
            h.pass().await;
            let queued = h.states(S::Queued).await;
            assert_eq!(queued.len(), 1, "{queued:?}");
            h.step(|_| Done::Success).await;
        }
        h.pass().await;
        assert_eq!(h.states(S::Success).await.len(), 3);
        h.done().await;
    }
}

#[tokio::test]
async fn pools_count_pool_slots() {
    const YAML: &str = "pooled:\n  default_args: {pool: p, pool_slots: 2}\n  tasks:\n    a: {operator: empty}\n    b: {operator: empty}\n    c: {operator: empty, pool_slots: 1}\n";
    for db in backends().await {
        db.store.pool_set("p", 3, "test pool").await.unwrap();
        let mut h = H::new(db, YAML, |_| {}).await;
        h.pass().await;
        h.trigger("pooled", "r1").await;
        h.pass().await;
        // 2 + 1 slots of 3: one two-slot task and the one-slot task; never both two-slot ones.
        let queued = h.states(S::Queued).await;
        assert_eq!(queued.len(), 2, "{queued:?}");
        assert!(queued.contains(&"r1/c".to_owned()), "{queued:?}");
        h.step(|_| Done::Success).await;
        h.pass().await;
        assert_eq!(h.states(S::Queued).await.len(), 1);
        h.step(|_| Done::Success).await;
        h.pass().await;
        assert_eq!(h.states(S::Success).await.len(), 3);
        h.done().await;
    }
}

#[tokio::test]
async fn dagrun_timeout_fails_the_run_and_skips_what_is_left() {
    const YAML: &str = "slow:\n  dagrun_timeout: 10m\n  tasks:\n    long: {operator: empty}\n    after: {operator: empty, dependencies: [long]}\n";
    for db in backends().await {
        let mut h = H::new(db, YAML, |_| {}).await;
        h.pass().await;
        h.trigger("slow", "r1").await;
        h.pass().await;
        let claimed = h.claim(10).await;
        assert_eq!(claimed.len(), 1);
        // The worker keeps the try alive past the timeout.
        h.advance(30);
        h.store
            .ti_heartbeat("w1", &[(claimed[0].key.clone(), 1)], h.now)
            .await
            .unwrap();
        h.advance(600);
        h.store
            .ti_heartbeat("w1", &[(claimed[0].key.clone(), 1)], h.now)
            .await
            .unwrap();
        h.pass().await;
        assert_eq!(
            h.snapshot().await,
            dedent(
                "
                slow r1 failed
                  after skipped try=0
                  long skipped try=1
                "
            )
        );
        h.done().await;
    }
}

#[tokio::test]
async fn retries_back_off_exponentially_up_to_max_retry_delay() {
    const YAML: &str = "flaky:\n  tasks:\n    t: {operator: empty, retries: 3, retry_delay: 10s, retry_exponential_backoff: true, max_retry_delay: 25s}\n";
    for db in backends().await {
        let mut h = H::new(db, YAML, |_| {}).await;
        h.pass().await;
        h.trigger("flaky", "r1").await;
        h.pass().await;
        let mut waits = Vec::new();
        for _ in 0..3 {
            assert_eq!(h.step(|_| Done::Fail).await, ["t"]);
            let snap = h.snapshot().await;
            let wait: i64 = snap
                .split("retry_in=")
                .nth(1)
                .and_then(|s| s.split('s').next())
                .and_then(|s| s.parse().ok())
                .unwrap();
            waits.push(wait);
            // Not before its time...
            h.advance(wait - 1);
            h.pass().await;
            assert_eq!(h.states(S::UpForRetry).await.len(), 1, "{snap}");
            // ...and at once when it comes.
            h.advance(1);
            h.pass().await;
            assert_eq!(h.states(S::Queued).await.len(), 1);
        }
        assert_eq!(waits, [10, 20, 25]);
        h.step(|_| Done::Fail).await;
        h.pass().await;
        assert_eq!(
            h.snapshot().await,
            dedent(
                "
                flaky r1 failed
                  t failed try=4
                "
            )
        );
        h.done().await;
    }
}

#[tokio::test]
async fn a_zombie_is_retried_then_failed_once_its_tries_are_used() {
    const YAML: &str = "z:\n  tasks:\n    t: {operator: empty, retries: 1, retry_delay: 30s}\n";
    for db in backends().await {
        let mut h = H::new(db, YAML, |_| {}).await;
        h.pass().await;
        h.trigger("z", "r1").await;
        h.pass().await;
        assert_eq!(h.claim(10).await.len(), 1);
        // The worker dies: no heartbeat for longer than the threshold.
        h.advance(61);
        h.pass().await;
        assert_eq!(h.states(S::UpForRetry).await, ["r1/t"]);
        h.advance(30);
        h.pass().await;
        let second = h.claim(10).await;
        assert_eq!(second[0].try_number, 2);
        h.advance(61);
        h.pass().await;
        h.pass().await;
        assert_eq!(
            h.snapshot().await,
            dedent(
                "
                z r1 failed
                  t failed try=2
                "
            )
        );
        let reasons = h
            .store
            .ti_transitions(&TiKey::new("z", "r1", "t", -1))
            .await
            .unwrap();
        assert!(
            reasons
                .iter()
                .any(|r| r.2 == "failed" && r.4.as_deref().is_some_and(|x| x.starts_with("zombie"))),
            "{reasons:?}"
        );
        h.done().await;
    }
}

/// A task cleared while running goes to `restarting`; if its worker then dies, the scheduler
/// finishes the clear (back to no state) instead of leaving the run stuck forever.
#[tokio::test]
async fn a_restarting_try_whose_worker_died_is_recovered() {
    const YAML: &str = "rs:\n  tasks:\n    t: {operator: empty}\n";
    for db in backends().await {
        let mut h = H::new(db, YAML, |_| {}).await;
        h.pass().await;
        h.trigger("rs", "r1").await;
        h.pass().await;
        let claimed = h.claim(10).await;
        let report = h
            .store
            .ti_clear(&[(claimed[0].key.clone(), 0)], h.now)
            .await
            .unwrap();
        assert_eq!(report.restarting, 1);
        h.advance(61);
        h.pass().await;
        assert_eq!(h.states(S::NoStatus).await, ["r1/t"]);
        h.pass().await;
        let again = h.claim(10).await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].try_number, 2);
        h.finish(&again[0], Done::Success).await;
        h.pass().await;
        assert_eq!(
            h.snapshot().await,
            dedent(
                "
                rs r1 success
                  t success try=2
                "
            )
        );
        h.done().await;
    }
}

/// No worker serves the task's queue: it is queued again twice, then failed, with the reason
/// recorded each time (Airflow's task_queued_timeout).
#[tokio::test]
async fn a_task_no_worker_claims_is_requeued_then_failed() {
    const YAML: &str = "lonely:\n  tasks:\n    t: {operator: empty, queue: nowhere}\n";
    for db in backends().await {
        let mut h = H::new(db, YAML, |_| {}).await;
        h.pass().await;
        h.trigger("lonely", "r1").await;
        h.pass().await;
        assert!(
            h.claim(10).await.is_empty(),
            "the test worker serves `default` only"
        );
        for _ in 0..3 {
            h.advance(601);
            h.pass().await;
            h.pass().await;
        }
        h.pass().await;
        assert_eq!(
            h.snapshot().await,
            dedent(
                "
                lonely r1 failed
                  t failed try=0
                "
            )
        );
        let reasons: Vec<String> = h
            .store
            .ti_transitions(&TiKey::new("lonely", "r1", "t", -1))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|t| t.4)
            .collect();
        assert_eq!(
            reasons
                .iter()
                .filter(
                    |r| r.starts_with("stuck in queued: no worker claimed it from queue `nowhere`")
                )
                .count(),
            3,
            "{reasons:?}"
        );
        assert!(reasons.iter().any(|r| r.ends_with("queued again (2 of 2)")));
        assert!(
            reasons
                .iter()
                .any(|r| r.ends_with("failed after 2 requeues"))
        );
        h.done().await;
    }
}

/// A backfilled date is not scheduled again, and a row that takes a scheduled run's id makes
/// the scheduler move on instead of retrying that run in a loop that never sleeps.
#[tokio::test]
async fn backfill_runs_and_conflicting_rows_never_stall_the_schedule() {
    const YAML: &str = "daily:\n  schedule: '@daily'\n  start_date: 2025-01-01\n  catchup: false\n  is_paused_upon_creation: true\n  tasks:\n    t: {operator: empty}\n";
    for db in backends().await {
        let mut h = H::new(db, YAML, |_| {}).await;
        h.pass().await;
        let (dag, hash) = h.dag("daily").await;
        let day = |d: u32| Utc.with_ymd_and_hms(2025, 1, d, 0, 0, 0).unwrap();
        // The date the scheduler would create next ([01-04, 01-05), due at 01-05) is
        // backfilled first.
        let backfill = TriggerRequest {
            run_id: None,
            run_type: DagRunType::Backfill,
            logical_date: Some(day(4)),
            data_interval: Some((day(4), day(5))),
            run_after: Some(day(5)),
            conf: serde_json::json!({}),
            note: None,
            triggered_by: Some("test".into()),
        };
        h.store
            .dag_run_trigger(&dag, &hash, &backfill, h.now)
            .await
            .unwrap();
        // A hand-made row holds the id of the run after it ([01-05, 01-06), due at 01-06).
        let squatter = NewDagRun {
            dag_id: "daily".into(),
            run_id: "scheduled__2025-01-05T00:00:00+00:00".into(),
            run_type: DagRunType::Manual,
            state: flow_model::DagRunState::Queued,
            logical_date: Some(day(1)),
            data_interval_start: Some(day(1)),
            data_interval_end: Some(day(1)),
            run_after: day(1),
            conf: serde_json::json!({}),
            note: None,
            triggered_by: Some("test".into()),
            dag_hash: hash.clone(),
        };
        assert!(
            h.store
                .dag_run_create(&squatter, &flow_store::new_task_instances(&dag), h.now)
                .await
                .unwrap()
                .is_some()
        );
        h.store.dag_set_paused("daily", false).await.unwrap();
        h.advance(2);
        h.pass().await;
        h.step(|_| Done::Success).await;
        h.pass().await;
        let first = h.pass().await;
        assert!(
            first.next_deadline.is_some_and(|d| d > h.now),
            "the backfilled date is covered: nothing is due until 01-06 ({first:?})"
        );
        h.now = day(6) + Duration::seconds(1);
        // Due now: [01-05, 01-06), whose id is taken. One pass tries it and moves on;
        // the next one does not come back to it at once.
        h.pass().await;
        let second = h.pass().await;
        assert!(
            second.next_deadline.is_some_and(|d| d > h.now),
            "a conflicting row must not make the scheduler retry without sleeping ({second:?})"
        );
        h.now = day(7) + Duration::seconds(1);
        h.pass().await;
        let runs: Vec<String> = h
            .store
            .dag_run_list("daily", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| format!("{} {}", r.run_type, r.run_id))
            .collect();
        assert!(
            runs.contains(&"scheduled scheduled__2025-01-06T00:00:00+00:00".to_owned()),
            "the schedule moved on: {runs:?}"
        );
        assert_eq!(runs.len(), 3, "{runs:?}");
        h.done().await;
    }
}

/// One unreadable row (a state written by hand) holds up its own run; every other run goes
/// on, and the scheduler's passes keep succeeding.
#[tokio::test]
async fn a_corrupt_row_holds_up_only_its_own_run() {
    const YAML: &str =
        "a:\n  tasks:\n    t: {operator: empty}\nb:\n  tasks:\n    t: {operator: empty}\n";
    for db in backends().await {
        let mut h = H::new(db, YAML, |_| {}).await;
        h.pass().await;
        h.trigger("a", "r1").await;
        h.trigger("b", "r1").await;
        h.store
            .execute_raw(
                "UPDATE task_instance SET state = 'RUNNING?' WHERE dag_id = 'a' AND run_id = 'r1'",
            )
            .await
            .unwrap();
        h.pass().await;
        h.step(|_| Done::Success).await;
        h.pass().await;
        let b = h.store.dag_run_get("b", "r1").await.unwrap().unwrap();
        assert_eq!(b.state, flow_model::DagRunState::Success);
        let a = h.store.dag_run_get("a", "r1").await.unwrap().unwrap();
        assert_eq!(a.state, flow_model::DagRunState::Running);
        // Fixed by hand, the run goes on. A hand edit records no transition: the scheduler
        // sees it at its next full read of the active runs (every 30 s).
        h.store
            .execute_raw("UPDATE task_instance SET state = 'none' WHERE dag_id = 'a'")
            .await
            .unwrap();
        h.now += Duration::seconds(31);
        h.pass().await;
        h.step(|_| Done::Success).await;
        h.pass().await;
        let a = h.store.dag_run_get("a", "r1").await.unwrap().unwrap();
        assert_eq!(a.state, flow_model::DagRunState::Success);
        h.done().await;
    }
}

/// Two schedulers take turns on one database: every run is created once, limits hold, and
/// every task runs once.
#[tokio::test]
async fn two_schedulers_interleaved_behave_as_one() {
    const YAML: &str = "twice:\n  schedule: '@daily'\n  start_date: 2025-01-01\n  catchup: true\n  max_active_runs: 2\n  default_args: {pool: p}\n  tasks:\n    a: {operator: empty}\n    b: {operator: empty, dependencies: [a]}\n    c: {operator: empty, dependencies: [a]}\n";
    for db in backends().await {
        db.store.pool_set("p", 2, "").await.unwrap();
        let mut h = H::new(db, YAML, |_| {}).await;
        let mut other = h.another_scheduler();
        for i in 0..40 {
            if i % 2 == 0 {
                h.pass().await;
            } else {
                other.pass(h.now).await.unwrap();
            }
            let busy = h.states(S::Queued).await.len() + h.states(S::Running).await.len();
            assert!(busy <= 2, "the pool of 2 holds ({busy})");
            let running_runs = h
                .store
                .dag_run_list("twice", 100)
                .await
                .unwrap()
                .iter()
                .filter(|r| r.state == flow_model::DagRunState::Running)
                .count();
            assert!(running_runs <= 2, "max_active_runs holds ({running_runs})");
            h.step(|_| Done::Success).await;
            h.advance(1);
        }
        // Catchup from 01-01 to the interval ending 01-05: four runs, each once.
        let snap = h.snapshot().await;
        assert_eq!(snap.matches("twice scheduled__").count(), 4, "{snap}");
        assert_eq!(snap.matches(" success try=1").count(), 12, "{snap}");
        assert!(!snap.contains("try=2"), "{snap}");
        h.done().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Dynamic task mapping

const MAPPED: &str = "
mapped:
  tasks:
    make: {operator: empty}
    m:
      operator: bash
      expand: {bash_command: [\"echo a\", \"echo b\", \"echo c\"]}
      dependencies: [make]
    all_ok: {operator: empty, dependencies: [m]}
    whatever: {operator: empty, trigger_rule: all_done, dependencies: [m]}
";

/// A literal list: the task gets one instance per element once its upstream is done, each
/// with its own try; downstream rules count every instance.
#[tokio::test]
async fn mapping_over_a_literal_list() {
    for db in backends().await {
        let mut h = H::new(db, MAPPED, |_| {}).await;
        h.pass().await;
        h.trigger("mapped", "r1").await;
        h.pass().await;
        assert_eq!(h.step(|_| Done::Success).await, ["make"]);
        h.pass().await;
        let mut claimed = h.claim(10).await;
        claimed.sort_by_key(|t| t.key.map_index);
        assert_eq!(
            claimed.iter().map(label).collect::<Vec<_>>(),
            ["m[0]", "m[1]", "m[2]"]
        );
        for ti in &claimed {
            let done = if ti.key.map_index == 1 {
                Done::Fail
            } else {
                Done::Success
            };
            h.finish(ti, done).await;
        }
        h.pass().await;
        h.step(|_| Done::Success).await;
        h.pass().await;
        assert_eq!(
            h.snapshot().await,
            dedent(
                "
                mapped r1 failed
                  all_ok upstream_failed try=0
                  m[0] success try=1
                  m[1] failed try=1
                  m[2] success try=1
                  make success try=1
                  whatever success try=1
                "
            )
        );
        // Clearing one map index reruns it alone.
        let key = TiKey::new("mapped", "r1", "m", 1);
        h.store.ti_clear(&[(key, 0)], h.now).await.unwrap();
        h.pass().await;
        assert_eq!(h.step(|_| Done::Success).await, ["m[1]"]);
        h.pass().await;
        let snap = h.snapshot().await;
        assert!(snap.contains("m[1] success try=2"), "{snap}");
        assert!(snap.contains("m[0] success try=1"), "{snap}");
        h.done().await;
    }
}

/// Mapping over an upstream's XCom, several arguments (cross product), and an empty list.
#[tokio::test]
async fn mapping_over_xcom_cross_products_and_empty_lists() {
    const YAML: &str = "
xmap:
  tasks:
    src: {operator: empty}
    over_xcom:
      operator: bash
      bash_command: echo {{ ti.map_index }}
      expand: {env: +src}
    cross:
      operator: bash
      bash_command: echo
      expand: {env: [{A: '1'}, {A: '2'}], cwd: [/a, /b, /c]}
      dependencies: [src]
empty:
  tasks:
    src: {operator: empty}
    m:
      operator: bash
      expand: {bash_command: +src}
    after: {operator: empty, dependencies: [m]}
    after_all: {operator: empty, trigger_rule: all_done, dependencies: [m]}
";
    for db in backends().await {
        let mut h = H::new(db, YAML, |_| {}).await;
        h.pass().await;
        h.trigger("xmap", "r1").await;
        h.trigger("empty", "r1").await;
        h.pass().await;
        for ti in h.claim(10).await {
            let xcom = if ti.key.dag_id == "xmap" {
                serde_json::json!([{"K": "1"}, {"K": "2"}])
            } else {
                serde_json::json!([])
            };
            h.finish_with(&ti, Done::Success, Some(xcom)).await;
        }
        h.pass().await;
        let mut labels = h.step(|_| Done::Success).await;
        labels.sort();
        // `after_all` of `empty` ran too: its mapped task was skipped in the same pass.
        labels.retain(|l| l != "after_all");
        assert_eq!(
            labels,
            [
                "cross[0]",
                "cross[1]",
                "cross[2]",
                "cross[3]",
                "cross[4]",
                "cross[5]",
                "over_xcom[0]",
                "over_xcom[1]"
            ]
        );
        h.pass().await;
        h.step(|_| Done::Success).await;
        h.pass().await;
        let snap = h.snapshot().await;
        assert!(snap.contains("xmap r1 success"), "{snap}");
        // An empty list: the mapped task is skipped (one instance, map index -1), as in
        // Airflow; all_success below it is skipped, all_done runs, the run succeeds.
        assert!(
            snap.contains(
                "empty r1 success\n  after skipped try=0\n  after_all success try=1\n  m skipped try=0\n  src success try=1\n"
            ),
            "{snap}"
        );
        h.done().await;
    }
}

/// At most `max_active_tis_per_dagrun` instances of a mapped task run at once.
#[tokio::test]
async fn mapped_instances_respect_max_active_tis_per_dagrun() {
    const YAML: &str = "
limited:
  tasks:
    m:
      operator: bash
      max_active_tis_per_dagrun: 2
      expand: {bash_command: [a, b, c, d, e]}
";
    for db in backends().await {
        let mut h = H::new(db, YAML, |_| {}).await;
        h.pass().await;
        h.trigger("limited", "r1").await;
        let mut batches = Vec::new();
        for _ in 0..3 {
            h.pass().await;
            batches.push(h.step(|_| Done::Success).await);
        }
        assert_eq!(
            batches,
            [vec!["m[0]", "m[1]"], vec!["m[2]", "m[3]"], vec!["m[4]"]]
        );
        h.pass().await;
        assert!(h.snapshot().await.starts_with("limited r1 success"));
        h.done().await;
    }
}

/// An upstream that pushed something that cannot be mapped over (here by hand; a real worker
/// fails such a try itself) leaves the mapped task upstream_failed with the reason, instead
/// of stuck.
#[tokio::test]
async fn unmappable_xcom_fails_the_mapped_task_with_the_reason() {
    const YAML: &str = "
bad:
  tasks:
    src: {operator: empty}
    m:
      operator: bash
      expand: {bash_command: +src}
";
    for db in backends().await {
        let mut h = H::new(db, YAML, |_| {}).await;
        h.pass().await;
        h.trigger("bad", "r1").await;
        h.pass().await;
        for ti in h.claim(10).await {
            h.finish_with(&ti, Done::Success, Some(serde_json::json!(5)))
                .await;
        }
        h.pass().await;
        h.pass().await;
        assert_eq!(
            h.snapshot().await,
            dedent(
                "
                bad r1 failed
                  m upstream_failed try=0
                  src success try=1
                "
            )
        );
        let reasons = h
            .store
            .ti_transitions(&TiKey::new("bad", "r1", "m", -1))
            .await
            .unwrap();
        assert_eq!(
            reasons[0].4.as_deref(),
            Some("UnmappableXComTypePushed: unmappable return type 'int'")
        );
        h.done().await;
    }
}
