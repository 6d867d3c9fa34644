"""Logging through ``twisted.logger``, filtered by the config's ``log.level``.

twistd's observers print every event they get, debug included, so the level
is applied where events are made: a :class:`Log` below the threshold does not
even format its event, which keeps debug lines free on the hot path.

``[log] format = "json"`` swaps twistd's text observer for
:func:`json_observer` (JSON Lines); see :func:`use_json_logs`.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    formatEvent,
    jsonFileLogObserver,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

#: Seconds between two lines of one throttled kind.
THROTTLE_INTERVAL = 1.0
_ORDER = (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical)
_NAMES = {"debug": 0, "info": 1, "warn": 2, "error": 3}


class Log(Logger):
    """A ``Logger`` that drops events below the process-wide threshold.

    A call-related event carries the call's ``call_id`` field; when its
    message does not show it, `` [Call-ID ...]`` is appended, so text logs
    can be grepped by call as JSON logs are filtered by the field.
    """

    threshold = 1  # info

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # For throttled(): per format, when a line was last written and how many were not.
        self._throttle: dict[str, tuple[float, int]] = {}

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if _ORDER.index(level) >= Log.threshold:
            if format is not None and kwargs.get("call_id") and "{call_id}" not in format:
                format += " [Call-ID {call_id}]"
            super().emit(level, format, **kwargs)

    @property
    def debugging(self) -> bool:
        """For call sites that would build costly fields just to drop them."""
        return Log.threshold == 0

    def throttled(self, level: LogLevel, format: str, **kwargs: Any) -> None:
        """Log at most one line a second of this kind (``format``); count the others.

        For what an attacker controls the rate of (rejected requests, refused
        connections): a flood makes one line a second, the next one saying how
        many were left out, never a line per packet.
        """
        if _ORDER.index(level) < Log.threshold:
            return
        now = time.monotonic()
        last, skipped = self._throttle.get(format, (-THROTTLE_INTERVAL, 0))
        if now - last < THROTTLE_INTERVAL:
            self._throttle[format] = (last, skipped + 1)
            return
        self._throttle[format] = (now, 0)
        if skipped:
            format += " ({skipped} more like this in the last {seconds:.0f} s)"
            kwargs.update(skipped=skipped, seconds=now - last)
        self.emit(level, format, **kwargs)


def set_level(name: str) -> None:
    """Apply ``log.level`` ("debug", "info", "warn" or "error")."""
    Log.threshold = _NAMES[name]


# -- JSON lines ------------------------------------------------------------------------------


_JSON_TYPES = (str, int, float, bool, type(None), list, tuple, dict)
_KEEP = frozenset(("log_level", "log_failure"))  # twisted.logger serializes these itself
_DROP = frozenset(("log_logger", "log_source"))  # the emitting objects: nothing to read


@implementer(ILogObserver)
class JSONLinesObserver:
    """One JSON object per line: twisted.logger's own JSON, plus the rendered message.

    Each line is what :func:`twisted.logger.jsonFileLogObserver` writes (so
    :func:`twisted.logger.eventsFromJSONLogFile` reads it back), without the
    RFC 7464 record separator (``recordSeparator=""``, i.e. JSON Lines as
    jq, Loki or Vector expect), and with three fields for people and
    shippers: ``text`` (the message as the text log prints it), ``level``
    (``"info"``...) and ``time`` (ISO 8601). Call-related lines carry the
    call's ``call_id`` field as logged.
    """

    def __init__(self, out: IO[Any]):
        self._json = jsonFileLogObserver(out, recordSeparator="")

    def __call__(self, event: LogEvent) -> None:
        text = formatEvent(event)
        # Objects JSON cannot hold become their text, not Twisted's {"unpersistable": true}.
        event = {
            key: value if key in _KEEP or isinstance(value, _JSON_TYPES) else str(value)
            for key, value in event.items()
            if key not in _DROP
        }
        event["text"] = text
        level = event.get("log_level")
        event["level"] = level.name if level is not None else "info"
        moment = datetime.fromtimestamp(event.get("log_time") or 0, UTC)
        event["time"] = moment.isoformat(timespec="milliseconds")
        self._json(event)


def json_observer() -> ILogObserver:
    """A twistd log observer factory: ``twistd --logger sipha.logs.json_observer ...``.

    ``[log] format = "json"`` makes sipha pass this to twistd itself (see
    ``sipha.tap.Options``). twistd then installs it *instead of* its text
    observer, so every line (twistd's, Twisted's and sipha's, and anything
    printed) comes out once, as JSON. It writes to the log file twistd
    would have used: standard output under ``--nodaemon`` or
    ``--logfile=-``, else the ``--logfile`` (``twistd.log`` by default).
    """
    target = json_log_file
    if target is None or target == "-":
        return JSONLinesObserver(sys.stdout)
    return JSONLinesObserver(LogFile.fromFullPath(target))


#: Where :func:`json_observer` writes: None or "-" for standard output, else a file.
json_log_file: str | None = None


def use_json_logs(twistd_options: Any) -> None:
    """Make twistd log JSON lines, unless its command line names a ``--logger`` already.

    Called while twistd parses its options, before it builds its log
    observer: the observer is chosen by twistd's ``logger`` option, which
    this sets to :func:`json_observer`, at the same place its text log
    would have gone. ``--syslog`` keeps syslog (its lines are text).
    """
    global json_log_file
    if twistd_options is None or twistd_options.get("logger") or twistd_options.get("syslog"):
        return
    logfile = twistd_options.get("logfile")
    if twistd_options.get("nodaemon") and not logfile:
        logfile = "-"
    json_log_file = logfile or "twistd.log"
    twistd_options["logger"] = "sipha.logs.json_observer"
