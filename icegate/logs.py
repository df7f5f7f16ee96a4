"""Log lines for the long-running commands (``relay run``, ``transceiver run``, ``agent run``).

Messages are written as ``event key=value ...`` (one line per event, never one per
packet); the handler adds time, level and logger, as ``key=value`` text or, with
``--log-json``, as one JSON object per line for a log pipeline.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class KeyValueFormatter(logging.Formatter):
    """``time=... level=info logger=... <message>``; messages are already ``event key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"time={stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} logger={record.name} "
        line += record.getMessage()
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(as_json: bool, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else KeyValueFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
