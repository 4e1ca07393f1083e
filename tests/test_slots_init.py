"""slot_init: the per-request dataclasses keep everything a frozen dataclass gives, made faster."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from gateway.decision import Decision, RequestFacts
from gateway.proxy import ForwardContext
from gateway.reasons import Reason
from gateway.routing import Target
from gateway.slots_init import slot_init


@pytest.mark.parametrize("cls", [Decision, RequestFacts, Target, ForwardContext])
def test_the_request_path_classes_use_it(cls: type) -> None:
    init = cls.__dict__["__init__"]
    assert init.__qualname__ == f"{cls.__qualname__}.__init__"
    assert "_set0" in init.__code__.co_names  # the slot setters, not object.__setattr__


def test_same_values_defaults_equality_and_replace() -> None:
    target = Target("/x", "a=1")
    decision = Decision(Reason.ALLOWED, target, token_fingerprint="fp", binding="dpop")
    assert (decision.reason, decision.target, decision.route, decision.token_fingerprint, decision.binding,
            decision.missing_scopes, decision.detail, decision.claim_headers) == (
        Reason.ALLOWED, target, None, "fp", "dpop", frozenset(), "", ())
    assert decision == Decision(reason=Reason.ALLOWED, target=Target(path="/x", query="a=1"),
                                token_fingerprint="fp", binding="dpop")
    assert hash(target) == hash(Target("/x", "a=1"))
    changed = dataclasses.replace(decision, reason=Reason.BODY_TOO_LARGE)
    assert changed.reason is Reason.BODY_TOO_LARGE and changed.binding == "dpop" and changed.target is target
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.reason = Reason.NO_ROUTE  # type: ignore[misc]
    with pytest.raises(TypeError):
        Target("/x")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Target("/x", "", "extra")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Decision(Reason.ALLOWED, nonsense=1)  # type: ignore[call-arg]


def test_refuses_what_it_cannot_do_exactly() -> None:
    @dataclass(slots=True)
    class NotFrozen:
        a: int = 0

    @dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = field(default_factory=list)

    @dataclass(frozen=True)
    class NoSlots:
        a: int = 0

    @dataclass(frozen=True, slots=True)
    class PostInit:
        a: int = 0

        def __post_init__(self) -> None:
            pass

    for cls in (NotFrozen, Factory, NoSlots, PostInit):
        with pytest.raises(TypeError):
            slot_init(cls)
