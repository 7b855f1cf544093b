"""cluster.yaml is a valid Ray cluster launcher config (Ray's own schema) and keeps its promises."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).parents[1] / "cluster.yaml"


def _load():
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_validates_against_rays_schema():
    validate_config(prepare_config(_load()))


def test_cluster_yaml_shape():
    cfg = _load()
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head only runs the driver
    gpu = cfg["available_node_types"]["gpu_8x"]
    assert gpu["node_config"]["InstanceType"] == "p4d.24xlarge"  # 8 GPUs per node
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] <= cfg["max_workers"]
    # Installs this project with its GPU extra, on shared storage mounted on every node.
    assert any("selfreward[gpu]" in c for c in cfg["setup_commands"])
    assert any("/mnt/shared" in c and "nfs4" in c for c in cfg["initialization_commands"])
    # The dashboard is never exposed: it listens on the head's loopback.
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and ".".join("0" * 4) not in CLUSTER.read_text()


def test_schema_check_is_real():
    bad = copy.deepcopy(_load())
    bad["available_node_types"]["gpu_8x"]["min_wrokers"] = 1  # a typo the schema must catch
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
