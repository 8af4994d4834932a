"""Working with other tools' model formats: diffusers folders in (:mod:`.diffusers_load`) and out
(:mod:`.diffusers_export`). diffusers itself is an optional extra, imported only when such a folder is opened or
written."""

from __future__ import annotations

from types import ModuleType

from ..errors import UndiffuseError

INSTALL_DIFFUSERS = "pip install 'undiffuse[diffusers]'"


def import_diffusers(what: str) -> ModuleType:
    """The ``diffusers`` package, or a one-line error saying how to install it (``what`` needs it)."""
    try:
        import diffusers
    except ImportError:
        raise UndiffuseError(f"{what} needs the diffusers package: {INSTALL_DIFFUSERS}") from None
    return diffusers
