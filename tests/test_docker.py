"""docker/Dockerfile, checked without a Docker engine: it parses, starts from a CUDA runtime image,
installs with the Makefile's own `make install` (every dependency pinned by requirements.lock,
the slurm, postgres, faiss and pml extras), runs as a user who is not root, and the files it
copies (what its .dockerignore lets into the build context) install, and their wheel runs a
study.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .dockerfile import (
    DOCKERFILE,
    REPO,
    build_context,
    context_files,
    copy_sources,
    ignore_patterns,
    ignored,
    parse_dockerfile,
)
from .training_utils import TINY, run_installed

INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "CMD", "LABEL", "USER",
                "ENTRYPOINT", "EXPOSE", "VOLUME", "SHELL"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCK = REPO / "requirements.lock"


def make_dry_run(target: str, cwd: Path, *variables: str) -> str:
    """The commands ``make <target>`` would run for a fresh virtual environment /opt/venv."""
    return subprocess.run(["make", "-n", target, "VENV=/opt/venv", *variables], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def make_install(steps: list[tuple[str, str]]) -> list[str]:
    """The Dockerfile's one install step, ``make install VAR=value ...``: its variables."""
    runs = [a for i, a in steps if i == "RUN"]
    installs = [r for r in runs if re.search(r"pip |make install", r)]
    assert len(installs) == 1, installs
    match = re.search(r"(?:^|\s)make install((?: \w+=\S+)*)$", installs[0])
    assert match, installs[0]
    return match.group(1).split()


def test_dockerfile_parses_into_known_instructions_from_a_cuda_runtime(steps):
    assert {i for i, _ in steps} <= INSTRUCTIONS
    assert [i for i, _ in steps].count("FROM") == 1
    args = dict(re.match(r"(\w+)=(\S*)", a).groups() for i, a in steps if i == "ARG" and "=" in a)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], dict(steps)["FROM"])
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", base), base
    assert steps[-1][0] == "CMD"


def test_install_is_the_makefiles_make_install_with_the_lock_and_the_extras(steps):
    variables = make_install(steps)
    assert "VENV=/opt/venv" in variables
    extras = dict(v.split("=", 1) for v in variables).get("EXTRAS", "").split(",")
    assert set(extras) == {"slurm", "postgres", "faiss", "pml"} <= set(
        PYPROJECT["project"]["optional-dependencies"])
    pip = "/opt/venv/bin/python -m pip install -c requirements.lock -e"
    assert f'{pip} ".[{",".join(extras)}]"' in make_dry_run("install", REPO, *variables)
    readme = (REPO / "README.md").read_text()
    for target in ("train", "test"):  # the README's two commands install the same way
        assert f"make {target}" in readme and f'{pip} "."' in make_dry_run(target, REPO)
    assert f'{pip} ".[dev]"' in make_dry_run("test", REPO)


def test_the_lock_pins_every_dependency_and_keeps_the_constraints():
    """requirements.lock, made by ``uv pip compile`` from pyproject.toml and constraints.txt
    (``make lock``), pins each requirement of the project and of every extra to one version that
    satisfies it, and torch/torchvision to constraints.txt's versions."""
    text = LOCK.read_text()
    command = re.search(r"^#\s+(uv pip compile .*)$", text, re.M).group(1)
    assert "pyproject.toml" in command and "--all-extras" in command
    assert "-c constraints.txt" in command and "--universal" in command
    pins: dict[str, list[tuple[str, Requirement]]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins.setdefault(canonicalize_name(req.name), []).append((spec.version, req))
    project = PYPROJECT["project"]
    wanted = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values()
                                         for r in extra)]
    for line in wanted:
        want = Requirement(line)
        assert canonicalize_name(want.name) in pins, f"{want.name} is not in requirements.lock"
        for version, _ in pins[canonicalize_name(want.name)]:
            assert want.specifier.contains(version, prereleases=True), (want, version)
    for line in (REPO / "constraints.txt").read_text().split():
        constraint = Requirement(line)
        versions = [v for v, _ in pins[canonicalize_name(constraint.name)]]
        assert versions == [next(iter(constraint.specifier)).version], (constraint, versions)
    assert (REPO / "constraints.txt").read_text().split() == ["torch==2.14.1",
                                                             "torchvision==0.29.1"]


def test_the_image_runs_as_a_user_who_owns_the_work_and_cache_dirs(steps):
    users = [(n, a) for n, (i, a) in enumerate(steps) if i == "USER"]
    assert users and users[-1][1] not in ("root", "0"), users
    user, where = users[-1][1], users[-1][0]
    install = next(n for n, (i, a) in enumerate(steps) if i == "RUN" and "make install" in a)
    assert install < where  # installed as root, run as the user
    created = [a for i, a in steps[:where] if i == "RUN" and re.search(rf"useradd .*\b{user}$|"
                                                                       rf"useradd .*\b{user} ", a)]
    assert created, f"no RUN useradd creates {user}"
    workdir = [a for i, a in steps[where:] if i == "WORKDIR"][-1]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for i, a in steps if i == "ENV")))
    for folder in (workdir, env["DML_CACHE_DIR"]):
        assert re.search(rf"chown {user}(:{user})? .*{re.escape(folder)}\b", created[0]), folder


def test_the_image_tells_its_runs_the_commit_it_was_built_from(steps):
    """The image holds no git repository: ``--build-arg DML_COMMIT=...`` becomes the environment
    variable a run reads (dml.provenance; tests/test_install.py runs the wheel with it)."""
    assert ("ARG", "DML_COMMIT=") in steps
    assert ("ENV", "DML_COMMIT=${DML_COMMIT}") in steps
    assert "--build-arg DML_COMMIT=$(git rev-parse HEAD)" in (REPO / "docker" / "README.md"
                                                               ).read_text()


def test_copies_everything_the_install_needs_and_dockerignore_keeps_it(steps):
    sources = copy_sources(steps)
    prerequisites = re.search(r"^\$\(VENV\)/\.installed: (.*)$",
                              (REPO / "Makefile").read_text(), re.M).group(1).split()
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {"Makefile", "conf", "requirements.lock", PYPROJECT["project"]["readme"],
              *(p.rstrip("*") for p in packages),  # dml, hydra_plugins (the sweeper)
              *(p for p in prerequisites if not p.startswith("$"))}
    assert needed <= set(sources), needed - set(sources)
    patterns = ignore_patterns()
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        files = [f for f in (REPO / source).rglob("*") if f.is_file()] or [REPO / source]
        kept = set(context_files(source, patterns))
        for f in files:
            if "__pycache__" not in f.parts:
                assert f in kept or any(p in kept for p in f.parents), f"{f} is dockerignored"
    assert ignored(".venv/bin/python", patterns) and ignored("dml/__pycache__/x.pyc", patterns)


def test_the_copied_files_install_with_the_makefile_command(steps, tmp_path):
    """The Makefile's pip command, as a dry run, on a context holding only the copied files."""
    build_context(tmp_path)
    dry = make_dry_run("install", tmp_path, *make_install(steps))
    pip = next(line for line in dry.splitlines() if " -e " in line)
    command = [sys.executable, *shlex.split(pip)[1:], "--dry-run", "--no-deps",
               "--no-build-isolation", "--no-index"]
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "Would install dml-" in out.stdout, out.stderr[-2000:]


def test_the_wheel_of_the_copied_files_runs_a_study_from_another_directory(installed, tmp_path):
    """``installed``: the wheel of the build context. Its Optuna sweeper (not the checkout's)
    runs a one-trial ``search=`` study."""
    where = run_installed(installed, tmp_path, "-c", "import hydra_plugins.dml_optuna_sweeper."
                          "optuna_sweeper as m; print(m.__file__)")
    assert where.stdout.startswith(str(installed)), where  # the wheel's plugin, not the checkout's
    proc = run_installed(installed, tmp_path, "-m", "dml.cli.train", "-m", *TINY, "search=sct",
                         "trainer.max_epochs=1", "test=false", "hydra.sweeper.n_trials=1",
                         "hydra.sweep.dir=study")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "study" / "trial_0" / "metrics.json").is_file()
    assert (tmp_path / "study" / "study.json").is_file()
