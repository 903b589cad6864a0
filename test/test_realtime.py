"""The real-time controller: plan shifting, continuity while planning, faults (no timing asserts)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ws_mppi.realtime import RealtimeController, plan_step_index


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_plan_step_index_follows_elapsed_time():
    assert [plan_step_index(e, 0.02, 5) for e in (-1, 0, 0.019, 0.02, 0.05, 10)] == [0, 0, 0, 1, 2, 4]


def test_ticks_emit_the_step_of_the_latest_plan_shifted_by_its_age():
    clock, sent = Clock(), []
    plan = np.arange(5)[:, None] * np.ones((5, 2))  # step i commands (i, i)
    ctrl = RealtimeController(lambda s, t: plan, lambda: (np.zeros(3), 0), lambda c: sent.append(c.copy()),
                              horizon=5, action_dim=2, plan_dt=0.02, hold_action=np.array([9.0, 9.0]), clock=clock)
    ctrl.tick()
    assert sent[-1].tolist() == [9.0, 9.0]  # before any plan: hold
    clock.t = 1.0
    assert ctrl.plan_once()
    for dt, step in ((0.005, 0), (0.025, 1), (0.061, 3), (5.0, 4)):
        clock.t = 1.0 + dt
        ctrl.tick()
        assert sent[-1].tolist() == [step, step]


def test_bad_plans_are_never_published():
    clock, sent = Clock(), []
    plans = iter([np.zeros((3, 1)), np.full((3, 1), np.nan), np.zeros((2, 1))])
    ctrl = RealtimeController(lambda s, t: next(plans), lambda: (np.zeros(1), 0), lambda c: sent.append(c.copy()),
                              horizon=3, action_dim=1, plan_dt=0.1, clock=clock)
    assert ctrl.plan_once()
    with pytest.raises(FloatingPointError, match="non-finite"):
        ctrl.plan_once()
    with pytest.raises(ValueError, match="shape"):
        ctrl.plan_once()
    ctrl.tick()
    assert np.isfinite(sent[-1]).all() and ctrl._latest == 0
    ctrl2 = RealtimeController(lambda s, t: None, lambda: None, lambda c: None, horizon=3, action_dim=1, plan_dt=0.1)
    assert not ctrl2.plan_once()  # no valid state: nothing planned


def test_commands_keep_flowing_along_the_plan_while_the_planner_works():
    """Threads for real: while the second plan is blocked, the tick loop walks the first plan."""
    sent, first_done, release = [], threading.Event(), threading.Event()
    lock = threading.Lock()
    plan = np.repeat(np.arange(40.0)[:, None], 2, axis=1)  # step i commands i; 40 steps of 10 ms

    def planner(state, t):
        if first_done.is_set():
            release.wait(10)  # the second plan takes "forever"
        first_done.set()
        return plan

    def send(c):
        with lock:
            sent.append(c.copy())

    ctrl = RealtimeController(planner, lambda: (np.zeros(2), 0), send, horizon=40, action_dim=2, plan_dt=0.01,
                              hold_action=np.array([-1.0, -1.0]))
    ctrl.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            progressed = [c[0] for c in sent if c[0] >= 0]
        if len(set(progressed)) >= 5:
            break
        time.sleep(0.01)
    with lock:
        before_release = [c[0] for c in sent]  # all sent while the second plan was blocked
    release.set()
    ctrl.stop()
    assert all(np.isfinite([c[0] for c in sent]))
    walked = [v for v in before_release if v >= 0]
    assert len(set(walked)) >= 5 and walked == sorted(walked)  # advancing through the first plan
    stats = ctrl.stats()
    assert stats["ticks"] == len(sent) and stats["replans"] >= 1 and stats["planner_faults"] == 0


def test_tick_exposes_the_rest_of_the_plan_with_its_step_times():
    clock, tails = Clock(), []
    plan = np.arange(5)[:, None] * np.ones((5, 2))

    def send(c):
        steps, lead = ctrl.plan_tail()
        tails.append((c.copy(), steps.copy(), lead))

    ctrl = RealtimeController(lambda s, t: plan, lambda: (np.zeros(3), 0, 1.0), send, horizon=5, action_dim=2,
                              plan_dt=0.02, clock=clock)
    ctrl.tick()
    assert tails[-1][1].shape == (0, 2)  # no plan yet: no tail
    clock.t = 1.5
    assert ctrl.plan_once()  # the state's stamp (1.0), not the planning time, starts the plan
    clock.t = 1.025  # 25 ms after the state: step 1 now, step 2 starts in 15 ms
    ctrl.tick()
    cmd, steps, lead = tails[-1]
    assert cmd.tolist() == [1, 1] and steps[:, 0].tolist() == [2, 3, 4]
    assert lead == pytest.approx(0.015)


def test_a_simulated_clock_drives_the_ticks():
    """With a clock that is not wall time (ROS /clock), the loop waits for it: no ticks before it
    starts (<= 0), none while it stands still, ticks again when it moves."""
    clock, sent = Clock(), []
    lock = threading.Lock()

    def send(c):
        with lock:
            sent.append(clock.t)

    ctrl = RealtimeController(lambda s, t: np.zeros((3, 1)), lambda: None, send, horizon=3, action_dim=1,
                              plan_dt=0.01, rate_hz=90.0, clock=clock)
    ctrl.start()
    try:
        time.sleep(0.2)
        assert not sent  # the clock has not started
        clock.t = 1.0
        deadline = time.monotonic() + 10
        while not sent and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        with lock:
            n = len(sent)
        assert n == 1, sent  # the clock stands still: one tick, then waiting for 1.0 + 1/90
        clock.t = 1.0 + 5 / 90 + 1e-6  # five periods later: ticks resume (late ones are not replayed)
        deadline = time.monotonic() + 10
        while len(sent) == n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(sent) > n
    finally:
        ctrl.stop()


# --- deadline scheduling, driven by a manual clock (no wall-clock waits) ---------------------------
RATE, T0 = 90.0, 10.0
P = 1.0 / RATE


class ManualWait:
    """``wait_until`` for the tick loop on a :class:`Clock`: jumps the clock to the deadline it is
    asked to wait for, plus ``offsets[k]`` periods for deadline ``k`` (one offset per call, in
    order: late > 0, early < 0); stops the loop instead once a deadline reaches ``end``.
    ``on_wait(ctrl, k)`` runs first (e.g. reading the stats as another thread would)."""

    def __init__(self, clock, end, offsets=None, on_wait=None):
        self.clock, self.end, self.on_wait, self.ctrl = clock, end, on_wait, None
        self.offsets = {k: list(v) for k, v in (offsets or {}).items()}

    def __call__(self, t, stop):
        k = round((t - T0) / P)
        if self.on_wait is not None:
            self.on_wait(self.ctrl, k)
        if t >= self.end:
            stop.set()
            return
        pending = self.offsets.get(k)
        self.clock.t = t + (pending.pop(0) if pending else 0.0) * P


def _loop(periods, offsets=None, on_wait=None):
    """Run the tick loop in this thread from ``T0`` until deadline ``periods`` (ticks for deadlines
    ``0 .. periods - 1`` at most); returns the controller and the clock time of every command."""
    clock, sent = Clock(), []
    clock.t = T0
    wait = ManualWait(clock, T0 + (periods - 0.5) * P, offsets, on_wait)
    ctrl = RealtimeController(lambda s, t: np.zeros((3, 1)), lambda: None, lambda c: sent.append(clock.t),
                              horizon=3, action_dim=1, plan_dt=0.01, rate_hz=RATE, clock=clock, wait_until=wait)
    wait.ctrl = ctrl
    ctrl._tick_loop()
    return ctrl, np.array(sent)


def test_a_late_wake_up_emits_one_tick_and_keeps_the_phase():
    """Late by 2.5 periods once: one tick at the late wake-up, the two deadlines it slept through
    are missed, and the ticks after it land on the original t0 + k * period deadlines again."""
    ctrl, sent = _loop(20, offsets={5: [2.5]})
    expected = [T0 + k * P for k in range(5)] + [T0 + 7.5 * P] + [T0 + k * P for k in range(8, 20)]
    np.testing.assert_allclose(sent, expected, rtol=0, atol=1e-9)
    assert ctrl.missed_ticks == 2
    assert np.diff(sent).min() >= 0.5 * P - 1e-9  # no burst of catch-up ticks
    assert len(sent) + ctrl.missed_ticks == 20 and ctrl.stats()["ticks"] == len(sent)


def test_no_drift_over_n_periods():
    """A minute at 90 Hz with wake-ups up to 0.9 period late or 0.5 period early (an early return is
    waited out): exactly one tick per period, each within its period, none missed."""
    n = int(60 * RATE)
    rng = np.random.default_rng(0)
    offsets = {k: [-0.5, 0.0] if k % 7 == 0 else [float(rng.uniform(0, 0.9))] for k in range(1, n)}
    ctrl, sent = _loop(n, offsets=offsets)
    assert len(sent) == n and ctrl.missed_ticks == 0
    lag = sent - (T0 + np.arange(n) * P)
    assert lag.min() >= -1e-9 and lag.max() < P


def test_long_run_rate_is_rate_hz_less_the_missed_ticks():
    """Twenty wake-ups 1.5 periods late in ten seconds: each misses one deadline, and the ticks
    plus the missed ticks are exactly the periods elapsed (a phase reset would lose half a period
    each time)."""
    n = int(10 * RATE)
    ctrl, sent = _loop(n, offsets={k: [1.5] for k in range(20, n - 10, 40)})
    late = len(range(20, n - 10, 40))
    assert ctrl.missed_ticks == late
    assert len(sent) + ctrl.missed_ticks == n


def test_missed_ticks_per_s_counts_only_the_last_second():
    """The rolling window: late by 2.5 periods at deadline 5 and by 1.5 at deadline 150; the stats
    read (as /diagnostics reads them while the loop runs) a quarter period after a tick."""
    seen = {}

    def on_wait(ctrl, k):
        for k0 in (8, 100, 200):
            if k >= k0 and k0 not in seen:
                ctrl.clock.t += 0.25 * P
                seen[k0] = ctrl.stats()

    ctrl, sent = _loop(201, offsets={5: [2.5], 150: [1.5]}, on_wait=on_wait)
    # right after the late tick (at deadline 7.5): deadlines 5 and 6 missed, this second
    assert seen[8]["missed_ticks"] == 2 and seen[8]["missed_ticks_per_s"] == 2
    assert seen[8]["command_rate_hz"] == 6  # ticks at deadlines 0-4 and 7.5
    # a second after them (clock at deadline 99.25): no longer counted, though still in the total
    assert seen[100]["missed_ticks"] == 2 and seen[100]["missed_ticks_per_s"] == 0
    assert seen[100]["command_rate_hz"] == RATE  # deadlines 10 .. 99
    # at the end: the second late wake-up (deadline 150 missed) is the only one in the last second
    assert seen[200]["missed_ticks"] == 3 and seen[200]["missed_ticks_per_s"] == 1
    assert seen[200]["command_rate_hz"] == RATE - 1
    assert ctrl.stats()["missed_ticks"] == 3
