"""The dashboard: its token check, /metrics parsed as Prometheus parses it, the JSON API's
answers and errors, the head's dashboard from `volley start --head`, a fork of a driver that
serves one, and the pages in a real browser (Debian's chromium driven by selenium)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import finish_driver, poll, start_driver, write_script
from test_cluster import Cluster, _free_port

import volley


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def http(url: str, headers: dict | None = None) -> tuple[int, Any, str]:
    """GET ``url``: (status, headers, body), for errors and redirects too."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with OPENER.open(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def dash(no_volley):
    """An embedded volley with a dashboard on a free port: (base URL, token)."""
    volley.init(num_cpus=2, resources={"disk": 1}, dashboard=True, dashboard_port=0)
    url = volley.dashboard_url()
    base, token = url.split("?token=")
    return base.rstrip("/"), token


def test_token_is_needed_everywhere_but_the_login_page(dash):
    base, token = dash
    for path in ("/api/v0/cluster", "/api/v0/nodes", "/metrics"):
        status, headers, body = http(base + path)
        assert status == 401, (path, body)
        assert "Bearer" in headers["WWW-Authenticate"]
        assert "token" in json.loads(body)["error"]
        assert http(base + path, bearer("wrong"))[0] == 401
        assert http(base + path, bearer(token))[0] == 200
    # A page without the token: the login page, with a 401.
    status, _, body = http(base + "/")
    assert status == 401 and 'name="token"' in body
    status, _, body = http(base + "/?token=wrong")
    assert status == 401 and "not this cluster's token" in body
    assert http(base + "/login")[0] == 200
    assert http(base + "/static/app.js")[0] == 200
    # The token URL: a cookie, and the same URL without the token.
    status, headers, _ = http(f"{base}/?token={token}&x=1")
    assert status == 303
    assert headers["Location"] == "/?x=1"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert token not in cookie, "the cookie holds a digest, not the token"
    jar = {"Cookie": cookie.split(";")[0]}
    status, headers, body = http(base + "/", jar)
    assert status == 200 and "/static/app.js" in body
    assert headers["Referrer-Policy"] == "no-referrer"
    assert http(base + "/api/v0/cluster", jar)[0] == 200
    assert http(base + "/api/v0/cluster", {"Cookie": jar["Cookie"][:-2] + "00"})[0] == 401


def test_api_answers_and_refuses_bad_queries(dash):
    base, token = dash
    status, _, body = http(base + "/api/v0/cluster", bearer(token))
    c = json.loads(body)
    assert status == 200
    assert c["totals"]["nodes"] == 1 and c["totals"]["cpus"] == 2
    assert c["totals"]["resources"]["disk"] == [1, 0]
    assert c["nodes"][0]["alive"] is True and c["nodes"][0]["pid"] == os.getpid()
    a = json.loads(http(base + "/api/v0/nodes?filter=driver=true&limit=5", bearer(token))[2])
    assert (a["kind"], a["total"], a["truncated"], len(a["rows"])) == ("nodes", 1, False, 1)
    a = json.loads(http(base + "/api/v0/nodes?filter=driver!=true", bearer(token))[2])
    assert a["total"] == 0 and a["rows"] == []
    for query, needle in [
        ("/api/v0/bogus", "unknown kind"),
        ("/api/v0/nodes?limit=many", "limit must be"),
        ("/api/v0/nodes?filter=driver", "key=value"),
        ("/api/v0/nodes?detail=2", "detail must be"),
        ("/api/v0/nodes?sort=id", "unknown parameter"),
    ]:
        status, _, body = http(base + query, bearer(token))
        assert status == 400 and needle in json.loads(body)["error"], (query, body)
    status, _, body = http(base + "/nope", bearer(token))
    assert status == 404
    # A kind that this build's dashboard has nothing behind answers so, not an empty list
    # (once the state API is connected, it answers rows).
    status, _, body = http(base + "/api/v0/tasks?limit=1", bearer(token))
    assert (
        status == 501
        and "not available" in json.loads(body)["error"]
        or (status == 200 and "rows" in json.loads(body))
    )


@volley.remote(max_retries=0)
def metrics_boom() -> None:
    raise ValueError("counted")


@volley.remote(resources={"disk": 1})
def hold(path: str) -> int:
    while not os.path.exists(path):
        time.sleep(0.01)
    return 1


def test_metrics_parse_and_match_what_ran(dash, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    base, token = dash

    def scrape() -> dict:
        status, headers, text = http(base + "/metrics", bearer(token))
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    go = tmp_path / "go"
    refs = [hold.remote(str(go)) for _ in range(3)]
    big = volley.put(b"x" * (4 << 20))

    def held():
        m = scrape()
        return m if m[("volley_tasks", (("node", "0"), ("state", "QUEUED")))] == 2 else None

    m = poll(held, timeout=30)
    assert m, scrape()
    assert m[("volley_nodes", ())] == 1
    assert m[("volley_cpus", (("node", "0"),))] == 2
    assert m[("volley_resource", (("node", "0"), ("resource", "disk")))] == 1
    assert m[("volley_resource_used", (("node", "0"), ("resource", "disk")))] == 1
    assert m[("volley_tasks", (("node", "0"), ("state", "RUNNING")))] == 1
    assert m[("volley_object_store_used_bytes", (("node", "0"),))] >= 4 << 20
    assert m[("volley_object_store_capacity_bytes", (("node", "0"),))] > 4 << 20
    assert ("volley_object_spills_total", (("node", "0"),)) in m
    assert ("volley_transfer_received_bytes_total", (("node", "0"),)) in m
    go.touch()
    assert volley.get(refs, timeout=30) == [1, 1, 1]
    m = poll(
        lambda: (
            (m := scrape())[("volley_resource_used", (("node", "0"), ("resource", "disk")))] == 0
            and m
        ),
        timeout=10,
    )
    assert m[("volley_tasks", (("node", "0"), ("state", "QUEUED")))] == 0
    del big

    # The tasks that ended: counted by final state, with histograms of run time and latency.
    fin = ("volley_tasks_ended_total", (("state", "FINISHED"),))
    failed = ("volley_tasks_ended_total", (("state", "FAILED"),))
    dur = "volley_task_duration_seconds"
    before = scrape()
    with pytest.raises(volley.TaskError):
        volley.get(metrics_boom.remote(), timeout=30)
    m = poll(lambda: (m := scrape())[failed] == before[failed] + 1 and m, timeout=10)
    assert m[fin] >= 3
    for state in ("FINISHED", "FAILED"):
        label = (("state", state),)
        buckets = sorted(
            (float(dict(k[1])["le"]), v)
            for k, v in m.items()
            if k[0] == dur + "_bucket" and dict(k[1])["state"] == state
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and buckets[-1][0] == float("inf"), buckets
        # (A task that ended before it started, e.g. cancelled, has no run time.)
        assert counts[-1] == m[(dur + "_count", label)] <= m[("volley_tasks_ended_total", label)]
        assert m[(dur + "_sum", label)] >= 0
    # The first held task ran until `go` appeared (the other two after it, at once): its run
    # time is in a bucket above the first.
    fast = m[(dur + "_bucket", (("le", "0.001"), ("state", "FINISHED")))]
    assert m[(dur + "_count", (("state", "FINISHED"),))] - fast >= 1
    lat = "volley_task_scheduling_latency_seconds"
    assert m[(lat + "_count", ())] >= m[fin]


def test_ports_taken(no_volley, capfd, caplog):
    # An explicit port that is taken: an error at init, and volley is not left half started.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            volley.init(num_cpus=1, dashboard=True, dashboard_port=port)
        assert not volley.is_initialized()
    with pytest.raises(ValueError, match="dashboard_port"):
        volley.init(num_cpus=1, dashboard=True, dashboard_port=-1)
    assert not volley.is_initialized()
    # The default port taken (by this test, or by someone else's dashboard): a free one.
    holder = socket.socket()
    try:
        try:
            holder.bind(("127.0.0.1", 8265))
            holder.listen()
        except OSError:
            pass  # already taken
        volley.init(num_cpus=1, dashboard=True)
        url = volley.dashboard_url(with_token=False)
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":8265/")
        port = url.rstrip("/").rsplit(":", 1)[1]
        # The notice reaches stderr through the "volley" logger's thread: wait for it. (Where
        # an earlier test in this process left the logger propagating to the root, pytest's
        # own log capture takes it instead: seen once on CI.)
        said = f"port 8265 on 127.0.0.1 is taken; it listens on port {port}"
        err = ""
        deadline = time.monotonic() + 10
        while said not in err + caplog.text and time.monotonic() < deadline:
            err += capfd.readouterr().err
            time.sleep(0.05)
        assert said in err + caplog.text, err
    finally:
        holder.close()


def test_head_serves_the_dashboard(tmp_path, no_volley):
    c = Cluster(tmp_path)
    try:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # A dashboard port that is taken stops the head from starting, saying why.
        p = subprocess.run(
            [sys.executable, "-m", "volley._cli", "start", "--head", "--port",
             str(_free_port("127.0.0.1")), "--token", c.token, "--block",
             "--dashboard-port", str(taken.getsockname()[1])],
            env=c.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        taken.close()
        assert p.returncode == 1, p
        assert "could not start the dashboard" in p.stderr
        c.start(True, "127.0.0.1", extra=("--dashboard-port", "0"))
        c.start(False, "127.0.0.2")
        line = next(x for x in c.log(0).splitlines() if "dashboard at" in x)
        base, token = line.split("dashboard at ")[1].split("?token=")
        assert token == c.token
        base = base.rstrip("/")
        assert (c.session / "dashboard").read_text() == base + "/"

        def two():
            a = json.loads(http(base + "/api/v0/nodes", bearer(token))[2])
            return a if a["total"] == 2 else None

        a = poll(two, timeout=20)
        assert a, http(base + "/api/v0/nodes", bearer(token))
        assert sorted(n["addr"] for n in a["rows"]) == sorted(c.started)
        status, _, text = http(base + "/metrics", bearer(token))
        assert status == 200 and 'volley_cpus{node="2"} 1' in text

        # The member's heartbeat round trip (a gauge per member; the head beats to no one),
        # and the host's memory of each node.
        def beats() -> dict:
            text = http(base + "/metrics", bearer(token))[2]
            return {
                line.split('"')[1]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("volley_heartbeat_latency_seconds{")
            }

        b = poll(beats, timeout=20)
        assert "1" not in b and 0 < b.get("2", 0) < 5, b
        assert 'volley_node_memory_bytes{node="1",kind="total"}' in text
        out = subprocess.run(
            [sys.executable, "-m", "volley._cli", "status", "--address", c.head,
             "--token", c.token],
            env=c.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert f"dashboard at {base}/" in out.stdout, out
        # A node that is not the head serves none.
        assert "dashboard at" not in c.log(1)
        # A driver joined to the cluster serves one on request, with the cluster's token, and
        # shows the cluster as the head tells it.
        volley.init(address=c.head, token=c.token, dashboard=True, dashboard_port=0)
        dbase, dtoken = volley.dashboard_url().split("?token=")
        assert dtoken == c.token

        def three():
            a = json.loads(http(dbase + "api/v0/nodes", bearer(c.token))[2])
            return a if a["total"] == 3 else None  # the head, the node, this driver

        a = poll(three, timeout=20)
        assert a and sum(n["driver"] for n in a["rows"]) == 1, a
        volley.shutdown()
    finally:
        volley.shutdown()
        c.stop()
    assert not (c.session / "dashboard").exists()


def test_a_forked_child_leaves_the_parents_dashboard_alone(tmp_path):
    script = write_script(
        tmp_path,
        """
        import json, os, socket, urllib.request
        import volley

        volley.init(num_cpus=1, dashboard=True, dashboard_port=0)
        base, token = volley.dashboard_url().split("?token=")

        def nodes():
            req = urllib.request.Request(
                base + "api/v0/nodes", headers={"Authorization": "Bearer " + token}
            )
            return json.loads(urllib.request.urlopen(req, timeout=10).read())["total"]

        assert nodes() == 1
        port = int(base.rstrip("/").rsplit(":", 1)[1])
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            # The child's volley is its own (without the parent's dashboard).
            assert volley.dashboard_url() is None
            assert volley.get(volley.put(5)) == 5
            volley.shutdown()
            os.read(r, 1)  # lives on until the parent has let its port go
            os._exit(0)
        print("parent", nodes())
        volley.shutdown()
        # The child, still alive, does not hold the parent's port (SO_REUSEADDR: the
        # connections the parent closed may linger in TIME_WAIT, a listener may not).
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
        print("port free")
        os.write(w, b"x")
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """,
    )
    out, err = finish_driver(start_driver(script))
    assert "parent 1\nport free\nchild 0" in out, (out, err)


# ------------------------------------------------------------------------ the browser


def _browser():
    """A headless chromium through selenium, or a skip saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (make test installs it)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    if not chromium or not driver:
        pytest.skip(
            "chromium and chromium-driver are not installed (make test installs them with "
            "apt-get where it can)"
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,900"):  # fmt: skip
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def _wait(browser, seconds: float):
    """A WebDriverWait whose condition is tried again, not failed, when the page replaced an
    element between finding it and reading it (a reload, the login form's answer, a refresh
    that redraws a table). chromedriver says so as a StaleElementReferenceException or, when
    the node left between its two inspector calls, as a plain WebDriverException naming a node
    that "does not belong to the document"."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    replaced = ("does not belong to the document", "No node with given id")

    class Wait(WebDriverWait):
        def until(self, method, message: str = ""):
            def tried(driver):
                try:
                    return method(driver)
                except StaleElementReferenceException:
                    return False
                except WebDriverException as e:
                    if any(r in str(e) for r in replaced):
                        return False
                    raise

            return super().until(tried, message)

    return Wait(browser, seconds)


@volley.remote
def work(i: int) -> int:
    time.sleep(0.05)
    return i


@volley.remote(max_retries=0)
def breaks() -> None:
    raise ValueError("this task fails on purpose")


@volley.remote(max_restarts=1)
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


README_SHOTS = {"overview": "dashboard.png", "task-detail": "dashboard-task.png"}


def test_pages_in_a_browser(dash, tmp_path):
    from selenium.webdriver.common.by import By

    base, token = dash
    browser = _browser()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        counter = Counter.remote()
        assert volley.get(counter.incr.remote()) == 1
        refs = [work.remote(i) for i in range(20)]
        with pytest.raises(ValueError):
            volley.get(breaks.remote())
        # Three tasks for the one "disk": one runs, two wait, and the overview says why.
        go = tmp_path / "go"
        held = [hold.remote(str(go)) for _ in range(3)]
        # A page that reloads (the login form's answer) can replace an element between
        # finding it and reading it: the condition is tried again, not failed.
        wait = _wait(browser, 15)

        def text(css: str) -> str:
            # The overview redraws its cards and table on each refresh: read again, not fail.
            return wait.until(lambda b: (b.find_element(By.CSS_SELECTOR, css).text,))[0]

        def shot(name: str) -> None:
            browser.save_screenshot(str(shots / f"{name}.png"))
            # VOLLEY_DASHBOARD_SHOTS=docs makes this run draw the README's pictures: the
            # overview and the failed task's page, cut to what the page shows.
            out = os.environ.get("VOLLEY_DASHBOARD_SHOTS")
            if out and name in README_SHOTS:
                browser.find_element(By.TAG_NAME, "body").screenshot(
                    str(Path(out) / README_SHOTS[name])
                )

        # Logging in: a wrong token pasted into the login page is refused, the right one
        # lands on the overview (and the token leaves the address bar).
        browser.get(base + "/")
        field = wait.until(lambda b: b.find_element(By.ID, "token"))
        shot("login")
        field.send_keys("not-the-token\n")
        wait.until(lambda b: "not this cluster's token" in b.find_element(By.ID, "why").text)
        browser.find_element(By.ID, "token").send_keys(token + "\n")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#nodes-table .node-row"))
        assert browser.current_url == base + "/", "the token leaves the address bar"
        # The printed URL logs in too.
        browser.delete_all_cookies()
        browser.get(f"{base}/?token={token}")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#nodes-table .node-row"))
        assert browser.current_url == base + "/"
        assert str(os.getpid()) in text("#nodes-table")
        assert "CPUs used / total" in text("#totals")
        assert "worker crashes" in text("#totals") and "actor restarts" in text("#totals")
        assert "host memory" in text("#nodes-table") and " GiB" in text("#nodes-table")
        wait.until(lambda b: "disk" in b.find_element(By.CSS_SELECTOR, "#nodes-table td.wrap").text)
        _assert_fits(browser)
        shot("overview")
        go.touch()
        assert volley.get(held, timeout=30) == [1, 1, 1]
        volley.get(refs)

        def api_kind(kind: str) -> tuple[int, dict]:
            status, _, body = http(f"{base}/api/v0/{kind}?limit=1000", bearer(token))
            return status, json.loads(body)

        for page, kind in [
            ("tasks", "tasks"),
            ("actors", "actors"),
            ("objects", "objects"),
            ("placement_groups", "placement_groups"),
            ("jobs", "jobs"),
            ("workers", "workers"),
        ]:
            browser.get(f"{base}/#{page}")
            status, answer = api_kind(kind)
            if status != 200:
                # Not connected in this build: the page shows the API's own message.
                wait.until(lambda b: b.find_element(By.ID, "error").text)
                assert text("#error") == answer["error"]
            else:
                wait.until(lambda b: "matching" in b.find_element(By.ID, "summary").text)
                if kind == "tasks":
                    wait.until(lambda b: "breaks" in b.find_element(By.ID, "rows").text)
                if kind == "actors":
                    wait.until(lambda b: "Counter" in b.find_element(By.ID, "rows").text)
            assert text("#page-title")
            shot(page)
        # The detail views: the failing task's traceback, the actor's restarts.
        status, answer = api_kind("tasks")
        if status == 200:
            failed = [r for r in answer["rows"] if r["name"].endswith("breaks")]
            assert failed, answer
            browser.get(f"{base}/#task/{failed[0]['task_id']}")
            wait.until(lambda b: b.find_elements(By.ID, "traceback"))
            assert "this task fails on purpose" in text("#traceback")
            shot("task-detail")
        status, answer = api_kind("actors")
        if status == 200:
            browser.get(f"{base}/#actor/{answer['rows'][0]['actor_id']}")
            wait.until(lambda b: "restarts" in b.find_element(By.ID, "page").text)
            shot("actor-detail")
        browser.get(f"{base}/#stream")
        status, answer = api_kind("tasks")
        if status != 200:
            wait.until(lambda b: b.find_element(By.ID, "error").text)
            assert text("#error") == answer["error"]
        else:
            canvas = wait.until(lambda b: b.find_element(By.ID, "stream-canvas"))
            wait.until(lambda b: int(canvas.get_attribute("data-slices") or 0) >= 20)
            first = int(canvas.get_attribute("data-slices"))
            volley.get([work.remote(i) for i in range(10)])
            wait.until(lambda b: int(canvas.get_attribute("data-slices")) > first)
            # Once nothing changes, the page fetches no rows (it asks for what changed since
            # its last answer, 5 s of slack) and still draws the ones it has.
            wait.until(lambda b: canvas.get_attribute("data-fetched") == "0")
            assert int(canvas.get_attribute("data-slices")) > first
        shot("stream")
        browser.get(f"{base}/#logs")
        wait.until(lambda b: text("#error") or text("#logtext"))
        shot("logs")
        # Sorting a table: clicking a column's head sorts by it.
        browser.get(f"{base}/#nodes")
        wait.until(lambda b: "matching" in b.find_element(By.ID, "summary").text)
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#rows th").click() or True)
        sorted_by = wait.until(
            lambda b: (b.find_element(By.CSS_SELECTOR, "#rows th").get_attribute("class"),)
        )[0]
        assert sorted_by == "sorted-asc"
        shot("nodes")
    finally:
        browser.quit()
    assert len(list(shots.glob("*.png"))) >= 10


def test_status_shows_a_drivers_dashboard(tmp_path):
    env = dict(os.environ, VOLLEY_SESSION_DIR=str(tmp_path / "session"))
    go = tmp_path / "go"
    script = write_script(
        tmp_path,
        f"""
        import os, time
        import volley

        volley.init(num_cpus=1, dashboard=True, dashboard_port=0)
        print("url", volley.dashboard_url(with_token=False), flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        volley.shutdown()
        print("stopped", flush=True)
        while True:
            time.sleep(1)  # until the test has run `volley status` again
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        url = proc.stdout.readline().split()[1]

        def status() -> str:
            return subprocess.run(
                [sys.executable, "-m", "volley._cli", "status"],
                env=env, capture_output=True, text=True, timeout=60,
            ).stdout  # fmt: skip

        out = status()
        assert f"driver pid {proc.pid}: dashboard at {url}" in out, out
        go.touch()
        assert proc.stdout.readline().strip() == "stopped"
        assert "dashboard at" not in status()
    finally:
        proc.kill()
        proc.wait()


def test_the_heads_dashboard_in_a_browser(tmp_path, no_volley):
    from selenium.webdriver.common.by import By

    browser = _browser()
    c = Cluster(tmp_path)
    try:
        c.start(True, "127.0.0.1", extra=("--dashboard-port", "0"))
        c.start(False, "127.0.0.2", cpus=2)
        line = next(x for x in c.log(0).splitlines() if "dashboard at" in x)
        browser.get(line.split("dashboard at ")[1].strip())

        def rows(b):
            found = b.find_elements(By.CSS_SELECTOR, "#nodes-table .node-row")
            return found if len(found) == 2 else None

        found = _wait(browser, 20).until(rows)
        text = "\n".join(r.text for r in found)
        assert "head" in text and "127.0.0.2" in text, text
        _assert_fits(browser)
        browser.save_screenshot(str(tmp_path / "head-overview.png"))
    finally:
        browser.quit()
        c.stop()


def _assert_fits(browser) -> None:
    """The overview's node table fits the 1400-px window: nothing scrolls sideways."""
    w = browser.execute_script(
        "const t = document.getElementById('nodes-table');"
        "return {table: t.scrollWidth, room: t.parentElement.clientWidth,"
        " page: document.documentElement.scrollWidth, window: window.innerWidth};"
    )
    assert w["window"] <= 1400 and w["table"] <= w["room"] and w["page"] <= w["window"], w


def test_the_workers_page_names_a_node_that_does_not_answer(tmp_path, no_volley):
    from selenium.webdriver.common.by import By

    browser = _browser()
    c = Cluster(tmp_path)
    stopped = None
    try:
        # The head calls a silent node dead only after 2 minutes: until then a stopped node
        # is a member that does not answer, and a workers list without it is partial.
        c.start(True, "127.0.0.1", extra=("--dashboard-port", "0", "--dead-after-ms", "120000"))
        node = c.start(False, "127.0.0.2")
        url = next(x for x in c.log(0).splitlines() if "dashboard at" in x).split("dashboard at ")[
            1
        ]
        base, token = url.strip().split("?token=")

        def whole():
            if json.loads(http(base + "api/v0/nodes", bearer(token))[2])["total"] != 2:
                return None
            a = json.loads(http(base + "api/v0/workers", bearer(token))[2])
            return a if not a["missing"] else None

        assert poll(whole, timeout=30), http(base + "api/v0/workers", bearer(token))
        browser.get(url.strip())
        browser.get(base + "#workers")
        wait = _wait(browser, 30)
        summary = wait.until(lambda b: b.find_element(By.ID, "summary"))
        wait.until(lambda b: "matching" in summary.text)
        banner = browser.find_element(By.ID, "missing")
        assert not banner.is_displayed()

        stopped = c.procs[1].pid
        os.kill(stopped, signal.SIGSTOP)
        # The page's next refresh (every 3 s; the head waits 3 s for each node) names it.
        wait.until(lambda b: banner.is_displayed())
        assert f"({node}): no answer within 3 s" in banner.text, banner.text
        assert "Partial list" in banner.text and "nodes that answered" in summary.text
        browser.save_screenshot(str(tmp_path / "missing.png"))
        # The objects page asks every node too, and says the same.
        browser.get(base + "#objects")
        wait.until(lambda b: f"({node}): no answer" in b.find_element(By.ID, "missing").text)

        os.kill(stopped, signal.SIGCONT)
        stopped = None
        browser.refresh()
        wait.until(lambda b: "matching" in b.find_element(By.ID, "summary").text)
        wait.until(lambda b: not b.find_element(By.ID, "missing").is_displayed())
        assert "nodes that answered" not in browser.find_element(By.ID, "summary").text
    finally:
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        browser.quit()
        c.stop()


@volley.remote
def fill_from_a_worker() -> str:
    from volley import _core

    try:
        _core._fill_actors_for_benchmark(1)
    except RuntimeError as e:
        return str(e)
    return "no error"


def test_benchmark_fill_of_actor_rows(dash):
    """benchmarks/dashboard_scale.py's aid: actor rows put into the head's tables through the
    heartbeat batch's path are what the dashboard's API answers; a worker is refused."""
    from volley import _core

    base, token = dash
    _core._fill_actors_for_benchmark(1000, classes=3)
    a = json.loads(http(base + "/api/v0/actors?limit=10&filter=state=DEAD", bearer(token))[2])
    assert (a["total"], len(a["rows"]), a["truncated"]) == (250, 10, True)
    assert {r["class_name"] for r in a["rows"]} <= {"Bench0", "Bench1", "Bench2"}
    assert json.loads(http(base + "/api/v0/actors?limit=1", bearer(token))[2])["total"] == 1000
    assert "worker has no node" in volley.get(fill_from_a_worker.remote())


def test_benchmark_fill_needs_a_session(no_volley):
    from volley import _core

    with pytest.raises(RuntimeError, match="not initialised"):
        _core._fill_actors_for_benchmark(1)


def _https(port: int, cert: Path, path: str, headers: str = "") -> str:
    """A GET over TLS that trusts only the cluster's certificate (its name: volley-cluster);
    the raw answer."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="volley-cluster") as s:
            s.sendall(
                f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode()
            )
            out = b""
            while chunk := s.recv(65536):
                out += chunk
    return out.decode(errors="replace")


def test_a_tls_clusters_dashboard_serves_https_only(tmp_path, no_volley):
    import ssl
    from http.client import HTTPException

    c = Cluster(tmp_path)
    try:
        c.start(True, "127.0.0.1", extra=("--tls", "--dashboard-port", "0"))
        line = next(x for x in c.log(0).splitlines() if "dashboard at" in x)
        url = line.split("dashboard at ")[1]
        assert url.startswith("https://127.0.0.1:"), line
        base, token = url.split("?token=")
        port = int(base.rstrip("/").rsplit(":", 1)[1])
        cert = c.session / "cluster-cert.pem"
        assert cert.exists(), sorted(p.name for p in c.session.iterdir())
        r = _https(port, cert, "/metrics", f"Authorization: Bearer {token}\r\n")
        assert r.startswith("HTTP/1.1 200") and "volley_nodes 1" in r, r[:500]
        assert _https(port, cert, "/metrics").startswith("HTTP/1.1 401")
        r = _https(port, cert, f"/?token={token}")
        assert r.startswith("HTTP/1.1 303") and "; Secure" in r, r
        # Plain HTTP on that port gets no answer: the connection closes in the handshake.
        with pytest.raises((HTTPException, OSError)):
            http(f"http://127.0.0.1:{port}/metrics", bearer(token))
        # A client that does not trust the cluster's certificate refuses the server.
        with pytest.raises(ssl.SSLError):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                ssl.create_default_context().wrap_socket(raw, server_hostname="volley-cluster")
        # A client that connects and says nothing holds up no one (each handshake has its
        # own task and deadline).
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            assert _https(port, cert, "/metrics").startswith("HTTP/1.1 401")
        # The status line shows the https address too.
        assert (c.session / "dashboard").read_text().startswith("https://")
    finally:
        c.stop()


@volley.remote
def stamped(i: int) -> int:
    return i


def test_api_range_filters_and_what_changed_since(dash):
    import urllib.parse

    base, token = dash
    volley.get([stamped.remote(i) for i in range(5)])

    def ask(*filters: str) -> tuple[int, Any, Any]:
        q = "&".join("filter=" + urllib.parse.quote(f) for f in filters)
        status, headers, body = http(f"{base}/api/v0/tasks?limit=100&{q}", bearer(token))
        return status, headers, json.loads(body)

    status, headers, a = ask("ended_ms>0", "state=FINISHED")
    mine = [t for t in a["rows"] if t["name"].endswith("stamped")]
    assert status == 200 and len(mine) == 5, a
    now = int(headers["X-Volley-Now-Ms"])
    assert abs(now - time.time() * 1000) < 60_000, "the node's clock, in ms since the epoch"
    assert all(t["ended_ms"] <= now for t in mine), (now, mine)
    # What changed since the answer: nothing yet; then the new tasks only.
    assert poll(lambda: ask(f"changed_ms>{now}")[2]["total"] == 0, timeout=10)
    volley.get([stamped.remote(i) for i in range(3)])
    later = poll(lambda: (a := ask(f"changed_ms>{now}")[2])["total"] == 3 and a, timeout=10)
    assert later, (
        "rows changed since the answer, expected the 3 new tasks",
        now,
        ask(f"changed_ms>{now}")[2],
    )
    assert {t["state"] for t in later["rows"]} == {"FINISHED"}, later
    assert ask(f"started_ms>={mine[0]['started_ms']}", "duration_ms<60000")[2]["total"] >= 1
    for f, needle in [
        ("state>1", "'>' compares numbers"),
        ("started_ms>soon", "'soon' is not a number"),
        ("started_ms", "key>N"),
        ("colour<3", "no field 'colour'"),
    ]:
        status, _, a = ask(f)
        assert status == 400 and needle in a["error"], (f, a)


def test_the_dashboards_tls_needs_a_readable_certificate_and_its_key(no_volley, tmp_path):
    from volley import _dashboard

    volley.init(num_cpus=1)
    with pytest.raises(ValueError, match="needs the certificate's key"):
        _dashboard.start("127.0.0.1", 0, "t", tls_cert=str(tmp_path / "cert.pem"))
    with pytest.raises(ValueError, match="nowhere.pem"):
        _dashboard.start(
            "127.0.0.1", 0, "t", tls_cert=str(tmp_path / "nowhere.pem"), tls_key=str(tmp_path)
        )
    assert volley.dashboard_url() is None, "nothing was started"
