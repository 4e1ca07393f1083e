"""Revocation intake on the admin port (per request): RFC 7009, RFC 8935 SET push and a JSON endpoint.

``register(app, gateway)`` adds the routes to the admin application (endpoints.py).
"""

from .endpoints import register

__all__ = ["register"]
