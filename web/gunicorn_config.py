"""gunicorn's settings for the web app: `gunicorn -c python:web.gunicorn_config 'web.app:create_app()'`.

The metrics' multiprocess mode (web/metrics.py) needs PROMETHEUS_MULTIPROC_DIR in the environment
before prometheus_client is first imported, in the master as in the workers forked from it, and
emptied at each start (files of an earlier run's workers would be added in); a worker that exits
is marked dead so that its live gauges stop counting.
"""

import os
import shutil

from flight_platform.settings import load_settings

metrics_dir = load_settings().web_metrics_dir
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)


def on_starting(server) -> None:
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess  # after the variable is set (see above)

    multiprocess.mark_process_dead(worker.pid)
