//! The FILE sink: `CREATE SINK s FROM relation INTO FILE WITH (path = '...', format =
//! 'debezium-json')`. Messages are JSON lines (see `format`), appended per epoch; the file
//! is rotated by size at epoch boundaries (`path` is renamed `path.1`, `path.2`, ...);
//! `path = '-'` writes to standard output (under `changeflow serve` paths are confined to
//! the sink directory, see `confine`). At each checkpoint the file is fsynced and its
//! position (rotations, offset) kept; a restart cuts the file back to that position and
//! writes what followed again, so each message is in the file exactly once.

mod confine;
mod sink;

pub use confine::SinkDirectory;
pub use sink::FileSinkConnector;
