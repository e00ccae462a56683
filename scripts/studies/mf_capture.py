"""fit_matrix_free outputs on 17 fixed configurations, to check that a move of the solver's code
changes no result: run ``capture`` on the code before and after, then ``compare`` (== on every fit
field, NaN equal to NaN; the BLUP, the likelihood profiles, the quadratic forms and every saved
state, arrays and metadata, at every step).

    .venv/bin/python scripts/studies/mf_capture.py capture /tmp/before.pkl   # on the old code
    .venv/bin/python scripts/studies/mf_capture.py capture /tmp/after.pkl    # on the new code
    .venv/bin/python scripts/studies/mf_capture.py compare /tmp/before.pkl /tmp/after.pkl

Configurations: 3 seeds x (one phenotype; three with two missing patterns; covariates + deflation
by 10 eigenpairs + missing; an operator without a diagonal; stopped at max_steps), an exact
low-rank problem with full deflation, and n = 8 (every recurrence exhausted). Run from the
repository root (it uses tests/conftest.py and tests/reference.py for the cohorts).
"""
import sys, pickle, json, dataclasses
import numpy as np
sys.path.insert(0, "tests")
sys.path.insert(0, ".")
from conftest import random_genotypes
from reference import grm_reference
from bigmm.mfreml import fit_matrix_free, blup_matrix_free

class Op:
    def __init__(self, K, diag=True):
        self.K, self.diag = K, diag
    n = property(lambda s: s.K.shape[0])
    def apply(self, M, want_diag=False):
        return self.K @ M, (np.diag(self.K).copy() if (want_diag and self.diag) else None)

class Ck:
    def __init__(self): self.states = []
    def save(self, st): self.states.append({"meta": json.loads(json.dumps(st["meta"])), "arrays": {k: np.array(v) for k, v in st["arrays"].items()}})
    def load(self): return None

def problem(seed, n, p):
    rng = np.random.default_rng(seed)
    K = grm_reference(random_genotypes(rng, n, p, missing=0.0))
    s, U = np.linalg.eigh(K)
    Y = 1.0 + (U * np.sqrt(0.5 * s + 0.5)) @ rng.normal(size=(n, 3))
    Z = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    return K, Y, Z, U[:, ::-1], s[::-1]

def cases():
    for seed in (1, 2, 3):
        K, Y, Z, U, s = problem(seed, 250, 600)
        Ym = Y.copy(); Ym[:15, 1] = np.nan; Ym[100:130, 2] = np.nan
        yield f"s{seed}-plain", K, Y[:, 0], dict(probes=6, seed=seed, tol=1e-5)
        yield f"s{seed}-missing", K, Ym, dict(probes=5, seed=seed + 10)
        yield f"s{seed}-cov-defl", K, Ym, dict(Z=Z, probes=4, seed=seed, deflate=(U[:, :10], s[:10]), covariate_names=["i", "a", "b"])
        yield f"s{seed}-nodiag", K, Y[:, :2], dict(probes=4, seed=seed, diag=False)
        yield f"s{seed}-maxsteps", K, Ym, dict(probes=3, seed=seed, max_steps=4)
    K, Y, Z, U, s = problem(9, 60, 20)
    keep = s > 1e-10 * s.max()
    yield "lowrank-exact-defl", K, Y, dict(Z=Z, probes=4, seed=1, deflate=(U[:, keep], s[keep]))
    yield "tiny", K[:8, :8], Y[:8, 0], dict(probes=3, seed=2)

def fitdict(f):
    return dataclasses.asdict(f)

def run():
    out = {}
    for name, K, Y, kw in cases():
        kw = dict(kw); diag = kw.pop("diag", True); Z = kw.pop("Z", None)
        ck = Ck()
        res = fit_matrix_free(Op(K, diag), Y, Z, checkpoint=ck, **kw)
        g, w = blup_matrix_free(Op(K), res)
        prof = {nm: res.loglik_profile(np.linspace(0, 0.99, 7), nm) for nm in res.phenotype_names}
        qf = {nm: res.quadratic_forms(0.3, nm) for nm in res.phenotype_names}
        d = {f: getattr(res, f) for f in ("phenotype_names", "covariate_names", "n", "lanczos_steps", "passes_over_X",
             "converged", "delta_h2", "delta_logl", "probes", "seed", "tol", "max_steps", "deflation_rank", "scales", "unit_sigma2")}
        notes = {k: v for k, v in res.notes.items() if k not in ("seconds", "pass_seconds")}
        out[name] = dict(fits=[fitdict(f) for f in res.fits], res=d, notes=notes, g=g, w=w, prof=prof, qf=qf, states=ck.states)
        print(name, [round(f.h2, 4) for f in res.fits], res.lanczos_steps, flush=True)
    return out

def same(a, b, path=""):
    if isinstance(a, dict):
        assert list(a) == list(b), (path, list(a), list(b))
        for k in a: same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)): same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), path
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), path
    else:
        assert type(a) == type(b) and a == b, (path, a, b)

if __name__ == "__main__":
    if sys.argv[1] == "capture":  # capture OUT.pkl; compare A.pkl B.pkl
        pickle.dump(run(), open(sys.argv[2], "wb"))
    else:
        a, b = pickle.load(open(sys.argv[2], "rb")), pickle.load(open(sys.argv[3], "rb"))
        same(a, b); print("IDENTICAL:", len(a), "cases")
