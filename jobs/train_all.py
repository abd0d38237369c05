"""Run the whole recipe (cpt -> sft -> dfpo -> mouse) on Ray: `python jobs/train_all.py [--config X] [k=v ...]`.

Starts a private local Ray when no cluster is given (RAY_ADDRESS unset); under `ray job submit`
it joins the cluster the job runs on.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pedray.config import ConfigError, load_recipe  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(Path(__file__).with_name("default.yaml")))
    parser.add_argument("--output-dir", default=None, help="where stage folders go (overrides output_dir)")
    parser.add_argument("--stages", default=None, help="comma-separated subset, e.g. cpt,sft")
    parser.add_argument("--tuned", default=None, help="best.yaml from `python -m pedray tune`: its settings apply")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stages.sft.max_steps=50")
    args = parser.parse_args()
    overrides = list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    try:
        if args.tuned:
            from pedray.tune import tuned_overrides

            overrides = tuned_overrides(args.tuned) + overrides
        recipe = load_recipe(args.config, overrides)
    except ConfigError as err:
        print(f"train_all: {err}", file=sys.stderr)
        return 2

    from pedray.train.chain import run

    run(recipe, args.stages.split(",") if args.stages else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
