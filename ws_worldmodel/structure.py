"""Knowledge-encoded structure: kinematic trees, LCRS traversal ranks and object ids.

Seed 003, section 4.2 and Appendix B. Each articulated object of a MuJoCo scene is a rooted
kinematic tree of bodies. It is turned into a binary tree by the left-child-right-sibling
(LCRS) transformation: a body's *left* child is its first child body, its *right* child is
its next sibling. Every body then gets three ranks from walks of that binary tree, and an
object id (the robot is object 0; other objects are numbered by increasing distance from
the robot's root body). The tuple ``(object, pre, in, post)`` identifies a body, and every
state or action channel inherits the tuple of the body its joint moves.

Definitions adopted (standard binary-tree traversals of the LCRS tree, children in MJCF
order):

* pre-order: node, left subtree, right subtree;
* in-order: left subtree, node, right subtree;
* post-order: left subtree, right subtree, node.

Against the seed's Walker example (Table 6): the pre-order column is exactly the LCRS
pre-order above (torso 0, right thigh 1, ..., left foot 6). Its in-order and post-order
columns are *not* the standard traversals of that tree: standard in-order gives
``right_foot 0, right_leg 1, right_thigh 2, left_foot 3, left_leg 4, left_thigh 5,
torso 6`` and standard post-order ``right_foot 0, right_leg 1, left_foot 2, left_leg 3,
left_thigh 4, right_thigh 5, torso 6``, while the table lists (in, post) = torso (6, 6),
right_thigh (3, 5), right_leg (5, 4), right_foot (4, 3), left_thigh (2, 2), left_leg (1, 1),
left_foot (0, 0); its post column equals ``6 - pre``. We keep the standard definitions,
which are well defined for every tree; ``test_structure.py`` pins both facts.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import mujoco
import numpy as np

from ws_sim.channels import Channel

__all__ = ["BodyIndex", "KinematicStructure", "lcrs_ranks", "structure_from_model", "channel_structure"]


@dataclasses.dataclass(frozen=True)
class BodyIndex:
    """The structural index tuple of one body (seed 003, eq. 3)."""

    object_id: int
    pre: int
    inorder: int
    post: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.object_id, self.pre, self.inorder, self.post)


def lcrs_ranks(children: dict[int, list[int]], root: int) -> dict[int, tuple[int, int, int]]:
    """Pre-, in- and post-order ranks of every node of a rooted tree after LCRS conversion.

    Args:
        children: node -> ordered list of child nodes (the original, n-ary tree).
        root: the root node.

    Returns:
        node -> ``(pre, in, post)``, each a permutation of ``0 .. n-1``.
    """
    left = {n: (c[0] if c else None) for n, c in children.items()}
    right: dict[int, int | None] = {}
    for n, c in children.items():
        for a, b in zip(c, c[1:] + [None]):
            right[a] = b
    right[root] = None  # one tree per object: the root has no sibling
    pre: dict[int, int] = {}
    ino: dict[int, int] = {}
    post: dict[int, int] = {}
    # iterative walks, so deep chains (swimmer15, say) stay clear of the recursion limit.
    # pre- and in-order: visit (0) = pre rank, then left; after left (1) = in rank, then right
    stack: list[tuple[int, int]] = [(root, 0)]
    while stack:
        node, phase = stack.pop()
        if phase == 0:
            pre[node] = len(pre)
            stack.append((node, 1))
            if left.get(node) is not None:
                stack.append((left[node], 0))
        else:
            ino[node] = len(ino)
            if right.get(node) is not None:
                stack.append((right[node], 0))
    # post-order: a node after both of its subtrees
    stack2: list[tuple[int, bool]] = [(root, False)]
    while stack2:
        node, done = stack2.pop()
        if done:
            post[node] = len(post)
            continue
        stack2.append((node, True))
        if right.get(node) is not None:
            stack2.append((right[node], False))
        if left.get(node) is not None:
            stack2.append((left[node], False))
    return {n: (pre[n], ino[n], post[n]) for n in pre}


@dataclasses.dataclass
class KinematicStructure:
    """Structural indices of every body of a MuJoCo model.

    Attributes:
        bodies: body name -> :class:`BodyIndex` (the world body is absent).
        objects: per object id, the names of its bodies in pre-order.
    """

    bodies: dict[str, BodyIndex]
    objects: list[list[str]]

    def index_of(self, body: str) -> BodyIndex:
        """The index of a body; the world body (static) maps to object -1 with ranks 0.

        Raises:
            KeyError: naming an unknown body.
        """
        if body == "world":
            return BodyIndex(-1, 0, 0, 0)
        try:
            return self.bodies[body]
        except KeyError:
            raise KeyError(f"body {body!r} is not in the kinematic structure "
                           f"(bodies: {sorted(self.bodies)})") from None


def structure_from_model(model: mujoco.MjModel, robot_root: str | None = None) -> KinematicStructure:
    """Read the kinematic trees of a MuJoCo model (seed 003, Appendix B, steps 1-2).

    Every child of the world body roots one articulated object. The robot (object 0) is
    ``robot_root`` if given, else the object whose subtree drives the most actuators (ties:
    the first in MJCF order). The other objects are numbered by increasing Euclidean
    distance of their root body from the robot's root body at the model's reference pose.

    Raises:
        KeyError: ``robot_root`` names no child of the world body.
        ValueError: the model has no body besides the world.
    """
    parent = model.body_parentid
    nb = model.nbody
    names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, b) or f"body{b}" for b in range(nb)]
    children: dict[int, list[int]] = {b: [] for b in range(nb)}
    for b in range(1, nb):
        children[int(parent[b])].append(b)
    roots = children[0]
    if not roots:
        raise ValueError("the model has no body besides the world")
    # actuators per root subtree
    root_of = {}
    for b in range(1, nb):
        r = b
        while parent[r] != 0:
            r = int(parent[r])
        root_of[b] = r
    act_count = {r: 0 for r in roots}
    for a in range(model.nu):
        if int(model.actuator_trntype[a]) in (int(mujoco.mjtTrn.mjTRN_JOINT), int(mujoco.mjtTrn.mjTRN_JOINTINPARENT)):
            j = int(model.actuator_trnid[a, 0])
            act_count[root_of[int(model.jnt_bodyid[j])]] += 1
    if robot_root is not None:
        ids = [r for r in roots if names[r] == robot_root]
        if not ids:
            raise KeyError(f"robot root {robot_root!r} is not a child of the world body "
                           f"(candidates: {[names[r] for r in roots]})")
        robot = ids[0]
    else:
        robot = max(roots, key=lambda r: (act_count[r], -r))
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    others = sorted((r for r in roots if r != robot),
                    key=lambda r: (float(np.linalg.norm(data.xpos[r] - data.xpos[robot])), r))
    bodies: dict[str, BodyIndex] = {}
    objects: list[list[str]] = []
    for oid, root in enumerate([robot] + others):
        ranks = lcrs_ranks(children, root)
        order = sorted(ranks, key=lambda n: ranks[n][0])
        objects.append([names[n] for n in order])
        for n, (p, i, q) in ranks.items():
            bodies[names[n]] = BodyIndex(oid, p, i, q)
    return KinematicStructure(bodies, objects)


def channel_structure(structure: KinematicStructure, channels: Sequence[Channel]) -> np.ndarray:
    """The ``(object, pre, in, post)`` tuple of each channel's body, shape ``(C, 4)`` int64.

    Static channels (body ``"world"``) get object id -1; callers shift ids by one before
    embedding. Raises ``KeyError`` for a channel whose body the structure does not know.
    """
    return np.array([structure.index_of(c.body).as_tuple() for c in channels], dtype=np.int64).reshape(-1, 4)
