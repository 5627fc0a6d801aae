//! Writing a DAG bundle (the dags folder as the database holds it) to a worker's disk.

use std::io::Write as _;
use std::path::{Component, Path};

/// Writes `files` (relative path, executable, content) into `target`, whole or not at all:
/// into a private temporary folder beside it, then renamed into place. A path that is
/// absolute or climbs out (`..`) is refused: the bundle must stay inside its folder.
pub(crate) fn write(target: &Path, files: &[(String, bool, Vec<u8>)]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let parent = target
        .parent()
        .ok_or_else(|| std::io::Error::other("a bundle folder needs a parent"))?;
    std::fs::create_dir_all(parent)?;
    let temp = parent.join(format!(
        ".{}.tmp-{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&temp);
    std::fs::create_dir_all(&temp)?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o700))?;
    for (path, executable, content) in files {
        let rel = Path::new(path);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            let _ = std::fs::remove_dir_all(&temp);
            return Err(std::io::Error::other(format!(
                "bundle path `{path}` leaves the bundle"
            )));
        }
        let file = temp.join(rel);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mode = if *executable { 0o700 } else { 0o600 };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&file)?;
        out.write_all(content)?;
    }
    match std::fs::rename(&temp, target) {
        Ok(()) => Ok(()),
        // Another worker process sharing the folder wrote it first: theirs is the same.
        Err(_) if target.is_dir() => {
            let _ = std::fs::remove_dir_all(&temp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&temp);
            Err(e)
        }
    }
}
