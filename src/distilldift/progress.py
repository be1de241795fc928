"""The progress bar of long jobs (tracking a video, extracting a folder): rich, on the terminal, or nothing."""

from __future__ import annotations

__all__ = ["ProgressBar"]


class ProgressBar:
    """A rich progress bar that is a no-op when ``enabled`` is False (library calls are silent by default).

    Example:
        >>> from distilldift.progress import ProgressBar
        >>> bar = ProgressBar(False, 10, "tracking")  # disabled: every call does nothing
        >>> bar.advance(3); bar.stop()
    """

    def __init__(self, enabled: bool, total: int | None, label: str):
        self._bar = self._task = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
            )
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()

    def advance(self, n: int) -> None:
        """Count ``n`` more items done."""
        if self._bar is not None:
            self._bar.update(self._task, advance=n)

    def stop(self) -> None:
        """Remove the bar from the terminal."""
        if self._bar is not None:
            self._bar.stop()
