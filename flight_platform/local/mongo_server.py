"""The local MongoDB-protocol server: SecantusDB's `secantusd-py` (GPL-2.0), run as its own process
and spoken to over the wire only; its WiredTiger files live under the data dir.

It runs with authentication (`--auth`, SCRAM-SHA-256) unless FLIGHT_PLATFORM_MONGO_AUTH=false, with
a user per role (clients.security.Role). SecantusDB takes users only while it runs without `--auth`
(it has no localhost exception), so they are created once, before the first real start, by a
temporary server on a free loopback port over the same storage; a marker in the storage records
them, and a restart finds them there."""

import json
from dataclasses import dataclass
from pathlib import Path

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from flight_platform.clients import mongo
from flight_platform.clients.security import CredentialError, MongoSecurity, Role
from flight_platform.local import processes
from flight_platform.local.service import STARTUP_TIMEOUT_S, Service, ServiceError
from flight_platform.settings import free_port

USERS_MARKER = "flight_platform-users.json"  # in the storage dir: which users it holds
USER_EXISTS = 51003  # createUser of a user that exists (mongod's code too)


def database_roles(role: Role, database: str) -> list[dict[str, str]]:
    """The roles `role`'s user holds. SecantusDB grants per database only (a custom role naming one
    collection grants its actions on the whole database), so the web app reads the platform's
    `database` and writes only its own (the rate limit's counts), the stream and the batch read
    and write the platform's, and the admin is root. The README's "MongoDB users" gives the
    narrower, per-collection roles for a real mongod."""
    if role is Role.ADMIN:
        return [{"role": "root", "db": "admin"}]
    if role is Role.WEB:
        return [{"role": "read", "db": database}, {"role": "readWrite", "db": mongo.web_database(database)}]
    return [{"role": "readWrite", "db": database}]


def ensure_users(auth_database: Database, security: MongoSecurity, database: str) -> None:
    """Create each role's user in `auth_database` with its roles on `database`, or give one that
    exists its current password and roles. Needs a client allowed to manage users."""
    for role, login in security.logins.items():
        roles, password = database_roles(role, database), login.password.read()
        try:
            auth_database.command("createUser", login.user, pwd=password, roles=roles,
                                  mechanisms=["SCRAM-SHA-256"])
        except OperationFailure as error:
            if error.code != USER_EXISTS:
                raise
            auth_database.command("updateUser", login.user, pwd=password, roles=roles)


@dataclass(frozen=True)
class MongoServer(Service):
    @property
    def storage_dir(self) -> Path:
        return self.settings.services_dir / "mongo"

    @property
    def users_marker(self) -> Path:
        return self.storage_dir / USERS_MARKER

    def command(self) -> list[str]:
        return self._command(self.port, auth=self.settings.mongo_security.enabled)

    def _command(self, port: int, auth: bool) -> list[str]:
        return [self.executable, "--host", self.host, "--port", str(port),
                "--storage-path", str(self.storage_dir), "--cache-size", "256M",
                # No replica-set oplog: nothing here uses change streams, and without it an
                # insert costs about 40% less (8,800 vs 5,000 docs/s in bulk on 2 cores).
                "--standalone", "--log-level", "WARNING", *(["--auth"] if auth else [])]

    def initialize(self) -> None:
        """With authentication on: each role's password, made once (random, owner-only) into the
        data dir's secrets/ unless the environment gives it, and each role's user, created once."""
        security = self.settings.mongo_security
        if not security.enabled:
            return
        users = {role.value: login.user for role, login in security.logins.items()}
        if len(set(users.values())) < len(users):
            raise ServiceError(f"{self.name}: each role needs a user of its own, not {users} "
                               f"(FLIGHT_PLATFORM_MONGO_<ROLE>_USER)")
        made = False  # a password made now (a new data dir, or secrets/ deleted) is the users' anew
        for login in security.logins.values():
            try:
                made |= login.password.create_if_missing()
            except FileExistsError:  # made meanwhile by another manager
                pass
        wanted = {"auth_source": security.auth_source,
                  "users": {role.value: {"user": login.user, "roles": database_roles(
                      role, self.settings.mongo_database)} for role, login in security.logins.items()}}
        try:
            if not made and json.loads(self.users_marker.read_text()) == wanted:
                return
        except (FileNotFoundError, ValueError):
            pass
        self._create_users(security)
        self.users_marker.write_text(json.dumps(wanted, indent=2) + "\n")

    def _create_users(self, security: MongoSecurity) -> None:
        """Run the server without authentication on a free loopback port (no client of the
        platform knows it), create the users, and stop it."""
        port = free_port()
        server = processes.start(self._command(port, auth=False), self.log_file,
                                 cwd=self.settings.services_dir)
        client = MongoClient(self.host, port, directConnection=True, serverSelectionTimeoutMS=200)
        try:
            processes.wait_until(lambda: _answers(client), STARTUP_TIMEOUT_S,
                                 f"{self.name} (without authentication, to create its users) to "
                                 f"answer; see {self.log_file}", interval=0.1, process=server)
            ensure_users(client[security.auth_source], security, self.settings.mongo_database)
        except (RuntimeError, TimeoutError, PyMongoError) as error:  # CredentialError too
            raise ServiceError(f"{self.name}: creating its users failed: {error}") from None
        finally:
            # Stopped first: after its last client has gone, it takes 2 s longer to stop.
            processes.stop(server)
            client.close()

    def is_healthy(self) -> bool:
        """Whether it answers a `ping` from the admin user. A refused login raises a
        CredentialError naming the user and the settings that give it: the service manager's
        start-up check ends on it at once, rather than waiting for a server that will not answer."""
        client = mongo.create_client(self.settings, Role.ADMIN, timeout_ms=2000)
        try:
            mongo.check_login(client, self.settings.mongo_security, Role.ADMIN)
            return True
        except CredentialError as refused:
            raise CredentialError(f"{self.name} at {self.endpoint}: {refused}") from None
        except PyMongoError:
            return False
        finally:
            client.close()


def _answers(client: MongoClient) -> bool:
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
