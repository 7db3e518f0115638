"""The ManiSkill3 bridge on CPU simulation: tasks, observations, auto-reset, DLPack, teachers.

Needs a Vulkan device (scripts/setup_vulkan.sh provides one on machines without a GPU); the
tests skip, saying why, where there is none.

The semantics tests run on both ways a simulation runs: CPU worker processes ("workers") and
in process ("in_process": one CPU env, the same code path as the GPU simulation's B envs).
The GPU simulation (physx_cuda) cannot share a process with a CPU one (SAPIEN), so on a GPU
machine ``test_gpu_simulation_in_a_process_of_its_own`` runs the same tests in a fresh process
with ``RPD_JAX_TEST_SIM_BACKENDS=physx_cuda``.
"""

import os
import signal
import subprocess
import sys
import time
import types

import chex
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rpd_jax import config as config_lib
from rpd_jax import envs, rollout
from rpd_jax.envs import devices, maniskill, tasks, vulkan
from rpd_jax.envs.base import EnvWorkerError
from rpd_jax.errors import ConfigError
from rpd_jax.octo import hub
from rpd_jax.teachers import base as teacher_base
from rpd_jax.teachers import maniskill_scripted


pytestmark = [pytest.mark.maniskill, pytest.mark.usefixtures("vulkan_device")]


_BACKENDS = {"workers": dict(sim_backend="physx_cpu"),
             "in_process": dict(sim_backend="physx_cpu", in_process=True),
             "physx_cuda": dict(sim_backend="physx_cuda")}
BACKENDS = os.environ.get("RPD_JAX_TEST_SIM_BACKENDS", "workers,in_process").split(",")


@pytest.fixture(params=BACKENDS)
def backend(request):
  if request.param == "physx_cuda":
    try:
      maniskill.require_physx_gpu()
    except maniskill.PhysXGpuUnavailableError as e:
      pytest.skip(str(e))
  return request.param


def _env(env_id="PushCube-v1", backend="workers", **kwargs):
  num_envs = kwargs.pop("num_envs", 1)
  if backend == "in_process":  # ManiSkill allows one CPU env per process
    num_envs = 1
  return maniskill.ManiSkillVecEnv(num_envs=num_envs, seed=0, env_id=env_id,
                                   **_BACKENDS[backend], **kwargs)


def _check_step(env, keys):
  res = env.step(jnp.zeros((env.num_envs, env.action_dim)))
  b = env.num_envs
  assert set(res.obs) == set(keys) == set(res.final_obs) == set(env.final_obs_keys)
  for k, spec in env.observation_spec.items():
    chex.assert_shape(res.obs[k], (b,) + spec.shape)
    assert res.obs[k].dtype == spec.dtype
  chex.assert_shape([res.reward, res.terminated, res.truncated, res.success], (b,))
  assert res.reward.dtype == jnp.float32
  assert res.terminated.dtype == res.truncated.dtype == res.success.dtype == jnp.bool_
  assert np.isfinite(np.asarray(res.reward)).all()
  # Every array lands on JAX's default device, whatever device simulated.
  assert {x.devices().pop() for x in jax.tree.leaves(res)} == {devices.default_device()}
  return res


@pytest.mark.parametrize("env_id", list(tasks.TASKS))
def test_every_task_steps_with_state(env_id):
  info = tasks.TASKS[env_id]
  env = _env(env_id)
  try:
    assert env.action_dim == 7
    assert env.max_episode_steps == info.max_episode_steps
    assert env.observation_spec["state"].shape == (info.state_dim,)
    assert env.observation_spec["privileged"].shape == (info.state_dim,)
    _check_step(env, set(envs.OBSERVATION_KEYS["maniskill"]["state"]))
  finally:
    env.close()


def _make_rgb(env_id):
  return maniskill._make_sim(  # pylint: disable=protected-access
      env_id=env_id, num_envs=1, sim_backend="physx_cpu", obs_mode="rgb",
      reward_mode="normalized_dense", control_mode="pd_ee_delta_pose", image_size=64,
      camera="human", camera_variant=None, max_episode_steps=None, final_obs_keys=None,
      ignore_terminations=False)


@pytest.fixture(scope="module")
def _renderer():
  """Keeps one rendering env alive across the per-task rgb tests.

  The first image a SAPIEN render system takes costs seconds on lavapipe (it compiles its
  shaders), and the render system, with its compiled pipelines, lives only as long as some env
  uses it: without this, every test would pay the compilation again.
  """
  env = _make_rgb("PushCube-v1")
  env.reset([0])
  yield
  env.close()


@pytest.mark.parametrize("env_id", list(tasks.TASKS))
def test_every_task_steps_with_rgb(env_id, _renderer):
  # In this process, through the _Sim every worker (and the GPU backend) runs, so that the
  # shaders compile once (see _renderer); test_state_rgb_and_render covers the worker path.
  env = _make_rgb(env_id)
  try:
    env.reset([0])
    obs, reward, terminated, truncated, _, _ = env.step(torch.zeros(1, 7))
    assert set(obs) == set(envs.OBSERVATION_KEYS["maniskill"]["rgb"])
    assert obs["rgb"].shape == (1, 64, 64, 3) and obs["rgb"].dtype == torch.uint8
    assert obs["rgb"].float().std() > 10  # a rendered scene, not a blank frame
    assert obs["privileged"].shape == (1, tasks.TASKS[env_id].state_dim)
    assert reward.shape == terminated.shape == truncated.shape == (1,)
  finally:
    env.close()


def test_state_rgb_and_render(backend):
  env = _env(obs_mode="state_rgb", image_size=64, backend=backend)
  try:
    res = _check_step(env, set(envs.OBSERVATION_KEYS["maniskill"]["state_rgb"]))
    # The student's state in state_rgb is the robot's proprioception: qpos and qvel of the
    # Panda (9 + 9), the leading slice of the privileged state.
    np.testing.assert_array_equal(res.obs["state"], res.obs["privileged"][:, :18])
    frames = env.render()
    assert frames.shape == (1, 64, 64, 3) and frames.dtype == jnp.uint8
    # The human camera renders the current state: the same image the student sees.
    np.testing.assert_array_equal(frames, res.obs["rgb"])
  finally:
    env.close()


def test_truncation_auto_reset_and_final_obs(backend):
  env = _env(num_envs=2, max_episode_steps=3, reward_mode="sparse", backend=backend)
  try:
    obs = env.reset(seed=5)
    for t in range(3):
      res = env.step(jnp.zeros((env.num_envs, 7)))
      ended = t == 2
      np.testing.assert_array_equal(res.truncated, [ended] * env.num_envs)
      np.testing.assert_array_equal(res.terminated, [False] * env.num_envs)
      np.testing.assert_array_equal(res.reward, [0.0] * env.num_envs)  # sparse: success as float
      if not ended:
        for k in res.obs:
          np.testing.assert_array_equal(res.final_obs[k], res.obs[k])
        obs = res.obs
    cube = slice(28, 31)  # PushCube's cube position in the privileged state
    # final_obs continues the old episode (zero actions leave the cube where it was) ...
    np.testing.assert_allclose(res.final_obs["privileged"][:, cube],
                               obs["privileged"][:, cube], atol=1e-3)
    # ... and obs starts a new one with a re-drawn cube.
    assert np.abs(np.asarray(res.obs["privileged"][:, cube] - obs["privileged"][:, cube])
                  ).max() > 1e-3
    # reset(seed) is reproducible.
    np.testing.assert_array_equal(env.reset(seed=5)["privileged"],
                                  env.reset(seed=5)["privileged"])
  finally:
    env.close()


def test_success_terminates_with_final_obs_at_the_goal(backend):
  env = _env(num_envs=2, reward_mode="normalized_dense", backend=backend)
  teacher = maniskill_scripted.make_teacher("PushCube-v1", noise=0.0)
  act = jax.jit(lambda obs: teacher.apply_fn(teacher.params, obs, obs, None,
                                             jax.random.key(0), 0).action)
  try:
    obs = env.reset(seed=0)
    ended = np.zeros(env.num_envs, bool)
    for _ in range(env.max_episode_steps):
      res = env.step(act(obs))
      obs = res.obs
      done = np.asarray(res.terminated)
      np.testing.assert_array_equal(done, res.success)  # PushCube ends exactly on success
      if done.any():
        i = int(np.argmax(done))
        final, new = res.final_obs["privileged"][i], res.obs["privileged"][i]
        assert np.hypot(*(final[28:30] - final[25:27])) < 0.1  # cube in the goal region
        assert np.hypot(*(new[28:30] - new[25:27])) > 0.1  # a new episode: cube off the goal
        assert float(res.reward[i]) == pytest.approx(1.0)  # normalized dense reward at success
      ended |= done
      if ended.all():
        break
    assert ended.all(), "the noise-free scripted teacher should solve PushCube in one episode"
  finally:
    env.close()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_ignore_terminations_runs_past_success(backend):
  """The fixed-step evaluation's env: the solved cube stays solved, no episode ends early."""
  env = _env(num_envs=2, backend=backend, ignore_terminations=True)
  teacher = maniskill_scripted.make_teacher("PushCube-v1", noise=0.0)
  act = jax.jit(lambda obs: teacher.apply_fn(teacher.params, obs, obs, None,
                                             jax.random.key(0), 0).action)
  try:
    obs, solved = env.reset(seed=0), np.zeros(env.num_envs, bool)
    for _ in range(env.max_episode_steps - 1):
      res = env.step(act(obs))
      obs = res.obs
      assert not np.asarray(res.terminated).any() and not np.asarray(res.truncated).any()
      solved |= np.asarray(res.success)
    assert solved.all()
  finally:
    env.close()


@pytest.mark.parametrize("device", DEVICES)
def test_dlpack_is_zero_copy_both_ways(device):
  t = torch.arange(12, dtype=torch.float32, device=device).reshape(3, 4)
  j = maniskill.to_jax(t)
  assert j.unsafe_buffer_pointer() == t.data_ptr()
  assert j.devices() == {jax.devices("gpu" if device == "cuda" else "cpu")[0]}
  np.testing.assert_array_equal(j, t.cpu().numpy())
  back = maniskill.to_torch(j, t.device)
  assert back.data_ptr() == j.unsafe_buffer_pointer() and back.device == t.device
  if device == "cpu":
    _check_cpu_backend_copies_once()


def _check_cpu_backend_copies_once():
  t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
  # The CPU backend copies AsyncVectorEnv's shared-memory views once, into torch memory that
  # JAX then aliases; a uint8 image batch goes the same way.
  views = {"privileged": np.ones((2, 35), np.float32), "rgb": np.ones((2, 8, 8, 3), np.uint8)}
  for k, v in maniskill.ManiSkillVecEnv._own(views).items():
    assert maniskill.to_jax(v).unsafe_buffer_pointer() == v.data_ptr(), k
  # A transposed (strided) tensor is made contiguous first, so the values are right.
  np.testing.assert_array_equal(maniskill.to_jax(t.T), t.numpy().T)


def test_vulkan_error_says_how_to_fix(monkeypatch):
  import sapien  # pylint: disable=g-import-not-at-top

  def no_device():
    raise RuntimeError("failed to find a rendering device")

  monkeypatch.setattr(sapien.render, "get_device_summary", no_device)
  vulkan.require_vulkan.cache_clear()
  try:
    with pytest.raises(vulkan.VulkanUnavailableError, match="setup_vulkan.sh"):
      vulkan.require_vulkan()
    monkeypatch.setattr(sapien.render, "get_device_summary",
                        lambda: "GPU: llvmpipe (LLVM 15.0.6, 256 bits)\n  Supported: 0\n")
    with pytest.raises(vulkan.VulkanUnavailableError, match="mesa-vulkan-drivers"):
      vulkan.require_vulkan()
  finally:
    vulkan.require_vulkan.cache_clear()


def test_physx_gpu_error_says_how_to_fix(monkeypatch, tmp_path):
  # SAPIEN's own enable_gpu(), up to its download of the PhysX GPU library, as on a GPU machine
  # without access to GitHub (a fresh HOME: no library downloaded before).
  import requests  # pylint: disable=g-import-not-at-top
  import sapien.physx  # pylint: disable=g-import-not-at-top

  def offline(url, *args, **kwargs):
    raise requests.ConnectionError(f"Failed to resolve 'github.com' ({url})")

  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.setattr(requests, "get", offline)
  if sapien.physx.is_gpu_enabled():
    pytest.skip("the PhysX GPU library is already loaded in this process")
  with pytest.raises(maniskill.PhysXGpuUnavailableError) as e:
    maniskill.require_physx_gpu()
  message = str(e.value)
  version = sapien.physx.version()
  assert f"{version}/linux-so.zip" in message
  assert os.path.join(str(tmp_path), ".sapien", "physx", version) in message
  assert "sim_backend=physx_cpu" in message and "github.com" in message


@pytest.mark.parametrize("env_id", list(maniskill_scripted.CONTROLLERS))
def test_scripted_teacher_shapes(env_id):
  teacher = maniskill_scripted.make_teacher(env_id, noise=0.5)
  dim = tasks.TASKS[env_id].state_dim
  obs = {"privileged": jax.random.normal(jax.random.key(0), (8, dim)) * 0.1}
  out = jax.jit(teacher_base.query, static_argnums=(5, 6))(
      teacher, obs, obs, jnp.zeros(8, bool), jax.random.key(1), 3, 4)
  chex.assert_shape(out.action, (8, 7))
  chex.assert_shape(out.samples, (3, 8, 7))
  assert jnp.all(jnp.abs(out.samples) <= 1.0)
  assert not jnp.allclose(out.samples[0], out.samples[1])  # independent noise per sample
  with pytest.raises(ConfigError, match="kwargs.task='PokeCube-v1' has no scripted"):
    maniskill_scripted.make_teacher("PokeCube-v1")


@pytest.mark.parametrize("env_id", ["PickCube-v1", "StackCube-v1", "LiftPegUpright-v1",
                                    "RollBall-v1"])
def test_scripted_teacher_solves_task_without_noise(env_id):
  # Two rounds of two envs (seeds 1, 2 and 2, 3), within the task's own time limit. Measured
  # over 32 episodes (module CLI) all four succeed in 90-100% of episodes at noise 0.
  from rpd_jax import evaluate  # pylint: disable=g-import-not-at-top
  policy = rollout.teacher_policy(maniskill_scripted.make_teacher(env_id, noise=0.0))
  env = _env(env_id, num_envs=2, reward_mode="sparse")
  try:
    result = evaluate.evaluate(env, policy, 4, seed=1, key=jax.random.key(0))
  finally:
    env.close()
  assert result["eval/success_rate"] >= 0.75, result


def _load(repo_root, name, arg):
  return config_lib.load(os.path.join(repo_root, "experiments", f"{name}.py:{arg or ''}"))


@pytest.mark.parametrize("name", ["pickcube", "pushcube", "pullcube", "liftpegupright",
                                  "rollball", "stackcube", "pullcubetool", "pokecube"])
def test_experiment_configs(repo_root, name):
  c = _load(repo_root, name, None)
  config_lib.validate(c)
  env_id = c.env.kwargs.env_id
  assert c.env.name == "maniskill" and env_id in tasks.TASKS
  scripted = env_id in maniskill_scripted.CONTROLLERS
  # The task's shipped Octo teacher on the 128x128 camera, a state student.
  assert c.teacher.name == "octo" and c.network.obs_keys == ("privileged",)
  assert c.teacher.kwargs.checkpoint == tasks.task_info(env_id).teacher
  assert (hub.SHIPPED / c.teacher.kwargs.checkpoint).is_dir(), "its teacher is not shipped"
  assert c.env.kwargs.obs_mode == "rgb" and c.env.kwargs.image_size == 128
  ppo = _load(repo_root, name, "ppo")  # the same student, nothing rendered
  assert ppo.distill.loss == "none" and ppo.env.kwargs.obs_mode == "state"
  assert ppo.network.obs_keys == ("state",)
  if scripted:
    s = _load(repo_root, name, "scripted,ppo")
    assert s.teacher.name == "scripted_maniskill" and s.env.kwargs.obs_mode == "state"
    assert s.distill.loss == "none"
  for arg in ("smoke", "rgb,smoke", "state_rgb,sparse,smoke", "ppo,smoke"):
    s = _load(repo_root, name, arg)
    config_lib.validate(s)
    assert s.env.num_envs * s.ppo.num_steps <= 16
  assert _load(repo_root, name, "smoke").distill.loss == c.distill.loss  # smoke keeps the loss
  assert _load(repo_root, name, "ppo,smoke").distill.loss == "none"
  rgb = _load(repo_root, name, "rgb")
  assert rgb.env.kwargs.obs_mode == "rgb" and rgb.network.obs_keys == ("rgb",)
  if name == "pushcube":
    assert _load(repo_root, name, "moved_camera").env.kwargs.camera_variant == "moved"
  octo = _load(repo_root, name, "octo,smoke")
  config_lib.validate(octo)
  assert octo.teacher.name == "octo" and octo.distill.loss == "mse"
  assert octo.network.encoder == "cnn" and octo.env.kwargs.obs_mode == "rgb"
  assert _load(repo_root, name, "octo,ppo").distill.loss == "none"
  # The published run's settings (a GPU's: on a CPU 128 env processes are refused).
  paper = _load(repo_root, name, "sparse,paper")
  assert (paper.env.num_envs, paper.ppo.num_steps, paper.ppo.update_epochs) == (128, 50, 8)
  assert paper.ppo.gamma == 0.99 and paper.ppo.norm_adv  # sparse changes gamma only
  assert paper.teacher.resample == "epoch" and paper.teacher.kwargs.gripper == "raw"
  assert paper.network.encoder == "ppo_rgb" and paper.env.kwargs.image_size == 256
  assert (paper.eval_protocol, paper.eval_steps) == ("fixed_steps", 50)
  assert _load(repo_root, name, "paper,ppo").distill.loss == "none"
  if not torch.cuda.is_available():
    with pytest.raises(ConfigError, match="one process per env"):
      config_lib.validate(paper)
  paper.env.num_envs, paper.eval_envs, paper.eval_episodes = 4, 2, 2
  config_lib.validate(paper)


def test_a_dead_worker_is_named_and_the_env_still_closes():
  env = _env(num_envs=2)
  try:
    env.step(jnp.zeros((2, 7)))
    os.kill(env._cpu.processes[1].pid, signal.SIGKILL)  # pylint: disable=protected-access
    env._cpu.processes[1].join(timeout=10)  # pylint: disable=protected-access
    with pytest.raises(EnvWorkerError, match=r"ManiSkill PushCube-v1: worker 1 \(pid \d+, killed "
                       r"by signal 9\) of 2 stopped answering"):
      env.step(jnp.zeros((2, 7)))
  finally:
    started = time.time()
    env.close()
    assert time.time() - started < 10


def test_a_worker_dying_mid_run_stops_training_and_keeps_the_checkpoint(repo_root, tmp_path,
                                                                        monkeypatch):
  from rpd_jax import rollout, trainer  # pylint: disable=g-import-not-at-top
  config = _load(repo_root, "pushcube", "scripted,ppo,smoke")
  config.total_env_steps = 6 * 8  # 6 iterations of 8 steps, checkpoints at 2 and 4
  collect = rollout.collect

  def killing_collect(env, *args):
    if args[-2] is not None and len(os.listdir(tmp_path / "checkpoints")) == 2:
      os.kill(env._cpu.processes[0].pid, signal.SIGKILL)  # pylint: disable=protected-access
      env._cpu.processes[0].join(timeout=10)  # pylint: disable=protected-access
    return collect(env, *args)

  monkeypatch.setattr(rollout, "collect", killing_collect)
  with pytest.raises(EnvWorkerError, match="worker 0"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


# SIGINT: Ctrl-C in a terminal reaches the trainer and its workers alike. SIGTERM's stop and
# resume are tests/test_preemption.py's (one process) and tests/test_finetune.py's.
@pytest.mark.parametrize("signum", [signal.SIGINT])
def test_a_signal_to_the_process_group_stops_a_maniskill_run_without_tracebacks(
    repo_root, tmp_path, signum):
  """Ctrl-C in a terminal reaches the trainer and its ManiSkill workers alike."""
  proc = subprocess.Popen(
      [sys.executable, "-m", "rpd_jax.train", "--config=experiments/pushcube.py:scripted,ppo",
       "--config.env.num_envs=2", "--config.ppo.num_steps=10", "--config.checkpoint_every=1000",
       f"--workdir={tmp_path}"], cwd=repo_root, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
      assert time.time() < deadline and proc.poll() is None, proc.communicate()
      time.sleep(0.05)
    sent = time.time()
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 128 + signum, err
  assert time.time() - sent < 20
  assert "Traceback" not in err and "SystemError" not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith(f"stopped by {signal.Signals(signum).name} after iteration ")
  assert "resume with:" in last


def test_one_render_per_step_and_final_images_only_where_read():
  """The camera renders once per step, after the ended episodes were reset; a final
  observation carries an image only where one is asked for (a second render, only on the
  steps that end an episode). With ``rgb`` on demand, a step that does not ask renders none
  (and observes zeros)."""
  for final_keys, renders_at_end in ((("privileged",), 1), (("privileged", "rgb"), 2)):
    env = _env(backend="in_process", obs_mode="rgb", image_size=64, max_episode_steps=2,
               final_obs_keys=final_keys, on_demand_keys=("rgb",))
    try:
      calls, frames = [], env._sim.frames  # pylint: disable=protected-access
      env._sim.frames = lambda: (calls.append(1), frames())[1]  # pylint: disable=protected-access
      counts = []
      for _ in range(2):
        calls.clear()
        res = env.step(jnp.zeros((1, 7)))
        counts.append(len(calls))
      assert counts == [1, renders_at_end]
      assert bool(res.truncated[0]) and set(res.final_obs) == set(final_keys)
      if "rgb" in final_keys:  # the old episode's last frame, not the new one's first
        assert np.abs(np.asarray(res.final_obs["rgb"], np.int32) -
                      np.asarray(res.obs["rgb"], np.int32)).max() > 0
      calls.clear()
      res = env.step(jnp.zeros((1, 7)), np.zeros(1, bool))  # not asked (the episode goes on)
      assert calls == [] and not np.asarray(res.obs["rgb"]).any()
      assert np.asarray(res.obs["privileged"]).any()
    finally:
      env.close()


# In process (one CPU env): test_one_render_per_step_and_final_images_only_where_read.
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "in_process"], indirect=True)
def test_the_camera_renders_only_for_the_envs_that_ask(backend):
  """``rgb`` on demand (the teacher's camera beside a state student): a step renders it only
  where some env asks for it, and the envs that did not ask get zeros; the rest of the
  observation is always there."""
  env = _env(backend=backend, num_envs=2, obs_mode="rgb", image_size=64,
             on_demand_keys=("rgb",))
  try:
    b, zeros = env.num_envs, jnp.zeros((env.num_envs, 7))
    rendered = lambda res: np.asarray(res.obs["rgb"]).reshape(b, -1).any(axis=1)
    calls = []
    if backend != "workers":  # in process: count the renders themselves
      frames = env._sim.frames  # pylint: disable=protected-access
      env._sim.frames = lambda: (calls.append(1), frames())[1]  # pylint: disable=protected-access
    res = env.step(zeros, np.zeros(b, bool))
    assert not rendered(res).any() and np.asarray(res.obs["privileged"]).any()
    assert calls == []
    asked = np.arange(b) == 0
    np.testing.assert_array_equal(rendered(env.step(zeros, asked)), asked)
    assert rendered(env.step(zeros)).all()  # no mask: every env
    assert calls == ([] if backend == "workers" else [1, 1])
  finally:
    env.close()


def test_an_episode_depends_on_its_seed_alone():
  """Env i of ``reset(seed)`` starts as a one-env ``reset(seed + i)`` does, in workers and in
  process alike: evaluation episode k is the same whatever the number of evaluation envs."""
  two, one = _env(num_envs=2), _env(backend="in_process")
  try:
    both = np.asarray(two.reset(seed=20)["privileged"])
    np.testing.assert_array_equal(one.reset(seed=20)["privileged"][0], both[0])
    np.testing.assert_array_equal(one.reset(seed=21)["privileged"][0], both[1])
  finally:
    two.close()
    one.close()


def test_a_batched_simulation_is_reset_env_by_env():
  """ManiSkill draws a batched reset's initial states from one generator seeded with the first
  seed (GPU simulation): ``_Sim.reset`` resets each env again on its own, with its seed."""
  calls = []

  class Batched:  # the parts of a batched ManiSkill env that _Sim touches
    unwrapped = types.SimpleNamespace(
        num_envs=3, device=torch.device("cpu"),
        agent=types.SimpleNamespace(
            get_proprioception=lambda: {"qpos": torch.zeros(3, 2)},
            robot=types.SimpleNamespace(get_qpos=lambda: torch.zeros(3, 2),
                                        get_qvel=lambda: torch.zeros(3, 2)),
            tcp=types.SimpleNamespace(pose=types.SimpleNamespace(raw_pose=torch.zeros(3, 7)))),
        single_observation_space=gym.spaces.Box(-1, 1, (4,)),
        single_action_space=gym.spaces.Box(-1, 1, (7,)))

    def reset(self, seed=None, options=None):
      calls.append((seed, None if options is None else options["env_idx"].tolist()))
      return torch.zeros(3, 4), {}

  sim = maniskill._Sim(Batched(), "state", "human", 64, None, False)  # pylint: disable=protected-access
  sim.reset([7, 8, 9])
  assert calls == [([7, 8, 9], None), ([7] * 3, [0]), ([8] * 3, [1]), ([9] * 3, [2])]


_PHYSX_AFTER = """
import sys
import sapien.physx
from rpd_jax.envs import maniskill

if __name__ == "__main__":
  in_process = sys.argv[1] == "in_process"
  env = maniskill.ManiSkillVecEnv(1 if in_process else 2, 0, sim_backend="physx_cpu",
                                  in_process=in_process or None)
  env.close()
  # SAPIEN's switch to GPU PhysX without its library download and load (no GPU here): it
  # refuses once any CPU PhysX ran in the process.
  sapien.physx.enable_gpu = sapien.physx._enable_gpu
  try:
    maniskill.require_physx_gpu()
    print("GPU PhysX: enabled")
  except maniskill.PhysXGpuUnavailableError as e:
    print("GPU PhysX:", e)
"""


@pytest.mark.parametrize("how", ["workers", "in_process"])
def test_cpu_workers_leave_the_process_free_for_gpu_physx(repo_root, tmp_path, how):
  """CPU workers never build a PhysX scene in the trainer's process (AsyncVectorEnv's spaces
  come from a child), so a GPU simulation can still start there; after an in-process CPU env
  it cannot, and the error says so instead of blaming the library download."""
  script = tmp_path / "physx_after.py"
  script.write_text(_PHYSX_AFTER)
  out = subprocess.run([sys.executable, str(script), how], cwd=repo_root, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": repo_root})
  assert out.returncode == 0, out.stderr[-3000:]
  if how == "workers":
    assert "GPU PhysX: enabled" in out.stdout
  else:
    assert "a CPU simulation (physx_cpu) ran in it first" in out.stdout, out.stdout


_BESIDE = """
import sys
import jax
jax.config.update("jax_default_device", jax.devices()[1])
from rpd_jax import config as config_lib
from rpd_jax import trainer

if __name__ == "__main__":
  config = config_lib.load("experiments/pushcube.py:scripted,smoke")
  config_lib.validate(config)
  result = trainer.train_and_evaluate(config, sys.argv[1])
  print("devices", sorted({str(d) for d in jax.devices()}), "eval", result["eval/episodes"])
"""


def test_a_cpu_simulation_beside_jax_on_another_device_trains(repo_root, tmp_path):
  """The documented fallback on a GPU machine: the CPU simulation while JAX computes on the
  GPU. Here the second of two host devices stands in for the GPU: observations land on the
  train state's device (they come out of DLPack on the first), actions go back."""
  script = tmp_path / "beside.py"
  script.write_text(_BESIDE)
  out = subprocess.run(
      [sys.executable, str(script), str(tmp_path / "run")], cwd=repo_root,
      capture_output=True, text=True, timeout=600,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": repo_root})
  assert out.returncode == 0, out.stderr[-3000:]
  assert "devices ['cpu:0', 'cpu:1'] eval 1.0" in out.stdout, out.stdout


@pytest.mark.skipif(not torch.cuda.is_available() or jax.default_backend() != "gpu",
                    reason="needs a GPU that torch and JAX both see")
def test_gpu_simulation_in_a_process_of_its_own(repo_root):
  """The semantics tests on the GPU simulation, in a process that has run no CPU PhysX."""
  out = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
       "physx_cuda"], cwd=repo_root, capture_output=True, text=True, timeout=1800,
      env={**os.environ, "RPD_JAX_TEST_SIM_BACKENDS": "physx_cuda"})
  assert out.returncode == 0, out.stdout[-5000:]


def test_robot_state_and_the_wrist_camera(_renderer):
  """qpos, qvel and tcp_pose (what an Octo checkpoint's proprio is made of) are the robot's
  slices of the privileged state; with wrist_image_size the Panda's hand camera is rendered as
  rgb_wrist, and the keys are what the config check expects."""
  env = _env(backend="in_process", image_size=64, wrist_image_size=32)
  try:
    obs = env.step(jnp.zeros((1, 7))).obs
    c = config_lib.load("experiments/pushcube.py:scripted")
    c.env.kwargs.wrist_image_size = 32
    assert set(obs) == set(envs.observation_keys(c.env)) == set(env.observation_spec)
    # PushCube's flat state: qpos (9), qvel (9), then the task's tcp_pose (7), ...
    np.testing.assert_array_equal(obs["qpos"], obs["privileged"][:, :9])
    np.testing.assert_array_equal(obs["qvel"], obs["privileged"][:, 9:18])
    np.testing.assert_allclose(obs["tcp_pose"], obs["privileged"][:, 18:25], atol=1e-6)
    wrist = obs["rgb_wrist"]
    assert wrist.shape == (1, 32, 32, 3) and wrist.dtype == jnp.uint8
    assert np.asarray(wrist, np.float32).std() > 10  # a rendered view, not a blank frame
  finally:
    env.close()
