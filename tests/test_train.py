import json

import pytest
import torch
from safetensors.torch import load_file

from qsal.checkpoint import load_checkpoint
from qsal.errors import QsalError
from qsal.models import create_model
from qsal.train import TrainConfig, fit


def _fit(splits, tmp, epochs=3, seed=0, **kw):
    train, val, _ = splits
    torch.manual_seed(seed)  # initial weights come from the global generator, as in qsal.pipeline
    model = create_model("small_cnn", 2, 1)
    return model, fit(model, train, val, TrainConfig(epochs=epochs, batch_size=32, seed=seed, progress=False, **kw), tmp)


def test_fit_learns_and_saves_a_safetensors_checkpoint_with_provenance(tiny_splits, tmp_path):
    model, result = _fit(tiny_splits, tmp_path, epochs=4)
    assert result.best_score > 0.9  # validation AUC on the learnable synthetic task
    meta = json.loads((tmp_path / "best.json").read_text())
    assert meta["arch"]["name"] == "small_cnn" and meta["seed"] == 0 and meta["train"]["epochs"] == 4
    assert "torch" in meta["environment"]["versions"]
    loaded, _ = load_checkpoint(tmp_path / "best.safetensors")
    x = tiny_splits[2].tensors()[0]
    model.eval()
    assert torch.allclose(loaded.eval()(x), model(x), atol=1e-6)


def test_same_seed_same_weights(tiny_splits, tmp_path):
    _fit(tiny_splits, tmp_path / "a", epochs=2, seed=3)
    _fit(tiny_splits, tmp_path / "b", epochs=2, seed=3)
    a, b = load_file(str(tmp_path / "a/best.safetensors")), load_file(str(tmp_path / "b/best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("ema_decay", [None, 0.9], ids=["live weights", "weight EMA"])
def test_resume_after_kill_gives_the_same_result_as_an_uninterrupted_run(tiny_splits, tmp_path, ema_decay):
    _fit(tiny_splits, tmp_path / "full", epochs=4, ema_decay=ema_decay)
    _fit(tiny_splits, tmp_path / "resumed", epochs=2, ema_decay=ema_decay)  # "killed" after epoch 2 ...
    _, result = _fit(tiny_splits, tmp_path / "resumed", epochs=4, ema_decay=ema_decay)  # ... and run again
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    full, resumed = load_file(str(tmp_path / "full/best.safetensors")), load_file(str(tmp_path / "resumed/best.safetensors"))
    assert all(torch.allclose(full[k], resumed[k], atol=1e-6) for k in full)


def test_divergence_stops_with_a_clear_message_and_keeps_last_good_checkpoint(tiny_splits, tmp_path):
    train, val, _ = tiny_splits
    model = create_model("small_cnn", 2, 1)
    calls = {"n": 0}

    def exploding_step(m, x, y):
        calls["n"] += 1
        logits = m(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        return {"loss": loss * (float("nan") if calls["n"] > 6 else 1.0), "logits": logits}

    with pytest.raises(QsalError, match="diverged: loss is nan at epoch 2.*lower --lr.*best.safetensors"):
        fit(model, train, val, TrainConfig(epochs=3, batch_size=32, progress=False), tmp_path, step=exploding_step)
    assert (tmp_path / "best.safetensors").is_file()


def test_checkpoint_for_another_model_is_refused(tiny_splits, tmp_path):
    _fit(tiny_splits, tmp_path, epochs=1)
    meta = json.loads((tmp_path / "best.json").read_text())
    meta["arch"]["name"] = "edge_mbv2"
    (tmp_path / "best.json").write_text(json.dumps(meta))
    with pytest.raises(QsalError, match="does not fit model edge_mbv2"):
        load_checkpoint(tmp_path / "best.safetensors")


def test_bad_config_is_one_line():
    with pytest.raises(QsalError, match="must be positive"):
        TrainConfig(epochs=0)


def test_fit_refuses_to_resume_with_another_hyper_parameter(tiny_splits, tmp_path):
    """Finding 5 at the library level: a rerun with another lr used to continue silently with the old one."""
    import pytest

    from qsal.errors import QsalError
    from qsal.models import create_model
    from qsal.train import TrainConfig, fit

    train, val, _ = tiny_splits
    fit(create_model("small_cnn", 2, 1), train, val, TrainConfig(epochs=1, progress=False), tmp_path)
    with pytest.raises(QsalError, match=r"lr changed \(0.001 -> 0.01\)"):
        fit(create_model("small_cnn", 2, 1), train, val, TrainConfig(epochs=1, lr=0.01, progress=False), tmp_path)


def test_weight_ema_averages_float_state_and_copies_integer_state():
    """ema <- d * ema + (1 - d) * live after each step, d = min(decay, (1 + t) / (10 + t)), the first update a copy
    (TensorFlow's ExponentialMovingAverage, timm's ModelEmaV3 with warm-up); BN's num_batches_tracked is copied."""
    from qsal.ema import WeightEMA

    live = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    ema = WeightEMA(live, decay=0.75)
    for value in (1.0, 3.0, 5.0):
        with torch.no_grad():
            live[0].weight.fill_(value)
            live[1].running_mean.fill_(10 * value)
            live[1].num_batches_tracked.fill_(int(value))
        ema.update(live)
    d1, d2 = min(0.75, 2 / 11), min(0.75, 3 / 12)  # the warm-up (1 + t) / (10 + t) is below 0.75 for t < 26
    want = (1.0 * d1 + 3.0 * (1 - d1)) * d2 + 5.0 * (1 - d2)
    assert torch.allclose(ema.module[0].weight, torch.full((1, 2), want))
    assert torch.allclose(ema.module[1].running_mean, torch.tensor([10 * want]))
    assert int(ema.module[1].num_batches_tracked) == 5 and ema.updates == 3
    ema.updates = 1000
    assert ema.current_decay() == 0.75  # the cap, once the warm-up passes it
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_with_ema_the_checkpoint_holds_the_averaged_weights_not_the_live_ones(tiny_splits, tmp_path):
    """The average is what is validated, selected and saved; config and checkpoint record the decay."""
    train, val, _ = tiny_splits
    torch.manual_seed(0)
    model = create_model("small_cnn", 2, 1)
    seen = {}

    class Spy:  # records the live weights at the end of the run, before fit loads the best (averaged) epoch
        def __call__(self, m, x, y):
            seen["live"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            logits = m(x)
            return {"loss": torch.nn.functional.cross_entropy(logits, y), "logits": logits}

    config = TrainConfig(epochs=3, batch_size=32, progress=False, ema_decay=0.8, select_on="loss")
    result = fit(model, train, val, config, tmp_path, step=Spy())
    saved = load_file(str(tmp_path / "best.safetensors"))
    assert json.loads((tmp_path / "best.json").read_text())["train"]["ema_decay"] == 0.8
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())  # fit left the saved weights loaded
    w = "conv1.weight" if "conv1.weight" in saved else next(k for k in saved if k.endswith("weight"))
    assert not torch.allclose(saved[w], seen["live"][w])  # an average, not the live weights of any one step
    assert result.best_epoch >= 1
    with pytest.raises(QsalError, match="ema_decay 1.5 must be a number between 0 and 1"):
        TrainConfig(ema_decay=1.5)
