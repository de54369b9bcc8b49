"""NIMConfig(replicas=N) without Docker: validation, GPU groups, the port check, endpoints,
replica labels read back by ``ps``, and the CLI flag."""

from __future__ import annotations

import socket

import pytest

from nim_async.cli.common import config_from_args
from nim_async.cli.parser import build_parser
from nim_async.config import NIMConfig
from nim_async.deploy.ports import check_ports_free, port_taken
from nim_async.deploy.spec import DEPLOYMENT_LABEL, MANAGED_LABEL, REPLICA_LABEL
from nim_async.deploy.status import status_from_inspect, status_from_summary
from nim_async.errors import InvalidConfigError, PortInUseError
from nim_async.results import NIMDeploymentResult

KEY = "nvapi-replicas-test-key-0123456789"


def _config(**overrides: object) -> NIMConfig:
    return NIMConfig(nvidia_api_key=KEY, **overrides)  # type: ignore[arg-type]


def test_default_is_one_replica_with_the_same_hash_as_before() -> None:
    config = _config()
    assert config.replicas == 1
    # replicas=1 leaves the config hash (a label of running containers) as it was
    assert config.config_hash() == _config(replicas=1).config_hash()
    assert "replicas" not in config.model_dump(include={"image_name"})
    assert _config(replicas=2).config_hash() != config.config_hash()


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (0, "at least 1"),
        (-2, "at least 1"),
        (True, "whole number"),
        (2.0, "whole number"),
        ("2", "whole number"),
        (None, "whole number"),
    ],
)
def test_replicas_must_be_a_whole_number_of_at_least_one(value: object, needle: str) -> None:
    with pytest.raises(InvalidConfigError) as err:
        _config(replicas=value)
    assert err.value.field == "replicas"
    assert needle in str(err.value)
    assert KEY not in str(err.value)


def test_port_range_must_fit() -> None:
    assert _config(port=65534, replicas=2).replicas == 2
    with pytest.raises(InvalidConfigError) as err:
        _config(port=65535, replicas=2)
    assert err.value.field == "replicas"
    assert "65535-65536" in str(err.value)


def test_gpu_groups_one_per_replica() -> None:
    config = _config(replicas=2, gpus=[["0", "1"], [2, 3]])
    assert config.gpus == [["0", "1"], ["2", "3"]]
    with pytest.raises(InvalidConfigError, match=r"2 GPU group\(s\) for replicas=3"):
        _config(replicas=3, gpus=[["0"], ["1"]])
    with pytest.raises(InvalidConfigError, match="1 GPU group"):
        _config(replicas=2, gpus=[["0", "1"]])
    with pytest.raises(InvalidConfigError, match="GPU '1' is in gpus group 0 and group 1"):
        _config(replicas=2, gpus=[["0", "1"], ["1"]])
    with pytest.raises(InvalidConfigError, match="group 1 is empty"):
        _config(replicas=2, gpus=[["0"], []])
    with pytest.raises(InvalidConfigError, match="mixes device ids and groups"):
        _config(replicas=2, gpus=[["0"], "1"])
    with pytest.raises(InvalidConfigError, match="device ids are text or integers"):
        _config(replicas=2, gpus=[["0"], [True]])


def test_device_ids_split_evenly_or_refused() -> None:
    assert _config(replicas=2, gpus=["0", "1", "2", "3"]).replicas == 2
    with pytest.raises(InvalidConfigError) as err:
        _config(replicas=2, gpus=["0", "1", "2"])
    assert "3 device id(s) for replicas=2" in str(err.value)
    assert "[['0'], ['1']]" in str(err.value)


def test_endpoints_default_to_the_base_url_and_survive_json() -> None:
    one = NIMDeploymentResult(container_id="c", container_name="n", port=8000, host="0.0.0.0")
    assert one.endpoints == ["http://127.0.0.1:8000"] == [one.base_url]
    many = NIMDeploymentResult(
        container_id="c",
        container_name="n",
        port=8000,
        endpoints=["http://127.0.0.1:8000", "http://127.0.0.1:8001"],
    )
    assert many.endpoints[1] == "http://127.0.0.1:8001"
    assert NIMDeploymentResult.model_validate_json(many.model_dump_json()) == many


def test_port_check_names_the_taken_port_of_the_range() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = int(sock.getsockname()[1])
        assert port_taken("127.0.0.1", taken)
        assert port_taken("0.0.0.0", taken)
        with pytest.raises(PortInUseError) as err:
            check_ports_free("127.0.0.1", [taken - 1, taken, taken + 1])
        assert err.value.port == taken
        message = str(err.value)
        assert f"Port {taken} is already in use" in message
        assert "replica 1 of 3" in message
        assert f"takes ports {taken - 1}-{taken + 1}" in message
        assert "nothing was started" in message
        assert "NIMConfig.port" in message
        with pytest.raises(PortInUseError, match="nothing was started"):
            check_ports_free("127.0.0.1", [taken])
    assert not port_taken("127.0.0.1", taken)
    # an address this host does not have is left to the engine
    assert not port_taken("192.0.2.1", taken)


def test_status_reads_the_replica_labels() -> None:
    labels = {MANAGED_LABEL: "true", DEPLOYMENT_LABEL: "grounder", REPLICA_LABEL: "2"}
    inspect = {"Name": "/grounder-r2", "Id": "x", "Config": {"Labels": labels}, "State": {}}
    assert status_from_inspect(inspect).deployment == "grounder"
    assert status_from_inspect(inspect).replica == 2
    summary = {"Names": ["/grounder-r2"], "Id": "x", "Labels": labels}
    assert (status_from_summary(summary).deployment, status_from_summary(summary).replica) == (
        "grounder",
        2,
    )
    older = status_from_summary({"Names": ["/old"], "Id": "y", "Labels": {MANAGED_LABEL: "true"}})
    assert (older.deployment, older.replica) == (None, None)


def test_cli_replicas_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGC_API_KEY", KEY)
    parser = build_parser()
    assert config_from_args(parser.parse_args(["deploy"])).replicas == 1
    args = parser.parse_args(["deploy", "--replicas", "3", "--gpus", "0,1;2,3;4,5"])
    config = config_from_args(args)
    assert config.replicas == 3
    assert config.gpus == [["0", "1"], ["2", "3"], ["4", "5"]]
    with pytest.raises(InvalidConfigError, match="at least 1"):
        config_from_args(parser.parse_args(["deploy", "--replicas", "0"]))
