"""Shared fixtures: a small oracle-MPPI dataset collected once per test session (real MuJoCo)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def hopper_env():
    from ws_sim.envs import make_env

    env = make_env("hopper")
    yield env
    env.close()


@pytest.fixture(scope="session")
def small_controller_config():
    from ws_mppi.config import ControllerConfig
    from ws_mppi.mppi import MPPIConfig

    return ControllerConfig(mppi=MPPIConfig(horizon=10, samples=32, temperature=0.1, noise_sigma=0.5),
                            termination_penalty=50.0)


@pytest.fixture(scope="session")
def small_datasets(hopper_env, small_controller_config):
    """(train, val) collected with oracle MPPI on Hopper: 3 + 1 episodes of at most 60 steps."""
    from ws_mppi.collect import CollectConfig, collect

    train, val, _ = collect(hopper_env, CollectConfig(train_episodes=2, full_episodes=1, val_episodes=1,
                                                      max_steps=60, seed=0),
                            small_controller_config, nthread=2)
    return train, val
