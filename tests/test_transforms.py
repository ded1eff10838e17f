"""The composability matrix: every public callable under jit, vmap, grad, x64 off and x64 on.

The list of public names is read from the package itself (`scoredyn` and its namespaces
`toy`, `analytic`, `reparam`, `nn`), and `test_every_public_name_is_registered` fails as soon
as a name is added without a case here (or an explicit, justified exclusion). Each case builds
small inputs in a given dtype and returns a function of array arguments; the cells are

- `jit`: `jax.jit(fn)` traces (no value is needed concretely) and its outputs on both
  argument sets are finite (`test_reliability.py` compares jitted and eager samples bit for
  bit);
- `vmap`: `jax.vmap(fn)` over two argument sets equals the two separate calls;
- `grad`: `jax.grad` of a fixed random linear functional of the outputs is finite and matches a
  central finite difference along a random direction (float64);
- `x32`: under `jax.enable_x64(False)`, built in float32: every floating output is float32 and
  finite (nothing silently upcast, nothing overflowing);
- `x64`: with x64 on, built in float64: every floating output is float64 (no silent downcast).

A cell that does not apply (no floating input to differentiate, a host-side driver) names its
reason in the registry and is not generated.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import scoredyn as sd
from helpers import all_finite, mixture_2d, old_bound

NAMESPACES = {
    "": sd,
    "toy.": sd.toy,
    "analytic.": sd.analytic,
    "reparam.": sd.reparam,
    "nn.": sd.nn,
    "grids.": sd.grids,
}

# Public names with no cell, and why (abstract bases and plain result containers have no
# behaviour of their own; every concrete subclass / producer has a case).
_INT_GRID = "integer trajectory built from Python ints (no arrays to transform); test_grids.py"
EXCLUDED = {
    "AbstractSDE": "abstract base; its concrete subclasses SDE, VPSDE, ... have cases",
    "AbstractLinearSDE": "abstract base; VPSDE, SubVPSDE, VESDE, CosineVPSDE have cases",
    "reparam.AbstractNoise": "abstract base; Gaussian, Gumbel, Laplace, Logistic, Uniform "
    "have cases",
    "VariationalBound": "NamedTuple of results, produced in every cell of variational_bound",
    "analytic.GammaEstimate": "container of results, produced in every cell of estimate_gamma",
    "nn.TrainState": "container; built and transformed by init_train_state / make_train_step",
    "batch_mesh": "returns a jax.sharding.Mesh (no arrays in or out); tests/test_sharding.py",
    "AbstractProcess": "abstract base; VPSDE, ..., DiscreteSchedule have cases",
    "AbstractModel": "abstract base; EpsModel, ScoreModel, X0Model, VModel, ClipX0 have cases",
    "AbstractSolver": "abstract base; every concrete solver has a case",
    "AbstractDiscreteSolver": "abstract base; DDPM, DDIM and the analytic solvers have cases",
    "AbstractState": "abstract container of a solver's state",
    "DiscreteState": "container; built by init and transformed by step in the sample cells",
    "DiscreteInfo": "NamedTuple of per-step results",
    "Sample": "NamedTuple of results, produced in every cell of sample",
    "Chain": "container, produced by make_chain and solver.chain in the sample cells",
    "grids.uniform_trajectory": _INT_GRID,
    "grids.quadratic_trajectory": _INT_GRID,
    "grids.even": _INT_GRID,
    "grids.leading": _INT_GRID,
    "grids.trailing": _INT_GRID,
    "grids.linspace": _INT_GRID,
    "grids.optimal": "a wrapper of analytic.optimal_trajectory, which has a case",
    "DPMSolverPPInfo": "NamedTuple of per-step results of DPMSolverPP.step",
    "DPMSolverInfo": "NamedTuple of per-step results of DPMSolverMultistep / DPMSolverFast.step",
    "UniPCVariant": "enum of UniPC's B(h) (UniPC.BH1, UniPC.BH2), an option in UniPC's case",
    "AbstractInterpolant": "abstract base; RectifiedFlow and Interpolant have cases",
    "RePaintInfo": "NamedTuple of per-step results of RePaint.step",
    "DiffusersConfig": "container of a parsed diffusers config (Python values); test_migration.py",
    "from_diffusers_config": "host-side parsing of a config dict into Python values and a "
    "schedule (no arrays in); test_migration.py",
}

TRANSFORMS = ("jit", "vmap", "grad", "x32", "x64")


def public_names() -> list[str]:
    names = []
    for prefix, mod in NAMESPACES.items():
        for n in dir(mod):
            if n.startswith("_"):
                continue
            obj = getattr(mod, n)
            if inspect.ismodule(obj):
                continue
            if callable(obj):
                names.append(prefix + n)
    return sorted(names)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: names share a Case
class Case:
    """`build(dtype) -> (fn, args, args2)`; `diff` are the argnums that `grad` differentiates."""

    build: Callable
    diff: tuple[int, ...] = ()
    skip: dict = dataclasses.field(default_factory=dict)  # transform -> reason it does not apply
    fd: bool = True  # check the gradient against a finite difference
    xfail: dict = dataclasses.field(default_factory=dict)  # transform -> known library gap


REGISTRY: dict[str, Case] = {}


def case(*names, diff=(), fd=True, xfail=None, **skip):
    def deco(build):
        shared = Case(build, tuple(diff), dict(skip), fd, dict(xfail or {}))
        for name in names:
            REGISTRY[name] = shared
        return build

    return deco


def arr(x, dt):
    return jnp.asarray(x, dt)


def key(i=0):
    return jax.random.key(i)


# ------------------------------------------------------------------------------ fixtures
@functools.cache
def _gm(dt):
    return mixture_2d(jnp.dtype(dt))


def gm(dt):
    return _gm(jnp.dtype(dt).name)


VP = sd.VPSDE()


def sched(dt, N=8):
    return sd.DiscreteSchedule.linear(N, 0.05, 0.3, dtype=dt)


def betas(dt, N=8, shift=0.0):
    return jnp.linspace(0.05 + shift, 0.3 + shift, N, dtype=dt)


EULER: dict[str, Any] = dict(solver=diffrax.Euler(), stepsize_controller=diffrax.ConstantStepSize())


# ------------------------------------------------------------------------------ SDEs
# Names that are used together share one case (one compilation per transform): the case's
# function calls every one of them, so each is exercised under every transform.
@case("VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", diff=(0, 1, 2))
def _(dt):
    makers = (
        lambda a, b: sd.VPSDE(a, b),
        lambda a, b: sd.SubVPSDE(a, b),
        lambda a, b: sd.VESDE(a, b),
        lambda s: sd.CosineVPSDE(s),
    )

    def fn(params, t, x):
        out = []
        for make, p in zip(makers, params):
            sde = make(*p)
            a, s = sde.marginal(t)
            f, g = sde.coefficients(t)
            out.append(
                dict(
                    a=a,
                    s=s,
                    f=f,
                    g=g,
                    lam=sde.log_snr(t),
                    drift=sde.drift(t, x),
                    diff=sde.diffusion(t, x),
                    plp=sde.prior_log_prob(x),
                )
            )
        return out

    P = lambda *ps: tuple(tuple(arr(v, dt) for v in p) for p in ps)
    p1 = P((0.1, 20.0), (0.1, 20.0), (0.01, 50.0), (0.008,))
    p2 = P((0.2, 10.0), (0.2, 10.0), (0.1, 10.0), (0.02,))
    return fn, (p1, arr(0.3, dt), arr([0.5, -1.0], dt)), (p2, arr(0.7, dt), arr([1.5, 0.2], dt))


@case("SDE", "probability_flow", "ProbabilityFlow", "reverse_sde", "ReverseSDE", diff=(0, 1))
def _(dt):
    score = gm(dt).score_fn(VP)

    def fn(t, x):
        general = sd.SDE(
            lambda t, x: -t * x, lambda t, x: jnp.sqrt(1.0 + x**2), state_dependent_diffusion=True
        )
        out = [general.drift(t, x), general.diffusion(t, x)]
        for sde in (VP, general):  # the state-dependent case adds the divergence correction
            s = score if sde is VP else (lambda t, x: -x)
            rs, RS = sd.reverse_sde(sde, s), sd.ReverseSDE(sde, s)
            out += [
                sd.probability_flow(sde, s)(t, x),
                sd.ProbabilityFlow(sde, s)(t, x),
                rs.drift(t, x),
                rs.diffusion(t, x),
                RS.drift(t, x),
            ]
        return out

    return fn, (arr(0.3, dt), arr([0.5, -1.0], dt)), (arr(0.8, dt), arr([1.0, 0.0], dt))


@case("perturb", diff=(1, 2))
def _(dt):
    fn = lambda k, x0, t: sd.perturb(k, VP, x0, t)
    return fn, (key(0), arr([0.5, -1.0], dt), arr(0.3, dt)), (key(1), arr([1, 2], dt), arr(0.9, dt))


@case("convert", "eps_to_score", "score_to_eps", "x0_to_eps", "v_to_eps", diff=(0, 1))
def _(dt):
    eps = gm(dt).eps_fn(VP)

    def fn(t, x):
        return (
            sd.convert(VP, eps, "eps", "v")(t, x),
            sd.eps_to_score(VP, eps)(t, x),
            sd.score_to_eps(VP, gm(dt).score_fn(VP))(t, x),
            sd.x0_to_eps(VP, sd.convert(VP, eps, "eps", "x0"))(t, x),
            sd.v_to_eps(VP, sd.convert(VP, eps, "eps", "v"))(t, x),
        )

    return fn, (arr(0.3, dt), arr([0.5, -1.0], dt)), (arr(0.8, dt), arr([1.0, 0.0], dt))


# ------------------------------------------------------------------------------ toy
@case("toy.GaussianMixture", diff=(0, 1, 2))
def _(dt):
    g = gm(dt)

    def fn(means, x, t, k):
        m = sd.toy.GaussianMixture(g.weights, means, g.covs)
        a, s = VP.marginal(t)
        return dict(
            lp=m.log_prob(x),
            lpt=m.marginal(VP, t).log_prob(x),
            em=m.eps_moments(a, s, x),
            draw=m.sample(k, 3),
        )

    return (
        fn,
        (g.means, arr([0.3, -0.2], dt), arr(0.3, dt), key(0)),
        (g.means + 0.1, arr([1.0, 0.5], dt), arr(0.6, dt), key(1)),
    )


# the discrete oracle rounds t to a step index: it is differentiated in x only
@case("toy.MixtureScore", "toy.DiscreteMixtureEps", "toy.discrete_eps_fn", diff=(0, 2))
def _(dt):
    g, s = gm(dt), sched(dt)

    def fn(t, t_n, x):
        return (
            sd.toy.MixtureScore(g, VP, "eps")(t, x),
            sd.toy.DiscreteMixtureEps(g, s)(t_n, x),
            sd.toy.discrete_eps_fn(g, s)(t_n, x),
        )

    return (
        fn,
        (arr(0.3, dt), arr(0.375, dt), arr([0.3, -0.2], dt)),
        (arr(0.6, dt), arr(0.75, dt), arr([1.0, 0.5], dt)),
    )


# ------------------------------------------------------------------------------ discrete
@case("DiscreteSchedule", diff=(0, 1, 2, 3))
def _(dt):
    def fn(b0, b1, s, beta_max, n):
        lin = sd.DiscreteSchedule.linear(8, b0, b1, dtype=dt)
        cos = sd.DiscreteSchedule.cosine(8, s, dtype=dt)
        fs = sd.DiscreteSchedule.from_sde(sd.VPSDE(0.1, beta_max), 8, dtype=dt)
        return dict(
            lab=lin.log_alpha_bar,
            betas=lin.betas,
            lam=lin.log_snr()[1:],
            marg=lin.marginal(n),
            time=lin.time(n),
            cos=cos.alpha_bar,
            fs=fs.one_minus_alpha_bar,
        )

    a1 = (arr(0.01, dt), arr(0.2, dt), arr(0.008, dt), arr(20.0, dt), jnp.asarray(3))
    a2 = (arr(0.02, dt), arr(0.1, dt), arr(0.02, dt), arr(10.0, dt), jnp.asarray(8))
    return fn, a1, a2


@case(
    "respace",
    vmap="integer Python arguments only",
    grad="integer output",
    x64="integer output only",
)
def _(dt):
    return (lambda: (sd.respace(10, 3), sd.respace(10, 4, "quadratic"))), (), ()


@case("trajectory", grad="integer input and output", x64="integer output only")
def _(dt):
    fn = lambda idx: sd.trajectory(idx, 10)  # a decreasing (DDIM-style) list is reversed
    return fn, (jnp.array([10, 6, 2, 0]),), (jnp.array([0, 1, 5, 10]),)


@case("forward_posterior", "posterior_variance", "reverse_variances", diff=(0, 3, 4))
def _(dt):
    def fn(b, n, m, frac, eta):
        s = sd.DiscreteSchedule.from_betas(b)
        tau = sd.respace(8, 4)
        return (
            sd.forward_posterior(s, n, m, frac * sd.posterior_variance(s, n, m)),
            sd.forward_posterior(s, n, m),
            [sd.reverse_variances(s, tau, k, eta) for k in ("ddim", "ddpm", "ddpm_beta", "eta")],
        )

    return (
        fn,
        (betas(dt), jnp.asarray(5), jnp.asarray(2), arr(0.5, dt), arr(0.5, dt)),
        (betas(dt, shift=0.01), jnp.asarray(8), jnp.asarray(0), arr(0.3, dt), arr(1.0, dt)),
    )


@case("ddim_step", "reverse_step", diff=(1, 2, 3))
def _(dt):
    def fn(k, b, x, e, n, m):
        s = sd.DiscreteSchedule.from_betas(b)
        return (
            sd.ddim_step(k, s, n, m, x, e, 0.5 * sd.posterior_variance(s, n, m)),
            sd.reverse_step(k, s, n, m, x, e, clip_x0=3.0),
        )

    a1 = (
        key(0),
        betas(dt),
        arr([0.5, -1.0], dt),
        arr([0.1, 0.2], dt),
        jnp.asarray(6),
        jnp.asarray(3),
    )
    a2 = (
        key(1),
        betas(dt, shift=0.01),
        arr([1, 0], dt),
        arr([-0.3, 0.2], dt),
        jnp.asarray(8),
        jnp.asarray(7),
    )
    return fn, a1, a2


@case("sample_discrete", "variational_bound", diff=(1, 2))
def _(dt):
    g = gm(dt)

    def fn(k, b, x):
        s = sd.DiscreteSchedule.from_betas(b)
        eps = sd.toy.discrete_eps_fn(g, s)
        tau = sd.respace(8, 4)
        return (
            sd.sample_discrete(k, s, eps, x, tau, return_trajectory=True),
            old_bound(k, s, eps, x, tau, decoder="gaussian"),
        )

    return (
        fn,
        (key(0), betas(dt), arr([0.5, -1.0], dt)),
        (key(1), betas(dt, shift=0.01), arr([1.0, 0.2], dt)),
    )


@case("gaussian_kl", "discretized_gaussian_log_likelihood", diff=(0, 1, 2, 3, 5, 6))
def _(dt):
    def fn(mq, vq, mp, vp, x, mu, v):
        return sd.gaussian_kl(mq, vq, mp, vp), sd.discretized_gaussian_log_likelihood(x, mu, v, 4)

    x = arr([-1.0, 1.0 / 3.0, 1.0], dt)
    a1 = (
        arr([0.1, 0.2], dt),
        arr([1.0, 0.5], dt),
        arr([0.0, 0.3], dt),
        arr(0.7, dt),
        x,
        arr([-0.8, 0.2, 0.9], dt),
        arr(0.1, dt),
    )
    a2 = (
        arr([1.0, 0.0], dt),
        arr([2.0, 0.1], dt),
        arr([0.5, 0.3], dt),
        arr(1.5, dt),
        -x,
        arr([0.5, 0, 0], dt),
        arr(0.3, dt),
    )
    return fn, a1, a2


@case("diffusion_loss", diff=(1, 2))
def _(dt):
    def fn(k, w, x0):
        model = lambda t, x: w * x * t
        a = sd.diffusion_loss(k, VP, model, x0, weighting="likelihood", time_sampling="importance")
        b = sd.diffusion_loss(k, sched(dt), model, x0, prediction="v", weighting="min_snr")
        return a, b

    return fn, (key(0), arr(0.5, dt), arr([0.5, -1.0], dt)), (key(1), arr(1.5, dt), arr([1, 0], dt))


# ------------------------------------------------------------------------------ sampling layer
@case(
    "sample",
    "DDPM",
    "DDIM",
    "EpsModel",
    "ClipX0",
    "variational_bound",
    "make_chain",
    "toy.discrete_eps2_fn",
    "toy.DiscreteMixtureEps2",
    diff=(1, 2),
)
def _(dt):
    g = gm(dt)

    def fn(k, b, x):
        s = sd.DiscreteSchedule.from_betas(b)
        model = sd.EpsModel(sd.toy.discrete_eps_fn(g, s))
        tau = sd.respace(8, 4)
        ddpm = sd.sample(k, s, model, sd.DDPM(), tau, x, save_trajectory=True)
        ddim = sd.sample(None, s, sd.ClipX0(model, -2.0, 2.0), sd.DDIM(eta=0.0), tau, x)
        eta = sd.sample(k, s, model, sd.DDIM(eta=0.5), tau, x)
        chain = sd.DDPM(large_variance=True).chain(s, tau)
        chain = sd.make_chain(s, tau, chain.lam2, chain.variances, decoder_var=0.1)
        bound = sd.variational_bound(k, s, model, chain, x, levels=None)
        eps2 = sd.toy.discrete_eps2_fn(g, s)(s.time(3), x)
        return ddpm, ddim.x, eta.x, bound, eps2

    return (
        fn,
        (key(0), betas(dt), arr([0.5, -1.0], dt)),
        (key(1), betas(dt, shift=0.01), arr([1.0, 0.2], dt)),
    )


@case("ScoreModel", "X0Model", "VModel", diff=(0, 1))
def _(dt):
    g = gm(dt)
    score = g.score_fn(VP)
    eps = g.eps_fn(VP)

    def x0_net(t, x):
        a, s = VP.marginal(t)
        return (x - s * eps(t, x)) / a

    def v_net(t, x):
        a, s = VP.marginal(t)
        return a * eps(t, x) - s * x0_net(t, x)

    def fn(t, x):
        out = []
        for m in (sd.ScoreModel(score), sd.X0Model(x0_net), sd.VModel(v_net)):
            out += [m.eps(VP, t, x), m.x0(VP, t, x), m.score(VP, t, x), m.v(VP, t, x)]
        return out

    return fn, (arr(0.3, dt), arr([0.5, -1.0], dt)), (arr(0.7, dt), arr([1.0, 0.2], dt))


@case(
    "analytic.AnalyticDPM",
    "analytic.AnalyticDDIM",
    "analytic.SNDPM",
    "analytic.NPRDPM",
    diff=(1, 2),
)
def _(dt):
    g = gm(dt)
    s = sched(dt)
    model = sd.EpsModel(sd.toy.discrete_eps_fn(g, s))
    head = sd.toy.discrete_eps2_fn(g, s)
    tau = sd.respace(8, 4)

    def fn(k, x, ms):
        outs = [
            sd.sample(k, s, model, solver, tau, x).x
            for solver in (
                sd.analytic.AnalyticDPM(ms, data_range=(-2.0, 2.0)),
                sd.analytic.AnalyticDDIM(ms),
                sd.analytic.SNDPM(head),
                sd.analytic.NPRDPM(head),
            )
        ]
        chain = sd.analytic.AnalyticDPM(ms).chain(s, tau)
        return outs, sd.variational_bound(k, s, model, chain, x, levels=None).total

    return fn, (key(0), arr([0.5, -1.0], dt), _ms(dt)), (key(1), arr([1.0, 0.2], dt), _ms(dt, 0.2))


@case(
    "ODE",
    "DiffraxSDE",
    "EulerMaruyama",
    "PredictorCorrector",
    "DPMSolver",
    "grids.uniform",
    "grids.log_snr",
    "grids.quadratic",
    "grids.karras",
    diff=(1,),
)
def _(dt):
    g = gm(dt)
    model = sd.ScoreModel(g.score_fn(VP))

    def fn(k, x):
        out = []
        grid = sd.grids.uniform(VP, 4, t_eps=1e-2, dtype=dt)
        out.append(sd.sample(None, VP, model, sd.ODE(**EULER, dt0=-0.25), grid, x).x)
        out.append(sd.sample(k, VP, model, sd.DiffraxSDE(), grid, x).x)
        out.append(sd.sample(k, VP, model, sd.EulerMaruyama(), grid, x).x)
        out.append(sd.sample(k, VP, model, sd.PredictorCorrector(), grid, x).x)
        # the three grid makers are outputs of their own (each under every transform); one
        # DPMSolver run consumes one of them (a run per grid compiled the same solver thrice)
        out.append(sd.grids.log_snr(VP, 3, t_eps=1e-2, dtype=dt))
        out.append(sd.grids.quadratic(VP, 3, t_eps=1e-2, dtype=dt))
        grid = sd.grids.karras(VP, 3, t_eps=1e-2, dtype=dt)
        out.append(sd.sample(None, VP, model, sd.DPMSolver(order=2), grid, x).x)
        return out

    return fn, (key(0), arr([0.5, -1.0], dt)), (key(1), arr([1.0, 0.2], dt))


@case("analytic.monotone_ms_eps", diff=(0, 1))
def _(dt):
    fn = lambda b, ms: sd.analytic.monotone_ms_eps(sd.DiscreteSchedule.from_betas(b), ms)
    return fn, (betas(dt), _ms(dt)), (betas(dt, shift=0.01), _ms(dt, 0.2))


@case("dequantization_t_eps", grad="bisection: piecewise constant in bin_width (zero gradient)")
def _(dt):
    fn = lambda w: sd.dequantization_t_eps(VP, w)
    return fn, (arr(0.125, dt),), (arr(0.5, dt),)


# ------------------------------------------------------------------------------ likelihood
_W = np.array([[0.9, -0.3], [0.4, 1.1]])


@case("divergence", "hutchinson_divergence", diff=(0, 1))
def _(dt):
    W = arr(_W, dt)
    f = lambda y: jnp.tanh(W @ y)
    fn = lambda x, p: (sd.divergence(f, x), sd.hutchinson_divergence(f, x, p))
    p = sd.hutchinson_probes(key(0), (2,), num_probes=3, dtype=dt)
    return fn, (arr([0.5, -1], dt), p), (arr([0.1, 0.3], dt), -p)


@case("hutchinson_probes", grad="no floating input (a key in, random signs out)")
def _(dt):
    fn = lambda k: sd.hutchinson_probes(k, (2,), num_probes=2, probe="gaussian", dtype=dt)
    return fn, (key(0),), (key(1),)


@case("log_likelihood", "bits_per_dim", diff=(1, 2))
def _(dt):
    score = gm(dt).score_fn(VP)

    def fn(k, x, xq):
        return (
            sd.log_likelihood(VP, score, x, dt0=0.25, **EULER),
            sd.bits_per_dim(VP, score, xq, key=k, levels=4, dt0=0.25, **EULER),
        )

    return (
        fn,
        (key(0), arr([0.5, -1.0], dt), arr([-1.0, 1.0 / 3.0], dt)),
        (key(1), arr([1.0, 0.5], dt), arr([1.0, -1.0 / 3.0], dt)),
    )


# ------------------------------------------------------------------------------ solvers
def _lin_score(w):
    return lambda t, x: -w * x


@case("sample_ode", "decode", "encode", diff=(1, 2))
def _(dt):
    score = gm(dt).score_fn(VP)

    def fn(k, w, x):
        return (
            sd.sample_ode(k, VP, _lin_score(w), (2,), dt0=-0.25, dtype=dt, **EULER),
            sd.decode(VP, score, x, dt0=-0.25, **EULER),
            sd.encode(VP, score, x, dt0=0.25, **EULER),
        )

    return fn, (key(0), arr(1.0, dt), arr([0.5, -1.0], dt)), (key(1), arr(0.5, dt), arr([1, 0], dt))


@case("sample_sde", "simulate_sde", diff=(1, 2))
def _(dt):
    def fn(k, w, x):
        return (
            sd.sample_sde(k, VP, _lin_score(w), (2,), num_steps=4, dtype=dt),
            sd.simulate_sde(k, VP, x, 0.0, 0.5, num_steps=4),
        )

    return fn, (key(0), arr(1.0, dt), arr([0.5, -1.0], dt)), (key(1), arr(0.5, dt), arr([1, 0], dt))


@case("sample_pc", "dpm_solver", "sample_dpm_solver", diff=(1, 2))
def _(dt):
    def fn(k, w, x):
        eps = lambda t, y: w * y
        return (
            sd.sample_pc(k, VP, _lin_score(w), (2,), num_steps=3, dtype=dt),
            # the deprecated aliases forward to sd.sample(..., DPMSolver(order), ...), whose
            # order-2 steps are under every transform in DPMSolver's case: order 1 here
            sd.dpm_solver(VP, eps, x, num_steps=2, order=1),
            sd.sample_dpm_solver(k, VP, eps, (2,), num_steps=2, order=1, dtype=dt),
        )

    return fn, (key(0), arr(0.3, dt), arr([0.5, -1.0], dt)), (key(1), arr(0.6, dt), arr([1, 0], dt))


@case("sharded_vmap", diff=(0,))
def _(dt):
    fn = lambda x: sd.sharded_vmap(lambda y: jnp.sin(y) * y)(x)
    return fn, (arr([[0.5, -1.0], [0.1, 0.2], [1, 2]], dt),), (arr([[1, 0], [2, 3], [0, 0]], dt),)


# ------------------------------------------------------------------------------ analytic
def _ms(dt, shift=0.0):
    return jnp.linspace(0.0, 0.9 - shift, 9, dtype=dt)  # ms_eps_0 = 0; a valid (N+1,) profile


@case("analytic.estimate_gamma", diff=(1,))
def _(dt):
    g = gm(dt)
    s = sched(dt)
    eps = sd.toy.discrete_eps_fn(g, s)
    fn = lambda k, data: sd.analytic.estimate_gamma(k, s, eps, data)
    d1 = g.sample(key(5), 8)
    return fn, (key(0), d1), (key(1), d1 * 0.5)


@case(
    "analytic.optimal_variance",
    "analytic.optimal_variances",
    "analytic.variance_bounds",
    "analytic.x0_variance",
    "analytic.step_variance",
    "analytic.trajectory_costs",
    "analytic.trajectory_cost",
    diff=(0, 1, 2, 3),
)
def _(dt):
    A = sd.analytic

    def fn(b, ms, ms_n, c):
        s = sd.DiscreteSchedule.from_betas(b)
        tau = sd.respace(8, 4)
        J = A.trajectory_costs(s, ms)
        return dict(
            one=[A.optimal_variance(s, 6, 3, ms_n, forward=f) for f in ("ddpm", "ddim")],
            many=A.optimal_variances(s, tau, ms, data_range=(-1.0, 1.0)),
            bounds=A.variance_bounds(s, tau, data_range=(-1.0, 1.0)),
            x0=A.x0_variance(s, ms)[1:],
            step=A.step_variance(s, 6, 3, c, forward="ddim", eta=0.5),
            J=jnp.where(jnp.isfinite(J), J, 0.0),
            cost=A.trajectory_cost(s, ms, jnp.array([0, 1, 4, 8])),
        )

    return (
        fn,
        (betas(dt), _ms(dt), arr(0.5, dt), arr([0.1, 0.3], dt)),
        (betas(dt, shift=0.01), _ms(dt, 0.2), arr(0.7, dt), arr([0.5, 0.2], dt)),
    )


@case(
    "analytic.optimal_trajectory",
    "analytic.optimal_trajectories",
    grad="integer output (an argmin)",
    x64="integer output only",
)
def _(dt):
    def fn(b, ms):
        s = sd.DiscreteSchedule.from_betas(b)
        return (
            sd.analytic.optimal_trajectory(s, ms, 4),
            sd.analytic.optimal_trajectories(s, ms, [2, 4]),
        )

    return fn, (betas(dt), _ms(dt)), (betas(dt, shift=0.01), _ms(dt, 0.2))


@case(
    "analytic.sn_covariance",
    "analytic.npr_covariance",
    "analytic.sn_variance_fn",
    "analytic.npr_variance_fn",
    "analytic.DiagonalVariance",
    diff=(0, 1, 2),
)
def _(dt):
    A = sd.analytic
    head = lambda t, x: x**2 + 0.5
    s = sched(dt)

    def fn(e, h, x):
        return (
            A.sn_covariance(s, 3, e, h, data_range=(-1.0, 1.0)),
            A.npr_covariance(s, 3, h),
            A.sn_variance_fn(s, head, data_range=(-1.0, 1.0))(6, 3, x, e),
            A.npr_variance_fn(s, head)(6, 3, x, e),
            A.DiagonalVariance(s, head, "sn", "ddpm")(6, 3, x, e),
        )

    return (
        fn,
        (arr([0.1, 0.3], dt), arr([0.5, 0.6], dt), arr([0.5, -0.2], dt)),
        (arr([0.2, 0], dt), arr([0.3, 1.0], dt), arr([1, 0], dt)),
    )


def _two_head_loss(name):
    def build(dt):
        def fn(k, w, x0):
            model = lambda t, x: (w * x, w**2 * x**2 + t)
            f = (
                sd.analytic.sn_dpm_loss
                if name == "analytic.sn_dpm_loss"
                else sd.analytic.npr_dpm_loss
            )
            return f(k, sched(dt), model, x0, ratio=0.5)

        return (
            fn,
            (key(0), arr(0.5, dt), arr([0.5, -1], dt)),
            (key(1), arr(1.0, dt), arr([1, 0], dt)),
        )

    return build


case("analytic.sn_dpm_loss", diff=(1, 2))(_two_head_loss("analytic.sn_dpm_loss"))
# NPR-DPM's loss stops the gradient of the residual by design: no finite-difference check
case("analytic.npr_dpm_loss", diff=(1, 2), fd=False)(_two_head_loss("analytic.npr_dpm_loss"))


# ------------------------------------------------------------------------------ reparam
@case(
    "reparam.Gaussian",
    "reparam.Gumbel",
    "reparam.Laplace",
    "reparam.Logistic",
    "reparam.Uniform",
    diff=(0, 1, 2, 3),
)
def _(dt):
    classes = (
        sd.reparam.Gaussian,
        sd.reparam.Gumbel,
        sd.reparam.Laplace,
        sd.reparam.Logistic,
        sd.reparam.Uniform,
    )

    def fn(scale, x, u, mu):
        out = []
        for cls in classes:
            nz = cls(scale)
            out.append(
                dict(
                    lpdf=nz.log_pdf(x),
                    cdf=nz.cdf(x),
                    lcdf=nz.log_cdf(x),
                    q=nz.quantile(u),
                    ldiff=nz.log_diff_cdf(x),
                    probs=nz.argmax_log_probs(mu),
                )
            )
        return out

    # two classes: every family has a closed form (the quadrature path is compiled by
    # test_fuzz and test_reparam); x inside the uniform's support [-s/2, s/2], away from kinks
    a1 = (arr(1.0, dt), arr([-0.3, 0.2], dt), arr([0.2, 0.7], dt), arr([0.1, -0.2], dt))
    a2 = (arr(2.0, dt), arr([0.4, -0.1], dt), arr([0.5, 0.9], dt), arr([0.0, 0.2], dt))
    return fn, a1, a2


@case("reparam.PerturbMax", diff=(0, 2))
def _(dt):
    def fn(mu, k, tau):
        # Gumbel: closed form (the quadrature path is compiled by test_fuzz and test_reparam)
        pm = sd.reparam.PerturbMax(mu, sd.reparam.Gumbel())
        return dict(
            probs=pm.probs,
            lp=pm.log_prob(jnp.asarray(1)),
            ent=pm.entropy(),
            relaxed=pm.relaxed_sample(k, tau, (2,)),
            # straight-through: value one-hot, gradient that of the relaxed sample, so it is
            # kept out of the finite-difference functional
            st=jax.lax.stop_gradient(pm.straight_through_sample(k, tau)),
            draw=pm.sample(k, (3,)),
        )

    return (
        fn,
        (arr([0.1, -0.2, 0.3], dt), key(0), arr(0.5, dt)),
        (arr([0.0, 0.2, -0.1], dt), key(1), arr(2.0, dt)),
    )


# ------------------------------------------------------------------------------ nn
@functools.cache
def _nets(dtn):
    dt, k = jnp.dtype(dtn), key(3)
    return (
        sd.nn.MLP(2, width=8, depth=1, time_dim=4, key=k, dtype=dt),
        sd.nn.TwoHeadMLP(2, width=8, depth=1, time_dim=4, key=k, dtype=dt),
        sd.nn.ConvNet((1, 4, 4), channels=4, depth=1, time_dim=4, key=k, dtype=dt),
        sd.nn.TimeMLP(4, 8, key=k, dtype=dt),
        sd.nn.SinusoidalEmbedding(6),
    )


@case(
    "nn.MLP", "nn.TwoHeadMLP", "nn.ConvNet", "nn.TimeMLP", "nn.SinusoidalEmbedding", diff=(0, 1, 2)
)
def _(dt):
    mlp, two, conv, tmlp, emb = _nets(jnp.dtype(dt).name)

    def fn(t, x, img):
        return mlp(t, x), two.both(t, x), conv(t, img), tmlp(t), emb(t)

    img = jnp.linspace(-1.0, 1.0, 16, dtype=dt)
    return fn, (arr(0.3, dt), arr([0.5, -1], dt), img), (arr(0.7, dt), arr([1, 0], dt), -0.5 * img)


@case("nn.GridEps", diff=(0, 1))
def _(dt):
    L = jnp.linspace(-1.0, 1.0, 8, dtype=dt)
    net = lambda t, x: L * t
    ge = sd.nn.GridEps(net, VP, 4)
    fn = lambda t, x: (ge(t, x), ge.x0(t, x))
    return fn, (arr(0.3, dt), arr([0.5, -1], dt)), (arr(0.7, dt), arr([0.1, 0.2], dt))


def _model(w):
    return {"w": w}


def _toy_loss(model, k, batch):
    return jnp.mean(
        (batch * model["w"][None] - jax.random.normal(k, batch.shape, batch.dtype)) ** 2
    )


@case("nn.init_train_state", grad="a constructor: returns its input and optimiser zeros")
def _(dt):
    fn = lambda w: sd.nn.init_train_state(_model(w), optax.adam(1e-2))
    return fn, (arr([0.5, -1.0], dt),), (arr([1.0, 2.0], dt),)


@case("nn.ema_update", "nn.make_train_step", "nn.diffusion_batch_loss", diff=(1, 2, 3))
def _(dt):
    opt = optax.adam(1e-2)
    step = sd.nn.make_train_step(_toy_loss, opt, ema_decay=0.9)
    loss = sd.nn.diffusion_batch_loss(sched(dt))

    def fn(k, w, batch, d):
        state, l1 = step(sd.nn.init_train_state(_model(w), opt), k, batch)
        ema = sd.nn.ema_update(_model(w), state.model, d)
        return state.model, state.ema, l1, ema, loss(lambda t, x: w[0] * x * t, k, batch)

    b = jnp.linspace(-1.0, 1.0, 6, dtype=dt).reshape(3, 2)
    return (
        fn,
        (key(0), arr([0.5, -1], dt), b, arr(0.9, dt)),
        (key(1), arr([1, 2], dt), -b, arr(0.5, dt)),
    )


# ------------------------------------------------------------------ guidance and thresholding
@case("ClassifierFreeGuidance", "ClassifierGuidance", "DynamicThreshold", diff=(0, 1))
def _(dt):
    g = gm(dt)
    eps = g.eps_fn(VP)
    cond = sd.EpsModel(lambda t, x, c: eps(t, x) + 0.2 * c)  # a conditional net; c = 0: null
    log_prob = lambda t, x, c: -0.5 * t * jnp.sum((x - c) ** 2)  # a differentiable classifier

    def fn(w, x):
        c = jnp.ones((), x.dtype)
        cfg = sd.ClassifierFreeGuidance(
            cond, w, null=jnp.zeros((), x.dtype), noise_interval=(0.1, 10.0), rescale=0.5
        )
        cg = sd.ClassifierGuidance(sd.EpsModel(eps), log_prob, w)
        thr = sd.DynamicThreshold(cfg, 0.9)
        return cfg.eps(VP, 0.5, x, c), cg.score(VP, 0.5, x, c), thr.x0(VP, 0.3, x, c)

    return fn, (arr(2.0, dt), arr([0.5, -1.0], dt)), (arr(3.0, dt), arr([1.0, 0.2], dt))


# ------------------------------------------------------------------ DPM-Solver++
@case("DPMSolverPP", diff=(1,))
def _(dt):
    g = gm(dt)
    model = sd.EpsModel(g.eps_fn(VP))

    def fn(k, x):
        grid = sd.grids.log_snr(VP, 3, t_eps=1e-2, dtype=dt)
        return [
            sd.sample(None, VP, model, sd.DPMSolverPP(order=3), grid, x).x,
            sd.sample(None, VP, model, sd.DPMSolverPP(order=2, multistep=False), grid, x).x,
            sd.sample(k, VP, model, sd.DPMSolverPP(order=2, stochastic=True), grid, x).x,
        ]

    return fn, (key(0), arr([0.5, -1.0], dt)), (key(1), arr([1.0, 0.2], dt))


@case("DPMSolverMultistep", "DPMSolverFast", diff=(0,))
def _(dt):
    model = sd.EpsModel(gm(dt).eps_fn(VP))

    def fn(x):
        grid = sd.grids.log_snr(VP, 4, t_eps=1e-2, dtype=dt)
        ms = sd.DPMSolverMultistep(order=3, denoise_to_zero=True)
        return [
            sd.sample(None, VP, model, ms, grid, x).x,
            sd.sample(None, VP, model, sd.DPMSolverFast(order=3), grid, x).x,
        ]

    return fn, (arr([0.5, -1.0], dt),), (arr([1.0, 0.2], dt),)


@case(
    "DPMSolverAdaptive",
    grad="reverse mode through lax.while_loop (a data-dependent number of steps) is undefined",
)
def _(dt):
    model = sd.EpsModel(gm(dt).eps_fn(VP))

    def fn(x):
        res = sd.sample(None, VP, model, sd.DPMSolverAdaptive(order=3), arr([1.0, 1e-2], dt), x)
        return res.x, res.stats["nfe"]

    return fn, (arr([0.5, -1.0], dt),), (arr([1.0, 0.2], dt),)


# ------------------------------------------------------------------ UniPC and EDM
@case("UniPC", "EDMHeun", "EDMPrecond", diff=(1,))
def _(dt):
    g = gm(dt)
    model = sd.EpsModel(g.eps_fn(VP))
    pre = sd.EDMPrecond(lambda c, y: jnp.tanh(y) * jnp.exp(0.1 * c), sigma_data=0.5)

    def fn(k, x):
        grid = sd.grids.log_snr(VP, 3, t_eps=1e-2, dtype=dt)
        return [
            sd.sample(None, VP, model, sd.UniPC(order=3), grid, x).x,
            sd.sample(k, VP, model, sd.EDMHeun(churn=1.0), grid, x).x,
            sd.sample(None, VP, pre, sd.EDMHeun(), grid, x).x,
        ]

    return fn, (key(0), arr([0.5, -1.0], dt)), (key(1), arr([1.0, 0.2], dt))


# ------------------------------------------------------------------ inverse problems
@case("Inpaint", "RePaint", "DPS", "DPSGuidance", "ddim_inversion", diff=(1, 2))
def _(dt):
    g = gm(dt)
    model = sd.EpsModel(g.eps_fn(VP))
    mask = jnp.array([True, False])

    def fn(k, x, y):
        grid = sd.grids.log_snr(VP, 4, t_eps=1e-2, dtype=dt)
        base = sd.DPMSolverPP(order=1)
        op = lambda x0: x0[:1]
        return [
            sd.sample(k, VP, model, sd.Inpaint(base, mask, y), grid, x).x,
            sd.sample(k, VP, model, sd.RePaint(base, mask, y, jump=2, resample=2), grid, x).x,
            sd.sample(k, VP, model, sd.DPS(base, op, y[:1], step_size=0.2), grid, x).x,
            sd.DPSGuidance(model, op, y[:1], noise_std=0.5).eps(VP, 0.5, x),
            sd.ddim_inversion(VP, model, grid, x, fixed_point=1).x,
        ]

    return (
        fn,
        (key(0), arr([0.5, -1.0], dt), arr([0.3, 0.1], dt)),
        (key(1), arr([1.0, 0.2], dt), arr([-0.2, 0.4], dt)),
    )


# ------------------------------------------------------------------ batches
@case("sample_batch", "BatchedNet", diff=(1,))
def _(dt):
    g = gm(dt)
    eps = g.eps_fn(VP)
    model = sd.EpsModel(eps)
    bmodel = sd.EpsModel(sd.BatchedNet(lambda t, x: jax.vmap(eps)(t, x)))

    def fn(k, x):
        grid = sd.grids.uniform(VP, 3, t_eps=1e-2, dtype=dt)
        xb = jnp.stack([x, -x, 0.5 * x])
        return [
            sd.sample_batch(k, VP, model, sd.EulerMaruyama(), grid, xb).x,
            sd.sample_batch(k, VP, bmodel, sd.DPMSolverPP(order=2, stochastic=True), grid, xb).x,
            bmodel.eps(VP, grid[1], x),
        ]

    return fn, (key(0), arr([0.5, -1.0], dt)), (key(1), arr([1.0, 0.2], dt))


# ------------------------------------------------------------------ flow matching
@case(
    "RectifiedFlow",
    "Interpolant",
    "TimeShift",
    "VelocityModel",
    "flow_matching_loss",
    diff=(1, 2),
)
def _(dt):
    rf = sd.RectifiedFlow()
    trig = sd.Interpolant(lambda t: jnp.cos(0.5 * jnp.pi * t), lambda t: jnp.sin(0.5 * jnp.pi * t))
    shifted = sd.TimeShift(rf, 3.0)
    net = lambda t, x: -x * (1.0 + t)  # a smooth stand-in for a velocity network
    model = sd.VelocityModel(net)

    def fn(k, x, x0):
        a, s = trig.marginal(arr(0.3, dt))
        grid = sd.grids.log_snr(shifted, 3, t_eps=1e-2, dtype=dt)
        return [
            a * x + s * x0,
            model.eps(shifted, grid[1], x),
            sd.sample(None, shifted, model, sd.DPMSolver(order=2), grid, x).x,
            sd.flow_matching_loss(k, rf, net, x0, time_sampling="logit_normal"),
        ]

    return (
        fn,
        (key(0), arr([0.5, -1.0], dt), arr([0.3, 0.1], dt)),
        (key(1), arr([1.0, 0.2], dt), arr([-0.4, 0.8], dt)),
    )


@case(
    "nn.fit",
    grad="a training driver: returns trained weights, differentiating it is not supported",
)
def _(dt):
    opt = optax.sgd(1e-1)
    step = sd.nn.make_train_step(_toy_loss, opt, ema_decay=None)

    def fn(k, w, data):
        state, losses = sd.nn.fit(
            k,
            sd.nn.init_train_state(_model(w), opt),
            step,
            data,
            num_steps=4,
            batch_size=2,
            chunk=2,
        )
        return state.model, losses

    data = jnp.linspace(-1.0, 1.0, 8, dtype=dt).reshape(4, 2)
    return fn, (key(0), arr([0.5, -1], dt), data), (key(1), arr([1, 2], dt), -data)


# ------------------------------------------------------------------------------ the cells
def _float_leaves(tree):
    return [
        x
        for x in jax.tree_util.tree_leaves(tree)
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)
    ]


def _assert_close(a, b, rtol, atol):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, y.shape, x.dtype, y.dtype)
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(x, y)


def _assert_finite(tree):
    for x in _float_leaves(tree):
        assert all_finite(x), f"non-finite output: {x}"


def _functional(out):
    """A fixed random linear functional of the floating outputs (weights seeded by leaf index)."""
    total = 0.0
    for i, x in enumerate(jax.tree_util.tree_leaves(out)):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating):
            w = np.random.RandomState(i).standard_normal(x.shape)
            total = total + jnp.sum(jnp.asarray(w, x.dtype) * x)
    return total


def compiled64(name):
    return _compiled64(REGISTRY[name])


@functools.cache
def _compiled64(c):
    """The float64 case, compiled once and shared by the jit, vmap, grad and x64 cells.

    For a differentiable case this is `jax.jit(jax.value_and_grad(L o fn, has_aux=True))`, whose
    auxiliary output is `fn`'s own output: `fn` then runs under `jax.jit` (the jit cell) inside
    the very computation the grad cell checks, and the finite difference reuses it.
    Returns `(fn, a1, a2, run, value_and_grad)`, `run(*args) -> fn(*args)` compiled.
    """
    fn, a1, a2 = c.build(jnp.float64)
    if "grad" in c.skip:
        jfn = jax.jit(fn)
        return fn, a1, a2, jfn, None

    def scalar(*a):
        out = fn(*a)
        return _functional(out), out

    vg = jax.jit(jax.value_and_grad(scalar, argnums=c.diff, has_aux=True))
    return fn, a1, a2, (lambda *a: vg(*a)[0][1]), vg


CELLS = [
    (name, tr) for name in sorted(REGISTRY) for tr in TRANSFORMS if tr not in REGISTRY[name].skip
]


def test_every_public_name_is_registered():
    names = set(public_names())
    missing = names - set(REGISTRY) - set(EXCLUDED)
    assert not missing, f"public names without a composability case: {sorted(missing)}"
    stale = (set(REGISTRY) | set(EXCLUDED)) - names
    assert not stale, f"registry entries that are no longer public: {sorted(stale)}"
    n_skipped = sum(len(c.skip) for c in REGISTRY.values())
    print(
        f"\n{len(names)} public callables: {len(REGISTRY)} with cases, {len(EXCLUDED)} excluded; "
        f"{len(CELLS)} composability cells ({n_skipped} not applicable, each with its reason)"
    )


def _params():
    # Names sharing a case share its compilations (cached per process), so all cells of a case
    # go to one xdist worker (`--dist loadgroup`, Makefile) and compile there once.
    group = {}
    for n in sorted(REGISTRY):
        group.setdefault(REGISTRY[n], f"composability-{n}")
    params = []
    for n, t in CELLS:
        marks = [pytest.mark.xdist_group(group[REGISTRY[n]])]
        if t in REGISTRY[n].xfail:
            marks.append(pytest.mark.xfail(strict=False, reason=REGISTRY[n].xfail[t]))
        params.append(pytest.param(n, t, marks=marks))
    return params


def _stack2(x, y):
    # array leaves stacked in NumPy (same dtype and values; an eager jnp.stack compiles a small
    # program per leaf shape); PRNG keys and Python scalars through jnp.stack as before
    if isinstance(x, jax.Array) and not jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.stack([np.asarray(x), np.asarray(y)])
    return jnp.stack([jnp.asarray(x), jnp.asarray(y)])


@functools.cache
def _vmapped64(c):
    fn, a1, a2, _, _ = _compiled64(c)
    stacked = jax.tree_util.tree_map(_stack2, a1, a2)
    return jax.jit(jax.vmap(fn))(*stacked)


@functools.cache
def _out32(c):
    with jax.enable_x64(False):
        fn32, b1, _ = c.build(jnp.float32)
        out = jax.jit(fn32)(*b1)
        return [(x.dtype, all_finite(x)) for x in _float_leaves(out)]


@functools.cache
def _grad_checked(c):
    fn, a1, _, _, vg = _compiled64(c)
    _check_grad(vg, a1, c.diff, c.fd)
    return True


@pytest.mark.parametrize("name,transform", _params(), ids=[f"{n}-{t}" for n, t in CELLS])
def test_composability(name, transform):
    """One cell. Names sharing a case share its compilations (cached), so the first cell of a
    group compiles and the others reuse the result: each name was exercised in that program."""
    c = REGISTRY[name]
    fn, a1, a2, run, vg = compiled64(name)
    if transform == "jit":
        _assert_finite(run(*a1))
        _assert_finite(run(*a2))
    elif transform == "vmap":
        batched = _vmapped64(c)
        for i, a in enumerate((a1, a2)):
            one = jax.tree_util.tree_map(lambda b: b[i], batched)
            _assert_close(one, run(*a), rtol=1e-9, atol=1e-12)
    elif transform == "grad":
        assert _grad_checked(c)
    elif transform == "x32":
        leaves = _out32(c)
        assert all(dt == jnp.float32 for dt, _ in leaves), leaves
        assert all(ok for _, ok in leaves), "non-finite float32 output"
    elif transform == "x64":
        leaves = _float_leaves(run(*a1))
        assert leaves, "no floating output to check"
        assert all(x.dtype == jnp.float64 for x in leaves), [x.dtype for x in leaves]


def _check_grad(vg, args, diff, fd):
    """The gradient of the functional `L` is finite, and `grad L . v` matches the central
    difference `(L(a + hv) - L(a - hv)) / 2h` along a random direction `v` (float64)."""
    (_, _), g = vg(*args)
    for leaf in jax.tree_util.tree_leaves(g):
        assert all_finite(leaf), f"non-finite gradient {leaf}"
    if not fd:
        return
    rng = np.random.RandomState(1)
    vs = [
        jax.tree_util.tree_map(
            lambda x: jnp.asarray(rng.standard_normal(np.shape(x)), x.dtype), args[i]
        )
        for i in diff
    ]
    h = 1e-6

    def shifted(sign):
        a = list(args)
        for i, v in zip(diff, vs):
            # in NumPy (float64, the same operations in the same order as x + sign*h*d)
            a[i] = jax.tree_util.tree_map(
                lambda x, d: np.asarray(x) + sign * h * np.asarray(d), a[i], v
            )
        (val, _), _ = vg(*a)
        return float(val)

    fd_val = (shifted(1.0) - shifted(-1.0)) / (2 * h)
    ad_val = float(
        sum(
            np.vdot(np.asarray(gl), np.asarray(vl))
            for gi, v in zip(g, vs)
            for gl, vl in zip(jax.tree_util.tree_leaves(gi), jax.tree_util.tree_leaves(v))
        )
    )
    assert abs(ad_val - fd_val) <= 1e-4 * max(abs(ad_val), abs(fd_val), 1.0), (ad_val, fd_val)
