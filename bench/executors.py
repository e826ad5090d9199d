"""Executors run the plan's nodes: ``local`` (sequential, the default) and ``ray``.

``ray`` submits every node as a Ray task whose arguments are its dependencies' ObjectRefs, so Ray
starts a node when its inputs are done and spreads independent grid cells over the cluster; heavy
nodes (training, generation, scoring) request ``executor.num_cpus`` / ``executor.num_gpus``.
Both executors go through the same content-addressed store, so a sweep interrupted under Ray can
be resumed locally and vice versa.
"""
from __future__ import annotations

import logging
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
