"""Evaluation of a policy (the student's mean action, or a teacher alone): metrics and videos."""

from __future__ import annotations

import os
from typing import Optional

import imageio
import jax
import numpy as np
import tqdm

from rpd_jax import quiet, rollout
from rpd_jax.envs.base import VecEnv


PROTOCOLS = ("first_episode", "fixed_steps")


def evaluate(env: VecEnv, policy: rollout.Policy, num_episodes: int, seed: int, key: jax.Array,
             video_dir: Optional[str] = None, num_videos: int = 0,
             video_prefix: str = "eval", progress: bool = False,
             protocol: str = "first_episode", steps: int = 50,
             groups: int = 1) -> dict[str, float]:
  """Runs ``num_episodes`` episodes, in rounds of one episode per env, and averages them.

  Episode k starts from the env seed ``seed + k`` (round r resets env i with seed + r * B + i),
  so N episodes are N different initial states. ``protocol``:

  - "first_episode": each env's first episode, to its end (success or the time limit).
    Success counts an episode in which the task was solved at any step.
  - "fixed_steps": the published RPD evaluation: exactly ``steps`` steps of an env whose
    successes do not end episodes (``ignore_terminations``). ``eval/success_rate`` is
    success_once (solved at any step), ``eval/success_at_end`` the success at the last step,
    ``eval/reward_per_step`` the return over ``steps``.

  ``groups`` = K splits the envs into K equal groups (K students, ``rollout.SeedStack``): the
  metrics of group k come as ``seed<k>/eval/...`` besides those of all episodes. Videos of the
  first ``num_videos`` envs of the first round go to ``video_dir/<video_prefix>_<i>.mp4``.
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
  # [rounds, B] per episode; group k holds envs [k * B / K, (k + 1) * B / K).
  per_env = {"returns": np.stack(returns), "successes": np.stack(successes),
             "lengths": np.stack(lengths), "at_end": np.stack(at_end)}
  out = _summary(per_env, protocol)
  if groups > 1:
    for k in range(groups):
      part = {name: np.split(v, groups, axis=1)[k] for name, v in per_env.items()}
      out.update({f"seed{k}/{name}": value
                  for name, value in _summary(part, protocol).items()})
  return out


def _summary(per_env: dict[str, np.ndarray], protocol: str) -> dict[str, float]:
  returns, lengths = per_env["returns"].ravel(), per_env["lengths"].ravel()
  extra = ({"eval/success_at_end": float(np.mean(per_env["at_end"]))}
           if protocol == "fixed_steps" else {})
  return {**extra, "eval/success_rate": float(np.mean(per_env["successes"])),
          "eval/return": float(np.mean(returns)),
          # mean reward per step of an episode (with normalized_dense rewards: in [0, 1])
          "eval/reward_per_step": float(np.mean(returns / np.maximum(lengths, 1))),
          "eval/episode_length": float(np.mean(lengths)),
          "eval/episodes": float(returns.size)}
