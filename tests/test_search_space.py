"""The search space (METHOD.md section 4): the study's grids, vectors that stay on
them, the first ten vectors shared by every combination, deterministic redraws, and
stage 3's perturbation tables."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ser.study import recipes, search_space, stopping
from ser.data.features import IMAGE_KINDS as KINDS, SIZES
from ser.study.models import ArchSpec, SpecError


def test_grids_are_methods_and_the_study_recipe_keeps_them():
    space = search_space.SearchSpace()
    assert space.conv_channels == tuple(range(100, 421, 16)) and space.conv_channels[-1] == 420
    assert space.conv_kernels == space.pool_kernels == space.pool_strides == (2, 3)
    assert space.bn_momentum == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert space.dropout == (0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
    assert space.fc_features == tuple(range(1024, 4225, 128)) and space.fc_features[-1] == 4224
    assert space.batch_size == (16, 32, 48, 64)
    assert space.lr == (2e-8, 6e-8, 1e-7, 5e-7, 1e-6, 3e-6, 6e-6, 9e-6, 2e-5, 4e-5, 6e-5, 8e-5, 1e-4, 3e-4, 7e-4)
    study = recipes.load_recipe("study")
    assert study.grid == space and study.scale == 1.0 and study.perturbation == search_space.PERTURB
    assert (study.folds, study.split, study.test_size) == (5, "random", 0.2)
    s1, s2, s3, s4 = (study.stage(i) for i in (1, 2, 3, 4))
    assert s1.rules == stopping.STAGE1 and s2.rules == stopping.STAGE2 and s4.rules == stopping.NONE
    assert s4.max_epochs == 150 and s4.take == 4 and s3.take == 3 and s3.vectors == 10 and s1.thresholds == (0.6, 0.6)
    combos, missing = s1.combinations([(k, s) for k in KINDS for s in SIZES])
    assert not missing and len(combos) == 36 + 4
    counts = {(c.cnn, c.feature, c.size, c.leaky_slope): c.vectors for c in combos}
    assert counts[("bulba", "chroma", 30, None)] == counts[("bulba", "chroma", 50, None)] == 25
    assert counts[("bulba", "chroma", 60, None)] == counts[("squirtle", "mel", 30, None)] == 10
    assert {k for k in counts if k[3] is not None} == {("charma", f, 50, s) for f in ("chroma", "mel") for s in (0.005, 0.05)}
    assert sum(counts.values()) == 36 * 10 + 2 * 15 + 4 * 10
    combos2, _ = s2.combinations([(k, s) for k in KINDS for s in SIZES])
    assert {(c.cnn, c.feature, c.size) for c in combos2} == {(n, f, 60) for n in ("bulba", "charma", "squirtle") for f in ("mel", "chroma")}
    assert s2.merge and s2.stream != s1.stream


def test_sampled_vectors_stay_on_the_grids():
    space = search_space.SearchSpace()
    for cnn in ("bulba", "charma", "squirtle"):
        for v in search_space.sample_vectors(space, 60, seed=3, cnn=cnn, in_size=60):
            a = v.arch
            assert set(a.conv_channels) <= set(space.conv_channels) and set(a.fc_features) <= set(space.fc_features)
            assert set(a.conv_kernels) | set(a.pool_kernels) | set(a.pool_strides) <= {2, 3}
            if cnn == "squirtle":  # METHOD.md 4: SquirtleNET pools with stride 2
                assert a.pool_strides == (2, 2, 2)
            assert a.bn_momentum in space.bn_momentum and a.dropout in space.dropout
            assert v.batch_size in space.batch_size and v.lr in space.lr and a.leaky_slope == 0.01
            assert a.cnn == cnn and a.in_size == v.size == 60
    # every grid value is reachable
    draws = search_space.sample_vectors(space, 400, seed=0, cnn="squirtle", in_size=60)
    assert {c for v in draws for c in v.arch.conv_channels} == set(space.conv_channels)
    assert {v.lr for v in draws} == set(space.lr)


def test_first_ten_vectors_are_shared_by_every_combination():
    space = search_space.SearchSpace()
    reference = None
    for cnn in ("bulba", "charma", "squirtle"):
        for kind in KINDS:
            for size in SIZES:
                n = 25 if (cnn, kind) == ("bulba", "chroma") and size in (30, 50) else 10
                vectors = search_space.sample_vectors(space, n, seed=0, cnn=cnn, in_size=size, feature=kind)
                assert len(vectors) == n and all(v.redraws == 0 for v in vectors)  # every study size fits every draw
                # SquirtleNET's strides are fixed at 2; everything else is shared
                secondary = [{**v.secondary(), "pool_strides": None} for v in vectors[:10]]
                reference = reference or secondary
                assert secondary == reference
                assert len({v.id for v in vectors}) == n
    slope = search_space.sample_vectors(space, 10, seed=0, cnn="charma", in_size=50, leaky_slope=0.005)
    assert [{**v.secondary(), "leaky_slope": 0.01, "pool_strides": None} for v in slope] == reference
    assert all(v.arch.leaky_slope == 0.005 for v in slope)
    # stage 2 draws new vectors; another seed other vectors
    assert [{**v.secondary(), "pool_strides": None} for v in search_space.sample_vectors(space, 10, seed=0, cnn="bulba", in_size=60, stream=2)] != reference
    assert [{**v.secondary(), "pool_strides": None} for v in search_space.sample_vectors(space, 10, seed=1, cnn="bulba", in_size=60)] != reference
    # ids are stable content hashes
    again = search_space.sample_vectors(space, 10, seed=0, cnn="bulba", in_size=60)
    assert [v.id for v in again] == [v.id for v in search_space.sample_vectors(space, 10, seed=0, cnn="bulba", in_size=60)]


def test_vectors_invalid_for_a_small_input_are_redrawn_deterministically():
    space = search_space.SearchSpace()
    big = search_space.sample_vectors(space, 40, seed=0, cnn="squirtle", in_size=60)
    small = search_space.sample_vectors(space, 40, seed=0, cnn="squirtle", in_size=10)
    redrawn = [i for i, v in enumerate(small) if v.redraws]
    assert redrawn, "a 10x10 input should reject some pooling chains"
    for i, (b, s) in enumerate(zip(big, small)):
        s.arch.feature_map_sizes()  # buildable
        if s.redraws:
            assert "redrawn" in s.origin
            with pytest.raises(SpecError):  # the shared draw really did not fit
                ArchSpec(**{**b.arch.to_dict(), "in_size": 10})
        else:
            assert s.secondary() == b.secondary()
    assert [v.id for v in small] == [v.id for v in search_space.sample_vectors(space, 40, seed=0, cnn="squirtle", in_size=10)]


# --------------------------------------------------------------------------- perturbations


def test_perturbations_follow_the_tables():
    table = search_space.PERTURB
    assert table.conv_channels == (-32, -24, -16, -8, 0, 0, 8, 16, 24, 32)
    assert table.fc_features == (-230, -206, -160, -128, -86, -62, -34, -18, 0, 0, 18, 34, 62, 86)
    assert table.dropout == (-0.10, -0.05, -0.05, 0.0, 0.0, 0.0, 0.0, 0.05, 0.05, 0.10)
    assert table.leaky_slope == (0.005, 0.008, 0.010, 0.013, 0.018, 0.028)
    rng = np.random.default_rng(0)
    parent = search_space.Vector(ArchSpec(cnn="charma", in_size=60, conv_channels=(188, 156, 340), fc_features=(3634, 2816),
                                    bn_momentum=0.5, dropout=0.40), 32, 6e-5, "mel", 60)
    n = 3000
    kids = [search_space.perturb(parent, rng) for _ in range(n)]
    coc = Counter(k.arch.conv_channels[i] - parent.arch.conv_channels[i] for k in kids for i in range(3))
    fc = Counter(k.arch.fc_features[i] - parent.arch.fc_features[i] for k in kids for i in range(2))
    dp = Counter(round(k.arch.dropout - parent.arch.dropout, 6) for k in kids)
    bn = Counter(round(k.arch.bn_momentum - parent.arch.bn_momentum, 6) for k in kids)
    assert set(coc) == set(table.conv_channels) and set(fc) == set(table.fc_features)
    assert set(dp) == {round(d, 6) for d in table.dropout} and set(bn) == {-0.1, 0.0, 0.1}
    assert {k.arch.leaky_slope for k in kids} == set(table.leaky_slope)
    # uniform over the table entries: 0 is listed twice of ten (channels), four of ten (dropout), three of five (BN)
    assert abs(coc[0] / (3 * n) - 0.2) < 0.03 and abs(dp[0.0] / n - 0.4) < 0.04 and abs(bn[0.0] / n - 0.6) < 0.04
    for k in kids:  # fixed: kernel sizes, pooling, batch, LR (and the feature)
        a = k.arch
        assert (a.conv_kernels, a.pool_kernels, a.pool_strides) == (parent.arch.conv_kernels, parent.arch.pool_kernels, parent.arch.pool_strides)
        assert (k.batch_size, k.lr, k.feature, k.size, a.cnn) == (32, 6e-5, "mel", 60, "charma")
        assert k.origin == f"perturbed {parent.id}"
    # BN momentum 0.1 stays 0.1 or becomes 0.2; the top of the grid is clipped
    low = search_space.Vector(parent.arch.with_(bn_momentum=0.1), 32, 6e-5, "mel", 60)
    assert {search_space.perturb(low, rng).arch.bn_momentum for _ in range(300)} == {0.1, 0.2}
    high = search_space.Vector(parent.arch.with_(bn_momentum=0.9, dropout=0.25), 32, 6e-5, "mel", 60)
    kids = [search_space.perturb(high, rng) for _ in range(300)]
    assert {k.arch.bn_momentum for k in kids} == {0.8, 0.9} and {k.arch.dropout for k in kids} == {0.15, 0.2, 0.25, 0.3, 0.35}
    # the slope only changes CharmaNET
    squirtle = search_space.Vector(parent.arch.with_(cnn="squirtle"), 32, 6e-5, "mel", 60)
    assert {search_space.perturb(squirtle, rng).arch.leaky_slope for _ in range(100)} == {0.01}
    # a batch of distinct neighbours, none equal to the parent, reproducible
    batch = search_space.perturbations(parent, 10, seed=0)
    assert len({v.id for v in batch} | {parent.id}) == 11
    assert [v.id for v in batch] == [v.id for v in search_space.perturbations(parent, 10, seed=0)]


def test_squirtle_pool_stride_is_fixed_at_two_unless_switched_off():
    """The study's SquirtleNET pools with stride 2; the other CNNs draw 2 or 3, and
    ``squirtle_pool_stride: null`` is the documented switch to let SquirtleNET draw too."""
    study = search_space.SearchSpace()
    fixed = search_space.sample_vectors(study, 40, seed=0, cnn="squirtle", in_size=60)
    assert {v.arch.pool_strides for v in fixed} == {(2, 2, 2)}
    bulba = search_space.sample_vectors(study, 40, seed=0, cnn="bulba", in_size=60)
    assert 3 in {s for v in bulba for s in v.arch.pool_strides}
    free = search_space.sample_vectors(search_space.SearchSpace(squirtle_pool_stride=None), 40, seed=0, cnn="squirtle", in_size=60)
    assert 3 in {s for v in free for s in v.arch.pool_strides}
    assert search_space.SearchSpace.from_dict({"squirtle_pool_stride": None}).squirtle_pool_stride is None
    with pytest.raises(search_space.SearchError, match="squirtle_pool_stride"):
        search_space.SearchSpace(squirtle_pool_stride=0)
