"""Running one script in a fresh, locked-down, single-use container."""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import importlib.util
import logging
import marshal
import re
import secrets
import select
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.utils.socket import frames_iter
from werkzeug.utils import secure_filename

from app.errors import SandboxError
from app.metrics import Metrics
from app.models import Artifact, Limits, Program, RunOutcome, Usage
from app.sandbox.agent import CHUNK as AGENT_CHUNK
from app.sandbox.agent import MAX_LEFT_OUT, NONCE_SIZE
from app.sandbox.container_calls import container_calls
from app.sandbox.docker_gateway import DOCKER_ERRORS, close_socket, translated

log = logging.getLogger(__name__)
LABEL = "io.datapane.runner"
WORKDIR = "/sandbox"
SANDBOX_UID = SANDBOX_GID = 1000  # the `python` user of the base image
MAX_ARTIFACT_NAME = 100
SIGKILLED = 128 + 9  # the exit code of a process killed by SIGKILL (the OOM killer's signal)
OOM_FLAG_WAIT_S = 1.0  # see Run._oom_killed

AGENT_SOURCE = Path(__file__).with_name("agent.py")

# The container's command: read the agent from stdin, then run it (so images need not carry it). It travels on
# stdin, not in the command: Docker copies a command into every record it keeps of a container (its config, each
# state checkpoint, the OCI spec), which cost the engine ~8 ms of CPU per run for 14 KB. Three parts, each after
# its length in 8 digits: the bytecode's magic number (importlib's MAGIC_NUMBER, already loaded in every Python),
# the compiled agent (marshal), its source. The compiled one runs where the magic number is the container's
# (compiling the source cost every container ~4 ms of CPU); the source otherwise, or if the compiled one fails to
# load.
BOOTSTRAP = """import os, sys
def read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            raise SystemExit("no agent arrived")
        data += chunk
    return data
def part():
    return read(int(read(8)))
magic, code, source = part(), part(), part()
try:
    if magic != sys.modules["_frozen_importlib_external"].MAGIC_NUMBER:
        raise ValueError(magic)
    import marshal
    agent = marshal.loads(code)
except Exception:
    agent = compile(source, "agent.py", "exec", dont_inherit=True)
exec(agent)
"""
AGENT_COMMAND = ["python", "-c", BOOTSTRAP, WORKDIR]


@cache
def agent_source() -> bytes:
    """The agent (see agent.py)."""
    return AGENT_SOURCE.read_bytes()


def agent_preamble() -> bytes:
    """What a started container reads first (see BOOTSTRAP): the agent compiled by this Python, and its source."""
    return _preamble(agent_source())


@lru_cache(maxsize=2)
def _preamble(source: bytes) -> bytes:
    compiled = compile(source, "agent.py", "exec", dont_inherit=True, optimize=0)  # as the container would
    parts = (importlib.util.MAGIC_NUMBER, marshal.dumps(compiled), source)
    return b"".join(b"%08d" % len(part) + part for part in parts)


OutputSink = Callable[[int, bytes], None]
"""Receives (stream, data) chunks: stream 1 is stdout, 2 is stderr."""


@dataclass(frozen=True)
class SandboxPolicy:
    """Limits every run gets regardless of the request."""

    pids_limit: int
    tmpfs_mb: int
    max_output_bytes: int
    instance: str
    max_artifacts: int = 20
    max_artifact_bytes: int = 20 * 1024 * 1024
    cluster: str = ""  # distributed mode: the id its workers share, so one can clean up after a dead sibling

    def labels(self, **extra: str) -> dict[str, str]:
        """The labels of this service's containers (see container_labels), with the cluster's when there is one."""
        return container_labels(self.instance, **({"cluster": self.cluster} if self.cluster else {}), **extra)

    runtime: str = "runc"  # the OCI runtime: runc, or runsc (gVisor) for a second wall around the kernel


def hardened_host_config(
    api: docker.APIClient, limits: Limits, policy: SandboxPolicy, log_driver: str = "none"
) -> dict[str, Any]:
    """Every run's isolation: limits, no network, read-only root, small noexec scratch, no privileges."""
    mem = f"{limits.memory_mb}m"
    # Docker adds nodev itself; naming it here makes Docker drop the mode option.
    scratch = f"rw,noexec,nosuid,size={policy.tmpfs_mb}m"
    return dict(
        api.create_host_config(
            mem_limit=mem,
            memswap_limit=mem,
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=policy.pids_limit,
            network_mode="none",
            read_only=True,
            tmpfs={WORKDIR: f"{scratch},uid={SANDBOX_UID},gid={SANDBOX_GID},mode=0700", "/tmp": f"{scratch},mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            ipc_mode="private",
            log_config={"type": log_driver, "config": {}},  # no log by default: a flood must not fill the host's disk
            runtime=policy.runtime,
            ulimits=[
                docker.types.Ulimit(name="nofile", soft=256, hard=256),
                docker.types.Ulimit(name="core", soft=0, hard=0),  # a crash dumps no memory to the host's disk
            ],
        )
    )


def container_labels(instance: str, **extra: str) -> dict[str, str]:
    """Labels that let a later start find and remove leftovers of this service."""
    return {LABEL: "1", f"{LABEL}.instance": instance, **{f"{LABEL}.{k}": v for k, v in extra.items()}}


def deployment_of(labels: Mapping[str, str]) -> str:
    """The deployment a container's labels name: its cluster (SandboxPolicy.labels), "" for the embedded mode's."""
    return labels.get(f"{LABEL}.cluster", "")


def encode_payload(program: Program, nonce: bytes, max_artifacts: int = 0, max_artifact_bytes: int = 0) -> bytes:
    """The message the agent reads from stdin (see agent.py). Fields hold no NUL (the request schemas refuse it)."""
    fields = [program.entrypoint, str(len(program.args)), *program.args, str(len(program.env))]
    for name, value in program.env.items():
        fields += [name, value]
    fields.append(str(len(program.files)))
    for name, data in program.files.items():
        fields += [name, str(len(data))]
    fields += [str(-1 if program.stdin is None else len(program.stdin)), str(max_artifacts), str(max_artifact_bytes)]
    header = "\0".join(fields).encode()
    return b"".join([b"%d\n" % len(header), header, *program.files.values(), nonce, program.stdin or b""])


@dataclass(frozen=True)
class Trailer:
    """The agent's report of how the script ended, sent the moment it did."""

    exited: bool  # False: killed by a signal (code is 128 + the signal, as Docker would say)
    code: int
    usage: Usage


class AgentReader:
    """Splits the agent's stdout into its frames (kind, data), whatever Docker's chunks are.

    A stream that breaks the framing (under gVisor a script can write to the agent's stdout) is `broken` from
    there on: the rest passes as plain stdout, bounded like any output, and no trailer is read from it.
    """

    KINDS = (b"1", b"2", b"A", b"D", b"X", b"T")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.broken = False

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        if self.broken:
            yield b"1", data
            return
        self._buffer += data
        start = 0
        while len(self._buffer) - start >= 5:
            kind = bytes(self._buffer[start : start + 1])
            size = int.from_bytes(self._buffer[start + 1 : start + 5], "big")
            if kind not in self.KINDS or size > AGENT_CHUNK:
                self.broken = True
                yield b"1", bytes(self._buffer[start:])
                self._buffer.clear()
                return
            end = start + 5 + size
            if len(self._buffer) < end:
                break
            yield kind, bytes(self._buffer[start + 5 : end])
            start = end
        del self._buffer[:start]


MORE = re.compile(rb"and ([0-9]{1,12}) more")  # agent.send_artifacts' last line when it named MAX_LEFT_OUT


class ArtifactCollector:
    """The output files the agent sends after the script's exit, bounded again here (the stream is the container's).

    Under gVisor a script can write frames of its own: memory holds at most the byte budget (data past it is
    dropped as it arrives) and at most MAX_LEFT_OUT + 1 reasons (the agent's own list and its count of the rest).
    """

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self._max_count, self._budget = max_count, max_bytes
        self._current: tuple[str, list[bytes]] | None = None
        self.kept: list[tuple[Artifact, bytes]] = []
        self._left_out: list[str] = []
        self._uncounted = 0  # reasons beyond the bound

    def take(self, kind: bytes, data: bytes) -> None:
        if kind == b"X":
            if counted := MORE.fullmatch(data):  # the agent's count of the entries it did not name
                self._uncounted += int(counted[1])
            else:
                self._leave_out(data.decode(errors="replace")[:200])
        elif kind == b"A":
            self._close()
            self._current = (data.decode(errors="replace")[: MAX_ARTIFACT_NAME + 1], [])
        elif self._current is not None:  # b"D"
            self._budget -= len(data)
            if self._budget >= 0:
                self._current[1].append(data)
            else:  # over the budget: this file is left out at its close, its bytes need not be kept
                self._current[1].clear()

    def finish(self) -> tuple[tuple[tuple[Artifact, bytes], ...], tuple[str, ...]]:
        self._close()
        more = [f"and {self._uncounted} more"] if self._uncounted else []
        return tuple(self.kept), (*self._left_out, *more)

    def _leave_out(self, reason: str) -> None:
        if len(self._left_out) <= MAX_LEFT_OUT:
            self._left_out.append(reason)
        else:
            self._uncounted += 1

    def _close(self) -> None:
        if self._current is None:
            return
        name, chunks = self._current
        self._current = None
        if secure_filename(name) != name or len(name) > MAX_ARTIFACT_NAME:
            self._leave_out(f"{name[:100]}: a name that is not allowed (letters, digits, '_', '-', '.')")
        elif self._budget < 0 or len(self.kept) >= self._max_count:
            self._leave_out(f"{name}: over the limits on output files")
        else:
            data = b"".join(chunks)
            self.kept.append((Artifact.of(name, data), data))


def parse_trailer(data: bytes, nonce: bytes) -> Trailer | None:
    """The trailer, if it carries this run's nonce and is well formed."""
    parts = data.split()
    if len(parts) != 5 or not hmac.compare_digest(parts[0], nonce) or parts[1] not in (b"exited", b"signaled"):
        return None
    try:
        code, cpu_ns, peak = int(parts[2]), int(parts[3]), int(parts[4])
    except ValueError:
        return None
    usage = Usage(cpu_seconds=cpu_ns / 1e9 if cpu_ns >= 0 else None, peak_memory_bytes=peak if peak >= 0 else None)
    return Trailer(exited=parts[1] == b"exited", code=code, usage=usage)


class Run:
    """One container's life: create, start, feed, stream, judge, remove (remove() also when it never ran)."""

    def __init__(
        self,
        client: docker.DockerClient,
        image: str,
        limits: Limits,
        policy: SandboxPolicy,
        labels: dict[str, str],
        metrics: Metrics | None = None,
    ) -> None:
        self._api = client.api
        self._calls = container_calls(client.api)
        self._metrics = metrics
        self._removed = False
        self._limits = limits
        self._policy = policy
        self._timed_out = threading.Event()
        self._start_lock = threading.Lock()
        self._sock = None
        self._killed_for_output = False
        self._cancelled = threading.Event()
        self._reported: RunOutcome | None = None  # the outcome the agent's trailer gave, before Docker confirmed
        self._usage_at_kill: Usage | None = None  # what Docker counted just before the service killed it
        self._artifacts = ArtifactCollector(policy.max_artifacts, policy.max_artifact_bytes)
        with translated(SandboxError, "Docker could not create the container"):
            self.container_id = self._calls.create(
                image,
                command=AGENT_COMMAND,
                user=f"{SANDBOX_UID}:{SANDBOX_GID}",
                working_dir=WORKDIR,
                stdin_open=True,  # docker-py sets StdinOnce with it: the end of our one attach ends the input
                network_disabled=True,
                labels=policy.labels(**labels),
                environment={"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "HOME": WORKDIR},
                host_config=hardened_host_config(self._api, limits, policy),
            )
        if metrics is not None:
            metrics.containers_created.inc()

    def alive(self) -> bool:
        """A started container whose agent still waits: its output stream is silent and open."""
        sock = self._sock
        if sock is None:
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable  # the agent says nothing before its run: anything readable is death (EOF)

    def set_timeout(self, timeout_s: float) -> None:
        """The wall-clock limit of the run, counted from the hand-over of its files."""
        self._limits = dataclasses.replace(self._limits, timeout_s=timeout_s)

    def start(self) -> None:
        """Attach and start the container; its agent then waits for the run. Does nothing once cancelled."""
        with self._start_lock:  # a cancel comes either before the start (no start) or after it (a kill)
            if self._cancelled.is_set() or self._sock is not None:
                return
            with translated(SandboxError, "Docker could not attach to the container"):
                sock = self._calls.attach(self.container_id)
            try:
                self._calls.start(self.container_id)
                _send_all(sock, agent_preamble())
            except (*DOCKER_ERRORS, OSError) as e:
                close_socket(sock)
                raise SandboxError(f"Docker could not start the container: {e}") from e
            self._sock = sock

    def execute(self, program: Program, sink: OutputSink) -> RunOutcome:
        """Hand the started container its program, forward its output to `sink` until it ends, judge it.

        The agent's trailer answers the moment the script exits normally; a script killed by a signal (the OOM
        killer among them) or a container that died without a trailer is judged by Docker, as is every run
        later in `confirm`.
        """
        self.start()
        sock = self._sock
        if sock is None:
            return RunOutcome.cancelled_before_start()
        nonce = secrets.token_hex(NONCE_SIZE // 2).encode()
        watchdog = threading.Timer(self._limits.timeout_s, self._on_timeout)
        watchdog.daemon = True
        watchdog.start()
        try:
            with translated(SandboxError, "Docker failed during the run"):
                with contextlib.suppress(OSError):  # the container may already be gone; Docker says how it ended
                    p = self._policy
                    _send_all(sock, encode_payload(program, nonce, p.max_artifacts, p.max_artifact_bytes))
                trailer = self._forward(sock, sink, nonce)
                if trailer is not None and trailer.exited:
                    self._reported = self._outcome(trailer.code, oom=False, usage=trailer.usage)
                    return self._reported
                exit_code = self._calls.wait(self.container_id, timeout_s=60)
                watchdog.cancel()  # it has ended: no kill to send while Docker's flags are read
                return self._judge(exit_code, trailer)
        finally:
            watchdog.cancel()
            if self._reported is None:  # else the agent waits for its input's end: see confirm()
                close_socket(sock)

    def confirm(self) -> RunOutcome | None:
        """After an answer from the trailer: Docker's verdict when it differs (a security warning), else None.

        Called once the run is recorded: it first closes the container's input, which lets the agent exit (it
        waits for that after its trailer, so that the container's teardown does not compete with the answer).
        """
        reported = self._reported
        if reported is None:
            return None
        if self._sock is not None:
            close_socket(self._sock)
        try:
            exit_code = self._calls.wait(self.container_id, timeout_s=10)
            actual = dataclasses.replace(reported, exit_code=exit_code, oom_killed=self._oom_killed(exit_code))
        except DOCKER_ERRORS:
            log.warning("could not confirm the exit of container %s with Docker", self.container_id[:12], exc_info=True)
            return None
        if actual.exit_code == reported.exit_code and actual.status is reported.status:
            return None
        log.warning(
            "security: container %s: the agent reported exit code %s (%s), Docker says %s (%s); recording Docker's",
            self.container_id[:12], reported.exit_code, reported.status.value, actual.exit_code, actual.status.value,
        )  # fmt: skip
        return actual

    def _forward(self, sock: Any, sink: OutputSink, nonce: bytes) -> Trailer | None:
        """Forward the script's output until the agent's trailer (returned) or the end of the stream (None)."""
        budget = self._policy.max_output_bytes
        reader = AgentReader()
        warned = False
        for stream, data in frames_iter(sock, tty=False):
            # Docker's stderr is the agent's own (a failure before the run); its stdout carries framed output.
            frames = [(b"2", data)] if stream == 2 else reader.feed(data)
            for kind, chunk in frames:
                if kind == b"T":
                    trailer = parse_trailer(chunk, nonce)
                    if trailer is not None:
                        return trailer
                    log.warning("security: container %s sent a trailer that is not its agent's", self.container_id)
                    continue
                if kind in (b"A", b"D", b"X"):
                    self._artifacts.take(kind, chunk)
                    continue
                if reader.broken and not warned:
                    warned = True
                    log.warning("security: container %s broke its agent's framing", self.container_id)
                kept = chunk[: max(budget, 0)]
                if kept:
                    budget -= len(kept)
                    sink(2 if kind == b"2" else 1, kept)
                if len(kept) < len(chunk) and not self._killed_for_output:
                    self._killed_for_output = True
                    # Kill from another thread: Docker waits for the output to drain before the kill returns.
                    threading.Thread(target=self.kill, daemon=True).start()
        return None

    def _judge(self, exit_code: int, trailer: Trailer | None) -> RunOutcome:
        """Docker's verdict on a container that has ended (no trailer, or a signaled one).

        Docker's OOM flag can follow the exit (seen under gVisor, whose shim reports the OOM after the exit): a
        SIGKILL the service did not send is looked at again for up to OOM_FLAG_WAIT_S before it counts as a plain
        kill. The service's own reasons are taken as they were when the container ended: a timer or a cancel that
        comes during that second changes nothing.
        """
        usage = trailer.usage if trailer is not None else self._usage_at_kill
        timed_out, cancelled = self._timed_out.is_set(), self._cancelled.is_set()
        unexplained = exit_code == SIGKILLED and not (timed_out or cancelled or self._killed_for_output)
        outcome = self._outcome(exit_code, oom=self._oom_killed(exit_code, look_again=unexplained), usage=usage)
        return dataclasses.replace(outcome, timed_out=timed_out, cancelled=cancelled)

    def _oom_killed(self, exit_code: int, look_again: bool = False) -> bool:
        """Docker's OOM flag (for OOM_FLAG_WAIT_S more if `look_again`). A clean exit needs no look."""
        if exit_code == 0:
            return False
        start = time.monotonic()
        deadline = start + (OOM_FLAG_WAIT_S if look_again else 0)
        looks = 1
        while not self._api.inspect_container(self.container_id)["State"].get("OOMKilled"):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
            looks += 1
        if looks > 1:
            log.info(
                "container %s: Docker's OOM flag came %.2f s after the exit",
                self.container_id[:12],
                time.monotonic() - start,
            )
        return True

    def _outcome(self, exit_code: int, *, oom: bool, usage: Usage | None) -> RunOutcome:
        artifacts, left_out = self._artifacts.finish()
        return RunOutcome(
            artifacts=artifacts,
            left_out=left_out,
            exit_code=exit_code,
            oom_killed=oom,
            timed_out=self._timed_out.is_set(),
            output_truncated=self._killed_for_output,
            cancelled=self._cancelled.is_set(),
            usage=usage,
        )

    def _on_timeout(self) -> None:
        if self._reported is None:  # the script had not ended
            self._timed_out.set()
            self.kill()

    def cancel(self) -> None:
        """Stop the run at once (or keep it from starting); its outcome says cancelled."""
        with self._start_lock:
            self._cancelled.set()
        self.kill()

    def kill(self) -> None:
        if self._reported is not None:  # the script has ended and its agent is exiting: nothing to stop
            return
        if self._sock is not None and self._usage_at_kill is None:
            self._usage_at_kill = docker_usage(self._api, self.container_id)
        with contextlib.suppress(*DOCKER_ERRORS):  # already stopped or gone
            self._api.kill(self.container_id)

    def remove(self) -> None:
        """Remove the container, retrying; a failure is logged (the next start removes leftovers by label)."""
        if self._sock is not None:  # a pooled run that never ran still holds its attach socket
            close_socket(self._sock)
        if self._removed:
            return
        for attempt in range(3):
            try:
                self._calls.remove(self.container_id)
            except docker.errors.NotFound:
                pass
            except DOCKER_ERRORS:
                if attempt == 2:
                    log.exception("could not remove container %s; it will be removed at next start", self.container_id)
                else:
                    time.sleep(0.5)
                continue
            self._removed = True
            if self._metrics is not None:
                self._metrics.containers_removed.inc()
            return


def docker_usage(api: docker.APIClient, container_id: str) -> Usage | None:
    """CPU time and peak memory of a running container as Docker's stats report them (None when unknown)."""
    try:
        stats = api.stats(container_id, stream=False, one_shot=True)
    except DOCKER_ERRORS:
        return None
    memory = stats.get("memory_stats") or {}
    cpu_ns = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    peak = memory.get("max_usage") or memory.get("usage")  # cgroup v1 keeps the peak; v2 only the current use
    if not cpu_ns and not peak:
        return None
    return Usage(cpu_seconds=cpu_ns / 1e9 if cpu_ns else None, peak_memory_bytes=int(peak) if peak else None)


def _send_all(sock: Any, data: bytes) -> None:  # docker-py's attach socket: a SocketIO or a socket
    getattr(sock, "_sock", sock).sendall(data)


def runtime_registered(client: docker.DockerClient, runtime: str) -> bool:
    """Whether the engine knows the OCI runtime `runtime` (runc always; runsc once registered).

    :raises SandboxError: Docker does not answer.
    """
    with translated(SandboxError, "Docker could not list its runtimes"):
        return runtime in (client.info().get("Runtimes") or {})


def remove_leftovers(client: docker.DockerClient, instance: str, cluster: str = "") -> int:
    """Remove every container this service instance left behind (after a crash); return how many.

    Only its own deployment's (`cluster`, as SandboxPolicy.labels puts it): an instance of the same name elsewhere
    keeps its containers.
    """
    with translated(SandboxError, "Docker could not list or remove leftover containers"):
        listed = client.api.containers(all=True, filters={"label": [f"{LABEL}.instance={instance}"]})
        found = [c for c in listed if deployment_of(c.get("Labels") or {}) == cluster]
        for c in found:
            client.api.remove_container(c["Id"], force=True, v=True)
    return len(found)
