"""What a run records about where and how it was started: git, CI, host.

Everything here is read from files and environment variables; nothing starts a
subprocess (``git`` would cost tens of milliseconds at every session start).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
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
    remote = _origin_url(git_dir)
    if not head.startswith("ref:"):
        return GitInfo(branch=None, commit=head or None, remote=remote)
    ref = head.removeprefix("ref:").strip()
    branch = ref.removeprefix("refs/heads/")
    return GitInfo(branch=branch, commit=_resolve_ref(git_dir, ref), remote=remote)


def _origin_url(git_dir: Path) -> str | None:
    """The ``origin`` remote's URL from the repository's config, credentials redacted."""
    common = git_dir
    commondir_file = git_dir / "commondir"
    try:
        if commondir_file.is_file():
            common = (git_dir / commondir_file.read_text(encoding="utf-8").strip()).resolve()
        config = (common / "config").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    section = ""
    for raw in config.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.replace(" ", "").replace('"', "").lower()
            continue
        key, equals, value = line.partition("=")
        if equals and section == "[remoteorigin]" and key.strip().lower() == "url":
            from pytest_rerun_runs.store import clean_text, redact_url

            return clean_text(redact_url(value.strip()))[:1024] or None
    return None


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


#: Beyond this many tracked files (or files without git) the tree is not
#: fingerprinted: the cost would show at every session start.
FINGERPRINT_FILE_LIMIT = 20_000

#: A changed tracked file larger than this is not read at session start: it
#: counts by its size and modification time, as an untracked test file does.
FINGERPRINT_READ_LIMIT = 1 << 20
#: Without git, the files whose change can change what tests do: code and configuration
#: (not the data files tests write as they run).
_SOURCE_SUFFIXES = frozenset(
    {".py", ".pyi", ".pyx", ".pxd", ".pyd", ".so", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs"}
    | {".toml", ".cfg", ".ini"}
)
_SKIPPED_DIRS = frozenset(
    {"__pycache__", "node_modules", "build", "dist", "site-packages", ".git", ".hg", ".svn"}
)


def tree_fingerprint(
    start: Path, files: Iterable[str] = (), git: GitInfo | None = None
) -> str | None:
    """A cheap fingerprint of the working tree, equal exactly when nothing changed.

    In a git repository: the commit plus the content of every tracked file that
    differs from the index (found as ``git status`` finds it; a large one by its
    size and mtime), so a clean checkout
    of one commit gives the same fingerprint on every machine; ``files`` (the
    run's test files, relative to ``start``) that git does not track count by
    their size and modification time, so editing a new test file is a change.
    Without git: the paths, sizes and modification times of the code and
    configuration files under ``start``. ``None`` when it cannot be told cheaply.
    ``git`` is :func:`git_info` of ``start``, where the caller has it already.
    """
    import hashlib

    digest = hashlib.sha256()
    git_dir = find_git_dir(start)
    if git_dir is not None:
        info = git_info(start) if git is None else git
        worktree = git_dir.parent if git_dir.name == ".git" else None
        index = _changed_tracked_files(git_dir, worktree)
        if info.commit is None or index is None or worktree is None:
            return None
        changed, tracked = index
        # Strings, not Path objects: this runs once per test file of every session.
        # A file that is no symlink resolves to its resolved directory plus its
        # name, so each directory is resolved once (and the file's lstat is its stat).
        try:
            root = os.path.join(os.path.realpath(worktree), "")
        except OSError:
            root = os.path.join(os.fspath(worktree), "")
        base = os.fspath(start)
        directories: dict[str, str] = {}
        untracked: list[tuple[str, os.stat_result | None]] = []
        for name in sorted(set(files)):
            test_file = os.path.join(base, name)
            try:
                own = os.lstat(test_file)
                known: os.stat_result | None = own
                if stat.S_ISLNK(own.st_mode):
                    known, resolved = None, os.path.realpath(test_file)
                else:
                    directory, file_name = os.path.split(test_file)
                    parent = directories.get(directory)
                    if parent is None:
                        parent = directories[directory] = os.path.realpath(directory)
                    resolved = os.path.join(parent, file_name)
            except OSError:
                continue
            if not resolved.startswith(root):
                continue
            relative = resolved[len(root) :]
            if os.sep != "/":
                relative = relative.replace(os.sep, "/")
            if os.fsencode(relative) not in tracked:
                untracked.append((test_file, known))
        digest.update(info.commit.encode())
        for test_file, lstatus in untracked:  # local by nature: size and time tell a change
            try:
                status = lstatus if lstatus is not None else os.stat(test_file)
            except OSError:
                continue
            digest.update(
                f"\0{test_file}\0{status.st_size}\0{status.st_mtime_ns}".encode(errors="replace")
            )
        for path, content_digest in changed:
            digest.update(b"\0" + os.fsencode(path) + b"\0" + content_digest)
        return f"git:{digest.hexdigest()[:32]}"
    count = 0
    for directory, names, entries in os.walk(start):
        names[:] = sorted(
            name
            for name in names
            if name not in _SKIPPED_DIRS
            and not name.startswith(".")
            and not name.endswith(".egg-info")
            and not os.path.exists(os.path.join(directory, name, "pyvenv.cfg"))
        )
        for name in sorted(entries):
            if os.path.splitext(name)[1] not in _SOURCE_SUFFIXES:
                continue
            count += 1
            if count > FINGERPRINT_FILE_LIMIT:
                return None
            file = os.path.join(directory, name)
            try:
                status = os.lstat(file)
            except OSError:
                continue
            digest.update(
                f"{file}\0{status.st_size}\0{status.st_mtime_ns}\n".encode(errors="replace")
            )
    return f"files:{digest.hexdigest()[:32]}"


def _changed_tracked_files(
    git_dir: Path, worktree: Path | None
) -> tuple[list[tuple[Path, bytes]], set[bytes]] | None:
    """Tracked files whose content differs from the index, with the SHA-256 of that
    content (``b"deleted"`` for a file that is gone), and the names of all tracked
    files; ``None`` when the index cannot be read cheaply (absent, unknown
    version, too large, a linked worktree whose checkout is elsewhere, a
    repository of SHA-256 object ids).

    As ``git status`` does, a file is read only when its size or mtime differs
    from the index, and then compared by its blob id: a file touched but not
    changed is no change. A file over :data:`FINGERPRINT_READ_LIMIT` is not read:
    its size and mtime stand for its content (touching it is a change).
    """
    import hashlib
    import struct

    if worktree is None:
        return None
    try:
        config = (git_dir / "config").read_text(errors="replace")
    except OSError:
        config = ""
    if re.search(r"^\s*objectformat\s*=\s*sha256\s*$", config, re.IGNORECASE | re.MULTILINE):
        return None  # index entries hold 32-byte ids: not read here
    try:
        data = (git_dir / "index").read_bytes()
    except OSError:
        return None
    if len(data) < 12 or data[:4] != b"DIRC":
        return None
    version, count = struct.unpack(">II", data[4:12])
    if version not in (2, 3, 4) or count > FINGERPRINT_FILE_LIMIT:
        return None
    changed: list[tuple[Path, bytes]] = []
    base = os.fspath(worktree)
    tracked: set[bytes] = set()
    offset, previous = 12, b""
    try:
        for _ in range(count):
            start = offset
            (_, _, mtime_s, mtime_ns, _, _, mode, _, _, size) = struct.unpack(
                ">10I", data[offset : offset + 40]
            )
            flags = struct.unpack(">H", data[offset + 60 : offset + 62])[0]
            offset += 62
            if version >= 3 and flags & 0x4000:
                offset += 2
            if version == 4:
                byte = data[offset]
                offset += 1
                strip = byte & 0x7F
                while byte & 0x80:  # git's offset varint
                    byte = data[offset]
                    offset += 1
                    strip = ((strip + 1) << 7) | (byte & 0x7F)
                end = data.index(b"\0", offset)
                name = previous[: len(previous) - strip] + data[offset:end]
                offset = end + 1
            else:
                end = data.index(b"\0", offset)
                name = data[offset:end]
                offset = start + ((end - start) // 8 + 1) * 8
            previous = name
            tracked.add(name)
            if mode & 0o170000 == 0o160000:  # a submodule
                continue
            # A string path: a Path object per tracked file would cost more than its lstat.
            path = os.path.join(base, os.fsdecode(name))
            try:
                status = os.lstat(path)
            except OSError:
                changed.append((Path(path), b"deleted"))
                continue
            if (
                status.st_size & 0xFFFFFFFF == size
                and int(status.st_mtime) & 0xFFFFFFFF == mtime_s
                and status.st_mtime_ns % 1_000_000_000 == mtime_ns
            ):
                continue
            if status.st_size > FINGERPRINT_READ_LIMIT and not stat.S_ISLNK(status.st_mode):
                stamp = b"stat %d %d" % (status.st_size, status.st_mtime_ns)
                changed.append((Path(path), stamp))
                continue
            try:
                if stat.S_ISLNK(status.st_mode):  # git holds a link's target as its blob
                    content = os.fsencode(os.readlink(path))
                else:
                    content = Path(path).read_bytes()
            except OSError:
                changed.append((Path(path), b"deleted"))
                continue
            blob_id = hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False)
            if blob_id.digest() != data[start + 40 : start + 60]:
                changed.append((Path(path), hashlib.sha256(content).digest()))
    except (struct.error, ValueError, IndexError):
        return None
    return changed, tracked
