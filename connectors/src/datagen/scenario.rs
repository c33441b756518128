//! The `sessions` scenario: experiences (fixed), sessions and orders that are inserted,
//! updated (seats sold, order status) and deleted. Each call makes one transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use changeflow_engine::connector::SourceRelationDef;
use changeflow_engine::{ChangeBatch, EngineError};
use datafusion::arrow::array::{
    ArrayRef, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// 2026-12-01 00:00:00 UTC in microseconds.
const BASE_TIME: i64 = 1_796_083_200_000_000;
const HOUR: i64 = 3_600_000_000;
const CITIES: [&str; 5] = ["Berlin", "Lisbon", "Oslo", "Rome", "Vienna"];
const KINDS: [&str; 4] = ["Walking tour", "Cooking class", "Boat trip", "Museum visit"];
const STATUSES: [&str; 3] = ["pending", "paid", "cancelled"];

#[derive(Clone)]
struct Session {
    id: i64,
    experience_id: i32,
    starts_at: i64,
    capacity: i32,
    sold: i32,
}

#[derive(Clone)]
struct Order {
    id: i64,
    session_id: i64,
    quantity: i32,
    amount_cents: i128,
    status: &'static str,
    created_at: i64,
}

pub struct SessionsScenario {
    rng: StdRng,
    names: [String; 3],
    schemas: [SchemaRef; 3],
    experiences: u32,
    sessions: BTreeMap<i64, Session>,
    orders: BTreeMap<i64, Order>,
    next_session: i64,
    next_order: i64,
    clock: i64,
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

impl SessionsScenario {
    pub fn new(prefix: &str, seed: u64, experiences: u32) -> Self {
        let schemas = [
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int32, false),
                Field::new("name", DataType::Utf8, true),
                Field::new("city", DataType::Utf8, true),
            ])),
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("experience_id", DataType::Int32, true),
                Field::new("starts_at", ts(), true),
                Field::new("capacity", DataType::Int32, true),
                Field::new("sold", DataType::Int32, true),
            ])),
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("session_id", DataType::Int64, true),
                Field::new("quantity", DataType::Int32, true),
                Field::new("amount", DataType::Decimal128(10, 2), true),
                Field::new("status", DataType::Utf8, true),
                Field::new("created_at", ts(), true),
            ])),
        ];
        Self {
            rng: StdRng::seed_from_u64(seed),
            names: [format!("{prefix}experiences"), format!("{prefix}sessions"), format!("{prefix}orders")],
            schemas,
            experiences,
            sessions: BTreeMap::new(),
            orders: BTreeMap::new(),
            next_session: 1,
            next_order: 1,
            clock: BASE_TIME - 30 * 24 * HOUR,
        }
    }

    pub fn relations(&self) -> Vec<SourceRelationDef> {
        self.names
            .iter()
            .zip(&self.schemas)
            .map(|(name, schema)| SourceRelationDef {
                name: name.clone(),
                schema: Arc::clone(schema),
                primary_key: vec![0],
                expected_rows: 0,
                upstream: None,
            })
            .collect()
    }

    /// The first transaction: every experience.
    pub fn initial(&mut self) -> Result<Vec<(String, ChangeBatch)>, EngineError> {
        let ids: Vec<i32> = (1..=self.experiences as i32).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("{} #{i}", KINDS[*i as usize % KINDS.len()])).collect();
        let cities: Vec<&str> = ids.iter().map(|_| CITIES[self.rng.random_range(0..CITIES.len())]).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(ids)),
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(cities)),
        ];
        let batch = RecordBatch::try_new(Arc::clone(&self.schemas[0]), columns)?;
        Ok(vec![(self.names[0].clone(), ChangeBatch::inserts(batch))])
    }

    /// One transaction of about `changes` row changes.
    pub fn transaction(&mut self, changes: usize) -> Result<Vec<(String, ChangeBatch)>, EngineError> {
        let mut sessions: Vec<(Session, i64)> = Vec::new();
        let mut orders: Vec<(Order, i64)> = Vec::new();
        for _ in 0..changes.max(1) {
            self.clock += self.rng.random_range(1..60_000_000);
            let roll = self.rng.random_range(0..100);
            if roll < 35 || self.sessions.is_empty() {
                let session = Session {
                    id: self.next_session,
                    experience_id: self.rng.random_range(1..=self.experiences as i32),
                    starts_at: BASE_TIME
                        + self.rng.random_range(0..30) * 24 * HOUR
                        + self.rng.random_range(8..22) * HOUR,
                    capacity: self.rng.random_range(4..40),
                    sold: 0,
                };
                self.next_session += 1;
                self.sessions.insert(session.id, session.clone());
                sessions.push((session, 1));
            } else if roll < 70 {
                let session_id = self.pick_session();
                let Some(session) = self.sessions.get(&session_id).cloned() else { continue };
                let quantity = self.rng.random_range(1..4);
                let order = Order {
                    id: self.next_order,
                    session_id,
                    quantity,
                    amount_cents: quantity as i128 * self.rng.random_range(1500..9000),
                    status: "pending",
                    created_at: self.clock,
                };
                self.next_order += 1;
                self.orders.insert(order.id, order.clone());
                orders.push((order, 1));
                let mut updated = session.clone();
                updated.sold = (updated.sold + quantity).min(updated.capacity);
                self.sessions.insert(updated.id, updated.clone());
                sessions.push((session, -1));
                sessions.push((updated, 1));
            } else if roll < 88 {
                if let Some(order) = self.pick_order() {
                    let mut updated = order.clone();
                    updated.status = STATUSES[self.rng.random_range(1..STATUSES.len())];
                    self.orders.insert(updated.id, updated.clone());
                    orders.push((order, -1));
                    orders.push((updated, 1));
                }
            } else if roll < 96 {
                let session_id = self.pick_session();
                if let Some(session) = self.sessions.get(&session_id).cloned() {
                    let mut updated = session.clone();
                    updated.capacity += self.rng.random_range(-2..5);
                    updated.capacity = updated.capacity.max(updated.sold);
                    self.sessions.insert(updated.id, updated.clone());
                    sessions.push((session, -1));
                    sessions.push((updated, 1));
                }
            } else {
                let session_id = self.pick_session();
                if let Some(session) = self.sessions.remove(&session_id) {
                    sessions.push((session, -1));
                    let dropped: Vec<i64> =
                        self.orders.values().filter(|o| o.session_id == session_id).map(|o| o.id).collect();
                    for id in dropped {
                        if let Some(order) = self.orders.remove(&id) {
                            orders.push((order, -1));
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        if !sessions.is_empty() {
            out.push((self.names[1].clone(), self.session_batch(&sessions)?));
        }
        if !orders.is_empty() {
            out.push((self.names[2].clone(), self.order_batch(&orders)?));
        }
        Ok(out)
    }

    fn pick_session(&mut self) -> i64 {
        let low = self.next_session.saturating_sub(500).max(1);
        let id = self.rng.random_range(low..self.next_session.max(low + 1));
        self.sessions.range(id..).next().or_else(|| self.sessions.iter().next_back()).map(|(id, _)| *id).unwrap_or(0)
    }

    fn pick_order(&mut self) -> Option<Order> {
        if self.orders.is_empty() {
            return None;
        }
        let low = self.next_order.saturating_sub(500).max(1);
        let id = self.rng.random_range(low..self.next_order.max(low + 1));
        self.orders.range(id..).next().or_else(|| self.orders.iter().next_back()).map(|(_, o)| o.clone())
    }

    fn session_batch(&self, rows: &[(Session, i64)]) -> Result<ChangeBatch, EngineError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(s, _)| s.id))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|(s, _)| s.experience_id))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|(s, _)| s.starts_at))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|(s, _)| s.capacity))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|(s, _)| s.sold))),
        ];
        let batch = RecordBatch::try_new(Arc::clone(&self.schemas[1]), columns)?;
        ChangeBatch::new(batch, rows.iter().map(|(_, w)| *w).collect())
    }

    fn order_batch(&self, rows: &[(Order, i64)]) -> Result<ChangeBatch, EngineError> {
        let amounts = Decimal128Array::from_iter_values(rows.iter().map(|(o, _)| o.amount_cents))
            .with_precision_and_scale(10, 2)?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(o, _)| o.id))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(o, _)| o.session_id))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|(o, _)| o.quantity))),
            Arc::new(amounts),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(o, _)| o.status))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|(o, _)| o.created_at))),
        ];
        let batch = RecordBatch::try_new(Arc::clone(&self.schemas[2]), columns)?;
        ChangeBatch::new(batch, rows.iter().map(|(_, w)| *w).collect())
    }
}
