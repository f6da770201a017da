"""`python -m train llm`: train a language model, measure its Hessian spectrum at each checkpoint, track it.

Usage:
  python -m train llm --preset NAME [--out DIR] [--work DIR] [--resume] [--set key=value ...]
                      [--weights DIR] [--data-dir DIR] [--distributed] [--no-progress]
  python -m train llm --list-presets
  python -m train llm --show-config --preset NAME [--set key=value ...]

Results go to --out (default results/llm/<preset>): steps/<step>/results.json, tracking.json, tracking.png
and table.txt; checkpoints and metrics to --work (default runs/llm/<name of --out>). `--resume` continues
from the newest checkpoint, bit-identically, and measures any checkpoint left unmeasured. `--set` changes
any field (see --show-config), `--set model.n_layer=2` an architecture field. `--distributed` calls
jax.distributed.initialize() first (coordinator, process count and id from the environment: SLURM, Open MPI
and Kubernetes are detected, else JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID): run the
same command on every host.

Exit status: 0 success, 2 bad input (config, data, weights, output directory, checkpoint, LoRA targets), 3 a
non-finite loss, Hessian-vector product or pre-trained weights, 4 spectrum not converged (resume with a larger
--set max_lanczos_steps=...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from train import progress_wanted
from train.exits import NOT_CONVERGED, exit_status
from train.llm import presets

EPILOG = """examples:
  python -m train llm --preset gpt2-nano-shakespeare-cpu                 the CPU run (2 cores: ~12 min + 6 spectra)
  python -m train llm --preset gpt2-nano-shakespeare-cpu --resume        continue it after a kill
  python -m train llm --preset gpt2-nano-shakespeare                     the paper's nano run (GPU)
  python -m train llm --preset gpt2-medium-finetune-shakespeare --weights ~/models/gpt2-medium
  python -m train llm --preset tinyllama-lora-mathqa --weights ~/models/TinyLlama-1.1B-Chat-v1.0 --data-dir ~/data
  python -m train llm --preset gpt2-nano-shakespeare --set k=500 --set subset=block:2 --out results/llm/nano-b2
"""


def parser() -> argparse.ArgumentParser:
    """The `llm` subcommand's parser."""
    p = argparse.ArgumentParser(prog="python -m train llm", description="\n\n".join(__doc__.split("\n\n")[1:]),
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="an LLM preset (see --list-presets)")
    p.add_argument("--out", help="results directory (default results/llm/<preset>)")
    p.add_argument("--work", help="checkpoints and metrics (default runs/llm/<name of --out>)")
    p.add_argument("--resume", action="store_true", help="continue the run from its newest checkpoint")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field (repeatable); model.<field> for the architecture")
    p.add_argument("--weights", help="pre-trained weights: an HF directory with config.json + model.safetensors")
    p.add_argument("--data-dir", help="data root (default: env HSPEC_DATA_DIR, else ~/.cache/hspec/data)")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first (multi-host)")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (there are none when stderr is not a terminal)")
    return p


def resolve_config(args: argparse.Namespace) -> presets.LLMConfig:
    """The preset (or, on --resume without --preset, the stored run's config) with the --set overrides."""
    work = Path(args.work) if args.work else None
    if args.preset is None:
        stored = work / "config.json" if work else None
        if not (args.resume and stored and stored.is_file()):
            raise presets.LLMConfigError("give --preset NAME (or --resume with --work of an existing run)")
        base = presets.from_dict(json.loads(stored.read_text()))
    else:
        base = presets.get(args.preset)
    return presets.apply_overrides(base, presets.parse_assignments(args.sets))


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m train llm`; known errors become one line and an exit status.

    Args:
        argv: the arguments after "llm".

    Returns:
        The exit status.
    """
    args = parser().parse_args(sys.argv[2:] if argv is None else argv)
    try:
        if args.list_presets:
            print(presets.listing())
            return 0
        cfg = resolve_config(args)
        if args.show_config:
            print(json.dumps(presets.to_dict(cfg), indent=1))
            return 0
        return _run(args, cfg)
    except Exception as err:
        status = exit_status(err)
        if status is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        if status == NOT_CONVERGED:
            print("hint: the checkpoint is saved; continue with --resume --set max_lanczos_steps=<larger> "
                  "(or a smaller --set k=...)", file=sys.stderr)
        return status


def _run(args: argparse.Namespace, cfg: presets.LLMConfig) -> int:
    """Train and measure; print the table."""
    if args.distributed:
        initialize_distributed()
    from train.llm import track
    from train.llm.run import run

    out = Path(args.out or os.path.join("results", "llm", cfg.preset))
    work = Path(args.work) if args.work else Path("runs") / "llm" / out.name
    data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    tracking = run(cfg, out, work=work, resume=args.resume, weights=args.weights, data_dir=data_dir,
                   progress=progress_wanted(args.no_progress))
    print(track.table(tracking))
    print(f"tracking: {out / 'tracking.json'} and {out / 'tracking.png'}; checkpoints in {work / 'checkpoints'}")
    return 0


def initialize_distributed() -> None:
    """jax.distributed.initialize() from the environment, before anything touches a device.

    JAX itself reads JAX_COORDINATOR_ADDRESS and detects SLURM, Open MPI and Kubernetes jobs; on other
    launchers set JAX_NUM_PROCESSES and JAX_PROCESS_ID too, which are passed on here.
    """
    import jax

    kwargs = {name: int(os.environ[env]) for name, env in (("num_processes", "JAX_NUM_PROCESSES"),
                                                            ("process_id", "JAX_PROCESS_ID")) if env in os.environ}
    jax.distributed.initialize(**kwargs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
