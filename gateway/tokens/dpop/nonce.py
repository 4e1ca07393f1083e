"""Server-issued DPoP nonces (RFC 9449 section 8): stateless, shared by replicas that share the secret.

Made once per gateway; ``current`` and ``accepts`` run per request.
"""

from __future__ import annotations

import hmac
import math
import os
import time

from ..jws import b64url_encode


class NonceSource:
    """Nonces the gateway issues: base64url(HMAC-SHA256(secret, time bucket)).

    Every replica given the same ``secret`` issues and accepts the same nonces, with no shared
    state. The previous, current and next bucket are accepted: a nonce stays valid for at least
    one full ``period`` after it was issued, and replicas whose clocks differ a little agree.
    Without a secret each process draws its own, so nonces are per process.
    """

    def __init__(self, secret: bytes | None = None, period: float = 60.0) -> None:
        if secret is not None and len(secret) < 16:
            raise ValueError("the DPoP nonce secret must be at least 16 bytes")
        if period <= 0:
            raise ValueError("the DPoP nonce period must be positive")
        self._secret = secret if secret is not None else os.urandom(32)
        self.period = period

    def current(self, now: float | None = None) -> str:
        """The nonce to send in ``DPoP-Nonce`` now."""
        return self._for_bucket(self._bucket(now))

    def accepts(self, nonce: str, now: float | None = None) -> bool:
        bucket = self._bucket(now)
        candidate = nonce.encode("utf-8", "surrogatepass")
        # compare with all three so the time taken does not say which bucket matched
        buckets = (bucket - 1, bucket, bucket + 1)
        return any([hmac.compare_digest(candidate, self._for_bucket(b).encode()) for b in buckets])

    def _bucket(self, now: float | None) -> int:
        return math.floor((time.time() if now is None else now) / self.period)

    def _for_bucket(self, bucket: int) -> str:
        mac = hmac.new(self._secret, b"tokengate-dpop-nonce:" + bucket.to_bytes(8, "big", signed=True), "sha256")
        return b64url_encode(mac.digest())
