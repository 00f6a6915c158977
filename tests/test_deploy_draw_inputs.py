"""fsod_deploy.draw (one colour per class, labels inside the image and apart) and
fsod_deploy.inputs (images found, other files listed, one line when nothing matches); both run
without torch."""

import subprocess
import sys

import numpy as np
import pytest

from fsod_deploy.draw import (
    class_color,
    draw_detections,
    label_layout,
    nothing_drawn_message,
)
from fsod_deploy.inputs import InputError, NoImagesError, find_images

from .common import REPO_ROOT

NAMES = ["black_bordered_flower_pattern", "disc", "square"]


def _mask_of(image, rgb):
    return np.all(image == np.array(rgb, dtype=np.uint8), axis=-1)


def test_one_colour_per_class_and_same_shape():
    image = np.zeros((200, 300, 3), np.uint8)
    boxes = np.array([[10, 60, 60, 120], [100, 60, 150, 120], [200, 60, 250, 120]])
    out = draw_detections(image, boxes, [0.9, 0.8, 0.7], [1, 1, 2], NAMES)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not image.any()  # the input is not drawn on
    disc, square = class_color(1), class_color(2)
    assert disc != square
    # left edges of the boxes: same class, same colour
    assert tuple(out[90, 10]) == disc and tuple(out[90, 100]) == disc
    assert tuple(out[90, 200]) == square
    bgr = draw_detections(image, boxes, [0.9, 0.8, 0.7], [1, 1, 2], NAMES, channel_order="BGR")
    np.testing.assert_array_equal(bgr[..., ::-1], out)  # the same picture in BGR
    assert draw_detections(image, np.zeros((0, 4)), [], [], NAMES).shape == image.shape


def test_labels_stay_inside_the_image_and_whole():
    h, w = 120, 200
    image = np.zeros((h, w, 3), np.uint8)
    # at the right edge with a long name, at the top edge, at the bottom-left corner
    boxes = np.array([[150, 50, 199, 100], [20, 0, 80, 30], [0, 90, 40, 119]], dtype=float)
    out = draw_detections(image, boxes, [0.87, 0.5, 0.6], [0, 1, 2], NAMES)
    for cls in (0, 1, 2):  # a filled label of each class's colour
        assert _mask_of(out, class_color(cls)).sum() > 50
    # the labels' rectangles, as draw_detections lays them out
    sizes = [(190, 20), (60, 20), (60, 20)]
    rects = label_layout(image.shape, boxes, sizes)
    assert (rects[:, [0, 1]] >= 0).all() and (rects[:, 2] <= w).all() and (rects[:, 3] <= h).all()
    assert [tuple(r[2:] - r[:2]) for r in rects] == sizes  # whole: not cut at the edge


def test_overlapping_detections_get_separate_labels():
    boxes = np.array([[100, 100, 200, 200]] * 5, dtype=float) + np.arange(5)[:, None] * 3
    rects = label_layout((400, 400, 3), boxes, [(80, 16)] * 5)
    for i in range(5):
        for j in range(i):
            a, b = rects[i], rects[j]
            overlap = a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
            assert not overlap, (a, b)
    # the first placed (best score) gets the preferred place: above its box
    assert tuple(rects[0]) == (100, 84, 180, 100)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        draw_detections(np.zeros((10, 10), np.uint8), np.zeros((0, 4)), [], [], [])
    with pytest.raises(ValueError, match="one of each per detection"):
        draw_detections(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 4)), [0.5], [0, 1], [])


def test_nothing_drawn_message_says_the_best_score_and_what_to_do():
    msg = nothing_drawn_message(0.126, "photos/cat.jpg", 0.3)
    assert "no detection reached --confidence-threshold 0.30" in msg
    assert "highest score is 0.13, in photos/cat.jpg" in msg
    assert "--confidence-threshold 0.12" in msg and "may not know this kind of object" in msg
    assert "no detection at all" in nothing_drawn_message(None, "", 0.3)


def test_find_images_lists_what_is_not_an_image(tmp_path):
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    for name in ("b.jpg", "a.PNG", "notes.txt", "sub/c.jpeg", "sub/clip.mp4"):
        (tmp_path / "photos" / name).write_bytes(b"x")
    (tmp_path / "one.webp").write_bytes(b"x")
    images, others = find_images(
        [str(tmp_path / "photos"), str(tmp_path / "one.webp"), str(tmp_path / "photos/*.jpg")]
    )
    p = tmp_path / "photos"
    expected = [p / "a.PNG", p / "b.jpg", p / "sub" / "c.jpeg", tmp_path / "one.webp"]
    assert images == [str(x) for x in expected]
    assert others == [str(p / "notes.txt"), str(p / "sub/clip.mp4")]


def test_find_images_one_line_errors(tmp_path):
    (tmp_path / "docs").mkdir()
    for name in ("a.txt", "b.pdf"):
        (tmp_path / "docs" / name).write_text("x")
    with pytest.raises(NoImagesError) as e:
        find_images([str(tmp_path / "docs")])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--input {tmp_path / 'docs'}: no image file")
    assert "only 2 other files" in msg and "a.txt" in msg
    with pytest.raises(NoImagesError, match="no image file .*, no file;"):
        (tmp_path / "empty").mkdir()
        find_images([str(tmp_path / "empty")])
    with pytest.raises(InputError, match=r"--input '.*nope\*\.jpg': no such file or folder"):
        find_images([str(tmp_path / "nope*.jpg")])


TORCH_FREE = """
import sys
sys.modules["torch"] = None  # any import of torch fails
import numpy as np
from fsod_deploy.draw import draw_detections
from fsod_deploy.inputs import find_images
out = draw_detections(np.zeros((50, 60, 3), np.uint8), [[5, 5, 30, 30]], [0.9], [0], ["x"])
assert out.shape == (50, 60, 3)
loaded = [m for m, mod in sys.modules.items() if mod is not None]
assert not any(m.split(".")[0] in ("torch", "detectron2", "fsod_d2") for m in loaded), loaded
print("ok")
"""


def test_drawing_and_inputs_need_no_torch():
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_FREE],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
