"""The launcher YAMLs and KubeRay manifests in cluster/ validate against their schemas (the
ray wheel's, KubeRay 1.7.0's CRDs), and a broken copy of each fails naming the bad field."""
import glob
import os

import pytest
import yaml

from conftest import shared_path
from rayrec.cluster_configs import ConfigError, validate_kuberay, validate_launcher

CLUSTER = os.path.join(os.path.dirname(__file__), "..", "cluster")
LAUNCHERS = sorted(glob.glob(os.path.join(CLUSTER, "launcher", "*.yaml")))
MANIFESTS = sorted(glob.glob(os.path.join(CLUSTER, "kuberay", "*.yaml")))


def crds():
    return shared_path("reference", "kuberay-v1.7.0-crds")


def test_every_config_is_there():
    assert {os.path.basename(p) for p in LAUNCHERS} == {"aws.yaml", "gcp.yaml"}
    assert {os.path.basename(p) for p in MANIFESTS} == {"raycluster.yaml", "rayjob.yaml", "rayservice.yaml"}


@pytest.mark.parametrize("path", LAUNCHERS, ids=os.path.basename)
def test_launcher_yaml_validates_and_a_broken_copy_names_the_field(path, tmp_path):
    doc = validate_launcher(path)
    assert doc["available_node_types"][doc["head_node_type"]]  # a CPU head
    gpu = [t for t in doc["available_node_types"].values() if t.get("max_workers", 0) > t.get("min_workers", 0)]
    assert gpu, "an autoscaling worker group"
    assert any("rayrec" in c for c in doc["setup_commands"])
    broken = dict(doc, available_node_types={k: dict(v, min_workers="two") if k != doc["head_node_type"] else v
                                             for k, v in doc["available_node_types"].items()})
    broken["idle_timeout_minutess"] = 5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(broken))
    with pytest.raises(ConfigError) as e:
        validate_launcher(str(bad))
    assert "min_workers" in str(e.value) and "idle_timeout_minutess" in str(e.value)


@pytest.mark.parametrize("path", MANIFESTS, ids=os.path.basename)
def test_kuberay_manifest_validates_and_a_broken_copy_names_the_field(path, tmp_path):
    docs = validate_kuberay(path, crds())
    doc = docs[0]
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
    assert cluster["workerGroupSpecs"][0]["maxReplicas"] > cluster["workerGroupSpecs"][0]["minReplicas"]
    if doc["kind"] == "RayJob":
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        assert "examples/pipeline.yaml" in spec["entrypoint"]
    if doc["kind"] == "RayService":
        assert "rayrec.serve.app:build" in spec["serveConfigV2"]
    cluster["workerGroupSpecs"][0]["replicaz"] = 2           # a typo the API server would silently drop
    cluster["headGroupSpec"]["rayStartParams"] = "num-cpus=0"  # a string where a map belongs
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as e:
        validate_kuberay(str(bad), crds())
    message = str(e.value)
    assert "workerGroupSpecs[0]" in message and "'replicaz' was unexpected" in message
    assert "headGroupSpec.rayStartParams" in message


def test_the_serve_config_of_the_rayservice_builds_the_app(tmp_path):
    """The RayService's serveConfigV2 names a builder that exists and takes those args."""
    from rayrec.serve.app import build

    doc = validate_kuberay(os.path.join(CLUSTER, "kuberay", "rayservice.yaml"), crds())[0]
    app = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]
    module, _, name = app["import_path"].partition(":")
    assert module == "rayrec.serve.app" and name == "build"
    assert build(dict(app["args"])) is not None
    with pytest.raises(ValueError, match="unknown option"):
        build({"run": "x", "max_eventz": 3})
