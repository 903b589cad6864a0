"""Benchmark: the controller's command rate and missed ticks over DDS on the go1_sim graph.

Starts ``ws launch go1_sim`` (one process, as ``ws launch`` runs it; ``--processes`` for one
per node) in its own ``ROS_DOMAIN_ID``, waits until commands flow and ``--warmup`` seconds
more, then for ``--seconds`` wall seconds counts the ``joint_command`` messages a listener in
this process receives over DDS, and reads the controller's ``/diagnostics`` (1 Hz). Prints one
JSON object:

* ``commands_per_s``: commands received per wall second, and ``ratio_to_rate_hz`` against
  the controller's nominal ``rate_hz`` (90) -- the baseline: deadline scheduling should give
  ``rate_hz`` less the missed ticks (with ``--time-base sim``, per simulated second: see
  ``commands_per_sim_s``; per wall second it also scales with the achieved real-time factor);
* ``missed_ticks`` and ``missed_ticks_per_s``: deadlines the controller skipped between its
  ``/diagnostics`` nearest the window's ends (``diagnostics_span_s`` apart), also its rolling
  ``missed_ticks_per_s`` readings (mean, max) and its ``command_rate_hz`` readings;
  ``missed_from_stamps`` counts them independently: the deadlines the window's command stamps
  span, less the commands received;
* ``tick_period_ms_p50``/``p99``: between consecutive command stamps (the controller's
  clock), and ``arrival_period_ms_p50``/``p99`` between their arrivals here (wall);
* machine (CPUs, platform, load average before and after: other jobs share the CPUs), seed,
  date.

``--time-base wall`` (default): the controller ticks on the monotonic clock
(``use_sim_time:=false``) and the simulation runs in wall time (``publish_clock:=false``);
``--time-base sim``: the graph as shipped, ticking on the simulation's ``/clock``. Not a test:
nothing is asserted.

    .venv/bin/python bench/bench_tick_rate.py [--seconds 60] [--time-base wall|sim] [--processes]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml


def _pct(x, q):
    return round(float(np.percentile(x, q)), 3) if len(x) else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="wall seconds to measure (after the warm-up)")
    p.add_argument("--warmup", type=float, default=5.0, help="wall seconds to skip after the first command")
    p.add_argument("--time-base", choices=("wall", "sim"), default="wall",
                   help="the controller's clock: wall (monotonic) or sim (/clock, the graph as shipped)")
    p.add_argument("--graph", default="go1_sim", help="a *_sim graph with mppi_controller (ws launch --list)")
    p.add_argument("--dynamics", default="", help="override the controller's dynamics (oracle, default or a path)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation and the MPPI noise")
    p.add_argument("--processes", action="store_true", help="one process per node instead of one process")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="give up if no command by then (s)")
    p.add_argument("--domain", type=int, default=190 + os.getpid() % 40,
                   help="ROS_DOMAIN_ID (default 190-229, clear of the tests' 40-189)")
    args = p.parse_args()

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
    from trajectory_msgs.msg import JointTrajectory

    from ws_ros.graphs import GRAPHS, params_file

    ctl_file = dict(GRAPHS[args.graph]["nodes"])["mppi_controller"]
    rate_hz = float(yaml.safe_load(params_file(ctl_file).read_text())["mppi_controller"]["ros__parameters"]
                    .get("rate_hz", 90.0))
    period = 1.0 / rate_hz

    rclpy.init(domain_id=args.domain)
    node = Node("bench_tick_rate_listener")
    cmds = []  # (arrival, wall monotonic; stamp, the controller's clock)
    diags = []  # (arrival, controller values, sim_bridge values)

    def on_cmd(m):
        cmds.append((time.monotonic(), m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec))

    def on_diag(m):
        ctl = {s.name: {kv.key: kv.value for kv in s.values} for s in m.status if "MPPI" in s.name}
        sim = {s.name: {kv.key: kv.value for kv in s.values} for s in m.status if "simulation" in s.name}
        diags.append((time.monotonic(), next(iter(ctl.values()), None), next(iter(sim.values()), None)))

    # deeper than the controller's keep-last-1 so that this listener drops nothing it is sent
    node.create_subscription(JointTrajectory, "joint_command", on_cmd, QoSProfile(
        depth=200, reliability=QoSReliabilityPolicy.RELIABLE, history=QoSHistoryPolicy.KEEP_LAST))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    ex = SingleThreadedExecutor()
    ex.add_node(node)

    overrides = ["-p", f"seed:={args.seed}"]
    if args.time_base == "wall":
        overrides += ["-p", "use_sim_time:=false", "-p", "publish_clock:=false"]
    if args.dynamics:
        overrides += ["--dynamics", args.dynamics]
    env = {**os.environ, "ROS_DOMAIN_ID": str(args.domain), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from ws_cli.main import main; raise SystemExit(main())", "launch", args.graph,
           *overrides] + (["--processes"] if args.processes else [])
    load_before = [round(x, 2) for x in os.getloadavg()]
    t_launch = time.monotonic()
    log = tempfile.TemporaryFile(mode="w+")  # the graph's log (a pipe nobody reads would block it)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    error = None
    try:
        deadline = t_launch + args.startup_timeout
        while not cmds and time.monotonic() < deadline and proc.poll() is None:
            ex.spin_once(timeout_sec=0.05)
        if not cmds:
            error = "no command received" if proc.poll() is None else f"the graph exited with {proc.returncode}"
        else:
            first = time.monotonic()
            a = first + args.warmup
            b = a + args.seconds
            while time.monotonic() < b + 1.5 and proc.poll() is None:  # + one more 1 Hz diagnostics
                ex.spin_once(timeout_sec=0.02)
            if proc.poll() is not None:
                error = f"the graph exited with {proc.returncode} while measuring"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        node.destroy_node()
        rclpy.shutdown()
        log.seek(0)
        err = log.read()
        log.close()

    out = {"benchmark": "tick_rate_over_dds", "graph": args.graph, "mode": "processes" if args.processes else
           "one process", "time_base": args.time_base, "rate_hz": rate_hz, "seconds": args.seconds,
           "warmup_s": args.warmup}
    if error:
        out.update(error=error, stderr_tail=(err or "")[-2000:])
        print(json.dumps(out))
        raise SystemExit(1)
    out["startup_s"] = round(first - t_launch, 1)
    arr = np.array([c[0] for c in cmds])
    stamp = np.array([c[1] for c in cmds])
    w = (arr >= a) & (arr < b)
    n = int(w.sum())
    out["commands"] = n
    out["commands_per_s"] = round(n / args.seconds, 2)
    out["ratio_to_rate_hz"] = round(n / args.seconds / rate_hz, 4)
    st = stamp[w]
    if args.time_base == "sim" and n > 1 and st[-1] > st[0]:
        out["commands_per_sim_s"] = round((n - 1) / (st[-1] - st[0]), 2)
        out["ratio_to_rate_hz_sim"] = round((n - 1) / (st[-1] - st[0]) / rate_hz, 4)
    gaps = np.diff(st)
    # deadlines the window's command stamps span, less the commands: the shortfall against rate_hz
    out["missed_from_stamps"] = int(round((st[-1] - st[0]) / period)) + 1 - n if n > 1 else None
    # the controller's own count, between its diagnostics nearest the window's ends
    ctl = [(t, d) for t, d, _ in diags if d is not None and "missed_ticks" in d]
    inside = [x for x in ctl if a < x[0] <= b]
    if len(ctl) > 1:
        (t0, d0) = min(ctl, key=lambda x: abs(x[0] - a))
        (t1, d1) = min(ctl, key=lambda x: abs(x[0] - b))
    if len(ctl) > 1 and t1 > t0:
        missed = int(float(d1["missed_ticks"])) - int(float(d0["missed_ticks"]))
        out["missed_ticks"] = missed
        out["missed_ticks_per_s"] = round(missed / (t1 - t0), 3)
        out["diagnostics_span_s"] = round(t1 - t0, 2)
        if "ticks" in d0 and "ticks" in d1:
            out["controller_ticks_per_s"] = round((float(d1["ticks"]) - float(d0["ticks"])) / (t1 - t0), 2)
    else:
        out["missed_ticks"] = out["missed_ticks_per_s"] = None
    rolling = [float(d["missed_ticks_per_s"]) for t, d in inside if "missed_ticks_per_s" in d]
    rates = [float(d["command_rate_hz"]) for t, d in inside if "command_rate_hz" in d]
    out["diag_missed_ticks_per_s_mean"] = round(float(np.mean(rolling)), 3) if rolling else None
    out["diag_missed_ticks_per_s_max"] = max(rolling) if rolling else None
    out["diag_command_rate_hz_mean"] = round(float(np.mean(rates)), 2) if rates else None
    out["diag_command_rate_hz_min"] = min(rates) if rates else None
    out["tick_period_ms_p50"] = _pct(gaps * 1e3, 50)
    out["tick_period_ms_p99"] = _pct(gaps * 1e3, 99)
    out["tick_period_ms_max"] = round(float(gaps.max() * 1e3), 3) if gaps.size else None
    out["arrival_period_ms_p50"] = _pct(np.diff(arr[w]) * 1e3, 50)
    out["arrival_period_ms_p99"] = _pct(np.diff(arr[w]) * 1e3, 99)
    if inside:
        d = inside[-1][1]
        for k in ("tick_period_ms_p50", "tick_period_ms_p99", "replan_rate_hz", "plan_latency_ms_p50", "mode"):
            if k in d:
                out[f"controller_{k}"] = d[k] if k == "mode" else float(d[k])
    sims = [(t, s) for t, _, s in diags if s is not None and a < t <= b + 1.5]
    if sims:
        out["achieved_real_time_factor"] = float(sims[-1][1].get("achieved_real_time_factor", "nan"))
    out["machine"] = {"cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                      "platform": platform.platform(), "python": platform.python_version(),
                      "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    out["seed"] = args.seed
    out["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out["exit_status"] = proc.returncode
    print(json.dumps(out))


if __name__ == "__main__":
    main()
