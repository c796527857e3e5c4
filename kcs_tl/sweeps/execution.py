"""Where runs execute: one Ray task per run (local Ray by default, a cluster by address), or in-process.

Ray is an optional extra (``pip install kcs-tl[ray]``). ``executor="auto"``
uses it when it is installed and otherwise runs the same calls one after the
other in this process, saying so once. Each Ray task requests what a run
needs: ``cpus_per_run`` CPUs, and GPUs when the cluster has them (a whole one,
or a quarter for a built-in model, which is tiny).
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Sequence

from kcs_tl import validate
from kcs_tl.validate import InputValueError

EXECUTORS = ("auto", "ray", "sequential")
MAX_RETRIES = 1
"""Ray runs a task again once when its worker dies (e.g. Ray's memory monitor killed it on a busy
node); a second death records the run as failed, and the next sweep runs it again."""
_warned = False


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def choose(executor: str, address: str | None) -> str:
    """The executor that will run: ``"ray"`` or ``"sequential"``."""
    global _warned
    executor = validate.choice("executor", executor, EXECUTORS)
    if address is not None:
        validate.path("ray_address", address)
        if executor == "sequential":
            raise InputValueError("ray_address is given, but executor='sequential' runs in this process; drop one")
    if executor == "sequential":
        return executor
    if ray_available():
        return "ray"
    if executor == "ray" or address is not None:
        raise InputValueError("executor='ray' (or a ray_address) needs Ray: pip install 'kcs-tl[ray]'")
    if not _warned:
        warnings.warn("Ray is not installed: the sweep runs sequentially in this process "
                      "(pip install 'kcs-tl[ray]' to run it on Ray)", RuntimeWarning, stacklevel=3)
        _warned = True
    return "sequential"


class RayPool:
    """Ray started (or joined) for a sweep; shut down on ``close`` only if this pool started it."""

    def __init__(self, address: str | None, num_cpus: int | None):
        import ray

        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            options = {"address": address} if address is not None else {"num_cpus": num_cpus}
            try:
                ray.init(**options, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = f"the Ray cluster at ray_address={address!r}" if address else "a local Ray"
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                raise ConnectionError(f"cannot start or join {where}: {reason}") from None
        elif num_cpus is not None:
            warnings.warn("Ray is already running in this process; num_cpus is ignored", RuntimeWarning)

    def resources(self, cpus_per_run: float, gpus_per_run: float | None, device: str, small: bool) -> dict:
        """Ray resources of one run; refuses what the cluster could never give (the task would wait forever)."""
        have = self.ray.cluster_resources()
        if gpus_per_run is None:
            gpus_per_run = (0.25 if small else 1.0) if have.get("GPU", 0) > 0 and device != "cpu" else 0.0
        for name, want, key in (("cpus_per_run", cpus_per_run, "CPU"), ("gpus_per_run", gpus_per_run, "GPU")):
            if want > have.get(key, 0):
                raise InputValueError(f"{name}={want:g} but the Ray cluster has {have.get(key, 0):g} {key}s in all")
        return {"num_cpus": cpus_per_run, "num_gpus": gpus_per_run}

    def map(self, fn: Callable, calls: Sequence[tuple], resources: dict, on_done: Callable[[int, object], None],
            on_error: Callable[[int, BaseException], None]) -> None:
        """Run ``fn(*call)`` for every call as a Ray task; report each as it ends (in any order)."""
        remote = self.ray.remote(**resources, max_retries=MAX_RETRIES)(fn)
        pending = {remote.remote(*call): i for i, call in enumerate(calls)}
        try:
            while pending:
                (ready,), _ = self.ray.wait(list(pending), num_returns=1)
                i = pending.pop(ready)
                try:
                    result = self.ray.get(ready)
                except self.ray.exceptions.RayTaskError:
                    raise  # fn itself raised (run_one records a run's errors): a bug, with the worker's traceback
                except self.ray.exceptions.RayError as err:  # the worker died (killed, out of memory...)
                    on_error(i, err)
                else:
                    on_done(i, result)
        except BaseException:
            for ref in pending:
                self.ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


class InProcess:
    """The same calls, one after the other, in this process."""

    def resources(self, cpus_per_run, gpus_per_run, device, small) -> dict:
        return {}

    def map(self, fn, calls, resources, on_done, on_error) -> None:
        for i, call in enumerate(calls):
            on_done(i, fn(*call))

    def close(self) -> None:
        pass


def pool(executor: str, address: str | None, num_cpus: int | None):
    return RayPool(address, num_cpus) if executor == "ray" else InProcess()
