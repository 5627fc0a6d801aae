//! `flow tasks test` (run one task here, record nothing), `flow tasks clear`, and
//! `flow dags backfill`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration as StdDuration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;
use flow_dag::{Dag, LoadOptions};
use flow_executor::{Outcome, RunContext, RunSpec, TryOf, XcomMap, render_task};
use flow_model::DagRunState;
use flow_store::{Store, TiKey};
use tokio::sync::{mpsc, watch};

use crate::ops;

/// Runs one task locally, as Airflow's `tasks test`: templates rendered for the given date,
/// output on this terminal, nothing written to the database. Exit status follows the outcome.
pub async fn test(
    dags_folder: &Path,
    dag_id: &str,
    task_id: &str,
    date: Option<&str>,
    conf: Option<&str>,
) -> Result<ExitCode> {
    let options = LoadOptions {
        allow_external_links: ops::allow_external_dag_links()?,
        ..LoadOptions::default()
    };
    let bag = flow_dag::load_dags(dags_folder, &options)
        .with_context(|| format!("reading {}", dags_folder.display()))?;
    let dag = bag.dag(dag_id).cloned().ok_or_else(|| {
        let broken = bag.error_count();
        anyhow!(
            "dag `{dag_id}` not found in {}{}",
            dags_folder.display(),
            if broken > 0 {
                " (some files have import errors: `flow dags validate`)"
            } else {
                ""
            }
        )
    })?;
    let task = dag.task(task_id).cloned().ok_or_else(|| {
        let ids: Vec<&str> = dag.tasks.iter().map(|t| t.task_id.as_str()).collect();
        let hint = flow_dag::de::did_you_mean_hint(task_id, ids.iter().copied());
        anyhow!("task `{task_id}` not found in dag `{dag_id}`{hint}")
    })?;
    let logical_date = ops::parse_when(date, "date")?.unwrap_or_else(Utc::now);
    let conf = ops::parse_conf(conf)?;
    let interval = dag.timetable.infer_manual_data_interval(logical_date);
    let run = TryOf {
        run_id: format!(
            "__flow_tasks_test__{}",
            flow_store::run_id_timestamp(logical_date)
        ),
        run_type: "manual".into(),
        logical_date: Some(logical_date),
        data_interval_start: Some(interval.start),
        data_interval_end: Some(interval.end),
        run_after: logical_date,
        run_start_date: Some(Utc::now()),
        conf,
        map_index: -1,
        try_number: 1,
        max_tries: task.retries,
    };
    let ctx = RunContext::new(&dag, &task, run, dags_folder, XcomMap::new())
        .map_err(|e| anyhow!("{e}"))?;
    let mut rendered = render_task(&task, &ctx).map_err(|e| anyhow!("{e}"))?;
    for (field, value) in rendered.fields() {
        eprintln!("[rendered {field}] {value}");
    }
    // A test waits in place: no reschedule, no triggerer (as Airflow's `tasks test`).
    if let flow_executor::RenderedTask::Sensor { sensor, .. } = &mut rendered {
        sensor.mode = flow_dag::SensorMode::Poke;
    }
    let conn = match rendered.conn_id() {
        Some(id) => {
            let source = crate::config::connection_source()?;
            let store = ops::connect_migrated().await?;
            let conn = store
                .connection_resolve(id, &source)
                .await?
                .ok_or_else(|| anyhow!("connection `{id}` not found"))?;
            Some(conn)
        }
        None => None,
    };
    let mut spec = RunSpec::new(&task, rendered, &ctx);
    spec.max_xcom_size = ops::max_xcom_size()?;
    spec.smtp = Some(ops::smtp_settings()?);
    if let Some(conn) = conn {
        spec = spec.with_connection(conn).map_err(|e| anyhow!(e))?;
    }
    let (tx, mut rx) = mpsc::channel(256);
    let (_cancel_tx, cancel_rx) = watch::channel(false);
    let printer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            let line: flow_executor::LogLine = line;
            println!(
                "[{}] {{{}}} {}",
                line.at.format("%H:%M:%S%.3f"),
                line.stream.as_str(),
                line.text
            );
        }
    });
    let outcome = flow_executor::run(spec, tx, cancel_rx).await;
    let _ = printer.await;
    // A branch's decision, reported but not applied: a test changes no other task.
    let branched = flow_executor::branch::after_run(&dag, &task, &ctx, outcome, Utc::now());
    if let Some(message) = &branched.message {
        eprintln!("task {task_id}: {message}");
    }
    let outcome = branched.outcome;
    match outcome {
        Outcome::Success { xcom } => {
            if let Some(x) = xcom {
                eprintln!("task {task_id}: success (return_value = {x})");
            } else {
                eprintln!("task {task_id}: success");
            }
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Skipped { reason } => {
            eprintln!("task {task_id}: skipped ({reason})");
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Failed { reason } => {
            eprintln!("task {task_id}: failed: {reason}");
            Ok(ExitCode::FAILURE)
        }
        Outcome::TimedOut => {
            eprintln!("task {task_id}: failed: execution_timeout exceeded");
            Ok(ExitCode::FAILURE)
        }
        Outcome::FailedNoRetry { reason } => {
            eprintln!("task {task_id}: failed: {reason}");
            Ok(ExitCode::FAILURE)
        }
        Outcome::Cancelled | Outcome::Reschedule { .. } | Outcome::Defer { .. } => {
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Task ids matching `pattern`, plus (optionally) everything downstream or upstream of them.
fn select_tasks(
    dag: &Dag,
    pattern: Option<&str>,
    downstream: bool,
    upstream: bool,
) -> Result<BTreeSet<String>> {
    let re = match pattern {
        Some(p) => Some(regex::Regex::new(p).map_err(|e| anyhow!("-t: invalid regex: {e}"))?),
        None => None,
    };
    let matched = dag
        .tasks
        .iter()
        .filter(|t| re.as_ref().is_none_or(|r| r.is_match(t.task_id.as_str())))
        .map(|t| t.task_id.to_string());
    Ok(dag.with_relatives(matched, downstream, upstream))
}

pub struct ClearArgs<'a> {
    pub dag_id: &'a str,
    pub task_regex: Option<&'a str>,
    pub downstream: bool,
    pub upstream: bool,
    pub start_date: Option<&'a str>,
    pub end_date: Option<&'a str>,
    pub only_failed: bool,
    /// Only these map indexes of mapped tasks (empty: all).
    pub map_indexes: &'a [i64],
    pub yes: bool,
}

/// Clears task instances so that they run again (Airflow's `tasks clear`).
pub async fn clear(dags_folder: &Path, args: ClearArgs<'_>) -> Result<ExitCode> {
    let store = ops::connect_migrated().await?;
    let (dag, _) = ops::dag_from_store(&store, dags_folder, args.dag_id).await?;
    let tasks = select_tasks(&dag, args.task_regex, args.downstream, args.upstream)?;
    let start = ops::parse_when(args.start_date, "--start-date")?;
    let end = ops::parse_when(args.end_date, "--end-date")?;
    let runs = store.dag_run_list(args.dag_id, 100_000).await?;
    let mut keys: Vec<(TiKey, i64)> = Vec::new();
    for run in runs.iter().filter(|r| {
        let when = r.logical_date.unwrap_or(r.run_after);
        start.is_none_or(|s| when >= s) && end.is_none_or(|e| when <= e)
    }) {
        for ti in store.ti_list_for_run(&run.dag_id, &run.run_id).await? {
            if !tasks.contains(&ti.key.task_id) || !selected(args.map_indexes, &ti.key) {
                continue;
            }
            if args.only_failed
                && !matches!(
                    ti.state,
                    flow_model::TaskInstanceState::Failed
                        | flow_model::TaskInstanceState::UpstreamFailed
                )
            {
                continue;
            }
            if matches!(
                ti.state,
                flow_model::TaskInstanceState::NoStatus | flow_model::TaskInstanceState::Removed
            ) {
                continue;
            }
            let retries = dag
                .task(&ti.key.task_id)
                .map_or(0, |t| i64::from(t.retries));
            println!(
                "{} {} {} ({})",
                ti.key.dag_id,
                ti.key.run_id,
                label(&ti.key),
                ti.state
            );
            keys.push((ti.key, retries));
        }
    }
    if keys.is_empty() {
        println!("nothing to clear");
        return Ok(ExitCode::SUCCESS);
    }
    // ExternalTaskMarkers reach into other DAGs, as Airflow's clear follows them.
    let own = keys.len();
    let keys = store.clear_across_markers(&dag, keys).await?;
    for (key, _) in &keys[own..] {
        println!(
            "{} {} {} (through an ExternalTaskMarker)",
            key.dag_id,
            key.run_id,
            label(key)
        );
    }
    if !args.yes {
        eprintln!(
            "{} task instance(s) would be cleared; pass --yes to clear them",
            keys.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    let report = store.ti_clear(&keys, Utc::now()).await?;
    println!(
        "cleared {} task instance(s) ({} running ones restarting); {} dag run(s) queued again",
        report.cleared, report.restarting, report.runs_requeued
    );
    Ok(ExitCode::SUCCESS)
}

pub struct MarkArgs<'a> {
    pub dag_id: &'a str,
    pub run_id: &'a str,
    pub task_regex: &'a str,
    pub state: &'a str,
    pub downstream: bool,
    pub upstream: bool,
    /// Only these map indexes of mapped tasks (empty: all).
    pub map_indexes: &'a [i64],
}

/// Whether `key` is among the chosen map indexes (an unmapped instance always is).
fn selected(map_indexes: &[i64], key: &TiKey) -> bool {
    map_indexes.is_empty() || key.map_index < 0 || map_indexes.contains(&key.map_index)
}

/// `task` or `task[map_index]`.
fn label(key: &TiKey) -> String {
    if key.map_index < 0 {
        key.task_id.clone()
    } else {
        format!("{}[{}]", key.task_id, key.map_index)
    }
}

/// Marks task instances of one run by hand.
pub async fn mark(dags_folder: &Path, args: MarkArgs<'_>) -> Result<ExitCode> {
    use flow_model::TaskInstanceState as S;
    let to: S = args
        .state
        .parse()
        .ok()
        .filter(|s| matches!(s, S::Success | S::Failed | S::Skipped))
        .with_context(|| {
            format!(
                "--state `{}`: a task instance can be marked success, failed or skipped",
                args.state
            )
        })?;
    let store = ops::connect_migrated().await?;
    let (dag, _) = ops::dag_from_store(&store, dags_folder, args.dag_id).await?;
    if store.dag_run_get(args.dag_id, args.run_id).await?.is_none() {
        bail!("dag `{}` has no run `{}`", args.dag_id, args.run_id);
    }
    let tasks = select_tasks(&dag, Some(args.task_regex), args.downstream, args.upstream)?;
    let keys: Vec<TiKey> = store
        .ti_list_for_run(args.dag_id, args.run_id)
        .await?
        .into_iter()
        .filter(|t| tasks.contains(&t.key.task_id) && selected(args.map_indexes, &t.key))
        .map(|t| t.key)
        .collect();
    if keys.is_empty() {
        bail!(
            "no task of run `{}` matches `{}`",
            args.run_id,
            args.task_regex
        );
    }
    let marked = store.ti_mark(&keys, to, Utc::now()).await?;
    for key in &keys {
        let done = if marked.contains(key) {
            format!("marked {to}")
        } else {
            format!("left alone (already {to}, or not markable from its state)")
        };
        println!("{} {done}", label(key));
    }
    println!("marked {} task instance(s) {to}", marked.len());
    Ok(ExitCode::SUCCESS)
}

/// Marks a whole run success or failed by hand.
pub async fn mark_run(dag_id: &str, run_id: &str, state: &str) -> Result<ExitCode> {
    use flow_model::DagRunState;
    let to: DagRunState = state
        .parse()
        .ok()
        .filter(|s| matches!(s, DagRunState::Success | DagRunState::Failed))
        .with_context(|| format!("--state `{state}`: a run can be marked success or failed"))?;
    let store = ops::connect_migrated().await?;
    if !store.dag_run_mark(dag_id, run_id, to, Utc::now()).await? {
        bail!("dag `{dag_id}` has no run `{run_id}`");
    }
    println!("run {run_id} of {dag_id} marked {to}");
    Ok(ExitCode::SUCCESS)
}

pub struct BackfillArgs<'a> {
    pub dag_id: &'a str,
    pub start_date: &'a str,
    pub end_date: &'a str,
    pub reset_dagruns: bool,
    pub reprocess_behavior: Option<&'a str>,
    pub max_active_runs: Option<i64>,
    pub run_backwards: bool,
    pub dry_run: bool,
    pub conf: Option<&'a str>,
}

/// Creates a backfill (Airflow 3's: the store makes its runs, the scheduler starts them within
/// its `max_active_runs`; the REST API and the web UI make the same) and follows its runs to
/// the end with a progress bar.
pub async fn backfill(dags_folder: &Path, args: BackfillArgs<'_>) -> Result<ExitCode> {
    let start = ops::parse_when(Some(args.start_date), "--start-date")?.context("--start-date")?;
    let end = ops::parse_when(Some(args.end_date), "--end-date")?.context("--end-date")?;
    if end < start {
        bail!("--end-date is before --start-date");
    }
    let reprocess = match (args.reprocess_behavior, args.reset_dagruns) {
        (Some(r), _) => flow_store::ReprocessBehavior::parse(r)
            .context("--reprocess-behavior is none, failed or completed")?,
        (None, true) => flow_store::ReprocessBehavior::Completed,
        (None, false) => flow_store::ReprocessBehavior::None,
    };
    let max_active_runs = args.max_active_runs.unwrap_or(10);
    if !(1..=1000).contains(&max_active_runs) {
        bail!("--max-active-runs is 1 to 1000");
    }
    let conf = ops::parse_conf(args.conf)?;
    let store = ops::connect_migrated().await?;
    let (dag, hash) = ops::dag_from_store(&store, dags_folder, args.dag_id).await?;
    let infos = dag.timetable.runs_in_range(start, end, 100_000);
    if args.dry_run {
        let plan = store
            .backfill_plan(args.dag_id, &infos, reprocess, args.run_backwards)
            .await?;
        let mut runs = 0;
        for (info, planned) in &plan {
            let what = match planned {
                flow_store::Planned::Create => "create".to_owned(),
                flow_store::Planned::Reprocess(r) => format!("clear {r} and run it again"),
                flow_store::Planned::Skip(why) => format!("skip: {why}"),
            };
            if !matches!(planned, flow_store::Planned::Skip(_)) {
                runs += 1;
            }
            println!(
                "{} {}..{}  {what}",
                info.logical_date, info.data_interval.start, info.data_interval.end
            );
        }
        println!("{runs} run(s); dry run, nothing created");
        return Ok(ExitCode::SUCCESS);
    }
    let new = flow_store::NewBackfill {
        dag_id: args.dag_id.to_owned(),
        from_date: start,
        to_date: end,
        conf,
        reprocess,
        max_active_runs,
        run_backwards: args.run_backwards,
        triggering_user: Some(format!("cli:{}", whoami())),
    };
    let (backfill, run_ids) = store
        .backfill_create(&dag, &hash, &new, &infos, Utc::now())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "backfill {} of {}: {} run(s), at most {} at a time",
        backfill.id,
        args.dag_id,
        run_ids.len(),
        backfill.max_active_runs
    );
    let paused = store
        .dag_get(args.dag_id)
        .await?
        .is_some_and(|d| d.is_paused);
    if paused {
        eprintln!(
            "note: dag `{}` is paused; its backfill runs wait until it is unpaused",
            args.dag_id
        );
    }
    follow(&store, args.dag_id, &run_ids).await
}

/// Who runs the CLI, for the backfill's `triggering_user_name`.
fn whoami() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// A progress bar over the runs until all have finished.
async fn follow(store: &Store, dag_id: &str, run_ids: &[String]) -> Result<ExitCode> {
    let bar = indicatif::ProgressBar::new(run_ids.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} runs done ({msg}) {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let mut done = 0;
        let mut failed = 0;
        for id in run_ids {
            if let Some(r) = store.dag_run_get(dag_id, id).await? {
                match r.state {
                    DagRunState::Success => done += 1,
                    DagRunState::Failed => {
                        done += 1;
                        failed += 1;
                    }
                    _ => {}
                }
            }
        }
        bar.set_position(done);
        bar.set_message(format!("{failed} failed"));
        if done == run_ids.len() as u64 {
            bar.finish();
            println!(
                "backfill of {dag_id}: {} run(s), {failed} failed",
                run_ids.len()
            );
            return Ok(if failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        tokio::time::sleep(StdDuration::from_millis(500)).await;
    }
}
