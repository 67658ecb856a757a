"""The container and the Kubernetes manifests (Dockerfile, deploy/): what can be checked without Docker or a cluster.

The Dockerfile is multi-stage, slim and non-root; its entrypoint, run here exactly as the image would run it
(the bundle at the mount point, the image's environment), serves the real model, and its health check
command passes against it. The KServe InferenceService, the KubeRay RayService and the Serve config parse,
name the ports, probes and paths the service has, pass flags the CLI accepts, and give Ray an application it
can build.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from cloud.security import PUBLIC_PATHS

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


# --- the Dockerfile, read as Docker would --------------------------------------------------------------


def dockerfile_stages(path: Path = REPO / "Dockerfile") -> dict[str, dict]:
    """{stage: {"from": base, "ops": [(INSTRUCTION, arguments), ...]}}, in order; continuations joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            base, _, name = rest.partition(" AS ")
            current = stages.setdefault(name.strip() or f"stage{len(stages)}", {"from": base.strip(), "ops": []})
        elif current is not None:
            current["ops"].append((op, rest))
    return stages


def effective(stages: dict[str, dict], name: str) -> dict:
    """What a stage's image carries: ENV, USER, EXPOSE, HEALTHCHECK, ENTRYPOINT, CMD, its own and its parents'."""
    chain = []
    while name in stages:
        chain.append(stages[name])
        name = stages[name]["from"]
    out: dict = {"env": {}}
    for stage in reversed(chain):
        for op, rest in stage["ops"]:
            if op == "ENV":
                out["env"].update(dict(kv.split("=", 1) for kv in shlex.split(rest)))
            elif op in ("USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"):
                out[op.lower()] = rest
    return out


def exec_form(value: str) -> list[str]:
    args = json.loads(value)
    assert isinstance(args, list) and all(isinstance(a, str) for a in args), value
    return args


def test_dockerfile_is_multi_stage_slim_and_non_root():
    stages = dockerfile_stages()
    assert {"build", "runtime", "baked", "mounted"} <= set(stages)
    assert list(stages)[-1] == "mounted"  # the default target: the bundle is mounted
    assert all("slim" in stages[s]["from"] for s in ("build", "runtime"))
    runtime_ops = [op for op, _ in stages["runtime"]["ops"]]
    assert "RUN" in runtime_ops and not any("pip install" in r for op, r in stages["runtime"]["ops"] if op == "RUN")
    assert any(op == "COPY" and "--from=build" in r for op, r in stages["runtime"]["ops"])
    for target in ("mounted", "baked"):
        image = effective(stages, target)
        assert image["user"] not in ("", "0", "root") and int(image["user"]) >= 1000
        assert image["expose"] == image["env"]["HV_PORT"] == "8080"
        assert exec_form(image["entrypoint"]) == ["hybrid-vision", "serve"]
        assert "/v2/health/ready" in image["healthcheck"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_image_entrypoint_runs_the_real_server_and_its_health_check_passes(trained_bundle_session, digits_dir):
    """ENTRYPOINT + CMD with the image's ENV, the bundle where the image mounts it; then HEALTHCHECK's command."""
    image = effective(dockerfile_stages(), "mounted")
    cmd = exec_form(image["entrypoint"]) + exec_form(image["cmd"])
    mount = cmd[-1]
    assert mount == "/models/bundle"
    cli = Path(sys.executable).with_name("hybrid-vision")
    program = [str(cli)] if cli.exists() else [sys.executable, "-m", "edge_sdk.cli"]
    argv = program + cmd[1:-1] + [str(trained_bundle_session)]
    port = free_port()  # the image's 8080, unless this machine has it taken
    env = {**os.environ, **image["env"], "HV_PORT": str(port), "HV_HOST": "127.0.0.1", "PATH": os.environ["PATH"]}
    probe = exec_form(image["healthcheck"].split("CMD", 1)[1].strip())
    probe[0] = sys.executable if probe[0] == "python" else probe[0]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode != 0:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the health check never passed"
            time.sleep(0.5)
        png = next(p for d in sorted(digits_dir.iterdir()) if d.is_dir() for p in sorted(d.glob("*.png")))
        r = requests.post(f"http://127.0.0.1:{port}/v1/classify", data=png.read_bytes(),
                          headers={"Content-Type": "image/png"}, timeout=30)
        assert r.status_code == 200 and r.json()["label"] in [d.name for d in digits_dir.iterdir()]
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert f"listening on http://127.0.0.1:{port}" in out


# --- the manifests -----------------------------------------------------------------------------------------


def _serve_cli_accepts(args: list[str]) -> None:
    from edge_sdk.cli import build_parser

    parsed = build_parser().parse_args(["serve", *args])
    assert parsed.command == "serve" and parsed.bundles


def test_kserve_inference_service_runs_the_image_as_a_v2_predictor():
    doc = yaml.safe_load((DEPLOY / "kserve-inferenceservice.yaml").read_text())
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    (c,) = doc["spec"]["predictor"]["containers"]
    assert c["name"] == "kserve-container"
    port = c["ports"][0]["containerPort"]
    image = effective(dockerfile_stages(), "mounted")
    assert port == int(image["expose"]) == 8080 and c["args"][c["args"].index("--port") + 1] == str(port)
    assert c["args"][0] == "/mnt/models" and any(e["name"] == "STORAGE_URI" for e in c["env"])  # KServe's download
    _serve_cli_accepts(c["args"])
    probes = {c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]}
    assert probes == {"/v2/health/ready", "/v2/health/live"}
    assert {c["readinessProbe"]["httpGet"]["port"], c["livenessProbe"]["httpGet"]["port"]} == {port}
    assert probes <= PUBLIC_PATHS  # the service's two probes, the paths that need no API key
    assert c["securityContext"]["runAsNonRoot"] is True
    assert any(e["name"] == "HV_API_KEYS" and "secretKeyRef" in e["valueFrom"] for e in c["env"])


def _serve_configs() -> dict[str, dict]:
    ray_service = yaml.safe_load((DEPLOY / "kuberay-rayservice.yaml").read_text())
    return {"serve-config.yaml": yaml.safe_load((DEPLOY / "serve-config.yaml").read_text()),
            "kuberay-rayservice.yaml": yaml.safe_load(ray_service["spec"]["serveConfigV2"])}


@pytest.mark.parametrize("where", ["serve-config.yaml", "kuberay-rayservice.yaml"])
def test_serve_configs_are_valid_and_name_our_application(where):
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'hybrid-vision[scale]'")
    import importlib

    from ray.serve.schema import ServeDeploySchema

    from cloud.ray_app import AppArgs, ScaleOptions

    config = ServeDeploySchema.model_validate(_serve_configs()[where])  # Ray's own schema for `serve deploy`
    (app,) = config.applications
    assert app.import_path == "cloud.ray_app:app" and app.route_prefix == "/"
    module, attr = app.import_path.split(":")
    assert callable(getattr(importlib.import_module(module), attr))  # the builder `serve run/deploy` imports
    args = AppArgs.model_validate(app.args)  # the builder's own validation
    ScaleOptions(**args.model_dump(exclude={"bundles", "settings"}))
    assert args.bundles == ["/models/bundle"] and config.http_options.port == 8000


def test_kuberay_ray_service_matches_the_image_and_the_pinned_ray():
    doc = yaml.safe_load((DEPLOY / "kuberay-rayservice.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    cluster = doc["spec"]["rayClusterConfig"]
    pinned = re.search(r'"ray\[serve\]==([\d.*]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert re.fullmatch(pinned.replace(".", r"\.").replace("*", r"\d+"), cluster["rayVersion"])
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = [g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    for c in [head, *workers]:
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["serve"] == 8000  # Serve's proxy on every node (proxy_location: EveryNode)
        assert {"readinessProbe", "livenessProbe"} <= set(c)  # httpGet probes: the slim image has no wget
        assert any(m["mountPath"] == "/models/bundle" for m in c["volumeMounts"])
    assert {"gcs-server", "dashboard"} <= {p["name"] for p in head["ports"]}
    pod = cluster["headGroupSpec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
