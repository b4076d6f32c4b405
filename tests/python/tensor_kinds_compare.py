"""Equality of sparse, quantized and meta tensors with what torch.load gives."""

import torch


def _bits(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same_kind(got, want, path):
    """`got` is exactly `want`: layout, coalesced flag, qscheme and quantizer, data, flags."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} vs {type(want).__name__}"
    assert got.layout == want.layout, f"{path}: layout {got.layout} vs {want.layout}"
    assert got.dtype == want.dtype and got.shape == want.shape, f"{path}: dtype/shape differ"
    assert got.device == want.device, f"{path}: device {got.device} vs {want.device}"
    assert got.requires_grad == want.requires_grad, f"{path}: requires_grad differs"
    if want.layout == torch.sparse_coo:
        assert got.is_coalesced() == want.is_coalesced(), f"{path}: coalesced flag differs"
        assert _bits(got._indices()) == _bits(want._indices()), f"{path}: indices differ"
        assert _bits(got._values()) == _bits(want._values()), f"{path}: values differ"
    elif want.layout != torch.strided:
        for part in ("crow_indices", "col_indices", "values"):
            g, w = getattr(got, part)(), getattr(want, part)()
            assert g.dtype == w.dtype and _bits(g) == _bits(w), f"{path}: {part} differ"
    elif want.is_quantized:
        assert got.qscheme() == want.qscheme(), f"{path}: qscheme differs"
        assert _bits(got.int_repr()) == _bits(want.int_repr()), f"{path}: integers differ"
        if want.qscheme() == torch.per_tensor_affine:
            assert got.q_scale() == want.q_scale() and got.q_zero_point() == want.q_zero_point()
        else:
            assert got.q_per_channel_axis() == want.q_per_channel_axis(), f"{path}: axis"
            assert torch.equal(got.q_per_channel_scales(), want.q_per_channel_scales())
            assert torch.equal(got.q_per_channel_zero_points(), want.q_per_channel_zero_points())
    elif want.device.type == "meta":
        assert got.stride() == want.stride(), f"{path}: stride {got.stride()} vs {want.stride()}"
    else:
        raise AssertionError(f"{path}: not a sparse, quantized or meta tensor")


def is_other_kind(t):
    return t.layout != torch.strided or t.is_quantized or t.device.type == "meta"
