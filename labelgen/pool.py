"""A pool of Ray actors running ``LabelWorker``, with replacement of dead actors and bounded retries.

Plain actors scheduled with ``ray.wait`` (a stable Ray API) rather than Ray Data: one task per actor
at a time, so a task that fails is known exactly, and an actor that dies (killed, out of memory,
node lost) costs only the task it was running: the actor is replaced and the task resubmitted, at
most ``max_retries`` times per task.

Each actor is a ``RayWorker``: it runs in the driver's directory (``labelgen.session``) and keeps a
teacher that would not load as one line for the driver to report, since Ray prints the traceback of
an actor whose constructor raised on the driver's terminal (about 20 lines per worker).
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import ray
from ray.exceptions import RayActorError, RayError

from fkd.teacher.errors import TeacherError

from .errors import BadImage, InputError, LabelgenError, ShardFailedError
from .messages import ImageRef, ShardOutcome, ShardTask, TeacherInfo
from .worker import LabelWorker, WorkerConfig

T = TypeVar("T")

ENV_PREFIX = "FKD_"
"""Driver environment variables passed on to the workers (e.g. FKD_SHARED, which locates ../shared)."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def describe_error(err: BaseException) -> str:
    """One line for the user: the original exception's last line, or why the actor died."""
    if isinstance(err, RayActorError) and not err.actor_init_failed:
        return "the worker process died (killed, out of memory, or crashed)"
    lines = [line.strip() for line in _ANSI.sub("", str(err)).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def one_line(exc: BaseException) -> str:
    """A worker's failure on one line: a ``TeacherError``'s message (written for the user) as it is,
    anything else as ``Type: message``, as Python's traceback ends (a multi-line message is joined)."""
    text = str(exc) if isinstance(exc, TeacherError) else "".join(traceback.format_exception_only(exc))
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class RayWorker:
    """A ``LabelWorker`` as a Ray actor, in the driver's working directory ``cwd`` when this node
    has it (Ray starts it in the empty directory of ``labelgen.session``). A failure to load the
    teacher is kept for ``problem()``, not raised: the other methods are only called once it loaded."""

    def __init__(self, config: WorkerConfig, cwd: str):
        if os.path.isdir(cwd):
            os.chdir(cwd)
        self.node = ray.util.get_node_ip_address()
        self.worker: "LabelWorker | None" = None
        self.load_error: "str | None" = None
        try:
            self.worker = LabelWorker(config)
        except Exception as exc:  # noqa: BLE001 - any failure is the user's to read, in one line
            self.load_error = one_line(exc)

    def problem(self) -> "str | None":
        """None once the teacher is loaded; else the end of a sentence that begins with the worker's name."""
        return None if self.worker is not None else f"(node {self.node}) could not load the teacher: {self.load_error}"

    def info(self) -> TeacherInfo:
        return self.worker.info()

    def check_images(self, images: list[ImageRef]) -> list[BadImage]:
        return self.worker.check_images(images)

    def label_shard(self, task: ShardTask, board: "ray.actor.ActorHandle | None" = None) -> ShardOutcome:
        return self.worker.label_shard(task, board)


class WorkerPool:
    """``size`` actors, each holding ``num_cpus`` CPUs and ``num_gpus`` GPUs and one teacher."""

    def __init__(
        self,
        config: WorkerConfig,
        size: int,
        num_cpus: float,
        num_gpus: float,
        max_retries: int = 3,
        log: Callable[[str], None] = _stderr,
    ):
        if size < 1:
            raise ValueError(f"--workers must be >= 1, got {size}")
        self.config = config
        self.max_retries = max_retries
        self.log = log
        env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
        self._options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        if env:
            self._options["runtime_env"] = {"env_vars": env}
        self._actor_class = ray.remote(RayWorker)
        self.actors = [self._spawn()]
        if config.batch_size is None:
            # --batch-size auto is probed once, by the first worker alone: probes of workers sharing a
            # GPU would see each other's memory, and every worker (a replacement too) must run the
            # same batches (GPU kernels are chosen per batch shape: labels would differ in their last bits).
            try:
                self._check_loaded(0, size)
            except InputError:
                self.close()
                raise
            self.config = replace(config, batch_size=ray.get(self.actors[0].info.remote()).batch_size)
        self.actors += [self._spawn() for _ in range(size - 1)]

    def _spawn(self) -> "ray.actor.ActorHandle":
        return self._actor_class.options(**self._options).remote(self.config, os.getcwd())

    def teacher_info(self) -> TeacherInfo:
        """Wait until every actor has loaded its teacher (a bad name, checkpoint, module or device
        stops the run, naming the first worker that failed); return what the first one loaded."""
        for i in range(len(self.actors)):
            self._check_loaded(i, len(self.actors))
        try:
            return ray.get(self.actors[0].info.remote())
        except RayError as err:
            raise LabelgenError(f"the teacher could not be described: {describe_error(err)}") from None

    def _check_loaded(self, i: int, size: int) -> None:
        """Wait until actor ``i`` has loaded its teacher; one line naming it when it could not."""
        try:
            problem = ray.get(self.actors[i].problem.remote())
        except RayActorError as err:  # the worker could not even start (its process died, or an import failed)
            raise InputError(f"worker {i + 1} of {size} could not load the teacher: {describe_error(err)}") from None
        if problem is not None:
            raise InputError(f"worker {i + 1} of {size} {problem}")

    def map_unordered(
        self,
        method: str,
        tasks: Sequence[T],
        name: Callable[[T], str] = str,
        extra: tuple[Any, ...] = (),
        poll: "Callable[[], None] | None" = None,
        poll_seconds: float = 1.0,
    ) -> Iterator[tuple[T, Any]]:
        """Run ``actor.<method>(task, *extra)`` for every task, yielding ``(task, result)`` as they
        finish; ``poll()`` is called every ``poll_seconds`` while none finishes.

        A failed task goes back to the front of the queue; after ``max_retries`` retries the run
        stops with ``ShardFailedError`` naming the task and its last error. A dead actor's
        replacement takes tasks only once it has loaded its teacher: when its node is gone and no
        other node has room for it, the surviving actors do the work instead of it waiting forever.
        """
        queue: deque[int] = deque(range(len(tasks)))
        failures = [0] * len(tasks)
        idle = list(self.actors)
        running: dict[ray.ObjectRef, tuple[Any, int]] = {}
        starting: dict[ray.ObjectRef, Any] = {}  # replacement actors, until their teacher is loaded
        while queue or running:
            while queue and idle:
                actor, i = idle.pop(), queue.popleft()
                running[getattr(actor, method).remote(tasks[i], *extra)] = (actor, i)
            ready, _ = ray.wait([*running, *starting], num_returns=1, timeout=poll_seconds if poll else None)
            if not ready:
                poll()
                continue
            if ready[0] in starting:
                idle.append(self._started(starting.pop(ready[0]), ready[0]))
                continue
            actor, i = running.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except RayActorError as err:
                if err.actor_init_failed:
                    raise LabelgenError(f"a replacement worker could not load the teacher: {describe_error(err)}") from None
                fresh = self._replace(actor)
                starting[fresh.problem.remote()] = fresh
                self._retry(queue, failures, i, name(tasks[i]), err)
            except RayError as err:
                idle.append(actor)
                self._retry(queue, failures, i, name(tasks[i]), err)
            else:
                idle.append(actor)
                yield tasks[i], result

    @staticmethod
    def _started(actor: "ray.actor.ActorHandle", ready: "ray.ObjectRef") -> "ray.actor.ActorHandle":
        """A replacement actor whose ``problem()`` call finished: usable, unless loading failed."""
        try:
            problem = ray.get(ready)
        except RayError as err:
            raise LabelgenError(f"a replacement worker could not load the teacher: {describe_error(err)}") from None
        if problem is not None:
            raise LabelgenError(f"a replacement worker {problem}")
        return actor

    def _retry(self, queue: deque[int], failures: list[int], i: int, label: str, err: RayError) -> None:
        failures[i] += 1
        reason = describe_error(err)
        if failures[i] > self.max_retries:
            raise ShardFailedError(f"{label} failed {failures[i]} times; last error: {reason}")
        self.log(f"fkd-labelgen: {label} failed ({reason}); retrying ({failures[i]}/{self.max_retries})")
        queue.appendleft(i)

    def _replace(self, actor: "ray.actor.ActorHandle") -> "ray.actor.ActorHandle":
        ray.kill(actor, no_restart=True)
        fresh = self._spawn()
        self.actors[self.actors.index(actor)] = fresh
        return fresh

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
