"""Apache Kafka for the local stack: one KRaft node (broker + controller) from Maven Central jars.

``install()`` fetches ``org.apache.kafka:kafka_2.13`` and its runtime dependencies with Maven (the POM is
``runners/stack/pom/kafka/pom.xml``) into ``.stack/kafka/libs``; ``start()`` writes ``server.properties``
and a Log4j 2 config, formats the storage on first start (``kafka.tools.StorageTool format --standalone``),
runs ``java -cp 'libs/*' kafka.Kafka server.properties`` as a ``ManagedProcess`` and then creates the
pipeline's topics. Everything listens on loopback only; data is under ``.stack/<name>/data``.
"""

import base64
import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from beam_pipelines.settings import PipelineSettings
from runners.stack.process import (
    STACK_DIR,
    Health,
    ManagedProcess,
    StackError,
    install_debian_packages,
    port_open,
    require_free_port,
    stack_path,
)
from runners.stack.settings import StackSettings

POM = Path(__file__).resolve().parent / "pom" / "kafka" / "pom.xml"
#: Shared by every instance (the stack's and the tests'): the jars are downloaded once.
LIBS_DIR = STACK_DIR / "kafka" / "libs"
HEAP_OPTS = ("-Xms256m", "-Xmx512m")
START_TIMEOUT_S = 90.0
MVN_TIMEOUT_S = 1200.0
_MARKER = ".pom-sha256"


def pipeline_topics(pipeline: PipelineSettings) -> list[str]:
    """The topics the stack creates for ``pipeline``: its input topic and every output topic, deduplicated."""
    return list(dict.fromkeys([pipeline.kafka.input_topic, *pipeline.kafka.output_topics.values()]))


def java_major_version(java: str = "java") -> int | None:
    """Major version of ``java`` (17 for ``17.0.15``), or None when it cannot be run."""
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def _tools_present() -> bool:
    return shutil.which("mvn") is not None and (java_major_version() or 0) >= 17


def install_kafka_libs(libs_dir: Path = LIBS_DIR, pom: Path = POM) -> bool:
    """Copy the broker's jars from Maven Central into ``libs_dir`` unless they match ``pom`` already.

    Returns True when something was downloaded. A marker with the POM's hash makes a version bump in the
    POM refetch; the jars land in a temporary folder first, so an interrupted download is never used.
    """
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    marker = libs_dir / _MARKER
    if marker.exists() and marker.read_text().strip() == digest and any(libs_dir.glob("kafka_2.13-*.jar")):
        return False
    install_debian_packages("kafka", ["openjdk-17-jre-headless", "maven"], _tools_present)
    staging = libs_dir.with_name(libs_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    argv = [
        "mvn",
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=MVN_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise StackError(f"kafka: `{' '.join(argv)}` did not finish within {MVN_TIMEOUT_S:.0f}s") from err
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        output = (done.stdout + done.stderr).strip()[-3000:]
        raise StackError(
            f"kafka: downloading the broker jars from Maven Central failed (exit {done.returncode}).\n"
            f"command: {' '.join(argv)}\n{output}"
        )
    shutil.rmtree(libs_dir, ignore_errors=True)
    staging.rename(libs_dir)
    (libs_dir / _MARKER).write_text(digest + "\n")
    return True


_CLIENT_LOG = logging.getLogger("runners.stack.kafka.client")
_CLIENT_LOG.addHandler(logging.NullHandler())
_CLIENT_LOG.propagate = False


def _admin(bootstrap: str, timeout_s: float):
    """An admin client whose librdkafka log (connection refused while the broker starts) is not printed."""
    from confluent_kafka.admin import AdminClient

    return AdminClient(
        {"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout_s * 1000)},
        logger=_CLIENT_LOG,
    )


def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    partitions: int,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create missing ``topics`` (replication 1) and converge existing ones; returns the names created.

    Existing topics get more partitions when they have fewer than ``partitions`` (Kafka cannot shrink a
    topic, so more are left alone) and ``config`` set incrementally, so a changed retention applies on the
    next ``make up``.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewPartitions,
        NewTopic,
        ResourceType,
    )

    wanted = list(dict.fromkeys(topics))
    config = dict(config or {})
    admin = _admin(bootstrap, timeout_s)
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
        missing = [t for t in wanted if t not in existing]
        created: list[str] = []
        if missing:
            futures = admin.create_topics(
                [NewTopic(t, num_partitions=partitions, replication_factor=1, config=config) for t in missing],
                operation_timeout=timeout_s,
                request_timeout=timeout_s,
            )
            for topic, future in futures.items():
                try:
                    future.result(timeout=timeout_s)
                    created.append(topic)
                except KafkaException as err:
                    if err.args[0].name() != "TOPIC_ALREADY_EXISTS":
                        raise StackError(f"kafka: cannot create topic {topic}: {err}") from err
        grow = [t for t in wanted if t in existing and len(existing[t].partitions) < partitions]
        if grow:
            futures = admin.create_partitions([NewPartitions(t, partitions) for t in grow], request_timeout=timeout_s)
            for topic, future in futures.items():
                try:
                    future.result(timeout=timeout_s)
                except KafkaException as err:
                    raise StackError(f"kafka: cannot grow {topic} to {partitions} partitions: {err}") from err
        present = [t for t in wanted if t in existing]
        if present and config:
            resources = [
                ConfigResource(
                    ResourceType.TOPIC,
                    t,
                    incremental_configs=[
                        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in config.items()
                    ],
                )
                for t in present
            ]
            for resource, future in admin.incremental_alter_configs(resources, request_timeout=timeout_s).items():
                try:
                    future.result(timeout=timeout_s)
                except KafkaException as err:
                    raise StackError(f"kafka: cannot set {config} on {resource.name}: {err}") from err
        return created
    except KafkaException as err:
        raise StackError(f"kafka: topic administration on {bootstrap} failed: {err}") from err


def delete_topics(bootstrap: str, prefix: str, timeout_s: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (what a benchmark or test created); the names deleted."""
    from confluent_kafka import KafkaException

    if not prefix:
        raise ValueError("delete_topics needs a non-empty prefix")
    admin = _admin(bootstrap, timeout_s)
    try:
        doomed = [t for t in admin.list_topics(timeout=timeout_s).topics if t.startswith(prefix)]
        if doomed:
            for future in admin.delete_topics(doomed, operation_timeout=timeout_s, request_timeout=timeout_s).values():
                future.result(timeout=timeout_s)
        return doomed
    except KafkaException as err:
        raise StackError(f"kafka: cannot delete topics {prefix}* on {bootstrap}: {err}") from err


def reap_if_exited(pid: int | None) -> None:
    """Collect ``pid``'s exit status if it is our child and has exited, so it does not linger as a zombie.

    A child that dies during start-up stays in /proc until its parent waits for it; reaping it makes the
    exit visible to every check at once (and keeps long test sessions free of defunct processes).
    """
    if pid is None:
        return
    with contextlib.suppress(ChildProcessError):  # not our child (an earlier `make up`'s): init reaps it
        os.waitpid(pid, os.WNOHANG)


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in Kafka's URL-safe base64 form (what ``random-uuid`` prints).

    Like Kafka's own ``Uuid.randomUuid`` it never starts with ``-``: a leading dash reads as an option
    to command-line tools (``kafka-storage format -t -Etd...`` failed that way in CI).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class Kafka:
    """The stack's Kafka broker (KRaft combined mode, node id 1) plus the pipeline's topics."""

    def __init__(
        self,
        stack: StackSettings,
        pipeline: PipelineSettings | None = None,
        *,
        name: str = "kafka",
    ) -> None:
        self.name = name
        self._stack = stack
        self._pipeline = pipeline or PipelineSettings()
        self._proc = ManagedProcess(name)
        self._dir = stack_path(name, "config", "server.properties").parents[1]
        self.server_log = stack_path("logs", f"{name}-server.log")

    @property
    def address(self) -> str:
        return self._stack.kafka_bootstrap

    @property
    def bootstrap(self) -> str:
        return self._stack.kafka_bootstrap

    @property
    def pid(self) -> int | None:
        return self._proc.pid()

    @property
    def data_dir(self) -> Path:
        return self._dir / "data"

    def topics(self) -> list[str]:
        """The topics ``start()`` creates (from the pipeline settings)."""
        return pipeline_topics(self._pipeline)

    def install(self) -> None:
        """Java 17+ and Maven (Debian) if missing, then the broker jars from Maven Central if missing."""
        install_kafka_libs()

    def start(self) -> None:
        """Start the broker unless ours already runs, wait until it answers, then create the topics."""
        if not self._proc.running():
            self._check_ports()
            if not any(LIBS_DIR.glob("kafka_2.13-*.jar")):
                raise StackError(f"{self.name}: no broker jars in {LIBS_DIR}; run install() (`make up`) first")
            config = self._write_config()
            self._format_storage(config)
            self._proc.start(
                [
                    "java",
                    *HEAP_OPTS,
                    "-XX:+UseG1GC",
                    "-XX:+ExitOnOutOfMemoryError",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={self._dir / 'config' / 'log4j2.properties'}",
                    f"-Dkafka.logs.dir={self.server_log.parent}",
                    "-cp",
                    str(LIBS_DIR / "*"),
                    "kafka.Kafka",
                    str(config),
                ],
                cwd=self._dir,
            )
        self._wait_ready()
        kafka = self._pipeline.kafka
        ensure_topics(
            self.bootstrap,
            self.topics(),
            partitions=kafka.partitions,
            config={"retention.ms": str(kafka.retention_hours * 3_600_000)},
        )

    def stop(self) -> None:
        """SIGTERM our broker (a controlled shutdown), SIGKILL after 60 s."""
        self._proc.stop(timeout=60.0)

    def health(self) -> Health:
        """Healthy when the broker answers a metadata request on its listener."""
        if not port_open(self._stack.host, self._stack.kafka_port):
            return Health(False, f"nothing listens on {self.address}")
        try:
            metadata = _admin(self.bootstrap, 5.0).list_topics(timeout=5.0)
        except Exception as err:  # KafkaException and transport errors alike mean "not healthy"
            return Health(False, f"metadata request failed: {err}")
        topics = [t for t in metadata.topics if not t.startswith("__")]
        owner = f"pid {self.pid}" if self.pid else "not started by this stack"
        return Health(True, f"{len(metadata.brokers)} broker(s), {len(topics)} topic(s), {owner}")

    # -- internals -------------------------------------------------------------------------------------------

    def _check_ports(self) -> None:
        for port in (self._stack.kafka_port, self._stack.kafka_controller_port):
            require_free_port(self._stack.host, port, self.name)

    def _write_config(self) -> Path:
        host, port, cport = self._stack.host, self._stack.kafka_port, self._stack.kafka_controller_port
        config_dir = self._dir / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = config_dir / "server.properties"
        server.write_text(
            "\n".join(
                [
                    "# Written by runners/stack/kafka.py on every start; edit the code, not this file.",
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers={host}:{cport}",
                    f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
                    f"advertised.listeners=PLAINTEXT://{host}:{port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.data_dir}",
                    f"num.partitions={self._pipeline.kafka.partitions}",
                    "default.replication.factor=1",
                    "min.insync.replicas=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=10",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "num.network.threads=2",
                    "num.io.threads=4",
                    "log.retention.check.interval.ms=300000",
                    "",
                ]
            )
        )
        log_config = config_dir / "log4j2.properties"
        log_config.write_text(
            "\n".join(
                [
                    "# Broker logs to .stack/logs/<name>-server.log (rolled at 20 MB); warnings also to stdout.",
                    "status = warn",
                    "appender.file.type = RollingFile",
                    "appender.file.name = file",
                    f"appender.file.fileName = {self.server_log}",
                    f"appender.file.filePattern = {self.server_log}.%i",
                    "appender.file.layout.type = PatternLayout",
                    "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                    "appender.file.policies.type = Policies",
                    "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
                    "appender.file.policies.size.size = 20MB",
                    "appender.file.strategy.type = DefaultRolloverStrategy",
                    "appender.file.strategy.max = 3",
                    "appender.console.type = Console",
                    "appender.console.name = console",
                    "appender.console.layout.type = PatternLayout",
                    "appender.console.layout.pattern = [%d] %p %m (%c)%n",
                    "appender.console.filter.threshold.type = ThresholdFilter",
                    "appender.console.filter.threshold.level = WARN",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.file.ref = file",
                    "rootLogger.appenderRef.console.ref = console",
                    "logger.kafka.name = kafka",
                    "logger.kafka.level = INFO",
                    "logger.state.name = state.change.logger",
                    "logger.state.level = WARN",
                    "",
                ]
            )
        )
        return server

    def _format_storage(self, server: Path) -> None:
        """Format the log dir once (KRaft needs a cluster id and a voter set before the first start)."""
        meta = self.data_dir / "meta.properties"
        if meta.exists():
            return
        cluster_file = self._dir / "cluster-id"
        if not cluster_file.exists():
            cluster_file.write_text(new_cluster_id() + "\n")
        argv = [
            "java",
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={server.parent / 'log4j2.properties'}",
            "-cp",
            str(LIBS_DIR / "*"),
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_file.read_text().strip()}",
            f"--config={server}",
            "--standalone",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not meta.exists():
            output = (done.stdout + done.stderr).strip()[-2000:]
            raise StackError(f"{self.name}: formatting {self.data_dir} failed: {' '.join(argv)}\n{output}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.health().ok:
                return
            reap_if_exited(self._proc.pid())
            if not self._proc.running():
                raise StackError(
                    f"{self.name}: the broker exited during start-up; last log lines:\n{self._log_tail()}\n"
                    f"(full logs: {self._proc.log_file}, {self.server_log})"
                )
            time.sleep(0.5)
        raise StackError(
            f"{self.name}: the broker did not answer on {self.address} within {START_TIMEOUT_S:.0f}s; "
            f"see {self.server_log}"
        )

    def _log_tail(self, lines: int = 25) -> str:
        chunks = []
        for path in (self._proc.log_file, self.server_log):
            if path.exists():
                chunks.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(chunks) or "(no log output)"
