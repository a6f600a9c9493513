"""Training pairs are trained on as recorded: a re-saved, moved or unreadable training file
is left out (or refused) by name, never trained as if it were the recorded pair."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect_fixtures import PipelineEnv, write_fits

from flows.cli import main
from flows.provenance import ProvenanceDB
from flows.retraining import read_pairs, usable_pairs


def _pair_files(root: Path, name: str = "p.fits") -> tuple[Path, Path]:
    original = write_fits(root / "original" / name, seed=1).resolve()
    starless = write_fits(root / "starless" / name, seed=2).resolve()
    return original, starless


def _resave(path: Path, seed: int) -> None:
    """The operator corrects the file and saves it again under the same name."""
    path.unlink()
    write_fits(path, seed=seed)


def test_resaved_file_leaves_the_old_pair_out(tmp_path: Path, provenance_db: ProvenanceDB) -> None:
    original, starless = _pair_files(tmp_path / "training")
    old, _ = provenance_db.add_training_pair(original, starless)
    _resave(starless, seed=7)
    new, is_new = provenance_db.add_training_pair(original, starless)
    assert is_new and new.id != old.id  # two rows, one path: the old row's sha is stale
    usable, problems = usable_pairs(provenance_db.list_training_pairs())
    assert [p.id for p in usable] == [new.id]  # the new content once, not twice
    assert len(problems) == 1
    assert problems[0].startswith(f"{starless}: starless of training pair {old.id} changed")
    images, unreadable = read_pairs(usable)
    assert list(images) == [new.id] and unreadable == []
    images, unreadable = read_pairs([old])  # left out by name, never trained on
    assert images == {} and len(unreadable) == 1
    assert unreadable[0].startswith(f"{starless}: starless of training pair {old.id} changed")


def test_missing_file_is_named_not_a_temporary_link(
    tmp_path: Path, provenance_db: ProvenanceDB
) -> None:
    original, starless = _pair_files(tmp_path / "training")
    pair, _ = provenance_db.add_training_pair(original, starless)
    starless.rename(tmp_path / "moved.fits")
    usable, problems = usable_pairs(provenance_db.list_training_pairs())
    assert usable == []
    assert problems == [f"{starless}: starless of training pair {pair.id} cannot be read (No such "
                        "file or directory)"]  # fmt: skip
    images, unreadable = read_pairs([pair])
    assert images == {} and unreadable == problems


def test_unreadable_content_is_named_by_the_recorded_path(
    tmp_path: Path, provenance_db: ProvenanceDB
) -> None:
    original, starless = _pair_files(tmp_path / "training")
    starless.write_bytes(b"not a FITS file at all" * 100)  # recorded as it is: sha matches
    pair, _ = provenance_db.add_training_pair(original, starless)
    images, unreadable = read_pairs([pair])
    assert images == {} and len(unreadable) == 1
    assert unreadable[0].startswith(f"{starless}: ") and "starnet-pairs-" not in unreadable[0]
    assert unreadable[0].endswith(f"(training pair {pair.id})")


@pytest.mark.usefixtures("prefect_harness")
def test_retrain_trains_each_content_once_and_records_the_pairs_used(
    pipeline_env: PipelineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from flows.retraining import retrain

    env = pipeline_env
    raw = yaml.safe_load(Path(env.config).read_text(encoding="utf-8"))
    raw["retrain"]["promote"] = "never"
    config = env.root / "config-never.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    db = ProvenanceDB.from_settings(env.settings)
    original, starless = _pair_files(env.training)  # the watched training folder
    old, _ = db.add_training_pair(original, starless)
    _resave(starless, seed=7)  # retrain registers the folder's new content itself
    result = retrain(config=str(config), steps=1)
    assert result["status"] == "candidate" and result["pairs"] == 1
    (new,) = [p for p in db.list_training_pairs() if p.id != old.id]
    model = db.get_model(result["version"])
    assert model is not None and list(model.training_pair_ids) == [new.id]
    assert retrain(config=str(config), steps=1)["status"] == "up-to-date"  # the stale row
    starless.unlink()  # the only pair left has a file missing: nothing to train on
    with pytest.raises(ValueError, match=f"no training pair to train on.*{starless}: starless"):
        retrain(config=str(config), steps=1, force=True)
    capsys.readouterr()
    assert main(["--config", str(config), "retrain", "--steps", "1", "--force"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("starnet retrain: no training pair to train on")
    assert str(starless) in err[-1] and "Traceback" not in "".join(err)


def test_cli_retrain_names_a_missing_file_before_prefect_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    starless = write_fits(tmp_path / "s.fits")
    missing = tmp_path / "nope.fits"
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n", encoding="utf-8")
    argv = ["--config", str(config), "retrain", "--original", str(missing)]
    assert main([*argv, "--starless", str(starless)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"starnet retrain: --original {missing}: no such file\n"
    assert not (tmp_path / "data").exists()  # nothing registered, no flow run
