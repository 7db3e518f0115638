"""The base training config, the variants every experiment shares, and config validation.

Experiment files (``experiments/<name>.py``) define ``get_config(arg)``: they start from
``base_config()``, set their env and teacher, and call ``apply_variants(config, arg, extra)``
where ``arg`` is the text after ':' on the command line (``pickcube.py:ppo,smoke``) and
``extra`` holds the experiment's own variants (at least ``smoke``). Variants are applied left to
right, so ``:sparse,smoke`` is a sparse-reward run shrunk to seconds with the default loss.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import sys
from typing import Callable, Mapping, Sequence

import ml_collections

from rpd_jax import budget, envs, losses, teachers
from rpd_jax import evaluate as evaluate_lib
from rpd_jax import ppo as ppo_lib
from rpd_jax.errors import ConfigError
from rpd_jax.teachers import records

Variant = Callable[[ml_collections.ConfigDict], None]

LOSSES = ("none", *losses.DISTILL)
# Fields that were renamed: old dotted path -> new one (the command line names the new one).
RENAMED = {"teacher.chunk_size": "teacher.max_batch"}
ENCODERS = ("mlp", "cnn", "ppo_rgb")
REWARDS = ("normalized_dense", "dense", "sparse")


def base_config() -> ml_collections.ConfigDict:
  """Defaults: ManiSkill's PPO settings and the published RPD run (see DESIGN.md)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_env_steps = 1_000_000

  # Which environment, by name (rpd_jax.envs.make_env); kwargs go to its constructor.
  c.env = ml_collections.ConfigDict()
  c.env.name = "jax_push"
  c.env.num_envs = 64
  c.env.reward_mode = "normalized_dense"  # one of REWARDS
  c.env.kwargs = ml_collections.ConfigDict()

  # Which teacher, by name (rpd_jax.teachers.make_teacher); "none" for plain PPO.
  c.teacher = ml_collections.ConfigDict()
  c.teacher.name = "none"
  # The most observations one teacher call inside the update takes (all students updating side
  # by side together), which bounds its memory; 0: the most that fit in a quarter of the
  # device's memory (2 GiB on a CPU), from XLA's memory analysis of the teacher
  # (rpd_jax.teachers.base.auto_max_batch). Formerly teacher.chunk_size.
  c.teacher.max_batch = 0
  # "transition": one teacher answer per collected transition serves every epoch; "epoch": a
  # fresh one at every epoch (the published code's per-minibatch query; 8x the teacher's work).
  c.teacher.resample = "transition"
  # The teacher budget (rpd_jax/budget.py): the fraction of each rollout's steps whose
  # transitions the teacher labels, every env of a labelled step at once, evenly spaced; the
  # distillation term averages over the labelled transitions, and the env observes the
  # teacher's own keys (its camera beside a state student) only where they are read. 1.0: every
  # transition. Measured: README, "Teacher budget".
  c.teacher.query_fraction = 1.0
  c.teacher.kwargs = ml_collections.ConfigDict()

  # The distillation term added to the PPO loss.
  c.distill = ml_collections.ConfigDict()
  c.distill.loss = "mse"  # one of LOSSES; "none" is plain PPO
  c.distill.coef = 1.0  # lambda
  # One of SCHEDULES: "constant"; "linear"/"cosine": lambda decays to 0 at decay_steps;
  # "surpass": constant until the student's evaluated success first passes teacher_success,
  # then linearly to 0 over decay_steps more env steps (0: at once). Where lambda is 0 the
  # teacher is not asked (nor its camera rendered).
  c.distill.schedule = "constant"
  c.distill.decay_steps = 0  # env steps of a schedule's decay (see schedule)
  # The teacher's success alone that "surpass" compares with; None: from the teacher's records
  # (rpd_jax/teachers/records.py), filled in by validation.
  c.distill.teacher_success = ml_collections.config_dict.placeholder(float)
  c.distill.ppd_samples = 8  # N teacher samples PPD fits its Gaussian to
  c.distill.ppd_min_std = 0.05  # floor on the fitted std, so the fit never degenerates

  # PPO, with ManiSkill's defaults.
  c.ppo = ml_collections.ConfigDict()
  c.ppo.num_steps = 50  # rollout length T per iteration (transitions = T * num_envs)
  c.ppo.update_epochs = 8
  c.ppo.num_minibatches = 32
  c.ppo.learning_rate = 3e-4
  c.ppo.anneal_lr = False
  c.ppo.gamma = 0.8  # 0.8 for dense rewards, 0.99 for sparse (the "sparse" variant sets it)
  c.ppo.gae_lambda = 0.9
  c.ppo.finite_horizon_gae = True
  # Which ended episodes bootstrap from V(final observation): "truncated" (time limit only; a
  # terminal state is worth 0) or "always" (ManiSkill's default). ManiSkill tasks terminate on
  # success, so with "truncated" and a dense reward an episode that hovers short of success
  # earns more than one that succeeds: measured on jax_push, PPO then unlearns success.
  c.ppo.bootstrap_at_done = "always"
  c.ppo.clip_coef = 0.2
  c.ppo.clip_vloss = False
  c.ppo.vf_coef = 0.5
  c.ppo.ent_coef = 0.0
  c.ppo.max_grad_norm = 0.5
  c.ppo.target_kl = 0.2  # stop the epochs of an update once the approx KL exceeds this (0: off)
  # Normalise advantages per minibatch (ManiSkill's default). The "sparse" variant turns it off:
  # before the first success every advantage is ~0, and normalising blows rounding noise up to
  # unit scale; that noise drowned the distillation term (RPD-MSE on sparse jax_push: 0% eval
  # success after 128k steps with it, 100% at 80k without).
  c.ppo.norm_adv = True
  c.ppo.reward_scale = 1.0

  # The student network.
  c.network = ml_collections.ConfigDict()
  # One of ENCODERS: "mlp" on state, "cnn" (NatureCNN-like) on rgb, both with tanh heads of
  # ``hidden``; "ppo_rgb": the published run's agent (ReLU heads of 512, torch-initialised CNN).
  c.network.encoder = "mlp"
  c.network.obs_keys = ("state",)  # observation keys the student sees
  c.network.hidden = (256, 256, 256)  # MLP widths of the actor and critic heads
  c.network.cnn_features = 256
  c.network.log_std_init = -0.5
  # Bounds on the log-std the policy uses (None: unbounded, the default). RPD-BC maximises the
  # teacher's likelihood, which drives the std down without bound; a floor keeps exploring.
  c.network.log_std_min = ml_collections.config_dict.placeholder(float)
  c.network.log_std_max = ml_collections.config_dict.placeholder(float)

  # Independent students trained at once (rpd_jax/students.py): student k is the run with seed
  # ``seed + k``; K x num_envs envs, one vmapped update, metrics per seed and their mean +- std.
  c.num_seeds = 1
  # How many students update side by side (vmapped) in the one jitted update; groups of that
  # many go one after another (lax.map). None: all K for an MLP student (on an H200, 16 state
  # students on jax_push got 7.5x one student's env steps/s), 1 for an image student: vmapped,
  # XLA runs the students' convolution weight gradients as one grouped convolution, and on an
  # H200 the update of 5 ppo_rgb students took 16.5 s that way against 3.9 s one after another
  # (0.67 s for one). README, "Many seeds at once".
  c.seeds_vmapped = ml_collections.config_dict.placeholder(int)

  # Data parallelism (rpd_jax/parallel.py): the envs split evenly over ``data`` devices, the
  # update one SPMD program over them (gradients averaged by XLA's all-reduce).
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1

  # Logging, evaluation and checkpoints, in PPO iterations.
  c.log_every = 1
  c.eval_every = 10
  c.eval_envs = 16
  c.eval_episodes = 32
  c.eval_videos = 0  # episodes recorded as video per evaluation (needs env.render)
  # "first_episode": each eval env's first episode to its end; "fixed_steps": the published
  # protocol, eval_steps steps with successes not ending episodes (rpd_jax.evaluate).
  c.eval_protocol = "first_episode"
  c.eval_steps = 50
  c.checkpoint_every = 10
  c.keep_checkpoints = 3
  return c


def _loss(name: str) -> Variant:
  def apply(c):
    c.distill.loss = name
  return apply


def _sparse(c):
  c.env.reward_mode = "sparse"
  c.ppo.gamma = 0.99
  c.ppo.norm_adv = False


COMMON_VARIANTS: dict[str, Variant] = {
    "ppo": _loss("none"),
    "rpd_mse": _loss("mse"),
    "rpd_l1": _loss("l1"),
    "rpd_bc": _loss("bc"),
    "ppd": _loss("ppd"),
    "sparse": _sparse,
}


def apply_variants(c: ml_collections.ConfigDict, arg: str | None,
                   extra: Mapping[str, Variant], common: bool = True
                   ) -> ml_collections.ConfigDict:
  """Applies the comma-separated variants in ``arg``, left to right, to ``c``.

  ``extra`` adds to (``common``) or replaces the training variants of COMMON_VARIANTS.
  """
  variants = {**COMMON_VARIANTS, **extra} if common else dict(extra)
  for name in filter(None, (arg or "").split(",")):
    name = name.strip()
    if name not in variants:
      raise ValueError(
          f"unknown config variant {name!r}; choose from {', '.join(sorted(variants))} "
          f"(combine them with commas, e.g. ':sparse,smoke')")
    variants[name](c)
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first bad value, before anything is built or compiled.

  First the env resolves what follows the machine in place (``envs.configure``: ManiSkill's
  simulation backend and the geometry its experiment files leave None), so the checks below,
  and the ``config.json`` a run writes, see the values that run.
  """
  def check(ok: bool, msg: str):
    if not ok:
      raise ConfigError(msg)

  envs.configure(c)
  check(c.distill.loss in LOSSES,
        f"config.distill.loss={c.distill.loss!r} is unknown; use one of {', '.join(LOSSES)}")
  check(c.distill.schedule in losses.SCHEDULES,
        f"config.distill.schedule={c.distill.schedule!r} is unknown; use one of "
        f"{', '.join(losses.SCHEDULES)}")
  check(c.distill.schedule in ("constant", "surpass") or c.distill.decay_steps > 0,
        f"config.distill.decay_steps={c.distill.decay_steps} must be > 0 for the "
        f"{c.distill.schedule!r} schedule (the env step at which lambda reaches 0)")
  check(c.distill.decay_steps >= 0,
        f"config.distill.decay_steps={c.distill.decay_steps} must be >= 0")
  check(c.network.encoder in ENCODERS,
        f"config.network.encoder={c.network.encoder!r} is unknown; use one of "
        f"{', '.join(ENCODERS)}")
  lo, hi = c.network.log_std_min, c.network.log_std_max
  check((lo is None or lo <= c.network.log_std_init) and
        (hi is None or c.network.log_std_init <= hi),
        f"config.network.log_std_init={c.network.log_std_init} is outside [log_std_min, "
        f"log_std_max] = [{lo}, {hi}]; move the bounds or the initial value")
  check(c.network.encoder == "mlp" or "rgb" in c.network.obs_keys,
        f"config.network.encoder={c.network.encoder!r} encodes images, but "
        f"config.network.obs_keys={tuple(c.network.obs_keys)} has no 'rgb'; add it or use the "
        "'mlp' encoder")
  check(c.ppo.bootstrap_at_done in losses.BOOTSTRAPS,
        f"config.ppo.bootstrap_at_done={c.ppo.bootstrap_at_done!r} is unknown; use one of "
        f"{', '.join(losses.BOOTSTRAPS)}")
  check(c.env.reward_mode in REWARDS,
        f"config.env.reward_mode={c.env.reward_mode!r} is unknown; use one of "
        f"{', '.join(REWARDS)}")
  check(c.teacher.name in teachers.TEACHER_NAMES,
        f"config.teacher.name={c.teacher.name!r} is unknown; use one of "
        f"{', '.join(teachers.TEACHER_NAMES)}")
  check(c.distill.loss == "none" or c.teacher.name != "none",
        f"config.distill.loss={c.distill.loss!r} needs a teacher but config.teacher.name is "
        f"'none'; set --config.teacher.name or use the 'ppo' variant")
  produced = envs.observation_keys(c.env)  # also rejects an unknown env name or obs_mode
  if produced is not None:  # else known once the env is built: the trainer checks them then
    check_observation_keys(c, produced)
  for name in ("learning_rate", "clip_coef", "vf_coef", "ent_coef", "max_grad_norm",
               "target_kl", "gae_lambda", "reward_scale"):
    value = c.ppo[name]
    check(value >= 0, f"config.ppo.{name}={value} is negative; it must be >= 0")
  check(c.distill.coef >= 0, f"config.distill.coef={c.distill.coef} is negative; it must be >= 0")
  check(0 < c.ppo.gamma <= 1, f"config.ppo.gamma={c.ppo.gamma} must be in (0, 1]")
  check(c.distill.ppd_min_std > 0,
        f"config.distill.ppd_min_std={c.distill.ppd_min_std} must be > 0 (it floors the std of "
        f"PPD's fitted Gaussian)")
  check(c.distill.loss != "ppd" or c.distill.ppd_samples >= 2,
        f"config.distill.ppd_samples={c.distill.ppd_samples}: PPD fits a Gaussian to the "
        f"teacher's samples and needs at least 2")
  for name, value in (("env.num_envs", c.env.num_envs), ("ppo.num_steps", c.ppo.num_steps),
                      ("ppo.update_epochs", c.ppo.update_epochs),
                      ("ppo.num_minibatches", c.ppo.num_minibatches),
                      ("total_env_steps", c.total_env_steps), ("eval_envs", c.eval_envs),
                      ("log_every", c.log_every), ("eval_every", c.eval_every),
                      ("checkpoint_every", c.checkpoint_every)):
    check(value > 0, f"config.{name}={value} must be a positive integer")
  check(c.teacher.resample in ppo_lib.RESAMPLE,
        f"config.teacher.resample={c.teacher.resample!r} is unknown; use one of "
        f"{', '.join(ppo_lib.RESAMPLE)}")
  fraction = c.teacher.query_fraction
  check(0 < fraction <= 1 and budget.num_labelled(c.ppo.num_steps, fraction) >= 1,
        f"config.teacher.query_fraction={fraction} must be in (0, 1] and label at least one of "
        f"the config.ppo.num_steps={c.ppo.num_steps} steps of a rollout (round(fraction * "
        f"num_steps) >= 1); use >= {1 / c.ppo.num_steps:.3g}")
  if c.distill.schedule == "surpass" and c.distill.loss != "none":
    _resolve_teacher_success(c)
  check(c.teacher.max_batch >= 0,
        f"config.teacher.max_batch={c.teacher.max_batch} must be >= 0 (0: chosen from the "
        "device's memory)")
  batch = c.env.num_envs * c.ppo.num_steps
  check(batch % c.ppo.num_minibatches == 0,
        f"config.ppo.num_minibatches={c.ppo.num_minibatches} does not divide the batch of "
        f"num_envs * num_steps = {c.env.num_envs} * {c.ppo.num_steps} = {batch}; pick a divisor "
        f"of {batch}")
  check(c.eval_protocol in evaluate_lib.PROTOCOLS,
        f"config.eval_protocol={c.eval_protocol!r} is unknown; use one of "
        f"{', '.join(evaluate_lib.PROTOCOLS)}")
  check(c.num_seeds >= 1, f"config.num_seeds={c.num_seeds} must be >= 1")
  check(c.seeds_vmapped is None or c.seeds_vmapped >= 1,
        f"config.seeds_vmapped={c.seeds_vmapped} must be >= 1 (students updated side by "
        "side), or None for the default")
  data = c.mesh.data
  check(data == 1 or c.num_seeds == 1,
        f"config.num_seeds={c.num_seeds} with config.mesh.data={data}: seeds and data "
        "parallelism do not combine yet; use one of them")
  check(data >= 1 and c.env.num_envs % data == 0,
        f"config.mesh.data={data} must be >= 1 and divide config.env.num_envs="
        f"{c.env.num_envs} (each device steps num_envs / data envs)")
  check(c.total_env_steps >= batch,
        f"config.total_env_steps={c.total_env_steps} is less than one iteration "
        f"(num_envs * num_steps = {batch}); raise it")
  check(c.eval_episodes % c.eval_envs == 0,
        f"config.eval_episodes={c.eval_episodes} is not a multiple of config.eval_envs="
        f"{c.eval_envs}; make it one")


def check_observation_keys(c: ml_collections.ConfigDict, produced: Sequence[str]) -> None:
  """ConfigError where the student or the teacher reads an observation key the env does not
  give (``produced``)."""
  given = (f"with obs_mode={c.env.kwargs.get('obs_mode', 'state')!r} "
           if c.env.name in envs.OBSERVATION_KEYS else "")
  for key in c.network.obs_keys:
    if key not in produced:
      raise ConfigError(
          f"config.network.obs_keys has {key!r}, which the {c.env.name} env does not give "
          f"{given}(it gives {', '.join(produced)}); change one of them")
  if c.distill.loss != "none":
    for key in teachers.observation_keys(c.teacher):
      if key not in produced:
        raise ConfigError(
            f"the {c.teacher.name!r} teacher reads observation {key!r}, which the {c.env.name} "
            f"env does not give {given}(it gives {', '.join(produced)}); "
            f"{envs.how_to_observe(c.env, key)}")


def unread_keys(c: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The observation keys the env of ``c`` gives that the student does not read (() where the
  keys are known only once the env is built: a factory's). Envs built with them as
  ``on_demand_keys`` skip them (a render) wherever no teacher reads them: in evaluation, and in
  training without a teacher."""
  produced = envs.observation_keys(c.env) or ()
  return tuple(k for k in produced if k not in c.network.obs_keys)


def _resolve_teacher_success(c: ml_collections.ConfigDict) -> None:
  """Fills config.distill.teacher_success from the teacher's records where it is None."""
  if c.distill.teacher_success is None:
    c.distill.teacher_success = records.success(c.teacher, c.env)
  if c.distill.teacher_success is None:
    raise ConfigError(
        f"config.distill.schedule='surpass' compares the student with its teacher's success "
        f"alone, and the records of the {c.teacher.name!r} teacher have none for this task "
        f"and setting; measure it (python -m rpd_jax.pipeline.eval_teacher) and set "
        f"config.distill.teacher_success")
  if not 0 <= c.distill.teacher_success < 1:
    raise ConfigError(
        f"config.distill.teacher_success={c.distill.teacher_success} must be in [0, 1): a "
        "success rate the student can pass")


def default_workdir(config_path: str, root: str = "runs") -> str:
  """``<root>/<config file name>`` for ``--config=experiments/<name>.py[:variants]``."""
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join(root, name)


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of ``"<file>.py[:variants]"``: the file's ``get_config(variants)``.

  The one loader of experiment files (train, sweep, benchmarks and tests use it). A missing
  file or an unknown variant raises ConfigError with the fix.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    here = sorted(glob.glob(os.path.join(os.path.dirname(path) or ".", "*.py")))
    raise ConfigError(f"config file {path!r} not found; {os.path.dirname(path) or '.'}/ has "
                      f"{', '.join(here) or 'no .py files'}")
  # Experiment files import their siblings as ``experiments.<name>``: the folder above theirs
  # must be importable, as it is when a command runs from the repository root.
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)
  name = os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(f"_rpd_config_{name}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(arg or None)
  except ValueError as e:  # an unknown variant (apply_variants says which, and the choices)
    raise ConfigError(str(e)) from e


def from_workdir(workdir: str) -> ml_collections.ConfigDict:
  """The config a run used: ``<workdir>/config.json`` (resolved: backend and geometry filled
  in; tuples come back as lists). ConfigError where ``workdir`` holds no run."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ConfigError(f"--workdir={workdir}: {path} is missing; name the --workdir of a run "
                      "(python -m rpd_jax.train writes its config.json there)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
