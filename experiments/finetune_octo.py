"""Fine-tuning Octo teachers on demonstrations (python -m rpd_jax.pipeline.finetune).

Default: the recipe of the shipped PushCube teacher (rpd_jax/teachers/checkpoints/
octo-tiny-pushcube): an Octo-architecture "tiny" model (1.8M parameters, no language input:
one task) trained from scratch on the first 25 of 400 recorded 128x128 human-camera
demonstrations, batch 256, 3,000 steps. Few demonstrations on purpose: RPD wants a teacher that
succeeds sometimes (this one: about 20% alone); on all 400 for 20,000 steps the same model
succeeds 100%.

  python -m rpd_jax.pipeline.demos --env_id=PushCube-v1 --episodes=400 --image_size=128 \
      --noise=0.2 --out=runs/demos/pushcube_128
  python -m rpd_jax.pipeline.finetune --config=experiments/finetune_octo.py \
      --workdir=runs/finetune/pushcube

Measured: about 40 s on one H100 (135 steps/s); a 2-core CPU does 6.2-6.5 steps/s at batch 32
(the ``cpu`` variant), too slow for this recipe (about an hour at batch 256).

Variants (combine with commas):
  cpu         batch 32, 4,000 steps: 6.2-6.5 steps/s, about 11 minutes on an idle 2-core CPU
              (the recipe of the other shipped teachers; rpd_jax/teachers/checkpoints/README.md)
  all_demos   every recorded episode, 20,000 steps (a near-perfect teacher)
  octo_small  fine-tune octo-small-1.5 (third_party/README.md) instead: head + MLP blocks,
              language input (needs the t5-base tokenizer), for 256x256 demonstrations
  full        with octo_small: train everything but T5 (Octo's "full" mode)
  head_only   with octo_small: train only the action head
  window2     two-frame observation window
  no_augment  no image augmentation
  smoke       a few steps on a few episodes (seconds; for tests)
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from rpd_jax import config as config_lib


def _octo_small(c):
  c.pretrained = "octo-small-1.5"
  c.mode = "head_mlp"
  c.data.folders = ("runs/demos/pushcube_256",)
  c.data.max_episodes = None
  c.optim.lr = 3e-4
  c.batch_size = 32


def _mode(mode):
  def apply(c):
    c.mode = mode
  return apply


def _cpu(c):
  c.batch_size = 32
  c.num_steps = 4000


def _all_demos(c):
  c.data.max_episodes = None
  c.num_steps = 20000
  c.optim.warmup_steps = 1000


def _window2(c):
  c.data.window = 2


def _no_augment(c):
  c.augment.enabled = False


def _smoke(c):
  c.num_steps = 6
  c.batch_size = 8
  c.log_every = 2
  c.save_every = 3
  c.optim.warmup_steps = 2


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict({
      # One source per task: a folder (python -m rpd_jax.pipeline.demos) or a ManiSkill
      # trajectory .h5 (rpd_jax/pipeline/maniskill_demos.py).
      "folders": ("runs/demos/pushcube_128",),
      # One per source; None keeps a folder's own (a .h5 file has none).
      "instructions": config_dict.placeholder(tuple),
      "camera": config_dict.placeholder(str),  # which camera of a .h5 file (None: its only one)
      "max_episodes": ml_collections.FieldReference(25, field_type=int),  # first N per folder; None: all
      "window": 1,  # frames per observation window (Octo: 1 or 2)
      "action_horizon": 4,  # actions per predicted chunk (Octo: 4)
  })
  c.pretrained = config_dict.placeholder(str)  # checkpoint folder or released name; None: scratch
  c.pretrained_step = config_dict.placeholder(int)
  c.tokenizer_dir = config_dict.placeholder(str)  # t5-base spiece.model, for language models
  c.model = ml_collections.ConfigDict({"size": "tiny", "language": False})  # from scratch only
  c.mode = "full"  # full | head_only | head_mlp
  c.optim = ml_collections.ConfigDict({
      "lr": 3e-4, "warmup_steps": 300, "final_lr_ratio": 0.1, "weight_decay": 0.01,
      "clip_norm": 1.0})
  c.augment = ml_collections.ConfigDict({"enabled": True, "shift": 6, "color": 0.1})
  c.batch_size = 256  # Octo's recipe
  c.num_steps = 3000
  c.log_every = 250
  c.save_every = 1000
  c.seed = 0
  variants = {"octo_small": _octo_small, "full": _mode("full"), "head_only": _mode("head_only"),
              "window2": _window2, "cpu": _cpu, "all_demos": _all_demos, "no_augment": _no_augment, "smoke": _smoke}
  return config_lib.apply_variants(c, arg, variants, common=False)
