//! `FROM DATAGEN`: generated data for demos, tests and benchmarks. The `sessions` scenario
//! models a booking system: experiences, sessions of an experience (with capacity and seats
//! sold) and orders, arriving and changing at a given rate. Seeded, so runs repeat exactly.

mod config;
mod scenario;
mod source;

pub use config::DatagenConfig;
pub use scenario::SessionsScenario;
pub use source::DatagenConnector;
