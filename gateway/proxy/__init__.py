"""The streaming forwarder and its header rules (per request; the pools start with the gateway).

Bodies stream both ways in chunks (nothing is held whole in memory), hop-by-hop headers
(RFC 9110 7.6.1, including those named in ``Connection``) are dropped, and the identity
headers the upstream trusts are always set by the gateway, never passed from the client.
Other headers upstreams are known to trust for the user, the client or the URL and method
(``strip_request_headers``) are dropped whoever sent them; client-address headers pass
only from a trusted proxy.
"""

from ..addresses import IPNetwork, client_address, forwarded_for, is_trusted
from .errors import BodyTooLarge, StreamAborted, UpstreamFailure
from .forwarder import forward
from .headers import HeaderStrip, compile_strip, drop_cookies, header_key, strip_rule
from .identity import UnsafeIdentity, identity_values
from .request_headers import ForwardContext, upstream_headers
from .upstream import Upstream, Upstreams

__all__ = [
    "BodyTooLarge",
    "ForwardContext",
    "HeaderStrip",
    "IPNetwork",
    "StreamAborted",
    "UnsafeIdentity",
    "Upstream",
    "UpstreamFailure",
    "Upstreams",
    "client_address",
    "compile_strip",
    "drop_cookies",
    "forward",
    "forwarded_for",
    "header_key",
    "identity_values",
    "is_trusted",
    "strip_rule",
    "upstream_headers",
]
