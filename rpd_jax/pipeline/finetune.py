"""Fine-tune Octo (or train a small Octo from scratch) on recorded demonstrations.

  python -m rpd_jax.pipeline.finetune --config=experiments/finetune_octo.py[:variant,...] \
      [--workdir=runs/finetune/pushcube] [--config.num_steps=...]

The workdir IS an Octo checkpoint in the official layout (``config.json``,
``example_batch.msgpack``, ``dataset_statistics.json``, ``<step>/default/checkpoint``), so
``rpd_jax.octo.load_pretrained(workdir)`` and the Octo teacher (``teacher.kwargs.checkpoint``)
read it like any released checkpoint. Beside it: ``metrics.jsonl`` (loss, learning rate, gradient
norm per logged step), ``loss.png``, and ``train_state/`` (orbax: parameters and optimizer state
for resuming; rerunning the same command continues from the last save).

Model:
- From an official checkpoint (``config.pretrained``): its config with the action head resized
  to the demonstrations (``action_horizon``, action dim), a fresh init, then every parameter
  whose path and shape match copied over (``rpd_jax.octo.transfer``: a new head where the action
  space differs, new position embeddings where the image size differs; the report is printed).
- From scratch (no ``pretrained``): an Octo-architecture model of ``config.model.size``
  (``rpd_jax.octo.sizes``), optionally without language (a single-task policy: no T5).

Training follows Octo's fine-tuning recipe: the diffusion head's noise-prediction loss on action
chunks of ``action_horizon`` steps for every timestep of a window of 1 or 2 frames (masked where
a window or chunk runs past an episode's start or end); AdamW with a warmup + cosine schedule,
global-norm gradient clipping and weight decay; modes ``full`` (everything but the T5 encoder),
``head_only`` (``heads_*``) and ``head_mlp`` (the head and the transformer's MLP blocks); the
T5 encoder is always frozen and each instruction is embedded once. Actions are normalised with
statistics of the demonstrations (mean/std; the gripper stays raw, in Octo's 0 = closed,
1 = open), saved as ``dataset_statistics.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, NamedTuple, Optional

import flax
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from rpd_jax import checkpoint as checkpoint_lib
from rpd_jax import cli
from rpd_jax import config as config_lib
from rpd_jax import octo, preemption
from rpd_jax.errors import ConfigError
from rpd_jax.octo import sizes, text
from rpd_jax.octo.model import freeze_config
from rpd_jax.octo.module import OctoModule
from rpd_jax.octo.transfer import transfer_params
from rpd_jax.pipeline import demos as demos_lib

MODES = ("full", "head_only", "head_mlp")


class FinetuneError(ConfigError):
  """A bad fine-tuning config or input; the message names the value and the fix."""


def to_octo_gripper(actions: np.ndarray) -> np.ndarray:
  """ManiSkill's gripper action (last dim, -1 closed, +1 open) -> Octo's (0 closed, 1 open)."""
  actions = np.array(actions, np.float32, copy=True)
  actions[..., -1] = (actions[..., -1] + 1.0) / 2.0
  return actions


def dataset_statistics(actions: np.ndarray, num_trajectories: int) -> dict[str, Any]:
  """Octo's fine-tuned ``dataset_statistics`` of actions [N, A] in Octo's convention.

  The last dim (gripper) is not normalised (``mask`` False), as for Octo's EEF datasets.
  """
  mask = np.ones(actions.shape[1], bool)
  mask[-1] = False
  stats = demos_lib.action_statistics(actions, mask)
  return {"action": stats, "num_transitions": int(actions.shape[0]),
          "num_trajectories": int(num_trajectories)}


def trainable_label(path: tuple[str, ...], mode: str) -> str:
  """"train" or "frozen" for the parameter at ``path`` under fine-tuning ``mode``."""
  name = "/".join(path)
  if "hf_model" in name:  # the T5 encoder: always frozen, as in Octo's fine-tuning
    return "frozen"
  if mode == "full":
    return "train"
  if mode == "head_only":
    return "train" if path[0].startswith("heads_") else "frozen"
  if mode == "head_mlp":
    return "train" if path[0].startswith("heads_") or "MlpBlock_0" in name else "frozen"
  raise FinetuneError(f"config.mode={mode!r}; use one of {', '.join(MODES)}")


def make_optimizer(config: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
  o = config.optim
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o.lr, min(o.warmup_steps, config.num_steps), config.num_steps, o.lr * o.final_lr_ratio)
  train = optax.chain(optax.clip_by_global_norm(o.clip_norm),
                      optax.adamw(schedule, weight_decay=o.weight_decay))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  labels = flax.traverse_util.unflatten_dict({k: trainable_label(k, config.mode) for k in flat})
  return optax.multi_transform({"train": train, "frozen": optax.set_to_zero()}, labels), schedule


def augment(images: jax.Array, key: jax.Array, shift: int, color: float) -> jax.Array:
  """Random shift (edge-padded, up to ``shift`` px) and brightness/contrast (+-``color``).

  images uint8 [B, W, S, S, 3]; one draw per sample, shared by the frames of its window.
  """
  batch, window, size = images.shape[0], images.shape[1], images.shape[2]
  k_shift, k_bright, k_contrast = jax.random.split(key, 3)
  x = images.astype(jnp.float32)
  if shift:
    padded = jnp.pad(x, ((0, 0), (0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    offsets = jax.random.randint(k_shift, (batch, 2), 0, 2 * shift + 1)
    crop = lambda img, off: jax.lax.dynamic_slice(
        img, (0, off[0], off[1], 0), (window, size, size, 3))
    x = jax.vmap(crop)(padded, offsets)
  if color:
    bright = jax.random.uniform(k_bright, (batch, 1, 1, 1, 1), minval=-color, maxval=color)
    contrast = jax.random.uniform(k_contrast, (batch, 1, 1, 1, 1), minval=1 - color,
                                  maxval=1 + color)
    mean = x.mean(axis=(2, 3, 4), keepdims=True)
    x = (x - mean) * contrast + mean + 255.0 * bright
  return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


class TrainState(NamedTuple):
  params: Any
  opt_state: Any
  step: jax.Array


def make_train_step(module: OctoModule, optimizer: optax.GradientTransformation,
                    config: ml_collections.ConfigDict):
  """The jitted step: (state, batch, tasks_table, stats, key) -> (state, metrics)."""
  aug = config.augment

  @jax.jit
  def train_step(state: TrainState, batch, tasks_table, stats, key):
    k_aug, k_loss = jax.random.split(key)
    if aug.enabled:
      batch = dict(batch, image=augment(batch["image"], k_aug, aug.shift, aug.color))
    tasks = jax.tree.map(lambda x: x[batch["task"]], tasks_table)
    observations = {"image_primary": batch["image"],
                    "timestep_pad_mask": batch["timestep_pad_mask"]}
    loss, grads = jax.value_and_grad(
        lambda p: octo.diffusion_loss(module, p, observations, tasks, batch["action"],
                                      batch["action_pad_mask"], stats, k_loss))(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return TrainState(params, opt_state, state.step + 1), metrics

  return train_step


def build_model(config: ml_collections.ConfigDict, image_size: int, action_dim: int
                ) -> tuple[octo.OctoModel, Optional[octo.OctoModel]]:
  """(the model to train with fresh parameters, the pretrained model or None)."""
  window, horizon = config.data.window, config.data.action_horizon
  if config.pretrained:
    pretrained = octo.load_pretrained(config.pretrained, step=config.pretrained_step)
    model_config = flax.core.unfreeze(pretrained.config)["model"]
    head = model_config["heads"]["action"]["kwargs"]
    head.pop("pred_horizon", None)  # Octo 1.0's name; written back as 1.5's
    head.update(action_horizon=horizon, action_dim=action_dim)
    if window > int(model_config.get("max_horizon", 10)):
      raise FinetuneError(f"config.data.window={window} exceeds the checkpoint's max_horizon")
    # Demonstrations carry one camera (primary); other cameras' tokenizers would see nothing.
    for key in pretrained.example_batch["observation"]:
      if key.startswith("image_") and key != "image_primary":
        model_config["observation_tokenizers"].pop(key.removeprefix("image_"), None)
    language = bool(model_config.get("task_tokenizers"))
  else:
    pretrained = None
    m = config.model
    model_config = sizes.model_config(m.size, language=m.language, goal_images=False,
                                      action_horizon=horizon, action_dim=action_dim)
    language = m.language
  example = sizes.example_batch(window, image_size)
  if not language:
    example["task"] = {"pad_mask_dict": {}}
  # Small models trained briefly need the sampler without its degenerate first step
  # (rpd_jax.octo.heads.sample_chunks); loaders that do not know the key ignore it.
  full_config = {"model": model_config, "window_size": window,
                 "sampling": {"skip_first_step": True},
                 "rpd_jax_finetune": json.loads(config.to_json())}
  # Where the demonstrations were simulated (teachers.records): folders recorded before the
  # metadata said so were recorded on the CPU, the only backend demos used then.
  backends = {demos_lib.source_info(f).get("sim_backend", "physx_cpu")
              for f in config.data.folders}
  if len(backends) == 1:
    full_config["rpd_jax_sim_backend"] = backends.pop()
  t5_config = None
  if pretrained is not None and pretrained.spec.task_tokenizers:
    t5_config = pretrained.spec.task_tokenizers[0][1].t5  # the checkpoint's own encoder
  spec = octo.parse_model_config(model_config, t5_config=t5_config)
  module = OctoModule(spec)
  obs, task = example["observation"], example["task"]
  params = jax.jit(module.init)(jax.random.key(config.seed), obs, task,
                                obs["timestep_pad_mask"])["params"]
  model = octo.OctoModel(params=params, example_batch=example,
                         dataset_statistics=sizes.identity_statistics(action_dim), module=module,
                         config=freeze_config(full_config))
  return model, pretrained


def task_table(model: octo.OctoModel, instructions: tuple[str, ...],
               tokenizer_dir: Optional[str]) -> Any:
  """Tasks [num_tasks, ...] indexed by the demonstrations' task ids (T5 run once per text)."""
  if not model.spec.task_tokenizers:
    if len(instructions) > 1:
      raise FinetuneError(
          f"{len(instructions)} tasks ({'; '.join(instructions)}) but the model has no language "
          "input: set config.model.language=True (or fine-tune a pretrained Octo)")
    return jax.tree.map(jnp.asarray, model.create_tasks())
  if "" in instructions:
    raise FinetuneError("the model takes language but a demonstration source has no "
                        "instruction (a ManiSkill .h5 file holds none): give one per source in "
                        "config.data.instructions")
  embeddings = model.embed_instructions(instructions, text.T5Tokenizer.find(tokenizer_dir))
  return jax.tree.map(jnp.asarray, model.create_tasks(language_embeddings=embeddings))


def validate(config: ml_collections.ConfigDict) -> None:
  if not config.data.folders:
    raise FinetuneError("config.data.folders is empty; record demonstrations with "
                        "`python -m rpd_jax.pipeline.demos` and list their folders (or "
                        "ManiSkill trajectory .h5 files)")
  if config.data.window not in (1, 2):
    raise FinetuneError(f"config.data.window={config.data.window}; Octo uses 1 or 2")
  if config.mode not in MODES:
    raise FinetuneError(f"config.mode={config.mode!r}; use one of {', '.join(MODES)}")
  if config.mode != "full" and not config.pretrained:
    raise FinetuneError(f"config.mode={config.mode!r} freezes the transformer, which makes no "
                        "sense from scratch: set config.pretrained or use mode 'full'")
  for name in ("num_steps", "batch_size"):
    if config[name] < 1:
      raise FinetuneError(f"config.{name}={config[name]} must be >= 1")
  if config.optim.warmup_steps >= config.num_steps:
    raise FinetuneError(f"config.optim.warmup_steps={config.optim.warmup_steps} leaves no steps of "
                        f"the cosine decay in config.num_steps={config.num_steps}: lower it below "
                        "num_steps")


def finetune(config: ml_collections.ConfigDict, workdir: str, progress: bool = True
             ) -> dict[str, float]:
  """Trains and writes the checkpoint into ``workdir``; returns the last logged metrics."""
  validate(config)
  instructions = config.data.get("instructions")
  demos = demos_lib.load(list(config.data.folders), config.data.get("max_episodes"),
                         list(instructions) if instructions is not None else None,
                         config.data.get("camera"))
  image_size, action_dim = demos.image.shape[1], demos.action.shape[1]
  octo_actions = to_octo_gripper(demos.action)
  demos = demos_lib.Demos(**{**vars(demos), "action": octo_actions})
  stats = dataset_statistics(octo_actions, demos.episodes)
  model, pretrained = build_model(config, image_size, action_dim)
  if pretrained is not None:
    params, report = transfer_params(pretrained.params, model.params)
    print(f"from {config.pretrained}: {report.summary()}")
    model = model.replace(params=params)
  model = model.replace(dataset_statistics=stats)
  tasks = task_table(model, demos.instructions, config.tokenizer_dir)
  optimizer, schedule = make_optimizer(config, model.params)
  state = TrainState(model.params, optimizer.init(model.params), jnp.asarray(0, jnp.int32))
  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "train_state"), max_to_keep=2)
  # orbax keeps its checkpoints under <dir>/checkpoints; the folder name keeps them apart from
  # the Octo layout's numbered step folders.
  start, restored = ckpt.restore_latest(state)
  if start:
    state = restored
    print(f"resuming from step {start}")
  train_step = make_train_step(module=model.module, optimizer=optimizer, config=config)
  stats_jax = {k: jnp.asarray(v) for k, v in stats["action"].items()
               if k in ("mean", "std", "mask")}
  data = demos_lib.batches(demos, config.batch_size, config.data.window,
                           config.data.action_horizon, seed=config.seed + start)
  n_params = sum(x.size for x in jax.tree.leaves(model.params))
  print(f"{demos.episodes} episodes, {len(demos)} steps, {len(demos.instructions)} task(s); "
        f"model {n_params / 1e6:.2f}M parameters; {config.num_steps} steps of batch "
        f"{config.batch_size}")
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  _drop_rows_after(metrics_path, start)
  last: dict[str, float] = {}
  key = jax.random.key(config.seed)
  bar = tqdm.tqdm(total=config.num_steps, initial=start, unit="step", disable=not progress,
                  desc="finetune", file=sys.stdout)
  window_loss, t_start = [], time.perf_counter()
  done, done_state = start, state  # the last finished step: what a signal saves
  with preemption.Guard() as guard:
    try:
      with open(metrics_path, "a") as metrics_file:
        for step in range(start + 1, config.num_steps + 1):
          state, metrics = train_step(state, next(data), tasks, stats_jax,
                                      jax.random.fold_in(key, step))
          window_loss.append(metrics["loss"])
          bar.update(1)
          if step % config.log_every == 0 or step == config.num_steps:
            loss = float(np.mean(jax.device_get(window_loss)))
            if not np.isfinite(loss):
              raise FloatingPointError(f"fine-tuning loss is {loss} at step {step}; lower "
                                       f"config.optim.lr (now {config.optim.lr})")
            last = {"step": step, "loss": loss, "grad_norm": float(metrics["grad_norm"]),
                    "lr": float(schedule(step)),
                    "steps_per_second": len(window_loss) / (time.perf_counter() - t_start)}
            metrics_file.write(json.dumps(last) + "\n")
            metrics_file.flush()
            bar.set_postfix(loss=f"{loss:.4f}")
            window_loss, t_start = [], time.perf_counter()
          with guard.deferred():
            done, done_state = step, state
            if step % config.save_every == 0 or step == config.num_steps:
              _save(ckpt, model, done_state, workdir, step)
    except preemption.Interrupt as e:
      guard.acknowledge()
      if done > (ckpt.latest() or 0):
        _save(ckpt, model, done_state, workdir, done)
      raise preemption.Stopped(e.signum, done, workdir if done else None, unit="step") from None
    finally:
      bar.close()
      ckpt.close()
  plot_loss(metrics_path, os.path.join(workdir, "loss.png"))
  return last


def _drop_rows_after(metrics_path: str, step: int) -> None:
  """Keeps the logged rows up to the step resumed from (a stopped run logs them again), and
  drops a last line that a kill cut short."""
  if not os.path.exists(metrics_path):
    return
  rows = []
  for line in open(metrics_path):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  with open(metrics_path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= step)


def _save(ckpt: checkpoint_lib.Checkpointer, model: octo.OctoModel, state: TrainState,
          workdir: str, step: int) -> None:
  """The train state (for resuming) and the Octo checkpoint of ``step``."""
  ckpt.save(step, state)
  octo.save_pretrained(model.replace(params=state.params), workdir, step)


def plot_loss(metrics_path: str, out: str) -> None:
  """loss against step (log scale), from ``metrics.jsonl``."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [json.loads(line) for line in open(metrics_path)]
  if not rows:
    return
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("diffusion loss (noise MSE)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def main(config: ml_collections.ConfigDict, spec: str) -> None:
  from absl import flags, logging  # pylint: disable=g-import-not-at-top,g-multiple-import
  logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
  workdir = flags.FLAGS.workdir or config_lib.default_workdir(
      spec, root=os.path.join("runs", "finetune"))
  try:
    last = finetune(config, workdir)
  except preemption.Stopped as e:
    cli.stopped(e, "rpd_jax.pipeline.finetune", workdir if not flags.FLAGS.workdir else None)
  print(f"checkpoint: {workdir} (loss {last.get('loss', float('nan')):.4f}, curve in "
        f"{workdir}/loss.png); use it with --config.teacher.kwargs.checkpoint={workdir}")


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top,reimported
  flags.DEFINE_string("workdir", None, "output checkpoint folder (default "
                      "runs/finetune/<config name>)")
  cli.run_with_config(main)
