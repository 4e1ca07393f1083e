"""tokengate: an OAuth 2.0 token-enforcing reverse-proxy API gateway."""

__version__ = "0.1.0"
