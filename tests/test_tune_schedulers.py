"""volley.tune's trial schedulers as the algorithms they are: real ``Trial`` records driven
through the hooks with scripted results, and a small controller (the tuner's view for
schedulers: the trials, ``reset_trial``, ``stop_trial``) that records what was asked of it."""

from __future__ import annotations

import math
import pickle

import pytest

from volley import tune
from volley.tune._trial import Trial
from volley.tune.schedulers import (
    ASHAScheduler,
    AsyncHyperBandScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)

CONTINUE, PAUSE, STOP, NOOP = "CONTINUE", "PAUSE", "STOP", "NOOP"


class Controller:
    """The tuner's view for schedulers, recording resets; ``stop_trial`` only if asked."""

    def __init__(self, trials: list[Trial]) -> None:
        self.trials = trials
        self.resets: list[tuple[str, dict, object]] = []

    def get_trials(self) -> list[Trial]:
        return list(self.trials)

    def reset_trial(self, trial: Trial, new_config: dict, checkpoint: object) -> None:
        self.resets.append((trial.trial_id, new_config, checkpoint))
        trial.config = new_config
        trial.checkpoint = checkpoint


class StoppingController(Controller):
    def __init__(self, trials: list[Trial]) -> None:
        super().__init__(trials)
        self.stopped: list[str] = []

    def stop_trial(self, trial: Trial) -> None:
        self.stopped.append(trial.trial_id)
        trial.status = Trial.TERMINATED


def report(sched, controller, trial: Trial, metrics: dict, time: float | None = None) -> str:
    """What the tuner does with one result: record it, ask the scheduler, act on the answer."""
    result = {
        **metrics,
        "training_iteration": trial.training_iteration + 1,
        "trial_id": trial.trial_id,
        "config": trial.config,
    }
    if time is not None:
        result["time_total_s"] = time
    trial.status = Trial.RUNNING
    trial.last_result = result
    trial.history.append(result)
    decision = sched.on_trial_result(controller, trial, result)
    if decision == STOP:
        trial.status = Trial.TERMINATED
        sched.on_trial_remove(controller, trial)
    elif decision == PAUSE:
        trial.status = Trial.PAUSED
    return decision


def make(n: int, scheduler=None, controller_cls=Controller):
    trials = [Trial(f"t{i}", {"i": i}) for i in range(n)]
    ctl = controller_cls(trials)
    if scheduler is not None:
        for t in trials:
            scheduler.on_trial_add(ctl, t)
    return trials, ctl


# --- ASHA -------------------------------------------------------------------------------


def test_asha_stops_the_worse_half_at_each_rung_and_keeps_the_best_to_max_t():
    asha = ASHAScheduler(metric="acc", mode="max", max_t=8, grace_period=1, reduction_factor=2)
    assert asha.rungs() == [1, 2, 4]
    trials, ctl = make(8, asha)
    value = {t.trial_id: float(t.config["i"]) for t in trials}  # t7 is the best
    # Rung 1, reached in a mixed order: each trial is kept iff it is in the top half so far.
    order = [5, 2, 7, 1, 6, 3, 0, 4]
    got = {i: report(asha, ctl, trials[i], {"acc": value[f"t{i}"]}) for i in order}
    # The last of 8 at the rung, t4, is in the top half (7, 6, 5, 4): kept.
    assert got == {
        5: CONTINUE,
        2: STOP,
        7: CONTINUE,
        1: STOP,
        6: CONTINUE,
        3: STOP,
        0: STOP,
        4: CONTINUE,
    }
    assert {t.trial_id for t in trials if t.status == Trial.RUNNING} == {"t4", "t5", "t6", "t7"}
    # Rung 2, the best first: the others are never in the top half of those before them.
    got = {i: report(asha, ctl, trials[i], {"acc": value[f"t{i}"]}) for i in (7, 6, 5, 4)}
    assert got == {7: CONTINUE, 6: STOP, 5: STOP, 4: STOP}
    # The best runs on: rung 4 (alone there: kept), then stopped at max_t and not before.
    decisions = [report(asha, ctl, trials[7], {"acc": 7.0}) for _ in range(6)]
    assert decisions == [CONTINUE] * 5 + [STOP]
    assert trials[7].training_iteration == 8
    assert [t.training_iteration for t in trials] == [1, 1, 1, 1, 2, 2, 2, 8]


def test_asha_judges_a_late_trial_against_everything_recorded_at_the_rung():
    asha = AsyncHyperBandScheduler(metric="loss", mode="min", max_t=9, reduction_factor=3)
    trials, ctl = make(5, asha)
    for t, loss in zip(trials, [0.4, 0.5, 0.6]):
        report(asha, ctl, t, {"loss": loss})
    # 4 results at rung 1: the top ceil(4/3) = 2 go on; 0.45 is second best, 0.7 the worst.
    assert report(asha, ctl, trials[3], {"loss": 0.45}) == CONTINUE
    assert report(asha, ctl, trials[4], {"loss": 0.7}) == STOP
    # A NaN metric is the worst result there is.
    late = Trial("nan", {})
    ctl.trials.append(late)
    assert report(asha, ctl, late, {"loss": float("nan")}) == STOP


def test_asha_lets_trials_past_max_t_when_told_and_deals_trials_to_brackets():
    asha = ASHAScheduler(
        metric="m", mode="max", max_t=4, reduction_factor=2, stop_last_trials=False
    )
    (t,), ctl = make(1, asha)
    assert [report(asha, ctl, t, {"m": 1}) for _ in range(6)] == [CONTINUE] * 6
    two = ASHAScheduler(metric="m", mode="max", max_t=16, reduction_factor=2, brackets=2)
    assert two.rungs(0) == [1, 2, 4, 8] and two.rungs(1) == [2, 4, 8]
    trials, ctl = make(12, two)
    dealt = [two.get_state()["bracket_of"][t.trial_id] for t in trials]
    # Bracket 1 has one rung fewer: e**-1 as many trials (Ray's weights), in a fixed order.
    assert dealt.count(0) == 9 and dealt.count(1) == 3
    assert dealt == [make_dealt for make_dealt in _dealt_again(12)]
    # In bracket 1, a trial is not judged before its first rung (2).
    first_in_1 = trials[dealt.index(1)]
    assert report(two, ctl, first_in_1, {"m": -100}) == CONTINUE


def _dealt_again(n: int) -> list[int]:
    again = ASHAScheduler(metric="m", mode="max", max_t=16, reduction_factor=2, brackets=2)
    trials, _ = make(n, again)
    return [again.get_state()["bracket_of"][t.trial_id] for t in trials]


def test_asha_restored_from_its_state_decides_as_the_original_would():
    def run(sched, trials, ctl, losses):
        return [report(sched, ctl, t, {"loss": v}) for t, v in zip(trials, losses)]

    a = ASHAScheduler(metric="loss", mode="min", max_t=27, reduction_factor=3)
    trials, ctl = make(6, a)
    run(a, trials[:3], ctl, [0.3, 0.2, 0.1])
    b = ASHAScheduler(max_t=27, reduction_factor=3)
    b.set_state(pickle.loads(pickle.dumps(a.get_state())))
    assert (b.metric, b.mode) == ("loss", "min")
    twins = [Trial(t.trial_id, t.config) for t in trials]
    for t, twin in zip(trials, twins):
        twin.last_result = dict(t.last_result)
    ctl_b = Controller(twins)
    assert run(b, twins[3:], ctl_b, [0.25, 0.35, 0.05]) == run(
        a, trials[3:], ctl, [0.25, 0.35, 0.05]
    )
    wrong = ASHAScheduler(max_t=27, reduction_factor=3, brackets=2)
    with pytest.raises(ValueError, match="2 brackets, the saved state 1"):
        wrong.set_state(a.get_state())


def test_schedulers_take_metric_and_mode_from_the_tuner_and_refuse_a_conflict():
    asha = ASHAScheduler()
    assert asha.set_search_properties("loss", "min") is True
    assert (asha.metric, asha.mode) == ("loss", "min")
    assert ASHAScheduler(metric="acc", mode="max").set_search_properties("loss", None) is False
    assert ASHAScheduler(metric="acc", mode="max").set_search_properties(None, None) is True
    assert MedianStoppingRule().set_search_properties(None, None) is False  # nothing to rank by
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        HyperBandScheduler().set_search_properties("loss", "minimum")
    (t,), ctl = make(1)
    with pytest.raises(ValueError, match=r"ASHAScheduler needs a metric and a mode"):
        ASHAScheduler().on_trial_result(ctl, t, {"training_iteration": 1, "loss": 1})


def test_a_result_without_the_metric_or_the_time_attr_names_what_is_missing():
    (t,), ctl = make(1)
    asha = ASHAScheduler(metric="loss", mode="min")
    with pytest.raises(ValueError, match=r"trial 't0' has no metric 'loss'; it has \['acc'"):
        asha.on_trial_result(ctl, t, {"training_iteration": 1, "acc": 1})
    rule = MedianStoppingRule(metric="loss", mode="min")
    with pytest.raises(ValueError, match=r"has no 'time_total_s' \(its time_attr\)"):
        rule.on_trial_result(ctl, t, {"training_iteration": 1, "loss": 1})


@pytest.mark.parametrize(
    ("make_it", "error", "message"),
    [
        (lambda: ASHAScheduler(mode="best"), ValueError, "mode must be 'min' or 'max'"),
        (lambda: ASHAScheduler(max_t=0), ValueError, "max_t must be > 0"),
        (lambda: ASHAScheduler(max_t="10"), TypeError, "max_t must be a number"),
        (lambda: ASHAScheduler(grace_period=-1), ValueError, "grace_period must be > 0"),
        (lambda: ASHAScheduler(grace_period=20, max_t=10), ValueError, "must be <= max_t"),
        (lambda: ASHAScheduler(reduction_factor=1), ValueError, "reduction_factor must be > 1"),
        (lambda: ASHAScheduler(brackets=0), ValueError, "brackets must be an int >= 1"),
        (lambda: ASHAScheduler(time_attr=""), TypeError, "time_attr must be a non-empty str"),
        (lambda: ASHAScheduler(metric=3), TypeError, "metric must be a non-empty str"),
        (lambda: HyperBandScheduler(max_t=-5), ValueError, "max_t must be > 0"),
        (lambda: HyperBandScheduler(reduction_factor=0.5), ValueError, "must be > 1"),
        (lambda: MedianStoppingRule(grace_period=-1), ValueError, "grace_period must be >= 0"),
        (lambda: MedianStoppingRule(min_samples_required=0), ValueError, "int >= 1"),
        (lambda: MedianStoppingRule(min_time_slice=float("nan")), TypeError, "a number"),
        (lambda: PopulationBasedTraining(), ValueError, "needs hyperparam_mutations or"),
        (
            lambda: PopulationBasedTraining(hyperparam_mutations={"a": [1]}, quantile_fraction=0.6),
            ValueError,
            r"quantile_fraction must be in \[0, 0.5\]",
        ),
        (
            lambda: PopulationBasedTraining(
                hyperparam_mutations={"a": [1]}, resample_probability=1.5
            ),
            ValueError,
            r"resample_probability must be in \[0, 1\]",
        ),
        (
            lambda: PopulationBasedTraining(
                hyperparam_mutations={"a": [1]}, perturbation_interval=0
            ),
            ValueError,
            "perturbation_interval must be > 0",
        ),
        (
            lambda: PopulationBasedTraining(hyperparam_mutations={"a": {"b": 3}}),
            TypeError,
            r"hyperparam_mutations\['a'\]\['b'\] must be a list, a volley.tune distribution",
        ),
        (
            lambda: PopulationBasedTraining(hyperparam_mutations={"a": tune.grid_search([1])}),
            TypeError,
            "must be a list",
        ),
        (
            lambda: PopulationBasedTraining(hyperparam_mutations={"a": ()}),
            ValueError,
            "is an empty list",
        ),
        (
            lambda: PopulationBasedTraining(hyperparam_mutations=[("lr", [1, 2])]),
            TypeError,
            "hyperparam_mutations must be a dict",
        ),
        (
            lambda: PopulationBasedTraining(hyperparam_mutations={"a": [1]}, burn_in_period=-1),
            ValueError,
            "burn_in_period must be >= 0",
        ),
        (
            lambda: PopulationBasedTraining(custom_explore_fn="x"),
            TypeError,
            "custom_explore_fn must be callable",
        ),
    ],
)
def test_bad_arguments_are_refused_at_construction(make_it, error, message):
    with pytest.raises(error, match=message):
        make_it()


# --- HyperBand --------------------------------------------------------------------------


def run_tuner(sched, ctl, score, slots: int, more: int = 0, max_steps: int = 10_000) -> list[tuple]:
    """A tuner's loop in miniature: keep ``slots`` trials running, chosen by the scheduler;
    each step, every running trial reports one result (a batch, as volley's tuner takes them),
    then the free slots are filled, until no trial is left to run. Like volley's tuner, it
    makes a new trial (up to ``more`` of them) only when none is PENDING, just before it asks
    the scheduler. Returns the events."""
    events: list[tuple] = []
    running: list[Trial] = []
    for _ in range(max_steps):
        while len(running) < slots:
            if more and not any(t.status == Trial.PENDING for t in ctl.trials):
                more -= 1
                t = Trial(f"t{len(ctl.trials)}", {"i": len(ctl.trials)})
                ctl.trials.append(t)
                sched.on_trial_add(ctl, t)
            t = sched.choose_trial_to_run(ctl)
            if t is None:
                break
            events.append(("start", t.trial_id, t.training_iteration))
            t.status = Trial.RUNNING
            running.append(t)
        if not running:
            return events
        batch, running = running, []
        for t in batch:
            if t.status != Trial.RUNNING:  # stopped by the scheduler meanwhile
                continue
            decision = report(sched, ctl, t, {"acc": score(t)})
            events.append((decision, t.trial_id, t.training_iteration))
            if decision in (CONTINUE, NOOP):
                running.append(t)
    raise AssertionError(f"the trials did not finish in {max_steps} steps: {ctl.trials}")


@pytest.mark.parametrize("controller_cls", [StoppingController, Controller])
def test_hyperband_pauses_trials_at_a_rung_until_the_bracket_is_there_then_keeps_the_best(
    controller_cls,
):
    hb = HyperBandScheduler(metric="acc", mode="max", max_t=9, reduction_factor=3)
    trials, ctl = make(9, hb, controller_cls)  # fills bracket 0: 9 trials, milestones 1, 3, 9
    events = run_tuner(hb, ctl, score=lambda t: float(t.config["i"]), slots=2)
    # No paused trial was resumed before all 9 had reached milestone 1.
    first_resume = next(i for i, e in enumerate(events) if e[0] == "start" and e[2] > 0)
    reached_1 = [e for e in events[:first_resume] if e[0] in (PAUSE, CONTINUE) and e[2] == 1]
    assert [e[0] for e in reached_1] == [PAUSE] * 8 + [CONTINUE]  # the last in (t8) goes on
    # ceil(9/3) = 3 best went on to 3, ceil(3/3) = 1 to max_t.
    ran = {t.trial_id: t.training_iteration for t in trials}
    if controller_cls is StoppingController:
        assert ran == {
            "t0": 1,
            "t1": 1,
            "t2": 1,
            "t3": 1,
            "t4": 1,
            "t5": 1,
            "t6": 3,
            "t7": 3,
            "t8": 9,
        }
        assert set(ctl.stopped) <= {f"t{i}" for i in range(8)} and ctl.stopped
    else:  # without stop_trial, a paused bad trial is resumed and stopped at its next result
        assert all(ran[f"t{i}"] in (1, 2) for i in range(6)) and ran["t8"] == 9
        assert all(ran[f"t{i}"] in (3, 4) for i in (6, 7))
    assert ran["t8"] == 9 and all(t.status == Trial.TERMINATED for t in trials)
    # Resumptions only ever happened for trials their bracket had moved past.
    for kind, tid, it in events:
        if kind == "start" and it > 0 and tid in ("t6", "t7", "t8"):
            assert it in (1, 3), (tid, it)


def test_hyperband_fills_a_bracket_from_a_tuner_that_makes_trials_one_at_a_time():
    hb = HyperBandScheduler(metric="acc", mode="max", max_t=9, reduction_factor=3)
    ctl = StoppingController([])
    run_tuner(hb, ctl, score=lambda t: float(t.config["i"]), slots=2, more=9)
    # The bracket waited for its 9 trials before halving: the same survivors as above.
    ran = {t.trial_id: t.training_iteration for t in ctl.trials}
    assert ran == {**{f"t{i}": 1 for i in range(6)}, "t6": 3, "t7": 3, "t8": 9}


def test_hyperband_halves_a_bracket_that_cannot_fill_rather_than_wait_for_good():
    hb = HyperBandScheduler(metric="acc", mode="max", max_t=9, reduction_factor=3)
    ctl = Controller([])
    # Only 4 trials for a bracket of 9: when all 4 wait at milestone 1 and the tuner has
    # no trial to add, the bracket halves as it is (ceil(4/3) = 2 go on, then 1).
    run_tuner(hb, ctl, score=lambda t: float(t.config["i"]), slots=2, more=4)
    ran = {t.trial_id: t.training_iteration for t in ctl.trials}
    assert ran["t3"] == 9 and ran["t2"] in (3, 4) and {ran["t0"], ran["t1"]} <= {1, 2}
    assert all(t.status == Trial.TERMINATED for t in ctl.trials)


def test_hyperband_fills_brackets_in_order_and_an_error_releases_the_waiting_ones():
    hb = HyperBandScheduler(metric="acc", mode="max", max_t=9, reduction_factor=3)
    trials, ctl = make(9 + 5 + 2, hb, StoppingController)
    bracket_of = hb.get_state()["bracket_of"]
    assert [bracket_of[t.trial_id] for t in trials] == [0] * 9 + [1] * 5 + [2] * 2
    shapes = [(b["size"], b["milestones"]) for b in hb.get_state()["brackets"]]
    assert shapes == [(9, [1, 3, 9]), (5, [3, 9]), (3, [9])]
    bracket1 = trials[9:14]
    for t in bracket1[:4]:
        for _ in range(2):
            assert report(hb, ctl, t, {"acc": float(t.config["i"])}) == CONTINUE
        assert report(hb, ctl, t, {"acc": float(t.config["i"])}) == PAUSE
    assert hb.choose_trial_to_run(ctl).trial_id == "t0"  # PENDING ones first
    for t in trials[:9] + trials[14:]:
        t.status = Trial.TERMINATED
    assert hb.choose_trial_to_run(ctl).trial_id == "t13"  # never one that waits at its rung
    # The bracket's last trial fails: the 4 others are halved, the best ceil(4/3) = 2 (t11,
    # t12) resume, the others stop.
    bracket1[4].status = Trial.ERROR
    hb.on_trial_error(ctl, bracket1[4])
    assert sorted(ctl.stopped) == ["t10", "t9"]
    trials[14].status = Trial.PENDING  # a new trial of bracket 2 waits to start
    assert hb.choose_trial_to_run(ctl) is bracket1[2]  # bracket 1's survivors go first
    state = pickle.loads(pickle.dumps(hb.get_state()))
    again = HyperBandScheduler(metric="acc", mode="max", max_t=9, reduction_factor=3)
    again.set_state(state)
    assert again.choose_trial_to_run(ctl) is bracket1[2]
    assert report(again, ctl, bracket1[2], {"acc": 1.0}) == CONTINUE


# --- median stopping --------------------------------------------------------------------


def test_the_median_rule_waits_for_enough_samples_then_stops_the_worse_than_median():
    rule = MedianStoppingRule(metric="loss", mode="min", grace_period=2, min_samples_required=3)
    trials, ctl = make(5, rule)
    for t, loss in zip(trials[:2], [1.0, 2.0]):
        for s in (1, 2, 3):
            assert report(rule, ctl, t, {"loss": loss}, time=s) == CONTINUE
    # Only two others have run as long: too few samples, even for the worst trial.
    for s in (1, 2, 3):
        assert report(rule, ctl, trials[2], {"loss": 9.0}, time=s) == CONTINUE
    # Within the grace period nothing is stopped; after it, 3 samples: median of means 2.0.
    assert report(rule, ctl, trials[3], {"loss": 9.0}, time=1) == CONTINUE
    assert report(rule, ctl, trials[3], {"loss": 9.0}, time=2) == STOP
    assert report(rule, ctl, trials[4], {"loss": 1.5}, time=2) == CONTINUE  # best 1.5 < 2.0


def test_the_median_rule_counts_the_last_result_of_a_trial_that_ended():
    rule = MedianStoppingRule(metric="acc", mode="max", grace_period=0, min_samples_required=1)
    trials, ctl = make(2, rule)
    report(rule, ctl, trials[0], {"acc": 5.0}, time=1)
    final = {"acc": 5.0, "time_total_s": 3, "training_iteration": 2}
    trials[0].status = Trial.TERMINATED
    rule.on_trial_complete(ctl, trials[0], final)  # ended on a result the rule never saw
    # t0 has now run to time 3, so t1 at time 3 has a sample to be compared with: stopped.
    assert report(rule, ctl, trials[1], {"acc": 1.0}, time=3) == STOP


def test_the_median_rule_soft_stops_and_time_slices_when_told():
    rule = MedianStoppingRule(
        metric="acc", mode="max", grace_period=0, min_samples_required=1, hard_stop=False
    )
    trials, ctl = make(3, rule)
    report(rule, ctl, trials[0], {"acc": 1.0}, time=1)
    assert report(rule, ctl, trials[1], {"acc": 0.0}, time=1) == PAUSE  # paused to run last
    assert report(rule, ctl, trials[1], {"acc": 0.0}, time=2) == CONTINUE  # resumed: runs on
    trials[1].status = Trial.PAUSED
    trials[2].status = Trial.PAUSED
    assert rule.choose_trial_to_run(ctl) is trials[2]  # the soft-stopped one goes last
    sliced = MedianStoppingRule(metric="acc", mode="max", grace_period=0, min_time_slice=5)
    trials, ctl = make(2, sliced)
    assert report(sliced, ctl, trials[0], {"acc": 1.0}, time=4) == CONTINUE
    assert report(sliced, ctl, trials[0], {"acc": 1.0}, time=6) == PAUSE  # t1 waits
    assert sliced.choose_trial_to_run(ctl) is trials[1]
    assert report(sliced, ctl, trials[1], {"acc": 1.0}, time=4) == CONTINUE
    assert report(sliced, ctl, trials[1], {"acc": 1.0}, time=6) == PAUSE  # t0's turn again
    assert sliced.choose_trial_to_run(ctl) is trials[0]
    restored = MedianStoppingRule(grace_period=0, min_time_slice=5)
    restored.set_state(pickle.loads(pickle.dumps(sliced.get_state())))
    assert report(restored, ctl, trials[0], {"acc": 1.0}, time=8) == CONTINUE


# --- PBT --------------------------------------------------------------------------------


def pbt_population(n: int, pbt, checkpoints=True):
    trials, ctl = make(n, pbt)
    for t in trials:
        t.status = Trial.RUNNING  # all running: none waits for a turn
        t.config["lr"] = 0.01 * (t.config["i"] + 1)
        if checkpoints:
            t.checkpoint = f"ckpt-{t.trial_id}"
    return trials, ctl


@pytest.mark.parametrize("seed", range(5))
def test_pbt_exploits_from_the_top_quantile_only_and_perturbs_the_donor_config(seed):
    pbt = PopulationBasedTraining(
        metric="acc",
        mode="max",
        perturbation_interval=2,
        quantile_fraction=0.25,
        resample_probability=0.0,
        hyperparam_mutations={"lr": tune.uniform(0.001, 0.1)},
        seed=seed,
    )
    trials, ctl = pbt_population(8, pbt)
    acc = {t.trial_id: float(t.config["i"]) for t in trials}  # t6, t7 top; t0, t1 bottom
    # The first perturbation point (iteration 2), the worst first: each trial, as it comes,
    # is the best so far, so none exploits; the scores are known from then on.
    for _ in (1, 2):
        for t in trials:
            assert report(pbt, ctl, t, {"acc": acc[t.trial_id]}) == CONTINUE
    assert ctl.resets == []
    # The second (iteration 4), the best first: the bottom quarter, and only it, exploits.
    for step in (3, 4):
        for t in reversed(trials):
            decision = report(pbt, ctl, t, {"acc": acc[t.trial_id]})
            assert decision == (NOOP if step == 4 and t.trial_id in ("t0", "t1") else CONTINUE)
    assert sorted(r[0] for r in ctl.resets) == ["t0", "t1"]
    for _tid, config, checkpoint in ctl.resets:
        donor = checkpoint.removeprefix("ckpt-")
        assert donor in ("t6", "t7")
        donor_lr = 0.01 * (int(donor[1:]) + 1)
        assert config["lr"] == pytest.approx(donor_lr * 0.8) or config["lr"] == pytest.approx(
            donor_lr * 1.2
        )
        assert config["i"] == int(donor[1:])  # the rest of the donor's config comes along
    assert [e["trial_id"] for e in pbt.policy_log] == [r[0] for r in ctl.resets]


def test_pbt_never_clones_a_trial_that_has_no_checkpoint():
    pbt = PopulationBasedTraining(
        metric="loss", mode="min", perturbation_interval=1, hyperparam_mutations={"lr": [1, 2]}
    )
    trials, ctl = pbt_population(4, pbt, checkpoints=False)
    loss = [4.0, 3.0, 2.0, 1.0]  # t3 best, t0 worst
    for t in reversed(trials):  # each comes in as the worst so far, with no donor to clone
        assert report(pbt, ctl, t, {"loss": loss[t.config["i"]]}) == CONTINUE
    assert ctl.resets == []
    trials[3].checkpoint = "ckpt-t3"  # the best now has one; t0 is still the worst
    for t in reversed(trials):
        report(pbt, ctl, t, {"loss": loss[t.config["i"]]})
    assert [(r[0], r[2]) for r in ctl.resets] == [("t0", "ckpt-t3")]


def test_pbt_clones_only_a_checkpoint_taken_in_the_top_quantile_and_else_skips():
    """As Ray's PBT: a trial gives the checkpoint it had when it was last ranked, and only
    if it was in the top quantile then; a bottom trial that draws a top trial with none does
    not exploit this time; a trial just reset gives none until it is ranked in the top."""
    pbt = PopulationBasedTraining(
        metric="acc",
        mode="max",
        perturbation_interval=1,
        quantile_fraction=0.25,
        hyperparam_mutations={"lr": [0.01, 0.02, 0.03]},
        seed=0,
    )
    trials, ctl = pbt_population(4, pbt)  # every trial has a checkpoint of its own
    acc = {t.trial_id: float(t.config["i"]) for t in trials}  # t3 best
    # Round 1, the best first: t3 is ranked alone (no quantiles), so it is not in the top
    # then and its checkpoint is not one to give. Each later trial is in the bottom and
    # draws t3, the top: no exploit, although t3 holds a checkpoint.
    for t in reversed(trials):
        assert report(pbt, ctl, t, {"acc": acc[t.trial_id]}) == CONTINUE
    assert ctl.resets == []
    assert pbt.get_state()["trials"]["t3"]["last_checkpoint"] is None
    # Round 2: t3 is ranked in the top now and gives the checkpoint it has at that moment.
    trials[3].checkpoint = "ckpt-t3@2"
    assert report(pbt, ctl, trials[3], {"acc": 3.0}) == CONTINUE
    assert report(pbt, ctl, trials[0], {"acc": 0.0}) == NOOP
    assert [(r[0], r[2]) for r in ctl.resets] == [("t0", "ckpt-t3@2")]
    # t0, just reset, gives nothing until ranked in the top (it is still ranked at 0.0).
    assert pbt.get_state()["trials"]["t0"]["last_checkpoint"] is None
    assert pbt.get_state()["trials"]["t3"]["last_checkpoint"] == "ckpt-t3@2"
    # t3 falls to the bottom at round 3: its checkpoint is no longer one to give, and t0
    # (ranked top now) gives the one it has then.
    trials[0].checkpoint = "ckpt-t0@3"
    # (the top is t2 now, whose checkpoint of round 1 was ranked below the top: no exploit)
    assert report(pbt, ctl, trials[3], {"acc": -1.0}) == CONTINUE
    assert pbt.get_state()["trials"]["t3"]["last_checkpoint"] is None
    assert len(ctl.resets) == 1
    assert report(pbt, ctl, trials[0], {"acc": 5.0}) == CONTINUE
    assert pbt.get_state()["trials"]["t0"]["last_checkpoint"] == "ckpt-t0@3"


def test_pbt_perturbs_within_bounds_and_steps_lists_to_a_neighbour():
    pbt = PopulationBasedTraining(
        hyperparam_mutations={
            "lr": tune.loguniform(1e-3, 1e-1),
            "layers": tune.randint(1, 5),
            "bs": [16, 32, 64, 128],
            "opt": tune.choice(["sgd", "adam", "lamb"]),
            "nested": {"wd": tune.uniform(0.0, 0.5)},
            "drop": lambda: 0.25,
        },
        resample_probability=0.0,
        seed=1,
    )
    config = {"lr": 0.099, "layers": 4, "bs": 16, "opt": "adam", "nested": {"wd": 0.49}}
    config["drop"] = 0.5
    seen_bs, seen_opt = set(), set()
    for _ in range(200):
        new = pbt.explore(config)
        assert 1e-3 <= new["lr"] <= 1e-1 and new["lr"] in (pytest.approx(0.0792), 0.1)
        assert new["layers"] in (3, 4) and isinstance(new["layers"], int)
        assert 0.0 <= new["nested"]["wd"] <= 0.5
        assert new["drop"] in (pytest.approx(0.4), pytest.approx(0.6))
        seen_bs.add(new["bs"])
        seen_opt.add(new["opt"])
    assert seen_bs == {16, 32} and seen_opt == {"sgd", "lamb"}
    assert config["bs"] == 16  # the original is not changed
    always = PopulationBasedTraining(
        hyperparam_mutations={"lr": tune.uniform(0.5, 0.6), "bs": [1, 2]},
        resample_probability=1.0,
        seed=2,
        custom_explore_fn=lambda c: {**c, "tag": "explored"},
    )
    new = always.explore({"lr": 100.0, "bs": 7})
    assert 0.5 <= new["lr"] <= 0.6 and new["bs"] in (1, 2) and new["tag"] == "explored"
    bad = PopulationBasedTraining(hyperparam_mutations={"a": [1]}, custom_explore_fn=lambda c: 3)
    with pytest.raises(TypeError, match="custom_explore_fn must return a dict"):
        bad.explore({"a": 1})
    nested = PopulationBasedTraining(hyperparam_mutations={"opt": {"lr": [0.1, 0.2]}})
    with pytest.raises(TypeError, match=r"config\['opt'\] is 'sgd', its mutations are a dict"):
        nested.explore({"opt": "sgd"})


def test_pbt_fills_missing_keys_on_add_and_goes_on_after_a_restore():
    def make_pbt():
        return PopulationBasedTraining(
            metric="acc",
            mode="max",
            perturbation_interval=1,
            hyperparam_mutations={"lr": tune.uniform(0.1, 0.2)},
            seed=3,
        )

    pbt = make_pbt()
    trials, ctl = make(4, pbt)
    assert all(0.1 <= t.config["lr"] <= 0.2 for t in trials)
    for t in trials:
        t.checkpoint = f"ckpt-{t.trial_id}"
        report(pbt, ctl, t, {"acc": t.config["i"]})
    restored = make_pbt()
    restored.set_state(pickle.loads(pickle.dumps(pbt.get_state())))
    twins = [Trial(t.trial_id, dict(t.config)) for t in trials]
    for t, twin in zip(trials, twins):
        twin.checkpoint, twin.last_result = t.checkpoint, dict(t.last_result)
    ctl_twin = Controller(twins)
    for sched, population, c in ((pbt, trials, ctl), (restored, twins, ctl_twin)):
        for t in population:
            report(sched, c, t, {"acc": t.config["i"]})
    assert ctl_twin.resets == ctl.resets[len(ctl.resets) - len(ctl_twin.resets) :]
    assert ctl_twin.resets and restored.policy_log == pbt.policy_log


def test_synchronous_pbt_waits_for_the_population_then_exploits_at_once():
    pbt = PopulationBasedTraining(
        metric="acc",
        mode="max",
        perturbation_interval=2,
        hyperparam_mutations={"lr": [0.1, 0.2, 0.3]},
        quantile_fraction=0.5,
        synch=True,
        seed=0,
    )
    trials, ctl = pbt_population(4, pbt)
    for t in trials[:3]:
        assert report(pbt, ctl, t, {"acc": t.config["i"]}) == CONTINUE
        assert report(pbt, ctl, t, {"acc": t.config["i"]}) == PAUSE
    assert ctl.resets == []  # waiting for t3, which is the one to run next
    trials[3].status = Trial.PENDING
    assert pbt.choose_trial_to_run(ctl) is trials[3]
    report(pbt, ctl, trials[3], {"acc": 3.0})
    assert pbt.choose_trial_to_run(ctl) is None  # t3 is RUNNING, nothing else may start
    assert report(pbt, ctl, trials[3], {"acc": 3.0}) == CONTINUE  # the last one in: the round
    assert sorted(r[0] for r in ctl.resets) == ["t0", "t1"]
    assert all(r[2] in ("ckpt-t2", "ckpt-t3") for r in ctl.resets)
    assert pbt.choose_trial_to_run(ctl) is trials[0]  # the paused ones go on


# --- FIFO, for completeness -------------------------------------------------------------


def test_fifo_runs_pending_then_paused_and_never_stops_a_trial():
    fifo = FIFOScheduler()
    trials, ctl = make(2, fifo)
    trials[0].status = Trial.PAUSED
    assert fifo.choose_trial_to_run(ctl) is trials[1]
    assert report(fifo, ctl, trials[1], {"acc": -math.inf}) == TrialScheduler.CONTINUE
