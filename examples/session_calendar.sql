-- The session calendar: a read model of bookable sessions per experience and day, kept
-- correct by changeflow as sessions are created, sold and cancelled. No servers needed.
--   cargo run --release -- run examples/session_calendar.sql

CREATE TABLE experiences (id INT PRIMARY KEY, name TEXT NOT NULL, city TEXT);
CREATE TABLE sessions (
    id INT PRIMARY KEY,
    experience_id INT NOT NULL,
    starts_at TIMESTAMP NOT NULL,
    capacity INT NOT NULL,
    sold INT NOT NULL
);

CREATE MATERIALIZED VIEW session_calendar AS
  SELECT experience_id,
         date_trunc('day', starts_at) AS day,
         count(*) AS sessions,
         sum(capacity - sold) AS seats_left,
         min(starts_at) AS first_start,
         max(starts_at) AS last_start
  FROM sessions
  GROUP BY 1, 2;

CREATE MATERIALIZED VIEW city_availability AS
  SELECT e.city, count(s.id) AS open_sessions, coalesce(sum(s.capacity - s.sold), 0) AS seats_left
  FROM experiences e LEFT JOIN sessions s ON s.experience_id = e.id AND s.sold < s.capacity
  GROUP BY e.city;

INSERT INTO experiences VALUES (10, 'Old town walk', 'Lisbon'), (20, 'Fado night', 'Lisbon'), (30, 'Fjord cruise', 'Oslo');
INSERT INTO sessions VALUES
    (1, 10, '2026-12-01 10:00', 20, 0),
    (2, 10, '2026-12-01 15:00', 20, 5),
    (3, 20, '2026-12-01 21:00', 40, 38),
    (4, 10, '2026-12-02 10:00', 20, 0);

SELECT * FROM session_calendar ORDER BY experience_id, day;
SELECT * FROM city_availability ORDER BY city;

-- Two tickets sold, the morning session moved, one session cancelled: one transaction.
BEGIN;
UPDATE sessions SET sold = sold + 2 WHERE id = 3;
UPDATE sessions SET starts_at = '2026-12-01 09:00' WHERE id = 1;
DELETE FROM sessions WHERE id = 4;
COMMIT;

SELECT * FROM session_calendar ORDER BY experience_id, day;
SELECT * FROM city_availability ORDER BY city;
