"""Make a DPoP request (RFC 9449): a fresh proof per request, nonce retry included.

Installed with the package as ``gateway dpop-request`` (also ``python -m gateway.tokens.dpop_client``;
``tools/dpop_client.py`` runs it from a checkout)::

    # get a DPoP-bound token from a token endpoint (client_credentials, RFC 9449 section 5), then call the API
    gateway dpop-request --token-endpoint http://127.0.0.1:9400/token --scope orders:read \\
        http://127.0.0.1:8080/dpop/orders

    # a token already bound to the key in dpop-key.pem (created on first use, EC P-256, mode 0600)
    gateway dpop-request --key dpop-key.pem --token "$TOKEN" http://127.0.0.1:8080/dpop/orders

    # the key's RFC 7638 thumbprint: the cnf.jkt a token bound to it carries
    gateway dpop-request --key dpop-key.pem --print-jkt

When the server answers ``use_dpop_nonce`` with a ``DPoP-Nonce`` header, the request is sent
once more with a new proof carrying that nonce. Redirects are not followed (a proof is only
good for the URL it names) and no HTTP proxy is used. Only loopback URLs are accepted unless
``--allow-remote`` is given. The status line and the WWW-Authenticate / DPoP-Nonce headers go
to stderr, the body to stdout; the exit status is 0 for a 2xx answer, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .dpop import ProofRequest, key_thumbprint, sign_proof

CLIENT_SECRET_ENV = "DPOP_CLIENT_SECRET"  # never on the command line, where other users can read it


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx comes back as the answer: the proof must not be replayed elsewhere


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def load_or_create_key(path: Path | None) -> Any:
    """The private key in ``path`` (PEM, EC/RSA/Ed25519); a new EC P-256 key saved there if absent."""
    if path is not None and path.exists():
        try:
            return serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise SystemExit(f"{path}: not an unencrypted PEM private key ({exc})") from None
    key = ec.generate_private_key(ec.SECP256R1())
    if path is not None:
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the owner only, never overwritten
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    return key


def require_loopback(url: str) -> None:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"refusing to send a request to {host!r}: not a loopback address (use --allow-remote)")


def send(method: str, url: str, headers: dict[str, str], data: bytes | None = None) -> Answer:
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - http(s) checked
    try:
        with _OPENER.open(request, timeout=30) as response:
            return Answer(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers.items()), error.read())
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SystemExit(f"cannot reach {url}: {reason}") from None


def wants_nonce(answer: Answer) -> str | None:
    """The nonce to retry with when the server asked for one (RFC 9449 sections 8 and 9)."""
    nonce = answer.headers.get("DPoP-Nonce")
    if nonce and answer.status in (400, 401) and b"use_dpop_nonce" in _challenge_and_body(answer):
        return nonce
    return None


def _challenge_and_body(answer: Answer) -> bytes:
    return answer.headers.get("WWW-Authenticate", "").encode() + answer.body


def dpop_send(key: Any, method: str, url: str, headers: dict[str, str], token: str | None,
              data: bytes | None = None) -> Answer:
    """Send with a fresh proof; once more with the server's nonce if it asks for one."""
    nonce: str | None = None
    answer = Answer(0, {}, b"")
    for _ in range(2):
        proof = sign_proof(key, ProofRequest(method=method, url=url, access_token=token, nonce=nonce))
        answer = send(method, url, {**headers, "DPoP": proof}, data)
        nonce = wants_nonce(answer)
        if nonce is None:
            return answer
    return answer


def client_authentication(client_id: str | None) -> dict[str, str]:
    """HTTP Basic for a confidential client (RFC 6749 section 2.3.1), the secret from the environment."""
    if client_id is None:
        return {}
    secret = os.environ.get(CLIENT_SECRET_ENV)
    if secret is None:
        raise SystemExit(f"--client-id needs the client secret in ${CLIENT_SECRET_ENV}")
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def fetch_token(key: Any, endpoint: str, scope: str, client_id: str | None = None) -> str:
    """A DPoP-bound access token by client_credentials, the proof naming the token endpoint."""
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": scope}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", **client_authentication(client_id)}
    answer = dpop_send(key, "POST", endpoint, headers, None, form)
    if answer.status != 200:
        raise SystemExit(f"token endpoint answered {answer.status}: {answer.body[:300]!r}")
    try:
        reply = json.loads(answer.body)
        token = reply["access_token"]
    except (ValueError, TypeError, KeyError):
        raise SystemExit("the token endpoint's answer has no access_token") from None
    if not isinstance(token, str) or not token:
        raise SystemExit("the token endpoint's access_token is not a string")
    if str(reply.get("token_type", "")).lower() != "dpop":
        print(f"warning: token_type is {reply.get('token_type')!r}, not DPoP", file=sys.stderr)
    return token


def report(answer: Answer) -> int:
    print(f"HTTP {answer.status}", file=sys.stderr)
    for name in ("WWW-Authenticate", "DPoP-Nonce"):
        if name in answer.headers:
            print(f"{name}: {answer.headers[name]}", file=sys.stderr)
    sys.stdout.buffer.write(answer.body)
    sys.stdout.flush()
    return 0 if 200 <= answer.status < 300 else 1


def parse_headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"-H wants 'Name: value', got {line!r}")
        headers[name.strip()] = value.strip()
    return headers


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description="Make a DPoP (RFC 9449) request: a fresh proof per "
                                     "request, one retry with the server's DPoP-Nonce when asked.")
    parser.add_argument("url", nargs="?", help="the resource URL, e.g. http://127.0.0.1:8080/dpop/orders")
    parser.add_argument("--key", type=Path,
                        help="PEM private key (created as EC P-256 if absent; ephemeral if omitted)")
    parser.add_argument("--token", help="the DPoP-bound access token (or $DPOP_TOKEN)")
    parser.add_argument("--token-endpoint", help="get a DPoP-bound token here first (client_credentials)")
    parser.add_argument("--scope", default="orders:read", help="scope asked of --token-endpoint")
    parser.add_argument("--client-id", help=f"authenticate to --token-endpoint (HTTP Basic; secret in "
                        f"${CLIENT_SECRET_ENV})")
    parser.add_argument("-X", "--method", default="GET")
    parser.add_argument("-d", "--data", help="request body")
    parser.add_argument("-H", "--header", action="append", default=[], help="extra header 'Name: value'")
    parser.add_argument("--print-jkt", action="store_true", help="print the key's cnf.jkt thumbprint and exit")
    parser.add_argument("--allow-remote", action="store_true", help="allow URLs that are not loopback")
    return parser.parse_args(argv)


def _checked_url(url: str, allow_remote: bool) -> str:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise SystemExit(f"{url!r} is not an http(s) URL")
    if not allow_remote:
        require_loopback(url)
    return url


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    key = load_or_create_key(args.key)
    if args.print_jkt:
        print(key_thumbprint(key))
        return 0
    if not args.url:
        raise SystemExit("a URL is required")
    for url in (args.url, args.token_endpoint):
        if url:
            _checked_url(url, args.allow_remote)
    token = fetch_token(key, args.token_endpoint, args.scope, args.client_id) if args.token_endpoint else (
        args.token or os.environ.get("DPOP_TOKEN"))
    if not token:
        raise SystemExit("--token, $DPOP_TOKEN or --token-endpoint is required")
    headers = {**parse_headers(args.header), "Authorization": f"DPoP {token}"}
    data = args.data.encode() if args.data is not None else None
    return report(dpop_send(key, args.method.upper(), args.url, headers, token, data))


if __name__ == "__main__":
    sys.exit(main())
