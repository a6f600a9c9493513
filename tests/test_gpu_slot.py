"""The GPU slot and stopping the watcher: a slot never leaks in local (ephemeral) mode, its
count holds between processes, a wait is logged with who holds the slot, and SIGINT/SIGTERM
stop ``starnet watch`` within seconds even when its Prefect API died with it.

Local-mode slots are lock files, so these tests need no Prefect server except where they
say so; holders run in child processes (a slot must survive only as long as its process).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prefect_fixtures import PipelineEnv, write_fits

from flows import pipeline
from flows.pipeline import FileSlots, concurrency_slot, gpu_limit, gpu_slot
from flows.provenance import ProvenanceDB
from flows.settings import Settings, load_settings
from flows.watcher import Watcher

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from flows.pipeline import api_server_configured, gpu_slot
from flows.settings import load_settings
assert not api_server_configured(), "PREFECT_API_URL is set: not local mode"
with gpu_slot(load_settings(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(300)
"""


def _local_env(tmp_path: Path) -> dict[str, str]:
    """A child's environment in local (ephemeral) mode: no API URL, its own PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    return env


def _start_holder(config: str, what: str, tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, config, what],
        stdout=subprocess.PIPE, text=True, env=_local_env(tmp_path), cwd=ROOT,
    )  # fmt: skip


def _said_held(proc: subprocess.Popen[str], timeout_s: float) -> bool:
    """Whether ``proc`` printed "held" within ``timeout_s`` (False if it died first)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        return False
    line = proc.stdout.readline()
    if not line and proc.poll() is not None:
        raise AssertionError(f"holder {proc.pid} exited with {proc.returncode}")
    return line.strip() == "held"


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)
        if p.stdout is not None:
            p.stdout.close()


@pytest.fixture
def local_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process in local mode even if the session's Prefect harness set an API URL."""
    monkeypatch.setattr(pipeline, "api_server_configured", lambda: False)


def _with_slots(env: PipelineEnv, slots: int) -> tuple[str, Settings]:
    raw = yaml.safe_load(Path(env.config).read_text(encoding="utf-8"))
    raw["prefect"]["gpu_slots"] = slots
    config = env.root / f"config-{slots}-slots.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(config), load_settings(config)


def _take_in_thread(settings: Settings, what: str) -> tuple[threading.Event, threading.Event]:
    """A thread of this process that takes a GPU slot; returns (got it, let it go)."""
    got, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gpu_slot(settings, what):
            got.set()
            release.wait(60)

    threading.Thread(target=hold, daemon=True).start()
    return got, release


@pytest.mark.usefixtures("local_mode")
def test_local_slot_comes_back_at_once_when_its_holder_is_killed(
    pipeline_env: PipelineEnv, tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    settings = pipeline_env.settings
    holder = _start_holder(pipeline_env.config, "frame a.fits", tmp_path)
    children.append(holder)
    assert _said_held(holder, timeout_s=90)
    files = FileSlots(settings.resolve("locks").resolve(), gpu_limit(settings), 1)
    notes = files.holders()
    assert len(notes) == 1 and f"pid {holder.pid} " in notes[0] and "frame a.fits" in notes[0]

    got, release = _take_in_thread(settings, "frame b.fits")
    assert not got.wait(1.5)  # one slot: taken by the other process
    holder.send_signal(signal.SIGKILL)  # no clean-up at all: Prefect's local limit leaked here
    holder.wait(timeout=30)
    t0 = time.monotonic()
    assert got.wait(5), "the slot of a killed process did not come back"
    print(f"slot taken {time.monotonic() - t0:.2f} s after the holder was killed")
    release.set()


@pytest.mark.usefixtures("local_mode")
def test_local_slot_count_holds_between_processes(
    pipeline_env: PipelineEnv, tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    config, settings = _with_slots(pipeline_env, 2)
    for name in ("a", "b", "c"):
        children.append(_start_holder(config, f"frame {name}.fits", tmp_path))
    waiting = list(children)
    deadline = time.monotonic() + 120
    held: list[subprocess.Popen[str]] = []
    while len(held) < 2 and time.monotonic() < deadline:
        for p in waiting:
            if p not in held and _said_held(p, timeout_s=0.2):
                held.append(p)
    assert len(held) == 2
    (third,) = [p for p in children if p not in held]
    assert not _said_held(third, timeout_s=3.0)  # two slots, both taken
    files = FileSlots(settings.resolve("locks").resolve(), gpu_limit(settings), 2)
    assert len(files.holders()) == 2
    held[0].send_signal(signal.SIGKILL)
    assert _said_held(third, timeout_s=10.0)


@pytest.mark.usefixtures("local_mode")
def test_local_wait_is_logged_with_who_holds_the_slot(
    pipeline_env: PipelineEnv, caplog: pytest.LogCaptureFixture
) -> None:
    settings = pipeline_env.settings
    name = gpu_limit(settings)
    got, release = _take_in_thread(settings, "frame held.fits")
    assert got.wait(30)
    threading.Timer(2.0, release.set).start()
    caplog.set_level(logging.INFO, logger="starnet.pipeline")
    with concurrency_slot(settings, name, 1, "frame waiting.fits", warn_after_s=0.5):
        pass
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    info = [m for lvl, m in messages if lvl == "INFO"]
    warnings = [m for lvl, m in messages if lvl == "WARNING"]
    assert f"frame waiting.fits: waiting for a slot of {name!r}" in info[0]
    assert "still waiting" in warnings[0] and f"pid {os.getpid()} " in warnings[0]
    assert "frame held.fits" in warnings[0] and "lock files" in warnings[0]
    assert "got a slot" in info[-1]


@pytest.mark.usefixtures("prefect_harness")
def test_server_mode_uses_prefects_limit_and_its_wait_names_it(
    pipeline_env: PipelineEnv, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.client.orchestration import get_client

    settings = pipeline_env.settings
    assert pipeline.api_server_configured()  # the harness is an API server for the flows
    name = "starnet-gpu-wait-test"
    pipeline.ensure_slot_limit(name, 1)
    got, release = threading.Event(), threading.Event()

    def hold() -> None:
        with concurrency_slot(settings, name, 1, "frame held.fits"):
            got.set()
            release.wait(60)

    threading.Thread(target=hold, daemon=True).start()
    assert got.wait(30)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 1
    threading.Timer(2.0, release.set).start()
    caplog.set_level(logging.INFO, logger="starnet.pipeline")
    with concurrency_slot(settings, name, 1, "frame waiting.fits", warn_after_s=0.5):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings and f"`prefect gcl inspect {name}`" in warnings[0]
    assert "1 of 1 slot(s) taken" in warnings[0]
    assert not (settings.resolve("locks") / f"{name}.0.lock").exists()
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0


# ---- stopping the watcher -------------------------------------------------------------------


def test_dispatch_failing_after_a_stop_signal_is_not_retried(
    tmp_path: Path, provenance_db: ProvenanceDB
) -> None:
    """Prefect's flow, its API gone with the process group, replaces the TerminationSignal
    with the ConnectError of reporting the crash: the watcher must stop, not retry forever."""
    calls: list[list[Path]] = []

    def crashed_flow(paths: list[Path]) -> None:
        calls.append(paths)
        try:
            raise KeyboardInterrupt  # what the signal raised in the flow
        except KeyboardInterrupt:
            raise ConnectionError("All connection attempts failed")  # noqa: B904

    w = Watcher(
        incoming=tmp_path / "incoming", db=provenance_db, on_frames=crashed_flow,
        patterns=("*.fits",), stable_s=0.0, poll_s=0.05, retry_s=0.1,
    )  # fmt: skip
    write_fits(tmp_path / "incoming" / "a.fits")
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
    thread.start()
    thread.join(timeout=20)
    alive = thread.is_alive()
    stop.set()
    assert not alive, "the watcher kept retrying a dispatch that the stop ended"
    assert len(calls) == 1 and not w.retry_at


WATCH_CHILD = """
import signal, sys, threading, time
from pathlib import Path
from flows.provenance import ProvenanceDB
from flows.watcher import Watcher

mode, root = sys.argv[1], Path(sys.argv[2])
seen = root / "seen.txt"

def on_frames(paths):
    if mode == "bridge":  # like Prefect's handler while a flow runs: ours does not see it
        def bridge(signum, frame):
            raise RuntimeError("terminated")
        signal.signal(signal.SIGTERM, bridge)
    try:  # "dispatching" inside it: a signal right after the parent reads it is caught here
        print("dispatching", flush=True)
        for _ in range(1200):
            time.sleep(0.05)  # a frame being processed
    except BaseException as e:
        seen.write_text(type(e).__name__)
        if mode in ("hang", "bridge"):  # the crash report retries against a dead API
            time.sleep(60)
        raise

db = ProvenanceDB("sqlite:///" + str(root / "provenance.db"))
db.ensure_schema()
# a clean stop must not race the forced exit on a loaded machine: a long grace where the
# flow ends by itself ("python"), a short one where it hangs
w = Watcher(incoming=root / "incoming", db=db, on_frames=on_frames, stable_s=0.0,
            poll_s=0.05, stop_grace_s=30.0 if mode == "python" else 3.0)
w.run(threading.Event())
print("returned", flush=True)
"""


@pytest.mark.parametrize(
    ("mode", "sig", "code", "seen"),
    [
        ("python", signal.SIGTERM, 0, "StopSignal"),  # API alive: a clean stop
        ("python", signal.SIGINT, 0, "StopSignal"),  # Ctrl-C
        ("hang", signal.SIGTERM, 128 + signal.SIGTERM, "StopSignal"),  # API gone: forced exit
        ("bridge", signal.SIGTERM, 128 + signal.SIGTERM, "RuntimeError"),  # another handler
    ],
)
def test_watcher_stops_within_seconds_on_a_signal(
    tmp_path: Path,
    children: list[subprocess.Popen[str]],
    mode: str,
    sig: signal.Signals,
    code: int,
    seen: str,
) -> None:
    write_fits(tmp_path / "incoming" / "a.fits")
    child = subprocess.Popen(
        [sys.executable, "-c", WATCH_CHILD, mode, str(tmp_path)],
        stdout=subprocess.PIPE, text=True, env=_local_env(tmp_path), cwd=ROOT,
    )  # fmt: skip
    children.append(child)
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 120)
    assert ready and child.stdout.readline().strip() == "dispatching"
    t0 = time.monotonic()
    child.send_signal(sig)
    rc = child.wait(timeout=30)
    took = time.monotonic() - t0
    print(f"{mode} {sig.name}: exit {rc} after {took:.1f} s")
    assert rc == code and took < (25 if mode == "python" else 15)
    assert (tmp_path / "seen.txt").read_text() == seen
    rest = child.stdout.read()
    assert ("returned" in rest) == (code == 0)


# ---- end to end -----------------------------------------------------------------------------


@pytest.mark.slow
def test_starnet_watch_stopped_by_sigterm_to_its_group_leaks_no_slot(
    pipeline_env: PipelineEnv, tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    """The reviewer's case: ``starnet watch`` in local mode (ephemeral Prefect API), SIGTERM to
    its process group while a frame is computed (``systemctl stop``, ``timeout``)."""
    env = pipeline_env
    write_fits(env.incoming / "big.fits", size_px=2048)
    watch = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "--config", env.config, "watch"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_local_env(tmp_path), cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    children.append(watch)
    log: list[str] = []
    out = watch.stdout
    assert out is not None

    def read() -> None:
        for line in out:
            log.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any("removing stars" in line for line in log) and time.monotonic() < deadline:
        assert watch.poll() is None, "".join(log)
        time.sleep(0.1)
    time.sleep(0.5)
    t0 = time.monotonic()
    os.killpg(watch.pid, signal.SIGTERM)
    rc = watch.wait(timeout=60)
    took = time.monotonic() - t0
    reader.join(timeout=30)
    print(f"watch: exit {rc} after {took:.1f} s")
    assert took < 15, "".join(log)
    runs = ProvenanceDB.from_settings(env.settings).list_runs()
    assert [r.status for r in runs] == ["interrupted"] and "interrupted" in (runs[0].error or "")
    holder = _start_holder(env.config, "frame next.fits", tmp_path)  # e.g. `starnet demo`
    children.append(holder)
    assert _said_held(holder, timeout_s=90), "the GPU slot leaked"
