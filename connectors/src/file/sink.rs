//! The FILE sink's connector and writer (see the module documentation).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use changeflow_engine::connector::{Rejected, SinkConnector, SinkEpoch, SinkFailure, SinkTarget, SinkWriter};
use changeflow_engine::error::{EngineError, Result};

use super::confine::SinkDirectory;
use crate::format::{Encoder, take_encoder};

const DEFAULT_ROTATE_BYTES: u64 = 128 * 1024 * 1024;

/// The FILE connector; confined to a [`SinkDirectory`] under `changeflow serve`.
#[derive(Default)]
pub struct FileSinkConnector {
    directory: Option<SinkDirectory>,
}

impl FileSinkConnector {
    /// Writes wherever a sink's path says (the operator's own `run` and REPL).
    pub fn unconfined() -> Self {
        Self { directory: None }
    }

    /// Writes only inside `directory`.
    pub fn confined(directory: SinkDirectory) -> Self {
        Self { directory: Some(directory) }
    }
}

struct FileConfig {
    path: Option<PathBuf>,
    rotate_bytes: u64,
    encoder: Encoder,
}

fn config(
    options: &BTreeMap<String, String>,
    target: &SinkTarget,
    directory: Option<&SinkDirectory>,
) -> Result<FileConfig> {
    let bad = |message: String| EngineError::Connector(format!("sink \"{}\": {message}", target.sink));
    let mut options = options.clone();
    let encoder = take_encoder(&mut options, target, "json")?;
    let path =
        options.remove("path").ok_or_else(|| bad("INTO FILE needs path = '<file>' (or '-' for stdout)".into()))?;
    let rotate_bytes = match options.remove("rotate_bytes") {
        Some(n) => n
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(format!("rotate_bytes '{n}' is not a positive number")))?,
        None => DEFAULT_ROTATE_BYTES,
    };
    if let Some(unknown) = options.keys().next() {
        return Err(bad(format!(
            "unknown option '{unknown}' for INTO FILE; known: path, format, rotate_bytes, key, decimal_handling, \
             json_columns, payload_column, key_column, type_column"
        )));
    }
    let path = match directory {
        Some(directory) => Some(directory.resolve(&path).map_err(bad)?),
        None => (path != "-").then(|| PathBuf::from(path)),
    };
    Ok(FileConfig { path, rotate_bytes, encoder })
}

#[async_trait]
impl SinkConnector for FileSinkConnector {
    fn validate(&self, options: &BTreeMap<String, String>, target: &SinkTarget) -> Result<()> {
        config(options, target, self.directory.as_ref()).map(|_| ())
    }

    async fn open(
        &self,
        options: &BTreeMap<String, String>,
        target: &SinkTarget,
        resume: Option<String>,
    ) -> Result<Box<dyn SinkWriter>> {
        let config = config(options, target, self.directory.as_ref())?;
        let Some(path) = config.path else {
            return Ok(Box::new(FileWriter {
                encoder: config.encoder,
                output: None,
                rotate_bytes: config.rotate_bytes,
            }));
        };
        let output = Output::open(path, resume.as_deref()).map_err(|e| EngineError::Connector(e.to_string()))?;
        Ok(Box::new(FileWriter { encoder: config.encoder, output: Some(output), rotate_bytes: config.rotate_bytes }))
    }
}

/// The file being written and where it stands.
struct Output {
    path: PathBuf,
    file: File,
    /// Bytes in the current file, and files rotated away so far.
    offset: u64,
    rotations: u64,
}

fn io(what: &str, path: &Path, error: std::io::Error) -> SinkFailure {
    SinkFailure::Transient(format!("{what} {}: {error}", path.display()))
}

fn rotated(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl Output {
    /// Opens the file: fresh (an earlier file and its rotations replaced), or cut back to a
    /// checkpoint's `rotations=N,offset=M`.
    fn open(path: PathBuf, resume: Option<&str>) -> Result<Self, SinkFailure> {
        let (rotations, offset) = match resume {
            Some(position) => parse_position(position)
                .ok_or_else(|| SinkFailure::Fatal(format!("cannot resume {} from '{position}'", path.display())))?,
            None => (0, 0),
        };
        // Rotations made after the position: the first holds the file as it was then.
        if rotated(&path, rotations + 1).exists() {
            fs::rename(rotated(&path, rotations + 1), &path).map_err(|e| io("restoring", &path, e))?;
        }
        let mut n = rotations + 2;
        while rotated(&path, n).exists() {
            fs::remove_file(rotated(&path, n)).map_err(|e| io("removing", &path, e))?;
            n += 1;
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| io("creating the directory of", &path, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io("opening", &path, e))?;
        let length = file.metadata().map_err(|e| io("reading", &path, e))?.len();
        if length < offset {
            return Err(SinkFailure::Fatal(format!(
                "{} holds {length} bytes, fewer than the {offset} the checkpoint saw written; it was changed by \
                 something else. Move it away and DROP and CREATE the sink to write it anew",
                path.display()
            )));
        }
        file.set_len(offset).map_err(|e| io("truncating", &path, e))?;
        let mut output = Self { path, file, offset, rotations };
        output.seek_end()?;
        Ok(output)
    }

    fn seek_end(&mut self) -> Result<(), SinkFailure> {
        use std::io::Seek;
        self.file.seek(std::io::SeekFrom::Start(self.offset)).map_err(|e| io("seeking", &self.path, e))?;
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), SinkFailure> {
        if let Err(error) = self.file.write_all(bytes) {
            // Leave no partial epoch behind: the retry writes it whole.
            let _ = self.file.set_len(self.offset);
            let _ = self.seek_end();
            return Err(io("writing", &self.path, error));
        }
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), SinkFailure> {
        self.file.sync_all().map_err(|e| io("syncing", &self.path, e))?;
        let next = rotated(&self.path, self.rotations + 1);
        fs::rename(&self.path, &next).map_err(|e| io("rotating", &self.path, e))?;
        self.file = File::create(&self.path).map_err(|e| io("creating", &self.path, e))?;
        self.rotations += 1;
        self.offset = 0;
        Ok(())
    }
}

fn parse_position(text: &str) -> Option<(u64, u64)> {
    let mut rotations = None;
    let mut offset = None;
    for part in text.split(',') {
        match part.split_once('=')? {
            ("rotations", n) => rotations = n.parse().ok(),
            ("offset", n) => offset = n.parse().ok(),
            _ => return None,
        }
    }
    Some((rotations?, offset?))
}

struct FileWriter {
    encoder: Encoder,
    /// `None` writes to standard output.
    output: Option<Output>,
    rotate_bytes: u64,
}

#[async_trait]
impl SinkWriter for FileWriter {
    async fn write_epoch(&mut self, epoch: &SinkEpoch, _skip_rejected: bool) -> Result<Vec<Rejected>, SinkFailure> {
        let mut bytes = Vec::new();
        for message in self.encoder.encode(epoch) {
            bytes.extend_from_slice(message.body.as_bytes());
            bytes.push(b'\n');
        }
        match &mut self.output {
            None => {
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(&bytes)
                    .and_then(|_| stdout.flush())
                    .map_err(|e| SinkFailure::Transient(format!("writing to standard output: {e}")))?;
            }
            Some(output) => {
                output.append(&bytes)?;
                if output.offset >= self.rotate_bytes {
                    output.rotate()?;
                }
            }
        }
        Ok(Vec::new())
    }

    async fn flush(&mut self) -> Result<Option<String>, SinkFailure> {
        let Some(output) = &mut self.output else { return Ok(None) };
        output.file.sync_data().map_err(|e| io("syncing", &output.path, e))?;
        Ok(Some(format!("rotations={},offset={}", output.rotations, output.offset)))
    }
}
