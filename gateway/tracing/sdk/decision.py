"""The ``tokengate.decision`` span around the policy, and the route it names on the request's span.

Per request, once tracing is on. The span carries the route, the reason, the issuer, the
scopes the route requires, the token fingerprint prefix and never a token or a claim value
(the subject only with ``include_subject``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from opentelemetry.semconv.attributes import http_attributes

from ...tokens.token import short_fingerprint
from .spans import REQUEST, Spans, fail

if TYPE_CHECKING:
    from ...decision import Decision


def route_template(decision: Decision) -> str | None:
    """``http.route``: the route's path as configured (``/orders/{id}``), a prefix as ``/api/*``."""
    route = decision.route.config if decision.route is not None else None
    if route is None:
        return None
    if route.path is not None:
        return route.path
    if route.path_prefix is not None:
        return route.path_prefix.rstrip("/") + "/*"
    return None


class DecisionSpans(Spans):
    """The policy's part of the setup (``traced_decision.TracedDecider`` calls ``decided``)."""

    async def decided(self, deciding: Awaitable[Decision]) -> Decision:
        """Await ``deciding`` inside the decision span, then describe the outcome on it."""
        with self.tracer.start_as_current_span("tokengate.decision", record_exception=False,
                                               set_status_on_exception=False) as span:
            try:
                decision = await deciding
            except BaseException as exc:
                fail(span, type(exc).__name__)
                raise
            if span.is_recording():
                span.set_attributes(self.decision_attributes(decision))
                if decision.reason.status >= 500:  # the gateway could not decide (JWKS, introspection...)
                    fail(span, decision.reason.value)
        current = REQUEST.get()
        template = route_template(decision)
        if current is not None and current.mode != "decision" and template is not None:
            # the check request of the decision port is not the routed request: its span keeps its name
            current.span.set_attribute(http_attributes.HTTP_ROUTE, template)
            current.span.update_name(f"{current.name} {template}")
        if current is not None and decision.route is not None:
            current.span.set_attribute("tokengate.route", decision.route.name)
        return decision

    def decision_attributes(self, decision: Decision) -> dict[str, Any]:
        """What the decision span says: never a token, never a claim value but ``sub`` when allowed to."""
        reason = decision.reason
        attributes: dict[str, Any] = {"tokengate.decision": reason.decision, "tokengate.reason": reason.value}
        route, token = decision.route, decision.token
        if route is not None:
            attributes["tokengate.route"] = route.name
            # what policy.required_scopes says; tracing imports nothing of the policy it describes
            attributes["tokengate.required_scopes"] = sorted(route.scopes | route.any_scopes)
        if decision.missing_scopes:
            attributes["tokengate.missing_scopes"] = sorted(decision.missing_scopes)
        if decision.token_fingerprint:
            attributes["tokengate.token.fingerprint"] = short_fingerprint(decision.token_fingerprint)
        if decision.scheme:
            attributes["tokengate.token.scheme"] = decision.scheme
            attributes["tokengate.binding"] = decision.binding
        if token is not None:
            attributes["tokengate.issuer"] = token.issuer
            if self.config.include_subject and token.subject:
                attributes["enduser.id"] = token.subject
        if decision.failed_rule is not None:
            attributes["tokengate.rule"] = decision.failed_rule
        return attributes
