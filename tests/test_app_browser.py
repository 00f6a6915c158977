"""tools/app.py in a real browser: headless Chromium (the system's package) driven by Selenium
against the app on 127.0.0.1 with the tiny test model. The page's detections (its JSON field)
are compared, number for number, with tools/predict.py's on the same input; mistakes show a
message in the page and the app goes on serving."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from benchmarks.app_browser import AppPage, AppServer, chromium_driver, find_chromium
from fsod_d2.predictor import TorchDetector
from fsod_deploy.app_state import ClassLibrary, read_example
from fsod_deploy.support_folder import save_support_folder

from .common import TINY_CONFIG, get_tiny_cfg, load_tool
from .test_app_state import EXAMPLE_BOX, OPTS, QUERY_SQUARES, make_app_files

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        find_chromium() is None,
        reason="Chromium and chromedriver are not installed (apt-get install chromium "
        "chromium-driver; .ci/run installs them)",
    ),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    files = make_app_files(tmp_path_factory.mktemp("app_browser"))
    root = files["root"]  # and prototypes of other weights, for the refusal
    torch.manual_seed(1)
    DetectionCheckpointer(build_model(get_tiny_cfg(*OPTS)), save_dir=str(root)).save("other")
    cfg = get_tiny_cfg(*OPTS, "MODEL.WEIGHTS", str(root / "other.pth"))
    cfg.freeze()
    other = ClassLibrary(TorchDetector(cfg))
    other.add_class("square", [(read_example(files["example"]), [EXAMPLE_BOX])])
    files["other_npz"] = other.save_prototypes(str(root / "other_weights.npz"))
    return files


@pytest.fixture(scope="module")
def app(files):
    """The app on a free port (one thread, as the reference runs of tools/predict.py)."""
    args = ["--config-file", str(TINY_CONFIG), "--weights", files["weights"], *OPTS]
    with AppServer(args, str(files["root"] / "app.log"), env={"OMP_NUM_THREADS": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    web = chromium_driver(*find_chromium())
    yield web
    profile = getattr(web, "fsod_profile", "")
    web.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(app, browser):
    page = AppPage(browser, app.url)  # a new page: a new session of the app
    yield page
    server_log = app.output()
    assert "Traceback" not in server_log, server_log


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield 1
    torch.set_num_threads(before)


def _predict(files, out, supports, query, threshold):
    load_tool("predict").main(
        ["--config-file", str(TINY_CONFIG), "--weights", files["weights"],
         "--supports", str(supports), "--input", query, "--output", str(out),
         "--confidence-threshold", str(threshold), "--threads", "1", *OPTS]
    )  # fmt: skip
    with open(out / "detections.json") as f:
        return json.load(f)


def _shown(dataset, threshold):
    """predict.py's detections of its first image as the page lists them (score >= threshold)."""
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    return [
        (names[a["category_id"]], a["score"], [a["bbox"][0], a["bbox"][1],
         a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]])
        for a in dataset["annotations"] if a["image_id"] == 1 and a["score"] >= threshold
    ]  # fmt: skip


def _assert_same(page_detections, expected):
    assert [d["label"] for d in page_detections] == [e[0] for e in expected]
    np.testing.assert_allclose(
        [d["score"] for d in page_detections], [e[1] for e in expected], rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(
        [d["box"] for d in page_detections], [e[2] for e in expected], rtol=0, atol=1e-3
    )


def test_mistakes_show_a_message_and_the_app_goes_on(page, files):
    # runs first, on the fresh app: no class yet
    page.tab("Detect")
    page.set_files("queries", [files["query"]])
    page.click("detect")
    assert "no class to detect" in page.wait_message("detect-message", "Error:")

    page.tab("Classes")
    page.set_files("example-files", [files["text"]])
    message = page.wait_message("classes-message", "Error:")
    assert message.startswith("Error: notes.txt is not an image"), message
    page.set_text("class-name", "whole square")
    page.set_files("example-files", [files["example"]])
    page.wait_message("classes-message", "click two opposite corners")
    page.click_pixel("example-view", 40, 50)
    page.click_pixel("example-view", 40, 80)  # the same column: a box without area
    assert "box without area" in page.wait_message("classes-message", "Error:")
    page.upload("prototype-file", [files["other_npz"]])
    message = page.wait_message("classes-message", "other weights")
    assert message.startswith("Error: other_weights.npz were computed with other weights")
    page.click("add-class")  # no box: the whole image is the object
    page.wait_message("classes-message", "Added class 'whole square'")

    page.tab("Detect")
    page.set_files("queries", [files["text"]])
    page.click("detect")
    message = page.wait_message("detect-message", "Error:")
    assert message.startswith("Error: notes.txt is not an image"), message
    page.set_files("queries", [files["query"]])
    page.click("detect")
    data = page.wait(lambda: page.json("detections-json"), "detections")
    assert data["run"] == 1 and data["images"][0]["file_name"] == "query.png"
    assert data["images"][0]["detections"] and "whole square" in data["classes"]
    page.wait(lambda: page.gallery_ready("gallery"), "the drawn detections")


def test_page_shows_what_predict_detects(app, page, files, tmp_path, one_thread):
    page.set_text("class-name", "square")
    page.upload("example-files", [files["example"]])
    page.draw_box("example-view", EXAMPLE_BOX)
    boxes = page.wait(lambda: page.text("example-boxes"), "the drawn box")
    assert boxes == "example.png: " + ", ".join(str(v) for v in EXAMPLE_BOX)
    page.click("add-class")
    page.wait_message("classes-message", "Added class 'square'")
    page.set_text("folder", str(tmp_path / "saved"))
    page.click("save-folder")
    page.wait_message("classes-message", "Saved")

    page.tab("Detect")
    page.set_files("queries", [files["query"]])
    page.click("detect")
    data = page.wait(lambda: page.json("detections-json"), "detections")
    page.wait(lambda: page.gallery_ready("gallery"), "the drawn detections")
    threshold = data["threshold"]
    assert threshold == 0.3  # the app's default, predict.py's default

    # tools/predict.py with the folder the page saved: the same detections
    expected = _predict(files, tmp_path / "predicted", tmp_path / "saved", files["query"], 0.3)
    assert data["classes"] == [c["name"] for c in expected["categories"]]
    assert len(_shown(expected, threshold)) > 0
    _assert_same(data["images"][0]["detections"], _shown(expected, threshold))
    shot = tmp_path / "app.png"
    page.screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("FSOD_APP_SCREENSHOT"):
        shutil.copy(shot, os.environ["FSOD_APP_SCREENSHOT"])

    # the threshold redraws, without the model
    scores = sorted(d["score"] for d in data["images"][0]["detections"])
    higher = round(scores[len(scores) // 2] + 0.005, 2)
    page.set_slider("threshold", higher)
    redrawn = page.wait(
        lambda: (d := page.json("detections-json"))["threshold"] == higher and d, "a redraw"
    )
    assert redrawn["model_runs"] == data["model_runs"] and redrawn["run"] == data["run"]
    _assert_same(redrawn["images"][0]["detections"], _shown(expected, higher))

    # the COCO json download: predict.py's detections.json
    link = page.element("#coco-file a[href]").get_attribute("href")
    downloaded = json.loads(app.get(link))
    assert downloaded["categories"] == expected["categories"]
    assert downloaded["info"] == dict(expected["info"], unreadable_images=[], skipped_files=[])
    assert [im["file_name"] for im in downloaded["images"]] == ["query.png"]
    got, want = downloaded["annotations"], expected["annotations"]
    assert [a["category_id"] for a in got] == [a["category_id"] for a in want]
    np.testing.assert_allclose([a["bbox"] for a in got], [a["bbox"] for a in want], atol=1e-3)
    np.testing.assert_allclose([a["score"] for a in got], [a["score"] for a in want], atol=1e-5)


def test_counting_in_the_page_matches_predict(page, files, tmp_path, one_thread):
    page.tab("Count")
    page.upload("count-file", [files["query"]])
    for box in QUERY_SQUARES:
        page.draw_box("count-view", box)
        page.wait_message("count-message", f"box {', '.join(str(v) for v in box)}")
    assert page.text("count-boxes").splitlines() == [
        ", ".join(str(v) for v in b) for b in QUERY_SQUARES
    ]
    page.click("count")
    data = page.wait(lambda: page.json("count-json"), "the count")
    page.picture("count-result")
    with open(files["query"], "rb") as f:
        save_support_folder(
            str(tmp_path / "exemplars"), {"object": [("query.png", f.read(), QUERY_SQUARES)]}
        )
    expected = _predict(files, tmp_path / "out", tmp_path / "exemplars", files["query"], 0.3)
    shown = _shown(expected, data["threshold"])
    assert data["count"] == len(shown) > 0
    assert f"{len(shown)} objects like the 2 examples" in page.message("count-message")
    _assert_same(data["detections"], shown)


def test_latency_benchmark_times_clicks_and_the_model(files, tmp_path, monkeypatch, one_thread):
    from benchmarks import app_latency

    supports = tmp_path / "supports"
    with open(files["example"], "rb") as f:
        save_support_folder(str(supports), {"square": [("example.png", f.read(), [EXAMPLE_BOX])]})
    monkeypatch.setenv("FSOD_BENCH_OUT", str(tmp_path / "results"))
    shot = tmp_path / "page.png"
    payload = app_latency.main(
        ["--config-file", str(TINY_CONFIG), "--weights", files["weights"],
         "--supports", str(supports), "--image", files["query"], "--width", "300",
         "--repeats", "2", "--threads", "1", "--screenshot", str(shot), "--tag", "smoke", *OPTS]
    )  # fmt: skip
    saved = json.loads((tmp_path / "results" / "app_latency_smoke.json").read_text())
    assert saved == json.loads(json.dumps(payload))
    assert payload["image"] == [300, 240]  # 200 x 160 scaled to 300 px wide, aspect kept
    assert payload["classes"] == ["square"] and payload["app_threads"] == 1
    for key in ("click_to_result", "model_only"):
        times = payload["times_s"] if key == "click_to_result" else None
        summary = payload[key]
        assert summary["n"] == 2 and 0 < summary["min_s"] <= summary["median_s"] <= summary["max_s"]
        if times:
            assert summary["std_s"] == pytest.approx(float(np.std(times, ddof=1)))
    # paths are kept without the machine's folders
    assert payload["weights"] == os.path.join(files["root"].name, "model.pth")
    assert not any(part.startswith("/") for part in payload["command"].split())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
