"""Who each part of the platform is when it calls Kafka or MongoDB, and where its password is.

The one place that reads the FLIGHT_PLATFORM_KAFKA_* and FLIGHT_PLATFORM_MONGO_* security settings
and turns them into client settings: kafka-python's connection arguments and pymongo's credentials,
per role. Settings hold where a password is (an environment variable or a file), not the password:
it is read when a client is made, so settings, a Dagster resource's config or an error message
can be printed without showing it. No Dagster, no Spark: the web app uses this module too. Nor
kafka-python: gunicorn's master imports this module (through settings) before its gevent workers
patch the standard library, and kafka-python imported unpatched blocks a worker's Kafka calls.

The local stack's passwords are random, made once by the service manager into the data dir's
`secrets/` (readable by its owner only); a real cluster's are given as environment variables or
files (see the README's "Security").
"""

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class Role(StrEnum):
    """A part of the platform, with a user of its own in Kafka and in MongoDB."""

    WEB = "web"  # the web app: publishes requests, reads answers
    STREAM = "stream"  # the streaming job: consumes requests, stores answers and dead letters
    BATCH = "batch"  # the assets and the tools that replay days: read and write the batch data
    ADMIN = "admin"  # creates topics, users and ACLs; never used by a serving process


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PASSWORD_BYTES = 24  # of randomness in a generated password (32 URL-safe characters)


class CredentialError(RuntimeError):
    """A credential that is missing or refused, with the setting that gives it."""


@dataclass(frozen=True)
class Password:
    """Where a password is: the environment variable `variable` if it was set, else `file`."""

    variable: str
    file: Path
    value: str | None = field(default=None, repr=False, compare=False)

    @property
    def source(self) -> str:
        """Where it is, for messages: the variable's name or the file's path, never the value."""
        return self.variable if self.value is not None else str(self.file)

    @property
    def available(self) -> bool:
        return self.value is not None or self.file.exists()

    def read(self) -> str:
        if self.value is not None:
            return self.value
        try:
            return self.file.read_text().strip()
        except FileNotFoundError:
            raise CredentialError(f"no password in {self.variable}, and {self.file} does not exist: "
                                  f"set {self.variable}, or {self.variable}_FILE to a file holding it "
                                  f"(the local stack makes its own on its first start)") from None

    def create_if_missing(self) -> bool:
        """Write a random password into `file` (owner-only) unless the environment gives one or the
        file exists. Returns True if it made one."""
        if self.value is not None or self.file.exists():
            return False
        self.file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_urlsafe(PASSWORD_BYTES))
        return True


@dataclass(frozen=True)
class Login:
    """A role's user and where its password is; `setting` names the variable that sets the user."""

    user: str
    password: Password
    setting: str

    def describe(self) -> str:
        return f"user {self.user!r} ({self.setting}; password from {self.password.source})"


Env = Callable[[str, str], str]  # reads FLIGHT_PLATFORM_<name>, or the default


def _password(environ: Mapping[str, str], env: Env, name: str, default_file: Path) -> Password:
    variable = f"FLIGHT_PLATFORM_{name}"
    return Password(variable, Path(env(f"{name}_FILE", str(default_file))), environ.get(variable))


def _optional_password(environ: Mapping[str, str], env: Env, name: str) -> Password | None:
    """A password only some set-ups have (an encrypted client key's): None unless set."""
    variable, file = f"FLIGHT_PLATFORM_{name}", env(f"{name}_FILE", "")
    if variable not in environ and not file:
        return None
    return Password(variable, Path(file), environ.get(variable))


def _logins(environ: Mapping[str, str], env: Env, service: str, secrets_dir: Path) -> dict[Role, Login]:
    return {role: Login(env(f"{service}_{role.name}_USER", f"flight_{role.value}"),
                        _password(environ, env, f"{service}_{role.name}_PASSWORD",
                                  secrets_dir / f"{service.lower()}-{role.value}.password"),
                        f"FLIGHT_PLATFORM_{service}_{role.name}_USER")
            for role in Role}


def _optional_path(value: str) -> Path | None:
    return Path(value) if value else None


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client connects and logs in: the protocol (PLAINTEXT, SSL, SASL_PLAINTEXT,
    SASL_SSL), the SASL mechanism, a login per role and the TLS files (no CA file: the system's
    trust store)."""

    protocol: str
    sasl_mechanism: str
    logins: Mapping[Role, Login]
    ssl_cafile: Path | None
    ssl_certfile: Path | None
    ssl_keyfile: Path | None
    ssl_key_password: Password | None  # of an encrypted client key
    ssl_check_hostname: bool

    def __post_init__(self):
        if self.protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"FLIGHT_PLATFORM_KAFKA_SECURITY_PROTOCOL is {self.protocol!r}: use one of "
                             f"{', '.join(SECURITY_PROTOCOLS)}")
        if self.uses_sasl and self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"FLIGHT_PLATFORM_KAFKA_SASL_MECHANISM is {self.sasl_mechanism!r}: use one "
                             f"of {', '.join(SASL_MECHANISMS)}")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def client_config(self, role: Role) -> dict[str, object]:
        """kafka-python's connection arguments for a client of `role` (any client class)."""
        config: dict[str, object] = {"security_protocol": self.protocol}
        if self.uses_sasl:
            login = self.logins[role]
            config.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=login.user,
                          sasl_plain_password=login.password.read())
        if self.uses_ssl:
            config.update(ssl_check_hostname=self.ssl_check_hostname,
                          ssl_cafile=self.ssl_cafile and str(self.ssl_cafile),
                          ssl_certfile=self.ssl_certfile and str(self.ssl_certfile),
                          ssl_keyfile=self.ssl_keyfile and str(self.ssl_keyfile),
                          ssl_password=self.ssl_key_password and self.ssl_key_password.read())
        return config

    def describe(self, role: Role) -> str:
        """Who a client of `role` is, for error messages (never a password)."""
        if not self.uses_sasl:
            return f"{self.protocol} (no login)"
        return f"{self.protocol} {self.sasl_mechanism} as {self.logins[role].describe()}"


def kafka_security(environ: Mapping[str, str], env: Env, secrets_dir: Path) -> KafkaSecurity:
    """The Kafka security settings. By default the local broker's: SASL_SSL with SCRAM-SHA-512, the
    local CA, and passwords from the data dir's secrets/."""
    return KafkaSecurity(
        protocol=env("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        sasl_mechanism=env("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        logins=_logins(environ, env, "KAFKA", secrets_dir),
        # Empty: the system's trust store (a managed cluster with a public certificate).
        ssl_cafile=_optional_path(env("KAFKA_SSL_CAFILE", str(secrets_dir / "local-ca.pem"))),
        # A client certificate, for clusters that authenticate clients by TLS (mutual TLS).
        ssl_certfile=_optional_path(env("KAFKA_SSL_CERTFILE", "")),
        ssl_keyfile=_optional_path(env("KAFKA_SSL_KEYFILE", "")),
        ssl_key_password=_optional_password(environ, env, "KAFKA_SSL_KEY_PASSWORD"),
        ssl_check_hostname=env("KAFKA_SSL_CHECK_HOSTNAME", "true").lower() == "true",
    )


@dataclass(frozen=True)
class MongoSecurity:
    """How every MongoDB client logs in: a login per role checked against `auth_source`, or none
    (`enabled` false: the URI's own credentials, if any)."""

    enabled: bool
    logins: Mapping[Role, Login]
    auth_source: str

    def client_options(self, role: Role) -> dict[str, str]:
        """pymongo's credential options for a client of `role` (none when authentication is off).
        TLS and other options come from the URI (`tls=true&tlsCAFile=...`)."""
        if not self.enabled:
            return {}
        login = self.logins[role]
        return {"username": login.user, "password": login.password.read(),
                "authSource": self.auth_source, "authMechanism": "SCRAM-SHA-256"}

    def describe(self, role: Role) -> str:
        return self.logins[role].describe() if self.enabled else "no login"


def mongo_security(environ: Mapping[str, str], env: Env, secrets_dir: Path) -> MongoSecurity:
    """The MongoDB security settings. By default the local server's: SCRAM-SHA-256 users in the
    `admin` database, passwords from the data dir's secrets/."""
    return MongoSecurity(
        enabled=env("MONGO_AUTH", "true").lower() == "true",
        logins=_logins(environ, env, "MONGO", secrets_dir),
        auth_source=env("MONGO_AUTH_SOURCE", "admin"),
    )
