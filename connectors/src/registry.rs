//! Maps the system name in `CREATE SOURCE ... FROM NAME` and `CREATE SINK ... INTO NAME` to
//! its connector.

use std::sync::Arc;

use changeflow_engine::connector::ConnectorRegistry;

/// Every connector this build includes, for `run`, `check` and the REPL: FILE sinks write
/// where they are told, credentials may come from the environment and files.
pub fn registry() -> ConnectorRegistry {
    let mut registry = ConnectorRegistry::default();
    registry.register_source("datagen", Arc::new(crate::datagen::DatagenConnector));
    register_postgres(&mut registry, HostCredentials::Allowed);
    registry.register_sink("file", Arc::new(crate::file::FileSinkConnector::unconfined()));
    registry
}

/// Every connector, confined for clients of `changeflow serve`: FILE sinks write only under
/// `directory`, and credentials come from the environment and files only when
/// `host_credentials` allows it.
pub fn registry_for_server(
    directory: crate::file::SinkDirectory,
    host_credentials: HostCredentials,
) -> ConnectorRegistry {
    let mut registry = registry();
    registry.register_sink("file", Arc::new(crate::file::FileSinkConnector::confined(directory)));
    register_postgres(&mut registry, host_credentials);
    registry
}

/// Whether options may read credentials from the server's environment and files
/// (`password_env`, `password_file`). Refused to clients of `changeflow serve` unless the
/// operator allows it: they could otherwise send any of the server's variables or files to
/// a database of their choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCredentials {
    Allowed,
    Refused,
}

#[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
fn register_postgres(registry: &mut ConnectorRegistry, host_credentials: HostCredentials) {
    #[cfg(feature = "postgres")]
    {
        registry.register_source("postgres", Arc::new(crate::postgres::PostgresConnector::new(host_credentials)));
        registry.register_sink("postgres", Arc::new(crate::postgres::PostgresSinkConnector::new(host_credentials)));
    }
}
