"""The real-time MPPI controller: a fixed-rate command loop fed by a free-running planner.

Seed 003 deploys MPPI at 90 Hz on the Go1 (App. G). Planning a full MPPI cycle can take
longer than one 11.1 ms period, so the two are decoupled:

* the **planner thread** reads the newest state, runs one MPPI cycle as fast as it can, and
  publishes the plan (the nominal action sequence) with the time it was made;
* the **tick loop** runs at ``rate_hz`` and always emits a command: the step of the latest
  plan that corresponds to the time elapsed since that plan was made (the plan's step
  ``i`` covers ``[t_made + i dt, t_made + (i + 1) dt)``), or the plan's last step once it
  runs out. Before the first plan it emits ``hold_action``.

The tick does no model work and no allocation: plans are copied into preallocated double
buffers under a lock, and the command into a preallocated array. The controller counts
ticks, missed ticks (a tick that started more than one period late), replans, planning
latencies and tick periods; :meth:`RealtimeController.stats` reports percentiles.

**Time base.** Plan stamps, plan shifting and tick scheduling follow ``clock``: wall time by
default, or a simulator's clock (ROS ``/clock`` with ``use_sim_time``), in which case the
loop ticks at ``rate_hz`` in *simulated* time and a simulation slowed below real time (a
slow machine) sees plans exactly as old, in simulated seconds, as the planner took to make
them there. Planning latency is always measured on the wall clock (it is compute time).
A clock reading of 0 or less means the clock has not started (ROS time before the first
``/clock`` message): the loop waits for it.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

import numpy as np

__all__ = ["RealtimeController", "plan_step_index", "poll_until"]


def _sleep_until(t: float, stop: threading.Event) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        stop.wait(delay)


def poll_until(clock: Callable[[], float], t: float, stop: threading.Event, poll_s: float = 0.0005) -> None:
    """Block until ``clock() >= t`` or ``stop`` is set, for a clock that need not follow wall
    time (a simulator's): checks every ``poll_s`` wall seconds at most, and never sleeps
    longer than the remaining clock time (exact for a clock running at or below real time).
    A clock that stops (a paused simulation) blocks until it moves again or ``stop`` is set."""
    while not stop.is_set():
        remaining = t - clock()
        if remaining <= 0:
            return
        stop.wait(min(poll_s, remaining))


def plan_step_index(elapsed_s: float, plan_dt: float, horizon: int) -> int:
    """Index of the plan step that covers ``elapsed_s`` seconds after the plan was made,
    clamped to the last step (``0 <= index < horizon``)."""
    if elapsed_s <= 0:
        return 0
    return min(int(elapsed_s // plan_dt), horizon - 1)


class RealtimeController:
    """A fixed-rate command loop over a free-running planner (see the module docstring).

    Args:
        plan: ``plan(state, t) -> (H, nu)`` nominal action sequence (e.g. an MPPI cycle's
            ``PlanResult.nominal``); called on the planner thread.
        get_state: returns the newest ``(state, t)`` or ``(state, t, stamp)`` (``t`` the step
            count the planner should use for time-indexed costs; ``stamp`` the state's time on
            ``clock``, which becomes the plan's start; without it the plan starts when
            planning starts), or ``None`` while no (new) valid state exists.
        send: receives each command ``(nu,)`` (a view of a reused buffer: copy it to keep it).
        horizon, action_dim: the plan's shape.
        plan_dt: seconds per plan step.
        rate_hz: command rate (90 Hz by default, the seed's deployment rate).
        hold_action: the command before the first plan, ``(nu,)``.
        clock: the loop's monotonic time base in seconds (``time.perf_counter`` by default;
            a simulated clock for sim-in-the-loop, see the module docstring).
        wait_until: ``wait_until(t, stop)`` blocks until ``clock() >= t`` or the
            ``threading.Event`` ``stop`` is set. Default: sleeps ``t - clock()`` wall seconds,
            right for a wall clock; for any other clock, :func:`poll_until` is used.
        stats_window: the statistics keep the last this many ticks and plans (a long-running
            node's memory stays bounded).
    """

    def __init__(self, plan: Callable, get_state: Callable, send: Callable, horizon: int, action_dim: int,
                 plan_dt: float, rate_hz: float = 90.0, hold_action: np.ndarray | None = None,
                 clock: Callable[[], float] = time.perf_counter, stats_window: int = 100_000,
                 wait_until: Callable[[float, threading.Event], None] | None = None):
        if rate_hz <= 0 or plan_dt <= 0:
            raise ValueError("rate_hz and plan_dt must be positive")
        self._plan_fn, self._get_state, self._send = plan, get_state, send
        self.horizon, self.action_dim = int(horizon), int(action_dim)
        self.plan_dt, self.period = float(plan_dt), 1.0 / float(rate_hz)
        self.clock = clock
        if wait_until is None:
            wait_until = _sleep_until if clock is time.perf_counter else (
                lambda t, stop: poll_until(clock, t, stop))
        self._wait_until = wait_until
        self._plans = np.zeros((2, self.horizon, self.action_dim))
        self._made = np.zeros(2)
        self._latest = -1  # index of the newest plan buffer, -1 before the first plan
        self._tail = np.zeros((self.horizon, self.action_dim))  # written by the tick only
        self._tail_len, self._tail_lead = 0, 0.0
        self._lock = threading.Lock()
        self._command = np.zeros(self.action_dim) if hold_action is None else np.array(hold_action, dtype=np.float64)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # statistics (appended from one thread each)
        self.tick_times: collections.deque[float] = collections.deque(maxlen=stats_window)
        self.plan_latencies: collections.deque[float] = collections.deque(maxlen=stats_window)
        self.replans = 0
        self.missed_ticks = 0
        self.faults = 0
        self.last_fault = ""

    # --- the two halves, usable directly (tests, simulations with their own clock) -------
    def tick(self) -> np.ndarray:
        """Choose and send the command for now; returns it (the reused buffer).

        Before ``send`` is called, :meth:`plan_tail` holds the rest of the plan after the
        command for now, so that ``send`` may forward the whole remaining plan (a
        trajectory) rather than one command."""
        now = self.clock()
        with self._lock:
            k = self._latest
            if k >= 0:
                elapsed = now - self._made[k]
                i = plan_step_index(elapsed, self.plan_dt, self.horizon)
                np.copyto(self._command, self._plans[k, i])
                n = self.horizon - 1 - i
                self._tail[:n] = self._plans[k, i + 1:]
                self._tail_len = n
                self._tail_lead = (i + 1) * self.plan_dt - max(elapsed, 0.0)
            else:
                self._tail_len = 0
        self._send(self._command)
        return self._command

    def plan_tail(self) -> tuple[np.ndarray, float]:
        """The plan after the command of the latest tick: ``(steps (n, nu), lead_s)``, where
        step ``j`` starts ``lead_s + j * plan_dt`` seconds after that tick (``n`` is 0 before
        the first plan). A view of a buffer the next tick reuses: call it from ``send``."""
        return self._tail[:self._tail_len], self._tail_lead

    def plan_once(self) -> bool:
        """Run one planning cycle on the newest state and publish it; False if no state."""
        got = self._get_state()
        if got is None:
            return False
        state, t = got[0], got[1]
        t0 = got[2] if len(got) > 2 else self.clock()  # the plan starts at the state it was made from
        w0 = time.perf_counter()
        nominal = np.asarray(self._plan_fn(state, t), dtype=np.float64)
        if nominal.shape != (self.horizon, self.action_dim):
            raise ValueError(f"planner returned shape {nominal.shape}, expected ({self.horizon}, {self.action_dim})")
        if not np.all(np.isfinite(nominal)):
            raise FloatingPointError("planner returned non-finite actions; the previous plan stays in force")
        self.plan_latencies.append(time.perf_counter() - w0)
        self.replans += 1
        with self._lock:
            k = 1 - self._latest if self._latest >= 0 else 0
            self._plans[k] = nominal
            self._made[k] = t0
            self._latest = k
        return True

    @property
    def has_plan(self) -> bool:
        """Whether a plan has been published (before that, ticks emit ``hold_action``)."""
        return self._latest >= 0

    # --- threads ---------------------------------------------------------------------------
    def _tick_loop(self) -> None:
        while self.clock() <= 0 and not self._stop.is_set():  # a ROS clock before its first /clock
            self._stop.wait(0.001)
        next_t = self.clock()
        while not self._stop.is_set():
            now = self.clock()
            if now - next_t > self.period:
                self.missed_ticks += 1
                next_t = now  # do not try to catch up with a burst of ticks
            self.tick()
            self.tick_times.append(now)
            next_t += self.period
            if next_t > self.clock():
                self._wait_until(next_t, self._stop)

    def _planner_loop(self) -> None:
        while not self._stop.is_set():
            try:
                planned = self.plan_once()
            except (FloatingPointError, ValueError) as e:  # never publish a bad plan; count it
                self.faults += 1
                self.last_fault = str(e)
                planned = False
            if not planned:
                self._stop.wait(0.001)

    def start(self) -> None:
        """Start the tick loop and the planner thread."""
        self._stop.clear()
        self._threads = [threading.Thread(target=self._tick_loop, name="ws-tick", daemon=True),
                         threading.Thread(target=self._planner_loop, name="ws-planner", daemon=True)]
        for th in self._threads:
            th.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads and wait for them."""
        self._stop.set()
        for th in self._threads:
            th.join(timeout)
        self._threads = []

    def stats(self) -> dict:
        """Achieved rates and percentiles (milliseconds), for logs, diagnostics and benchmarks."""
        ticks = np.diff(np.asarray(self.tick_times)) * 1e3
        lat = np.asarray(self.plan_latencies) * 1e3
        span = (self.tick_times[-1] - self.tick_times[0]) if len(self.tick_times) > 1 else 0.0  # in clock time

        def pct(x, q):
            return round(float(np.percentile(x, q)), 3) if x.size else None

        return {"ticks": len(self.tick_times), "missed_ticks": self.missed_ticks, "planner_faults": self.faults,
                "tick_period_ms_p50": pct(ticks, 50), "tick_period_ms_p99": pct(ticks, 99),
                "tick_jitter_ms_std": round(float(ticks.std()), 3) if ticks.size else None,
                "replans": self.replans,
                "replan_rate_hz": round(len(self.plan_latencies) / span, 2) if span > 0 else None,
                "plan_latency_ms_p50": pct(lat, 50), "plan_latency_ms_p99": pct(lat, 99)}
