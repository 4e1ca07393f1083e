"""The values schema's `gateway:` section against the gateway's config models (gateway/config/), tree against tree."""

from __future__ import annotations

import json
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from .known import CHART_OWNED
from .report import Report


def resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def branches(node: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    """A schema node and every alternative it allows (oneOf/anyOf/allOf), $refs resolved."""
    node = resolve(node, root)
    found = [node]
    for key in ("oneOf", "anyOf", "allOf"):
        for sub in node.get(key, []):
            found += branches(sub, root)
    return found


def type_arms(annotation: Any) -> list[Any]:
    """The alternatives of a field's type, without None and Annotated's metadata."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return type_arms(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [arm for a in get_args(annotation) if a is not type(None) for arm in type_arms(a)]
    return [annotation]


class ModelWalk:
    """Walks a pydantic model tree beside the JSON schema that should accept the same documents.

    Each model met (GatewayConfig, and every nested one: issuers[], routes[].rules[], tls...)
    becomes one result: the keys the schema lacks or has in excess (less CHART_OWNED), and
    the Literal fields whose enum differs. A model added to gateway/config/ is found here
    without anyone listing it.
    """

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.results: list[tuple[str, str, list[str]]] = []

    def model(self, model: Any, node: dict[str, Any], where: str) -> None:
        problems: list[str] = []
        objects = [b for b in branches(node, self.root) if "properties" in b]
        if not objects:
            self.results.append((where, model.__name__, ["the schema has no object with properties here"]))
            return
        obj = objects[0]
        if obj.get("additionalProperties") is not False:
            problems.append("not closed (additionalProperties: false): a typo would pass the schema")
        in_schema = set(obj["properties"])
        in_model = set(model.model_fields) - CHART_OWNED.get(where, set())
        if in_model - in_schema:
            problems.append(f"schema lacks {sorted(in_model - in_schema)}")
        if in_schema - in_model:
            problems.append(f"schema has keys the gateway refuses: {sorted(in_schema - in_model)}")
        self.results.append((where, model.__name__, problems))
        for name, field in model.model_fields.items():
            if name in obj["properties"]:
                self.value(field.annotation, obj["properties"][name], f"{where}.{name}", problems)

    def value(self, annotation: Any, node: dict[str, Any], where: str, problems: list[str]) -> None:
        from pydantic import BaseModel

        for arm in type_arms(annotation):
            origin = get_origin(arm)
            alternatives = branches(node, self.root)
            if isinstance(arm, type) and issubclass(arm, BaseModel):
                self.model(arm, node, where)
            elif origin is list:
                items = [b["items"] for b in alternatives if isinstance(b.get("items"), dict)]
                if not items:
                    problems.append(f"{where}: a list for the gateway, no array items in the schema")
                else:
                    self.value(get_args(arm)[0], items[0], f"{where}[]", problems)
            elif origin is dict:
                values = [b["additionalProperties"] for b in alternatives if isinstance(b.get("additionalProperties"), dict)]
                if not values:
                    problems.append(f"{where}: a mapping for the gateway, no additionalProperties schema")
                else:
                    self.value(get_args(arm)[1], values[0], f"{where}.*", problems)
            elif origin is Literal:
                want = {str(v) for v in get_args(arm)}
                allowed = {str(v) for b in alternatives for v in b.get("enum", [b["const"]] if "const" in b else [])
                           if v is not None}
                if allowed != want:
                    problems.append(f"{where}: the schema allows {sorted(allowed)}, the gateway {sorted(want)}")


def check_schema_against_models(rep: Report, schema_path: str) -> None:
    """The values schema's gateway section against the gateway's pydantic models, tree against tree."""
    try:
        from gateway import config as models
    except Exception as e:  # reported, never skipped: this is how the two drifted apart before
        rep.fail("values schema vs gateway config models",
                 f"cannot import gateway.config ({type(e).__name__}: {e}); run with the project's .venv python")
        return
    with open(schema_path) as f:
        schema = json.load(f)
    walk = ModelWalk(schema)
    walk.model(models.GatewayConfig, schema["properties"]["gateway"], "gateway")
    for where, name, problems in walk.results:
        what = f"values schema matches the gateway's {name} at {where}"
        if problems:
            rep.fail(what, "; ".join(problems))
        else:
            rep.ok(what)


