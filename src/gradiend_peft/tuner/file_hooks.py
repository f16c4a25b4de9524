"""peft's state-dict hooks of `GradiendModel`: where peft hands a GRADIEND adapter's tensors to a file or takes them
from one, the library's checks run (`gradiend_peft.tuner.persistence`)."""

from __future__ import annotations

from typing import Sequence


def never_loaded(adapter_name: str, what: str, where: Sequence[str]) -> str:
    """The message refusing ``what`` for an adapter created on the meta device and never loaded."""
    return (f"{what} needs the values of adapter {adapter_name!r}, but its tensors are still on the meta device "
            f"({list(where)[:3]}...): it was created with low_cpu_mem_usage=True and never loaded. Load its weights "
            "first (PeftModel.from_pretrained / model.load_adapter(folder, adapter_name, low_cpu_mem_usage=True)), or "
            "create it without low_cpu_mem_usage to train it from a fresh initialisation.")


class PeftFileHooks:
    """The two classmethods peft calls on a tuner class when it saves or loads an adapter's tensors."""

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        meta = sorted(key for key, tensor in selected.items() if getattr(tensor, "is_meta", False))
        if meta:
            raise RuntimeError(never_loaded(adapter_name, "Saving", meta))
        return selected

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        # peft's loaders (load_adapter, set_peft_model_state_dict) pass every tensor they read through here before any
        # is loaded: the untrusted-file checks and the config's weights digest (gradiend_peft.tuner.persistence)
        from .persistence import check_state_dict

        check_state_dict(model, config, adapter_name, state_dict)
        return super()._remap_adapter_state_dict_for_load(model=model, config=config, adapter_name=adapter_name,
                                                          state_dict=state_dict)

