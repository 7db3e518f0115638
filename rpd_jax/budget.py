"""The teacher budget: which collected transitions the teacher labels, and what the envs observe
for it.

``config.teacher.query_fraction`` = f labels n = round(f T) of the T steps of every rollout,
every env of a labelled step at once; the other transitions carry no distillation target (the
update's distillation term averages over the labelled ones). The n steps are evenly spaced, and
the comb shifts from one iteration to the next by the golden ratio of its spacing, so that over
iterations every step index of a rollout is labelled, also where rollouts and episodes line up
(ManiSkill's PushCube: T = 50 = its time limit). Whole steps rather than scattered transitions:
a labelled step renders the teacher's camera for the whole batch, which a GPU simulation does in
one call and which CPU workers do side by side (a scattered subset left one or two of four
workers rendering on most steps, the others waiting); the update gathers whole steps, which
stay on the devices that hold them under a mesh.

A student asks only while its distillation weight lambda is above 0 (``losses.distill_coef``):
after a linear or cosine schedule's end, or once a ``surpass`` schedule has decayed, its
transitions are not labelled and its envs do not render for the teacher.

Where the teacher reads observations the student does not (its camera beside a state student),
the envs observe those keys (``on_demand_keys``, the VecEnv contract in ``envs/base.py``) only
where the teacher will read them: at labelled steps, and with a teacher that looks at two frames
(``Teacher.window``) at the step before each as well.

Shapes: T = steps per rollout, K = students, N = envs per student.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# The comb's shift per iteration, in units of its spacing: the golden ratio's fractional part
# spreads the shifts of successive iterations evenly over [0, 1) (a low-discrepancy sequence).
_SHIFT = (math.sqrt(5.0) - 1.0) / 2.0


def num_labelled(num_steps: int, fraction: float) -> int:
  """n: the steps of a rollout of ``num_steps`` the teacher labels at ``fraction``."""
  return round(fraction * num_steps)


def labelled_steps(iteration: int, num_steps: int, fraction: float) -> np.ndarray:
  """int [n], ascending: the steps of iteration ``iteration``'s rollout that are labelled."""
  n = num_labelled(num_steps, fraction)
  spacing = num_steps / n
  offset = (iteration * _SHIFT) % 1.0 * spacing
  return np.minimum(np.floor(np.arange(n) * spacing + offset), num_steps - 1).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Budget:
  """The labelling plan of a run (module doc)."""
  num_steps: int  # T
  fraction: float  # config.teacher.query_fraction
  window: int  # frames the teacher reads per query (Teacher.window): 2 also reads prev_obs
  envs_per_student: int  # N

  @property
  def calls_per_step(self) -> float:
    """The fraction of a student's transitions labelled while it asks: n / T."""
    return num_labelled(self.num_steps, self.fraction) / self.num_steps

  def _steps(self, iteration: int) -> np.ndarray:
    """bool [T + 1]: step t of the iteration's rollout is labelled; [T]: the next one's step 0."""
    steps = np.zeros(self.num_steps + 1, bool)
    steps[labelled_steps(iteration, self.num_steps, self.fraction)] = True
    steps[self.num_steps] = 0 in labelled_steps(iteration + 1, self.num_steps, self.fraction)
    return steps

  def _needed(self, iteration: int) -> np.ndarray:
    """bool [T]: the teacher reads obs[t] of the iteration's rollout (labelled, or the frame
    before a labelled one for a two-frame teacher)."""
    steps = self._steps(iteration)
    return steps[:-1] | steps[1:] if self.window > 1 else steps[:-1]

  def plan(self, iteration: int, asking: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labelled, observe), bool [T, K N] each, for iteration ``iteration``'s rollout.

    ``asking`` bool [K]: which students ask the teacher (lambda > 0). ``labelled[t]``: the
    transitions of step t the teacher labels. ``observe[t]``: the envs whose observation
    returned by step t (obs[t + 1], the next rollout's obs[0] for t = T - 1) must hold the
    teacher's keys; ``rollout.run`` passes it to ``VecEnv.step``. A student that stops asking
    at the next iteration may have rendered that one frame in vain.
    """
    rows = np.repeat(np.asarray(asking, bool), self.envs_per_student)[None]
    labelled = self._steps(iteration)[:-1, None] & rows
    needed = np.concatenate([self._needed(iteration)[1:], self._needed(iteration + 1)[:1]])
    return labelled, needed[:, None] & rows
