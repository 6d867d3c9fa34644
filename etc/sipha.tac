# sipha as a Twisted application file, for those who run services with `twistd -y`:
#
#     twistd -ny etc/sipha.tac                              # the config beside this file
#     SIPHA_CONFIG=/etc/sipha/sipha.toml twistd -ny sipha.tac
#
# It goes through the same options and service as `twistd sipha --config FILE`
# (sipha.tap), so both start the same sipha; a bad config stops it with the same
# one-line error. Copy it next to the deployed sipha.toml, or set SIPHA_CONFIG.
import os

from twisted.application import service
from twisted.logger import ILogObserver

from sipha.logs import json_observer
from sipha.tap import Options, makeService

options = Options()
options.parseOptions(["--config", os.environ.get(
    "SIPHA_CONFIG", os.path.join(os.path.dirname(os.path.abspath(__file__)), "sipha.toml"))])

application = service.Application("sipha")
makeService(options).setServiceParent(application)
if options.config.log.format == "json":
    # twistd takes an application's ILogObserver instead of its text log.
    application.setComponent(ILogObserver, json_observer())
