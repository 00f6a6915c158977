"""Host-to-device transfers: uint8 images normalized after the copy, channels-last option."""

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from fsod_d2.modeling.transfer import instances_to_device, to_device
from tests.common import get_tiny_cfg, synthetic_episode


def _model(*opts):
    torch.manual_seed(0)
    return build_model(get_tiny_cfg(*opts))


def test_support_images_stay_uint8_until_normalized_on_the_device():
    model = _model()
    crops = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    out = model._normalize(crops)
    ref = (crops.float() - model.pixel_mean) / model.pixel_std
    assert out.dtype == torch.float32 and torch.allclose(out, ref)


def test_to_device_keeps_values_and_instances_fields():
    inst = Instances((10, 12), gt_boxes=Boxes(torch.rand(2, 4)), gt_classes=torch.tensor([1, 0]))
    moved = instances_to_device(inst, "cpu")
    assert moved.image_size == (10, 12)
    assert torch.equal(moved.gt_boxes.tensor, inst.gt_boxes.tensor)
    assert torch.equal(moved.gt_classes, inst.gt_classes)
    t = torch.arange(5, dtype=torch.uint8)
    assert to_device(t, torch.device("cpu")).dtype == torch.uint8


def test_channels_last_model_computes_the_same_losses():
    cfg = get_tiny_cfg()
    rng = np.random.default_rng(0)
    batch = [synthetic_episode(cfg, rng, [0, 1], [1, 2, 0])]
    plain, nhwc = _model(), _model("MODEL.FSOD.CHANNELS_LAST", True)
    nhwc.load_state_dict(plain.state_dict())
    weights = [p for p in nhwc.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    losses = []
    for model in (plain, nhwc):
        model.train()
        torch.manual_seed(1)
        with EventStorage(0):
            losses.append({k: float(v) for k, v in model(batch).items()})
    for k in losses[0]:
        assert np.isclose(losses[0][k], losses[1][k], rtol=1e-4, atol=1e-5), k
