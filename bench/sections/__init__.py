"""The registry of the sections `python -m bench --only NAME` measures alone: each is a module of this
package named NAME that declares `SECTION` (a bench.common.Section), found here by pkgutil. ORDER is
their order in bench/RESULTS.md (`python -m bench.render`) and in --help's list; a section module missing
from ORDER, or a name in ORDER without one, is an error. The whole run's own sections (build, validation,
accuracy, byo) declare no SECTION: bench/full.py runs them together."""

import importlib
import pkgutil

ORDER = ("isa", "formats", "speed", "bytecode", "ci", "suite", "fit", "transformers", "quantization", "quantization_large")


def _discover():
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "SECTION"):
            found[info.name] = module.SECTION
    if set(found) != set(ORDER):
        raise RuntimeError(
            f"every module of bench/sections that declares SECTION is named in ORDER, and only those; received "
            f"modules {sorted(found)} and ORDER {list(ORDER)}. Add the new section to ORDER in {__file__} at its "
            "place in bench/RESULTS.md, or remove the name of the one that is gone.")
    return {name: found[name] for name in ORDER}


# --only NAME -> Section, in the order of bench/RESULTS.md
ONLY = _discover()
# --only NAME -> what its --at names, for the sections that need one
NEEDS_AT = {name: section.at for name, section in ONLY.items() if section.at}
