"""Vendor-SDK drivers behind ``go1_bridge`` and ``piper_bridge`` (no rclpy; SDKs imported lazily).

A driver reads joint positions / velocities / torques and writes joint position targets with
PD gains, in the joint order of our MJCF and in SI units. The bridges put the shared safety
layer (:mod:`ws_sim.safety`) between ``joint_command`` and :meth:`write`.

Which SDK speaks to which robot:

* **Unitree Go1**: ``unitree_legged_sdk`` (branch ``go1``, v3.8.x), low level over UDP to the
  motor controller at ``192.168.123.10:8007``, through its pybind11 module ``robot_interface``
  (built with the SDK, found under ``lib/python/<arch>``; put that folder on ``PYTHONPATH``).
  ``unitree_sdk2py`` does *not* apply: it speaks DDS to Go2, B2, H1 and G1, not to the Go1.
  The Go1's motor order FR, FL, RR, RL x hip, thigh, calf is the order of ``ws_sim.go1.JOINTS``.
* **AgileX PiPER**: ``piper_sdk`` (PyPI), ``C_PiperInterface_V2`` over SocketCAN (``can0`` at
  1 Mbit/s: ``sudo ip link set can0 up type can bitrate 1000000``). Angles are in 0.001
  degree, gripper width in 0.001 mm, motor speeds in 0.001 rad/s.

Each driver also has the robot's own safe stop for faults (an invalid reading, an IO error),
:meth:`damping_stop`, and :meth:`release_stop` to leave it:

* Go1: the usual low-level stop, ``Kp = 0`` with damping ``Kd = 3`` N·m·s/rad on every motor
  (Unitree's passive/damping state on the real robot, ``unitree_guide``'s ``State_Passive``);
  the legs sink slowly under the damping instead of being held stiffly at a position.
  It is a command like any other: it must be sent every cycle; the next :meth:`write` leaves it.
* PiPER: the SDK's emergency stop, ``EmergencyStop(0x01)`` (``MotionCtrl_1`` quick stop,
  CAN ID 0x150): the arm stops and lowers itself slowly under damping. It latches in the
  arm; piper_sdk documents the release as ``EmergencyStop(0x02)`` ("resume", which resets
  the arm's controller and clears its errors, the motors unpowered) followed by enabling
  the motors again, which :meth:`PiperDriver.release_stop` and the next :meth:`write` do.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SDKMissingError", "Go1Driver", "PiperDriver", "DRIVERS", "rad_to_millideg", "millideg_to_rad"]


class SDKMissingError(ImportError):
    """The vendor SDK a hardware bridge needs is not installed; the message says how to get it."""


def rad_to_millideg(q: np.ndarray) -> np.ndarray:
    """Radians -> integer 0.001 degree (PiPER joint commands)."""
    return np.round(np.degrees(np.asarray(q, dtype=np.float64)) * 1000.0).astype(np.int64)


def millideg_to_rad(v: np.ndarray) -> np.ndarray:
    """0.001 degree -> radians (PiPER joint feedback)."""
    return np.radians(np.asarray(v, dtype=np.float64) / 1000.0)


class Go1Driver:
    """Unitree Go1 low-level control through ``unitree_legged_sdk``'s ``robot_interface``.

    Args:
        local_port, robot_ip, robot_port: the SDK's UDP endpoints (defaults: the Go1's).
        power_protect: ``Safety.PowerProtect`` level 1..10 (the SDK's own power limiter).

    Raises:
        SDKMissingError: ``robot_interface`` cannot be imported.
    """

    name = "go1"
    LOWLEVEL = 0xFF
    POSITION_MODE = 0x0A  # servo (PMSM) mode of a motor command
    DAMPING_KD = 3.0  # N·m·s/rad: the damping of the stop (Unitree's passive state on the real Go1: Kp 0, Kd 3)

    def __init__(self, local_port: int = 8080, robot_ip: str = "192.168.123.10", robot_port: int = 8007,
                 power_protect: int = 9):
        try:
            import robot_interface as sdk
        except ImportError as e:
            raise SDKMissingError(
                "go1_bridge needs Unitree's unitree_legged_sdk (branch go1, v3.8.x) built with its Python binding "
                "'robot_interface' on PYTHONPATH (the SDK's lib/python/amd64 or arm64). unitree_sdk2py talks DDS to "
                "Go2/B2/H1/G1 and cannot drive a Go1.") from e
        self.sdk = sdk
        self.udp = sdk.UDP(self.LOWLEVEL, local_port, robot_ip, robot_port)
        self.safety = sdk.Safety(sdk.LeggedType.Go1)
        self.cmd, self.state = sdk.LowCmd(), sdk.LowState()
        self.udp.InitCmdData(self.cmd)
        self.power_protect = int(power_protect)

    def read(self) -> dict:
        """``{"q", "qd", "tau" (12,), "quat_wxyz" (4,), "gyro" (3,), "accel" (3,)}`` (rad, rad/s, N·m, m/s²)."""
        self.udp.Recv()
        self.udp.GetRecv(self.state)
        m = self.state.motorState
        imu = self.state.imu
        return {"q": np.array([m[i].q for i in range(12)]), "qd": np.array([m[i].dq for i in range(12)]),
                "tau": np.array([m[i].tauEst for i in range(12)]), "quat_wxyz": np.array(imu.quaternion, dtype=float),
                "gyro": np.array(imu.gyroscope, dtype=float), "accel": np.array(imu.accelerometer, dtype=float)}

    def write(self, q_target: np.ndarray, kp: np.ndarray, kd: np.ndarray) -> None:
        """Send position targets with the motors' PD gains (N·m/rad, N·m·s/rad)."""
        for i in range(12):
            c = self.cmd.motorCmd[i]
            c.mode = self.POSITION_MODE
            c.q, c.dq, c.tau = float(q_target[i]), 0.0, 0.0
            c.Kp, c.Kd = float(kp[i]), float(kd[i])
        self.safety.PowerProtect(self.cmd, self.state, self.power_protect)
        self.udp.SetSend(self.cmd)
        self.udp.Send()

    def damping_stop(self, q_hold: np.ndarray | None = None) -> None:
        """The low-level stop: ``Kp = 0``, ``Kd = DAMPING_KD``, no feed-forward torque, on every
        motor. With ``Kp = 0`` the position target has no effect; it is ``q_hold`` (the last valid
        reading) where finite, else 0, so that nothing non-finite is ever sent. Send it every
        cycle while stopped."""
        q = np.zeros(12) if q_hold is None else np.asarray(q_hold, dtype=np.float64)
        q = np.where(np.isfinite(q), q, 0.0)
        self.write(q, np.zeros(12), np.full(12, self.DAMPING_KD))

    def release_stop(self) -> None:
        """Nothing to undo on the Go1: the next :meth:`write` sends the servo gains again."""

    def close(self) -> None:
        pass


class PiperDriver:
    """AgileX PiPER over CAN through ``piper_sdk``: 6 joints and the gripper as ``joint7`` of our
    MJCF, one finger's travel in metres (the SDK's gripper value is the opening of both
    fingers, in 0.001 mm: ``joint7 = opening / 2``).

    Args:
        can_port: SocketCAN interface.
        speed_percent: the arm's joint-motion speed (``MotionCtrl_2``), 1..100.

    Raises:
        SDKMissingError: ``piper_sdk`` cannot be imported.
    """

    name = "piper"
    enabled = True  # False after release_stop until EnablePiper reports every motor enabled

    def __init__(self, can_port: str = "can0", speed_percent: int = 50):
        try:
            from piper_sdk import C_PiperInterface_V2
        except ImportError as e:
            raise SDKMissingError(
                "piper_bridge needs AgileX's piper_sdk: pip install piper_sdk (it uses python-can over SocketCAN; "
                "bring the port up with 'sudo ip link set can0 up type can bitrate 1000000')") from e
        self.arm = C_PiperInterface_V2(can_port)
        self.arm.ConnectPort()
        self.arm.EnableArm(7)
        self.speed = int(np.clip(speed_percent, 1, 100))

    def read(self) -> dict:
        """``{"q" (7,), "qd" (7,), "tau" (7,)}``: 6 joints (rad, rad/s, N m) and ``joint7`` (m)."""
        js = self.arm.GetArmJointMsgs().joint_state
        hs = self.arm.GetArmHighSpdInfoMsgs()
        g = self.arm.GetArmGripperMsgs().gripper_state
        q = millideg_to_rad([getattr(js, f"joint_{i}") for i in range(1, 7)])
        qd = np.array([getattr(hs, f"motor_{i}").motor_speed for i in range(1, 7)], dtype=float) / 1000.0
        tau = np.array([getattr(hs, f"motor_{i}").effort for i in range(1, 7)], dtype=float) / 1000.0
        return {"q": np.r_[q, g.grippers_angle / 1e6 / 2], "qd": np.r_[qd, 0.0],
                "tau": np.r_[tau, g.grippers_effort / 1e3]}

    def write(self, q_target: np.ndarray, kp=None, kd=None) -> None:
        """Joint targets (rad) and ``joint7`` (m, one finger); the arm's own servo loop tracks them.
        After :meth:`release_stop`, the motors are enabled first (``EnablePiper`` until all report
        enabled, as piper_sdk's demos do)."""
        if not self.enabled:
            self.enabled = bool(self.arm.EnablePiper())
        self.arm.MotionCtrl_2(0x01, 0x01, self.speed, 0x00)  # CAN control, joint mode
        self.arm.JointCtrl(*(int(v) for v in rad_to_millideg(q_target[:6])))
        self.arm.GripperCtrl(int(abs(round(2 * float(q_target[6]) * 1e6))), 1000, 0x01, 0)

    def damping_stop(self, q_hold: np.ndarray | None = None) -> None:
        """piper_sdk's emergency stop, ``EmergencyStop(0x01)``: the arm stops and lowers itself
        slowly under damping; it stays stopped until :meth:`release_stop`. Sent on every call
        (a repeated stop is harmless, a lost CAN frame is not); ``q_hold`` is not used."""
        self.arm.EmergencyStop(0x01)

    def release_stop(self) -> None:
        """Leave the emergency stop as piper_sdk documents: ``EmergencyStop(0x02)`` ("resume":
        resets the arm's controller and clears its errors, the motors unpowered), then enable the
        motors again (:meth:`write` does, before its first command)."""
        self.arm.EmergencyStop(0x02)
        self.enabled = False

    def close(self) -> None:
        self.arm.DisconnectPort()


DRIVERS = {"go1": Go1Driver, "piper": PiperDriver}
