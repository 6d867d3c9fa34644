-- sipha tables for MySQL / MariaDB. Column names are OpenSIPS's, so rows and
-- INSERT statements written for OpenSIPS work unchanged. sipha runs this at
-- start (every statement is IF NOT EXISTS); by hand:
--   mysql opensips < mysql.sql

-- Destination sets of the dispatcher (REGISTER). "flags" is OpenSIPS 1.7's
-- name for "state" (as written by `opensipsctl dispatcher addgw`); sipha
-- reads both and a non-zero "state" wins.
CREATE TABLE IF NOT EXISTS dispatcher (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    setid INT DEFAULT 0 NOT NULL,
    destination CHAR(192) DEFAULT '' NOT NULL,
    socket CHAR(128) DEFAULT NULL,
    flags INT DEFAULT 0 NOT NULL,
    state INT DEFAULT 0 NOT NULL,
    probe_mode INT(11) UNSIGNED DEFAULT 0 NOT NULL,
    weight CHAR(64) DEFAULT '1' NOT NULL,
    priority INT DEFAULT 0 NOT NULL,
    attrs CHAR(128) DEFAULT '',
    description CHAR(64) DEFAULT ''
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Load-balancer destinations (INVITE). probe_mode defaults to 2 (probe
-- always), unlike OpenSIPS's 0, so the reference INSERTs get health checks.
CREATE TABLE IF NOT EXISTS load_balancer (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    group_id INT(11) UNSIGNED DEFAULT 0 NOT NULL,
    dst_uri CHAR(128) NOT NULL,
    resources CHAR(255) NOT NULL,
    probe_mode INT(11) UNSIGNED DEFAULT 2 NOT NULL,
    attrs CHAR(255) DEFAULT NULL,
    description CHAR(128) DEFAULT '' NOT NULL,
    KEY dsturi_idx (dst_uri)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Answered calls (dialog module), one row each, with OpenSIPS 1.7's columns
-- (3.x's wider URI and contact columns). The row is keyed by (hash_entry,
-- hash_id), the call's "did", which is the primary key: every write of sipha
-- is an upsert on it. There is no AUTO_INCREMENT id (OpenSIPS 1.7's primary
-- key): on a Galera cluster each node hands out ids of its own, stepping by
-- the cluster size, and every upsert uses one up, so such an id runs out and
-- says nothing. As in OpenSIPS, CSeqs are text, route sets comma-joined and
-- start_time/timeout UNIX seconds (timeout = when the call expires). sipha
-- also writes the call's load-balancer binding, so its counters survive a
-- crash or takeover: "profiles" = lbX<resource>#<destination id in hex>| per
-- resource (OpenSIPS's format) and "vars" = lb_group#<group>|lb_dst#<destination
-- URI>|, in both with "|", "#" and "\" escaped by "\". "owner" is sipha's own:
-- the node that wrote the row or took it over; a node changes only its own
-- rows, so two nodes that both believe they are active never overwrite each
-- other's (OpenSIPS ignores the column).
CREATE TABLE IF NOT EXISTS dialog (
    hash_entry INT(10) UNSIGNED NOT NULL,
    hash_id INT(10) UNSIGNED NOT NULL,
    callid CHAR(255) NOT NULL,
    from_uri CHAR(255) NOT NULL,
    from_tag CHAR(64) NOT NULL,
    to_uri CHAR(255) NOT NULL,
    to_tag CHAR(64) NOT NULL,
    mangled_from_uri CHAR(64) DEFAULT NULL,
    mangled_to_uri CHAR(64) DEFAULT NULL,
    caller_cseq CHAR(11) NOT NULL,
    callee_cseq CHAR(11) NOT NULL,
    caller_ping_cseq INT(11) UNSIGNED DEFAULT 0 NOT NULL,
    callee_ping_cseq INT(11) UNSIGNED DEFAULT 0 NOT NULL,
    caller_route_set TEXT,
    callee_route_set TEXT,
    caller_contact CHAR(255) NOT NULL,
    callee_contact CHAR(255) NOT NULL,
    caller_sock CHAR(64) NOT NULL,
    callee_sock CHAR(64) NOT NULL,
    state INT(10) UNSIGNED NOT NULL,
    start_time INT(10) UNSIGNED NOT NULL,
    timeout INT(10) UNSIGNED NOT NULL,
    vars TEXT,
    profiles TEXT,
    script_flags INT(10) UNSIGNED DEFAULT 0 NOT NULL,
    flags INT(10) UNSIGNED DEFAULT 0 NOT NULL,
    owner CHAR(64) DEFAULT '' NOT NULL,
    PRIMARY KEY (hash_entry, hash_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
