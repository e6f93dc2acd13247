import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from qsal.checkpoint import load_training_state
from qsal.data import TASK_BINARY
from qsal.errors import QsalError
from qsal.models import create_model
from qsal.quant import PACTConfig, QATConfig, quantize
from qsal.saliency import SaliencyGuidedStep, input_saliency, mask_lowest
from qsal.train import ClassificationStep, TrainConfig, fit


def test_mask_replaces_exactly_the_k_lowest_pixels_in_every_channel():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    sal = torch.arange(16.0).view(1, 4, 4).expand(2, 4, 4)
    out = mask_lowest(x, sal, 0.25, fill="min")
    changed = (out != x).any(dim=1)  # (N, H, W)
    assert changed.sum(dim=(1, 2)).tolist() == [3, 3]  # 4 pixels masked; the minimum pixel is its own fill
    assert torch.equal(out[:, :, 0, :4], x.amin(dim=(2, 3))[:, :, None].expand(2, 3, 4))  # first row = 4 lowest
    mean = mask_lowest(x, sal, 0.25, fill="mean")
    assert torch.allclose(mean[:, :, 0, 0], x.mean(dim=(2, 3)))
    rnd = mask_lowest(x, sal, 0.5, fill="random", generator=torch.Generator().manual_seed(0))
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    assert ((rnd >= lo) & (rnd <= hi)).all()  # values from each image's own range, per channel
    assert ((rnd != x).any(dim=1).sum(dim=(1, 2)) == 8).all()


def test_mask_count_is_the_authors_floor():
    x, sal = torch.randn(1, 1, 28, 28), torch.randn(1, 28, 28)
    out = mask_lowest(x, sal, 0.3, fill="random", generator=torch.Generator().manual_seed(0))
    assert int((out != x).sum()) == int(0.3 * 784) == 235  # round() would give 235 too; floor at 0.29:
    out = mask_lowest(x, sal, 0.29, fill="random", generator=torch.Generator().manual_seed(0))
    assert int((out != x).sum()) == int(0.29 * 784) == 227


def test_default_saliency_is_the_gradient_of_log_softmax_of_the_label():
    # a linear model z = W x: d log softmax(z)_y / dx = W_y - sum_j p_j W_j (by hand), d z_y / dx = W_y
    torch.manual_seed(0)
    lin = nn.Linear(16, 3)
    model = nn.Sequential(nn.Flatten(), lin)
    x, y = torch.randn(4, 1, 4, 4), torch.tensor([0, 2, 1, 2])
    W = lin.weight.detach()
    p = F.softmax(model(x), dim=1).detach()
    by_hand = (W[y] - p @ W).view(4, 4, 4)
    assert torch.allclose(input_saliency(model, x, y, TASK_BINARY), by_hand, atol=1e-6)
    assert torch.allclose(input_saliency(model, x, y, TASK_BINARY, target="logit"), W[y].view(4, 4, 4))
    assert torch.allclose(input_saliency(model, x, y, TASK_BINARY, absolute=True), by_hand.abs(), atol=1e-6)
    assert SaliencyGuidedStep(TASK_BINARY).describe()["target"] == "log_softmax"
    assert SaliencyGuidedStep(TASK_BINARY, target="logit").describe()["target"] == "logit"
    with pytest.raises(QsalError, match="saliency target"):
        SaliencyGuidedStep(TASK_BINARY, target="probability")


def test_absolute_is_taken_after_the_channel_mean_as_the_authors():
    model = create_model("small_cnn", 2, 3, seed=0).eval()
    x, y = torch.randn(2, 3, 28, 28), torch.tensor([0, 1])
    signed = input_saliency(model, x, y, TASK_BINARY)
    assert torch.equal(input_saliency(model, x, y, TASK_BINARY, absolute=True), signed.abs())


def test_sgt_kl_is_the_authors_kl_of_clean_to_masked():
    logits, masked = torch.randn(5, 3), torch.randn(5, 3)
    p, q = F.softmax(logits, 1), F.softmax(masked, 1)
    from qsal.saliency.guided import _output_kl

    assert torch.allclose(_output_kl(logits, masked, TASK_BINARY), (p * (p.log() - q.log())).sum(1).mean(), atol=1e-6)


def _buffers(model):
    return {k: v.clone() for k, v in model.named_buffers()}


def _one_step(model, step, x, y):
    torch.manual_seed(1)  # same global state (dropout) for both steps
    model.train()
    out = step(model, x, y)
    out["loss"].backward()  # the masked pass must not break autograd (in-place state updates would)
    return _buffers(model)


@pytest.mark.parametrize("quant", [None, "qat", "pact"])
def test_sgt_step_leaves_module_state_as_a_plain_step_does(tiny_splits, quant):
    """BN running statistics (and QAT's moving-average ranges) after one SGT step equal those after one
    plain step on the same batch: the masked pass changes no module state."""
    train, _, _ = tiny_splits
    x, y = train.tensors()
    x, y = x[:8], y[:8]
    base = create_model("resnet20", 2, 1, seed=0)
    if quant == "qat":
        base = quantize(base, QATConfig(bits=8, num_calibration=16, fold_bn=False), train)  # BN kept: it is what is tested
    elif quant == "pact":
        base = quantize(base, PACTConfig(bits=4, num_calibration=16, fold_bn=False), train)
    start = _buffers(base)
    plain = _one_step(base, ClassificationStep(TASK_BINARY), x, y)
    base.load_state_dict({**base.state_dict(), **start})
    sgt = _one_step(base, SaliencyGuidedStep(TASK_BINARY, k=0.5), x, y)
    moved = [k for k in plain if "running_mean" in k and not torch.equal(plain[k], start[k])]
    assert moved  # the plain step did update BN statistics ...
    assert all(torch.equal(plain[k], sgt[k]) for k in plain), [k for k in plain if not torch.equal(plain[k], sgt[k])]
    if quant == "qat":  # ... and QAT's observer ranges
        assert any(k.endswith(".range") and not torch.equal(plain[k], start[k]) for k in plain)


def test_sgt_keeps_batchnorm_that_a_qat_freeze_put_in_eval_mode_frozen(tiny_splits):
    """The saliency pass restored the root's mode with model.train(True), which also unfroze the BatchNorm layers
    a QAT freeze callback had put in eval mode: their running statistics moved on in every later SGT step."""
    train, _, _ = tiny_splits
    x, y = train.tensors()
    model = quantize(create_model("resnet20", 2, 1, seed=0), QATConfig(bits=8, num_calibration=16, fold_bn=False), train)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    for bn in bns:  # what qat_callbacks' BatchNorm freeze does
        bn.eval()
    frozen = [bn.running_mean.clone() for bn in bns]
    step = SaliencyGuidedStep(TASK_BINARY, k=0.5)
    step(model, x[:8], y[:8])["loss"].backward()
    assert model.training and not any(bn.training for bn in bns)
    assert all(torch.equal(bn.running_mean, f) for bn, f in zip(bns, frozen))


def test_sgt_step_trains_with_pact(tiny_splits, tmp_path):
    train, val, _ = tiny_splits
    step = SaliencyGuidedStep(TASK_BINARY, k=0.5, lam=1.0)
    model = create_model("small_cnn", 2, 1, seed=0)
    fit(model, train, val, TrainConfig(epochs=1, batch_size=32, progress=False), step=step)  # FP32 warm-up
    model = quantize(model, PACTConfig(bits=4, num_calibration=32), train)
    x, y = train.tensors()
    out = step(model, x[:16], y[:16])
    assert out["kl"] >= 0 and torch.isfinite(out["loss"])
    result = fit(model, train, val, TrainConfig(epochs=3, batch_size=32, progress=False), tmp_path, step=step)
    assert result.best_score > 0.8


class _Kill(Exception):
    pass


def test_sgt_kill_and_resume_is_bit_identical(tiny_splits, tmp_path):
    train, val, _ = tiny_splits
    train, val = train.subset(64, 0), val.subset(32, 0)
    config = TrainConfig(epochs=3, batch_size=32, seed=0, progress=False)

    def run(out, callbacks=()):
        model = create_model("small_cnn", 2, 1, seed=0)
        return fit(model, train, val, config, out, step=SaliencyGuidedStep(TASK_BINARY, seed=0), callbacks=callbacks)

    def kill_at_epoch_2(model, epoch, epochs):
        if epoch == 2:
            raise _Kill

    run(tmp_path / "full")
    with pytest.raises(_Kill):
        run(tmp_path / "resumed", [kill_at_epoch_2])
    assert int(load_training_state(tmp_path / "resumed/last.pt")["epoch"]) == 1  # two epochs done
    run(tmp_path / "resumed")
    full, resumed = (load_training_state(tmp_path / d / "last.pt") for d in ("full", "resumed"))
    assert all(torch.equal(full["model"][k], resumed["model"][k]) for k in full["model"])
    assert full["history"] == resumed["history"]
    a, b = (load_file(str(tmp_path / d / "best.safetensors")) for d in ("full", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_changed_buffers_decides_as_torch_equal():
    from qsal.saliency.guided import _changed_buffers
    m = nn.BatchNorm2d(3)
    m.running_mean[0] = float("nan")
    before = [(n, b.detach().clone()) for n, b in m.named_buffers()]
    # a NaN is never equal to itself (torch.equal), so the NaN-holding buffer reads as changed
    assert _changed_buffers(m, before) == ["running_mean"]
    m.running_mean[0] = 0.0
    before = [(n, b.detach().clone()) for n, b in m.named_buffers()]
    assert _changed_buffers(m, before) == []
    m.num_batches_tracked += 1
    m.running_var = torch.ones(4)  # another shape
    assert _changed_buffers(m, before) == ["running_var", "num_batches_tracked"]
    assert _changed_buffers(nn.ReLU(), []) == []


def test_a_task_or_seed_it_would_misread_is_refused():
    """SaliencyGuidedStep('binary') (for 'binary-class') trained as multi-class; seed '1' failed inside torch."""
    from qsal.errors import QsalError

    with pytest.raises(QsalError, match="task 'binary' is not one of binary-class"):
        SaliencyGuidedStep("binary")
    with pytest.raises(QsalError, match="seed must be a whole number >= 0, got '1'"):
        SaliencyGuidedStep("binary-class", seed="1")
