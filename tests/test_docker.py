"""docker/Dockerfile, checked without a Docker engine: it parses, starts from a CUDA runtime image,
installs with the Makefile's own `make install` (the pinned torch via constraints.txt), and the
files it copies (what its .dockerignore lets into the build context) are enough for that install.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "CMD", "LABEL", "USER",
                "ENTRYPOINT", "EXPOSE", "VOLUME", "SHELL"}


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs: comments dropped, ``\\`` continuations joined."""
    steps, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        instruction, _, args = (pending + line).strip().partition(" ")
        steps.append((instruction.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    return steps


def copy_sources(steps: list[tuple[str, str]]) -> list[str]:
    sources = []
    for instruction, args in steps:
        if instruction == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            sources += words[:-1]
    return sources


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) or fnmatch.fnmatchcase(c, f"**/{pattern}")
               for c in candidates):
            verdict = not negate
    return verdict


def make_dry_run(target: str, cwd: Path) -> str:
    """The commands ``make <target>`` would run for a fresh virtual environment /opt/venv."""
    return subprocess.run(["make", "-n", target, "VENV=/opt/venv"], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_dockerfile_parses_into_known_instructions_from_a_cuda_runtime(steps):
    assert {i for i, _ in steps} <= INSTRUCTIONS
    assert [i for i, _ in steps].count("FROM") == 1
    args = dict(re.match(r"(\w+)=(\S+)", a).groups() for i, a in steps if i == "ARG" and "=" in a)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], dict(steps)["FROM"])
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", base), base
    assert steps[-1][0] == "CMD"


def test_install_is_the_makefiles_make_install_with_the_constraints(steps):
    runs = [a for i, a in steps if i == "RUN"]
    installs = [r for r in runs if re.search(r"pip |make install", r)]
    assert len(installs) == 1 and re.search(r"(^|\s)make install( VENV=\S+)?$", installs[0])
    pip = "/opt/venv/bin/python -m pip install -c constraints.txt -e ."
    assert pip in make_dry_run("install", REPO)
    readme = (REPO / "README.md").read_text()
    for target in ("train", "test"):  # the README's two commands install the same way
        assert f"make {target}" in readme and pip in make_dry_run(target, REPO)
    assert (REPO / "constraints.txt").read_text().split() == ["torch==2.14.1",
                                                             "torchvision==0.29.1"]


def test_copies_everything_the_install_needs_and_dockerignore_keeps_it(steps):
    sources = copy_sources(steps)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    prerequisites = re.search(r"^\$\(VENV\)/\.installed: (.*)$",
                              (REPO / "Makefile").read_text(), re.M).group(1).split()
    needed = {"Makefile", "dml", "conf", pyproject["project"]["readme"],
              *(p for p in prerequisites if not p.startswith("$"))}
    assert needed <= set(sources), needed - set(sources)
    patterns = [line.strip() for line in
                (REPO / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        tree = REPO / source
        files = [tree] if tree.is_file() else [f for f in tree.rglob("*") if f.is_file()]
        for f in files:
            if "__pycache__" in f.parts:
                continue
            assert not ignored(str(f.relative_to(REPO)), patterns), f"{f} is dockerignored"
    assert ignored(".venv/bin/python", patterns) and ignored("dml/__pycache__/x.pyc", patterns)


def test_the_copied_files_install_with_the_makefile_command(steps, tmp_path):
    """The Makefile's pip command, as a dry run, on a context holding only the copied files."""
    for source in copy_sources(steps):
        copy = shutil.copytree if (REPO / source).is_dir() else shutil.copy2
        copy(REPO / source, tmp_path / source)
    dry = make_dry_run("install", tmp_path)
    pip = next(line for line in dry.splitlines() if " -e ." in line)
    command = [sys.executable, *shlex.split(pip)[1:], "--dry-run", "--no-deps",
               "--no-build-isolation", "--no-index"]
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "Would install dml-" in out.stdout, out.stderr[-2000:]
