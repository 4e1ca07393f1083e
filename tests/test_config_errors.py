"""Configuration errors as an operator reads them: every problem of a file at once, in plain
words, on the line to fix, with the closest known key for a misspelt one.

Each pydantic error type the gateway's schema can raise has a case here with the sentence it
becomes; types the schema cannot raise today are checked on a small model of their own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.config import ConfigError, GatewayConfig, load_config, parse_config
from gateway.config.errors import key_path, model_at, plain_message
from tests.helpers import MINIMAL_CONFIG

ROOT = Path(__file__).resolve().parent.parent
# what pydantic says when a message was not translated: none of it may reach an operator
PYDANTIC_PHRASES = ("Input should", "Field required", "Extra inputs", "List should", "String should",
                    "Value error", "valid dictionary", "instance of", "after validation")


def problems_of(text: str, source: str = "gw.yaml") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source)
    return caught.value.problems


def with_issuer(line: str) -> str:
    return MINIMAL_CONFIG.replace("    audiences: [api]\n", f"    audiences: [api]\n    {line}\n")


def with_route(line: str) -> str:
    return MINIMAL_CONFIG + f"    {line}\n"


# --- every common error type, one sentence each ----------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    # list_type: a scalar where a list goes, and how to write it
    (with_route("methods: GET"), "gw.yaml:11: routes[0].methods: must be a list, e.g. [GET]"),
    (with_route("methods: GET, POST"), "gw.yaml:11: routes[0].methods: must be a list, e.g. [GET, POST]"),
    (MINIMAL_CONFIG.replace("audiences: [api]", "audiences: api"),
     "gw.yaml:3: issuers[0].audiences: must be a list, e.g. [api]"),
    # missing
    (MINIMAL_CONFIG.replace("    upstream: svc\n", ""), "gw.yaml:8: routes[0].upstream: is required but missing"),
    # extra_forbidden, with the closest known key
    (with_issuer("leway: 5s"), "gw.yaml:4: issuers[0].leway: unknown key; did you mean leeway?"),
    (MINIMAL_CONFIG + "listn: 127.0.0.1:80\n", "gw.yaml:11: listn: unknown key; did you mean listen?"),
    (with_route("scope: [a]"), "gw.yaml:11: routes[0].scope: unknown key; did you mean scopes?"),
    # ... and where a key of another section belongs
    (MINIMAL_CONFIG + "require_typ: at+jwt\n",
     "gw.yaml:11: require_typ: unknown key here; require_typ belongs under issuers[]"),
    # ... and the keys of a small section when nothing is close
    (MINIMAL_CONFIG + "audit:\n  zzz: 1\n",
     "gw.yaml:12: audit.zzz: unknown key; the keys here are sink, path, flush_interval, max_batch, max_pending, "
     "stall_timeout"),
    # literal_error: the allowed values, and the closest
    (MINIMAL_CONFIG + "audit:\n  sink: fle\n",
     "gw.yaml:12: audit.sink: must be one of file, stdout, none, not the text 'fle'; did you mean file?"),
    (MINIMAL_CONFIG + "log_level: Debug\n",
     "gw.yaml:11: log_level: must be one of debug, info, warning, error, not the text 'Debug'; did you mean debug?"),
    (with_route("methods: [FETCH]"),
     "gw.yaml:11: routes[0].methods[0]: must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, *, not the "
     "text 'FETCH'"),  # no suggestion: PATCH is not what was meant
    # int_parsing, int_from_float, greater_than_equal, less_than_equal
    (MINIMAL_CONFIG + "workers: two\n", "gw.yaml:11: workers: must be a whole number, not the text 'two'"),
    (MINIMAL_CONFIG + "workers: 1.5\n", "gw.yaml:11: workers: must be a whole number, not the number 1.5"),
    (MINIMAL_CONFIG + "workers: 0\n", "gw.yaml:11: workers: must be at least 1, not 0"),
    (MINIMAL_CONFIG + "workers: 65\n", "gw.yaml:11: workers: must be at most 64, not 65"),
    (with_issuer("leeway: -5"), "gw.yaml:4: issuers[0].leeway: must be at least 0, not -5"),
    # greater_than
    (with_issuer("dpop: {max_age: 0}"), "gw.yaml:4: issuers[0].dpop.max_age: must be more than 0, not 0"),
    # bool_parsing
    (MINIMAL_CONFIG + "watch_config: maybe\n", "gw.yaml:11: watch_config: must be true or false, not the text "
     "'maybe'"),
    # string_type: a number or yes/no YAML read as such, quoted as it was written
    (MINIMAL_CONFIG + "realm: yes\n",
     "gw.yaml:11: realm: must be text, not yes (YAML reads it as a yes/no value); quote it: 'yes'"),
    (MINIMAL_CONFIG.replace("name: r", "name: 42"),
     "gw.yaml:8: routes[0].name: must be text, not 42 (YAML reads it as a number); quote it: '42'"),
    (MINIMAL_CONFIG + "realm: [a]\n", "gw.yaml:11: realm: must be text, not a list"),
    # string_too_short, too_short
    (MINIMAL_CONFIG.replace("name: r", "name: ''"), "gw.yaml:8: routes[0].name: must not be empty"),
    (MINIMAL_CONFIG.replace("audiences: [api]", "audiences: []"),
     "gw.yaml:3: issuers[0].audiences: must not be empty: give at least one item"),
    # model_type: a scalar or nothing where a section goes
    (MINIMAL_CONFIG + "audit: file\n", "gw.yaml:11: audit: must be a section of key: value lines, not the text "
     "'file'"),
    (MINIMAL_CONFIG + "audit:\n", "gw.yaml:11: audit: is empty; it must be a section of key: value lines"),
    (MINIMAL_CONFIG + "  -\n", "gw.yaml:11: routes[1]: is empty; it must be a section of key: value lines"),
    # dict_type
    (MINIMAL_CONFIG.replace("upstreams:\n  svc:\n    url: http://127.0.0.1:9000\n",
                            "upstreams:\n  - url: http://127.0.0.1:9000\n"),
     "gw.yaml:4: upstreams: must be a section of name: settings lines, not a list"),
    # a mapping's key of the wrong type
    (MINIMAL_CONFIG.replace("  svc:\n", "  svc:\n    url: http://127.0.0.1:9000\n  5:\n", 1),
     "gw.yaml:7: upstreams.5: the name 5 must be text; quote it: '5'"),
    # ip networks: the IPv4 and IPv6 members of the union fail alike, said once
    (MINIMAL_CONFIG + "trusted_proxies: [10.0.0.0/33]\n",
     "gw.yaml:11: trusted_proxies[0]: must be an IP network like 10.0.0.0/8 or fd00::/8 (an address alone is one "
     "host), not the text '10.0.0.0/33'"),
    # value_error: the validator's own words
    (with_issuer("leeway: soon"), "gw.yaml:4: issuers[0].leeway: 'soon' is not a duration like 30s, 5m or 1h"),
    (MINIMAL_CONFIG + "listen: localhost\n", "gw.yaml:11: listen: 'localhost' is not a host:port address"),
])
def test_each_error_type_reads_as_a_plain_sentence(text: str, expected: str) -> None:
    problems = problems_of(text)
    assert expected in problems, problems  # the whole line: no suggestion where none is written
    for problem in problems:
        assert not any(phrase in problem for phrase in PYDANTIC_PHRASES), problem


class _Other(BaseModel):
    """Error types the gateway's schema does not raise today: their sentences all the same."""

    model_config = ConfigDict(extra="forbid")
    names: list[str] = Field(default=[], max_length=2)
    code: Annotated[str, Field(max_length=3, pattern=r"^[a-z]+$")] = "a"
    ratio: float = Field(default=0.5, allow_inf_nan=False)
    small: int = Field(default=1, lt=10)
    nothing: None = None
    mode: Literal["a", "b"] = "a"


@pytest.mark.parametrize(("data", "expected"), [
    ({"names": ["a", "b", "c"]}, "names: must have at most 2 items, not 3"),
    ({"code": "abcd"}, "code: must be at most 3 characters long"),
    ({"code": "AB"}, "code: does not have the expected form (^[a-z]+$)"),
    ({"ratio": "half"}, "ratio: must be a number, not the text 'half'"),
    ({"ratio": float("nan")}, "ratio: must be a finite number"),
    ({"small": 10}, "small: must be less than 10, not 10"),
    ({"small": "9" * 5000}, "small: is too large a number"),
    ({"nothing": 1}, "nothing: must be empty, not the number 1"),
    ({"mode": "c"}, "mode: must be one of a, b, not the text 'c'"),
    ({"mdoe": "a"}, "mdoe: unknown key; did you mean mode?"),
])
def test_error_types_beyond_the_schema(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _Other.model_validate(data)
    error = caught.value.errors()[0]
    assert f"{key_path(error['loc'])}: {plain_message(_Other, error)}" == expected


def test_an_unknown_error_type_keeps_pydantic_words() -> None:
    assert plain_message(_Other, {"type": "something_new", "loc": ("code",), "msg": "Something new"}) == \
        "Something new"


def name_of(model: type | None) -> str | None:
    """The class name of a model, None for no model."""
    return model.__name__ if model is not None else None


def test_the_model_behind_a_key() -> None:
    assert name_of(model_at(GatewayConfig, ["issuers", 0])) == "IssuerConfig"
    assert name_of(model_at(GatewayConfig, ["issuers", 0, "introspection"])) == "IntrospectionConfig"
    assert name_of(model_at(GatewayConfig, ["upstreams", "orders"])) == "UpstreamConfig"
    assert model_at(GatewayConfig, ["routes", 0, "methods"]) is None
    assert model_at(GatewayConfig, ["nope"]) is None


# --- every problem at once -------------------------------------------------------------------------

BROKEN = """\
listn: 0.0.0.0:8080
issuers:
  - issuer: https://auth.example.com
    audiences: api
    leway: 30s
upstreams:
  orders:
    url: ${TEST_CE_ORDERS_URL}
    timeout: soon
routes:
  - name: list
    path: /orders
    methods: GET
    upstream: order
  - name: list
    path: /x
    upstream: orders
    issuers: [https://auth.example.org]
  - name: third
    path: /y
    upstream: billing
    client_secret: ${TEST_CE_SECRET}
audit:
  sink: fle
"""


def test_schema_cross_reference_and_environment_problems_come_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_CE_ORDERS_URL", raising=False)
    monkeypatch.delenv("TEST_CE_SECRET", raising=False)
    hint = "(set it, or give a default: ${{{0}:-value}})"
    assert problems_of(BROKEN) == [
        "gw.yaml:1: listn: unknown key; did you mean listen?",
        "gw.yaml:4: issuers[0].audiences: must be a list, e.g. [api]",
        "gw.yaml:5: issuers[0].leway: unknown key; did you mean leeway?",
        f"gw.yaml:8: environment variable TEST_CE_ORDERS_URL is not set {hint.format('TEST_CE_ORDERS_URL')}",
        "gw.yaml:9: upstreams.orders.timeout: 'soon' is not a duration like 30s, 5m or 1h",
        "gw.yaml:13: routes[0].methods: must be a list, e.g. [GET]",
        "gw.yaml:14: routes[0].upstream: unknown upstream 'order'; did you mean orders?",
        "gw.yaml:15: routes[1].name: duplicate route name 'list'",
        "gw.yaml:18: routes[1].issuers: unknown issuer 'https://auth.example.org'; did you mean "
        "https://auth.example.com?",
        "gw.yaml:21: routes[2].upstream: unknown upstream 'billing' (the only upstream is orders)",
        # an unset variable's own line says so once: the unknown key there is not repeated
        f"gw.yaml:22: environment variable TEST_CE_SECRET is not set {hint.format('TEST_CE_SECRET')}",
        "gw.yaml:24: audit.sink: must be one of file, stdout, none, not the text 'fle'; did you mean file?",
    ]


def test_every_unset_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TEST_CE_A", "TEST_CE_B", "TEST_CE_C"):
        monkeypatch.delenv(name, raising=False)
    text = MINIMAL_CONFIG.replace("http://127.0.0.1:9000", "${TEST_CE_A}") + textwrap.dedent("""\
        revocation:
          redis_url: ${TEST_CE_B}
          key_prefix: "${TEST_CE_C}:${TEST_CE_A}"
        """)
    problems = problems_of(text)
    assert [p.split(" is not set")[0] for p in problems] == [
        "gw.yaml:6: environment variable TEST_CE_A", "gw.yaml:12: environment variable TEST_CE_B",
        "gw.yaml:13: environment variable TEST_CE_C", "gw.yaml:13: environment variable TEST_CE_A",
    ]  # and nothing that only follows from them (an upstream URL or a Redis URL left unset)


def test_a_default_stands_in_for_an_unset_or_empty_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_CE_UNSET", raising=False)
    monkeypatch.setenv("TEST_CE_EMPTY", "")
    monkeypatch.setenv("TEST_CE_SET", "from-env")
    text = MINIMAL_CONFIG + 'realm: "${TEST_CE_UNSET:-a}-${TEST_CE_EMPTY:-b}-${TEST_CE_SET:-c}-${TEST_CE_EMPTY}"\n'
    assert parse_config(text).realm == "a-b-from-env-"  # as the shell does: :- covers unset and empty


def test_every_duplicate_key_is_named() -> None:
    text = MINIMAL_CONFIG + "realm: a\nrealm: b\nworkers: 1\nworkers: 2\n"
    assert problems_of(text) == [
        "gw.yaml:12: realm: duplicate key (each key may appear once in a section)",
        "gw.yaml:14: workers: duplicate key (each key may appear once in a section)",
    ]


def test_names_are_checked_even_when_the_schema_fails() -> None:
    """A route naming an unknown upstream is found although another key is wrong."""
    text = MINIMAL_CONFIG.replace("upstream: svc", "upstream: svx") + "workers: many\n"
    assert problems_of(text) == [
        "gw.yaml:10: routes[0].upstream: unknown upstream 'svx'; did you mean svc?",
        "gw.yaml:11: workers: must be a whole number, not the text 'many'",
    ]


def test_hostile_documents_give_problems_not_crashes() -> None:
    for text in ("routes: 5\nupstreams: 7\n", "routes: [[1], 2, {name: [x]}]\nupstreams: {a: 5}\n",
                 "issuers: [5, {issuer: [1]}]\nroutes: [{name: r, path: /r, upstream: [x], issuers: 5}]\n"
                 "upstreams: {}\n", "? [a, b]\n: c\n", "a: &x [*x]\n"):
        with pytest.raises(ConfigError) as caught:
            parse_config(text, "gw.yaml")
        assert caught.value.problems and all(p.startswith("gw.yaml:") for p in caught.value.problems), text


# --- YAML syntax, on the line to fix ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    # an unclosed [ is noticed lines later: the line that opened it is the one to fix
    ("upstreams:\n  svc:\n    url: http://x\nroutes:\n  - name: a\n    methods: [GET, POST\n    upstream: svc\n",
     "gw.yaml:6: YAML syntax error (column 14): the list opened with [ is not closed with ] (found at line 7)"),
    ("realm: 'abc\nworkers: 2\n",
     "gw.yaml:1: YAML syntax error (column 8): the quote opened here is never closed (found at line 3)"),
    ("upstreams:\n  svc:\n    url: http://x\nroutes:\n  - name: a\n    path: /x\n   upstream: svc\n",
     "gw.yaml:7: YAML syntax error (column 4): this line does not line up with the lines above it (check the "
     "indentation)"),
    ("upstreams:\n\tsvc: {}\n", "gw.yaml:2: YAML syntax error (column 1): a tab character: YAML indents with "
     "spaces only"),
    ("realm: a: b\n", "gw.yaml:1: YAML syntax error (column 9): a ': ' inside a value; quote the value (\"a: b\") "
     "or fix the indentation"),
    ("realm: *nowhere\n", "gw.yaml:1: YAML syntax error (column 8): an alias (*name) with no anchor (&name) "
     "before it"),
    ("realm: !!python/object:os.system x\n", "gw.yaml:1: YAML syntax error (column 8): a tag (!something) the "
     "gateway does not accept"),
    ("realm: x\nworkers: 2\n\x07\n", "gw.yaml:3: YAML syntax error: the control character U+0007 is not allowed"),
    ("workers: 2\nroutes: [1]]\n", "gw.yaml:2: YAML syntax error (column 12): a ] with no [ open before it"),
    ('realm: "x" y\n', "gw.yaml:1: YAML syntax error (column 12): more text after a quoted value: quote the whole "
     "value"),
    ('realm: "\\q"\n', "gw.yaml:1: YAML syntax error (column 8): an unknown escape (\\) in a double-quoted value; "
     "use single quotes"),
])
def test_yaml_syntax_errors_name_the_line_to_fix(text: str, expected: str) -> None:
    problems = problems_of(text)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_empty_and_non_mapping_documents() -> None:
    assert problems_of("") == ["gw.yaml:1: the configuration is empty (it needs at least upstreams and routes)"]
    assert problems_of("# only a comment\n") == problems_of("")
    assert problems_of("- a\n") == ["gw.yaml:1: the configuration must be a YAML mapping (key: value lines), not "
                                    "a list"]


# --- files -----------------------------------------------------------------------------------------


def test_a_missing_file_and_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_config(tmp_path / "absent.yaml")
    assert missing.value.problems == [f"{tmp_path / 'absent.yaml'}: no such file"]
    with pytest.raises(ConfigError) as directory:
        load_config(tmp_path)
    assert directory.value.problems == [f"{tmp_path}: is a directory, not a configuration file"]


def test_the_full_example_checks_out_of_the_box() -> None:
    """config/gateway.full.yaml with none of its variables set: the defaults after :- stand in."""
    env = {k: v for k, v in os.environ.items() if k not in ("INTROSPECTION_SECRET", "REDIS_URL")}
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", "config/gateway.full.yaml"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stderr) == (0, "")
    assert re.fullmatch(r"config/gateway\.full\.yaml: ok \(\d+ routes, 1 upstream, 2 issuers\)\n", run.stdout)
    full = yaml.safe_load((ROOT / "config/gateway.full.yaml").read_text())
    assert full["revocation"]["redis_url"] == "${REDIS_URL:-redis://127.0.0.1:6379/0}"  # the variable still wins
