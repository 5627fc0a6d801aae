//! Supervising one child process and its process group: stream its output line by line,
//! enforce the timeout, honour cancellation, and leave no process of the group behind.
//!
//! The child is started as the leader of a new process group, so every process it starts
//! (unless it deliberately leaves the group with `setsid`) can be signalled at once. Stopping
//! is SIGTERM to the group, then SIGKILL after a grace period; once the leader has exited,
//! whatever it left running in the group is killed too, so a task never outlives its try.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};

use crate::mask::Masker;
use crate::runner::{LogLine, Stream};

/// Lines longer than this are split; a line is never buffered beyond it.
pub(crate) const MAX_LINE_BYTES: usize = 64 * 1024;

/// How long to keep reading output after the process group was killed. Only a process that
/// left the group (and still holds the pipe) can keep it open that long.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Where log lines go: the caller's channel, with secrets masked.
#[derive(Clone)]
pub(crate) struct LogSink {
    tx: mpsc::Sender<LogLine>,
    masker: Masker,
    /// Held while stamping and enqueueing, so that lines of stdout and stderr (read by
    /// different tasks) arrive in timestamp order.
    order: Arc<Mutex<()>>,
}

impl LogSink {
    pub(crate) fn new(tx: mpsc::Sender<LogLine>, masker: Masker) -> Self {
        LogSink {
            tx,
            masker,
            order: Arc::new(Mutex::new(())),
        }
    }

    /// Sends a line; if the receiver is gone the task keeps running and the line is dropped.
    pub(crate) async fn send(&self, stream: Stream, text: &str) {
        let text = self.masker.mask(text).into_owned();
        let Ok(permit) = self.tx.reserve().await else {
            return;
        };
        let _order = self.order.lock();
        permit.send(LogLine {
            at: Utc::now(),
            stream,
            text,
        });
    }

    pub(crate) async fn system(&self, text: &str) {
        self.send(Stream::System, text).await;
    }
}

/// How the supervised process ended.
#[derive(Debug)]
pub(crate) enum Ended {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
}

#[derive(Debug)]
pub(crate) struct Supervised {
    pub(crate) ended: Ended,
    /// The last line of output, stdout and stderr together, right-trimmed, even if empty;
    /// `""` for no output at all (Airflow's BashOperator XCom: its subprocess merges stderr
    /// into stdout and keeps the last line read).
    pub(crate) last_stdout: Option<String>,
}

pub(crate) struct Limits {
    pub(crate) timeout: Option<Duration>,
    pub(crate) kill_grace: Duration,
}

/// Kills the process group if the supervising future is dropped half-way (the worker shut
/// down, or the caller stopped waiting), so no child outlives its supervisor.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl GroupGuard {
    /// Guards the group `pgid`, also against the worker being killed (the reaper).
    fn new(pgid: Pid) -> Self {
        crate::reaper::watch(pgid);
        GroupGuard { pgid, armed: true }
    }

    /// The group has been killed: nothing left to guard.
    fn disarm(&mut self) {
        self.armed = false;
        crate::reaper::forget(self.pgid);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = killpg(self.pgid, Signal::SIGKILL);
            crate::reaper::forget(self.pgid);
        }
    }
}

/// Runs `cmd` to completion (or timeout, or cancellation) in its own process group.
pub(crate) async fn supervise(
    mut cmd: Command,
    limits: &Limits,
    logs: &LogSink,
    cancel: &mut watch::Receiver<bool>,
) -> io::Result<Supervised> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(tag) = crate::reaper::tag() {
        cmd.env(crate::reaper::TAG_VAR, tag);
    }
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn()?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| io::Error::other("spawned process has no pid"))?;
    let mut guard = GroupGuard::new(Pid::from_raw(pid));
    let last_stdout = Arc::new(Mutex::new(Some(String::new())));
    let stdout = child.stdout.take().map(|out| {
        let (logs, last) = (logs.clone(), last_stdout.clone());
        tokio::spawn(async move { pump(out, Stream::Stdout, &logs, &last).await })
    });
    let stderr = child.stderr.take().map(|err| {
        let (logs, last) = (logs.clone(), last_stdout.clone());
        tokio::spawn(async move { pump(err, Stream::Stderr, &logs, &last).await })
    });

    let deadline = limits.timeout.map(|t| Instant::now() + t);
    let stop = tokio::select! {
        status = child.wait() => Some(status?),
        () = until(deadline) => None,
        () = cancelled(cancel) => None,
    };
    let ended = match stop {
        Some(status) => Ended::Exited(status),
        None => {
            let ended = if *cancel.borrow() {
                logs.system("Cancelled: sending SIGTERM to the task's process group")
                    .await;
                Ended::Cancelled
            } else {
                let secs = limits.timeout.unwrap_or_default().as_secs_f64();
                logs.system(&format!(
                    "Timed out after {secs}s: sending SIGTERM to the task's process group"
                ))
                .await;
                Ended::TimedOut
            };
            let _ = killpg(guard.pgid, Signal::SIGTERM);
            if timeout(limits.kill_grace, child.wait()).await.is_err() {
                logs.system(&format!(
                    "Still running {}s after SIGTERM: sending SIGKILL",
                    limits.kill_grace.as_secs_f64()
                ))
                .await;
                let _ = killpg(guard.pgid, Signal::SIGKILL);
                child.wait().await?;
            }
            ended
        }
    };
    // The leader is gone; anything it left behind in its group goes with it.
    let _ = killpg(guard.pgid, Signal::SIGKILL);
    guard.disarm();

    let mut pumps = [stdout, stderr];
    let drain = async {
        for pump in pumps.iter_mut().flatten() {
            let _ = pump.await;
        }
    };
    if timeout(DRAIN_AFTER_EXIT, drain).await.is_err() {
        // Stop reading (and drop the log sender) rather than wait for a stranger to exit.
        for pump in pumps.iter().flatten() {
            pump.abort();
        }
        logs.system(
            "Stopped reading output: a process that left the task's process group still holds it open",
        )
        .await;
    }
    let last_stdout = last_stdout.lock().ok().and_then(|mut l| l.take());
    Ok(Supervised { ended, last_stdout })
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Resolves once cancellation is requested; never if the sender is dropped without asking.
pub(crate) async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    let asked = cancel.wait_for(|c| *c).await.is_ok();
    if !asked {
        std::future::pending::<()>().await;
    }
}

/// Reads `reader` line by line into `logs`, holding at most [`MAX_LINE_BYTES`] of a line,
/// and keeps the last non-empty line in `last`.
async fn pump<R: AsyncRead + Unpin>(
    reader: R,
    stream: Stream,
    logs: &LogSink,
    last: &Mutex<Option<String>>,
) {
    let mut reader = BufReader::with_capacity(MAX_LINE_BYTES, reader);
    let mut line: Vec<u8> = Vec::new();
    while let Ok(buf) = reader.fill_buf().await {
        if buf.is_empty() {
            if !line.is_empty() {
                emit(&line, stream, logs, last).await;
            }
            break;
        }
        let room = MAX_LINE_BYTES - line.len();
        let window = &buf[..buf.len().min(room)];
        if let Some(newline) = window.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&window[..newline]);
            reader.consume(newline + 1);
            emit(&line, stream, logs, last).await;
            line.clear();
        } else {
            let taken = window.len();
            line.extend_from_slice(window);
            reader.consume(taken);
            if line.len() >= MAX_LINE_BYTES {
                // Split an over-long line at a character boundary; the rest starts the next.
                let cut = char_boundary(&line);
                emit(&line[..cut], stream, logs, last).await;
                line.drain(..cut);
            }
        }
    }
}

/// Where to split a full buffer without cutting a UTF-8 sequence in two: before an incomplete
/// last character, else at the end (invalid UTF-8 is cut anywhere; it is shown lossily).
fn char_boundary(bytes: &[u8]) -> usize {
    let len = bytes.len();
    let Some(start) = (len.saturating_sub(4)..len)
        .rev()
        .find(|&i| (bytes[i] & 0b1100_0000) != 0b1000_0000)
    else {
        return len;
    };
    let width = match bytes[start] {
        b if b < 0x80 => 1,
        b if b >= 0xF0 => 4,
        b if b >= 0xE0 => 3,
        _ => 2,
    };
    if start + width <= len || start == 0 {
        len
    } else {
        start
    }
}

async fn emit(bytes: &[u8], stream: Stream, logs: &LogSink, last: &Mutex<Option<String>>) {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let text = String::from_utf8_lossy(bytes);
    if let Ok(mut last) = last.lock() {
        *last = Some(text.trim_end().to_owned());
    }
    logs.send(stream, &text).await;
}

/// Where util-linux's `setpriv` is, if anywhere (it is part of every Debian and most Linux
/// systems).
#[cfg(target_os = "linux")]
fn setpriv() -> Option<&'static std::path::Path> {
    static SETPRIV: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            ["/usr/bin/setpriv", "/bin/setpriv"]
                .iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.is_file())
        })
        .as_deref()
}

#[cfg(not(target_os = "linux"))]
fn setpriv() -> Option<&'static std::path::Path> {
    None
}

/// A command for a task's process that dies with the worker.
///
/// With a reaper running (every `flow worker` and `flow standalone`), the process is tagged
/// for it (see [`crate::reaper`]) and spawned as it is, so the standard library can use
/// `posix_spawn` (vfork): forking a busy worker copied its page tables for every task.
/// Without one (a worker embedded in a test or a library user), the kernel SIGKILLs the
/// task's process if the worker dies: the parent-death signal is set by
/// `setpriv --pdeathsig KILL`, which then execs the program, or without `setpriv` by
/// [`supervise`] between fork and exec. `bash -c` with a single command execs it, so this
/// covers the command itself, not the children of a multi-command script.
pub(crate) fn task_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if crate::reaper::tag().is_some() {
        return Command::new(program); // tagged by `supervise`, after the task's own env
    }
    match setpriv() {
        Some(setpriv) => {
            let mut cmd = Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // pre_exec is unsafe: the closure runs between fork and exec.
fn die_with_parent(cmd: &mut Command) {
    if crate::reaper::tag().is_some() || setpriv().is_some() {
        return; // the reaper kills it, or the `setpriv` that `task_command` put in front
    }
    // SAFETY: the closure only makes the prctl(2) system call, which is async-signal-safe,
    // allocates nothing and touches no lock, as required between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from));
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_char_boundaries() {
        let s = "aé".as_bytes(); // 'é' is two bytes
        assert_eq!(char_boundary(s), 3);
        assert_eq!(char_boundary(&s[..2]), 1);
        assert_eq!(char_boundary(b"abc"), 3);
    }
}
