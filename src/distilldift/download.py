"""Verified file downloads and the distilldift cache folder.

:func:`download_verified` streams a URL to a temporary file beside the destination, hashing while it streams,
shows a progress bar, checks the size and the git blob id, and only then renames the file into place: an
interrupted, truncated or tampered transfer never leaves a file at the destination.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

from .errors import DownloadError, InvalidInputError
from .files import atomic_path
from .progress import ProgressBar

__all__ = ["git_blob_id", "download_verified", "cache_root", "check_cache_dir", "download_timeout", "unreachable"]

_CHUNK = 1 << 20
DEFAULT_TIMEOUT = 30.0


def check_cache_dir(cache_dir: str | os.PathLike) -> Path:
    """``cache_dir`` as a Path; a file there is an error (a missing folder is created when needed).

    Example:
        >>> check_cache_dir("/data/hf-cache").as_posix()
        '/data/hf-cache'
    """
    path = Path(cache_dir)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"cache folder {str(path)!r} is a file; give a folder (a missing one is created)")
    return path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder where distilldift keeps converted weights.

    ``cache_dir/distilldift`` when ``cache_dir`` (a Hugging Face cache folder, as passed to ``load_model``) is
    given; else ``$DISTILLDIFT_CACHE``; else ``$HF_HOME/distilldift`` when ``HF_HOME`` is set; else
    ``$XDG_CACHE_HOME/distilldift``, else ``~/.cache/distilldift`` (beside ``~/.cache/huggingface``).

    Example:
        >>> from distilldift.download import cache_root
        >>> cache_root("/data/hf-cache").as_posix()
        '/data/hf-cache/distilldift'
    """
    if cache_dir is not None:
        return check_cache_dir(cache_dir) / "distilldift"
    if os.environ.get("DISTILLDIFT_CACHE"):
        return Path(os.environ["DISTILLDIFT_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "distilldift"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "distilldift"


def download_timeout() -> float:
    """Seconds to wait for a server's next bytes: ``$DISTILLDIFT_DOWNLOAD_TIMEOUT``, default 30."""
    raw = os.environ.get("DISTILLDIFT_DOWNLOAD_TIMEOUT")
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DownloadError(f"DISTILLDIFT_DOWNLOAD_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


PROBE_SECONDS = 5.0  # how long to wait for a server to accept a connection before calling it unreachable
_PROBED: dict[tuple[str, int], tuple[float, str | None]] = {}


def unreachable(url: str) -> str | None:
    """Why the server of ``url`` cannot be reached now (``None`` when it can): a TCP connection within a few
    seconds, remembered for a minute. Behind a proxy (``HTTPS_PROXY`` & co) the answer is always ``None``.

    Offline, this makes a download fail in a second instead of after a client's retries (Hugging Face's spend ~25 s).

    Example:
        >>> unreachable("http://127.0.0.1:9/")  # nothing listens on the discard port here
        'Connection refused'
    """
    import socket
    import time
    from urllib.parse import urlsplit

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None
    parts = urlsplit(url)
    key = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    seen = _PROBED.get(key)
    if seen is not None and time.monotonic() - seen[0] < 60:
        return seen[1]
    try:
        socket.create_connection(key, timeout=min(PROBE_SECONDS, download_timeout())).close()
        why = None
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
    _PROBED[key] = (time.monotonic(), why)
    return why


def _blob_hasher(size: int):
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % size)
    return h


def git_blob_id(data: bytes | str | os.PathLike) -> str:
    """git's object id of a file's content: ``sha1(b"blob <size>\\0" + content)``, as ``git hash-object`` prints.

    Args:
        data: the content (``bytes``) or a file path (read in chunks).

    Returns:
        40 lowercase hex digits.

    Example:
        >>> from distilldift.download import git_blob_id
        >>> git_blob_id(b"hello\\n")  # git hash-object of a file holding "hello" and a newline
        'ce013625030ba8dba906f756967f9e9ca394464a'
    """
    if isinstance(data, bytes):
        h = _blob_hasher(len(data))
        h.update(data)
        return h.hexdigest()
    path = Path(data)
    h = _blob_hasher(path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download_verified(
    url: str,
    dest: str | os.PathLike,
    *,
    blob_id: str,
    timeout: float | None = None,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` and check it against a git blob id; ``dest`` appears only if it matches.

    The body is streamed to a temporary file in ``dest``'s folder while its blob id is computed (from the
    ``Content-Length``; without one the file is hashed once it is complete). A transfer that ends early, a
    server that sends nothing for ``timeout`` seconds, an HTTP error or a blob id that does not match raises
    :class:`~distilldift.errors.DownloadError` naming the URL, and the temporary file is deleted.

    Args:
        url: ``http(s)://`` or ``file://`` URL. Proxies come from the usual environment variables.
        dest: final path of the file.
        blob_id: expected ``git hash-object`` id (40 hex digits).
        timeout: seconds to wait for the connection and for each read (default :func:`download_timeout`).
        progress: show a progress bar on stderr (also off with ``HF_HUB_DISABLE_PROGRESS_BARS=1``).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Example:
        >>> import pathlib, tempfile
        >>> from distilldift.download import download_verified, git_blob_id
        >>> src = pathlib.Path(tempfile.mkdtemp()) / "weights.bin"
        >>> _ = src.write_bytes(b"some weights")
        >>> out = download_verified(src.as_uri(), src.with_name("copy.bin"), blob_id=git_blob_id(src), progress=False)
        >>> out.read_bytes()
        b'some weights'
    """
    dest = Path(dest)
    timeout = download_timeout() if timeout is None else timeout
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:  # renamed into place only if the block ends without error
        got = _stream(url, tmp, timeout=timeout, progress=progress, label=dest.name)
        if got is None:
            got = git_blob_id(tmp)
        if got != blob_id:
            raise DownloadError(
                f"{url}: the downloaded file's git blob id is {got}, expected {blob_id}: corrupt or tampered "
                "with; it was deleted"
            )
    return dest


def _stream(url: str, tmp: Path, *, timeout: float, progress: bool, label: str) -> str | None:
    """Write the body of ``url`` to ``tmp``; return its blob id when the size was announced, else ``None``."""
    request = urllib.request.Request(url, headers={"User-Agent": f"distilldift/{version('distilldift')}"})
    received = 0
    size: int | None = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            size = int(length) if length and length.isdigit() else None
            hasher = _blob_hasher(size) if size is not None else None
            with ProgressBar(progress, size, label, unit="bytes") as bar, open(tmp, "wb") as f:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    bar.advance(len(chunk))
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    except TimeoutError as e:
        raise DownloadError(f"{url}: no answer within {timeout:g} s (DISTILLDIFT_DOWNLOAD_TIMEOUT)") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise DownloadError(f"{url}: no answer within {timeout:g} s (DISTILLDIFT_DOWNLOAD_TIMEOUT)") from e
        raise DownloadError(f"{url}: cannot connect ({e.reason})") from e
    except (http.client.HTTPException, ConnectionError) as e:
        raise DownloadError(f"{url}: transfer broken after {received} bytes ({type(e).__name__}: {e})") from e
    except OSError as e:
        raise DownloadError(f"{url}: download failed after {received} bytes: {e}") from e
    if size is not None and received != size:
        raise DownloadError(f"{url}: transfer ended after {received} of {size} bytes (connection closed)")
    return hasher.hexdigest() if hasher is not None else None
