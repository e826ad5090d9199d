"""Executors run the plan's nodes: ``local`` (one after the other, the default; ``executor.jobs`` > 1: that
many at once in worker processes) and ``ray``.

``ray`` submits every node as a Ray task whose arguments are its dependencies' ObjectRefs, so Ray
starts a node when its inputs are done and spreads independent grid cells over the cluster; heavy
nodes (training, generation, scoring) request ``executor.num_cpus`` / ``executor.num_gpus``.
Both executors go through the same content-addressed store, so a sweep interrupted under Ray can
be resumed locally and vice versa.
"""
from __future__ import annotations

import logging
import os
import pickle
import time
from typing import Any, Callable

from bench.plan import Node, Plan
from bench.stages import StageContext, execute_node
from bench.store import Store

log = logging.getLogger("pobench")
#: ``progress(node, status, seconds)``: status "start" (before a node runs; local executor only), then
#: "done" (computed, in ``seconds``) or "cached" (its output was already in the store)
Progress = Callable[[Node, str, float], None]


def run_local(plan: Plan, store: Store, progress: Progress | None = None) -> dict[str, Any]:
    if plan.suite.executor.jobs > 1:
        return run_local_parallel(plan, store, progress)
    ctx = StageContext(store.root)
    computed = skipped = 0
    for node in plan.nodes:
        if progress:
            progress(node, "start", 0.0)
        started = time.time()
        _, did = execute_node(ctx, store, node)
        computed += did
        skipped += not did
        if progress:
            progress(node, "done" if did else "cached", time.time() - started)
    return {"computed": computed, "cached": skipped}


def stage_threads(jobs: int, threads: int | None) -> int:
    """torch threads per stage when ``jobs`` stages run at once: ``threads``, else the cores / jobs."""
    if threads:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // jobs)


def _start_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # ensure_threads() in the stages reads it too
    import torch

    from bench.progress import quiet_libraries

    torch.set_num_threads(threads)
    # the parent shows the stages; the libraries' own bars and logs from a worker would cut into its lines
    quiet_libraries(errors_only=True).__enter__()


def _pool_execute(work_dir: str, node: Node) -> bool:
    """Body of one stage in a worker process of :func:`run_local_parallel`."""
    store = Store(work_dir)
    try:
        _, did = execute_node(StageContext(store.root), store, node)
    except Exception as exc:
        try:  # the parent re-raises it: it must survive pickling (a one-line error names the stage)
            pickle.loads(pickle.dumps(exc))
        except Exception:
            error = RuntimeError(f"{type(exc).__name__}: {exc}")
            error.pobench_stage = getattr(exc, "pobench_stage", node.label)  # type: ignore[attr-defined]
            raise error from None
        raise
    return did


def longest_chains(plan: Plan) -> dict[tuple[str, str], int]:
    """Per node, the number of stages on the longest chain that starts with it and follows what depends
    on it (1 for a stage nothing waits for)."""
    users: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for node in plan.nodes:
        for dep in node.deps.values():
            users.setdefault((dep.stage, dep.key), []).append((node.stage, node.key))
    chain: dict[tuple[str, str], int] = {}
    for node in reversed(plan.nodes):  # the plan lists a node after its inputs
        ident = (node.stage, node.key)
        chain[ident] = 1 + max((chain[u] for u in users.get(ident, ())), default=0)
    return chain


def run_local_parallel(plan: Plan, store: Store, progress: Progress | None = None) -> dict[str, Any]:
    """``executor.jobs`` stages at once on this machine, each in a worker process with
    ``executor.threads`` torch threads, started as soon as its inputs are done (among the ready ones,
    those heading the longest chains of later stages first, then plan order; training runs started side
    by side split their shared reference pass, see :func:`bench.train.preference.cached_reference_pass`).
    Why processes: on this 2-core CPU two one-thread generate
    stages side by side did 1.5x the work of one two-thread stage (decode matmuls of ~100 rows do not
    scale to two threads).
    Cached stages are found here without starting a worker; the first error stops new stages, lets
    the running ones finish (each writes atomically) and is raised with its stage's label."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    cfg = plan.suite.executor
    threads = stage_threads(cfg.jobs, cfg.threads)
    ident = lambda node: (node.stage, node.key)  # noqa: E731
    chain = longest_chains(plan)
    # among the ready stages, those heading the longest chains of stages after them first (TIS-DPO's reverse
    # DPO before the other trainings: its weights and training come after it), then plan order
    pending, finished = sorted(plan.nodes, key=lambda node: -chain[ident(node)]), set()
    to_compute: set[tuple[str, str]] = set()  # ready nodes found not in the store
    running: dict[Any, tuple[Node, float]] = {}
    computed = cached = 0
    pool = None
    failure: BaseException | None = None
    try:
        while pending or running:
            ready = [node for node in pending if all(ident(dep) in finished for dep in node.deps.values())]
            while ready and failure is None:
                node = ready.pop(0)
                if ident(node) in to_compute:
                    continue
                if store.status(node.stage, node.key) == "done":
                    pending.remove(node)
                    finished.add(ident(node))
                    cached += 1
                    if progress:
                        progress(node, "cached", 0.0)
                    # the nodes it made ready, in priority order
                    ready = [n for n in pending if all(ident(dep) in finished for dep in n.deps.values())]
                else:
                    to_compute.add(ident(node))
            while failure is None and len(running) < cfg.jobs:
                node = next((n for n in pending if ident(n) in to_compute), None)
                if node is None:
                    break
                pending.remove(node)
                if pool is None:
                    pool = ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("spawn"),
                                               initializer=_start_worker, initargs=(threads,))
                if progress:
                    progress(node, "start", 0.0)
                running[pool.submit(_pool_execute, str(store.root), node)] = (node, time.time())
            if not running:
                if pending and failure is None:
                    raise RuntimeError(f"no stage can start: {pending[0].label} waits for inputs outside the plan")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                node, started = running.pop(future)
                try:
                    did = future.result()
                except BaseException as exc:  # the first error wins; the others finish and are dropped
                    failure = failure or exc
                    continue
                finished.add(ident(node))
                computed += did
                cached += not did
                if progress:
                    progress(node, "done" if did else "cached", time.time() - started)
            if failure is not None:
                pending.clear()
        if failure is not None:
            raise failure
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return {"computed": computed, "cached": cached}


def _ray_execute(work_dir: str, node: Node, *dep_done: Any) -> bool:
    """Body of one Ray task (module-level so Ray can pickle it by reference). The node carries its
    typed params: a worker needs nothing else of the suite."""
    from bench.stages import ensure_threads

    ensure_threads()
    store = Store(work_dir)
    _, did = execute_node(StageContext(store.root), store, node)
    return did


def run_ray(plan: Plan, store: Store, progress: Progress | None = None) -> dict[str, Any]:
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("executor.kind=ray needs Ray: pip install 'pobench[ray]' "
                           "(with -c constraints/cpu.txt on CPU machines)") from exc
    cfg = plan.suite.executor
    started_here = False
    if not ray.is_initialized():
        if cfg.address:
            ray.init(address=cfg.address, log_to_driver=False)
        else:
            # a local cluster on loopback; workers import this checkout like the driver
            ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        started_here = True
    try:
        remote = ray.remote(_ray_execute)
        refs: dict[tuple[str, str], Any] = {}
        labels: dict[Any, Node] = {}
        for node in plan.nodes:
            deps = [refs[(d.stage, d.key)] for d in node.deps.values()]
            options = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus} if node.heavy else {"num_cpus": 0.1}
            ref = remote.options(**options, max_retries=0).remote(str(store.root), node, *deps)
            refs[(node.stage, node.key)] = ref
            labels[ref] = node
        pending = list(refs.values())
        computed = cached = 0
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            did = ray.get(done[0])  # re-raises a failed node's exception here
            computed += did
            cached += not did
            if progress:
                node = labels[done[0]]
                finished = store.get(node.stage, node.key, full=False)  # its record only
                seconds = finished.record.get("seconds", 0.0) if (finished and did) else 0.0
                progress(node, "done" if did else "cached", seconds)
        return {"computed": computed, "cached": cached}
    finally:
        if started_here:
            ray.shutdown()


EXECUTORS = {"local": run_local, "ray": run_ray}


def execute(plan: Plan, store: Store, progress: Progress | None = None) -> dict[str, Any]:
    return EXECUTORS[plan.suite.executor.kind](plan, store, progress)
