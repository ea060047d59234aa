"""The README's equal-cost table of a shipped model, read from its record: per evaluated molecule
(test molecules first, then validation), the hybrid against plain Verlet at the step that made as
many xTB calls (``verlet_equal_cost``) and against Verlet at k × dt, with the reference replicas'
noise floor.

    python benchmarks/record_table.py gfn2-k8 gfn2-k8-mm

Reads ``jkstep/pretrained/NAME/provenance.json`` (or a path to such a file); nothing is run. An X–H
band shift whose floor (the reference's replicas against each other) exceeds --xh-floor cm⁻¹ is
shown in brackets as not measurable. A contender that blew up is shown as such.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from jkstep.errors import InputError
from jkstep.model.pretrained import shipped_record

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_float  # noqa: E402


def header(step_fs: float) -> str:
    """The table's header; ``step_fs`` is the model's jump, k × dt (fs)."""
    kdt = f"Verlet {step_fs:g} fs"
    return (f"| molecule | xTB calls: kstep / {kdt} | equal-cost Verlet step | mean T vs reference: kstep / eq. / "
            f"{kdt} | E std kJ/mol: kstep / eq. | bond JS: kstep / eq. / floor | angle JS | dihedral JS | "
            "spectrum overlap: kstep / eq. / floor | X–H shift cm⁻¹: kstep / eq. / floor |\n"
            "|---|---|---|---|---|---|---|---|---|---|")


def signed(x: float, fmt: str) -> str:
    """``x`` with an explicit sign, a typographic minus and no negative zero."""
    text = format(x, "+" + fmt)
    return ("+" + text[1:] if text[1:].strip("0.") == "" else text).replace("-", "−")


def js3(x: float) -> str:
    """A Jensen–Shannon divergence as the README prints it (0.0605, 0.174)."""
    return f"{x:.4f}" if x < 0.1 else f"{x:.3f}"


def row(evaluation: dict, xh_floor: float) -> str:
    """One molecule's row from one ``jkstep evaluate`` summary of the record."""
    c, floor = evaluation["contenders"], evaluation["noise_floor"]
    kstep, eq, kdt, ref = c["kstep"], c["verlet_equal_cost"], c["verlet_kdt"], c["reference"]
    name = (evaluation.get("molecule_name") or evaluation["molecule"]).replace("_", " ")
    name += " (validation)" if evaluation.get("split") == "val" else ""
    eq_dt = f"{eq['dt_fs']:.2f} fs" + (" (blew up)" if eq["blew_up"] else "")

    def temp(s: dict) -> str:
        if s["blew_up"]:
            return "blew up"
        return signed(100 * (s["mean_temperature_k"] / ref["mean_temperature_k"] - 1), ".1f") + " %"

    def three(key: str, fmt) -> str:
        return " / ".join("–" if s["blew_up"] or s[key] is None else fmt(s[key]) for s in (kstep, eq)) + \
            f" / {fmt(floor[key])}"

    xh = three("xh_band_shift_cm1", lambda v: signed(v, ".0f"))
    if abs(floor["xh_band_shift_cm1"]) > xh_floor:
        xh = f"({xh}: not measurable)"
    e_std = " / ".join("–" if s["blew_up"] else f"{s['energy_std_kj_mol']:.2f}" for s in (kstep, eq))
    return (f"| {name} | {kstep['xtb_calls']} / {kdt['xtb_calls']} | {eq_dt} | "
            f"{temp(kstep)} / {temp(eq)} / {temp(kdt)} | {e_std} | {three('bond_js', js3)} | "
            f"{three('angle_js', js3)} | {three('dihedral_js', js3)} | "
            f"{three('spectrum_overlap', lambda v: f'{v:.3f}')} | {xh} |")


def table(record: dict, xh_floor: float = 100.0) -> str:
    evaluations = sorted(record.get("evaluations") or [], key=lambda e: e.get("split") == "val")
    if not evaluations:
        raise SystemExit("the record has no evaluations: ship the model with benchmarks/record_shipped.sh")
    return "\n".join([header(record["k"] * record["dt_fs"])] + [row(e, xh_floor) for e in evaluations])


def read_record(name_or_path: str) -> dict:
    """A shipped model's record by name, or a provenance.json by path."""
    if not name_or_path.endswith(".json"):
        try:
            return shipped_record(name_or_path)
        except InputError as exc:
            raise SystemExit(str(exc)) from None
    try:
        with open(name_or_path) as fh:
            return json.load(fh)
    except OSError as exc:
        raise SystemExit(f"cannot read {name_or_path}: {exc.strerror} "
                         "(give a shipped name or a provenance.json)") from None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="shipped names (jkstep/pretrained/NAME) or provenance.json paths")
    ap.add_argument("--xh-floor", type=positive_float, default=100.0,
                    help="X–H floors above this many cm⁻¹ are marked not measurable (default 100)")
    args = ap.parse_args()
    for model in args.models:
        print(f"{model}:\n\n{table(read_record(model), args.xh_floor)}\n")


if __name__ == "__main__":
    main()
