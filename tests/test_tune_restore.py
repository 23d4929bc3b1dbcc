"""volley.tune's restore and the run's own files under real faults: a driver SIGKILLed while
its scheduler holds a trial PAUSED, a trial's process SIGKILLed in the middle of saving a
checkpoint."""

from __future__ import annotations

import os
import pickle
import signal
import textwrap
from pathlib import Path

from conftest import finish_driver, kill_driver, start_driver, wait_for
from test_tune import held_trainable

from volley import tune
from volley.tune._tuner import _read_journal

WAIT_S = 60.0


# ------------------------------------------------------------------ a paused trial, restored

PAUSING_DRIVER = """
import time
from pathlib import Path
import volley
from volley import tune
from volley.tune.schedulers import TrialScheduler

root = Path({root!r})


class PauseFirst(TrialScheduler):
    \"\"\"Pauses trial 00000 at its second result and resumes it only once trial 00001 has
    ended; logs each trial it chooses, with the status it had then.\"\"\"

    def __init__(self, log):
        super().__init__()
        self.log = log
        self.paused = []

    def on_trial_result(self, controller, trial, result):
        if trial.trial_id == "00000" and result["training_iteration"] == 2 and not self.paused:
            self.paused.append(trial.trial_id)
            return self.PAUSE
        return self.CONTINUE

    def choose_trial_to_run(self, controller):
        trials = controller.get_trials()
        pick = next((t for t in trials if t.status == "PENDING"), None)
        held = [t for t in trials if t.trial_id == "00001"]
        if pick is None and held and held[0].is_finished():
            pick = next((t for t in trials if t.status == "PAUSED" and t.trial_id in self.paused),
                        None)
        if pick is not None:
            with open(self.log, "a") as fh:
                fh.write(f"{{pick.trial_id}} {{pick.status}}\\n")
        return pick

    def get_state(self):
        return {{"paused": list(self.paused)}}

    def set_state(self, state):
        self.paused = list(state["paused"])


def f(config):
    ckpt = tune.get_checkpoint()
    start = ckpt.to_dict()["i"] + 1 if ckpt else 0
    with open(root / "runs.log", "a") as fh:
        fh.write(f"{{config['x']}} {{start}}\\n")
    for i in range(start, 4):
        if config["x"] == 1 and i == 1:
            while not (root / "go").exists():  # held until the driver is killed and restored
                time.sleep(0.02)
        tune.report({{"i": i}}, checkpoint=tune.Checkpoint.from_dict({{"i": i}}))


volley.init(num_cpus=2)
tune.Tuner(
    f,
    param_space={{"x": tune.grid_search([0, 1, 2])}},
    tune_config=tune.TuneConfig(metric="i", mode="max",
                                scheduler=PauseFirst(str(root / "chosen.log"))),
    run_config=tune.RunConfig(storage_path=str(root), name="exp", verbose=0),
).fit()
print("FINISHED")
"""


def starts_of(root: Path) -> dict[int, list[int]]:
    starts: dict[int, list[int]] = {}
    for line in (root / "runs.log").read_text().splitlines():
        x, start = map(int, line.split())
        starts.setdefault(x, []).append(start)
    return starts


def test_a_paused_trial_comes_back_paused_and_resumes_from_its_checkpoint(volley_shared, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(PAUSING_DRIVER.format(root=str(tmp_path))))
    proc = start_driver(script)
    exp = tmp_path / "exp"

    def paused_and_saved():
        if not (exp / "trials.journal").exists() or not (exp / "experiment_state.pkl").exists():
            return False
        recs = _read_journal(str(exp / "trials.journal"))
        paused = ("status", "00000", "PAUSED") in recs
        ended = {r[1]["trial_id"] for r in recs if r[0] == "end"}
        held_ckpt = any(r[0] == "ckpt" and r[1] == "00001" for r in recs)
        with open(exp / "experiment_state.pkl", "rb") as fh:
            state = pickle.load(fh)
        return (
            paused
            and ended == {"00002"}
            and held_ckpt
            and state["scheduler"] == {"paused": ["00000"]}
        )

    try:
        wait_for(
            paused_and_saved,
            "trial 00000 paused (journal and scheduler state), 00002 ended, 00001 checkpointed",
        )
        os.kill(proc.pid, signal.SIGKILL)
        finish_driver(proc)
    finally:
        kill_driver(proc)
    chosen = tmp_path / "chosen.log"
    before = chosen.read_text().splitlines()
    assert before == ["00000 PENDING", "00001 PENDING", "00002 PENDING"], before
    (tmp_path / "go").touch()

    grid = tune.Tuner.restore(str(exp), held_trainable(tmp_path)).fit()

    after = chosen.read_text().splitlines()[len(before) :]
    # The running trial is started again at once; the paused one stays PAUSED until the
    # restored scheduler (its state from experiment_state.pkl) picks it, after 00001 ended.
    assert after == ["00001 PENDING", "00000 PAUSED"], after
    assert grid.num_terminated == 3, [(r.trial_id, r.status, r.error) for r in grid]
    starts = starts_of(tmp_path)
    assert starts[2] == [0], f"a finished trial ran again: {starts}"
    assert starts[0] == [0, 2], f"the paused trial did not resume from its i == 1: {starts}"
    assert starts[1] == [0, 1], f"the running trial did not resume from its i == 0: {starts}"
    by_x = {r.config["x"]: r for r in grid}
    for x in (0, 1, 2):
        assert by_x[x].metrics["i"] == 3
        assert by_x[x].metrics["training_iteration"] == 4, "iterations count on"


# -------------------------------------------------------- a trial killed mid-checkpoint

KILLED_SAVE_DRIVER = """
import os, signal
from pathlib import Path
import volley
from volley import tune

root = Path({root!r})


class Model(tune.Trainable):
    def setup(self, config):
        self.n = 0

    def step(self):
        self.n += 1
        return {{"n": self.n, "done": self.n >= 5}}

    def save_checkpoint(self, checkpoint_dir):
        Path(checkpoint_dir, "n").write_text(str(self.n))
        if self.n == 3:
            try:  # the first time only: this process dies in the middle of a save
                os.close(os.open(root / "killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return None
            Path(checkpoint_dir, "partial").write_text("cut short")
            os.kill(os.getpid(), signal.SIGKILL)

    def load_checkpoint(self, checkpoint_dir):
        self.n = int(Path(checkpoint_dir, "n").read_text())


volley.init(num_cpus=2)
grid = tune.Tuner(
    Model,
    run_config=tune.RunConfig(
        storage_path=str(root), name="exp", verbose=0,
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1),
        failure_config=tune.FailureConfig(max_failures=1),
    ),
).fit()
r = grid[0]
print("RESULT", r.status, r.metrics["n"], r.metrics["training_iteration"], flush=True)
"""


def test_a_trial_killed_while_it_saves_leaves_no_temp_dirs(volley_shared, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(KILLED_SAVE_DRIVER.format(root=str(tmp_path))))
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmpdir)  # the driver's, and so its workers'
    try:
        proc = start_driver(script)
    finally:
        if old is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = old
    try:
        out, err = finish_driver(proc, timeout=WAIT_S)
    finally:
        kill_driver(proc)
    assert (tmp_path / "killed").exists(), "the trial's process was not killed in its save"
    assert "RESULT TERMINATED 5 5" in out, (out, err)
    assert os.listdir(tmpdir) == [], f"left in TMPDIR: {os.listdir(tmpdir)}"
    trial = next(p for p in (tmp_path / "exp").iterdir() if p.is_dir())
    names = sorted(os.listdir(trial))
    stray = [n for n in names if n.startswith(".") or ".tmp" in n]
    assert stray == [], f"left in the trial's folder: {names}"
    ckpts = [n for n in names if n.startswith("checkpoint_")]
    assert ckpts == [f"checkpoint_{i:06d}" for i in range(1, 6)], names
    assert not (trial / "checkpoint_000003" / "partial").exists(), "the cut save was kept"


# ------------------------------------------- a restore whose scheduler state is a moment old

WAITING_DRIVER = """
import time
from pathlib import Path
import volley
from volley import tune
from volley.tune.schedulers import TrialScheduler

root = Path({root!r})


class WaitForB(TrialScheduler):
    \"\"\"Pauses trial 00000 at its second result; resumes it once it has seen trial 00001
    end (its own state, as HyperBand's rungs and PBT's synch rounds are) and the test says
    so (the file resume_ok).\"\"\"

    def __init__(self):
        super().__init__()
        self.paused, self.ended = [], []

    def on_trial_result(self, controller, trial, result):
        if trial.trial_id == "00000" and result["training_iteration"] == 2 and not self.paused:
            self.paused.append(trial.trial_id)
            return self.PAUSE
        return self.CONTINUE

    def on_trial_complete(self, controller, trial, result):
        self.ended.append(trial.trial_id)

    def choose_trial_to_run(self, controller):
        trials = controller.get_trials()
        pick = next((t for t in trials if t.status == "PENDING"), None)
        if pick is None and "00001" in self.ended and (root / "resume_ok").exists():
            pick = next((t for t in trials if t.status == "PAUSED"), None)
        return pick

    def get_state(self):
        return {{"paused": list(self.paused), "ended": list(self.ended)}}

    def set_state(self, state):
        self.paused, self.ended = list(state["paused"]), list(state["ended"])


def f(config):
    ckpt = tune.get_checkpoint()
    start = ckpt.to_dict()["i"] + 1 if ckpt else 0
    with open(root / "runs.log", "a") as fh:
        fh.write(f"{{config['x']}} {{start}}\\n")
    for i in range(start, 4):
        if config["x"] == 1 and i == 1:
            while not (root / "release_b").exists():
                time.sleep(0.02)
        if config["x"] == 2 and i == 1:  # keeps the run going until the kill
            while not (root / "resume_ok").exists():
                time.sleep(0.02)
        tune.report({{"i": i}}, checkpoint=tune.Checkpoint.from_dict({{"i": i}}))


volley.init(num_cpus=2)
tune.Tuner(
    f,
    param_space={{"x": tune.grid_search([0, 1, 2])}},
    tune_config=tune.TuneConfig(metric="i", mode="max", scheduler=WaitForB()),
    run_config=tune.RunConfig(storage_path=str(root), name="exp", verbose=0),
).fit()
print("FINISHED")
"""


def test_a_restore_tells_the_scheduler_the_ends_its_saved_state_missed(volley_shared, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(WAITING_DRIVER.format(root=str(tmp_path))))
    proc = start_driver(script)
    exp = tmp_path / "exp"
    state_file = exp / "experiment_state.pkl"

    def state():
        if not state_file.exists():
            return None
        with open(state_file, "rb") as fh:
            return pickle.load(fh)

    try:
        wait_for(
            lambda: (
                (s := state())
                and s["scheduler"] == {"paused": ["00000"], "ended": []}
                and "00002" in s["known"]
            ),
            "the scheduler's saved state: trial 00000 paused, none ended, 00002 made",
        )
        # The driver is killed in the moment between trial 00001's end (in the journal at
        # once) and the next write of the scheduler's state: kept here, put back below.
        stale = state_file.read_bytes()
        (tmp_path / "release_b").touch()

        def b_ended():
            recs = _read_journal(str(exp / "trials.journal"))
            return any(r[0] == "end" and r[1]["trial_id"] == "00001" for r in recs)

        wait_for(b_ended, "trial 00001's end in the journal")
        os.kill(proc.pid, signal.SIGKILL)
        finish_driver(proc)
    finally:
        kill_driver(proc)
    state_file.write_bytes(stale)
    (tmp_path / "resume_ok").touch()

    tuner = tune.Tuner.restore(str(exp), held_trainable(tmp_path))
    grid = tuner.fit()  # without the catch-up: "no trial running and none it can start"

    ended = tuner._tune_config.scheduler.ended
    assert ended[0] == "00001" and sorted(ended) == ["00000", "00001", "00002"], ended
    assert grid.num_terminated == 3, [(r.trial_id, r.status, r.error) for r in grid]
    starts = starts_of(tmp_path)
    assert starts[1] == [0], f"the finished trial ran again: {starts}"
    assert starts[0] == [0, 2], f"the paused trial did not resume from its i == 1: {starts}"
    assert starts[2] == [0, 1], f"the running trial did not resume from its i == 0: {starts}"
    assert {r.config["x"]: r.metrics["training_iteration"] for r in grid} == {0: 4, 1: 4, 2: 4}


def test_scratch_goes_to_the_temp_dir_only_where_the_trial_s_folder_cannot_be_made(
    tmp_path, monkeypatch
):
    from volley.tune._checkpoint import scratch_dir

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    trial = tmp_path / "exp" / "trial"
    d = Path(scratch_dir(str(trial), "save"))
    assert d.parent == trial and d.name.startswith(".volley_tmp_save_")
    assert os.stat(d).st_mode & 0o777 == 0o700
    # A node whose disk has no such folder for this user (here: a file where a folder goes).
    (tmp_path / "file").write_text("")
    d = Path(scratch_dir(str(tmp_path / "file" / "trial"), "restore"))
    assert d.parent == tmpdir and d.name.startswith("volley_tune_restore_"), d
    assert os.stat(d).st_mode & 0o777 == 0o700
