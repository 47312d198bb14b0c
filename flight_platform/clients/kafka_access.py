"""The admin step on the Kafka cluster: topics, the users of the local cluster, and the ACLs that
give each role the least it needs. It runs as the admin role, the only one allowed to create topics
and change ACLs; the web app, the stream and the tools never create anything.

What each role may do on a request topic (the authorizer refuses everything else):
- web: WRITE and DESCRIBE it (publish a request; an idempotent producer needs no cluster-wide
  right since Kafka 2.8, KIP-679);
- stream: READ and DESCRIBE it, and READ its consumer group (join, fetch, commit offsets). Dead
  letters are stored in MongoDB beside the answers, so the stream writes nothing to Kafka;
- batch (the replay tool, the load harness): WRITE and DESCRIBE it.
"""

from kafka import KafkaAdminClient
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    NewTopic,
    ResourcePattern,
    ResourceType,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from kafka.errors import KafkaError, TopicAlreadyExistsError

from flight_platform.clients.kafka import CLIENT_TIMEOUT_MS, connection
from flight_platform.clients.security import Role
from flight_platform.settings import Settings

TOPIC_RIGHTS = {
    Role.WEB: (ACLOperation.WRITE, ACLOperation.DESCRIBE),
    Role.STREAM: (ACLOperation.READ, ACLOperation.DESCRIBE),
    Role.BATCH: (ACLOperation.WRITE, ACLOperation.DESCRIBE),
}
# The users the service manager creates on the local cluster (the admin is made when its storage
# is formatted: see local.kafka_node).
CLIENT_ROLES = tuple(TOPIC_RIGHTS)


class KafkaAccessError(RuntimeError):
    pass


def admin_client(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(**connection(settings, Role.ADMIN), request_timeout_ms=CLIENT_TIMEOUT_MS,
                            bootstrap_timeout_ms=CLIENT_TIMEOUT_MS)


def create_users(settings: Settings) -> list[str]:
    """Give every client role its SCRAM credential, with the password its settings name, unless
    the cluster already has one for it. Returns the users created."""
    security = settings.kafka_security
    mechanism = ScramMechanism[security.sasl_mechanism.replace("-", "_")]
    admin = admin_client(settings)
    try:
        logins = {role: security.logins[role] for role in CLIENT_ROLES}
        known = admin.describe_user_scram_credentials([login.user for login in logins.values()])
        missing = [login for login in logins.values()
                   if not known.get(login.user, {}).get("credential_infos")]
        if not missing:
            return []
        failed = {user: error for user, error in admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(login.user, mechanism, login.password.read())
             for login in missing]).items() if error}
        if failed:
            raise KafkaAccessError(f"creating the Kafka users failed: {failed}")
        return [login.user for login in missing]
    finally:
        admin.close()


def ensure_topic(settings: Settings, topic: str, partitions: int, replication_factor: int = 1,
                 min_insync_replicas: int = 1) -> bool:
    """Create `topic` unless it exists. Returns True if it was created."""
    admin = admin_client(settings)
    try:
        if topic in admin.list_topics():
            return False
        admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                      replication_factor=replication_factor,
                                      topic_configs={"min.insync.replicas": str(min_insync_replicas)})])
        return True
    except TopicAlreadyExistsError:  # created concurrently by another admin step
        return False
    finally:
        admin.close()


def grant_access(settings: Settings, topic: str, group: str) -> None:
    """The ACLs of every client role on `topic`, and the stream's on its consumer `group` (Kafka
    keeps one copy of each binding, so granting again changes nothing)."""
    logins = settings.kafka_security.logins

    def allow(role: Role, operation: ACLOperation, resource: ResourcePattern) -> ACL:
        return ACL(f"User:{logins[role].user}", "*", operation, ACLPermissionType.ALLOW, resource)

    on_topic = ResourcePattern(ResourceType.TOPIC, topic)
    acls = [allow(role, operation, on_topic) for role, operations in TOPIC_RIGHTS.items()
            for operation in operations]
    acls.append(allow(Role.STREAM, ACLOperation.READ, ResourcePattern(ResourceType.GROUP, group)))
    admin = admin_client(settings)
    try:
        failed = admin.create_acls(acls)["failed"]
    finally:
        admin.close()
    if failed:
        raise KafkaAccessError(f"granting the roles their rights on topic {topic!r} failed: "
                               f"{failed[0]!r} (does {logins[Role.ADMIN].describe()} administer the "
                               f"cluster, and does the cluster run an authorizer?)")


def prepare_topic(settings: Settings, topic: str, group: str, partitions: int) -> None:
    """A topic of the platform ready for its roles: created (with the request topic's replication)
    and, on a cluster where clients log in, the roles' ACLs granted on it and on `group`."""
    ensure_topic(settings, topic, partitions, settings.request_topic_replication_factor,
                 settings.request_topic_min_insync_replicas)
    if settings.kafka_security.uses_sasl:
        grant_access(settings, topic, group)


def prepare_external(settings: Settings) -> str:
    """The admin step on a cluster the platform does not run, when the admin's password is given;
    otherwise the request topic and the roles' ACLs are its operator's. Returns what was done."""
    admin = settings.kafka_security.logins[Role.ADMIN]
    if settings.kafka_security.uses_sasl and not admin.password.available:
        return (f"no password for the Kafka admin {admin.user!r} ({admin.password.variable} or its "
                f"_FILE): the request topic and the roles' ACLs are left to the cluster's operator")
    prepare(settings)
    return f"request topic and the roles' ACLs ready (admin step as {admin.user!r})"


def prepare(settings: Settings) -> None:
    """The admin step of the platform's cluster: the request topic as settings describe it, with
    the roles' rights on it and on the stream's consumer group."""
    try:
        prepare_topic(settings, settings.request_topic, settings.consumer_group,
                      settings.request_topic_partitions)
    except KafkaError as error:
        raise KafkaAccessError(
            f"the Kafka admin step failed as {settings.kafka_security.describe(Role.ADMIN)}: "
            f"{type(error).__name__}: {error}") from error
