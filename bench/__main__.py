"""Every saver figure in one run, on one database: `python -m bench`.

Runs bench.steps (ms per step), bench.throughput (async steps/s), bench.storage (bytes
per thread) and bench.cold (cold `durakit status` / `approve`), one after the other,
each on its own scratch database of the same server (DURAKIT_DATABASE_URL, or the
embedded PostgreSQL). The soak, bench.chaos, is separate: it takes minutes.
"""

from __future__ import annotations

import time

from bench import cold, steps, storage, throughput


def main() -> None:
    for module in (steps, throughput, storage, cold):
        began = time.perf_counter()
        print(f"== python -m {module.__name__}", flush=True)
        module.main([])
        print(f"({time.perf_counter() - began:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main()
