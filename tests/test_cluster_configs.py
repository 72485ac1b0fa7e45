"""cluster/: the Ray launcher config, the KubeRay RayJob, the MLflow server and the guide.

Everything is checked against the tools' own definitions where they ship with the venv: the
launcher YAML against Ray's cluster-config JSON schema (and the checks `ray up` runs before it
contacts AWS), `ray ...` command lines against Ray's click commands, `mlflow server` arguments
against MLflow's click command, and sweep command lines against sweeps/run.py's own parser.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
SHARED = "/mnt/shared"

# AWS GPU instance types -> (vCPUs, GPUs), from AWS's accelerated-computing instance table.
AWS_GPU_INSTANCES = {
    "g4dn.xlarge": (4, 1),
    "g4dn.2xlarge": (8, 1),
    "g4dn.4xlarge": (16, 1),
    "g4dn.12xlarge": (48, 4),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.4xlarge": (16, 1),
    "g5.8xlarge": (32, 1),
    "g5.12xlarge": (48, 4),
    "g5.48xlarge": (192, 8),
    "g6.xlarge": (4, 1),
    "g6.2xlarge": (8, 1),
    "g6.4xlarge": (16, 1),
    "g6.12xlarge": (48, 4),
    "p3.2xlarge": (8, 1),
    "p3.8xlarge": (32, 4),
    "p4d.24xlarge": (96, 8),
    "p5.48xlarge": (192, 8),
}
TRIALS_PER_GPU = 4  # the README's sizing: --gpus-per-trial 0.25 with --cpus-per-trial 1


# ---------------------------------------------------------------------------------------------
# helpers


def load_yaml(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def load_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def sweep_parser():
    """sweeps/run.py's argparse parser, imported from the file (sweeps/ is no package)."""
    path = ROOT / "sweeps" / "run.py"
    if not path.exists():
        pytest.skip("sweeps/run.py does not exist yet: entrypoint parsing is checked once it does")
    spec = importlib.util.spec_from_file_location("_specialsam_sweeps_run", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "build_parser"):
        pytest.skip("sweeps/run.py has no build_parser() yet: entrypoint parsing is checked once it does")
    return mod.build_parser()


def parse_sweep(tokens: list[str]):
    """Parse `python sweeps/run.py ...` with the real parser; argparse errors become failures."""
    assert tokens[:2] == ["python", "sweeps/run.py"], tokens
    parser = sweep_parser()
    try:
        return parser.parse_args(tokens[2:])
    except SystemExit as exc:  # argparse reports unknown/invalid flags by exiting
        pytest.fail(f"sweeps/run.py rejects {shlex.join(tokens)} (exit {exc.code})")


def ray_click(tokens: list[str]):
    """Parse `ray <cmd> [<sub>] ...` with Ray's own click CLI (nothing runs)."""
    import click
    from ray.scripts.scripts import cli

    assert tokens[0] == "ray", tokens
    cmd, args, name = cli, list(tokens[1:]), "ray"
    while isinstance(cmd, click.Group):
        assert args, f"incomplete ray command: {tokens}"
        name, args = args[0], args[1:]
        cmd = cmd.get_command(click.Context(cli), name)
        assert cmd is not None, f"`{shlex.join(tokens)}`: ray has no command {name!r}"
    try:
        return cmd.make_context(name, args)
    except click.UsageError as exc:
        pytest.fail(f"`{shlex.join(tokens)}` is not a valid ray command: {exc}")


def shell_segments(command: str) -> list[list[str]]:
    """Split a shell line on ; && || & into token lists (enough for the commands in cluster/)."""
    out = []
    for part in re.split(r";|&&|\|\||(?<![>&])&(?!>)", command):
        part = part.strip()
        if part:
            try:
                out.append(shlex.split(part))
            except ValueError:
                out.append(part.split())
    return out


def mlflow_source(*parts: str) -> str:
    """A source file of the installed MLflow, read without importing MLflow (that costs seconds)."""
    pkg = Path(importlib.util.find_spec("mlflow").origin).parent
    return pkg.joinpath(*parts).read_text()


def mlflow_server_flags() -> set[str]:
    """Every option flag of the installed `mlflow server` command, read from MLflow's source:
    the click.option(...) decorators on `def server` in mlflow/cli, and the shared options in
    mlflow/utils/cli_args.py that it applies as @cli_args.NAME."""

    def flags_of(call: ast.Call) -> set[str]:
        out = set()
        for a in call.args:
            if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-"):
                out.update(f for f in a.value.split("/") if f.startswith("--"))
        return out

    shared = {}
    for node in ast.parse(mlflow_source("utils", "cli_args.py")).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    shared[t.id] = flags_of(node.value)
    tree = ast.parse(mlflow_source("cli", "__init__.py"))
    (server,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "server"]
    flags = set()
    for dec in server.decorator_list:
        if isinstance(dec, ast.Call):
            flags |= flags_of(dec)
        elif isinstance(dec, ast.Attribute) and getattr(dec.value, "id", None) == "cli_args":
            flags |= shared[dec.attr]
    assert {"--host", "--port", "--workers", "--backend-store-uri"} <= flags, "MLflow's options not found"
    return flags


def option_values(argv: list[str]) -> dict[str, str | None]:
    """--flag value pairs of a command line (a flag followed by another flag has value None)."""
    out = {}
    for i, tok in enumerate(argv):
        if tok.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            out[tok] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def mlflow_dry_run(**env) -> tuple[dict[str, str], list[str]]:
    """Run cluster/mlflow-server.sh --dry-run; return (env assignments, argv)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SPECIALSAM_"))}
    out = subprocess.run(
        ["bash", str(CLUSTER / "mlflow-server.sh"), "--dry-run"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    tokens = shlex.split(out)
    assigns = {}
    while tokens and re.fullmatch(r"[A-Z_]+=.*", tokens[0]):
        k, _, v = tokens.pop(0).partition("=")
        assigns[k] = v
    return assigns, tokens


# ---------------------------------------------------------------------------------------------
# cluster/aws-gpu.yaml


def test_aws_config_passes_rays_schema_and_ray_up_checks():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load_yaml("aws-gpu.yaml")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    # What `ray up` does before it talks to AWS: merge the provider defaults, then validate
    # (schema again, head type among the node types, min_workers within max_workers).
    validate_config(prepare_config(copy.deepcopy(cfg)))

    # The validator is not vacuous: a misspelt node-type field is rejected.
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["head.cpu"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_aws_gpu_workers_and_worker_counts():
    cfg = load_yaml("aws-gpu.yaml")
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["node_config"]["InstanceType"] not in AWS_GPU_INSTANCES, "head is a CPU node"
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU"), (
        "the head advertises no CPU/GPU so trials never land on it"
    )

    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert workers, "no worker node types"
    for name, t in workers.items():
        itype = t["node_config"]["InstanceType"]
        assert itype in AWS_GPU_INSTANCES, f"{name}: {itype} is not a known GPU instance type"
        vcpus, gpus = AWS_GPU_INSTANCES[itype]
        assert t["resources"]["GPU"] == gpus, f"{name}: resources.GPU must equal the {itype}'s {gpus}"
        assert 0 < t["resources"]["CPU"] <= vcpus, f"{name}: more CPUs advertised than {itype} has"
        assert t["resources"]["CPU"] >= TRIALS_PER_GPU * gpus, (
            f"{name}: too few CPUs for {TRIALS_PER_GPU} one-CPU trials per GPU"
        )
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name
    amis = {t["node_config"]["ImageId"] for t in types.values()}
    assert len(amis) == 1 and re.fullmatch(r"ami-[0-9a-zA-Z-]+", amis.pop()), "one GPU AMI for all nodes"
    assert sum(t["min_workers"] for t in workers.values()) <= cfg["max_workers"]
    assert sum(t["max_workers"] for t in workers.values()) >= 2, "autoscaling needs room to grow"
    # sweeps/run.py refuses --gpus-per-trial when the cluster has no GPU at start: keep one up.
    assert sum(t["min_workers"] for t in workers.values()) >= 1
    assert any(t["min_workers"] < t["max_workers"] for t in workers.values()), "nothing autoscales"


def test_aws_ray_start_commands_are_valid_and_keep_the_dashboard_private():
    cfg = load_yaml("aws-gpu.yaml")
    starts = {}
    for role in ("head", "worker"):
        segs = [s for c in cfg[f"{role}_start_ray_commands"] for s in shell_segments(c)]
        ray_starts = [s for s in segs if s[:2] == ["ray", "start"]]
        assert len(ray_starts) == 1, f"{role}: expected one `ray start`, got {ray_starts}"
        starts[role] = ray_click(ray_starts[0]).params  # every flag exists in the installed Ray

    head, worker = starts["head"], starts["worker"]
    assert head["head"] and head["port"] == 6379
    assert head["dashboard_host"] == "127.0.0.1"
    assert head["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
    assert not worker["head"] and worker["address"] == "$RAY_HEAD_IP:6379"
    text = (CLUSTER / "aws-gpu.yaml").read_text()
    assert "0.0.0.0" not in text, "nothing in the launcher config may bind every interface"

    # The MLflow server on the head comes from our script with its 127.0.0.1 default.
    head_cmds = " ".join(cfg["head_start_ray_commands"])
    assert "cluster/mlflow-server.sh" in head_cmds and "MLFLOW_HOST" not in head_cmds


def test_aws_file_mounts_and_shared_storage():
    cfg = load_yaml("aws-gpu.yaml")
    for remote, local in cfg["file_mounts"].items():
        assert (ROOT / local).exists(), f"file_mounts: {local} (for {remote}) is not in the repo"
    mounted = {Path(r).name for r in cfg["file_mounts"]}
    assert {"pyproject.toml", "specialsam", "sweeps", "cluster"} <= mounted
    assert not any(local.strip("./") == "" for local in cfg["file_mounts"].values()), (
        "never mount the repo root: `ray up` hashes every file under it (.venv included)"
    )
    assert any("pip install" in c and "~/specialsam" in c for c in cfg["setup_commands"])
    # /mnt/shared: mounted on the host, passed into the container, used for cache and Tune.
    init = " ".join(cfg["initialization_commands"])
    assert f" {SHARED}" in init and "nfs4" in init
    assert f"--volume={SHARED}:{SHARED}" in cfg["docker"]["run_options"]
    setup = " ".join(cfg["setup_commands"])
    assert f"{SHARED}/cache" in setup and f"{SHARED}/tune" in setup


# ---------------------------------------------------------------------------------------------
# cluster/kuberay-rayjob.yaml


def rayjob_docs():
    docs = load_docs("kuberay-rayjob.yaml")
    return docs, one(docs, "RayJob")


def test_rayjob_entrypoint_is_our_cli():
    _, job = rayjob_docs()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    tokens = shlex.split(spec["entrypoint"])
    assert tokens[:2] == ["python", "sweeps/run.py"]
    args = parse_sweep(tokens)
    assert args.task == "camouflage"
    assert args.tracking_uri.startswith("http://")
    assert 0 < args.gpus_per_trial <= 1
    assert args.storage.startswith(SHARED + "/") and args.cache_dir.startswith(SHARED + "/")
    # The entrypoint's relative path works because the job runs in the image's project folder.
    workdir = re.search(r"^WORKDIR\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == workdir


def test_rayjob_cluster_gpu_workers_and_shared_volume():
    docs, job = rayjob_docs()
    rc = job["spec"]["rayClusterSpec"]
    head = rc["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP", "the dashboard must not leave the cluster"
    assert head["rayStartParams"].get("num-cpus") == "0", "no trials on the head"
    workers = rc["workerGroupSpecs"]
    assert workers
    for g in workers:
        assert 1 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        for c in g["template"]["spec"]["containers"]:
            gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
            assert gpus >= 1, f"{g['groupName']}: worker without a GPU limit"
            assert int(c["resources"]["limits"]["cpu"]) >= TRIALS_PER_GPU * gpus

    # One ReadWriteMany claim, defined in the same file, mounted at /mnt/shared in every pod.
    pvc = one(docs, "PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    pods = [head["template"]["spec"]] + [g["template"]["spec"] for g in workers]
    images = set()
    for pod in pods:
        vols = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            images.add(c["image"])
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert SHARED in mounts, f"{c['name']}: {SHARED} not mounted"
            claim = vols[mounts[SHARED]]["persistentVolumeClaim"]["claimName"]
            assert claim == pvc["metadata"]["name"]
    assert len(images) == 1, "head and workers must run the same image"


def test_ray_versions_agree():
    """The launcher image, the Dockerfile and the RayJob name the same Ray release."""
    _, job = rayjob_docs()
    rayjob = job["spec"]["rayClusterSpec"]["rayVersion"]
    dockerfile = re.search(r"^ARG RAY_VERSION=(\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    image = load_yaml("aws-gpu.yaml")["docker"]["image"]
    launcher = re.fullmatch(r"rayproject/ray:([\d.]+)-py\d+-gpu", image)
    assert launcher, "docker.image should be a rayproject/ray GPU tag"
    assert rayjob == dockerfile == launcher.group(1)


# ---------------------------------------------------------------------------------------------
# MLflow: cluster/mlflow-server.sh and cluster/mlflow-k8s.yaml


def test_mlflow_script_is_lean_and_local_by_default():
    assigns, argv = mlflow_dry_run()
    assert argv[:2] == ["mlflow", "server"]
    opts = option_values(argv[2:])
    unknown = set(opts) - mlflow_server_flags()
    assert not unknown, f"flags unknown to the installed MLflow: {unknown}"
    assert opts["--host"] == "127.0.0.1"
    assert opts["--workers"] == "1"
    assert opts["--port"] == "5000"
    assert "--serve-artifacts" in opts and opts["--serve-artifacts"] is None
    assert opts["--backend-store-uri"] == f"sqlite:///{SHARED}/mlflow.db"
    assert opts["--artifacts-destination"] == f"{SHARED}/mlartifacts"
    # MLflow 3's job runner is switched off by MLflow's own boolean environment variable, which
    # gates the runner's launch in mlflow.server.
    assert assigns == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env_src = mlflow_source("environment_variables.py")
    assert re.search(
        r"MLFLOW_SERVER_ENABLE_JOB_EXECUTION = _BooleanEnvironmentVariable\(\s*"
        r'"MLFLOW_SERVER_ENABLE_JOB_EXECUTION"',
        env_src,
    )
    assert "if MLFLOW_SERVER_ENABLE_JOB_EXECUTION.get():" in mlflow_source("server", "__init__.py")


def test_mlflow_script_settings_and_errors():
    _, argv = mlflow_dry_run(MLFLOW_HOST="10.0.1.5", SPECIALSAM_SHARED="/data/x y")
    assert argv[argv.index("--host") + 1] == "10.0.1.5"
    assert argv[argv.index("--backend-store-uri") + 1] == "sqlite:////data/x y/mlflow.db"
    bad = subprocess.run(
        ["bash", str(CLUSTER / "mlflow-server.sh"), "--bogus"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


def mlflow_k8s():
    docs = load_docs("mlflow-k8s.yaml")
    dep, svc, pol = one(docs, "Deployment"), one(docs, "Service"), one(docs, "NetworkPolicy")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dep, svc, pol, c


def test_mlflow_k8s_manifest():
    dep, svc, pol, c = mlflow_k8s()
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert c["command"] == ["mlflow", "server"]
    opts = option_values(list(c["args"]))
    assert set(opts) <= mlflow_server_flags()
    assert opts["--workers"] == "1" and "--serve-artifacts" in opts
    assert {"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"} in c["env"]
    # Binding every interface in the pod is only acceptable behind a ClusterIP Service and a
    # NetworkPolicy that admits Ray pods alone (KubeRay labels them ray.io/is-ray-node=yes).
    assert opts["--host"] == "0.0.0.0"
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = pol["spec"]["ingress"]
    assert rule["from"] and all(
        src["podSelector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"} for src in rule["from"]
    )
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"

    # The RayJob's --tracking-uri names this Service and port, and the server accepts that Host
    # header verbatim (and localhost on any port, for kubectl port-forward).
    _, job = rayjob_docs()
    host = (
        parse_sweep(shlex.split(job["spec"]["entrypoint"])).tracking_uri.removeprefix("http://").rstrip("/")
    )
    name, ns, port = re.fullmatch(r"([^.]+)\.([^.]+)\.svc:(\d+)", host).groups()
    assert (name, ns) == (svc["metadata"]["name"], svc["metadata"]["namespace"])
    assert int(port) == svc["spec"]["ports"][0]["port"] == int(opts["--port"])
    allowed = opts["--allowed-hosts"].split(",")
    assert host in allowed and "localhost:*" in allowed and "*" not in allowed


def test_mlflow_commands_parse_with_mlflows_own_cli():
    """The same command lines through MLflow's click command and Host-header check (imports
    mlflow.cli and mlflow.server: several seconds)."""
    from mlflow.cli import server
    from mlflow.server.security_utils import is_allowed_host_header, is_health_endpoint

    _, argv = mlflow_dry_run()
    params = server.make_context("server", argv[2:]).params
    assert (params["host"], params["port"], params["workers"]) == ("127.0.0.1", 5000, "1")
    assert params["serve_artifacts"] is True

    _, _, _, c = mlflow_k8s()
    params = server.make_context("server", list(c["args"])).params
    allowed = [h.strip() for h in params["allowed_hosts"].split(",")]
    assert is_allowed_host_header(allowed, "mlflow.mlflow.svc:5000")
    assert is_allowed_host_header(allowed, "localhost:5000")
    assert not is_allowed_host_header(allowed, "evil.example.com")
    assert is_health_endpoint(c["readinessProbe"]["httpGet"]["path"])


# ---------------------------------------------------------------------------------------------
# cluster/README.md: every ray / sweep / mlflow command in it is one the tools accept


def readme_commands() -> list[list[str]]:
    text = (CLUSTER / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                cmds.append(shlex.split(line))
    return cmds


def test_readme_ray_and_sweep_commands_parse():
    cmds = readme_commands()
    ray_cmds = [c for c in cmds if c[0] == "ray"]
    assert {"up", "dashboard", "attach", "down", "job"} <= {c[1] for c in ray_cmds}
    sweeps = 0
    for c in ray_cmds:
        ctx = ray_click(c)
        if c[1:3] == ["job", "submit"]:
            entry = list(ctx.params["entrypoint"])
            args = parse_sweep(entry)
            assert args.tracking_uri and args.storage.startswith(SHARED) and args.cache_dir.startswith(SHARED)
            sweeps += 1
    assert sweeps >= 1, "the guide shows no `ray job submit ... -- python sweeps/run.py`"
    submit = next(c for c in ray_cmds if c[1:3] == ["job", "submit"])
    assert submit[submit.index("--address") + 1] == "http://127.0.0.1:8265", "submit through the tunnel"


def test_readme_mlflow_command_is_the_scripts():
    """The guide shows exactly what the script runs, and warns about the missing authentication."""
    assigns, argv = mlflow_dry_run()
    expected = [f"{k}={v}" for k, v in assigns.items()] + argv
    assert expected in readme_commands()
    text = (CLUSTER / "README.md").read_text()
    assert "no authentication" in text
    for tunnel in (
        "ray dashboard cluster/aws-gpu.yaml",
        "ssh -L 5000:localhost:5000",
        "kubectl -n mlflow port-forward svc/mlflow 5000:5000",
    ):
        assert tunnel in text, tunnel
