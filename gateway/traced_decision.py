"""The decider while tracing is on: the policy inside a ``tokengate.decision`` span. Per request.

Here rather than in ``tracing``: tracing describes decisions without importing them (it sits
below the decision), so the subclass of ``Decider`` lives above both.
"""

from __future__ import annotations

from . import tracing
from .decision import Decider, Decision, RequestFacts


class TracedDecider(Decider):
    """The policy inside a ``tokengate.decision`` span (built instead of ``Decider`` while tracing)."""

    async def decide(self, facts: RequestFacts) -> Decision:
        """``Decider.decide`` in the decision span of the running tracing setup, if any."""
        active = tracing.ACTIVE
        if active is None:  # tracing stopped while this pipeline still serves
            return await super().decide(facts)
        return await active.decided(super().decide(facts))
