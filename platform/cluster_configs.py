"""Checking cluster configs before they meet a cloud: Ray cluster launcher YAMLs against the
JSON schema inside the ray wheel, KubeRay manifests against KubeRay's CRD schemas.

KubeRay's schemas leave unknown fields open (the API server prunes them silently), so a
typo like `replicaz` would pass; here every object that lists its properties is closed, as
`kubectl apply --validate=strict` does, and an error names the path of the bad field.
"""
from __future__ import annotations

import copy
import json
import os

import yaml

KINDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
         "RayService": "ray.io_rayservices.yaml"}


class ConfigError(ValueError):
    """A cluster config that does not match its schema; says which field and why."""


def field_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _errors(validator, doc, where: str) -> None:
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        lines = [f"{where}: {field_path(e.absolute_path)}: {e.message[:300]}" for e in errors[:10]]
        raise ConfigError("\n".join(lines))


def launcher_schema() -> dict:
    import ray.autoscaler

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        return json.load(f)


def _jsonschema():
    """jsonschema is a development tool here, not a runtime dependency (the dev extra has it)."""
    try:
        import jsonschema
    except ImportError:
        raise ValueError("checking cluster configs needs jsonschema: pip install jsonschema "
                         "(or rayrec's dev extra)") from None
    return jsonschema


def validate_launcher(path: str) -> dict:
    """A cluster launcher YAML, checked against ray/autoscaler/ray-schema.json."""
    jsonschema = _jsonschema()

    with open(path) as f:
        doc = yaml.safe_load(f)
    _errors(jsonschema.Draft7Validator(launcher_schema()), doc, path)
    return doc


def _strict(schema):
    """Close every object schema that lists properties (unless it keeps unknown fields)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and \
                not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def crd_schema(crd_dir: str, kind: str, version: str) -> dict:
    with open(os.path.join(crd_dir, KINDS[kind])) as f:
        crd = yaml.safe_load(f)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = {"type": "object"}   # ObjectMeta: checked by the API server
            return _strict(schema)
    raise ConfigError(f"{kind}: KubeRay's CRD has no version {version!r}")


def validate_kuberay(path: str, crd_dir: str) -> list[dict]:
    """Every document of a KubeRay manifest, checked against its kind's CRD schema."""
    jsonschema = _jsonschema()

    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for i, doc in enumerate(docs):
        where = f"{path} (document {i + 1})" if len(docs) > 1 else path
        kind, api = doc.get("kind"), str(doc.get("apiVersion", ""))
        if kind not in KINDS or not api.startswith("ray.io/"):
            raise ConfigError(f"{where}: kind/apiVersion {kind}/{api} is not a KubeRay resource ({', '.join(KINDS)} "
                              "in ray.io/v1)")
        _errors(jsonschema.Draft7Validator(crd_schema(crd_dir, kind, api.split("/", 1)[1])), doc, where)
    return docs
