"""``python -m hps.trainers CONFIG.yaml [--test] [--out DIR]``: retrain with the trainer alone."""

import argparse
import sys

from hps.trainers import ConfigError, DataError, TrainingDiverged, retrain

parser = argparse.ArgumentParser(prog="python -m hps.trainers", description=__doc__)
parser.add_argument("config")
parser.add_argument("--test", action="store_true", help="also score the test split")
parser.add_argument("--out", default=None, help="output folder [runs/<name>]")
parser.add_argument("--allow-data-mismatch", action="store_true",
                    help="train on the data here even if it is not the data the config was made on")
parser.add_argument("--allow-model-change", action="store_true",
                    help="build your model file as it is now, even if it changed since the config was made")
args = parser.parse_args()
try:
    result = retrain(args.config, args.out, test=args.test, allow_data_mismatch=args.allow_data_mismatch,
                     allow_model_change=args.allow_model_change,
                     report=lambda e, m: print(f"epoch {e}: {m}", flush=True))
except (ConfigError, DataError, TrainingDiverged) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)  # bad input: the same exit code as every hps command (docs/exit-codes.md)
print(f"val_acc {result.val_acc} test_acc {result.test_acc}")
