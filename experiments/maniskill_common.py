"""What the ManiSkill3 experiment files share: the base config and the variants.

``get_config(env_id, ...)`` for one of the paper's eight tasks (their files), or
``get_config(None, ...)`` for the generic experiment (``experiments/maniskill.py``), whose task
and teacher come from the command line.

The simulation backend and the geometry follow the machine: ``sim_backend="auto"`` simulates on
the GPU where torch and JAX both see one, and the env count, evaluation envs and minibatches,
left None here, are filled in for that backend (``rpd_jax/envs/maniskill_config.GEOMETRY``: 4
worker processes on a CPU, 512 state or 128 image envs on a GPU). Set any of them to override.

Variants (besides the common ones of rpd_jax.config, combine with commas):
  rgb        the paper's student: NatureCNN on the 256x256 human camera, rgb only
  state_rgb  rgb plus the robot's proprioception (joint positions and velocities)
  octo       the paper's teacher: an Octo checkpoint on the human camera, rgb student, RPD-MSE
             (default: the task's shipped Octo teacher, the human camera at 128x128 for the
             teacher only, a state student). Your own checkpoint:
             --config.teacher.kwargs.checkpoint=<folder> (README, "Your own Octo checkpoint")
  paper      the published run's settings, for a GPU (:paper, :sparse,paper, :paper,ppo)
  scripted   (the paper's tasks with a scripted controller) state student, scripted teacher, no
             rendering
  smoke      seconds on a CPU: 1 env, a few short iterations, a tiny evaluation
"""

from __future__ import annotations

import ml_collections

from rpd_jax import config as config_lib
from rpd_jax.envs import tasks
from rpd_jax.teachers import maniskill_scripted


def _rgb(c: ml_collections.ConfigDict) -> None:
  c.env.kwargs.obs_mode = "rgb"
  c.env.kwargs.image_size = 256  # the paper's human camera (a teacher resizes to its own)
  c.network.encoder = "cnn"
  c.network.obs_keys = ("rgb",)


def _state_rgb(c: ml_collections.ConfigDict) -> None:
  c.env.kwargs.obs_mode = "state_rgb"
  c.env.kwargs.image_size = 256
  c.network.encoder = "cnn"
  c.network.obs_keys = ("rgb", "state")


def _octo(c: ml_collections.ConfigDict) -> None:
  """The paper's setup: an Octo teacher on the human camera and an rgb student.

  Point it at your checkpoint with ``--config.teacher.kwargs.checkpoint=<folder or hub id>``
  (default: the RPD paper's fine-tuned Octo, from third_party/downloads or the Hugging Face
  cache; see third_party/README.md). The loss becomes RPD-MSE unless a distillation loss was
  chosen already; put ``ppo`` after ``octo`` for the PPO baseline of the same run.
  """
  _rgb(c)
  c.teacher.name = "octo"
  c.teacher.kwargs = _octo_kwargs(c, "Juelg/octo-base-1.5-finetuned-maniskill")
  if c.distill.loss == "none":
    c.distill.loss = "mse"


def _octo_kwargs(c: ml_collections.ConfigDict, checkpoint: str | None
                 ) -> ml_collections.ConfigDict:
  """An Octo teacher's own config: the checkpoint, the task's instruction (the paper's tasks;
  the generic experiment's come from the command line), and how the
  checkpoint is fed (rpd_jax.teachers.octo.make_teacher; README, "Your own Octo checkpoint").
  Unset fields come from the checkpoint itself; the trainer logs what each one became."""
  optional = ml_collections.config_dict.placeholder
  info = tasks.TASKS.get(c.env.kwargs.env_id)
  return ml_collections.ConfigDict({
      "checkpoint": ml_collections.FieldReference(checkpoint, field_type=str),
      "instruction": ml_collections.FieldReference(info and info.instruction, field_type=str),
      "tokenizer_dir": optional(str),  # the t5-base spiece.model's folder (language models)
      "window": optional(int),  # frames per query; unset: the checkpoint's window (1 or 2)
      # Observations concatenated into the checkpoint's proprio, e.g. "qpos" or
      # "qpos[:7],tcp_pose" (ManiSkill gives qpos, qvel, tcp_pose); for checkpoints that read it.
      "proprio": optional(str),
      "goal_image": optional(str),  # an image file of the goal, for goal-image checkpoints
      # "normal" or "bounds"; unset: what the checkpoint's config.json records, else "normal".
      "normalization_type": optional(str),
      "dataset_name": optional(str),  # whose statistics, for checkpoints with several
      # The checkpoint's gripper: "maniskill" (Octo's [0, 1], 1 = open, mapped to ManiSkill's
      # [-1, 1]), "clip" (already ManiSkill's [-1, 1]) or "raw" (untouched); all but raw clip.
      "gripper": "maniskill",
  })


# Every shipped teacher sees the human camera at this resolution (its demonstrations').
SHIPPED_TEACHER_IMAGE_SIZE = 128


def shipped_octo_teacher(checkpoint: str | None, image_size: int) -> config_lib.Variant:
  """A default: a state student (the full state) and a shipped Octo teacher on the human camera.

  The env renders the human camera at the teacher's resolution (``image_size``) for the
  teacher only; the student's MLP sees ``privileged`` (the same full state as obs_mode
  "state"). Shipped teachers: rpd_jax/teachers/checkpoints/README.md. ``checkpoint`` None: the
  generic experiment's, named on the command line.
  """
  def apply(c: ml_collections.ConfigDict) -> None:
    c.env.kwargs.obs_mode = "rgb"
    c.env.kwargs.image_size = image_size
    c.network.encoder = "mlp"
    c.network.obs_keys = ("privileged",)
    c.teacher.name = "octo"
    c.teacher.kwargs = _octo_kwargs(c, checkpoint)
    c.distill.loss = "mse"
  return apply


def _scripted_teacher(c: ml_collections.ConfigDict) -> None:
  """The task's scripted controller at its TASK_NOISE, reading the privileged state."""
  c.teacher.name = "scripted_maniskill"
  task = c.env.kwargs.env_id
  c.teacher.kwargs = ml_collections.ConfigDict(
      {"task": task, "noise": maniskill_scripted.TASK_NOISE[task]})


def _scripted(c: ml_collections.ConfigDict) -> None:
  """State student, scripted teacher reading the privileged state (no rendering)."""
  c.env.kwargs.obs_mode = "state"
  c.env.kwargs.image_size = 256
  c.network.encoder = "mlp"
  c.network.obs_keys = ("state",)
  _scripted_teacher(c)
  if c.distill.loss == "none":
    c.distill.loss = "mse"


def _paper(c: ml_collections.ConfigDict) -> None:
  """The published run's settings (the official code's train.py and ppo_rgb_rpd.py), for a GPU.

  The paper's teacher (fine-tuned octo-base on the 256x256 human camera, ``octo``), its raw
  unnormalised actions as the target (no gripper mapping, no clipping), a fresh teacher answer
  at every epoch, the official rgb agent, 128 envs x 50 steps, 8 epochs, lr 3e-4, 30M steps,
  PPD with 10 samples, advantage normalisation on for dense and sparse alike. Put ``sparse``
  before it (``:sparse,paper``: paper turns advantage normalisation back on) and a loss after it
  (``:paper,ppo``, ``:sparse,paper,ppd``: like ``octo``, it sets RPD-MSE). What differs from the
  official run, and why: README, "The paper's settings".
  """
  _octo(c)
  c.env.kwargs.image_size = 256
  c.network.encoder, c.network.obs_keys = "ppo_rgb", ("rgb",)
  c.network.cnn_features = 256
  c.teacher.kwargs.gripper = "raw"
  c.teacher.kwargs.window = 1  # the published runs used one frame
  c.teacher.resample = "epoch"
  c.env.num_envs = 128
  c.ppo.num_steps = 50
  c.ppo.update_epochs = 8
  # The official 48 minibatches of 133 leave a 16-sample 49th; minibatches here are equal:
  # 50 of 128, the nearest split of 6,400.
  c.ppo.num_minibatches = 50
  c.ppo.learning_rate = 3e-4
  c.ppo.anneal_lr = False
  c.ppo.norm_adv = True
  c.total_env_steps = 30_000_000
  c.distill.ppd_samples = 10
  c.eval_every = 10
  c.eval_envs = 100  # on one GPU simulator; the official run evaluated 500 envs at once
  c.eval_episodes = 500
  c.eval_protocol, c.eval_steps = "fixed_steps", 50  # also for RollBall and PullCubeTool


def _smoke(c: ml_collections.ConfigDict) -> None:
  """Seconds on a CPU; keeps the loss, teacher and observations of the other variants."""
  c.env.num_envs = 1
  c.env.kwargs.image_size = 64
  c.ppo.num_steps = 8
  c.ppo.num_minibatches = 2
  c.ppo.update_epochs = 2
  c.total_env_steps = 2 * 8
  c.network.hidden = (32, 32)
  c.network.cnn_features = 32
  c.eval_every = 2
  c.eval_envs = 1
  c.eval_episodes = 1
  c.checkpoint_every = 2
  c.distill.ppd_samples = 4
  c.teacher.max_batch = 8


def get_config(env_id: str | None, arg: str | None,
               extra: dict[str, config_lib.Variant] | None = None) -> ml_collections.ConfigDict:
  """The config of a ManiSkill3 task with the variants in ``arg`` applied.

  Default: RPD-MSE from the task's shipped Octo teacher (``tasks.task_info(env_id).teacher``, on
  the 128x128 human camera; rpd_jax/teachers/checkpoints/README.md) to a state student, dense
  (normalized) reward. ``scripted`` swaps in the scripted teacher where the task has one (no
  rendering: several times faster on a CPU).

  ``env_id`` None: the generic experiment. The task (``env.kwargs.env_id``), the Octo teacher's
  checkpoint and instruction are left None for the command line, and the rollout length follows
  the task's time limit (``rpd_jax.envs.maniskill_config``).
  """
  info = tasks.task_info(env_id) if env_id is not None else None
  c = config_lib.base_config()
  c.env.name = "maniskill"
  c.env.kwargs.env_id = ml_collections.FieldReference(env_id, field_type=str)
  c.env.kwargs.camera = "human"
  c.env.kwargs.sim_backend = "auto"
  # None: follows the backend (rpd_jax/envs/maniskill_config.GEOMETRY), resolved by validation.
  c.env.num_envs = ml_collections.config_dict.placeholder(int)
  c.ppo.num_minibatches = ml_collections.config_dict.placeholder(int)
  c.eval_envs = ml_collections.config_dict.placeholder(int)
  c.eval_episodes = ml_collections.config_dict.placeholder(int)
  # The Panda's hand camera as "rgb_wrist" at this size, for a teacher whose checkpoint reads a
  # wrist camera (rendered only when set).
  c.env.kwargs.wrist_image_size = ml_collections.config_dict.placeholder(int)
  c.total_env_steps = 1_000_000
  # None: the task's time limit (rpd_jax/envs/maniskill_config.py).
  c.ppo.num_steps = ml_collections.FieldReference(info and info.max_episode_steps, field_type=int)
  c.eval_every = 10
  c.eval_videos = 2  # videos/step<env steps>_<i>.mp4 of the human camera, per evaluation
  c.checkpoint_every = 50
  shipped_octo_teacher(info and info.teacher, SHIPPED_TEACHER_IMAGE_SIZE)(c)
  variants = {"rgb": _rgb, "state_rgb": _state_rgb, "octo": _octo, "paper": _paper,
              "smoke": _smoke,
              **(extra or {})}
  if env_id in maniskill_scripted.CONTROLLERS:
    variants["scripted"] = _scripted
  c = config_lib.apply_variants(c, arg, variants)
  _no_camera_without_a_reader(c)
  return c


def _no_camera_without_a_reader(c: ml_collections.ConfigDict) -> None:
  """PPO (no teacher) with the default state student: the same student without rendering.

  The default renders the human camera for the teacher alone, so with ``ppo`` nothing would
  read it; the state observation is the same full state the student reads as ``privileged``.
  """
  if c.distill.loss == "none" and tuple(c.network.obs_keys) == ("privileged",):
    c.env.kwargs.obs_mode = "state"
    c.network.obs_keys = ("state",)
