"""docker/Dockerfile read without a Docker engine: its instructions, the files its COPY lines take
from the build context (what its .dockerignore lets in), and that context rebuilt in a folder."""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / "docker" / "Dockerfile.dockerignore"


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


def copies(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``(source, destination)`` of every COPY line (flags such as ``--chown`` dropped)."""
    pairs = []
    for instruction, args in steps:
        if instruction == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            pairs += [(source, words[-1]) for source in words[:-1]]
    return pairs


def copy_sources(steps: list[tuple[str, str]]) -> list[str]:
    return [source for source, _ in copies(steps)]


def ignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


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


def context_files(source: str, patterns: list[str]) -> list[Path]:
    """The files and links under ``source`` (relative to the repository) that the build context
    holds; links are not followed (COPY copies a link as a link)."""
    top = REPO / source
    if top.is_file() or top.is_symlink():
        found = [top]
    else:
        found = []
        for folder, dirs, files in os.walk(top):
            found += [Path(folder) / name for name in files]
            found += [Path(folder) / name for name in dirs if (Path(folder) / name).is_symlink()]
    return [f for f in found if not ignored(str(f.relative_to(REPO)), patterns)]


def build_context(dest: Path) -> Path:
    """The files the Dockerfile copies, from what its .dockerignore lets into the context, laid
    out in ``dest`` as in the image's working directory."""
    steps = parse_dockerfile(DOCKERFILE.read_text())
    patterns = ignore_patterns()
    for source, target in copies(steps):
        assert target in ("./", f"./{source}"), f"COPY {source} {target}: a layout this test reads"
        for f in context_files(source, patterns):
            out = dest / f.relative_to(REPO)
            out.parent.mkdir(parents=True, exist_ok=True)
            if f.is_symlink():
                out.symlink_to(os.readlink(f))
            else:
                shutil.copy2(f, out)
    return dest
