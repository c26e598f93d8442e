"""KServe serving manifests: each ServingRuntime / InferenceService (base and overlay
patches) validates against KServe's own CRD schemas, and the pieces agree with each
other and with the code (no drift: one runtime per name, formats, protocols, ports)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CRDS = Path(__file__).resolve().parent / "data" / "kserve-crds"
KINDS = ("InferenceService", "ServingRuntime")


def _schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, version) -> the openAPIV3Schema of that CRD version."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml.gz")):
        crd = yaml.load(gzip.decompress(path.read_bytes()), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 2 MB: C loader
        for version in crd["spec"]["versions"]:
            out[(crd["spec"]["names"]["kind"], version["name"])] = version["schema"]["openAPIV3Schema"]
    return out


def _docs() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((REPO / "manifests").rglob("*.yaml")) + sorted((REPO / "serving").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in KINDS and str(doc.get("apiVersion", "")).startswith("serving.kserve.io/"):
                found.append((str(path.relative_to(REPO)), doc))
    return found


SCHEMAS = _schemas()
DOCS = _docs()


def test_the_crds_and_the_manifests_are_there():
    assert {("InferenceService", "v1beta1"), ("ServingRuntime", "v1alpha1")} <= set(SCHEMAS)
    kinds = [(d["kind"], d["metadata"]["name"]) for _, d in DOCS]
    for expected in [("ServingRuntime", "ser-torchserve"), ("ServingRuntime", "ser-predictor"),
                     ("InferenceService", "ser-english"), ("InferenceService", "ser-english-kserve")]:
        assert expected in kinds


@pytest.mark.parametrize("path, doc", DOCS, ids=[f"{p}:{d['metadata']['name']}" for p, d in DOCS])
def test_validates_against_the_kserve_crd(path, doc):
    version = doc["apiVersion"].split("/", 1)[1]
    schema = SCHEMAS[(doc["kind"], version)]
    # The CRD schema has no `required` at the top; a typo'd field is an unknown property
    # only where the schema closes objects, so check spec keys explicitly too.
    jsonschema.validate(doc, schema)
    allowed = set(schema["properties"]["spec"]["properties"])
    assert set(doc.get("spec", {})) <= allowed, f"{path}: unknown spec fields {set(doc['spec']) - allowed}"


def test_a_bad_manifest_is_caught():
    """The check can fail: a wrong type and an unknown predictor field are refused."""
    _, isvc = next((p, d) for p, d in DOCS if d["kind"] == "InferenceService")
    bad = yaml.safe_load(yaml.safe_dump(isvc))
    bad["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMAS[("InferenceService", "v1beta1")])


def _base() -> tuple[dict[str, dict], list[dict]]:
    runtimes, services = {}, []
    for path, doc in DOCS:
        if not path.startswith("manifests/base/"):
            continue
        if doc["kind"] == "ServingRuntime":
            assert doc["metadata"]["name"] not in runtimes, f"two ServingRuntimes named {doc['metadata']['name']}"
            runtimes[doc["metadata"]["name"]] = doc
        else:
            services.append(doc)
    return runtimes, services


def test_every_inferenceservice_matches_its_runtime():
    runtimes, services = _base()
    assert services
    for isvc in services:
        model = isvc["spec"]["predictor"]["model"]
        runtime = runtimes[model["runtime"]]
        formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
        assert model["modelFormat"]["name"] in formats
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
        assert isvc["metadata"]["namespace"] == runtime["metadata"]["namespace"]
        container = runtime["spec"]["containers"][0]
        # KServe routes to 8080; the probes must ask the port the server listens on.
        assert [p["containerPort"] for p in container["ports"]] == [8080]
        assert container["readinessProbe"]["httpGet"]["port"] == 8080


def test_the_predictor_runtime_runs_the_predictor_cli():
    """Its args parse with the real CLI parser, and its probes are routes the app has."""
    from ser.serve import predictor_server

    runtimes, _ = _base()
    container = runtimes["ser-predictor"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    args = [a.replace("{{.Name}}", "ser-english-kserve") for a in container["args"]]
    with pytest.raises(SystemExit) as exit_:  # --help after the real args: parse then stop
        predictor_server.main(args + ["--help"])
    assert exit_.value.code == 0
    assert "--model=/mnt/models/model-store/ser-english.mar" in args and "--port=8080" in args


def test_gpu_overlay_predictors_use_the_gpu_they_reserve():
    patches = {d["metadata"]["name"]: d for p, d in DOCS if p.startswith("manifests/overlays/gpu-v100/") and d["kind"] == "InferenceService"}
    _, services = _base()
    assert set(patches) == {s["metadata"]["name"] for s in services}, "every predictor gets the V100 patch (or none)"
    kserve = patches["ser-english-kserve"]["spec"]["predictor"]["model"]
    assert kserve["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "SER_GPU_ID", "value": "0"} in kserve["env"]
