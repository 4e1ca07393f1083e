"""The OpenTelemetry half of tracing: imported by ``tracing.start`` only, so never while tracing is off.

Spans (names and attributes after the OpenTelemetry HTTP and database semantic conventions):

- a SERVER span per request on the proxy and decision ports (INTERNAL in middleware mode when the
  application already has a span), named ``GET /orders/{id}`` once the route is known;
- ``tokengate.decision`` (INTERNAL) around the policy, with the route, the reason, the issuer, the
  scopes the route requires, the token fingerprint prefix and never a token or a claim value (the
  subject only with ``include_subject``);
- CLIENT spans for introspection, JWKS and discovery fetches, Redis round trips and the upstream call.

W3C trace context is continued only from a caller the gateway trusts (``trusted_proxies`` or
``trust_incoming``); anyone else's ``traceparent`` starts a new trace and is replaced on the
way upstream, so a client cannot graft its requests onto another trace or pick the sampling.
Exceptions mark a span failed with their type only: their messages may quote URLs or answers.

Modules: ``setup`` (exporter, provider, shutdown: ``RequestTracing``), ``request`` (the request's
span and the audit record's link to it), ``decision`` (the decision span), ``calls`` (client
spans), ``spans`` (what they share). Nothing here imports the policy, the decision or the proxy
it describes: it reads the values they hand over, so tracing sits below them.
"""

from __future__ import annotations

from .setup import RequestTracing, export_settings

__all__ = ["RequestTracing", "export_settings"]
