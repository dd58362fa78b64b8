"""`model.fit` callbacks that show what the precision does.

`PrecisionMonitor` records, every `every_n_steps` training steps, per
emulated layer and per tensor role, the fraction of values that underflow to
zero, that overflow (saturate or become Inf/NaN) and that end up subnormal in
the role's format, plus the loss scales of a loss-scale optimizer.  The
values go into `logs` (so `History`, `CSVLogger` and a later
`keras.callbacks.TensorBoard` in the callback list see them) and, with
`log_dir`, into TensorBoard scalars of their own.

`PolicySchedule` switches layers' policies at epoch boundaries.

>>> import keras, numpy as np, tf_lowprec as lp
>>> model = keras.Sequential(
...     [keras.Input((4,)), keras.layers.Dense(2, dtype=lp.Policy("fp8"), name="dense")],
...     name="net")
>>> model.compile("sgd", "mse")
>>> monitor = lp.callbacks.PrecisionMonitor(every_n_steps=1)
>>> history = model.fit(np.ones((8, 4)), np.zeros((8, 2)), verbose=0, callbacks=[monitor])
>>> sorted(k for k in history.history if k.endswith("activations/underflow"))
['precision/net/dense/activations/underflow']
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from tf_lowprec.keras import coverage
from tf_lowprec.keras import emulation
from tf_lowprec.numerics import formats as formats_lib
from tf_lowprec.keras import adapter
from tf_lowprec.keras import policy as policy_lib
from tf_lowprec.keras import scaling as scaling_lib
from tf_lowprec.numerics import stats as stats_lib

ROLES = policy_lib.ROLES
STATS = ("underflow", "overflow", "subnormal")
# Recorded besides STATS for roles in block-scaled formats (stats.BLOCK_STAT_NAMES).
BLOCK_STATS = stats_lib.BLOCK_STAT_NAMES
# Logged for the roles a policy scales (lp.Scaling).
SCALING_STATS = ("amax", "scale")


def _emulated_layers(model):
    """Layers (the model's own included) whose dtype policy is an emulating lp.Policy."""
    found = []
    for layer in adapter.model_layers(model):
        policy = layer.dtype_policy
        if isinstance(policy, policy_lib.Policy) and policy.spec.emulates:
            found.append(layer)
    return found


def _layer_key(layer):
    return layer.path or layer.name


def _rounded_roles(policy):
    """Roles the policy rounds (its first/last-layer spec included)."""
    specs = [policy.spec] + ([policy.spec.first_last] if policy.spec.first_last else [])
    return {role for spec in specs for role in ROLES if spec.role(role) is not None}


def _role_stats(policy, role):
    """The statistics recorded for `role` under `policy`: block ones for a BlockFormat,
    amax and scale for a scaled role."""
    specs = [policy.spec] + ([policy.spec.first_last] if policy.spec.first_last else [])
    block = any(s.role(role) is not None and s.role(role)[0].kind == "block" for s in specs)
    scaled = any(s.scaling(role) is not None for s in specs)
    return STATS + (BLOCK_STATS if block else ()) + (SCALING_STATS if scaled else ())


def _names_for(fmt, variables):
    """The statistics of `fmt` that have variables (in a fixed order)."""
    available = stats_lib.stat_names(fmt)
    return [name for name in STATS + BLOCK_STATS if name in available and name in variables]


def _current_scaling(spec, role, layer):
    """The role's Scaling where it scales like current scaling, else None.

    Delayed roles of a layer without scale state (no kernel) scale like
    current ones (docs/scaling.md).
    """
    scaling = spec.scaling(role)
    if scaling is None or (scaling.delayed and role in scaling_lib.state_of(layer)):
        return None
    return scaling


def _amax_and_scale(x, fmt, scaling):
    """[amax, scale] of a current-scaled tensor (the tensor-wide amax and its scale)."""
    amax = scaling_lib.amax_of(x)
    return [amax, scaling_lib.compute_scale(amax, fmt.max_value, scaling.margin,
                                            scaling.power_of_two)]


class PrecisionMonitor(keras.callbacks.Callback):
    """Per-layer, per-role under/overflow statistics during `fit`.

    Args:
      every_n_steps: sampling interval in training steps (optimizer
        iterations).  Sampled steps run a second traced train step that also
        computes the statistics; the other steps run the ordinary one, so
        they cost nothing extra.
      roles: which tensor roles to watch.
      log_dir: optional TensorBoard log folder for the monitor's own scalars
        (`<log_dir>/precision`).  Alternatively place the monitor before a
        `keras.callbacks.TensorBoard` in the callback list: the epoch logs it
        adds are then written by TensorBoard too.

    Log keys: `precision/<layer path>/<role>/<stat>` (stat in underflow,
    overflow, subnormal; for roles in a block-scaled format also
    clipped_blocks, scale_exponent_min and scale_exponent_max: see
    `lp.precision_stats`; for roles with an `lp.Scaling` amax and scale:
    for delayed scaling the newest amax of the layer's history and the scale
    the next step uses, for current scaling those of the sampled step —
    docs/scaling.md; recurrent layers' error statistics are means over
    timesteps), `loss_scale`, and `loss_scale/<layer path>` for an
    `AdaptiveLossScaleOptimizer`, and `unemulated_gemms`: how many (layer, op
    type) raw TensorFlow GEMMs the policies could not emulate were found in
    the model when its steps were traced (`tf_lowprec.keras.coverage`; the
    details in `unemulated`).  Values are those of the latest sampled step.

    In a custom training loop, trace the step inside `watch(model)` and
    read the statistics after each call with `read()`:

    >>> import keras, numpy as np, tensorflow as tf, tf_lowprec as lp
    >>> model = keras.Sequential([keras.Input((3,)),
    ...                           keras.layers.Dense(2, dtype=lp.Policy("fp8"), name="d")],
    ...                          name="net")
    >>> monitor = lp.callbacks.PrecisionMonitor()
    >>> with monitor.watch(model):
    ...     @tf.function
    ...     def step(x):
    ...         with tf.GradientTape() as tape:
    ...             loss = tf.reduce_sum(model(x) ** 2)
    ...         return tape.gradient(loss, model.trainable_weights)
    ...     _ = step(np.full((4, 3), 1e-4, np.float32))  # below E4M3's smallest value
    ...     stats = monitor.read()
    >>> stats["precision/net/d/activations/underflow"]
    1.0
    >>> 0.0 <= stats["precision/net/d/errors/underflow"] <= 1.0
    True
    """

    def __init__(self, every_n_steps=100, roles=ROLES, log_dir=None):
        super().__init__()
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or (
            every_n_steps < 1
        ):
            raise ValueError(f"every_n_steps must be a positive int, got {every_n_steps!r}")
        roles = tuple(roles)
        unknown = [r for r in roles if r not in ROLES]
        if unknown or not roles:
            raise ValueError(f"roles must be a non-empty subset of {ROLES}; got {roles!r}")
        self.every_n_steps = every_n_steps
        self.roles = roles
        self.log_dir = log_dir
        self._variables = {}
        self._layers = {}
        self._observed = set()
        self._remove_hook = None
        self._tracing_sampler = False
        self._sampled = False
        self._step = 0
        self._plain_step = self._sampling_step = None
        self._writer = None
        self.latest = {}
        self.unemulated = {}

    # Graph side -----------------------------------------------------------

    def _record(self, context, role, fmt, x):
        """Assigns the statistics of x (for fmt); traced only into the sampling step."""
        key = (_layer_key(context.layer), role)
        variables = self._variables.get(key)
        if variables is None:
            return
        names = _names_for(fmt, variables)
        # Traced: this layer really rounds this role (in this format).
        self._observed.update((key, name) for name in names)
        values = stats_lib.precision_stats(x, fmt, implementation=context.implementation)
        for name in names:
            variables[name].assign(values[name])
        scaling = _current_scaling(context.spec, role, context.layer)
        if scaling is not None and "amax" in variables:
            self._observed.update((key, name) for name in SCALING_STATS)
            for name, value in zip(SCALING_STATS, _amax_and_scale(x, fmt, scaling)):
                variables[name].assign(value)

    def _observe_gradient(self, context, role, fmt, y):
        """Identity on y whose gradient's statistics leave the gradient graph as values.

        A recurrent layer computes its gradients inside a tf.while_loop, where
        no variable of the step can be assigned: the statistics of every
        timestep are summed into the gradient of a probe
        (`emulation.gradient_probe`) and assigned (as means) in the graph of
        the training step.
        """
        key = (_layer_key(context.layer), role)
        variables = self._variables.get(key)
        if variables is None:
            return y

        scaling = (_current_scaling(context.spec, role, context.layer)
                   if "amax" in variables else None)
        names = _names_for(fmt, variables) + list(SCALING_STATS if scaling is not None else ())

        def assign_means(total):  # [sum of each statistic..., count]
            for index, name in enumerate(names):
                variables[name].assign(total[index] / total[len(names)])

        probe = emulation.gradient_probe(context.layer, len(names) + 1, assign_means)
        if probe is None:
            return y
        self._observed.update((key, name) for name in names)

        @tf.custom_gradient
        def observe(v, unused_probe):
            def grad(dy):
                values = stats_lib.precision_stats(dy, fmt, implementation=context.implementation)
                extra = [] if scaling is None else _amax_and_scale(dy, fmt, scaling)
                statistics = [values[name] for name in names if name not in SCALING_STATS]
                return dy, tf.stack(statistics + extra + [tf.ones([])])

            return tf.identity(v), grad

        return observe(y, probe)

    def _hook(self, context, role, x, round_fn, axis):
        if not self._tracing_sampler:
            return round_fn(x)  # the ordinary train step: no monitoring ops at all
        entry = context.role_format(role, axis)
        if role in ("activations", "weights", "storage") and entry is not None and (
            role in self.roles
        ):
            self._record(context, role, entry[0], context.layout_for(x, role, axis))
        y = round_fn(x)
        if role == "errors" and entry is not None and "errors" in self.roles:
            # After round_fn in the forward chain: the gradient reaches this
            # identity before it is rounded (and after any loss scale).
            y = self._observe_gradient(context, "errors", entry[0], y)
        gradient = context.role_format("weight_gradients", axis)
        if role == "weights" and gradient is not None and "weight_gradients" in self.roles:
            y = self._observe_gradient(context, "weight_gradients", gradient[0], y)
        return y

    # Callback side --------------------------------------------------------

    def _create_variables(self):
        strategy = self.model.distribute_strategy
        with strategy.scope():
            for layer in _emulated_layers(self.model):
                for role in _rounded_roles(layer.dtype_policy) & set(self.roles):
                    key = (_layer_key(layer), role)
                    if key in self._variables:
                        continue
                    self._layers[key[0]] = layer
                    self._variables[key] = {
                        name: tf.Variable(0.0, trainable=False, name=f"precision_{name}",
                                          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                        for name in _role_stats(layer.dtype_policy, role)
                    }
        if self._remove_hook is None:
            self._remove_hook = emulation.add_role_hook(self._hook)

    @contextlib.contextmanager
    def watch(self, model):
        """Monitors `model` in a custom training loop: steps traced inside record statistics.

        Every function that calls the model and is traced inside the block
        computes and stores the statistics at each call (as fit's sampled
        steps do); `read()` returns the latest values.  The hook is removed
        when the block ends (already traced functions keep their ops).
        """
        self.set_model(model)
        self._create_variables()
        self._tracing_sampler = True
        try:
            yield self
        finally:
            self._tracing_sampler = False
            if self._remove_hook is not None:
                self._remove_hook()
                self._remove_hook = None

    def read(self):
        """The statistics of the latest monitored step, as a dict of log keys (also `latest`)."""
        self.latest = self._read()
        return self.latest

    def on_train_begin(self, logs=None):
        self._create_variables()
        # Two train steps, each traced on its first call: the ordinary one, and
        # the sampling one that also computes and stores the statistics.
        # on_train_batch_begin picks one per step, so the steps between samples
        # run exactly the graph they would run without the monitor.
        self.model.make_train_function(force=True)
        self._plain_step = self.model.train_function
        self.model.make_train_function(force=True)
        self._sampling_step = self.model.train_function
        self._step = int(np.asarray(self.model.optimizer.iterations.numpy()))
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(f"{self.log_dir}/precision")

    def on_train_end(self, logs=None):
        if self._remove_hook is not None:
            self._remove_hook()
            self._remove_hook = None
        self._tracing_sampler = False
        # The next fit traces a train step without the hook.
        self.model.train_function = None
        self._plain_step = self._sampling_step = None
        if self._writer is not None:
            self._writer.flush()

    def on_train_batch_begin(self, batch, logs=None):
        self._sampled = self._step % self.every_n_steps == 0
        # Read when a step function is traced (its first call, or a retrace).
        self._tracing_sampler = self._sampled
        self.model.train_function = self._sampling_step if self._sampled else self._plain_step

    def _read(self):
        values = {}
        for (layer, role), variables in self._variables.items():
            observed = False
            for name, variable in variables.items():
                # Unobserved: e.g. a Flatten layer under a global policy (no
                # GEMM), or block statistics of a first/last layer in FP16.
                if ((layer, role), name) in self._observed:
                    observed = True
                    values[f"precision/{layer}/{role}/{name}"] = float(variable.numpy())
            delayed = scaling_lib.state_of(self._layers[layer]).get(role) if observed else None
            if delayed is not None:  # the layer's own state: the step's amax, the next scale
                values[f"precision/{layer}/{role}/amax"] = float(delayed[1].numpy()[0])
                values[f"precision/{layer}/{role}/scale"] = float(delayed[0].numpy())
        self.unemulated = coverage.unemulated_gemms(self.model)
        values["unemulated_gemms"] = float(sum(len(ops) for ops in self.unemulated.values()))
        optimizer = getattr(self.model, "optimizer", None)
        scale = getattr(optimizer, "dynamic_scale", None)
        if scale is not None:
            values["loss_scale"] = float(np.asarray(scale.numpy()))
        for path, variable in getattr(optimizer, "layer_scales", {}).items():
            values[f"loss_scale/{path}"] = float(np.asarray(variable.numpy()))
        return values

    def on_train_batch_end(self, batch, logs=None):
        step, self._step = self._step, self._step + 1
        if not self._sampled:
            return
        self.latest = self._read()
        if logs is not None:
            logs.update(self.latest)
        if self._writer is not None:
            with self._writer.as_default(step=step):
                for name, value in self.latest.items():
                    tf.summary.scalar(name, value)

    def on_epoch_end(self, epoch, logs=None):
        if not self.latest:
            self.latest = self._read()
        if logs is not None:
            logs.update(self.latest)


class PolicySchedule(keras.callbacks.Callback):
    """Switches layers to other policies at epoch boundaries.

    Args:
      schedule: dict from epoch (0-based, the policy applies from that epoch
        on) to a policy (an `lp.Policy`, a preset name, or a dtype policy such
        as "float32"), or a function `epoch -> policy or None` (None keeps
        the current one).
      layers: optional function `layer -> bool` choosing the layers to switch
        (default: every layer whose policy is an `lp.Policy`, and those the
        schedule switched before).

    >>> import tf_lowprec as lp
    >>> schedule = lp.callbacks.PolicySchedule({0: "fp8", 3: "bf16"})  # FP8 first, then BF16
    """

    def __init__(self, schedule, layers=None):
        super().__init__()
        if not (isinstance(schedule, dict) or callable(schedule)):
            raise ValueError(f"schedule must be a dict or a function of the epoch; got {schedule!r}")
        if isinstance(schedule, dict):
            for epoch in schedule:
                if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                    raise ValueError(f"schedule keys must be epochs (ints >= 0); got {epoch!r}")
            schedule = {e: self._as_policy(p) for e, p in schedule.items()}
        self.schedule = schedule
        self.layers = layers
        self._switched = set()

    @staticmethod
    def _as_policy(policy):
        if isinstance(policy, keras.DTypePolicy):
            return policy
        if isinstance(policy, str) and policy in policy_lib.PRESETS:
            return policy_lib.Policy(policy)
        try:
            return keras.dtype_policies.get(policy)
        except ValueError as e:
            raise ValueError(
                f"cannot use {policy!r} as a policy: give an lp.Policy, a preset "
                f"({', '.join(policy_lib.PRESETS)}) or a Keras dtype policy name"
            ) from e

    def _policy_for(self, epoch):
        if isinstance(self.schedule, dict):
            return self.schedule.get(epoch)
        policy = self.schedule(epoch)
        return None if policy is None else self._as_policy(policy)

    def on_epoch_begin(self, epoch, logs=None):
        policy = self._policy_for(epoch)
        if policy is None:
            return
        for layer in adapter.model_layers(self.model)[1:]:
            chosen = (self.layers(layer) if self.layers is not None else
                      isinstance(layer.dtype_policy, policy_lib.Policy) or id(layer) in
                      self._switched)
            if chosen:
                layer.dtype_policy = policy
                self._switched.add(id(layer))
        # Re-trace the train step: the policies are read when it is traced.
        self.model.make_train_function(force=True)


def formats_of(policy):
    """The formats a policy rounds to, by role (for display)."""
    spec = policy.spec
    return {role: formats_lib.serialize(spec.role(role)[0]) for role in ROLES if spec.role(role)}
