"""Custom resources checked against their CRDs' schemas (deploy/crds/), as strictly as the API
server's strict field validation: an unknown field is an error, not silently pruned."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

import jsonschema
import pytest
from support import REPO_ROOT

CRDS = REPO_ROOT / "deploy" / "crds"
SCHEMAS = {  # (apiVersion, kind): the file extract.py wrote
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.v1.json",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "serving.kserve.io_servingruntimes.v1alpha1.json",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): (
        "serving.kserve.io_clusterservingruntimes.v1alpha1.json"
    ),
    ("serving.kserve.io/v1beta1", "InferenceService"): "serving.kserve.io_inferenceservices.v1beta1.json",
}


def strict(schema: Any) -> Any:
    """Every object schema that lists its properties refuses others, unless it keeps unknown
    fields on purpose (x-kubernetes-preserve-unknown-fields) or types them (additionalProperties)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict(field) for name, field in value.items()}
        else:
            out[key] = strict(value)
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((CRDS / SCHEMAS[(api_version, kind)]).read_text())
    return jsonschema.Draft7Validator(strict(schema))


def custom_resource_errors(resource: dict) -> list[str]:
    """What is wrong with a custom resource by its CRD's schema, one line per error."""
    check = validator(resource["apiVersion"], resource["kind"])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in check.iter_errors(resource)]


@pytest.fixture
def crd_errors() -> Callable[[dict], list[str]]:
    return custom_resource_errors
