"""The request models on their own: strict types, finite numbers, no unknown fields, and
field paths as the error bodies name them."""
import pytest
from pydantic import ValidationError

from rayrec.serve.api import Batch, Session, field_of


def test_a_valid_session_and_its_defaults():
    s = Session.model_validate({"events": [{"product_id": 1, "event_time": 1.5, "brand": "x", "price": None}]})
    assert (s.k, s.exclude_seen, s.include, s.exclude) == (10, False, None, None)
    assert Batch.model_validate({"sessions": [{"events": [{"product_id": "a"}], "k": 3}]}).sessions[0].k == 3


@pytest.mark.parametrize("body", [
    {"events": []}, {"k": 3}, {"events": {"a": 1}}, {"events": [{"product_id": 1}], "k": "10"},
    {"events": [{"product_id": 1}], "k": 2.5}, {"events": [{"product_id": 1}], "k": True},
    {"events": [{"product_id": 1}], "k": 0}, {"events": [{"product_id": [1]}]}, {"events": [{"product_id": {"a": 1}}]},
    {"events": [{"product_id": float("nan")}]}, {"events": [{"price": float("inf")}]},
    {"events": [{"product_id": 1}], "exclude_seen": "yes"}, {"events": [{"product_id": 1}], "include": [1.5]},
    {"events": [{"product_id": 1}], "extra": 1},
])
def test_bad_sessions_are_refused(body):
    with pytest.raises(ValidationError):
        Session.model_validate(body)


def test_field_paths():
    assert field_of(("body", "sessions", 0, "events", 3, "product_id")) == "sessions[0].events[3].product_id"
    assert field_of(("body", "k")) == "k" and field_of(("body",)) == "body"


def test_emit_config_writes_a_serve_config_that_ray_accepts_and_builds(tmp_path, capsys):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from rayrec.cli import main
    from rayrec.serve.app import build

    path = str(tmp_path / "serve.yaml")
    config = tmp_path / "rayrec.yaml"
    config.write_text("serve:\n  max_replicas: 4\n  max_batch_size: 8\n")
    assert main(["serve", "--run", "s3://bucket/run", "--config", str(config), "--port", "9000",
                 "--emit-config", path]) == 0
    doc = yaml.safe_load(open(path))
    ServeDeploySchema.model_validate(doc)
    (app,) = doc["applications"]
    assert app["args"]["run"] == "s3://bucket/run" and app["args"]["max_batch_size"] == 8
    assert app["deployments"][0]["autoscaling_config"]["max_replicas"] == 4 and doc["http_options"]["port"] == 9000
    assert build(app["args"]) is not None


def test_every_serve_option_is_documented():
    import dataclasses
    import os

    from rayrec.serve.config import ServeConfig

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "serve.md")).read()
    assert not [f.name for f in dataclasses.fields(ServeConfig) if f"`{f.name}`" not in doc]
