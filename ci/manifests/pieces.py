"""One `helm template` output and the pieces of it the chart rules look at."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from .known import CHART_OWNED, CONFIG_REQUIRED


def port_of(listen: str) -> int:
    return int(str(listen).rsplit(":", 1)[1])



def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())



def config_schema(values_schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a rendered gateway.yaml: the values' gateway section plus what the chart sets."""
    gateway = copy.deepcopy(values_schema["properties"]["gateway"])
    listen = {"type": "string", "pattern": "^(\\[[0-9A-Fa-f:]+\\]|[^:\\s]+):[0-9]+$"}
    for key in CHART_OWNED["gateway"]:
        gateway["properties"][key] = listen
    gateway["properties"]["revocation"]["properties"]["redis_url"] = {"type": "string", "const": "${REDIS_URL}"}
    gateway["required"] = sorted(set(gateway.get("required", [])) | CONFIG_REQUIRED)
    return {"definitions": values_schema.get("definitions", {}), **gateway}


class Pieces:
    """One `helm template` output, and the pieces of it that the rules read."""

    def __init__(self, path: str, docs: list[dict[str, Any]], values_schema: dict[str, Any] | None = None) -> None:
        self.path = path
        self.docs = docs
        self.values_schema = values_schema

    def of_kind(self, kind: str) -> Iterator[dict[str, Any]]:
        return (d for d in self.docs if d.get("kind") == kind)

    def one(self, kind: str, pred: Callable[[dict[str, Any]], bool] = lambda d: True) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if pred(d)]
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        template: dict[str, Any] = self.deployment["spec"]["template"]
        return template

    @property
    def gateway_container(self) -> dict[str, Any]:
        return next(c for c in self.pod["spec"]["containers"] if c["name"] == "gateway")

    @property
    def config_volume(self) -> dict[str, Any]:
        mount = next((m for m in self.gateway_container.get("volumeMounts", []) if m["mountPath"] == "/etc/gateway"), None)
        assert mount, "nothing mounted at /etc/gateway"
        return next(v for v in self.pod["spec"]["volumes"] if v["name"] == mount["name"])

    @property
    def config_key(self) -> str:
        """The ConfigMap key that becomes /etc/gateway/gateway.yaml."""
        items = self.config_volume.get("configMap", {}).get("items") or []
        return next((i["key"] for i in items if i["path"] == "gateway.yaml"), "gateway.yaml")

    @property
    def config_map(self) -> dict[str, Any] | None:
        """The mounted ConfigMap, or None when it is not part of the render (config.existingConfigMap)."""
        name = self.config_volume.get("configMap", {}).get("name")
        found = [d for d in self.of_kind("ConfigMap") if d["metadata"]["name"] == name]
        return found[0] if found else None

    @property
    def config(self) -> dict[str, Any]:
        cm = self.config_map
        assert cm is not None, "the gateway's ConfigMap is not in this render"
        assert self.config_key in (cm.get("data") or {}), f"ConfigMap {cm['metadata']['name']} has no key {self.config_key}"
        config = yaml.safe_load(cm["data"][self.config_key])
        assert isinstance(config, dict), "gateway.yaml is not a mapping"
        return config


    @property
    def public_service(self) -> dict[str, Any]:
        return self.one("Service", lambda s: "http" in {p["name"] for p in s["spec"]["ports"]})
