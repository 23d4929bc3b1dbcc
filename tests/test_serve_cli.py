"""``volley serve deploy|run|status|shutdown`` against a real head (``volley start --head``):
each command is its own process, as a user runs it; the application's module is a file in the
working directory only (it reaches the replicas with the classes it defines)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_for
from test_cluster import Cluster

import volley
from volley import serve

pytestmark = pytest.mark.one_node("starts a cluster of its own")

WAIT_S = 60.0

APP = """
from volley import serve

@serve.deployment
class Echo:
    def __init__(self, tag="e:"):
        self.tag = tag

    def __call__(self, x):
        return f"{self.tag}{x}"

app = Echo.bind()
"""

CONFIG = """
http_options:
  host: 127.0.0.1
  port: 0
applications:
  - name: echoes
    route_prefix: /echo
    import_path: echo_app:app
    deployments:
      - name: Echo
        num_replicas: 2
        max_ongoing_requests: 3
"""

GREET_APP = """
import os
from volley import serve

@serve.deployment
class Greeter:
    def __init__(self):
        self.greeting = "none yet"

    def reconfigure(self, config):
        self.greeting = config["greeting"]

    def __call__(self, request):
        return {"greeting": self.greeting, "pid": os.getpid()}

app = Greeter.bind()
"""

# Ray Serve's config shape: applications with their deployments' options.
GREET_CONFIG = """
http_options:
  host: 127.0.0.1
  port: 0
applications:
  - name: greet
    route_prefix: /greet
    import_path: greet_app:app
    deployments:
      - name: Greeter
        num_replicas: 2
        user_config:
          greeting: {greeting}
"""


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    volley.shutdown()
    tmp = tmp_path_factory.mktemp("serve-cli")
    c = Cluster(tmp)
    c.start(True, "127.0.0.1", cpus=1)
    work = tmp / "work"
    work.mkdir()
    (work / "echo_app.py").write_text(textwrap.dedent(APP))
    (work / "serve.yaml").write_text(CONFIG)
    (work / "greet_app.py").write_text(textwrap.dedent(GREET_APP))
    (work / "bad.yaml").write_text("applications:\n  - import_path: echo_app:app\n    color: red\n")
    c.work = work
    yield c
    volley.shutdown()
    c.stop()


def cli(c: Cluster, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(c.env, VOLLEY_TOKEN=c.token, **(env or {}))
    argv = [sys.executable, "-m", "volley._cli", "serve", *args, "--address", c.head]
    return subprocess.run(
        argv, cwd=c.work, env=env, capture_output=True, text=True, timeout=WAIT_S, **kw
    )


def status(c: Cluster) -> dict:
    r = cli(c, "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_deploy_status_call_and_shutdown_from_the_command_line(head):
    r = cli(head, "deploy", "serve.yaml")
    assert r.returncode == 0, r.stderr
    assert "deployed application 'echoes'" in r.stdout
    app = status(head)["applications"]["echoes"]
    assert app["status"] == "RUNNING" and app["route_prefix"] == "/echo"
    # The config's override of the code's options took effect.
    assert app["deployments"]["Echo"]["replica_states"] == {"RUNNING": 2}
    assert "Echo: HEALTHY" in cli(head, "status").stdout
    # Another driver (this test) calls it through a handle: the cluster's controller serves it.
    volley.init(address=head.head, token=head.token)
    try:
        assert serve.get_app_handle("echoes").remote(1).result(timeout_s=WAIT_S) == "e:1"
    finally:
        volley.shutdown()
    r = cli(head, "shutdown")
    assert r.returncode == 0, r.stderr
    assert status(head)["applications"] == {}


def test_run_serves_until_sigterm_then_deletes_its_application(head):
    env = dict(head.env, VOLLEY_TOKEN=head.token)
    argv = [sys.executable, "-m", "volley._cli", "serve", "run", "echo_app:app"]
    argv += ["--name", "ran", "--route-prefix", "/ran", "--address", head.head]
    p = subprocess.Popen(argv, cwd=head.work, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert "application 'ran' running" in line, line
        assert status(head)["applications"]["ran"]["status"] == "RUNNING"
        p.send_signal(signal.SIGTERM)
        assert p.wait(WAIT_S) == 0
        assert "deleted" in p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "ran" not in status(head)["applications"]


def test_bad_configs_and_import_paths_fail_with_one_line(head):
    r = cli(head, "deploy", "bad.yaml")
    assert r.returncode == 1 and "unknown key(s) ['color']" in r.stderr, r.stderr
    r = cli(head, "deploy", "missing.yaml")
    assert r.returncode == 1 and "cannot read config missing.yaml" in r.stderr, r.stderr
    r = cli(head, "run", "echo_app:nothing")
    assert r.returncode == 1 and "has no attribute 'nothing'" in r.stderr, r.stderr
    r = cli(head, "run", "no_such_module:app")
    assert r.returncode == 1 and "cannot import module 'no_such_module'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_status_without_a_cluster_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VOLLEY_ADDRESS", "VOLLEY_TOKEN")}
    env["VOLLEY_SESSION_DIR"] = str(tmp_path / "nothing")
    r = subprocess.run(
        [sys.executable, "-m", "volley._cli", "serve", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert r.returncode == 1 and "no volley cluster to ask" in r.stderr, r.stderr
    assert not Path(tmp_path / "nothing" / "address").exists()


def greetings(url: str, n: int) -> dict[int, str]:
    """Each replica's greeting, by pid, once ``n`` replicas answered over HTTP."""
    seen: dict[int, str] = {}

    def more() -> bool:
        with urllib.request.urlopen(url, timeout=WAIT_S) as r:
            doc = json.loads(r.read())
        seen[doc["pid"]] = doc["greeting"]
        return len(seen) >= n

    wait_for(more, f"{n} replicas to answer {url}", WAIT_S)
    return seen


def test_deploy_from_yaml_then_a_changed_user_config_reconfigures_live(head):
    (head.work / "greet.yaml").write_text(GREET_CONFIG.format(greeting="hello"))
    r = cli(head, "deploy", "greet.yaml")
    assert r.returncode == 0, r.stderr
    st = status(head)
    url = f"http://127.0.0.1:{st['http_status']['port']}/greet"
    first = greetings(url, 2)
    assert set(first.values()) == {"hello"}, first
    # The file changed (only its user_config): deployed again, the same replicas take it.
    (head.work / "greet.yaml").write_text(GREET_CONFIG.format(greeting="bonjour"))
    r = cli(head, "deploy", "greet.yaml")
    assert r.returncode == 0, r.stderr
    second = greetings(url, 2)
    assert second == {pid: "bonjour" for pid in first}, (first, second)
    assert status(head)["applications"]["greet"]["deployments"]["Greeter"]["replica_states"] == {
        "RUNNING": 2
    }
    assert cli(head, "shutdown").returncode == 0


def test_a_yaml_config_without_pyyaml_says_what_is_missing(head, tmp_path):
    # A yaml module that cannot be imported, first on the path: as if PyYAML were absent.
    (tmp_path / "yaml.py").write_text("raise ImportError('PyYAML is not installed here')\n")
    path = os.pathsep.join([str(tmp_path), head.env.get("PYTHONPATH", "")])
    r = cli(head, "deploy", "serve.yaml", env={"PYTHONPATH": path})
    assert r.returncode == 1, r.stderr
    assert "a YAML config needs PyYAML, which is not installed" in r.stderr, r.stderr
    assert "pip install pyyaml" in r.stderr
