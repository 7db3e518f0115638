"""The eight ManiSkill3 tasks of the RPD paper, with the facts the project needs about each.

Instructions are the ones the published RPD code gave its Octo/OpenVLA teachers (and the
fine-tuning data), word for word, so that a teacher fine-tuned on them sees the text it knows.
"""

from __future__ import annotations

import dataclasses

from rpd_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """One ManiSkill3 task, as ManiSkill 3.0.1 defines it with the Panda and pd_ee_delta_pose."""

  env_id: str
  instruction: str  # language instruction for a VLA teacher
  max_episode_steps: int  # ManiSkill's own time limit
  # ManiSkill's ``normalized_dense`` reward is the ``dense`` reward divided by this.
  dense_reward_scale: float
  state_dim: int  # size of the flat ``state`` observation (obs_mode="state")
  # Whether the paper's teacher was fine-tuned on this task (False: held out).
  teacher_trained: bool
  # The shipped Octo teacher (rpd_jax/teachers/checkpoints) that the task's experiment file uses
  # by default: the one made for this task, or for a held-out task the nearest task's, as the
  # paper used its fine-tuned VLA there.
  teacher: str


TASKS: dict[str, TaskInfo] = {t.env_id: t for t in (
    TaskInfo("PickCube-v1", "pick up the cube", 50, 5.0, 42, True,
             "octo-tiny-pickcube"),
    TaskInfo("PushCube-v1", "push the cube away from the robot base", 50, 4.0, 35, True,
             "octo-tiny-pushcube"),
    TaskInfo("PullCube-v1", "pull the cube towards the robot base", 50, 3.0, 35, True,
             "octo-tiny-pullcube"),
    TaskInfo("LiftPegUpright-v1", "lift the peg upright", 50, 3.0, 32, True,
             "octo-tiny-liftpegupright"),
    TaskInfo("RollBall-v1", "push the ball", 80, 30.0, 44, True,
             "octo-tiny-rollball"),
    TaskInfo("StackCube-v1", "stack the red cube on the green cube", 50, 8.0, 48, True,
             "octo-tiny-stackcube"),
    TaskInfo("PullCubeTool-v1", "pull the cube by using the red tool", 100, 5.0, 39, False,
             "octo-tiny-pullcube"),
    TaskInfo("PokeCube-v1", "push the cube by using the blue tool", 50, 10.0, 54, False,
             "octo-tiny-pushcube"),
)}


def task_info(env_id: str) -> TaskInfo:
  """The TaskInfo of ``env_id``; raises a ConfigError that lists the known tasks."""
  if env_id not in TASKS:
    raise ConfigError(f"env_id={env_id!r} is not one of the paper's tasks: {', '.join(TASKS)}")
  return TASKS[env_id]
