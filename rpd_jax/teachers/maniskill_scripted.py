"""Scripted teachers for ManiSkill3 tasks, reading the privileged state (pure JAX, jittable).

Each controller maps ``obs["privileged"]`` (ManiSkill's flat ``state`` observation) to a
pd_ee_delta_pose action: a proportional move of the TCP toward a waypoint, no rotation, gripper
closed (a closed gripper is a flat pusher). The waypoints walk around the cube, not through it:

1. travel at a safe height to a point in line with the cube and the goal, on the far side of the
   cube from the goal;
2. descend there;
3. once low and in line, move the TCP to the goal, which carries the cube along.

``noise`` (std of Gaussian noise per action dimension, in action units, before the clip to
[-1, 1]) turns these near-perfect controllers into mediocre teachers, as a fine-tuned VLA is one.

Run ``python -m rpd_jax.teachers.maniskill_scripted --env_id=PushCube-v1 --noise=0.5`` to measure
a teacher's success rate alone.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from absl import app
from absl import flags

from rpd_jax.envs.base import Observation
from rpd_jax.teachers.base import Teacher, TeacherOutput, noisy_samples

GRIPPER_CLOSED = -1.0  # ManiSkill's pd_ee_delta_pose convention: -1 closes, +1 opens
MAX_DELTA = 0.1  # metres of TCP motion that a position action of 1 asks for (pd_ee_delta_pose)
DEFAULT_NOISE = 0.75


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the controller's inputs sit in a task's privileged state [P] (start indices)."""

  tcp: int  # TCP position xyz (the first 3 of tcp_pose)
  goal: int  # goal position xyz
  obj: int  # cube position xyz (the first 3 of obj_pose)
  half_size: float  # the cube's half edge length, metres


# ManiSkill flattens {agent: {qpos 9, qvel 9}, extra: {tcp_pose 7, goal_pos 3, obj_pose 7}}.
_CUBE_LAYOUT = Layout(tcp=18, goal=25, obj=28, half_size=0.02)

TRAVEL_Z = 0.1  # TCP height for moving around the cube (its top is at 0.04)
CONTACT_Z = 0.025  # TCP height for pushing/pulling: the fingertips just clear the table
STANDOFF = 0.04  # gap between the cube face and the point where the TCP descends


def _line_controller(privileged: jax.Array, layout: Layout, sign: float,
                     gain: jax.Array) -> jax.Array:
  """Action float32 [B, 7] that moves the cube along x toward the goal.

  ``sign`` = +1 pushes (goal at larger x than the cube: the TCP works from behind, smaller x),
  -1 pulls (goal at smaller x: the TCP works from the far side, larger x).
  """
  tcp = privileged[:, layout.tcp:layout.tcp + 3]
  goal = privileged[:, layout.goal:layout.goal + 3]
  obj = privileged[:, layout.obj:layout.obj + 3]
  half = layout.half_size
  # Descent point: on the cube's far side from the goal, at the cube's y.
  start_x = obj[:, 0] - sign * (half + STANDOFF)
  behind = sign * (obj[:, 0] - tcp[:, 0]) > half  # the TCP is on the working side of the cube
  low = tcp[:, 2] < CONTACT_Z + 0.015
  in_line = (jnp.abs(tcp[:, 1] - obj[:, 1]) < 0.015) & behind & low
  near_start = jnp.hypot(tcp[:, 0] - start_x, tcp[:, 1] - obj[:, 1]) < 0.02
  # Only a TCP beside, over or beyond the cube has to go around it at a height; one on the
  # working side slides straight (low) to the descent point. Fewer switches between far-apart
  # waypoints keep the teacher's action a nearly continuous function of the state, which a
  # student's mean can follow without stalling where the waypoints flip.
  approach = jnp.stack(
      [start_x, obj[:, 1], jnp.where(near_start | (behind & low), CONTACT_Z, TRAVEL_Z)],
      axis=-1)
  # Moving the TCP to the goal leaves the cube centre about one half edge past it: well inside
  # the goal region (radius 0.1).
  carry = jnp.stack([goal[:, 0], goal[:, 1], jnp.full_like(goal[:, 0], CONTACT_Z)], axis=-1)
  target = jnp.where(in_line[:, None], carry, approach)
  dxyz = jnp.clip(gain * (target - tcp) / MAX_DELTA, -1.0, 1.0)
  batch = privileged.shape[0]
  return jnp.concatenate(
      [dxyz, jnp.zeros((batch, 3)), jnp.full((batch, 1), GRIPPER_CLOSED)], axis=-1)


def push_cube(privileged: jax.Array, gain: jax.Array) -> jax.Array:
  """PushCube-v1: push the cube +x onto the goal target (0.2 m ahead of it)."""
  return _line_controller(privileged, _CUBE_LAYOUT, 1.0, gain)


def pull_cube(privileged: jax.Array, gain: jax.Array) -> jax.Array:
  """PullCube-v1: pull the cube -x, toward the robot, onto the goal target."""
  return _line_controller(privileged, _CUBE_LAYOUT, -1.0, gain)


CONTROLLERS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "PushCube-v1": push_cube,
    "PullCube-v1": pull_cube,
}


def make_teacher(env_config: ml_collections.ConfigDict, chunk_size: int = 4096,
                 noise: float = DEFAULT_NOISE, gain: float = 2.0) -> Teacher:
  """The scripted teacher of ``env_config.kwargs.env_id``.

  Args:
    env_config: the run's ``config.env`` (name "maniskill").
    chunk_size: observations per teacher call inside the update.
    noise: std of the Gaussian action noise, in action units (module doc).
    gain: proportional gain of the TCP position control (1: move the full distance to the
      waypoint in one step, as far as the 0.1 m action limit allows).
  """
  env_id = env_config.kwargs.get("env_id", "PushCube-v1")
  if env_config.name != "maniskill" or env_id not in CONTROLLERS:
    raise ValueError(
        f"no scripted ManiSkill teacher for env {env_config.name!r} / {env_id!r}; scripted "
        f"teachers exist for {', '.join(CONTROLLERS)} (others: teacher.name='octo', or the "
        f"'ppo' variant)")
  if noise < 0:
    raise ValueError(f"scripted teacher noise={noise} is a standard deviation; use >= 0")
  controller = CONTROLLERS[env_id]

  def apply_fn(params, obs: Observation, prev_obs: Observation, is_first: jax.Array,
               key: jax.Array, num_samples: int) -> TeacherOutput:
    del prev_obs, is_first  # the controllers are Markov in the privileged state
    mean = controller(obs["privileged"], params["gain"])
    return noisy_samples(mean, params["noise"], key, num_samples)

  params = {"noise": jnp.asarray(noise, jnp.float32), "gain": jnp.asarray(gain, jnp.float32)}
  return Teacher(params=params, apply_fn=apply_fn, name=f"scripted_{env_id}",
                 chunk_size=chunk_size)


def main(argv):
  del argv
  from rpd_jax import evaluate  # pylint: disable=g-import-not-at-top
  from rpd_jax.envs import maniskill  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  env_config = ml_collections.ConfigDict({"name": "maniskill", "kwargs": {"env_id": f.env_id}})
  teacher = make_teacher(env_config, noise=f.noise, gain=f.gain)
  act = jax.jit(lambda obs, prev_obs, is_first, key: teacher.apply_fn(
      teacher.params, obs, prev_obs, is_first, key, 0).action)
  env = maniskill.ManiSkillVecEnv(num_envs=f.num_envs, seed=f.seed, reward_mode="sparse",
                                  env_id=f.env_id, sim_backend="physx_cpu")
  try:
    result = evaluate.evaluate(env, act, f.episodes, seed=f.seed, key=jax.random.key(f.seed))
  finally:
    env.close()
  print(f"{f.env_id} noise={f.noise} gain={f.gain}: success "
        f"{result['eval/success_rate']:.3f} over {f.episodes} episodes, mean length "
        f"{result['eval/episode_length']:.1f}")


if __name__ == "__main__":
  flags.DEFINE_string("env_id", "PushCube-v1", "task with a scripted controller")
  flags.DEFINE_float("noise", DEFAULT_NOISE, "std of the action noise")
  flags.DEFINE_float("gain", 2.0, "proportional gain of the TCP control")
  flags.DEFINE_integer("episodes", 32, "episodes to measure (a multiple of num_envs)")
  flags.DEFINE_integer("num_envs", 2, "parallel CPU envs")
  flags.DEFINE_integer("seed", 0, "seed of the first evaluation round")
  app.run(main)
