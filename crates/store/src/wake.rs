//! Wake-ups between loops: a transaction that leaves work for another loop (a run created,
//! task instances queued, a try ended, a task deferred) notifies that loop's channel, and the
//! processes running such loops listen.
//!
//! PostgreSQL has LISTEN/NOTIFY. SQLite has nothing of the kind, so there the transaction bumps
//! the channel's counter in `wake_signal`: the store wakes its own process's loops right after
//! the commit, and a watcher wakes them for the bumps of other processes (`flow dags trigger`
//! beside a `flow standalone`). Either way a notification is delivered only once its
//! transaction commits, and a wake-up is a hint: the woken loop reads the database and may
//! find nothing to do. Loops still poll on an interval, so a lost wake-up costs latency, never
//! work.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{Any, Connection, Transaction};
use tokio::sync::Notify;

use crate::{Backend, Result, Store};

/// Notified when the scheduler has something to decide: a try finished, a run was created.
pub const WAKE_SCHEDULER: &str = "flow_wake_scheduler";
/// Notified when task instances were queued.
pub const WAKE_WORKERS: &str = "flow_wake_workers";
/// Notified when a task deferred to a new trigger.
pub const WAKE_TRIGGERER: &str = "flow_wake_triggerer";

const CHANNELS: [&str; 3] = [WAKE_SCHEDULER, WAKE_WORKERS, WAKE_TRIGGERER];

fn channel_index(channel: &str) -> Option<usize> {
    CHANNELS.iter().position(|c| *c == channel)
}

/// A SQLite store's own side of the wake-ups. SQLite runs one write transaction at a time,
/// so what the transaction in progress notified can live here until its commit.
#[derive(Debug, Default)]
pub(crate) struct LocalWakes {
    /// Channels (bits by [`CHANNELS`] index) the write transaction in progress notified.
    pending: AtomicU8,
    /// Per channel, how many committed bumps came from this store: the watcher leaves these
    /// to the wake-ups given at commit.
    committed: [AtomicI64; 3],
    /// The loops of this process, by channel.
    listeners: Mutex<Vec<(&'static str, Arc<Notify>)>>,
}

impl LocalWakes {
    pub(crate) fn listen(&self, wakes: &[(&'static str, Arc<Notify>)]) {
        if let Ok(mut l) = self.listeners.lock() {
            l.extend(wakes.iter().cloned());
        }
    }

    pub(crate) fn begun(&self) {
        self.pending.store(0, Ordering::Release);
    }

    fn notified(&self, channel: &str) {
        if let Some(i) = channel_index(channel) {
            self.pending.fetch_or(1 << i, Ordering::AcqRel);
        }
    }

    pub(crate) fn take_pending(&self) -> u8 {
        self.pending.swap(0, Ordering::AcqRel)
    }

    /// After the commit of a transaction that notified `bits`: counts them as this store's and
    /// wakes this process's loops.
    pub(crate) fn committed(&self, bits: u8) {
        if bits == 0 {
            return;
        }
        for (i, channel) in CHANNELS.iter().enumerate() {
            if bits & (1 << i) != 0 {
                self.committed[i].fetch_add(1, Ordering::AcqRel);
                if let Ok(l) = self.listeners.lock() {
                    wake_channel(&l, channel);
                }
            }
        }
    }

    fn committed_count(&self, i: usize) -> i64 {
        self.committed[i].load(Ordering::Acquire)
    }
}

/// Adds a wake-up for `channel` to a transaction; it reaches listeners when the transaction
/// commits.
pub(crate) async fn notify_in(
    store: &Store,
    tx: &mut Transaction<'static, Any>,
    channel: &str,
) -> Result<()> {
    let sql = match store.backend() {
        Backend::Postgres => "SELECT pg_notify($1, '')",
        Backend::Sqlite => {
            store.wakes.notified(channel);
            "UPDATE wake_signal SET seq = seq + 1 WHERE channel = $1"
        }
    };
    sqlx::query(sql).bind(channel).execute(&mut **tx).await?;
    Ok(())
}

/// Forwards PostgreSQL notifications to the in-process hints, reconnecting with backoff.
pub(crate) async fn listen_postgres(url: String, wakes: Vec<(&'static str, Arc<Notify>)>) {
    let mut backoff = Duration::from_millis(100);
    let channels: Vec<&str> = wakes.iter().map(|(c, _)| *c).collect();
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => {
                if listener.listen_all(channels.iter().copied()).await.is_ok() {
                    backoff = Duration::from_millis(100);
                    // A reconnect may have missed notifications: wake everyone once.
                    wake_all(&wakes);
                    while let Ok(n) = listener.recv().await {
                        wake_channel(&wakes, n.channel());
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "LISTEN connection failed; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn wake_all(wakes: &[(&'static str, Arc<Notify>)]) {
    for (_, n) in wakes {
        n.notify_one();
    }
}

fn wake_channel(wakes: &[(&'static str, Arc<Notify>)], channel: &str) {
    for (c, n) in wakes {
        if *c == channel {
            n.notify_one();
        }
    }
}

/// How long the SQLite watcher waits between looks when nothing told it the file changed
/// (the safety net under the file watch).
const SQLITE_IDLE_LOOK: Duration = Duration::from_secs(1);
/// How often it looks where the file cannot be watched (not Linux, no inotify).
const SQLITE_POLL: Duration = Duration::from_millis(5);
/// After the WAL file changed, how long it keeps looking for the commit to show: SQLite
/// writes a commit's frames, syncs them, and only then publishes the commit.
const SQLITE_COMMIT_SHOWS: Duration = Duration::from_millis(200);
/// The least time between two looks: a busy file (every commit of this process writes it
/// too) costs the watcher a look every few milliseconds, not one per commit.
const SQLITE_LOOK_GAP: Duration = Duration::from_millis(3);

/// SQLite's stand-in for LISTEN, for wake-ups from other processes. A connection of its own
/// reads `PRAGMA data_version`, which changes whenever another connection commits; only then
/// does it read the `wake_signal` counters ([`notify_in`] bumps them), and it wakes the loops
/// of the channels that moved by more than this store's own commits (those woke their loops at
/// commit). It looks when inotify reports a write to the WAL file, so an idle daemon does no
/// work; where the file cannot be watched it looks every [`SQLITE_POLL`]. Neither statement
/// holds a snapshot that would stop checkpoints.
pub(crate) async fn watch_sqlite(
    url: String,
    local: Arc<LocalWakes>,
    wakes: Vec<(&'static str, Arc<Notify>)>,
) {
    let written = Arc::new(Notify::new());
    let watched = database_path(&url).is_some_and(|db| file_watch::start(&db, &written));
    if !watched {
        tracing::debug!("cannot watch the SQLite file; polling it for wake-ups instead");
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        match sqlx::AnyConnection::connect(&url).await {
            Ok(mut conn) => {
                backoff = Duration::from_millis(100);
                let written = watched.then_some(&*written);
                if let Err(e) = watch_sqlite_on(&mut conn, written, &local, &wakes).await {
                    tracing::warn!(error = %e, "watching the SQLite file for wake-ups failed; reconnecting");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "opening the SQLite file to watch it failed; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The database file of a `sqlite://path?...` URL.
fn database_path(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("sqlite://")?;
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    (!path.is_empty()).then(|| PathBuf::from(path))
}

async fn watch_sqlite_on(
    conn: &mut sqlx::AnyConnection,
    written: Option<&Notify>,
    local: &LocalWakes,
    wakes: &[(&'static str, Arc<Notify>)],
) -> Result<()> {
    let mut version: Option<i64> = None;
    // Per channel: its counter less this store's commits, at the last look.
    let mut foreign: HashMap<String, i64> = HashMap::new();
    loop {
        // Told of a write: look until the commit shows. Otherwise one look.
        let deadline = match written {
            Some(w) => tokio::select! {
                () = w.notified() => Some(tokio::time::Instant::now() + SQLITE_COMMIT_SHOWS),
                () = tokio::time::sleep(SQLITE_IDLE_LOOK) => None,
            },
            None => {
                tokio::time::sleep(SQLITE_POLL).await;
                None
            }
        };
        let mut pause = Duration::from_millis(1);
        let now = loop {
            let now: i64 = sqlx::query_scalar("PRAGMA data_version")
                .fetch_one(&mut *conn)
                .await?;
            let wait_more = deadline.is_some_and(|d| tokio::time::Instant::now() + pause < d);
            if version != Some(now) || !wait_more {
                break now;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        if version != Some(now) {
            // Starting (or reconnected), anything may have been missed: wake everyone once.
            let first = version.is_none();
            version = Some(now);
            let rows: Vec<(String, i64)> = sqlx::query_as("SELECT channel, seq FROM wake_signal")
                .fetch_all(&mut *conn)
                .await?;
            if first {
                wake_all(wakes);
            }
            for (channel, seq) in rows {
                let ours = channel_index(&channel).map_or(0, |i| local.committed_count(i));
                let theirs = seq - ours;
                if foreign.insert(channel.clone(), theirs) != Some(theirs) && !first {
                    wake_channel(wakes, &channel);
                }
            }
        }
        tokio::time::sleep(SQLITE_LOOK_GAP).await;
    }
}

#[cfg(target_os = "linux")]
mod file_watch {
    use std::ffi::OsString;
    use std::path::Path;
    use std::sync::{Arc, Weak};

    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use tokio::sync::Notify;

    /// Watches the folder of `db` (its WAL file comes and goes with the last connection) and
    /// notifies `written` whenever the WAL file is written. False if inotify is unavailable.
    pub(super) fn start(db: &Path, written: &Arc<Notify>) -> bool {
        let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else {
            return false;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let mut wal = name.to_os_string();
        wal.push("-wal");
        let Ok(ino) = Inotify::init(InitFlags::IN_CLOEXEC) else {
            return false;
        };
        let mask = AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_ONLYDIR;
        if ino.add_watch(dir, mask).is_err() {
            return false;
        }
        let weak = Arc::downgrade(written);
        std::thread::Builder::new()
            .name("flow-sqlite-watch".into())
            .spawn(move || watch_loop(&ino, &wal, &weak))
            .is_ok()
    }

    /// Reads events until nobody waits for them any more or the watch fails (the watcher then
    /// falls back to its idle look).
    fn watch_loop(ino: &Inotify, wal: &OsString, written: &Weak<Notify>) {
        loop {
            let events = match ino.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the SQLite file failed; looking once a second instead");
                    return;
                }
            };
            let Some(written) = written.upgrade() else {
                return;
            };
            if events.iter().any(|e| e.name.as_ref() == Some(wal)) {
                written.notify_one();
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod file_watch {
    use std::path::Path;
    use std::sync::Arc;

    use tokio::sync::Notify;

    pub(super) fn start(_db: &Path, _written: &Arc<Notify>) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_path_of_urls() {
        assert_eq!(
            database_path("sqlite:///tmp/x/flow.db?mode=rwc"),
            Some(PathBuf::from("/tmp/x/flow.db"))
        );
        assert_eq!(
            database_path("sqlite://flow.db?mode=rwc"),
            Some(PathBuf::from("flow.db"))
        );
        assert_eq!(database_path("postgres://h/db"), None);
    }

    fn ready(n: &Notify) -> bool {
        use std::future::Future;
        let mut fut = std::pin::pin!(n.notified());
        fut.as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
            .is_ready()
    }

    #[test]
    fn a_commit_wakes_this_process_and_a_rollback_does_not() {
        let local = LocalWakes::default();
        let scheduler = Arc::new(Notify::new());
        let workers = Arc::new(Notify::new());
        local.listen(&[
            (WAKE_SCHEDULER, scheduler.clone()),
            (WAKE_WORKERS, workers.clone()),
        ]);
        // Rolled back: the next transaction starts from nothing.
        local.begun();
        local.notified(WAKE_WORKERS);
        local.begun();
        local.notified(WAKE_SCHEDULER);
        local.committed(local.take_pending());
        assert!(ready(&scheduler));
        assert!(!ready(&workers));
        assert_eq!(local.committed_count(0), 1);
        assert_eq!(local.committed_count(1), 0);
        // Nothing notified: nothing woken, nothing counted.
        local.begun();
        local.committed(local.take_pending());
        assert!(!ready(&scheduler));
        assert_eq!(local.committed_count(0), 1);
    }
}
