"""Making teachers: demonstrations -> Octo fine-tuning -> the teacher alone on tasks.

  python -m rpd_jax.pipeline.demos         record scripted demonstrations (``demos.py``)
  python -m rpd_jax.pipeline.finetune      fine-tune or train an Octo on them (``finetune.py``)
  python -m rpd_jax.pipeline.eval_teacher  the teacher table: success, reward, videos

Built on the ``rpd_jax.octo`` library (loading, saving, ``diffusion_loss``, ``normalize``) and
the one step loop of ``rpd_jax.rollout``; the RL trainer does not import it.
"""
