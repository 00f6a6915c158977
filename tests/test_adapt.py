"""K-shot adaptation: the config overlay, freezing, the K-shot set check, episodes from K-shot
sets, the benchmark's adaptation summary, and tools/adapt_model.py on a tiny model."""

import json
import logging
import math

import cv2
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from benchmarks import fewshot_quality
from fsod_d2.config import setup_cfg
from fsod_d2.data import build_episodic_train_loader, register_fewshot_coco
from fsod_d2.data.splits import dump_json, sample_kshot
from fsod_d2.engine import ConfigError, FsodTrainer, check_config
from fsod_d2.engine.adapt import (
    adaptation_overrides,
    freeze_parameters,
    frozen_prefixes,
    kshot_set_info,
    scheduled_cfg,
    support_folder_to_coco,
    training_shots,
)

from .common import CONFIG_DIR, TINY_CONFIG, get_tiny_cfg, load_tool, make_coco_dataset

ADAPT_CONFIG = CONFIG_DIR / "fsod_mnv2_cpu_adapt.yaml"
CATEGORY_IDS = (3, 7, 11, 20)


@pytest.fixture(autouse=True)
def restore_loggers():
    """The tools and benchmarks call detectron2's setup_logger, which stops the "fsod_d2" and
    "detectron2" loggers from propagating (caplog in later tests would see nothing)."""
    loggers = [logging.getLogger(n) for n in ("fsod_d2", "detectron2", "d2")]
    saved = [(lg, lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    threads = torch.get_num_threads()  # the schedule sweep sets its own
    yield
    torch.set_num_threads(threads)
    for lg, handlers, propagate, level in saved:
        lg.handlers[:] = handlers
        lg.propagate = propagate
        lg.setLevel(level)


def _register(name, path, image_root):
    for suffix in ("", "_base", "_novel"):
        if name + suffix in DatasetCatalog:
            DatasetCatalog.remove(name + suffix)
            MetadataCatalog.remove(name + suffix)
    register_fewshot_coco(name, str(path), str(image_root), [3, 7], [11, 20])


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt_data")
    json_path, image_root, data = make_coco_dataset(
        root, num_images=30, category_ids=CATEGORY_IDS, max_objects=2, image_size=(96, 128)
    )
    return {"root": root, "image_root": image_root, "coco": data, "json": json_path}


def _kshot(coco, tmp_path, k, name, edit=None):
    split = sample_kshot(coco["coco"], k, 0, source=coco["json"])
    if edit:
        edit(split)
    path = tmp_path / f"{name}.json"
    dump_json(split, str(path))
    _register(name, path, coco["image_root"])
    return path


def _adapt_cfg(*opts):
    cfg = get_tiny_cfg()
    cfg.defrost()
    cfg.merge_from_list(adaptation_overrides(str(ADAPT_CONFIG)) + list(opts))
    return cfg


# ------------------------------------------------------------------------------ config
def test_adapt_config_is_an_overlay_of_the_recipe_with_its_schedule():
    cfg = setup_cfg(str(ADAPT_CONFIG))
    recipe = setup_cfg(str(CONFIG_DIR / "fsod_mnv2_cpu.yaml"))
    assert cfg.MODEL.TORCHVISION.ARCH == recipe.MODEL.TORCHVISION.ARCH
    assert cfg.INPUT.MIN_SIZE_TEST == recipe.INPUT.MIN_SIZE_TEST
    assert 0 < cfg.SOLVER.MAX_ITER < recipe.SOLVER.MAX_ITER
    assert cfg.SOLVER.BASE_LR <= recipe.SOLVER.BASE_LR
    assert cfg.FSOD.ADAPT.FREEZE and cfg.FSOD.STRICT_SHOTS and cfg.FSOD.SUPPORT.QUERY_FALLBACK

    overrides = adaptation_overrides(str(ADAPT_CONFIG))
    keys = overrides[::2]
    assert "FSOD.ADAPT.FREEZE" in keys and "SOLVER.MAX_ITER" in keys
    # data, weights and output are not part of the adaptation; unchanged keys are not listed
    assert not [k for k in keys if k.startswith(("DATASETS.", "MODEL.WEIGHTS", "OUTPUT_DIR"))]
    assert "INPUT.MIN_SIZE_TEST" not in keys and "MODEL.TORCHVISION.ARCH" not in keys


def test_adapt_overlay_on_another_config_builds_a_model_with_frozen_parts():
    cfg = _adapt_cfg()
    assert cfg.INPUT.MIN_SIZE_TEST == get_tiny_cfg().INPUT.MIN_SIZE_TEST  # the model's own
    assert cfg.SOLVER.MAX_ITER == setup_cfg(str(ADAPT_CONFIG)).SOLVER.MAX_ITER
    model = FsodTrainer.build_model(cfg)
    params = dict(model.named_parameters())
    for prefix in cfg.FSOD.ADAPT.FREEZE:
        frozen = [n for n in params if n.startswith(prefix + ".")]
        assert frozen and not any(params[n].requires_grad for n in frozen)
    trains = [n for n, p in params.items() if p.requires_grad]
    assert trains and all(n.startswith(("proposal_generator.", "roi_heads.")) for n in trains)
    assert any(n.startswith("roi_heads.relation.") for n in trains)
    assert any(n.startswith("roi_heads.res5.") for n in trains)  # the per-box stage adapts
    assert not any(n.startswith("backbone.") for n in trains)


def test_freeze_refuses_a_prefix_that_matches_nothing():
    model = build_model(get_tiny_cfg())
    with pytest.raises(ValueError, match=r"FSOD.ADAPT.FREEZE: \['roi_head'\] match no parameter"):
        freeze_parameters(model, ["backbone", "roi_head"])
    assert freeze_parameters(model, []) == 0


def _trains(model, prefix):
    params = [p for n, p in model.named_parameters() if n.startswith(prefix + ".")]
    assert params
    return any(p.requires_grad for p in params)


def test_low_shot_sets_freeze_the_low_shot_parts(coco, tmp_path):
    """At most FSOD.ADAPT.LOW_SHOT_K shots per class (the smallest K of the K-shot training
    sets) freezes LOW_SHOT_FREEZE (the adapt config: res5 too), more freezes FREEZE."""
    _kshot(coco, tmp_path, 1, "adapt_low_1shot_seed0")
    _kshot(coco, tmp_path, 2, "adapt_low_2shot_seed0")
    cfg = _adapt_cfg()
    assert cfg.FSOD.ADAPT.LOW_SHOT_K >= 1
    assert "roi_heads.res5" in cfg.FSOD.ADAPT.LOW_SHOT_FREEZE
    assert "roi_heads.res5" not in cfg.FSOD.ADAPT.FREEZE

    cfg.DATASETS.TRAIN = ("adapt_low_1shot_seed0",)
    assert training_shots(cfg) == 1
    assert frozen_prefixes(cfg) == (cfg.FSOD.ADAPT.LOW_SHOT_FREEZE, "FSOD.ADAPT.LOW_SHOT_FREEZE")
    model = FsodTrainer.build_model(cfg)
    assert not _trains(model, "roi_heads.res5") and not _trains(model, "backbone")
    assert _trains(model, "roi_heads.relation")

    cfg.DATASETS.TRAIN = ("adapt_low_2shot_seed0",)
    assert training_shots(cfg) == 2
    assert frozen_prefixes(cfg) == (cfg.FSOD.ADAPT.FREEZE, "FSOD.ADAPT.FREEZE")
    assert _trains(FsodTrainer.build_model(cfg), "roi_heads.res5")

    cfg.DATASETS.TRAIN = ("adapt_low_2shot_seed0", "adapt_low_1shot_seed0")
    assert training_shots(cfg) == 1  # the fewest shots decide
    cfg.FSOD.ADAPT.LOW_SHOT_K = 0  # off: FREEZE at every K
    assert frozen_prefixes(cfg)[1] == "FSOD.ADAPT.FREEZE"

    _register("adapt_low_plain", coco["json"], coco["image_root"])
    cfg.FSOD.ADAPT.LOW_SHOT_K = 1
    cfg.DATASETS.TRAIN = ("adapt_low_plain",)  # not a K-shot set: FREEZE
    assert training_shots(cfg) is None and frozen_prefixes(cfg)[1] == "FSOD.ADAPT.FREEZE"
    MetadataCatalog.get("adapt_low_plain").set(kshot=1)  # as tools/adapt_model.py registers
    assert training_shots(cfg) == 1 and frozen_prefixes(cfg)[1] == "FSOD.ADAPT.LOW_SHOT_FREEZE"

    cfg.FSOD.ADAPT.LOW_SHOT_FREEZE = ["backbone", "roi_heads.res6"]
    with pytest.raises(ValueError, match=r"FSOD.ADAPT.LOW_SHOT_FREEZE: \['roi_heads.res6'\]"):
        FsodTrainer.build_model(cfg)


def test_iterations_grow_with_the_shots_of_the_kshot_set(coco, tmp_path):
    """max(SOLVER.MAX_ITER, FSOD.ADAPT.ITERS_PER_SHOT x K) iterations on K-shot sets; other
    trainings keep SOLVER.MAX_ITER. The trainer runs that many."""
    _kshot(coco, tmp_path, 1, "adapt_iters_1shot_seed0")
    _kshot(coco, tmp_path, 3, "adapt_iters_3shot_seed0")
    cfg = _adapt_cfg("SOLVER.MAX_ITER", 4, "FSOD.ADAPT.ITERS_PER_SHOT", 2)
    cfg.DATASETS.TRAIN = ("adapt_iters_1shot_seed0",)
    assert scheduled_cfg(cfg) is cfg  # 2 x 1 < 4
    cfg.DATASETS.TRAIN = ("adapt_iters_3shot_seed0",)
    longer = scheduled_cfg(cfg)
    assert longer.SOLVER.MAX_ITER == 6 and cfg.SOLVER.MAX_ITER == 4 and longer.is_frozen()
    assert scheduled_cfg(longer) is longer  # applied once
    cfg.FSOD.ADAPT.ITERS_PER_SHOT = 0
    assert scheduled_cfg(cfg) is cfg
    cfg.FSOD.ADAPT.ITERS_PER_SHOT = 2
    _register("adapt_iters_plain", coco["json"], coco["image_root"])
    cfg.DATASETS.TRAIN = ("adapt_iters_plain",)  # not a K-shot set
    assert scheduled_cfg(cfg) is cfg

    cfg.DATASETS.TRAIN = ("adapt_iters_3shot_seed0",)
    cfg.FSOD.SUPPORT.CACHE_DIR = str(tmp_path / "cache")
    cfg.FSOD.STRICT_SHOTS = False
    trainer = FsodTrainer(cfg)
    assert trainer.max_iter == 6 and trainer.cfg.SOLVER.MAX_ITER == 6


def test_adapt_config_grows_iterations_with_shots():
    cfg = setup_cfg(str(ADAPT_CONFIG))
    assert 0 < cfg.FSOD.ADAPT.ITERS_PER_SHOT < cfg.SOLVER.MAX_ITER  # 1 shot: MAX_ITER
    assert "FSOD.ADAPT.ITERS_PER_SHOT" in adaptation_overrides(str(ADAPT_CONFIG))[::2]


# ------------------------------------------------------------------------------ K-shot check
def test_kshot_set_info_reads_k_and_classes(coco, tmp_path):
    _kshot(coco, tmp_path, 2, "adapt_ok_2shot_seed0")
    info = kshot_set_info("adapt_ok_2shot_seed0")
    assert info["k"] == 2 and info["classes"] == [0, 1, 2, 3]
    assert kshot_set_info("adapt_ok_2shot_seed0_novel")["classes"] == [2, 3]
    _register("adapt_plain", coco["json"], coco["image_root"])
    assert kshot_set_info("adapt_plain") is None  # not a K-shot set: not checked


def test_kshot_set_with_a_missing_class_is_refused_naming_class_and_file(coco, tmp_path):
    def drop_class(split):
        split["annotations"] = [a for a in split["annotations"] if a["category_id"] != 11]

    path = _kshot(coco, tmp_path, 2, "adapt_missing_2shot_seed0", drop_class)
    for strict in (True, False):
        cfg = _adapt_cfg("FSOD.STRICT_SHOTS", strict)
        cfg.DATASETS.TRAIN = ("adapt_missing_2shot_seed0",)
        with pytest.raises(ConfigError, match="class11") as e:
            check_config(cfg)
        assert str(path) in str(e.value) and "no usable box" in str(e.value)


def test_kshot_set_short_of_k_is_refused_or_logged(coco, tmp_path, caplog):
    def drop_one(split):
        first = next(a for a in split["annotations"] if a["category_id"] == 20)
        split["annotations"].remove(first)

    path = _kshot(coco, tmp_path, 2, "adapt_short_2shot_seed0", drop_one)
    cfg = _adapt_cfg()  # the adapt config is strict
    cfg.DATASETS.TRAIN = ("adapt_short_2shot_seed0",)
    with pytest.raises(ConfigError, match=r"fewer than K=2 usable boxes .*\('class20', 1\)") as e:
        check_config(cfg)
    assert str(path) in str(e.value) and "FSOD.STRICT_SHOTS False" in str(e.value)

    cfg.FSOD.STRICT_SHOTS = False
    with caplog.at_level(logging.WARNING, logger="fsod_d2"):
        check_config(cfg)
    assert "class20" in caplog.text and str(path) in caplog.text
    assert "sampled with replacement" in caplog.text


def test_strict_one_shot_set_trains_with_query_fallback(coco, tmp_path):
    """A 1-shot set has every class in one image: with QUERY_FALLBACK (the adapt config) the
    strict shot checks count the query's own crops, so the loader builds episodes."""
    _kshot(coco, tmp_path, 1, "adapt_one_1shot_seed0")
    cfg = _adapt_cfg("FSOD.SUPPORT.CACHE_DIR", str(tmp_path / "cache"))
    cfg.DATASETS.TRAIN = ("adapt_one_1shot_seed0",)
    check_config(cfg)
    episode = next(iter(build_episodic_train_loader(cfg)))[0]
    assert len(episode["support_images"]) == cfg.FSOD.N_WAY * cfg.FSOD.K_SHOT
    cfg.FSOD.SUPPORT.QUERY_FALLBACK = False
    with pytest.raises(ValueError, match="STRICT_SHOTS"):
        build_episodic_train_loader(cfg)


# ------------------------------------------------------------------------------ benchmark
def test_adaptation_summary_targets_and_spread_over_trainings():
    def rows(method, train_seed, k, nap, bap, secs=None):
        out = []
        for seed, v in enumerate(nap):
            r = {m: 0.0 for m in fewshot_quality.METRICS}
            r.update(nAP50=v, bAP50=bap[seed])
            if secs is not None:
                r["adapt_seconds"] = secs
            out.append({"family": "shapes", "method": method, "k": k, "seed": seed,
                        "train_seed": train_seed, **r})  # fmt: skip
        return out

    data = []
    for t, shift in ((0, 0.0), (1, 2.0), (2, 4.0)):
        for k, base, gain in ((1, 20.0, 1.0), (5, 30.0, 6.0), (10, 32.0, 8.0)):
            nap = [base + shift - 1, base + shift, base + shift + 1]
            data += rows("fsod_pretrained", t, k, nap, [60.0, 60.0, 60.0])
            data += rows("fsod_adapted", t, k, [v + gain for v in nap], [59.0] * 3, 10.0 * k)
    summary = fewshot_quality.summarize(data)
    assert summary["shapes/fsod_adapted@5shot"]["nAP50"] == {"mean": 36.0, "std": 1.0, "n": 3}
    assert summary["shapes/fsod_adapted@5shot/train2"]["nAP50"]["mean"] == 40.0
    assert summary["shapes/fsod_adapted@10shot"]["adapt_seconds"]["mean"] == 100.0
    targets = fewshot_quality.adaptation_targets(summary, [1, 5, 10])
    assert sorted(targets) == ["shapes/train0", "shapes/train1", "shapes/train2"]
    t = targets["shapes/train1"]
    assert t["5shot_gain_nAP50"] == pytest.approx(6.0) and t["meets_5shot_gain_5"]
    assert t["meets_10shot_ge_5shot"] and t["meets_1shot_not_below"]
    assert t["5shot_bAP50_drop"] == pytest.approx(1.0) and t["meets_bAP50_drop_le_2"]
    # a training measured at 5 shots only is judged there, not failed for the other K
    five = [r for r in data if r["train_seed"] == 0 or r["k"] == 5]
    only5 = fewshot_quality.adaptation_targets(fewshot_quality.summarize(five), [1, 5, 10])
    assert set(only5["shapes/train1"]) == {
        "5shot_gain_nAP50", "5shot_bAP50_drop", "meets_5shot_gain_5", "meets_bAP50_drop_le_2"
    }  # fmt: skip
    assert only5["shapes/train0"] == targets["shapes/train0"]
    spread = fewshot_quality.over_trainings(data)["shapes/fsod_adapted@5shot"]
    assert spread["trainings"] == [0, 1, 2]
    assert spread["nAP50"]["mean"] == pytest.approx(38.0)
    assert spread["nAP50"]["std"] == pytest.approx(2.0)  # sample std of 36, 38, 40
    assert spread["nAP50"]["draw_std_mean"] == pytest.approx(1.0)
    table = fewshot_quality.markdown_adapt_table(summary, [1, 5, 10]).splitlines()
    assert len(table) == 2 + 6
    assert table[3].startswith("| shapes | SEED 0 | fsod_adapted | 21.00 ± 1.00 | 36.00 ± 1.00")
    assert table[3].endswith("| 10 / 50 / 100 |")


# ------------------------------------------------------------------------------ the tool
@pytest.fixture(scope="module")
def adapt_main():
    return load_tool("adapt_model").main


@pytest.fixture(scope="module")
def support_folder(coco, tmp_path_factory):
    """Two classes: one of photos with a box file, one of whole-image crops; and base weights
    of a (randomly initialised) tiny model."""
    root = tmp_path_factory.mktemp("adapt_tool")
    data = coco["coco"]
    files = {im["id"]: im["file_name"] for im in data["images"]}
    supports = root / "supports"
    for cid in (3, 7):
        d = supports / f"class{cid}"
        d.mkdir(parents=True)
        boxes = {}
        anns = [a for a in data["annotations"] if a["category_id"] == cid][:3]
        for i, a in enumerate(anns):
            img = cv2.imread(f"{coco['image_root']}/{files[a['image_id']]}")
            x, y, w, h = a["bbox"]
            if cid == 3:
                cv2.imwrite(str(d / f"shot{i}.png"), img)
                boxes[f"shot{i}.png"] = [x, y, x + w, y + h]
            else:
                cv2.imwrite(str(d / f"shot{i}.jpg"), img[int(y) : int(y + h), int(x) : int(x + w)])
        if boxes:
            (d / "boxes.json").write_text(json.dumps(boxes))
    torch.manual_seed(0)
    model = build_model(get_tiny_cfg())
    DetectionCheckpointer(model, save_dir=str(root)).save("base")
    return {"supports": supports, "weights": root / "base.pth"}


def test_support_folder_becomes_a_coco_training_set(support_folder):
    cfg = get_tiny_cfg()
    coco = support_folder_to_coco(
        str(support_folder["supports"]), size=64, context=4, image_format="BGR", k_shot=2
    )
    assert [c["name"] for c in coco["categories"]] == ["class3", "class7"]
    per_class = {c: [a for a in coco["annotations"] if a["category_id"] == c] for c in (1, 2)}
    assert len(per_class[1]) == 2 and len(per_class[2]) == 2
    images = {im["id"]: im for im in coco["images"]}
    crop = images[per_class[2][0]["image_id"]]  # a whole-image crop: the box is the image
    assert per_class[2][0]["bbox"] == [0.0, 0.0, float(crop["width"]), float(crop["height"])]
    assert crop["file_name"].startswith("class7/")
    photo = images[per_class[1][0]["image_id"]]
    assert (photo["width"], photo["height"]) == (128, 96)
    assert per_class[1][0]["bbox"][2] < 128  # the box of boxes.json, not the whole photo
    assert cfg.FSOD.SUPPORT.SIZE == 64


@pytest.mark.parametrize("what", ["weights", "supports"])
def test_adapt_model_refuses_missing_input_in_one_line(adapt_main, support_folder, tmp_path, what):
    args = ["--config-file", str(TINY_CONFIG), "--output", str(tmp_path / "out")]
    weights = tmp_path / "none.pth" if what == "weights" else support_folder["weights"]
    supports = tmp_path / "nosupports" if what == "supports" else support_folder["supports"]
    args += ["--weights", str(weights), "--supports", str(supports)]
    with pytest.raises(SystemExit) as e:
        adapt_main(args)
    message = str(e.value)
    assert message.startswith("adapt_model.py: error:") and "\n" not in message
    assert str(weights if what == "weights" else supports) in message


@pytest.mark.slow
def test_adapt_model_writes_an_adapted_model_that_predict_uses(
    adapt_main, support_folder, tmp_path
):
    out = tmp_path / "adapted"
    record = adapt_main(
        ["--config-file", str(TINY_CONFIG), "--weights", str(support_folder["weights"]),
         "--supports", str(support_folder["supports"]), "--output", str(out),
         "SOLVER.MAX_ITER", "2", "FSOD.ADAPT.ITERS_PER_SHOT", "1", "SOLVER.WARMUP_ITERS", "0",
         "SOLVER.BASE_LR", "0.01"]
    )  # fmt: skip
    # 3 shots per class x FSOD.ADAPT.ITERS_PER_SHOT 1 > SOLVER.MAX_ITER 2
    assert record["classes"] == ["class3", "class7"] and record["iterations"] == 3
    assert record["shots"] == {"class3": 3, "class7": 3} and record["seconds"] > 0
    assert record["frozen"] == list(setup_cfg(str(ADAPT_CONFIG)).FSOD.ADAPT.FREEZE)  # K = 3
    saved = json.loads((out / "adaptation.json").read_text())
    assert saved["weights"] == str(out / "model_final.pth")
    adapted = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    base = torch.load(support_folder["weights"], map_location="cpu", weights_only=False)["model"]
    frozen = [k for k in base if k.startswith("backbone.")]
    trained = [k for k in base if k.startswith("roi_heads.relation.")]
    res5 = [k for k in base if k.startswith("roi_heads.res5.") and "weight" in k]
    assert frozen and all(torch.equal(adapted[k], base[k]) for k in frozen)
    assert any(not torch.equal(adapted[k], base[k]) for k in trained)
    assert res5 and any(not torch.equal(adapted[k], base[k]) for k in res5)
    assert all(math.isfinite(float(adapted[k].abs().sum())) for k in trained)
    assert "FREEZE" in (out / "config.yaml").read_text()

    one = adapt_main(
        ["--config-file", str(TINY_CONFIG), "--weights", str(support_folder["weights"]),
         "--supports", str(support_folder["supports"]), "--output", str(tmp_path / "one"),
         "--k-shot", "1", "SOLVER.MAX_ITER", "2", "FSOD.ADAPT.ITERS_PER_SHOT", "1",
         "SOLVER.WARMUP_ITERS", "0"]
    )  # fmt: skip
    assert one["shots"] == {"class3": 1, "class7": 1}
    assert one["frozen"] == list(setup_cfg(str(ADAPT_CONFIG)).FSOD.ADAPT.LOW_SHOT_FREEZE)
    one_shot = torch.load(tmp_path / "one" / "model_final.pth", weights_only=False)["model"]
    assert all(torch.equal(one_shot[k], base[k]) for k in res5)  # res5 frozen at one shot

    predict = load_tool("predict")
    queries = sorted((support_folder["supports"] / "class3").glob("*.png"))[:1]
    dataset = predict.main(
        ["--config-file", str(TINY_CONFIG), "--weights", str(out / "model_final.pth"),
         "--supports", str(support_folder["supports"]), "--input", str(queries[0]),
         "--output", str(tmp_path / "pred")]
    )  # fmt: skip
    assert [c["name"] for c in dataset["categories"]] == ["class3", "class7"]


@pytest.mark.slow
def test_fewshot_quality_adapted_arm_and_schedule_sweep_smoke(tmp_path, monkeypatch):
    """The adaptation arm and the dev-set schedule sweep shrunk to seconds (2 iterations, a few
    images, random backbone weights): rows without and with adaptation per (K, draw) from one
    base model, adaptation seconds, targets; the sweep reuses that base model."""
    from benchmarks import adapt_schedule

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    out = tmp_path / "out"
    tiny = ["--num-train", "80", "--num-val", "3"]
    argv = ["--family", "shapes", "--arm", "fsod_adapted", "--shots", "1", "--seeds", "0", "1"]
    argv += tiny + ["--out-dir", str(out), "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0"]
    argv += ["SOLVER.STEPS", "()", "MODEL.TORCHVISION.WEIGHTS", ""]  # nothing downloaded
    argv += ["FSOD.ADAPT.ITERS_PER_SHOT", "0"]  # SOLVER.MAX_ITER at every K
    report = fewshot_quality.main(argv)
    runs = json.loads((out / "cells" / "shapes_fsod_adapted.json").read_text())["runs"]
    assert [(r["method"], r["seed"]) for r in runs] == [
        ("fsod_pretrained", 0), ("fsod_adapted", 0), ("fsod_pretrained", 1),
        ("fsod_adapted", 1),
    ]  # fmt: skip
    assert all(r["adapt_seconds"] > 0 for r in runs if r["method"] == "fsod_adapted")
    assert report["summary"]["shapes/fsod_adapted@1shot"]["nAP50"]["n"] == 2
    assert "meets_1shot_not_below" in report["adaptation_targets"]["shapes/train0"]
    base = out / "fewshot_quality_work" / "shapes_fsod_pretrained" / "model_final.pth"
    assert base.is_file()  # the base model is the fsod_pretrained cell's

    sweep = adapt_schedule.main(
        ["--work", str(out), "--family", "shapes", "--candidates", "config", "lr_3e-4",
         "--shots", "1", "--dev-images", "2", "--dev-seed", "7", *tiny, *argv[-10:]]
    )  # fmt: skip
    cands = [r["candidate"] for r in sweep["results"]["shapes"]["rows"]]
    assert cands == ["none", "config", "lr_3e-4"]
    assert "nAP50_gain" in sweep["summary"]["shapes/config@1shot"]
    assert (out / "adapt_schedule.json").is_file()


def test_single_shot_note_names_the_classes_with_one_example():
    from fsod_d2.engine.adapt import single_shot_note

    assert single_shot_note({"gear": 3, "spring": 5}) is None
    every = single_shot_note({"gear": 1, "spring": 1})
    assert every.startswith("every class has one example")
    some = single_shot_note({"gear": 1, "spring": 4, "bolt": 1})
    assert some.startswith("bolt, gear: only one example") and "spring" not in some
