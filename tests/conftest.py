import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# one thread: with other processes on a 2-core machine, 2 torch threads can run 20-100x slower (DESIGN.md)
torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------- adapter readers
# Every way to load a saved GRADIEND adapter: the library's two readers and peft's two. Tests of untrusted files run
# through all of them (the `read_adapter` fixture), since each must refuse what the others refuse.
def _load_gradiend_model(base, folder):
    import gradiend_peft

    return gradiend_peft.load_gradiend_model(base, str(folder))


def _peft_from_pretrained(base, folder):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(folder))


def _peft_load_adapter(base, folder):
    """peft's ``load_adapter`` into a model that already holds another GRADIEND adapter; the loaded one is active."""
    from peft import get_peft_model

    from gradiend_peft import GradiendConfig

    model = get_peft_model(base, GradiendConfig(init_seed=7, target_modules="all-linear"))
    model.load_adapter(str(folder), adapter_name="loaded")
    model.set_adapter("loaded")
    return model


def _load_gradiend_adapter(base, folder):
    """The library's ``load_adapter``, into a model that already holds another GRADIEND adapter; the loaded one is
    active."""
    from peft import get_peft_model

    from gradiend_peft import GradiendConfig
    from gradiend_peft.loading import load_gradiend_adapter

    model = get_peft_model(base, GradiendConfig(init_seed=7, target_modules="all-linear"))
    load_gradiend_adapter(model, str(folder), "loaded")
    model.set_adapter("loaded")
    return model


READERS = {"load_gradiend_model": _load_gradiend_model, "load_gradiend_adapter": _load_gradiend_adapter,
           "PeftModel.from_pretrained": _peft_from_pretrained, "load_adapter": _peft_load_adapter}


@pytest.fixture(params=sorted(READERS))
def read_adapter(request):
    """``(base_model, folder) -> PeftModel`` with the adapter of ``folder`` active, once per reader."""
    return READERS[request.param]
