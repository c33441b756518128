//! A directory per test process for the files tests and benchmarks write, cleaned of the
//! directories of earlier runs.

/// This test process's directory for the files its tests write (SQL files, server logs,
/// certificates): `changeflow-it-PID` under the system temp dir. The first call removes the
/// directories earlier runs left whose process is gone, so runs do not pile files up there.
pub fn scratch_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let temp = std::env::temp_dir();
        for entry in std::fs::read_dir(&temp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|name| name.strip_prefix("changeflow-it-")) else { continue };
            if !std::path::Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = temp.join(format!("changeflow-it-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
}
