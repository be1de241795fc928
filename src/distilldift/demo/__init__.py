"""``distilldift demo``: click a point on one image, see where it lands in others (and follow points in a video).

The web page needs Gradio (``pip install 'distilldift[demo]'``); :class:`DemoSession` (the work behind it) does not.
"""

from __future__ import annotations

from .session import DemoSession, DemoSettings, TargetResult

__all__ = ["DemoSession", "DemoSettings", "TargetResult", "build_app", "launch"]


def __getattr__(name: str):
    if name in ("build_app", "launch"):  # imports Gradio: only when asked for
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'distilldift.demo' has no attribute {name!r}")
