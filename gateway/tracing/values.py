"""Links from audit records to the trace viewer (offline, in the reports); knows nothing of OpenTelemetry.

The trace URL template itself is checked with the configuration (``config.sections``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

TRACE_ID = re.compile(r"[0-9a-f]{32}")  # W3C trace-id: 16 bytes, lowercase hex, never all zeros
SPAN_ID = re.compile(r"[0-9a-f]{16}")


# --- the audit trail's links ---------------------------------------------------------------


def trace_link(template: str | None, trace_id: Any, span_id: Any = None) -> str | None:
    """The trace viewer's URL for an audit record's ids, or None.

    The template is the operator's (checked when loaded); the ids come from the audit trail and
    are hostile until proven otherwise: only a well-formed W3C trace-id (and span-id) is put in,
    and URL-escaped even so. A record without one gets no link.
    """
    if template is None or not isinstance(trace_id, str) or not TRACE_ID.fullmatch(trace_id):
        return None
    if trace_id == "0" * 32:
        return None
    span = span_id if isinstance(span_id, str) and SPAN_ID.fullmatch(span_id) else ""
    if "{span_id}" in template and not span:
        return None
    return template.replace("{trace_id}", quote(trace_id, safe="")).replace("{span_id}", quote(span, safe=""))
