"""Knowledge-encoded structure (seed 003, sec. 4.2, App. B) on real MJCF models."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from ws_sim.envs import make_env
from ws_worldmodel.structure import channel_structure, lcrs_ranks, structure_from_model

WALKER_BODIES = ["torso", "thigh", "leg", "foot", "thigh_left", "leg_left", "foot_left"]


def test_walker_preorder_matches_table_6():
    env = make_env("walker2d")
    s = structure_from_model(env.model)
    pre = [s.bodies[b].pre for b in WALKER_BODIES]
    assert pre == [0, 1, 2, 3, 4, 5, 6]  # Table 6, pre-order column
    assert s.objects == [WALKER_BODIES]
    assert {s.bodies[b].object_id for b in WALKER_BODIES} == {0}


def test_walker_in_and_post_order_are_the_standard_lcrs_traversals():
    """Documented deviation: Table 6's in/post columns are not standard traversals."""
    env = make_env("walker2d")
    s = structure_from_model(env.model)
    ino = [s.bodies[b].inorder for b in WALKER_BODIES]
    post = [s.bodies[b].post for b in WALKER_BODIES]
    assert ino == [6, 2, 1, 0, 5, 4, 3]
    assert post == [6, 5, 1, 0, 4, 3, 2]
    table6_in, table6_post = [6, 3, 5, 4, 2, 1, 0], [6, 5, 4, 3, 2, 1, 0]
    assert ino != table6_in and post != table6_post
    assert table6_post == [6 - p for p in range(7)]  # the table's post column is reversed pre-order


def test_lcrs_ranks_are_permutations_on_a_deep_chain():
    children = {i: [i + 1] for i in range(2000)}
    children[2000] = []
    r = lcrs_ranks(children, 0)
    assert r[0] == (0, 2000, 2000) and r[2000] == (2000, 0, 0)
    for k in range(3):
        assert sorted(v[k] for v in r.values()) == list(range(2001))


def test_objects_ordered_by_distance_from_the_robot():
    xml = """
    <mujoco><worldbody>
      <body name="far_box" pos="5 0 0"><freejoint/><geom size=".1 .1 .1" type="box"/></body>
      <body name="arm" pos="0 0 0"><joint name="j0" type="hinge"/><geom size=".1" type="sphere"/>
        <body name="link"><joint name="j1" type="hinge"/><geom size=".1" type="sphere"/></body></body>
      <body name="near_ball" pos="1 0 0"><freejoint/><geom size=".1" type="sphere"/></body>
    </worldbody>
    <actuator><motor joint="j0"/><motor joint="j1"/></actuator></mujoco>"""
    m = mujoco.MjModel.from_xml_string(xml)
    s = structure_from_model(m)
    assert s.objects == [["arm", "link"], ["near_ball"], ["far_box"]]
    assert s.bodies["link"].as_tuple() == (0, 1, 0, 0)
    with pytest.raises(KeyError, match="robot root 'nope'"):
        structure_from_model(m, robot_root="nope")


def test_every_hopper_channel_maps_to_its_body():
    env = make_env("hopper")
    s = structure_from_model(env.model)
    idx = channel_structure(s, env.state_channels + env.action_channels)
    assert idx.shape == (15, 4)
    names = [c.name for c in env.state_channels + env.action_channels]
    np.testing.assert_array_equal(idx[names.index("qpos/rootz")], [0, 0, 3, 3])  # torso: root of a chain
    np.testing.assert_array_equal(idx[names.index("qvel/foot_joint")], idx[names.index("act/foot_joint")])
    np.testing.assert_array_equal(idx[names.index("qpos/foot_joint")], [0, 3, 0, 0])
    with pytest.raises(KeyError, match="body 'nope'"):
        s.index_of("nope")
