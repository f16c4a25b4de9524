"""The ``gradiend-peft`` command line, one module per command (``train``, ``evaluate``, ``rewrite``, ``demo``,
``bias-eval``), their options in `gradiend_peft.cli.arguments` and the shared steps in `gradiend_peft.cli.steps`.

Every option is a dataclass field (transformers' `HfArgumentParser`), so each command takes flags, a YAML/JSON file
(``--config run.yaml``; flags given next to it win), and documents itself with ``--help``. Everything a command
makes lands in one ``--output_dir``:

    <output_dir>/adapter/            the trained adapter (atomic save, with a GRADIEND model card)
    <output_dir>/training/           trainer checkpoints and the training history
    <output_dir>/metrics/*.json      encoder report, one rewrite result per policy, the summary table
    <output_dir>/plots/*.png         convergence, encoder distributions, rewrite grids, probability shifts
    <output_dir>/merged/             the rewritten model, when asked for

With three or more classes, one adapter per pair of classes: `gradiend_peft.cli.class_pairs` shows that layout.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Optional, Sequence

from .arguments import COMMANDS, parse_command

logger = logging.getLogger("gradiend_peft")

COMMAND_MODULES = {"train": "train", "evaluate": "evaluate", "rewrite": "rewrite", "demo": "demo",
                   "bias-eval": "bias_eval", "estimate-memory": "estimate_memory"}
"""Command name -> module of this package with its ``run`` function."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``gradiend-peft`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"usage: gradiend-peft {{{','.join(COMMANDS)}}} [options] [--debug]  (each command has --help;",
                 "       --debug shows the whole traceback of an error)", ""]
        lines += [f"  {name:<15} {text}" for name, text in COMMANDS.items()]
        print("\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nUnknown command {argv[0]!r}.", file=sys.stderr)
            return 2
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    command, rest = argv[0], argv[1:]
    debug, kept = False, []
    for i, arg in enumerate(rest):  # a bare --debug is ours; transformers' --debug takes values
        if arg == "--debug" and (i + 1 == len(rest) or rest[i + 1].startswith("-")):
            debug = True
        else:
            kept.append(arg)
    rest = kept
    try:
        args = parse_command(command, rest)
    except ValueError as err:
        print(f"gradiend-peft {command}: {err}", file=sys.stderr)
        return 2
    import importlib

    started = time.perf_counter()
    try:
        importlib.import_module(f".{COMMAND_MODULES[command]}", __name__).run(*args)
    except KeyboardInterrupt:
        print(f"gradiend-peft {command}: interrupted.", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line for the user; --debug shows the traceback
        if debug:
            raise
        message = " ".join(str(err).split()) or "(no message)"
        print(f"gradiend-peft {command}: {type(err).__name__}: {message}\n(run again with --debug for the traceback)",
              file=sys.stderr)
        return 1
    logger.info("Done in %.1f s.", time.perf_counter() - started)
    return 0


__all__ = ["COMMANDS", "main", "parse_command"]
