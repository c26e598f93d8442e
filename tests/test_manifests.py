"""manifests/: every overlay builds, every object validates, no plaintext credential.

- `kubectl kustomize` builds each overlay (skipped with the reason when kubectl is absent);
- built-in kinds are validated, strictly, against the Kubernetes JSON schemas shipped
  with kubernetes-validate; KServe custom resources (not in those schemas) by the
  checks below, which also validate their embedded pod parts as a core/v1 Pod;
- a scan of every YAML under manifests/ and of the built output fails on a Secret
  with data, on a credential-looking literal env value or on a URI with a password;
- images, the V100 scheduling and the retraining workflow agree with src/ser.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from ser.ops import gpu, images

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
WORKFLOW = REPO / ".github" / "workflows" / "retrain.yml"
KUBECTL = shutil.which("kubectl")
#: Schema versions to validate against: the oldest and newest that we claim.
K8S_VERSIONS = ("1.30.0", "1.37.0")

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not found on PATH: `kubectl kustomize` cannot build the overlays"
)


# ----------------------------------------------------------------------------- build
_BUILT: dict[str, list[dict[str, Any]]] = {}


def build(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _BUILT:
        proc = subprocess.run(
            [KUBECTL, "kustomize", str(MANIFESTS / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
        _BUILT[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return _BUILT[overlay]


def name_of(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


def test_overlays_exist():
    assert {"local", "gpu-v100"} <= set(OVERLAYS), OVERLAYS


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds(overlay):
    objs = build(overlay)
    kinds = {o["kind"] for o in objs}
    expected = {
        "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
        "Job", "Namespace", "ServingRuntime", "InferenceService",
    }
    assert expected <= kinds, f"{overlay} lacks {expected - kinds}"
    names = [name_of(o) for o in objs]
    assert len(names) == len(set(names)), f"duplicate objects in {overlay}"


# ------------------------------------------------------------------ schema validation
CUSTOM_CHECKS: dict[tuple[str, str], Any] = {}


def custom(api_version: str, kind: str):
    def register(fn):
        CUSTOM_CHECKS[(api_version, kind)] = fn
        return fn

    return register


def validate_builtin(obj: dict[str, Any], version: str) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise AssertionError(f"{name_of(obj)} invalid for Kubernetes {version} at {path}: {exc.message}") from None


def validate_pod_parts(owner: dict[str, Any], spec: dict[str, Any], containers: list[dict[str, Any]]) -> None:
    """Embedded pod fields of a custom resource, checked as a core/v1 Pod."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": owner["metadata"]["name"]},
        "spec": {**spec, "containers": containers},
    }
    for version in K8S_VERSIONS:
        validate_builtin(pod, version)


DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@custom("serving.kserve.io/v1alpha1", "ServingRuntime")
def check_serving_runtime(obj: dict[str, Any], objs: list[dict[str, Any]]) -> None:
    spec = obj["spec"]
    assert set(spec) <= {
        "annotations", "supportedModelFormats", "protocolVersions", "containers", "multiModel",
        "disabled", "nodeSelector", "tolerations", "affinity", "volumes", "imagePullSecrets",
        "builtInAdapter", "replicas", "storageHelper", "grpcEndpoint", "grpcDataEndpoint", "labels",
        "hostIPC", "workerSpec",
    }, f"unknown ServingRuntime fields {sorted(spec)}"
    formats = spec["supportedModelFormats"]
    assert formats and all(isinstance(f.get("name"), str) and f["name"] for f in formats)
    assert set(spec.get("protocolVersions", [])) <= {"v1", "v2", "grpc-v1", "grpc-v2"}
    containers = spec["containers"]
    assert containers[0]["name"] == "kserve-container", "KServe merges the model spec into 'kserve-container'"
    for c in containers:
        assert c.get("image"), f"{name_of(obj)}: container without image"
    for key, value in spec.get("annotations", {}).items():
        assert isinstance(value, str), f"annotation {key} must be a string"
    pod_spec = {k: spec[k] for k in ("nodeSelector", "tolerations", "affinity", "volumes") if k in spec}
    validate_pod_parts(obj, pod_spec, containers)


@custom("serving.kserve.io/v1beta1", "InferenceService")
def check_inference_service(obj: dict[str, Any], objs: list[dict[str, Any]]) -> None:
    meta, spec = obj["metadata"], obj["spec"]
    assert DNS_1035.match(meta["name"]) and len(meta["name"]) <= 45, "ISVC names must be DNS-1035 labels"
    ns = meta["namespace"]
    assert meta.get("annotations", {}).get("serving.kserve.io/deploymentMode") in {
        None, "RawDeployment", "Standard", "Serverless", "Knative",
    }
    assert set(spec) <= {"predictor", "transformer", "explainer"}
    predictor = spec["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"], "predictor.model.modelFormat.name is required"
    assert model.get("protocolVersion", "v1") in {"v1", "v2", "grpc-v2"}
    storage = model["storageUri"]
    assert re.match(r"^s3://ser-models/[A-Za-z0-9._/-]+$", storage), storage
    # the runtime it names exists beside it and supports the model format
    runtimes = {
        o["metadata"]["name"]: o
        for o in objs
        if o["kind"] == "ServingRuntime" and o["metadata"].get("namespace") == ns
    }
    runtime = runtimes.get(model["runtime"])
    assert runtime is not None, f"ServingRuntime {model['runtime']} not in namespace {ns}"
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    # the service account it names exists beside it with the S3 settings KServe reads
    sa_name = predictor["serviceAccountName"]
    accounts = {
        o["metadata"]["name"]: o
        for o in objs
        if o["kind"] == "ServiceAccount" and o["metadata"].get("namespace") == ns
    }
    assert sa_name in accounts, f"ServiceAccount {sa_name} not in namespace {ns}"
    annotations = accounts[sa_name]["metadata"].get("annotations", {})
    for key in ("serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps"):
        assert key in annotations, f"ServiceAccount {sa_name} lacks {key}"
    assert accounts[sa_name].get("secrets"), "the S3 credentials Secret must be listed on the account"
    for key in ("minReplicas", "maxReplicas"):
        if key in predictor:
            assert isinstance(predictor[key], int) and predictor[key] >= 0
    # the embedded pod parts, as a Pod: model container merged onto the runtime's
    container = copy.deepcopy(runtime["spec"]["containers"][0])
    for key in ("env", "resources", "args", "command", "image"):
        if key in model:
            container[key] = model[key]
    pod_spec = {
        k: predictor[k]
        for k in ("nodeSelector", "tolerations", "affinity", "serviceAccountName", "volumes")
        if k in predictor
    }
    validate_pod_parts(obj, pod_spec, [container])


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(overlay):
    import kubernetes_validate

    objs = build(overlay)
    for obj in objs:
        key = (obj["apiVersion"], obj["kind"])
        if key in CUSTOM_CHECKS:
            CUSTOM_CHECKS[key](obj, objs)
            continue
        for version in K8S_VERSIONS:
            try:
                validate_builtin(obj, version)
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{name_of(obj)}: no Kubernetes schema and no custom check for {key}")


def test_custom_checks_catch_mistakes():
    """The custom checks are not vacuous: a broken InferenceService fails them."""
    sa = {
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "sa", "namespace": "ns", "annotations": {
            "serving.kserve.io/s3-endpoint": "x:1", "serving.kserve.io/s3-usehttps": "0"}},
        "secrets": [{"name": "creds"}],
    }
    runtime = {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
        "metadata": {"name": "rt", "namespace": "ns"},
        "spec": {"supportedModelFormats": [{"name": "pytorch"}],
                 "containers": [{"name": "kserve-container", "image": "img:1"}]},
    }
    good = {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"predictor": {"serviceAccountName": "sa", "model": {
            "modelFormat": {"name": "pytorch"}, "runtime": "rt",
            "storageUri": "s3://ser-models/m/champion"}}},
    }
    objs = [sa, runtime, good]
    check_serving_runtime(runtime, objs)
    check_inference_service(good, objs)
    bad_cases = []
    b = copy.deepcopy(good); b["spec"]["predictor"]["model"]["runtime"] = "missing"; bad_cases.append(b)
    b = copy.deepcopy(good); b["spec"]["predictor"]["model"]["storageUri"] = "gs://x/y"; bad_cases.append(b)
    b = copy.deepcopy(good); del b["spec"]["predictor"]["model"]["modelFormat"]; bad_cases.append(b)
    b = copy.deepcopy(good); b["spec"]["predictor"]["tolerations"] = [{"effect": 3}]; bad_cases.append(b)
    b = copy.deepcopy(good); b["spec"]["predictor"]["model"]["resources"] = {"limit": {}}; bad_cases.append(b)
    for bad in bad_cases:
        with pytest.raises((AssertionError, KeyError)):
            check_inference_service(bad, objs)


# --------------------------------------------------------------- plaintext credentials
SECRET_ENV_NAME = re.compile(
    r"(PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|API_KEY|CREDENTIAL|AUTH)", re.I
)
URI_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)
KEY_LIKE = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub tokens
    # `password = s3cr3t`, not `secret_key=os.environ[...]` (a reference, not a value)
    re.compile(r"(?i)(password|passwd|secretkey|secret_key|api_key)\s*[=:]\s*[\"']?[A-Za-z0-9+/_!#%^&*-]{6,}"),
]


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def credential_findings(doc: Any, where: str) -> list[str]:
    """Plaintext credentials in one YAML document: the reasons, empty when clean."""
    found: list[str] = []
    if not isinstance(doc, dict):
        return found
    if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
        found.append(f"{where}: Secret {doc.get('metadata', {}).get('name')} carries data/stringData")
    for path, node in _walk(doc):
        # env entries with a literal value: {name: X, value: "..."}
        if isinstance(node, dict) and "name" in node and isinstance(node.get("value"), str):
            if SECRET_ENV_NAME.search(str(node["name"])) and node["value"].strip():
                found.append(f"{where}: {path} sets {node['name']} to a literal value")
        if isinstance(node, str):
            if URI_WITH_PASSWORD.search(node):
                found.append(f"{where}: {path} holds a URI with a password")
            for pattern in KEY_LIKE:
                if pattern.search(node):
                    found.append(f"{where}: {path} looks like a credential ({pattern.pattern})")
    return found


def manifest_documents() -> Iterator[tuple[str, Any]]:
    for path in sorted(MANIFESTS.rglob("*.y*ml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            yield f"{path.relative_to(REPO)}#{i}", doc


def test_no_plaintext_credentials_in_sources():
    findings = [f for where, doc in manifest_documents() for f in credential_findings(doc, where)]
    assert not findings, "plaintext credentials:\n" + "\n".join(findings)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_plaintext_credentials_in_built_output(overlay):
    findings = [f for obj in build(overlay) for f in credential_findings(obj, f"{overlay}:{name_of(obj)}")]
    assert not findings, "plaintext credentials:\n" + "\n".join(findings)
    assert not [o for o in build(overlay) if o["kind"] == "Secret"], "Secrets are created by hand, not shipped"


@pytest.mark.parametrize(
    "doc",
    [
        {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}},
        {"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "dg=="}},
        {"kind": "Pod", "spec": {"containers": [{"env": [{"name": "DB_PASSWORD", "value": "hunter2"}]}]}},
        {"kind": "Pod", "spec": {"containers": [{"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}]}},
        {"kind": "Pod", "spec": {"containers": [{"env": [{"name": "URI", "value": "postgresql://u:pw@db/x"}]}]}},
        {"kind": "ConfigMap", "data": {"conf": "user=a\npassword = s3cr3t\n"}},
        {"kind": "ConfigMap", "data": {"id": "AKIAABCDEFGHIJKLMNOP"}},
    ],
)
def test_credential_scan_flags(doc):
    assert credential_findings(doc, "t"), f"not flagged: {doc}"


def test_credential_scan_passes_references():
    doc = yaml.safe_load(
        """
        kind: Deployment
        spec: {template: {spec: {containers: [{env: [
          {name: AWS_SECRET_ACCESS_KEY, valueFrom: {secretKeyRef: {name: s, key: secretkey}}},
          {name: MLFLOW_S3_ENDPOINT_URL, value: "http://seaweedfs.kubeflow:8333"}]}]}}}
        """
    )
    assert credential_findings(doc, "t") == []


# --------------------------------------------------- consistency with src/ser and docs
def _pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = obj.get("spec", {})
    if obj["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
        yield spec["template"]["spec"]
    elif obj["kind"] == "InferenceService":
        pred = spec["predictor"]
        yield {**pred, "containers": [pred["model"]]}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_the_project_tags(overlay):
    known = {images.CPU_IMAGE, images.GPU_IMAGE, images.SERVE_IMAGE, images.SERVE_GPU_IMAGE}
    text = yaml.safe_dump_all(build(overlay))
    refs = set(re.findall(r"image: (\S+)", text))
    assert refs, "no image references"
    for ref in refs:
        assert ref in known, f"{overlay} uses {ref}, not one of src/ser/ops/images.py"


@needs_kubectl
def test_gpu_overlay_schedules_on_v100_pool():
    objs = build("gpu-v100")
    gpu_pods = []
    for obj in objs:
        for pod in _pod_specs(obj):
            limits = [c.get("resources", {}).get("limits", {}) for c in pod["containers"]]
            if any(gpu.GPU_RESOURCE in lim for lim in limits):
                gpu_pods.append((name_of(obj), pod))
    assert {n.split("/")[0] for n, _ in gpu_pods} >= {"Job", "InferenceService"}, gpu_pods
    for name, pod in gpu_pods:
        assert pod.get("nodeSelector") == gpu.V100_NODE_SELECTOR, name
        assert [dict(t) for t in pod.get("tolerations", [])] == [dict(t) for t in gpu.GPU_TOLERATIONS], name
        for c in pod["containers"]:
            res = c["resources"]
            assert res["limits"][gpu.GPU_RESOURCE] == "1" == res["requests"][gpu.GPU_RESOURCE], name
    # the V100 predictor runs the sm_70 serving image, the check Job the sm_70 training image
    runtime = next(o for o in objs if o["kind"] == "ServingRuntime")
    assert runtime["spec"]["containers"][0]["image"] == images.SERVE_GPU_IMAGE
    job = next(o for o in objs if o["kind"] == "Job" and o["metadata"]["name"] == "ser-gpu-check")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == images.GPU_IMAGE
    assert container["command"][:3] == ["python", "-m", "ser.ops.gpu"] and gpu.V100_ARCH in container["command"]


@needs_kubectl
def test_local_overlay_has_no_gpu_and_keeps_mlflow_on_a_claim():
    objs = build("local")
    text = yaml.safe_dump_all(objs)
    assert gpu.GPU_RESOURCE not in text.replace("nvidia.com/gpu.family", "")
    deploy = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": "mlflow-data"}}
    assert any(o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == "mlflow-data" for o in objs)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_stack_wiring(overlay):
    """Object storage, MLflow secrets and the KFP launcher as STACK.md describes them."""
    objs = build(overlay)
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    launcher = by[("ConfigMap", "kfp-launcher")]
    assert launcher["metadata"]["namespace"] == "kubeflow"
    assert launcher["data"]["defaultPipelineRoot"] == "minio://mlpipeline/v2/artifacts"
    mlflow = by[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in mlflow["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-backend", "key": "backend-store-uri"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlpipeline-minio-artifact", "key": "accesskey"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlpipeline-minio-artifact", "key": "secretkey"}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://seaweedfs.kubeflow:8333"
    assert by[("Service", "mlflow")]["spec"]["ports"][0]["port"] == 5000
    # the pipeline-run identity is bound to its role
    binding = by[("RoleBinding", "ser-pipeline-runner")]
    assert binding["roleRef"]["name"] == "ser-pipeline-runner"
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "ser-pipeline-runner", "namespace": "kubeflow"}
    # every pod runs as non-root
    for obj in objs:
        if obj["kind"] in {"Deployment", "Job"}:
            assert obj["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, name_of(obj)


@needs_kubectl
def test_make_manifests_target(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not found on PATH")
    proc = subprocess.run(
        [make, "-s", "-f", "mk/images.mk", "manifests", f"MANIFESTS_DIR={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.stem for p in tmp_path.glob("*.yaml")) == OVERLAYS


def test_deploy_doc_names_the_secrets_and_overlays():
    doc = (REPO / "docs" / "deploy.md").read_text()
    for needle in ("mlflow-backend", "ser-serving-s3", "mlpipeline-minio-artifact",
                   "manifests/overlays/local", "manifests/overlays/gpu-v100", "ser pipeline submit"):
        assert needle in doc, f"docs/deploy.md does not mention {needle}"
    # every Secret the manifests reference is created by a command in the doc
    created = set(re.findall(r"kubectl (?:-n \S+ )?create secret generic (\S+)", doc))
    assert {"mlflow-backend", "ser-serving-s3"} <= created, created
    # the steps are commands: every numbered step has at least one shell block
    steps = re.split(r"^## \d+\. ", doc, flags=re.M)[1:]
    assert len(steps) >= 8 and all("```sh" in step for step in steps)


# ------------------------------------------------------------------ retrain workflow
def test_retrain_workflow():
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "schedule" in triggers and triggers["schedule"][0]["cron"]
    assert "workflow_dispatch" in triggers
    paths = triggers["push"]["paths"]
    assert any(p.startswith("data") for p in paths) and any("config" in p or "recipes" in p for p in paths)
    runs = "\n".join(
        step.get("run", "") for job in wf["jobs"].values() for step in job["steps"]
    )
    assert "make test" in runs and "make compile" in runs and "make manifests" in runs
    assert re.search(r"ser pipeline submit\s+--host\s+\"\$KFP_HOST\"", runs), "submits through `ser pipeline submit`"
    assert "--pipeline ser_retrain" in runs
    text = WORKFLOW.read_text()
    assert "secrets.KFP_HOST" in text
    assert not credential_findings(wf, str(WORKFLOW))
    # the submit job only runs after the tests
    submit = next(j for j in wf["jobs"].values() if "ser pipeline submit" in str(j))
    assert submit.get("needs")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_referenced_secret_is_documented(overlay):
    """Secrets are referenced, never shipped: each one is KFP's or created in docs/deploy.md."""
    doc = (REPO / "docs" / "deploy.md").read_text()
    created = set(re.findall(r"kubectl (?:-n \S+ )?create secret generic (\S+)", doc))
    referenced = set()
    for obj in build(overlay):
        for _path, node in _walk(obj):
            if isinstance(node, dict) and isinstance(node.get("secretKeyRef"), dict):
                referenced.add(node["secretKeyRef"]["name"])
        if obj["kind"] == "ServiceAccount":
            referenced |= {s["name"] for s in obj.get("secrets", [])}
    assert referenced, "no Secret referenced at all?"
    missing = referenced - created - {"mlpipeline-minio-artifact"}  # the latter comes with KFP
    assert not missing, f"Secrets referenced but not created in docs/deploy.md: {missing}"
