"""Each rendered object against its schema: Kubernetes (strict), Prometheus Operator models, HTTPRoute CRD."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .known import CRD_KINDS, HTTPROUTE

HTTPROUTE_SCHEMA = Path(__file__).resolve().parent / "schemas" / "httproute-v1.json"


def check_crd(doc: dict[str, Any]) -> str:
    try:
        from cloudcoil.models.prometheus_operator import v1 as mon
    except ImportError:
        return "skipped (no CRD models installed)"
    getattr(mon, doc["kind"]).model_validate(doc)
    return "ok (prometheus-operator models)"



def strict(schema: Any) -> Any:
    """A CRD schema as the API server prunes it, made strict: unknown fields are errors."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def check_http_route(doc: dict[str, Any]) -> str:
    """An HTTPRoute against the Gateway API CRD's schema (CEL rules aside)."""
    import jsonschema

    with open(HTTPROUTE_SCHEMA) as f:
        schema = strict(json.load(f))
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors[:5])
    return "ok (Gateway API v1.6.1 CRD schema, strict; CEL rules not evaluated)"



def validate_object(d: dict[str, Any], kube_version: str) -> str:
    """One object against its schema; returns a note, raises on a problem."""
    import kubernetes_validate as kv

    if (d.get("apiVersion"), d.get("kind")) in CRD_KINDS:
        return check_crd(d)
    if (d.get("apiVersion"), d.get("kind")) == HTTPROUTE:
        return check_http_route(d)
    try:
        kv.validate(d, kube_version, strict=True)
    except kv.SchemaNotFoundError:
        raise AssertionError(f"no schema for this apiVersion/kind in Kubernetes {kube_version}") from None
    except kv.ValidationError as e:
        raise AssertionError(f"{'.'.join(map(str, e.path))}: {e.message}") from None
    return ""

