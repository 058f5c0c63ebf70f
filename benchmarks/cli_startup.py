"""Start-up time of the `keras-rpat` command line (seconds, best of several runs).

Each command runs in a fresh process, as a user's shell runs it; the best of
`--repeats` runs is reported (the others measure the machine's other load),
with which heavy modules the process imported. Results go to
`benchmarks/cli_startup.json` unless `--output` says otherwise.

Usage:
    python benchmarks/cli_startup.py                 # 5 runs per command
    python benchmarks/cli_startup.py --repeats 2
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

COMMANDS = {
    "--help": ["--help"],
    "--version": ["--version"],
    "unknown command": ["tarin"],
    "recipe list": ["recipe", "list"],
    "recipe show table3": ["recipe", "show", "table3"],
    "train: bad option": ["train", "--epochs", "-1"],
    "recipe: bad option": ["recipe", "table3", "--seeds", "x"],
    # MODEL must exist (this file does; it is never read: the option error comes first).
    "eval: bad option": ["eval", os.path.abspath(__file__), "--dataset", "cifar10", "--attacks", "foo"],
}
HEAVY = ("keras", "torch", "tensorflow")
# Runs the command line in this process, as `keras-rpat` (keras_rpat's package
# loads its submodules on first use), and reports the heavy modules it imported.
_PROBE = (
    "import sys, json\n"
    "sys.argv[0] = 'keras-rpat'\n"
    "from keras_rpat.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:], prog_name='keras-rpat', standalone_mode=False)\n"
    "except BaseException:\n"
    "    pass\n"
    "sys.stderr.write('\\nIMPORTED ' + json.dumps([m for m in %r if m in sys.modules]) + '\\n')\n"
) % (HEAVY,)


def measure(args, repeats):
    """`(best seconds, heavy modules imported)` of `keras-rpat ARGS` over `repeats` fresh processes."""
    times, imported = [], []
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "torch"))
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - start)
        line = [x for x in out.stderr.splitlines() if x.startswith("IMPORTED ")]
        imported = json.loads(line[-1][len("IMPORTED ") :]) if line else ["?"]
    return min(times), imported


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli_startup.json")
    )
    args = parser.parse_args(argv)
    rows = []
    for label, command in COMMANDS.items():
        seconds, imported = measure(command, args.repeats)
        rows.append({"command": label, "best_s": round(seconds, 3), "imports": imported})
        print(
            f"keras-rpat {label:<22} {seconds:6.2f} s  imports: {', '.join(imported) or 'none of ' + '/'.join(HEAVY)}"
        )
    record = {"python": platform.python_version(), "cpus": os.cpu_count(), "repeats": args.repeats, "rows": rows}
    with open(args.output, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
