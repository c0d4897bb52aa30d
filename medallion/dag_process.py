"""The DAG's process of `make run` (``medallion.runs.run_dag`` starts it). A module of its own
so that the processes it spawns (the notebooks' renderer, ``medallion.report``), which import
their parent's main module, import this one only and not ``medallion.runs`` (0.4 s of CPU)."""

import sys

if __name__ == "__main__":
    from medallion.runs import main

    main(sys.argv[1:])
