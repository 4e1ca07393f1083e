"""Step-up authentication (RFC 9470): acr_values and max_age against the token's acr and auth_time."""

from __future__ import annotations

import pytest

from gateway.stepup import ERROR_CODE, Shortfall, StepUpChallenge, StepUpPolicy, check_step_up

NOW = 1_800_000_000.0
MFA = "urn:example:mfa"
PHR = "urn:example:phr"


def shortfall(policy: StepUpPolicy, claims: dict[str, object], leeway: float = 0.0) -> Shortfall | None:
    challenge = check_step_up(policy, claims, now=NOW, leeway=leeway)
    return None if challenge is None else challenge.shortfall


def test_no_requirement_passes_any_token() -> None:
    assert not StepUpPolicy().required
    assert check_step_up(StepUpPolicy.of(None, None), {}) is None


def test_acr_values() -> None:
    policy = StepUpPolicy.of([MFA, PHR], None)
    assert shortfall(policy, {"acr": MFA}) is None
    assert shortfall(policy, {"acr": PHR}) is None
    assert shortfall(policy, {"acr": "urn:example:pwd"}) is Shortfall.ACR_NOT_ACCEPTED
    assert shortfall(policy, {}) is Shortfall.ACR_MISSING
    for hostile in ("", None, 1, [MFA], {"v": MFA}, True):
        assert shortfall(policy, {"acr": hostile}) is Shortfall.ACR_MISSING


def test_max_age() -> None:
    policy = StepUpPolicy.of(None, 300.0)  # max_age: 5m
    assert shortfall(policy, {"auth_time": NOW - 300}) is None
    assert shortfall(policy, {"auth_time": int(NOW) - 10}) is None
    assert shortfall(policy, {"auth_time": NOW - 301}) is Shortfall.AUTH_TOO_OLD
    assert shortfall(policy, {}) is Shortfall.AUTH_TIME_MISSING
    assert shortfall(policy, {"auth_time": NOW + 60}) is Shortfall.AUTH_TIME_IN_FUTURE


@pytest.mark.parametrize("value", ["1800000000", None, True, float("nan"), float("inf"), [NOW], {"t": NOW}])
def test_malformed_auth_time_never_satisfies(value: object) -> None:
    assert shortfall(StepUpPolicy.of(None, 300), {"auth_time": value}) is Shortfall.AUTH_TIME_MISSING


def test_infinite_auth_time_is_malformed_and_a_negative_one_too_old() -> None:
    assert shortfall(StepUpPolicy.of(None, 300), {"auth_time": float("-inf")}) is Shortfall.AUTH_TIME_MISSING
    assert shortfall(StepUpPolicy.of(None, 300), {"auth_time": -1}) is Shortfall.AUTH_TOO_OLD


def test_leeway_absorbs_clock_skew_both_ways() -> None:
    policy = StepUpPolicy.of(None, 300)
    assert shortfall(policy, {"auth_time": NOW - 320}, leeway=30) is None
    assert shortfall(policy, {"auth_time": NOW - 331}, leeway=30) is Shortfall.AUTH_TOO_OLD
    assert shortfall(policy, {"auth_time": NOW + 20}, leeway=30) is None
    assert shortfall(policy, {"auth_time": NOW + 31}, leeway=30) is Shortfall.AUTH_TIME_IN_FUTURE


def test_both_requirements_acr_checked_first() -> None:
    policy = StepUpPolicy.of([MFA], 300)
    assert shortfall(policy, {"acr": MFA, "auth_time": NOW - 10}) is None
    assert shortfall(policy, {"acr": "urn:example:pwd", "auth_time": NOW - 10}) is Shortfall.ACR_NOT_ACCEPTED
    assert shortfall(policy, {"acr": MFA, "auth_time": NOW - 3600}) is Shortfall.AUTH_TOO_OLD


def test_challenge_parameters() -> None:
    challenge = check_step_up(StepUpPolicy.of([MFA, PHR], 300.9), {"acr": "x", "auth_time": NOW}, now=NOW)
    assert isinstance(challenge, StepUpChallenge)
    assert challenge.error == ERROR_CODE == "insufficient_user_authentication"
    assert challenge.parameters() == [
        ("error", "insufficient_user_authentication"), ("acr_values", f"{MFA} {PHR}"), ("max_age", "300"),
    ]
    only_age = check_step_up(StepUpPolicy.of(None, 60), {}, now=NOW)
    assert only_age is not None and only_age.parameters() == [("error", ERROR_CODE), ("max_age", "60")]
    only_acr = check_step_up(StepUpPolicy.of([MFA], None), {}, now=NOW)
    assert only_acr is not None and only_acr.parameters() == [("error", ERROR_CODE), ("acr_values", MFA)]


@pytest.mark.parametrize("value", ["", "two words", 'quo"te', "back\\slash", "new\nline"])
def test_acr_values_that_cannot_travel_in_a_challenge_are_config_errors(value: str) -> None:
    with pytest.raises(ValueError, match="acr value"):
        StepUpPolicy.of([value], None)


def test_negative_max_age_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="max_age"):
        StepUpPolicy.of(None, -1)
