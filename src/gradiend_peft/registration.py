"""Registers GRADIEND as a PEFT method.

peft 0.21 keeps its methods in the ``PeftType`` enum and refuses to register a name that is not a member
(``register_peft_method`` checks ``name.upper() in PeftType``), and an ``Enum`` with members cannot be
subclassed. This module adds the ``GRADIEND`` member to the existing enum in place, so that
``PeftType("GRADIEND")``, JSON configs, pickling and ``register_peft_method`` all work. It touches CPython
enum internals (the member map, the value map and the member-name list), so it checks the result and
fails loudly, naming the fix, if a future peft or Python changes how the enum is built.
"""

from __future__ import annotations

import peft
from peft.utils.peft_types import PeftType, register_peft_method

from .tuner.constants import ADAPTER_PREFIX, PEFT_METHOD_NAME, PEFT_TYPE_NAME


class PeftRegistrationError(RuntimeError):
    """Raised when GRADIEND cannot be added to the installed peft's method registry."""


def _add_enum_member() -> PeftType:
    if PEFT_TYPE_NAME in PeftType.__members__:
        return PeftType[PEFT_TYPE_NAME]
    try:
        member = str.__new__(PeftType, PEFT_TYPE_NAME)
        member._name_ = PEFT_TYPE_NAME
        member._value_ = PEFT_TYPE_NAME
        member.__objclass__ = PeftType
        member.__init__()
        PeftType._member_map_[PEFT_TYPE_NAME] = member
        PeftType._value2member_map_[PEFT_TYPE_NAME] = member
        PeftType._member_names_.append(PEFT_TYPE_NAME)
        type.__setattr__(PeftType, PEFT_TYPE_NAME, member)
    except (AttributeError, TypeError) as err:  # pragma: no cover - depends on a future Python/peft
        raise PeftRegistrationError(
            f"Could not add GRADIEND to peft's PeftType enum (peft {peft.__version__}): {err}. "
            "This gradiend_peft release supports peft>=0.21,<0.22; install a supported peft "
            "(`pip install 'peft>=0.21,<0.22'`) or upgrade gradiend_peft."
        ) from err
    if PeftType(PEFT_TYPE_NAME) is not member or PEFT_TYPE_NAME not in list(PeftType.__members__):
        raise PeftRegistrationError(  # pragma: no cover - depends on a future Python/peft
            f"peft {peft.__version__} changed how PeftType is built; GRADIEND could not be registered. "
            "Install peft>=0.21,<0.22 or upgrade gradiend_peft."
        )
    return member


def register() -> PeftType:
    """Adds ``PeftType.GRADIEND`` and registers the GRADIEND config and tuner with peft. Idempotent.

    Returns:
        `PeftType`: the ``GRADIEND`` member of peft's enum.
    """
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    member = _add_enum_member()
    if member in PEFT_TYPE_TO_TUNER_MAPPING:
        return member
    from .tuner.config import GradiendConfig
    from .tuner.model import GradiendModel

    register_peft_method(
        name=PEFT_METHOD_NAME, config_cls=GradiendConfig, model_cls=GradiendModel, prefix=ADAPTER_PREFIX
    )
    return member
