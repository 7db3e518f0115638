"""Evaluation of a policy (the student's mean action, or a teacher alone): metrics and videos.

``python -m rpd_jax.evaluate --workdir=W`` evaluates a saved student (``__main__.py``).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import imageio
import jax
import ml_collections
import numpy as np
import tqdm

from rpd_jax import quiet, rollout
from rpd_jax.envs.base import VecEnv


PROTOCOLS = ("first_episode", "fixed_steps")


class Episodes(NamedTuple):
  """What evaluation played, per episode: [rounds, B] arrays (episode r * B + i is env i's in
  round r)."""
  returns: np.ndarray  # float64: summed reward (over the alive steps)
  successes: np.ndarray  # bool: solved at some step
  lengths: np.ndarray  # int: steps
  at_end: np.ndarray  # bool: solved at the last step

  def groups(self, num: int) -> list["Episodes"]:
    """The episodes of ``num`` equal groups of envs (group k: envs [k B / num, (k + 1) B /
    num), e.g. student k's)."""
    parts = [np.split(x, num, axis=1) for x in self]
    return [Episodes(*(p[k] for p in parts)) for k in range(num)]


def episodes(env: VecEnv, policy: rollout.Policy, num_episodes: int, seed: int, key: jax.Array,
             video_dir: Optional[str] = None, num_videos: int = 0,
             video_prefix: str = "eval", progress: bool = False,
             protocol: str = "first_episode", steps: int = 50) -> Episodes:
  """Runs ``num_episodes`` episodes, in rounds of one episode per env.

  Episode k starts from the env seed ``seed + k`` (round r resets env i with seed + r * B + i),
  so N episodes are N different initial states. ``protocol``:

  - "first_episode": each env's first episode, to its end (success or the time limit).
    Success counts an episode in which the task was solved at any step.
  - "fixed_steps": the published RPD evaluation: exactly ``steps`` steps of an env whose
    successes do not end episodes (``ignore_terminations``); ``at_end`` is the success at the
    last step.

  Videos of the first ``num_videos`` envs of the first round go to
  ``video_dir/<video_prefix>_<i>.mp4``.
  """
  if num_episodes % env.num_envs:
    raise ValueError(f"num_episodes={num_episodes} is not a multiple of the eval env count "
                     f"{env.num_envs}")
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol={protocol!r}; use one of {', '.join(PROTOCOLS)}")
  if protocol == "fixed_steps" and steps > env.max_episode_steps:
    raise ValueError(f"steps={steps} is longer than the env's episodes "
                     f"({env.max_episode_steps} steps): a fixed-step evaluation is one episode")
  returns, successes, lengths, at_end = [], [], [], []
  rounds = range(num_episodes // env.num_envs)
  if progress:
    rounds = tqdm.tqdm(rounds, unit="round", desc=f"evaluate ({env.num_envs} episodes/round)")
  for round_ in rounds:
    videos = min(num_videos, env.num_envs) if round_ == 0 and video_dir else 0
    # Only the recorded envs' frames are kept (and copied to the host): all of a GPU batch's
    # would be about 1 GB per evaluation at the published geometry.
    keep = lambda t, n=videos: (t.reward, t.success, None if t.frame is None else t.frame[:n])
    round_seed, round_key = seed + round_ * env.num_envs, jax.random.fold_in(key, round_)
    if protocol == "first_episode":
      kept, alive = rollout.first_episodes(env, policy, round_seed, round_key, keep=keep,
                                           render=bool(videos))
    else:
      _, kept, _ = rollout.run(env, policy, rollout.reset(env, round_seed), round_key, steps,
                               keep=keep, render=bool(videos))
      alive = np.ones((steps, env.num_envs), bool)
    reward, success, frames = jax.device_get(kept)
    at_end.append(success[-1])
    returns.append(np.sum(reward.astype(np.float64) * alive, axis=0))
    successes.append(np.any(success & alive, axis=0))
    lengths.append(alive.sum(axis=0))
    if videos:
      os.makedirs(video_dir, exist_ok=True)
      for i in range(videos):
        with quiet.fork_exec():  # imageio runs ffmpeg as a subprocess
          imageio.mimsave(os.path.join(video_dir, f"{video_prefix}_{i}.mp4"),
                          list(frames[alive[:, i], i]), fps=20)
  return Episodes(*map(np.stack, (returns, successes, lengths, at_end)))


def summary(played: Episodes, protocol: str) -> dict[str, float]:
  """``eval/`` metrics of the episodes: ``success_rate`` (solved at any step; the published
  protocol's success_once), ``return``, ``reward_per_step`` (the return over the episode's
  steps; with normalized_dense rewards in [0, 1]), ``episode_length``, ``episodes``, and under
  the fixed-step protocol ``success_at_end``."""
  returns, lengths = played.returns.ravel(), played.lengths.ravel()
  extra = ({"eval/success_at_end": float(np.mean(played.at_end))}
           if protocol == "fixed_steps" else {})
  return {**extra, "eval/success_rate": float(np.mean(played.successes)),
          "eval/return": float(np.mean(returns)),
          "eval/reward_per_step": float(np.mean(returns / np.maximum(lengths, 1))),
          "eval/episode_length": float(np.mean(lengths)),
          "eval/episodes": float(returns.size)}


def env_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The evaluation envs' config: the training envs', whose successes do not end episodes under
  the fixed-step protocol."""
  if c.eval_protocol != "fixed_steps":
    return c.env
  env = c.env.copy_and_resolve_references()
  with env.unlocked():
    env.kwargs.ignore_terminations = True
  return env


def evaluate(env: VecEnv, policy: rollout.Policy, num_episodes: int, seed: int, key: jax.Array,
             protocol: str = "first_episode", **kwargs) -> dict[str, float]:
  """``summary`` of ``episodes`` (same arguments): one policy's evaluation."""
  return summary(episodes(env, policy, num_episodes, seed, key, protocol=protocol, **kwargs),
                 protocol)
