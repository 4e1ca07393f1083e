"""What ``gateway incident`` investigates: one token, subject, family, key or trace (offline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..query import Query

_KINDS = {"jti": "token jti", "fingerprint": "token fingerprint", "sub": "subject", "family": "token family",
          "key": "key thumbprint", "trace": "trace"}
# the Query field that finds each kind of target's records
_QUERY_FIELD = {"jti": "jti", "fingerprint": "fingerprint", "sub": "sub", "family": "family",
                "key": "key_thumbprint", "trace": "trace_id"}


@dataclass(frozen=True)
class Target:
    """What the incident is about. ``value`` never holds a raw token: --token becomes a fingerprint."""

    kind: str  # jti | fingerprint | sub | family | key | trace
    value: str
    from_token: bool = False

    @classmethod
    def from_options(
        cls, jti: str | None = None, fingerprint: str | None = None, token: str | None = None,
        sub: str | None = None, family: str | None = None, key_thumbprint: str | None = None,
        trace_id: str | None = None,
    ) -> Target:
        """The one target the command line names (ValueError unless exactly one is given);
        a fingerprint, key or trace id is normalised as the query does."""
        given = [(k, v) for k, v in (("jti", jti), ("fingerprint", fingerprint), ("token", token), ("sub", sub),
                                     ("family", family), ("key", key_thumbprint), ("trace", trace_id)) if v]
        if len(given) != 1:
            raise ValueError("give exactly one of --jti, --fingerprint, --token, --sub, --family, --key-thumbprint,"
                             " --trace-id")
        kind, value = given[0]
        if kind == "token":
            return cls("fingerprint", Query.build(token=value).fingerprint or "", from_token=True)
        if kind in ("fingerprint", "key", "trace"):  # normalised as the query normalises it
            return cls(kind, getattr(_query(kind, value), _QUERY_FIELD[kind]) or "")
        return cls(kind, value)

    def query(self) -> Query:
        """The query that finds the target's own records."""
        return _query(self.kind, self.value)

    def describe(self) -> str:
        """The target as the reports name it (a --token by its fingerprint only)."""
        if self.from_token:
            return f"the token given with --token (fingerprint {self.value}; the token itself is not shown)"
        return f"{_KINDS[self.kind]} {self.value}"

    @property
    def is_token(self) -> bool:
        return self.kind in ("jti", "fingerprint")

    @property
    def tokens_title(self) -> str:
        """The heading over the tokens of a subject, family, key or trace target."""
        what = {"sub": "of this subject", "family": "of this family", "key": "used with this key",
                "trace": "seen in this trace"}[self.kind]
        return f"Tokens {what}"


def _query(kind: str, value: str) -> Query:
    """The query on the one field that finds a ``kind`` of target."""
    arguments: dict[str, Any] = {_QUERY_FIELD[kind]: value}
    return Query(**arguments)
