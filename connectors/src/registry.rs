//! Maps the system name in `CREATE SOURCE ... FROM NAME` and `CREATE SINK ... INTO NAME` to
//! its connector.

use std::sync::Arc;

use changeflow_engine::connector::ConnectorRegistry;

/// Every connector this build includes.
pub fn registry() -> ConnectorRegistry {
    let mut registry = ConnectorRegistry::default();
    registry.register_source("datagen", Arc::new(crate::datagen::DatagenConnector));
    #[cfg(feature = "postgres")]
    registry.register_source("postgres", Arc::new(crate::postgres::PostgresConnector));
    #[cfg(feature = "postgres")]
    registry.register_sink("postgres", Arc::new(crate::postgres::PostgresSinkConnector));
    registry.register_sink("file", Arc::new(crate::file::FileSinkConnector::unconfined()));
    registry
}

/// Every connector, with FILE sinks confined to `directory` (for `changeflow serve`).
pub fn registry_with_sink_directory(directory: crate::file::SinkDirectory) -> ConnectorRegistry {
    let mut registry = registry();
    registry.register_sink("file", Arc::new(crate::file::FileSinkConnector::confined(directory)));
    registry
}
