"""Validate rendered tokengate manifests offline.

usage: python -m ci.manifests [--kube-version 1.30.0] [--dump-configs DIR] [--dump-rules DIR]
                             [--values-schema charts/tokengate/values.schema.json] FILE...
       python -m ci.manifests --against-models --values-schema charts/tokengate/values.schema.json

Each FILE is one `helm template` output. Three kinds of checks, each printed as
"ok" or "FAIL", then one closing line "manifests: N passed, N failed":

1. Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields are
   errors). An apiVersion/kind with no schema for the Kubernetes version (a
   removed API such as policy/v1beta1) is an error too, except the Prometheus
   Operator kinds, which are checked with the cloudcoil pydantic models, and the
   Gateway API HTTPRoute, checked against the CRD's own OpenAPI schema
   (ci/manifests/schemas/httproute-v1.json, strict; its CEL rules are not evaluated).
2. The chart's own rules: the hardening the chart promises (non-root, read-only
   root filesystem, no privilege escalation, capabilities dropped, seccomp), the
   probes, the grace period against shutdown_grace, the config file against the
   values schema's gateway section (with the keys the chart sets itself) and its
   listen ports against the container ports, and that every selector and port
   name refers to something that exists in the same render.
3. The Grafana dashboard JSON and the metric names used by alerts and panels.

--against-models (no FILE) compares the values schema's `gateway:` section with the
gateway's config models (gateway/config/), walking both trees: every model's keys
and every Literal's values must be what the schema allows, so neither can drift from
the other. It needs a Python that imports the gateway package (the project's .venv);
kubernetes-validate is not needed for it.

--dump-configs DIR writes each rendered gateway.yaml to DIR (as
<render>.gateway.yaml), for `gateway check-config`; --dump-rules DIR writes each
PrometheusRule's groups as a Prometheus rule file (<render>.rules.yaml), for
`promtool check rules` and `promtool test rules`.
"""

from __future__ import annotations

from .cli import main
from .models import ModelWalk, check_schema_against_models
from .pieces import config_schema
from .report import Report

__all__ = ["ModelWalk", "Report", "check_schema_against_models", "config_schema", "main"]
