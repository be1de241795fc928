"""The demo's web page (Gradio): wires components to :class:`distilldift.demo.session.DemoSession`.

Images tab: a source image (click on it), target images, the heat map of the newest point over each target, a
table of all matches and their JSON. Video tab: a clip, clicks on its query frame, the tracked overlay video.
Messages (bad upload, missing weights) go to the status line, never a traceback. Files are written only inside
the session's temporary folder (Gradio's uploads included).
"""

import os
from pathlib import Path
from types import SimpleNamespace

try:  # an optional extra; build_app says how to install it
    import gradio as gr
except ImportError:  # pragma: no cover - tested by the message
    gr = None

from ..errors import DistillDiftError, InvalidInputError, MissingDependencyError
from ..images import load_image
from ..matching.localizers import list_localizers
from ..models.variants import DEFAULT_VARIANT, RESIZE_MODES, list_variants
from ..viz import palette
from .session import DemoSession, DemoSettings, side_by_side

__all__ = ["build_app", "launch", "DEFAULT_HOST"]

DEFAULT_HOST = "127.0.0.1"
_MODEL_DEFAULT = "default"  # the resize / size choice meaning "the variant's own"


def _require_gradio() -> None:
    if gr is None:
        raise MissingDependencyError("the demo needs Gradio: pip install 'distilldift[demo]'")


def _message(error: Exception) -> str:
    return f"**error:** {error}"


def _settings(model, method, pose_align, size, resize) -> DemoSettings:
    size = int(size or 0)
    return DemoSettings(
        model=model,
        method=method,
        pose_align=bool(pose_align),
        size=size if size > 0 else None,
        resize=None if resize in (None, _MODEL_DEFAULT) else resize,
    )


def _table(results, points) -> str:
    if not results or not points:
        return ""
    lines = [
        "| point | colour | source (x, y) | target | match (x, y) | score | mutual |",
        "|---|---|---|---|---|---|---|",
    ]
    colours = palette(len(points))
    for r in results:
        for i, (q, p) in enumerate(zip(r.matches.query.tolist(), r.matches.points.tolist(), strict=True)):
            hexc = "#{:02x}{:02x}{:02x}".format(*colours[i])
            mutual = "yes" if bool(r.matches.mutual[i]) else "no"
            lines.append(
                f"| {i + 1} | <span style='color:{hexc}'>&#9679;</span> | {q[0]:.1f}, {q[1]:.1f} | {r.name} | "
                f"{p[0]:.1f}, {p[1]:.1f} | {float(r.matches.scores[i]):.3f} | {mutual} |"
            )
    return "\n".join(lines)


_PROGRESS = gr.Progress() if gr is not None else None  # Gradio reports progress to a handler with this default


class _Handlers:
    """What the page's events do, on one :class:`DemoSession` (each returns the values of its outputs)."""

    def __init__(self, session: DemoSession):
        self.session = session

    def load_source(self, path):
        if path is None:
            return None, [], None, "", None, ""
        try:
            load_image(path)
        except DistillDiftError as e:
            return None, [], None, "", None, _message(e)
        return path, [], None, "", None, f"source: {Path(path).name} - click a point on it"

    def compute(self, src, points, targets, *opts):
        """(source drawing, gallery, table, json file, status) for the current points."""
        if src is None:
            return gr.update(), None, "", None, "upload a source image first (or use the sample photos)"
        settings = _settings(*opts)
        good, names, problems = [], [], []
        for t in targets or []:  # each image decoded once per click
            try:
                good.append(load_image(t))
                names.append(Path(t).name)
            except DistillDiftError:
                name = Path(t).name
                problems.append(f"{name} is not an image we can read (corrupt or another kind of file): left out")
        try:
            img = load_image(src)
            drawing = self.session.draw_points(img, points)
            if not good:
                note = "add one or more target images (or use the sample photos)"
                return drawing, None, "", None, "; ".join([*(_message(p) for p in problems), note])
            results = self.session.click(img, good, points, settings, names=names)
            path = self.session.save_json(results, Path(src).name, (img.shape[-1], img.shape[-2]), settings)
        except DistillDiftError as e:
            return gr.update(), None, "", None, _message(e)
        gallery = side_by_side([r.overlay for r in results])
        status = f"{len(points)} point(s), {len(results)} target(s), model {settings.model}"
        status = "; ".join([*(_message(p) for p in problems), status])
        return drawing, gallery, _table(results, points), str(path), status

    def on_click(self, src, points, targets, model, method, pose_align, size, resize, evt: gr.SelectData):
        if src is None:
            return gr.update(), points, None, "", None, "upload a source image first (or use the sample photos)"
        points = [*points, [float(evt.index[0]), float(evt.index[1])]]
        drawing, *rest = self.compute(src, points, targets, model, method, pose_align, size, resize)
        return (drawing, points, *rest)

    def refresh(self, src, points, targets, *opts):
        out = self.compute(src, points, targets, *opts)
        return out if src is not None else (gr.update(), None, "", None, out[-1])

    def samples(self):
        paths = [str(p) for p in self.session.sample_paths()]
        return paths[0], paths[0], [], [paths[1]], "sample photos: click a point on the cat"

    def load_frame(self, video, index):
        if video is None:
            return None, [], ""
        try:
            frame = self.session.video_frame(video, int(index or 0))
        except DistillDiftError as e:
            return None, [], _message(e)
        return frame, [], f"frame {int(index or 0)}: click the points to follow"

    def on_frame_click(self, video, index, points, evt: gr.SelectData):
        if video is None:
            return gr.update(), points, "upload a clip first"
        points = [*points, [float(evt.index[0]), float(evt.index[1])]]
        frame = self.session.draw_points(self.session.video_frame(video, int(index or 0)), points)
        return frame, points, f"{len(points)} point(s) on frame {int(index or 0)}: click more, or Track"

    def run_track(self, video, index, points, *opts, progress=_PROGRESS):
        if video is None:
            return None, None, "upload a clip first"
        if not points:
            return None, None, f"click the points to follow on frame {int(index or 0)} first"
        settings = _settings(*opts)

        def report(done, total):
            progress((done, total), desc="tracking", unit="frames")

        try:
            overlay, tracks = self.session.track(video, points, settings, query_frame=int(index or 0), callback=report)
        except DistillDiftError as e:
            return None, None, _message(e)
        return str(overlay), str(tracks), f"tracked {len(points)} point(s)"


def build_app(model: str = DEFAULT_VARIANT, *, session: DemoSession | None = None):
    """The demo as a ``gradio.Blocks`` (not launched). ``model``: the initially selected model (variant or folder)."""
    session = session or DemoSession()
    os.environ["GRADIO_TEMP_DIR"] = str(session.workdir / "uploads")  # uploads stay in the session's folder
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    _require_gradio()
    models = list_variants() if model in list_variants() else [model, *list_variants()]
    h = _Handlers(session)
    with gr.Blocks(title="distilldift demo", analytics_enabled=False) as demo:
        gr.Markdown(
            "## distilldift: semantic correspondence\n"
            "Click a point on the source image: each target shows where it lands (heat map: similarity to the "
            "clicked point; ring: the match, filled when mutual)."
        )
        with gr.Row():
            model_in = gr.Dropdown(models, value=model, label="model", allow_custom_value=True, elem_id="model")
            method_in = gr.Radio(list_localizers(), value="soft", label="method", elem_id="method")
            pose_in = gr.Checkbox(False, label="pose-align (mirror the source when it fits better)", elem_id="pose")
            size_in = gr.Number(0, precision=0, minimum=0, label="input size (0: the model's)", elem_id="size")
            resize_in = gr.Dropdown([_MODEL_DEFAULT, *RESIZE_MODES], value=_MODEL_DEFAULT, label="resize")
        opts = [model_in, method_in, pose_in, size_in, resize_in]
        status = gr.Markdown("", elem_id="status")
        with gr.Tab("Images"):
            src_state, points_state = gr.State(None), gr.State([])
            with gr.Row():
                source = gr.Image(
                    type="filepath", sources=["upload"], format="png", label="source: click a point", elem_id="source"
                )
                with gr.Column():
                    targets = gr.File(file_count="multiple", label="target images", elem_id="targets")
                    sample_btn = gr.Button("use the sample photos", elem_id="samples")
                    clear_btn = gr.Button("clear the points", elem_id="clear")
            gallery = gr.Image(
                type="pil", interactive=False, format="png", label="where the point lands", elem_id="results"
            )
            table = gr.Markdown("", elem_id="matches")
            download = gr.File(label="matches (JSON, as `distilldift match --json`)", elem_id="download")
        with gr.Tab("Video"):
            video_points = gr.State([])
            with gr.Row():
                video = gr.Video(sources=["upload"], label="clip", elem_id="video")
                with gr.Column():
                    query_frame = gr.Number(0, precision=0, minimum=0, label="query frame", elem_id="query-frame")
                    frame = gr.Image(type="pil", interactive=False, label="click points on this frame", elem_id="frame")
                    track_btn = gr.Button("track", elem_id="track")
            tracked = gr.Video(label="tracks", elem_id="tracked")
            tracks_file = gr.File(label="tracks (JSON)", elem_id="tracks-file")

        ui = SimpleNamespace(
            source=source,
            gallery=gallery,
            table=table,
            download=download,
            status=status,
            src_state=src_state,
            points_state=points_state,
            targets=targets,
            opts=opts,
            clear_btn=clear_btn,
            sample_btn=sample_btn,
            video=video,
            query_frame=query_frame,
            frame=frame,
            video_points=video_points,
            track_btn=track_btn,
            tracked=tracked,
            tracks_file=tracks_file,
        )
        _wire(h, ui)
    return demo


def _wire(h: _Handlers, ui: SimpleNamespace) -> None:
    """Connect the page's components (``ui``: the names of :func:`build_app`'s layout) to the handlers."""
    opts = ui.opts
    inputs = [ui.src_state, ui.points_state, ui.targets, *opts]
    results = [ui.source, ui.gallery, ui.table, ui.download, ui.status]
    ui.source.upload(
        h.load_source, [ui.source], [ui.src_state, ui.points_state, ui.gallery, ui.table, ui.download, ui.status]
    )
    ui.source.select(h.on_click, inputs, [ui.source, ui.points_state, *results[1:]])
    for trigger in (ui.targets.change, *(option.change for option in opts)):
        trigger(h.refresh, inputs, results)
    ui.clear_btn.click(lambda: [], None, ui.points_state).then(h.refresh, inputs, results)
    ui.sample_btn.click(h.samples, None, [ui.source, ui.src_state, ui.points_state, ui.targets, ui.status])
    frame_out = [ui.frame, ui.video_points, ui.status]
    ui.video.change(h.load_frame, [ui.video, ui.query_frame], frame_out)
    ui.query_frame.submit(h.load_frame, [ui.video, ui.query_frame], frame_out)
    ui.frame.select(h.on_frame_click, [ui.video, ui.query_frame, ui.video_points], frame_out)
    track_in = [ui.video, ui.query_frame, ui.video_points, *opts]
    ui.track_btn.click(h.run_track, track_in, [ui.tracked, ui.tracks_file, ui.status])


def launch(
    model: str = DEFAULT_VARIANT,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    share: bool = False,
    device: str | None = None,
    block: bool = True,
    log=None,
):
    """Build and start the demo on ``http://host:port`` (127.0.0.1 by default; ``share=True``: a public Gradio link).

    The model is loaded and the address checked before the server starts: a model that does not load, a host that
    is not an address of this machine and a busy port are one-line errors. ``block=False`` returns the running
    ``gradio.Blocks`` (call ``.close()``); otherwise it returns after the server stops. ``log`` prints the address.
    """
    check_address(host, port)
    session = DemoSession(device=device)
    session.model(model)  # a wrong name or missing weights fail now, not at the first click
    demo = build_app(model, session=session)
    demo.queue().launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=True,
        inbrowser=False,
        ssr_mode=False,
        quiet=True,  # Gradio's own lines name its Python arguments; ours name the command's options
        allowed_paths=[str(session.workdir)],
    )
    if log is not None:
        log(
            f"running on {demo.local_url}"
            + (f" and {demo.share_url}" if demo.share_url else " (--share yes: a public link)")
        )
    if block:
        demo.block_thread()
    return demo


def check_address(host: str, port: int | None) -> None:
    """Can the demo listen on ``host`` (and ``port``, when given)? One-line errors naming ``--host`` / ``--port``."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InvalidInputError(
            f"--host {host!r}: not an address here ({e.strerror}); use 127.0.0.1, 0.0.0.0 (every interface) or an "
            "address of this machine"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: only a listening port clashes
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InvalidInputError(f"port {port} on {host} is in use; choose another with --port") from None
            raise InvalidInputError(f"--host {host!r} --port {port}: cannot listen there ({e.strerror})") from None
