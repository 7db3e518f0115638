"""ManiSkill3 tasks: the eight of the RPD paper with the facts the project needs about each, and
any other task by its id (``resolve``).

Instructions are the ones the published RPD code gave its Octo/OpenVLA teachers (and the
fine-tuning data), word for word, so that a teacher fine-tuned on them sees the text it knows.

Any task gymnasium can make runs: ManiSkill's own ids (``"PegInsertionSide-v1"``), and a task of
yours registered with ``mani_skill.utils.registration.register_env`` in a module, named as
``"package.module:EnvId"`` (gymnasium's form: the module is imported first, in every process
that simulates). An id registered by an importable module is found by its plain name too, once
that module was imported (its module is then imported in the simulator processes).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Optional

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


@dataclasses.dataclass(frozen=True)
class TaskRef:
  """A ManiSkill task as a run names it (``resolve``)."""

  env_id: str  # as given: "EnvId" or "package.module:EnvId"
  name: str  # the registered id, "EnvId"
  module: Optional[str]  # what registers it, imported first in every simulator process (None:
  # ManiSkill's own tasks)
  max_episode_steps: Optional[int]  # the registered time limit (None: the task sets none)
  info: Optional[TaskInfo]  # the paper's facts, for its eight tasks

  @property
  def make_id(self) -> str:
    """The id to hand ``gymnasium.make`` in any process: it imports ``module`` first."""
    return f"{self.module}:{self.name}" if self.module else self.name


def split_env_id(env_id: str) -> tuple[Optional[str], str]:
  """("package.module" or None, "EnvId") of gymnasium's "package.module:EnvId" form."""
  module, _, name = env_id.rpartition(":")
  return module or None, name


def resolve(env_id: Optional[str], where: str = "config.env.kwargs.env_id") -> TaskRef:
  """The task ``env_id`` names; ConfigError for one that cannot run, naming the fix.

  The paper's eight, named plainly, are answered from ``TASKS`` without importing ManiSkill;
  any other id imports ManiSkill (seconds) and the module it names, and reads ManiSkill's
  registry. ``where``: how the user gave the id, for the messages.
  """
  if not env_id or not isinstance(env_id, str):
    flag = where if where.startswith("--") else f"--{where}"
    raise ConfigError(f"{where} is not set: name a ManiSkill task, e.g. {flag}=PushCube-v1, "
                      "or a task of yours as 'package.module:EnvId' (a module that registers "
                      "it with mani_skill.utils.registration.register_env)")
  module, name = split_env_id(env_id)
  if module is None and name in TASKS:
    return TaskRef(env_id, name, None, TASKS[name].max_episode_steps, TASKS[name])
  # ManiSkill's own tasks register themselves with gymnasium and ManiSkill's registry.
  import gymnasium  # pylint: disable=g-import-not-at-top
  import mani_skill.envs  # pylint: disable=g-import-not-at-top,unused-import
  from mani_skill.utils.registration import REGISTERED_ENVS  # pylint: disable=g-import-not-at-top
  if module is not None:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ConfigError(f"{where}={env_id!r}: module {module!r} cannot be imported "
                        f"({type(e).__name__}: {e}); check the name and that it is on "
                        "PYTHONPATH") from e
  if name not in REGISTERED_ENVS:
    if name in gymnasium.registry:
      raise ConfigError(
          f"{where}={env_id!r} is a gymnasium env but not a ManiSkill task; run it as an env "
          "of your own: config.env.name='factory' with config.env.kwargs.factory naming a "
          "function that wraps it (rpd_jax.envs.gymnasium_vector.GymnasiumVecEnv)")
    close = difflib.get_close_matches(name, list(REGISTERED_ENVS), n=3)
    raise ConfigError(
        f"{where}={env_id!r}: no ManiSkill task {name!r} is registered"
        f"{' (did you mean ' + ', '.join(close) + '?)' if close else ''}; register yours with "
        "mani_skill.utils.registration.register_env in a module and name it as "
        "'package.module:EnvId'" + ("" if module else ", so that every simulator process "
                                    "imports that module"))
  spec = REGISTERED_ENVS[name]
  if module is None and not spec.cls.__module__.startswith("mani_skill."):
    module = spec.cls.__module__  # registered by a module imported earlier: workers import it
  if module == "__main__":
    raise ConfigError(f"{where}={env_id!r} is registered by the script being run (__main__), "
                      "which simulator processes cannot import; move the registration into a "
                      "module and name the task as 'package.module:EnvId'")
  steps = spec.max_episode_steps
  return TaskRef(env_id, name, module, int(steps) if steps else None, TASKS.get(name))
