"""A private platform for the benchmarks: free ports and a scratch data dir, so a running
`make run` stack and its data are left alone. Each benchmark starts what it measures."""

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from flight_platform.clients.mongo import create_client
from flight_platform.clients.security import Role
from flight_platform.core.contract import PredictionRequest
from flight_platform.settings import Settings, load_settings, private_environment
from flight_platform_dev import load
from flight_platform_dev.platform import PrivatePlatform


@contextmanager
def private_settings() -> Iterator[Settings]:
    scratch = Path(tempfile.mkdtemp(prefix="flight_platform_bench_"))
    os.environ.update(private_environment(scratch))
    try:
        yield load_settings()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def running_platform() -> Iterator[PrivatePlatform]:
    """A private stack started as `make run` starts it (services, materialization, gunicorn,
    `dg dev` whose sensor launches the streaming run), until the stream answers a request."""
    scratch = Path(tempfile.mkdtemp(prefix="flight_platform_bench_"))
    platform = PrivatePlatform(scratch)
    print(f"Starting a private stack (log: {platform.log_dir / 'stack.log'}); this takes a "
          f"minute or two...", file=sys.stderr, flush=True)
    try:
        platform.start()
        yield platform
    except BaseException:
        print(f"Failed: the stack's log and data are kept in {scratch}", file=sys.stderr)
        raise
    finally:
        platform.stop()
    shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def running_stack() -> Iterator[Settings]:
    with running_platform() as platform:
        yield platform.settings


def request_factory(settings: Settings, seed: int = 1) -> Callable[[], PredictionRequest]:
    with create_client(settings, Role.WEB) as mongo:  # reads routes, as the web app does
        return load.request_factory(mongo[settings.mongo_database], seed)


def percentiles(values_ms: list[float]) -> str:
    p50, p95, p99 = np.percentile(values_ms, [50, 95, 99])
    return f"p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   p99 {p99:7.1f} ms   max {max(values_ms):7.1f} ms"
