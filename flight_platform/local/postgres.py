"""A private PostgreSQL server for Dagster's instance storage (runs, event logs, schedules).

    with postgres_server(Path("/tmp/pg"), port=5433) as server:
        (dagster_home / "dagster.yaml").write_text(dagster_yaml(settings, server))

Debian's PostgreSQL 15 (`scripts/install_debian_package`), one cluster in its own directory, on a loopback
port only: no Unix socket (its default directory belongs to the system's own server), and trust
authentication from 127.0.0.1 alone. initdb refuses to run as root, so for a root caller the server
runs as the `postgres` system user (the Debian package creates it; so does this module if it is
missing), which must be able to reach the cluster directory: its parents must be searchable by
everyone (a fresh directory under /tmp is; pytest's private tmp_path is not).

`make run` keeps SQLite unless FLIGHT_PLATFORM_DAGSTER_STORAGE=postgres (see `dagster_storage`).
"""

import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flight_platform.settings import Settings

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_USER = "postgres"  # only when the caller is root
START_TIMEOUT_S = 60
INSTANCE_SETTINGS = Path(__file__).with_name("dagster.yaml")  # the base of DAGSTER_HOME's (dagster_yaml)


@dataclass(frozen=True)
class PostgresServer:
    root: Path  # the cluster directory: data/ and server.log, owned by the server's user
    port: int
    database: str = "dagster"
    user: str = "dagster"  # the cluster's superuser (not an OS user)
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def query(self, sql: str, database: str | None = None) -> list[list[str]]:
        """Run `sql` with psql; the result rows, their fields as text."""
        output = _run([str(POSTGRES_BIN / "psql"), "-h", self.host, "-p", str(self.port),
                       "-U", self.user, "-d", database or self.database,
                       "--no-psqlrc", "--no-align", "--tuples-only", "--field-separator=\t",
                       "-v", "ON_ERROR_STOP=1", "-c", sql])
        return [line.split("\t") for line in output.splitlines()]


def _server_user() -> pwd.struct_passwd | None:
    """The OS user to run initdb and the server as: None for the caller itself, unless root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        _run(["useradd", "--system", "--user-group", "--no-create-home",
              "--shell", "/usr/sbin/nologin", SERVER_USER])
        return pwd.getpwnam(SERVER_USER)


def _run(command: list[str], user: pwd.struct_passwd | None = None, cwd: Path | None = None) -> str:
    as_user = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, **as_user)
    if result.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()}")
    return result.stdout


def _initialize(server: PostgresServer, user: pwd.struct_passwd | None) -> None:
    """Create the cluster unless it exists (a `make run` keeps it across restarts)."""
    if (server.data_dir / "PG_VERSION").exists():
        return
    server.root.mkdir(parents=True, exist_ok=True)
    server.root.chmod(0o700)
    if user is not None:
        os.chown(server.root, user.pw_uid, user.pw_gid)
    _run([str(POSTGRES_BIN / "initdb"), "-D", str(server.data_dir), "-U", server.user,
          "--auth=trust", "--encoding=UTF8", "--no-locale"], user, cwd=server.root)
    with open(server.data_dir / "postgresql.conf", "a") as conf:
        conf.write("listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")
    # Replaces initdb's rules (Unix socket, ::1, replication): TCP from 127.0.0.1 only.
    (server.data_dir / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")


@contextmanager
def postgres_server(root: Path, port: int, database: str = "dagster") -> Iterator[PostgresServer]:
    """The cluster in `root` (created if new) serving `database` (created if missing) on
    127.0.0.1:`port` while the block runs; stopped with pg_ctl's fast mode on exit."""
    server = PostgresServer(root, port, database)
    user = _server_user()
    _initialize(server, user)
    pg_ctl = str(POSTGRES_BIN / "pg_ctl")
    try:
        _run([pg_ctl, "start", "--wait", f"--timeout={START_TIMEOUT_S}", "-D", str(server.data_dir),
              "-l", str(server.log_file), "-o", f"-p {port}"], user, cwd=server.root)
    except RuntimeError as error:
        raise RuntimeError(f"{error}\n{server.log_file}:\n{server.log_file.read_text()[-3000:]}") from None
    try:
        exists = server.query(f"SELECT 1 FROM pg_database WHERE datname = '{database}'", "postgres")
        if not exists:
            server.query(f'CREATE DATABASE "{database}"', "postgres")
        yield server
    finally:
        _run([pg_ctl, "stop", "--wait", "-m", "fast", "-D", str(server.data_dir)], user,
             cwd=server.root)


def dagster_yaml(settings: Settings, server: PostgresServer | None = None) -> str:
    """DAGSTER_HOME's dagster.yaml: the project's instance settings (INSTANCE_SETTINGS) with the run
    queue's interval from `settings`, and Dagster's storage on `server` when given (SQLite files in
    DAGSTER_HOME otherwise). No password: the server trusts loopback connections."""
    # JSON is YAML: appended as flow-style mappings, the repo's file and comments stay as they are.
    run_queue = {"dequeue_interval_seconds": settings.dagster_dequeue_interval_s}
    text = (INSTANCE_SETTINGS.read_text() + "# Added from FLIGHT_PLATFORM_DAGSTER_DEQUEUE_INTERVAL_S.\n"
            f"run_queue: {json.dumps(run_queue)}\n")
    if server is None:
        return text
    storage = {"postgres": {"postgres_db": {
        "hostname": server.host, "port": server.port, "db_name": server.database,
        "username": server.user,
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; dagster-postgres brings psycopg2.
        "scheme": "postgresql+psycopg2"}}}
    return (text + "# Added by flight_platform.local.postgres: runs, events and schedules in PostgreSQL.\n"
            f"storage: {json.dumps(storage)}\n")


@contextmanager
def dagster_storage(settings: Settings) -> Iterator[None]:
    """The Dagster storage `make run` uses, by `settings.dagster_storage`: `sqlite` (the default)
    leaves DAGSTER_HOME's dagster.yaml as it is (SQLite files in DAGSTER_HOME); `postgres` runs a
    private server under the services dir (on `settings.postgres_port`) while the block runs and
    points DAGSTER_HOME's dagster.yaml at it. Enter it after `stack.dagster_environment` wrote
    dagster.yaml, before anything opens the instance."""
    if settings.dagster_storage == "sqlite":
        yield
        return
    if settings.dagster_storage != "postgres":
        raise ValueError(f"FLIGHT_PLATFORM_DAGSTER_STORAGE must be sqlite or postgres, not "
                         f"{settings.dagster_storage!r}")
    with postgres_server(settings.services_dir / "postgres", settings.postgres_port) as server:
        (settings.dagster_home / "dagster.yaml").write_text(dagster_yaml(settings, server))
        yield
