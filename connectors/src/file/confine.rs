//! Where a FILE sink may write. Under `changeflow serve`, whose clients are not the
//! operator, a sink's path is confined to one directory (`--sink-dir`): a relative path is
//! taken inside it, an absolute one must lie inside it, `..` is refused, and symbolic links
//! are followed before the check so none leads out. Standard output (`path = '-'`) belongs
//! to the operator's own `changeflow run` and REPL. Unconfined, a path is used as given.

use std::path::{Component, Path, PathBuf};

/// The directory FILE sinks write under, when they are confined.
#[derive(Debug, Clone)]
pub struct SinkDirectory {
    dir: PathBuf,
}

impl SinkDirectory {
    /// The sink directory `dir` (made when a sink first needs it); one that holds the data
    /// directory, whose files a sink must never touch, is refused.
    pub fn new(dir: &Path, data_dir: Option<&Path>) -> std::io::Result<Self> {
        let dir = real_path(dir)?;
        if let Some(data_dir) = data_dir
            && real_path(data_dir)?.starts_with(&dir)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the sink directory {} holds the data directory {}: give --sink-dir a directory of its own",
                    dir.display(),
                    data_dir.display()
                ),
            ));
        }
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file a sink's `path` option names, or why it may not be written.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        if path == "-" {
            return Err("path = '-' (standard output) is for `changeflow run` and the REPL; under `changeflow serve` \
                 name a file in the sink directory"
                .into());
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| format!("cannot create the sink directory {}: {e}", self.dir.display()))?;
        }
        let given = Path::new(path);
        if given.components().any(|c| c == Component::ParentDir) {
            return Err(format!("path '{path}' contains '..'; name a file inside the sink directory"));
        }
        let joined = if given.is_absolute() { given.to_path_buf() } else { self.dir.join(given) };
        let resolved = resolve_links(&joined);
        if !resolved.starts_with(&self.dir) || resolved == self.dir {
            return Err(format!(
                "path '{path}' is outside the sink directory {} (--sink-dir); FILE sinks of `changeflow serve` write \
                 only there",
                self.dir.display()
            ));
        }
        Ok(joined)
    }
}

/// A path made absolute, with the symbolic links of its existing part resolved.
fn real_path(path: &Path) -> std::io::Result<PathBuf> {
    Ok(resolve_links(&std::path::absolute(path)?))
}

/// The path with its deepest existing ancestor's symbolic links resolved (the part that
/// does not exist yet cannot be a link).
fn resolve_links(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |acc, part: &std::ffi::OsString| acc.join(part));
        }
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("changeflow-confine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn paths_stay_inside_the_sink_directory() {
        let base = scratch("paths");
        let sinks = SinkDirectory::new(&base.join("sinks"), None).expect("sink dir");
        let inside = sinks.path().join("out/events.jsonl");
        assert_eq!(sinks.resolve("out/events.jsonl").expect("relative"), inside);
        assert_eq!(sinks.resolve(inside.to_str().expect("utf-8")).expect("absolute inside"), inside);
        for (path, why) in [
            ("-", "standard output"),
            ("../escape.jsonl", "'..'"),
            ("out/../../escape", "'..'"),
            ("/etc/passwd", "outside the sink directory"),
        ] {
            let error = sinks.resolve(path).expect_err(path);
            assert!(error.contains(why), "{path}: {error}");
        }
        // A link inside that leads out is followed before the check.
        std::os::unix::fs::symlink(&base, sinks.path().join("link")).expect("symlink");
        let error = sinks.resolve("link/escape.jsonl").expect_err("through a link");
        assert!(error.contains("outside the sink directory"), "{error}");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_sink_directory_holding_the_data_directory_is_refused() {
        let base = scratch("data");
        std::fs::create_dir_all(base.join("data")).expect("data dir");
        let error = SinkDirectory::new(&base, Some(&base.join("data"))).expect_err("holds the data dir");
        assert!(error.to_string().contains("holds the data directory"), "{error}");
        assert!(SinkDirectory::new(&base.join("data/sinks"), Some(&base.join("data"))).is_ok());
        let _ = std::fs::remove_dir_all(&base);
    }
}
