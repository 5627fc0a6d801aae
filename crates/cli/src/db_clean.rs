//! `flow db clean`: Airflow's `airflow db clean`. Deletes finished runs (with all their rows)
//! and old audit log, job, trigger and asset event rows before a timestamp, in batches, with
//! a progress bar; `--dry-run` says per table what would go. The rules (what is always kept)
//! are `flow_store::retention`'s.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use flow_store::{CleanCounts, CleanRequest, CleanTable, RunSelection};

/// Runs per transaction by default: on SQLite a transaction holds the one write lock, and
/// 100 runs of 10 task instances (94,000 rows with their history, transitions, XComs and
/// logs) took 0.1-0.3 s there.
const DEFAULT_BATCH_SIZE: u32 = 100;

/// What Airflow asks a user to type before it deletes.
const CONFIRMATION: &str = "delete rows";

#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// The date or timestamp before which data is purged; without an offset it is UTC.
    /// Example: '2025-01-01 00:00:00+01:00', '2025-01-01', or '30 days' (before today's
    /// midnight, UTC).
    #[arg(long, value_name = "TIMESTAMP")]
    clean_before_timestamp: String,
    /// Tables to clean, comma-separated (default: all). `dag_run` brings every table of a
    /// run. Options: dag_run, task_instance, task_instance_history, ti_transition,
    /// dag_run_transition, log_chunk (task logs), xcom, dag_run_asset_event,
    /// callback_request, log (the audit log), job, trigger, asset_event.
    #[arg(short, long, value_delimiter = ',', value_name = "TABLES")]
    tables: Vec<String>,
    /// Say per table how many rows would go, and delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also say which rows are kept whatever their date.
    #[arg(short, long)]
    verbose: bool,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    yes: bool,
    /// With --yes: accept a --clean-before-timestamp in the future.
    #[arg(long)]
    allow_future: bool,
    /// Accepted for Airflow's command lines: flow keeps no archive tables, deleted rows are
    /// gone (back the database up first).
    #[arg(long)]
    skip_archive: bool,
    /// Runs per transaction (for the tables of runs: a run goes with all its rows), or rows
    /// per transaction (for the other tables). Smaller batches hold the database for less
    /// time each.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
}

pub async fn run(args: CleanArgs) -> Result<ExitCode> {
    let now = Utc::now();
    let before = parse_timestamp(&args.clean_before_timestamp, now)?;
    let tables = parse_tables(&args.tables)?;
    refuse_future(before, now, &args)?;
    let req = CleanRequest {
        runs: RunSelection::StartedBefore(before),
        tables,
        batch_size: usize::try_from(args.batch_size).unwrap_or(100),
    };
    let effective = CleanTable::effective(&req.tables);
    let names: Vec<&str> = effective.iter().map(|t| t.name()).collect();
    let store = crate::ops::connect_migrated().await?;
    let counts = store.clean_count(&req).await?;
    if args.dry_run {
        println!("Performing dry run for db cleanup.");
        println!(
            "Data prior to {} would be purged from tables [{}]:",
            iso(before),
            names.join(", ")
        );
    } else {
        println!(
            "Data prior to {} in tables [{}]:",
            iso(before),
            names.join(", ")
        );
    }
    print_counts(
        &counts,
        if args.dry_run {
            "would go"
        } else {
            "to delete"
        },
    );
    if args.verbose || args.dry_run {
        print_rules(before);
    }
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    if counts.tables.iter().all(|(_, n)| *n == 0) {
        println!("Nothing to delete.");
        return Ok(ExitCode::SUCCESS);
    }
    if !args.yes {
        confirm(before, &names)?;
    }
    let total = progress_total(&counts);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let report = store
        .clean(&req, &mut |p| {
            bar.set_message(if p.table == CleanTable::DagRun {
                "runs".to_owned()
            } else {
                format!("{} rows", p.table.name())
            });
            bar.inc(p.done);
        })
        .await?;
    bar.finish_and_clear();
    println!("Deleted:");
    print_table_counts(&report.tables);
    println!(
        "{} rows in {:.1} s, {} transactions, the longest {} ms",
        report.rows(),
        started.elapsed().as_secs_f64(),
        report.batches,
        report.longest_batch.as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_timestamp(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    flow_dag::duration::parse_date(text, chrono_tz::UTC, now).map_err(|e| {
        anyhow!(
            "--clean-before-timestamp: {e}; for example \
             --clean-before-timestamp '2025-01-01 00:00:00+01:00'"
        )
    })
}

/// The tables asked for, by name; none means all of them.
fn parse_tables(names: &[String]) -> Result<Vec<CleanTable>> {
    if names.is_empty() {
        return Ok(CleanTable::ALL.to_vec());
    }
    let valid: Vec<&str> = CleanTable::ALL.iter().map(|t| t.name()).collect();
    let mut tables = Vec::new();
    for name in names {
        let name = name.trim();
        let Some(table) = CleanTable::parse(name) else {
            let hint = flow_dag::de::did_you_mean_hint(name, valid.iter().copied());
            bail!(
                "--tables: unknown table `{name}`{hint}; valid tables: {}",
                valid.join(", ")
            );
        };
        if !tables.contains(&table) {
            tables.push(table);
        }
    }
    Ok(tables)
}

/// A timestamp in the future would delete every finished run, even one that ended a moment
/// ago: only with `--yes --allow-future` (a dry run shows it harmlessly).
fn refuse_future(before: DateTime<Utc>, now: DateTime<Utc>, args: &CleanArgs) -> Result<()> {
    if before <= now || args.dry_run || (args.yes && args.allow_future) {
        return Ok(());
    }
    bail!(
        "--clean-before-timestamp {} is in the future (it is {} now): every finished run would \
         go, even one that ended a moment ago. Pass --yes --allow-future to do it anyway, or \
         --dry-run to see what would go",
        iso(before),
        iso(now)
    )
}

/// Asks on the terminal, as Airflow does; refuses when nobody can answer.
fn confirm(before: DateTime<Utc>, tables: &[&str]) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to delete without confirmation: stdin is not a terminal. Pass --yes to \
             confirm (or --dry-run to see what would go)"
        );
    }
    println!(
        "You have requested that we purge all data prior to {} for tables [{}].\n\
         This is irreversible. Consider backing up the tables first and / or doing a dry run \
         with option --dry-run.\nEnter '{CONFIRMATION}' (without quotes) to proceed.",
        iso(before),
        tables.join(", ")
    );
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != CONFIRMATION {
        bail!("not confirmed; nothing was deleted");
    }
    Ok(())
}

/// The progress bar's length: runs for the tables of runs, rows for the others.
fn progress_total(counts: &CleanCounts) -> u64 {
    let mut total: u64 = counts
        .tables
        .iter()
        .filter(|(t, _)| !t.belongs_to_run())
        .map(|(_, n)| n)
        .sum();
    if counts.tables.iter().any(|(t, _)| t.belongs_to_run()) {
        total += counts.runs;
    }
    total
}

fn print_counts(counts: &CleanCounts, what: &str) {
    if counts.tables.iter().any(|(t, _)| t.belongs_to_run()) {
        println!("  {} runs selected", counts.runs);
    }
    println!("  {:<24} rows {what}", "table");
    print_table_counts(&counts.tables);
}

fn print_table_counts(tables: &[(CleanTable, u64)]) {
    for (table, n) in tables {
        println!("  {:<24} {n}", table.name());
    }
}

fn print_rules(before: DateTime<Utc>) {
    println!(
        "Runs go with all their rows when they finished and started before {} (never started: \
         were queued before it). Always kept: queued and running runs, runs with task \
         instances in flight or callbacks waiting, and per DAG its latest non-manual run \
         (Airflow's rule) and its latest scheduled or backfill run by logical date (where its \
         next run is computed from). Triggers a task instance waits on and asset events not \
         yet consumed stay.",
        iso(before)
    );
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tables_by_name_with_a_hint_for_a_typo() {
        assert_eq!(
            parse_tables(&["xcom".into(), "audit_log".into(), "xcom".into()]).unwrap(),
            [CleanTable::Xcom, CleanTable::Log]
        );
        assert_eq!(parse_tables(&[]).unwrap().len(), CleanTable::ALL.len());
        let e = parse_tables(&["dagrun".into()]).unwrap_err().to_string();
        assert!(
            e.contains("unknown table `dagrun` (did you mean `dag_run`?)"),
            "{e}"
        );
        assert!(e.contains("valid tables: dag_run, task_instance,"), "{e}");
    }

    #[test]
    fn timestamps_in_several_forms_and_a_clear_error() {
        let now = Utc::now();
        let t = parse_timestamp("2025-01-01 00:00:00+01:00", now).unwrap();
        assert_eq!(iso(t), "2024-12-31T23:00:00Z");
        assert_eq!(
            iso(parse_timestamp("2025-01-01", now).unwrap()),
            "2025-01-01T00:00:00Z"
        );
        let e = parse_timestamp("yesterday", now).unwrap_err().to_string();
        assert!(
            e.starts_with("--clean-before-timestamp: invalid date `yesterday`"),
            "{e}"
        );
        assert!(
            e.contains("for example --clean-before-timestamp '2025-01-01"),
            "{e}"
        );
    }
}
