r"""Any PyTorch policy as an in-process RPD teacher, called from inside the jitted PPO update.

The teacher protocol (``rpd_jax.teachers.base``) wants a pure JAX function; this adapter makes
one out of a torch callable ``policy(images, seed) -> actions``:

1. the camera ``obs[image_key]``, uint8 [B, H, W, 3] (and, with ``state_key``, a float32
   [B, D] proprioception vector), and 1 + N int32 seeds drawn from the call's JAX key inside the
   graph, go to a host callback;
2. the callback views XLA's input buffers as torch tensors through DLPack
   (``torch.from_dlpack``, no copy), runs the policy under ``torch.inference_mode()`` (seeding
   torch's global RNG with each call's seed, and restoring it afterwards), checks its answer's
   shape, and copies the answer (B x A floats: the one copy on the way) into XLA's output
   buffer, which it views through DLPack too;
3. back in the graph, the gripper is optionally mapped from Octo's/OpenVLA's convention (1 =
   open, in [0, 1]) to ManiSkill's (+1 = open, in [-1, 1]) and every dim clipped to [-1, 1].

The callback is ``jax.experimental.buffer_callback`` (``callback="buffer"``, the default):
its arguments are XLA's own buffers and its outputs are written in place. ``jax.pure_callback``
(``callback="pure"``) works too, on any JAX that has it, but copies: on a CPU, measured with
JAX 0.10.2, its argument is a new buffer (``unsafe_buffer_pointer`` differs from the jitted
function's input) and its numpy answer is copied into XLA's output; on a GPU it moves every
argument to the host and the answer back. Both run inside ``jax.jit``, ``lax.map`` (the
chunked ``rpd_jax.teachers.query``), ``lax.scan`` and, one call per mapped element
(``vmap_method="sequential"``: the same answers as unbatched calls with the same keys),
``jax.vmap``.

N samples for PPD: the policy is called N more times with N more seeds, or, with
``samples_fn(images, seed, num_samples) -> [N, B, A]``, once (a diffusion or flow head that
samples N noises in one batch). The same JAX key gives the same seeds, hence, for a policy whose
randomness comes from its seed or from torch's global RNG, the same answers.

Verified only on a CPU (the tests and the benchmark ran there): the zero-copy claims (data
pointers of the callback's tensors equal XLA's buffers'), determinism, and every shape. On a
GPU, ``buffer`` mode is written to be zero-copy as well: the buffers are CUDA memory that
``torch.from_dlpack`` views in place, and the policy's kernels are queued on XLA's own CUDA
stream (``torch.cuda.ExternalStream(ctx.stream)``), so they are ordered after the kernels that
produced the images and before those that read the answer, without a device synchronisation;
the seeds (a few bytes) are read back to the host, which waits for that stream once per call
(``torch.manual_seed`` and the policy's ``seed`` argument need host integers; the waiting is
for the kernels queued before the teacher query, a small part of the update). None of the
GPU path has been run.

The input tensors are views of XLA's buffers, valid during the call only: XLA reuses them once
it returns. A policy that keeps them past the call (an action queue, ``self.last_obs``) would
read changing memory, so every call checks that it kept neither the tensors nor a view of them
(their Python references and their storage's uses are what they were before the call) and
stops with a ConfigError naming the fix otherwise; the trace-time probe call below finds it
before anything runs.

Shapes are checked twice: when the update is traced, the policy is called once on
``PROBE_BATCH`` (2) blank observations of the traced shape, so a wrong ``action_dim`` or a
policy that answers one row whatever the batch is a ConfigError before anything runs; and on
every call, inside the callback, where the same message arrives wrapped in a JaxRuntimeError.

Memory: XLA cannot see what torch allocates, so ``auto_max_batch`` would choose the whole
batch; set ``config.teacher.max_batch`` to what the policy fits on the device.

Example, OpenVLA (documentation only: not run here; OpenVLA takes one image per call, so
``per_image`` loops over the batch; its gripper is 1 = open in [0, 1]; its "bridge_orig"
actions are end-effector deltas in metres and radians, to be scaled in ``act`` to the env
controller's normalised range if that differs)::

  # mypkg/teachers.py
  import PIL.Image, torch
  from transformers import AutoModelForVision2Seq, AutoProcessor
  from rpd_jax.teachers import torch_policy

  def openvla(instruction: str, unnorm_key: str = "bridge_orig"):
    processor = AutoProcessor.from_pretrained("openvla/openvla-7b", trust_remote_code=True)
    vla = AutoModelForVision2Seq.from_pretrained(
        "openvla/openvla-7b", torch_dtype=torch.bfloat16, trust_remote_code=True).to("cuda")
    prompt = f"In: What action should the robot take to {instruction.lower()}?\nOut:"

    def act(image, seed):  # image: uint8 [H, W, 3] torch; greedy decoding ignores the seed
      inputs = processor(prompt, PIL.Image.fromarray(image.cpu().numpy()))
      inputs = inputs.to("cuda", dtype=torch.bfloat16)
      return vla.predict_action(**inputs, unnorm_key=unnorm_key, do_sample=False)  # numpy [7]
    return torch_policy.per_image(act)

  # the run's config
  config.teacher.name = "torch"
  config.teacher.kwargs.factory = "mypkg.teachers:openvla"
  config.teacher.kwargs.factory_kwargs = {"instruction": "push the cube away from the robot"}
  config.teacher.kwargs.action_dim = 7
  config.teacher.kwargs.gripper = "maniskill"
  config.teacher.max_batch = 64

or, in Python, ``teacher_from_torch(openvla("..."), action_dim=7, gripper="maniskill")``.

LeRobot's pi0 (documentation only; the camera key and the action size come from the
checkpoint's config; ``select_action`` keeps a queue of a chunk's actions, so ``reset`` makes
each call plan from its own observation; older LeRobot versions import from
``lerobot.common.policies``, newer ones normalise through pre/post-processor pipelines, which
the function would then apply around ``select_action``)::

  def pi0(instruction: str):
    from lerobot.policies.pi0.modeling_pi0 import PI0Policy
    policy = PI0Policy.from_pretrained("lerobot/pi0").to("cuda").eval()

    def act(images, seed, state):  # uint8 [B, H, W, 3], float32 [B, D], on the GPU
      policy.reset()  # its flow-matching noise comes from torch's RNG, seeded with `seed`
      batch = {"observation.images.top": images.permute(0, 3, 1, 2).float() / 255,
               "observation.state": state, "task": [instruction] * images.shape[0]}
      return policy.select_action(batch)  # [B, action_dim]
    return act

  teacher = teacher_from_torch(pi0("..."), action_dim=7, state_key="state")
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch

from rpd_jax.envs.base import Observation
from rpd_jax.errors import ConfigError, check_options, load_by_path
from rpd_jax.teachers.base import GRIPPER_MODES, Teacher, TeacherOutput, map_gripper

try:
  from jax.experimental.buffer_callback import buffer_callback
except ImportError:  # JAX < 0.7: pure_callback only
  buffer_callback = None

CALLBACKS = ("buffer", "pure")
PROBE_BATCH = 2  # rows of the trace-time probe: catches a policy that ignores the batch
_DLPACK_CUDA = 2  # DLPack's kDLCUDA device type

# (images [B, H, W, 3] uint8, seed[, state=[B, D]]) -> [B, A]; numpy or torch, any float dtype.
PolicyFn = Callable[..., Any]
# (images, seed, num_samples[, state=...]) -> [N, B, A]
SamplesFn = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class TorchPolicy:
  """What a ``config.teacher.kwargs.factory`` may return instead of a bare policy: the policy
  and, optionally, a function that draws N samples in one call (see ``teacher_from_torch``)."""

  act: PolicyFn
  sample: Optional[SamplesFn] = None


def per_image(fn: Callable[[torch.Tensor, int], Any]) -> PolicyFn:
  """A batched policy from one that takes a single image: ``fn(image uint8 [H, W, 3], seed) ->
  action [A]`` is called on each image in turn (seeds ``seed, seed + 1, ...``) and the answers
  stacked to [B, A]. For policies such as OpenVLA's ``predict_action``."""
  def policy(images: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.stack([_as_tensor(fn(image, seed + i)) for i, image in enumerate(images)])
  return policy


def _as_tensor(answer: Any) -> torch.Tensor:
  """A policy's answer (torch tensor, numpy array, list) as a float32 tensor, on its device."""
  if torch.is_tensor(answer):
    return answer.float()
  return torch.as_tensor(np.asarray(answer, np.float32))


def _torch_device(device: Optional[str]) -> Optional[torch.device]:
  if device is None:
    return None
  try:
    return torch.device(device)
  except (RuntimeError, TypeError) as e:
    raise ConfigError(f"config.teacher.kwargs.device={device!r} is not a torch device ({e}); "
                      "use e.g. 'cpu', 'cuda' or 'cuda:1', or None for where JAX's buffers "
                      "are") from None


def _stream(buffer: Any, ctx: Any) -> contextlib.AbstractContextManager:
  """On CUDA, torch's current device and stream become XLA's (``ctx.stream``): the policy's
  kernels are queued behind the ones that wrote its inputs. A no-op on a CPU (where
  ``ctx.stream`` does not exist)."""
  device_type, device_id = buffer.__dlpack_device__()
  if device_type != _DLPACK_CUDA or ctx is None:
    return contextlib.nullcontext()
  device = torch.device("cuda", device_id)
  stack = contextlib.ExitStack()
  stack.enter_context(torch.cuda.device(device))
  stack.enter_context(torch.cuda.stream(torch.cuda.ExternalStream(ctx.stream, device=device)))
  return stack


@dataclasses.dataclass(frozen=True, eq=False)
class TorchApply:
  """The teacher's ``apply_fn``: static, compared by identity (each policy compiles its own
  update). See ``teacher_from_torch`` for the fields."""

  policy: PolicyFn
  action_dim: int
  samples_fn: Optional[SamplesFn] = None
  image_key: str = "rgb"
  state_key: Optional[str] = None
  gripper: str = "raw"
  device: Optional[str] = None
  seed_torch: bool = True
  callback: str = "buffer"
  _probed: set = dataclasses.field(default_factory=set, repr=False)

  # ---- the JAX side: traced into the update ----

  def __call__(self, params, obs: Observation, prev_obs: Observation, is_first: jax.Array,
               key: jax.Array, num_samples: int) -> TeacherOutput:
    """action [B, A] float32; samples [N, B, A] when num_samples = N > 0. ``params`` is empty
    (the torch weights live in the policy) and ``prev_obs``/``is_first`` unused (one frame)."""
    del params, prev_obs, is_first
    inputs = self._inputs(obs)
    batch = inputs[0].shape[0]
    self._probe(inputs, num_samples)
    num_seeds = 1 + (0 if not num_samples else 1 if self.samples_fn else num_samples)
    seeds = jax.random.randint(key, (num_seeds,), 0, np.iinfo(np.int32).max, jnp.int32)
    shapes = [jax.ShapeDtypeStruct((batch, self.action_dim), jnp.float32)]
    if num_samples:
      shapes.append(jax.ShapeDtypeStruct((num_samples, batch, self.action_dim), jnp.float32))
    if self.callback == "buffer":
      call = buffer_callback(functools.partial(self._buffer_callback, num_samples), shapes,
                             vmap_method="sequential")
      outputs = call(seeds, *inputs)
    else:
      outputs = jax.pure_callback(functools.partial(self._pure_callback, num_samples), shapes,
                                  seeds, *inputs, vmap_method="sequential")
    action, samples = outputs[0], (outputs[1] if num_samples else None)
    action = map_gripper(action, self.gripper)
    samples = None if samples is None else map_gripper(samples, self.gripper)
    return TeacherOutput(action=action, samples=samples)

  def _inputs(self, obs: Observation) -> tuple[jax.Array, ...]:
    """(images uint8 [B, H, W, C],) plus (state float32 [B, D],) with ``state_key``."""
    for key in (self.image_key, self.state_key):
      if key is not None and key not in obs:
        raise ConfigError(f"the torch teacher reads observation {key!r}, which is not among "
                          f"{', '.join(sorted(obs))}; set config.teacher.kwargs."
                          f"{'image_key' if key == self.image_key else 'state_key'}")
    images = obs[self.image_key]
    if images.dtype != jnp.uint8 or images.ndim != 4:
      raise ConfigError(f"observation {self.image_key!r} is {images.dtype} {images.shape}; the "
                        "torch teacher takes uint8 images [B, H, W, C]: set "
                        "config.teacher.kwargs.image_key to a camera")
    if self.state_key is None:
      return (images,)
    state = obs[self.state_key].astype(jnp.float32)
    return images, state.reshape(state.shape[0], -1)

  def _probe(self, inputs: Sequence[jax.Array], num_samples: int) -> None:
    """At trace time, once per input shape: calls the policy on PROBE_BATCH blank
    observations and raises ConfigError if its answer is not [PROBE_BATCH, action_dim] (or,
    with samples_fn, [N, PROBE_BATCH, action_dim])."""
    samples = num_samples if self.samples_fn is not None else 0
    signature = (tuple(x.shape[1:] for x in inputs), samples)
    if signature in self._probed:
      return
    device = self.device or ("cpu" if self.callback == "pure" else _default_torch_device())
    blank = [torch.zeros((PROBE_BATCH,) + tuple(x.shape[1:]),
                         dtype=torch.uint8 if x.dtype == jnp.uint8 else torch.float32,
                         device=device) for x in inputs]
    self._answer(blank, [0, 1], samples)
    self._probed.add(signature)

  # ---- the torch side: runs in the callback ----

  def _call(self, fn: Callable[..., Any], seed: int, tensors: Sequence[torch.Tensor],
            *args: Any) -> torch.Tensor:
    """One policy call, with torch's global RNG seeded (and restored afterwards) if
    ``seed_torch``."""
    kwargs = {"state": tensors[1]} if self.state_key is not None else {}
    if not self.seed_torch:
      return _as_tensor(fn(tensors[0], seed, *args, **kwargs))
    with torch.random.fork_rng(devices=_cuda_devices()):
      torch.manual_seed(seed)
      return _as_tensor(fn(tensors[0], seed, *args, **kwargs))

  def _answer(self, tensors: Sequence[torch.Tensor], seeds: Sequence[int], num_samples: int
              ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(action [B, A], samples [N, B, A] or None) from the policy, shapes checked."""
    batch = tensors[0].shape[0]
    if self.device is not None:
      tensors = [t.to(self.device) for t in tensors]
    before = _holders(tensors)
    answers = self._answers(tensors, seeds, num_samples, batch)
    if _holders(tensors) != before:
      raise ConfigError(
          "the torch teacher's policy kept its input tensors (or views of them) after the call: "
          "they are views of XLA's buffers, which XLA reuses once the call returns, so what it "
          "kept would change under it. Copy what the policy keeps (images.clone()), or set "
          "config.teacher.kwargs.device to hand it copies")
    return answers

  def _answers(self, tensors: Sequence[torch.Tensor], seeds: Sequence[int], num_samples: int,
               batch: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    with torch.inference_mode():
      action = self._call(self.policy, seeds[0], tensors)
      self._check(action, (batch, self.action_dim), "policy")
      samples = None
      if num_samples and self.samples_fn is not None:
        samples = self._call(self.samples_fn, seeds[1], tensors, num_samples)
        self._check(samples, (num_samples, batch, self.action_dim), "samples_fn")
      elif num_samples:
        samples = [self._call(self.policy, s, tensors) for s in seeds[1:]]
        for sample in samples:
          self._check(sample, (batch, self.action_dim), "policy")
        samples = torch.stack(samples)
    return action, samples

  def _check(self, answer: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
    if tuple(answer.shape) != expected:
      raise ConfigError(
          f"the torch teacher's {what} returned shape {tuple(answer.shape)} for a batch of "
          f"{expected[-2]} images, but config.teacher.kwargs.action_dim={self.action_dim} "
          f"needs {expected}; fix action_dim, or make the {what} answer one action per image "
          "(torch_policy.per_image wraps a policy that takes one image)")

  def _buffer_callback(self, num_samples: int, ctx: Any, out: list, seeds: Any, *inputs: Any
                       ) -> None:
    """buffer_callback's function: XLA's buffers in, the answer written into ``out``."""
    with _stream(inputs[0], ctx):
      tensors = [torch.from_dlpack(x) for x in inputs]
      action, samples = self._answer(tensors, torch.from_dlpack(seeds).tolist(), num_samples)
      torch.from_dlpack(out[0]).copy_(action)
      if num_samples:
        torch.from_dlpack(out[1]).copy_(samples)

  def _pure_callback(self, num_samples: int, seeds: jax.Array, *inputs: jax.Array
                     ) -> list[np.ndarray]:
    """pure_callback's function: host copies in (CPU JAX arrays), numpy answers out."""
    tensors = [torch.from_dlpack(x) for x in inputs]
    action, samples = self._answer(tensors, np.asarray(seeds).tolist(), num_samples)
    answers = [action] + ([samples] if num_samples else [])
    return [a.detach().cpu().numpy() for a in answers]


def _holders(tensors: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
  """Who holds each tensor: its Python references and the uses of its storage (a view kept
  anywhere adds one). Unchanged across a call unless the callee kept a tensor or a view."""
  return [(sys.getrefcount(t), torch._C._storage_Use_Count(t.untyped_storage()._cdata))  # pylint: disable=protected-access
          for t in tensors]


def _cuda_devices() -> list[int]:
  """The CUDA devices whose RNG states a call saves and restores: all of them once CUDA is in
  use (``torch.manual_seed`` seeds every one), none before."""
  if torch.cuda.is_available() and torch.cuda.is_initialized():
    return list(range(torch.cuda.device_count()))
  return []


def _default_torch_device() -> torch.device:
  """The torch device of JAX's default device (where buffer_callback's buffers lie)."""
  device = jax.devices()[0]
  if device.platform == "gpu":
    return torch.device("cuda", device.local_hardware_id or 0)
  return torch.device("cpu")


def teacher_from_torch(policy: PolicyFn, *, action_dim: int,
                       samples_fn: Optional[SamplesFn] = None,
                       image_key: str = "rgb",
                       state_key: Optional[str] = None,
                       gripper: str = "raw",
                       device: Optional[str] = None,
                       seed_torch: bool = True,
                       callback: str = "buffer",
                       name: str = "torch") -> Teacher:
  """A teacher that calls a torch policy from inside the jitted update.

  Args:
    policy: ``policy(images, seed) -> actions``: images uint8 [B, H, W, C] torch (a view of
      XLA's buffer; on ``device`` if set), seed a Python int; actions [B, action_dim] (torch or
      numpy, any float dtype). With ``state_key`` it is called ``policy(images, seed,
      state=state)``, state float32 [B, D].
    action_dim: A, the size of each action; the first (trace-time) answer is checked against it.
    samples_fn: ``samples_fn(images, seed, num_samples[, state=...]) -> [N, B, A]``, N samples
      in one call, for PPD; None: PPD's N samples are N more policy calls with N more seeds.
    image_key: the observation key of the teacher's camera.
    state_key: an observation key to pass as ``state`` too (e.g. "state": the robot's
      proprioception with ``obs_mode="state_rgb"``); None: images only.
    gripper: "raw" returns the policy's actions; "maniskill" maps the last dim from 1 = open in
      [0, 1] (Octo, OpenVLA) to ManiSkill's +1 = open in [-1, 1] and clips all dims to [-1, 1];
      "clip" only clips (a policy already in ManiSkill's convention).
    device: the torch device to move inputs to before the call (a copy); None keeps them where
      XLA's buffers are (no copy). With ``callback="pure"`` they are host (CPU) tensors.
    seed_torch: seed torch's global RNG with each call's seed (CPU and CUDA states restored
      afterwards), so that policies drawing noise from it (``torch.randn``) answer the same for
      the same JAX key; costs about 0.35 ms a call on a CPU. False for policies that are
      deterministic or draw from their own generator seeded with ``seed``.
    callback: "buffer" (``jax.experimental.buffer_callback``: zero copy) or "pure"
      (``jax.pure_callback``: copies; for JAX versions without buffer_callback).
    name: the teacher's name in logs.

  Returns:
    A ``Teacher`` with empty params; its apply_fn is jittable and compiles once per shape.
  """
  if not callable(policy):
    raise ConfigError(f"the torch teacher's policy {policy!r} is not callable")
  if isinstance(action_dim, bool) or not isinstance(action_dim, (int, np.integer)) \
      or action_dim < 1:
    raise ConfigError(f"config.teacher.kwargs.action_dim={action_dim!r} must be a positive "
                      "integer, the size of the policy's actions (e.g. 7)")
  if gripper not in GRIPPER_MODES:
    raise ConfigError(f"config.teacher.kwargs.gripper={gripper!r}; use one of "
                      f"{', '.join(GRIPPER_MODES)}")
  if callback not in CALLBACKS:
    raise ConfigError(f"config.teacher.kwargs.callback={callback!r}; use one of "
                      f"{', '.join(CALLBACKS)}")
  if callback == "buffer" and buffer_callback is None:
    raise ConfigError(f"config.teacher.kwargs.callback='buffer' needs "
                      f"jax.experimental.buffer_callback, which JAX {jax.__version__} lacks; "
                      "upgrade JAX or use callback='pure' (copies)")
  _torch_device(device)
  apply_fn = TorchApply(policy=policy, action_dim=int(action_dim), samples_fn=samples_fn,
                        image_key=image_key, state_key=state_key, gripper=gripper,
                        device=device, seed_torch=seed_torch, callback=callback)
  return Teacher(params={}, apply_fn=apply_fn, name=name)


def load_factory(path: str) -> Callable[..., Any]:
  """The function named by ``path``, "package.module:function"; ConfigError saying what is
  wrong with it otherwise."""
  return load_by_path(path, f"config.teacher.kwargs.factory={path!r}")


def make_teacher(factory: Optional[str] = None, *, action_dim: Optional[int] = None,
                 factory_kwargs: Optional[Mapping[str, Any]] = None,
                 image_key: str = "rgb", state_key: Optional[str] = None,
                 gripper: str = "raw", device: Optional[str] = None, seed_torch: bool = True,
                 callback: str = "buffer") -> Teacher:
  """The torch teacher of ``config.teacher.kwargs``: imports ``factory``
  ("package.module:function"), calls it with ``factory_kwargs``, and adapts what it returns
  (a policy, or a ``TorchPolicy`` with a samples function) with ``teacher_from_torch``; the
  other arguments are its."""
  if factory is None:
    raise ConfigError("the 'torch' teacher needs config.teacher.kwargs.factory, "
                      "'package.module:function' naming a function that returns the policy")
  if action_dim is None:
    raise ConfigError("the 'torch' teacher needs config.teacher.kwargs.action_dim, the size "
                      "of the policy's actions (e.g. 7)")
  function = load_factory(factory)
  kwargs = dict(factory_kwargs or {})
  kwargs = {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in kwargs.items()}
  check_options(function, kwargs, "teacher.kwargs.factory_kwargs", f"the factory {factory!r}")
  made = function(**kwargs)
  policy, samples_fn = (made.act, made.sample) if isinstance(made, TorchPolicy) else (made, None)
  if not callable(policy):
    raise ConfigError(f"config.teacher.kwargs.factory={factory!r} returned a "
                      f"{type(policy).__name__}; it must return the policy (a callable "
                      "(images, seed) -> actions) or a torch_policy.TorchPolicy")
  return teacher_from_torch(policy, action_dim=action_dim, samples_fn=samples_fn,
                            image_key=image_key, state_key=state_key, gripper=gripper,
                            device=device, seed_torch=seed_torch, callback=callback,
                            name=f"torch:{factory}")

