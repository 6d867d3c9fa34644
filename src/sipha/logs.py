"""Logging through ``twisted.logger``, filtered by the config's ``log.level``.

twistd's observers print every event they get, debug included, so the level
is applied where events are made: a :class:`Log` below the threshold does not
even format its event, which keeps debug lines free on the hot path.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger, LogLevel

_ORDER = (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical)
_NAMES = {"debug": 0, "info": 1, "warn": 2, "error": 3}


class Log(Logger):
    """A ``Logger`` that drops events below the process-wide threshold."""

    threshold = 1  # info

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if _ORDER.index(level) >= Log.threshold:
            super().emit(level, format, **kwargs)

    @property
    def debugging(self) -> bool:
        """For call sites that would build costly fields just to drop them."""
        return Log.threshold == 0


def set_level(name: str) -> None:
    """Apply ``log.level`` ("debug", "info", "warn" or "error")."""
    Log.threshold = _NAMES[name]
