//! The dags folder as a DAG bundle (see `flow_store::bundles`): every regular file under it,
//! so that a remote worker finds a python task's modules, a `.sh` or `.sql` template, exactly
//! as the scheduler saw them, with no shared file system.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

/// Files larger than this are left out of the bundle (and said so once).
const MAX_FILE: u64 = 10 * 1024 * 1024;
/// A bundle stops growing here: the rest is left out, and said so.
const MAX_TOTAL: u64 = 256 * 1024 * 1024;

/// A file of the folder: its path relative to the root (`/`-separated), stat and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub rel: String,
    pub abs: PathBuf,
    pub mtime: SystemTime,
    pub len: u64,
    pub executable: bool,
}

/// Every regular file under `root` that belongs in the bundle, sorted by path: hidden
/// entries, `__pycache__` and compiled Python are left out, and so are links that lead
/// outside the folder unless `allow_external` (as for DAG files).
pub(crate) fn walk(root: &Path, allow_external: bool) -> (Vec<Entry>, Vec<String>) {
    use std::os::unix::fs::PermissionsExt as _;
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let canonical_root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let mut stack = vec![root.to_path_buf()];
    let mut total = 0u64;
    while let Some(dir) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for item in read.flatten() {
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "__pycache__" || name.ends_with(".pyc") {
                continue;
            }
            let path = item.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if item.file_type().is_ok_and(|t| t.is_symlink()) && !allow_external {
                let inside = path
                    .canonicalize()
                    .is_ok_and(|c| c.starts_with(&canonical_root));
                if !inside {
                    continue;
                }
            }
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            if meta.len() > MAX_FILE || total + meta.len() > MAX_TOTAL {
                skipped.push(rel);
                continue;
            }
            total += meta.len();
            entries.push(Entry {
                rel,
                abs: path,
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                len: meta.len(),
                executable: meta.permissions().mode() & 0o111 != 0,
            });
        }
    }
    entries.sort_by(|a, b| a.rel.cmp(&b.rel));
    (entries, skipped)
}

/// Hex SHA-256.
pub(crate) fn hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bundle's name: the hash of its manifest (path, content hash, mode per file).
pub(crate) fn bundle_hash(files: &[flow_store::BundleFile]) -> String {
    let mut manifest = String::new();
    for f in files {
        manifest.push_str(&f.path);
        manifest.push('\0');
        manifest.push_str(&f.blob_hash);
        manifest.push('\0');
        manifest.push(if f.executable { 'x' } else { '-' });
        manifest.push('\n');
    }
    hash(manifest.as_bytes())
}
