"""Output files: checked before any work, written atomically (a temporary file beside the target, then a rename).

An interrupted write (an error, Ctrl-C, a full disk) never leaves a partial file at the final path, and files get
the usual permissions (``0666`` minus the umask, e.g. ``0644``), not the ``0600`` of ``tempfile.mkstemp``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import DistillDiftError, InvalidInputError, OutputError

EXPORT_FORMATS = {"onnx": (".onnx",)}  # export_onnx & co: format -> file suffixes (the CLI's --format choices)
QUANTIZE_CHOICES: tuple[str | None, ...] = (None, "int8")  # export_onnx(quantize=...): float32, or int8 matmuls
FEATURE_DTYPE_NAMES = ("float32", "float16", "bfloat16")  # how features files store features (torch dtype names)

__all__ = ["check_output", "check_distinct", "atomic_path", "readable_by_others", "write_failure"]


def check_output(path: str | os.PathLike, suffixes: Iterable[str] | None = None, what: str = "output") -> Path:
    """Check that ``path`` can be written: its folder exists and its extension is one of ``suffixes``.

    Call it before computing what goes into the file, so a typo fails in a second, not after the work.

    Args:
        path: the output file.
        suffixes: accepted extensions, lower case with the dot (e.g. ``(".json", ".csv")``); ``None``: any.
        what: what the file is, for the message (e.g. ``"--json"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InvalidInputError: with what is wrong and how to fix it.

    Example:
        >>> from distilldift.files import check_output
        >>> check_output("tracks.csv", (".json", ".csv")).name
        'tracks.csv'
        >>> check_output("tracks.txt", (".json", ".csv"), "--out")
        Traceback (most recent call last):
        ...
        distilldift.errors.InvalidInputError: --out 'tracks.txt': unsupported file type '.txt'; use one of .json, .csv
    """
    p = Path(path)
    if suffixes is not None:
        allowed = tuple(suffixes)
        if p.suffix.lower() not in allowed:
            kind = f"file type {p.suffix!r}" if p.suffix else "file name without extension"
            raise InvalidInputError(f"{what} {str(p)!r}: unsupported {kind}; use one of {', '.join(allowed)}")
    if p.is_dir():
        raise InvalidInputError(f"{what} {str(p)!r} is a folder; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInputError(f"{what} {str(p)!r}: folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InvalidInputError(f"{what} {str(p)!r}: folder {str(parent)!r} is not writable")
    return p


def _same(a: Path, b: Path) -> bool:
    """The same file or folder: through symlinks, ``..``, another spelling, or a hard link."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _inside(inner: Path, outer: Path) -> bool:
    return outer.is_dir() and inner.resolve().is_relative_to(outer.resolve())


def check_distinct(
    outputs: Iterable[tuple[str, str | os.PathLike | None]], inputs: Iterable[tuple[str, str | os.PathLike | None]]
) -> None:
    """Refuse, before any work, an output that would destroy an input or another output.

    An output may not be an input (the same file or folder, also through a symlink, another spelling or a hard
    link), hold one (an output folder that an input lies in: it may be replaced), or share its path with another
    output. ``outputs`` / ``inputs``: ``(what, path)`` pairs (``None`` paths are skipped).

    Example:
        >>> import tempfile, pathlib
        >>> from distilldift.files import check_distinct
        >>> img = pathlib.Path(tempfile.mkdtemp()) / "b.png"
        >>> _ = img.write_bytes(b"x")
        >>> check_distinct([("--out", img.parent / "m.png")], [("IMAGE2", img)])  # fine: nothing happens
        >>> check_distinct([("--out", img.parent / "." / "b.png")], [("IMAGE2", img)])
        Traceback (most recent call last):
        ...
        distilldift.errors.InvalidInputError: --out '...b.png' is IMAGE2 '...b.png': writing it would destroy it; ...
    """
    outs = [(what, Path(p)) for what, p in outputs if p is not None]
    ins = [(what, Path(p)) for what, p in inputs if p is not None]
    for i, (what, out) in enumerate(outs):
        for name, path in ins:
            if _same(out, path):
                raise InvalidInputError(
                    f"{what} {str(out)!r} is {name} {str(path)!r}: writing it would destroy it; choose another path"
                )
            if _inside(path, out):
                raise InvalidInputError(
                    f"{what} {str(out)!r} holds {name} {str(path)!r}, which writing there could destroy; choose "
                    "another folder"
                )
        for other, path in outs[:i]:
            if _same(out, path):
                raise InvalidInputError(f"{what} and {other} are both {str(out)!r}; give each its own path")


_WRITE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG", "EIO")
    if hasattr(errno, name)
)


def write_failure(error: BaseException) -> str | None:
    """The system's reason when ``error`` is a failed write (an ``OSError``, or a library's wrapped I/O error such as
    safetensors' "... (os error 28)"); ``None`` for anything else.

    Example:
        >>> write_failure(OSError(28, "No space left on device")), write_failure(ValueError("bad"))
        ('No space left on device', None)
        >>> write_failure(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
        'No space left on device'
    """
    if isinstance(error, DistillDiftError):
        return None  # already says what is wrong (e.g. a download that failed)
    if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
        return error.strerror or str(error)
    found = re.search(r"\(os error (\d+)\)", str(error))
    return os.strerror(int(found.group(1))) if found and int(found.group(1)) in _WRITE_ERRNOS else None


def readable_by_others(path: str | os.PathLike) -> None:
    """Give ``path`` the permissions a new file gets (``0666`` minus the umask; folders ``0777`` minus it)."""
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block ends without error.

    The temporary name keeps the extension (writers that pick the format from it still work). On an error or
    Ctrl-C the temporary file is deleted and ``path`` is untouched.

    Example:
        >>> import tempfile, pathlib
        >>> from distilldift.files import atomic_path
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "result.json"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("{}")
        ...     target.exists()
        False
        >>> target.read_text()
        '{}'
    """
    target = Path(path)
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}.tmp{target.suffix}")
    try:
        yield tmp
        readable_by_others(tmp)
        os.replace(tmp, target)
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        raise OutputError(f"cannot write {str(target)!r}: {reason}") from None
    finally:
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data: object, *, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (UTF-8, a final newline) to ``path`` atomically; returns the path.

    Example:
        >>> import json, tempfile
        >>> p = write_json(tempfile.mkdtemp() + "/r.json", {"pck": 0.5})
        >>> json.loads(p.read_text())
        {'pck': 0.5}
    """
    import json

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")
    return path
