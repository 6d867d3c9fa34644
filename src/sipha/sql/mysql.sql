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
