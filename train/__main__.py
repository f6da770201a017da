"""`python -m train`: train a preset, then measure its Hessian spectrum and print the verdict.

Usage:
  python -m train [--preset NAME] [--out DIR] [--data-dir DIR] [--resume] [--no-progress]
                  [--set key=value ...] [key=value ...] [--key value ...]
  python -m train --list-presets
  python -m train --show-config [--preset NAME] [overrides]
  python -m train spectrum --checkpoint PATH [--epoch E] [--out DIR] [--data-dir DIR] [--no-progress]
                           [--set key=value ...]

With no arguments it runs the "default" preset (LeNet-5, full MNIST, momentum SGD, K = 100, with the
control at initialisation) into runs/default. Any config field can be overridden: `--set epochs=5`,
`epochs=5` or `--epochs 5` (see --show-config for the fields and their values); a field set twice, in any of
these spellings, is refused. `--resume` continues a
run from its newest checkpoint, bit-identically, and finishes any missing spectra. `spectrum` computes
the spectrum of a saved checkpoint (a run directory, or its checkpoints/epoch_N) with the run's settings,
of which the spectrum fields (k, lanczos_steps, hessian_samples, ...) may be changed.

Errors are one line on stderr, `error: <what is wrong and the cure>`, with the exit status: 0 success, 2 bad input
(config, data, output directory, checkpoint, a damaged Krylov state or results.json), 3 a non-finite loss,
Hessian-vector product or loaded weights, 4 a spectrum whose top K did not converge (the line names the --set that continues it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from train import progress_wanted
from train import config as config_lib
from train import presets
from train.exits import exit_status

DATA_DIR_HELP = ("data directory (default: env HSPEC_DATA_DIR, else ~/.cache/hspec/data; missing MNIST, Fashion-MNIST "
                 "and CIFAR files are downloaded there on first use, checked against tensorflow-datasets' "
                 "checksums; HSPEC_DATA_MIRROR=<base URL> replaces the public hosts)")
EPILOG = """examples:
  python -m train                                     the default 10-minute CPU run into runs/default
  python -m train --preset lenet-mnist-adam --out runs/adam --set epochs=5
  python -m train --preset tiny-fcn-mnist k=8 --out /tmp/t
  python -m train --out runs/default --resume         continue (or finish) a killed run
  python -m train spectrum --checkpoint runs/default --epoch 1 --set k=50
"""


def _train_parser() -> argparse.ArgumentParser:
    """The parser of the training command."""
    p = argparse.ArgumentParser(prog="python -m train", description="\n\n".join(__doc__.split("\n\n")[1:]),
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="a preset name (default: 'default'; see --list-presets)")
    p.add_argument("--out", help="output directory (default: runs/<preset>)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable); 'key=value' positionals work too")
    p.add_argument("--list-presets", action="store_true",
                   help="list the presets (each with its K, and '+ init control' where it also measures the network "
                        "at initialisation, a second spectrum of the same cost) and exit")
    p.add_argument("--show-config", action="store_true",
                   help="print the resolved config (before the model's size clamps lanczos_steps) and exit")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (there are none when stderr is not a terminal)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return p


def _spectrum_parser() -> argparse.ArgumentParser:
    """The parser of the `spectrum` subcommand."""
    p = argparse.ArgumentParser(prog="python -m train spectrum",
                                description="Compute the Hessian spectrum of a saved checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a run directory or its checkpoints/epoch_N directory")
    p.add_argument("--epoch", type=int, help="which epoch of a run directory (default: the newest)")
    p.add_argument("--out", help="output directory (default: <run>/spectra/epoch_<N>)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help=f"change a spectrum field: {', '.join(config_lib.SPECTRUM_FIELDS)}")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (there are none when stderr is not a terminal)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p


def _split_field_flags(extra: list[str]) -> list[str]:
    """Turn leftover `--key value` / `--key=value` arguments into `key=value` strings.

    Args:
        extra: arguments argparse did not recognise.

    Returns:
        `key=value` strings.

    Raises:
        ConfigError: an option that is neither a known flag nor a config field.
    """
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--"):
            raise config_lib.ConfigError(f"unexpected argument {arg!r}; see python -m train --help")
        key, sep, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        config_lib.check_known(key)
        if not sep:
            if i + 1 >= len(extra):
                raise config_lib.ConfigError(f"option --{key} needs a value, e.g. --{key} 5 or --set {key}=5")
            value, i = extra[i + 1], i + 1
        out.append(f"{key}={value}")
        i += 1
    return out


def _config_from_args(args: argparse.Namespace, extra: list[str]) -> config_lib.Config:
    """The run's Config: preset (or, on --resume without --preset, the stored run's), then overrides."""
    assignments = config_lib.parse_assignments(args.sets + args.overrides + _split_field_flags(extra))
    stored = os.path.join(args.out, "config.json") if args.out else None
    if args.resume and args.preset is None and stored and os.path.exists(stored):
        base = config_lib.load_json(stored)
    else:
        base = presets.get(args.preset or "default")
    if args.data_dir:
        assignments["data_dir"] = os.path.abspath(args.data_dir)
    return config_lib.apply_overrides(base, assignments)


def _main_train(argv: list[str]) -> int:
    """The training command."""
    args, extra = _train_parser().parse_known_args(argv)
    if args.list_presets:
        print(presets.listing())
        return 0
    cfg = _config_from_args(args, extra)
    if args.show_config:
        print(json.dumps(config_lib.to_dict(config_lib.resolve(config_lib.validate(cfg))), indent=1))
        return 0
    if args.resume and not args.out:
        args.out = os.path.join("runs", cfg.preset)
    from train import run

    run.train_run(cfg, args.out or os.path.join("runs", cfg.preset), resume=args.resume,
                  progress=progress_wanted(args.no_progress))
    return 0


def _main_spectrum(argv: list[str]) -> int:
    """The `spectrum` subcommand."""
    args, extra = _spectrum_parser().parse_known_args(argv)
    overrides = config_lib.parse_assignments(args.sets + args.overrides + _split_field_flags(extra))
    if args.data_dir:
        overrides["data_dir"] = os.path.abspath(args.data_dir)
    typed = config_lib.apply_overrides(config_lib.Config(), overrides)
    from train import run

    run.spectrum_of_checkpoint(args.checkpoint, epoch=args.epoch, out=args.out,
                               overrides={k: getattr(typed, k) for k in overrides},
                               progress=progress_wanted(args.no_progress))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: dispatch, and turn the known errors into one clear line and an exit status.

    Args:
        argv: the arguments (default: sys.argv[1:]).

    Returns:
        The exit status.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "spectrum":
            return _main_spectrum(argv[1:])
        if argv and argv[0] == "sweep":
            from train.study import sweep

            return sweep.main(argv[1:])
        if argv and argv[0] == "sensitivity":
            from train.study import sensitivity

            return sensitivity.main_sensitivity(argv[1:])
        if argv and argv[0] == "hessian-sample":
            from train import sample_size

            return sample_size.main(argv[1:])
        if argv and argv[0] == "llm":
            from train.llm import cli as llm_cli

            return llm_cli.main(argv[1:])
        if argv and argv[0] == "report":
            from train import report

            return report.main(argv[1:])
        return _main_train(argv)
    except Exception as err:
        status = exit_status(err)
        if status is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
