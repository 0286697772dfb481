"""Safe file access in folders a job's owner can write, for a service that may run as root.

Why: with ``LocalExecutor.run_as_owner`` a job runs as its owner, and the job's files directory
(its results at least) is the owner's. The owner can put anything where the service expects its
own file, at any moment, from the job or from their notebook server: a symbolic link to
``/etc/shadow``, a hard link, a FIFO, a directory. A path handed to ``open``, ``rmtree`` or
``chown`` is resolved with root's rights, so the link would be followed as root: any file on
the host read back through the API, or overwritten when the job is started again.

So the service touches these folders only through descriptors, never by path:

- a directory is opened with ``O_DIRECTORY | O_NOFOLLOW``, relative to the descriptor of the one
  above it, and its ownership is checked with ``fstat`` on the descriptor;
- a file is opened relative to its directory's descriptor with ``O_NOFOLLOW`` (and ``O_NONBLOCK``,
  so a FIFO cannot hang the service), then checked with ``fstat``: a regular file owned by the
  account the job runs as, which also refuses a hard link to anyone else's file;
- a new file is created under a random name with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and renamed
  over the old name within the directory's descriptor: a rename replaces a link, never follows it;
- a tree is removed by walking it by descriptor, each directory opened as above, everything else
  unlinked (which never follows a link).

A check of a path followed by a use of the same path (``is_symlink()``, then ``open``) is no
protection: the owner swaps the path in between. Anything refused raises :class:`UntrustedFile`
and is left as it is. Standard library only: :mod:`.payload`, which the runner imports first,
writes through here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""How a directory in a job's folders is opened: never through a link, never a file."""
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
"""How a file in a job's folders is opened: never through a link, never waiting on a FIFO."""
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""How the service creates a file there: a new inode of its own, or nothing."""
REFUSED_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EMLINK})
"""What ``open`` answers for a link (``O_NOFOLLOW``) or a file where a directory should be."""


class UntrustedFile(Exception):
    """A path in a job's folders that is not what the service wrote or expects there: a link,
    another kind of file, or a file of another account. It is neither followed nor touched."""


def kind(mode: int) -> str:
    """A file type in words, for the messages of :class:`UntrustedFile`."""
    for test, words in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return words
    return "a device or other special file"


def _refusal(name: str | Path, dir_fd: int | None, error: OSError) -> UntrustedFile:
    """Why ``open`` refused ``name``: a link (ELOOP, or ENOTDIR with ``O_DIRECTORY``) or a file.

    The ``lstat`` here only words the message; the refusal came from ``open`` itself.
    """
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = stat.S_IFLNK if error.errno != errno.ENOTDIR else 0
    if stat.S_ISLNK(mode):
        return UntrustedFile(
            f"{name} is a symbolic link; the service does not follow links in a job's folders"
        )
    if mode:
        return UntrustedFile(f"{name} is {kind(mode)}, not a directory")
    return UntrustedFile(f"{name} is not a directory")


def open_directory(
    name: str | Path, *, dir_fd: int | None = None, owners: Collection[int] | None = None
) -> int:
    """A descriptor of the directory ``name`` (relative to ``dir_fd`` if given), not through a link.

    With ``owners``, the directory must belong to one of these uids. The caller closes it.
    """
    try:
        fd = os.open(name, DIRECTORY_FLAGS, dir_fd=dir_fd)
    except OSError as error:
        if error.errno in REFUSED_ERRNOS:
            raise _refusal(name, dir_fd, error) from None
        raise
    try:
        info = os.fstat(fd)
        if owners is not None and info.st_uid not in owners:
            raise UntrustedFile(
                f"{name} belongs to uid {info.st_uid}, not to the job's account or the service"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def opened_directory(
    name: str | Path, *, dir_fd: int | None = None, owners: Collection[int] | None = None
) -> Iterator[int]:
    """:func:`open_directory` as a context: the descriptor is closed on leaving."""
    fd = open_directory(name, dir_fd=dir_fd, owners=owners)
    try:
        yield fd
    finally:
        os.close(fd)


def read_file(
    directory: Path,
    relative: Sequence[str],
    *,
    owners: Collection[int],
    directory_owners: Collection[int],
) -> bytes:
    """The bytes of ``directory/relative[0]/.../relative[-1]``, read without following any link.

    Each directory on the way must belong to one of ``directory_owners``, the file must be a
    regular file of one of ``owners``. FileNotFoundError when a part is missing; UntrustedFile
    when a part is a link, the wrong kind of file or someone else's.
    """
    *folders, name = relative
    with contextlib.ExitStack() as stack:
        fd = stack.enter_context(opened_directory(directory, owners=directory_owners))
        for folder in folders:
            fd = stack.enter_context(opened_directory(folder, dir_fd=fd, owners=directory_owners))
        try:
            file_fd = os.open(name, READ_FLAGS, dir_fd=fd)
        except OSError as error:
            if error.errno in REFUSED_ERRNOS:
                raise _refusal(name, fd, error) from None
            raise
        try:
            info = os.fstat(file_fd)
            if not stat.S_ISREG(info.st_mode):
                raise UntrustedFile(f"{name} is {kind(info.st_mode)}, not a regular file")
            if info.st_uid not in owners:
                raise UntrustedFile(
                    f"{name} belongs to uid {info.st_uid}, not to the account the job runs as"
                    " (a link to another account's file?)"
                )
            os.set_blocking(file_fd, True)
        except BaseException:
            os.close(file_fd)
            raise
        with os.fdopen(file_fd, "rb") as file:
            return file.read()


def replace_file(dir_fd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    """Make ``name`` in the directory ``dir_fd`` a new regular file of the service's holding ``data``.

    Whatever was at ``name`` (a link, a file) is replaced, never written through; a reader sees the
    old file or the whole new one. A directory at ``name`` is not replaced (IsADirectoryError).
    The mode lets the job read the file without being given it: who may reach it is up to the
    directory (a job's files directory is ``0700``, the service's or its owner's).
    """
    partial = f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(partial, CREATE_FLAGS, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, mode)  # whatever the service's umask: the job must be able to read it
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial, dir_fd=dir_fd)
        raise


def remove(dir_fd: int, name: str) -> None:
    """Remove ``name`` from the directory ``dir_fd``, whatever it is: a link goes, not its target;
    a directory goes with everything in it, walked by descriptor. Nothing there is fine."""
    try:
        fd = os.open(name, DIRECTORY_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as error:
        if error.errno not in REFUSED_ERRNOS:
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)  # a link or a file: unlink never follows
        return
    try:
        _empty(fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _empty(top: int) -> None:
    """Unlink everything in the directory ``top``, depth first, without recursion.

    Not ``shutil.rmtree(dir_fd=...)``: it opens each subdirectory with a plain ``O_RDONLY`` after
    an ``lstat``, and a FIFO swapped in between would block that open (and the service) for good.
    Here every directory is opened with ``O_DIRECTORY | O_NOFOLLOW``, which opens neither a link
    nor a FIFO; anything that is not a directory is unlinked.
    """
    stack: list[tuple[int, list[str], str | None]] = [(top, _names(top), None)]
    try:
        while stack:
            current, names, _ = stack[-1]
            if not names:
                _, _, name = stack.pop()
                if name is not None:
                    os.close(current)
                    os.rmdir(name, dir_fd=stack[-1][0])
                continue
            entry = names.pop()
            try:
                sub = os.open(entry, DIRECTORY_FLAGS, dir_fd=current)
            except FileNotFoundError:
                continue
            except OSError as error:
                if error.errno not in REFUSED_ERRNOS:
                    raise
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry, dir_fd=current)
                continue
            try:
                stack.append((sub, _names(sub), entry))
            except BaseException:
                os.close(sub)
                raise
    finally:
        for current, _, name in stack:
            if name is not None:
                os.close(current)


def _names(fd: int) -> list[str]:
    with os.scandir(fd) as entries:
        return [entry.name for entry in entries]


def give_tree(directory: Path, uid: int, gid: int) -> None:
    """Give ``uid:gid`` what the service made in ``directory`` (the job's files), by descriptor.

    The directory must be the service's or already ``uid``'s. What changes hands: the directory
    itself, the service's directories in it, and the service's regular files, but only those in a
    directory the owner never could write (one of the service's, mode without group or other
    write). A regular file of root's in a directory the owner can write may have been moved there
    by the owner from anywhere it could rename it (its own home, say), so it keeps its owner; this
    is why the files the service writes are readable without being given (``replace_file``'s
    mode). Links, hard-linked files, special files and anything already someone else's are left
    as they are, and directories that are not the service's are not walked into. Each directory
    is given after what is in it, so the owner cannot add to it while it is being walked.
    """
    service = os.geteuid()
    with opened_directory(directory, owners={service, uid}) as fd:
        _give(fd, uid, gid, service)


def _sealed(info: os.stat_result, service: int) -> bool:
    """Whether a directory is one no other account ever could write: the service's, not shared."""
    return info.st_uid == service and not info.st_mode & 0o022


def _give(fd: int, uid: int, gid: int, service: int) -> None:
    info = os.fstat(fd)
    sealed = _sealed(info, service)
    for name in _names(fd):
        try:
            entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if entry.st_uid != service:
            continue  # the owner's own, or someone else's: nothing to give
        if stat.S_ISDIR(entry.st_mode):
            # A directory cannot be moved to another parent by someone who cannot write it, so a
            # directory of the service's here is one the service made.
            try:
                sub = open_directory(name, dir_fd=fd, owners={service})
            except (FileNotFoundError, UntrustedFile):
                continue  # swapped since it was seen
            try:
                if _sealed(os.fstat(sub), service):
                    _give(sub, uid, gid, service)
            finally:
                os.close(sub)
        elif stat.S_ISREG(entry.st_mode) and sealed:
            _give_file(fd, name, uid, gid, service)
    if info.st_uid == service:
        os.fchown(fd, uid, gid)


def _give_file(dir_fd: int, name: str, uid: int, gid: int, service: int) -> None:
    """Give one regular file of the service's, checked on its descriptor (not on a name that may
    have changed since): a file with more than one name, which may be anyone's, keeps its owner."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError as error:
        if error.errno in REFUSED_ERRNOS or error.errno == errno.ENOENT:
            return
        raise
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_uid == service and info.st_nlink == 1:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
