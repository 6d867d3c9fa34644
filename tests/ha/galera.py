"""The HA lab on a three-node MariaDB Galera cluster instead of one MariaDB.

The hosts of lab.py, but for ``db``: three database hosts, each a ``mariadbd``
with galera-4 in its own namespace, configured by the shipped
etc/galera/60-galera.cnf with only addresses changed::

    db1     198.18.0.31   mariadbd + Galera, bootstraps the cluster
    db2     198.18.0.32   mariadbd + Galera, joins (state transfer from db1)
    db3     198.18.0.33   mariadbd + Galera, joins

sipha's URL names the three in that order. mariadbd runs as the ``mysql``
user, as the Debian package runs it, because the rsync state transfer runs an
rsync daemon as the server's user (as root it would drop to ``nobody``); its
files live in a directory of their own under /tmp, which that user can reach,
removed at :meth:`GaleraLab.close`. Every mariadbd is started here and stopped
(or SIGKILLed by a test) by its PID.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from lab import DATABASE, DOC_NET, ETC, HOSTS, NET, Lab, LabError, substitute

import sipp
from dbserver import PrivateMariaDB, server_binary

GALERA = {"db1": NET + "31", "db2": NET + "32", "db3": NET + "33"}
PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
#: The Debian package's user for mariadbd.
SERVER_USER = "mysql"
#: A joiner's first start waits for its state transfer.
JOIN_TIMEOUT = 90.0


def require_galera() -> None:
    """Fail (never skip) when the cluster cannot be built; run-tests installs all of it."""
    __tracebackhide__ = True
    if not PROVIDER.exists():
        pytest.fail(f"{PROVIDER} (Debian package galera-4) is required; run ./run-tests")
    if shutil.which("rsync") is None:
        pytest.fail("rsync (Debian package rsync) is required for Galera's state transfers")
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.fail(f"user {SERVER_USER} (Debian package mariadb-server) is required")


class GaleraNode(PrivateMariaDB):
    """One Galera node: mariadbd reading its own option file, the shipped one with its addresses."""

    def __init__(self, lab: GaleraLab, name: str, directory: Path) -> None:
        directory.mkdir()
        super().__init__(
            directory,
            directory,
            host=GALERA[name],
            port=3306,
            namespace=lab.network.name(name),
        )
        self.name = name
        self.options = [o.replace("--user=root", f"--user={SERVER_USER}") for o in self.options]
        self.bootstrap = False
        self.config = directory / "my.cnf"
        shipped = (ETC / "galera" / "60-galera.cnf").read_text()
        galera = substitute(
            shipped,
            {
                f"wsrep_node_address = {DOC_NET}31": f"wsrep_node_address = {self.host}",
                DOC_NET: NET,
            },
        )
        server = [
            *(option.removeprefix("--") for option in self.options[1:]),  # not --no-defaults
            f"port={self.port}",
            f"socket={self.socket}",
            f"pid-file={directory / 'mariadbd.pid'}",
            f"log-error={self.error_log}",
        ]
        self.config.write_text("[mariadbd]\n" + "\n".join(server) + "\n\n" + galera)

    def command(self) -> list[str]:
        """mariadbd reading my.cnf only; the first node of a new cluster bootstraps it."""
        assert self.namespace is not None
        return [
            "ip", "netns", "exec", self.namespace,
            server_binary("mariadbd"),
            f"--defaults-file={self.config}",
            *(["--wsrep-new-cluster"] if self.bootstrap else []),
        ]  # fmt: skip

    def wsrep(self) -> dict[str, str]:
        """The node's wsrep status variables, empty when it does not answer."""
        try:
            rows = self.execute("SHOW GLOBAL STATUS LIKE 'wsrep%'")
        except Exception:
            return {}
        return {str(name): str(value) for name, value in rows}

    def synced(self, size: int) -> bool:
        """Synced, in a primary component of ``size`` nodes."""
        status = self.wsrep()
        return (status.get("wsrep_local_state"), status.get("wsrep_cluster_size")) == (
            "4",
            str(size),
        )

    def dialog_rows(self) -> list[tuple[Any, ...]]:
        return self.execute("SELECT callid, state FROM dialog ORDER BY callid", database=DATABASE)


class GaleraLab(Lab):
    """The pair of lab.py on a Galera cluster of three nodes."""

    hosts: ClassVar[dict[str, str]] = {**{h: a for h, a in HOSTS.items() if h != "db"}, **GALERA}
    #: Enough units for 5 calls a second held 20 s, on each of the two media servers.
    capacity = 100

    def open_database(self) -> str:
        require_galera()
        self.data = Path(tempfile.mkdtemp(prefix="sipha-galera-"))
        self.galera = {name: GaleraNode(self, name, self.data / name) for name in GALERA}
        user, group = pwd.getpwnam(SERVER_USER).pw_uid, grp.getgrnam(SERVER_USER).gr_gid
        for node in self.galera.values():
            node.datadir.mkdir()  # a joiner's is filled by its state transfer
        for path in self.data, *(p for n in self.galera.values() for p in (n.directory, n.datadir)):
            os.chown(path, user, group)
        first = self.galera["db1"]
        first.install()
        first.bootstrap = True
        first.start()
        first.allow_root_from(NET + "%")
        url = first.create_database(DATABASE)
        for name in ("db2", "db3"):  # one state transfer at a time
            self.galera[name].start(timeout=JOIN_TIMEOUT)
        self.wait_for_cluster(3, self.galera.values())
        hosts = ",".join(f"{node.host}:{node.port}" for node in self.galera.values())
        return url.replace(f"{first.host}:{first.port}", hosts)

    def wait_for_cluster(self, size: int, nodes: Any, timeout: float = 30.0) -> None:
        if not sipp.wait_until(lambda: all(n.synced(size) for n in nodes), timeout, 0.2):
            raise LabError(
                f"the Galera cluster is not {size} Synced nodes after {timeout} s: "
                + ", ".join(f"{n.name} {n.wsrep().get('wsrep_local_state_comment')}" for n in nodes)
            )

    def close_database(self) -> None:
        for node in self.galera.values():
            node.stop()
        shutil.rmtree(self.data, ignore_errors=True)

    def database_logs(self) -> list[tuple[str, Path]]:
        return [(f"mariadb {node.name}", node.error_log) for node in self.galera.values()]

    def dialog_rows(self) -> list[tuple[Any, ...]]:
        """The rows as the first node that runs sees them."""
        running = [node for node in self.galera.values() if node.process is not None]
        return running[0].dialog_rows()

    def restart(self, name: str) -> float:
        """Start a node killed before, which rejoins (a state transfer of what it missed);
        returns the seconds until the cluster has it Synced again."""
        node = self.galera[name]
        node.bootstrap = False
        started = time.monotonic()
        node.start(timeout=JOIN_TIMEOUT)
        self.wait_for_cluster(3, self.galera.values())
        return time.monotonic() - started
