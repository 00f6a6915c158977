"""tools/app.py's command line: a mistake ends it with one line before the model is built; the
page builds (its Gradio components and events) over a class library."""

import pytest

from .common import TINY_CONFIG, load_tool


@pytest.fixture(scope="module")
def app():
    return load_tool("app")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config-file", str(TINY_CONFIG), "--supports", "no/such/folder"], "no such folder"),
        ([], "give --config-file"),
        (["--model", "m", "--config-file", str(TINY_CONFIG)], "for a PyTorch model"),
        (["--config-file", "nowhere.yaml"], "nowhere.yaml"),
    ],
    ids=["missing-supports", "no-model", "both-models", "missing-config"],
)
def test_mistakes_end_the_tool_with_one_line(app, argv, message):
    with pytest.raises(SystemExit, match=message) as e:
        app.main(argv)
    assert str(e.value).startswith("app.py: error: ") and "\n" not in str(e.value)


def test_messages_are_escaped_and_numbered(app):
    a, b = app.message_html("<b> & x"), app.message_html("<b> & x")
    assert "&lt;b&gt; &amp; x" in a and a != b  # the same text twice: two messages
    assert app.message_html("bad", error=True).count("Error:") == 1
    assert app.message_html("") == ""


def test_the_page_has_the_fields_the_browser_tests_use(app, tmp_path):
    from fsod_deploy.app_state import ClassLibrary

    demo = app.build_ui(app.Pages(ClassLibrary(detector=None), str(tmp_path)), 0.3)
    ids = {block.elem_id for block in demo.blocks.values()}
    for elem_id in ("class-name", "example-files", "example-view", "example-boxes",
                    "add-class", "classes-message", "folder", "save-folder", "prototype-file",
                    "queries", "detect", "threshold", "detect-message", "detections-json",
                    "coco-file", "gallery", "count-file", "count-view", "count-boxes", "count",
                    "count-json", "count-message"):  # fmt: skip
        assert elem_id in ids, elem_id
