"""Independent numpy versions of the eleven optimizers' reference PyTorch update rules.

Each class mirrors the authors' `step()` (torch.optim for SGD/Adam/AMSGrad, torch-optimizer's
Yogi, and the RAdam, AdaBound, diffGrad, Adai, PNM and Lookahead authors' code), written from
those update equations in plain float64 numpy and not from the optax code under test. Parameters
are dicts of arrays, updated in place like `p.data`; `step(grads, lr)` takes the learning rate of
this step, as a PyTorch scheduler would have set `group['lr']`.
"""

from __future__ import annotations

import math

import numpy as np


class SGD:
    """torch.optim.SGD with momentum (dampening 0, no Nesterov) and L2 weight decay."""

    def __init__(self, params, momentum=0.9, weight_decay=0.0):
        self.p, self.momentum, self.wd = params, momentum, weight_decay
        self.buf = {k: None for k in params}

    def step(self, grads, lr):
        for k, p in self.p.items():
            d = grads[k] + self.wd * p
            if self.momentum != 0:
                if self.buf[k] is None:
                    self.buf[k] = d.copy()  # PyTorch: the first buffer is a clone of d.
                else:
                    self.buf[k] = self.buf[k] * self.momentum + d
                d = self.buf[k]
            self.p[k] = p - lr * d


class Adam:
    """torch.optim.Adam, optionally amsgrad=True (the maximum of the raw exp_avg_sq)."""

    def __init__(self, params, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False):
        self.p, self.b1, self.b2, self.eps, self.wd, self.ams = params, b1, b2, eps, weight_decay, amsgrad
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.vmax = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads, lr):
        self.t += 1
        bc1 = 1 - self.b1 ** self.t
        bc2 = 1 - self.b2 ** self.t
        for k, p in self.p.items():
            g = grads[k] + self.wd * p
            self.m[k] = self.m[k] * self.b1 + (1 - self.b1) * g
            self.v[k] = self.v[k] * self.b2 + (1 - self.b2) * g * g
            if self.ams:
                self.vmax[k] = np.maximum(self.vmax[k], self.v[k])
                denom = np.sqrt(self.vmax[k]) / math.sqrt(bc2) + self.eps
            else:
                denom = np.sqrt(self.v[k]) / math.sqrt(bc2) + self.eps
            self.p[k] = p - (lr / bc1) * (self.m[k] / denom)


class Yogi:
    """torch_optimizer.Yogi: both moments start at initial_accumulator, ε on √v/√bc2."""

    def __init__(self, params, b1=0.9, b2=0.999, eps=1e-3, initial_accumulator=1e-6,
                 weight_decay=0.0):
        self.p, self.b1, self.b2, self.eps, self.wd = params, b1, b2, eps, weight_decay
        self.t = 0
        self.m = {k: np.full_like(v, initial_accumulator) for k, v in params.items()}
        self.v = {k: np.full_like(v, initial_accumulator) for k, v in params.items()}
        self.signs_seen = set()  # which signs of (v − g²) occurred, to show both branches ran.

    def step(self, grads, lr):
        self.t += 1
        bc1 = 1 - self.b1 ** self.t
        bc2 = 1 - self.b2 ** self.t
        for k, p in self.p.items():
            g = grads[k] + self.wd * p
            self.m[k] = self.m[k] * self.b1 + (1 - self.b1) * g
            g2 = g * g
            sign = np.sign(self.v[k] - g2)
            self.signs_seen.update(np.unique(sign).tolist())
            self.v[k] = self.v[k] + (-(1 - self.b2)) * sign * g2
            denom = np.sqrt(self.v[k]) / math.sqrt(bc2) + self.eps
            self.p[k] = p - (lr / bc1) * (self.m[k] / denom)


class RAdam:
    """The RAdam authors' RAdam (radam.py): ε on raw √v, decoupled decay, threshold ρ_t >= 5."""

    def __init__(self, params, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                 degenerated_to_sgd=True, decoupled=True):
        self.p, self.b1, self.b2, self.eps, self.wd = params, b1, b2, eps, weight_decay
        self.degenerate, self.decoupled = degenerated_to_sgd, decoupled
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.regimes = set()  # "rectified" / "sgd" / "none", to show the test covers each.

    def step(self, grads, lr):
        self.t += 1
        b2t = self.b2 ** self.t
        n_sma_max = 2 / (1 - self.b2) - 1
        n_sma = n_sma_max - 2 * self.t * b2t / (1 - b2t)
        if n_sma >= 5:
            step_size = math.sqrt((1 - b2t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma
                                  * n_sma_max / (n_sma_max - 2)) / (1 - self.b1 ** self.t)
            self.regimes.add("rectified")
        elif self.degenerate:
            step_size = 1.0 / (1 - self.b1 ** self.t)
            self.regimes.add("sgd")
        else:
            step_size = -1
            self.regimes.add("none")
        for k in self.p:
            p = self.p[k]
            g = grads[k] if self.decoupled else grads[k] + self.wd * p
            self.v[k] = self.v[k] * self.b2 + (1 - self.b2) * g * g
            self.m[k] = self.m[k] * self.b1 + (1 - self.b1) * g
            if n_sma >= 5:
                if self.decoupled:
                    p = p + (-self.wd * lr) * p
                denom = np.sqrt(self.v[k]) + self.eps
                p = p + (-step_size * lr) * (self.m[k] / denom)
            elif step_size > 0:
                if self.decoupled:
                    p = p + (-self.wd * lr) * p
                p = p + (-step_size * lr) * self.m[k]
            self.p[k] = p


class AdaBound:
    """Luolc's AdaBound: ε on raw √v, bounds f(1 − 1/(γt+1)), f(1 + 1/(γt)), f = final_lr·lr/lr₀."""

    def __init__(self, params, base_lr, b1=0.9, b2=0.999, final_lr=0.1, gamma=1e-3, eps=1e-8,
                 weight_decay=0.0):
        self.p, self.base_lr, self.b1, self.b2 = params, base_lr, b1, b2
        self.final_lr, self.gamma, self.eps, self.wd = final_lr, gamma, eps, weight_decay
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.hit_lower = self.hit_upper = False

    def step(self, grads, lr):
        self.t += 1
        for k, p in self.p.items():
            g = grads[k] + self.wd * p
            self.m[k] = self.m[k] * self.b1 + (1 - self.b1) * g
            self.v[k] = self.v[k] * self.b2 + (1 - self.b2) * g * g
            denom = np.sqrt(self.v[k]) + self.eps
            bc1 = 1 - self.b1 ** self.t
            bc2 = 1 - self.b2 ** self.t
            step_size = lr * math.sqrt(bc2) / bc1
            final_lr = self.final_lr * lr / self.base_lr
            lower = final_lr * (1 - 1 / (self.gamma * self.t + 1))
            upper = final_lr * (1 + 1 / (self.gamma * self.t))
            raw = np.full_like(denom, step_size) / denom
            self.hit_lower |= bool(np.any(raw < lower))
            self.hit_upper |= bool(np.any(raw > upper))
            self.p[k] = p - np.clip(raw, lower, upper) * self.m[k]


class DiffGrad:
    """shivram1987's diffGrad_v2 (corrected); frozen_dfc=True mimics diffGrad.py's aliasing bug."""

    def __init__(self, params, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, frozen_dfc=False):
        self.p, self.b1, self.b2, self.eps, self.wd, self.frozen = (params, b1, b2, eps, weight_decay,
                                                                    frozen_dfc)
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.prev = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads, lr):
        self.t += 1
        for k, p in self.p.items():
            g = grads[k] + self.wd * p
            self.m[k] = self.m[k] * self.b1 + (1 - self.b1) * g
            self.v[k] = self.v[k] * self.b2 + (1 - self.b2) * g * g
            denom = np.sqrt(self.v[k]) + self.eps
            bc1 = 1 - self.b1 ** self.t
            bc2 = 1 - self.b2 ** self.t
            diff = np.abs(self.prev[k] - g)
            dfc = 1.0 / (1.0 + np.exp(-diff))
            # The bug: PyTorch kept a reference to the gradient tensor, which later steps overwrote in
            # place, so from step 2 on "previous" equals "current".
            self.prev[k] = g if self.frozen else g.copy()
            if self.frozen and self.t > 1:
                dfc = 1.0 / (1.0 + np.exp(-np.abs(g - g)))
            step_size = lr * math.sqrt(bc2) / bc1
            self.p[k] = p - step_size * ((self.m[k] * dfc) / denom)


class Adai:
    """zeke-xie's Adai (decoupled=False) / AdaiW (decoupled=True)."""

    def __init__(self, params, b0=0.1, b2=0.99, eps=1e-3, weight_decay=0.0, decoupled=False):
        self.p, self.b0, self.b2, self.eps, self.wd, self.decoupled = (params, b0, b2, eps,
                                                                       weight_decay, decoupled)
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.prod = {k: np.ones_like(v) for k, v in params.items()}
        self.hit_zero = self.hit_cap = False

    def step(self, grads, lr):
        self.t += 1
        bc2 = 1 - self.b2 ** self.t
        size, vhat_sum = 0, 0.0
        g_used = {}
        for k in self.p:  # First pass: decay, second moments, and the global mean of v̂.
            size += self.p[k].size
            g = grads[k]
            if self.wd != 0 and not self.decoupled:
                g = g + self.wd * self.p[k]
            elif self.wd != 0 and self.decoupled:
                self.p[k] = self.p[k] * (1 - lr * self.wd)
            g_used[k] = g
            self.v[k] = self.v[k] * self.b2 + (1 - self.b2) * g * g
            vhat_sum += self.v[k].sum() / bc2
        vhat_mean = vhat_sum / size
        for k in self.p:  # Second pass: adaptive β₁, momentum, bias correction, step.
            vhat = self.v[k] / bc2
            raw = 1.0 - (vhat / vhat_mean) * self.b0
            self.hit_zero |= bool(np.any(raw < 0))
            self.hit_cap |= bool(np.any(raw > 1 - self.eps))
            beta1 = np.clip(raw, 0.0, 1 - self.eps)
            self.prod[k] = self.prod[k] * beta1
            self.m[k] = self.m[k] * beta1 + (1 - beta1) * g_used[k]
            self.p[k] = self.p[k] - lr * (self.m[k] / (1 - self.prod[k]))


class PNM:
    """zeke-xie's PNM: alternate buffers by step parity, no bias correction."""

    def __init__(self, params, b1=0.9, b0=1.0, weight_decay=0.0, decoupled=True):
        self.p, self.b1, self.b0, self.wd, self.decoupled = params, b1, b0, weight_decay, decoupled
        self.t = 0
        self.pos = {k: np.zeros_like(v) for k, v in params.items()}
        self.neg = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads, lr):
        self.t += 1
        for k in self.p:
            g = grads[k]
            if self.decoupled:
                self.p[k] = self.p[k] * (1 - lr * self.wd)
            else:
                g = g + self.wd * self.p[k]
            if self.t % 2 == 1:
                pos, neg = self.pos, self.neg
            else:
                pos, neg = self.neg, self.pos
            pos[k] = pos[k] * self.b1 ** 2 + (1 - self.b1 ** 2) * g
            noise_norm = math.sqrt((1 + self.b0) ** 2 + self.b0 ** 2)
            delta = (pos[k] * (1 + self.b0) + neg[k] * (-self.b0)) * (1 / noise_norm)
            self.p[k] = self.p[k] - lr * delta


class Lookahead:
    """michaelrzhang's Lookahead: cached (slow) params from the start, sync after every k steps."""

    def __init__(self, inner, k=5, alpha=0.5):
        self.inner, self.k, self.alpha = inner, k, alpha
        self.steps = 0
        self.cached = {key: v.copy() for key, v in inner.p.items()}
        self.syncs = 0

    @property
    def p(self):
        return self.inner.p

    def step(self, grads, lr):
        self.inner.step(grads, lr)
        self.steps += 1
        if self.steps >= self.k:
            self.steps = 0
            self.syncs += 1
            for key in self.inner.p:
                self.inner.p[key] = self.inner.p[key] * self.alpha + (1.0 - self.alpha) * self.cached[key]
                self.cached[key] = self.inner.p[key].copy()
