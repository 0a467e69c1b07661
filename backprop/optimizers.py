"""Optimizers: a constructor that validates its arguments, and an update that hands each
parameter to the backend's fused in-place kernel.

    SGD       theta -= eta * g                  (momentum: v = mu v - eta g; theta += v)
    Adagrad   r += g^2;  theta -= eta g / (sqrt(r) + eps)
    RMSprop   r = rho r + (1 - rho) g^2;  theta -= eta g / sqrt(r + eps)   (Keras's form)
    Adam      m, v moving averages of g, g^2;  theta -= eta_t m / (sqrt(v) + eps)
    AdamW     Adam, after the decoupled decay theta -= eta * weight_decay * theta

`learning_rate` is a float, a schedule object from this module, or any callable of the
step (0 for the first update) returning a float. The step counter lives on the host, so a
schedule never reads the device.

What changes from step to step (the learning rate; Adam's bias-corrected step size and its
decay) is an optimizer's `step_values`. `fit` evaluates them on the host for a whole epoch
at once, copies that table to the device once, and each step's update reads its row there:
a step captured as a CUDA graph then replays with the right values instead of frozen ones.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

from backends import Array, Backend
from backends.base import adam_step_size

from .registry import lookup


def _check(
    name: str, value: Any, low: float, high: float = math.inf, *, low_open=False, high_open=False
) -> float:
    """`value` as a float, or a ValueError naming the argument, the value and the range."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{name} must be a number in {lo}{low}, {high}{hi}, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- schedules
class Schedule:
    """A learning rate as a function of the step (0 for the first update)."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"name": type(self).__name__, **vars(self)}


class StepDecay(Schedule):
    """initial_learning_rate * drop ** floor(step / every)."""

    def __init__(self, initial_learning_rate: float, drop: float = 0.5, every: int = 1000):
        self.initial_learning_rate = _check(
            "initial_learning_rate", initial_learning_rate, 0, low_open=True
        )
        self.drop = _check("drop", drop, 0, 1, low_open=True)
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.every = every

    def __call__(self, step):
        return self.initial_learning_rate * self.drop ** (step // self.every)


class ExponentialDecay(Schedule):
    """initial_learning_rate * decay_rate ** (step / decay_steps) (Keras's formula)."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float):
        self.initial_learning_rate = _check(
            "initial_learning_rate", initial_learning_rate, 0, low_open=True
        )
        if not isinstance(decay_steps, int) or decay_steps < 1:
            raise ValueError(f"decay_steps must be an integer >= 1, got {decay_steps!r}")
        self.decay_steps = decay_steps
        self.decay_rate = _check("decay_rate", decay_rate, 0, low_open=True)

    def __call__(self, step):
        return self.initial_learning_rate * self.decay_rate ** (step / self.decay_steps)


class CosineDecay(Schedule):
    """Cosine from initial_learning_rate down to alpha * initial_learning_rate over
    decay_steps, then constant: eta_0 ((1 - alpha) (1 + cos(pi t / T)) / 2 + alpha)."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0):
        self.initial_learning_rate = _check(
            "initial_learning_rate", initial_learning_rate, 0, low_open=True
        )
        if not isinstance(decay_steps, int) or decay_steps < 1:
            raise ValueError(f"decay_steps must be an integer >= 1, got {decay_steps!r}")
        self.decay_steps = decay_steps
        self.alpha = _check("alpha", alpha, 0, 1)

    def __call__(self, step):
        t = min(step, self.decay_steps) / self.decay_steps
        return self.initial_learning_rate * (
            (1 - self.alpha) * 0.5 * (1 + math.cos(math.pi * t)) + self.alpha
        )


SCHEDULES = {cls.__name__: cls for cls in (StepDecay, ExponentialDecay, CosineDecay)}


# --------------------------------------------------------------------------- optimizers
class Optimizer:
    """Base class: learning rate (or schedule), optional global-norm gradient clipping, the
    step counter, and per-parameter state arrays on the backend."""

    name = "optimizer"
    #: state arrays kept per parameter, e.g. ("velocity",); created zero-filled by build()
    slots: tuple[str, ...] = ()

    def __init__(
        self,
        learning_rate: float | Callable[[int], float] = 0.01,
        global_clipnorm: float | None = None,
    ) -> None:
        if callable(learning_rate):
            self.learning_rate: float | Callable[[int], float] = learning_rate
        else:
            self.learning_rate = _check("learning_rate", learning_rate, 0, low_open=True)
        self.global_clipnorm = (
            None
            if global_clipnorm is None
            else _check("global_clipnorm", global_clipnorm, 0, low_open=True)
        )
        self.iterations = 0  # updates applied so far
        self.state: list[dict[str, Array]] = []

    be: Backend  # set by build()

    @property
    def built(self) -> bool:
        return hasattr(self, "be")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments other than learning_rate and clipping."""
        return {}

    def current_learning_rate(self) -> float:
        """The learning rate of the next update (a schedule evaluated at the current step)."""
        return self.learning_rate_at(self.iterations)

    def build(self, params: list[Array], be: Backend) -> None:
        """Zero-filled state for each parameter (also resets the step counter)."""
        self.be = be
        self.iterations = 0
        self.state = [
            {slot: self._initial_slot(be, p, slot) for slot in self.slots} for p in params
        ]

    def _initial_slot(self, be: Backend, p: Array, slot: str) -> Array:
        return be.zeros_like(p)

    def clip(self, grads: list[Array]) -> None:
        """Scale every gradient in place by min(1, c / ||g||), ||g|| over all of them (as
        g / max(||g|| / c, 1)), on the device through the backend's methods: the norm is never
        read back to the host, and a step that clips is recorded on the CPU."""
        if self.global_clipnorm is None:
            return
        be = self.be
        total = None
        for g in grads:
            term = be.sum(be.square(g))
            total = term if total is None else be.add(total, term)
        ratio = be.maximum(be.divide(be.sqrt(total), self.global_clipnorm), 1.0)
        for g in grads:
            be.divide(g, ratio, out=g)

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of update number `step` (0 for the first)."""
        lr = self.learning_rate
        if not callable(lr):
            return lr
        value = float(lr(step))
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(
                f"the learning-rate schedule returned {value!r} at step {step}; a learning "
                "rate must be a finite number >= 0"
            )
        return value

    def step_values(self, step: int) -> tuple[float, ...]:
        """The values update number `step` (0 for the first) reads: by default its learning
        rate. Computed on the host; see `step_table`."""
        return (self.learning_rate_at(step),)

    def step_table(self, steps: int) -> list[tuple[float, ...]]:
        """step_values for the next `steps` updates, one row each: an epoch's worth, copied to
        the device once and read there row by row."""
        return [self.step_values(self.iterations + k) for k in range(steps)]

    def apply(self, params: list[Array], grads: list[Array], values: Array | None = None) -> None:
        """One update of every parameter from its gradient (gradients may be clipped in place),
        advancing the step counter.

        `values`: this step's row of a step table on the device (what `step_values` gives,
        as a (k,) array); None computes them on the host from the step counter."""
        if not self.built or len(self.state) != len(params):
            raise RuntimeError("the optimizer is not built for these parameters: call build()")
        self.clip(grads)
        if values is None:
            row: tuple[Any, ...] = self.step_values(self.iterations)
        else:  # 0-d views into the device row: read by the update kernels on every replay
            row = tuple(values[..., j] for j in range(int(values.shape[-1])))
        self.iterations += 1
        for p, g, s in zip(params, grads, self.state, strict=True):
            self.update(p, g, s, row)

    def update(
        self, param: Array, grad: Array, state: dict[str, Array], values: tuple[Any, ...]
    ) -> None:
        """Update `param` in place from `grad`, with this step's `values` (floats or 0-d
        device arrays, in step_values' order)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this optimizer (without its state)."""
        lr = self.learning_rate
        if isinstance(lr, Schedule):
            lr_config: Any = lr.config()
        elif callable(lr):
            raise ValueError(
                "learning_rate is a plain Python callable, which cannot be saved without "
                "pickle; use a schedule from backprop.optimizers (StepDecay, "
                "ExponentialDecay, CosineDecay) to save this model"
            )
        else:
            lr_config = lr
        return {
            "name": self.name,
            "learning_rate": lr_config,
            "global_clipnorm": self.global_clipnorm,
            **self.hyperparameters(),
        }


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum, Keras's form:
    v = momentum v - lr g; theta += v (Nesterov: theta += momentum v - lr g).
    With fit(batch_size=None) it is full-batch gradient descent, theta -= eta grad C."""

    name = "sgd"

    def __init__(
        self,
        learning_rate=0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        global_clipnorm=None,
    ) -> None:
        super().__init__(learning_rate, global_clipnorm)
        self.momentum = _check("momentum", momentum, 0, 1, high_open=True)
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0, got momentum=0")
        self.nesterov = nesterov
        self.slots = ("velocity",) if self.momentum else ()

    def hyperparameters(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}

    def update(self, param, grad, state, values):
        (lr,) = values
        if self.momentum:
            self.be.momentum_update(
                param, grad, state["velocity"], lr, self.momentum, self.nesterov
            )
        else:
            self.be.sgd_update(param, grad, lr)


class Adagrad(Optimizer):
    """accumulator += g^2; theta -= lr g / (sqrt(accumulator) + epsilon); the accumulator
    starts at initial_accumulator_value (Keras's default 0.1)."""

    name = "adagrad"
    slots = ("accumulator",)

    def __init__(
        self,
        learning_rate=0.001,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
        global_clipnorm=None,
    ) -> None:
        super().__init__(learning_rate, global_clipnorm)
        self.initial_accumulator_value = _check(
            "initial_accumulator_value", initial_accumulator_value, 0
        )
        self.epsilon = _check("epsilon", epsilon, 0, low_open=True)

    def hyperparameters(self):
        return {
            "initial_accumulator_value": self.initial_accumulator_value,
            "epsilon": self.epsilon,
        }

    def _initial_slot(self, be, p, slot):
        acc = be.zeros_like(p)
        return be.add(acc, self.initial_accumulator_value, out=acc)

    def update(self, param, grad, state, values):
        self.be.adagrad_update(param, grad, state["accumulator"], values[0], self.epsilon)


class RMSprop(Optimizer):
    """mean_square = rho mean_square + (1 - rho) g^2; theta -= lr g / sqrt(ms + epsilon):
    epsilon inside the square root, as Keras (3) computes it, so the same defaults give the
    same updates from the first step (with it outside, the first steps differ)."""

    name = "rmsprop"
    slots = ("mean_square",)

    def __init__(
        self, learning_rate=0.001, rho: float = 0.9, epsilon: float = 1e-7, global_clipnorm=None
    ) -> None:
        super().__init__(learning_rate, global_clipnorm)
        self.rho = _check("rho", rho, 0, 1, high_open=True)
        self.epsilon = _check("epsilon", epsilon, 0, low_open=True)

    def hyperparameters(self):
        return {"rho": self.rho, "epsilon": self.epsilon}

    def update(self, param, grad, state, values):
        self.be.rmsprop_update(param, grad, state["mean_square"], values[0], self.rho, self.epsilon)


class Adam(Optimizer):
    """m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    theta -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)."""

    name = "adam"
    slots = ("m", "v")

    def __init__(
        self,
        learning_rate=0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        global_clipnorm=None,
    ) -> None:
        super().__init__(learning_rate, global_clipnorm)
        self.beta_1 = _check("beta_1", beta_1, 0, 1, high_open=True)
        self.beta_2 = _check("beta_2", beta_2, 0, 1, high_open=True)
        self.epsilon = _check("epsilon", epsilon, 0, low_open=True)
        self.weight_decay = 0.0

    def hyperparameters(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}

    def step_values(self, step):
        """(lr_t, lr * weight_decay): the bias-corrected step size of update t = step + 1,
        lr sqrt(1 - beta_2^t) / (1 - beta_1^t), and the decoupled decay (0 for Adam)."""
        lr = self.learning_rate_at(step)
        return (adam_step_size(lr, self.beta_1, self.beta_2, step + 1), lr * self.weight_decay)

    def update(self, param, grad, state, values):
        step_size, decay = values
        if not self.weight_decay:
            decay = 0.0  # Adam: no decay pass at all
        self.be.adam_step(
            param,
            grad,
            state["m"],
            state["v"],
            step_size,
            self.beta_1,
            self.beta_2,
            self.epsilon,
            decay,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter): before each Adam step,
    theta -= lr * weight_decay * theta, applied to every parameter."""

    name = "adamw"

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay: float = 0.004,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        global_clipnorm=None,
    ) -> None:
        super().__init__(learning_rate, beta_1, beta_2, epsilon, global_clipnorm)
        self.weight_decay = _check("weight_decay", weight_decay, 0)

    def hyperparameters(self):
        return {"weight_decay": self.weight_decay, **super().hyperparameters()}


OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (SGD, Adagrad, RMSprop, Adam, AdamW)
}


def get_optimizer(spec: str | dict[str, Any] | Optimizer) -> Optimizer:
    """An Optimizer from a name ("sgd", "adam", ...), a config dict, or an instance."""
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, dict):
        kwargs = dict(spec)
        cls = lookup(OPTIMIZERS, "optimizer", kwargs.pop("name", None))
        lr = kwargs.get("learning_rate")
        if isinstance(lr, dict):
            lr = dict(lr)
            kwargs["learning_rate"] = SCHEDULES[lr.pop("name")](**lr)
        return cls(**kwargs)
    if isinstance(spec, str):
        return lookup(OPTIMIZERS, "optimizer", spec)()
    raise TypeError(f"optimizer must be a name or an Optimizer, got {type(spec).__name__}")
