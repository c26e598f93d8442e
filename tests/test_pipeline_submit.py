"""`ser pipeline submit`: the package and request handed to kfp.Client, without a cluster.

Two levels: the arguments given to ``kfp.Client`` and ``create_run_from_pipeline_package``
(a fake client), and the HTTP requests the real ``kfp.Client`` sends (its REST
transport replaced by a recorder that answers like the KFP API would).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ser.kubeflow import runner as pr
from ser.cli import main


class FakeClient:
    """Stands in for kfp.Client: records the constructor and the run request."""

    instances: list["FakeClient"] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls = []
        FakeClient.instances.append(self)

    def create_run_from_pipeline_package(self, pipeline_file, **kwargs):
        package = next(yaml.safe_load_all(Path(pipeline_file).read_text()))  # the file exists while the call runs
        self.calls.append({"pipeline_file": pipeline_file, "package": package, **kwargs})

        class Result:
            run_id = "run-123"

        return Result()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("KFP_HOST", "KFP_TOKEN", "KF_PIPELINES_SA_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    FakeClient.instances.clear()


def test_submit_hands_the_compiled_package_and_arguments_to_the_client(tmp_path):
    info = pr.submit("https://kfp.example.com/pipeline", "ser_retrain", {"epochs": 5, "feature_size": "30"}, experiment="ci",
                     namespace="team-a", token="secret-token", service_account="ser-pipeline-runner", client_factory=FakeClient)
    (client,) = FakeClient.instances
    assert client.kwargs == {"host": "https://kfp.example.com/pipeline", "existing_token": "secret-token", "namespace": "team-a"}
    (call,) = client.calls
    assert call["arguments"] == {"epochs": 5, "feature_size": "30"}
    assert call["experiment_name"] == "ci" and call["namespace"] == "team-a"
    assert call["service_account"] == "ser-pipeline-runner"
    assert call["package"]["pipelineInfo"]["name"] == "ser-retrain"
    assert "epochs" in call["package"]["root"]["inputDefinitions"]["parameters"]
    assert info["run_id"] == "run-123"
    assert info["url"] == "https://kfp.example.com/pipeline/#/runs/details/run-123"


def test_token_comes_from_the_environment_or_a_token_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "from-env")
    pr.submit("http://kfp:8888", "ser_retrain", {}, client_factory=FakeClient)
    assert FakeClient.instances[-1].kwargs["existing_token"] == "from-env"
    monkeypatch.delenv("KFP_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    pr.submit("http://kfp:8888", "ser_retrain", {}, client_factory=FakeClient)
    assert FakeClient.instances[-1].kwargs["existing_token"] == "from-file"
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH")
    pr.submit("http://kfp:8888", "ser_retrain", {}, client_factory=FakeClient)
    assert "existing_token" not in FakeClient.instances[-1].kwargs


def test_unknown_parameter_and_missing_host_are_refused():
    with pytest.raises(pr.PipelineError, match="unknown parameters"):
        pr.submit("http://kfp:8888", "ser_retrain", {"no_such": 1}, client_factory=FakeClient)
    with pytest.raises(pr.PipelineError, match="no KFP host"):
        pr.submit("", "ser_retrain", {}, client_factory=FakeClient)
    assert not FakeClient.instances


def test_parse_params_casts_to_the_pipeline_types():
    fn = pr.build("ser_retrain")
    params = pr.parse_params(["epochs=7", "feature_size=30", 'config={"preset": "optimal-english"}', "model_name=x=y"], fn)
    assert params == {"epochs": 7, "feature_size": "30", "config": {"preset": "optimal-english"}, "model_name": "x=y"}
    with pytest.raises(pr.PipelineError, match="epochs is Integer"):
        pr.parse_params(["epochs=many"], fn)
    with pytest.raises(pr.PipelineError, match="KEY=VALUE"):
        pr.parse_params(["epochs"], fn)


class _Response:
    """What kfp_server_api's REST layer returns (rest.RESTResponse's interface)."""

    def __init__(self, data: dict, status: int = 200):
        self.status, self.reason, self.data = status, "OK", json.dumps(data).encode()

    def getheader(self, name, default=None):
        return "application/json" if name.lower() == "content-type" else default

    def getheaders(self):
        return {"content-type": "application/json"}


def test_real_kfp_client_sends_the_run_request(monkeypatch):
    """kfp.Client itself, its HTTP transport recorded: experiment lookup and creation,
    then POST /apis/v2beta1/runs with the pipeline spec and the parameters."""
    import kfp_server_api.rest

    sent = []

    def request(self, method, url, query_params=None, headers=None, body=None, post_params=None,
                _preload_content=True, _request_timeout=None):
        sent.append({"method": method, "url": url, "query": dict(query_params or []), "headers": dict(headers or {}), "body": body})
        if method == "GET" and url.endswith("/apis/v2beta1/healthz"):
            return _Response({"multi_user": False})
        if method == "GET" and url.endswith("/apis/v2beta1/experiments"):
            return _Response({"experiments": [], "total_size": 0})
        if method == "POST" and url.endswith("/apis/v2beta1/experiments"):
            return _Response({"experiment_id": "exp-1", "display_name": body["display_name"]})
        if method == "POST" and url.endswith("/apis/v2beta1/runs"):
            return _Response({"run_id": "run-9", "display_name": body["display_name"], "experiment_id": body["experiment_id"]})
        raise AssertionError(f"unexpected request {method} {url}")

    monkeypatch.setattr(kfp_server_api.rest.RESTClientObject, "request", request)
    monkeypatch.setenv("KFP_TOKEN", "tok")
    code = main(["pipeline", "submit", "--host", "http://kfp.test:8888", "--pipeline", "ser_retrain", "--param", "epochs=3",
                 "--param", "model_name=ser-english-ci", "--experiment", "retrain-ci", "--namespace", "kubeflow"])
    assert code == 0
    run_requests = [r for r in sent if r["method"] == "POST" and r["url"].endswith("/runs")]
    assert len(run_requests) == 1, sent
    req = run_requests[0]
    assert req["url"] == "http://kfp.test:8888/apis/v2beta1/runs"
    assert {k.lower(): v for k, v in req["headers"].items()}["authorization"] == "Bearer tok"
    body = req["body"]
    assert body["experiment_id"] == "exp-1"
    assert body["service_account"] == "ser-pipeline-runner"
    spec, platform = body["pipeline_spec"]["pipeline_spec"], body["pipeline_spec"]["platform_spec"]
    assert spec["pipelineInfo"]["name"] == "ser-retrain"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-final-train"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.family": "volta"}
    assert executors["exec-ingest"]["secretAsEnv"][0]["secretName"] == "mlpipeline-minio-artifact"
    assert body["runtime_config"]["parameters"]["epochs"] == 3
    assert body["runtime_config"]["parameters"]["model_name"] == "ser-english-ci"
    created = [r for r in sent if r["method"] == "POST" and r["url"].endswith("/experiments")]
    assert created and created[0]["body"]["display_name"] == "retrain-ci"
