"""The main job: teachers -> datasets -> one multi-task student -> report.

    python train.py --games=pong,qbert,freeway
    python train.py --games=pong,qbert,freeway --preset=smoke   # ~3 minutes

The same as `multidistill train ...` (the console command of an installed
package) and `python -m multidistill.main_job ...`: this file only runs
`multidistill.main_job`, which holds the job (README, "The main job").
"""

import runpy

if __name__ == "__main__":
    # Run as `python -m` would: the module is __main__, so its flags are the
    # ones `--help` lists.
    runpy.run_module("multidistill.main_job", run_name="__main__", alter_sys=True)
