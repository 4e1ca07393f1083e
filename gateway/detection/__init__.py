"""Live detection of suspicious token use (off unless ``detection:`` asks for something).

Runs on the request path (``Detector.observe``, microseconds, never awaits) and in the
background (revocation, webhook, state shared through Redis). Detections, each a reason string:

* ``new_network``: the family is used from a /24 (IPv4) or /48 (IPv6) other than the one
  of its first use;
* ``too_many_ips``: more than ``max_ips_per_token`` distinct client IPs within ``window``;
* ``insufficient_scope_burst``: ``insufficient_scope_burst`` scope denials within ``window``;
* ``proof_failures``: ``proof_failures_per_token`` proof failures by one token within ``window``
  (``audit.fields.PROOF_FAILURES``: a DPoP- or certificate-bound token sent without a valid proof
  of its key, which is what a stolen sender-constrained token replayed without its key looks like);
* ``impossible_travel``: two uses further apart than 1000 km/h allows (needs
  ``geoip_database`` and the optional ``maxminddb`` package).

State is per replica, in memory, bounded (``state.MAX_FAMILIES``, least recently seen dropped
first; a family idle for ``max(window, 1h)`` is forgotten). With ``revocation.redis_url``
set, observations are also written to Redis in batches off the request path and the
replicas' views are merged (``shared``), so a token used from two networks through two
replicas is still caught (by the replica that learns it; its next request is marked as well).

Modules: ``detector`` (the loop fed by audit records), ``state`` (per-family memory),
``checks`` (the rules), ``places`` (networks, GeoIP), ``shared`` (Redis), ``actions``
(metric, log, auto-revoke), ``notice`` (the webhook's format), ``webhook`` (the sender).
"""

from __future__ import annotations

from .detector import Detector, detection_enabled

__all__ = ["Detector", "detection_enabled"]
