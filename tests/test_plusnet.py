"""The plus network (ser.study.plusnet) and its augmentation (ser.study.plus)."""

import pytest
import torch

from ser.study import models, plus
from ser.study.plusnet import PlusNet, PlusSpec, window_starts


def net(seed: int = 0, **changes) -> PlusNet:
    torch.manual_seed(seed)
    return PlusNet(PlusSpec(in_size=32, n_classes=3, channels=(4, 8), window=40, hop=20, **changes)).eval()


def test_any_length_gives_one_answer_per_row():
    model = net()
    for frames in (10, 40, 97, 400):
        assert model(torch.randn(2, 1, 32, frames)).shape == (2, 3)


def test_eval_averages_the_logits_of_overlapping_windows():
    model = net()
    x = torch.randn(1, 1, 32, 100)
    starts = window_starts(100, 40, 20)
    assert starts == [0, 20, 40, 60]
    expected = torch.stack([model.classify(x[..., s : s + 40]) for s in starts]).mean(0)
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert window_starts(105, 40, 20)[-1] == 65  # the last window is flush with the end


def test_lengths_keep_padding_out_of_the_answer():
    model = net()
    x = torch.randn(1, 1, 32, 70)
    padded = torch.cat([x, torch.full((1, 1, 32, 50), 9.0)], dim=-1)
    assert torch.allclose(model(padded, torch.tensor([70])), model(x), atol=1e-6)
    assert not torch.allclose(model(padded), model(x), atol=1e-3)


def test_ensemble_is_the_mean_of_its_members_and_round_trips(tmp_path):
    a, b = net(0), net(1)
    spec = models.EnsembleSpec(members=(a.spec, b.spec))
    ens = models.Ensemble(spec, [a, b]).eval()
    x = torch.randn(3, 1, 32, 60)
    assert torch.allclose(ens(x), (a(x) + b(x)) / 2, atol=1e-6)
    models.save_bundle(tmp_path / "e.pt", ens, ("x", "y", "z"), {"kind": "logmel", "size": 32}, {})
    bundle = models.load_bundle(tmp_path / "e.pt")
    assert isinstance(bundle.arch, models.EnsembleSpec) and bundle.arch.in_size == 32
    assert torch.allclose(bundle.model(x), ens(x), atol=1e-6)


def _interpolated(x, factor):
    """One window resampled as the training speed perturbation does it, row by row."""
    _, _, m, w = x.shape
    y = torch.nn.functional.interpolate(x, size=(max(2, round(m * factor)), max(2, round(w / factor))),
                                        mode="bilinear", align_corners=False)[..., :m, :w]
    return torch.nn.functional.pad(y, (0, w - y.shape[-1], 0, m - y.shape[-2]))


def test_speed_copies_average_every_window_at_every_factor():
    model = net(speeds=(0.9, 1.0, 1.1))
    x = torch.randn(1, 1, 32, 100)
    windows = [x[..., s : s + 40] for s in window_starts(100, 40, 20)]
    expected = torch.stack([model.classify(_interpolated(w, f)) for w in windows for f in (0.9, 1.0, 1.1)]).mean(0)
    assert torch.allclose(model(x), expected, atol=1e-4)
    plain = net()
    assert not torch.allclose(model(x), plain(x), atol=1e-3)  # the copies change the answer
    # rows of a padded batch still get their own answer, padding never reaching the copies
    padded = torch.cat([x[..., :70], torch.full((1, 1, 32, 30), 9.0)], dim=-1)
    both = model(torch.cat([x, padded]), torch.tensor([100, 70]))
    assert torch.allclose(both[0], model(x)[0], atol=1e-5) and torch.allclose(both[1], model(x[..., :70])[0], atol=1e-5)


def test_speed_copies_travel_in_the_bundle(tmp_path):
    model = net(speeds=(0.95, 1.0, 1.05))
    models.save_bundle(tmp_path / "m.pt", model, ("x", "y", "z"), {"kind": "logmel", "size": 32}, {})
    bundle = models.load_bundle(tmp_path / "m.pt")
    assert bundle.arch.speeds == (0.95, 1.0, 1.05)
    x = torch.randn(2, 1, 32, 90)
    assert torch.allclose(bundle.model(x), model(x), atol=1e-6)
    spec = net().spec.to_dict()
    del spec["speeds"]  # a model saved before the switch existed answers as it did
    assert PlusSpec.from_dict(spec).speeds == (1.0,)


def test_spec_refuses_what_cannot_be_built():
    with pytest.raises(ValueError, match="too few"):
        PlusSpec(in_size=8, channels=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="pooling"):
        PlusSpec(pooling="max")
    with pytest.raises(ValueError, match="hop"):
        PlusSpec(window=100, hop=150)
    with pytest.raises(ValueError, match="speeds"):
        PlusSpec(speeds=(0.95, 2.0))
    with pytest.raises(ValueError, match="speeds"):
        PlusSpec(speeds=())


def _batch(n=6, m=32, t=120):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, m, t, generator=gen)
    lengths = torch.tensor([120, 80, 30, 120, 55, 100][:n])
    for i, length in enumerate(lengths):
        images[i, :, :, length:] = 99.0  # padding that must never reach the network
    return images, torch.arange(n) % 3, lengths


def test_crops_stay_inside_the_valid_frames():
    images, _, lengths = _batch()
    for seed in range(10):
        x = plus.crops(images, lengths, 40, torch.Generator().manual_seed(seed))
        assert x.shape == (6, 1, 32, 40) and (x != 99.0).all()
        assert (x[2, :, :, 30:] == 0).all()  # a 30-frame row is padded with zeros, not with padding


def test_augmenter_is_reproducible_and_each_switch_changes_the_batch():
    images, labels, lengths = _batch()
    full = plus.PlusConfig()
    make = plus.augmenter(full, 40, 3)
    x1, t1 = make(images, labels, lengths, torch.Generator().manual_seed(1))
    x2, t2 = make(images, labels, lengths, torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2) and torch.equal(t1, t2)
    assert torch.allclose(t1.sum(1), torch.ones(6)) and (t1 < 1).all()  # smoothed (and mixed) targets
    off = plus.PlusConfig(crop=False, speed=0.0, specaugment=False, mixup=0.0, label_smoothing=0.0)
    x0, t0 = plus.augmenter(off, 40, 3)(images, labels, lengths, torch.Generator().manual_seed(1))
    assert torch.equal(x0[0, 0], images[0, 0, :, :40]) and torch.equal(t0, torch.nn.functional.one_hot(labels, 3).float())
    for switch in ({"crop": True}, {"speed": 0.1}, {"specaugment": True}, {"mixup": 0.4}):
        cfg = plus.PlusConfig(**{**off.to_dict(), **switch})
        xs, _ = plus.augmenter(cfg, 40, 3)(images, labels, lengths, torch.Generator().manual_seed(1))
        assert not torch.equal(xs, x0), f"{switch} changed nothing"


def test_specaugment_masks_bands_with_zeros():
    x = torch.ones(4, 1, 32, 40)
    cfg = plus.PlusConfig(time_masks=1, time_width=10, freq_masks=1, freq_width=6)
    y = plus.spec_augment(x, cfg, torch.Generator().manual_seed(3))
    assert (y == 0).any() and (y[:, :, :, :] <= 1).all() and float((y == 0).float().mean()) < 0.5


# The per-row loops the batch-at-once augmentation replaced, kept here as the oracle:
# the same generator must give the same crops, the same speed factors and the same masks.
def _crops_by_row(images, lengths, window, gen):
    out = torch.zeros(images.shape[0], 1, images.shape[-2], window)
    room = (lengths - window).clamp_min(0)
    starts = (torch.rand(images.shape[0], generator=gen) * (room + 1).float()).long().clamp(max=room)
    for i in range(images.shape[0]):
        valid = int(min(window, int(lengths[i])))
        out[i, 0, :, :valid] = images[i, 0, :, int(starts[i]) : int(starts[i]) + valid]
    return out


def _speed_by_row(x, amount, gen):
    out = torch.empty_like(x)
    _, _, m, w = x.shape
    for i in range(x.shape[0]):
        factor = 1.0 + (2 * float(torch.rand(1, generator=gen)) - 1) * amount
        y = torch.nn.functional.interpolate(x[i : i + 1], size=(max(2, round(m * factor)), max(2, round(w / factor))),
                                            mode="bilinear", align_corners=False)[..., :m, :w]
        out[i] = torch.nn.functional.pad(y, (0, w - y.shape[-1], 0, m - y.shape[-2]))[0]
    return out


def _masks_by_row(x, cfg, gen):
    x = x.clone()
    _, _, m, w = x.shape
    for i in range(x.shape[0]):
        for masks, widest, size, axis in ((cfg.time_masks, cfg.time_width, w, 3), (cfg.freq_masks, cfg.freq_width, m, 2)):
            for _ in range(masks):
                width = int(float(torch.rand(1, generator=gen)) * (widest + 1))
                start = int(float(torch.rand(1, generator=gen)) * max(1, size - width))
                x[i].narrow(axis - 1, start, width).zero_()
    return x


def test_batch_augmentation_draws_what_the_per_row_loops_drew():
    images, _, lengths = _batch()
    for seed in range(5):
        a, b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(plus.crops(images, lengths, 40, a), _crops_by_row(images, lengths, 40, b))
        x = torch.randn(6, 1, 32, 40)
        assert torch.allclose(plus.speed_perturb(x, 0.3, a), _speed_by_row(x, 0.3, b), atol=1e-3)  # float rounding of the grid
        cfg = plus.PlusConfig(time_masks=2, time_width=20, freq_masks=3, freq_width=8)
        assert torch.equal(plus.spec_augment(x, cfg, a), _masks_by_row(x, cfg, b))
        assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))  # the stream is left where the loops left it


def test_vocal_tract_perturbation_stretches_the_mel_axis_alone():
    x = torch.randn(6, 1, 32, 40)
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    y = plus.speed_perturb(x, 0.0, a, vtlp=0.3)
    torch.rand(6, generator=b)  # the speed factors (all 1 here) are drawn first
    for i, u in enumerate(torch.rand(6, generator=b).tolist()):
        tract = 1.0 + (2 * u - 1) * 0.3
        z = torch.nn.functional.interpolate(x[i : i + 1], size=(max(2, round(32 * tract)), 40), mode="bilinear", align_corners=False)
        z = torch.nn.functional.pad(z[..., :32, :], (0, 0, 0, 32 - min(32, z.shape[-2])))
        assert torch.allclose(y[i : i + 1], z, atol=1e-3)
    assert not torch.allclose(y, x, atol=1e-2)
    # with a speed factor too: time resampled by the speed alone, mel by speed x tract
    a, b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    y = plus.speed_perturb(x, 0.2, a, vtlp=0.3)
    speeds, tracts = 1.0 + (2 * torch.rand(6, generator=b) - 1) * 0.2, 1.0 + (2 * torch.rand(6, generator=b) - 1) * 0.3
    for i, (s, t) in enumerate(zip(speeds.tolist(), tracts.tolist())):
        z = torch.nn.functional.interpolate(x[i : i + 1], size=(max(2, round(32 * s * t)), max(2, round(40 / s))), mode="bilinear",
                                            align_corners=False)[..., :32, :40]
        z = torch.nn.functional.pad(z, (0, 40 - z.shape[-1], 0, 32 - z.shape[-2]))
        assert torch.allclose(y[i : i + 1], z, atol=1e-3)
    make = plus.augmenter(plus.PlusConfig(vtlp=0.1, specaugment=False, mixup=0.0), 40, 7)
    assert make(x, torch.zeros(6, dtype=torch.long), torch.full((6,), 40), torch.Generator().manual_seed(0))[0].shape == x.shape
    with pytest.raises(ValueError, match="vtlp"):
        plus.PlusConfig(vtlp=0.5)


def test_half_precision_rows_are_cropped_then_widened():
    images, _, lengths = _batch()
    x = plus.crops(images.half(), lengths, 40, torch.Generator().manual_seed(2))
    assert x.dtype == torch.float32
    assert torch.equal(x, plus.crops(images.half().float(), lengths, 40, torch.Generator().manual_seed(2)))
    short = plus.crops(images[:, :, :, :30], torch.full((6,), 30), 40, torch.Generator().manual_seed(2))
    assert short.shape == (6, 1, 32, 40) and (short[..., 30:] == 0).all()  # rows all shorter than a window


def test_crops_from_a_whole_set_pick_the_batch_rows():
    images, _, lengths = _batch()
    rows = torch.tensor([4, 0, 2])
    direct = plus.crops(images, lengths[rows], 40, torch.Generator().manual_seed(7), rows=rows)
    assert torch.equal(direct, plus.crops(images[rows], lengths[rows], 40, torch.Generator().manual_seed(7)))
    short = images[:, :, :, :30]
    assert torch.equal(plus.crops(short, torch.full((3,), 30), 40, torch.Generator().manual_seed(7), rows=rows),
                       plus.crops(short[rows], torch.full((3,), 30), 40, torch.Generator().manual_seed(7)))


def test_flattened_frequency_keeps_the_bands_apart():
    flat, mean = net(frequency="flatten"), net()
    assert mean.head.in_features == 2 * 8
    assert flat.head.in_features == 2 * 8 * (32 // 4)  # channels x the bands two max-pools leave, mean and deviation
    x = torch.randn(2, 1, 32, 97)
    assert flat(x).shape == (2, 3) and flat(x[:1]).shape == (1, 3)
    assert flat.embed(x).shape == (2, 2 * 8 * 8)
    with pytest.raises(ValueError, match="frequency"):
        PlusSpec(frequency="max")
