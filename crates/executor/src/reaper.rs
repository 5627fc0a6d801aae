//! Tasks die with their worker, even a `kill -9`ed one, and so do their children.
//!
//! Each try runs in its own process group. A worker that stops normally kills each group
//! when its try ends; a worker that is `kill -9`ed cannot. Its task's first process still
//! dies (parent-death signal), but what that process started (a bash script's background
//! jobs) would live on beside the try that replaces it. So every worker starts one small
//! reaper process (`flow __reap`, in a process group of its own so that signals meant for
//! the worker's group do not reach it) and tells it, through a pipe, each process group it
//! starts and ends. When the pipe closes (the worker is gone, however it went) the reaper
//! kills every group still registered and exits. A child that leaves its process group
//! (`setsid`) escapes; that is the documented limit.

use std::collections::HashSet;
use std::io::{BufRead as _, Write as _};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

static REAPER: OnceLock<Mutex<ChildStdin>> = OnceLock::new();

/// Starts this process's reaper: `program` with `args` runs [`serve`]. Call once, before the
/// worker runs tasks; without it tasks still die with the worker, their children may not.
pub fn start(program: &std::path::Path, args: &[&str]) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("the reaper has no stdin"))?;
    // The reaper outlives this handle by design; nobody waits for it.
    drop(child);
    let _ = REAPER.set(Mutex::new(stdin));
    Ok(())
}

/// Tells the reaper about a process group that now exists.
pub(crate) fn watch(pgid: Pid) {
    tell('+', pgid);
}

/// Tells the reaper a process group is gone.
pub(crate) fn forget(pgid: Pid) {
    tell('-', pgid);
}

fn tell(op: char, pgid: Pid) {
    let Some(pipe) = REAPER.get() else {
        return;
    };
    if let Ok(mut pipe) = pipe.lock() {
        // A few bytes into a pipe the reaper drains: never blocks for long. A reaper that
        // died is no reason to fail a task.
        let _ = writeln!(pipe, "{op}{}", pgid.as_raw());
    }
}

/// The reaper's life: read `+pgid` / `-pgid` lines until the worker's end of the pipe closes,
/// then kill every group still registered.
pub fn serve() {
    let mut groups: HashSet<i32> = HashSet::new();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let (op, pgid) = line.split_at(line.len().min(1));
        let Ok(pgid) = pgid.trim().parse::<i32>() else {
            continue;
        };
        // Only real process groups: never 0 or 1 (this group, or every process).
        if pgid <= 1 {
            continue;
        }
        match op {
            "+" => {
                groups.insert(pgid);
            }
            "-" => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    for pgid in groups {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}
