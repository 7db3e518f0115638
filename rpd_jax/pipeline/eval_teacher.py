"""A teacher alone on ManiSkill tasks: the teacher table (success, normalized reward), videos.

  python -m rpd_jax.pipeline.eval_teacher --checkpoint=octo-tiny-pushcube --tasks=PushCube-v1 \
      --episodes=100 --out=runs/teacher_eval/octo_tiny_pushcube
  python -m rpd_jax.pipeline.eval_teacher --tasks=PickCube-v1,PokeCube-v1 --execution=first \
      --out=runs/teacher_eval/shipped     # each task's shipped teacher (tasks.TaskInfo.teacher)
  python -m rpd_jax.pipeline.eval_teacher --tasks=PushCube-v1 --camera_variant=moved ...
  python -m rpd_jax.pipeline.eval_teacher --teacher=scripted_maniskill --noise=0.75 \
      --tasks=PushCube-v1,PullCube-v1 --episodes=100 --out=runs/teacher_eval/scripted
  python -m rpd_jax.pipeline.eval_teacher --checkpoint=runs/finetune/mytask \
      --tasks=mytasks:PushCubeFar-v1 --instruction="push the cube to the far target" ...

Any task gymnasium can make runs (``rpd_jax.envs.tasks.resolve``: ManiSkill's own ids, or yours as
``package.module:EnvId``); ``--instruction`` gives a language-conditioned teacher its text (the
paper's tasks have theirs), ``--controller`` the scripted controller of a paper task to run on a
task with the same state layout (e.g. a variant of PushCube).

Writes ``<out>/teacher_table.md`` and ``teacher_table.json`` (one row per task: success rate
with its standard error, mean normalized dense reward per step, return, episode length) and
``<out>/videos/<task>_<i>.mp4`` of the first episodes. Like the paper's Table I, but measured
here.

How an Octo teacher's action chunks [4, 7] are executed (``--execution``):
  first     the first action of a fresh chunk every step: how RPD queries the teacher
  receding  a whole chunk, then a new query (receding horizon, 4 steps per query)
  ensemble  a new chunk every step, overlapping predictions averaged (Octo's temporal
            ensembling, as its official evaluation does)
Scripted teachers output one action per query: only ``first`` applies.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Optional

import jax
import numpy as np
from absl import flags, logging

from rpd_jax import cli, rollout
from rpd_jax.envs import tasks
from rpd_jax.errors import ConfigError

EXECUTIONS = ("first", "receding", "ensemble")

_TEACHER = flags.DEFINE_enum("teacher", "octo", ["octo", "scripted_maniskill"], "which teacher")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "shipped", "Octo: 'shipped' (each task's shipped teacher, tasks.TaskInfo.teacher), "
    "a checkpoint folder, a shipped teacher's name or a released checkpoint's name "
    "(rpd_jax.octo.resolve_checkpoint)")
_CAMERA_VARIANT = flags.DEFINE_string(
    "camera_variant", None, "a moved human camera (envs.maniskill.CAMERA_VARIANTS), e.g. moved")
_TOKENIZER = flags.DEFINE_string("tokenizer_dir", None, "Octo with language: t5-base tokenizer")
_WINDOW = flags.DEFINE_integer("window", 1, "Octo: frames per query")
_NOISE = flags.DEFINE_float("noise", None, "scripted teacher: action noise std")
_TASKS = flags.DEFINE_list("tasks", ["PushCube-v1"], "ManiSkill task ids (yours: "
                           "package.module:EnvId)")
_INSTRUCTION = flags.DEFINE_string("instruction", None, "Octo: the language instruction "
                                   "(default: the paper's, for its tasks)")
_CONTROLLER = flags.DEFINE_string("controller", None, "scripted teacher: whose controller "
                                  "(default: the task's own), e.g. PushCube-v1 for a variant of "
                                  "PushCube")
_EPISODES = flags.DEFINE_integer("episodes", 100, "episodes per task (a multiple of num_envs)")
_EXECUTION = flags.DEFINE_enum("execution", "ensemble", list(EXECUTIONS), "chunk execution")
_NUM_ENVS = flags.DEFINE_integer("num_envs", 2, "parallel CPU envs")
_VIDEOS = flags.DEFINE_integer("videos", 2, "videos per task")
_SEED = flags.DEFINE_integer("seed", 1000, "seed of the first episode (demos use 0 onwards)")
_OUT = flags.DEFINE_string("out", None, "output folder", required=True)
_SIM_BACKEND = flags.DEFINE_string("sim_backend", "auto", "physx_cpu, physx_cuda or auto")


def chunk_executor(chunks_fn: Callable, params, execution: str,
                   horizon: int) -> rollout.Policy:
  """A policy that executes Octo's action chunks as ``execution`` says.

  ``chunks_fn(params, obs, prev_obs, is_first, key)`` -> [1, B, horizon, A] (OctoApply.chunks).
  """
  from rpd_jax.teachers.octo import TemporalEnsemble  # pylint: disable=g-import-not-at-top
  chunks = jax.jit(lambda p, o, po, f, k: chunks_fn(p, o, po, f, k)[0])
  if execution == "first":
    return lambda obs, prev_obs, is_first, key: (
        chunks(params, obs, prev_obs, is_first, key)[:, 0], {})
  if execution == "ensemble":
    ensemble = TemporalEnsemble(horizon)
    return lambda obs, prev_obs, is_first, key: (
        ensemble(chunks(params, obs, prev_obs, is_first, key), is_first), {})
  state = {"chunk": None, "index": None}

  def receding(obs, prev_obs, is_first, key):
    is_first = np.asarray(is_first, bool)
    if state["chunk"] is None:
      state["chunk"] = np.array(chunks(params, obs, prev_obs, is_first, key))
      state["index"] = np.zeros(is_first.shape[0], int)
    need = is_first | (state["index"] >= horizon)
    if need.any():
      fresh = np.asarray(chunks(params, obs, prev_obs, is_first, key))
      state["chunk"][need] = fresh[need]
      state["index"][need] = 0
    action = state["chunk"][np.arange(is_first.shape[0]), state["index"]]
    state["index"] += 1
    return action, {}

  return receding


def make_policy(env_id: str, execution: str
                ) -> tuple[rollout.Policy, Optional[int], str, Optional[str]]:
  """(policy, the teacher's image size or None, teacher label, the simulation backend it was
  made on or None) for one task, from the flags."""
  from rpd_jax.teachers import maniskill_scripted, octo  # pylint: disable=g-import-not-at-top
  info = tasks.resolve(env_id, where="--tasks").info  # the paper's facts, or None
  if _TEACHER.value == "scripted_maniskill":
    if execution != "first":
      raise ConfigError(f"--execution={execution}: scripted teachers output single actions; "
                        "use --execution=first")
    teacher = maniskill_scripted.make_teacher(task=_CONTROLLER.value or env_id,
                                              noise=_NOISE.value)
    return rollout.teacher_policy(teacher), None, teacher.name, teacher.made_on
  checkpoint = _CHECKPOINT.value
  if checkpoint == "shipped":
    if info is None:
      raise ConfigError(f"--checkpoint=shipped: {env_id} is not one of the paper's tasks, "
                        f"which have shipped teachers ({', '.join(tasks.TASKS)}); name its "
                        "teacher with --checkpoint")
    checkpoint = info.teacher
  instruction = _INSTRUCTION.value or (info and info.instruction)
  teacher = octo.make_teacher(checkpoint, instruction=instruction,
                              window=_WINDOW.value, tokenizer_dir=_TOKENIZER.value)
  horizon = dict(teacher.params["model"].spec.heads)["action"].action_horizon
  policy = chunk_executor(teacher.apply_fn.chunks, teacher.params, execution, horizon)
  return policy, teacher.apply_fn.size[0], teacher.name, teacher.made_on


def evaluate_task(env_id: str, out: str) -> dict:
  from rpd_jax import evaluate  # pylint: disable=g-import-not-at-top
  from rpd_jax.envs import maniskill  # pylint: disable=g-import-not-at-top
  from rpd_jax.teachers import records  # pylint: disable=g-import-not-at-top
  policy, image_size, label, made_on = make_policy(env_id, _EXECUTION.value)
  obs_mode = "state" if image_size is None else "rgb"
  env = maniskill.ManiSkillVecEnv(
      num_envs=_NUM_ENVS.value, seed=_SEED.value, reward_mode="normalized_dense", env_id=env_id,
      obs_mode=obs_mode, image_size=image_size or 128, sim_backend=_SIM_BACKEND.value,
      camera_variant=_CAMERA_VARIANT.value, final_obs_keys=())
  warning = records.mismatch(label, made_on, env.sim_backend)
  if warning:
    logging.warning("%s", warning)
  started = time.perf_counter()
  try:
    result = evaluate.evaluate(env, policy, _EPISODES.value, seed=_SEED.value,
                               key=jax.random.key(_SEED.value),
                               video_dir=os.path.join(out, "videos"), num_videos=_VIDEOS.value,
                               video_prefix=tasks.split_env_id(env_id)[1] + (
                                   f"_{_CAMERA_VARIANT.value}_camera"
                                   if _CAMERA_VARIANT.value else ""),
                               progress=True)
  finally:
    env.close()
  p, n = result["eval/success_rate"], _EPISODES.value
  return {"task": env_id, "camera_variant": _CAMERA_VARIANT.value, "teacher": label,
          "execution": _EXECUTION.value, "episodes": n, "seed": _SEED.value,
          "success_rate": p, "success_stderr": math.sqrt(p * (1 - p) / n),
          "normalized_reward": result["eval/reward_per_step"],
          "return": result["eval/return"], "episode_length": result["eval/episode_length"],
          "sim_backend": env.sim_backend, "seconds": round(time.perf_counter() - started, 1)}


def markdown(rows: list[dict]) -> str:
  lines = ["| task | teacher | execution | episodes | success | normalized reward | episode "
           "length |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    task = r["task"] + (f" ({r['camera_variant']} camera)" if r.get("camera_variant") else "")
    lines.append(f"| {task} | {r['teacher']} | {r['execution']} | {r['episodes']} | "
                 f"{r['success_rate']:.2f} ± {r['success_stderr']:.2f} | "
                 f"{r['normalized_reward']:.3f} | {r['episode_length']:.1f} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  for flag, least in ((_NUM_ENVS, 1), (_EPISODES, 1), (_VIDEOS, 0)):
    if flag.value < least:
      raise ConfigError(f"--{flag.name}={flag.value} must be >= {least}")
  if not _TASKS.value:
    raise ConfigError("--tasks is empty; name at least one task, e.g. --tasks=PushCube-v1")
  if _EPISODES.value % _NUM_ENVS.value:
    raise ConfigError(f"--episodes={_EPISODES.value} must be a multiple of "
                      f"--num_envs={_NUM_ENVS.value}")
  from rpd_jax.envs import maniskill  # pylint: disable=g-import-not-at-top
  if _CAMERA_VARIANT.value is not None and _CAMERA_VARIANT.value not in maniskill.CAMERA_VARIANTS:
    raise ConfigError(f"--camera_variant={_CAMERA_VARIANT.value!r} is unknown; use one of "
                      f"{', '.join(maniskill.CAMERA_VARIANTS)}")
  logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
  out = _OUT.value
  os.makedirs(out, exist_ok=True)
  rows = []
  for env_id in _TASKS.value:
    tasks.resolve(env_id, where="--tasks")  # an unknown task stops here, before any is loaded
  for env_id in _TASKS.value:
    rows.append(evaluate_task(env_id, out))
    print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    with open(os.path.join(out, "teacher_table.json"), "w") as f:
      json.dump(rows, f, indent=2)
    with open(os.path.join(out, "teacher_table.md"), "w") as f:
      f.write(markdown(rows))
  print(markdown(rows))


if __name__ == "__main__":
  cli.run(main)
