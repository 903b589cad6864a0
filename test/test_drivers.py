"""Hardware drivers: unit conversions, SDK discovery, and their stops over fake SDK modules (the SDKs
themselves cannot run here)."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

from ws_ros.drivers import Go1Driver, PiperDriver, SDKMissingError, millideg_to_rad, rad_to_millideg


def test_piper_units_round_trip():
    q = np.array([0.0, 1.0, -2.5, np.pi / 2, -0.3, 3.0])
    md = rad_to_millideg(q)
    assert md.dtype == np.int64 and md[3] == 90000
    np.testing.assert_allclose(millideg_to_rad(md), q, atol=np.radians(0.001) / 2 + 1e-12)


@pytest.mark.parametrize("driver, sdk", [(Go1Driver, "robot_interface"), (PiperDriver, "piper_sdk")])
def test_missing_sdk_is_named(driver, sdk):
    with pytest.raises(SDKMissingError, match=sdk):
        driver()


# --- the drivers' stops, over fake SDK modules (the real ones need the robots) ------------------------------
class _Calls(list):
    """Records ``(name, args)`` of every call made through :meth:`method`."""

    def method(self, name, ret=None):
        return lambda *args: (self.append((name, args)), ret)[1]


def _fake_robot_interface(calls: _Calls):
    """unitree_legged_sdk's ``robot_interface`` as far as Go1Driver uses it; ``SetSend`` records each
    motor's ``(mode, q, dq, tau, Kp, Kd)``."""
    def motor():
        return SimpleNamespace(mode=0, q=0.0, dq=0.0, tau=0.0, Kp=0.0, Kd=0.0, tauEst=0.0)

    sdk = ModuleType("robot_interface")
    sdk.LeggedType = SimpleNamespace(Go1="Go1")
    sdk.LowCmd = lambda: SimpleNamespace(motorCmd=[motor() for _ in range(20)])
    sdk.LowState = lambda: SimpleNamespace(motorState=[motor() for _ in range(20)],
                                           imu=SimpleNamespace(quaternion=[1, 0, 0, 0], gyroscope=[0] * 3,
                                                               accelerometer=[0, 0, 9.8]))

    class UDP:
        def __init__(self, *args):
            pass

        InitCmdData = Recv = GetRecv = Send = lambda self, *a: None

        def SetSend(self, cmd):
            calls.append(("SetSend", [(m.mode, m.q, m.dq, m.tau, m.Kp, m.Kd) for m in cmd.motorCmd[:12]]))

    class Safety:
        def __init__(self, legged):
            pass

        def PowerProtect(self, cmd, state, level):
            calls.append(("PowerProtect", (level,)))

    sdk.UDP, sdk.Safety = UDP, Safety
    return sdk


def test_go1_damping_stop_is_kp_zero_with_damping(monkeypatch):
    """Kp = 0, Kd = DAMPING_KD, no torque on all 12 motors; the (irrelevant) target is never NaN."""
    calls = _Calls()
    monkeypatch.setitem(sys.modules, "robot_interface", _fake_robot_interface(calls))
    drv = Go1Driver()
    q = np.linspace(-0.5, 0.5, 12)
    q[3] = np.nan
    drv.damping_stop(q)
    motors = [c for c in calls if c[0] == "SetSend"][-1][1]
    assert len(motors) == 12 and ("PowerProtect", (9,)) in calls
    for i, (mode, qi, dq, tau, kp, kd) in enumerate(motors):
        assert (mode, dq, tau, kp, kd) == (Go1Driver.POSITION_MODE, 0.0, 0.0, 0.0, Go1Driver.DAMPING_KD)
        assert qi == (0.0 if i == 3 else q[i])
    drv.damping_stop()  # before any valid reading: targets 0
    assert all(m[1] == 0.0 and m[4] == 0.0 for m in [c for c in calls if c[0] == "SetSend"][-1][1])
    drv.write(np.zeros(12), np.full(12, 80.0), np.full(12, 2.0))  # the next write leaves the stop
    assert all(m[4] == 80.0 and m[5] == 2.0 for m in [c for c in calls if c[0] == "SetSend"][-1][1])


def test_piper_stop_is_the_sdks_emergency_stop_and_release_re_enables(monkeypatch):
    """damping_stop -> EmergencyStop(0x01); release_stop -> EmergencyStop(0x02), then the next write
    enables the motors (EnablePiper, until it reports them enabled) before commanding them."""
    calls = _Calls()
    enabled = iter([False, True])

    class Arm:
        def __init__(self, can_port):
            calls.append(("C_PiperInterface_V2", (can_port,)))

        def __getattr__(self, name):
            if name == "EnablePiper":
                return lambda: (calls.append(("EnablePiper", ())), next(enabled))[1]
            return calls.method(name)

    sdk = ModuleType("piper_sdk")
    sdk.C_PiperInterface_V2 = Arm
    monkeypatch.setitem(sys.modules, "piper_sdk", sdk)
    drv = PiperDriver("can1", speed_percent=30)
    assert calls[:3] == [("C_PiperInterface_V2", ("can1",)), ("ConnectPort", ()), ("EnableArm", (7,))]
    drv.damping_stop(np.full(7, np.nan))
    assert calls[-1] == ("EmergencyStop", (0x01,))
    drv.release_stop()
    assert calls[-1] == ("EmergencyStop", (0x02,))
    q = np.array([0.1, 0.2, -0.3, 0.0, 0.5, -0.5, 0.02])
    for _ in range(3):
        drv.write(q)
    names = [c[0] for c in calls]
    assert names.count("EnablePiper") == 2  # until every motor reports enabled, then no more
    assert names.index("EnablePiper") < names.index("JointCtrl")
    assert calls[-2] == ("JointCtrl", tuple(int(v) for v in rad_to_millideg(q[:6])))
    assert calls[-1] == ("GripperCtrl", (40000, 1000, 0x01, 0))
    assert ("MotionCtrl_2", (0x01, 0x01, 30, 0x00)) in calls


def test_go1_motor_order_and_units_follow_the_unitree_legged_sdk_layout(monkeypatch):
    """unitree_legged_sdk's quadruped.h numbers the motors FR_0 = 0, FR_1, FR_2, FL_0 = 3, ..., RL_2 = 11 (legs FR,
    FL, RR, RL; joints 0 hip, 1 thigh, 2 calf), with q in rad, Kp in N m/rad and Kd in N m s/rad: the driver sends
    the model's joint i (ws_sim.go1.JOINTS, the order of joint_states and joint_command) to motor i, in the
    units it was given, and reads motor i back into joint i."""
    from ws_sim.go1 import JOINTS

    sdk_index = {f"{leg}_{k}": 3 * li + k for li, leg in enumerate(("FR", "FL", "RR", "RL")) for k in range(3)}
    part = {"hip": 0, "thigh": 1, "calf": 2}
    for i, name in enumerate(JOINTS):
        leg, joint, _ = name.split("_")
        assert sdk_index[f"{leg}_{part[joint]}"] == i, name
    calls = _Calls()
    sdk = _fake_robot_interface(calls)
    monkeypatch.setitem(sys.modules, "robot_interface", sdk)
    drv = Go1Driver()
    q = np.arange(12) * 0.1
    drv.write(q, np.full(12, 80.0), np.full(12, 2.0))
    motors = [c for c in calls if c[0] == "SetSend"][-1][1]
    assert [m[1] for m in motors] == pytest.approx(q.tolist())
    assert all(m[4] == 80.0 and m[5] == 2.0 and m[2] == 0.0 and m[3] == 0.0 for m in motors)
    for i in range(12):
        drv.state.motorState[i].q, drv.state.motorState[i].tauEst = -0.01 * i, 0.5 * i
    reading = drv.read()
    np.testing.assert_allclose(reading["q"], -0.01 * np.arange(12))
    np.testing.assert_allclose(reading["tau"], 0.5 * np.arange(12))
