"""Console progress of the participant level: a line as each step of a job starts and as the job ends.

Fed by nipype's ``status_callback``.

nipype calls ``JobProgress(node, status)`` from its scheduler (in the main process) with status
``start``, ``end`` or ``exception`` for every node. A job is one sub-workflow (``init_job_wf``);
its last node (``derivatives``) ending means the job is done. Each line gives the job, the step,
the time since the run started, the jobs done of the total and an estimate of the time left
(elapsed / done x remaining). On a terminal a tqdm bar over the jobs sits below the lines.
"""

from __future__ import annotations

import sys
import time

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
