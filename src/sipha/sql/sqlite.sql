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

-- Answered calls (dialog module), one row each, with OpenSIPS 1.7's columns.
-- The row is keyed by (hash_entry, hash_id), the call's "did", which is the
-- primary key: every write of sipha is an upsert on it (OpenSIPS 1.7's own
-- AUTO_INCREMENT id is left out, as in mysql.sql). As in OpenSIPS, CSeqs are
-- text, route sets comma-joined and start_time/timeout UNIX seconds (timeout =
-- when the call expires). sipha also writes the call's load-balancer binding,
-- so its counters survive a crash or takeover: "profiles" = lbX<resource>#<destination
-- id in hex>| per resource (OpenSIPS's format) and "vars" =
-- lb_group#<group>|lb_dst#<destination URI>|, in both with "|", "#" and "\"
-- escaped by "\". "owner" is sipha's own: the node that wrote the row or took
-- it over; a node changes only its own rows.
CREATE TABLE IF NOT EXISTS dialog (
    hash_entry INTEGER NOT NULL,
    hash_id INTEGER NOT NULL,
    callid VARCHAR(255) NOT NULL,
    from_uri VARCHAR(255) NOT NULL,
    from_tag VARCHAR(64) NOT NULL,
    to_uri VARCHAR(255) NOT NULL,
    to_tag VARCHAR(64) NOT NULL,
    mangled_from_uri VARCHAR(64) DEFAULT NULL,
    mangled_to_uri VARCHAR(64) DEFAULT NULL,
    caller_cseq VARCHAR(11) NOT NULL,
    callee_cseq VARCHAR(11) NOT NULL,
    caller_ping_cseq INTEGER NOT NULL DEFAULT 0,
    callee_ping_cseq INTEGER NOT NULL DEFAULT 0,
    caller_route_set TEXT,
    callee_route_set TEXT,
    caller_contact VARCHAR(255) NOT NULL,
    callee_contact VARCHAR(255) NOT NULL,
    caller_sock VARCHAR(64) NOT NULL,
    callee_sock VARCHAR(64) NOT NULL,
    state INTEGER NOT NULL,
    start_time INTEGER NOT NULL,
    timeout INTEGER NOT NULL,
    vars TEXT,
    profiles TEXT,
    script_flags INTEGER NOT NULL DEFAULT 0,
    flags INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (hash_entry, hash_id)
);
