"""The command line: which checks run on which files, and the dumps for promtool and check-config."""

from __future__ import annotations

import argparse
import json
import os

import yaml

from .models import check_schema_against_models
from .objects import validate_object
from .render import Render
from .report import Report


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m ci.manifests", description="Validate rendered tokengate manifests offline.")
    p.add_argument("--kube-version", default="1.30.0")
    p.add_argument("--dump-configs", metavar="DIR")
    p.add_argument("--dump-rules", metavar="DIR")
    p.add_argument("--values-schema", metavar="FILE")
    p.add_argument("--against-models", action="store_true",
                   help="compare --values-schema with gateway/config/ (needs the gateway importable)")
    p.add_argument("files", nargs="*")
    a = p.parse_args()
    if a.against_models:
        if not a.values_schema or a.files:
            p.error("--against-models takes --values-schema and no FILE")
        rep = Report()
        check_schema_against_models(rep, a.values_schema)
        print(f"values-schema: {rep.passed} passed, {rep.failed} failed")
        return 1 if rep.failed else 0
    if not a.files:
        p.error("no FILE to validate")
    values_schema = None
    if a.values_schema:
        with open(a.values_schema) as f:
            values_schema = json.load(f)
    rep = Report()
    for path in a.files:
        try:
            with open(path) as f:
                docs = [d for d in yaml.safe_load_all(f) if d]
        except yaml.YAMLError as e:
            rep.fail(path, f"YAML: {e}")
            continue
        # 1. Kubernetes schemas
        for d in docs:
            name = f"{path}: {d.get('kind')}/{(d.get('metadata') or {}).get('name')} ({d.get('apiVersion')})"
            try:
                note = validate_object(d, a.kube_version)
            except AssertionError as e:
                rep.fail(name, str(e))
            except Exception as e:  # pydantic's ValidationError and the like
                rep.fail(name, f"{type(e).__name__}: {e}")
            else:
                rep.ok(name, note)
        # 2. and 3. the chart's rules
        render = Render(path, docs, values_schema)
        for what, fn in render.rules():
            rep.check(f"{path}: {what}", fn)
        stem = os.path.splitext(os.path.basename(path))[0]
        if a.dump_configs and render.config_map is not None:
            os.makedirs(a.dump_configs, exist_ok=True)
            with open(os.path.join(a.dump_configs, f"{stem}.gateway.yaml"), "w") as f:
                f.write(render.config_map["data"][render.config_key])
        if a.dump_rules:
            for pr in render.of_kind("PrometheusRule"):
                os.makedirs(a.dump_rules, exist_ok=True)
                with open(os.path.join(a.dump_rules, f"{stem}.rules.yaml"), "w") as f:
                    yaml.safe_dump({"groups": pr["spec"]["groups"]}, f, sort_keys=False)
    print(f"manifests: {rep.passed} passed, {rep.failed} failed")
    return 1 if rep.failed else 0
