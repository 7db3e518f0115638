"""Evaluation of a policy (the student's mean action, or a teacher alone) on a VecEnv."""

from __future__ import annotations

import os
from typing import Callable, Optional

import imageio
import jax
import numpy as np
import tqdm

from rpd_jax.envs.base import Observation, VecEnv

# (obs [B, ...], prev_obs [B, ...], is_first bool [B], key) -> action [B, A]
ActFn = Callable[[Observation, Observation, jax.Array, jax.Array], jax.Array]


def evaluate(env: VecEnv, act: ActFn, num_episodes: int, seed: int, key: jax.Array,
             video_dir: Optional[str] = None, num_videos: int = 0,
             video_prefix: str = "eval", progress: bool = False) -> dict[str, float]:
  """Runs ``num_episodes`` episodes (first episode of each env per round) and averages them.

  Episode k starts from the env seed ``seed + k`` (round r resets env i with seed + r * B + i),
  so N episodes are N different initial states.

  Success counts an episode in which the task was solved at any step. Videos of the first
  ``num_videos`` envs of the first round go to ``video_dir/<video_prefix>_<i>.mp4``.
  """
  if num_episodes % env.num_envs:
    raise ValueError(f"num_episodes={num_episodes} is not a multiple of the eval env count "
                     f"{env.num_envs}")
  returns, successes, lengths = [], [], []
  rounds = range(num_episodes // env.num_envs)
  if progress:
    rounds = tqdm.tqdm(rounds, unit="round", desc=f"evaluate ({env.num_envs} episodes/round)")
  for round_ in rounds:
    obs = env.reset(seed=seed + round_ * env.num_envs)  # env i of round r: seed + r * B + i
    prev_obs, is_first = obs, np.ones(env.num_envs, bool)
    done = np.zeros(env.num_envs, bool)
    ret = np.zeros(env.num_envs)
    success = np.zeros(env.num_envs, bool)
    length = np.zeros(env.num_envs, int)
    record = min(num_videos, env.num_envs) if round_ == 0 and video_dir else 0
    frames = [[] for _ in range(record)]
    for t in range(env.max_episode_steps):
      if record:
        image = np.asarray(env.render())
        for i in range(record):
          if not done[i]:
            frames[i].append(image[i])
      action = act(obs, prev_obs, is_first, jax.random.fold_in(key, round_ * 100_000 + t))
      res = env.step(action)
      alive = ~done
      ret += np.asarray(res.reward) * alive
      success |= np.asarray(res.success) & alive
      length += alive
      ended = np.asarray(res.terminated) | np.asarray(res.truncated)
      done |= ended
      prev_obs, obs, is_first = obs, res.obs, ended
      if done.all():
        break
    returns.append(ret)
    successes.append(success)
    lengths.append(length)
    if record:
      os.makedirs(video_dir, exist_ok=True)
      for i, clip in enumerate(frames):
        imageio.mimsave(os.path.join(video_dir, f"{video_prefix}_{i}.mp4"), clip, fps=20)
  returns, lengths = np.concatenate(returns), np.concatenate(lengths)
  return {"eval/success_rate": float(np.mean(np.concatenate(successes))),
          "eval/return": float(np.mean(returns)),
          # mean reward per step of an episode (with normalized_dense rewards: in [0, 1])
          "eval/reward_per_step": float(np.mean(returns / np.maximum(lengths, 1))),
          "eval/episode_length": float(np.mean(lengths)),
          "eval/episodes": float(num_episodes)}
