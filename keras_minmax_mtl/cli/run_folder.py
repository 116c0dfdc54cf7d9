"""The output folder of `kmm train`: locked while a run uses it, replaced whole or not at all.

A run never writes into its folder `DIR`. It writes the whole new run into a
fresh sibling `.DIR.new-<random>`, and only when every file is written and
checked does it publish it (`RunFolder.publish`):

1. on Linux, one ``renameat2(RENAME_EXCHANGE)`` swaps `DIR` and the new
   folder atomically (elsewhere: `DIR` is renamed to `.DIR.old-<pid>`, then the
   new folder to `DIR`);
2. the previous run (now under the sibling name) is removed.

So a run killed at any point leaves either the previous run or the new one
complete in `DIR`, never a mix, and no stale file of an earlier run (a
`model_stripped.keras` beside a new dense model) survives a new run. The one
gap, a kill between the two renames of the fallback, leaves no `DIR` and the
previous run complete in `.DIR.old-<pid>`: the next run on `DIR` puts it back
(and says so) before it starts. Leftover `.DIR.new-*` / `.DIR.old-*` folders
of killed runs are removed by the next run on `DIR`.

The lock is an exclusive `fcntl.flock` on the sibling file `.DIR.lock`
(not a file inside `DIR`, which the swap replaces), holding the pid of its
owner; a second run on `DIR` is refused at once, naming that pid. The lock
file is removed when the run ends.

Example:

>>> with RunFolder("runs/a", overwrite=False) as folder:
...     (folder.work / "metrics.json").write_text("{}")
...     folder.publish()
"""
import ctypes
import errno
import fcntl
import fnmatch
import os
import pathlib
import shutil
import tempfile

__all__ = ["FolderLock", "RunFolder", "RunFolderError", "RUN_FILES", "check_destination", "recover"]

#: The names `kmm train` (and `kmm export` into a run folder) write; `--overwrite`
#: replaces a folder only if it holds nothing else.
RUN_FILES = ("model.keras", "metrics.json", "task_weights.png", "model_stripped.keras",
             "sparsity.json", "task_aware.json", "task_aware.png", "model_*.tflite",
             "model_*.json", "model_*.h", "model_*.cc", "model_dense.keras", "compress.json",
             "compress.png")


class RunFolderError(Exception):
    """A run folder that cannot be used (exists, is a file, is busy...); the message is one line."""


def _is_run_file(name):
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_FILES)


def _nearest_existing(path):
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return path.anchor


def check_destination(path, overwrite):
    """Raises `RunFolderError` unless a run may be written to `path` (writes nothing).

    A run may go to a folder that does not exist yet, an empty folder, or,
    with `overwrite`, a folder that holds only the files of an earlier run
    (`RUN_FILES`). Refused: a path that is a file or lies under one, a folder
    whose nearest existing parent is not writable, an earlier run without
    `overwrite`, and a folder holding files `kmm` did not write (which
    replacing the folder would delete).
    """
    path = pathlib.Path(path)
    existing = pathlib.Path(_nearest_existing(path.absolute()))
    if existing != path.absolute() or not existing.is_dir():
        if not existing.is_dir():
            what = "is a file" if existing == path.absolute() else f"lies under the file {existing}"
            raise RunFolderError(f"{path} {what}; give a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise RunFolderError(f"cannot create {path}: {existing} is not writable")
        return
    entries = sorted(os.listdir(path))
    if not entries:
        if not os.access(path.absolute().parent, os.W_OK | os.X_OK):
            raise RunFolderError(f"cannot replace {path}: {path.absolute().parent} is not writable")
        return
    if not overwrite:
        raise RunFolderError(f"{path} already holds a run ({', '.join(entries[:3])}"
                             f"{', ...' if len(entries) > 3 else ''}); add --overwrite to "
                             f"replace it, or choose another --out")
    foreign = [name for name in entries if not _is_run_file(name)]
    if foreign:
        raise RunFolderError(f"{path} holds files that kmm train did not write ({foreign[0]}"
                             f"{', ...' if len(foreign) > 1 else ''}); --overwrite would delete "
                             f"them: choose another --out")
    if not os.access(path.absolute().parent, os.W_OK | os.X_OK):
        raise RunFolderError(f"cannot replace {path}: {path.absolute().parent} is not writable")


def _siblings(path, kind):
    prefix = f".{path.name}.{kind}-"
    return sorted(path.parent / name for name in os.listdir(path.parent) if name.startswith(prefix))


def recover(path):
    """Repairs what killed runs left beside `path` (call with the lock held); returns what it did.

    If `path` is missing and a previous run waits in `.NAME.old-*` (a kill
    between the two renames of a publish), it is renamed back to `path`. Then
    every `.NAME.new-*` and `.NAME.old-*` left beside it is removed.
    """
    path = pathlib.Path(path)
    notes = []
    old = _siblings(path, "old")
    if old and not os.path.lexists(path):
        newest = max(old, key=lambda p: p.stat().st_mtime)
        os.rename(newest, path)
        notes.append(f"restored the previous run {path} from {newest.name} (a run was killed "
                     f"while replacing it)")
    for leftover in [*_siblings(path, "new"), *_siblings(path, "old")]:
        shutil.rmtree(leftover, ignore_errors=True)
        notes.append(f"removed {leftover.name}, left by a killed run")
    return notes


def _exchange(a, b):
    """Swaps two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def _fsync_tree(folder):
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderLock:
    """The exclusive lock of a run folder `DIR`, shared by every `kmm` command that uses it.

    An `fcntl.flock` on the sibling file `.DIR.lock` (not a file inside `DIR`,
    which a run's swap replaces) holding ``"<pid> <command>"``; a second holder
    is refused at once with `RunFolderError` naming the first one's command and
    pid. `kmm train` and `kmm compress` hold it while they run (`RunFolder`),
    `kmm export` while it reads a run folder and writes into one, so an export
    never reads a run that is being replaced. The file is removed on release.

    Args:
        path: the run folder `DIR` (it need not exist; its parent must).
        command: the holder's name in the other commands' message (`"train"`).
        shown: how `path` is named in the message (default: `path`).
        advice: what the message tells the refused command to do.

    Example:

    >>> with FolderLock("runs/a", "export"):
    ...     pass
    """

    def __init__(self, path, command, shown=None, advice="wait for it to end or choose another --out"):
        self.path = pathlib.Path(path).absolute()
        self.command = command
        self.advice = advice
        self.shown = pathlib.Path(path) if shown is None else shown
        self.lock_path = self.path.parent / f".{self.path.name}.lock"
        self._fd = None

    def acquire(self):
        """Takes the lock (`RunFolderError` if another command holds it)."""
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 64).decode(errors="replace").split()
                os.close(fd)
                pid = owner[0] if owner else "unknown"
                command = owner[1] if len(owner) > 1 else "train"
                raise RunFolderError(f"{self.shown} is in use by another kmm {command} (pid "
                                     f"{pid}); {self.advice}") from None
            # The owner before us may have removed the file after we opened it: retry on the new one.
            try:
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {self.command}\n".encode())
                self._fd = fd
                return
            os.close(fd)

    def release(self):
        """Lets the lock go (removing its file first); a no-op when not held."""
        if self._fd is not None:
            try:
                os.unlink(self.lock_path)  # still ours: removed before the lock is let go
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


class RunFolder:
    """A locked run folder: `work` to write the new run into, `publish()` to swap it in.

    Args:
        path: the run folder `DIR` (`--out`).
        overwrite: whether an earlier run in `path` may be replaced.
        command: the command named to another one refused by the lock.

    On entry: creates the parent folders, takes the lock (`FolderLock`;
    `RunFolderError` naming the other command's pid if it is held), repairs
    what killed runs left (`recover`, its notes in `notes`), checks `path`
    again under the lock (`check_destination`) and creates `work`. On exit
    without `publish()` (an error, a failed check), `work` is removed and
    `path` is left as it was.
    """

    def __init__(self, path, overwrite=False, command="train"):
        self.path = pathlib.Path(path).absolute()
        if self.path.is_symlink():
            self.path = self.path.resolve()
        self.shown = pathlib.Path(path)
        self.overwrite = overwrite
        self.lock = FolderLock(self.path, command, self.shown)
        self.work = None
        self.notes = []
        self.published = False

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except OSError as error:
            raise RunFolderError(f"cannot create {self.shown}: {error.strerror} "
                                 f"({error.filename})") from error
        try:
            self.notes = recover(self.path)
            try:
                check_destination(self.path, self.overwrite)
            except RunFolderError as error:
                raise RunFolderError("; ".join([str(error), *self.notes])) from None
            self.work = pathlib.Path(tempfile.mkdtemp(prefix=f".{self.path.name}.new-",
                                                      dir=self.path.parent))
        except BaseException:
            self.lock.release()
            raise
        return self

    def publish(self):
        """Swaps the finished `work` in as `path`; the previous run (if any) is then removed."""
        _fsync_tree(self.work)
        if os.path.lexists(self.path):
            if not _exchange(self.work, self.path):
                old = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
                os.rename(self.path, old)
                os.rename(self.work, self.path)
                self.work = old
            _fsync_dir(self.path.parent)
            shutil.rmtree(self.work)  # the previous run, now under a sibling name
        else:
            os.rename(self.work, self.path)
            _fsync_dir(self.path.parent)
        self.work = None
        self.published = True

    def __exit__(self, *exc):
        try:
            if self.work is not None:
                shutil.rmtree(self.work, ignore_errors=True)
                self.work = None
        finally:
            self.lock.release()
        return False
