"""The one module that touches Keras internals: it adapts, the features decide.

Keras 3 has no public extension point for the numerics of stock layers
(`DTypePolicy.convert_input` is skipped on the fast path, quantization modes
are a closed set; see docs/design.md).  `install()` therefore replaces a few
functions of the TensorFlow backend with wrappers:

- `keras.src.backend.tensorflow.numpy`: `matmul`, `einsum`, `dot` (which
  `vdot` calls), `tensordot`, `inner`;
- `keras.src.backend.tensorflow.nn`: `conv`, `depthwise_conv`,
  `separable_conv`, `conv_transpose`, and `_dot_product_attention_xla` (the
  core of `ops.dot_product_attention`, which calls `tf.einsum` directly);
- `Layer.__call__` ("layer_call" around it; outputs of layers whose policy has
  `_lowprec_storage`), `Layer._post_build` ("layer_built"), `Trainer.compile`,
  `Model.export`, and
  `keras.src.dtype_policies.get` and `.serialize`.

It also reads (without replacing) `keras.src.backend.common.backend_utils`'
output size of a transposed convolution (`conv_transpose_output_shape`), so
that the emulated one has Keras' shape.

The wrappers know nothing of policies or training: they hand each event to
the listener a feature registered for it (`set_listener`), and run Keras'
own function when there is none or the listener declines (returns
`NotImplemented`).  Events and their listeners (see docs/architecture.md):

- "gemm": `listener(name, original, callers, args, kwargs)` for every routed
  backend call made while a layer is being called (`callers`: the layers
  being called, outermost first, with their name-scope entries); the
  emulation (`tf_lowprec.keras.emulation`) runs the op emulated when the
  innermost layer has a `tf_lowprec.Policy`.
- "layer_outputs": `listener(layer, policy, outputs)` after `Layer.__call__`
  of a layer whose dtype policy has a true `_lowprec_storage` attribute.
- "layer_call": `listener(layer)` -> a context manager entered around
  `Layer.__call__`, or None (the coverage check of `tf_lowprec.keras.coverage`:
  raw TensorFlow GEMMs in traced layer calls).
- "compiling": `listener(model, optimizer)` -> the optimizer to compile
  with, before `Model.compile` (`optimizer` as the caller gave it: a name,
  a dict, an instance; automatic loss scaling).
- "export": `listener(model)` -> a context manager around
  `Model.export(format="tf_saved_model")`, or None.
- "policy_from_name": `listener(identifier)` -> a dtype policy or None,
  asked by `dtype_policies.get` first.  `Operation.from_config` turns a
  deserialized float policy back into its name before constructing the
  layer (keras/src/ops/operation.py), which would lose a `Policy`.
- "policy_config": `listener(policy, config)` -> the config to save, after
  `dtype_policies.serialize` (what `Layer.get_config` saves as "dtype").
- "layer_built": `listener(layer)` after a layer's `build`, while the layer
  may still create variables (`Layer._post_build`, before Keras locks its
  state): the per-tensor scaling's state (`tf_lowprec.keras.scaling`).

`install()` is one explicit, idempotent step (`import tf_lowprec` takes it);
it checks the Keras version first.  Listeners can be set before or after it.

>>> from tf_lowprec.keras import adapter
>>> adapter.install(); adapter.installed()
True
"""

import contextlib
import functools
import inspect
import threading

import keras

# Keras versions whose internals this module was written and tested against
# (major.minor).  Others fail loudly at install() instead of mis-emulating.
SUPPORTED_KERAS_VERSIONS = ("3.15",)

_NUMPY_FUNCTIONS = ("matmul", "einsum", "dot", "tensordot", "inner")
_NN_FUNCTIONS = ("conv", "depthwise_conv", "separable_conv", "conv_transpose",
                 "_dot_product_attention_xla")
EVENTS = ("gemm", "layer_outputs", "layer_call", "compiling", "export", "policy_from_name",
          "policy_config", "layer_built")
_lock = threading.Lock()
_installed = False
_install_error = None
_listeners = dict.fromkeys(EVENTS)


class UnsupportedKerasVersionError(RuntimeError):
    """Raised when the installed Keras is not one the adapter supports."""


def check_keras_version(version=None):
    """Raises UnsupportedKerasVersionError unless Keras is a supported version."""
    version = keras.__version__ if version is None else version
    if ".".join(version.split(".")[:2]) not in SUPPORTED_KERAS_VERSIONS:
        raise UnsupportedKerasVersionError(
            f"tf_lowprec's Keras policies support Keras {', '.join(SUPPORTED_KERAS_VERSIONS)}.x "
            f"(they route keras.src.backend.tensorflow's matmul/einsum/conv, which are internal); "
            f"found keras {version}. Install a supported Keras, or check tests/test_keras_hooks.py "
            "against this version and add it to "
            "tf_lowprec.keras.adapter.SUPPORTED_KERAS_VERSIONS."
        )
    if keras.backend.backend() != "tensorflow":
        raise UnsupportedKerasVersionError(
            f"tf_lowprec policies need the TensorFlow backend; KERAS_BACKEND is "
            f"{keras.backend.backend()!r}"
        )


def set_listener(event, listener):
    """Makes `listener` (or None) the one that handles `event` (one of EVENTS)."""
    if event not in EVENTS:
        raise ValueError(f"event must be one of {', '.join(EVENTS)}; got {event!r}")
    _listeners[event] = listener


def _backend_modules():
    from keras.src.backend.tensorflow import nn, numpy  # noqa: PLC0415

    return numpy, nn


def current_callers():
    """The layers being called in this thread, outermost first (from Keras' name scopes).

    A list of (layer, name-scope entry) pairs.
    """
    from keras.src.backend.common import global_state  # noqa: PLC0415

    stack = global_state.get_global_attribute("name_scope_stack") or []
    return [(entry.caller, entry) for entry in stack
            if isinstance(entry.caller, keras.layers.Layer)]


def layer_policy(layer):
    """The policy in force for `layer`, resolving a DTypePolicyMap by the layer's path."""
    from keras.src.dtype_policies import DTypePolicyMap  # noqa: PLC0415

    policy = layer.dtype_policy
    if isinstance(policy, DTypePolicyMap) and layer.path:
        policy = policy[layer.path]
    return policy


def model_layers(model):
    """`model` first, then every layer nested in it (Keras' own walk, `_flatten_layers`)."""
    return [model] + list(model._flatten_layers(include_self=False))


def _route(name, original):
    @functools.wraps(original)
    def routed(*args, **kwargs):
        listener = _listeners["gemm"]
        if listener is not None:
            callers = current_callers()
            if callers:
                result = listener(name, original, callers, args, kwargs)
                if result is not NotImplemented:
                    return result
        return original(*args, **kwargs)

    routed._lowprec_original = original
    return routed


def install():
    """Routes the TF backend's GEMM functions and the Keras entry points above to listeners.

    Idempotent.  Raises UnsupportedKerasVersionError (and remembers it for
    `install_error`) when Keras is not a supported version.
    """
    global _installed, _install_error
    if _installed:
        return
    with _lock:
        if _installed:
            return
        try:
            check_keras_version()
            numpy_module, nn_module = _backend_modules()
            targets = [(numpy_module, n) for n in _NUMPY_FUNCTIONS] + [
                (nn_module, n) for n in _NN_FUNCTIONS]
            missing = [f"{m.__name__}.{n}" for m, n in targets if not hasattr(m, n)]
            if missing:
                raise UnsupportedKerasVersionError(
                    f"Keras {keras.__version__} lacks {', '.join(missing)}, which the "
                    "policies route"
                )
        except UnsupportedKerasVersionError as error:
            _install_error = error
            raise
        for module, name in targets:
            current = getattr(module, name)
            if not hasattr(current, "_lowprec_original"):
                setattr(module, name, _route(name, current))
        _wrap_policy_lookup()
        _wrap_layer_and_model_methods()
        _install_error = None
        _installed = True


def install_error():
    """The error of a failed `install()`, or None."""
    return _install_error


def _wrap_policy_lookup():
    from keras.src import dtype_policies  # noqa: PLC0415

    if hasattr(dtype_policies.get, "_lowprec_original"):
        return
    get_original = dtype_policies.get

    @functools.wraps(get_original)
    def get(identifier):
        listener = _listeners["policy_from_name"]
        if listener is not None:
            policy = listener(identifier)
            if policy is not None:
                return policy
        return get_original(identifier)

    get._lowprec_original = get_original
    dtype_policies.get = get

    serialize_original = dtype_policies.serialize

    @functools.wraps(serialize_original)
    def serialize(dtype_policy):
        config = serialize_original(dtype_policy)
        listener = _listeners["policy_config"]
        return config if listener is None else listener(dtype_policy, config)

    serialize._lowprec_original = serialize_original
    dtype_policies.serialize = serialize


def _wrap_layer_and_model_methods():
    """`Layer.__call__`, `Trainer.compile` and `Model.export` tell their listeners.

    - `Layer.__call__`: runs inside the context manager "layer_call" returns
      for the layer (when it returns one);
    - `Layer.__call__`: afterwards, a layer whose policy has a true
      `_lowprec_storage` attribute hands its outputs to "layer_outputs" (a
      one-attribute check on the fast path).
    - `compile`: first, "compiling" may replace the optimizer argument.
    - `export(format="tf_saved_model")`: runs inside the context manager
      that "export" returns for the model.
    """
    layer_class = keras.layers.Layer
    if not hasattr(layer_class._post_build, "_lowprec_original"):
        post_build_original = layer_class._post_build

        @functools.wraps(post_build_original)
        def _post_build(self):
            post_build_original(self)
            listener = _listeners["layer_built"]
            if listener is not None:
                listener(self)

        _post_build._lowprec_original = post_build_original
        layer_class._post_build = _post_build
    if not hasattr(layer_class.__call__, "_lowprec_original"):
        call_original = layer_class.__call__

        @functools.wraps(call_original)
        def __call__(self, *args, **kwargs):
            listener = _listeners["layer_call"]
            around = listener(self) if listener is not None else None
            if around is None:
                outputs = call_original(self, *args, **kwargs)
            else:
                with around:
                    outputs = call_original(self, *args, **kwargs)
            policy = self.dtype_policy
            # Fast path: only layers whose lp.Policy has a storage format.
            if getattr(policy, "_lowprec_storage", False):
                listener = _listeners["layer_outputs"]
                if listener is not None:
                    outputs = listener(self, policy, outputs)
            return outputs

        __call__._lowprec_original = call_original
        layer_class.__call__ = __call__
    # compile is wrapped where Keras defines it (Trainer): `compile_from_config`
    # compares `type(model).compile` with `Trainer.compile` to detect custom ones.
    from keras.src.trainers.trainer import Trainer  # noqa: PLC0415

    model_class = keras.Model
    if not hasattr(Trainer.compile, "_lowprec_original"):
        compile_original = Trainer.compile
        default_optimizer = inspect.signature(compile_original).parameters["optimizer"].default

        @functools.wraps(compile_original)
        def compile(self, *args, **kwargs):
            listener = _listeners["compiling"]
            if listener is not None:
                if args:
                    args = (listener(self, args[0]),) + args[1:]
                else:
                    kwargs["optimizer"] = listener(self, kwargs.get("optimizer",
                                                                    default_optimizer))
            return compile_original(self, *args, **kwargs)

        compile._lowprec_original = compile_original
        Trainer.compile = compile
    if not hasattr(model_class.export, "_lowprec_original"):
        export_original = model_class.export

        @functools.wraps(export_original)
        def export(self, filepath, format="tf_saved_model", *args, **kwargs):  # noqa: A002
            listener = _listeners["export"]
            context = None
            if format == "tf_saved_model" and listener is not None:
                context = listener(self)
            with context if context is not None else contextlib.nullcontext():
                return export_original(self, filepath, format, *args, **kwargs)

        export._lowprec_original = export_original
        model_class.export = export


def original(module_name, name):
    """The unrouted backend function (for references in tests): e.g. original("nn", "conv")."""
    numpy_module, nn_module = _backend_modules()
    module = {"numpy": numpy_module, "nn": nn_module}[module_name]
    function = getattr(module, name)
    return getattr(function, "_lowprec_original", function)


def installed():
    """Whether every routed function is in place."""
    from keras.src import dtype_policies  # noqa: PLC0415

    numpy_module, nn_module = _backend_modules()
    return hasattr(dtype_policies.get, "_lowprec_original") and hasattr(
        keras.layers.Layer.__call__, "_lowprec_original") and hasattr(
        keras.layers.Layer._post_build, "_lowprec_original") and hasattr(
        keras.Model.compile, "_lowprec_original") and hasattr(
        keras.Model.export, "_lowprec_original") and all(hasattr(getattr(m, n), "_lowprec_original")
               for m, names in ((numpy_module, _NUMPY_FUNCTIONS), (nn_module, _NN_FUNCTIONS))
               for n in names)


def own_weights(layer):
    """The variables `layer` itself created (not those of its sublayers), trainable first."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def keras_global_seed():
    """The seed `keras.utils.set_random_seed` set in this thread, or None."""
    from keras.src.backend.common import global_state  # noqa: PLC0415

    return global_state.get_global_attribute("global_random_seed")


def apply_attention_masks(logits, mask, is_causal):
    """The TF backend's masking of attention logits (inside `_dot_product_attention_xla`)."""
    _, nn_module = _backend_modules()
    return nn_module._apply_masks(logits, mask, is_causal)


def conv_transpose_output_shape(input_shape, kernel_size, filters, strides, padding,
                                output_padding, data_format, dilation_rate):
    """The output shape Keras' TF backend gives `tf.nn.conv_transpose` (its padding rules)."""
    from keras.src.backend.common import backend_utils  # noqa: PLC0415

    return backend_utils.compute_conv_transpose_output_shape(
        input_shape, kernel_size, filters, strides, padding, output_padding, data_format,
        dilation_rate)


def layer_neighbours(layer):
    """(layers feeding `layer`, layers fed by it) in Keras' functional graph, or None.

    None unless the layer was called symbolically exactly once (one inbound
    node): a shared layer, a layer of a subclassed model or one used in
    several models has no single place in a graph.
    """
    nodes = getattr(layer, "_inbound_nodes", None)
    if not nodes or len(nodes) != 1:
        return None
    parents = [node.operation for node in nodes[0].parent_nodes]
    children = [node.operation for node in getattr(layer, "_outbound_nodes", [])]
    return parents, children
