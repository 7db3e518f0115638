"""Scripted teachers for ManiSkill3 tasks, reading the privileged state (pure JAX, jittable).

Each controller maps ``obs["privileged"]`` (ManiSkill's flat ``state`` observation) to a
pd_ee_delta_pose action: a proportional move of the TCP toward a waypoint. Every controller is
Markov in the privileged state: it reads its phase off the state (where the TCP is relative to
the object, how far apart the fingers are, whether the object is lifted), with no memory.

PushCube-v1 and PullCube-v1 keep the gripper closed (a closed gripper is a flat pusher), no
rotation. The waypoints walk around the cube, not through it:

1. travel at a safe height to a point in line with the cube and the goal, on the far side of the
   cube from the goal;
2. descend there;
3. once low and in line, move the TCP to the goal, which carries the cube along.

PickCube-v1 and StackCube-v1 hover over the cube while turning the fingers square to its faces,
descend with the gripper open and close it at the cube centre; then PickCube carries the cube to
the goal and holds it there, and StackCube lifts it, carries it over the other cube, lowers it
onto it and lets go.

LiftPegUpright-v1 grasps the lying peg near one end with a weak grip, in which the peg can turn,
and swings that end up and over the other end, which stays on the table, until the peg stands.

RollBall-v1 turns the closed fingers' flat side toward the goal, gets behind the ball on its
line to the goal and strikes it at full speed.

``noise`` (std of Gaussian noise per action dimension, in action units, before the clip to
[-1, 1]) turns these near-perfect controllers into mediocre teachers, as a fine-tuned VLA is one.

Measure a teacher's success rate alone with ``python -m rpd_jax.pipeline.eval_teacher
--teacher=scripted_maniskill --tasks=PushCube-v1 --noise=0.5 --execution=first``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from rpd_jax.envs.base import Observation
from rpd_jax.errors import ConfigError
from rpd_jax.teachers.base import Teacher, TeacherOutput, noisy_samples

GRIPPER_CLOSED = -1.0  # ManiSkill's pd_ee_delta_pose convention: -1 closes, +1 opens
MAX_DELTA = 0.1  # metres of TCP motion that a position action of 1 asks for (pd_ee_delta_pose)
DEFAULT_NOISE = 0.75
# Noise per task for a mediocre teacher (succeeds sometimes, as the paper's fine-tuned VLAs
# did); the grasping controllers fail almost always at 0.75, so they get less.
TASK_NOISE = {
    "PushCube-v1": 0.75,
    "PullCube-v1": 0.75,
    "PickCube-v1": 0.25,
    "StackCube-v1": 0.25,
    "LiftPegUpright-v1": 0.25,
    "RollBall-v1": 0.5,
}
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


# ---------------------------------------------------------------------------------------------
# Grasping tasks. The phase is read off the state: where the TCP is relative to the object, how
# far the fingers are apart (qpos 7, 8) and, where the task gives it, ManiSkill's is_grasped.

GRIPPER_OPEN = 1.0
MAX_ROT = 0.1  # radians of rotation that a rotation action of 1 asks for (pd_ee_delta_pose)
_FINGERS = 7  # qpos index of the first finger joint (each finger: 0 closed .. 0.04 open)


@dataclasses.dataclass(frozen=True)
class PickLayout:
  """Start indices of a pick task's inputs in its privileged state [P] (poses are p xyz, q wxyz)."""

  tcp: int  # TCP pose (7)
  obj: int  # pose of the cube to pick (7)
  goal: int = -1  # PickCube: goal position (3)
  is_grasped: int = -1  # PickCube: ManiSkill's is_grasped flag (1)
  base: int = -1  # StackCube: pose of the cube to stack on (7)


# {agent: {qpos 9, qvel 9}, extra: {is_grasped 1, tcp_pose 7, goal_pos 3, obj_pose 7,
# tcp_to_obj_pos 3, obj_to_goal_pos 3}}: 42.
_PICK_LAYOUT = PickLayout(tcp=19, obj=29, goal=26, is_grasped=18)
# {agent: {qpos 9, qvel 9}, extra: {tcp_pose 7, cubeA_pose 7, cubeB_pose 7, tcp_to_cubeA_pos 3,
# tcp_to_cubeB_pos 3, cubeA_to_cubeB_pos 3}}: 48.
_STACK_LAYOUT = PickLayout(tcp=18, obj=25, base=32)
CUBE_HALF = 0.02  # PickCube's and StackCube's cubes
HOVER = 0.05  # height of the TCP above the cube centre before it descends to grasp
# The controllers below scale the caller's gain by this: at a gain of 2 (the teachers' default)
# the arm's lag makes the TCP overshoot and circle around grasp and placing points.
FINE_GAIN = 0.5


def _yaw(q: jax.Array) -> jax.Array:
  """Rotation about z of a quaternion wxyz [B, 4] that only rotates about z (a cube on a table)."""
  return 2.0 * jnp.arctan2(q[:, 3], q[:, 0])


def _closing_yaw(q: jax.Array) -> jax.Array:
  """World yaw of the TCP's y axis (the direction the fingers close along), q wxyz [B, 4]."""
  w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
  return jnp.arctan2(1.0 - 2.0 * (x * x + z * z), 2.0 * (x * y - w * z))


def _wrap(angle: jax.Array, period: float) -> jax.Array:
  """``angle`` modulo ``period``, in [-period / 2, period / 2)."""
  return (angle + period / 2) % period - period / 2


def _move(tcp: jax.Array, target: jax.Array, gain: jax.Array) -> jax.Array:
  """Proportional TCP position action [B, 3] toward ``target``, in world axes.

  The world's axes are the robot base's in every task here but RollBall (see ``roll_ball``).
  """
  return jnp.clip(gain * (target - tcp) / MAX_DELTA, -1.0, 1.0)


def _action(dxyz: jax.Array, yaw_rate: jax.Array, gripper: jax.Array) -> jax.Array:
  """pd_ee_delta_pose action [B, 7]: position, rotation about the TCP's z axis, gripper."""
  zeros = jnp.zeros_like(yaw_rate)
  return jnp.concatenate(
      [dxyz, zeros[:, None], zeros[:, None], yaw_rate[:, None], gripper[:, None]], axis=-1)


def _grasp(privileged: jax.Array, layout: PickLayout,
           gain: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(dxyz [B, 3], yaw rate [B], gripper [B]) that grasp the cube at ``layout.obj``.

  Hovers above the cube while turning the fingers square to its faces, descends with the
  gripper open, and closes it once the TCP is at the cube centre.
  """
  tcp = privileged[:, layout.tcp:layout.tcp + 3]
  tcp_q = privileged[:, layout.tcp + 3:layout.tcp + 7]
  obj = privileged[:, layout.obj:layout.obj + 3]
  obj_q = privileged[:, layout.obj + 3:layout.obj + 7]
  yaw_err = _wrap(_yaw(obj_q) - _closing_yaw(tcp_q), jnp.pi / 2)
  # The TCP's z axis points down, so a positive rotation action turns the world yaw negative.
  yaw_rate = jnp.clip(-gain * yaw_err / MAX_ROT, -1.0, 1.0)
  xy_err = jnp.hypot(tcp[:, 0] - obj[:, 0], tcp[:, 1] - obj[:, 1])
  above = (xy_err < 0.01) & (jnp.abs(yaw_err) < 0.2)
  at_cube = (xy_err < 0.015) & (jnp.abs(tcp[:, 2] - obj[:, 2]) < 0.01)
  target = obj + jnp.where(above[:, None], 0.0, jnp.array([0.0, 0.0, HOVER]))
  gripper = jnp.where(at_cube, GRIPPER_CLOSED, GRIPPER_OPEN)
  return _move(tcp, target, gain), yaw_rate, gripper


def pick_cube(privileged: jax.Array, gain: jax.Array) -> jax.Array:
  """PickCube-v1: grasp the cube, then carry it to the goal position (in the air) and hold it."""
  layout = _PICK_LAYOUT
  gain = FINE_GAIN * gain
  dxyz, yaw_rate, gripper = _grasp(privileged, layout, gain)
  tcp = privileged[:, layout.tcp:layout.tcp + 3]
  obj = privileged[:, layout.obj:layout.obj + 3]
  goal = privileged[:, layout.goal:layout.goal + 3]
  grasped = privileged[:, layout.is_grasped] > 0.5
  # Carry: move the cube centre (held a little off the TCP) onto the goal.
  carry = _move(tcp, goal + (tcp - obj), gain)
  return _action(jnp.where(grasped[:, None], carry, dxyz),
                 jnp.where(grasped, 0.0, yaw_rate),
                 jnp.where(grasped, GRIPPER_CLOSED, gripper))


def stack_cube(privileged: jax.Array, gain: jax.Array) -> jax.Array:
  """StackCube-v1: grasp cube A, lift it, carry it over cube B, lower it onto B and let go."""
  layout = _STACK_LAYOUT
  gain = FINE_GAIN * gain
  dxyz, yaw_rate, gripper = _grasp(privileged, layout, gain)
  tcp = privileged[:, layout.tcp:layout.tcp + 3]
  obj = privileged[:, layout.obj:layout.obj + 3]
  base = privileged[:, layout.base:layout.base + 3]
  width = privileged[:, _FINGERS] + privileged[:, _FINGERS + 1]
  # Fingers closed on the cube (a cube edge apart) with the cube between them.
  holding = ((jnp.abs(width - 2 * CUBE_HALF) < 0.01)
             & (jnp.linalg.norm(tcp - obj, axis=-1) < 0.02))
  xy_off = jnp.hypot(obj[:, 0] - base[:, 0], obj[:, 1] - base[:, 1])
  stacked_z = base[:, 2] + 2 * CUBE_HALF
  on_base = (xy_off < 0.01) & (jnp.abs(obj[:, 2] - stacked_z) < 0.004)
  over = xy_off < 0.008
  lifted = obj[:, 2] > stacked_z + 0.015
  # Holding: lift straight up, then carry at a safe height over B, then lower onto it.
  cube_xy = jnp.where((lifted | over)[:, None], base[:, :2], obj[:, :2])
  cube_z = jnp.where(over, stacked_z + 0.002, stacked_z + 0.03)
  cube_target = jnp.concatenate([cube_xy, cube_z[:, None]], axis=-1)
  carry = _move(tcp, cube_target + (tcp - obj), gain)
  # Placed: let go and rise.
  leave = _move(tcp, obj + jnp.array([0.0, 0.0, HOVER]), gain)
  dxyz = jnp.where(on_base[:, None], leave, jnp.where(holding[:, None], carry, dxyz))
  gripper = jnp.where(on_base, GRIPPER_OPEN, jnp.where(holding, GRIPPER_CLOSED, gripper))
  yaw_rate = jnp.where(on_base | holding, 0.0, yaw_rate)
  return _action(dxyz, yaw_rate, gripper)


# ---------------------------------------------------------------------------------------------
# RollBall: the robot stands at (-0.1, 1.0) facing -y (base rotated -90 degrees about z), so
# the position action is in a frame turned from the world's.


@dataclasses.dataclass(frozen=True)
class BallLayout:
  """Start indices of RollBall's inputs in its privileged state [P]."""

  tcp: int  # TCP position xyz
  goal: int  # goal position xyz
  ball: int  # ball position xyz


# {agent: {qpos 9, qvel 9}, extra: {tcp_pose 7, goal_pos 3, ball_pose 7, ball_vel 3,
# tcp_to_ball_pos 3, ball_to_goal_pos 3}}: 44.
_BALL_LAYOUT = BallLayout(tcp=18, goal=25, ball=28)
BALL_RADIUS = 0.035
BALL_STANDOFF = 0.05  # gap between the ball and the point where the TCP descends behind it
BALL_TRAVEL_Z = 0.09  # TCP height for moving over the ball (its top is at 0.07)


def roll_ball(privileged: jax.Array, gain: jax.Array) -> jax.Array:
  """RollBall-v1: get behind the ball on its line to the goal and strike it toward the goal.

  The closed fingers hit the ball with their flat side, which sends it along the side's normal
  whatever the direction of the blow: the TCP turns the side square to the line to the goal.
  """
  layout = _BALL_LAYOUT
  tcp = privileged[:, layout.tcp:layout.tcp + 3]
  tcp_q = privileged[:, layout.tcp + 3:layout.tcp + 7]
  goal = privileged[:, layout.goal:layout.goal + 2]
  ball = privileged[:, layout.ball:layout.ball + 3]
  d = goal - ball[:, :2]
  d = d / jnp.maximum(jnp.linalg.norm(d, axis=-1, keepdims=True), 1e-6)
  # Fingers closing across the line to the goal: their flat side faces along it.
  yaw_err = _wrap(jnp.arctan2(d[:, 1], d[:, 0]) + jnp.pi / 2 - _closing_yaw(tcp_q), jnp.pi)
  yaw_rate = jnp.clip(-gain * yaw_err / MAX_ROT, -1.0, 1.0)
  rel = tcp[:, :2] - ball[:, :2]
  along = jnp.sum(rel * d, axis=-1)  # negative: the TCP is behind the ball
  lateral = jnp.abs(rel[:, 0] * d[:, 1] - rel[:, 1] * d[:, 0])
  behind = along < -(BALL_RADIUS + 0.03)  # far enough behind to come down anywhere
  low = tcp[:, 2] < BALL_RADIUS + 0.02
  in_line = (lateral < 0.01) & (along < -BALL_RADIUS) & low & (jnp.abs(yaw_err) < 0.1)
  start = ball[:, :2] - d * (BALL_RADIUS + BALL_STANDOFF)
  approach_z = jnp.where(behind, BALL_RADIUS, BALL_TRAVEL_Z)
  approach = jnp.concatenate([start, approach_z[:, None]], axis=-1)
  # Strike: full speed through the ball centre, along the line to the goal (scaled so that the
  # largest component is 1, which keeps the direction that a per-axis clip would bend).
  strike = jnp.concatenate(
      [ball[:, :2] + 0.1 * d, jnp.full_like(approach_z[:, None], BALL_RADIUS)], axis=-1) - tcp
  strike = strike / jnp.maximum(jnp.max(jnp.abs(strike), axis=-1, keepdims=True), 1e-6)
  # The approach uses the fine gain, as the grasping controllers do; the fingers turn with the
  # caller's gain.
  world = jnp.where(in_line[:, None], strike, _move(tcp, approach, FINE_GAIN * gain))
  # World -> robot base frame (base x is world -y, base y is world x).
  dxyz = jnp.stack([-world[:, 1], world[:, 0], world[:, 2]], axis=-1)
  batch = privileged.shape[0]
  return _action(dxyz, yaw_rate, jnp.full((batch,), GRIPPER_CLOSED))


# ---------------------------------------------------------------------------------------------
# LiftPegUpright: the peg lies along x; the controller grasps it near one end with a weak grip,
# so that the peg can turn between the fingers, and swings that end up over the other end, which
# stays on the table, until the peg stands.


@dataclasses.dataclass(frozen=True)
class PegLayout:
  """Start indices of LiftPegUpright's inputs in its privileged state [P]."""

  tcp: int  # TCP pose (7)
  peg: int  # peg pose (7)


# {agent: {qpos 9, qvel 9}, extra: {tcp_pose 7, obj_pose 7}}: 32.
_PEG_LAYOUT = PegLayout(tcp=18, peg=25)
PEG_HALF_LENGTH = 0.12
PEG_HALF_WIDTH = 0.025
PEG_GRASP = 0.09  # distance of the grasp point from the peg centre, along the peg
PEG_LEAD = 0.5  # radians by which the TCP's target leads the peg's elevation
# A weak grip: gripper action 0.05 sets each finger's target to about 0.016 m (the action maps
# [-1, 1] to [-0.01, 0.04]) while the peg's faces are 0.025 m from its centre. Measured at noise
# 0: -0.1 and 0.15 succeed far less often (the peg does not turn, or slips out).
PEG_GRIP = 0.05


def _quat_x_axis(q: jax.Array) -> jax.Array:
  """World direction [B, 3] of the local x axis of quaternion wxyz [B, 4]."""
  w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
  return jnp.stack([1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y + w * z), 2.0 * (x * z - w * y)],
                   axis=-1)


def lift_peg_upright(privileged: jax.Array, gain: jax.Array) -> jax.Array:
  """LiftPegUpright-v1: grasp the peg near one end and swing that end up until the peg stands."""
  layout = _PEG_LAYOUT
  gain = FINE_GAIN * gain
  tcp = privileged[:, layout.tcp:layout.tcp + 3]
  tcp_q = privileged[:, layout.tcp + 3:layout.tcp + 7]
  peg = privileged[:, layout.peg:layout.peg + 3]
  axis = _quat_x_axis(privileged[:, layout.peg + 3:layout.peg + 7])
  # The raised end: the higher one, or on the table the one at larger x.
  up = jnp.where((10.0 * axis[:, 2] + axis[:, 0] >= 0)[:, None], axis, -axis)
  grasp = peg + PEG_GRASP * up
  bottom = peg - PEG_HALF_LENGTH * up
  elevation = jnp.arcsin(jnp.clip(up[:, 2], -1.0, 1.0))
  horiz = up[:, :2] / jnp.maximum(jnp.linalg.norm(up[:, :2], axis=-1, keepdims=True), 1e-3)
  # Approach: fingers across the peg, hover over the grasp point, descend, close.
  yaw_err = _wrap(jnp.arctan2(horiz[:, 1], horiz[:, 0]) + jnp.pi / 2 - _closing_yaw(tcp_q),
                  jnp.pi)
  yaw_rate = jnp.clip(-gain * yaw_err / MAX_ROT, -1.0, 1.0)
  xy_err = jnp.hypot(tcp[:, 0] - grasp[:, 0], tcp[:, 1] - grasp[:, 1])
  above = (xy_err < 0.01) & (jnp.abs(yaw_err) < 0.2)
  at_grasp = (xy_err < 0.015) & (jnp.abs(tcp[:, 2] - grasp[:, 2]) < 0.01)
  reach = _move(tcp, grasp + jnp.where(above[:, None], 0.0, jnp.array([0.0, 0.0, HOVER])), gain)
  width = privileged[:, _FINGERS] + privileged[:, _FINGERS + 1]
  holding = ((jnp.abs(width - 2 * PEG_HALF_WIDTH) < 0.01)
             & (jnp.linalg.norm(tcp - grasp, axis=-1) < 0.03))
  # Swing: the TCP's target is the grasp point of the peg turned further up about its bottom
  # end, with that end on the table (z = 0); the peg may slide in the weak grip, so the grasp
  # point's distance from the bottom end is measured, not assumed.
  lead = jnp.minimum(elevation + PEG_LEAD, jnp.pi / 2)
  arm = jnp.clip(jnp.sum((tcp - bottom) * up, axis=-1), 0.1, 2 * PEG_HALF_LENGTH)
  swing_target = jnp.concatenate(
      [bottom[:, :2] + (arm * jnp.cos(lead))[:, None] * horiz, (arm * jnp.sin(lead))[:, None]],
      axis=-1)
  swing = _move(tcp, swing_target, gain)
  dxyz = jnp.where(holding[:, None], swing, reach)
  gripper = jnp.where(holding | at_grasp, PEG_GRIP, GRIPPER_OPEN)
  return _action(dxyz, jnp.where(holding, 0.0, yaw_rate), gripper)


CONTROLLERS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "PushCube-v1": push_cube,
    "PullCube-v1": pull_cube,
    "PickCube-v1": pick_cube,
    "StackCube-v1": stack_cube,
    "RollBall-v1": roll_ball,
    "LiftPegUpright-v1": lift_peg_upright,
}


def make_teacher(task: str, noise: Optional[float] = None, gain: float = 2.0) -> Teacher:
  """The scripted teacher of one ManiSkill task (``config.teacher.kwargs``).

  Args:
    task: the ManiSkill task id, e.g. "PushCube-v1" (one of CONTROLLERS).
    noise: std of the Gaussian action noise, in action units (module doc); None: the task's
      TASK_NOISE.
    gain: proportional gain of the TCP position control (1: move the full distance to the
      waypoint in one step, as far as the 0.1 m action limit allows).
  """
  if task not in CONTROLLERS:
    raise ConfigError(
        f"config.teacher.kwargs.task={task!r} has no scripted ManiSkill teacher; scripted "
        f"teachers exist for {', '.join(CONTROLLERS)} (others: teacher.name='octo', or the "
        f"'ppo' variant)")
  if noise is None:
    noise = TASK_NOISE.get(task, DEFAULT_NOISE)
  if noise < 0:
    raise ConfigError(f"config.teacher.kwargs.noise={noise} is a standard deviation; use >= 0")
  controller = CONTROLLERS[task]

  def apply_fn(params, obs: Observation, prev_obs: Observation, is_first: jax.Array,
               key: jax.Array, num_samples: int) -> TeacherOutput:
    del prev_obs, is_first  # the controllers are Markov in the privileged state
    mean = controller(obs["privileged"], params["gain"])
    return noisy_samples(mean, params["noise"], key, num_samples)

  params = {"noise": jnp.asarray(noise, jnp.float32), "gain": jnp.asarray(gain, jnp.float32)}
  # Its noise (TASK_NOISE) and measured success (records.SCRIPTED_EVALUATIONS) come from the
  # CPU simulation.
  return Teacher(params=params, apply_fn=apply_fn, name=f"scripted_{task}",
                 made_on="physx_cpu")
