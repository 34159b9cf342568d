"""Print an adapter's saved SharedLLM knobs as command-line flags, so that a script runs on a preset's knobs
without restating them (a change to the preset then reaches the script).

    python scripts/knob_flags.py adapters/smollm2-135m-joint --except decoder_window
    # --n-injected-layers 30 --chunk-size 512 ... --no-full-logits
"""

import argparse
import json
from pathlib import Path

from sharedllm.config import KNOBS
from sharedllm.flags import knob_flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path, help="an adapter folder (its config.json)")
    parser.add_argument("--except", dest="skip", nargs="*", default=(), choices=list(KNOBS), metavar="KNOB",
                        help="knobs to leave out (the calling script sets them itself)")
    args = parser.parse_args()
    if not (args.adapter / "config.json").is_file():
        parser.error(f"{args.adapter} holds no config.json: not an adapter folder")
    print(" ".join(knob_flags(json.loads((args.adapter / "config.json").read_text()), args.skip)))


if __name__ == "__main__":
    main()
