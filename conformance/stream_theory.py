"""Theory of the residual stream at init (its variance, the gradient through it); the sampling error of measuring it.

Pre-LN stream: x_l = x_{l-1} + F_l(N(x_{l-1})). Expanding a sample variance,
    Var(x_l) = Var(x_{l-1}) + Var(F_l) + 2 Cov(x_{l-1}, F_l),
and at init with zero-mean weights E[Cov] = 0, so Var(x_L) ~= Var(x_0) + sum_l Var(F_l) (VG-2, VG-3).

The sampling distributions are taken over each layer's output projection W given the stream it reads: a write
is F = a W for what W multiplies (a), so Cov and Var(F) are a linear and a quadratic form in a Gaussian W, with
exact sds (covariance_sd, projection_write_band). Each layer's W is a fresh draw, so over a stack the
deviations are martingale steps and their variances add. VG-3's unconditional write sum (write_variance_spread)
and GR-3's gradient (gradient_ratio_band) are built the same way. Every model is checked by Monte Carlo on the
oracle (tools/vg*_power.py, tools/gr3_power.py; docs/spec.md's power table).
"""
from __future__ import annotations

import math

import numpy as np
from numpy.polynomial.hermite_e import hermegauss, hermeval

from resconf.backends.config import BlockConfig


def activation(z: np.ndarray, cfg: BlockConfig) -> np.ndarray:
    """The mlp's activation, written out independently of the oracle."""
    if cfg.activation == "relu":
        return np.maximum(z, 0.0)
    if cfg.activation == "silu":
        return z / (1.0 + np.exp(-z))
    if cfg.gelu == "tanh":
        return 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))
    erf = np.vectorize(math.erf)
    return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))


def moment(variance: float, cfg: BlockConfig, power: int = 2, nodes: int = 80) -> float:
    """E[act(z)^power] for z ~ N(0, variance), by Gauss-Hermite quadrature (probabilists' weight)."""
    x, w = hermegauss(nodes)
    return float(np.sum(w * activation(math.sqrt(variance) * x, cfg) ** power) / math.sqrt(2.0 * math.pi))


def second_moment(variance: float, cfg: BlockConfig) -> float:
    """E[act(z)^2] for z ~ N(0, variance). For ReLU the closed form is variance / 2 (He et al. 2015); the
    quadrature agrees to 1e-3 relative (its kink), which tests/test_stream_theory.py checks."""
    return moment(variance, cfg)


def write_variance(cfg: BlockConfig, std_in: float, std_out: float) -> float:
    """Var(w(N(x))) per element for zero biases, unit norm gain, and a unit-variance normalised input:
    linear: C s_out^2; mlp: H s_out^2 E[act(z)^2] with z ~ N(0, C s_in^2); gated mlp: H s_out^2 E[act(z)^2]
    E[u^2], u ~ N(0, C s_in^2) the independent up projection."""
    if cfg.sublayers != (cfg.branch,) or cfg.layer_scale is not None or cfg.branch_scale != 1.0:
        raise ValueError(f"write_variance covers single linear or mlp sublayers, not {cfg.describe()}")
    if cfg.branch == "linear":
        return cfg.d_model * std_out**2
    if cfg.branch == "mlp":
        z_var = cfg.d_model * std_in**2
        moment = second_moment(z_var, cfg) * (z_var if cfg.gated else 1.0)
        return cfg.d_hidden * std_out**2 * moment
    raise ValueError(f"no closed-form write variance for branch {cfg.branch!r}")


def hermite_powers(variance: float, cfg: BlockConfig, terms: int = 3) -> np.ndarray:
    """c_n^2 = E[act(z) He_n(z / sd)]^2 / n! for n < terms, z ~ N(0, variance): the power of act(z) in each
    Hermite order (c_0^2 = mean^2; sum over all n = E[act(z)^2]). Two units whose pre-activations correlate
    by rho share E[act act'] = sum_n c_n^2 rho^n (Mehler's formula)."""
    x, w = hermegauss(80)
    a = activation(math.sqrt(variance) * x, cfg)
    return np.array([(np.sum(w * a * hermeval(x, [0] * n + [1])) / math.sqrt(2.0 * math.pi)) ** 2 / math.factorial(n)
                     for n in range(terms)])


def write_variance_spread(cfg: BlockConfig, std_in: float, tokens: int) -> float:
    """Relative variance of one layer's realised write variance V (over its `tokens` x C elements) around
    write_variance, over the draw of its weights and of the tokens, for a unit-variance normalised input.

    With A the H x H second-moment matrix of the activations a (for a linear branch the normalised input
    itself: A = I, H = C), V = tr(W_down^T A_hat W_down) / C for the sample A_hat, so over the C columns of W_down
        Var(V) / E[V]^2 = (2 / C) (tr(A^2) / tr(A)^2 + 1 / tokens)      (1 / tokens: A_hat's sampling)
    and tr(A) = sum_j E[a_j^2] spreads with each unit's pre-activation variance q_j ~ s_in^2 chi^2_C:
        + (2 / C) e^2 / H,   e = d log E[a^2] / d log q   (gated: e_gate^2 + 1, the up projection's).
    The H units are projections of C inputs, so their pre-activations correlate by rho_jk ~ N(0, 1/C);
    by Mehler's formula the mean square of A's off-diagonal over E[a^2]^2 is, to order 1/C^2,
        off = p0^2 + (p1^2 + 2 p0 p2) / C + 3 p2^2 / C^2,   p_n = c_n^2 / E[a^2]  (hermite_powers),
    and tr(A^2) / tr(A)^2 = off + (1 - off) / H. A near-linear unit (GELU or SiLU at init) has p1 ~ 1: its
    writes vary like a linear branch's (1 / C), not 1 / H. Gated, a = act(gate) up with an independent up
    projection, the gate's p_n: off = p0^2 / C + 3 p1^2 / C^2 (the up projections' correlation times the
    gates' mean; then the three pairings of four near-linear factors, each correlating by ~1 / sqrt(C)). Layers draw their weights independently, so
    over a stack these variances add."""
    C = cfg.d_model
    if cfg.branch == "linear":
        return 2.0 / C * (1.0 / C + 1.0 / tokens)
    write_variance(cfg, std_in, std_in)  # refuses what it does not model
    q, H = C * std_in**2, cfg.d_hidden
    p0, p1, p2 = hermite_powers(q, cfg) / moment(q, cfg)
    elasticity = (math.log(moment(q * 1.01, cfg)) - math.log(moment(q / 1.01, cfg))) / (2.0 * math.log(1.01))
    if cfg.gated:
        off, spread = p0**2 / C + 3.0 * p1**2 / C**2, elasticity**2 + 1.0
    else:
        off, spread = p0**2 + (p1**2 + 2.0 * p0 * p2) / C + 3.0 * p2**2 / C**2, elasticity**2
    return 2.0 / C * (off + (1.0 - off) / H + 1.0 / tokens + spread / H)


def sample_write_variance(cfg: BlockConfig, std_in: float, std_out: float) -> float:
    """E of the write's variance as stream_variances measures it, around its mean over all elements: the
    global mean, (mu / C) 1^T W_down 1 for an activation of mean mu, has E[square] = p_0 / C of the write
    variance, which the sample variance leaves out (0.5 % for ReLU at C = 64)."""
    v = write_variance(cfg, std_in, std_out)
    if cfg.branch == "linear" or cfg.gated:
        return v
    q = cfg.d_model * std_in**2
    return v * (1.0 - hermite_powers(q, cfg, terms=1)[0] / moment(q, cfg) / cfg.d_model)


def input_anisotropy(inputs: np.ndarray, eps: float) -> np.ndarray:
    """Per layer, tr(S^2) / C of its normalised input's sample second moment S (C x C) over the ratio an
    isotropic input's sample has, 1 + C / tokens: 1 for the tokens x_0 is drawn as, and above 1 where the
    stream is dominated by writes, each a projection through one layer's weights (standard init, deep).
    A linear write's spread is 2 tr(S^2) / C^3 exactly, so this factor is its correction; an mlp's 1/C
    terms grow alike, and the factor is applied to its whole spread (its 1/H terms do not, so that errs wide).
    `inputs` is (L, ..., C): the states the L layers read."""
    L, C = inputs.shape[0], inputs.shape[-1]
    normalised = layernormed(inputs, eps).reshape(L, -1, C)
    tokens = normalised.shape[1]
    second = normalised.transpose(0, 2, 1) @ normalised / tokens  # (L, C, C); batched BLAS, 14x einsum's loop
    return np.sum(second * second, axis=(1, 2)) / C / (1.0 + C / tokens)


def write_sum_sd(cfg: BlockConfig, std_in: float, v: float, anisotropy: np.ndarray, tokens: int) -> float:
    """sd of the sum of the layers' realised write variances around L * v, each layer's spread scaled by its
    input's anisotropy (input_anisotropy); the layers' weights are drawn independently, so variances add."""
    return v * math.sqrt(write_variance_spread(cfg, std_in, tokens) * float(np.sum(anisotropy)))


def stream_variances(states: np.ndarray, writes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Var(x_l) for l = 0..L, Var(F_l), Cov(x_{l-1}, F_l)) over all elements of each state."""
    flat_x = states.reshape(states.shape[0], -1)
    flat_f = writes.reshape(writes.shape[0], -1)
    x_prev = flat_x[:-1] - flat_x[:-1].mean(axis=1, keepdims=True)
    f = flat_f - flat_f.mean(axis=1, keepdims=True)
    return flat_x.var(axis=1), flat_f.var(axis=1), np.mean(x_prev * f, axis=1)


def ablation_ratio(states: np.ndarray, deleted: np.ndarray, layer: int, std_out: float) -> tuple[float, float]:
    """(expected, sd) of r^2 = ||x_L - x_L without layer `layer`||^2 / ||F_layer||^2 for a pre stack of linear
    branches with layernorm (gain 1, bias 0), its output projections of std `std_out`; `states` are the full
    stack's x_0..x_L, `deleted` the deleted layer's write F.

    Deleting the layer changes the stream after it by delta = -F; each later layer l passes delta through
    I + J_l, J_l = P W_l / sigma (P removes the token's mean and its own direction: rank C - 2), so over W_l
        E||delta_l||^2 = ||delta_{l-1}||^2 (1 + g_l),   g_l = s^2 (C - 2) / sigma^2   (per token)
    and r^2 ~= prod_l (1 + g_l): about 1 at init, so the output moves by ~||F|| / ||x_L||. Its spread over
    the weights of the later layers: the cross term 2 <delta, J delta> (variance 4 s^2 ||M1||_F^2) and
    ||J delta||^2's (2 C s^4 ||M2||_F^2), relative to ||delta||^4, with M_k = sum_t delta_t^T delta_t /
    sigma_t^k over tokens t (delta stays ~F: the later layers change it by ~1 %). Monte Carlo over 30 seeds
    of the oracle (gpt2 init, L = 12): sd of the z-scores 0.99 and 1.04 for the first and a middle layer."""
    C = states.shape[-1]
    D = deleted.reshape(-1, C)
    norm2 = float(np.sum(D * D))
    expected, variance = 1.0, 0.0
    for x in states[layer + 1:-1]:  # the inputs of the layers after the deleted one
        sigma = x.reshape(-1, C).std(axis=-1)[:, None]
        expected *= 1.0 + std_out**2 * (C - 2) * float(np.mean(1.0 / sigma**2))
        m1, m2 = (D / sigma).T @ D, (D / sigma**2).T @ D
        variance += (4.0 * std_out**2 * np.sum(m1 * m1) + 2.0 * C * std_out**4 * np.sum(m2 * m2)) / norm2**2
    return expected, math.sqrt(variance)


def covariance_sd(down_inputs: np.ndarray, inputs: np.ndarray, std_out: float) -> np.ndarray:
    """Per layer, the sd of Cov(x_{l-1}, F_l) over the draw of the layer's output projection W (entries of std
    `std_out`), given what W multiplies: F = a W, `down_inputs` the (L, ..., H) a (the normalised stream for a
    linear branch, the activations for an mlp), `inputs` the (L, ..., C) states the layers read. Centred as
    stream_variances centres, Cov = tr(W^T M) / n with M = sum_t a_t^T x_t, so sd = s ||M||_F / n: exact for
    Gaussian weights, whatever the stream's shape. Each is a martingale step (zero mean given the past), so
    over layers the variances add. The isotropic model (tools/vg2_power.py) is this for tokens with identity
    covariance; as writes come to dominate the stream it grows anisotropic and the true spread exceeds that
    model's (1.55x at L = 192)."""
    L, C = inputs.shape[0], inputs.shape[-1]
    x = inputs.reshape(L, -1, C)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    a = down_inputs.reshape(L, x.shape[1], -1)
    m = a.transpose(0, 2, 1) @ x  # sum_t a_t^T x_t per layer: batched BLAS, 14x einsum's loop
    return std_out * np.sqrt(np.sum(m * m, axis=(1, 2))) / (x.shape[1] * C)


def layernormed(inputs: np.ndarray, eps: float) -> np.ndarray:
    """Layernorm over the last axis, gain 1 and bias 0, as the suite's VG stacks are drawn."""
    h = inputs - inputs.mean(axis=-1, keepdims=True)
    return h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + eps)


def projection_write_band(a: np.ndarray, std_out: float, d_model: int) -> tuple[float, float]:
    """(E, sd) of a write's sample variance (over all its elements, around their mean, as stream_variances
    measures it) over the draw of its output projection W (H x C, entries of std `std_out`), given what W
    multiplies: F = a W, `a` the (..., H) projection inputs (for attention the context, each query's weighted
    average of the values over the tokens it sees: the realised token means are in it). With A = mean_t a_t a_t^T
    and m = mean_t a_t, Var(F) = w^T K w for w = vec W, K = I (x) A / C - J (x) m m^T / C^2 (J all ones), so
        E = s^2 (tr A - |m|^2 / C),   sd^2 = 2 s^4 tr(K^2) = 2 s^4 (tr(A^2) / C - 2 m^T A m / C^2 + |m|^4 / C^2),
    exact for Gaussian W whatever a is. Given the stream, each layer's W is a fresh draw, so over a stack the
    deviations are martingale steps and their variances add."""
    flat = a.reshape(-1, a.shape[-1])
    second = flat.T @ flat / flat.shape[0]
    mean = flat.mean(axis=0)
    m2 = float(mean @ mean)
    expected = std_out**2 * (float(np.trace(second)) - m2 / d_model)
    tr_k2 = (float(np.sum(second * second)) / d_model - 2.0 * float(mean @ second @ mean) / d_model**2
             + m2**2 / d_model**2)
    return expected, std_out**2 * math.sqrt(2.0 * tr_k2)


def gradient_ratio_band(states: np.ndarray, cotangents: np.ndarray, std_out: float, eps: float) -> tuple[float, float]:
    """(E, sd) of log(||grad x_0||^2 / ||g||^2) for a pre stack of linear branches with layernorm (gain 1, bias 0),
    its output projections of std `std_out`, over their draw given the stream: `states` x_0..x_L and
    `cotangents` g_0..g_L (the cotangent on each state; g_L = g) of the stack's own backward.

    Layer l passes g back as g + J^T g, per token (row vectors) u_t = g_t W^T P_t / tau_t, with the layernorm's
    Jacobian (1 / tau) P, P = I - 11^T / C - h h^T / C, tau^2 = sigma^2 + eps, h the normalised token. P has
    eigenvalues 0 (the mean), 1 - kappa (h; kappa = sigma^2 / tau^2) and 1 (C - 2 times), so over W
        E ||g_{l-1}||^2 = sum_t ||g_t||^2 (1 + s^2 (C - 2 + (1 - kappa_t)^2) / tau_t^2),
    the pre-LN analogue of (1 + beta^2)^L. Its spread: the cross term 2 <g, u> = 2 tr(W^T A), A = sum_t
    (P_t g_t) g_t^T / tau_t, variance 4 s^2 ||A||_F^2; ||u||^2, a Gaussian quadratic form, 2 s^4 (C - 2)
    ||sum_t g_t^T g_t / tau_t^2||_F^2 (P_t^2 taken as rank C - 2). The steps add up in log_ratio_band."""
    return log_ratio_band(linear_steps(states, cotangents, std_out, eps))


def linear_steps(states: np.ndarray, cotangents: np.ndarray, std_out: float, eps: float) -> list[tuple[float, float]]:
    """Each layer's (e, v) for gradient_ratio_band, in closed form."""
    C = states.shape[-1]
    steps = []
    for x, g in zip(states[:-1], cotangents[1:]):
        x, g = x.reshape(-1, C), g.reshape(-1, C)
        centred = x - x.mean(axis=-1, keepdims=True)
        sigma2 = np.mean(centred * centred, axis=-1, keepdims=True)
        tau = np.sqrt(sigma2 + eps)
        h, kappa = centred / tau, sigma2 / tau**2
        g2 = np.sum(g * g, axis=-1, keepdims=True)
        total = float(g2.sum())
        e = std_out**2 * float(np.sum(g2 * (C - 2 + (1.0 - kappa) ** 2) / tau**2)) / total
        projected = g - g.mean(axis=-1, keepdims=True) - h * np.sum(h * g, axis=-1, keepdims=True) / C
        a = (projected / tau).T @ g
        q = (g / tau**2).T @ g
        v = (4.0 * std_out**2 * np.sum(a * a) + 2.0 * std_out**4 * (C - 2) * np.sum(q * q)) / total**2
        steps.append((e, v))
    return steps


def log_ratio_band(steps) -> tuple[float, float]:
    """(E, sd) of log(||g_0||^2 / ||g_U||^2) from each update's (e, v): its squared-norm step has mean 1 + e and
    variance v over its output projections' draw. Each log-step is added with its mean (log(1 + e) minus half
    its variance) and its variance: W_u is drawn apart from the cotangent it meets but for the states after
    it, which its small write moves (checked by Monte Carlo: tools/gr3_power.py)."""
    mean, variance = 0.0, 0.0
    for e, v in steps:
        mean += math.log1p(e) - v / (2.0 * (1.0 + e) ** 2)
        variance += v / (1.0 + e) ** 2
    return mean, math.sqrt(variance)


def projection_step(jac: np.ndarray, g: np.ndarray, std_out: float, probes: int = 16) -> tuple[float, float]:
    """(e, v) of one update x -> x + a(x) W whose output projection W (H x C) has entries of std s, drawn apart
    from everything else: jac = d a[b, t, h] / d x[b, s, c] (B, T, H, T, C), g the cotangent on the output.

    The cotangent passes back as g + L(W), L(W) = J^T vec(g W^T) linear in W, so over W
        E ||g + L(W)||^2 = ||g||^2 (1 + e),   e = s^2 sum_b tr(G_b K_b) / ||g||^2,
    G_b = g_b g_b^T over batch element b's tokens, K_b[t, t'] = sum_h <J[b, t, h], J[b, t', h]> (the rows of
    (g W^T)[b] are independent with covariance s^2 G_b); and ||g + L(W)||^2 has variance
    4 s^2 ||L*(g)||^2 + 2 s^4 tr(Q^2), L*(g) = sum_b (J g)_b^T g_b (J g: a's change along g), Q = L* L.
    tr(Q^2) = E ||Q z||^2 over Gaussian z is estimated by `probes` fixed draws (it enters only the spread);
    v is the variance over ||g||^4."""
    s2, total = std_out**2, float(np.sum(g * g))
    gram = np.einsum("btc,buc->btu", g, g)
    rows = np.einsum("bthsc,buhsc->btu", jac, jac)
    e = s2 * float(np.sum(gram * rows)) / total
    along_g = np.einsum("bthsc,bsc->bth", jac, g)
    cross = np.einsum("bth,btc->hc", along_g, g)
    forward = lambda w: np.einsum("bthsc,bth->bsc", jac, np.einsum("btc,hc->bth", g, w))  # L(W)
    adjoint = lambda y: np.einsum("bth,btc->hc", np.einsum("bthsc,bsc->bth", jac, y), g)  # L*(y)
    rng = np.random.default_rng(0)
    tr_q2 = np.mean([np.sum(adjoint(forward(z)) ** 2) for z in rng.standard_normal((probes,) + cross.shape)])
    return e, (4.0 * s2 * float(np.sum(cross * cross)) + 2.0 * s2**2 * tr_q2) / total**2
