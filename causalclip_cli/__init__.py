"""causalclip: a forensic scanner for AI-generated images (CausalCLIP head over a frozen CLIP tower).

Python API (the same detector, records and provenance as the `causalclip` command)::

    import causalclip_cli as cc

    detector = cc.load_detector("causalclip-vitb16", device="auto", precision="auto")
    for record in detector.score(["photo.jpg", pil_image]):     # one record per input, in order
        print(record.path, record.probability, record.label)
    for record in detector.scan(["folder/"]):                   # like `causalclip scan folder/`
        print(record.to_dict())                                 # the fields of a JSON line
    cc.read_provenance("photo.jpg")["says"]                     # what the file's metadata says

Only the names in `__all__` are public; the subpackages are the implementation. They are imported on
first use, so `import causalclip_cli` costs nothing heavy (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ScanRecord", "Scanner", "__version__", "load_detector", "read_provenance"]

if TYPE_CHECKING:
    from causalclip_cli.api import Scanner, load_detector, read_provenance
    from causalclip_cli.scanning.output import ScanRecord

_LAZY = {
    "load_detector": "causalclip_cli.api",
    "read_provenance": "causalclip_cli.api",
    "Scanner": "causalclip_cli.api",
    "ScanRecord": "causalclip_cli.scanning.output",
}


def __getattr__(name: str) -> Any:  # noqa: ANN401 - whichever public object is asked for
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'causalclip_cli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
