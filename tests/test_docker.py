"""The GPU image's files, checked without a Docker engine (none runs here): what the build context holds, that
the lock matches pyproject.toml and the base image, and what the entry point does. hadolint and shellcheck run
in CI (`make lint`)."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

from tests.conftest import ROOT

DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()
LOCK = (ROOT / "docker" / "requirements.lock").read_text()


def ignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """.dockerignore as Docker reads it: (exclude?, pattern); the last pattern that matches a path, or any folder
    above it, decides. `*` and `?` stay within one path segment, `**` spans any number."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        glob = line.removeprefix("!").strip("/")
        regex = "".join(".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
                        for part in re.split(r"(\*\*|\*|\?)", glob))
        rules.append((not include, re.compile(regex.replace(".*/", "(.*/)?") + "$")))
    return rules


def in_context(path: str, rules=None) -> bool:
    rules = rules or ignore_patterns()
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for exclude, pattern in rules:
        if any(pattern.match(p) for p in prefixes):
            excluded = exclude
    return not excluded


def copy_sources() -> list[str]:
    """The build-context paths the Dockerfile's COPY lines read (not those copied from another stage)."""
    sources = []
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += [arg for arg in line.split()[1:-1] if not arg.startswith("--")]
    return sources


def test_build_context_holds_the_code_and_lock_and_nothing_else():
    rules = ignore_patterns()
    for source in copy_sources():  # a COPY of an ignored path fails the build: "not found"
        assert in_context(source, rules), f"docker/Dockerfile copies {source}, which .dockerignore leaves out"
    for kept_out in ["data/demo/corpus/songs-poems.txt", "models/adapted/model.safetensors", ".venv/bin/python",
                     "artifacts/masked/train-00000.arrow", "reports/report.html", "wandb/offline-run-1/run.wandb",
                     ".git/HEAD", ".dvc/cache/files/md5/ab/cd", ".env", ".netrc", "pipeline/__pycache__/io.pyc",
                     "tests/test_docker.py", "dvc.lock", "params.yaml"]:
        assert not in_context(kept_out, rules), kept_out
    # What this checkout would send: walk it, going into an ignored folder only where a "!" line reaches in.
    reach = [line.removeprefix("!").strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.startswith("!")]
    sent = []
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if here == "." else here + "/"
        dirs[:] = [d for d in dirs if in_context(prefix + d, rules) or any(r.startswith(prefix + d + "/") for r in reach)]
        sent += [prefix + f for f in files if in_context(prefix + f, rules)]
    assert sent and all(s.split("/")[0] in ("pipeline", "stages", "docker", "pyproject.toml", "README.md")
                        for s in sent), sent
    assert sum((ROOT / s).stat().st_size for s in sent) < 2_000_000


def test_image_is_pinned_non_root_and_holds_no_key():
    base = re.search(r"^ARG BASE=(\S+)$", DOCKERFILE, re.M).group(1)
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime(@sha256:[0-9a-f]{64})?", base)
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0", "0:0")
    assert re.search(r"^WORKDIR /repo$", DOCKERFILE, re.M)
    assert not re.search(r"^(ENV|ARG)\b.*WANDB_API_KEY", DOCKERFILE, re.M | re.I)  # only ever -e at run time
    assert re.search(r'^CMD \["dvc", "repro"\]$', DOCKERFILE, re.M)


def test_lock_pins_every_dependency_for_this_base_image():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    base = re.search(r"^ARG BASE=(\S+)$", DOCKERFILE, re.M).group(1)
    assert base in LOCK.splitlines()[1], "docker/requirements.lock was made for another base image: docker/lock.sh"
    pinned = {re.sub(r"[-_.]+", "-", m).lower() for m in re.findall(r"^([A-Za-z0-9_.-]+)==", LOCK, re.M)}
    wanted = project["project"]["dependencies"] + project["build-system"]["requires"]
    names = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", dep).group()).lower() for dep in wanted}
    assert names - pinned == {"torch"}, f"not in the lock (rerun docker/lock.sh): {sorted(names - pinned - {'torch'})}"
    assert not {"torch", "triton"} & pinned and not any(p.startswith("nvidia-") for p in pinned)  # the base has them
    entries = re.split(r"\n(?=[A-Za-z])", LOCK.split("\n", 2)[2].strip())
    assert all("--hash=sha256:" in e for e in entries), "every entry carries hashes (pip --require-hashes)"


def entrypoint(cwd: Path, *command: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh"), *command], cwd=cwd,
                          env={**clean, **env}, capture_output=True, text=True)


def test_entrypoint_wants_the_repository_and_a_key_for_online_wandb(tmp_path):
    proc = entrypoint(tmp_path, "dvc", "repro")
    assert proc.returncode == 2 and "no dvc.yaml" in proc.stderr and "-v" in proc.stderr
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    proc = entrypoint(tmp_path, "echo", "ran", WANDB_MODE="online")
    assert proc.returncode == 2 and "WANDB_API_KEY" in proc.stderr
    proc = entrypoint(tmp_path, "sh", "-c", 'echo "ran in $PWD"', WANDB_MODE="online", WANDB_API_KEY="k")
    assert proc.returncode == 0 and proc.stdout == f"ran in {tmp_path}\n"
