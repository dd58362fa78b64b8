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
    # Each configuration names its own loss scaling ("no loss scaling" is one).
    with lp.loss_scaling.automatic_loss_scaling_mode(None):
        model.compile(optimizer=config.optimizer(domain, seed), loss=domain.loss())
    start = time.perf_counter()
    curve = domain.fit(model)
    seconds = time.perf_counter() - start
    metric = domain.evaluate(model)
    return {"metric": metric, "curve": curve, "seconds": seconds}


def needed_configs(claim_names, domain_name):
    """The configurations the claims `claim_names` run on `domain_name`, in claim order."""
    names = []
    for claim in claim_names:
        for config in claims_lib.CLAIMS[claim].configs_on(domain_name):
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
            "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
            "curves": [r["curve"] for r in runs],
            "seconds": [r["seconds"] for r in runs],
        }
        log(f"  {domain.name:<7} {name:<40} {results[name]['mean']:9.4f} ± "
            f"{results[name]['std']:.4f}  ({np.mean(results[name]['seconds']):.1f} s/run)")
    return results
