"""PiPER manipulation tasks with language instructions, success detection and domain randomisation.

Three tasks on the PiPER's table (``piper_scene.xml``), one Gymnasium environment,
``ws/PiperManip-v0`` (:class:`PiperManipEnv`, ``task=...``):

* ``pick_place``: "pick up the red cube and place it on the green target";
* ``push``: "push the red cube onto the green target" (the gripper stays closed);
* ``stack`` (the long-horizon one: two grasps' worth of motion): "stack the red cube on the
  blue cube".

Objects are 4 cm cubes (free joints) and a flat target disc (a mocap body without collision).
Every reset draws the object poses (positions in the reachable band, yaw), the colours named
in the instruction, and, with ``randomize`` (default), the lighting (two lights' intensity
and position, the headlight), the table's and floor's texture from a set of eight and the
distractor cube's presence: the nuisance factors seed 004's robustness claims are about.

Observation (a dict): ``qpos`` (8: joints 1-6 in rad, fingers in m), ``qvel`` (8),
``objects`` (17: cube A position and quaternion, cube B position and quaternion, target
position; privileged, for scripted experts and critics), ``instruction`` (text), and with
``render_mode="rgbd"`` also ``rgb`` ``(H, W, 3)`` uint8 and ``depth`` ``(H, W)`` float32
metres along the optical axis from ``camera`` (and ``wrist_rgb``/``wrist_depth`` with
``wrist=True``). Action: 7 position targets (joints 1-6 in rad, the finger in m), held for
``frame_skip`` physics steps of 2 ms (default 25: a 0.05 s, 20 Hz control step). Reward:
1.0 on the step the task is first solved, else 0; ``info["success"]`` stays True once it is
solved; the episode terminates on success when ``terminate_on_success``.

:class:`ScriptedExpert` solves each task from the privileged state with Cartesian waypoints
and inverse kinematics; ``failure`` makes it fail on purpose (a misplaced grasp, an early
release, a push that stops short), for the failure episodes that later value functions
need.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import mujoco
import numpy as np

from .piper import PIPER_SCENE_XML, READY_JOINTS, IKError, solve_ik

__all__ = ["TASKS", "WORKSPACES", "COLORS", "PiperManipEnv", "ScriptedExpert", "make_manip_model", "CUBE_HALF"]

TASKS = ("pick_place", "push", "stack")
#: colour name -> RGBA, the vocabulary of the instructions
COLORS = {"red": (0.85, 0.12, 0.1, 1.0), "green": (0.1, 0.7, 0.2, 1.0), "blue": (0.12, 0.3, 0.9, 1.0),
          "yellow": (0.95, 0.8, 0.1, 1.0)}
CUBE_HALF = 0.02  # m
TARGET_RADIUS = 0.035  # m
#: polar band (radius, m; bearing, rad) where the tool reaches a cube pointing straight down
_RADIUS, _BEARING = (0.2, 0.34), (-0.6, 0.6)
#: ``workspace="narrow"``: the task's cube and target each in a patch (centre radius and bearing,
#: half-widths) of the band, cube yaw within +-15 degrees: the small-scale setting, where a
#: policy trained on a few hundred demonstrations on a CPU has to generalise over a few
#: centimetres (as ACT's real tasks randomise within a region), not over the whole band
WORKSPACES = ("full", "narrow")
#: (the patches are at least 11 cm apart, so the 10 cm spacing the sampler asks for always holds)
_NARROW = {"cube": ((0.27, 0.03), (-0.32, 0.08)), "target": ((0.27, 0.03), (0.32, 0.08)), "yaw": np.pi / 12}
_PARK = np.array([-0.6, 0.9, -0.75 + CUBE_HALF])  # on the floor behind the table: out of every camera's view
_INSTRUCTIONS = {"pick_place": "pick up the {a} cube and place it on the {t} target",
                 "push": "push the {a} cube onto the {t} target",
                 "stack": "stack the {a} cube on the {b} cube"}
_N_TEXTURES = 8


def make_manip_model() -> mujoco.MjModel:
    """The PiPER scene with two cubes, a target disc and eight table/floor materials to draw from."""
    spec = mujoco.MjSpec.from_file(str(PIPER_SCENE_XML))
    rng = np.random.default_rng(7)  # fixed: the texture set is part of the model
    builtins = [mujoco.mjtBuiltin.mjBUILTIN_CHECKER, mujoco.mjtBuiltin.mjBUILTIN_FLAT,
                mujoco.mjtBuiltin.mjBUILTIN_GRADIENT]
    for i in range(_N_TEXTURES):
        rgb1, rgb2 = rng.uniform(0.25, 0.85, 3), rng.uniform(0.2, 0.8, 3)
        spec.add_texture(name=f"dr_tex{i}", type=mujoco.mjtTexture.mjTEXTURE_2D, builtin=builtins[i % 3],
                         rgb1=rgb1.tolist(), rgb2=rgb2.tolist(), width=64, height=64)
        mat = spec.add_material(name=f"dr_mat{i}", texrepeat=[4, 4])
        mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = f"dr_tex{i}"
    for name in ("cube_a", "cube_b"):
        body = spec.worldbody.add_body(name=name, pos=_PARK.tolist())
        body.add_freejoint(name=name)
        body.add_geom(name=name, type=mujoco.mjtGeom.mjGEOM_BOX, size=[CUBE_HALF] * 3, rgba=[0.8, 0.1, 0.1, 1],
                      density=300.0, friction=[1.2, 0.01, 0.0001], condim=4, contype=1, conaffinity=3)
    target = spec.worldbody.add_body(name="target", mocap=True, pos=[0.3, 0.1, 0.0])
    target.add_geom(name="target", type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[TARGET_RADIUS, 0.0015, 0],
                    rgba=[0.1, 0.7, 0.2, 1], contype=0, conaffinity=0)
    model = spec.compile()
    model.geom_rgba[model.geom("goal").id, 3] = 0.0  # the reaching marker: not part of these tasks, and it is green
    return model


def _quat_yaw(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def _yaw_of(quat) -> float:
    w, x, y, z = quat
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


@dataclasses.dataclass
class _Layout:
    a: str
    b: str
    t: str
    instruction: str


class PiperManipEnv(gym.Env):
    """PiPER manipulation (see the module docstring).

    Args:
        task: one of :data:`TASKS`.
        render_mode: ``"rgbd"`` adds images to every observation; ``"rgb_array"`` renders
            only on :meth:`render` (videos).
        width, height: image size, px.
        camera: the scene camera of the observations (``task``: close over the workspace;
            ``front``, ``scene``).
        wrist: also observe the wrist camera.
        randomize: domain randomisation of lighting, textures and distractors at reset.
        workspace: ``"full"``: the task's objects anywhere in the reachable band, any cube yaw
            within +-45 degrees; ``"narrow"``: the small-scale setting (cube and target each
            in a 6 x 4 cm patch, yaw within +-15 degrees; the distractor still anywhere).
        frame_skip: physics steps per control step.
        terminate_on_success: end the episode on the step the task is solved.
        max_episode_steps: truncation (default: 160 steps = 8 s, 240 for ``stack``).

    Raises:
        ValueError: unknown task, camera or workspace.
    """

    metadata = {"render_modes": ["rgbd", "rgb_array"], "render_fps": 20}

    def __init__(self, task: str = "pick_place", render_mode: str | None = None, width: int = 64, height: int = 64,
                 camera: str = "task", wrist: bool = False, randomize: bool = True, frame_skip: int = 25,
                 terminate_on_success: bool = True, max_episode_steps: int | None = None, workspace: str = "full"):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
        if workspace not in WORKSPACES:
            raise ValueError(f"unknown workspace {workspace!r}; choose one of {list(WORKSPACES)}")
        self.workspace = workspace
        self.task_name = task
        self.model = make_manip_model()
        self.data = mujoco.MjData(self.model)
        if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            raise ValueError(f"unknown camera {camera!r}; the scene has task, front, scene and wrist")
        self.name = f"piper_{task}"
        self.frame_skip = int(frame_skip)
        self.dt = self.model.opt.timestep * self.frame_skip
        self.max_episode_steps = max_episode_steps or (240 if task == "stack" else 160)
        self.render_mode, self.camera, self.wrist, self.randomize = render_mode, camera, wrist, randomize
        self.width, self.height = int(width), int(height)
        self.terminate_on_success = terminate_on_success
        lo, hi = self.model.actuator_ctrlrange.T
        self.action_space = gym.spaces.Box(lo.astype(np.float32), hi.astype(np.float32), (self.model.nu,), np.float32)
        spaces = {"qpos": gym.spaces.Box(-np.inf, np.inf, (8,), np.float64),
                  "qvel": gym.spaces.Box(-np.inf, np.inf, (8,), np.float64),
                  "objects": gym.spaces.Box(-np.inf, np.inf, (17,), np.float64),
                  "instruction": gym.spaces.Text(200, charset=" abcdefghijklmnopqrstuvwxyz_")}
        if render_mode == "rgbd":
            for prefix in ("", "wrist_") if wrist else ("",):
                spaces[f"{prefix}rgb"] = gym.spaces.Box(0, 255, (self.height, self.width, 3), np.uint8)
                spaces[f"{prefix}depth"] = gym.spaces.Box(0, np.inf, (self.height, self.width), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        self._renderer = None
        m = self.model
        self._jnt = {n: m.joint(n) for n in ("cube_a", "cube_b")}
        self._geom = {n: m.geom(n).id for n in ("cube_a", "cube_b", "target")}
        self._target_mocap = m.body("target").mocapid[0]
        self._table, self._floor = m.geom("table").id, m.geom("floor").id
        self._mats = [m.material(f"dr_mat{i}").id for i in range(_N_TEXTURES)]
        self._light0 = (m.light_diffuse.copy(), m.light_pos.copy(), m.vis.headlight.diffuse.copy())
        self._steps = 0
        self._solved = False
        self.layout: _Layout | None = None
        self.neutral_action = np.r_[READY_JOINTS, 0.035]

    # --- state ----------------------------------------------------------------------------------
    def _obj_pose(self, name: str) -> np.ndarray:
        adr = self._jnt[name].qposadr[0]
        return self.data.qpos[adr:adr + 7].copy()

    def _set_obj(self, name: str, pos, yaw: float) -> None:
        j = self._jnt[name]
        self.data.qpos[j.qposadr[0]:j.qposadr[0] + 7] = np.r_[pos, _quat_yaw(yaw)]
        self.data.qvel[j.dofadr[0]:j.dofadr[0] + 6] = 0.0

    @property
    def target(self) -> np.ndarray:
        return self.data.mocap_pos[self._target_mocap].copy()

    @property
    def objects(self) -> np.ndarray:
        """``(17,)``: cube A position + quaternion, cube B position + quaternion, target position."""
        return np.concatenate([self._obj_pose("cube_a"), self._obj_pose("cube_b"), self.target])

    @property
    def tcp(self) -> np.ndarray:
        return self.data.site("tcp").xpos.copy()

    def is_success(self) -> bool:
        """Whether the task is solved in the current state (see the module docstring)."""
        a, b, t = self._obj_pose("cube_a")[:3], self._obj_pose("cube_b")[:3], self.target
        resting = a[2] < CUBE_HALF + 0.01
        if self.task_name == "pick_place":
            return bool(np.linalg.norm(a[:2] - t[:2]) < TARGET_RADIUS - 0.01 and resting
                        and self.data.qpos[6] > 0.025)  # placed and let go
        if self.task_name == "push":
            return bool(np.linalg.norm(a[:2] - t[:2]) < TARGET_RADIUS - 0.005 and resting)
        on_top = abs(a[2] - (b[2] + 2 * CUBE_HALF)) < 0.01 and np.linalg.norm(a[:2] - b[:2]) < 0.02
        return bool(on_top and b[2] < CUBE_HALF + 0.005 and self.data.qpos[6] > 0.025)

    # --- reset ----------------------------------------------------------------------------------
    def _sample_xy(self, rng, avoid: list[np.ndarray], min_dist: float, role: str | None = None) -> np.ndarray:
        radius, bearing_range = _RADIUS, _BEARING
        if self.workspace == "narrow" and role is not None:
            (r0, dr), (b0, db) = _NARROW[role]
            radius, bearing_range = (r0 - dr, r0 + dr), (b0 - db, b0 + db)
        for _ in range(200):
            r, bearing = rng.uniform(*radius), rng.uniform(*bearing_range)
            xy = r * np.array([np.cos(bearing), np.sin(bearing)])
            if all(np.linalg.norm(xy - o) > min_dist for o in avoid):
                return xy
        raise RuntimeError("could not place the objects apart; widen the workspace band")

    def _layout_from_unit(self, u, max_yaw: float, rng) -> tuple[np.ndarray, float, np.ndarray]:
        """``options["layout_u"]`` (5 numbers in [0, 1): cube radius, cube bearing, cube yaw, target radius, target
        bearing, each a fraction of its range) to the cube's xy and yaw and the target's xy. A target closer than
        0.1 m to the cube is drawn again at random (``rng``), as without strata."""
        u = np.asarray(u, dtype=np.float64)
        if u.shape != (5,) or not np.all((u >= 0) & (u <= 1)):
            raise ValueError(f"layout_u must be 5 numbers in [0, 1], got {u!r}")

        def place(ur, ub, role):
            radius, bearing = _RADIUS, _BEARING
            if self.workspace == "narrow":
                (r0, dr), (b0, db) = _NARROW[role]
                radius, bearing = (r0 - dr, r0 + dr), (b0 - db, b0 + db)
            r, b = radius[0] + ur * (radius[1] - radius[0]), bearing[0] + ub * (bearing[1] - bearing[0])
            return r * np.array([np.cos(b), np.sin(b)])

        xa = place(u[0], u[1], "cube")
        xt = place(u[3], u[4], "target")
        if np.linalg.norm(xt - xa) <= 0.1:
            xt = self._sample_xy(rng, [xa], 0.1, role="target")
        return xa, float(-max_yaw + u[2] * 2 * max_yaw), xt

    def _randomize_scene(self, rng) -> None:
        m = self.model
        diffuse, pos, head = self._light0
        m.light_diffuse[:] = diffuse * rng.uniform(0.5, 1.4, (len(diffuse), 1))
        m.light_pos[:] = pos + rng.uniform(-0.3, 0.3, pos.shape)
        m.vis.headlight.diffuse[:] = head * rng.uniform(0.6, 1.4)
        m.geom_matid[self._table] = self._mats[rng.integers(len(self._mats))]
        m.geom_matid[self._floor] = self._mats[rng.integers(len(self._mats))]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        mujoco.mj_resetData(self.model, self.data)
        if self.randomize:
            self._randomize_scene(rng)
        self.data.qpos[:6] = READY_JOINTS + rng.uniform(-0.02, 0.02, 6)
        self.data.qpos[6:8] = (0.035, -0.035)
        self.data.ctrl[:] = self.neutral_action
        names = list(COLORS)
        a, b, t = (names[i] for i in rng.permutation(len(names))[:3])
        for name, col in (("cube_a", a), ("cube_b", b), ("target", t)):
            self.model.geom_rgba[self._geom[name]] = COLORS[col]
        max_yaw = _NARROW["yaw"] if self.workspace == "narrow" else np.pi / 4
        strata = None if options is None else options.get("layout_u")
        if strata is None:
            xa = self._sample_xy(rng, [], 0, role="cube")
            xt = self._sample_xy(rng, [xa], 0.1, role="target")
            yaw = rng.uniform(-max_yaw, max_yaw)
        else:
            xa, yaw, xt = self._layout_from_unit(strata, max_yaw, rng)
        self._set_obj("cube_a", np.r_[xa, CUBE_HALF], yaw)
        self.data.mocap_pos[self._target_mocap] = np.r_[xt, 0.0]
        distractor = self.task_name == "stack" or (self.randomize and rng.random() < 0.5)
        if distractor:
            spacing = 0.07 if self.workspace == "narrow" else 0.1  # the narrow patches leave little room between
            xb = xt if self.task_name == "stack" else self._sample_xy(rng, [xa, xt], spacing)
            self._set_obj("cube_b", np.r_[xb, CUBE_HALF], rng.uniform(-np.pi / 4, np.pi / 4))
        else:
            self._set_obj("cube_b", _PARK, 0.0)
        if self.task_name == "stack":
            self.data.mocap_pos[self._target_mocap] = _PARK - np.array([0, 0.2, CUBE_HALF])  # no target disc
        self.layout = _Layout(a, b, t, _INSTRUCTIONS[self.task_name].format(a=a, b=b, t=t))
        mujoco.mj_forward(self.model, self.data)
        self._steps, self._solved = 0, False
        return self._obs(), self._info()

    # --- step -----------------------------------------------------------------------------------
    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.model.nu,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be {self.model.nu} finite position targets, got {np.shape(action)}")
        self.data.ctrl[:] = np.clip(a, self.model.actuator_ctrlrange[:, 0], self.model.actuator_ctrlrange[:, 1])
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        self._steps += 1
        solved_now = not self._solved and self.is_success()
        self._solved = self._solved or solved_now
        terminated = self._solved and self.terminate_on_success
        truncated = self._steps >= self.max_episode_steps
        return self._obs(), float(solved_now), bool(terminated), bool(truncated and not terminated), self._info()

    def _info(self) -> dict:
        return {"success": self._solved, "instruction": self.layout.instruction if self.layout else "",
                "task": self.task_name, "time": float(self.data.time)}

    def _images(self, camera: str) -> tuple[np.ndarray, np.ndarray]:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.height, self.width)
        r = self._renderer
        r.update_scene(self.data, camera=camera)
        rgb = r.render()
        r.enable_depth_rendering()
        depth = r.render().astype(np.float32)
        r.disable_depth_rendering()
        return rgb, depth

    def _obs(self) -> dict:
        obs = {"qpos": self.data.qpos[:8].copy(), "qvel": self.data.qvel[:8].copy(), "objects": self.objects,
               "instruction": self.layout.instruction if self.layout else ""}
        if self.render_mode == "rgbd":
            obs["rgb"], obs["depth"] = self._images(self.camera)
            if self.wrist:
                obs["wrist_rgb"], obs["wrist_depth"] = self._images("wrist")
        return obs

    def render(self):
        if self.render_mode not in ("rgb_array", "rgbd"):
            return None
        return self._images(self.camera)[0]

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


class ScriptedExpert:
    """Solves :class:`PiperManipEnv` tasks from the privileged object state.

    A list of tool waypoints (pointing straight down, fingers turned to the cube's yaw) with
    gripper commands is made at reset; the tool moves toward the current waypoint at
    ``speed`` m/s, each control step's joint targets come from inverse kinematics warm-started
    at the last ones, and a waypoint is done when the tool is within 5 mm (grasp and release
    waypoints also wait ``dwell`` seconds).

    Args:
        env: the environment (its ``unwrapped`` is used).
        failure: ``None`` for a competent expert, or one of ``"misgrasp"`` (grasps 3.5 cm
            beside the cube), ``"early_release"`` (opens halfway to the goal),
            ``"short"`` (stops 6 cm short of the goal), ``"random"`` (one of those).
        speed: tool speed, m/s.
        seed: draws the ``"random"`` failure.
    """

    FAILURES = ("misgrasp", "early_release", "short")

    def __init__(self, env, failure: str | None = None, speed: float = 0.25, dwell: float = 0.3, seed: int = 0):
        if failure not in (None, "random", *self.FAILURES):
            raise ValueError(f"unknown failure {failure!r}; choose None, 'random' or one of {self.FAILURES}")
        self.env = env.unwrapped
        self.failure_arg, self.speed, self.dwell = failure, float(speed), float(dwell)
        self.rng = np.random.default_rng(seed)
        self.failure = None
        self._plan: list[tuple[np.ndarray, float, float]] = []

    def reset(self) -> None:
        """Plan the waypoints for the episode the environment has just reset to."""
        e = self.env
        self.failure = self.rng.choice(self.FAILURES) if self.failure_arg == "random" else self.failure_arg
        a, b, t = e._obj_pose("cube_a"), e._obj_pose("cube_b"), e.target
        open_, closed = 0.035, 0.0
        hi, grasp_z = 0.085, CUBE_HALF
        goal = np.r_[t[:2], CUBE_HALF + 0.008] if e.task_name == "pick_place" else np.r_[b[:2], 3 * CUBE_HALF + 0.006]
        yaw = _yaw_of(a[3:]) % (np.pi / 2)
        # A cube is gripped across either pair of faces, and the two-finger gripper is the same turned half a turn:
        # four finger yaws grip it. The fingers keep their yaw from the grasp to the goal, so J6 turns by the
        # difference of the two points' bearings on the way (up to 69 degrees across the band). The expert grips
        # with the yaw that puts J6 nearest the middle of its range at the cube (within 45 degrees of it), which
        # leaves room for any carry; it used to take the yaw in [0, 90) degrees, which ran J6 past its limit on
        # the way across the band and missed 50 of 300 full-workspace goals.
        candidates = self._centred_yaws(a[:3], [yaw + k * np.pi / 2 for k in (0, -1, 1, -2)])
        points = [a[:3]] if e.task_name == "push" else [a[:3], goal]
        yaw = self._reachable_yaw(points, candidates)
        pa = a[:3].copy()
        if self.failure == "misgrasp":
            pa[:2] += 0.035 * np.array([np.cos(yaw), np.sin(yaw)])  # beside the cube, across the closing axis
        wp = []  # (tool position, finger target, dwell s, yaw)
        if e.task_name in ("pick_place", "stack"):
            wp += [(np.r_[pa[:2], hi], open_, 0.0), (np.r_[pa[:2], grasp_z], open_, 0.0),
                   (np.r_[pa[:2], grasp_z], closed, self.dwell), (np.r_[pa[:2], hi], closed, 0.0)]
            if self.failure == "early_release":
                mid = np.r_[(pa[:2] + goal[:2]) / 2, hi]
                wp += [(mid, closed, 0.0), (mid, open_, self.dwell), (np.r_[goal[:2], hi], open_, 0.0)]
            else:
                if self.failure == "short":
                    d = goal[:2] - pa[:2]
                    goal = np.r_[goal[:2] - 0.06 * d / max(np.linalg.norm(d), 1e-6), goal[2]]
                wp += [(np.r_[goal[:2], hi], closed, 0.0), (goal, closed, 0.0), (goal, open_, self.dwell),
                       (np.r_[goal[:2], hi], open_, 0.0)]
        else:  # push: from behind the cube, through to the target
            d = t[:2] - a[:2]
            d = d / max(np.linalg.norm(d), 1e-6)
            yaw = float(np.arctan2(d[1], d[0]))  # fingers across the pushing direction: a flat paddle
            yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2
            start = a[:2] - d * (CUBE_HALF + 0.03)
            stop = t[:2] - d * (CUBE_HALF + 0.008)
            yaw = self._reachable_yaw([np.r_[start, CUBE_HALF], np.r_[stop, CUBE_HALF]],
                                      [yaw, yaw - np.sign(yaw) * np.pi])
            if self.failure == "short":
                stop = stop - d * 0.06
            if self.failure == "misgrasp":  # push off-centre: the cube turns away
                n = np.array([-d[1], d[0]])
                start, stop = start + 0.025 * n, stop + 0.025 * n
            low = CUBE_HALF
            wp += [(np.r_[start, hi], closed, 0.0), (np.r_[start, low], closed, 0.0), (np.r_[stop, low], closed, 0.0),
                   (np.r_[stop, hi], closed, 0.0)]
        self._plan = [(p, g, w, yaw) for p, g, w in wp]
        self._i, self._waited = 0, 0.0
        self._q = e.data.qpos[:6].copy()
        self._cursor = e.tcp
        self._start = e.tcp

    def _hold(self, point, yaw: float) -> np.ndarray | None:
        """The arm's joints ``(6,)`` holding the tool at ``point`` (m) pointing down with the fingers at ``yaw``
        (rad), or None where it cannot (J6 spans only +-120 degrees)."""
        q0 = READY_JOINTS.copy()
        q0[5] = np.clip(READY_JOINTS[5] + yaw, -2.0, 2.0)
        try:
            return solve_ik(self.env.model, point, approach=[0, 0, -1], yaw=yaw, q0=q0, tol=2e-3, max_iter=100)
        except IKError:
            return None

    def _centred_yaws(self, point, candidates) -> list[float]:
        """``candidates`` (finger yaws, rad) ordered by how near the middle of J6's range the arm holds each at
        ``point`` pointing down (those it cannot hold last, in their given order)."""
        mid = float(self.env.model.jnt_range[5].mean())
        keyed = []
        for i, y in enumerate(candidates):
            q = self._hold(point, y)
            keyed.append((np.inf if q is None else abs(float(q[5]) - mid), i, float(y)))
        return [y for _, _, y in sorted(keyed)]

    def _reachable_yaw(self, points, candidates) -> float:
        """The first finger yaw of ``candidates`` (rad) the arm can hold pointing down at every one of ``points``
        (tool positions, m), else the first held at the most of them, earlier points first."""
        best, best_n = float(candidates[0]), -1
        for y in candidates:
            n = 0
            for point in points:
                if self._hold(point, y) is None:
                    break
                n += 1
            if n == len(points):
                return float(y)
            if n > best_n:
                best, best_n = float(y), n
        return best

    @property
    def done(self) -> bool:
        return self._i >= len(self._plan)

    def leg(self, ahead: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
        """A leg of the plan: ``(from, to, gripper target)``, tool positions in m (``from`` is the
        previous waypoint, or the tool's position at reset); the current one, or ``ahead`` later."""
        i = min(self._i + ahead, len(self._plan) - 1)
        start = self._plan[i - 1][0] if i > 0 else self._start
        return np.asarray(start, dtype=np.float64), np.asarray(self._plan[i][0], dtype=np.float64), \
            float(self._plan[i][1])

    def holding(self) -> bool:
        """Whether the task's cube is lifted between the fingers (above the table, under the tool)."""
        a = self.env._obj_pose("cube_a")[:3]
        return bool(a[2] > CUBE_HALF + 0.01 and np.linalg.norm(a[:2] - self.env.tcp[:2]) < 0.025)

    def replan(self) -> None:
        """Continue from the arm's actual state after another actor had it (issue 8). If that actor
        moved the task's cube away from where the plan grasps it, plan again from the objects'
        current poses: from the transport leg when the cube is already held in a pick-and-place or
        stack, else from the start. Otherwise the plan and its progress are kept."""
        planned = self._plan[1][0][:2] if len(self._plan) > 1 else None
        cube = self.env._obj_pose("cube_a")[:2]
        held = self.holding()
        if planned is not None and (np.linalg.norm(cube - planned) > 0.01 or held) and not (held and self._i >= 3):
            self.reset()
            if held and self.env.task_name in ("pick_place", "stack") and self.failure is None:
                self._i = 4  # above the goal, gripper closed
        self.sync()

    def sync(self, reach_m: float = 0.0) -> None:
        """Continue from the arm's actual state (tool position and joints) instead of the expert's own
        cursor: for taking over from another actor (HG-DAgger gating, issue 8). The plan's progress
        (which waypoint is next) is kept; it advances only when the real tool reaches a waypoint,
        or, with ``reach_m`` > 0 (m), comes within that distance of it: another actor that cuts a
        corner past a waypoint (no stop at the pre-grasp point, say) is still following the plan."""
        self._cursor = self.env.tcp.copy()
        self._q = self.env.data.qpos[:6].copy()
        while reach_m > 0 and not self.done and np.linalg.norm(self._cursor - self._plan[self._i][0]) < reach_m:
            self._i, self._waited = self._i + 1, 0.0

    def act(self) -> np.ndarray:
        """The action ``(7,)`` for the current state."""
        e = self.env
        if self.done:
            return np.r_[self._q, self._plan[-1][1] if self._plan else 0.035]
        target, grip, dwell, yaw = self._plan[self._i]
        step = self.speed * e.dt
        delta = target - self._cursor
        dist = float(np.linalg.norm(delta))
        self._cursor = target.copy() if dist <= step else self._cursor + delta * (step / dist)
        try:
            self._q = solve_ik(e.model, self._cursor, approach=[0, 0, -1], yaw=yaw, q0=self._q, tol=2e-3, max_iter=60)
        except IKError:
            pass  # keep the last reachable joint targets; the episode may fail, which is recorded
        if dist <= step and np.linalg.norm(e.tcp - target) < 0.008:
            self._waited += e.dt
            if self._waited >= dwell:
                self._i, self._waited = self._i + 1, 0.0
        elif dist <= step:
            self._waited += e.dt
            if self._waited > 1.0 + dwell:  # the arm cannot get closer (contact): move on
                self._i, self._waited = self._i + 1, 0.0
        return np.r_[self._q, grip]


gym.register(id="ws/PiperManip-v0", entry_point="ws_sim.piper_tasks:PiperManipEnv", max_episode_steps=None)
