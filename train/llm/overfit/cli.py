"""`python -m train.llm.overfit`: run the overfitting queue (or some of its pieces), or say what is left.

The options are those of the queue's README (results/llm/gpt2-overfit-shakespeare-cpu/): --preset, --out, --work,
--data-dir, --only PIECE (repeatable), --set KEY=VALUE, --status, --progress.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from train.llm import overfit as package
from train.llm.overfit.analysis import analyse
from train.llm.overfit.plan import DRAWS, PIECES, PRESET, Plan, load_results, log, plan
from train.llm.overfit.queue import draws_piece, paper_piece, sizes_piece, spectra_piece, train_piece

__all__ = ["status", "main"]


def status(p: Plan) -> str:
    """One line per piece: done or what is left."""
    from train import checkpoint as ckpt

    done = ckpt.list_epochs(ckpt.checkpoint_dir(p.work))
    lines = [f"train: newest checkpoint {done[-1] if done else None} of {p.cfg.steps}"]
    measured = sorted(load_results(p.out))
    lines.append(f"spectra: {len(measured)} of {len(p.cfg.checkpoint_steps)} ({measured})")
    for d in DRAWS:
        lines.append(f"draw {d}: {sorted(load_results(p.out / 'draws' / f'draw-{d}'))}")
    for folder in sorted((p.out / "sensitivity").glob("*")):
        lines.append(f"{folder.name}: {sorted(int(x.parent.name) for x in folder.glob('steps/*/results.json'))}")
    if (p.work / "not_converged.json").is_file():
        lines.append(f"not converged: {sorted(json.loads((p.work / 'not_converged.json').read_text()))}")
    for state in sorted((p.work / "lanczos").glob("*/state.npz")):  # measurements under way (or killed)
        with np.load(state) as saved:
            lines.append(f"under way: {state.parent.name}, {int(saved['steps'])} Lanczos steps saved")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m train.llm.overfit`: run the queue (or one piece), skipping what is finished."""
    ap = argparse.ArgumentParser(prog="python -m train.llm.overfit", description=package.__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=PRESET)
    ap.add_argument("--out", help="results directory (default results/llm/<preset>)")
    ap.add_argument("--work", help="checkpoints, curve, Krylov state (default ~/.cache/hspec/work/llm/<preset>)")
    ap.add_argument("--data-dir", help="data root (default: env HSPEC_DATA_DIR)")
    ap.add_argument("--only", choices=PIECES, action="append", help="run only these pieces (repeatable)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--status", action="store_true", help="print what is finished and exit")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    p = plan(args.preset, args.out, args.work, args.data_dir, args.sets)
    if args.status:
        print(status(p))
        return 0
    pieces = {"train": train_piece, "key": lambda q, progress=False: spectra_piece(q, progress, key_only=True),
              "spectra": spectra_piece, "draws": draws_piece, "sizes": sizes_piece,
              "paper": paper_piece, "tracking": lambda q, progress=False: analyse(q)}
    for name in PIECES:
        if args.only and name not in args.only:
            continue
        log(f"piece {name}")
        pieces[name](p, progress=args.progress)
    analyse(p)
    log("queue finished" if not args.only else "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
