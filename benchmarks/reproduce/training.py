"""One training run (domain x configuration x seed) and the loop over them."""

import time

import keras
import numpy as np
import tf_lowprec as lp

from . import claims as claims_lib


def run_cell(domain, config, seed):
    """Trains one model; returns {"metric", "curve" (loss per epoch), "seconds"}."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = domain.build(config.dtype_policy())
    loss = domain.loss()
    c = config.loss_multiplier
    if c != 1.0:
        def scaled_loss(y_true, y_pred, loss=loss, c=c):
            return loss(y_true, y_pred) * c
        train_loss = scaled_loss
    else:
        train_loss = loss
    # Each configuration names its own loss scaling ("no loss scaling" is one).
    with lp.loss_scaling.automatic_loss_scaling_mode(None):
        model.compile(optimizer=config.optimizer(domain, seed), loss=train_loss)
    start = time.perf_counter()
    curve = domain.fit(model)
    seconds = time.perf_counter() - start
    metric = domain.evaluate(model)
    curve = [v / c for v in curve]  # report the unscaled loss
    return {"metric": metric, "curve": curve, "seconds": seconds}


def needed_configs(claim_names):
    names = []
    for claim in claim_names:
        for config in claims_lib.CLAIMS[claim].configs:
            if config not in names:
                names.append(config)
    return names


def run_domain(domain, config_names, seeds, log):
    """All configurations x seeds on one domain: {config: summary}."""
    domain.load()
    results = {}
    for name in config_names:
        config = claims_lib.CONFIGS[name]
        runs = [run_cell(domain, config, seed) for seed in range(seeds)]
        metrics = [r["metric"] for r in runs]
        finite = [m for m in metrics if np.isfinite(m)]
        results[name] = {
            "metrics": metrics,
            "mean": float(np.mean(finite)) if finite else float("nan"),
            "std": float(np.std(finite)) if finite else float("nan"),
            "curves": [r["curve"] for r in runs],
            "seconds": [r["seconds"] for r in runs],
        }
        log(f"  {domain.name:<7} {name:<40} {results[name]['mean']:9.4f} ± "
            f"{results[name]['std']:.4f}  ({np.mean(results[name]['seconds']):.1f} s/run)")
    return results
