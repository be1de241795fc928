"""The one progress bar of the library: rich, on stderr, or nothing.

The default, stated once: library calls draw no bar unless given ``progress=True`` (the CLI passes it). Downloads
are the one exception, as in ``huggingface_hub``, whose downloads ``load_model`` also makes: they show a byte bar
unless ``HF_HUB_DISABLE_PROGRESS_BARS=1`` (which hides every bar of this library too).
"""

from __future__ import annotations

import os

__all__ = ["ProgressBar", "bars_disabled"]


def bars_disabled() -> bool:
    """``HF_HUB_DISABLE_PROGRESS_BARS`` is set: no bar anywhere."""
    return os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").lower() in ("1", "true", "yes")


class ProgressBar:
    """A rich progress bar on stderr that is a no-op when ``enabled`` is False; also a context manager.

    Args:
        enabled: draw it (``HF_HUB_DISABLE_PROGRESS_BARS=1`` overrides).
        total: items (or bytes) expected; ``None``: unknown.
        label: the text before the bar.
        unit: ``"items"`` (``done/total``, time left) or ``"bytes"`` (size, speed, time left).

    Example:
        >>> from distilldift.progress import ProgressBar
        >>> with ProgressBar(False, 10, "tracking") as bar:  # disabled: every call does nothing
        ...     bar.advance(3)
    """

    def __init__(self, enabled: bool, total: int | None, label: str, unit: str = "items"):
        self._bar = self._task = None
        if enabled and not bars_disabled():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
            self._bar = Progress(
                TextColumn(label, markup=False),
                BarColumn(),
                *counts,
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()

    def advance(self, n: int) -> None:
        """Count ``n`` more items (bytes) done."""
        if self._bar is not None:
            self._bar.update(self._task, advance=n)

    def stop(self) -> None:
        """Remove the bar from the terminal."""
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
