"""The state of a matrix-free components fit (:func:`bigmm.fit_components_matrix_free`).

Plain arrays and the CG systems of every fit in progress (:class:`_Fit`), written to an ``.npz``
after every pass so that a fit resumes after its last pass; the fingerprint that ties a state to
its inputs; which fit a key names (:func:`_spec`: the REML fit of a phenotype, its ML fit, its
REML fit without one component) and the solve settings every fit shares.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from .errors import InputError
from .mf_cg import CGSystem, LanczosCG

#: the CG tolerance of an AI iteration: max(cg_tol, min(LOOSE_CG_TOL, CG_TOL_FACTOR · max|Δθ| / Vp of
#: the step that led to it)); the first iteration uses LOOSE_CG_TOL. Far from the estimate the
#: step is large and a loose solve gives it as well; convergence is only declared at cg_tol.
LOOSE_CG_TOL = 1e-3
CG_TOL_FACTOR = 1e-2
#: CG steps (passes) per AI iteration at most
MAX_CG_STEPS = 500
#: the kinds of fit in a state: the REML fit of each phenotype, its ML fit, its REML fit without
#: one component (for that component's likelihood-ratio test)
REML, ML, WITHOUT = 0, 1, 2
#: the AI-iteration part of a state (the log-likelihood part is checked by its own ``logl_fp``,
#: and redone, not refused, when it differs or is absent: states of bigmm versions before the
#: log-likelihoods resume)
STATE_VERSION = 1


def _fingerprint(prob, m: int, n_probes, seed: int, constrain: bool, tol: float, cg_tol: float) -> str:
    h = hashlib.sha256()
    h.update(f"v{STATE_VERSION} n={prob.n} m={m} probes={n_probes} seed={seed} constrain={constrain} "
             f"tol={tol!r} cg_tol={cg_tol!r}".encode())
    h.update(np.ascontiguousarray(np.nan_to_num(prob.Y, nan=1.2345e300)).tobytes())
    h.update(np.ascontiguousarray(prob.Z).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# the state of a fit: plain arrays, written to an npz after every pass
# --------------------------------------------------------------------------------------

class _Fit:
    """Every array of a fit in progress (``arrays``), the CG systems per phenotype, and the
    pass-1 products per pattern; :meth:`save` / :meth:`load` write and read them atomically."""

    def __init__(self, fp: str):
        self.a: dict = {"fingerprint": np.array(fp), "passes": np.zeros(1, np.int64),
                        "stage": np.zeros(1, np.int64)}  # stage 0: before pass 1, 1: iterating
        self.cg: dict = {}

    def save(self, path) -> None:
        if path is None:
            return
        arrays = dict(self.a)
        for k, s in self.cg.items():
            arrays.update(s.export(f"sys{k}_"))
        tmp = f"{path}.partial.npz"
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path, fp: str, q: int) -> "_Fit | None":
        if path is None or not os.path.exists(path):
            return None
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if str(arrays.get("fingerprint", "")) != fp:
            raise InputError(f"{path}: this saved state is of other inputs (phenotypes, covariates, components, "
                             f"probes, seed or tolerances); remove it or pass another state path to start afresh")
        self = cls(fp)
        self.a = {k: v for k, v in arrays.items() if not k.startswith("sys")}
        names = sorted(k[3:-2] for k in arrays if k.startswith("sys") and k.endswith("_B"))
        self.cg = {(int(n) if n.isdigit() else n): (CGSystem if n.isdigit() else LanczosCG).restore(arrays, f"sys{n}_")
                   for n in names}
        return self

    def reset_logl(self, q: int, logl_fp: str) -> bool | None:
        """Drop the log-likelihood part of the state (the ML and reduced fits, the log det solves
        and their results) when it was made with other settings, or before it existed; the AI
        iterations of the REML fits are kept. True when something was dropped; None when the
        state cannot be kept (a REML fit whose solves were already dropped: start afresh)."""
        if str(self.a.get("logl_fp", "")) == logl_fp:
            return False
        if any(f"launched{k}" in self.a for k in range(q)):
            return None
        extra = [k for k in self.cg if isinstance(k, str) or k >= q]
        for k in extra:
            del self.cg[k]
        gone = [k for k in self.a if k.startswith(("spec", "launched", "queue", "slq", "ldq", "ldcv", "nfits",
                                                  "passes_logl"))
                or (k.rstrip("0123456789") != k and int(k[len(k.rstrip("0123456789")):]) >= q)]
        for k in gone:
            del self.a[k]
        self.a["logl_fp"] = np.array(logl_fp)
        self.a["nfits"] = np.array([q], np.int64)
        self.a["passes_logl"] = np.zeros(1, np.int64)
        return bool(extra or gone)



# --------------------------------------------------------------------------------------
# the fits in a state
# --------------------------------------------------------------------------------------

def _ai_keys(fit: _Fit) -> list:
    """The AI fits that hold CG systems, in order (the REML fits 0..q−1, then the extra fits)."""
    return sorted(k for k in fit.cg if not isinstance(k, str))


def _slq_keys(fit: _Fit) -> list:
    """The log det solves in progress ("L<fit>"), in order of their fit."""
    return sorted((k for k in fit.cg if isinstance(k, str)), key=lambda k: int(k[1:]))



def _pattern_of(prob, k: int) -> int:
    """The missing-value pattern of phenotype k."""
    for gi, pat in enumerate(prob.patterns):
        if k in pat[0]:
            return gi
    raise KeyError(k)


def _spec(fit: _Fit, k: int, q: int) -> tuple[int, int, int]:
    """(phenotype, kind, dropped component) of fit k: the REML fits are 0..q−1, (k, REML, −1)."""
    if k < q:
        return k, REML, -1
    ph, kind, drop = (int(v) for v in fit.a[f"spec{k}"])
    return ph, kind, drop

