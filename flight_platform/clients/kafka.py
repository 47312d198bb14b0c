"""Kafka clients tuned for the prediction path, shared by the streaming job and the web app.

What matters for a request/response loop: producers wait for every in-sync replica (acks=all) and
are idempotent, so an acknowledged request is on the topic once; consumers commit only what is
answered, heartbeat often so a rebalance is noticed within half a second, and use the cooperative
sticky assignor, so a member joining or leaving the group moves only the partitions that change
owner while the others keep being served.

Every client is made from a connection: the bootstrap servers and the security settings of one role
(`connection(settings, role)`; clients.security builds them), so each part logs in as its own user.
"""

import ssl
import threading
from collections.abc import Mapping

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.base import MemberState
from kafka.errors import KafkaConnectionError

from flight_platform.clients.security import KafkaSecurity, Role
from flight_platform.settings import Settings

CLIENT_TIMEOUT_MS = 5000
# The longest wait between attempts to reach a broker that is away (Java clients' default;
# kafka-python's 30 s would leave a producer idle for that long after a broker restarts).
RECONNECT_BACKOFF_MAX_MS = 1000
# How often a consumer heartbeats, which is also how soon it learns that its group rebalances:
# a roll-out pauses a moving partition for about this long at most.
HEARTBEAT_INTERVAL_MS = 500

Connection = Mapping[str, object]  # kafka-python's arguments to reach the cluster and log in


def connection(settings: Settings, role: Role) -> Connection:
    """How a client of `role` reaches the cluster settings name and logs in."""
    return connection_to(settings.kafka_bootstrap_servers, settings.kafka_security, role)


def connection_to(bootstrap_servers: str, security: KafkaSecurity, role: Role) -> Connection:
    """How a client of `role` reaches `bootstrap_servers` and logs in as `security` says."""
    config = {"bootstrap_servers": bootstrap_servers, **security.client_config(role)}
    if security.uses_ssl:
        # kafka-python takes the context over the ssl_* arguments (which name the settings in a
        # diagnosis's messages).
        config["ssl_context"] = KafkaTLSContext({key: value for key, value in config.items()
                                                 if key.startswith("ssl_")})
    return config


def tls_context(config: Mapping[str, object]) -> ssl.SSLContext:
    """The TLS context kafka-python builds from the ssl_* arguments in `config`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = config.get("ssl_check_hostname", True)
    if config.get("ssl_cafile"):
        context.load_verify_locations(config["ssl_cafile"])
    else:
        context.load_default_certs()
    if config.get("ssl_certfile"):
        context.load_cert_chain(config["ssl_certfile"], config.get("ssl_keyfile"), config.get("ssl_password"))
    return context


class KafkaTLSContext:
    """The TLS context of kafka-python's connections, failing to start TLS on a connection with
    KafkaConnectionError.

    kafka-python 3.0.12 wraps a new connection's socket outside the `try` that turns a failed TLS
    handshake into KafkaConnectionError, and its metadata refresh loop survives Kafka's errors only.
    A broker that resets a connection just made (killed, or starting, at that moment) raises
    ConnectionResetError there: the loop ends without a word, and the client keeps the cluster's
    metadata of that moment for good.

    The context is made for each connection, as kafka-python makes it, so that a TLS file missing
    or unreadable fails the connection, not the making of the client."""

    def __init__(self, config: Mapping[str, object]):
        self.config = config  # kafka-python's ssl_* arguments

    def wrap_socket(self, sock, **arguments):
        try:
            return tls_context(self.config).wrap_socket(sock, **arguments)
        except OSError as error:  # ssl.SSLError and a missing file are too
            raise KafkaConnectionError(f"TLS could not start ({type(error).__name__}: {error})") from error


def create_producer(connection: Connection, timeout_ms: int = CLIENT_TIMEOUT_MS,
                    linger_ms: int = 0) -> KafkaProducer:
    """An idempotent producer waiting for every in-sync replica; `linger_ms` holds a send that long
    for others to share its batch. Replace it after a failed send:
    kafka-python 3.0.12's idempotent producer hangs once a batch expires after it was sent (see
    web.clients.ServiceClients._drop_producer)."""
    return KafkaProducer(
        **connection,
        acks="all",
        enable_idempotence=True,  # a retried send is written once
        linger_ms=linger_ms,
        max_block_ms=timeout_ms,  # fail fast when the broker is down instead of blocking 60 s
        request_timeout_ms=timeout_ms,
        # Retries (while a new partition leader is elected, say) end after this: a send is
        # acknowledged or failed within about twice the request timeout.
        delivery_timeout_ms=2 * timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
    )


class GroupConsumer(KafkaConsumer):
    """A consumer that finishes every rebalance it starts.

    kafka-python 3.0.12 loses the end of a rebalance it started because the topic's partitions
    changed (a new topic's partitions appearing, say) when `poll` times out between JoinGroup and
    SyncGroup: the join completes, but nothing awaits it, so the member stays REBALANCING with its
    heartbeat off, spinning a core and never assigned. Asking for a rejoin while REBALANCING makes
    the next poll await the join in flight; it sends nothing new."""

    def poll(self, timeout_ms=0, max_records=None, update_offsets=True):
        records = super().poll(timeout_ms=timeout_ms, max_records=max_records, update_offsets=update_offsets)
        if self.group_metadata().state is MemberState.REBALANCING:
            self._coordinator.request_rejoin()
        return records


def create_consumer(connection: Connection, group_id: str, topic: str,
                    session_timeout_ms: int) -> GroupConsumer:
    consumer = GroupConsumer(
        **connection,
        group_id=group_id,
        enable_auto_commit=False,  # offsets are committed only after the batch's answers are stored
        auto_offset_reset="earliest",  # a new group answers requests sent before it first started
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=min(HEARTBEAT_INTERVAL_MS, session_timeout_ms // 3),
        partition_assignment_strategy=(CooperativeStickyAssignor,),
        # A fetch returns as soon as a record arrives; with nothing to read it waits at most this.
        fetch_max_wait_ms=100,
        max_poll_records=500,
        bootstrap_timeout_ms=CLIENT_TIMEOUT_MS,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
    )
    consumer.subscribe([topic])
    return consumer


def partition_count(connection: Connection, topic: str) -> int:
    """How many partitions `topic` has: at most that many consumers of a group get records."""
    consumer = KafkaConsumer(**connection, bootstrap_timeout_ms=CLIENT_TIMEOUT_MS)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def end_offsets(connection: Connection, partitions: list[TopicPartition],
                timeout_ms: int) -> dict[TopicPartition, int]:
    """The broker's end offsets of `partitions`, asked by a client of its own: a second opinion for
    a consumer whose own lookups fail (raises KafkaError when the cluster does not answer either)."""
    consumer = KafkaConsumer(**connection, bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms)
    try:
        return consumer.end_offsets(partitions, timeout_ms=timeout_ms)
    finally:
        consumer.close()


def close_in_background(producer: KafkaProducer) -> None:
    """Close a producer without waiting: kafka-python's close first waits for unsent records
    (until acknowledged or expired), and with a timeout it raises and leaves its thread running."""
    threading.Thread(target=producer.close, name="close-kafka-producer", daemon=True).start()

