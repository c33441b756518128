//! Options of `CREATE SOURCE ... FROM DATAGEN WITH (...)`, with defaults and validation.

use std::collections::BTreeMap;

use changeflow_engine::EngineError;

#[derive(Debug, Clone, PartialEq)]
pub struct DatagenConfig {
    /// Only `sessions` exists.
    pub scenario: String,
    /// Changes per second.
    pub rate: u64,
    /// Transactions per second; each carries `rate / tps` changes.
    pub transactions_per_second: u64,
    pub seed: u64,
    pub experiences: u32,
    /// Stop after this many transactions (none: run until dropped).
    pub limit: Option<u64>,
    /// Prefix for relation names (`prefix = 'gen_'` gives `gen_sessions`).
    pub prefix: String,
}

impl DatagenConfig {
    pub fn from_options(source: &str, options: &BTreeMap<String, String>) -> Result<Self, EngineError> {
        let known = ["scenario", "rate", "tps", "seed", "experiences", "limit", "prefix"];
        for key in options.keys() {
            if !known.contains(&key.as_str()) {
                return Err(EngineError::Connector(format!(
                    "source \"{source}\": unknown DATAGEN option \"{key}\" (known: {})",
                    known.join(", ")
                )));
            }
        }
        let number = |key: &str, default: u64| -> Result<u64, EngineError> {
            match options.get(key) {
                None => Ok(default),
                Some(text) => text.parse::<u64>().map_err(|_| {
                    EngineError::Connector(format!(
                        "source \"{source}\": option {key} = '{text}' is not a whole number"
                    ))
                }),
            }
        };
        let scenario = options.get("scenario").cloned().unwrap_or_else(|| "sessions".into());
        if scenario != "sessions" {
            return Err(EngineError::Connector(format!(
                "source \"{source}\": unknown DATAGEN scenario '{scenario}' (available: sessions)"
            )));
        }
        let rate = number("rate", 100)?;
        let transactions_per_second = number("tps", 10)?.max(1);
        let experiences = number("experiences", 20)?;
        if experiences == 0 || experiences > 1_000_000 {
            return Err(EngineError::Connector(format!(
                "source \"{source}\": experiences must be between 1 and 1000000"
            )));
        }
        Ok(Self {
            scenario,
            rate,
            transactions_per_second,
            seed: number("seed", 42)?,
            experiences: experiences as u32,
            limit: options.get("limit").map(|_| number("limit", 0)).transpose()?,
            prefix: options.get("prefix").cloned().unwrap_or_default(),
        })
    }
}
