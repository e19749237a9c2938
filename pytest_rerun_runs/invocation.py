"""What a run records about where and how it was started: git, CI, host.

Everything here is read from files and environment variables; nothing starts a
subprocess (``git`` would cost tens of milliseconds at every session start).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pytest_rerun_runs.store import GitInfo

# provider: (variable that marks it, build id, job, branch, commit)
CI_PROVIDERS: dict[str, tuple[str, str, str, tuple[str, ...], str]] = {
    "github_actions": (
        "GITHUB_ACTIONS",
        "GITHUB_RUN_ID",
        "GITHUB_JOB",
        ("GITHUB_HEAD_REF", "GITHUB_REF_NAME"),
        "GITHUB_SHA",
    ),
    "gitlab_ci": (
        "GITLAB_CI",
        "CI_PIPELINE_ID",
        "CI_JOB_NAME",
        ("CI_COMMIT_REF_NAME",),
        "CI_COMMIT_SHA",
    ),
    "circleci": ("CIRCLECI", "CIRCLE_BUILD_NUM", "CIRCLE_JOB", ("CIRCLE_BRANCH",), "CIRCLE_SHA1"),
    "jenkins": (
        "JENKINS_URL",
        "BUILD_NUMBER",
        "JOB_NAME",
        ("BRANCH_NAME", "GIT_BRANCH"),
        "GIT_COMMIT",
    ),
    "buildkite": (
        "BUILDKITE",
        "BUILDKITE_BUILD_ID",
        "BUILDKITE_LABEL",
        ("BUILDKITE_BRANCH",),
        "BUILDKITE_COMMIT",
    ),
    "azure_pipelines": (
        "TF_BUILD",
        "BUILD_BUILDID",
        "SYSTEM_JOBDISPLAYNAME",
        ("BUILD_SOURCEBRANCHNAME",),
        "BUILD_SOURCEVERSION",
    ),
}


def ci_info(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The CI provider and its build id, job, branch and commit, or ``{}``."""
    for provider, (marker, build_id, job, branches, commit) in CI_PROVIDERS.items():
        if not environ.get(marker):
            continue
        info = {"provider": provider}
        branch = next((environ[name] for name in branches if environ.get(name)), None)
        for key, value in (
            ("build_id", environ.get(build_id)),
            ("job", environ.get(job)),
            ("branch", branch),
            ("commit", environ.get(commit)),
        ):
            if value:
                info[key] = value
        return info
    return {}


def find_git_dir(start: Path) -> Path | None:
    """The git directory of the repository holding ``start``, following ``.git`` files
    (worktrees and submodules)."""
    for directory in (start, *start.parents):
        dotgit = directory / ".git"
        if dotgit.is_dir():
            return dotgit
        if dotgit.is_file():
            try:
                content = dotgit.read_text(encoding="utf-8").strip()
            except OSError:
                return None
            if content.startswith("gitdir:"):
                target = Path(content.removeprefix("gitdir:").strip())
                return target if target.is_absolute() else (directory / target).resolve()
            return None
    return None


def git_info(start: Path) -> GitInfo:
    """Branch and commit of the repository holding ``start``, read from its files."""
    git_dir = find_git_dir(start)
    if git_dir is None:
        return GitInfo()
    try:
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return GitInfo()
    if not head.startswith("ref:"):
        return GitInfo(branch=None, commit=head or None)
    ref = head.removeprefix("ref:").strip()
    branch = ref.removeprefix("refs/heads/")
    return GitInfo(branch=branch, commit=_resolve_ref(git_dir, ref))


def _resolve_ref(git_dir: Path, ref: str) -> str | None:
    # A linked worktree keeps HEAD in its own directory but refs in the common one.
    common = git_dir
    commondir_file = git_dir / "commondir"
    if commondir_file.is_file():
        try:
            common = (git_dir / commondir_file.read_text(encoding="utf-8").strip()).resolve()
        except OSError:
            pass
    for directory in dict.fromkeys((git_dir, common)):
        try:
            return (directory / ref).read_text(encoding="utf-8").strip() or None
        except OSError:
            continue
    try:
        packed = (common / "packed-refs").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in packed.splitlines():
        sha, _, name = line.partition(" ")
        if name == ref:
            return sha
    return None
