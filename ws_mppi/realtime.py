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
ticks, missed ticks, replans, planning latencies and tick periods;
:meth:`RealtimeController.stats` reports percentiles, and over the last second of the loop's
clock the achieved command rate and the missed ticks.

**Scheduling.** Ticks are due at fixed deadlines ``t0 + k / rate_hz`` on the loop's clock
(``t0`` its first tick), computed from ``k``, never accumulated, so the rate does not drift
and the phase is kept. A wake-up after a later deadline has passed (a late thread, a clock
that jumped) emits one tick at once, for the newest deadline passed, and skips the older
ones, each counted as a missed tick: no burst of catch-up ticks, and in the long run the
loop emits exactly ``rate_hz`` ticks per second of its clock less the missed ones.

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
    """Block until ``time.perf_counter() >= t`` (or ``stop``): one ``Event.wait``. It wakes a
    little late (~0.1 ms; more when the CPUs or the GIL are busy), but the tick loop's deadlines
    do not move with its wake-ups, so the lateness never accumulates. Sleeping to 1 ms before the
    deadline and then in 0.1 ms steps was measured on 2 busy cores: 2-3x the tick thread's CPU,
    and no consistent change in missed ticks on the go1_sim graph (they come from CPU and GIL
    contention of 10-60 ms, not from the ~0.1 ms the wait oversleeps), so it is not used."""
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

    _WINDOW_S = 1.0  # the rolling window of ``command_rate_hz`` and ``missed_ticks_per_s``, clock seconds

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
        self.missed_ticks = 0  # deadlines skipped after late wake-ups, in all
        # late wake-ups (first skipped deadline, how many) in a ring: enough for any 1 s window
        ring = int(np.ceil(float(rate_hz) * self._WINDOW_S)) + 2
        self._miss_first = np.zeros(ring, dtype=np.int64)
        self._miss_count = np.zeros(ring, dtype=np.int64)
        self._miss_events = 0
        self._miss_lock = threading.Lock()
        self._t0: float | None = None  # the loop's first tick (its deadline 0), on the loop's clock
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
    def plan_made(self) -> float:
        """When the newest plan was made, on the loop's clock (the stamp of the state it was
        made from, when ``get_state`` gives one); ``-inf`` before the first plan."""
        with self._lock:
            return float(self._made[self._latest]) if self._latest >= 0 else float("-inf")

    @property
    def has_plan(self) -> bool:
        """Whether a plan has been published (before that, ticks emit ``hold_action``)."""
        return self._latest >= 0

    # --- threads ---------------------------------------------------------------------------
    def _tick_loop(self) -> None:
        while self.clock() <= 0 and not self._stop.is_set():  # a ROS clock before its first /clock
            self._stop.wait(0.001)
        t0, period = self.clock(), self.period
        with self._miss_lock:  # a restarted loop has a new t0: the old deadline numbers mean nothing now
            self._t0, self._miss_events = t0, 0
        k = 0  # the deadline t0 + k * period the next tick serves
        while not self._stop.is_set():
            now = self.clock()
            if now < t0 + k * period:  # not due yet (or a wait that returned early)
                self._wait_until(t0 + k * period, self._stop)
                continue
            newest = int((now - t0) / period)  # the newest deadline passed
            if newest > k:  # woke up late: one tick now, for the newest deadline; skip the older ones
                self._record_missed(k, newest - k)
                k = newest
            self.tick()
            self.tick_times.append(now)
            k += 1

    def _record_missed(self, first: int, n: int) -> None:
        """Deadlines ``first .. first + n - 1`` were skipped (tick loop only; a late wake-up)."""
        with self._miss_lock:
            i = self._miss_events % len(self._miss_first)
            self._miss_first[i], self._miss_count[i] = first, n
            self._miss_events += 1
            self.missed_ticks += n

    def _window_counts(self, tick_times: np.ndarray) -> tuple[int, int]:
        """``(ticks, missed ticks)`` whose times (deadlines, for missed ones) lie in the last
        ``_WINDOW_S`` of the loop's clock."""
        if self._t0 is None:
            return 0, 0
        start = self.clock() - self._WINDOW_S
        ticks = int(np.count_nonzero(tick_times > start))
        j = int(np.floor((start - self._t0) / self.period)) + 1  # the first deadline after start
        with self._miss_lock:
            m = min(self._miss_events, len(self._miss_first))
            first, count = self._miss_first[:m].copy(), self._miss_count[:m].copy()
        missed = int(np.clip(first + count - np.maximum(first, j), 0, None).sum())
        return ticks, missed

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
        """Achieved rates and percentiles (milliseconds), for logs, diagnostics and benchmarks.

        ``missed_ticks`` counts every deadline skipped since the start; ``command_rate_hz`` and
        ``missed_ticks_per_s`` count the ticks emitted and the deadlines skipped in the last
        second of the loop's clock (their sum is ``rate_hz`` give or take one)."""
        times = np.asarray(self.tick_times)
        window_ticks, window_missed = self._window_counts(times)
        ticks = np.diff(times) * 1e3
        lat = np.asarray(self.plan_latencies) * 1e3
        span = (self.tick_times[-1] - self.tick_times[0]) if len(self.tick_times) > 1 else 0.0  # in clock time

        def pct(x, q):
            return round(float(np.percentile(x, q)), 3) if x.size else None

        return {"ticks": len(self.tick_times), "missed_ticks": self.missed_ticks,
                "missed_ticks_per_s": window_missed, "command_rate_hz": window_ticks / self._WINDOW_S,
                "planner_faults": self.faults,
                "tick_period_ms_p50": pct(ticks, 50), "tick_period_ms_p99": pct(ticks, 99),
                "tick_jitter_ms_std": round(float(ticks.std()), 3) if ticks.size else None,
                "replans": self.replans,
                "replan_rate_hz": round(len(self.plan_latencies) / span, 2) if span > 0 else None,
                "plan_latency_ms_p50": pct(lat, 50), "plan_latency_ms_p99": pct(lat, 99)}
