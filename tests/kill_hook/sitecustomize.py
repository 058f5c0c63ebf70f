"""SIGKILL at an exact point of a run, for the kill-and-resume tests (`tests/test_resume.py`).

Python imports this module at start-up when its folder is on `PYTHONPATH`; it does nothing unless
`$KERAS_RPAT_KILL_AT` is set, e.g. `{"file": "pgd_state_final.json", "when": {"done": 8}}`. Then, as soon as
`keras_rpat._io` is imported, its `atomic_write_json` is wrapped: right after it has written a file of that name
whose JSON has those values (dotted keys reach into nested dicts: `"current.next_batch"`), the process group is
killed with SIGKILL. The trigger is the file the run writes anyway, not a sleep, and it fires in the process that
writes it: the run itself, or AutoAttack's PyTorch subprocess under tensorflow (which inherits the environment).
The test starts the run in a session of its own, so the group is the run and its subprocesses. With
`"kill": "parent"` only the writer's parent (the run) is killed, and the writer's pid goes to `"pid_file"`.
"""

import importlib.abc
import importlib.machinery
import json
import os
import signal
import sys
import time

_ENV = "KERAS_RPAT_KILL_AT"


def _value(obj, dotted):
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _wrap(module, target):
    write = module.atomic_write_json

    def atomic_write_json(path, obj, *args, **kwargs):
        result = write(path, obj, *args, **kwargs)
        when = target.get("when", {})
        if os.path.basename(os.fspath(path)) == target["file"] and all(_value(obj, k) == v for k, v in when.items()):
            if target.get("kill") == "parent":  # the OOM killer's choice: the run, not its AutoAttack subprocess
                with open(target["pid_file"], "w") as f:
                    f.write(str(os.getpid()))
                os.kill(os.getppid(), signal.SIGKILL)
                time.sleep(60)  # the writer must end here, because its parent is gone, and write nothing more
            else:
                os.killpg(os.getpgrp(), signal.SIGKILL)
        return result

    module.atomic_write_json = atomic_write_json


class _PatchIO(importlib.abc.MetaPathFinder):
    """Finds `keras_rpat._io` like the normal path finder and wraps its writer once it has run."""

    def __init__(self, target):
        self.target = target

    def find_spec(self, name, path=None, target=None):
        if name != "keras_rpat._io":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _wrap(module, self.target)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get(_ENV) and os.getpgrp() != int(os.environ.get("KERAS_RPAT_KILL_SPARE_PGRP", "-1")):
    sys.meta_path.insert(0, _PatchIO(json.loads(os.environ[_ENV])))
