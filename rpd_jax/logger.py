"""A run's logs: metrics.jsonl, TensorBoard and the progress bar, one row per log interval.

A resumed run drops what the stopped one logged after its last checkpoint (it is logged again),
and a last line cut short by a kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Optional

import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from rpd_jax import parallel, rollout


class Logger:
  """Pools the iterations between two logs; writes metrics.jsonl, TensorBoard and the bar.

  ``add`` keeps each iteration's metrics on the device; ``summary`` fetches them with ONE
  ``device_get``, averages them, pools the episode stats and adds env steps per second (time
  spent in ``evaluation`` is not counted); ``write`` records one row.
  """

  def __init__(self, workdir: str, start: int, num_iterations: int, batch: int,
               writer: bool = True, tags: Optional[dict[str, str]] = None):
    """``writer``: False in every process but the first of a multi-process run, which keeps
    the bookkeeping (the same summaries) but writes nothing. ``tags``: text written into every
    row of metrics.jsonl (the simulation backend), not to TensorBoard."""
    self._tags = dict(tags or {})
    self.path = os.path.join(workdir, "metrics.jsonl") if writer else None
    # Drop what a stopped run logged after its last checkpoint (it will be logged again), and a
    # last line cut short by a kill.
    if self.path is not None and os.path.exists(self.path):
      with open(self.path) as f:
        rows = [_parse(l) for l in f]
      with open(self.path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows if r and r["iteration"] <= start)
    # TensorBoard hides the events a stopped run wrote after its checkpoint, likewise.
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                             purge_step=(start + 1) * batch if start else None) if writer else None
    self._bar = tqdm.tqdm(total=num_iterations * batch, initial=start * batch, unit="step",
                          unit_scale=True, dynamic_ncols=True, desc="train", disable=not writer)
    self._batch = batch
    self._pending: list[tuple[dict, rollout.EpisodeStats]] = []
    self._since, self._steps_since = time.perf_counter(), start * batch
    self._start = self._since
    self._eval: dict[str, float] = {}

  def add(self, metrics: dict, stats: rollout.EpisodeStats) -> None:
    self._pending.append((metrics, stats))
    self._bar.update(self._batch)

  def summary(self, iteration: int) -> dict[str, float]:
    metrics, stats = parallel.fetch(list(zip(*self._pending)))
    self._pending = []
    out = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
    count = sum(float(s.count) for s in stats)
    out["train/episodes"] = count
    if count:
      out["train/episode_return"] = sum(float(s.return_sum) for s in stats) / count
      out["train/episode_length"] = sum(float(s.length_sum) for s in stats) / count
      out["train/success_rate"] = sum(float(s.success_sum) for s in stats) / count
    now, steps = time.perf_counter(), iteration * self._batch
    out["time/env_steps_per_s"] = (steps - self._steps_since) / (now - self._since)
    out["time/elapsed_s"] = now - self._start  # wall time of this process's run, evaluations too
    self._since, self._steps_since = now, steps
    return out

  @contextlib.contextmanager
  def evaluation(self):
    """Evaluation time is not training time."""
    yield
    self._since = time.perf_counter()

  def write(self, iteration: int, summary: dict[str, float]) -> None:
    env_steps = iteration * self._batch
    if self.path is not None:
      with open(self.path, "a") as f:
        f.write(json.dumps({"iteration": iteration, "env_steps": env_steps, **self._tags,
                            **summary}) + "\n")
      for k, v in summary.items():
        self._tb.add_scalar(k, v, env_steps)
      self._tb.flush()
    self._eval = {k: v for k, v in summary.items() if k.startswith("eval/")} or self._eval
    self._bar.set_postfix({"sps": f"{summary['time/env_steps_per_s']:.0f}",
                           "success": f"{summary.get('train/success_rate', float('nan')):.2f}",
                           **({"eval": f"{self._eval['eval/success_rate']:.2f}"}
                              if self._eval else {})})

  def close(self) -> None:
    self._bar.close()
    if self._tb is not None:
      self._tb.close()


def _parse(line: str) -> Optional[dict]:
  try:
    return json.loads(line)
  except json.JSONDecodeError:
    return None
