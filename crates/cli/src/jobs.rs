//! `flow jobs`: the processes of a deployment as their job rows show them, and Airflow's
//! `jobs check` for container health checks.

use std::process::ExitCode;

use anyhow::{Result, bail};
use chrono::{Duration, SecondsFormat, Utc};
use clap::Subcommand;
use flow_store::JobQuery;

use crate::{config, ops};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first: schedulers, workers, triggerers, web servers, with host, pid,
    /// version, state and heartbeat age.
    List {
        /// SchedulerJob, WorkerJob, TriggererJob, WebserverJob, DagProcessorJob, ...
        #[arg(long)]
        job_type: Option<String>,
        /// running, success, failed
        #[arg(long)]
        state: Option<String>,
        /// Only jobs heartbeating now.
        #[arg(long)]
        alive: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Exits 0 when a live job of this type exists, 1 otherwise (container health checks,
    /// as `airflow jobs check`).
    Check {
        #[arg(long)]
        job_type: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
        /// This host's jobs only.
        #[arg(long)]
        local: bool,
        /// How many live jobs to look for.
        #[arg(long, default_value_t = 1)]
        limit: i64,
        /// Succeed when more than one live job is found.
        #[arg(long)]
        allow_multiple: bool,
    },
}

/// How recent a heartbeat must be for a job to count as alive (Airflow's
/// `scheduler_health_check_threshold`).
pub fn alive_threshold() -> Result<Duration> {
    let secs = config::env_number("scheduler", "scheduler_health_check_threshold", 30)?;
    Ok(Duration::seconds(secs.max(1)))
}

pub async fn run(command: JobsCommand) -> Result<ExitCode> {
    let store = ops::connect_migrated().await?;
    let now = Utc::now();
    match command {
        JobsCommand::List {
            job_type,
            state,
            alive,
            limit,
        } => {
            let query = JobQuery {
                job_type,
                state,
                alive: alive.then(|| {
                    (
                        true,
                        now - alive_threshold().unwrap_or(Duration::seconds(30)),
                    )
                }),
                limit: limit.clamp(1, 10_000),
                ..JobQuery::default()
            };
            let (jobs, total) = store.job_list(&query).await?;
            println!(
                "{:<6} {:<16} {:<9} {:<24} {:<8} {:<8} {:<10} {:<25} instance",
                "id", "job_type", "state", "hostname", "pid", "version", "heartbeat", "start_date"
            );
            for j in &jobs {
                let age = (now - j.latest_heartbeat).num_milliseconds().max(0) as f64 / 1000.0;
                println!(
                    "{:<6} {:<16} {:<9} {:<24} {:<8} {:<8} {:<10} {:<25} {}",
                    j.id,
                    j.job_type,
                    j.state,
                    j.hostname,
                    j.pid.map_or_else(String::new, |p| p.to_string()),
                    j.version.as_deref().unwrap_or(""),
                    format!("{age:.1}s ago"),
                    j.start_date.to_rfc3339_opts(SecondsFormat::Secs, true),
                    j.instance.as_deref().unwrap_or("")
                );
            }
            if total > jobs.len() as i64 {
                println!("({} of {total} jobs shown; --limit shows more)", jobs.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Check {
            job_type,
            hostname,
            local,
            limit,
            allow_multiple,
        } => {
            if limit > 1 && !allow_multiple {
                bail!("To use option --limit with a value above 1, add --allow-multiple");
            }
            let hostname = if local {
                Some(config::hostname())
            } else {
                hostname
            };
            let query = JobQuery {
                job_type,
                hostname,
                alive: Some((true, now - alive_threshold()?)),
                limit: limit.max(1),
                ..JobQuery::default()
            };
            let (jobs, _) = store.job_list(&query).await?;
            match jobs.len() {
                0 => {
                    eprintln!("No alive jobs found.");
                    Ok(ExitCode::FAILURE)
                }
                1 => {
                    println!("Found one alive job.");
                    Ok(ExitCode::SUCCESS)
                }
                n => {
                    println!("Found {n} alive jobs.");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}
