//! `flow dags ...`: commands that read the dags folder.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Subcommand, ValueEnum};
use flow_dag::schedule::TimeRestriction;
use flow_dag::{Dag, DagBag, LoadOptions, load_dags};

#[derive(Debug, Subcommand)]
pub enum DagsCommand {
    /// Check DAG files; prints `path:line:col: error: message` for each problem and exits 1 if
    /// any error was found.
    Validate {
        /// A DAG file or folder (default: the dags folder).
        path: Option<std::path::PathBuf>,
        /// Also fail on warnings.
        #[arg(long)]
        strict: bool,
    },
    /// List the DAGs in the dags folder.
    List {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show a DAG's tasks and dependencies.
    Show {
        dag_id: String,
        /// Print Graphviz DOT instead of a tree.
        #[arg(long)]
        dot: bool,
    },
    /// Show the next runs a DAG's schedule will create.
    NextRuns {
        dag_id: String,
        #[arg(short = 'n', long, default_value_t = 5)]
        num: usize,
    },
    /// Print the JSON Schema of the DAG file format (for editors).
    Schema,
    /// Create a manual run.
    Trigger {
        dag_id: String,
        /// The run's conf, a JSON object (`dag_run.conf` in templates).
        #[arg(short, long)]
        conf: Option<String>,
        #[arg(short, long)]
        run_id: Option<String>,
        /// The run's logical date (default: now).
        #[arg(short = 'l', long)]
        logical_date: Option<String>,
        /// Follow the run, print task state changes, exit 1 if it fails.
        #[arg(long)]
        wait: bool,
    },
    /// Create runs for every logical date in a range and follow them to the end.
    Backfill {
        dag_id: String,
        #[arg(short = 's', long)]
        start_date: String,
        #[arg(short = 'e', long)]
        end_date: String,
        /// Clear existing runs in the range so that they run again (as
        /// `--reprocess-behavior completed`).
        #[arg(long)]
        reset_dagruns: bool,
        /// Which existing runs run again: none (default), failed or completed.
        #[arg(long)]
        reprocess_behavior: Option<String>,
        /// How many of the backfill's runs may run at once (10).
        #[arg(long)]
        max_active_runs: Option<i64>,
        /// Run the latest logical dates first.
        #[arg(long)]
        run_backwards: bool,
        /// Only list the runs.
        #[arg(long)]
        dry_run: bool,
        #[arg(short, long)]
        conf: Option<String>,
    },
    /// Pause a DAG: no new runs start, queued runs wait.
    Pause { dag_id: String },
    /// Unpause a DAG.
    Unpause { dag_id: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub fn run(command: DagsCommand, dags_folder: &Path) -> Result<ExitCode> {
    match command {
        DagsCommand::Validate { path, strict } => {
            validate(path.as_deref().unwrap_or(dags_folder), dags_folder, strict)
        }
        DagsCommand::List { output } => list(dags_folder, output),
        DagsCommand::Show { dag_id, dot } => show(dags_folder, &dag_id, dot),
        DagsCommand::NextRuns { dag_id, num } => next_runs(dags_folder, &dag_id, num),
        DagsCommand::Schema => {
            let schema = flow_dag::schema::dag_file_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        DagsCommand::Trigger { .. }
        | DagsCommand::Pause { .. }
        | DagsCommand::Unpause { .. }
        | DagsCommand::Backfill { .. } => unreachable_db_command(),
    }
}

fn load(path: &Path) -> Result<DagBag> {
    if !path.exists() {
        bail!(
            "dags folder `{}` does not exist (set --dags-folder or FLOW__CORE__DAGS_FOLDER)",
            path.display()
        );
    }
    let options = LoadOptions {
        allow_external_links: crate::ops::allow_external_dag_links()?,
        ..LoadOptions::default()
    };
    load_dags(path, &options).with_context(|| format!("reading dags folder `{}`", path.display()))
}

/// Loads `path`; a single file inside the dags folder is read as the processor reads it, with
/// the folder's defaults files and `$CONFIG_ROOT_DIR` pointing at the folder.
fn load_within(path: &Path, dags_folder: &Path) -> Result<DagBag> {
    let inside = path.is_file()
        && matches!(
            (std::fs::canonicalize(path), std::fs::canonicalize(dags_folder)),
            (Ok(p), Ok(root)) if p.starts_with(&root)
        );
    if !inside {
        return load(path);
    }
    let options = LoadOptions {
        allow_external_links: crate::ops::allow_external_dag_links()?,
        ..LoadOptions::default()
    };
    Ok(DagBag {
        root: dags_folder.to_path_buf(),
        files: vec![flow_dag::load_file(path, dags_folder, &options)],
    })
}

/// Import errors go to stderr in every command, so a broken file is never silent.
fn report_import_errors(bag: &DagBag) {
    let broken: Vec<_> = bag.files.iter().filter(|f| f.has_errors()).collect();
    if broken.is_empty() {
        return;
    }
    eprintln!(
        "warning: {} file(s) have import errors; run `flow dags validate` for details:",
        broken.len()
    );
    for f in broken {
        eprintln!("  {}", f.path.display());
    }
}

fn validate(path: &Path, dags_folder: &Path, strict: bool) -> Result<ExitCode> {
    let bag = load_within(path, dags_folder)?;
    for d in bag.diagnostics() {
        eprintln!("{d}");
    }
    let errors = bag.error_count();
    let warnings = bag.warning_count();
    let dags = bag.dags().count();
    let files = bag.files.len();
    if errors > 0 || (strict && warnings > 0) {
        eprintln!(
            "{errors} error(s), {warnings} warning(s) in {files} file(s); {dags} DAG(s) valid"
        );
        return Ok(ExitCode::FAILURE);
    }
    let tasks: usize = bag.dags().map(|d| d.tasks.len()).sum();
    println!("OK: {dags} DAG(s), {tasks} task(s) in {files} file(s); {warnings} warning(s)");
    Ok(ExitCode::SUCCESS)
}

fn list(dags_folder: &Path, output: Output) -> Result<ExitCode> {
    let bag = load(dags_folder)?;
    let mut dags: Vec<&Dag> = bag.dags().collect();
    dags.sort_by(|a, b| a.dag_id.cmp(&b.dag_id));
    match output {
        Output::Json => {
            let rows: Vec<serde_json::Value> = dags
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "dag_id": d.dag_id.as_str(),
                        "fileloc": d.relative_fileloc,
                        "owners": d.owner,
                        "schedule": d.schedule_text,
                        "timezone": d.timetable.timezone.name(),
                        "tags": d.tags,
                        "tasks": d.tasks.len(),
                        "description": d.description,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Table => {
            let mut rows = vec![[
                "dag_id".to_owned(),
                "fileloc".to_owned(),
                "owners".to_owned(),
                "schedule".to_owned(),
                "tasks".to_owned(),
                "tags".to_owned(),
            ]];
            for d in &dags {
                rows.push([
                    d.dag_id.to_string(),
                    d.relative_fileloc.clone(),
                    d.owner.clone(),
                    d.schedule_text.clone(),
                    d.tasks.len().to_string(),
                    d.tags.join(","),
                ]);
            }
            print!("{}", table(&rows));
        }
    }
    report_import_errors(&bag);
    Ok(ExitCode::SUCCESS)
}

/// A plain left-aligned text table.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join(" | ").trim_end());
        if i == 0 {
            let sep: Vec<String> = widths.iter().map(|w| "=".repeat(*w)).collect();
            let _ = writeln!(out, "{}", sep.join("=+="));
        }
    }
    out
}

fn find_dag<'a>(bag: &'a DagBag, dag_id: &str) -> Result<&'a Dag> {
    if let Some(d) = bag.dag(dag_id) {
        return Ok(d);
    }
    let ids: Vec<&str> = bag.dags().map(|d| d.dag_id.as_str()).collect();
    let hint = flow_dag::de::did_you_mean_hint(dag_id, ids.iter().copied());
    let broken = bag
        .files
        .iter()
        .filter(|f| f.has_errors() && f.source.contains(dag_id))
        .map(|f| f.path.display().to_string())
        .collect::<Vec<_>>();
    if !broken.is_empty() {
        bail!(
            "dag `{dag_id}` is not loaded: {} has import errors (run `flow dags validate`)",
            broken.join(", ")
        );
    }
    bail!("dag `{dag_id}` not found in the dags folder{hint}")
}

fn show(dags_folder: &Path, dag_id: &str, dot: bool) -> Result<ExitCode> {
    let bag = load(dags_folder)?;
    let dag = find_dag(&bag, dag_id)?;
    if dot {
        print!("{}", to_dot(dag));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}  schedule: {} ({})  file: {}",
        dag.dag_id,
        dag.schedule_text,
        dag.timetable.timezone.name(),
        dag.relative_fileloc
    );
    if let Some(condition) = &dag.asset_schedule {
        println!("  triggered by assets: {}", condition.expression());
        for asset in condition.assets() {
            for t in &dag.tasks {
                let loops = t.outlets.iter().any(|o| {
                    matches!(o, flow_dag::assets::Outlet::Asset { asset: a, .. } if a.uri == asset.uri)
                });
                if loops {
                    println!(
                        "  note: asset {} is also an outlet of this DAG's task {}: each success of {} triggers another run (a self-loop, allowed as in Airflow)",
                        asset.uri, t.task_id, t.task_id
                    );
                }
            }
        }
    }
    let mut printed = HashSet::new();
    let mut out = String::new();
    for root in dag.roots() {
        print_tree(
            dag,
            root.task_id.as_str(),
            "",
            true,
            true,
            &mut printed,
            &mut out,
        );
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// Prints a task and, below it, its downstream tasks. A DAG is not a tree: a task reached a
/// second time is printed once more, marked, without its subtree.
fn print_tree(
    dag: &Dag,
    task_id: &str,
    prefix: &str,
    last: bool,
    root: bool,
    printed: &mut HashSet<String>,
    out: &mut String,
) {
    let Some(task) = dag.task(task_id) else {
        return;
    };
    let branch = if root {
        ""
    } else if last {
        "└── "
    } else {
        "├── "
    };
    let seen = !printed.insert(task_id.to_owned());
    let rule = if task.trigger_rule == flow_model::TriggerRule::AllSuccess {
        String::new()
    } else {
        format!(" trigger_rule={}", task.trigger_rule.as_str())
    };
    let outlets: Vec<String> = task
        .outlets
        .iter()
        .map(|o| match o {
            flow_dag::assets::Outlet::Asset { asset, .. } => asset.uri.clone(),
            flow_dag::assets::Outlet::Alias { name } => format!("alias:{name}"),
        })
        .collect();
    let outlets = if outlets.is_empty() || seen {
        String::new()
    } else {
        format!(" -> {}", outlets.join(", "))
    };
    let _ = writeln!(
        out,
        "{prefix}{branch}{task_id} [{}]{rule}{outlets}{}",
        task.operator.kind(),
        if seen { " (see above)" } else { "" }
    );
    if seen {
        return;
    }
    let child_prefix = if root {
        prefix.to_owned()
    } else if last {
        format!("{prefix}    ")
    } else {
        format!("{prefix}│   ")
    };
    let n = task.downstream.len();
    for (i, d) in task.downstream.iter().enumerate() {
        print_tree(
            dag,
            d.as_str(),
            &child_prefix,
            i + 1 == n,
            false,
            printed,
            out,
        );
    }
}

fn dot_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Graphviz DOT, task groups as clusters.
fn to_dot(dag: &Dag) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", dot_quote(dag.dag_id.as_str()));
    let _ = writeln!(out, "  rankdir=LR;");
    let _ = writeln!(out, "  node [shape=box, style=rounded];");
    for group in &dag.task_groups {
        let _ = writeln!(
            out,
            "  subgraph {} {{",
            dot_quote(&format!("cluster_{}", group.group_id))
        );
        let _ = writeln!(out, "    label={};", dot_quote(&group.group_id));
        for t in dag
            .tasks
            .iter()
            .filter(|t| t.group_id.as_deref() == Some(&group.group_id))
        {
            let _ = writeln!(out, "    {};", dot_quote(t.task_id.as_str()));
        }
        let _ = writeln!(out, "  }}");
    }
    for t in dag.tasks.iter().filter(|t| t.group_id.is_none()) {
        let _ = writeln!(out, "  {};", dot_quote(t.task_id.as_str()));
    }
    for t in &dag.tasks {
        for d in &t.downstream {
            let _ = writeln!(
                out,
                "  {} -> {};",
                dot_quote(t.task_id.as_str()),
                dot_quote(d.as_str())
            );
        }
    }
    let _ = writeln!(out, "}}");
    out
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn next_runs(dags_folder: &Path, dag_id: &str, num: usize) -> Result<ExitCode> {
    let bag = load(dags_folder)?;
    let dag = find_dag(&bag, dag_id)?;
    let restriction = TimeRestriction {
        earliest: dag.start_date,
        latest: dag.end_date,
        catchup: dag.catchup,
    };
    let runs = dag
        .timetable
        .upcoming_runs(None, &restriction, Utc::now(), num);
    println!(
        "{}: {} (catchup={})",
        dag.dag_id,
        dag.timetable.summary(),
        dag.catchup
    );
    if runs.is_empty() {
        println!("no upcoming runs");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "logical_date".to_owned(),
        "data_interval_start".to_owned(),
        "data_interval_end".to_owned(),
        "run_after".to_owned(),
    ]];
    for r in runs {
        rows.push([
            iso(r.logical_date),
            iso(r.data_interval.start),
            iso(r.data_interval.end),
            iso(r.run_after),
        ]);
    }
    print!("{}", table(&rows));
    Ok(ExitCode::SUCCESS)
}

/// Database-backed `dags` commands are dispatched in `main`; reaching here is a wiring bug.
fn unreachable_db_command() -> Result<ExitCode> {
    bail!("internal error: database command dispatched to the file-based handler")
}
