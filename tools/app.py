#!/usr/bin/env python
"""Show the detector a new class by pointing: a web app over tools/predict.py's functions.

  python tools/app.py --config-file configs/demo/fsod_toy_mnv2.yaml \\
      --weights output/demo/model_final.pth --supports output/demo/novel_supports
  make app                                   # the same, on the model `make demo` trains
  python tools/app.py --model exported/demo  # a model of tools/export_model.py (ONNX Runtime)

Open the printed URL in a browser.
  Classes: upload 1-K example images of a class, click two opposite corners of the object on
    each (no box: the whole image is the object), name the class and add it. Load or save a
    support folder in predict.py's format (boxes.json), or load a prototype file of
    predict.py (checked against the weights).
  Detect: upload images and detect every class; the threshold slider redraws without running
    the model again; download the detections as COCO json (predict.py's detections.json).
  Count: upload one image, draw 1-3 boxes around examples of an object and count every similar
    object in it.

The app is a thin page over fsod_deploy.app_state, which calls what predict.py calls. The class
library belongs to the running app (every browser page sees it); detections belong to a page.
Problems (a file that is not an image, a box without area, no class, prototypes of other
weights) are shown in the page, and the app goes on serving. It serves this machine only
(--host 127.0.0.1) unless told otherwise.
"""

import argparse
import collections
import functools
import html
import itertools
import json
import logging
import os
import tempfile
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from the server
try:
    import gradio as gr
except ImportError:
    raise SystemExit(
        "app.py: error: the app needs Gradio; install it with pip install -e '.[app]' "
        "(make install does)"
    ) from None

from fsod_deploy.app_state import AppError, ClassLibrary, Session  # noqa: E402
from fsod_deploy.cli import UsageError, add_inference_options, one_line_errors  # noqa: E402
from fsod_deploy.threads import free_threads  # noqa: E402

logger = logging.getLogger("fsod_d2.app")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", metavar="FILE", help="the model's config (PyTorch)")
    p.add_argument("--weights", help="model weights (PyTorch; default: MODEL.WEIGHTS)")
    p.add_argument("--model", metavar="DIR", help="an exported model folder (ONNX Runtime) instead")
    p.add_argument(
        "--supports", metavar="DIR", help="a support folder to load at start (predict.py's format)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: this machine)"
    )
    p.add_argument(
        "--port", type=int, default=0, help="port (default: the first free one from 7860)"
    )
    p.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.3,
        help="the threshold slider's start: minimum score of drawn detections",
    )
    add_inference_options(p)
    return p.parse_args(argv)


def build_detector(args, threads: int):
    """The PyTorch model of --config-file/--weights, or the exported one of --model."""
    if args.model:
        if args.config_file or args.weights or args.opts:
            raise UsageError(
                "--config-file, --weights and config overrides are for a PyTorch model; the "
                "exported --model folder holds its settings"
            )
        from fsod_deploy.runtime import OnnxDetector

        return OnnxDetector(args.model, threads=threads), "onnxruntime"
    if not args.config_file:
        raise UsageError("give --config-file (and --weights) or --model DIR (an exported model)")
    import fsod_d2  # noqa: F401  (registers components, silences known import warnings)

    # isort: split
    import torch

    from fsod_d2.config import setup_cfg
    from fsod_d2.predictor import TorchDetector
    from fsod_d2.utils.cli import check_weights_file

    opts = list(args.opts) + (["MODEL.WEIGHTS", args.weights] if args.weights else [])
    cfg = setup_cfg(args.config_file, opts)
    check_weights_file(cfg.MODEL.WEIGHTS, "--weights" if args.weights else "MODEL.WEIGHTS")
    torch.set_num_threads(threads)
    return TorchDetector(cfg, config_file=args.config_file), "pytorch"


# ---------------------------------------------------------------- page plumbing
class Pages:
    """One :class:`Session` per browser page (Gradio's session hash), the oldest dropped past
    ``keep``."""

    def __init__(self, classes: ClassLibrary, root: str, keep: int = 16):
        self.classes, self.root, self.keep = classes, root, keep
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, request) -> Session:
        key = getattr(request, "session_hash", None) or "local"
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = Session(self.classes, tempfile.mkdtemp(dir=self.root))
            self._sessions.move_to_end(key)
            while len(self._sessions) > self.keep:
                self._sessions.popitem(last=False)[1].close()
            return self._sessions[key]


_MESSAGES = itertools.count(1)


def message_html(text: str, error: bool = False) -> str:
    """A message for the page; ``data-n`` numbers the messages, so that a page (or a test)
    tells a new message from the same text again."""
    if not text:
        return ""
    kind = "error" if error else "ok"
    prefix = "<b>Error:</b> " if error else ""
    n = next(_MESSAGES)
    return f'<div class="fsod-msg fsod-{kind}" data-n="{n}">{prefix}{html.escape(text)}</div>'


def shows_errors(n_outputs: int):
    """A callback whose last output is the message: an :class:`AppError` (or any failure) is
    shown there and the other outputs are left as they are."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except AppError as e:
                text = str(e)
            except Exception as e:  # the app keeps serving; the console has the traceback
                logger.exception("app: %s failed", fn.__name__)
                text = f"{type(e).__name__}: {e} (the console has the details)"
            skip = [gr.skip() for _ in range(n_outputs - 1)]
            return (*skip, message_html(text, error=True)) if skip else message_html(text, True)

        return run

    return wrap


def _names(files) -> tuple[list[str], list[str]]:
    """Gradio's uploaded files -> their paths and the names the user gave them."""
    paths = [f if isinstance(f, str) else f.name for f in (files or [])]
    return paths, [os.path.basename(p) for p in paths]


CSS = """
.fsod-msg { padding: 6px 10px; border-radius: 6px; }
.fsod-ok { background: #eef6ee; color: #1d4d1d; }
.fsod-error { background: #fdecea; color: #8a1c12; }
"""


def build_ui(pages: Pages, threshold: float):
    """The page: three tabs over :class:`~fsod_deploy.app_state.Session`'s methods."""
    library = pages.classes

    class Pictures:
        """RGB pictures -> PNG files in the page's folder (fast to write, lossless)."""

        counter = 0

        @classmethod
        def write(cls, session: Session, rgb) -> str:
            import cv2

            cls.counter += 1
            path = os.path.join(session.workdir, f"picture_{cls.counter}.png")
            cv2.imwrite(path, rgb[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
            return path

    def class_list():
        rows = library.table() or [["", "", ""]]
        return gr.Dataframe(value=rows), gr.Dropdown(choices=library.names(), value=None)

    def detection_outputs(session: Session, view):
        pictures = [(Pictures.write(session, rgb), caption) for rgb, caption in view.pictures]
        return (
            pictures,
            view.rows or None,
            json_text(view.data),
            message_html(view.message),
        )

    def json_text(data) -> str:
        return json.dumps(data, indent=1) if data else ""

    with gr.Blocks(title="fsod-d2: few-shot detection") as demo:
        gr.Markdown(
            "## Few-shot detection: show it a class by pointing\n"
            "**Classes**: example images with the object's box (two clicks: opposite corners). "
            "**Detect**: every class in your images. **Count**: boxes on one image, count the "
            "like."
        )
        with gr.Tab("Classes", id="classes"):
            with gr.Row():
                with gr.Column(scale=1):
                    class_name = gr.Textbox(label="Class name", elem_id="class-name")
                    example_files = gr.File(
                        label="Example images of the class (1 or more)",
                        file_count="multiple",
                        elem_id="example-files",
                    )
                    example_pick = gr.Dropdown(
                        label="Example shown", choices=[], elem_id="example-pick"
                    )
                    example_boxes = gr.Textbox(
                        label="Boxes (file: x0, y0, x1, y1 per line; none: whole image)",
                        lines=3,
                        elem_id="example-boxes",
                    )
                    add_button = gr.Button("Add class", variant="primary", elem_id="add-class")
                    classes_msg = gr.HTML(elem_id="classes-message")
                with gr.Column(scale=2):
                    example_view = gr.Image(
                        label="Click two opposite corners of the object",
                        interactive=False,
                        elem_id="example-view",
                        height=420,
                    )
            class_table = gr.Dataframe(
                headers=["class", "shots", "from"],
                value=library.table() or [["", "", ""]],
                interactive=False,
                label="Class library",
                elem_id="class-table",
            )
            with gr.Row():
                remove_pick = gr.Dropdown(
                    label="Class", choices=library.names(), elem_id="remove-pick"
                )
                remove_button = gr.Button("Remove class", elem_id="remove-class")
            with gr.Accordion("Support folders and prototype files", open=True):
                with gr.Row():
                    folder = gr.Textbox(
                        label="Support folder on this machine (predict.py --supports format)",
                        elem_id="folder",
                    )
                    load_button = gr.Button("Load folder", elem_id="load-folder")
                    save_button = gr.Button("Save folder", elem_id="save-folder")
                with gr.Row():
                    prototype_upload = gr.File(
                        label="Load a prototype file (.npz or .pth of predict.py)",
                        elem_id="prototype-file",
                    )
                    prototype_button = gr.Button(
                        "Download prototypes.npz", elem_id="save-prototypes"
                    )
                    prototype_download = gr.File(
                        label="prototypes.npz", interactive=False, elem_id="prototypes-npz"
                    )

        with gr.Tab("Detect", id="detect"):
            with gr.Row():
                with gr.Column(scale=1):
                    queries = gr.File(
                        label="Images to detect in", file_count="multiple", elem_id="queries"
                    )
                    detect_button = gr.Button("Detect", variant="primary", elem_id="detect")
                    det_threshold = gr.Slider(
                        0.0, 1.0, value=threshold, step=0.01, label="Threshold (redraws only)",
                        elem_id="threshold",
                    )  # fmt: skip
                    detect_msg = gr.HTML(elem_id="detect-message")
                    coco_file = gr.File(
                        label="COCO json of every detection (predict.py's detections.json)",
                        interactive=False,
                        height=80,
                        elem_id="coco-file",
                    )
                with gr.Column(scale=2):
                    gallery = gr.Gallery(
                        label="Detections",
                        preview=True,
                        height=460,
                        object_fit="contain",
                        elem_id="gallery",
                    )
            det_table = gr.Dataframe(
                headers=["image", "class", "score", "x0", "y0", "x1", "y1"],
                interactive=False,
                label="Detections drawn",
                elem_id="detections-table",
            )
            det_json = gr.Textbox(
                label="Detections drawn (JSON)", lines=4, max_lines=12, elem_id="detections-json"
            )

        with gr.Tab("Count", id="count"):
            with gr.Row():
                with gr.Column(scale=1):
                    count_upload = gr.File(label="Image to count in", elem_id="count-file")
                    count_boxes = gr.Textbox(
                        label="Example boxes (x0, y0, x1, y1 per line; 1-3)",
                        lines=3,
                        elem_id="count-boxes",
                    )
                    with gr.Row():
                        count_button = gr.Button("Count", variant="primary", elem_id="count")
                        clear_button = gr.Button("Clear boxes", elem_id="clear-boxes")
                    count_threshold = gr.Slider(
                        0.0, 1.0, value=threshold, step=0.01, label="Threshold (redraws only)",
                        elem_id="count-threshold",
                    )  # fmt: skip
                    count_msg = gr.HTML(elem_id="count-message")
                    with gr.Row():
                        counted_name = gr.Textbox(label="Class name", elem_id="counted-name")
                        counted_button = gr.Button("Add as a class", elem_id="add-counted")
                with gr.Column(scale=2):
                    count_view = gr.Image(
                        label="Click two opposite corners of an example (1-3 examples)",
                        interactive=False,
                        elem_id="count-view",
                        height=420,
                    )
                    count_result = gr.Image(
                        label="Objects counted", interactive=False, elem_id="count-result"
                    )
            count_json = gr.Textbox(
                label="Count (JSON)", lines=4, max_lines=12, elem_id="count-json"
            )

        # ---------------------------------------------------------------- classes
        @shows_errors(4)
        def on_examples(files, request: gr.Request):
            session = pages.get(request)
            names, message = session.set_examples(*_names(files))
            if not files:  # cleared (also after a class is added): keep the last message
                return gr.Dropdown(choices=[], value=None), "", None, gr.skip()
            first = names[0] if names else None
            view = Pictures.write(session, session.show_example(first, "")) if first else None
            return gr.Dropdown(choices=names, value=first), "", view, message_html(message)

        @shows_errors(2)
        def on_pick(name, boxes, request: gr.Request):
            session = pages.get(request)
            if not name:
                return None, ""
            return Pictures.write(session, session.show_example(name, boxes)), ""

        @shows_errors(3)
        def on_example_click(name, boxes, evt: gr.SelectData, request: gr.Request):
            session = pages.get(request)
            x, y = evt.index
            picture, boxes, message = session.click_example(name, x, y, boxes)
            return Pictures.write(session, picture), boxes, message_html(message)

        @shows_errors(6)
        def on_add(name, boxes, request: gr.Request):
            message = pages.get(request).add_drafted_class(name, boxes)
            table, pick = class_list()
            return table, pick, None, "", None, message_html(message)

        @shows_errors(3)
        def on_remove(name):
            message = library.remove_class(name or "")
            return (*class_list(), message_html(message))

        @shows_errors(3)
        def on_load(path):
            message = library.load_folder(path)
            return (*class_list(), message_html(message))

        @shows_errors(1)
        def on_save(path):
            return message_html(library.save_folder(path))

        @shows_errors(3)
        def on_prototype_file(file):
            if not file:
                return gr.skip(), gr.skip(), ""
            (path,), (name,) = _names([file])
            message = library.load_prototype_file(path, name)
            return (*class_list(), message_html(message))

        @shows_errors(2)
        def on_save_prototypes(request: gr.Request):
            session = pages.get(request)
            path = library.save_prototypes(os.path.join(session.workdir, "prototypes.npz"))
            return path, message_html(f"{len(library)} class prototypes in prototypes.npz.")

        example_files.change(
            on_examples,
            [example_files],
            [example_pick, example_boxes, example_view, classes_msg],
        )
        example_pick.input(on_pick, [example_pick, example_boxes], [example_view, classes_msg])
        example_boxes.blur(on_pick, [example_pick, example_boxes], [example_view, classes_msg])
        example_view.select(
            on_example_click,
            [example_pick, example_boxes],
            [example_view, example_boxes, classes_msg],
        )
        add_button.click(
            on_add,
            [class_name, example_boxes],
            [class_table, remove_pick, example_files, example_boxes, example_view, classes_msg],
        )
        remove_button.click(on_remove, [remove_pick], [class_table, remove_pick, classes_msg])
        load_button.click(on_load, [folder], [class_table, remove_pick, classes_msg])
        save_button.click(on_save, [folder], [classes_msg])
        prototype_upload.upload(
            on_prototype_file, [prototype_upload], [class_table, remove_pick, classes_msg]
        )
        prototype_button.click(on_save_prototypes, None, [prototype_download, classes_msg])

        # ---------------------------------------------------------------- detect
        @shows_errors(5)
        def on_detect(files, t, request: gr.Request):
            session = pages.get(request)
            view = session.detect(*_names(files), threshold=t)
            *shown, message = detection_outputs(session, view)
            return (*shown, session.coco_json(), message)

        @shows_errors(4)
        def on_threshold(t, request: gr.Request):
            session = pages.get(request)
            view = session.redraw(t)
            if not view.data:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return detection_outputs(session, view)

        detect_button.click(
            on_detect,
            [queries, det_threshold],
            [gallery, det_table, det_json, coco_file, detect_msg],
        )
        det_threshold.change(
            on_threshold,
            [det_threshold],
            [gallery, det_table, det_json, detect_msg],
            trigger_mode="always_last",
        )

        # ---------------------------------------------------------------- count
        @shows_errors(5)
        def on_count_image(file, request: gr.Request):
            session = pages.get(request)
            if not file:
                return None, "", None, "", ""
            (path,), (name,) = _names([file])
            picture = Pictures.write(session, session.set_count_image(path, name))
            return picture, "", None, "", ""

        @shows_errors(3)
        def on_count_click(boxes, evt: gr.SelectData, request: gr.Request):
            session = pages.get(request)
            x, y = evt.index
            picture, boxes, message = session.click_count(x, y, boxes)
            return Pictures.write(session, picture), boxes, message_html(message)

        @shows_errors(3)
        def on_clear(request: gr.Request):
            session = pages.get(request)
            picture, boxes = session.clear_count_boxes()
            return Pictures.write(session, picture), boxes, ""

        def count_outputs(session, view):
            picture = Pictures.write(session, view.pictures[0][0]) if view.pictures else None
            return picture, json_text(view.data), message_html(view.message)

        @shows_errors(3)
        def on_count(boxes, t, request: gr.Request):
            session = pages.get(request)
            return count_outputs(session, session.count_in_image(boxes, t))

        @shows_errors(3)
        def on_count_threshold(t, request: gr.Request):
            session = pages.get(request)
            view = session.recount(t)
            if not view.data:
                return gr.skip(), gr.skip(), gr.skip()
            return count_outputs(session, view)

        @shows_errors(3)
        def on_add_counted(name, boxes, request: gr.Request):
            message = pages.get(request).add_counted_class(name, boxes)
            return (*class_list(), message_html(message))

        count_upload.change(
            on_count_image,
            [count_upload],
            [count_view, count_boxes, count_result, count_json, count_msg],
        )
        count_view.select(on_count_click, [count_boxes], [count_view, count_boxes, count_msg])
        clear_button.click(on_clear, None, [count_view, count_boxes, count_msg])
        count_button.click(
            on_count, [count_boxes, count_threshold], [count_result, count_json, count_msg]
        )
        count_threshold.change(
            on_count_threshold,
            [count_threshold],
            [count_result, count_json, count_msg],
            trigger_mode="always_last",
        )
        counted_button.click(
            on_add_counted, [counted_name, count_boxes], [class_table, remove_pick, count_msg]
        )
    return demo


def setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s %(name)s]: %(message)s")
    for name in ("fsod_d2", "fsod_deploy"):
        logging.getLogger(name).setLevel(logging.INFO)


def start(args):
    """Build the model and the page and start serving; returns the Gradio app and its URL."""
    if args.supports and not os.path.isdir(args.supports):
        raise UsageError(
            f"--supports {args.supports}: no such folder; give a folder with one sub-folder of "
            "example images per class"
        )
    detector, backend = build_detector(args, args.threads or free_threads())
    library = ClassLibrary(detector, backend)
    if args.supports:
        logger.info("%s", library.load_folder(args.supports))
    root = tempfile.mkdtemp(prefix="fsod_app_")
    demo = build_ui(Pages(library, root), args.confidence_threshold)
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts: works offline
        font_mono=["ui-monospace", "monospace"],
    )
    demo.queue()
    demo.launch(
        server_name=args.host,
        server_port=args.port or None,
        prevent_thread_lock=True,
        quiet=True,
        theme=theme,
        css=CSS,
        footer_links=[],
        allowed_paths=[root],
    )
    url = demo.local_url
    return demo, url


@one_line_errors("app.py", AppError)
def main(argv=None) -> None:
    """Serve until interrupted; bad options end the tool with one line (exit code 1)."""
    args = parse_args(argv)
    setup_logging()
    demo, url = start(args)
    print(f"fsod-d2 app: open {url} in a browser (Ctrl+C stops it)", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()


if __name__ == "__main__":
    main()
