"""A Spark standalone cluster on loopback: one master and one worker, from the pip-installed pyspark.

    with spark_cluster(Path("/tmp/cluster")) as cluster:
        env = {**os.environ, **cluster.driver_environment()}   # then start the Spark server with env

It shows the platform running on a real cluster by settings alone (FLIGHT_PLATFORM_SPARK_MASTER):
the driver stays in the Spark Connect server, the executors run in the worker's JVMs. On one machine
the executors read and write the warehouse and model store on the local filesystem the driver uses;
on several machines those paths must be on storage every node sees (see README).
"""

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from flight_platform.local import processes
from flight_platform.local.spark_server import SPARK_HOME, spark_environment
from flight_platform.settings import free_port

HOST = "127.0.0.1"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0  # SIGTERM -> SIGKILL; the worker kills its executors on the way out


class SparkCluster:
    def __init__(self, root: Path, cores: int, memory: str):
        self.root = root
        self.cores = cores
        self.memory = memory
        self.master_port = free_port()
        self.master_ui_port = free_port()
        self.worker_ui_port = free_port()  # not the default 8081, which another cluster may hold

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.master_port}"

    @property
    def work_dir(self) -> Path:
        """The worker's application directories: app-*/<executor id>/stdout and stderr."""
        return self.root / "work"

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    def log_file(self, daemon: str) -> Path:
        return self.root / f"{daemon}.log"

    def master_state(self) -> dict:
        """The master's JSON status: its workers, and its active and completed applications."""
        with urllib.request.urlopen(f"http://{HOST}:{self.master_ui_port}/json/", timeout=5) as page:
            return json.load(page)

    def driver_environment(self) -> dict[str, str]:
        """What the driver (the Spark Connect server) needs in its environment to run here."""
        return {
            "FLIGHT_PLATFORM_SPARK_MASTER": self.master_url,
            # spark-submit reads spark-defaults.conf from here: the executors' size.
            "SPARK_CONF_DIR": str(self.conf_dir),
            # The driver tells the executors which Python runs their Python workers: the venv's.
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": HOST,
        }

    def write_conf(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        # One executor taking the whole worker.
        (self.conf_dir / "spark-defaults.conf").write_text(
            f"spark.executor.cores {self.cores}\nspark.executor.memory {self.memory}\n")

    def master_answers(self) -> bool:
        try:
            return self.master_state()["status"] == "ALIVE"
        except OSError:  # not listening yet
            return False
        except json.JSONDecodeError:  # listening, but its UI answered /json/ with an HTML page
            return False

    def alive_workers(self) -> int:
        return sum(worker["state"] == "ALIVE" for worker in self.master_state()["workers"])


def _spark_class(main_class: str, *args: str) -> list[str]:
    return [str(SPARK_HOME / "bin" / "spark-class"), f"org.apache.spark.deploy.{main_class}", *args]


def _start(command: list[str], log_file: Path) -> subprocess.Popen:
    # spark-class execs the JVM: the daemon's pid.
    return processes.start(command, log_file, env=spark_environment(HOST))


def _wait_until(condition, process: subprocess.Popen, log_file: Path, what: str) -> None:
    processes.wait_until(condition, READY_TIMEOUT_S, f"{what} (see {log_file})", interval=0.5,
                         process=process)


@contextmanager
def spark_cluster(root: Path, cores: int = 1, memory: str = "2g") -> Iterator[SparkCluster]:
    """A master and one worker (`cores`, `memory`) with their logs, conf and work dir under `root`;
    yields once the worker has registered with the master, stops both on exit."""
    cluster = SparkCluster(root, cores, memory)
    cluster.work_dir.mkdir(parents=True, exist_ok=True)
    cluster.write_conf()
    with ExitStack() as running:
        master_log = cluster.log_file("master")
        master = _start(_spark_class("master.Master", "--host", HOST,
                                     "--port", str(cluster.master_port),
                                     "--webui-port", str(cluster.master_ui_port)), master_log)
        running.callback(processes.stop, master, timeout=STOP_TIMEOUT_S)
        _wait_until(cluster.master_answers, master, master_log, "the Spark master starting")
        worker_log = cluster.log_file("worker")
        worker = _start(_spark_class("worker.Worker", cluster.master_url, "--host", HOST,
                                     "--cores", str(cores), "--memory", memory,
                                     "--webui-port", str(cluster.worker_ui_port),
                                     "--work-dir", str(cluster.work_dir)), worker_log)
        # Callbacks run last-in first-out: the worker stops first.
        running.callback(processes.stop, worker, timeout=STOP_TIMEOUT_S)
        _wait_until(lambda: cluster.alive_workers() >= 1, worker, worker_log,
                    "the Spark worker registering with the master")
        yield cluster
