"""Run every benchmark, write bench/out/report.json and print a table: `python -m bench.main`.

Environment: BENCH_QUICK=1 for the short run; BENCH_ONLY=ingest,normalizer,event_store,e2e,adapters,zerobus,notify
to run some; BENCH_KEEP=1 to keep the benchmark's topics and rows; BENCH_STRICT=1 to exit 1
when a target is missed (by default only a benchmark that could not run fails the command);
BENCH_WAIT_IDLE=<seconds> to wait up to that long for other processes to stop using the CPU.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable

from bench import (
    bench_adapters,
    bench_e2e,
    bench_event_store,
    bench_ingest_http,
    bench_normalizer,
    bench_notify,
    bench_zerobus,
)
from bench.common import (
    FOREIGN_CONSUMERS,
    KEEP,
    OUT,
    QUICK,
    CpuMeter,
    Entry,
    Infra,
    cleanup,
    failed_entry,
    infra,
    log,
    machine_info,
    mark_disturbed,
    stop_all,
    table,
    terminate_on_signals,
    write_report,
)

BENCHMARKS: list[tuple[str, Callable[[Infra], list[Entry]]]] = [
    ("ingest", bench_ingest_http.run),
    ("normalizer", bench_normalizer.run),
    ("event_store", bench_event_store.run),
    ("e2e", bench_e2e.run),
    ("adapters", bench_adapters.run),
    ("zerobus", bench_zerobus.run),
    ("notify", bench_notify.run),
]


def main() -> int:
    terminate_on_signals()
    only = {s.strip() for s in os.environ.get("BENCH_ONLY", "").split(",") if s.strip()}
    unknown = only - {name for name, _ in BENCHMARKS}
    if unknown:
        print(f"bench: unknown BENCH_ONLY value(s) {sorted(unknown)}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.time()
    inf = infra()
    info = machine_info()
    wait_idle = float(os.environ.get("BENCH_WAIT_IDLE", "0"))
    deadline = time.monotonic() + wait_idle
    while True:
        idle = CpuMeter()
        time.sleep(2)
        info["busy_cores_before_start"] = idle.read()["machine_busy"]
        if info["busy_cores_before_start"] <= 0.3 or time.monotonic() > deadline:
            break
        log(f"waiting for the machine to be idle ({info['busy_cores_before_start']} cores busy)")
    if info["busy_cores_before_start"] > 0.3:
        log(
            f"WARNING: the machine is already busy ({info['busy_cores_before_start']} cores in use by other "
            "processes): the figures will be low and noisy"
        )
    log(f"{'quick' if QUICK else 'full'} run; Kafka {inf.kafka}; machine {info}")
    entries: list[Entry] = []
    crashed = False
    try:
        if not KEEP:
            cleanup(inf)  # leftovers of an interrupted run
        for name, fn in BENCHMARKS:
            if only and name not in only:
                continue
            log(f"== {name}")
            t0 = time.monotonic()
            try:
                got = fn(inf)
                for e in got:
                    mark_disturbed(e)
                    if e.details.get("disturbed"):
                        log(f"WARNING: {e.name}: other processes used {e.details['other_cpu_cores_max']} cores")
                entries += got
            except Exception as e:  # a benchmark's own errors become entries; this is a bug in one
                traceback.print_exc()
                entries.append(failed_entry(name, "-", "-", e))
                crashed = True
            finally:
                stop_all()
            log(f"== {name} done in {time.monotonic() - t0:.0f}s")
    finally:
        stop_all()
        if not KEEP:
            try:
                rows = cleanup(inf)
            except Exception as e:
                log(f"cleanup failed: {e}")
            else:
                stores = ("event_store", "e2e_latency", "e2e_sustained")
                expected = {e.details.get("tenant") for e in entries if e.name in stores}
                expected.update(t for e in entries for t in e.details.get("tenants_written", ()))
                foreign = {t: n for t, n in rows.items() if t not in expected}
                if foreign:
                    info["rows_of_tenants_no_benchmark_stored"] = foreign
                    log(
                        f"WARNING: rows of benchmark tenants that no benchmark stored: {foreign}. Another "
                        "normalizer/event store on this Kafka consumes every tenant's topics and competed "
                        "for the CPU during the run"
                    )
    if FOREIGN_CONSUMERS:
        info["foreign_consumers_of_benchmark_topics"] = FOREIGN_CONSUMERS
    info["seconds"] = round(time.time() - started)
    info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = write_report(entries)
    (OUT / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    print()
    print(table(entries))
    print(f"\nreport: {path.relative_to(path.parents[2])} ({info['seconds']}s; machine: bench/out/run.json)")
    if crashed or any("error" in e.details for e in entries):
        return 1
    if os.environ.get("BENCH_STRICT", "") not in ("", "0") and not all(e.met for e in entries):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
