"""The container-create body, built from a config without Docker (nim_async.deploy.spec)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nim_async.config import CONTAINER_CACHE_DIR, NIMConfig
from nim_async.deploy.spec import (
    CONFIG_HASH_LABEL,
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    REPLICA_LABEL,
    REPLICAS_LABEL,
    ModelMount,
    container_spec,
    describe_state,
    device_requests,
    env_value,
    published_port,
    replica_gpus,
    replica_name,
)

KEY = "nvapi-spec-test-key-0123456789"


def _config(tmp_path: Path, **overrides: object) -> NIMConfig:
    values: dict[str, object] = {
        "nvidia_api_key": KEY,
        "local_cache_dir": str(tmp_path / "cache"),
        "port": 8123,
        "host": "127.0.0.1",
        "shm_size": "64MB",
        "max_model_len": 4096,
    }
    values.update(overrides)
    return NIMConfig(**values)  # type: ignore[arg-type]


def test_body_carries_env_labels_port_shm_cache_and_user(tmp_path: Path) -> None:
    config = _config(tmp_path, served_model_name="grounder", gpus=None)
    body = container_spec(config, cache_dir=tmp_path / "cache", user=(1234, 5678))
    assert body["Image"] == config.image_ref
    assert body["Env"] == [
        f"NGC_API_KEY={KEY}",
        "NIM_MAX_MODEL_LEN=4096",
        "NIM_SERVED_MODEL_NAME=grounder",
    ]
    assert body["User"] == "1234:5678"
    assert body["ExposedPorts"] == {"8000/tcp": {}}
    assert body["Labels"] == {
        MANAGED_LABEL: "true",
        CONFIG_HASH_LABEL: config.config_hash(),
        "nim_async.image": config.image_ref,
        "nim_async.served_model_name": "grounder",
        DEPLOYMENT_LABEL: "grounder",
        REPLICA_LABEL: "0",
        REPLICAS_LABEL: "1",
    }
    host = body["HostConfig"]
    assert host["PortBindings"] == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8123"}]}
    assert host["ShmSize"] == 64 * 1024 * 1024
    assert host["AutoRemove"] is False
    assert "DeviceRequests" not in host
    assert host["Mounts"] == [
        {
            "Type": "bind",
            "Source": str((tmp_path / "cache").resolve()),
            "Target": CONTAINER_CACHE_DIR,
            "ReadOnly": False,
        }
    ]


def test_custom_model_is_mounted_read_only_and_named(tmp_path: Path) -> None:
    config = _config(tmp_path)
    model = ModelMount(tmp_path / "run" / "model_full", "/opt/nim/custom-model")
    body = container_spec(config, cache_dir=tmp_path, model=model, user=(0, 0))
    assert body["Env"][-1] == "NIM_MODEL_NAME=/opt/nim/custom-model"
    # served as served_model_name or image_name: the name NIMPredictor(config=...) sends
    assert f"NIM_SERVED_MODEL_NAME={config.image_name}" in body["Env"]
    assert body["HostConfig"]["Mounts"][1] == {
        "Type": "bind",
        "Source": str(model.host_dir.resolve()),
        "Target": "/opt/nim/custom-model",
        "ReadOnly": True,
    }


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        (None, None),
        ("all", [{"Driver": "", "Capabilities": [["gpu"]], "Count": -1}]),
        (2, [{"Driver": "", "Capabilities": [["gpu"]], "Count": 2}]),
        (["0", 3], [{"Driver": "", "Capabilities": [["gpu"]], "DeviceIDs": ["0", "3"]}]),
    ],
)
def test_gpu_request(gpus: object, expected: object) -> None:
    assert device_requests(gpus) == expected


def test_gpu_request_reaches_the_body(tmp_path: Path) -> None:
    body = container_spec(_config(tmp_path, gpus="all"), cache_dir=tmp_path, user=(1, 1))
    assert body["HostConfig"]["DeviceRequests"][0]["Count"] == -1


def test_inspect_readers() -> None:
    info = {
        "HostConfig": {"PortBindings": {"8000/tcp": [{"HostIp": "", "HostPort": "9001"}]}},
        "Config": {"Env": ["A=1", "NIM_SERVED_MODEL_NAME=x=y"]},
    }
    assert published_port(info) == ("0.0.0.0", 9001)
    assert published_port({}) == (None, None)
    assert env_value(info, "NIM_SERVED_MODEL_NAME") == "x=y"
    assert env_value(info, "B") is None
    assert describe_state({"Status": "exited", "ExitCode": 137, "OOMKilled": True}).startswith(
        "exited (137, OOM-killed)"
    )
    assert describe_state({"Status": "created"}) == "created"


# --------------------------------------------------------------------------- replicas


def test_replica_names_keep_replica_zero_as_today() -> None:
    assert [replica_name("grounder", i) for i in range(3)] == [
        "grounder",
        "grounder-r1",
        "grounder-r2",
    ]


def test_replica_bodies_differ_only_in_port_gpus_and_replica_label(tmp_path: Path) -> None:
    config = _config(tmp_path, served_model_name="grounder", gpus="all", replicas=3)
    bodies = [container_spec(config, cache_dir=tmp_path, user=(1, 1), replica=i) for i in range(3)]
    for i, body in enumerate(bodies):
        host = body["HostConfig"]
        assert host["PortBindings"] == {
            "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(8123 + i)}]
        }
        assert host["DeviceRequests"] == [
            {"Driver": "", "Capabilities": [["gpu"]], "DeviceIDs": [str(i)]}
        ]
        labels = body["Labels"]
        assert labels[DEPLOYMENT_LABEL] == "grounder"
        assert labels[REPLICA_LABEL] == str(i)
        assert labels[REPLICAS_LABEL] == "3"
        assert labels[CONFIG_HASH_LABEL] == config.config_hash()
        assert body["Env"] == bodies[0]["Env"]
    assert [config.replica_base_url(i) for i in range(3)] == [
        "http://127.0.0.1:8123",
        "http://127.0.0.1:8124",
        "http://127.0.0.1:8125",
    ]
    with pytest.raises(ValueError, match=r"replica must be 0 \.\. 2"):
        container_spec(config, cache_dir=tmp_path, user=(1, 1), replica=3)


@pytest.mark.parametrize(
    ("gpus", "replicas", "expected"),
    [
        (None, 3, [None, None, None]),
        ("all", 1, ["all"]),  # one replica: as today (every GPU)
        ("all", 2, [["0"], ["1"]]),
        (2, 1, [2]),
        (2, 2, [["0", "1"], ["2", "3"]]),
        (["4", "5"], 1, [["4", "5"]]),
        (["4", "5", "6", "7"], 2, [["4", "5"], ["6", "7"]]),
        (["4", "5"], 2, [["4"], ["5"]]),
        ([["0", "1"], ["3"]], 2, [["0", "1"], ["3"]]),
        ([[0, 1]], 1, [["0", "1"]]),
    ],
)
def test_replica_gpus(tmp_path: Path, gpus: object, replicas: int, expected: object) -> None:
    config = _config(tmp_path, gpus=gpus, replicas=replicas)
    assert replica_gpus(config) == expected
    bodies = [
        container_spec(config, cache_dir=tmp_path, user=(1, 1), replica=i) for i in range(replicas)
    ]
    requests = [b["HostConfig"].get("DeviceRequests") for b in bodies]
    assert requests == [device_requests(g) for g in replica_gpus(config)]


def test_one_group_is_the_device_ids_of_the_one_replica(tmp_path: Path) -> None:
    body = container_spec(_config(tmp_path, gpus=[["2", "3"]]), cache_dir=tmp_path, user=(1, 1))
    assert body["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == ["2", "3"]
