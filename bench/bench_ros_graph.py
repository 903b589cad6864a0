"""Benchmark: a sim-in-the-loop ROS 2 graph over real rclpy and Fast DDS (the command rate).

Starts ``ws launch GRAPH`` (in one process, or ``--processes`` for one per node) with the
simulation slowed to ``--rtf`` of real time, listens from this process for ``--sim-seconds``
of simulated time, and prints one JSON object: the command rate that reached ``sim_bridge``
per simulated second (target: the controller's 90 Hz), the controller's tick period
percentiles and missed ticks (simulated milliseconds), its replanning rate and planning
latency (wall milliseconds), the achieved real-time factor, and for Hopper how long it stayed
healthy and how far it went. Not a test: nothing is asserted.

    .venv/bin/python bench/bench_ros_graph.py --graph hopper_sim --rtf 0.2 --sim-seconds 1.5 [--processes]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graph", default="hopper_sim", help="a *_sim graph (ws launch --list)")
    p.add_argument("--rtf", type=float, default=0.2, help="real-time factor of the simulation")
    p.add_argument("--sim-seconds", type=float, default=1.5, help="simulated seconds to observe")
    p.add_argument("--processes", action="store_true", help="one process per node instead of one process")
    p.add_argument("--domain", type=int, default=90 + os.getpid() % 100, help="ROS_DOMAIN_ID")
    args = p.parse_args()

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    from ws_ros.common import sensor_qos

    rclpy.init(domain_id=args.domain)
    node = Node("bench_listener")
    states, diag = [], {}
    node.create_subscription(JointState, "joint_states", lambda m: states.append(
        (m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec, dict(zip(m.name, m.position)))), sensor_qos())
    node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diag.update(
        {s.name: {kv.key: kv.value for kv in s.values} for s in m.status}), 10)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    env = {**os.environ, "ROS_DOMAIN_ID": str(args.domain), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from ws_cli.main import main; raise SystemExit(main())", "launch", args.graph,
           "-p", f"real_time_factor:={args.rtf}"] + (["--processes"] if args.processes else [])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    try:
        deadline = time.monotonic() + 120 + args.sim_seconds / args.rtf
        while time.monotonic() < deadline and not (states and states[-1][0] >= args.sim_seconds):
            ex.spin_once(timeout_sec=0.05)
        end = time.monotonic() + 3  # one more round of 1 Hz diagnostics
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    ctl = next((v for k, v in diag.items() if "MPPI" in k), {})
    sim = next((v for k, v in diag.items() if "simulation" in k), {})
    out = {"graph": args.graph, "mode": "processes" if args.processes else "one process", "real_time_factor": args.rtf,
           "sim_seconds_observed": round(states[-1][0], 3) if states else 0.0,
           "wall_seconds": round(time.monotonic() - t0, 1), "exit_status": proc.returncode}
    if sim:
        out["commands_per_sim_second_at_sim_bridge"] = round(int(sim["commands_applied"]) / float(sim["sim_time_s"]), 1)
        out["achieved_real_time_factor"] = float(sim["achieved_real_time_factor"])
    for k in ("tick_period_ms_p50", "tick_period_ms_p99", "ticks", "missed_ticks", "replan_rate_hz",
              "plan_latency_ms_p50", "plan_latency_ms_p99", "mode"):
        if k in ctl:
            out[f"controller_{k}"] = ctl[k] if k == "mode" else float(ctl[k])
    if states and states[0][0] > 0:  # the graph started before this listener heard it: no start to measure from
        out["listener_joined_at_sim_s"] = round(states[0][0], 3)
    elif states and "rootz" in states[0][1]:  # Hopper: Gymnasium's health criteria
        t = np.array([s[0] for s in states])
        run = t > 0
        z = np.array([s[1]["rootz"] for s in states])[run]
        ang = np.array([s[1]["rooty"] for s in states])[run]
        x = np.array([s[1]["rootx"] for s in states])[run]
        bad = ~((z > 0.7) & (np.abs(ang) < 0.2))
        out["healthy_for_sim_s"] = round(float(t[run][bad][0] if bad.any() else t[run][-1]), 3)
        out["forward_m_while_healthy"] = round(float((x[bad.argmax()] if bad.any() else x[-1]) - x[0]), 3)
    print(json.dumps(out))
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
