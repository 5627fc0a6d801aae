//! Tasks die with their worker, even a `kill -9`ed one, and so do their children.
//!
//! Each try runs in its own process group. A worker that stops normally kills each group
//! when its try ends; a worker that is `kill -9`ed cannot. Its task's first process still
//! dies (parent-death signal), but what that process started (a bash script's background
//! jobs) would live on beside the try that replaces it. So every worker starts one small
//! reaper process (`flow __reap`, in a process group of its own so that signals meant for
//! the worker's group do not reach it) and tells it, through a pipe, each process group it
//! starts and ends. When the pipe closes (the worker is gone, however it went) the reaper
//! kills every group still registered, then every process still carrying the worker's tag
//! (below), and exits.
//!
//! Each task process gets the environment variable [`TAG_VAR`] set to a value unique to its
//! worker, and its children inherit it. That closes the one gap a pipe leaves (the worker
//! killed between spawning a process and telling the reaper) and also finds children that
//! left their group (`setsid`). So the task's process needs no parent-death signal when a
//! reaper runs: setting one took an extra `exec` (`setpriv`) or a `fork` of the whole worker
//! per task, which was a third of the cost of a short task. Only a child that both leaves its
//! group and clears its environment escapes; that is the documented limit.

use std::collections::HashSet;
use std::io::{BufRead as _, Write as _};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The variable that marks a task's processes as this worker's.
pub const TAG_VAR: &str = "FLOW_WORKER_TAG";

static REAPER: OnceLock<(Mutex<ChildStdin>, String)> = OnceLock::new();

/// Starts this process's reaper: `program` with `args` and then the tag runs [`serve`]. Call
/// once, before the worker runs tasks; without it tasks still die with the worker (a
/// parent-death signal), their children may not.
pub fn start(program: &std::path::Path, args: &[&str]) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Unique among the workers of a host: the pid and the start time.
    let tag = format!("{}-{nanos:x}", std::process::id());
    let mut child = Command::new(program)
        .args(args)
        .arg(&tag)
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
    let _ = REAPER.set((Mutex::new(stdin), tag));
    Ok(())
}

/// The tag this process's task processes carry, when a reaper runs.
pub(crate) fn tag() -> Option<&'static str> {
    REAPER.get().map(|(_, tag)| tag.as_str())
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
    let Some((pipe, _)) = REAPER.get() else {
        return;
    };
    if let Ok(mut pipe) = pipe.lock() {
        // A few bytes into a pipe the reaper drains: never blocks for long. A reaper that
        // died is no reason to fail a task.
        let _ = writeln!(pipe, "{op}{}", pgid.as_raw());
    }
}

/// The reaper's life: read `+pgid` / `-pgid` lines until the worker's end of the pipe closes,
/// then kill every group still registered and every process tagged `tag`.
pub fn serve(tag: &str) {
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
    kill_tagged(tag);
}

/// Kills every process whose environment carries `TAG_VAR=tag`, again until none is left (a
/// process may fork while the first sweep runs). An empty tag matches nothing.
fn kill_tagged(tag: &str) {
    if tag.is_empty() {
        return;
    }
    let needle = format!("{TAG_VAR}={tag}");
    let me = std::process::id();
    for _ in 0..10 {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        let mut killed = 0;
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            // Another user's process, or one already gone: unreadable, and not ours.
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ
                .split(|b| *b == 0)
                .any(|var| var == needle.as_bytes())
                && let Ok(pid) = i32::try_from(pid)
            {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                killed += 1;
            }
        }
        if killed == 0 {
            return;
        }
    }
}
