"""Loads never mix two saves (issue 18.5), with real processes: two savers and a loader on one folder, and saves killed
(SIGKILL) between the moves of a commit or during peft's own writes.

Every save here is recognisable: its config's ``lr`` is a number that every float value of its weights equals, so a
load that returns one save's config with another's weights is seen at once.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from peft import PeftModel
from safetensors.torch import load_file

import gradiend_peft
from gradiend_peft import UntrustedAdapterError

from helpers import subprocess_env
from tiny import tiny_llama

HERE = os.path.dirname(os.path.abspath(__file__))
SAVE = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, {here!r})
    import gradiend_peft
    from peft import get_peft_model
    from tiny import tiny_llama

    def marked(value):
        model = get_peft_model(tiny_llama(), gradiend_peft.GradiendConfig(init_seed=0, target_modules=["q_proj"]))
        model.peft_config["default"].lr = float(value)
        with torch.no_grad():
            for tensor in model.base_model.adapter_state_dict().values():
                tensor.fill_(value)
        return model
""")


def _marked(value):
    namespace: dict = {}
    exec(SAVE.format(here=HERE), namespace)  # the same helper the child processes run
    return namespace["marked"](value)


def _which_save(model) -> float:
    """The save a loaded model came from; fails the test on a mix of two saves."""
    config = model.peft_config[model.active_adapter]
    values = {float(v) for t in model.base_model.adapter_state_dict().values() for v in t.flatten().unique()}
    assert values == {config.lr}, f"config of save {config.lr} loaded with weights of save(s) {sorted(values)}"
    return config.lr


def _spawn(code: str, log) -> subprocess.Popen:
    """A child process running ``code`` after `SAVE`; its stderr goes to the file ``log`` (a pipe nobody reads could
    fill up and stall it)."""
    return subprocess.Popen([sys.executable, "-c", SAVE.format(here=HERE) + textwrap.dedent(code)], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)


def test_two_savers_and_a_loader_never_mix_two_saves(tmp_path):
    folder = str(tmp_path / "adapter")
    gradiend_peft.save_adapter(_marked(1), folder)
    logs = [tmp_path / f"saver-{base}.log" for base in (1000, 2000)]
    savers = [_spawn(f"""
        i = 0
        while True:
            i += 1
            gradiend_peft.save_adapter(marked({base} + i % 1000), {folder!r})
            if i == 1:
                print("saving", flush=True)
    """, log) for base, log in zip((1000, 2000), logs)]
    seen = {"load_gradiend_model": set(), "PeftModel.from_pretrained": set()}
    refused = {name: 0 for name in seen}
    try:
        for saver, log in zip(savers, logs):
            _wait_for(saver, "saving", log)
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            for name in seen:
                try:
                    if name == "load_gradiend_model":
                        model = gradiend_peft.load_gradiend_model(tiny_llama(), folder)
                    else:
                        model = PeftModel.from_pretrained(tiny_llama(), folder)
                except UntrustedAdapterError as err:
                    assert name == "PeftModel.from_pretrained", err  # the library's reader holds the lock
                    assert "two saves" in str(err) or "interrupted" in str(err), err
                    refused[name] += 1
                    continue
                seen[name].add(_which_save(model))
    finally:
        for saver in savers:
            saver.kill()
            saver.wait()
    for name, saves in seen.items():  # both savers' saves were read while they ran, by both readers
        assert any(1000 < s < 2000 for s in saves) and any(s > 2000 for s in saves), (name, sorted(saves), refused)
    print(f"distinct saves loaded: { {n: len(s) for n, s in seen.items()} }; refused: {refused}")


def _wait_for(process: subprocess.Popen, line: str, log) -> None:
    """Waits for ``line`` on the child's stdout (other output, e.g. blank lines, is skipped)."""
    while True:
        out = process.stdout.readline()
        assert out, f"the child ended before printing {line!r}: {open(log).read()[-3000:]}"
        if out.strip() == line:
            return


def _kill_when(process: subprocess.Popen, line: str, log) -> None:
    """Waits for ``line`` on the child's stdout, then kills it with SIGKILL."""
    _wait_for(process, line, log)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _assert_every_reader_refuses(folder, match):
    for read in (lambda: gradiend_peft.load_gradiend_model(tiny_llama(), folder),
                 lambda: PeftModel.from_pretrained(tiny_llama(), folder),
                 lambda: _marked(5).load_adapter(folder, adapter_name="loaded")):
        with pytest.raises(UntrustedAdapterError, match=match):
            read()


def test_a_kill_between_the_moves_of_a_commit_is_refused_until_a_save_finishes_it(tmp_path):
    folder = str(tmp_path / "adapter")
    gradiend_peft.save_adapter(_marked(1), folder)
    child = _spawn("""
        import gradiend_peft.atomic.commit as commit
        move = commit._move
        def first_move_then_wait(name, source, target):
            move(name, source, target)
            print("moved", flush=True)
            time.sleep(600)
        commit._move = first_move_then_wait
        gradiend_peft.save_adapter(marked(2), %r)
    """ % folder, tmp_path / "child.log")
    _kill_when(child, "moved", tmp_path / "child.log")
    assert any(name.startswith(".gradiend-commit-") for name in os.listdir(folder))
    with open(os.path.join(folder, "adapter_config.json")) as handle:  # the commit moves the config first
        assert json.load(handle)["lr"] == 2.0
    assert set(load_file(os.path.join(folder, "adapter_model.safetensors"))["base_model.gradiend_encoder_bias"].tolist()) == {1.0}
    _assert_every_reader_refuses(folder, "a save into this folder was interrupted")
    gradiend_peft.saving.finish_interrupted_save(folder)
    assert _which_save(gradiend_peft.load_gradiend_model(tiny_llama(), folder)) == 2.0
    assert _which_save(PeftModel.from_pretrained(tiny_llama(), folder)) == 2.0


def test_a_kill_after_peft_wrote_its_weights_and_before_the_config_is_refused(tmp_path):
    """peft's save_pretrained writes the weights in place, then calls GRADIEND's config hook: a kill in between leaves
    the new weights beside the old config, which the digest exposes (issue 18.5's PeftModel.from_pretrained case)."""
    folder = str(tmp_path / "adapter")
    _marked(1).save_pretrained(folder)
    child = _spawn("""
        import gradiend_peft.tuner.persistence as persistence
        def wait(*args, **kwargs):
            print("weights written", flush=True)
            time.sleep(600)
        persistence.save_config = wait
        marked(2).save_pretrained(%r)
    """ % folder, tmp_path / "child.log")
    _kill_when(child, "weights written", tmp_path / "child.log")
    _assert_every_reader_refuses(folder, "come from two saves")
    _marked(3).save_pretrained(folder)  # the next save makes it whole again
    assert _which_save(PeftModel.from_pretrained(tiny_llama(), folder)) == 3.0


def test_a_kill_during_peft_s_in_place_weight_write_is_refused_and_loses_the_previous_adapter(tmp_path):
    """What remains of peft's writer: it truncates and rewrites adapter_model.safetensors in place, so a kill during
    that write leaves a cut file. Every reader refuses it (no mix), but the previous adapter is gone; save_adapter,
    which stages and commits, keeps it (test_a_kill_between_the_moves...)."""
    folder = str(tmp_path / "adapter")
    _marked(1).save_pretrained(folder)
    child = _spawn("""
        import peft.peft_model
        from safetensors.torch import save
        def half_then_wait(tensors, path, metadata=None):
            data = save(tensors, metadata=metadata)
            with open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
            print("half written", flush=True)
            time.sleep(600)
        peft.peft_model.safe_save_file = half_then_wait
        marked(2).save_pretrained(%r)
    """ % folder, tmp_path / "child.log")
    _kill_when(child, "half written", tmp_path / "child.log")
    _assert_every_reader_refuses(folder, "truncated")
    gradiend_peft.save_adapter(_marked(1), folder)
    assert _which_save(PeftModel.from_pretrained(tiny_llama(), folder)) == 1.0
