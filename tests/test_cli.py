"""Every command answers a bad value with one ``error:`` line naming it, and no traceback.

The table of the README's "Bad input" section is these cases.
"""

import subprocess
import sys

import pytest

CASES = [
    ("rpd_jax.train", ["--config=experiments/jax_push.py:smoke", "--config.ppo.gamma=abc"],
     "flag --config.ppo.gamma=abc: could not convert string to float: 'abc'"),
    ("rpd_jax.train", ["--config=experiments/jax_push.py:smoke", "--config.teacher.chunk_size=8"],
     "--config.teacher.chunk_size=8: config.teacher.chunk_size is now config.teacher.max_batch"),
    ("rpd_jax.train", ["--config=experiments/pushcube.py:smoke",
                       "--config.teacher.kwargs.checkpoint=nope"],
     "checkpoint='nope' is neither a folder, nor a shipped teacher"),
    ("rpd_jax.pipeline.finetune", ["--config=experiments/finetune_octo.py:smoke",
                                   "--config.mode=head_only"],
     "config.mode='head_only' freezes the transformer"),
    ("rpd_jax.pipeline.finetune", ["--config=experiments/finetune_octo.py",
                                   "--config.data.folders=('/nonexistent',)"],
     "'/nonexistent' is not a demonstration folder"),
    ("rpd_jax.pipeline.demos", ["--env_id=PokeCube-v1", "--out=/tmp/unused"],
     "--env_id='PokeCube-v1' has no scripted controller to record"),
    ("rpd_jax.pipeline.demos", ["--noise=-1", "--out=/tmp/unused"],
     "--noise=-1.0 is a standard deviation"),
    ("rpd_jax.pipeline.eval_teacher", ["--tasks=Nope-v1", "--out=/tmp/unused"],
     "--tasks='Nope-v1': no ManiSkill task 'Nope-v1' is registered"),
    ("rpd_jax.pipeline.eval_teacher", ["--episodes=3", "--num_envs=2", "--out=/tmp/unused"],
     "--episodes=3 must be a multiple of --num_envs=2"),
    ("rpd_jax.pipeline.eval_teacher", ["--camera_variant=up", "--out=/tmp/unused"],
     "--camera_variant='up' is unknown; use one of moved"),
    ("rpd_jax.pipeline.eval_teacher", ["--checkpoint=nope", "--out=/tmp/unused"],
     "checkpoint='nope' is neither a folder, nor a shipped teacher"),
    ("rpd_jax.bench.train", ["--config=experiments/jax_push.py:smoke", "--iterations=1"],
     "--iterations=1 must be >= 2"),
    ("rpd_jax.bench.train", ["--config=experiments/jax_push.py:smoke", "--query_fractions=1,x"],
     "--query_fractions=1,x: give numbers in (0, 1]"),
    ("rpd_jax.bench.teacher", ["--size=huge"], "--size='huge' is unknown"),
    ("rpd_jax.bench.teacher", ["--batch=1,x"], "--batch=1,x: give integers"),
    ("rpd_jax.bench.octo", ["--dtype=float16"], "--dtype has 'float16'"),
    ("rpd_jax.tools.sweep", ["--config=experiments/jax_push.py", "--variants=ppo,rpd_msee",
                             "--root=/tmp/unused"], "unknown config variant 'rpd_msee'"),
    ("rpd_jax.tools.sweep", ["--config=experiments/jax_push.py", "--parallel=0",
                             "--root=/tmp/unused"], "--parallel=0 must be >= 1"),
    ("rpd_jax.tools.plot", ["/nonexistent"], "no such folder: /nonexistent"),
]


@pytest.mark.parametrize("module,args,message", CASES,
                         ids=[f"{m.removeprefix('rpd_jax.')}:{a[0][:40]}" for m, a, _ in CASES])
def test_a_bad_value_is_one_error_line(repo_root, module, args, message):
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=repo_root,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and message in lines[0], result.stderr
  assert "Traceback" not in result.stderr
