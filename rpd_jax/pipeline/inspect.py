"""How an experiment would feed an Octo checkpoint, without training or reading its weights.

  python -m rpd_jax.pipeline.inspect --checkpoint=<folder or name> \
      --config=experiments/pushcube.py[:variants] [--config.teacher.kwargs.proprio=qpos ...]

Prints what the trainer logs when it builds the teacher (``rpd_jax.teachers.octo.describe``:
cameras and their resize from the experiment's frame sizes, proprio, window, head, action
normalisation, instruction or goal image, gripper), then the env observations the teacher reads,
where the t5-base tokenizer a language model needs is found, and whether the whole config passes
``rpd_jax.config.validate``. Anything the teacher cannot feed ends the output with its one
``error:`` line (exit status 2), as training would before any simulator starts.
"""

from __future__ import annotations

import ml_collections
from absl import flags

from rpd_jax import cli, envs
from rpd_jax import config as config_lib
from rpd_jax.errors import ConfigError
from rpd_jax.teachers import octo

def report(config: ml_collections.ConfigDict) -> list[str]:
  """The lines the command prints for ``config`` (its teacher must be Octo); ConfigError for a
  checkpoint it cannot feed."""
  if config.teacher.name != "octo":
    raise ConfigError(f"config.teacher.name={config.teacher.name!r}: the inspect command "
                      "describes Octo teachers; use an experiment whose teacher is Octo (e.g. "
                      "experiments/pushcube.py) or set --config.teacher.name=octo")
  kwargs = config.teacher.kwargs
  files = octo.read_files(kwargs.checkpoint)
  feed = octo.feed_of(files, kwargs)
  lines = octo.describe(feed, envs.frame_sizes(config.env))
  produced = envs.observation_keys(config.env)
  lines.append(f"env observations read: {', '.join(feed.observation_keys)} (the "
               f"{config.env.name} env gives {', '.join(produced)})")
  return lines


def main(config: ml_collections.ConfigDict, spec: str) -> None:
  del spec
  if flags.FLAGS.checkpoint is not None:
    config.teacher.kwargs.checkpoint = flags.FLAGS.checkpoint
  for line in report(config):
    print(line, flush=True)
  files = octo.read_files(config.teacher.kwargs.checkpoint)
  if octo.checkpoint_spec(files).task_tokenizers:
    print(f"T5 tokenizer: {octo.tokenizer_path(config.teacher.kwargs.get('tokenizer_dir'))}",
          flush=True)
  config_lib.validate(config)
  print("config: passes rpd_jax.config.validate")


if __name__ == "__main__":
  # Defined only for the command: importing this module (tests do, next to eval_teacher's
  # --checkpoint) defines no flag.
  flags.DEFINE_string("checkpoint", None, "the Octo checkpoint (folder, shipped teacher, "
                      "released name or hub id); default: the experiment's "
                      "config.teacher.kwargs.checkpoint")
  cli.run_with_config(main)
