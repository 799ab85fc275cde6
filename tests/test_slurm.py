"""The cluster path on a real SLURM (the one-node cluster and PostgreSQL of ``.ci/cluster.sh``):
sweeps and studies submitted by ``dml-train -m hydra/launcher=slurm`` as SLURM jobs, jobs
preempted (``scontrol requeue``) or reaching their time limit, studies on PostgreSQL, and DDP
launched by ``srun``.

Every job is bounded: a test's jobs carry its own job name and are cancelled when it ends, and
each wait has a deadline (without an accounting database submitit cannot see a job that died,
and would wait for it forever). The tests pace jobs with :class:`Gate` (a job stops at a chosen
epoch until SLURM interrupts it) instead of racing the training, and release a requeued job
from SLURM's requeue delay (a requeued job is held for two minutes) with
``scontrol update StartTime=now``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import optuna
import pytest
import torch

from .wandb_offline import offline_runs

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm

FAST = ["data=synthetic", "logger=csv", "trainer.enable_progress_bar=false",
        "callbacks.triplet_diagram=null", "module.nmi=false", "eval.show=0"]
ON_SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.timeout_min=10"]
GATE = ["+callbacks.gate._target_=tests.test_slurm.Gate", "+callbacks.gate.run_dir=${run_dir}"]


class Gate(L.Callback):
    """Test pacing inside a job. Each start of the run in ``run_dir`` (0, 1, … : the lines of
    ``starts.log``) appends ``<start> <epoch>`` to ``epochs.log`` as each training epoch begins;
    where ``run_dir/pauses`` lists ``<start> <epoch>``, that start stops at that epoch (its
    ``last.ckpt`` holds the epochs before), writes ``paused``, and waits until SLURM stops it."""

    def __init__(self, run_dir: str) -> None:
        self.dir = Path(run_dir)
        self.start = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        starts = self.dir / "starts.log"
        self.start = len(starts.read_text().splitlines()) if starts.exists() else 0
        with starts.open("a") as f:
            f.write(f"{os.environ.get('SLURM_JOB_ID')}\n")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        here = f"{self.start} {trainer.current_epoch}"
        with (self.dir / "epochs.log").open("a") as f:
            f.write(here + "\n")
        pauses = self.dir / "pauses"
        if pauses.exists() and here in pauses.read_text().splitlines():
            (self.dir / "paused").write_text(here)
            while True:
                time.sleep(0.2)


# -- helpers ------------------------------------------------------------------------------------
def job_env() -> dict[str, str]:
    """The environment jobs inherit (sbatch exports it): this checkout importable (the
    :class:`Gate` callback lives in tests/), one thread per process (bit-identical runs)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := condition():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def squeue(name: str) -> dict[str, tuple[str, str]]:
    """The jobs named ``name``: ``{job id: (state, array task)}``: an array task by its own job
    id (its ``SLURM_JOB_ID``) and as ``<array job>_<task>``, the name scancel takes."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%A %T %i"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return {i: (state, task) for i, state, task in (line.split() for line in out.splitlines())}


def scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, timeout=30)


@pytest.fixture
def job_name() -> Iterator[str]:
    """A job name of this test's own; its jobs are cancelled when the test ends."""
    name = f"dmltest_{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["scancel", "-n", name], timeout=30)


class Sweep:
    """``dml-train -m`` in the background (its own process group), output in
    ``<sweep dir>.sweeper.<id>.log`` beside the sweep directory."""

    def __init__(self, sweep_dir: Path, job_name: str, *overrides: str) -> None:
        self.dir = sweep_dir
        self.log = sweep_dir.parent / f"{sweep_dir.name}.sweeper.{uuid.uuid4().hex[:6]}.log"
        given = {o.split("=", 1)[0] for o in overrides}  # e.g. logger=default replaces FAST's
        fast = [o for o in FAST if o.split("=", 1)[0] not in given]
        argv = [sys.executable, "-m", "dml.cli.train", "-m", *fast, *ON_SLURM,
                f"hydra.launcher.name={job_name}", *overrides, f"hydra.sweep.dir={sweep_dir}"]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(argv, cwd=sweep_dir.parent, env=job_env(),
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def finish(self, timeout: float) -> str:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"sweep still running after {timeout:.0f} s:\n"
                                 f"{self.log.read_text()[-3000:]}") from None
        output = self.log.read_text()
        assert self.proc.returncode == 0, output[-3000:]
        return output

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def sweeps(job_name: str) -> Iterator[Callable[..., Sweep]]:
    """Starts :class:`Sweep`s of this test's jobs; kills those still running when it ends (a
    sweeper whose jobs were cancelled would wait for them forever)."""
    started: list[Sweep] = []

    def start(sweep_dir: Path, *overrides: str) -> Sweep:
        started.append(Sweep(sweep_dir, job_name, *overrides))
        return started[-1]

    yield start
    for sweep in started:
        if sweep.proc.poll() is None:
            sweep.kill()


def release(job: str, name: str, *updates: str) -> None:
    """Once SLURM holds the requeued ``job`` (pending until its begin time), start it now (with
    ``updates``, e.g. ``TimeLimit=10``)."""
    wait_for(lambda: squeue(name).get(job, ("", ""))[0] == "PENDING", 60, f"{job} requeued")
    scontrol("update", f"jobid={job}", *updates, "StartTime=now")


def paused(run_dir: Path, at: str, name: str) -> str:
    """Wait until the job in ``run_dir`` pauses at ``at`` (``<start> <epoch>``); its job id."""
    wait_for(lambda: (run_dir / "paused").exists()
             and (run_dir / "paused").read_text() == at, 240, f"{run_dir.name} to reach {at}")
    (run_dir / "paused").unlink()
    job = (run_dir / "starts.log").read_text().split()[-1]  # the job's SLURM_JOB_ID
    assert job in squeue(name)
    return job


def epochs(run_dir: Path) -> list[str]:
    return (run_dir / "epochs.log").read_text().splitlines()


def weights(run_dir: Path, name: str = "last.ckpt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / name, weights_only=False)["state_dict"]


# -- a sweep of SLURM jobs, and dml-report --------------------------------------------------------
def test_the_docs_sweep_runs_as_slurm_jobs_on_a_cpu_partition_and_reports(tmp_path, sweeps):
    """docs/cluster.md's sweep, scaled down to 2 losses × 2 seeds of synthetic data on the CPU
    node: no GPU request reaches sbatch (it refuses one on a CPU partition), every job writes
    its run, and dml-report makes the table of the 4 jobs."""
    sweep = tmp_path / "sweep"
    output = sweeps(sweep, "loss=sct,nca_semihard", "seed=0,1", "trainer.max_epochs=1").finish(300)
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")
    options = script.read_text()
    assert "#SBATCH --gpus-per-node" not in options and "--gres" not in options, options
    assert "#SBATCH --array=0-3%" in options and "#SBATCH --signal=USR2@120" in options
    assert "sbatch: error" not in output
    runs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert runs == ["0", "1", "2", "3"]
    report = subprocess.run([sys.executable, "-m", "dml.cli.report", str(sweep)], env=job_env(),
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    rows = [line for line in report.stdout.splitlines() if line.startswith("| ")]
    for loss in ("sct", "nca_semihard"):
        row = next(r for r in rows if r.startswith(f"| {loss} "))  # the test metrics' table
        assert row.split("|")[2].strip() == "2", row  # both seeds


# -- preemption and time limits -------------------------------------------------------------------
def test_a_preempted_then_timed_out_job_resumes_its_own_run_bit_identically(
        tmp_path, job_name, sweeps):
    """Job 0 of a 2-job sweep is preempted (``scontrol requeue``) at epoch 2, then, started again,
    reaches its time limit at epoch 4: SLURM sends submitit's USR2, submitit requeues it. Each
    start resumes the run directory of the job from its own ``last.ckpt``; the run finishes with
    the weights of job 1, the same run never interrupted, in one directory with one
    metrics.json."""
    sweep = tmp_path / "sweep"
    first, reference = sweep / "0", sweep / "1"
    first.mkdir(parents=True)
    (first / "pauses").write_text("0 2\n1 4\n")  # start 0 stops at epoch 2, start 1 at 4
    run = sweeps(sweep, "+replica=0,1", "trainer.max_epochs=6", "test=false", "logger=default",
                 *GATE)

    job = paused(first, "0 2", job_name)
    scontrol("requeue", job)  # preemption
    release(job, job_name)

    paused(first, "1 4", job_name)
    elapsed = int(time.time() - (first / "starts.log").stat().st_mtime)
    # a time limit 40-100 s away: within submitit's signal_delay_s (120 s), so SLURM signals now
    scontrol("update", f"jobid={job}", f"TimeLimit={math.ceil((elapsed + 40) / 60)}")
    release(job, job_name, "TimeLimit=10")

    output = run.finish(300)
    assert epochs(first) == ["0 0", "0 1", "0 2", "1 2", "1 3", "1 4", "2 4", "2 5"]
    assert epochs(reference) == [f"0 {e}" for e in range(6)]
    submitit_log = "".join(p.read_text() for p in (sweep / ".submitit").glob("*_0/*_0_0_log.*"))
    assert "Caught signal SIGUSR2" in submitit_log and "this job is timed-out" in submitit_log
    assert "Requeued job" in submitit_log  # submitit's handler, not Lightning's (USR1)
    assert "already holds a run" not in submitit_log + output
    got, want = weights(first), weights(reference)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    job_ids = set((first / "starts.log").read_text().split())
    assert len(job_ids) == 1 and (first / ".slurm_job").read_text().strip() in job_ids
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == [
        "0", "1", "multirun.yaml"]
    assert json.loads((first / "metrics.json").read_text())["epochs"] == 6
    assert not list(first.glob("**/hpc_ckpt*"))
    # W&B (offline): each of the 3 starts writes into the one run of the stored id (a killed
    # start's .wandb file may lack its run record, so the id is read off the folder names)
    starts = sorted(first.glob("wandb/offline-run-*"))
    run_id = (first / "wandb" / "run_id").read_text().strip()
    assert len(starts) == 3 and {s.name.rsplit("-", 1)[1] for s in starts} == {run_id}
    assert offline_runs(reference)[0].run.run_id != run_id  # another job, another run


# -- a study as SLURM jobs ------------------------------------------------------------------------
STUDY = ["search=sct", "test=false", "trainer.max_epochs=2", "hydra/sweeper/pruner=none",
         "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2"]


@pytest.fixture
def postgres() -> Iterator[str]:
    """A new database on the PostgreSQL server (``$DML_POSTGRES_URL``), dropped afterwards."""
    import psycopg

    from .conftest import postgres_url

    base = postgres_url()
    db = f"dmltest_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    yield base.rsplit("/", 1)[0] + "/" + db
    with psycopg.connect(base.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {db} WITH (FORCE)")


def test_a_study_of_slurm_jobs_on_postgresql_survives_a_cancelled_trial_and_a_killed_sweeper(
        tmp_path, job_name, sweeps, postgres):
    """``search=sct`` with 2 trials launched together as SLURM jobs, both reporting each epoch to
    the study on a PostgreSQL server (the storage docs/cluster.md recommends for many concurrent
    trials; the journal file's resumption is tested in tests/test_tune.py). Trial 0's job is
    cancelled at epoch 1 and the sweeper killed; trial 1's job finishes on its own. The same
    command again: trial 1 is not run again, trial 0 continues from its ``last.ckpt``, every
    trial is told once, and the best is chosen on validation only."""
    study = tmp_path / "study"
    (study / "trial_0").mkdir(parents=True)
    (study / "trial_0" / "pauses").write_text("0 1\n")
    args = [*STUDY, *GATE, f"hydra.sweeper.storage={postgres}"]
    sweeper = sweeps(study, *args)
    job = paused(study / "trial_0", "0 1", job_name)
    wait_for(lambda: len(squeue(job_name)) == 2, 60, "both trials running at once")
    subprocess.run(["scancel", squeue(job_name)[job][1]], check=True, timeout=30)
    sweeper.kill()
    wait_for(lambda: not squeue(job_name), 240, "trial 1's job to finish")
    assert (study / "trial_1" / "metrics.json").exists()
    assert not (study / "trial_0" / "metrics.json").exists()

    output = sweeps(study, *args).finish(300)
    launched = [line for line in output.splitlines() if "+trial.number=" in line]
    assert [("+trial.number=0 " in line, "ckpt_path=last" in line) for line in launched] == [
        (True, True)], launched  # trial 0 continued, trial 1 not run again
    assert epochs(study / "trial_0") == ["0 0", "0 1", "1 1"]
    assert epochs(study / "trial_1") == ["0 0", "0 1"]

    loaded = optuna.load_study(study_name="study", storage=postgres)
    trials = loaded.get_trials(deepcopy=False)
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(sorted(t.intermediate_values) == [0, 1] for t in trials)  # both jobs reported
    values = {}
    for t in trials:
        metrics = json.loads((study / f"trial_{t.number}" / "metrics.json").read_text())
        assert "test" not in metrics  # a trial is never tested
        assert t.value == metrics["val"]["map@r"]
        values[t.number] = t.value
    summary = json.loads((study / "study.json").read_text())
    assert summary["trials"] == {"complete": 2, "pruned": 0, "failed": 0, "diverged": 0}
    assert summary["best"]["value"] == max(values.values())
    assert summary["storage"] == postgres


# -- DDP launched by srun --------------------------------------------------------------------------
def srun_ddp_task(out: Path) -> None:
    """One task of ``srun --ntasks-per-node=2``: Lightning's SLURM environment gives rank, world
    size and rendezvous; Lightning's DDP trainer (triplet diagram run of tests/test_ddp.py)
    starts the gloo group, and on that group the loss and gradient checks of test_ddp run."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment
    from torch.nn.parallel import DistributedDataParallel

    from tests import test_ddp

    torch.set_num_threads(1)
    assert SLURMEnvironment.detect()
    env = SLURMEnvironment()
    rank, world = env.global_rank(), env.world_size()
    results: dict[object, object] = {"rank_world": (rank, world)}
    results["diagram"] = test_ddp.diagram_run(world, True, out / "diagram")
    x, labels = test_ddp.features()
    shard = test_ddp.first_batch(labels, rank, world)
    for name in test_ddp.LOSSES:
        ddp = DistributedDataParallel(test_ddp.TrainingStep(test_ddp.make_module(name, True)))
        results[name] = test_ddp.loss_and_grads(ddp, x[shard], labels[shard])
    torch.save(results, out / f"rank{rank}.pt")


def test_ddp_launched_by_srun_equals_one_process(tmp_path, job_name):
    """2 tasks of one SLURM job step (gloo, CPU), as a cluster launches DDP: cross-rank mining,
    loss and gradients equal one process on the global batch (tests/test_ddp.py's equality)."""
    from tests import test_ddp

    proc = subprocess.run(
        ["srun", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
         f"--job-name={job_name}", "--time=10",
         sys.executable, "-m", "tests.test_slurm", str(tmp_path)],
        env=job_env(), cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["rank_world"] for r in ranks] == [(0, 2), (1, 2)]
    single_total, single_counts = test_ddp.diagram_run(1, True, tmp_path / "single")
    (total, counts0), (_, counts1) = ranks[0]["diagram"], ranks[1]["diagram"]
    assert counts0 == counts1 == single_counts and total == single_total
    for name in test_ddp.LOSSES:
        loss, grads = test_ddp.single_process(name, test_ddp.first_batch(test_ddp.features()[1]))
        for result in ranks:
            ddp_loss, ddp_grads = result[name]
            assert ddp_loss == pytest.approx(loss, abs=1e-6)
            for got, want in zip(ddp_grads, grads, strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


if __name__ == "__main__":  # a task of test_ddp_launched_by_srun_equals_one_process
    srun_ddp_task(Path(sys.argv[1]))
