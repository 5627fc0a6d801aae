//! Telling the scheduler that something changed in the dags folder, without polling it.
//!
//! On Linux an inotify watch on every directory of the dags folder marks the folder dirty
//! and wakes the scheduler as soon as a file is written, moved or removed, so an edited DAG
//! is live at once and an idle scheduler does not stat a thousand files every second. Where
//! inotify is not available (other systems, a filesystem without it, too many watches) the
//! scheduler falls back to scanning on an interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A watch on the dags folder.
#[derive(Debug)]
pub struct DirWatch {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    dirty: AtomicBool,
    broken: AtomicBool,
}

impl DirWatch {
    /// Whether anything changed since the last call (and resets the mark: a change during
    /// the scan that follows marks it again).
    pub fn take_dirty(&self) -> bool {
        self.state.dirty.swap(false, Ordering::AcqRel)
    }

    /// False once the watch stopped working: the caller must scan on an interval again.
    pub fn is_live(&self) -> bool {
        !self.state.broken.load(Ordering::Acquire)
    }
}

#[cfg(target_os = "linux")]
pub fn start(root: &std::path::Path, wake: Arc<Notify>) -> Option<DirWatch> {
    linux::start(root, wake)
}

#[cfg(not(target_os = "linux"))]
pub fn start(_root: &std::path::Path, _wake: Arc<Notify>) -> Option<DirWatch> {
    None
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Weak};

    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
    use tokio::sync::Notify;
    use tracing::{debug, warn};

    use super::{DirWatch, State};

    fn mask() -> AddWatchFlags {
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR
    }

    /// Watches `dir` and the directories below it (hidden ones are skipped, as the loader
    /// skips them). Returns false if a watch could not be added.
    fn watch_tree(ino: &Inotify, dir: &Path, wds: &mut HashMap<WatchDescriptor, PathBuf>) -> bool {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            match ino.add_watch(&dir, mask()) {
                Ok(wd) => {
                    wds.insert(wd, dir.clone());
                }
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot watch the dags folder; scanning it on an interval instead");
                    return false;
                }
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                if !hidden && entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        true
    }

    pub fn start(root: &Path, wake: Arc<Notify>) -> Option<DirWatch> {
        let ino = Inotify::init(InitFlags::IN_CLOEXEC).ok()?;
        let mut wds = HashMap::new();
        if !watch_tree(&ino, root, &mut wds) {
            return None;
        }
        let state = Arc::new(State {
            dirty: AtomicBool::new(true),
            broken: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&state);
        let root = root.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("flow-dags-watch".into())
            .spawn(move || watch_loop(&ino, &root, wds, &weak, &wake));
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the dags folder watcher");
            return None;
        }
        Some(DirWatch { state })
    }

    /// Reads events until the scheduler is gone or the watch breaks.
    fn watch_loop(
        ino: &Inotify,
        root: &Path,
        mut wds: HashMap<WatchDescriptor, PathBuf>,
        state: &Weak<State>,
        wake: &Notify,
    ) {
        loop {
            let events = match ino.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!(error = %e, "dags folder watch failed; scanning on an interval instead");
                    return mark_broken(state, wake);
                }
            };
            let Some(shared) = state.upgrade() else {
                return; // the scheduler is gone
            };
            let mut broken = false;
            for ev in &events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    continue; // events were lost: the folder is dirty, which is all we say
                }
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    wds.remove(&ev.wd);
                }
                let is_dir = ev.mask.contains(AddWatchFlags::IN_ISDIR);
                let appeared = ev
                    .mask
                    .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO);
                if is_dir
                    && appeared
                    && let (Some(parent), Some(name)) = (wds.get(&ev.wd).cloned(), &ev.name)
                    && !name.to_string_lossy().starts_with('.')
                {
                    broken |= !watch_tree(ino, &parent.join(name), &mut wds);
                }
            }
            if !wds.values().any(|p| p == root) {
                broken = true; // the root itself was removed or moved away
            }
            shared.dirty.store(true, Ordering::Release);
            wake.notify_one();
            if broken {
                debug!("dags folder watch ended; scanning on an interval instead");
                return mark_broken(state, wake);
            }
        }
    }

    /// A watch that no longer works must not look like a quiet folder.
    fn mark_broken(state: &Weak<State>, wake: &Notify) {
        if let Some(state) = state.upgrade() {
            state.broken.store(true, Ordering::Release);
            state.dirty.store(true, Ordering::Release);
            wake.notify_one();
        }
    }
}
