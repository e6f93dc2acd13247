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
    # each epoch's lr is the rate it trained at (milestones 0.5, 0.75 of 4 epochs: x0.1 from epochs 3 and 4), not the
    # next epoch's rate the scheduler had already set
    lr = TrainConfig().lr
    assert [h["lr"] for h in result.history] == pytest.approx([lr, lr, lr * 0.1, lr * 0.01])
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
    _, first = _fit(tiny_splits, tmp_path / "resumed", epochs=2, ema_decay=ema_decay)  # "killed" after epoch 2 ...
    _, result = _fit(tiny_splits, tmp_path / "resumed", epochs=4, ema_decay=ema_decay)  # ... and run again
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    _, again = _fit(tiny_splits, tmp_path / "resumed", epochs=4, ema_decay=ema_decay)  # finished: nothing left
    # the whole training's time, not the last invocation's (which trained nothing)
    assert result.seconds > first.seconds and again.seconds == pytest.approx(result.seconds, rel=0.2)
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


def test_rotation_and_zoom_reach_the_training_batches_and_are_validated(tiny_splits, monkeypatch):
    import qsal.train_config as train_module  # augment() lives beside TrainConfig

    seen = []
    real = train_module.random_rotate_zoom
    monkeypatch.setattr(train_module, "random_rotate_zoom",
                        lambda x, deg, zoom, gen: seen.append((x.shape[0], deg, zoom)) or real(x, deg, zoom, gen))
    train, val = tiny_splits[0], tiny_splits[1]
    cfg = TrainConfig(epochs=1, batch_size=32, seed=0, progress=False, rotate_deg=15, zoom=0.1)
    fit(create_model("small_cnn", 2), train, val, cfg)
    assert seen and {s[1:] for s in seen} == {(15.0, 0.1)} and sum(s[0] for s in seen) == len(train)
    seen.clear()
    fit(create_model("small_cnn", 2), train, val, TrainConfig(epochs=1, seed=0, progress=False, rotate_deg=0))
    assert not seen  # 0 is off, as None is
    assert TrainConfig(rotate_deg=0, zoom=0.0).to_dict()["rotate_deg"] is None
    for bad in ({"rotate_deg": -5}, {"rotate_deg": 200}, {"zoom": 0.9}, {"zoom": "wide"}, {"rotate_deg": float("nan")}):
        with pytest.raises(QsalError, match=f"{next(iter(bad))} .* must be a number from 0 to"):
            TrainConfig(**bad)


def test_when_no_epoch_has_a_validation_score_the_last_epoch_is_saved_with_a_note(tiny_splits, tmp_path, capsys):
    train, val = tiny_splits[0], tiny_splits[1]
    val.labels[:] = 0  # one class: AUC undefined every epoch (the pipeline refuses this split before fit)
    result = fit(create_model("small_cnn", 2), train, val, TrainConfig(epochs=3, seed=0, progress=False), tmp_path)
    assert result.best_epoch == 3 and result.best_path is not None and result.best_path.is_file()
    assert "note: no epoch had a defined validation auc; the last epoch was kept" in capsys.readouterr().err


def test_bad_config_is_one_line():
    with pytest.raises(QsalError, match="epochs must be a whole number >= 1, got 0"):
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
    (TensorFlow's ExponentialMovingAverage warm-up, timm's ModelEmaV3 averaging); BN's num_batches_tracked is copied."""
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


def test_with_ema_the_checkpoint_holds_the_averaged_weights_not_the_live_ones(tiny_splits, tmp_path, monkeypatch):
    """The average is what is validated, selected and saved: the saved tensors equal the EMA copy's at the best
    epoch, and differ from the live weights of that epoch's end."""
    import qsal.train
    from qsal.ema import WeightEMA

    train, val, _ = tiny_splits
    made, at_epoch_end = [], {}

    class Recording(WeightEMA):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(qsal.train, "WeightEMA", Recording)

    def remember(model, epoch, epochs):  # runs at the start of each epoch: the previous epoch's end state
        if made:
            at_epoch_end[epoch] = ({k: v.clone() for k, v in model.state_dict().items()},
                                   {k: v.clone() for k, v in made[0].module.state_dict().items()})

    torch.manual_seed(0)
    model = create_model("small_cnn", 2, 1)
    config = TrainConfig(epochs=4, batch_size=32, progress=False, ema_decay=0.8)
    result = fit(model, train, val, config, tmp_path, callbacks=[remember])
    saved = load_file(str(tmp_path / "best.safetensors"))
    meta = json.loads((tmp_path / "best.json").read_text())
    assert meta["train"]["ema_decay"] == 0.8 and meta["weight_ema"]["warmup"] == "min(decay, (1 + t) / (10 + t))"
    if result.best_epoch < 4:  # the best epoch's end was seen by the next epoch's callback
        live, averaged = at_epoch_end[result.best_epoch]
    else:
        live, averaged = None, made[0].module.state_dict()
    assert all(torch.equal(saved[k], averaged[k]) for k in saved)
    if live is not None:
        assert not all(torch.equal(saved[k], live[k]) for k in saved if saved[k].is_floating_point())
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())  # fit left the saved weights loaded
    with pytest.raises(QsalError, match="ema_decay 1.5 must be a number between 0 and 1"):
        TrainConfig(ema_decay=1.5)


def test_ema_of_a_qat_model_keeps_whole_zero_points_on_its_averaged_range():
    """QAT's activation grids are buffers (scale, zero_point, range): averaging the zero point would leave a
    fraction the exporter truncates. The average re-derives each grid from its averaged range."""
    from qsal.ema import WeightEMA
    from qsal.quant import QATConfig, quantize

    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    live = quantize(create_model("small_cnn", 2, 1), QATConfig(bits=8, num_calibration=64), x)
    ema = WeightEMA(live, decay=0.9)
    quantizers = [m for m in live.modules() if hasattr(m, "set_range") and hasattr(m, "range")]
    assert quantizers
    for shift in (0.0, 0.37, 1.9):
        for m in quantizers:
            lo, hi = m.range.tolist()
            m.set_range(lo - shift, hi + shift)
        ema.update(live)
    for m in (m for m in ema.module.modules() if hasattr(m, "set_range") and hasattr(m, "range")):
        assert float(m.zero_point) == round(float(m.zero_point))
        lo, hi = m.range.tolist()
        assert float(m.scale) == pytest.approx((hi - lo) / (2 ** m.bits - 1))


@pytest.mark.parametrize("gone", ["best.safetensors", "best.json"])
def test_a_resume_whose_best_checkpoint_is_gone_is_refused_before_training(tiny_splits, tmp_path, gone):
    """A last.pt brought back without its best.safetensors (a GPU trip back) resumed, kept the last epoch's weights
    as 'best' when no later epoch scored higher, and wrote best.json and metrics for them; without best.json it
    said 'a qsal checkpoint is a .safetensors file with a .json beside it', which names no fix."""
    train, val, _ = tiny_splits
    cfg = TrainConfig(epochs=3, batch_size=32, progress=False)
    fit(create_model("small_cnn", 2, 1), train, val, TrainConfig(**{**cfg.to_dict(), "epochs": 2}), tmp_path)
    best_epoch = json.loads((tmp_path / "best.json").read_text())["epoch"]
    (tmp_path / gone).unlink()
    with pytest.raises(QsalError, match=rf"best epoch so far \({best_epoch}\) was saved as .*best.safetensors and its "
                                        rf".json, and {gone} is missing; put it back beside last.pt, or delete last.pt"):
        fit(create_model("small_cnn", 2, 1), train, val, cfg, tmp_path)


def test_a_last_pt_of_another_run_in_out_dir_is_not_continued(tiny_splits, tmp_path):
    # fit(out_dir=X) took any last.pt there as its own: a second notebook run on other data returned the first model
    from qsal.data.arrays import ImageSplit
    from qsal.errors import QsalError
    from qsal.models import create_model
    from qsal.train import TrainConfig, fit

    train, val, _ = tiny_splits
    cfg = TrainConfig(epochs=1, batch_size=32, progress=False)
    fit(create_model("small_cnn", 2, 1), train, val, cfg, tmp_path)
    fewer = ImageSplit(train.info, "train", train.images[:100], train.labels[:100], train.source)
    with pytest.raises(QsalError, match=r"cannot resume .*: its last.pt is from a run on .*'n_train': 160.* not this "
                                        r"one on .*'n_train': 100"):
        fit(create_model("small_cnn", 2, 1), fewer, val, cfg, tmp_path)
    # the same run continues (for more epochs)
    r = fit(create_model("small_cnn", 2, 1), train, val, TrainConfig(epochs=2, batch_size=32, progress=False), tmp_path)
    assert len(r.history) == 2


@pytest.mark.parametrize("field,value,said", [
    ("epochs", 2.5, "epochs must be a whole number >= 1"), ("weight_decay", float("nan"), "weight_decay must be"),
    ("weight_decay", -1, "weight_decay must be"), ("shift_px", -3, "shift_px must be"),
    ("gamma", float("nan"), "gamma (the lr factor"), ("gamma", 10.0, "must be a decay factor in (0, 1]"), ("milestones", (2.0,), "every milestone is a fraction"),
    ("lr", float("inf"), "lr must be a finite number > 0"), ("seed", 2**32, r"seed must be a whole number in 0 .. 2\*\*32-1"),
])
def test_train_config_refuses_impossible_numbers(field, value, said):
    from qsal.errors import QsalError
    from qsal.train import TrainConfig

    with pytest.raises(QsalError, match=said if field == "seed" else said.replace("(", r"\(")):
        TrainConfig(**{field: value})


def test_the_python_api_records_and_checks_what_the_cli_does(tiny_splits, tmp_path, capsys):
    """Found by a new user of the Python API: a quantized model saved by fit(out_dir) did not load back (its config
    was not recorded); QAT through fit never froze its observers (only the CLI passed qat_callbacks); a model for
    another class count trained on; a rerun into a finished run's folder silently loaded the old model; a checkpoint
    from fit() could not be evaluated ('does not name its dataset')."""
    from qsal.checkpoint import load_checkpoint
    from qsal.quant import PACTConfig, QATConfig, quantize
    from qsal.quant.modules import ActQuantizer
    from qsal.scoring import evaluate_model

    train, val = tiny_splits[0], tiny_splits[1]
    cfg = TrainConfig(epochs=2, batch_size=64, progress=False, precision="fp32")
    fp32 = create_model("small_cnn", 2, 1)
    fit(fp32, train, val, cfg, tmp_path / "fp32")
    assert evaluate_model(tmp_path / "fp32" / "best.safetensors", n_bootstrap=0)["n"] == 156
    pact = quantize(fp32, PACTConfig(bits=4), calibration=train)
    fit(pact, train, val, cfg, tmp_path / "pact")
    loaded, meta = load_checkpoint(tmp_path / "pact" / "best.safetensors")
    x = val.tensors()[0][:4]
    assert meta["quant"]["method"] == "pact" and torch.equal(loaded.eval()(x), pact.eval()(x))
    qat = quantize(fp32, QATConfig(freeze_observers_at=0.0), calibration=train)
    ranges = [q.scale.clone() for q in qat.modules() if isinstance(q, ActQuantizer)]
    fit(qat, train, val, cfg)
    assert all(torch.equal(a, q.scale) for a, q in zip(ranges, [q for q in qat.modules() if isinstance(q, ActQuantizer)]))
    with pytest.raises(QsalError, match="breastmnist has 2 classes / 1 channels but the model \\(small_cnn\\) was "
                                        "built for 10 / 1; build it for this data: "
                                        "qsal.create_model\\('small_cnn', 2, 1\\)"):
        fit(create_model("small_cnn", 10, 1), train, val, cfg)
    with pytest.raises(QsalError, match="holds a run \\(last.pt\\); pass resume=True"):
        fit(create_model("small_cnn", 2, 1), train, val, cfg, tmp_path / "fp32", resume=False)
    fit(create_model("small_cnn", 2, 1), train, val, TrainConfig(**{**cfg.to_dict(), "progress": True}), tmp_path / "fp32")
    assert "holds this run finished; its best epoch is loaded, nothing is trained" in capsys.readouterr().err
    with pytest.raises(QsalError, match="this model records none"):
        fit(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 2)), train, val, cfg, tmp_path / "custom")


@pytest.mark.parametrize("field, value, message", [
    ("hflip", "no", "hflip must be True or False, got 'no'"),
    ("progress", 1, "progress must be True or False"),
    ("seed", -1, r"seed must be a whole number in 0 .. 2\*\*32-1, got -1"),
    ("seed", 1.5, "seed must be a whole number in 0 "),
    ("device", "gpu", "device 'gpu' is not one of auto, cpu, cuda"),
    ("milestones", 0.5, "milestones must be a list of fractions"),
    ("channels_last", "true", "channels_last 'true' must be 'auto' or a boolean"),
])
def test_train_config_refuses_values_fit_would_misread(field, value, message):
    with pytest.raises(QsalError, match=message):
        TrainConfig(**{field: value})
    TrainConfig(device="cuda:1")  # a device index is a device


def test_a_checkpoint_fit_wrote_by_itself_is_evaluated_and_exported_by_the_cli(tiny_splits, tmp_path, capsys):
    """fit() recorded only the data's name and counts: evaluate of a 64 px model loaded 28 px images (a shape
    traceback), and export wrote a file with no data record (no normalisation, 'does not name its dataset')."""
    from qsal.cli import main

    train, val = tiny_splits[0], tiny_splits[1]
    fit(create_model("small_cnn", 2, 1), train, val, TrainConfig(epochs=1, progress=False, precision="fp32"),
        tmp_path / "run")
    data = json.loads((tmp_path / "run" / "best.json").read_text())["data"]
    assert data["image_size"] == 28 and data["labels"] == ["malignant", "normal, benign"] and data["mean"] == [0.5]
    assert main(["export", str(tmp_path / "run" / "best.safetensors"), "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "m.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "breastmnist"


def test_a_tie_in_the_validation_score_keeps_the_earlier_epoch(tiny_splits, tmp_path, monkeypatch):
    """Selection is MedMNIST's `>`: an epoch that only equals the best so far does not replace it (documented)."""
    import qsal.train as train_module

    scores = iter([0.70, 0.80, 0.80, 0.75])
    real = train_module._validation_score

    def scripted(*args, **kwargs):
        _, metrics = real(*args, **kwargs)
        return next(scores), metrics

    monkeypatch.setattr(train_module, "_validation_score", scripted)
    _, result = _fit(tiny_splits, tmp_path, epochs=4)
    assert result.best_epoch == 2 and result.best_score == 0.80
