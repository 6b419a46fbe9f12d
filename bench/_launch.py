"""Run a server module on the chosen event loop: ``python -m bench._launch LOOP MODULE [ARGS...]``.

Every server of a benchmark (rtserver and the bare baselines) starts through this launcher, so all
of them run on the same loop however they start it (``asyncio.run``, or uvicorn's
``Server.run()`` whose ``loop="auto"`` picks uvloop whenever it can be imported):

- ``uvloop``: uvloop is installed as the event loop policy, which ``asyncio.run`` honours on
  Python 3.11, and uvicorn's ``auto`` finds it;
- ``asyncio``: uvloop is made unimportable, so uvicorn's ``auto`` falls back to asyncio.

The benchmarks check the outcome in ``/proc/<pid>/maps`` (:func:`bench._common.loop_of`).
"""

from __future__ import annotations

import runpy
import sys


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("asyncio", "uvloop"):
        raise SystemExit("usage: python -m bench._launch {asyncio,uvloop} MODULE [ARGS...]")
    loop, module, *args = argv
    if loop == "uvloop":
        import uvloop

        uvloop.install()
    else:
        sys.modules["uvloop"] = None  # type: ignore[assignment]  # `import uvloop` now fails
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
