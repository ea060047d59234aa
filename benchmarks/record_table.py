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


#: Committed ``jkstep evaluate --ps 2 --replicas 4`` summaries (seed 0, no model) of the test
#: molecules: the same starting states as the shipped models' records, with ``mmff_respa``
#: (``benchmarks/respa_eval.sh``).
RESPA_RECORDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "records", "mmff_respa_k8")


def smiles_names(path: str = "data/qm_molecules.smi") -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = {}
    for line in open(os.path.join(root, path)):
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            names[parts[0]] = parts[1]
    return names


def headline(record: dict, respa_dir: str = RESPA_RECORDS) -> str:
    """The README's table: on each test molecule of ``record`` (gfn2-k8's), Verlet at k·dt,
    Verlet at the learned jump's equal cost, the learned jump and RESPA with MMFF94 as the fast
    force (its summary in ``respa_dir``, from the same starting states: the reference runs must
    agree), against the 0.25 fs reference."""
    names = smiles_names()
    respa = {}
    for fname in sorted(os.listdir(respa_dir)):
        with open(os.path.join(respa_dir, fname)) as fh:
            e = json.load(fh)
        respa[names.get(e["molecule"], e["molecule"])] = e
    lines = ["| molecule | xTB calls per ps: Verlet 2 fs / kstep / RESPA | E std kJ/mol: Verlet 2 fs / eq. Verlet / "
             "kstep / RESPA / reference | mean T vs reference: Verlet 2 fs / eq. / kstep / RESPA | "
             "X–H shift cm⁻¹: Verlet 2 fs / eq. / kstep / RESPA / floor |",
             "|---|---|---|---|---|"]
    for ev in record.get("evaluations") or []:
        name = ev.get("molecule_name") or ev["molecule"]
        if ev.get("split") == "val" or name not in respa:
            continue
        c, r = ev["contenders"], respa[name]
        ref = c["reference"]
        if abs(r["contenders"]["reference"]["energy_std_kj_mol"] - ref["energy_std_kj_mol"]) > 1e-9:
            raise SystemExit(f"{name}: the RESPA summary does not start from the record's states (its reference differs)")
        runs = [c["verlet_kdt"], c["verlet_equal_cost"], c["kstep"], r["contenders"]["mmff_respa"]]
        ps = ev["simulated_fs"] / 1000 * ev["n_replicas"]

        def cell(values):
            return " / ".join(values)

        calls = cell(f"{s['xtb_calls'] / ps:.0f}" for s in (runs[0], runs[2], runs[3]))
        e_std = cell([("–" if s["blew_up"] else f"{s['energy_std_kj_mol']:.2f}") for s in runs]
                     + [f"{ref['energy_std_kj_mol']:.2f}"])
        temp = cell("–" if s["blew_up"] else signed(100 * (s["mean_temperature_k"] / ref["mean_temperature_k"] - 1),
                                                    ".1f") + " %" for s in runs)
        floor = ev["noise_floor"]["xh_band_shift_cm1"]
        xh = cell([("–" if s["blew_up"] or s["xh_band_shift_cm1"] is None else signed(s["xh_band_shift_cm1"], ".0f"))
                   for s in runs] + [signed(floor, ".0f")])
        if abs(floor) > 100.0:
            xh = f"({xh}: not measurable)"
        lines.append(f"| {name.replace('_', ' ')} | {calls} | {e_std} | {temp} | {xh} |")
    return "\n".join(lines)


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
    ap.add_argument("--headline", action="store_true",
                    help="the README's headline table instead: the model's test molecules beside RESPA(MMFF94) "
                         "from benchmarks/records/mmff_respa_k8")
    ap.add_argument("--xh-floor", type=positive_float, default=100.0,
                    help="X–H floors above this many cm⁻¹ are marked not measurable (default 100)")
    args = ap.parse_args()
    for model in args.models:
        if args.headline:
            print(headline(read_record(model)))
            continue
        print(f"{model}:\n\n{table(read_record(model), args.xh_floor)}\n")


if __name__ == "__main__":
    main()
