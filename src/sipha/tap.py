"""``twistd sipha``: command-line options and the service they make.

The config is loaded and checked in ``postOptions``, before twistd daemonizes
or binds anything, so a bad file stops the start with one line naming the key
instead of a traceback in a log nobody reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.python import usage

from sipha.config import Config, ConfigError, ConfigFileError, load_config
from sipha.logs import use_json_logs
from sipha.operations import check as check_operations

if TYPE_CHECKING:
    from twisted.application.service import IService

DEFAULT_CONFIG = "/etc/sipha/sipha.toml"


class Options(usage.Options):
    synopsis = "[--config FILE] [--db-url URL] [--check-config]"
    longdesc = (
        "sipha is a SIP load-balancing proxy. It listens on the addresses in the "
        "config file's [proxy] section and relays each request as the route function "
        "in [route] decides; etc/sipha.toml in the source tree documents every key. "
        "Run it in the foreground with `twistd -n sipha --config FILE`; "
        "`--check-config` validates FILE and exits."
    )

    # twisted.python.usage reads these camelCase class lists.
    optParameters = [  # noqa: N815, RUF012
        ["config", "c", DEFAULT_CONFIG, "The TOML config file."],
        [
            "db-url",
            None,
            None,
            "Database URL, overriding [database] url: sqlite:///PATH or "
            "mysql://USER:PASS@HOST:PORT[,HOST:PORT...]/DB.",
        ],
    ]
    optFlags = [  # noqa: N815, RUF012
        ["check-config", None, "Validate the config file, print 'config OK: FILE' and exit."],
    ]

    config: Config

    def postOptions(self) -> None:  # noqa: N802
        # SystemExit with a message, not usage.UsageError: twistd would print its
        # whole usage text before the one line that matters.
        path = self["config"]
        try:
            config = load_config(path)
        except ConfigFileError as e:
            raise SystemExit(f"sipha: {e}") from None
        except ConfigError as e:
            raise SystemExit(f"sipha: {path}: {e}") from None
        if self["db-url"] is not None:
            try:
                config = config.with_db_url(self["db-url"])
            except ConfigError as e:
                raise SystemExit(f"sipha: --db-url: {e.problem}") from None
        try:
            config.route.load_function()
            config.database.require_driver()
            check_operations(config)
            check_tls(config)
        except ConfigError as e:
            raise SystemExit(f"sipha: {path}: {e}") from None
        self.config = config
        if config.log.format == "json":
            # twistd reads its ``logger`` option after this returns (sipha.logs).
            use_json_logs(getattr(self, "parent", None))
        if self["check-config"]:
            print(f"config OK: {path}")
            raise SystemExit(0)


def check_tls(config: Config) -> None:
    """Certificates and keys that cannot be used stop the start here, with the key named."""
    if config.tls.certificate or config.tls.ca_certificates:
        from sipha.tls import TLSContexts

        TLSContexts(config.tls).load()


def makeService(options: Options) -> IService:  # noqa: N802
    """Build the service tree; imported lazily so ``--help`` and config errors stay fast."""
    from sipha.service import make_service

    return make_service(options.config)
