"""The exception types of bad input and of a failed simulation, and how to recognise an interrupt."""


class InputError(ValueError):
    """Bad input: the message names what was wrong and how to fix it."""


class SimulationError(RuntimeError):
    """A simulation could not go on (e.g. the xTB SCF failed for good); the CLI prints it as one
    line and exits 1, the status of a run that blew up."""


#: What to check when the SCF fails at a starting geometry.
SCF_HINT = ("check the charge and unpaired electrons (SMILES carry their own: [NH4+], [CH3]; for a file "
            "give --charge/--spin) and the geometry")


def is_interrupt(exc: BaseException) -> bool:
    """True for a KeyboardInterrupt (Ctrl-C; the CLI turns SIGTERM into one), also when it struck
    inside a host callback such as an xTB call: XLA cannot unwind it and re-raises it as a runtime
    error (JaxRuntimeError or ValueError, "CpuCallback error") whose text names it."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    text = str(exc)
    return isinstance(exc, Exception) and "CpuCallback error" in text and "KeyboardInterrupt" in text


#: Longest run (base steps) a run or evaluation accepts: 10⁹ steps of 0.25 fs is 250 ns of xTB MD,
#: years of CPU; a longer one is a mistyped length or time step.
MAX_STEPS = 1e9

#: Highest temperature (K) a run, evaluation or data generation starts from: molecules dissociate
#: far below it, and thermal velocities much above it overflow in the kinetic energy.
MAX_TEMPERATURE_K = 1e4


def is_finite_number(x) -> bool:
    """True for a real, finite number (False for NaN, ±inf, text, None)."""
    import math

    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError, OverflowError):
        return False


def is_integer(x, low: int | None = None) -> bool:
    """True for an integer (Python or NumPy, not a bool), at least ``low`` if given."""
    import numbers

    ok = isinstance(x, numbers.Integral) and not isinstance(x, bool)
    return ok and (low is None or x >= low)
