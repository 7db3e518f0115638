"""A teacher behind a process boundary, the way the published RPD served Octo: the baseline hop.

The published trainer ran Octo in a separate Python process and called it over RPC (RPyC with
json_numpy), passing images through POSIX shared memory. rpd_jax runs the teacher inside the
jitted update instead; this module rebuilds the out-of-process path with the standard library
only, so that the cost of the hop can be measured against the in-process call
(``python -m rpd_jax.bench.teacher``):

- the server is a separate Python process (``multiprocessing``, spawn: a fresh interpreter, as a
  separate environment would be) that builds the teacher and jits its apply function;
- requests and replies travel over a ``multiprocessing`` connection as one byte string: a JSON
  header, then the raw bytes of the non-image arrays (numpy's own serialisation of
  dtype/shape/buffer, like json_numpy without the base64);
- images (uint8 arrays of rank 4) go through ``multiprocessing.shared_memory`` segments the
  client owns and reuses, so only their names cross the connection.

Every call is a host round trip: device -> numpy -> shared memory -> server's device and back.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import struct as struct_lib
import time
import traceback
from multiprocessing import shared_memory
from typing import Any, Mapping, Optional

import numpy as np
from absl import logging

from rpd_jax.errors import RunError
from rpd_jax.teachers.base import TeacherOutput

_LEN = struct_lib.Struct("<Q")  # header length prefix
_READY, _CLOSE, _ERROR = b"ready", b"close", b"error:"


def _is_image(x: np.ndarray) -> bool:
  return x.dtype == np.uint8 and x.ndim == 4


def pack(arrays: Mapping[str, np.ndarray], shm: Optional[dict[str, Any]] = None,
         extra: Optional[Mapping[str, Any]] = None) -> bytes:
  """Serialises named arrays (+ JSON-able ``extra``) into one message.

  With ``shm`` (a dict the caller keeps: name -> SharedMemory), images are written to shared
  memory segments, created or grown on demand, and only referenced in the message.
  """
  header, chunks, offset = {"extra": dict(extra or {}), "arrays": {}}, [], 0
  for name, value in arrays.items():
    value = np.ascontiguousarray(value)
    entry = {"dtype": value.dtype.str, "shape": list(value.shape)}
    if shm is not None and _is_image(value):
      segment = shm.get(name)
      if segment is None or segment.size < value.nbytes:
        if segment is not None:
          segment.close()
          segment.unlink()
        segment = shm[name] = shared_memory.SharedMemory(create=True, size=value.nbytes)
      np.ndarray(value.shape, value.dtype, buffer=segment.buf)[...] = value
      entry["shm"] = segment.name
    else:
      entry["offset"], entry["nbytes"] = offset, value.nbytes
      chunks.append(value.tobytes())
      offset += value.nbytes
    header["arrays"][name] = entry
  head = json.dumps(header).encode()
  return _LEN.pack(len(head)) + head + b"".join(chunks)


def unpack(message: bytes, attached: Optional[dict[str, Any]] = None
           ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Inverse of ``pack``: (arrays, extra). Arrays in shared memory are views of the segment
  (``attached`` caches open segments by name); the others are copies."""
  (length,) = _LEN.unpack_from(message)
  header = json.loads(message[_LEN.size:_LEN.size + length])
  body = memoryview(message)[_LEN.size + length:]
  arrays = {}
  for name, entry in header["arrays"].items():
    dtype, shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
    if "shm" in entry:
      segment = attached.get(entry["shm"])
      if segment is None:
        segment = attached[entry["shm"]] = shared_memory.SharedMemory(name=entry["shm"])
      arrays[name] = np.ndarray(shape, dtype, buffer=segment.buf)
    else:
      raw = body[entry["offset"]:entry["offset"] + entry["nbytes"]]
      arrays[name] = np.frombuffer(raw, dtype).reshape(shape).copy()
  return arrays, header["extra"]


def _flatten(prefix: str, obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {f"{prefix}/{k}": np.asarray(v) for k, v in obs.items()}


def _serve(conn, builder: str, builder_kwargs: dict[str, Any]):
  """Server process: build the teacher, then answer requests until told to close."""
  attached: dict[str, Any] = {}
  try:
    import jax  # pylint: disable=g-import-not-at-top
    module, function = builder.split(":")
    teacher = getattr(importlib.import_module(module), function)(**builder_kwargs)
    apply = jax.jit(teacher.apply_fn, static_argnums=5)
    conn.send_bytes(_READY)
  except Exception:  # pylint: disable=broad-except
    conn.send_bytes(_ERROR + traceback.format_exc().encode())
    return
  while True:
    message = conn.recv_bytes()
    if message == _CLOSE:
      break
    try:
      cpu_start = time.process_time()
      arrays, extra = unpack(message, attached)
      obs = {k.split("/", 1)[1]: jax.numpy.asarray(v) for k, v in arrays.items()
             if k.startswith("obs/")}
      prev = {k.split("/", 1)[1]: jax.numpy.asarray(v) for k, v in arrays.items()
              if k.startswith("prev_obs/")}
      out = apply(teacher.params, obs, prev, jax.numpy.asarray(arrays["is_first"]),
                  jax.random.key(extra["seed"]), extra["num_samples"])
      reply = {"action": np.asarray(out.action)}
      if out.samples is not None:
        reply["samples"] = np.asarray(out.samples)
      conn.send_bytes(pack(reply, extra={"cpu_s": time.process_time() - cpu_start,
                                         "id": extra.get("id")}))
    except Exception:  # pylint: disable=broad-except
      conn.send_bytes(_ERROR + traceback.format_exc().encode())
  for segment in attached.values():
    segment.close()


class RemoteTeacher:
  """A teacher in a server process; call it like ``apply_fn`` without params, on the host.

  Args:
    builder: "module:function" that returns a ``Teacher`` when called with ``builder_kwargs``
      (JSON-able) in the server process.
    builder_kwargs: its keyword arguments.
    use_shared_memory: pass images through shared memory (the published way); False pickles
      them into the message.
    start_method: multiprocessing start method; "spawn" (a fresh interpreter: JAX is not
      fork-safe).
    timeout: seconds to wait for one answer before asking again.
    retries: how many times a request is sent again before the server is given up on: a call
      fails with a RunError after ``(1 + retries) * timeout`` seconds without an answer, or at
      once when the server process has died.

  ``teacher(obs, prev_obs, is_first, seed, num_samples=0)`` takes dicts of arrays [B, ...] (JAX or
  numpy) and returns a ``TeacherOutput`` of numpy arrays. ``last_server_cpu_s`` is the CPU time
  (all threads) the server process spent on the last request.
  """

  def __init__(self, builder: str, builder_kwargs: Optional[Mapping[str, Any]] = None, *,
               use_shared_memory: bool = True, start_method: str = "spawn",
               startup_timeout: float = 600.0, timeout: float = 120.0, retries: int = 2):
    ctx = mp.get_context(start_method)
    self._conn, child = ctx.Pipe()
    self._process = ctx.Process(target=_serve, args=(child, builder, dict(builder_kwargs or {})),
                                daemon=True)
    self._process.start()
    child.close()
    self._shm: Optional[dict[str, Any]] = {} if use_shared_memory else None
    self._timeout, self._retries, self._requests = timeout, retries, 0
    self.last_server_cpu_s = 0.0
    if not self._conn.poll(startup_timeout):
      self.close()
      raise TimeoutError(f"teacher server {builder} did not start in {startup_timeout} s")
    self._check(self._conn.recv_bytes())

  def _check(self, message: bytes) -> bytes:
    if message.startswith(_ERROR):
      self.close()
      raise RuntimeError("teacher server failed:\n" + message[len(_ERROR):].decode())
    return message

  def __call__(self, obs: Mapping[str, Any], prev_obs: Mapping[str, Any], is_first: Any,
               seed: int, num_samples: int = 0) -> TeacherOutput:
    arrays = {**_flatten("obs", obs), **_flatten("prev_obs", prev_obs),
              "is_first": np.asarray(is_first, bool)}
    self._requests += 1
    request = pack(arrays, self._shm, {"seed": int(seed), "num_samples": int(num_samples),
                                       "id": self._requests})
    for attempt in range(1 + self._retries):
      if attempt:
        logging.warning("teacher server: no answer to request %d in %.0f s; asking again "
                        "(%d of %d)", self._requests, self._timeout, attempt, self._retries)
      try:
        self._conn.send_bytes(request)
        while self._conn.poll(self._timeout):
          reply, extra = unpack(self._check(self._conn.recv_bytes()))
          if extra.get("id") == self._requests:  # else a late answer to an earlier ask
            self.last_server_cpu_s = extra["cpu_s"]
            return TeacherOutput(action=reply["action"], samples=reply.get("samples"))
      except (EOFError, OSError):  # the server's end of the pipe closed: it died
        self._process.join(timeout=10)
      if not self._process.is_alive():
        break
    alive = self._process.is_alive()
    self.close(terminate=True)
    raise RunError(
        f"the teacher server (pid {self._process.pid}) "
        + (f"did not answer in {1 + self._retries} tries of {self._timeout:g} s; it was "
           "stopped" if alive else f"died (exit code {self._process.exitcode})")
        + "; check its log, or raise timeout= for a slow teacher")

  def close(self, terminate: bool = False):
    """Stops the server (``terminate``: at once, for a server that does not answer) and frees
    the shared memory."""
    if terminate and self._process.is_alive():
      self._process.terminate()
      self._process.join(timeout=10)
    if self._process.is_alive():
      try:
        self._conn.send_bytes(_CLOSE)
      except (BrokenPipeError, OSError):
        pass
      self._process.join(timeout=30)
      if self._process.is_alive():
        self._process.terminate()
    self._conn.close()
    for segment in (self._shm or {}).values():
      segment.close()
      segment.unlink()
    self._shm = {} if self._shm is not None else None

  def __enter__(self) -> RemoteTeacher:
    return self

  def __exit__(self, *exc):
    self.close()
