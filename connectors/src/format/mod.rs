//! Sink message formats: `json` (the row as it is now; a delete as `"__deleted": true` with
//! the old row), `debezium-json` (Debezium's `before` / `after` / `source` / `op` / `ts_ms`
//! envelope), `outbox` (the payload column as the message, with key and event type from
//! named columns, like Debezium's outbox event router; only inserts make events) and
//! `transaction-json` (one message per epoch listing its changes). Each message is one line
//! of JSON text, fields in column order. Messages for a dead-letter sink carry `__error`.

mod value;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use changeflow_engine::connector::{SinkEpoch, SinkTarget};
use changeflow_engine::error::{EngineError, Result};
use serde_json::Value;

pub use changeflow_engine::events::{Event, events};
pub use value::{ValueOptions, json_text, json_value};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Json,
    Debezium,
    Outbox { payload: usize, key: Option<usize>, event_type: Option<usize> },
    Transaction,
}

/// Turns epochs into messages.
#[derive(Debug, Clone)]
pub struct Encoder {
    kind: Kind,
    values: ValueOptions,
    target: SinkTarget,
}

/// One message: its key (the row's key columns as JSON, when the relation has a key) and
/// its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub key: Option<String>,
    pub body: String,
    /// The event's row in the epoch's change (the first one, for a transaction message).
    pub row: usize,
}

/// Reads the format options (`format`, `decimal_handling`, `json_columns`, and the outbox
/// columns), removing them from `options` so the sink can refuse what is left unknown.
pub fn take_encoder(options: &mut BTreeMap<String, String>, target: &SinkTarget, default: &str) -> Result<Encoder> {
    let bad = |message: String| EngineError::Connector(format!("sink \"{}\": {message}", target.sink));
    let column = |options: &mut BTreeMap<String, String>, key: &str| -> Result<Option<usize>> {
        match options.remove(key) {
            None => Ok(None),
            Some(name) => {
                let name = name.trim().to_ascii_lowercase();
                target
                    .schema
                    .index_of(&name)
                    .map(Some)
                    .map_err(|_| bad(format!("{key} '{name}' is not a column of \"{}\"", target.relation)))
            }
        }
    };
    let format = options.remove("format").unwrap_or_else(|| default.to_string()).to_ascii_lowercase();
    let kind = match format.as_str() {
        "json" => Kind::Json,
        "debezium-json" | "debezium" => Kind::Debezium,
        "transaction-json" => Kind::Transaction,
        "outbox" => {
            let payload = column(options, "payload_column")?
                .ok_or_else(|| bad("format 'outbox' needs payload_column = '<column>'".into()))?;
            Kind::Outbox { payload, key: column(options, "key_column")?, event_type: column(options, "type_column")? }
        }
        other => {
            return Err(bad(format!("unknown format '{other}'; use json, debezium-json, outbox or transaction-json")));
        }
    };
    let decimals_as_numbers = match options.remove("decimal_handling").as_deref() {
        None | Some("string") => false,
        Some("number") => true,
        Some(other) => return Err(bad(format!("decimal_handling is 'string' or 'number', not '{other}'"))),
    };
    let mut json_columns = Vec::new();
    if let Some(list) = options.remove("json_columns") {
        for name in list.split(',').map(|c| c.trim().to_ascii_lowercase()).filter(|c| !c.is_empty()) {
            if target.schema.index_of(&name).is_err() {
                return Err(bad(format!(
                    "json_columns names '{name}', which is not a column of \"{}\"",
                    target.relation
                )));
            }
            json_columns.push(name);
        }
    }
    if let Kind::Outbox { payload, .. } = kind {
        // The payload is the message: embedded as JSON.
        json_columns.push(target.schema.field(payload).name().clone());
    }
    Ok(Encoder { kind, values: ValueOptions { decimals_as_numbers, json_columns }, target: target.clone() })
}

/// Whether the sink delivers a `changes(...)` stream (its rows are events already).
fn is_change_stream(target: &SinkTarget) -> bool {
    let names: Vec<&str> = target.schema.fields().iter().map(|f| f.name().as_str()).collect();
    changeflow_sql::change_stream::base_of(&target.relation).is_some() && names == ["op", "before", "after", "source"]
}

/// Writes a JSON object with fields in the given order (values already JSON text).
fn object(fields: &[(&str, String)]) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String((*name).to_string()).to_string());
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A PostgreSQL LSN (`16/B374D848`) as a number, as Debezium writes it.
fn lsn_number(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

impl Encoder {
    pub fn target(&self) -> &SinkTarget {
        &self.target
    }

    /// A row as a JSON object, columns in order.
    pub fn row(&self, epoch: &SinkEpoch, row: usize) -> String {
        let data = &epoch.change.data;
        let fields: Vec<(&str, String)> = data
            .schema_ref()
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name().as_str(), json_text(data.column(i).as_ref(), row, f.name(), &self.values)))
            .collect();
        object(&fields)
    }

    fn key(&self, epoch: &SinkEpoch, row: usize) -> Option<String> {
        if self.target.key.is_empty() {
            return None;
        }
        let data = &epoch.change.data;
        let fields: Vec<(&str, String)> = self
            .target
            .key
            .iter()
            .map(|&i| {
                let name = data.schema_ref().field(i).name().as_str();
                (name, json_value(data.column(i).as_ref(), row, name, &self.values).to_string())
            })
            .collect();
        Some(object(&fields))
    }

    fn source(&self, epoch: &SinkEpoch, ts_ms: u64) -> String {
        let (db, lsn) = match &epoch.origin {
            Some(origin) => (origin.source.as_str(), lsn_number(&origin.progress.0)),
            None => ("changeflow", None),
        };
        let transaction = epoch.origin.as_ref().and_then(|o| o.transaction);
        let text = |s: &str| Value::String(s.to_string()).to_string();
        // The upstream table when the relation mirrors one; else the relation (the base of
        // a change stream) in the source's (or changeflow's) database.
        let relation = changeflow_sql::change_stream::base_of(&self.target.relation).unwrap_or(&self.target.relation);
        let (db, schema, table) = match &self.target.upstream {
            Some(upstream) => (upstream.database.as_str(), upstream.schema.as_str(), upstream.table.as_str()),
            None => (db, "public", relation),
        };
        object(&[
            ("version", text(env!("CARGO_PKG_VERSION"))),
            ("connector", text("changeflow")),
            ("name", text(&self.target.sink)),
            // Debezium's source.ts_ms is when the change was made upstream.
            ("ts_ms", transaction.map_or(ts_ms, |t| (t.commit_micros / 1000).max(0) as u64).to_string()),
            ("snapshot", text(if epoch.snapshot { "true" } else { "false" })),
            ("db", text(db)),
            ("sequence", "null".into()),
            ("schema", text(schema)),
            ("table", text(table)),
            ("txId", transaction.map_or("null".into(), |t| t.id.to_string())),
            ("lsn", lsn.map_or("null".into(), |l| l.to_string())),
            ("xmin", "null".into()),
            ("epoch", epoch.epoch.to_string()),
        ])
    }

    fn error(&self, epoch: &SinkEpoch, row: usize) -> Option<String> {
        epoch.errors.as_ref()?.get(row).map(|e| Value::String(e.clone()).to_string())
    }

    /// The messages of one epoch, in order.
    pub fn encode(&self, epoch: &SinkEpoch) -> Vec<Message> {
        let ts_ms = now_ms();
        if self.kind == Kind::Debezium && is_change_stream(&self.target) {
            return self.encode_stream(epoch, ts_ms);
        }
        let events = events(epoch, &self.target.key);
        let row_or_null = |row: Option<usize>| row.map_or("null".to_string(), |r| self.row(epoch, r));
        let op = |e: &Event| Value::String(e.op.to_string()).to_string();
        match &self.kind {
            Kind::Transaction => {
                if events.is_empty() {
                    return Vec::new();
                }
                let changes: Vec<String> = events
                    .iter()
                    .map(|e| {
                        let mut fields =
                            vec![("op", op(e)), ("before", row_or_null(e.before)), ("after", row_or_null(e.after))];
                        if let Some(error) = self.error(epoch, e.row()) {
                            fields.push(("__error", error));
                        }
                        object(&fields)
                    })
                    .collect();
                let body = object(&[
                    ("epoch", epoch.epoch.to_string()),
                    ("source", self.source(epoch, ts_ms)),
                    ("ts_ms", ts_ms.to_string()),
                    ("changes", format!("[{}]", changes.join(","))),
                ]);
                vec![Message { key: None, body, row: events[0].row() }]
            }
            _ => events
                .iter()
                .filter_map(|e| {
                    let body = self.event_body(epoch, e, ts_ms)?;
                    Some(Message { key: self.key(epoch, e.row()), body, row: e.row() })
                })
                .collect(),
        }
    }

    /// Debezium envelopes of `changes(...)` rows: their own `op`, `before` and `after`.
    fn encode_stream(&self, epoch: &SinkEpoch, ts_ms: u64) -> Vec<Message> {
        let data = &epoch.change.data;
        let column = |i: usize, row: usize| json_text(data.column(i).as_ref(), row, "", &self.values);
        (0..data.num_rows())
            .flat_map(|row| std::iter::repeat_n(row, epoch.change.weights[row].max(0) as usize))
            .map(|row| {
                let mut fields = vec![
                    ("before", column(1, row)),
                    ("after", column(2, row)),
                    ("source", self.source(epoch, ts_ms)),
                    ("op", column(0, row)),
                    ("ts_ms", ts_ms.to_string()),
                    ("transaction", "null".into()),
                ];
                fields.extend(self.error(epoch, row).map(|error| ("__error", error)));
                Message { key: None, body: object(&fields), row }
            })
            .collect()
    }

    /// The message of one event (`None` when the format makes none of it).
    fn event_body(&self, epoch: &SinkEpoch, e: &Event, ts_ms: u64) -> Option<String> {
        let row = e.row();
        let row_or_null = |row: Option<usize>| row.map_or("null".to_string(), |r| self.row(epoch, r));
        let error = self.error(epoch, row);
        Some(match &self.kind {
            Kind::Transaction => return None,
            Kind::Debezium => {
                let mut fields = vec![
                    ("before", row_or_null(e.before)),
                    ("after", row_or_null(e.after)),
                    ("source", self.source(epoch, ts_ms)),
                    ("op", Value::String(e.op.to_string()).to_string()),
                    ("ts_ms", ts_ms.to_string()),
                    ("transaction", "null".into()),
                ];
                fields.extend(error.map(|error| ("__error", error)));
                object(&fields)
            }
            Kind::Json => {
                let row_json = self.row(epoch, row);
                let mut extra = format!(",\"__deleted\":{}", e.op == 'd');
                if let Some(error) = error {
                    extra.push_str(&format!(",\"__error\":{error}"));
                }
                // The row's object with the extra fields appended.
                format!("{}{extra}}}", &row_json[..row_json.len() - 1])
            }
            Kind::Outbox { payload, key, event_type } => {
                if e.op != 'c' && e.op != 'r' {
                    return None;
                }
                let data = &epoch.change.data;
                let value = |i: usize| {
                    let name = data.schema_ref().field(i).name();
                    json_value(data.column(i).as_ref(), row, name, &self.values).to_string()
                };
                let mut fields = vec![];
                fields.extend(key.map(|k| ("key", value(k))));
                fields.extend(event_type.map(|t| ("type", value(t))));
                fields.push(("payload", value(*payload)));
                fields.extend(error.map(|error| ("__error", error)));
                object(&fields)
            }
        })
    }
}
