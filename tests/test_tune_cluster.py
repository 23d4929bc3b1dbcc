"""volley.tune on a real 3-node cluster (node daemons on 127.0.0.x, this process the driver): a
trial whose node is SIGKILLed goes on on another node from the checkpoint it made on the dead
one, which reached the driver's storage through volley (no shared storage is used: the trial
reads its checkpoint from what the driver sends it, unpacked in a scratch folder of the trial's
that is removed after)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from test_cluster import Cluster, _wait_nodes

import volley
from volley import tune

pytestmark = pytest.mark.one_node("starts a cluster of its own")


def test_a_trial_whose_node_dies_goes_on_elsewhere_from_its_checkpoint(tmp_path):
    volley.shutdown()
    c = Cluster(tmp_path)
    try:
        c.start(True, "127.0.0.1", cpus=0)  # the head runs no trial
        c.start(False, "127.0.0.2")
        c.start(False, "127.0.0.3")
        volley.init(address=c.head, token=c.token)
        assert len(_wait_nodes(3)) == 3
        marks = tmp_path / "marks"
        marks.mkdir()

        def f(config):
            ckpt = tune.get_checkpoint()
            start = ckpt.to_dict()["i"] + 1 if ckpt else 0
            node = volley.get_runtime_context().get_node_id()
            for i in range(start, 5):
                tune.report(
                    {"i": i, "node": node, "from": start, "ckpt_dir": ckpt.path if ckpt else None},
                    checkpoint=tune.Checkpoint.from_dict({"i": i}),
                )
                if i == 2 and ckpt is None:
                    (marks / "at2.json").write_text(json.dumps({"node": node, "pid": os.getpid()}))
                    while True:  # until the test kills this node
                        time.sleep(0.05)

        result: dict = {}

        def run():
            result["grid"] = tune.Tuner(
                f,
                run_config=tune.RunConfig(
                    storage_path=str(tmp_path / "store"),
                    name="exp",
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=1),
                ),
            ).fit()

        import threading

        th = threading.Thread(target=run)
        th.start()
        deadline = time.monotonic() + 60
        while not (marks / "at2.json").exists():
            assert time.monotonic() < deadline, "the trial did not reach i == 2"
            assert th.is_alive(), "fit() ended before the trial reached i == 2"
            time.sleep(0.02)
        # report() returns before its result reaches the driver: the node is killed once the
        # driver kept i == 2's checkpoint (its third), else the trial would rightly go on from
        # the one before.
        while not list((tmp_path / "store" / "exp").glob("*/checkpoint_000003")):
            assert time.monotonic() < deadline, "the driver never kept i == 2's checkpoint"
            time.sleep(0.02)
        node = json.loads((marks / "at2.json").read_text())["node"]
        addr = next(n["address"] for n in volley.nodes() if n["node_id"] == node)
        c.kill(c.addrs_index(addr))
        th.join(timeout=90)
        assert not th.is_alive(), "fit() did not end after the trial's node died"
        r = result["grid"][0]
        assert r.status == "TERMINATED", r.error
        assert r.metrics["i"] == 4 and r.metrics["from"] == 3, r.metrics
        assert r.metrics["node"] != node, "restarted on a live node"
        # The checkpoint it went on from was unpacked from what the driver sent, into a
        # scratch folder of the trial's (not the driver's kept copy), removed after.
        unpacked = Path(r.metrics["ckpt_dir"])
        assert unpacked.parent.name.startswith(".volley_tmp_restore_"), unpacked
        assert unpacked.parent.parent == Path(r.path)
        assert not unpacked.exists()
        assert not [n for n in os.listdir(r.path) if n.startswith(".")], os.listdir(r.path)
        assert [h["training_iteration"] for h in r._history] == [1, 2, 3, 4, 5]
        assert Path(r.checkpoint.path).parent == Path(r.path)
        assert r.checkpoint.to_dict() == {"i": 4}
    finally:
        volley.shutdown()
        c.stop()
