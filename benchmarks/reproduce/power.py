"""Statistical power and the computed verdicts of the reproduction.

Every claim compares arms (precision configurations) trained over the same
seeds.  For one comparison of an arm with its control:

- each arm's mean and sample standard deviation over its seeds (ddof = 1);
- the pooled standard deviation s_p of the two arms;
- the minimal detectable difference (MDD): the smallest true difference that a
  two-sided test at the 5 % level finds with 80 % power,

      MDD = (z_0.975 + z_0.80) * s_p * sqrt(1/n_a + 1/n_b)  ~=  2.80 * s_p * sqrt(2/n),

  and never below the metric's resolution (one test example, ...);
- the paper's effect in the domain's units: for an arm the paper expects to
  match its control, the largest loss the paper still calls "no loss"; for one
  it expects to be worse, the smallest loss the paper reports.

The verdict follows from these numbers alone (`judge`): a comparison whose MDD
exceeds the paper's effect cannot tell the paper's claim from its negation, so
it is "not tested" unless the data already contradict the claim.
"""

import math

import numpy as np

Z_ALPHA = 1.959964  # two-sided 5 % level
Z_POWER = 0.841621  # 80 % power
MDD_FACTOR = Z_ALPHA + Z_POWER  # 2.80

HOLDS, FAILS, NOT_TESTED = "holds", "fails", "not tested"
MATCH, WORSE = "match", "worse"

FORMULA = (f"MDD = (z_0.975 + z_0.80) · s_p · √(1/n_a + 1/n_b) = {MDD_FACTOR:.2f} · s_p · "
           "√(2/n) for n seeds per arm, s_p the pooled sample standard deviation of the "
           "two arms (two-sided 5 % test, 80 % power, normal approximation)")


def arm_stats(metrics):
    """{"n", "n_failed", "mean", "std"} over the finite metrics (std: ddof = 1)."""
    finite = [float(m) for m in metrics if m is not None and math.isfinite(m)]
    n = len(finite)
    return {
        "n": n,
        "n_failed": len(metrics) - n,
        "mean": float(np.mean(finite)) if n else float("nan"),
        "std": float(np.std(finite, ddof=1)) if n > 1 else float("nan"),
    }


def pooled_std(a, b):
    """Pooled sample standard deviation of two `arm_stats` (nan below 2 degrees of freedom)."""
    dof = a["n"] + b["n"] - 2
    if dof < 1:
        return float("nan")
    parts = [(s["n"] - 1) * s["std"] ** 2 for s in (a, b) if s["n"] > 1]
    return math.sqrt(sum(parts) / dof)


def detectable_difference(a, b, resolution=0.0):
    """The MDD of a comparison of arms `a` and `b` (inf when a seed spread is unknown)."""
    sp = pooled_std(a, b)
    if not math.isfinite(sp) or a["n"] < 2 or b["n"] < 2:
        return math.inf
    return max(MDD_FACTOR * sp * math.sqrt(1.0 / a["n"] + 1.0 / b["n"]), resolution)


def seeds_needed(sp, effect, resolution=0.0):
    """Seeds per arm for an MDD of `effect`; None if no seed count can (resolution, no spread)."""
    if not (math.isfinite(sp) and effect > 0) or effect < resolution:
        return None
    if sp == 0:
        return 2
    return max(2, math.ceil(2.0 * (MDD_FACTOR * sp / effect) ** 2))


def judge(expected, gain, mdd, effect):
    """The verdict of one comparison.

    Args:
      expected: MATCH (the paper says the arm loses at most `effect`) or WORSE
        (the paper says the arm loses at least `effect`).
      gain: the arm's mean minus its control's, signed so that positive is
        better (nan or -inf when the arm diverged on every seed).
      mdd: the minimal detectable difference of the comparison.
      effect: the paper's effect in the same units (> 0).

    Returns:
      (verdict, observed): verdict HOLDS, FAILS or NOT_TESTED; observed
      "worse" / "better" (beyond the MDD) or "within the MDD".
    """
    if expected not in (MATCH, WORSE):
        raise ValueError(f"expected must be {MATCH!r} or {WORSE!r}, got {expected!r}")
    if not effect > 0:
        raise ValueError(f"effect must be > 0, got {effect!r}")
    loss = -gain if math.isfinite(gain) else math.inf
    # A run that diverged is worse whatever the spread of the others.
    observed = ("worse" if loss > mdd or loss == math.inf
                else ("better" if -loss > mdd else "within the MDD"))
    if expected == WORSE:
        if observed == "worse":
            return HOLDS, observed
        return (NOT_TESTED if mdd > effect else FAILS), observed
    if observed == "worse" and loss > effect:
        return FAILS, observed
    return (NOT_TESTED if mdd > effect else HOLDS), observed


def claim_verdict(verdicts):
    """One claim's verdict from its comparisons' verdicts (a list of HOLDS / FAILS / NOT_TESTED)."""
    if not verdicts:
        return NOT_TESTED, "no comparison ran"
    counts = {v: verdicts.count(v) for v in (HOLDS, FAILS, NOT_TESTED)}
    total = len(verdicts)
    detail = (f"{counts[HOLDS]} hold, {counts[FAILS]} fail, {counts[NOT_TESTED]} not tested "
              f"of {total}")
    if counts[FAILS]:
        return FAILS, detail
    if counts[HOLDS] == total:
        return HOLDS, detail
    if counts[NOT_TESTED] == total:
        return NOT_TESTED, detail
    return "holds where tested", detail


def ties_or_beats(candidate, method, mdd, higher_is_better):
    """"beats", "ties" or None: `candidate` arm against `method` arm (both `arm_stats`)."""
    delta = candidate["mean"] - method["mean"]
    if not math.isfinite(delta):
        return None
    gain = delta if higher_is_better else -delta
    if gain > mdd:
        return "beats"
    if gain >= -mdd:
        return "ties"
    return None
