"""Static checks of deploy/: no Docker engine and no cluster here, so nothing is built or applied.

Validators (installed by the ``dev`` extra, all offline once installed):

* Kubernetes manifests: ``kubernetes-validate`` (the OpenAPI-derived JSON schemas it bundles),
  strict (unknown fields are errors), for the oldest Kubernetes with GA gRPC probes (1.27) and
  the newest it ships; the manifests as written and as ``kustomization.yaml`` would render them.
* compose.yaml: ``check-jsonschema`` with its vendored compose-spec schema.
* Dockerfiles: ``hadolint`` (with its built-in ShellCheck for RUN lines), any finding fails.

Then our own consistency checks: CPU limit = INFERENCE_THREADS, grace periods longer than
``--grace``, probes and annotations on the right ports, the edge's target naming the headless
Service, images and pods running as non-root, flags the service really has.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from harness.processes import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
SAFETY = 120  # seconds for one validator run: bounds a hang only

# docs/operations.md "Memory": Pss_Anon <= 200 MB + slots x 1.15 x KV; KV = 90 MB for the default model at
# context 4096. Its ctransformers copy (the file the engine maps) is 128.6 MB.
BASE_MB, KV_MB, MODEL_MAPPING_MB = 200, 90, 129
MB = 1_000_000


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed: `make setup` installs the dev extra (pyproject.toml)")
        return found
    return str(path)


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=SAFETY)


# --- loading -----------------------------------------------------------------------------


@lru_cache(maxsize=None)
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@lru_cache(maxsize=None)
def resources() -> dict[tuple[str, str], dict]:
    """Every resource kustomization.yaml lists, by (kind, name)."""
    found = {}
    for file in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / file).read_text()):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def resource(kind: str, name: str) -> dict:
    return resources()[(kind, name)]


def rendered() -> list[dict]:
    """What ``kubectl kustomize`` makes of them, for the parts kustomization.yaml uses:
    the namespace on every namespaced resource, and the image tags."""
    import copy

    spec = kustomization()
    tags = {image["name"]: image["newTag"] for image in spec.get("images", [])}
    out = []
    for doc in map(copy.deepcopy, resources().values()):
        if doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = spec["namespace"]
        for container in containers(doc):
            name = container["image"].rsplit(":", 1)[0]
            if name in tags:
                container["image"] = f"{name}:{tags[name]}"
        out.append(doc)
    return out


def containers(doc: dict) -> list[dict]:
    if doc["kind"] != "Deployment":
        return []
    pod = doc["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod["containers"]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def flag(args: list[str], name: str) -> str | None:
    """A flag's value in an argv, ``--name=value`` or ``--name value``."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def cpu_cores(quantity: str) -> float:
    quantity = str(quantity)
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(quantity))
    assert match, quantity
    return int(match[1]) * units.get(match[2], 1)


def prestop_sleep(container: dict) -> float:
    handler = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in handler:
        return handler["sleep"]["seconds"]
    command = handler.get("exec", {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] else 0.0


def docker_bytes(quantity: str) -> int:
    """Docker's memory units (binary: ``640m`` is 640 MiB)."""
    match = re.fullmatch(r"(\d+)([bkmg]?)", str(quantity).lower())
    assert match, quantity
    return int(match[1]) * {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match[2]]


@lru_cache(maxsize=None)
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def compose_default(value: str) -> str:
    """``${VAR:-default}`` as compose reads it with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match[1]) * (60 if match[2] == "m" else 1)


@lru_cache(maxsize=None)
def dockerfile_stages(name: str) -> list[list[tuple[str, str]]]:
    """A Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = (DEPLOY / name).read_text()
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    stages: list[list[tuple[str, str]]] = []
    for instruction in logical:
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), rest))
    return stages


def instructions(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in stage if kw == keyword]


# --- the validators ----------------------------------------------------------------------


KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")  # gRPC probes are GA from 1.27; 1.37 is the newest bundled


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_schemas(version):
    import kubernetes_validate  # the dev extra: `make setup` installs it
    failures = []
    for doc in [*resources().values(), *rendered()]:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")
    assert not failures, "\n".join(failures)


def test_the_kubernetes_validator_catches_a_misspelt_field():
    import kubernetes_validate  # the dev extra: `make setup` installs it
    import copy

    bad = copy.deepcopy(resource("Deployment", "inference-service"))
    probe = bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["grcp"] = probe.pop("grpc")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_kubernetes_validator_cli_passes_every_manifest():
    files = [str(K8S / f) for f in kustomization()["resources"]]
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec():
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_validator_catches_a_misspelt_field(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  edge:\n    image: x\n    stop_grace_periods: 40s\n")
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad))
    assert result.returncode != 0, result.stdout


@pytest.mark.parametrize("dockerfile", ["service.Dockerfile", "edge.Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile):
    result = run(tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DEPLOY / dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y cmake\n")
    result = run(tool("hadolint"), "--no-color", str(bad))
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the latest tag


# --- Kubernetes: consistency -------------------------------------------------------------


def service_container() -> dict:
    return resource("Deployment", "inference-service")["spec"]["template"]["spec"]["containers"][0]


def edge_container() -> dict:
    return resource("Deployment", "rest-edge")["spec"]["template"]["spec"]["containers"][0]


def test_kustomization_lists_every_manifest_and_sets_one_namespace():
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization()["resources"]) == files
    namespaces = [doc for doc in resources().values() if doc["kind"] == "Namespace"]
    assert [ns["metadata"]["name"] for ns in namespaces] == [kustomization()["namespace"]]
    images = {c["image"].rsplit(":", 1)[0] for doc in resources().values() for c in containers(doc)}
    assert images == {image["name"] for image in kustomization()["images"]}


def test_selectors_match_their_pods():
    for doc in resources().values():
        if doc["kind"] == "Deployment":
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind, name in [("Service", "inference-service"), ("Service", "rest-edge"),
                       ("PodDisruptionBudget", "inference-service"), ("PodDisruptionBudget", "rest-edge")]:
        selector = resource(kind, name)["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        pod_labels = resource("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items(), (kind, name)


def test_service_replicas_cpu_threads_and_memory():
    deployment = resource("Deployment", "inference-service")
    assert deployment["spec"]["replicas"] == 3
    container = service_container()
    resources_ = container["resources"]
    threads = int(env_of(container)["INFERENCE_THREADS"])
    assert cpu_cores(resources_["limits"]["cpu"]) == threads == 2
    assert cpu_cores(resources_["requests"]["cpu"]) == threads  # Guaranteed QoS: whole dedicated cores
    assert resources_["requests"]["memory"] == resources_["limits"]["memory"]
    slots = int(flag(container["args"], "--slots"))
    bound = (BASE_MB + slots * 1.15 * KV_MB + MODEL_MAPPING_MB) * MB
    limit = memory_bytes(resources_["limits"]["memory"])
    assert bound <= limit <= 1.5 * bound, (bound, limit)
    assert flag(container["args"], "--model") == "smollm2:135m"  # the model the memory bound is for


def test_service_grace_probes_and_ports():
    deployment = resource("Deployment", "inference-service")
    pod = deployment["spec"]["template"]["spec"]
    container = service_container()
    args = container["args"]
    grace = float(flag(args, "--grace"))
    assert pod["terminationGracePeriodSeconds"] > grace + prestop_sleep(container)
    grpc_port = port_of(flag(args, "--address"))
    metrics_port = port_of(flag(args, "--metrics-address"))
    assert flag(args, "--address").startswith("0.0.0.0:") and flag(args, "--metrics-address").startswith("0.0.0.0:")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model load: minutes, not seconds
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_headless_service_exposes_grpc_and_metrics():
    spec = resource("Service", "inference-service")["spec"]
    assert spec["clusterIP"] == "None"
    container_ports = {p["name"]: p["containerPort"] for p in service_container()["ports"]}
    ports = {p["name"]: p for p in spec["ports"]}
    assert ports["grpc"]["port"] == container_ports["grpc"] == 50051
    assert ports["grpc"]["targetPort"] in ("grpc", 50051) and ports["grpc"]["appProtocol"] == "grpc"
    assert ports["metrics"]["port"] == container_ports["metrics"] == 9090


def test_edge_targets_the_headless_service():
    namespace = kustomization()["namespace"]
    grpc_port = next(p["port"] for p in resource("Service", "inference-service")["spec"]["ports"] if p["name"] == "grpc")
    target = env_of(edge_container())["INFERENCE_TARGET"]
    assert target == f"dns:///inference-service.{namespace}.svc.cluster.local:{grpc_port}"


def test_edge_ports_probes_and_grace():
    deployment = resource("Deployment", "rest-edge")
    container = edge_container()
    env = env_of(container)
    port = port_of(env["EDGE_BIND"])
    assert env["EDGE_BIND"].startswith("0.0.0.0:")
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] in ("/health", "/metrics")
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", port)
    service_port = resource("Service", "rest-edge")["spec"]["ports"][0]
    assert service_port["port"] == 80 and service_port["targetPort"] in ("http", port)
    gunicorn_graceful_timeout = 30  # rest_edge/gunicorn_conf.py
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > gunicorn_graceful_timeout + prestop_sleep(container)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port


def test_pod_disruption_budgets_leave_replicas_serving():
    service_pdb = resource("PodDisruptionBudget", "inference-service")["spec"]
    assert 0 < service_pdb["minAvailable"] < resource("Deployment", "inference-service")["spec"]["replicas"]
    assert resource("PodDisruptionBudget", "rest-edge")["spec"]["maxUnavailable"] == 1


def test_pods_run_as_non_root_with_read_only_roots():
    service_user = int(re.search(r"^USER (\d+)", (DEPLOY / "service.Dockerfile").read_text(), re.M)[1])
    edge_user = int(re.search(r"^USER (\d+)", (DEPLOY / "edge.Dockerfile").read_text(), re.M)[1])
    for name, image_user in [("inference-service", service_user), ("rest-edge", edge_user)]:
        pod = resource("Deployment", name)["spec"]["template"]["spec"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == image_user != 0
        assert security["seccompProfile"]["type"] == "RuntimeDefault"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
            assert "emptyDir" in mounts["/tmp"], name  # the one writable path they need
        assert pod["automountServiceAccountToken"] is False


def test_service_flags_exist():
    """Every flag the manifests pass is one ``serve`` has (its --help lists them)."""
    result = run(sys.executable, "-m", "inference_service", "serve", "--help")
    assert result.returncode == 0, result.stderr
    passed = {arg.split("=", 1)[0] for arg in service_container()["args"] if arg.startswith("--")}
    for name, service in compose()["services"].items():
        if name.startswith("service-"):
            passed |= {arg for arg in service["command"] if arg.startswith("--")}
    missing = {f for f in passed if f not in result.stdout}
    assert not missing, missing


# --- compose: consistency ----------------------------------------------------------------


def replicas() -> dict[str, dict]:
    return {name: s for name, s in compose()["services"].items() if name.startswith("service-")}


def test_compose_runs_three_replicas_behind_one_edge():
    assert sorted(replicas()) == ["service-1", "service-2", "service-3"]
    edge = compose()["services"]["edge"]
    target = compose_default(edge["environment"]["INFERENCE_TARGET"])
    assert target.split(",") == [f"{name}:50051" for name in sorted(replicas())]
    assert edge["ports"] == ["8000:8000"]
    assert port_of(edge["environment"]["EDGE_BIND"]) == 8000
    assert {name: dep["condition"] for name, dep in edge["depends_on"].items()} == {
        name: "service_healthy" for name in replicas()}
    assert "/health" in " ".join(edge["healthcheck"]["test"])


def test_compose_replicas_grace_threads_health_and_model_volume():
    for name, service in replicas().items():
        command = service["command"]
        assert port_of(flag(command, "--address")) == 50051, name
        assert seconds(service["stop_grace_period"]) > float(flag(command, "--grace")), name
        assert float(service["cpus"]) == int(service["environment"]["INFERENCE_THREADS"]), name
        assert docker_bytes(service["mem_limit"]) == memory_bytes(service_container()["resources"]["limits"]["memory"])
        assert service["healthcheck"]["test"][:2] == ["CMD", "python"], name
        assert "models:/models" in service["volumes"], name
        assert service["depends_on"]["model"]["condition"] == "service_completed_successfully", name
        assert service["read_only"] is True and "/tmp" in service["tmpfs"], name
    model = compose()["services"]["model"]
    assert "models:/models" in model["volumes"]
    assert "models" in compose()["volumes"]
    edge = compose()["services"]["edge"]
    assert seconds(edge["stop_grace_period"]) > 30  # gunicorn's graceful_timeout


# --- Dockerfiles: consistency ------------------------------------------------------------


def test_service_image_compiles_in_a_builder_and_runs_without_a_compiler():
    builder, runtime = dockerfile_stages("service.Dockerfile")
    assert builder[0][1].startswith("python:3.11-slim") and "AS builder" in builder[0][1]
    assert runtime[0][1].startswith("python:3.11-slim")
    assert any("build-essential" in run and "cmake" in run for run in instructions(builder, "RUN"))
    assert any(".[engine,llamacpp]" in run for run in instructions(builder, "RUN"))
    runtime_runs = " ".join(instructions(runtime, "RUN"))
    assert "build-essential" not in runtime_runs and "cmake" not in runtime_runs
    assert "libgomp1" in runtime_runs  # llama.cpp's OpenMP runtime
    assert any(copy.startswith("--from=builder /opt/venv") for copy in instructions(runtime, "COPY"))


def test_images_run_as_non_root_with_health_checks():
    for dockerfile, health in [("service.Dockerfile", "service_health.py"), ("edge.Dockerfile", "/health")]:
        runtime = dockerfile_stages(dockerfile)[-1]
        users = instructions(runtime, "USER")
        assert users and users[-1].split(":")[0] not in ("0", "root"), dockerfile
        # USER comes before the command runs (ENTRYPOINT is the last instruction that matters).
        keywords = [kw for kw, _ in runtime]
        assert keywords.index("USER") < keywords.index("ENTRYPOINT"), dockerfile
        assert health in " ".join(instructions(runtime, "HEALTHCHECK")), dockerfile


def test_edge_image_has_no_engine():
    stages = dockerfile_stages("edge.Dockerfile")
    runs = " ".join(run for stage in stages for run in instructions(stage, "RUN"))
    assert ".[edge]" in runs
    assert "engine" not in runs and "llamacpp" not in runs and "cmake" not in runs
    env = " ".join(instructions(stages[-1], "ENV"))
    assert "EDGE_BIND=0.0.0.0:8000" in env


def test_service_image_pulls_the_model_at_build_only_when_asked():
    runtime = dockerfile_stages("service.Dockerfile")[-1]
    assert 'ARG PULL_MODEL=""' in [f"ARG {a}" for a in instructions(runtime, "ARG")]
    assert any("prepare_model.py" in run and "PULL_MODEL" in run for run in instructions(runtime, "RUN"))
    env = " ".join(instructions(runtime, "ENV"))
    assert "INFERENCE_SERVICE_CACHE=/models" in env


def test_build_contexts_keep_what_the_images_copy():
    """Every file a COPY takes from the context is let through its .dockerignore (a
    whitelist) and exists."""
    for dockerfile in ("service.Dockerfile", "edge.Dockerfile"):
        ignore = (DEPLOY / f"{dockerfile}.dockerignore").read_text().splitlines()
        allowed = {line[1:] for line in ignore if line.startswith("!")}
        for stage in dockerfile_stages(dockerfile):
            for copy in instructions(stage, "COPY"):
                if copy.startswith("--from"):
                    continue
                sources = copy.split()[:-1]
                for source in sources:
                    assert source in allowed, (dockerfile, source)
                    assert (REPO / source).exists(), source
