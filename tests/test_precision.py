"""Mixed precision: the autocast dtype choice and the float16-safe early RPN head."""

import pytest
import torch
from detectron2.modeling import build_model

import fsod_d2.modeling.attention_rpn as attention_rpn
from fsod_d2.engine.precision import needs_grad_scaler, resolve_amp_dtype
from tests.common import get_tiny_cfg


@pytest.mark.parametrize(
    "setting, device, bf16, expected",
    [
        ("auto", "cuda", True, torch.bfloat16),
        ("auto", "cuda", False, torch.float16),
        ("float16", "cuda", True, torch.float16),
        ("bfloat16", "cuda:1", True, torch.bfloat16),
        ("auto", "cpu", None, torch.bfloat16),
        ("float16", "cpu", None, torch.bfloat16),
        ("BFloat16", "cpu", None, torch.bfloat16),
    ],
)
def test_amp_dtype_choice(setting, device, bf16, expected):
    assert resolve_amp_dtype(setting, device, bf16_supported=bf16) == expected


def test_amp_dtype_errors_name_the_key():
    with pytest.raises(ValueError, match="FSOD.ENGINE.AMP_DTYPE"):
        resolve_amp_dtype("fp8", "cuda", bf16_supported=True)
    with pytest.raises(ValueError, match="does not support bfloat16"):
        resolve_amp_dtype("bfloat16", "cuda", bf16_supported=False)


def test_grad_scaler_only_for_float16_on_cuda():
    assert needs_grad_scaler(torch.float16, "cuda")
    assert not needs_grad_scaler(torch.bfloat16, "cuda")
    assert not needs_grad_scaler(torch.float16, "cpu")


def test_amp_trainer_uses_the_configured_precision_and_scaler():
    from fsod_d2.engine.trainer import FsodAMPTrainer

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = FsodAMPTrainer(model, [], opt, precision=torch.bfloat16)
    assert trainer.precision == torch.bfloat16 and not trainer.grad_scaler.is_enabled()


def _head_and_inputs(scale: float):
    torch.manual_seed(0)
    head = build_model(get_tiny_cfg()).proposal_generator.rpn_head
    channels = head.conv.weight.shape[1]
    # products of two such maps exceed float16's largest value (65504)
    x = torch.rand(2, channels, 6, 7) * scale
    kernels = torch.rand(2, 3, channels) * scale
    return head, x, kernels


def test_early_rpn_product_runs_in_float32_under_float16_autocast():
    head, x, kernels = _head_and_inputs(400.0)
    assert ((x[:, None] * kernels[..., None, None]).amax() > torch.finfo(torch.float16).max).item()
    ref_logits, ref_deltas = head([x], kernels)
    with torch.autocast("cpu", dtype=torch.float16):
        logits, deltas = head([x], kernels)
    for out, ref in ((logits[0], ref_logits[0]), (deltas[0], ref_deltas[0])):
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert torch.allclose(out, ref, rtol=0, atol=2e-3 * ref.abs().max().item())


def test_unscaled_early_rpn_overflows_in_float16(monkeypatch):
    """What the scaled path prevents: the same inputs through the plain head in float16."""
    head, x, kernels = _head_and_inputs(400.0)
    monkeypatch.setattr(attention_rpn, "_fp16_autocast", lambda device_type: False)
    with torch.autocast("cpu", dtype=torch.float16):
        logits, _ = head([x], kernels)
    assert not torch.isfinite(logits[0]).all()


def test_early_rpn_scaled_path_trains():
    head, x, kernels = _head_and_inputs(1.0)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.float16):
        logits, deltas = head([x], kernels)
    (logits[0].sum() + deltas[0].sum()).backward()
    assert torch.isfinite(x.grad).all() and head.conv.weight.grad.abs().sum() > 0
