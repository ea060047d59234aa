"""Wall clock of RESPA (MMFF94 or a learned fast force) against Verlet at 0.25 fs, and what its
parts cost.

    .venv/bin/python benchmarks/bench_respa.py [--smiles "CC(=O)NC(C)C(=O)NC"] [--k 8]
        [--fast mmff|gfn2-fast|PATH] [--fast-every 1] [--dt 0.25] [--macro-steps 100] [--repeats 5] [--no-costs]

Prints, on one molecule (default alanine dipeptide), after a warm-up of both:

1. simulated ps per wall-clock second of ``jkstep.respa`` (k inner steps of ``--dt`` fs per xTB
   call) and of velocity Verlet at 0.25 fs, from the same start, in ``--repeats`` alternating pairs
   of runs of ``--macro-steps`` macro-steps (Verlet: the same simulated time in 0.25 fs steps):
   the medians and the range of the pairs' speed-up;
2. ms per xTB call after a RESPA macro-step (the SCF restart guess is k·dt old) and after a
   0.25 fs step (the guess is one step old);
3. ms per MMFF94 inner step (force in a jitted ``fori_loop``) for 10-, 20- and 30-atom
   molecules, and as a fraction of one xTB call on the same molecule (``--no-costs`` skips it;
   ``benchmarks/bench_fast_force.py`` does the same for a learned fast force).

Numbers are what this machine measured (one thread each); run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_float, positive_int  # noqa: E402

#: 10-, 20- and 30-atom molecules (with hydrogens) for the fast-force cost
SIZES = {"10 atoms (glycine)": "NCC(=O)O", "20 atoms (paracetamol)": "CC(=O)Nc1ccc(O)cc1",
         "30 atoms (9-hydroxynonanoic acid)": "OCCCCCCCCC(=O)O"}


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    import jax

    jax.block_until_ready(out)
    return time.perf_counter() - t0, out


def xtb_ms(pot, positions, n=20):
    """ms per call of ``pot`` over ``n`` geometries (the restart guess is the previous one)."""
    t0 = time.perf_counter()
    for x in positions[:n]:
        pot(x)
    return 1000 * (time.perf_counter() - t0) / min(n, len(positions))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smiles", default="CC(=O)NC(C)C(=O)NC")
    parser.add_argument("--k", type=positive_int, default=8)
    parser.add_argument("--macro-steps", type=positive_int, default=100)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--dt", type=positive_float, default=0.25, help="RESPA's inner step, fs (0.25)")
    parser.add_argument("--fast", default="mmff", help="fast force: mmff (default), a shipped name or a path")
    parser.add_argument("--fast-every", type=positive_int, default=1,
                        help="three-level RESPA: MMFF94 every inner step, the rest of a learned fast force as kicks "
                             "every N inner steps (default 1: two levels)")
    parser.add_argument("--no-costs", action="store_true", help="skip the MMFF94 cost per inner step (part 3)")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    import jkstep
    from jkstep.md import three_levels
    from jkstep.rollout import runner

    mol = jkstep.Molecule.from_smiles(args.smiles, seed=0)
    pot = jkstep.xtb_potential(mol, workers=1)
    fast = jkstep.mmff_potential(mol) if args.fast == "mmff" else jkstep.learned_potential(args.fast, mol)
    v0 = mol.thermal_velocities(300.0, seed=0)
    r_init, r_apply = jkstep.respa(fast, pot, mol.masses, k=args.k, dt=args.dt,
                                   **three_levels(mol, fast, args.fast_every))
    v_init, v_apply = jkstep.verlet(pot, mol.masses, dt=0.25)
    n = args.macro_steps
    tau = args.k * args.dt
    verlet_steps = round(n * tau / 0.25)
    if abs(verlet_steps * 0.25 - n * tau) > 1e-9:
        parser.error(f"--k x --dt = {tau:g} fs must be a whole number of 0.25 fs Verlet steps")
    r_run, v_run = runner(r_apply, n), runner(v_apply, verlet_steps)
    r_state, v_state = r_init(mol.positions, v0), v_init(mol.positions, v0)
    timed(r_run, r_state)
    timed(v_run, v_state)          # warm-up: compile both
    speed = {"respa": [], "verlet": []}
    ratios = []
    ps = n * tau / 1000
    for _ in range(args.repeats):
        tr, (r_state, fr_r) = timed(r_run, r_state)
        tv, (v_state, fr_v) = timed(v_run, v_state)
        speed["respa"].append(ps / tr)
        speed["verlet"].append(ps / tv)
        ratios.append(tv / tr)
    print(f"{args.smiles} ({len(mol)} atoms), k = {args.k} x {args.dt:g} fs (one xTB call per {tau:g} fs), "
          f"{args.repeats} alternating pairs of {ps:g} ps")
    every = "" if args.fast_every == 1 else f", fast every {args.fast_every}"
    print(f"  RESPA({args.fast}{every}): {statistics.median(speed['respa']):.3f} ps/s; Verlet 0.25 fs: "
          f"{statistics.median(speed['verlet']):.3f} ps/s; speed-up median {statistics.median(ratios):.2f}x "
          f"(range {min(ratios):.2f}-{max(ratios):.2f})")

    # xTB cost per call after a macro-step against after a 0.25 fs step, on the frames just made
    xr = np.asarray(fr_r.positions)
    fresh = jkstep.xtb_potential(mol, workers=1)
    fresh(xr[0])
    after_macro = xtb_ms(fresh, xr)
    fresh = jkstep.xtb_potential(mol, workers=1)
    fresh(np.asarray(fr_v.positions)[0])
    after_step = xtb_ms(fresh, np.asarray(fr_v.positions)[1:21])
    print(f"  xTB call after a macro-step: {after_macro:.2f} ms; after a 0.25 fs step: {after_step:.2f} ms "
          f"({after_macro / after_step:.2f}x)")

    if args.no_costs:
        return 0
    print("  MMFF94 inner step (force in a jitted fori_loop) against one xTB call:")
    for label, smiles in SIZES.items():
        m = jkstep.Molecule.from_smiles(smiles, seed=0)
        mmff, xtb = jkstep.mmff_potential(m), jkstep.xtb_potential(m, workers=1)
        x = jnp.asarray(m.positions)
        steps = 500
        loop = jax.jit(lambda y, f=mmff: jax.lax.fori_loop(0, steps, lambda _, z: z + 1e-7 * f(z)[1], y))
        timed(loop, x)
        t_mm = statistics.median(timed(loop, x)[0] for _ in range(5)) / steps * 1000
        geometries = [np.asarray(m.positions) + 0.002 * i for i in range(21)]
        xtb(geometries[0])
        t_xtb = xtb_ms(xtb, geometries[1:])
        print(f"    {label}: {t_mm:.4f} ms per step, xTB {t_xtb:.2f} ms per call: {100 * t_mm / t_xtb:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
