"""The one module that touches Keras internals: routing backend GEMMs to policies.

Keras 3 has no public extension point for the numerics of stock layers
(`DTypePolicy.convert_input` is skipped on the fast path, quantization modes
are a closed set; see docs/design.md).  This module therefore replaces a few
functions of the TensorFlow backend with wrappers:

- `keras.src.backend.tensorflow.numpy`: `matmul`, `einsum`;
- `keras.src.backend.tensorflow.nn`: `conv`, `depthwise_conv`,
  `separable_conv`, `conv_transpose`, and `_dot_product_attention_xla` (the
  core of `ops.dot_product_attention`, which calls `tf.einsum` directly).

A wrapper looks up the innermost layer being called, from the name-scope
stack that `Layer.__call__` already maintains (`name_scope(..., caller=layer)`
in `keras.src.backend.common.name_scope`); when that layer's dtype policy is a
`tf_lowprec.Policy` the op runs emulated (`tf_lowprec.emulation`), otherwise
the original function runs unchanged.  The GEMM routing does not need
`Layer.__call__`; it is wrapped only for the optional `storage` rounding of
layer outputs (a one-attribute check on the fast path, see below).

Two public `keras.Model` methods are wrapped (`_wrap_model_methods`): `compile`
warns when loss scaling is missing under a narrow-range policy, and `export`
to a TF SavedModel traces with the pure-TF rounding path.

One more function is wrapped for saving: `keras.src.dtype_policies.get`.
`Operation.from_config` turns a deserialized float policy back into its name
string before constructing the layer (keras/src/ops/operation.py), which
would lose a `Policy`; the name of a `Policy` is a `PolicyName` string that
carries the policy, and the wrapped `get` returns it.

`install()` is idempotent, and checks the Keras version first.

>>> from tf_lowprec import _keras_hooks
>>> _keras_hooks.install(); _keras_hooks.installed()
True
"""

import functools
import threading

import keras

# Keras versions whose internals this module was written and tested against
# (major.minor).  Others fail loudly at install() instead of mis-emulating.
SUPPORTED_KERAS_VERSIONS = ("3.15",)

_NUMPY_FUNCTIONS = ("matmul", "einsum")
_NN_FUNCTIONS = ("conv", "depthwise_conv", "separable_conv", "conv_transpose",
                 "_dot_product_attention_xla")
_lock = threading.Lock()
_installed = False


class UnsupportedKerasVersionError(RuntimeError):
    """Raised when the installed Keras is not one the hooks support."""


def check_keras_version(version=None):
    """Raises UnsupportedKerasVersionError unless Keras is a supported version."""
    version = keras.__version__ if version is None else version
    if ".".join(version.split(".")[:2]) not in SUPPORTED_KERAS_VERSIONS:
        raise UnsupportedKerasVersionError(
            f"tf_lowprec's Keras policies support Keras {', '.join(SUPPORTED_KERAS_VERSIONS)}.x "
            f"(they route keras.src.backend.tensorflow's matmul/einsum/conv, which are internal); "
            f"found keras {version}. Install a supported Keras, or check tests/test_keras_hooks.py "
            "against this version and add it to tf_lowprec._keras_hooks.SUPPORTED_KERAS_VERSIONS."
        )
    if keras.backend.backend() != "tensorflow":
        raise UnsupportedKerasVersionError(
            f"tf_lowprec policies need the TensorFlow backend; KERAS_BACKEND is "
            f"{keras.backend.backend()!r}"
        )


def _backend_modules():
    from keras.src.backend.tensorflow import nn, numpy  # noqa: PLC0415

    return numpy, nn


def current_callers():
    """The layers being called in this thread, outermost first (from Keras' name scopes)."""
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


def active_context():
    """A `LayerContext` when the innermost layer being called has a `Policy`, else None."""
    from tf_lowprec.emulation import LayerContext  # noqa: PLC0415
    from tf_lowprec.policy import Policy  # noqa: PLC0415

    callers = current_callers()
    if not callers:
        return None
    layer, entry = callers[-1]
    policy = layer_policy(layer)
    if not isinstance(policy, Policy) or not policy.spec.emulates:
        return None
    return LayerContext(layer, policy, [c for c, _ in callers], scope=entry,
                        outer_scope=callers[0][1])


def _route(name, original, emulated, **extra):
    @functools.wraps(original)
    def routed(*args, **kwargs):
        context = active_context()
        if context is None:
            return original(*args, **kwargs)
        return emulated(context, original, *args, **kwargs, **extra)

    routed._lowprec_original = original
    return routed


def install():
    """Routes the TF backend's GEMM functions through the active layer's policy (idempotent)."""
    global _installed
    if _installed:
        return
    with _lock:
        if _installed:
            return
        check_keras_version()
        from tf_lowprec import emulation  # noqa: PLC0415

        numpy_module, nn_module = _backend_modules()
        targets = [(numpy_module, n) for n in _NUMPY_FUNCTIONS] + [
            (nn_module, n) for n in _NN_FUNCTIONS]
        missing = [f"{m.__name__}.{n}" for m, n in targets if not hasattr(m, n)]
        if missing:
            raise UnsupportedKerasVersionError(
                f"Keras {keras.__version__} lacks {', '.join(missing)}, which the policies route"
            )
        def unrouted(name):
            function = getattr(nn_module, name)
            return getattr(function, "_lowprec_original", function)

        emulated = {
            "matmul": (emulation.matmul, {}),
            "einsum": (emulation.einsum, {}),
            "conv": (emulation.conv, {}),
            "depthwise_conv": (emulation.depthwise_conv, {}),
            "conv_transpose": (emulation.conv_transpose, {}),
            "separable_conv": (emulation.separable_conv,
                               {"depthwise_original": unrouted("depthwise_conv"),
                                "conv_original": unrouted("conv")}),
            "_dot_product_attention_xla": (emulation.dot_product_attention_core,
                                           {"nn_module": nn_module}),
        }
        for module, name in targets:
            current = getattr(module, name)
            if hasattr(current, "_lowprec_original"):
                continue
            function, extra = emulated[name]
            setattr(module, name, _route(name, current, function, **extra))
        from keras.src import dtype_policies  # noqa: PLC0415
        from tf_lowprec.policy import PolicyName  # noqa: PLC0415

        if not hasattr(dtype_policies.get, "_lowprec_original"):
            get_original = dtype_policies.get

            @functools.wraps(get_original)
            def get(identifier):
                if isinstance(identifier, PolicyName):
                    return identifier.policy
                return get_original(identifier)

            get._lowprec_original = get_original
            dtype_policies.get = get
        _wrap_model_methods()
        _installed = True


def _wrap_model_methods():
    """`Layer.__call__` and two public `keras.Model` methods get a tf_lowprec step.

    - `Layer.__call__`: afterwards, a layer whose policy has a `storage`
      format rounds its outputs to it (emulated 16-bit activation storage).

    - `compile`: afterwards, warn once when a policy rounds errors to a
      narrow-range format and the optimizer has no loss scaling (Keras
      auto-wraps only the literal "mixed_float16").
    - `export(format="tf_saved_model")`: traced with the pure-TF rounding
      path, so the SavedModel needs no custom op library.
    """
    layer_class = keras.layers.Layer
    if not hasattr(layer_class.__call__, "_lowprec_original"):
        call_original = layer_class.__call__

        @functools.wraps(call_original)
        def __call__(self, *args, **kwargs):
            outputs = call_original(self, *args, **kwargs)
            policy = self.dtype_policy
            # Fast path: only layers whose lp.Policy has a storage format.
            if getattr(policy, "_lowprec_storage", False):
                from tf_lowprec import emulation  # noqa: PLC0415

                outputs = emulation.round_layer_outputs(self, policy, outputs)
            return outputs

        __call__._lowprec_original = call_original
        layer_class.__call__ = __call__
    # compile is wrapped where Keras defines it (Trainer): `compile_from_config`
    # compares `type(model).compile` with `Trainer.compile` to detect custom ones.
    from keras.src.trainers.trainer import Trainer  # noqa: PLC0415

    model_class = keras.Model
    if not hasattr(Trainer.compile, "_lowprec_original"):
        compile_original = Trainer.compile

        @functools.wraps(compile_original)
        def compile(self, *args, **kwargs):
            result = compile_original(self, *args, **kwargs)
            from tf_lowprec import loss_scaling  # noqa: PLC0415

            loss_scaling.warn_if_unscaled(self)
            return result

        compile._lowprec_original = compile_original
        Trainer.compile = compile
    if not hasattr(model_class.export, "_lowprec_original"):
        export_original = model_class.export

        @functools.wraps(export_original)
        def export(self, filepath, format="tf_saved_model", *args, **kwargs):  # noqa: A002
            from tf_lowprec import export as export_lib  # noqa: PLC0415

            if format != "tf_saved_model" or export_lib.in_traced_numerics():
                return export_original(self, filepath, format, *args, **kwargs)
            with export_lib.traced_numerics(self, "emulated"):
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
        keras.Model.compile, "_lowprec_original") and hasattr(
        keras.Model.export, "_lowprec_original") and all(hasattr(getattr(m, n), "_lowprec_original")
               for m, names in ((numpy_module, _NUMPY_FUNCTIONS), (nn_module, _NN_FUNCTIONS))
               for n in names)
