"""The steps of the matrix-free REML solver, in the order :func:`bigmm.mfreml.fit_matrix_free`
runs them.

1. :func:`check_operator`, :func:`check_inputs`: every refusal, before any pass over X;
2. :func:`make_patterns`: one :class:`bigmm.mf_pattern.Pattern` per missing-value pattern;
3. :func:`resume`: the state after the last step a checkpoint holds (:func:`restore_state`);
4. per step (:class:`SolverState`): :func:`one_pass` (K applied once to every recurrence's
   vectors), :func:`update_estimates` (ĥ² and ℓ_R from the Gauss rules),
   :func:`check_convergence`, :func:`save_state`.

The final result is made in :mod:`bigmm.mfreml`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .lanczos import colnorm2
from .mf_likelihood import H2_MAX, QuadratureModel, maximise
from .mf_pattern import Pattern
from .results import design_names

log = logging.getLogger("bigmm")

STATE_VERSION = 1


# --------------------------------------------------------------------------------------
# 1. check inputs
# --------------------------------------------------------------------------------------

@dataclass
class Problem:
    """The checked inputs: Y on each phenotype's unit scale (``Y / scales``), Z, the names, the
    observed-value mask, the parsed deflation, and per missing-value pattern its phenotypes
    ``cols`` with ``(obs, Zo, Ỹo, shift)`` (Ỹ: Y with its OLS fit on Z removed)."""

    n: int
    Y: np.ndarray
    Z: np.ndarray
    names: list
    znames: list
    scales: np.ndarray
    obs_all: np.ndarray
    deflation: object
    tol: float
    patterns: list = field(default_factory=list)

    @property
    def m(self) -> int:
        """The number of phenotypes."""
        return self.Y.shape[1]

    @property
    def c(self) -> int:
        """The number of fixed effects."""
        return self.Z.shape[1]


def check_operator(op) -> int:
    """The operator's number of samples, after checking it has ``n`` and ``apply``."""
    if not (hasattr(op, "n") and callable(getattr(op, "apply", None))):
        raise InputError("op must have an attribute n and a method apply(M, want_diag=False) -> (K M, diag)")
    return int(op.n)


def _check_settings(probes, max_steps, tol, grid_size) -> float:
    """Refuse unusable solver settings; returns tol as a float."""
    if not isinstance(probes, (int, np.integer)) or probes < 2:
        raise InputError(f"probes must be an integer ≥ 2 (the Monte Carlo error needs at least two), "
                         f"got {probes!r}")
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 2:
        raise InputError(f"max_steps must be an integer ≥ 2 (convergence compares two steps), got {max_steps!r}")
    try:
        tol = float(tol)
    except (TypeError, ValueError):
        tol = float("nan")
    if not (math.isfinite(tol) and tol > 0):
        raise InputError(f"tol must be a positive number, got {tol!r}")
    if not isinstance(grid_size, (int, np.integer)) or grid_size < 3:
        raise InputError(f"grid_size must be an integer ≥ 3, got {grid_size!r}")
    return tol


def _check_arrays(n: int, Y, Z) -> tuple[np.ndarray, np.ndarray]:
    """Y as (n, m) and Z as (n, c) float64 arrays (Z defaults to an intercept), or a refusal."""
    Y = np.array(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[0] != n:
        raise InputError(f"phenotypes Y must be (n,) or (n, m) with n = {n} rows (the operator's samples), "
                         f"got shape {Y.shape}")
    if np.isinf(Y).any():
        raise InputError("phenotypes contain infinite values; use NaN for a missing value")
    Z = np.ones((n, 1)) if Z is None else np.array(Z, dtype=np.float64)
    if Z.ndim == 1:
        Z = Z[:, None]
    if Z.ndim != 2 or Z.shape[0] != n:
        raise InputError(f"covariates Z must be (n, c) with n = {n} rows, got shape {Z.shape}")
    if Z.shape[1] == 0:
        raise InputError("Z has no columns; the model needs at least an intercept")
    if not np.all(np.isfinite(Z)):
        raise InputError("covariates contain missing or non-finite values; drop those samples first")
    if Y.shape[1] == 0:
        raise InputError("no phenotypes (Y has no columns)")
    return Y, Z


def parse_deflation(deflate, n: int):
    """``(U, s, cross)`` from a Spectrum or a tuple ``(U, s)`` (None without deflation), or a
    refusal; ``cross`` = ‖(I − UUᵀ) K u_i‖² per pair where known (a Spectrum's ritz_cross)."""
    if deflate is None:
        return None
    cross = None
    if hasattr(deflate, "U") and hasattr(deflate, "s"):
        U, s = deflate.U, deflate.s
        # a Spectrum's ritz_cross: ‖(I − UUᵀ) K u_i‖² per pair, None for exact eigenvectors
        cross = getattr(deflate, "ritz_cross", None)
        if cross is None:
            cross = np.zeros(np.shape(s)[0] if np.ndim(s) else 0)
        if getattr(deflate, "n", n) != n:
            raise InputError(f"deflation spectrum is over {deflate.n} samples, the operator over {n}")
    else:
        try:
            U, s = deflate
        except (TypeError, ValueError):
            raise InputError("deflate must be a bigmm Spectrum or a tuple (U, s) of orthonormal vectors "
                             "(n x k) and their Rayleigh values (k,)") from None
    U = np.asarray(U, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if U.ndim != 2 or U.shape[0] != n:
        raise InputError(f"deflation vectors U must be an (n, k) = ({n}, k) array, got shape {U.shape}")
    k = U.shape[1]
    if k >= n:
        raise InputError(f"deflation rank k = {k} must be below the number of samples n = {n} "
                         f"(with all n eigenpairs use bigmm.fit_reml on the exact spectrum)")
    if k == 0:
        return None
    if s.shape != (k,):
        raise InputError(f"deflation values s must have k = {k} entries (one per column of U), got {s.shape}")
    if not (np.all(np.isfinite(U)) and np.all(np.isfinite(s))):
        raise InputError("deflation vectors or values contain non-finite entries")
    err = float(np.abs(U.T @ U - np.eye(k)).max())
    if err > 1e-6:
        raise InputError(f"deflation vectors U are not orthonormal (max |UᵀU − I| = {err:.1e})")
    if cross is not None:
        cross = np.asarray(cross, dtype=np.float64).reshape(-1)
        if cross.shape != (k,) or not np.all(np.isfinite(cross)):
            cross = None
    return U, np.maximum(s, 0.0), cross


def _unit_scales(Y: np.ndarray, obs_all: np.ndarray, names: list, c: int) -> np.ndarray:
    """Refuse phenotypes with too few observed samples or no variation; returns the scale of
    each (its largest |y| times the SD of y / that), so the fit runs on a unit scale."""
    m = Y.shape[1]
    n_obs = obs_all.sum(axis=0)
    for j in range(m):
        if n_obs[j] < c + 2:
            raise InputError(f"phenotype {names[j]!r}: {n_obs[j]} observed samples, need at least {c + 2} "
                             f"for {c} fixed effects")
        yj = Y[obs_all[:, j], j]
        if not (yj.max() > yj.min()):
            raise InputError(f"phenotype {names[j]!r} is constant; there is nothing to fit")
    # the fit runs on a unit scale per phenotype (REML is scale-equivariant; the fits are scaled
    # back at the end), so a trait measured in units of 1e-200 or 1e150 neither under- nor overflows
    scales = np.ones(m)
    for j in range(m):
        yj = Y[obs_all[:, j], j]
        big = float(np.max(np.abs(yj)))
        scales[j] = big * float(np.std(yj / big))
    return scales


def _pattern_design(Z: np.ndarray, Y: np.ndarray, obs: np.ndarray, cols: list, names: list):
    """``(Zo, Ỹo, shift)`` of one pattern: Y's OLS residuals on Z over the observed samples
    (projected twice) and the OLS coefficients; refuses collinear Z or a Y inside span(Z)."""
    c = Z.shape[1]
    Zo = Z[obs]
    if np.linalg.matrix_rank(Zo) < c:
        raise InputError(f"phenotype {names[cols[0]]!r}: the fixed effects are collinear on its "
                         f"{int(obs.sum())} observed samples")
    Yo = Y[np.ix_(obs, cols)]
    Qz, Rz = np.linalg.qr(Zo)
    QtY = Qz.T @ Yo
    Yr = Yo - Qz @ QtY
    QtY2 = Qz.T @ Yr  # a second projection: Ỹ ⟂ Z to working precision
    Yr -= Qz @ QtY2
    shift = np.linalg.solve(Rz, QtY + QtY2)
    scale_y = np.sqrt(colnorm2(Yo - Yo.mean(axis=0)))
    small = np.sqrt(colnorm2(Yr)) <= 1e-10 * np.maximum(scale_y, 1e-300)
    if small.any():
        j = cols[int(np.flatnonzero(small)[0])]
        raise InputError(f"phenotype {names[j]!r} is a linear combination of the covariates on its "
                         f"observed samples; there is no residual variance to fit")
    return Zo, Yr, shift


def check_inputs(n: int, Y, Z, *, phenotype_names, covariate_names, probes, max_steps, tol, deflate,
                 grid_size) -> Problem:
    """Every refusal of the fit, before any pass over X: the settings, Y and Z, the names, the
    deflation, each phenotype, and each missing-value pattern's design (Z of full rank on its
    observed samples, Y not inside span(Z)). Returns the checked :class:`Problem`."""
    tol = _check_settings(probes, max_steps, tol, grid_size)
    Y, Z = _check_arrays(n, Y, Z)
    names, znames = design_names(Y.shape[1], Z.shape[1], phenotype_names, covariate_names)
    deflation = parse_deflation(deflate, n)
    obs_all = ~np.isnan(Y)
    scales = _unit_scales(Y, obs_all, names, Z.shape[1])
    prob = Problem(n=n, Y=Y / scales, Z=Z, names=names, znames=znames, scales=scales, obs_all=obs_all,
                   deflation=deflation, tol=tol)
    groups: dict[bytes, list[int]] = {}
    packed = np.packbits(obs_all, axis=0)
    for j in range(prob.m):
        groups.setdefault(packed[:, j].tobytes(), []).append(j)
    for cols in groups.values():
        obs = obs_all[:, cols[0]]
        prob.patterns.append((cols, obs) + _pattern_design(Z, prob.Y, obs, cols, names))
    return prob


# --------------------------------------------------------------------------------------
# 2. one group per missing-value pattern
# --------------------------------------------------------------------------------------

def make_patterns(prob: Problem, probes: int, seed: int) -> list[Pattern]:
    """One :class:`Pattern` (its block, probe and deflation recurrences) per missing-value pattern."""
    return [Pattern(gi, cols, [prob.names[j] for j in cols], obs, Zo, Yr, shift, prob.deflation,
                    int(probes), int(seed))
            for gi, (cols, obs, Zo, Yr, shift) in enumerate(prob.patterns)]


def plan_widest_pass(op, groups: list[Pattern]) -> None:
    """Tell the operator (if it plans its memory) the width of the first, widest pass."""
    width1 = sum(sum(p.shape[1] for _, p in g.pieces(1)) for g in groups)
    if hasattr(op, "plan"):
        op.plan(width1)  # the operator's memory plan for the widest pass, before any pass


# --------------------------------------------------------------------------------------
# 3. the solver's state, and resuming it from a checkpoint
# --------------------------------------------------------------------------------------

@dataclass
class SolverState:
    """Where the iteration stands: the steps done, the previous step's estimates, the changes
    between the last two steps, the convergence streak per phenotype, and this run's passes."""

    m: int
    step: int = 0
    prev_h: np.ndarray | None = None
    prev_ll: np.ndarray | None = None
    delta_h: np.ndarray = None
    delta_ll: np.ndarray = None
    streak: np.ndarray = None
    passes: int = 0
    pass_seconds: list = field(default_factory=list)

    def __post_init__(self):
        """A fresh state: no change measured yet, no streak."""
        self.delta_h = np.full(self.m, np.nan) if self.delta_h is None else self.delta_h
        self.delta_ll = np.full(self.m, np.nan) if self.delta_ll is None else self.delta_ll
        self.streak = np.zeros(self.m, dtype=np.int64) if self.streak is None else self.streak

    def finished(self, groups: list[Pattern], max_steps: int) -> bool:
        """No further step: max_steps reached, every recurrence exhausted, or (from step 2 on)
        every phenotype converged."""
        exhausted = not any(g.active for g in groups)
        return (self.step >= max_steps or exhausted
                or (self.step >= 2 and bool(np.all(self.streak >= 2))))


def fingerprint(prob: Problem, seed: int, probes: int) -> str:
    """The hash of the inputs a saved state belongs to (Y on its unit scale, Z, seed, probes,
    deflation)."""
    h = hashlib.sha256()
    h.update(f"v{STATE_VERSION} n={prob.n} seed={seed} probes={probes}".encode())
    Y = prob.Y
    h.update(np.ascontiguousarray(np.nan_to_num(Y, nan=1.2345e300)).tobytes())
    h.update(np.isnan(Y).tobytes())
    h.update(np.ascontiguousarray(prob.Z).tobytes())
    if prob.deflation is not None:
        h.update(np.ascontiguousarray(prob.deflation[0]).tobytes())
        h.update(np.ascontiguousarray(prob.deflation[1]).tobytes())
    return h.hexdigest()


def restore_state(saved: dict, groups: list[Pattern], m: int) -> SolverState:
    """The solver state a checkpoint holds, with every pattern's recurrences restored."""
    meta, arrays = saved["meta"], saved["arrays"]
    for g, gm in zip(groups, meta["groups"]):
        g.restore(arrays, gm)
    run = SolverState(m, step=int(meta["step"]))
    if "prev_h" in arrays:
        run.prev_h = np.array(arrays["prev_h"], dtype=np.float64)
        run.prev_ll = np.array(arrays["prev_ll"], dtype=np.float64)
    run.delta_h = np.array(arrays["delta_h"], dtype=np.float64)
    run.delta_ll = np.array(arrays["delta_ll"], dtype=np.float64)
    run.streak = np.array(arrays["streak"], dtype=np.int64)
    return run


def state_matches(saved: dict, fp: str) -> bool:
    """Whether a saved state is of these inputs (fingerprint) and of this state layout."""
    meta = saved.get("meta", {})
    return meta.get("fingerprint") == fp and meta.get("version") == STATE_VERSION


def resume(checkpoint, groups: list[Pattern], fp: str, m: int, notes: dict) -> SolverState:
    """The state to continue from: the checkpoint's if it holds a state of these inputs (noted
    in ``notes``), else a fresh one."""
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is None:
        return SolverState(m)
    if not state_matches(saved, fp):
        notes["checkpoint"] = "ignored: it holds the state of other inputs"
        log.warning("matrix-free REML: the checkpoint holds the state of other inputs; starting afresh")
        return SolverState(m)
    run = restore_state(saved, groups, m)
    notes["resumed_after_step"] = run.step
    log.info("matrix-free REML: resuming after step %d (checkpoint)", run.step)
    return run


# --------------------------------------------------------------------------------------
# 4. one step: pass, estimates, convergence, save
# --------------------------------------------------------------------------------------

def one_pass(op, groups: list[Pattern], run: SolverState, n: int) -> int:
    """Step ``run.step``: apply K once to every active recurrence's vectors side by side (zero
    rows where a pattern is missing; the first pass also asks for diag K) and advance every
    recurrence with its columns of the product. Returns the width of the pass."""
    layout = []
    col = 0
    for g in groups:
        for key, P in g.pieces(run.step):
            layout.append((g, key, col, col + P.shape[1], P))
            col += P.shape[1]
    Mfull = np.zeros((n, col))
    for g, key, a, b, P in layout:
        if g.full:
            Mfull[:, a:b] = P
        else:
            Mfull[g.idx, a:b] = P
    t0 = time.perf_counter()
    KM, diag = op.apply(Mfull, want_diag=(run.step == 1))
    run.pass_seconds.append(round(time.perf_counter() - t0, 3))
    run.passes += 1
    KM = np.asarray(KM, dtype=np.float64)
    if KM.shape != Mfull.shape or not np.all(np.isfinite(KM)):
        raise InputError(f"the operator returned a product of shape {KM.shape} (expected {Mfull.shape}) "
                         f"or with non-finite values")
    if diag is not None:
        diag = np.asarray(diag, dtype=np.float64).reshape(-1)
    prods: dict = {g.gi: {} for g in groups}
    for g, key, a, b, _ in layout:
        prods[g.gi][key] = KM[:, a:b] if g.full else KM[g.idx, a:b]
    for g in groups:
        g.absorb(run.step, prods[g.gi], diag)
    return col


def update_estimates(groups: list[Pattern], step: int, grid: np.ndarray, m: int):
    """ĥ² and ℓ_R of every phenotype after this step, and the same with the previous step's Ritz
    control variate (the figures convergence compares: they measure the quadrature's
    convergence, not the reshuffling of zero-mean Monte Carlo terms as more Ritz pairs converge;
    that error is in h2_se_mc). Returns (h_now, ll_now, h_cmp, ll_cmp)."""
    h_now, ll_now = np.empty(m), np.empty(m)
    h_cmp, ll_cmp = np.empty(m), np.empty(m)
    for g in groups:
        mdl = QuadratureModel(g, step, H2_MAX)
        hh, ll = maximise(mdl, 0, grid, H2_MAX)
        h_now[g.cols], ll_now[g.cols] = hh, ll
        current = (mdl.ritz_theta, mdl.ritz_dev)
        if g.prev_ritz is not None and (g.prev_ritz[0].size or mdl.ritz_theta.size):
            mdl.use_ritz(g.prev_ritz)
            hh, ll = maximise(mdl, 0, grid, H2_MAX)
        h_cmp[g.cols], ll_cmp[g.cols] = hh, ll
        g.prev_ritz = current
    return h_now, ll_now, h_cmp, ll_cmp


def check_convergence(run: SolverState, groups: list[Pattern], estimates, tol: float) -> None:
    """Update the changes |Δĥ²|, |Δℓ_R| since the previous step and the streak of steps with
    ``|Δĥ²| < tol`` and ``|Δℓ_R| < 10 tol`` (converged at 2); an exhausted pattern is exact:
    converged whatever the figures say."""
    h_now, ll_now, h_cmp, ll_cmp = estimates
    for g in groups:
        if not g.active:
            run.streak[g.cols] = np.maximum(run.streak[g.cols], 2)
    if run.prev_h is not None:
        run.delta_h = np.abs(h_cmp - run.prev_h)
        run.delta_ll = np.abs(ll_cmp - run.prev_ll)
        ok = (run.delta_h < tol) & (run.delta_ll < 10.0 * tol)
        run.streak = np.where(ok, run.streak + 1, 0)
        for g in groups:
            if not g.active:
                run.streak[g.cols] = np.maximum(run.streak[g.cols], 2)
    run.prev_h, run.prev_ll = h_now, ll_now


def log_step(run: SolverState, max_steps: int, width: int) -> None:
    """One progress line per step."""
    step = run.step
    log.info("matrix-free REML step %d/%d: %d columns, max |Δh²| %.2e, max |Δℓ| %.2e, %d converged",
             step, max_steps, width, float(np.nanmax(run.delta_h)) if step > 1 else float("nan"),
             float(np.nanmax(run.delta_ll)) if step > 1 else float("nan"), int((run.streak >= 2).sum()))


def save_state(checkpoint, groups: list[Pattern], run: SolverState, fp: str, seed: int, probes: int) -> None:
    """Save the full state after this step (a dict of JSON-able "meta" and NumPy "arrays")."""
    if checkpoint is None:
        return
    arrays = {"prev_h": run.prev_h, "prev_ll": run.prev_ll, "delta_h": run.delta_h, "delta_ll": run.delta_ll,
              "streak": run.streak}
    gmeta = []
    for g in groups:
        a, gm = g.export()
        arrays.update(a)
        gmeta.append(gm)
    checkpoint.save({"meta": {"version": STATE_VERSION, "fingerprint": fp, "step": run.step,
                              "seed": int(seed), "probes": int(probes), "groups": gmeta},
                     "arrays": arrays})
