"""ContainerStatus read from inspect and ps documents (nim_async.deploy.status), without Docker."""

from __future__ import annotations

from nim_async.deploy.spec import CONFIG_HASH_LABEL
from nim_async.deploy.status import ContainerStatus, status_from_inspect, status_from_summary


def test_status_from_inspect() -> None:
    info = {
        "Name": "/grounder",
        "Id": "abc123",
        "Config": {
            "Image": "nvcr.io/nim/nvidia/cosmos-reason1-7b:latest",
            "Env": ["NIM_SERVED_MODEL_NAME=grounder"],
            "Labels": {CONFIG_HASH_LABEL: "h1"},
        },
        "State": {"Status": "exited", "ExitCode": 1, "FinishedAt": "t"},
        "HostConfig": {"PortBindings": {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8001"}]}},
    }
    assert status_from_inspect(info) == ContainerStatus(
        name="grounder",
        container_id="abc123",
        image="nvcr.io/nim/nvidia/cosmos-reason1-7b:latest",
        state="exited",
        status="exited (1) at t",
        host="127.0.0.1",
        port=8001,
        served_model_name="grounder",
        config_hash="h1",
    )


def test_status_from_summary_finds_the_nim_port() -> None:
    item = {
        "Id": "0123456789abcdef",
        "Names": [],
        "Image": "img",
        "State": "running",
        "Status": "Up 3 minutes",
        "Labels": {"nim_async.served_model_name": "vqa", CONFIG_HASH_LABEL: "h2"},
        "Ports": [
            {"PrivatePort": 9000, "PublicPort": 1},
            {"PrivatePort": 8000, "PublicPort": 8123, "IP": "0.0.0.0"},
        ],
    }
    status = status_from_summary(item)
    assert status.name == "0123456789ab"
    assert (status.host, status.port) == ("0.0.0.0", 8123)
    assert status.served_model_name == "vqa"
    assert status.config_hash == "h2"
    assert status_from_summary({"Id": "x", "Names": ["/n"]}).port is None
