"""Ray listens on loopback only (issue #18): every listening socket of every Ray process, both of the
test suite's shared cluster and of the Ray a local sweep starts (init_ray), is bound to 127.0.0.1/::1."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import ray

from specialsam.sweep.ray_runtime import RAY_LOCAL_ONLY_ENV

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1, also as an IPv4-mapped address (gRPC's dual-stack sockets: ::ffff:127.0.0.1)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback


def listeners(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, ip, port) of every TCP socket in LISTEN state the processes hold."""
    out = []
    for p in procs:
        try:
            name, conns = p.name(), p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # an idle worker that exited meanwhile holds no socket any more
        out += [(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def with_descendants(roots: list[psutil.Process]) -> list[psutil.Process]:
    """The roots and every process under them (raylets start workers and agents; drivers start all)."""
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def session_processes(session_dir: str) -> list[psutil.Process]:
    """Processes started with the Ray session's directory on their command line, and their children."""
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        if session_dir in " ".join(p.info["cmdline"] or []):
            roots.append(p)
    return with_descendants(roots)


def test_shared_cluster_listens_on_loopback_only(ray_cluster):
    @ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
    def worker_pid() -> int:
        time.sleep(0.3)  # overlapping, so the two nodes (one CPU each) both start a worker
        return os.getpid()

    assert ray.get([worker_pid.remote() for _ in range(2)])
    procs = [*session_processes(ray_cluster.head_node.get_session_dir_path()), psutil.Process()]
    found = listeners(procs)
    names = [name for name, _, _ in found]
    gcs_port = int(ray_cluster.gcs_address.rsplit(":", 1)[1])
    assert any(port == gcs_port for _, _, port in found), found  # the scan sees the head's GCS
    assert names.count("raylet") >= 4, found  # node manager + object manager of both nodes
    assert any(n.startswith("ray::") for n in names), found  # the workers (and agents)
    exposed = [s for s in found if not is_loopback(s[1])]
    assert not exposed, f"Ray sockets listening beyond loopback (process, ip, port): {exposed}"


def test_local_sweep_ray_listens_on_loopback_only():
    """init_ray's own Ray, in a process that did not inherit the test suite's local-only switch."""
    script = (
        "import json, os, sys, ray\n"
        "from specialsam.sweep.ray_runtime import init_ray\n"
        "init_ray(None, num_cpus=1)\n"
        "def pid():\n    return os.getpid()\n"
        "ray.get(ray.remote(pid).remote())\n"  # starts a worker
        "print('READY', json.dumps(ray.util.get_node_ip_address()), flush=True)\n"
        "sys.stdin.readline()\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (RAY_LOCAL_ONLY_ENV, "RAY_ADDRESS")}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a hung Ray is killed with it below
    )
    watchdog = threading.Timer(120, os.killpg, (proc.pid, signal.SIGKILL))  # a hung start fails, not hangs
    watchdog.start()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("READY"):
                break
        assert lines and lines[-1].startswith("READY"), "".join(lines)[-2000:]
        found = listeners(with_descendants([psutil.Process(proc.pid)]))
        rest = proc.communicate("\n", timeout=60)[0]
        assert proc.returncode == 0, rest[-2000:]
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    names = [name for name, _, _ in found]
    assert {"gcs_server", "raylet"} <= set(names), found
    exposed = [s for s in found if not is_loopback(s[1])]
    assert not exposed, f"Ray sockets listening beyond loopback (process, ip, port): {exposed}"
    assert json.loads(lines[-1].split(" ", 1)[1]) == "127.0.0.1"  # what Ray tells workers and clients
