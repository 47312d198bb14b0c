"""The local Spark Connect server, from the pinned pyspark wheel: the one long-lived Spark driver every
batch run works on through a session of its own."""

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pyspark

from flight_platform.clients import spark
from flight_platform.local.service import Service, port_in_use

SPARK_HOME = Path(pyspark.__file__).parent  # the pinned wheel ships Spark's jars and scripts
SPARK_CONNECT_SERVER = "org.apache.spark.sql.connect.service.SparkConnectServer"


def spark_environment(local_ip: str) -> dict[str, str]:
    """This process's environment for a Spark daemon of the pinned wheel bound to `local_ip` (Spark
    picks its local address from the environment before it reads any config), whose Python
    workers run this virtualenv's Python."""
    return {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": local_ip,
            "PYSPARK_PYTHON": sys.executable}


@dataclass(frozen=True)
class SparkConnectServer(Service):
    @property
    def remote(self) -> str:
        return f"sc://{self.endpoint}"

    @property
    def is_jvm(self) -> bool:
        return True

    @property
    def identity(self) -> str:
        return f"spark.connect.grpc.binding.port={self.port}"

    @property
    def niceness(self) -> int:
        return self.settings.batch_niceness

    def command(self) -> list[str]:
        settings = self.settings
        config = {
            "spark.connect.grpc.binding.address": self.host,
            "spark.connect.grpc.binding.port": self.port,
            "spark.driver.host": settings.spark_driver_host,
            "spark.driver.bindAddress": settings.spark_driver_host,
            "spark.ui.enabled": "false",
            "spark.log.level": "WARN",
            # Defaults of every session, sized for a small box.
            "spark.sql.shuffle.partitions": 4,
            "spark.default.parallelism": 2,
            "spark.sql.session.timeZone": "UTC",
            # The session of a run that died without closing it is dropped after this idle time,
            # with what it checkpointed (Spark's default keeps it an hour); longer than any step
            # of a live run spends without calling Spark.
            "spark.connect.session.manager.defaultSessionTimeout": "30m",
        }
        if settings.spark_jvm_options:
            config["spark.driver.extraJavaOptions"] = shlex.join(settings.spark_jvm_options)
        # spark-submit execs the JVM: the server's pid is the one started.
        return [self.executable, "--class", SPARK_CONNECT_SERVER, "--name", "flight_platform",
                "--master", settings.spark_master, "--driver-memory", settings.spark_driver_memory,
                *(arg for key, value in config.items() for arg in ("--conf", f"{key}={value}"))]

    def environment(self) -> dict[str, str]:
        return spark_environment(self.settings.spark_driver_host)

    def is_healthy(self) -> bool:
        return port_in_use(self.host, self.port) and spark.server_reachable(self.remote)

