"""The closed-loop executor: action chunks at a fixed control rate, never waiting on the model.

A policy maps an observation to an action chunk of L steps. :class:`ChunkExecutor` is called
once per control step (``act(step, obs)``) and always answers at once:

* **receding horizon**: every ``replan_every`` steps it asks for a new chunk from the newest
  observation; only the first steps of each chunk are used before a fresher one takes over;
* **latency hiding**: the new chunk is computed *while the current one runs* (on a worker
  thread, or, in simulation, as if it took ``latency_steps`` control steps, for repeatable
  evaluations); a chunk requested at step ``t`` covers steps ``t .. t + L - 1``, so when it
  arrives ``d`` steps later its first ``d`` actions are already past and are skipped;
* **temporal ensembling** (ACT, Zhao et al. 2023): with ``ensemble_m`` set, the action for a
  step averages every chunk covering it, weighted ``exp(-m i)`` with ``i = 0`` the oldest
  chunk; without it the newest covering chunk wins.

Before the first chunk (and if a gap ever opened: a chunk that came later than the old one
ran out) the executor holds the last action and counts the step in :attr:`gaps`; with
``replan_every + latency <= L`` there are none. The first chunk is computed synchronously
(the robot waits once, before it moves).
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

__all__ = ["ChunkExecutor"]


class ChunkExecutor:
    """See the module docstring.

    Args:
        policy: ``policy(obs) -> (L, nu)`` action chunk.
        chunk: L.
        replan_every: control steps between requests (1 .. L).
        ensemble_m: temporal-ensembling rate ``m`` (None: newest chunk only).
        latency_steps: ``None``: real inference on a worker thread; an int ``d``: simulated
            latency, the chunk is computed at request time and becomes usable ``d`` steps later;
            ``"measured"``: like an int, with ``d`` = the measured inference time in control
            steps (``dt`` needed).
        dt: control period in seconds (for ``"measured"``).
        hold: the action before the first chunk, ``(nu,)``.

    Raises:
        ValueError: inconsistent sizes.
    """

    def __init__(self, policy, chunk: int, replan_every: int, ensemble_m: float | None = 0.1,
                 latency_steps: int | str | None = None, dt: float | None = None, hold=None):
        if not 1 <= replan_every <= chunk:
            raise ValueError(f"replan_every must be in 1..{chunk}, got {replan_every}")
        if latency_steps == "measured" and not dt:
            raise ValueError("latency_steps='measured' needs the control period dt")
        self.policy, self.chunk, self.replan_every = policy, int(chunk), int(replan_every)
        self.ensemble_m, self.latency_steps, self.dt = ensemble_m, latency_steps, dt
        self.hold = None if hold is None else np.asarray(hold, dtype=np.float64)
        self.chunks: collections.deque = collections.deque(maxlen=max(2, chunk // replan_every + 2))
        self.latencies: list[float] = []
        self.gaps = 0
        self.requests = 0
        self._pending = None  # (t_request, ready_step or None, result holder)
        self._next_request = 0
        self._last = self.hold
        self._thread = None
        if callable(getattr(policy, "reset", None)):
            policy.reset()  # a new executor starts a new episode

    def reset(self) -> None:
        """Forget every chunk (a new episode), and what the policy keeps between calls if it has a ``reset``."""
        self._join()
        if callable(getattr(self.policy, "reset", None)):
            self.policy.reset()
        self._thread = None
        self.chunks.clear()
        self._pending, self._next_request, self._last = None, 0, self.hold
        self.gaps = 0

    # --- inference --------------------------------------------------------------------------------
    def _infer(self, obs) -> np.ndarray:
        t0 = time.perf_counter()
        out = np.asarray(self.policy(obs), dtype=np.float64)
        self.latencies.append(time.perf_counter() - t0)
        if out.ndim != 2 or out.shape[0] != self.chunk or not np.all(np.isfinite(out)):
            raise ValueError(f"the policy returned a chunk of shape {out.shape} (expected ({self.chunk}, nu), finite)")
        return out

    def _request(self, step: int, obs) -> None:
        self.requests += 1
        if self.latency_steps is None:
            holder = {}

            def work():
                try:
                    holder["chunk"] = self._infer(obs)
                except Exception as e:  # surfaced on the control thread
                    holder["error"] = e

            self._thread = threading.Thread(target=work, name="ws-policy-infer", daemon=True)
            self._pending = (step, None, holder)
            self._thread.start()
        else:
            c = self._infer(obs)
            d = int(np.ceil(self.latencies[-1] / self.dt)) if self.latency_steps == "measured" else int(self.latency_steps)
            self._pending = (step, step + max(d, 0), {"chunk": c})

    def _collect(self, step: int) -> None:
        if self._pending is None:
            return
        t_req, ready, holder = self._pending
        if ready is None:  # a worker thread
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = None
            if "error" in holder:
                self._pending = None
                raise holder["error"]
        elif step < ready:
            return
        self.chunks.append((t_req, holder["chunk"]))
        self._pending = None

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def wait_for_inference(self) -> None:
        """Block until a chunk being computed on the worker thread is done (shutdown, tests)."""
        self._join()

    # --- the control step -------------------------------------------------------------------------
    def act(self, step: int, obs) -> np.ndarray:
        """The action for control step ``step`` (call with consecutive steps), ``(nu,)``."""
        if not self.chunks and self._pending is None:  # the very first chunk: wait for it once
            self.chunks.append((step, self._infer(obs)))
            self.requests += 1
            self._next_request = step + self.replan_every
        self._collect(step)
        if step >= self._next_request and self._pending is None:
            self._request(step, obs)
            self._next_request = step + self.replan_every
            self._collect(step)  # zero simulated latency: usable now
        covering = [(t0, c) for t0, c in self.chunks if t0 <= step < t0 + self.chunk]
        if not covering:
            self.gaps += 1
            if self._last is None:
                raise RuntimeError("no action yet and no hold action given")
            return self._last.copy()
        if self.ensemble_m is None:
            t0, c = covering[-1]
            action = c[step - t0]
        else:
            w = np.exp(-self.ensemble_m * np.arange(len(covering)))
            action = sum(wi * c[step - t0] for wi, (t0, c) in zip(w, covering)) / w.sum()
        self._last = np.asarray(action, dtype=np.float64)
        return self._last.copy()

    def latency_percentiles(self) -> dict:
        """Inference latency, ms: p50, p90, p99, count."""
        lat = np.asarray(self.latencies) * 1e3
        if not lat.size:
            return {"count": 0}
        return {"p50_ms": round(float(np.percentile(lat, 50)), 2), "p90_ms": round(float(np.percentile(lat, 90)), 2),
                "p99_ms": round(float(np.percentile(lat, 99)), 2), "count": int(lat.size)}
