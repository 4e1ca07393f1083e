"""Per-route claims rules in CEL (Common Expression Language), compiled at load, evaluated per request.

A route may list rules such as ``claims.tenant == path.tenant``; each is compiled and
type-checked when the configuration loads, so a typo is a configuration error that names the
file, line and key rather than a surprise at three in the morning. The engine is
``cel-expr-python``, the CEL team's own wrapper of the C++ implementation: the same
semantics as Envoy RBAC and cel-go, with a type checker and a runtime iteration budget.

The variables an expression sees:

- ``claims``: the token's claims (JWT payload or introspection answer), a ``map(string, dyn)``
- ``path``: the route's path parameters (``{tenant}`` in ``/tenants/{tenant}/orders``), percent-decoded
- ``request.method`` and ``request.path`` (the normalised path that is matched and forwarded)

Cost bounds, all fail-closed:

- at compile time: at most ``MAX_EXPRESSION_LENGTH`` characters, and the parser's own nesting
  limit (32 levels of recursion; deeper is a compile error);
- at run time: the C++ runtime's iteration budget (10 000 comprehension iterations in total per
  evaluation, fixed by cel-expr-python; exceeding it is an evaluation error), and claims nested
  deeper than ``MAX_CLAIMS_DEPTH`` are refused before they reach the C++ converter, which
  recurses without a bound of its own.
  Without loops an expression's cost is linear in its size and in the size of the claims.

A rule allows only when it evaluates to exactly ``true``. ``false``, a non-boolean result and every
error (a missing claim, a type mismatch, the budget exceeded) deny; the failure names the rule and
a fixed cause, never a claim value (CEL's own error text can quote values, so it is not passed on).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import unquote

from cel_expr_python import cel  # type: ignore[import-untyped]  # ships .pyi but no py.typed

MAX_EXPRESSION_LENGTH = 2048
MAX_CLAIMS_DEPTH = 32
RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")  # lands in metric labels and audit records

_ENV = cel.NewEnv(
    variables={
        "claims": cel.Type.Map(cel.Type.STRING, cel.Type.DYN),
        "path": cel.Type.Map(cel.Type.STRING, cel.Type.STRING),
        "request": cel.Type.Map(cel.Type.STRING, cel.Type.STRING),
    }
)
_BOOL = cel.Type.BOOL.name()
_ERROR = cel.Type.ERROR.name()
_ALLOWED_RESULT_TYPES = frozenset({_BOOL, cel.Type.DYN.name()})
# "INVALID_ARGUMENT: ERROR: <input>:1:17: Syntax error: ..." -> line, column, message
_CEL_ERROR = re.compile(r"ERROR: <input>:(\d+):(\d+): ([^\n]*)")
_STATUS_PREFIX = re.compile(r"^[A-Z_]+: ")
_STATUS_SUFFIX = re.compile(r"\s*\[[A-Z_]+\]\s*$")


class Cause(str, Enum):
    """Why a rule denied; a fixed vocabulary, safe for audit records and logs."""

    FALSE = "false"  # evaluated to false
    NOT_BOOLEAN = "not_boolean"  # evaluated to something other than a bool
    ERROR = "error"  # a missing claim or path parameter, a type mismatch, a bad regex, ...
    COST_LIMIT = "cost_limit"  # the iteration budget ran out
    UNSAFE_INPUT = "unsafe_input"  # claims nested too deep or of a type CEL cannot hold


@dataclass(frozen=True, slots=True)
class RuleFailure:
    """The first rule of a route that did not allow the request (``Reason.RULE_FAILED``, 403)."""

    rule: str
    cause: Cause

    @property
    def detail(self) -> str:
        """For the audit record: the rule's name and the cause, never a claim value."""
        return f"rule {self.rule}: {self.cause.value}"


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule; build it with ``compile_rule``."""

    name: str
    expression: str
    _program: Any = field(repr=False, compare=False)

    def check(self, inputs: RuleInputs) -> RuleFailure | None:
        """None when the rule allows; otherwise why not. Never raises."""
        if inputs.activation is None:
            return RuleFailure(self.name, Cause.UNSAFE_INPUT)
        try:
            value = self._program.eval(inputs.activation)
            if value.value() is True:  # only a CEL bool true converts to the True singleton
                return None
            kind = value.type().name()
        except Exception as exc:  # the C++ runtime reports the budget and conversion failures by raising
            cause = Cause.COST_LIMIT if "budget" in str(exc) else Cause.ERROR
            return RuleFailure(self.name, cause)
        if kind == _BOOL:
            return RuleFailure(self.name, Cause.FALSE)
        return RuleFailure(self.name, Cause.ERROR if kind == _ERROR else Cause.NOT_BOOLEAN)


def _clean_message(text: str) -> str:
    """CEL's multi-line diagnostics as one line: ``line 1, column 17: Syntax error: ...``."""
    found = _CEL_ERROR.findall(text.replace(" (in container '')", ""))
    if found:
        return "; ".join(
            f"column {col}: {msg}" if line == "1" else f"line {line}, column {col}: {msg}"
            for line, col, msg in found
        )
    first = text.strip().splitlines()[0] if text.strip() else "invalid expression"
    return _STATUS_SUFFIX.sub("", _STATUS_PREFIX.sub("", first))


def compile_rule(name: str, expression: str) -> Rule:
    """Compile and type-check one rule; raise ValueError with a message fit for ``file:line: key: ...``.

    Refused: a bad name, an empty or over-long expression, a syntax error, a reference to anything
    but ``claims``, ``path`` and ``request``, an unknown function, nesting beyond the parser's limit,
    and an expression whose type is known not to be bool (``claims.tenant``, ``1 + 2``).
    """
    if not RULE_NAME.match(name):
        raise ValueError(
            f"rule name {name!r} must be 1-64 characters of letters, digits, '_', '.', ':' or '-' "
            "(it is used as a metric label)"
        )
    if not expression.strip():
        raise ValueError(f"rule {name}: the expression is empty")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ValueError(
            f"rule {name}: the expression is {len(expression)} characters long; at most "
            f"{MAX_EXPRESSION_LENGTH} are allowed"
        )
    try:
        program = _ENV.compile(expression)
    except Exception as exc:  # the wrapper raises RuntimeError with CEL's diagnostics
        raise ValueError(f"rule {name}: invalid CEL expression: {_clean_message(str(exc))}") from None
    result_type = program.return_type().name()
    if result_type not in _ALLOWED_RESULT_TYPES:
        raise ValueError(f"rule {name}: the expression yields {result_type.lower()}, a rule must yield bool")
    return Rule(name=name, expression=expression, _program=program)


def compile_rules(rules: Iterable[tuple[str, str]]) -> tuple[Rule, ...]:
    """Compile ``(name, expression)`` pairs; names must be unique within a route."""
    compiled: list[Rule] = []
    seen: set[str] = set()
    for name, expression in rules:
        if name in seen:
            raise ValueError(f"rule name {name!r} is used twice on this route")
        seen.add(name)
        compiled.append(compile_rule(name, expression))
    return tuple(compiled)


def _nesting_ok(container: dict[Any, Any] | list[Any], budget: int) -> bool:
    """True when containers nest at most ``budget`` deep below this one (scalars cost one type check)."""
    if budget <= 0:
        return False
    for value in container.values() if isinstance(container, dict) else container:
        if isinstance(value, dict | list) and not _nesting_ok(value, budget - 1):
            return False
    return True


@dataclass(frozen=True, slots=True)
class RuleInputs:
    """One request's variables, converted once and shared by all of a route's rules."""

    activation: Any  # None when the claims could not be handed to CEL safely

    @classmethod
    def build(cls, claims: Mapping[str, Any], path_params: Mapping[str, str], method: str, path: str) -> RuleInputs:
        claims = claims if isinstance(claims, dict) else dict(claims)
        if not _nesting_ok(claims, MAX_CLAIMS_DEPTH):
            return cls(None)
        data = {"claims": claims, "path": dict(path_params), "request": {"method": method, "path": path}}
        try:
            return cls(_ENV.Activation(data))
        except Exception:  # e.g. a lone surrogate in a string: the C++ side refuses it by raising
            return cls(None)


def check_rules(
    rules: Sequence[Rule], claims: Mapping[str, Any], path_params: Mapping[str, str], method: str, path: str
) -> RuleFailure | None:
    """Evaluate a route's rules in order; the first failure, or None when all allow."""
    if not rules:
        return None
    inputs = RuleInputs.build(claims, path_params, method, path)
    for rule in rules:
        failure = rule.check(inputs)
        if failure is not None:
            return failure
    return None


_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def path_parameter_names(template: str) -> tuple[str | None, ...]:
    """Per segment of a ``path`` template: the parameter name, or None for a literal segment."""
    return tuple(m.group(1) if (m := _PARAM.match(p)) else None for p in template.strip("/").split("/"))


def path_parameters(names: Sequence[str | None], path: str) -> dict[str, str]:
    """The parameters of a normalised path that matched the template ``names`` came from.

    Values are percent-decoded (the normaliser already refused encoded ``/``, ``\\``, NUL and
    ``%``). A segment that is not valid UTF-8 once decoded is left out, so a rule that reads it
    errors and denies.
    """
    out: dict[str, str] = {}
    parts = path.strip("/").split("/")
    if len(parts) != len(names):
        return out
    for name, raw in zip(names, parts, strict=True):
        if name is None:
            continue
        try:
            out[name] = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            continue
    return out
