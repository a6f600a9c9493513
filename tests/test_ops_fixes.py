"""Operations: the promoted model that cannot run here stops the flows (the nightly rolled
back every frame it made), a long frame's heartbeat, a refused finish fails that frame
alone, bad database settings are one line naming the setting, and ``starnet db fail-run``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect_fixtures import PipelineEnv, save_tiny_model, write_fits

import flows.cli as cli
from flows.provenance import ProvenanceDB, sha256_file
from flows.settings import SettingsError, load_settings


def _config(env: PipelineEnv, **sections: dict[str, Any]) -> str:
    raw = yaml.safe_load(Path(env.config).read_text(encoding="utf-8"))
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    path = env.root / "config-ops.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


# ---- 1. the promoted model's weights file is not on this host ------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_a_promoted_model_that_cannot_run_here_stops_the_nightly_and_the_frames(
    pipeline_env: PipelineEnv,
) -> None:
    from flows.pipeline import nightly_rerun, process_folder
    from flows.provenance import ProvenanceError

    env = pipeline_env  # follow_promoted: true (the default); inference.weights is tiny-a
    db = ProvenanceDB.from_settings(env.settings)
    b = env.root / "models" / "tiny-b.safetensors"
    db.register_model("tiny-b", save_tiny_model(b, "tiny-b", seed=1), {"weights_path": str(b)})
    db.promote("tiny-b")
    first = write_fits(env.incoming / "a.fits", seed=1)
    assert [r["status"] for r in process_folder(paths=[str(first)], config=env.config)] == [
        "succeeded"
    ]
    starless = env.outputs / "a_starless.fits"
    assert db.history(starless).produced_by.model_version == "tiny-b"  # type: ignore[union-attr]
    b.unlink()  # the promoted model's file is not on this worker
    # before: a warning, then tiny-a redid a.fits over tiny-b's outputs
    with pytest.raises(ProvenanceError) as caught:
        nightly_rerun(config=env.config)
    assert type(caught.value).__name__ == "PromotedModelUnavailableError"
    message = str(caught.value)
    assert "promoted model tiny-b" in message and str(b) in message
    assert "tiny-a" in message and "nightly rerun" in message
    assert "starnet model promote" in message and "prefect.follow_promoted: false" in message
    # new frames are not made with tiny-a either
    second = write_fits(env.incoming / "b.fits", seed=2)
    with pytest.raises(ProvenanceError, match="promoted model tiny-b"):
        process_folder(paths=[str(second)], config=env.config)
    assert db.list_runs(model="tiny-a") == []
    assert db.history(starless).produced_by.model_version == "tiny-b"  # type: ignore[union-attr]
    # following the promoted model off: inference.weights runs, on purpose
    pinned = _config(env, prefect={"follow_promoted": False})
    results = process_folder(paths=[str(second)], config=pinned)
    assert [r["figures"]["model_version"] for r in results] == ["tiny-a"]


def test_a_missing_promoted_file_is_no_matter_when_inference_weights_is_that_model(
    pipeline_env: PipelineEnv,
) -> None:
    from flows.pipeline import load_run_engine

    env = pipeline_env
    db = ProvenanceDB.from_settings(env.settings)
    sha = sha256_file(env.weights)
    gone = env.root / "elsewhere" / "tiny-a.safetensors"  # recorded on another machine
    db.register_model("tiny-a", sha, {"weights_path": str(gone)}, status="promoted")
    engine, path = load_run_engine(env.settings, db)
    assert (engine.version, engine.weights_sha256, path) == ("tiny-a", sha, str(env.weights))


# ---- 2. a frame that computes longer than database.stale_run_s ------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_a_long_frame_keeps_its_run_with_a_heartbeat(
    pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.frame as frame
    from flows.pipeline import process_folder

    env = pipeline_env
    config = _config(env, database={"stale_run_s": 2.0})  # a heartbeat every 0.5 s
    frames = [str(write_fits(env.incoming / f"{n}.fits", seed=i)) for i, n in enumerate("gh")]
    db = ProvenanceDB.from_settings(load_settings(config))
    real = frame.process_array
    others: list[str] = []

    def slow(*args: object, **kwargs: object) -> object:
        if not others:  # the first frame computes for longer than stale_run_s ...
            time.sleep(3.5)
            (run,) = db.list_runs(status="running")
            again = db.claim_run(  # ... and another worker (or the nightly) tries to take it
                run.frame_sha256, run.model_version, run.weights_sha256, run.params,
                host="worker-B", max_attempts=3, redo=True,
            )  # fmt: skip
            others.append(again.state)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(frame, "process_array", slow)
    # before: worker-B took the run over, this worker's finish raised ProvenanceError and
    # the flow stopped before the second frame
    results = process_folder(paths=frames, config=config)
    assert others == ["busy"]
    assert [r["status"] for r in results] == ["succeeded", "succeeded"]
    runs = {r.frame_path: r for r in db.list_runs()}
    assert runs[frames[0]].status == "succeeded" and runs[frames[0]].attempts == 1
    assert runs[frames[0]].host != "worker-B"
    assert (runs[frames[0]].duration_s or 0.0) >= 3.5  # the beats left its start alone


@pytest.mark.usefixtures("prefect_harness")
def test_a_finish_the_database_refuses_fails_that_frame_not_the_flow(
    pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.pipeline as pipeline
    from flows.pipeline import FramesFailedError, process_folder
    from flows.provenance import ProvenanceError

    env = pipeline_env
    frames = [str(write_fits(env.incoming / f"{n}.fits", seed=i)) for i, n in enumerate("jk")]
    real = pipeline.finish_frame
    refused: list[str] = []

    def claimed_again(db: Any, claim: Any, outputs: Any, error: Any) -> None:
        if outputs is not None and not refused:
            refused.append(claim.run_key)
            raise ProvenanceError(
                f"run_key: run {claim.run_key[:12]} was claimed again (now attempt 2 on "
                "worker-B); this worker's attempt 1 is not recorded"
            )
        real(db, claim, outputs, error)

    monkeypatch.setattr(pipeline, "finish_frame", claimed_again)
    with pytest.raises(FramesFailedError, match="1 of 2") as caught:
        process_folder(paths=frames, config=env.config)
    first, second = caught.value.results
    assert (first["status"], second["status"]) == ("failed", "succeeded")
    assert "outputs written" in first["error"] and "claimed again" in first["error"]
    assert str(env.outputs / "j_starless.fits") in first["error"]
    assert Path(first["outputs"]["starless"]).is_file()  # written, and said so


def test_transform_keeps_a_long_frames_claim_and_a_refused_finish_fails_only_it(
    pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``starnet transform`` (process_file) as the flows: a heartbeat while a frame
    computes, and a finish the DB refuses is that frame's failure, the next input goes on."""
    import flows.frame as frame
    from flows.frame import OutputGuard, load_engine, process_file

    env = pipeline_env
    settings = load_settings(_config(env, database={"stale_run_s": 2.0}))  # beats every 0.5 s
    db = ProvenanceDB.from_settings(settings)
    engine = load_engine(settings)
    paths = [write_fits(env.incoming / f"{n}.fits", seed=i) for i, n in enumerate("pqr")]
    real = frame.process_array
    tries: list[str] = []

    def slow(*args: object, **kwargs: object) -> object:
        if len(tries) == 0:  # p: longer than stale_run_s; another worker tries to take it
            time.sleep(3.5)
            (run,) = db.list_runs(status="running")
            tries.append(
                db.claim_run(
                    run.frame_sha256, run.model_version, run.weights_sha256, run.params,
                    host="worker-B", max_attempts=3, redo=True,
                ).state
            )  # fmt: skip
        elif len(tries) == 1:  # q: an impatient worker takes it over while it computes
            (run,) = db.list_runs(status="running")
            impatient = ProvenanceDB(db.url, stale_after_s=1e-6)
            tries.append(
                impatient.claim_run(
                    run.frame_sha256, run.model_version, run.weights_sha256, run.params,
                    host="worker-C", max_attempts=3, redo=True,
                ).state
            )  # fmt: skip
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(frame, "process_array", slow)
    guard = OutputGuard("own")
    results = [process_file(p, settings, engine, db=db, guard=guard) for p in paths]
    assert tries == ["busy", "owned"]
    assert [r.status for r in results] == ["succeeded", "failed", "succeeded"]
    assert "outputs written" in (results[1].error or "") and results[1].outputs
    runs = {Path(r.frame_path).name: r for r in db.list_runs()}
    assert runs["p.fits"].status == "succeeded" and (runs["p.fits"].duration_s or 0) >= 3.5
    assert "claimed again" in (results[1].error or "")
    assert runs["q.fits"].attempt_log[-1].host == "worker-C"  # the new owner's, untouched


# ---- 3. database settings that cannot work ---------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("STARNET_DATA_DIR", str(data))
    monkeypatch.delenv("STARNET_DATABASE_URL", raising=False)
    monkeypatch.delenv("STARNET_CONFIG", raising=False)
    return data


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", [["runs"], ["model", "list"], ["db", "upgrade"]])
def test_a_postgres_url_is_one_line_with_its_fix(
    command: list[str],
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STARNET_DATABASE_URL", "postgres://starnet:secret@127.0.0.1/starnet")
    assert cli.main(command) != 0  # before: ProvenanceError's traceback
    err = _one_line(capsys)
    assert "STARNET_DATABASE_URL" in err and "secret" not in err
    assert "postgresql+psycopg2://starnet:***@127.0.0.1/starnet" in err


def test_a_url_that_is_no_url_names_the_setting_in_its_file(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  url: notaurl\n", encoding="utf-8")
    assert cli.main(["--config", str(config), "runs"]) != 0  # before: ArgumentError, twice
    err = _one_line(capsys)
    assert f"{config}.database.url" in err and "'notaurl'" in err
    assert "sqlite:///" in err and "postgresql+psycopg2://" in err
    with pytest.raises(SettingsError, match="asyncio driver"):
        config.write_text("database:\n  url: postgresql+asyncpg://p:x@h/prefect\n")
        load_settings(config)
    for good in ("sqlite:///x.db", "postgresql://u@h/db", "postgresql+psycopg2://u:p@h:5/d"):
        config.write_text(f"database:\n  url: '{good}'\n")
        assert load_settings(config).database_url == good


def test_a_url_sqlalchemy_cannot_read_is_one_line_too() -> None:
    from sqlalchemy.exc import ArgumentError

    # settings made in code skip load_settings' check: the handler must not raise again
    line = cli._one_line(ArgumentError("Could not parse SQLAlchemy URL"), "user:pw@notaurl")
    assert "Could not parse" in line and "pw" not in line


@pytest.mark.parametrize("command", [["runs"], ["model", "promote", "x"], ["history", "a.fits"]])
def test_a_missing_postgres_driver_says_how_to_install_it(
    command: list[str],
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql+psycopg2://starnet:secret@127.0.0.1:1/starnet"
    monkeypatch.setenv("STARNET_DATABASE_URL", url)
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # as if psycopg2-binary were missing
    assert cli.main(command) == 1  # before: ModuleNotFoundError's traceback
    err = _one_line(capsys)
    assert "STARNET_DATABASE_URL" in err and "psycopg2" in err and "secret" not in err
    assert "pip install '.[postgres]'" in err


def test_a_database_newer_than_this_starnet_is_one_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sqlalchemy import create_engine, text

    db = ProvenanceDB(f"sqlite:///{data_dir / 'provenance.db'}")
    db.ensure_schema()
    engine = create_engine(f"sqlite:///{data_dir / 'provenance.db'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    from flows.provenance import dispose_engines

    dispose_engines()  # this process saw the schema at head: look again
    for command in (["runs"], ["model", "list"]):
        assert cli.main(command) == 1  # before: ProvenanceError's traceback
        err = _one_line(capsys)
        assert "9999_from_the_future" in err and "upgrade starnet" in err
        assert err.startswith(f"starnet {command[0]}: database.url (unset: provenance.db")


# ---- 4. starnet db fail-run -----------------------------------------------------------------


def test_db_fail_run_ends_a_run_whose_worker_is_gone(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = tmp_path / "f.fits"
    frame.write_bytes(b"frame bytes")
    db = ProvenanceDB(f"sqlite:///{data_dir / 'provenance.db'}")
    f = db.register_frame(frame)
    claim = db.claim_run(f.sha256, "1.0", "ab" * 32, {"p": 1}, host="worker-B", max_attempts=3)
    key = claim.run.run_key
    args = ["db", "fail-run", key[:12], "--reason", "worker-B lost power"]
    assert cli.main(args) == 0  # before: argparse refused the command
    out = capsys.readouterr().out
    assert key[:12] in out and "worker-B" in out and "worker-B lost power" in out
    run = db.get_run(key)
    assert run is not None and run.status == "failed"
    assert "worker-B lost power" in (run.error or "")
    assert cli.main(args) == 1  # nothing in progress any more
    assert "not in progress" in _one_line(capsys)
    again = db.claim_run(f.sha256, "1.0", "ab" * 32, {"p": 1}, max_attempts=3)
    assert again.state == "owned" and again.run.attempts == 2  # taken up again
