//! A seeded random workload over three tables (experiences, sessions, orders) and views that
//! exercise every incremental operator. The SQL is valid for both changeflow and PostgreSQL,
//! so the same workload checks views against DataFusion's and PostgreSQL's answers.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const SCHEMA: &str = "
CREATE TABLE experiences (id INT PRIMARY KEY, city TEXT, rating INT);
CREATE TABLE sessions (id INT PRIMARY KEY, experience_id INT, starts_at TIMESTAMP, capacity INT NOT NULL, sold INT, price NUMERIC(8,2));
CREATE TABLE orders (id INT PRIMARY KEY, session_id INT, quantity INT, status TEXT);
";

/// (name, query) of each materialized view, in creation order.
pub const VIEWS: &[(&str, &str)] = &[
    (
        "calendar",
        "SELECT experience_id, date_trunc('day', starts_at) AS day, count(*) AS n, sum(capacity - sold) AS seats, \
         min(starts_at) AS first_start, max(price) AS top_price FROM sessions GROUP BY 1, 2",
    ),
    (
        "stats",
        "SELECT experience_id, count(sold) AS counted, count(DISTINCT capacity) AS capacities, avg(capacity) AS avg_capacity, \
         sum(price) AS revenue FROM sessions GROUP BY experience_id HAVING count(*) > 1",
    ),
    (
        "totals",
        "SELECT count(*) AS n, sum(sold) AS sold, min(price) AS cheapest, max(starts_at) AS latest FROM sessions",
    ),
    (
        "inner_join",
        "SELECT e.city, s.id, s.sold FROM sessions s JOIN experiences e ON s.experience_id = e.id AND s.sold <= e.rating * 10",
    ),
    (
        "left_join",
        "SELECT e.id, e.city, s.id AS session_id FROM experiences e LEFT JOIN sessions s ON s.experience_id = e.id AND s.capacity > 10",
    ),
    (
        "full_join",
        "SELECT e.id AS experience_id, s.id AS session_id FROM experiences e FULL JOIN sessions s ON s.experience_id = e.id",
    ),
    (
        "right_join",
        "SELECT s.id, o.id AS order_id FROM orders o RIGHT JOIN sessions s ON o.session_id = s.id AND o.status = 'paid'",
    ),
    (
        "city_orders",
        "SELECT e.city, count(*) AS orders, sum(o.quantity) AS tickets FROM orders o JOIN sessions s ON o.session_id = s.id \
         JOIN experiences e ON s.experience_id = e.id GROUP BY e.city",
    ),
    (
        "city_revenue",
        "SELECT e.city, s.experience_id, count(s.sold) AS counted, sum(s.price) AS revenue, min(s.starts_at) AS first_start, \
         max(s.capacity) AS most FROM sessions s JOIN experiences e ON s.experience_id = e.id AND s.capacity > e.rating \
         GROUP BY e.city, s.experience_id",
    ),
    (
        "city_days",
        "SELECT e.city, date_trunc('day', s.starts_at) AS day, count(*) AS n, sum(s.capacity - s.sold) AS seats, \
         max(s.price) AS top_price FROM sessions s JOIN experiences e ON s.experience_id = e.id GROUP BY 1, 2",
    ),
    (
        "order_totals",
        "SELECT count(*) AS n, count(o.quantity) AS counted, sum(o.quantity) AS tickets FROM orders o \
         JOIN sessions s ON o.session_id = s.id",
    ),
    (
        "ids",
        "SELECT DISTINCT x FROM (SELECT experience_id AS x FROM sessions UNION ALL SELECT id AS x FROM experiences WHERE rating > 3) u",
    ),
    ("top_prices", "SELECT id, price FROM sessions ORDER BY price DESC NULLS LAST, id LIMIT 5"),
    ("daily", "SELECT day, sum(n) AS sessions, count(*) AS experiences FROM calendar GROUP BY day"),
    (
        "states",
        "SELECT id, CASE WHEN sold >= capacity THEN 'full' WHEN sold > 0 THEN 'selling' ELSE 'open' END AS state, \
         coalesce(price, 0) AS price FROM sessions WHERE experience_id IS NOT NULL",
    ),
    (
        "selling",
        "SELECT e.id FROM experiences e WHERE EXISTS (SELECT 1 FROM sessions s WHERE s.experience_id = e.id AND s.sold > 0)",
    ),
    (
        "idle",
        "SELECT e.id, e.city FROM experiences e WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.experience_id = e.id)",
    ),
];

pub struct Workload {
    rng: StdRng,
}

const CITIES: [&str; 4] = ["'Lisbon'", "'Oslo'", "'Rome'", "NULL"];

impl Workload {
    pub fn new(seed: u64) -> Self {
        Self { rng: StdRng::seed_from_u64(seed) }
    }

    pub fn chance(&mut self, percent: u32) -> bool {
        self.rng.random_range(0..100) < percent
    }

    pub fn range(&mut self, low: i64, high: i64) -> i64 {
        self.rng.random_range(low..=high)
    }

    fn maybe_null(&mut self, value: String, null_percent: u32) -> String {
        if self.chance(null_percent) { "NULL".into() } else { value }
    }

    fn session_row(&mut self) -> String {
        let id = self.range(1, 60);
        let experience = self.range(1, 8).to_string();
        let experience = self.maybe_null(experience, 10);
        let starts =
            format!("'2026-12-{:02} {:02}:{:02}:00'", self.range(1, 5), self.range(8, 21), 15 * self.range(0, 3));
        let starts = self.maybe_null(starts, 5);
        let capacity = self.range(1, 30);
        let sold = self.range(0, capacity).to_string();
        let sold = self.maybe_null(sold, 10);
        let price = format!("{}.{:02}", self.range(5, 120), self.range(0, 99));
        let price = self.maybe_null(price, 15);
        format!("({id}, {experience}, {starts}, {capacity}, {sold}, {price})")
    }

    fn experience_row(&mut self) -> String {
        let id = self.range(1, 10);
        let city = CITIES[self.range(0, 3) as usize];
        let rating = self.range(0, 5).to_string();
        let rating = self.maybe_null(rating, 10);
        format!("({id}, {city}, {rating})")
    }

    fn order_row(&mut self) -> String {
        let id = self.range(1, 80);
        let session = self.range(1, 60).to_string();
        let session = self.maybe_null(session, 5);
        let quantity = self.range(1, 4);
        let status = if self.chance(60) { "'paid'" } else { "'pending'" };
        format!("({id}, {session}, {quantity}, {status})")
    }

    /// One random DML statement.
    pub fn statement(&mut self) -> String {
        match self.range(0, 19) {
            0..=3 => {
                let rows: Vec<String> = (0..self.range(1, 4)).map(|_| self.session_row()).collect();
                format!("INSERT INTO sessions VALUES {}", rows.join(", "))
            }
            4 => {
                let rows: Vec<String> = (0..self.range(1, 2)).map(|_| self.experience_row()).collect();
                format!("INSERT INTO experiences VALUES {}", rows.join(", "))
            }
            5..=6 => {
                let rows: Vec<String> = (0..self.range(1, 3)).map(|_| self.order_row()).collect();
                format!("INSERT INTO orders VALUES {}", rows.join(", "))
            }
            7 => format!("UPDATE sessions SET sold = sold + 1 WHERE id = {}", self.range(1, 60)),
            8 => {
                format!("UPDATE sessions SET experience_id = {} WHERE id % 7 = {}", self.range(1, 9), self.range(0, 6))
            }
            9 => format!(
                "UPDATE sessions SET price = price + 1, capacity = capacity + 1 WHERE experience_id = {}",
                self.range(1, 8)
            ),
            10 => format!("UPDATE experiences SET rating = {} WHERE id = {}", self.range(0, 5), self.range(1, 10)),
            11 => format!(
                "UPDATE experiences SET city = {} WHERE id > {}",
                CITIES[self.range(0, 3) as usize],
                self.range(3, 10)
            ),
            12 => format!("UPDATE orders SET status = 'paid' WHERE session_id = {}", self.range(1, 60)),
            13 => format!("UPDATE experiences SET id = id + 1 WHERE id = {}", self.range(1, 10)),
            14 => format!("UPDATE sessions SET starts_at = NULL WHERE id = {}", self.range(1, 60)),
            15 => format!("DELETE FROM sessions WHERE id = {}", self.range(1, 60)),
            16 => format!("DELETE FROM experiences WHERE id = {}", self.range(1, 10)),
            17 => format!("DELETE FROM orders WHERE session_id = {} OR id = {}", self.range(1, 60), self.range(1, 80)),
            18 => "DELETE FROM sessions WHERE sold >= capacity - 1".to_string(),
            _ => format!("DELETE FROM orders WHERE quantity = {}", self.range(1, 4)),
        }
    }
}
