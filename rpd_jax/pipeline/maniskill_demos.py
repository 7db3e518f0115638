"""Demonstrations in ManiSkill's own trajectory format, read for fine-tuning.

ManiSkill writes a trajectory file pair (its ``RecordEpisode`` wrapper, its motion-planning and
RL demonstrations, ``python -m mani_skill.trajectory.replay_trajectory``):

  <name>.json   ``env_info``: ``env_id``, ``env_kwargs`` (``obs_mode``, ``control_mode``, ...);
                ``episodes``: one entry per episode (``episode_id``, ``episode_seed``,
                ``control_mode``, ``elapsed_steps``, ``success``, ...)
  <name>.h5     ``traj_<episode_id>/``: ``actions`` float32 [T, A], ``obs/`` (for an image
                obs_mode: ``obs/sensor_data/<camera>/rgb`` uint8 [T + 1, H, W, 3], the frame
                each action was taken on and the last), ``success`` bool [T], ...

Fine-tuning reads the rgb frames of one camera and the actions of the successful episodes
(every episode where the file records no success). The actions are the controller's
(``control_mode``; the project's teachers act in ``pd_ee_delta_pose``) in ManiSkill's gripper
convention: -1 closes, +1 opens. A file without images (ManiSkill's released demonstrations hold
only env states) is rendered by replaying it with ManiSkill's tool, which also converts the
controller:

  python -m mani_skill.trajectory.replay_trajectory --traj-path=<name>.h5 --obs-mode=rgb \\
      --target-control-mode=pd_ee_delta_pose --save-traj

(writes ``<name>.rgb.pd_ee_delta_pose.physx_cpu.h5`` beside it).
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from rpd_jax.errors import ConfigError

REPLAY = ("python -m mani_skill.trajectory.replay_trajectory --traj-path={path} --obs-mode=rgb "
          "--target-control-mode=pd_ee_delta_pose --save-traj")


def read_info(path: str) -> dict:
  """The ``.json`` beside the trajectory file ``path`` (``<name>.h5``); ConfigError naming
  what is missing."""
  if not path.endswith(".h5"):
    raise ConfigError(f"{path}: a ManiSkill trajectory file ends in .h5")
  json_path = path[:-len(".h5")] + ".json"
  for p in (path, json_path):
    if not os.path.isfile(p):
      raise ConfigError(f"{p} is missing: a ManiSkill trajectory is a <name>.h5 with its "
                        "<name>.json beside it")
  with open(json_path) as f:
    return json.load(f)


def read(path: str, camera: Optional[str] = None, max_episodes: Optional[int] = None
         ) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
  """([(image uint8 [T, S, S, 3], action float32 [T, A]) per kept episode], the file's
  ``env_info`` with ``camera`` and ``control_mode`` added).

  ``camera``: which ``sensor_data`` camera (None: the only one). ``max_episodes``: the first N
  kept episodes. ConfigError where the file holds no frames (how to render them), several
  cameras and none named, or non-square frames.
  """
  import h5py  # pylint: disable=g-import-not-at-top  (installed with ManiSkill)
  info = read_info(path)
  env_info = dict(info.get("env_info") or {})
  episodes = info.get("episodes", [])
  out = []
  with h5py.File(path, "r") as f:
    for episode in episodes:
      if max_episodes is not None and len(out) >= max_episodes:
        break
      if "success" in episode and not episode["success"]:
        continue
      group = f[f"traj_{episode['episode_id']}"]
      sensors = group.get("obs/sensor_data")
      cameras = sorted(k for k in sensors if "rgb" in sensors[k]) if sensors else []
      if not cameras:
        raise ConfigError(f"{path} holds no rgb frames (obs_mode "
                          f"{env_info.get('env_kwargs', {}).get('obs_mode')!r}): render them "
                          f"by replaying it, `{REPLAY.format(path=path)}`, and fine-tune on "
                          "the file that writes")
      name = camera or cameras[0]
      if name not in cameras or (camera is None and len(cameras) > 1):
        raise ConfigError(f"{path} has the cameras {', '.join(cameras)}: name one with "
                          "config.data.camera")
      action = np.asarray(group["actions"], np.float32)
      image = np.asarray(sensors[name]["rgb"])[:len(action)]  # the last frame has no action
      if image.shape[1] != image.shape[2]:
        raise ConfigError(f"{path}: camera {name!r} has {image.shape[1]}x{image.shape[2]} "
                          "frames; Octo takes square ones (set the camera's width = height "
                          "when recording)")
      out.append((image.astype(np.uint8), action))
      env_info["control_mode"] = episode.get("control_mode",
                                             env_info.get("env_kwargs", {}).get("control_mode"))
  if not out:
    raise ConfigError(f"{path}: none of its {len(episodes)} episodes succeeded")
  env_info["camera"] = name
  return out, env_info
