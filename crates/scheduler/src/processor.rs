//! The DAG processor: keeps the store in step with the dags folder.
//!
//! Each pass stats every file and re-parses only those whose size or modification time
//! changed (all of them when a `defaults.yml` changed, since defaults shape every DAG below
//! them). A re-parsed file is written to the store only when its content hash differs from
//! what the store holds, so a restart costs one parse and no writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use flow_dag::loader::source_hash;
use flow_dag::{Dag, LoadOptions, LoadedFile};
use flow_store::{AssetUse, DagRecord, FileSync, Store};

use crate::SchedulerError;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcessReport {
    pub files_seen: usize,
    pub files_parsed: usize,
    pub files_written: usize,
    pub dags_deactivated: u64,
}

/// Files parsed off the async threads, each with its stat at parse time, and the signature of
/// the defaults files they were parsed with.
type Parsed = (Vec<(LoadedFile, Option<(SystemTime, u64)>)>, String);

/// How long a pass waits for its parse before going on without it: the files are still
/// parsed, and a later pass records them, so a slow or stuck file system never holds up
/// scheduling.
const PARSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug)]
pub struct DagProcessor {
    store: Store,
    root: PathBuf,
    paused_at_creation: bool,
    /// Whether DAG files may be links to files outside the dags folder.
    allow_external_links: bool,
    /// path -> (mtime, len) at the last parse
    seen: HashMap<PathBuf, (SystemTime, u64)>,
    /// fileloc -> content hash (file plus its defaults) the store holds
    stored: Option<HashMap<String, String>>,
    defaults_signature: Vec<(PathBuf, SystemTime, u64)>,
    /// A parse that outlasted [`PARSE_WAIT`], picked up by a later pass.
    pending: Option<tokio::task::JoinHandle<Parsed>>,
    /// The folder's files (path, mtime, length) when the bundle was last stored, and its hash.
    bundle: Option<(FolderSignature, String)>,
    /// Files left out of the bundle (too large), reported once.
    bundle_skipped: Vec<String>,
}

/// Every file of the folder as (relative path, mtime, length): what decides whether the
/// bundle must be stored again.
type FolderSignature = Vec<(String, SystemTime, u64)>;

fn stat(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The `defaults.yml` / `defaults.yaml` files under `root`, with their stats.
fn defaults_files(root: &Path) -> Vec<(PathBuf, SystemTime, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            // Not through links: a link to a parent folder would make this walk endless.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if (name == "defaults.yml" || name == "defaults.yaml")
                && let Some((m, l)) = stat(&path)
            {
                out.push((path, m, l));
            }
        }
    }
    out.sort();
    out
}

/// The record the store keeps for a DAG.
pub fn dag_record(dag: &Dag, paused_at_creation: bool) -> Result<DagRecord, SchedulerError> {
    let data = dag
        .to_json()
        .map_err(|e| SchedulerError::Serialize(e.to_string()))?;
    Ok(DagRecord {
        dag_id: dag.dag_id.to_string(),
        owners: dag.owner.clone(),
        description: dag.description.clone(),
        schedule: dag.schedule_text.clone(),
        // Airflow's summary of an asset schedule: `Asset`, or `Asset or <timetable>`.
        timetable_summary: if dag.asset_schedule.is_some() {
            dag.schedule_text.clone()
        } else {
            dag.timetable.summary()
        },
        tags: dag.tags.clone(),
        max_active_runs: i64::from(dag.max_active_runs),
        max_active_tasks: i64::from(dag.max_active_tasks),
        paused_on_creation: dag.is_paused_upon_creation.unwrap_or(paused_at_creation),
        dag_hash: source_hash(data.as_bytes()),
        data,
        assets: asset_uses(dag),
    })
}

/// The DAG's references to assets, for the asset pages and for queueing events.
fn asset_uses(dag: &Dag) -> Vec<AssetUse> {
    use flow_dag::assets::{Asset, Outlet};
    let one = |a: &Asset, kind: &'static str, task_id: &str| AssetUse {
        uri: a.uri.clone(),
        name: a.name.clone(),
        group: a.group.clone(),
        extra: serde_json::Value::Object(a.extra.clone()),
        kind,
        task_id: task_id.to_owned(),
    };
    let mut uses = Vec::new();
    if let Some(condition) = &dag.asset_schedule {
        uses.extend(
            condition
                .assets()
                .into_iter()
                .map(|a| one(a, "schedule", "")),
        );
    }
    for t in &dag.tasks {
        for o in &t.outlets {
            if let Outlet::Asset { asset, .. } = o {
                uses.push(one(asset, "outlet", t.task_id.as_str()));
            }
        }
        uses.extend(t.inlets.iter().map(|a| one(a, "inlet", t.task_id.as_str())));
    }
    uses
}

impl DagProcessor {
    pub fn new(store: Store, root: PathBuf, paused_at_creation: bool) -> Self {
        DagProcessor {
            store,
            root,
            paused_at_creation,
            allow_external_links: false,
            seen: HashMap::new(),
            stored: None,
            defaults_signature: Vec::new(),
            pending: None,
            bundle: None,
            bundle_skipped: Vec::new(),
        }
    }

    /// Lets DAG files be symbolic links to files outside the dags folder.
    pub fn allow_external_links(mut self, allow: bool) -> Self {
        self.allow_external_links = allow;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Re-reads the stored file hashes, and forgets what it knew of every file whose stored
    /// hash changed behind its back (a DAG deleted through the API, another processor), so
    /// that the next pass parses those files again.
    pub async fn resync_from_store(&mut self) -> Result<(), SchedulerError> {
        let fresh = self.store.dag_code_hashes().await?;
        if let Some(known) = &self.stored {
            let changed: Vec<&String> = known
                .iter()
                .filter(|(file, hash)| fresh.get(*file) != Some(*hash))
                .map(|(file, _)| file)
                .collect();
            for file in changed {
                self.seen.remove(Path::new(file.as_str()));
            }
        }
        self.stored = Some(fresh);
        Ok(())
    }

    /// One pass over the dags folder.
    pub async fn run_once(&mut self, now: DateTime<Utc>) -> Result<ProcessReport, SchedulerError> {
        let mut report = ProcessReport::default();
        // A parse still running from an earlier pass: wait for it, never start a second.
        if let Some(handle) = &self.pending {
            if !handle.is_finished() {
                return Ok(report);
            }
            if let Some(handle) = self.pending.take() {
                let parsed = handle
                    .await
                    .map_err(|e| SchedulerError::Internal(e.to_string()))?;
                self.record(parsed, now, &mut report).await?;
            }
        }
        let root = self.root.clone();
        let files = tokio::task::spawn_blocking(move || {
            let files = flow_dag::find_dag_files(&root)?;
            let defaults = defaults_files(&root);
            Ok::<_, std::io::Error>((files, defaults))
        })
        .await
        .map_err(|e| SchedulerError::Internal(e.to_string()))?
        .map_err(|e| SchedulerError::DagsFolder {
            path: self.root.display().to_string(),
            reason: e.to_string(),
        })?;
        let (files, defaults) = files;
        let defaults_changed = defaults != self.defaults_signature;
        if defaults_changed {
            self.seen.clear();
            self.defaults_signature = defaults.clone();
        }
        if self.stored.is_none() {
            self.stored = Some(self.store.dag_code_hashes().await?);
        }
        let changed: Vec<PathBuf> = files
            .iter()
            .filter(|p| stat(p) != self.seen.get(*p).copied())
            .cloned()
            .collect();
        report.files_seen = files.len();
        report.files_parsed += changed.len();
        if !changed.is_empty() {
            let root = self.root.clone();
            let allow_external_links = self.allow_external_links;
            let mut handle = tokio::task::spawn_blocking(move || {
                // Read here, off the async threads: a defaults file can be anything too.
                let defaults_sig: String = defaults
                    .iter()
                    .map(|(p, _, _)| {
                        flow_dag::loader::read_regular_file(p)
                            .map(|b| source_hash(&b))
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                let options = LoadOptions {
                    now,
                    allow_external_links,
                    ..LoadOptions::default()
                };
                let loaded = changed
                    .iter()
                    .map(|p| {
                        let st = stat(p);
                        let started = std::time::Instant::now();
                        let file = flow_dag::load_file(p, &root, &options);
                        let label = p.strip_prefix(&root).unwrap_or(p).display().to_string();
                        flow_metrics::metrics()
                            .dag_processing_last_duration
                            .get_or_create(&[("file", label)])
                            .set(started.elapsed().as_secs_f64());
                        (file, st)
                    })
                    .collect();
                (loaded, defaults_sig)
            });
            match tokio::time::timeout(PARSE_WAIT, &mut handle).await {
                Ok(parsed) => {
                    let parsed = parsed.map_err(|e| SchedulerError::Internal(e.to_string()))?;
                    self.record(parsed, now, &mut report).await?;
                }
                Err(_) => {
                    tracing::warn!(
                        dags_folder = %self.root.display(),
                        "parsing DAG files takes longer than {}s (a slow or stuck file system?); scheduling goes on and the files are recorded when the parse ends",
                        PARSE_WAIT.as_secs()
                    );
                    self.pending = Some(handle);
                    return Ok(report);
                }
            }
        }
        let present: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        if self.seen.len() > files.len() {
            self.seen.retain(|p, _| files.contains(p));
        }
        let known = self.stored.as_ref().map_or(0, HashMap::len);
        if known > present.len() || report.files_written > 0 {
            report.dags_deactivated = self.store.dag_deactivate_missing_files(&present).await?;
            if let Some(stored) = self.stored.as_mut() {
                stored.retain(|k, _| present.contains(k));
            }
        }
        Ok(report)
    }

    /// Writes parsed files whose content changed to the store, and remembers their stats.
    async fn record(
        &mut self,
        (loaded, defaults_sig): Parsed,
        now: DateTime<Utc>,
        report: &mut ProcessReport,
    ) -> Result<(), SchedulerError> {
        for (file, st) in loaded {
            let fileloc = file.path.display().to_string();
            // The stored hash covers the defaults and the dataset files it read too: a change
            // to one must rewrite the DAGs even though their own bytes did not change.
            let deps: Vec<&str> = file.dependencies.iter().map(|(_, h)| h.as_str()).collect();
            let effective_hash = source_hash(
                format!("{}|{defaults_sig}|{}", file.source_hash, deps.join(",")).as_bytes(),
            );
            if file.dataset_file && !self.seen.is_empty() {
                // A dataset file changed or appeared: the files naming its datasets are read
                // again at the next pass (and rewritten only if what they read changed).
                self.seen.clear();
            }
            let unchanged = self
                .stored
                .as_ref()
                .and_then(|s| s.get(&fileloc))
                .is_some_and(|h| *h == effective_hash);
            if !unchanged {
                let sync = self.file_sync(&file, effective_hash.clone())?;
                self.store.dag_sync_file(&sync, now).await?;
                report.files_written += 1;
                if let Some(stored) = self.stored.as_mut() {
                    stored.insert(fileloc, effective_hash);
                }
            }
            if let Some(st) = st {
                self.seen.insert(file.path.clone(), st);
            }
        }
        Ok(())
    }

    fn file_sync(&self, file: &LoadedFile, hash: String) -> Result<FileSync, SchedulerError> {
        let dags = file
            .dags
            .iter()
            .map(|d| dag_record(d, self.paused_at_creation))
            .collect::<Result<Vec<_>, _>>()?;
        let import_error = file.has_errors().then(|| {
            file.diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        });
        Ok(FileSync {
            fileloc: file.path.display().to_string(),
            relative_fileloc: file.relative_path.clone(),
            source: file.source.clone(),
            source_hash: hash,
            dags,
            import_error,
        })
    }
}

impl DagProcessor {
    /// Stores the dags folder as a DAG bundle when its files changed (or `dags_changed`: new
    /// DAG rows must learn their bundle), so that remote workers need no copy of the folder.
    /// Returns the bundle's hash when it stored anything.
    pub async fn sync_bundle(
        &mut self,
        dags_changed: bool,
    ) -> Result<Option<String>, SchedulerError> {
        let root = self.root.clone();
        let allow = self.allow_external_links;
        let (entries, skipped) =
            tokio::task::spawn_blocking(move || crate::bundle::walk(&root, allow))
                .await
                .map_err(|e| SchedulerError::Internal(format!("walking the dags folder: {e}")))?;
        if skipped != self.bundle_skipped {
            if !skipped.is_empty() {
                tracing::warn!(files = ?skipped, "files left out of the DAG bundle (over 10 MiB each, or 256 MiB in all): remote workers will not see them");
            }
            self.bundle_skipped = skipped;
        }
        let signature: FolderSignature = entries
            .iter()
            .map(|e| (e.rel.clone(), e.mtime, e.len))
            .collect();
        if !dags_changed
            && self
                .bundle
                .as_ref()
                .is_some_and(|(sig, _)| *sig == signature)
        {
            return Ok(None);
        }
        let read = tokio::task::spawn_blocking(move || {
            entries
                .into_iter()
                .filter_map(|e| {
                    let content = std::fs::read(&e.abs).ok()?;
                    let file = flow_store::BundleFile {
                        path: e.rel,
                        blob_hash: crate::bundle::hash(&content),
                        executable: e.executable,
                    };
                    Some((file, content))
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| SchedulerError::Internal(format!("reading the dags folder: {e}")))?;
        let files: Vec<flow_store::BundleFile> = read.iter().map(|(f, _)| f.clone()).collect();
        let bundle_hash = crate::bundle::bundle_hash(&files);
        let prefix = format!("{}/", self.root.display());
        if self.store.bundle_exists(&bundle_hash).await? {
            self.store
                .bundle_store(&bundle_hash, &[], &[], &prefix)
                .await?;
        } else {
            let all: Vec<String> = files.iter().map(|f| f.blob_hash.clone()).collect();
            let missing: std::collections::HashSet<String> = self
                .store
                .bundle_missing_blobs(&all)
                .await?
                .into_iter()
                .collect();
            let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
            for (f, content) in read {
                if missing.contains(&f.blob_hash) && !blobs.iter().any(|(h, _)| *h == f.blob_hash) {
                    blobs.push((f.blob_hash, content));
                }
            }
            self.store
                .bundle_store(&bundle_hash, &files, &blobs, &prefix)
                .await?;
            tracing::debug!(bundle = %bundle_hash, files = files.len(), new_blobs = blobs.len(), "stored the DAG bundle");
        }
        self.bundle = Some((signature, bundle_hash.clone()));
        Ok(Some(bundle_hash))
    }

    /// `flow dag-processor` (Airflow 3's standalone DAG processor): keeps the store in step
    /// with the dags folder until `shutdown`, parsing when the folder changes (inotify) and
    /// every 30 s regardless, with a `DagProcessorJob` row. Schedulers started with
    /// `--no-processor` leave this to it. Store errors are logged and retried.
    pub async fn run(mut self, hostname: String, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        use std::time::{Duration, Instant};
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let watch = crate::dir_watch::start(&self.root, wake.clone());
        let scan_every = if watch
            .as_ref()
            .is_some_and(crate::dir_watch::DirWatch::is_live)
        {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(1)
        };
        tracing::info!(dags_folder = %self.root.display(), "dag processor started");
        let mut job: Option<i64> = None;
        let mut last_scan: Option<Instant> = None;
        let mut last_beat: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let due = last_scan.is_none_or(|t| t.elapsed() >= scan_every);
            let dirty = watch
                .as_ref()
                .is_some_and(crate::dir_watch::DirWatch::take_dirty);
            if due || dirty {
                let pass = async {
                    if due {
                        self.resync_from_store().await?;
                    }
                    let report = self.run_once(Utc::now()).await?;
                    self.sync_bundle(report.files_written > 0).await?;
                    Ok::<_, SchedulerError>(report)
                };
                match pass.await {
                    Ok(report) if report.files_written > 0 || report.dags_deactivated > 0 => {
                        tracing::info!(?report, "dags folder synced");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "dag processing failed; retrying"),
                }
                if due {
                    last_scan = Some(Instant::now());
                }
            }
            if last_beat.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                let now = Utc::now();
                let beat = match job {
                    Some(id) => self.store.job_heartbeat(id, now).await,
                    None => self
                        .store
                        .job_start(
                            &flow_store::JobStart::this_process("DagProcessorJob", &hostname),
                            now,
                        )
                        .await
                        .map(|id| job = Some(id)),
                };
                match beat {
                    Ok(()) => last_beat = Some(Instant::now()),
                    Err(e) => tracing::warn!(error = %e, "dag processor heartbeat failed"),
                }
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
        if let Some(id) = job
            && let Err(e) = self.store.job_end(id, Utc::now()).await
        {
            tracing::warn!(error = %e, "could not record the dag processor's end");
        }
        tracing::info!("dag processor stopped");
    }
}
