-- sipha tables for SQLite, the embedded default. Column names are OpenSIPS's,
-- so rows and INSERT statements written for OpenSIPS work unchanged. sipha
-- runs this at start (every statement is IF NOT EXISTS); by hand:
--   sqlite3 /var/lib/sipha/sipha.sqlite < sqlite.sql

-- Destination sets of the dispatcher (REGISTER). "flags" is OpenSIPS 1.7's
-- name for "state" (as written by `opensipsctl dispatcher addgw`); sipha
-- reads both and a non-zero "state" wins.
CREATE TABLE IF NOT EXISTS dispatcher (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    setid INTEGER NOT NULL DEFAULT 0,
    destination VARCHAR(192) NOT NULL DEFAULT '',
    socket VARCHAR(128) DEFAULT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    state INTEGER NOT NULL DEFAULT 0,
    probe_mode INTEGER NOT NULL DEFAULT 0,
    weight VARCHAR(64) NOT NULL DEFAULT '1',
    priority INTEGER NOT NULL DEFAULT 0,
    attrs VARCHAR(128) DEFAULT '',
    description VARCHAR(64) DEFAULT ''
);

-- Load-balancer destinations (INVITE). probe_mode defaults to 2 (probe
-- always), unlike OpenSIPS's 0, so the reference INSERTs get health checks.
CREATE TABLE IF NOT EXISTS load_balancer (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id INTEGER NOT NULL DEFAULT 0,
    dst_uri VARCHAR(128) NOT NULL,
    resources VARCHAR(255) NOT NULL,
    probe_mode INTEGER NOT NULL DEFAULT 2,
    attrs VARCHAR(255) DEFAULT NULL,
    description VARCHAR(128) NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS dsturi_idx ON load_balancer (dst_uri);
