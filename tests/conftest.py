import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))


def random_genotypes(rng, n, p, missing=0.02, maf=(0.05, 0.5)):
    """Allele counts 0/1/2 with -1 for missing, written independently of bigmm.simulate."""
    f = rng.uniform(*maf, size=p)
    G = rng.binomial(2, f, size=(n, p)).astype(np.int8)
    if missing:
        G[rng.random((n, p)) < missing] = -1
    return G


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
