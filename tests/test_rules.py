"""Per-route claims rules in CEL: compile errors, tenant isolation, fail-closed evaluation, cost bounds."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.rules import (
    MAX_CLAIMS_DEPTH,
    MAX_EXPRESSION_LENGTH,
    Cause,
    RuleFailure,
    RuleInputs,
    check_rules,
    compile_rule,
    compile_rules,
    path_parameter_names,
    path_parameters,
)

TENANT = "claims.tenant == path.tenant"
TOKEN = {
    "iss": "https://as.example", "sub": "user-1", "scope": "orders:read", "tenant": "acme",
    "acr": "urn:example:mfa", "amr": ["pwd", "otp"], "email": "ann@acme.example", "auth_time": 1700000000,
    "groups": ["admins", "ops"], "email_verified": True, "n": 3,
}


def run(expression: str, claims: dict[str, Any] | None = None, path: dict[str, str] | None = None,
        method: str = "GET", request_path: str = "/tenants/acme/orders") -> RuleFailure | None:
    rule = compile_rule("r", expression)
    return check_rules([rule], TOKEN if claims is None else claims, path or {"tenant": "acme"}, method, request_path)


def cause(expression: str, **kwargs: Any) -> Cause | None:
    failure = run(expression, **kwargs)
    return None if failure is None else failure.cause


# --- compile time --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("claims.tenant ==", "column 17: Syntax error"),
        ("claims.tenant == path.tenant &&\n  ==", "line 2, column 3: Syntax error"),
        ("tenant == 'acme'", "undeclared reference to 'tenant'"),
        ("claims.x == env.HOME", "undeclared reference to 'env.HOME'"),
        ("claims.tenant.startsWith(1)", "no matching overload for 'startsWith'"),
        ("claims", "yields map<string, dyn>"),
        ("system('id')", "undeclared reference to 'system'"),
        ("claims.tenant", None),  # dyn: allowed to compile, denies at run time unless bool
        ("'a' + 'b'", "yields string, a rule must yield bool"),
        ("1 + 2", "yields int, a rule must yield bool"),
        ("[true]", "yields list"),
        ("path.tenant", "yields string"),
        ("1 == 'a'", "no matching overload"),
        ("", "the expression is empty"),
        ("   ", "the expression is empty"),
    ],
)
def test_compile_errors_are_clear(expression: str, message: str | None) -> None:
    if message is None:
        compile_rule("r", expression)
        return
    with pytest.raises(ValueError, match="rule r: ") as caught:
        compile_rule("r", expression)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)  # one line, fit for file:line: key: message
    assert "[INVALID_ARGUMENT]" not in str(caught.value)


def test_expression_length_is_bounded() -> None:
    near = " || ".join(["claims.tenant == 'a'"] * 200)[:MAX_EXPRESSION_LENGTH]
    near = near[: near.rfind(" ||")]
    compile_rule("r", near)
    with pytest.raises(ValueError, match=f"at most {MAX_EXPRESSION_LENGTH}"):
        compile_rule("r", "true || " * (MAX_EXPRESSION_LENGTH // 8) + "true")


def test_nesting_is_bounded_at_compile_time() -> None:
    compile_rule("r", "(" * 20 + "true" + ")" * 20)
    with pytest.raises(ValueError, match="recursion limit"):
        compile_rule("r", "(" * 100 + "true" + ")" * 100)
    with pytest.raises(ValueError, match="recursion limit"):
        compile_rule("r", "[" * 100 + "true" + "]" * 100 + " == []")
    compile_rule("r", "!" * 1000 + "true")  # a long chain is not nesting that the parser recurses on


@pytest.mark.parametrize("name", ["", "has space", 'quote"', "x" * 65, "-leading", "new\nline", "é"])
def test_rule_names_must_be_label_safe(name: str) -> None:
    with pytest.raises(ValueError, match="rule name"):
        compile_rule(name, "true")


def test_rule_names_are_unique_per_route() -> None:
    rules = compile_rules([("same-tenant", TENANT), ("mfa", "'otp' in claims.amr")])
    assert [r.name for r in rules] == ["same-tenant", "mfa"]
    with pytest.raises(ValueError, match="used twice"):
        compile_rules([("a", "true"), ("a", "false")])


@pytest.mark.parametrize("expression", ["\x00", "claims.tenant == '\ud800'", "'\\xff' == b'\\xff'", "\u202e true"])
def test_hostile_expressions_are_compile_errors_not_crashes(expression: str) -> None:
    with pytest.raises(ValueError, match="rule r"):
        compile_rule("r", expression)


# --- tenant isolation -----------------------------------------------------------------------------


def test_tenant_isolation() -> None:
    rule = compile_rule("same-tenant", TENANT)
    names = path_parameter_names("/tenants/{tenant}/orders")
    own, foreign = "/tenants/acme/orders", "/tenants/globex/orders"
    assert check_rules([rule], TOKEN, path_parameters(names, own), "GET", own) is None
    other = check_rules([rule], TOKEN, path_parameters(names, foreign), "GET", foreign)
    assert other == RuleFailure("same-tenant", Cause.FALSE)
    assert other.detail == "rule same-tenant: false"


def test_path_parameters_are_percent_decoded_and_exact() -> None:
    names = path_parameter_names("/tenants/{tenant}/orders/{id}")
    assert names == (None, "tenant", None, "id")
    assert path_parameters(names, "/tenants/acme%20corp/orders/7") == {"tenant": "acme corp", "id": "7"}
    assert path_parameters(names, "/tenants/acme/orders") == {}  # not this template's shape
    assert path_parameters(names, "/tenants/%FF/orders/7") == {"id": "7"}  # invalid UTF-8: left out
    assert cause(TENANT, claims={"tenant": "acme corp"}, path={"tenant": "acme corp"}) is None
    # Tomcat-style path parameters stay part of the segment: never equal to the claim
    assert cause(TENANT, path=path_parameters(names, "/tenants/acme;x=1/orders/7")) is Cause.FALSE


def test_missing_path_parameter_denies() -> None:
    assert cause(TENANT, path={"other": "acme"}) is Cause.ERROR


# --- fail closed at run time ----------------------------------------------------------------------


def test_missing_claim_denies() -> None:
    assert cause(TENANT, claims={"sub": "u"}) is Cause.ERROR
    assert cause("claims.tenant != 'evil'", claims={"sub": "u"}) is Cause.ERROR  # not "true by absence"


def test_type_errors_deny() -> None:
    assert cause(TENANT, claims={"tenant": 7}) is Cause.FALSE  # CEL: heterogeneous equality is false
    assert cause("claims.n > 'a'") is Cause.ERROR
    assert cause("claims.n / 0 == 1") is Cause.ERROR
    assert cause("claims.tenant.matches('(')") is Cause.ERROR


@pytest.mark.parametrize(
    "expression", ["claims.tenant", "claims.n", "claims.amr", "claims.missing_is_null", "dyn(1)", "dyn(claims)"]
)
def test_only_a_boolean_true_allows(expression: str) -> None:
    claims = dict(TOKEN, missing_is_null=None)
    assert cause(expression, claims=claims) in (Cause.NOT_BOOLEAN, Cause.ERROR)


def test_truthy_values_are_not_true() -> None:
    for value in (1, "true", [True], {"a": True}, 1.0):
        assert cause("claims.flag", claims={"flag": value}) is Cause.NOT_BOOLEAN
    assert cause("claims.flag", claims={"flag": True}) is None
    assert cause("claims.flag", claims={"flag": False}) is Cause.FALSE


def test_has_and_membership() -> None:
    assert cause("has(claims.acr) && claims.acr == 'urn:example:mfa'") is None
    assert cause("has(claims.acr)", claims={"sub": "u"}) is Cause.FALSE
    assert cause("'otp' in claims.amr") is None
    assert cause("claims.email.endsWith('@acme.example')") is None
    assert cause("claims.email.endsWith('@acme.example')", claims={"email": "eve@evil.example"}) is Cause.FALSE
    assert cause("claims.groups.exists(g, g in ['admins', 'root'])") is None


def test_request_variables() -> None:
    assert cause("request.method == 'GET' && request.path.startsWith('/tenants/')") is None
    assert cause("request.method == 'GET'", method="DELETE") is Cause.FALSE
    assert cause("request.query == 'x'") is Cause.ERROR  # not a request attribute: denies


def test_first_failing_rule_is_named_and_later_ones_do_not_run() -> None:
    rules = compile_rules([("mfa", "'otp' in claims.amr"), ("same-tenant", TENANT), ("never", "claims.nope")])
    failure = check_rules(rules, TOKEN, {"tenant": "globex"}, "GET", "/tenants/globex/orders")
    assert failure == RuleFailure("same-tenant", Cause.FALSE)
    assert check_rules((), TOKEN, {}, "GET", "/") is None


def test_failure_detail_never_carries_claim_values() -> None:
    secret = "s3cr3t-tenant-value"
    failure = run("int(claims.tenant) == 1", claims={"tenant": secret})
    assert failure is not None and failure.cause is Cause.ERROR
    assert secret not in failure.detail and secret not in repr(failure)


# --- cost bounds and hostile claims ---------------------------------------------------------------


def test_iteration_budget_denies_quadratic_and_worse_loops() -> None:
    claims = {"xs": list(range(200))}
    started = time.perf_counter()
    assert cause("claims.xs.all(a, claims.xs.all(b, true))", claims=claims) is Cause.COST_LIMIT
    assert cause("claims.xs.all(a, claims.xs.all(b, claims.xs.all(c, claims.xs.all(d, true))))",
                 claims=claims) is Cause.COST_LIMIT
    assert time.perf_counter() - started < 2.0  # bounded: the budget stops it, not the data size
    assert cause("claims.xs.all(a, a >= 0)", claims=claims) is None  # a single pass is fine


def test_literal_loops_are_bounded_too() -> None:
    big = "[" + ",".join(["1"] * 120) + "]"
    assert cause(f"{big}.all(a, {big}.all(b, {big}.all(c, true)))") is Cause.COST_LIMIT
    assert cause(f"{big}.map(a, {big}.map(b, a + b)).size() > 0") is Cause.COST_LIMIT  # 14 400 > 10 000
    assert cause(f"{big}.map(a, {big}.map(b, a + b)).size() > 0".replace(",1" * 60, "", 1)) is None  # 60 x 120 = 7 200


def test_deeply_nested_claims_are_refused_before_cel_sees_them() -> None:
    nested: dict[str, Any] = {}
    cur = nested
    for _ in range(10_000):  # deep enough to crash an unbounded recursive converter
        cur["a"] = {}
        cur = cur["a"]
    assert cause(TENANT, claims={"tenant": "acme", "blob": nested}) is Cause.UNSAFE_INPUT
    listy: list[Any] = []
    node = listy
    for _ in range(MAX_CLAIMS_DEPTH + 1):
        node.append([])
        node = node[0]
    assert cause(TENANT, claims={"tenant": "acme", "blob": listy}) is Cause.UNSAFE_INPUT
    assert cause(TENANT, claims={"tenant": "acme", "blob": {"a": {"b": [1, {"c": 2}]}}}) is None


@pytest.mark.parametrize(
    "value", [2**70, -(2**70), float("nan"), float("inf"), "\ud800", b"\xff", object(), (1, 2), {1: "x"}, None]
)
def test_hostile_claim_values_deny_or_compare_false_never_raise(value: object) -> None:
    failure = run(TENANT, claims={"tenant": value})
    assert failure is not None and failure.cause in (Cause.FALSE, Cause.ERROR, Cause.UNSAFE_INPUT)
    # and an unrelated rule on the same claims still evaluates (or denies) without raising
    run("claims.sub == 'u'", claims={"sub": "u", "junk": value})


def test_inputs_are_built_once_per_request() -> None:
    inputs = RuleInputs.build(TOKEN, {"tenant": "acme"}, "GET", "/tenants/acme/orders")
    rules = compile_rules([("a", TENANT), ("b", "'otp' in claims.amr")])
    assert all(rule.check(inputs) is None for rule in rules)
    unencodable = RuleInputs.build({"s": "\ud800"}, {}, "GET", "/")  # a lone surrogate: C++ cannot hold it
    assert compile_rule("s", "claims.s == 'x'").check(unencodable) is not None
