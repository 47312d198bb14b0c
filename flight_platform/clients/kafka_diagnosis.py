"""Why a Kafka client cannot connect, in one sentence naming the user and the setting to look at.

kafka-python 3.0.12 reports a broker that is down, a refused login and an untrusted certificate
alike: `KafkaTimeoutError: Unable to bootstrap` after the bootstrap timeout, the cause only in its
log. `diagnose` makes one connection with the clients' own code (TCP, TLS, ApiVersions, the SASL
login, one Metadata request) and, when it fails before the broker speaks Kafka's protocol, probes
TCP and TLS with the standard library to say why.

The attempt uses kafka-python's networking layer `kafka.net` (exported, but undocumented), checked
on the pinned 3.0.12 only: flight_platform_tests/test_security.py runs every case against the real
broker, so an upgrade that changes it fails there.
"""

import socket
import ssl
from dataclasses import dataclass

import kafka.errors as errors
from kafka.net import KafkaConnectionManager, NetworkSelector
from kafka.protocol.metadata import MetadataRequest

from flight_platform.clients.kafka import Connection, connection, tls_context
from flight_platform.clients.security import Role
from flight_platform.settings import Settings

TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Diagnosis:
    ok: bool
    # What happened, for a person: the broker, the login (user and the setting naming it, never
    # the password) and what to check.
    reason: str


def diagnose_role(settings: Settings, role: Role, bootstrap_servers: str | None = None) -> Diagnosis:
    """Whether a client of `role` can reach and log in to the cluster (or to `bootstrap_servers`,
    one node of it), and if not, why."""
    config = {**connection(settings, role)}
    if bootstrap_servers:
        config["bootstrap_servers"] = bootstrap_servers
    return diagnose(config, settings.kafka_security.describe(role))


def diagnose(config: Connection, who: str, timeout_s: float = TIMEOUT_S) -> Diagnosis:
    """Whether a client with `config` (a connection: servers and security) can log in and is
    answered, and if not, why; `who` describes its login. Any bootstrap server answering will do."""
    failures = []
    for server in str(config["bootstrap_servers"]).split(","):
        reason = _diagnose_server(server.strip(), config, timeout_s)
        if reason is None:
            return Diagnosis(True, f"{server.strip()}: {who}: logged in, the broker answers")
        failures.append(f"{server.strip()}: {reason}")
    return Diagnosis(False, f"Kafka refuses or does not answer {who}: {'; '.join(failures)}")


def _diagnose_server(server: str, config: Connection, timeout_s: float) -> str | None:
    """None if a client with `config` logs in at `server` and is answered, else why not."""
    host, _, port = server.rpartition(":")
    protocol = config.get("security_protocol", "PLAINTEXT")
    sasl, tls = protocol.startswith("SASL_"), protocol in ("SSL", "SASL_SSL")
    stage, error, connection = _one_attempt(server, config, int(timeout_s * 1000))
    if stage == "ok":
        return None
    if isinstance(error, errors.SaslAuthenticationFailedError) or (
            sasl and stage == "connect" and connection is not None
            and connection.broker_version_data is not None):
        # The broker answered in Kafka's protocol, then refused the login (kafka-python may lose
        # the refusal's message when the broker closes the connection right after it).
        return (f"the login was refused: a wrong password or an unknown user "
                f"({config.get('sasl_mechanism')}; the broker logs 'Failed authentication')")
    if isinstance(error, (errors.UnsupportedSaslMechanismError, errors.IllegalSaslStateError)):
        return (f"the listener does not take a {config.get('sasl_mechanism')} login: check "
                f"FLIGHT_PLATFORM_KAFKA_SECURITY_PROTOCOL and FLIGHT_PLATFORM_KAFKA_SASL_MECHANISM ({error})")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except ConnectionRefusedError:
        return "connection refused: no broker listens there (down, or the wrong port)"
    except OSError as failed:
        return f"unreachable: {failed}"
    with sock:
        sock.settimeout(timeout_s)
        if tls:
            try:
                with tls_context(config).wrap_socket(sock, server_hostname=host.strip("[]")):
                    pass
            except ssl.SSLCertVerificationError as failed:
                return (f"its TLS certificate is not trusted ({failed.verify_message}): check "
                        f"FLIGHT_PLATFORM_KAFKA_SSL_CAFILE (now {config.get('ssl_cafile')})")
            except (ssl.SSLError, OSError) as failed:
                return (f"the port does not speak TLS ({failed}): check "
                        f"FLIGHT_PLATFORM_KAFKA_SECURITY_PROTOCOL (now {protocol})")
        else:
            probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE
            try:
                with probe.wrap_socket(sock, server_hostname=host.strip("[]")):
                    return (f"the port speaks TLS, the client does not: "
                            f"FLIGHT_PLATFORM_KAFKA_SECURITY_PROTOCOL is {protocol}, the listener "
                            f"wants SASL_SSL or SSL")
            except (ssl.SSLError, OSError):
                pass
    if stage == "metadata" and not sasl:
        return (f"the listener refused a client without a login ({type(error).__name__}): it wants "
                f"FLIGHT_PLATFORM_KAFKA_SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT")
    return f"{type(error).__name__}: {error}"


# The arguments kafka.net takes (the clients' others, such as acks, are not its own).
_NET_ARGUMENTS = ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
                  "ssl_context", "ssl_check_hostname", "ssl_cafile", "ssl_certfile", "ssl_keyfile",
                  "ssl_password")


def _one_attempt(server: str, config: Connection, timeout_ms: int):
    """Connect once as the clients do and send one Metadata request. Returns (stage, error,
    connection): stage 'ok', 'connect' (TCP, TLS, ApiVersions or the login failed) or 'metadata'."""
    arguments = {key: config[key] for key in _NET_ARGUMENTS if config.get(key) is not None}
    arguments.update(bootstrap_servers=server, request_timeout_ms=timeout_ms,
                     socket_connection_setup_timeout_ms=timeout_ms)
    net = NetworkSelector(**arguments)
    manager = KafkaConnectionManager(net, **arguments)
    holder = {}

    async def attempt():
        node = manager.cluster.bootstrap_brokers()[0].node_id
        connection = holder["connection"] = manager.get_connection(
            node, timeout_ms=timeout_ms, pop_on_close=False, refresh_metadata_on_err=False)
        try:
            await manager.wait_for(connection.init_future, timeout_ms)
        except Exception as error:  # noqa: BLE001 - classified by the caller
            return "connect", error
        try:
            await manager.wait_for(connection.send_request(MetadataRequest(
                topics=MetadataRequest.NO_TOPICS, allow_auto_topic_creation=False)), timeout_ms)
            return "ok", None
        except Exception as error:  # noqa: BLE001
            return "metadata", error

    try:
        stage, error = net.run(attempt)
    except Exception as failed:  # noqa: BLE001
        stage, error = "connect", failed
    finally:
        manager.close()
        net.close()
    return stage, error, holder.get("connection")


def describe_denial(error: errors.AuthorizationError, who: str, operation: str) -> str:
    """A request the ACLs refused, as a sentence: who (a login's description), which operation,
    on which resource."""
    kind = {errors.TopicAuthorizationFailedError: "topic", errors.GroupAuthorizationFailedError: "group",
            errors.ClusterAuthorizationFailedError: "cluster"}.get(type(error), "resource")
    return (f"Kafka's ACLs refused {who} to {operation} on {kind} {str(error).rsplit(': ', 1)[-1]} "
            f"({type(error).__name__}): the Kafka admin step grants each role its rights (see "
            f"README, Security)")
