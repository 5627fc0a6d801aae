//! The dags folder loader: finds YAML files, layers defaults, builds DAGs, collects diagnostics.
//!
//! One broken file never stops the others, and one broken DAG never stops the other DAGs of its
//! file: the broken ones are reported (an *import error* for the file) and left out. Files are
//! parsed in parallel on all cores; results come back in path order so output is stable.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::build::{Ctx, build_dag};
use crate::dag::Dag;
use crate::diagnostic::{Diagnostic, Severity};
use crate::yaml::{self, FileId, Limits, Node, Span, Value, deep_merge};

/// Files larger than this are rejected before parsing.
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// The names dag-factory reads defaults from, in each folder from the dags root down.
const DEFAULTS_FILES: &[&str] = &["defaults.yml", "defaults.yaml"];

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// For relative start dates (`2 days`); a parameter so that loading is reproducible.
    pub now: DateTime<Utc>,
    pub limits: Limits,
    /// Worker threads for parsing; 0 means one per core.
    pub threads: usize,
    /// Whether a symbolic link in the dags folder may lead to a file outside it (off by
    /// default: anyone who can write a link there could otherwise show any readable file, such
    /// as `/etc/passwd`, to everyone who may read DAG sources).
    pub allow_external_links: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            now: Utc::now(),
            limits: Limits::default(),
            threads: 0,
            allow_external_links: false,
        }
    }
}

/// The result of reading one DAG file.
#[derive(Debug, Clone)]
pub struct LoadedFile {
    pub path: PathBuf,
    /// Relative to the dags folder, `/`-separated.
    pub relative_path: String,
    /// A stable hash of the file's bytes (FNV-1a 64, hex), to skip unchanged files.
    pub source_hash: String,
    pub source: String,
    pub dags: Vec<Dag>,
    pub diagnostics: Vec<Diagnostic>,
    /// Other files its DAGs were read from (dag-factory dataset files), with their hashes.
    pub dependencies: Vec<(PathBuf, String)>,
    /// dag-factory's dataset definitions (`datasets: [{name, uri}]`), not a DAG file.
    pub dataset_file: bool,
}

impl LoadedFile {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Everything found in a dags folder.
#[derive(Debug, Clone, Default)]
pub struct DagBag {
    pub root: PathBuf,
    pub files: Vec<LoadedFile>,
}

impl DagBag {
    pub fn dags(&self) -> impl Iterator<Item = &Dag> {
        self.files.iter().flat_map(|f| f.dags.iter())
    }

    pub fn dag(&self, dag_id: &str) -> Option<&Dag> {
        self.dags().find(|d| d.dag_id.as_str() == dag_id)
    }

    pub fn diagnostics(&self) -> impl Iterator<Item = &Diagnostic> {
        self.files.iter().flat_map(|f| f.diagnostics.iter())
    }

    pub fn error_count(&self) -> usize {
        self.diagnostics().filter(|d| d.is_error()).count()
    }

    pub fn warning_count(&self) -> usize {
        self.diagnostics().filter(|d| !d.is_error()).count()
    }
}

/// Lists DAG files under `root` (or `root` itself if it is a file), sorted, skipping hidden
/// entries and `defaults.yml`.
pub fn find_dag_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    if root.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "__pycache__" {
                continue;
            }
            let path = entry.path();
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                stack.push(path);
            } else if (name.ends_with(".yaml") || name.ends_with(".yml"))
                && !DEFAULTS_FILES.contains(&name.as_ref())
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Loads every DAG file under `root`. Duplicate dag ids across files are errors on the later
/// file (in path order); the first definition wins.
pub fn load_dags(root: &Path, options: &LoadOptions) -> std::io::Result<DagBag> {
    let files = find_dag_files(root)?;
    let dags_root = if root.is_file() {
        root.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        root.to_path_buf()
    };
    let defaults = DefaultsCache::load(&dags_root, &files, options.limits);
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(files.len().max(1));
    let chunk = files.len().div_ceil(threads).max(1);
    let mut loaded: Vec<LoadedFile> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|paths| {
                let defaults = &defaults;
                let dags_root = &dags_root;
                scope.spawn(move || {
                    let env = crate::template::environment();
                    paths
                        .iter()
                        .map(|p| load_file_with(p, dags_root, defaults, options, &env))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    reject_duplicate_dag_ids(&mut loaded);
    Ok(DagBag {
        root: dags_root,
        files: loaded,
    })
}

/// Loads a single file (for incremental re-parsing), with defaults from its folders.
pub fn load_file(path: &Path, dags_root: &Path, options: &LoadOptions) -> LoadedFile {
    let defaults = DefaultsCache::load(dags_root, &[path.to_path_buf()], options.limits);
    let env = crate::template::environment();
    load_file_with(path, dags_root, &defaults, options, &env)
}

fn reject_duplicate_dag_ids(files: &mut [LoadedFile]) {
    let mut seen: HashMap<String, (PathBuf, u32)> = HashMap::new();
    for file in files.iter_mut() {
        let mut kept = Vec::with_capacity(file.dags.len());
        for dag in std::mem::take(&mut file.dags) {
            match seen.get(dag.dag_id.as_str()) {
                Some((first, line)) => file.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: file.path.clone(),
                    line: dag.line,
                    col: 1,
                    message: format!(
                        "dag `{}`: duplicate dag id; already defined in {}:{}",
                        dag.dag_id,
                        first.display(),
                        line
                    ),
                }),
                None => {
                    seen.insert(dag.dag_id.to_string(), (file.path.clone(), dag.line));
                    kept.push(dag);
                }
            }
        }
        file.dags = kept;
    }
}

/// Parsed `defaults.yml` files by folder, so each is read once per load.
struct DefaultsCache {
    /// Folder -> (its defaults file path, node), for folders that have one.
    by_dir: HashMap<PathBuf, (PathBuf, Result<Node, Diagnostic>)>,
    root: PathBuf,
}

impl DefaultsCache {
    fn load(root: &Path, files: &[PathBuf], limits: Limits) -> Self {
        let mut by_dir = HashMap::new();
        for file in files {
            for dir in ancestors_within(file, root) {
                if by_dir.contains_key(&dir) {
                    continue;
                }
                let Some(path) = DEFAULTS_FILES
                    .iter()
                    .map(|n| dir.join(n))
                    .find(|p| p.is_file())
                else {
                    continue;
                };
                // Defaults spans use file id 1.. assigned per DAG file later; parse with a
                // placeholder id and renumber when layering.
                let parsed = read_source(&path, root, false).and_then(|src| {
                    yaml::parse(&src, 0, limits).map_err(|e| Diagnostic {
                        severity: Severity::Error,
                        file: path.clone(),
                        line: e.span.line,
                        col: e.span.col,
                        message: e.message,
                    })
                });
                by_dir.insert(dir, (path, parsed));
            }
        }
        DefaultsCache {
            by_dir,
            root: root.to_path_buf(),
        }
    }

    /// The defaults files that apply to `file`, outermost first.
    fn chain(&self, file: &Path) -> Vec<&(PathBuf, Result<Node, Diagnostic>)> {
        let mut dirs = ancestors_within(file, &self.root);
        dirs.reverse();
        dirs.iter().filter_map(|d| self.by_dir.get(d)).collect()
    }
}

/// The folders from `file`'s own up to `root`, innermost first.
fn ancestors_within(file: &Path, root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = file.parent();
    while let Some(dir) = cur {
        out.push(dir.to_path_buf());
        if dir == root || !dir.starts_with(root) {
            break;
        }
        cur = dir.parent();
    }
    out
}

/// Reads a DAG (or defaults) file, refusing what could hang or leak: anything but a regular
/// file (a FIFO would block the reader forever, a device never end), a symbolic link that
/// leads outside the dags folder (unless allowed) or nowhere, and more than
/// [`MAX_FILE_BYTES`], counted while reading (the size a file reports is not trusted).
fn read_source(path: &Path, root: &Path, allow_external_links: bool) -> Result<String, Diagnostic> {
    use std::io::Read as _;
    let at_start = |message: String| Diagnostic {
        severity: Severity::Error,
        file: path.to_path_buf(),
        line: 1,
        col: 1,
        message,
    };
    let link = fs::symlink_metadata(path)
        .map_err(|e| at_start(format!("cannot read file: {e}")))?
        .file_type()
        .is_symlink();
    if link {
        let target = fs::read_link(path).unwrap_or_default();
        let Ok(resolved) = fs::canonicalize(path) else {
            return Err(at_start(format!(
                "dangling symbolic link: {} does not exist",
                target.display()
            )));
        };
        let inside = fs::canonicalize(root).is_ok_and(|r| resolved.starts_with(r));
        if !inside && !allow_external_links {
            return Err(at_start(format!(
                "symbolic link to {} leads outside the dags folder; DAG files must be inside it \
                 (FLOW__CORE__ALLOW_EXTERNAL_DAG_LINKS=true allows such links)",
                resolved.display()
            )));
        }
    }
    let meta = fs::metadata(path).map_err(|e| at_start(format!("cannot read file: {e}")))?;
    if !meta.is_file() {
        let kind = file_kind(&meta);
        return Err(at_start(format!(
            "not a regular file ({kind}); DAG files must be regular files"
        )));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big(path, meta.len()));
    }
    let file = fs::File::open(path).map_err(|e| at_start(format!("cannot read file: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| at_start(format!("cannot read file: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(path, bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        at_start(format!(
            "file is not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// The bytes of a regular file of at most [`MAX_FILE_BYTES`] (none of a pipe, a device, a
/// bigger file): what a caller outside the loader may read from the dags folder safely.
pub fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    if !fs::metadata(path)?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other("file too large"));
    }
    Ok(bytes)
}

fn too_big(path: &Path, len: u64) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: path.to_path_buf(),
        line: 1,
        col: 1,
        message: format!(
            "file is {}{:.1} MiB; DAG files are limited to {} MiB",
            if len > MAX_FILE_BYTES { "over " } else { "" },
            len as f64 / 1_048_576.0,
            MAX_FILE_BYTES / 1_048_576
        ),
    }
}

/// What a non-regular file is, for the import error.
fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a plain file"
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike `DefaultHasher`.
pub fn source_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn relative(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn renumber(node: &Node, file: FileId) -> Node {
    let value = match &node.value {
        Value::Seq(items) => Value::Seq(items.iter().map(|i| renumber(i, file)).collect()),
        Value::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| (renumber(k, file), renumber(v, file)))
                .collect(),
        ),
        other => other.clone(),
    };
    Node::new(Span { file, ..node.span }, value)
}

/// `tasks` and `task_groups` in list form become maps keyed by id, so that a `default:` block
/// and a DAG can both define tasks and be merged key by key (dag-factory's "templated DAGs").
fn normalize_lists(node: &Node) -> Node {
    let Some(entries) = node.as_map() else {
        return node.clone();
    };
    let out = entries
        .iter()
        .map(|(k, v)| {
            let key = k.as_str();
            let id_key = match key {
                Some("tasks") => Some("task_id"),
                Some("task_groups") => Some("group_name"),
                _ => None,
            };
            match (id_key, v.as_seq()) {
                (Some(id_key), Some(items)) if list_is_keyed(items, id_key) => {
                    (k.clone(), list_to_map(items, id_key, v.span))
                }
                _ => (k.clone(), v.clone()),
            }
        })
        .collect();
    Node::new(node.span, Value::Map(out))
}

/// Only well-formed lists (every item a mapping with a string id, no duplicates) are converted;
/// anything else is left for the builder to report precisely.
fn list_is_keyed(items: &[Node], id_key: &str) -> bool {
    let mut seen = std::collections::HashSet::new();
    items.iter().all(|i| {
        i.get(id_key)
            .and_then(Node::as_str)
            .is_some_and(|id| seen.insert(id.to_owned()))
    })
}

fn list_to_map(items: &[Node], id_key: &str, span: Span) -> Node {
    let entries = items
        .iter()
        .filter_map(|item| {
            let id_node = item.get(id_key)?;
            let rest: Vec<(Node, Node)> = item
                .as_map()?
                .iter()
                .filter(|(k, _)| k.as_str() != Some(id_key))
                .cloned()
                .collect();
            Some((id_node.clone(), Node::new(item.span, Value::Map(rest))))
        })
        .collect();
    Node::new(span, Value::Map(entries))
}

fn load_file_with(
    path: &Path,
    dags_root: &Path,
    defaults: &DefaultsCache,
    options: &LoadOptions,
    env: &minijinja::Environment<'static>,
) -> LoadedFile {
    let relative_path = relative(path, dags_root);
    let mut file = LoadedFile {
        path: path.to_path_buf(),
        relative_path: relative_path.clone(),
        source_hash: String::new(),
        source: String::new(),
        dags: Vec::new(),
        diagnostics: Vec::new(),
        dependencies: Vec::new(),
        dataset_file: false,
    };
    let source = match read_source(path, dags_root, options.allow_external_links) {
        Ok(s) => s,
        Err(d) => {
            file.diagnostics.push(d);
            return file;
        }
    };
    file.source_hash = source_hash(source.as_bytes());
    let root = match yaml::parse(&source, 0, options.limits) {
        Ok(root) => root,
        Err(e) => {
            file.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                line: e.span.line,
                col: e.span.col,
                message: e.message,
            });
            file.source = source;
            return file;
        }
    };
    file.source = source;
    // dag-factory's dataset definitions (`datasets: [{name, uri}]`), which DAG files refer to
    // with `file:`: not a DAG file, and not a broken one.
    if crate::assets::is_dataset_file(&root) {
        file.dataset_file = true;
        if let Err((span, message)) = crate::assets::dataset_definitions(&root) {
            file.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                line: span.line,
                col: span.col,
                message,
            });
        }
        return file;
    }

    // File table: 0 is this file, then its defaults files.
    let mut table: Vec<PathBuf> = vec![path.to_path_buf()];
    let mut base: Option<Node> = None;
    let mut defaults_broken = false;
    for (defaults_path, parsed) in defaults.chain(path) {
        match parsed {
            Ok(node) => {
                let id = FileId::try_from(table.len()).unwrap_or(0);
                table.push(defaults_path.clone());
                let node = normalize_lists(&renumber(node, id));
                if !matches!(node.value, Value::Map(_) | Value::Null) {
                    file.diagnostics.push(Diagnostic {
                        severity: Severity::Error,
                        file: defaults_path.clone(),
                        line: node.span.line,
                        col: node.span.col,
                        message: format!("defaults file must be a mapping, found {}", node.kind()),
                    });
                    continue;
                }
                base = Some(match base {
                    Some(b) => deep_merge(&b, &node),
                    None => node,
                });
            }
            Err(d) => {
                // Without its defaults a DAG could run with the wrong owner, retries or
                // schedule; better not to load it at all.
                file.diagnostics.push(d.clone());
                defaults_broken = true;
            }
        }
    }
    if defaults_broken {
        file.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: "not loaded: a defaults file that applies to it has errors".into(),
        });
        return file;
    }

    let entries = match &root.value {
        Value::Map(entries) => entries.as_slice(),
        Value::Null => return file,
        _ => {
            file.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                line: root.span.line,
                col: root.span.col,
                message: format!(
                    "a DAG file maps dag ids to DAG specs; found {} at the top level",
                    root.kind()
                ),
            });
            return file;
        }
    };
    if let Some((_, default_block)) = entries.iter().find(|(k, _)| k.as_str() == Some("default")) {
        let block = normalize_lists(default_block);
        base = Some(match base {
            Some(b) => deep_merge(&b, &block),
            None => block,
        });
    }
    let mut ctx = Ctx::new(&table, dags_root, &relative_path, env, options.now);
    for (key, value) in entries {
        // `default` is merged into every DAG; `x-...` keys hold YAML anchors for reuse (as in
        // docker-compose files) and are not DAGs.
        if key.as_str() == Some("default") || key.as_str().is_some_and(|k| k.starts_with("x-")) {
            continue;
        }
        let dag_node = normalize_lists(value);
        let merged = match (&base, &dag_node.value) {
            (Some(b), Value::Map(_)) => deep_merge(b, &dag_node),
            _ => dag_node,
        };
        if let Some(dag) = build_dag(&mut ctx, key, &merged) {
            file.dags.push(dag);
        }
    }
    file.diagnostics.append(&mut ctx.diagnostics);
    file.dependencies = std::mem::take(&mut ctx.dependencies);
    cap_diagnostics(&mut file);
    file
}

/// Diagnostics kept per file: enough to fix a file, bounded so that a file that multiplies
/// errors through anchors cannot flood the output or memory.
pub const MAX_DIAGNOSTICS_PER_FILE: usize = 100;

fn cap_diagnostics(file: &mut LoadedFile) {
    if file.diagnostics.len() <= MAX_DIAGNOSTICS_PER_FILE {
        return;
    }
    let dropped = file.diagnostics.len() - MAX_DIAGNOSTICS_PER_FILE;
    let errors_dropped = file.diagnostics[MAX_DIAGNOSTICS_PER_FILE..]
        .iter()
        .filter(|d| d.is_error())
        .count();
    file.diagnostics.truncate(MAX_DIAGNOSTICS_PER_FILE);
    file.diagnostics.push(Diagnostic {
        severity: if errors_dropped > 0 {
            Severity::Error
        } else {
            Severity::Warning
        },
        file: file.path.clone(),
        line: 1,
        col: 1,
        message: format!("... and {dropped} more problem(s) in this file not shown"),
    });
}
