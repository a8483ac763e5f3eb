"""The few-rows linear kernels: same products as F.linear, the fallbacks, and the verify-cost curves."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from specdecode import kernels

native = pytest.mark.skipif(kernels.backend() != "native", reason="the native kernel cannot be built here")


def _reference(x, w, b=None):
    return F.linear(x.double(), w.double(), None if b is None else b.double()).float()


@native
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 9, 17, 32])
@pytest.mark.parametrize("features", [8, 20, 576])
def test_native_kernel_matches_linear(rows, features):
    gen = torch.Generator().manual_seed(rows * 1000 + features)
    x = torch.randn(1, rows, features, generator=gen)
    w = torch.randn(37, features, generator=gen)
    b = torch.randn(37, generator=gen)
    with torch.inference_mode(), kernels.few_rows_linear(mode="native"):
        out = F.linear(x, w, b)
    assert out.shape == (1, rows, 37)
    # Another summation order than BLAS: equal to float32 rounding, not bit for bit.
    torch.testing.assert_close(out, _reference(x, w, b), rtol=1e-5, atol=1e-4)


@native
def test_native_kernel_is_used_and_leaves_other_calls_alone(monkeypatch):
    x = torch.randn(3, 64)
    w = torch.randn(16, 64)
    calls = []
    original = kernels._native_linear

    def spy(flat, weight):
        calls.append(tuple(flat.shape))
        return original(flat, weight)

    monkeypatch.setattr(kernels, "_native_linear", spy)
    with torch.inference_mode():
        with kernels.few_rows_linear(mode="native"):
            F.linear(x, w)  # used
            F.linear(torch.randn(kernels.MAX_ROWS + 1, 64), w)  # too many rows: BLAS
            F.linear(x.double(), w.double())  # not float32: torch path
            declined = F.linear(x, w.t().contiguous().t())  # non-contiguous weight: offered, declined
        F.linear(x, w)  # outside the block
    assert calls == [(3, 64), (3, 64)]
    torch.testing.assert_close(declined, _reference(x, w), rtol=1e-5, atol=1e-4)


@native
def test_native_kernel_declines_what_it_cannot_do():
    w = torch.randn(16, 64).t().contiguous().t()  # a transposed view
    assert kernels._native_linear(torch.randn(2, 64), w) is None


def test_torch_path_matches_linear():
    x = torch.randn(5, 48)
    w = torch.randn(24, 48)
    with torch.inference_mode(), kernels.few_rows_linear(mode="torch"):
        out = F.linear(x, w)
    torch.testing.assert_close(out, _reference(x, w), rtol=1e-5, atol=1e-4)


def test_gradients_keep_the_autograd_path():
    w = torch.randn(8, 16, requires_grad=True)
    with kernels.few_rows_linear():
        F.linear(torch.randn(2, 16), w).sum().backward()
    assert w.grad is not None and w.grad.shape == w.shape


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="few_rows_linear mode must be one of native, torch, off; got 'fast'"):
        with kernels.few_rows_linear(mode="fast"):
            pass


def test_a_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(kernels, "_native_state", "untried")
    monkeypatch.setattr(kernels, "_native_fn", None)
    monkeypatch.setattr(kernels, "_cpu_supported", lambda: True)
    monkeypatch.setattr(kernels, "MODE", "native")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kernels.backend() == "torch"
        assert kernels.backend() == "torch"
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "native few-rows linear kernel is unavailable" in messages[0]
    x, w = torch.randn(4, 32), torch.randn(8, 32)
    with torch.inference_mode(), kernels.few_rows_linear():
        torch.testing.assert_close(F.linear(x, w), _reference(x, w), rtol=1e-5, atol=1e-4)


def test_verify_cost_curves():
    curve = kernels.verify_cost("cpu")
    assert curve == kernels._CPU_VERIFY_COSTS[kernels.backend()]
    assert curve(0) == 1.0
    assert curve(1) == pytest.approx(1.0 + curve.jump + curve.per_token)
    assert curve(5) > curve(1) > 1.0
    assert kernels.verify_cost("meta") == kernels._CPU_VERIFY_COSTS["torch"]
    assert kernels.verify_cost("cpu", jump=0.0) == kernels.VerifyCost(0.0, curve.per_token)
    assert kernels.verify_cost("cpu", per_token=0.3) == kernels.VerifyCost(curve.jump, 0.3)
