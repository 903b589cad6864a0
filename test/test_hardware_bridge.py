"""``go1_bridge`` / ``piper_bridge`` over real rclpy and Fast DDS, with the vendor SDK faked.

The SDKs cannot run here: each test gives :class:`HardwareBridge` a fake driver, a subclass of
the real driver whose SDK calls are replaced (readings the test sets, writes it records), so
that the bridge's IO loop, the validator, the limiter and the drivers' own ``write`` /
``damping_stop`` / ``release_stop`` are the real code. Commands go in and ``/diagnostics`` come
out over DDS on a domain of this test's own. Every wait is on an event (a write the fake
recorded, a diagnostic received) with a generous timeout that only bounds a failure.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: pip install -e '.[ros]'")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from ws_ros.common import command_qos  # noqa: E402
from ws_ros.drivers import Go1Driver, PiperDriver, rad_to_millideg  # noqa: E402
from ws_ros.nodes.hardware_bridge import HardwareBridge  # noqa: E402
from ws_sim.safety import CommandLimiter  # noqa: E402

DOMAIN = 40 + (os.getpid() + 75) % 150  # not test_ros_nodes.py's domain for the same process
TIMEOUT = 30.0  # bounds a failure only


class _Recorder:
    """A condition to wait on and a log of what the fake was told."""

    def __init__(self):
        self.cond = threading.Condition()
        self.log: list = []

    def record(self, item) -> None:
        with self.cond:
            self.log.append(item)
            self.cond.notify_all()

    def wait(self, pred, timeout: float = TIMEOUT) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: pred(self.log), timeout)

    def snapshot(self) -> list:
        with self.cond:
            return list(self.log)


class FakeGo1(Go1Driver, _Recorder):
    """Go1Driver without the UDP link: :meth:`read` returns ``self.reading`` (or raises it, if an
    exception); :meth:`write` records ``(q, kp, kd)`` (or raises ``self.write_error``).
    ``damping_stop`` is the real driver's, so the Go1's stop is what it writes."""

    def __init__(self, reading: dict):
        _Recorder.__init__(self)
        self.reading, self.write_error = reading, None

    def read(self) -> dict:
        r = self.reading
        if isinstance(r, BaseException):
            raise r
        return {k: np.array(v, dtype=float) for k, v in r.items()}

    def write(self, q_target, kp, kd) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.record((np.array(q_target, dtype=float), np.array(kp, dtype=float), np.array(kd, dtype=float)))

    def close(self) -> None:
        pass


class FakeArm(_Recorder):
    """piper_sdk's ``C_PiperInterface_V2`` as far as PiperDriver's write and stop use it: records
    ``(method, args)``; ``fail`` maps a method name to the exception it raises."""

    def __init__(self):
        super().__init__()
        self.fail: dict[str, BaseException] = {}

    def __getattr__(self, name):
        if name not in ("MotionCtrl_2", "JointCtrl", "GripperCtrl", "EmergencyStop", "EnablePiper", "EnableArm"):
            raise AttributeError(name)

        def call(*args):
            if name in self.fail:
                raise self.fail[name]
            self.record((name, args))
            return True  # EnablePiper: every motor enabled

        return call


class FakePiper(PiperDriver):
    """PiperDriver over a :class:`FakeArm` (its real write, damping_stop and release_stop); the
    readings are set by the test in SI units (the SDK's units are tested in test_drivers.py)."""

    def __init__(self, reading: dict):
        self.arm, self.speed, self.reading = FakeArm(), 50, reading

    def read(self) -> dict:
        return {k: np.array(v, dtype=float) for k, v in self.reading.items()}

    def close(self) -> None:
        pass


class Listener(Node):
    """Receives the bridge's ``/diagnostics`` over DDS and publishes ``joint_command``."""

    def __init__(self, **kwargs):
        super().__init__("test_hw_listener", **kwargs)
        self.diag = _Recorder()
        self.create_subscription(DiagnosticArray, "/diagnostics", self._diag, 10)
        self.cmd = self.create_publisher(JointTrajectory, "joint_command", command_qos())

    def _diag(self, m) -> None:
        for s in m.status:
            if "hardware" in s.name:
                level = s.level[0] if isinstance(s.level, bytes) else s.level
                self.diag.record((level, s.message, {kv.key: kv.value for kv in s.values}))

    def command(self, names, q) -> None:
        self.cmd.publish(JointTrajectory(joint_names=list(names),
                                         points=[JointTrajectoryPoint(positions=[float(v) for v in q])]))

    def wait_diag(self, pred, timeout: float = TIMEOUT):
        """The first diagnostic received from now on for which ``pred(level, message, values)`` holds."""
        start = len(self.diag.snapshot())
        found = []

        def match(log):
            found[:] = [d for d in log[start:] if pred(*d)][:1]
            return bool(found)

        assert self.diag.wait(match, timeout), f"no such diagnostic; last: {self.diag.snapshot()[-1:]}"
        return found[0]


@pytest.fixture
def rig():
    """``make(robot, driver)``: the bridge on that driver and a listener on one executor spinning in its own thread,
    in a context of this test's own; all is torn down afterwards."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN)
    ex = SingleThreadedExecutor(context=ctx)
    nodes = []

    def make(robot, driver):
        bridge = HardwareBridge(robot, driver=driver, context=ctx, parameter_overrides=[
            Parameter("rate_hz", value=100.0), Parameter("command_timeout_s", value=60.0),
            Parameter("fault_clear_s", value=0.3), Parameter("diagnostics_rate_hz", value=20.0)])
        lst = Listener(context=ctx)
        nodes.extend([bridge, lst])
        for n in (bridge, lst):
            ex.add_node(n)
        threading.Thread(target=_spin, args=(ex,), daemon=True).start()
        end = time.monotonic() + TIMEOUT
        while lst.cmd.get_subscription_count() < 1 and time.monotonic() < end:  # DDS discovery: no event to wait on
            time.sleep(0.01)
        assert lst.cmd.get_subscription_count() >= 1, "the bridge never subscribed to joint_command"
        return bridge, lst

    yield make
    ex.shutdown()
    for n in nodes:
        n.destroy_node()
    rclpy.shutdown(context=ctx)


def _spin(ex) -> None:
    try:
        ex.spin()
    except Exception:  # the executor is shut down under it at the end
        pass


def _go1_reading(q, qd) -> dict:
    return {"q": q, "qd": qd, "tau": np.zeros(12), "quat_wxyz": [1.0, 0, 0, 0], "gyro": np.zeros(3),
            "accel": [0, 0, 9.81]}


def _is_damping(w) -> bool:
    return bool(np.all(w[1] == 0.0) and np.all(w[2] == Go1Driver.DAMPING_KD))


Q_GO1 = np.array([0.0, 0.8, -1.5] * 4)
QD_GO1 = np.array([0.0, 3.0, -2.0] * 4)  # the torque bound depends on qd
CMD_GO1 = Q_GO1 + np.array([0.1, 1.0, -1.0] * 4)


def _go1_following(rig):
    """A Go1 bridge on a fake driver, reading ``Q_GO1``, ``QD_GO1`` and following ``CMD_GO1``: the
    written target is CommandLimiter's clamp for that q and that qd != 0, with the servo gains."""
    fake = FakeGo1(_go1_reading(Q_GO1, QD_GO1))
    bridge, lst = rig("go1", fake)
    limiter = CommandLimiter(bridge.limits)
    expected = limiter(CMD_GO1, Q_GO1, QD_GO1)
    assert not np.allclose(expected, limiter(CMD_GO1, Q_GO1, np.zeros(12)))  # qd matters for this command
    lst.command(bridge.limits.names, CMD_GO1)
    assert fake.wait(lambda log: any(np.allclose(w[0], expected) and np.all(w[1] == bridge.limits.kp) for w in log)), \
        fake.snapshot()[-1:]
    return fake, bridge, lst, limiter


def test_go1_bridge_clamps_commands_with_the_measured_velocity(rig):
    """A valid reading with qd != 0 and a command beyond the torque bound: the written target is
    CommandLimiter's clamp for that q, qd (not for qd = 0); OK on /diagnostics."""
    fake, bridge, lst, _ = _go1_following(rig)
    lst.wait_diag(lambda lv, m, v: lv == 0 and m == "following commands")
    assert all(np.all(np.isfinite(w[0])) for w in fake.snapshot())


def test_go1_invalid_readings_give_the_damping_stop_until_valid_and_a_fresh_command(rig):
    """NaN, out-of-range position and out-of-range velocity readings: Kp = 0 damping (never a NaN
    target, never the stiff Kp = 80 hold) and ERROR naming the joint and the value; the stop latches
    until readings were valid for fault_clear_s and a fresh command came; the last fault is kept."""
    fake, bridge, lst, limiter = _go1_following(rig)
    names, kp = bridge.limits.names, bridge.limits.kp

    # a NaN joint position: the damping stop (Kp = 0, Kd = 3), ERROR naming the joint and the value
    bad = Q_GO1.copy()
    bad[2] = np.nan
    n0 = len(fake.snapshot())
    fake.reading = _go1_reading(bad, QD_GO1)
    assert fake.wait(lambda log: any(_is_damping(w) for w in log[n0:]))
    level, message, values = lst.wait_diag(lambda lv, m, v: lv == 2 and "FR_calf_joint" in m)
    assert "nan" in message and "FR_calf_joint" in values["last_fault"], message
    writes = fake.snapshot()
    first = next(i for i in range(n0, len(writes)) if _is_damping(writes[i]))
    assert all(_is_damping(w) for w in writes[first:]), "a stiff hold was written while the reading was NaN"
    assert all(np.all(np.isfinite(w[0])) for w in writes), "a non-finite target reached the motors"

    # valid again: the stop latches until readings were valid for fault_clear_s AND a fresh command arrives
    # (the old command is not stale: command_timeout_s is 60 s here)
    fake.reading = _go1_reading(Q_GO1, QD_GO1)
    lst.wait_diag(lambda lv, m, v: lv == 2 and "waiting for a fresh command" in m)
    assert all(_is_damping(w) for w in fake.snapshot()[first:]), "released without a fresh command"
    cmd2 = Q_GO1 + np.array([-0.1, -1.0, 1.0] * 4)
    expected2 = limiter(cmd2, Q_GO1, QD_GO1)
    lst.command(names, cmd2)
    assert fake.wait(lambda log: any(np.allclose(w[0], expected2) and np.all(w[1] == kp) for w in log[first:]))
    level, message, values = lst.wait_diag(lambda lv, m, v: lv == 0)
    assert "FR_calf_joint" in values["last_fault"], values  # the last fault is kept after it clears

    # an out-of-range position, then an out-of-range velocity: the stop, ERROR naming joint and value
    bad = Q_GO1.copy()
    bad[1] = 6.0  # FR_thigh_joint's range ends at 4.501
    n0 = len(fake.snapshot())
    fake.reading = _go1_reading(bad, QD_GO1)
    assert fake.wait(lambda log: any(_is_damping(w) for w in log[n0:]))
    _, message, _ = lst.wait_diag(lambda lv, m, v: lv == 2 and "FR_thigh_joint" in m)
    assert "position 6" in message, message
    fast = QD_GO1.copy()
    fast[4] = 150.0
    fake.reading = _go1_reading(Q_GO1, fast)
    lst.wait_diag(lambda lv, m, v: lv == 2 and "FL_thigh_joint velocity 150" in m)
    writes = fake.snapshot()
    first = next(i for i in range(n0, len(writes)) if _is_damping(writes[i]))
    assert all(_is_damping(w) for w in writes[first:]) and all(np.all(np.isfinite(w[0])) for w in writes)


def test_go1_io_exceptions_give_the_damping_stop_and_never_a_silent_dead_thread(rig):
    """read() raises, then write() raises (so does the damping stop, which writes too): the stop and
    ERROR naming the exception, the stop retried every cycle until it goes out; should the IO thread
    end all the same, /diagnostics says so instead of "following commands"."""
    fake, bridge, lst, _ = _go1_following(rig)
    names = bridge.limits.names

    # the SDK's read raises: the stop and ERROR, the loop goes on
    fake.reading = RuntimeError("UDP receive failed")
    lst.wait_diag(lambda lv, m, v: lv == 2 and "RuntimeError: UDP receive failed" in m)
    n0 = len(fake.snapshot())
    assert fake.wait(lambda log: any(_is_damping(w) for w in log[n0:])), "no damping stop after read() raised"

    # back to following, then the SDK's write raises: ERROR saying that the stop fails too, retried every
    # cycle; once the link works again the stop goes out
    fake.reading = _go1_reading(Q_GO1, QD_GO1)
    lst.wait_diag(lambda lv, m, v: "waiting for a fresh command" in m)
    lst.command(names, CMD_GO1)
    lst.wait_diag(lambda lv, m, v: m == "following commands")
    fake.write_error = OSError("send failed")
    lst.wait_diag(lambda lv, m, v: lv == 2 and "IO exception: OSError: send failed" in m
                  and "the stop itself fails" in m)
    n0 = len(fake.snapshot())
    fake.write_error = None
    assert fake.wait(lambda log: any(_is_damping(w) for w in log[n0:])), "the damping stop was not retried"
    assert all(np.all(np.isfinite(w[0])) for w in fake.snapshot())

    # should the IO thread ever end, /diagnostics says so
    fake.reading = SystemExit("the SDK exited")
    lst.wait_diag(lambda lv, m, v: lv == 2 and "IO thread dead" in m and "SystemExit" in m)


def test_piper_bridge_uses_the_sdk_stop_and_its_release(rig):
    """PiPER: commands clamped with qd != 0 go to JointCtrl; an out-of-range reading or a raising
    JointCtrl calls the SDK's EmergencyStop(0x01) with ERROR naming the joint and value; it is
    released with EmergencyStop(0x02) and re-enabling, after valid readings and a fresh command."""
    q0 = np.array([0.2, 1.0, -1.0, 0.3, -0.2, 0.5, 0.01])
    qd = np.array([1.5, -2.0, 1.0, 0.0, 0.5, 0.0, 0.0])
    fake = FakePiper({"q": q0, "qd": qd, "tau": np.zeros(7)})
    arm = fake.arm
    bridge, lst = rig("piper", fake)
    names = bridge.limits.names
    limiter = CommandLimiter(bridge.limits)

    def joint_ctrl(expected):
        md = tuple(int(v) for v in rad_to_millideg(expected[:6]))
        return lambda log: any(c == ("JointCtrl", md) for c in log)

    cmd = q0 + np.array([0.5, -0.5, 0.5, 0.3, 0.3, 0.3, 0.0])
    expected = limiter(cmd, q0, qd)
    assert not np.allclose(expected, limiter(cmd, q0, np.zeros(7)))
    lst.command(names, cmd)
    assert arm.wait(joint_ctrl(expected)), arm.snapshot()[-3:]

    # out of range (joint3's range is [-2.967, 0]): the SDK's emergency stop, no joint command meanwhile
    bad = q0.copy()
    bad[2] = 0.5
    n0 = len(arm.snapshot())
    fake.reading = {"q": bad, "qd": qd, "tau": np.zeros(7)}
    assert arm.wait(lambda log: ("EmergencyStop", (0x01,)) in log[n0:])
    _, message, values = lst.wait_diag(lambda lv, m, v: lv == 2 and "joint3" in m)
    assert "position 0.5" in message and "joint3" in values["last_fault"], message
    calls = arm.snapshot()
    first = calls.index(("EmergencyStop", (0x01,)), n0)
    assert all(c == ("EmergencyStop", (0x01,)) for c in calls[first:]), "the arm was commanded during the stop"

    # valid again, a fresh command: resume (0x02), enable, then the clamped command
    fake.reading = {"q": q0, "qd": qd, "tau": np.zeros(7)}
    lst.wait_diag(lambda lv, m, v: "waiting for a fresh command" in m)
    assert all(c == ("EmergencyStop", (0x01,)) for c in arm.snapshot()[first:])
    cmd2 = q0 - np.array([0.5, -0.5, 0.5, 0.3, 0.3, 0.3, 0.0])
    expected2 = limiter(cmd2, q0, qd)
    lst.command(names, cmd2)
    assert arm.wait(joint_ctrl(expected2))
    calls = arm.snapshot()[first:]
    resume, enable = calls.index(("EmergencyStop", (0x02,))), calls.index(("EnablePiper", ()))
    md2 = tuple(int(v) for v in rad_to_millideg(expected2[:6]))
    assert resume < enable < calls.index(("JointCtrl", md2)), calls[-6:]
    lst.wait_diag(lambda lv, m, v: lv == 0)

    # JointCtrl raises: the emergency stop and ERROR naming the exception
    n0 = len(arm.snapshot())
    arm.fail["JointCtrl"] = OSError("CAN bus off")
    assert arm.wait(lambda log: ("EmergencyStop", (0x01,)) in log[n0:])
    lst.wait_diag(lambda lv, m, v: lv == 2 and "IO exception: OSError: CAN bus off" in m)


def test_bridge_warns_when_more_than_5_percent_of_commands_are_rejected(rig):
    """Valid and NaN commands mixed: WARN naming the top reason (not ERROR, not OK); once only valid
    commands arrive for a second, OK again (a rolling one-second window, not a count since start)."""
    q0 = np.array([0.0, 0.8, -1.5] * 4)
    fake = FakeGo1(_go1_reading(q0, np.zeros(12)))
    bridge, lst = rig("go1", fake)
    names = bridge.limits.names
    nan = q0.copy()
    nan[5] = np.nan

    def warned(log):
        return any(lv == 1 and "non_finite" in m for lv, m, _ in log)

    end = time.monotonic() + TIMEOUT
    while not lst.diag.wait(warned, 0.01) and time.monotonic() < end:  # a faulty planner: every other command NaN
        lst.command(names, q0)
        lst.diag.wait(warned, 0.01)  # (pacing: the bridge takes each command before the next replaces it)
        lst.command(names, nan)
    log = lst.diag.snapshot()
    assert warned(log), log[-1:]
    _, message, values = next(d for d in log if d[0] == 1 and "non_finite" in d[1])
    assert "commands" in message and int(values["commands_rejected_non_finite"]) > 0, message
    k = len(log)

    def ok(log):
        return any(lv == 0 for lv, _, _ in log[k:])

    end = time.monotonic() + TIMEOUT
    while not lst.diag.wait(ok, 0.02) and time.monotonic() < end:  # only valid commands now
        lst.command(names, q0)
    assert ok(lst.diag.snapshot()), lst.diag.snapshot()[-1:]
    assert all(np.all(np.isfinite(w[0])) for w in fake.snapshot())
