import subprocess
import sys

import pytest

# Runs in a fresh interpreter: the tuning is process-wide and must not leak into the
# test session. Counts the page faults of extracting 60 clips of varied length, as a
# feature worker does, before and after the tuning.
_PROBE = """
import resource
import numpy as np
from ser.data import allocator
from ser.data.features import FeatureSpec, extract

rng = np.random.default_rng(0)
waves = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in rng.integers(30000, 120000, 60)]

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for wave in waves:
        extract(wave, 24414, FeatureSpec())
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()  # imports and first-use set-up
default = faults()
tuned = allocator.keep_freed_memory()
faults()
print(default, faults(), tuned)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux only")
def test_feature_workers_stop_paying_page_faults_per_clip():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True).stdout.split()
    default, tuned_faults, tuned = int(out[0]), int(out[1]), out[2]
    assert tuned == "True"
    assert default > 60 * 50  # glibc's default: hundreds of faults per clip
    assert tuned_faults < default / 20
