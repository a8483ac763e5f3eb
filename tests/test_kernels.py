"""The few-rows linear kernels: same products as F.linear, the fallbacks, and the verify-cost curves."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from specdecode import costs, kernels

native = pytest.mark.skipif(kernels.backend() != "native", reason="the native kernel cannot be built here")


def _reference(x, w, b=None):
    return F.linear(x.double(), w.double(), None if b is None else b.double()).float()


@native
@pytest.mark.parametrize("rows", [5, 8, 9, 13, 17, 32])
def test_a_rows_result_does_not_depend_on_the_rows_beside_it(rows):
    """Rows are grouped (9 rows: 5 + 4) only to share weight reads: each row's sums are bit-identical to the same row
    alone, which is what keeps a verify pass's logits independent of how many drafts ride along."""
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 576, generator=gen)
    w = torch.randn(300, 576, generator=gen)
    with torch.inference_mode(), kernels.few_rows_linear(mode="native"):
        together = kernels.linear(x, w)
        alone = torch.cat([kernels.linear(x[i : i + 1], w) for i in range(rows)])
    assert torch.equal(together, alone)


@native
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 9, 17, 32])
@pytest.mark.parametrize("features", [8, 20, 576])
def test_native_kernel_matches_linear(rows, features):
    gen = torch.Generator().manual_seed(rows * 1000 + features)
    x = torch.randn(1, rows, features, generator=gen)
    w = torch.randn(37, features, generator=gen)
    b = torch.randn(37, generator=gen)
    with torch.inference_mode(), kernels.few_rows_linear(mode="native"):
        out = kernels.linear(x, w, b)
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
            kernels.linear(x, w)  # used
            kernels.linear(torch.randn(kernels.MAX_ROWS + 1, 64), w)  # too many rows: BLAS
            kernels.linear(x.double(), w.double())  # not float32: offered, declined
            declined = kernels.linear(x, w.t().contiguous().t())  # non-contiguous weight: offered, declined
            F.linear(x, w)  # torch's own function is never replaced
        kernels.linear(x, w)  # outside the block
    assert calls == [(3, 64), (3, 64), (3, 64)]
    torch.testing.assert_close(declined, _reference(x, w), rtol=1e-5, atol=1e-4)


@native
def test_native_kernel_declines_what_it_cannot_do():
    """The C function reads raw pointers: every tensor it would misread is turned away before it is called."""
    w = torch.randn(16, 64)
    assert kernels._native_linear(torch.randn(2, 64), w.t().contiguous().t()) is None  # a transposed view
    assert kernels._native_linear(torch.randn(2, 63), w) is None  # features do not match
    assert kernels._native_linear(torch.randn(2, 64).double(), w) is None
    assert kernels._native_linear(torch.randn(2, 64), w.double()) is None
    assert kernels._native_linear(torch.randn(2, 2, 64), w) is None  # not [rows, features]
    assert kernels._native_linear(torch.randn(kernels.MAX_ROWS + 1, 64), w) is None
    assert kernels._native_linear(torch.randn(0, 64), w) is None
    assert kernels._native_linear(torch.randn(2, 64), w) is not None


@native
def test_scoped_to_the_models_linear_layers_and_restored():
    """Only the given models' plain nn.Linear layers are routed, only inside the block, and they are restored
    also when an exception escapes."""

    class Custom(torch.nn.Linear):
        def forward(self, input):
            return super().forward(input) * 2

    model = torch.nn.Sequential(torch.nn.Linear(64, 16), Custom(16, 16))
    other = torch.nn.Linear(64, 16)
    x = torch.randn(2, 64)
    seen = []
    original = kernels._native_linear

    def spy(flat, weight):
        seen.append(weight.shape[1])
        return original(flat, weight)

    kernels._native_linear, saved = spy, kernels._native_linear
    try:
        with torch.inference_mode():
            with pytest.raises(RuntimeError, match="escapes"):
                with kernels.few_rows_linear(model, mode="native"):
                    assert "forward" in model[0].__dict__ and "forward" not in model[1].__dict__
                    with kernels.few_rows_linear(model, mode="native"):  # nested: the outer block restores
                        pass
                    assert "forward" in model[0].__dict__
                    expected = model[1](F.linear(x, model[0].weight, model[0].bias))
                    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-4)
                    other(x)  # not in the block's models
                    raise RuntimeError("escapes")
            assert "forward" not in model[0].__dict__
            model(x)  # after the block: transformers' own product again
    finally:
        kernels._native_linear = saved
    assert seen == [64]


def test_native_kernel_builds_where_expected():
    """Where the CPU supports the kernel and a C compiler is found, the default path must be the native one:
    a build that silently failed would leave every benchmark and the default loop on the slower path."""
    import shutil

    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if kernels.MODE != "native" or not kernels._cpu_supported() or compiler is None:
        pytest.skip(f"the native kernel is not expected here (mode {kernels.MODE}, compiler {compiler})")
    assert kernels.backend() == "native"


def test_torch_path_matches_linear():
    x = torch.randn(5, 48)
    w = torch.randn(24, 48)
    with torch.inference_mode(), kernels.few_rows_linear(mode="torch"):
        out = kernels.linear(x, w)
    torch.testing.assert_close(out, _reference(x, w), rtol=1e-5, atol=1e-4)


def test_gradients_keep_the_autograd_path():
    w = torch.randn(8, 16, requires_grad=True)
    with kernels.few_rows_linear():
        kernels.linear(torch.randn(2, 16), w).sum().backward()
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
        torch.testing.assert_close(kernels.linear(x, w), _reference(x, w), rtol=1e-5, atol=1e-4)


def test_verify_cost_curves():
    curve = costs.verify_cost("cpu")
    assert curve == costs._CPU_VERIFY_COSTS[kernels.backend()]
    assert curve(0) == 1.0
    assert curve(1) == pytest.approx(1.0 + curve.jump + curve.per_token)
    assert curve(5) > curve(1) > 1.0
    assert costs.verify_cost("meta") == costs._CPU_VERIFY_COSTS["torch"]
    assert costs.verify_cost("cpu", jump=0.0) == curve._replace(jump=0.0)
    assert costs.verify_cost("cpu", per_token=0.3) == curve._replace(per_token=0.3)
