"""Any ManiSkill3 task: RPD-MSE from the Octo teacher you name, to a state student.

The task and the teacher come from the command line:
  --config.env.kwargs.env_id        any id gymnasium can make: ManiSkill's own
                                    (PegInsertionSide-v1) or a task of yours registered with
                                    mani_skill.utils.registration.register_env, named
                                    'package.module:EnvId' (the module is imported first, in
                                    every simulator process; it must be on PYTHONPATH)
  --config.teacher.kwargs.checkpoint  an Octo checkpoint: a folder (rpd_jax.pipeline.finetune
                                    writes one), a shipped teacher (octo-tiny-pushcube, ...), a
                                    released one (octo-small-1.5, ...) or a hub id
  --config.teacher.kwargs.instruction  its language instruction, where it takes one (the shipped
                                    teachers do not; released Octo checkpoints do)
The rollout length is the task's time limit; the env renders the 128x128 human camera for the
teacher only (the teacher resizes to its own input), and the student's MLP reads the full
state. The paper's eight tasks have files of their own with their teachers filled in.

Variants: experiments/maniskill_common.py and rpd_jax/config.py (ppo, rpd_l1, rpd_bc, ppd,
sparse, rgb, state_rgb, octo, paper, smoke), e.g.
  python -m rpd_jax.train --config=experiments/maniskill.py \\
      --config.env.kwargs.env_id=mytasks:PushCubeFar-v1 \\
      --config.teacher.kwargs.checkpoint=octo-tiny-pushcube
  python -m rpd_jax.train --config=experiments/maniskill.py:ppo \\
      --config.env.kwargs.env_id=PegInsertionSide-v1
"""

from experiments import maniskill_common


def get_config(arg=None):
  return maniskill_common.get_config(None, arg)
