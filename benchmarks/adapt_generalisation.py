"""How far the per-run adaptation's fit of the energy error's curvature carries beyond its frames.

For each molecule: ``jkstep evaluate``'s 1 ps Langevin thermalisation (seed 0, every 0.5 fs step
kept), then ``adapt_potential`` with each setting (``--settings STEPS:W_CURVATURE``). Prints the RMS
second time difference of the full fast force's energy error (eV/fs², triplets 0.5 fs apart; RESPA
at τ = 2 fs fluctuates by about τ²/12 times it) on the training part of the thermalisation (its
first 80 %) and on the held-out rest, before and after, and the held-out force RMSE (eV/Å). A gap
between the two that grows with the steps is a fit to the training frames' own motions that does
not carry over to the next 0.2 ps: more steps or a larger weight then lower the training figure
only (docs/results.md, "Re-adapting the fast force during the run").

    python benchmarks/adapt_generalisation.py --molecules 1-propanol cytosine --json outputs/online/gen.json
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jkstep  # noqa: E402
from jkstep.data.store import write_json  # noqa: E402
from jkstep.evaluate.compare import THERMALISE_DT_FS  # noqa: E402
from jkstep.model.adapt import AdaptConfig, adapt_potential, triplets_of  # noqa: E402
from jkstep.model.potential import energy_error_curvature  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import evaluation_start, positive_int, qm_smiles  # noqa: E402


def curvature_rms(fast, x, e, centres) -> float:
    """RMS second time difference (eV/fs²) of ``fast``'s energy error on triplets around ``centres``
    (frames THERMALISE_DT_FS apart; one frame each side)."""
    idx = triplets_of(centres, 1)
    energy = np.asarray(jax.vmap(lambda y: fast(y)[0])(jnp.asarray(x[idx])))
    second = np.asarray(energy_error_curvature(jnp.asarray(energy - e[idx]), THERMALISE_DT_FS))
    return float(np.sqrt(np.mean(second**2)))


def setting(text: str) -> tuple[int, float]:
    steps, _, w = text.partition(":")
    try:
        return positive_int(steps), float(w)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"a setting is STEPS:W_CURVATURE, e.g. 2000:1, got {text!r}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", default="gfn2-fast", help="a learned fast force: shipped name or checkpoint path")
    parser.add_argument("--molecules", nargs="+", default=["1-propanol", "cytosine"],
                        help="names of data/qm_molecules.smi (default: validation molecules)")
    parser.add_argument("--settings", nargs="+", type=setting, default=[(2000, 1.0), (6000, 1.0), (2000, 10.0)],
                        metavar="STEPS:W", help="adaptation steps and curvature weight (default 2000:1 6000:1 2000:10)")
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    smiles = qm_smiles(parser, args.molecules)
    print("| molecule | adaptation | curvature, training frames (10⁻³ eV/fs²) | held-out | held-out force RMSE eV/Å |")
    print("|---|---|---|---|---|")
    rows = []
    for name in args.molecules:
        mol, _, _, _, therm = evaluation_start(smiles[name], record=True)
        x, e, f = (np.asarray(therm[key], np.float64) for key in ("positions", "energy", "forces"))
        n_train = len(e) - int(round(AdaptConfig.holdout * len(e)))
        train, held = np.arange(1, n_train - 1), np.arange(n_train + 1, len(e) - 1)
        shipped = jkstep.learned_potential(args.fast, mol)
        fasts = [("none", shipped, None)]
        for steps, w in args.settings:
            adapted, report = adapt_potential(shipped, x, e, f, AdaptConfig(steps=steps, w_curvature=w),
                                              spacing_fs=THERMALISE_DT_FS)
            fasts.append((f"{steps} steps, w = {w:g}", adapted, report["force_rmse_after_ev_a"]))
        for label, fast, rmse in fasts:
            c_train, c_held = curvature_rms(fast, x, e, train), curvature_rms(fast, x, e, held)
            print(f"| {name} | {label} | {1e3 * c_train:.2f} | {1e3 * c_held:.2f} | "
                  f"{'—' if rmse is None else f'{rmse:.3f}'} |", flush=True)
            rows.append({"molecule": name, "adaptation": label, "curvature_train_ev_fs2": c_train,
                         "curvature_held_out_ev_fs2": c_held, "held_out_force_rmse_ev_a": rmse})
    if args.json:
        write_json(args.json, {"command": " ".join(sys.argv), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
