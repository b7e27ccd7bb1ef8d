"""Console progress of the participant level: a line as each step of a job starts and as the job ends.

Fed by nipype's ``status_callback``.

nipype calls ``JobProgress(node, status)`` from its scheduler (in the main process) with status
``start``, ``end`` or ``exception`` for every node. A job is one sub-workflow (``init_job_wf``);
its last node (``derivatives``) ending means the job is done. Each line gives the job, the step,
the time since the run started, the jobs done of the total and an estimate of the time left
(elapsed / done x remaining). On a terminal a tqdm bar over the jobs sits below the lines.

nipype's MultiProc starts ready steps in topological order, which runs the jobs breadth-first: every
job's first step, then every job's second, so no job completes before the last few minutes and the
time left stays unknown. ``JobFirstMultiProcPlugin`` orders the steps job by job, so that a worker that
comes free takes the next step of the earliest unfinished job: jobs complete one after another and the
estimate is known after the first.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from nipype.pipeline.plugins.multiproc import MultiProcPlugin
from tqdm import tqdm

LAST_STEP = "derivatives"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class JobProgress:
    """Progress over ``job_names`` (e.g. ``sub-01_ses-a_T1w``); call it as nipype's ``status_callback``."""

    def __init__(self, job_names: list[str], stream=None, bar: bool | None = None):
        self.stream = stream or sys.stdout
        # nipype names a job's workflow after the job with '-' replaced by '_'.
        self.names = {name.replace("-", "_"): name for name in job_names}
        self.total = len(job_names)
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.start = time.monotonic()
        use_bar = self.stream.isatty() if bar is None else bar
        self.bar = tqdm(total=self.total, unit="job", file=self.stream, leave=True) if use_bar else None

    def _job(self, node) -> str:
        workflow = str(getattr(node, "_hierarchy", "") or "").split(".")[-1]
        return self.names.get(workflow, workflow or node.name)

    def eta(self) -> str:
        """The time left, from the mean wall time per finished job so far."""
        finished = len(self.done) + len(self.failed)
        if finished == 0:
            return "time left: estimating"
        elapsed = time.monotonic() - self.start
        return f"about {_clock(elapsed / finished * (self.total - finished))} left"

    def line(self, job: str, step: str, what: str) -> str:
        finished = len(self.done) + len(self.failed)
        return (f"bhd [{_clock(time.monotonic() - self.start)}] {job}: {step} {what} "
                f"({finished}/{self.total} jobs done, {self.eta()})")

    def __call__(self, node, status: str) -> None:
        job, step = self._job(node), node.name
        if status == "start":
            text = self.line(job, step, "started")
        elif status == "end" and step == LAST_STEP:
            self.done.add(job)
            text = self.line(job, step, "finished: job complete")
        elif status == "end":
            return  # a step's end is the next step's start
        else:
            self.failed.add(job)
            text = self.line(job, step, "FAILED")
        if self.bar is not None:
            self.bar.write(text)
            self.bar.n = len(self.done) + len(self.failed)
            self.bar.refresh()
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _job_of(node) -> str:
    return str(getattr(node, "_hierarchy", "") or "")


def job_first_order(procs: list, edges: list[tuple[int, int]]) -> list[int]:
    """Indices of ``procs`` (a topological order) regrouped job by job, jobs in order of first appearance.

    Within a job the order is kept. ``edges`` (i, j): procs[i] must run before procs[j]; if the regrouped
    order breaks one (steps shared between jobs), the original order is returned.
    """
    first: dict[str, int] = {}
    for i, node in enumerate(procs):
        first.setdefault(_job_of(node), i)
    order = sorted(range(len(procs)), key=lambda i: (first[_job_of(procs[i])], i))
    position = {old: new for new, old in enumerate(order)}
    if any(position[i] >= position[j] for i, j in edges):
        return list(range(len(procs)))
    return order


class JobFirstMultiProcPlugin(MultiProcPlugin):
    """nipype's MultiProc with the steps ordered job by job (``job_first_order``): a job runs to its end
    before the next job's steps take the free workers, as far as the dependencies allow."""

    def _generate_dependency_list(self, graph):
        super()._generate_dependency_list(graph)
        rows, cols = self.depidx.nonzero()  # depidx[i, j]: procs[i] runs before procs[j]
        order = job_first_order(self.procs, list(zip(rows.tolist(), cols.tolist())))
        index = np.asarray(order)
        self.procs = [self.procs[i] for i in order]
        self.depidx = self.depidx[index, :][:, index]
        self.refidx = self.depidx.astype(int)
