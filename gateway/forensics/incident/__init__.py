"""``gateway incident``: the whole story of one token (or subject, family, key or trace) from the audit trail (offline).

- ``target``: what is investigated; ``collect``: the one scan that gathers it;
- ``model`` (with ``seen``, ``values``): the aggregates the reports are made from;
- ``text`` (with ``wording``): the plain-text report; the JSON and HTML ones are in ``forensics.reports``.

A key target (``--key-thumbprint``: a DPoP key's jkt or a client certificate's x5t#S256) is
the story of every token used with that key, proven or merely presented. The report shows how
each call was bound (none / dpop / mtls), the keys presented and the proof failures: a
sender-constrained token refused for want of its key's proof is how a stolen one shows up.
``--revoke`` is ``forensics.revoke``, loaded only when asked for.
"""

from __future__ import annotations

from .collect import collect
from .model import Incident
from .seen import Seen, TokenSeen
from .target import Target
from .text import render_text

__all__ = ["Incident", "Seen", "Target", "TokenSeen", "collect", "render_text"]
